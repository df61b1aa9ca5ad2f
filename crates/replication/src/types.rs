//! The Raft type configuration: what a log entry carries (a [`Proposal`]:
//! a batch of region-machine commands) and what applying it returns (one
//! [`Outcome`] per command).
//!
//! Everything openraft-specific is declared here and in the storage
//! modules, so a later move to openraft 0.10 touches this crate only.

use std::fmt;

use serde::{Deserialize, Serialize};
use wire::{Answer, Errno};

/// A node's id, the region machine's own ([`regions::NodeId`]).
pub use regions::NodeId;

/// What a Raft member is known by: its address for node-to-node traffic.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// dmlogd's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Outcomes,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Vec<u8>,
        AsyncRuntime = crate::runtime::Runtime,
);

/// A Raft log entry of this configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// The Raft handle of this configuration.
pub type Raft = openraft::Raft<TypeConfig>;
/// A node's Raft metrics.
pub type Metrics = openraft::RaftMetrics<NodeId, Node>;

/// One log entry's payload: region-machine commands applied in order, as
/// one unit. Batching many kernel requests into one entry is what makes
/// the log cheap per request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The commands, applied in this order.
    pub commands: Vec<regions::Command>,
}

impl Proposal {
    /// Whether peer `from` may forward this proposal to the leader: every
    /// command in it must be one that node may originate
    /// ([`regions::Command::may_come_from`]); the error names the first
    /// that is not.
    pub fn check_forwarded_by(&self, from: NodeId) -> Result<(), String> {
        match self.commands.iter().find(|c| !c.may_come_from(from)) {
            None => Ok(()),
            Some(c) => Err(format!("node {} may not propose {c:?}", from.0)),
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal of {} commands", self.commands.len())
    }
}

/// What applying one command produced, as it travels back to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The kernel's answer, or the errno it gets.
    pub answer: Result<Answer, Errno>,
    /// Why the request was refused, for the log.
    pub refusal: Option<String>,
    /// Work for the nodes (see [`regions::Effect`]).
    pub effects: Vec<regions::Effect>,
    /// The log index of the entry that applied it: a replica that has
    /// applied this far holds its effect (for reads from local state).
    pub index: u64,
}

impl From<regions::Applied> for Outcome {
    fn from(a: regions::Applied) -> Outcome {
        let refusal = a.outcome.as_ref().err().map(|r| r.to_string());
        Outcome { answer: a.outcome.map_err(|r| r.errno()), refusal, effects: a.effects, index: 0 }
    }
}

/// The outcomes of one entry, one per command (empty for blank and
/// membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes(pub Vec<Outcome>);

/// Version byte in front of everything this crate stores or sends, so a
/// later format can be told apart.
pub const FORMAT_VERSION: u8 = 2;

/// Serialises with the version byte in front.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![FORMAT_VERSION];
    out.extend(postcard::to_stdvec(value)?);
    Ok(out)
}

/// Reads what [`encode`] wrote.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&v, _)) => Err(DecodeError::Version(v)),
        None => Err(DecodeError::Empty),
    }
}

/// Stored or received bytes that do not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Nothing at all.
    #[error("empty record")]
    Empty,
    /// A format this build does not know.
    #[error("unknown format version {0}")]
    Version(u8),
    /// Malformed content.
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
}

/// An error message in openraft's error type.
pub(crate) fn any(e: impl ToString) -> openraft::AnyError {
    openraft::AnyError::error(e)
}
