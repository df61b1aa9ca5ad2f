//! `dmlogctl`: look at and change a running dmlogd cluster through one
//! node's admin socket.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dmlogd::ctl;
use replication::pb::admin::{
    AddNodeRequest, LogRequest, LogsRequest, RemoveNodeRequest, ResyncRequest, StatusRequest, TransferLeaderRequest,
};

/// dmlogctl: status and administration of a dmlogd cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The node's admin socket.
    #[arg(long, env = "DMLOGD_SOCKET", default_value = "/var/lib/dmlogd/admin.sock", global = true)]
    socket: PathBuf,
    /// Print JSON instead of text (read commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
enum MembersCmd {
    /// Add a node: it joins as a learner, catches up, then votes.
    Add {
        /// Its node id (never used before in this cluster).
        id: u64,
        /// Its peer address, host:port.
        addr: String,
    },
    /// Remove a node; its id is retired for good.
    Remove {
        /// Its node id.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum LeaderCmd {
    /// Hand leadership to another voter.
    Transfer {
        /// The voter to lead.
        to: u64,
    },
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    match runtime.block_on(run(args)) {
        Ok(code) => std::process::exit(code),
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("dmlogctl: {msg}");
    std::process::exit(2);
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run(args: Args) -> Result<i32, String> {
    let mut c = ctl::connect(&args.socket).await?;
    let e = |s: tonic::Status| ctl::refusal(&s);
    match args.command {
        Cmd::Status => {
            let s = c.status(StatusRequest {}).await.map_err(e)?.into_inner();
            if args.json {
                print_json(&ctl::status_json(&s));
            } else {
                print!("{}", ctl::status_text(&s));
            }
            Ok(i32::from(ctl::health(&s).is_err()))
        }
        Cmd::Logs => {
            let r = c.logs(LogsRequest {}).await.map_err(e)?.into_inner();
            if args.json {
                print_json(&ctl::logs_json(&r));
            } else {
                print!("{}", ctl::logs_text(&r));
            }
            Ok(0)
        }
        Cmd::Log { uuid, width, max_chars } => {
            let r = c.log(LogRequest { uuid, width, max_chars }).await.map_err(e)?.into_inner();
            if args.json {
                print_json(&ctl::log_json(&r));
            } else {
                print!("{}", ctl::log_text(&r));
            }
            Ok(0)
        }
        Cmd::Members { change: MembersCmd::Add { id, addr } } => {
            let r = c.add_node(AddNodeRequest { id, addr }).await.map_err(e)?.into_inner();
            println!("node {id} added; leader {}; {} members", r.leader, r.members.len());
            Ok(0)
        }
        Cmd::Members { change: MembersCmd::Remove { id } } => {
            let r = c.remove_node(RemoveNodeRequest { id }).await.map_err(e)?.into_inner();
            println!("node {id} removed and retired; leader {}; {} members", r.leader, r.members.len());
            Ok(0)
        }
        Cmd::Resync { uuid } => {
            let r = c.resync(ResyncRequest { uuid: uuid.clone() }).await.map_err(e)?.into_inner();
            println!(
                "log {uuid}: {} of {} regions out of sync; the kernels are kicked one at a time and resync them",
                r.out_of_sync, r.regions
            );
            Ok(0)
        }
        Cmd::Leader { change: LeaderCmd::Transfer { to } } => {
            let r = c.transfer_leader(TransferLeaderRequest { to }).await.map_err(e)?.into_inner();
            println!("leader is now node {}", r.leader);
            Ok(0)
        }
    }
}
