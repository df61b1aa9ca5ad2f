//! The machine's inputs and outputs as data.
//!
//! A [`Command`] changes state and is replicated (it is what a Raft entry
//! carries); a [`Query`] only reads. Both name the log by uuid and the kernel
//! log instance by [`Instance`] (node + luid).

use std::fmt;

use serde::{Deserialize, Serialize};
use wire::{Answer, Errno, Luid, Region, Uuid};

use crate::ctr::CtrError;

/// A cluster node's id, in the region machine and in Raft alike. Ids are
/// never reused. It travels as its number (postcard, gRPC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl From<u64> for NodeId {
    fn from(n: u64) -> NodeId {
        NodeId(n)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// One kernel log instance: a table on a node. A table reload makes a
/// second instance of the same log on the same node (spec §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Instance {
    /// The node whose kernel holds the table.
    pub node: NodeId,
    /// The kernel's id of the table's log.
    pub luid: Luid,
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.luid)
    }
}

/// A state-changing input, applied in the same order on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A state-changing kernel request from one log instance.
    Kernel {
        /// The log.
        uuid: Uuid,
        /// The sender.
        instance: Instance,
        /// The sender's session when it made this command (see
        /// [`Command::NodeJoined`]): applied only while the sender is a
        /// member of that session.
        session: u64,
        /// What it asked.
        op: KernelOp,
    },
    /// A node joined the cluster, or restarted. `incarnation` changes when
    /// the node's kernel was rebooted (its boot id): the log instances of an
    /// earlier incarnation are gone with their kernel and are handled like
    /// an eviction first.
    ///
    /// `session` names this join: a value the node has used for no earlier
    /// join. From then on the machine applies only the node's kernel
    /// commands and renewals made in this session. A command the node made
    /// before a fence, still travelling to the leader while the node was
    /// evicted and rejoined, is refused when it arrives: the rejoin stated
    /// afresh what the node's kernel holds, and the command's marks (those
    /// its lane made ahead of the writer, which nothing on the node
    /// remembers any more) would never be cleared.
    NodeJoined {
        /// The node.
        node: NodeId,
        /// Its kernel's boot identity.
        incarnation: u64,
        /// The session this join opens.
        session: u64,
    },
    /// The cluster declared a node dead. Its marks become out-of-sync
    /// regions for the survivors to resync (I10), its resync assignments
    /// are released, its instances are dropped.
    NodeEvicted {
        /// The node.
        node: NodeId,
    },
    /// A node renews its liveness lease. Changes no log, only the
    /// member's [`crate::Member::applied`]; refused if the node is not a
    /// member (it was evicted: it must rejoin, re-mark and re-register its
    /// tables before it serves its kernel again). Its
    /// [`Effect::LeaseRenewed`] tells the leader's lease clock.
    Renew {
        /// The node.
        node: NodeId,
        /// Its kernel's boot identity, as it joined.
        incarnation: u64,
        /// Its session, as it joined. A renewal of another session is
        /// refused: the node then fences and joins again, which makes its
        /// session the member's again (an earlier join of the node,
        /// delivered late, cannot leave it stuck with commands refused).
        session: u64,
        /// The highest log index its replica had applied when it proposed
        /// this renewal.
        applied: u64,
    },
    /// The node left the cluster for good (removed by the admin): evicted
    /// as by [`Command::NodeEvicted`], and its id is retired, never to be a
    /// member again.
    NodeRetired {
        /// The node.
        node: NodeId,
    },
    /// Node `node` comes back after an eviction without a reboot: its
    /// kernel kept its tables and the in-sync hints it cached before, which
    /// may now be above regions that went out of sync meanwhile, so it may
    /// write them without asking IS_REMOTE_RECOVERING. Those regions (see
    /// `Log::disown_behind_stale_hint`) are treated as after an eviction (no
    /// copy starts, copies under way are disowned) until its kernel has
    /// been kicked and resumed. Sent by the node itself in its rejoin entry.
    StaleHints {
        /// The node.
        node: NodeId,
    },
    /// An administrator asks for a full resync of a log (`dmlogctl resync`):
    /// every region goes out of sync, and every kernel with the log active
    /// is kicked in turn so that it stops trusting its cached hint, as
    /// after an eviction (I7, I10).
    Resync {
        /// The log.
        uuid: Uuid,
    },
    /// The leader's lease clock found `node` silent for `dead_after`: evict
    /// it as [`Command::NodeEvicted`] does, but only if it is still the
    /// membership that joined as `joined` ([`crate::Member::joined`]). An
    /// eviction decided before the node joined again (after a reboot, or
    /// after a fence without one) and committed after that join is refused,
    /// so it cannot drop the marks of a node that is answering again.
    NodeExpired {
        /// The node.
        node: NodeId,
        /// Its membership when the eviction was decided.
        joined: u64,
    },
    /// A write of a `clustered-disk` log device, reported by the node that
    /// wrote it (the log's disk writer, [`crate::Log::disk_writer`]): the
    /// clean bits of `version` are durable on the device, or the write
    /// failed (`D` in STATUS_INFO until a later write succeeds).
    DiskLogWritten {
        /// The log.
        uuid: Uuid,
        /// The node that wrote.
        node: NodeId,
        /// The clean-bit version it wrote.
        version: u64,
        /// Whether the write (or its cache flush) failed.
        failed: bool,
    },
}

/// Who may put a command into the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Only this node itself: what its own kernel asked, its own join,
    /// renewal, rejoin hints and disk writes. A peer that forwards it to the
    /// leader must be this node.
    Node(NodeId),
    /// Only the leader, on its own Raft (evictions and removals): never
    /// forwarded by a peer.
    Leader,
    /// Any member (an administrator's full resync, asked on any node).
    Anyone,
}

impl Command {
    /// Who may originate this command. A leader takes a forwarded
    /// proposal only if every command in it may come from the forwarding
    /// peer, so a member cannot speak for another (register, mark or clear
    /// on its behalf, report its disk writes) or evict anyone.
    pub fn origin(&self) -> Origin {
        match self {
            Command::Kernel { instance, .. } => Origin::Node(instance.node),
            Command::NodeJoined { node, .. }
            | Command::Renew { node, .. }
            | Command::StaleHints { node }
            | Command::DiskLogWritten { node, .. } => Origin::Node(*node),
            Command::NodeEvicted { .. } | Command::NodeRetired { .. } | Command::NodeExpired { .. } => Origin::Leader,
            Command::Resync { .. } => Origin::Anyone,
        }
    }

    /// Whether peer `from` may forward this command to the leader.
    pub fn may_come_from(&self, from: NodeId) -> bool {
        match self.origin() {
            Origin::Node(n) => n == from,
            Origin::Leader => false,
            Origin::Anyone => true,
        }
    }
}

/// The state-changing kernel requests (spec §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelOp {
    /// CTR: construct an instance with these arguments.
    Ctr {
        /// The constructor string (without the reconnect NUL).
        args: String,
    },
    /// DTR: destroy the instance.
    Dtr,
    /// PRESUSPEND: recovery on this instance has stopped.
    Presuspend,
    /// POSTSUSPEND: all I/O of this instance has drained.
    Postsuspend,
    /// RESUME. For a `clustered-disk` log the resuming node reads the log
    /// device first and passes what it read; it is used only if the log has
    /// not been activated before (the first activation reads the disk,
    /// spec §5.5, I11).
    Resume {
        /// The log device's header and bitmap, if this is a disk log.
        disk: Option<crate::disk::DiskImage>,
    },
    /// FLUSH, with the marks of an integrated flush (may be empty).
    Flush {
        /// Marks carried by the flush.
        marks: Vec<Region>,
    },
    /// MARK_REGION.
    Mark(Vec<Region>),
    /// CLEAR_REGION.
    Clear(Vec<Region>),
    /// GET_RESYNC_WORK: assigns a region to recover (a state change).
    GetResyncWork,
    /// SET_REGION_SYNC.
    SetRegionSync {
        /// The region.
        region: Region,
        /// In sync (recovered) or not (failure).
        in_sync: bool,
    },
    /// Not a kernel request: the node's own statement, in a rejoin, of
    /// exactly the regions this instance's kernel may hold dirty (from
    /// the node's journal). They are marked; any other mark of the
    /// instance is cleared (its kernel had sent that CLEAR, acknowledged
    /// before it was committed, and a daemon restart or a fence lost it).
    Remark(Vec<Region>),
    /// IS_REMOTE_RECOVERING as the kernel's write path asks it: answered as
    /// [`Query::IsRemoteRecovering`], and a state change when the answer
    /// lets an unmarked write go to the default leg only (see
    /// `Log::halted_passes`).
    IsRemoteRecovering(Region),
}

/// The read-only kernel requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// GET_REGION_SIZE.
    GetRegionSize,
    /// IS_CLEAN.
    IsClean(Region),
    /// IN_SYNC.
    InSync(Region),
    /// GET_SYNC_COUNT.
    GetSyncCount,
    /// STATUS_INFO.
    StatusInfo,
    /// STATUS_TABLE.
    StatusTable,
    /// IS_REMOTE_RECOVERING.
    IsRemoteRecovering(Region),
}

/// What applying a command produced.
///
/// Ordering duty: the caller must carry out every effect that is
/// [`Effect::before_reply`] **before** it sends the answer to the kernel.
/// In particular a FLUSH's answer may only be sent once its command is
/// durably committed (I1) and, for a `clustered-disk` log, once the
/// [`Effect::PersistDiskLog`] it returned is done.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Applied {
    /// The answer for the kernel, or why the request was refused.
    pub outcome: Result<Answer, Refusal>,
    /// Work for the node around the machine.
    pub effects: Vec<Effect>,
}

impl Applied {
    pub(crate) fn answer(a: Answer) -> Applied {
        Applied { outcome: Ok(a), effects: Vec::new() }
    }

    pub(crate) fn refuse(r: Refusal) -> Applied {
        Applied { outcome: Err(r), effects: Vec::new() }
    }
}

/// Work the machine asks of the node; data, never I/O.
///
/// Each variant says when it is carried out ([`Effect::before_reply`]):
/// *before the reply* — by the node whose kernel sent the command, and
/// the command's answer waits for it; or *after apply* — by the node it
/// names, whenever that node applies the entry, and nobody waits for it.
/// The node's pipeline honours this in one place (`node::effects`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// *Before the reply.* The `clustered-disk` log must hold the clean
    /// bits of at least `version` before the answer is sent (I1). One node
    /// writes the device ([`crate::Log::disk_writer`]); every node waits
    /// until the written version is reported ([`Command::DiskLogWritten`]).
    PersistDiskLog {
        /// The log.
        uuid: Uuid,
        /// The clean-bit version to be durable.
        version: u64,
    },
    /// *After apply.* Regions of this log went out of sync behind the
    /// kernel's cached `in_sync_hint` on `node`: its kernel will not ask about them until it
    /// is resumed, so the node must make it (I10 caveat, spec §3.3).
    KickKernel {
        /// The node whose kernel must be resumed.
        node: NodeId,
        /// The log.
        uuid: Uuid,
    },
    /// *After apply.* `node` renewed its lease (the leader restarts its
    /// timer).
    LeaseRenewed {
        /// The node.
        node: NodeId,
    },
    /// *After apply.* `node`'s kernel should run a recovery pass: a
    /// suspending kernel's
    /// writes wait for out-of-sync regions to be resynced, and an idle
    /// kernel does not ask for resync work until something wakes it. The
    /// node wakes it with I/O (a read of the mirror).
    WakeRecovery {
        /// The node to wake.
        node: NodeId,
        /// The log.
        uuid: Uuid,
    },
}

impl Effect {
    /// Whether the node must carry this effect out before it answers the
    /// command that produced it (else it is done after apply, by the node
    /// it names, and nobody waits for it).
    pub fn before_reply(&self) -> bool {
        match self {
            Effect::PersistDiskLog { .. } => true,
            Effect::KickKernel { .. } | Effect::LeaseRenewed { .. } | Effect::WakeRecovery { .. } => false,
        }
    }
}

/// Why a request was refused; each maps to the errno the kernel sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sending node is not (or no longer) a cluster member.
    #[error("node {0} is not a member of the cluster")]
    NotAMember(NodeId),
    /// The node id was removed from the cluster and is never reused.
    #[error("node id {0} is retired")]
    Retired(NodeId),
    /// No log with this uuid.
    #[error("no log {0}")]
    UnknownLog(Uuid),
    /// The log exists but not this instance.
    #[error("no log instance {0}")]
    UnknownInstance(Instance),
    /// A region at or past `region_count`.
    #[error("region {region} is out of range (region_count {count})")]
    RegionOutOfRange {
        /// The region.
        region: Region,
        /// The log's region count.
        count: u64,
    },
    /// A constructor string that does not parse.
    #[error("bad constructor arguments: {0}")]
    BadCtr(#[from] CtrError),
    /// A constructor whose geometry differs from the log's other instances.
    #[error("geometry {new} differs from the log's {existing}")]
    GeometryMismatch {
        /// The log's geometry.
        existing: String,
        /// The refused constructor's.
        new: String,
    },
    /// A second constructor for a live instance with other arguments.
    #[error("instance {0} exists with other arguments")]
    InstanceExists(Instance),
    /// An eviction decided against a membership the node has since renewed
    /// by joining again ([`Command::NodeExpired`]).
    #[error("node {0} joined again since its eviction was decided")]
    StaleEviction(NodeId),
    /// A command the node made in an earlier session than its membership's
    /// ([`Command::NodeJoined`]).
    #[error("node {0} made this command before it last joined")]
    StaleSession(NodeId),
}

impl Refusal {
    /// The errno the kernel gets.
    pub fn errno(&self) -> Errno {
        match self {
            Refusal::NotAMember(_)
            | Refusal::StaleSession(_)
            | Refusal::Retired(_)
            | Refusal::UnknownLog(_)
            | Refusal::UnknownInstance(_) => Errno::ENOENT,
            Refusal::InstanceExists(_) => Errno::EEXIST,
            Refusal::RegionOutOfRange { .. }
            | Refusal::BadCtr(_)
            | Refusal::GeometryMismatch { .. }
            | Refusal::StaleEviction(_) => Errno::EINVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_may_forward_only_what_it_originates() {
        let (me, other) = (NodeId(2), NodeId(3));
        let uuid = Uuid::new("LVM-o").unwrap_or_else(|| unreachable!());
        let mine = Instance { node: me, luid: wire::Luid(1) };
        let theirs = Instance { node: other, luid: wire::Luid(1) };
        let kernel =
            |instance| Command::Kernel { uuid: uuid.clone(), instance, session: 0, op: KernelOp::Clear(Vec::new()) };
        let disk = |node| Command::DiskLogWritten { uuid: uuid.clone(), node, version: 1, failed: false };
        for (c, ok) in [
            (kernel(mine), true),
            (kernel(theirs), false),
            (Command::NodeJoined { node: me, incarnation: 1, session: 0 }, true),
            (Command::NodeJoined { node: other, incarnation: 1, session: 0 }, false),
            (Command::Renew { node: other, incarnation: 1, session: 0, applied: 0 }, false),
            (Command::StaleHints { node: other }, false),
            (disk(me), true),
            (disk(other), false),
            (Command::NodeEvicted { node: other }, false),
            (Command::NodeExpired { node: other, joined: 1 }, false),
            (Command::NodeRetired { node: me }, false),
            (Command::Resync { uuid: uuid.clone() }, true),
        ] {
            assert_eq!(c.may_come_from(me), ok, "{c:?}");
        }
    }
}
