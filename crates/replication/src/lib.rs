//! `replication`: dmlogd's region-state machine under Raft.
//!
//! * [`types`]: the openraft type configuration. A log entry carries a
//!   [`Proposal`], a batch of [`regions::Command`]s; applying it returns one
//!   [`Outcome`] per command.
//! * [`LogStore`]: the Raft log, vote and commit index in redb, with group
//!   commit: one flusher thread turns every write queued behind the first
//!   into one transaction and one sync. An append is reported durable only
//!   after that sync; a vote is acknowledged only after it.
//! * [`StateMachine`]: the region machine in memory, snapshots in the same
//!   redb file, restored at start (openraft 0.9 does not do that itself).
//! * [`Replica`]: propose and read from any node; followers forward to the
//!   leader; reads are linearizable (read index).
//! * [`grpc`]: the production transport (tonic), one channel per peer;
//!   the service is `proto/dmlogd/peer.proto` (the admin API, in the same
//!   directory, is the `node` crate's).
//! * [`membership`]: bootstrap, join, removal, leadership transfer.
//! * [`node`]: opens the store and starts one Raft node.
//! * [`memnet`]: an in-memory network with faults, for tests and simulation.
//!
//! openraft is 0.9.25 with `storage-v2` and `generic-snapshot-data`; every
//! openraft type is used here only, so a move to 0.10 touches this crate.

#![deny(missing_docs)]
// openraft fixes the error type of every storage method; it is large.
#![allow(clippy::result_large_err)]

pub mod grpc;
mod log_store;
pub mod membership;
pub mod memnet;
pub mod node;
pub mod recovery;
mod replica;
pub mod runtime;
mod state_machine;
pub mod types;

/// Code generated from `proto/dmlogd/peer.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    /// `dmlogd.peer`: node-to-node traffic.
    pub mod peer {
        tonic::include_proto!("dmlogd.peer");
    }
}

pub use log_store::{FlushMode, FlushStats, LogStore, OpenError};
pub use replica::{Campaign, ForwardError, LeaderLink, ReadRequest, Replica, ReplicaError};
pub use state_machine::{AppliedEffects, SnapshotBuilder, StateMachine, StateReader, Violations};
pub use types::{Entry, LogId, Node, NodeId, Outcome, Outcomes, Proposal, Raft, TypeConfig};
