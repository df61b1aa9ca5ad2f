//! `dmlogd`: one node of a cluster-coherent dirty-region log.
//!
//! Starts, in order: configuration (file, flags, embedded default), the
//! data directory and its lock (one daemon per data directory), the kernel
//! transport (so a missing connector or privilege is reported before
//! anything else), the Raft node and its gRPC server, the node's join, the
//! request router, the liveness task and the effects consumer. SIGTERM or
//! SIGINT stop it cleanly (exit 0); SIGUSR1 logs a summary of every log.

mod config;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use node::live::{LiveConfig, LiveHooks, LiveTask};
use node::router::Router;
use node::transport::{Transport, UnixTransport, serve};
use regions::{Effect, NodeId};
use replication::grpc::GrpcLeaderLink;
use replication::node::{GrpcNode, RaftSettings};
use replication::{Proposal, Replica};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::config::{Config, Kernel, Overrides};

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
    /// Log as JSON lines instead of plain text.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
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
    };
    let config = match Config::build(text.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    if let Err(e) = runtime.block_on(run(config)) {
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

/// The kernel's boot identity: a reboot changes it, a daemon restart
/// under the same kernel does not.
fn incarnation() -> u64 {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    // FNV-1a over the text: stable across runs and builds.
    id.trim().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

async fn run(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("data dir {}: {e}", config.data_dir.display()))?;
    let lock_path = config.data_dir.join("dmlogd.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.try_lock().map_err(|_| format!("another dmlogd holds {}", lock_path.display()))?;
    match config.kernel.clone() {
        Kernel::Netlink => {
            let t = node::netlink::NetlinkTransport::open().map_err(|e| e.to_string())?;
            serve_with(config, Arc::new(t)).await
        }
        Kernel::Unix(path) => {
            let t = UnixTransport::bind(&path).map_err(|e| format!("unix socket {}: {e}", path.display()))?;
            serve_with(config, Arc::new(t)).await
        }
    }
}

/// The fence: answer nothing more, then run the configured action.
struct DaemonHooks {
    fenced: Arc<AtomicBool>,
    action: node::fence::FenceAction,
    limit: Duration,
}

impl LiveHooks for DaemonHooks {
    fn fence(&self) {
        self.fenced.store(true, Ordering::SeqCst);
        tracing::error!("lease lost: fenced; no more answers to the kernel");
        match self.action.run(&[], self.limit) {
            Ok(()) => tracing::error!("fence action done"),
            Err(e) => tracing::error!(error = %e, "fence action failed; stop this node's I/O by hand"),
        }
    }

    fn evicted(&self, node: NodeId) {
        tracing::warn!(node = node.0, "evicted a node whose lease ran out");
    }

    fn trace(&self, line: String) {
        tracing::debug!("{line}");
    }
}

async fn serve_with<T: Transport>(config: Config, transport: Arc<T>) -> Result<(), String> {
    let listener =
        tokio::net::TcpListener::bind(&config.listen).await.map_err(|e| format!("listen {}: {e}", config.listen))?;
    let settings = RaftSettings { election_max_ms: config.timing.election_max_ms, ..RaftSettings::default() };
    let path = config.data_dir.join("raft.redb");
    let mut grpc = GrpcNode::start(config.id, &path, listener, settings, Some(&config.members))
        .await
        .map_err(|e| e.to_string())?;
    let replica = grpc.replica.clone();
    let inc = incarnation();
    join(&replica, inc).await;
    tracing::info!(id = config.id, listen = %config.listen, members = ?config.members, "joined");

    let fenced = Arc::new(AtomicBool::new(false));
    let router = Router::new(replica.clone(), fenced.clone());
    let live = LiveTask::new(
        replica.clone(),
        inc,
        LiveConfig { timing: config.timing, rate: 1.0, seed: inc ^ config.id, prevote: true, fence: true },
        Instant::now(),
    );
    let renewals = live.renewals();
    let me = NodeId(config.id);
    let effects = tokio::spawn(async move {
        while let Some(applied) = grpc.effects.recv().await {
            for e in applied.effects {
                match e {
                    Effect::LeaseRenewed { node } => renewals.renewed(node),
                    Effect::KickKernel { node, uuid } if node == me => {
                        tracing::warn!(%uuid, "this node's kernel must be suspended and resumed to pick up resync work (dmsetup suspend/resume the mirror)");
                    }
                    _ => {}
                }
            }
        }
        grpc
    });
    let hooks = Arc::new(DaemonHooks {
        fenced,
        action: config.fence.clone(),
        limit: Duration::from_millis(config.timing.fence_action_max_ms),
    });
    let live = tokio::spawn(live.run(hooks));
    let server = tokio::spawn(serve(transport, router));

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => dump(&replica),
        }
    }
    tracing::info!("stopping");
    server.abort();
    live.abort();
    handoff(&replica).await;
    let _ = replica.raft.shutdown().await;
    effects.abort();
    Ok(())
}

/// Registers this node's kernel, retrying until the cluster answers.
async fn join(replica: &Arc<Replica<GrpcLeaderLink>>, incarnation: u64) {
    let p = Proposal { commands: vec![regions::Command::NodeJoined { node: NodeId(replica.id), incarnation }] };
    loop {
        match replica.propose(p.clone(), Instant::now() + Duration::from_secs(5)).await {
            Ok(_) => return,
            Err(e) => tracing::warn!(error = %e, "waiting for the cluster to join"),
        }
    }
}

/// A leader that stops hands leadership to another voter first, so the
/// cluster does not wait an election timeout for a new one.
async fn handoff(replica: &Arc<Replica<GrpcLeaderLink>>) {
    if !replica.raft.metrics().borrow().state.is_leader() {
        return;
    }
    let Some(to) = replica.members().into_iter().find(|m| m.voter && m.id != replica.id).map(|m| m.id) else {
        return;
    };
    match replica.transfer_leader(to, Instant::now() + Duration::from_secs(10)).await {
        Ok(leader) => tracing::info!(leader, "leadership handed over"),
        Err(e) => tracing::warn!(error = %e, "could not hand leadership over; the others will elect"),
    }
}

/// SIGUSR1: every log's region map, to the log.
fn dump(replica: &Arc<Replica<GrpcLeaderLink>>) {
    replica.state.read(|m| {
        tracing::info!(members = ?m.members().keys().collect::<Vec<_>>(), logs = m.logs().len(), "state");
        for (uuid, log) in m.logs() {
            tracing::info!(%uuid, sync = log.sync_count(), regions = log.region_count(), "log");
        }
    });
}
