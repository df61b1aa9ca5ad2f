//! `dmlogd`: one node of a cluster-coherent dirty-region log
//! ([`dmlogd::daemon`]), or with `demo`, a three-node demonstration on
//! loopback ([`dmlogd::demo`]).

use std::io;
use std::path::PathBuf;

use clap::Parser;
use dmlogd::cli::{Daemon, DaemonCmd};
use dmlogd::config::{Config, Overrides};

fn main() {
    let args = Daemon::parse();
    if let Some(DaemonCmd::Demo { regions, seconds, dir, seed, plain }) = args.command {
        demo(regions, seconds, dir, seed, plain);
    }
    init_logging(args.json);
    let text = match &args.config {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) => fail(&format!("config {}: {e}", p.display())),
        },
        None => None,
    };
    let overrides = Overrides {
        cluster: args.cluster.clone(),
        id: args.id,
        data_dir: args.data_dir.clone(),
        listen: args.listen.clone(),
        members: args.members.clone(),
        kernel: args.kernel.clone(),
        fence: args.fence.clone(),
        admin_socket: args.admin_socket.clone(),
        metrics: args.metrics.clone(),
        incarnation: args.incarnation,
    };
    let config = match Config::build(text.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    if args.check_config {
        println!("dmlogd: configuration ok: node {} of {} members", config.id, config.members.len());
        return;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    if let Err(e) = runtime.block_on(dmlogd::daemon::run(config)) {
        fail(&e);
    }
}

/// One line on stderr, exit status 2.
fn fail(msg: &str) -> ! {
    eprintln!("dmlogd: {msg}");
    std::process::exit(2);
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DMLOGD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}

fn demo(regions: u64, seconds: u64, dir: Option<PathBuf>, seed: u64, plain: bool) -> ! {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => fail(&format!("cannot find my own executable: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    let live = !plain && dmlogd::demo::is_terminal();
    let opts = dmlogd::demo::Options { exe, dir, regions: regions.max(8), write_secs: seconds, live, seed };
    match runtime.block_on(dmlogd::demo::run(opts)) {
        Ok(report) => {
            print!("{}", dmlogd::demo::summary(&report));
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("dmlogd demo: FAILED: {e}");
            std::process::exit(1);
        }
    }
}
