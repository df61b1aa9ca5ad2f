//! The command lines of `dmlogd` and `dmlogctl` (clap), in the library so
//! that `cargo run -p dmlogd --example gen-docs` can render their man pages
//! and shell completions from the same definitions. Doc comments here are
//! the programs' help text, so subcommand fields and enums, which clap
//! shows no text for, have none.

#![allow(missing_docs)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A cluster-coherent dirty-region log for device-mapper mirrors.
#[derive(Parser, Debug)]
#[command(name = "dmlogd", version, disable_help_subcommand = true)]
pub struct Daemon {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The cluster's name (overrides the file; default dmlogd).
    #[arg(long)]
    pub cluster: Option<String>,
    /// This node's id (overrides the file).
    #[arg(long)]
    pub id: Option<u64>,
    /// Data directory (overrides the file).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address host:port (overrides the file).
    #[arg(long)]
    pub listen: Option<String>,
    /// An initial member ID=HOST:PORT (repeat; overrides the file's).
    #[arg(long = "member")]
    pub members: Vec<String>,
    /// Kernel transport: netlink or unix:<path>.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Fence action: reboot, suspend or command:<program> [args…].
    #[arg(long)]
    pub fence: Option<String>,
    /// The admin API's Unix socket (default: admin.sock in the data dir).
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics: Option<String>,
    /// The kernel's boot identity (default: from /proc/sys/kernel/random/boot_id).
    /// For simulated kernels only.
    #[arg(long, hide = true)]
    pub incarnation: Option<u64>,
    /// Check the configuration and exit: 0 if it is valid, else status 2
    /// and one line naming the problem.
    #[arg(long)]
    pub check_config: bool,
    /// Log as JSON lines instead of plain text.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<DaemonCmd>,
}

#[derive(Subcommand, Debug)]
pub enum DaemonCmd {
    /// Read the last 4 KiB of a mirror with O_DIRECT, to wake its idle
    /// recovery (run by the daemon itself, as a separate process).
    #[command(hide = true)]
    WakeRead { device: PathBuf },
    /// Recover from a lost majority: with this node's daemon stopped, make
    /// it the only voter of its cluster (the others are added back later
    /// as new, empty nodes). Every other member must be gone for good or
    /// wiped first; without --force it only says what it would do.
    ForceNewCluster {
        /// Do it: the other members are down and will not start again
        /// with their current data directories.
        #[arg(long)]
        force: bool,
    },
}

/// Status and administration of a dmlogd cluster.
#[derive(Parser, Debug)]
#[command(name = "dmlogctl", version)]
pub struct Ctl {
    /// The node's admin socket.
    #[arg(long, env = "DMLOGD_SOCKET", default_value = "/var/lib/dmlogd/admin.sock", global = true)]
    pub socket: PathBuf,
    /// A node's admin API over TCP (host:port) instead of the socket:
    /// needs --ca and a token.
    #[arg(long, global = true)]
    pub connect: Option<String>,
    /// The cluster CA's certificate, to trust the node (with --connect).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// A file holding the admin token (with --connect).
    #[arg(long, env = "DMLOGD_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of text (read commands).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCmd,
}

#[derive(Subcommand, Debug)]
pub enum CtlCmd {
    /// Members, leader, term, commit index, replication lag, health.
    /// Exit status 1 when the node is not healthy.
    Status,
    /// Every mirror log: regions, dirty, out of sync, recovering, marks per node.
    Logs,
    /// One mirror log in detail, with a map of its regions.
    Log {
        /// The log's uuid (the one in the mirror table).
        uuid: String,
        /// Characters per line of the region map.
        #[arg(long, default_value_t = 64)]
        width: u32,
        /// At most this many characters in the map (regions are grouped beyond).
        #[arg(long, default_value_t = 1024)]
        max_chars: u64,
    },
    /// Membership changes (on the leader).
    Members {
        #[command(subcommand)]
        change: MembersCmd,
    },
    /// Resync every region of a mirror log (as after a crash): its kernels
    /// copy each region from the default leg once more.
    Resync {
        /// The log's uuid.
        uuid: String,
    },
    /// Leadership (on the leader).
    Leader {
        #[command(subcommand)]
        change: LeaderCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum MembersCmd {
    /// Add a node: it joins as a learner, catches up, then votes.
    Add {
        /// Its node id (never used before in this cluster).
        id: u64,
        /// Its peer address, host:port.
        addr: String,
        /// Seconds the new node has to receive the log as a learner; if it
        /// has not by then it is taken out again and nothing changes.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        catch_up_timeout: u64,
    },
    /// Remove a node; its id is retired for good.
    Remove {
        /// Its node id.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaderCmd {
    /// Hand leadership to another voter.
    Transfer {
        /// The voter to lead.
        to: u64,
    },
}
