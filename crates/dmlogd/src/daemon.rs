//! The daemon: one node of a cluster-coherent dirty-region log.
//!
//! Starts, in order: the data directory and its lock (one daemon per data
//! directory), the kernel transport (so a missing connector or privilege
//! is reported before anything else), the Raft node and its peer server,
//! the node's join, the request router, the admin socket, the metrics
//! listener, the liveness task and the effects consumer. SIGTERM or SIGINT
//! stop it cleanly (exit 0); SIGUSR1 logs a summary of every log.
//!
//! When the lease runs out the node fences (no more answers to its kernel,
//! then the fence action). If the node is still running afterwards (a
//! `suspend` or `command:` action, or a frozen process that thawed), it
//! rejoins: once the cluster answers, it registers its tables again and
//! re-marks every region its kernel may hold dirty, in one entry, and only
//! then answers its kernel and resumes the mirrors the fence suspended.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use node::admin::AdminService;
use node::fence::FenceAction;
use node::live::{LiveConfig, LiveHooks, LiveTask, Renewals};
use node::metrics::Metrics;
use node::router::Router;
use node::transport::{Transport, UnixTransport, serve};
use regions::{Effect, NodeId};
use replication::grpc::GrpcLeaderLink;
use replication::node::{GrpcNode, RaftSettings};
use replication::{Proposal, Replica};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::config::{Config, Kernel};

type NodeReplica = Arc<Replica<GrpcLeaderLink>>;

/// The kernel's boot identity: a reboot changes it, a daemon restart
/// under the same kernel does not.
pub fn boot_incarnation() -> u64 {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    // FNV-1a over the text: stable across runs and builds.
    id.trim().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("data dir {}: {e}", config.data_dir.display()))?;
    let lock_path = config.data_dir.join("dmlogd.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.try_lock().map_err(|_| format!("another dmlogd holds {}", lock_path.display()))?;
    crate::config::claim_data_dir(&config.data_dir, &config.cluster)?;
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

/// The fence: answer nothing more, then run the configured action on the
/// local mirrors of every log this node's kernel uses.
struct DaemonHooks<L: replication::LeaderLink> {
    fenced: Arc<AtomicBool>,
    action: FenceAction,
    limit: Duration,
    router: Arc<Router<L>>,
    metrics: Arc<Metrics>,
    /// Mirrors the last fence suspended, to resume after the rejoin.
    suspended: Mutex<Vec<String>>,
}

impl<L: replication::LeaderLink> LiveHooks for DaemonHooks<L> {
    fn fence(&self) {
        self.fenced.store(true, Ordering::SeqCst);
        self.metrics.fences.inc();
        tracing::error!("lease lost: fenced; no more answers to the kernel");
        let mut mirrors = Vec::new();
        if !matches!(self.action, FenceAction::Reboot { .. }) {
            for uuid in self.router.own_marks().uuids() {
                match node::kick::local_mirrors(&uuid) {
                    Ok(names) => mirrors.extend(names),
                    Err(e) => tracing::warn!(%uuid, error = %e, "could not list the mirrors of a log"),
                }
            }
        }
        match self.action.run(&mirrors, self.limit) {
            Ok(()) => {
                tracing::error!(?mirrors, "fence action done");
                if matches!(self.action, FenceAction::Suspend { .. }) {
                    *self.suspended.lock().unwrap_or_else(|e| e.into_inner()) = mirrors;
                }
            }
            Err(e) => tracing::error!(error = %e, "fence action failed; stop this node's I/O by hand"),
        }
    }

    fn evicted(&self, node: NodeId) {
        self.metrics.evictions.inc();
        tracing::warn!(node = node.0, "evicted a node whose lease ran out");
    }

    fn trace(&self, line: String) {
        tracing::debug!("{line}");
    }
}

async fn serve_with<T: Transport>(config: Config, transport: Arc<T>) -> Result<(), String> {
    // Taken at once, so that a stop during the join (which waits for a
    // quorum) is a clean exit rather than the signal's default action.
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let listener =
        tokio::net::TcpListener::bind(&config.listen).await.map_err(|e| format!("listen {}: {e}", config.listen))?;
    let settings = RaftSettings {
        election_max_ms: config.timing.election_max_ms,
        cluster: config.cluster.clone(),
        tls: config.tls.clone(),
        ..RaftSettings::default()
    };
    let settings = RaftSettings { election_min_ms: settings.election_max_ms / 2, ..settings };
    let path = config.data_dir.join("raft.redb");
    let mut grpc = GrpcNode::start(config.id, &path, listener, settings, Some(&config.members))
        .await
        .map_err(|e| e.to_string())?;
    let replica = grpc.replica.clone();

    let fenced = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    let lease = node::live::Lease::new();
    let router = Router::with_lease(replica.clone(), fenced.clone(), lease.clone(), metrics.clone());
    let disk_writer = {
        let router = router.clone();
        // A write the previous writer had in flight gets this long to land.
        let handover = Duration::from_millis(config.timing.fence_action_max_ms.max(1_000));
        node::disk_log::DiskWriter::new(replica.clone(), fenced.clone(), handover, move |u| router.disk_device(u))
    };
    let disk_writer = tokio::spawn(disk_writer.run());
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin =
        node::admin::serve_unix(AdminService::new(replica.clone(), fenced.clone()), &config.admin_socket, async move {
            let _ = admin_stopped.await;
        })
        .await
        .map_err(|e| format!("admin socket {}: {e}", config.admin_socket.display()))?;
    let (stop_admin_tcp, admin_tcp_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_tcp = match (&config.admin_tcp, &config.tls) {
        (Some((addr, token)), Some(tls)) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("admin_tcp {addr}: {e}"))?;
            let service = AdminService::new(replica.clone(), fenced.clone());
            let stopped = async move {
                let _ = admin_tcp_stopped.await;
            };
            let server =
                node::admin::serve_tcp(service, listener, tls.server_for_tools(), token.0.clone(), stopped).await?;
            tracing::info!(%addr, "admin API on TCP (TLS, token)");
            Some(server)
        }
        _ => None,
    };
    let metrics_server = match config.metrics {
        Some(addr) => Some(
            node::metrics::serve(addr, metrics.clone(), replica.clone(), fenced.clone())
                .await
                .map_err(|e| format!("metrics {addr}: {e}"))?,
        ),
        None => None,
    };
    let endpoints =
        Endpoints { admin: (stop_admin, admin), admin_tcp: (stop_admin_tcp, admin_tcp), metrics: metrics_server };
    // One line per peer that cannot be reached at start, rather than
    // only the Raft layer's repeated retries (before the join, which
    // waits for a quorum).
    for (id, addr) in config.members.clone() {
        if id == config.id {
            continue;
        }
        tokio::spawn(async move {
            let attempt = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&addr)).await;
            let why = match attempt {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 3 s".to_owned(),
            };
            tracing::warn!(peer = id, %addr, "peer unreachable at start: {why} (not started yet, or a wrong address or port)");
        });
    }
    let inc = config.incarnation.unwrap_or_else(boot_incarnation);
    let elections = node::live::spawn_prevote_elections(replica.clone(), inc ^ config.id);
    let stopped = tokio::select! {
        () = join(&replica, inc) => false,
        _ = term.recv() => true,
        _ = int.recv() => true,
    };
    elections.abort();
    if stopped {
        tracing::info!("stopping before the join");
        disk_writer.abort();
        endpoints.stop().await;
        let _ = replica.raft.shutdown().await;
        let _ = std::fs::remove_file(&config.admin_socket);
        return Ok(());
    }
    if config.tls.is_none() {
        tracing::warn!("peer traffic is not encrypted or authenticated: set [tls] (docs/operations.md)");
    }
    tracing::info!(id = config.id, listen = %config.listen, members = ?config.members, "joined");
    let leader_watch = {
        let (metrics, mut watch) = (metrics.clone(), replica.raft.metrics());
        tokio::spawn(async move {
            loop {
                let leader = watch.borrow_and_update().current_leader;
                metrics.saw_leader(leader);
                if watch.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    let renewals: Arc<Mutex<Option<Renewals>>> = Arc::default();
    let me = NodeId(config.id);
    let effects = {
        let (renewals, transport, metrics) = (renewals.clone(), transport.clone(), metrics.clone());
        let state = replica.state.clone();
        let waking: Arc<Mutex<std::collections::HashSet<wire::Uuid>>> = Arc::default();
        tokio::spawn(async move {
            while let Some(applied) = grpc.effects.recv().await {
                for e in applied.effects {
                    match e {
                        Effect::LeaseRenewed { node } => {
                            if let Some(r) = renewals.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                                r.renewed(node);
                            }
                        }
                        Effect::KickKernel { node, uuid } if node == me => {
                            // A restarted daemon applies old entries again:
                            // only the kick the log still waits for is done.
                            let current = state.read(|m| m.log(&uuid).and_then(|l| l.kicking()) == Some(me));
                            if !current {
                                tracing::debug!(%uuid, "skipped a kick the log no longer waits for");
                                continue;
                            }
                            let (transport, metrics) = (transport.clone(), metrics.clone());
                            tokio::spawn(async move { kick(&*transport, &metrics, uuid).await });
                        }
                        Effect::WakeRecovery { node, uuid } if node == me => {
                            // One wake per log at a time (a restart replays many).
                            if !waking.lock().unwrap_or_else(|e| e.into_inner()).insert(uuid.clone()) {
                                continue;
                            }
                            let (transport, waking, metrics) = (transport.clone(), waking.clone(), metrics.clone());
                            tokio::spawn(async move {
                                let label = node::metrics::LogLabel { uuid: uuid.to_string() };
                                metrics.wakes.get_or_create(&label).inc();
                                match transport.wake(&uuid).await {
                                    Ok(what) => tracing::info!(%uuid, "woke the kernel to resync: {what}"),
                                    Err(e) => {
                                        metrics.wake_failures.get_or_create(&label).inc();
                                        tracing::warn!(%uuid, error = %e, "could not wake the kernel to resync");
                                    }
                                }
                                waking.lock().unwrap_or_else(|e| e.into_inner()).remove(&uuid);
                            });
                        }
                        _ => {}
                    }
                }
            }
            grpc
        })
    };
    let hooks = Arc::new(DaemonHooks {
        fenced: fenced.clone(),
        action: config.fence.clone(),
        limit: Duration::from_millis(config.timing.fence_action_max_ms),
        router: router.clone(),
        metrics: metrics.clone(),
        suspended: Mutex::new(Vec::new()),
    });
    let live = {
        let (replica, router, timing, id) = (replica.clone(), router.clone(), config.timing, config.id);
        tokio::spawn(async move {
            loop {
                let task = LiveTask::new(
                    replica.clone(),
                    inc,
                    LiveConfig { timing, rate: 1.0, seed: inc ^ id, prevote: true, fence: true },
                    Instant::now(),
                )
                .with_lease(lease.clone());
                *renewals.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.renewals());
                task.run(hooks.clone()).await;
                rejoin(&replica, &router, inc).await;
                let suspended = std::mem::take(&mut *hooks.suspended.lock().unwrap_or_else(|e| e.into_inner()));
                // The rejoin committed through a quorum just now: a lease
                // starts, as at a join (the next task keeps it).
                lease.grant(Duration::from_millis(timing.fence_after_ms));
                hooks.fenced.store(false, Ordering::SeqCst);
                tracing::warn!("answering the kernel again");
                resume_mirrors(suspended).await;
            }
        })
    };
    let server = tokio::spawn(serve(transport, router));

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
    disk_writer.abort();
    live.abort();
    handoff(&replica).await;
    endpoints.stop().await;
    let _ = replica.raft.shutdown().await;
    effects.abort();
    leader_watch.abort();
    let _ = std::fs::remove_file(&config.admin_socket);
    Ok(())
}

/// The admin API (Unix socket, TCP if configured) and the metrics
/// endpoint: each admin server with the sender that stops it.
struct Endpoints {
    admin: (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>),
    admin_tcp: (tokio::sync::oneshot::Sender<()>, Option<tokio::task::JoinHandle<()>>),
    metrics: Option<tokio::task::JoinHandle<()>>,
}

impl Endpoints {
    /// Stops the admin servers (calls in progress finish) and the metrics
    /// endpoint.
    async fn stop(self) {
        let _ = self.admin.0.send(());
        let _ = self.admin.1.await;
        let _ = self.admin_tcp.0.send(());
        if let Some(a) = self.admin_tcp.1 {
            let _ = a.await;
        }
        if let Some(m) = self.metrics {
            m.abort();
        }
    }
}

/// Makes this node's kernel pick up the resync work of `uuid`.
async fn kick<T: Transport>(transport: &T, metrics: &Metrics, uuid: wire::Uuid) {
    let label = node::metrics::LogLabel { uuid: uuid.to_string() };
    match transport.kick(&uuid).await {
        Ok(what) => {
            metrics.kicks.get_or_create(&label).inc();
            tracing::warn!(%uuid, "kicked the kernel to resync regions an eviction put out of sync: {what}");
        }
        Err(e) => {
            metrics.kick_failures.get_or_create(&label).inc();
            tracing::error!(%uuid, error = %e, "could not kick the kernel; suspend and resume the mirror by hand so it resyncs");
        }
    }
}

/// Registers this node's kernel, retrying until the cluster answers.
async fn join(replica: &NodeReplica, incarnation: u64) {
    let p = Proposal { commands: vec![regions::Command::NodeJoined { node: NodeId(replica.id), incarnation }] };
    loop {
        match replica.propose(p.clone(), Instant::now() + Duration::from_secs(5)).await {
            Ok(_) => return,
            Err(e) => tracing::warn!(error = %e, "waiting for the cluster to join"),
        }
    }
}

/// After a fence: registers the node's tables and re-marks every region
/// its kernel may hold dirty, in one entry, retrying until it commits.
/// Whether the node was evicted meanwhile or not, the entry leaves the
/// replicated state covering everything the kernel may write.
async fn rejoin<L: replication::LeaderLink>(replica: &Arc<Replica<L>>, router: &Router<L>, incarnation: u64) {
    let own = router.own_marks();
    let commands = own.rejoin(NodeId(replica.id), incarnation);
    let regions: usize = commands
        .iter()
        .map(|c| match c {
            regions::Command::Kernel { op: regions::KernelOp::Flush { marks }, .. } => marks.len(),
            _ => 0,
        })
        .sum();
    let p = Proposal { commands };
    loop {
        match replica.propose(p.clone(), Instant::now() + Duration::from_secs(5)).await {
            Ok(outcomes) => {
                let refused: Vec<String> =
                    outcomes.0.iter().filter_map(|o| o.refusal.as_ref().map(|r| r.to_string())).collect();
                if refused.is_empty() {
                    tracing::warn!(regions, "rejoined: tables registered and dirty regions marked again");
                    return;
                }
                tracing::error!(?refused, "the rejoin was refused; staying fenced");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "fenced; waiting for the cluster to rejoin");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Resumes the mirrors a `suspend` fence suspended.
async fn resume_mirrors(names: Vec<String>) {
    for name in names {
        let n = name.clone();
        let ok = tokio::task::spawn_blocking(move || {
            std::process::Command::new("dmsetup").args(["resume", &n]).status().is_ok_and(|s| s.success())
        })
        .await
        .unwrap_or(false);
        if ok {
            tracing::warn!(%name, "resumed a mirror the fence suspended");
        } else {
            tracing::error!(%name, "could not resume a mirror the fence suspended; dmsetup resume it by hand");
        }
    }
}

/// A leader that stops hands leadership to another voter first, so the
/// cluster does not wait an election timeout for a new one.
async fn handoff(replica: &NodeReplica) {
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

/// SIGUSR1: every log's summary and region map, to the log.
fn dump(replica: &NodeReplica) {
    replica.state.read(|m| {
        tracing::info!(members = ?m.members().keys().collect::<Vec<_>>(), logs = m.logs().len(), "state");
        for log in m.logs().values() {
            tracing::info!("{}", log.describe());
        }
    });
}
