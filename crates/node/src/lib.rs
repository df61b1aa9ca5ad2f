//! `node`: what runs on one dmlogd host around the replicated region
//! machine.
//!
//! * [`liveness`]: leases, eviction of dead nodes and self-fencing, as pure
//!   state machines with time as an input; the timing inequality that
//!   makes fencing safe is checked by [`liveness::Timing::validate`].
//! * [`live`]: the liveness task that runs them (renewals, fencing,
//!   evictions on the leader, pre-vote elections), with hooks for the fence.
//! * [`own_marks`]: the node's own tables and dirty regions as its kernel
//!   sees them, to re-register and re-mark them after an eviction.
//! * [`router`]: kernel datagrams to replicated commands and reads and
//!   back: one ordered lane per log table, one batched Raft entry for
//!   everything queued.
//! * [`transport`]: the Unix datagram transport (same bytes as netlink)
//!   and the serve loop that joins a transport to the router.
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
pub mod disk_log;
pub mod fence;
pub mod kick;
pub mod live;
pub mod liveness;
pub mod metrics;
pub mod netlink;
pub mod own_marks;
pub mod router;
pub mod transport;
