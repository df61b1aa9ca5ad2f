//! Test support shared by dmlogd's cross-crate tests and the `sim` binary:
//!
//! * [`trace`] reads the real kernel trace in `shared/fixtures`;
//! * [`cluster`] runs several simulated kernels against one in-process
//!   region machine (no replication yet), with crashes, evictions and the
//!   leg model, and checks the invariants from outside the machine.

pub mod cluster;
pub mod trace;
