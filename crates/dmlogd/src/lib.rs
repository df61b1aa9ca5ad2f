//! The `dmlogd` and `dmlogctl` programs, as a library: the man pages are
//! rendered from [`cli`], and the demo's daemons run [`entry`].
//!
//! * [`cli`]: the command lines of both programs.
//! * [`config`]: the daemon's configuration (TOML, flags, embedded default).
//! * [`entry`]: `dmlogd` from its parsed command line.
//! * [`daemon`]: the daemon: configuration, signals and wiring around the
//!   host pipeline (`node::host`).
//! * [`ctl`]: the admin client and the text `dmlogctl` prints.
//! * [`logging`]: the daemon's log (level, file, journal priorities,
//!   throttle) and what SIGHUP does to it.

#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod entry;
pub mod logging;
