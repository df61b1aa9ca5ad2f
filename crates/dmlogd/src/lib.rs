//! The `dmlogd` and `dmlogctl` programs, as a library so the demo and the
//! multi-process tests share one harness.
//!
//! * [`cli`]: the command lines of both programs.
//! * [`config`]: the daemon's configuration (TOML, flags, embedded default).
//! * [`daemon`]: the daemon itself.
//! * [`ctl`]: the admin client and the text `dmlogctl` prints.
//! * [`harness`]: real `dmlogd` processes on loopback driven by simulated
//!   kernels, used by `dmlogd demo` and the tests.
//! * [`demo`]: `dmlogd demo`.

#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod harness;
