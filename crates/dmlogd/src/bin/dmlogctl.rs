//! `dmlogctl`: look at and change a running dmlogd cluster through one
//! node's admin socket.

use clap::Parser;
use dmlogd::cli::{Ctl as Args, CtlCmd as Cmd, LeaderCmd, MembersCmd};
use dmlogd::ctl;
use node::admin::pb::{
    AddNodeRequest, LogRequest, LogsRequest, RemoveNodeRequest, ResyncRequest, StatusRequest, TransferLeaderRequest,
};

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
    let mut c = match &args.connect {
        None => ctl::connect(&args.socket).await?,
        Some(addr) => {
            let ca = args.ca.as_ref().ok_or("--connect needs --ca <cluster CA certificate>")?;
            let ca = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            let tf = args.token_file.as_ref().ok_or("--connect needs --token-file (or DMLOGD_TOKEN_FILE)")?;
            let token = std::fs::read_to_string(tf).map_err(|e| format!("--token-file {}: {e}", tf.display()))?;
            ctl::connect_tcp(addr, &ca, token.trim()).await?
        }
    };
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
        Cmd::Members { change: MembersCmd::Add { id, addr, catch_up_timeout } } => {
            let catch_up_millis = catch_up_timeout.saturating_mul(1000);
            let r = c.add_node(AddNodeRequest { id, addr, catch_up_millis }).await.map_err(e)?.into_inner();
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
