//! `node`: what runs on one dmlogd host around the replicated region
//! machine.
//!
//! * [`liveness`]: leases, eviction of dead nodes and self-fencing, as pure
//!   state machines with time as an input; the timing inequality that
//!   makes fencing safe is checked by [`liveness::Timing::validate`].
//! * [`live`]: the liveness task that runs them (renewals, fencing,
//!   evictions on the leader, pre-vote elections), with hooks for the fence.
//! * [`host`]: the pipeline of one host, which the daemon, the simulation,
//!   the multi-process tests and the demo all run: join, serve, the gate at
//!   the send, liveness, fence and rejoin, effects, stop.
//! * [`pipeline`]: the pure steps of a request's path: decode, route,
//!   reply.
//! * [`gate`]: whether the node may answer its kernel now, and why not.
//! * [`own_marks`]: the node's own tables and dirty regions as its kernel
//!   sees them, journaled on local disk, to re-register and re-mark them
//!   after an eviction or a daemon restart.
//! * [`router`]: decoded requests to replicated commands and reads and
//!   back: one ordered lane per log table, one batched Raft entry for
//!   everything queued.
//! * [`effects`]: the region machine's effects, carried out in one place.
//! * [`transport`]: the transport trait, the Unix datagram transport (same
//!   bytes as netlink) and the in-memory one.
//! * [`netlink`]: the kernel transport, a `NETLINK_CONNECTOR` socket in
//!   the dm-log group that hears only the kernel.
//! * [`disk_log`]: the `clustered-disk` log device, read at RESUME and
//!   written by one node per log, durable before a FLUSH is answered.
//! * [`fence`]: the fence actions (reboot, suspend, external command),
//!   each bounded in time.
//! * [`kick`]: making this node's kernel pick up resync work after an
//!   eviction (suspend and resume of the mirror).
//! * [`admin`]: the admin API for `dmlogctl`, on a root-only Unix socket.
//! * [`metrics`]: Prometheus metrics at `/metrics`.

#![deny(missing_docs)]

pub mod admin;
pub mod breaks;
pub mod disk_log;
pub mod effects;
pub mod fence;
pub mod gate;
pub mod host;
pub mod kick;
pub mod live;
pub mod liveness;
pub mod metrics;
pub mod netlink;
pub mod own_marks;
pub mod pipeline;
pub mod quiet;
pub mod router;
pub mod transport;
