//! `dmlogd`: one node of a cluster-coherent dirty-region log
//! ([`dmlogd::daemon`]). Everything but argument parsing is in
//! [`dmlogd::entry`], which the demo's daemons run too.

use clap::Parser;

fn main() {
    dmlogd::entry::main_with(dmlogd::cli::Daemon::parse());
}
