//! Test support shared by dmlogd's cross-crate tests and the `sim` binary:
//!
//! * [`trace`] reads the real kernel trace (a copy in `tests/fixtures`);
//! * [`local`] answers kernel datagrams from one machine in place, through
//!   the pipeline's own decode, route and reply;
//! * [`cluster`] runs several simulated kernels against one in-process
//!   region machine (no replication yet), with crashes, evictions and the
//!   leg model, and checks the invariants from outside the machine;
//! * [`raft_cluster`] runs simulated kernels against the product's host
//!   pipeline on a real Raft cluster (openraft, redb, the in-memory
//!   network);
//! * [`raft_sim`] is its seeded random run, [`scenarios`] its named
//!   liveness scenarios.

pub mod cluster;
pub mod local;
pub mod raft_cluster;
pub mod raft_sim;
pub mod scenarios;
pub mod trace;
