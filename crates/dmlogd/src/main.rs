//! `dmlogd`: one node of a cluster-coherent dirty-region log
//! ([`dmlogd::daemon`]), or with `demo`, a three-node demonstration on
//! loopback ([`dmlogd::demo`]).

use std::io;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dmlogd::config::{Config, Overrides};

/// dmlogd: a cluster-coherent dirty-region log for device-mapper mirrors.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id (overrides the file).
    #[arg(long)]
    id: Option<u64>,
    /// Data directory (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address host:port (overrides the file).
    #[arg(long)]
    listen: Option<String>,
    /// An initial member ID=HOST:PORT (repeat; overrides the file's).
    #[arg(long = "member")]
    members: Vec<String>,
    /// Kernel transport: netlink or unix:<path>.
    #[arg(long)]
    kernel: Option<String>,
    /// Fence action: reboot, suspend or command:<program> [args…].
    #[arg(long)]
    fence: Option<String>,
    /// The admin API's Unix socket (default: admin.sock in the data dir).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<String>,
    /// The kernel's boot identity (default: from /proc/sys/kernel/random/boot_id).
    /// For simulated kernels only.
    #[arg(long, hide = true)]
    incarnation: Option<u64>,
    /// Log as JSON lines instead of plain text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Three dmlogd processes on loopback, each with a simulated kernel
    /// writing to one shared mirror: crashes, failover, eviction, resync,
    /// rejoin, then a verification. Exit status 1 if a check fails.
    Demo {
        /// Regions of the mirror.
        #[arg(long, default_value_t = 256)]
        regions: u64,
        /// Seconds of writes between the steps.
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Working directory (default: a temporary one, kept on failure).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seed of the write pattern.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// One line per step instead of the live table.
        #[arg(long)]
        plain: bool,
    },
}

fn main() {
    let args = Args::parse();
    if let Some(Cmd::Demo { regions, seconds, dir, seed, plain }) = args.command {
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
