//! The demo of dmlogd and the multi-process harness it runs on: real
//! daemon processes on loopback, each driven by a simulated kernel
//! (`kernel-sim`) over the Unix transport, sharing one pair of simulated
//! mirror legs. None of this is in the `dmlogd` binary; the daemons the
//! demo starts are this crate's binary running `dmlogd`'s own entry point
//! (`dmlogd-demo daemon …`, [`dmlogd::entry`]).
//!
//! * [`harness`]: start, kill, pause and cut off daemons, boot and crash
//!   their kernels, drive the kernels, read the cluster through the admin
//!   sockets.
//! * [`demo`]: the crash-and-recover demonstration with its verdict.

#![deny(missing_docs)]

pub mod demo;
pub mod harness;
