//! `regions`: dmlogd's region-state machine.
//!
//! **Contract.** Input is a [`Command`] (a state-changing kernel request,
//! or a cluster event such as [`Command::NodeEvicted`]) or a [`Query`] (a
//! read-only kernel request). Output is an [`Applied`]: the answer for the
//! kernel plus [`Effect`]s for the node to carry out *before* it answers.
//! The same commands in the same order give the same state, byte for byte.
//! This crate never touches a socket, a file, a clock, a thread or a random
//! number: replication, I/O and time live in the crates above it.
//!
//! **What it keeps** per mirror log (keyed by uuid): geometry, the clean and
//! sync bitmaps, marks as a set per (instance, region), the resync
//! assignments, each kernel instance's suspend phase, and the constructor
//! arguments. A kernel *instance* is one table on one node: (node, luid).
//!
//! **Where each invariant of spec §7 is enforced** is listed in
//! `docs/architecture.md`; the checks themselves are in [`invariants`], one
//! named function per invariant, run after every command in debug builds.
//!
//! Departures from cmirrord, each a fix of a flaw it has (spec §5.10):
//! an evicted node's marks become out-of-sync regions the survivors resync
//! (I10); a dead recoverer's assignment is released; regions are recovered
//! in parallel by different nodes; IN_SYNC is answered truthfully rather than
//! "always 1 after a full sync" (I5); integrated flush is supported; a
//! suspend/resume of a lone node keeps its state instead of resyncing all.
//!
//! ```
//! use regions::{Command, Instance, KernelOp, Machine, NodeId, Query};
//! use wire::{Answer, Luid, Region, Uuid};
//!
//! let mut m = Machine::new();
//! let uuid = Uuid::new("LVM-demo").unwrap();
//! let (a, b) = (Instance { node: NodeId(1), luid: Luid(10) }, Instance { node: NodeId(2), luid: Luid(20) });
//! let kernel = |instance, op| Command::Kernel { uuid: uuid.clone(), instance, session: 0, op };
//! for (node, i) in [(NodeId(1), a), (NodeId(2), b)] {
//!     let _ = m.apply(&Command::NodeJoined { node, incarnation: 1, session: 0 });
//!     let _ = m.apply(&kernel(i, KernelOp::Ctr { args: "8192 clustered-core 1024 nosync".into() }));
//!     let _ = m.apply(&kernel(i, KernelOp::Resume { disk: None }));
//! }
//! // Node 1 marks region 3 with an integrated flush, then dies mid-write.
//! let _ = m.apply(&kernel(a, KernelOp::Flush { marks: vec![Region(3)] }));
//! let applied = m.apply(&Command::NodeEvicted { node: NodeId(1) });
//! assert!(!applied.effects.is_empty(), "node 2's kernel must be told to look again");
//! assert_eq!(m.read(&uuid, b, &Query::GetSyncCount), Ok(Answer::SyncCount(7)));
//! // Node 2's kernel is suspended and resumed, which resets its cached hint;
//! // then its writes to region 3 are held and it gets region 3 to resync.
//! for op in [KernelOp::Presuspend, KernelOp::Postsuspend, KernelOp::Resume { disk: None }] {
//!     let _ = m.apply(&kernel(b, op));
//! }
//! assert_eq!(m.read(&uuid, b, &Query::InSync(Region(3))), Ok(Answer::Bool(false)));
//! assert_eq!(m.apply(&kernel(b, KernelOp::GetResyncWork)).outcome, Ok(Answer::ResyncWork(Some(Region(3)))));
//! let _ = m.apply(&kernel(b, KernelOp::SetRegionSync { region: Region(3), in_sync: true }));
//! assert_eq!(m.read(&uuid, b, &Query::GetSyncCount), Ok(Answer::SyncCount(8)));
//! ```

#![deny(missing_docs)]

mod bitmap;
pub mod breaks;
mod command;
pub mod ctr;
mod describe;
pub mod disk;
pub mod invariants;
pub mod limits;
mod log;
mod machine;

pub use bitmap::Bitmap;
pub use command::{Applied, Command, Effect, Instance, KernelOp, NodeId, Origin, Query, Refusal};
pub use ctr::{CtrArgs, CtrError, LogType, SyncMode};
pub use disk::DiskImage;
pub use invariants::Violation;
pub use log::{InstanceState, Log, Phase};
pub use machine::{Machine, Member, SnapshotError};
