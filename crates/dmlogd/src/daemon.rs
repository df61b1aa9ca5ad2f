//! The daemon: configuration, logging, signals and wiring around one
//! [`node::host::Host`], the pipeline every dmlogd host runs.
//!
//! Starts, in order: the data directory and its lock (one daemon per data
//! directory), the local journal of what the kernel holds, the kernel
//! transport (so a missing connector or privilege is reported before
//! anything else), the Raft node and its peer server, the admin socket and
//! the metrics listener; then runs the host until SIGTERM or SIGINT (exit
//! 0, leadership handed over) or until the kernel transport fails (the
//! host fences; exit 1, for systemd to restart the daemon). SIGUSR1 logs a
//! summary of every log; SIGHUP re-reads the log level from the
//! configuration file and reopens the log file (it never stops the daemon).

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use node::admin::AdminService;
use node::fence::{FenceAction, FenceError};
use node::host::{Exit, Fence, FenceOutcome, Host, HostConfig};
use node::live::LiveConfig;
use node::metrics::Metrics;
use node::own_marks::{FileJournal, OwnMarksStore};
use node::transport::{Transport, UnixTransport};
use replication::Replica;
use replication::grpc::GrpcLeaderLink;
use replication::node::{GrpcNode, RaftSettings};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use wire::Uuid;

use crate::config::{Config, Kernel};

type NodeReplica = Arc<Replica<GrpcLeaderLink>>;

/// The kernel's boot identity: a reboot changes it, a daemon restart
/// under the same kernel does not.
pub fn boot_incarnation() -> u64 {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    // FNV-1a over the text: stable across runs and builds.
    id.trim().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The log as the daemon's signals see it.
#[derive(Default)]
pub struct LogControl {
    /// The installed log (`None`: whoever runs the daemon logs).
    pub logging: Option<Arc<crate::logging::Logging>>,
    /// The configuration file, re-read for its log level on SIGHUP.
    pub config: Option<std::path::PathBuf>,
}

impl LogControl {
    /// SIGHUP: the level from the file as it is now; the log file reopened.
    fn hangup(&self) {
        let Some(logging) = &self.logging else {
            tracing::info!("SIGHUP: nothing to reload");
            return;
        };
        let level = self.config.as_ref().and_then(|p| {
            match std::fs::read_to_string(p).map_err(|e| e.to_string()).and_then(|t| crate::config::log_level(&t)) {
                Ok(level) => Some(level),
                Err(e) => {
                    tracing::error!(config = %p.display(), error = %e, "SIGHUP: log level not re-read");
                    None
                }
            }
        });
        logging.reload(level.as_deref());
    }

    /// Once a minute: what the throttle held back.
    fn report(&self) {
        if let Some(l) = &self.logging {
            l.report_suppressed();
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT (`Ok`), or until its kernel
/// transport fails (`Err`, after the node fenced).
pub async fn run(config: Config, log: LogControl) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("data dir {}: {e}", config.data_dir.display()))?;
    let lock_path = config.data_dir.join("dmlogd.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.try_lock().map_err(|_| format!("another dmlogd holds {}", lock_path.display()))?;
    crate::config::claim_data_dir(&config.data_dir, &config.cluster)?;
    match config.kernel.clone() {
        Kernel::Netlink => {
            let me = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
            let t = node::netlink::NetlinkTransport::open(&me).map_err(|e| e.to_string())?;
            serve_with(config, Arc::new(t), log).await
        }
        Kernel::Unix(path) => {
            let t = UnixTransport::bind(&path).map_err(|e| format!("unix socket {}: {e}", path.display()))?;
            serve_with(config, Arc::new(t), log).await
        }
    }
}

/// The configured fence action on this host's mirrors.
struct DaemonFence {
    action: FenceAction,
    limit: Duration,
}

impl Fence for DaemonFence {
    fn fence(&self, logs: &[Uuid]) -> FenceOutcome {
        let mut mirrors = Vec::new();
        if !matches!(self.action, FenceAction::Reboot { .. }) {
            for uuid in logs {
                match node::kick::local_mirrors(uuid) {
                    Ok(names) => mirrors.extend(names),
                    Err(e) => tracing::warn!(%uuid, error = %e, "could not list the mirrors of a log"),
                }
            }
        }
        match (self.action.run(&mirrors, self.limit), &self.action) {
            (Ok(()), FenceAction::Reboot { .. }) => FenceOutcome::Resetting,
            (Ok(()), FenceAction::Suspend { .. }) => FenceOutcome::Stopped { undo: mirrors },
            (Ok(()), FenceAction::Command { .. }) => FenceOutcome::Stopped { undo: Vec::new() },
            (Err(FenceError::Reset(_)), _) => FenceOutcome::Resetting,
            (Err(e), _) => FenceOutcome::Failed(e.to_string()),
        }
    }

    fn after_rejoin(&self, undo: Vec<String>) {
        tokio::spawn(resume_mirrors(undo));
    }
}

async fn serve_with<T: Transport>(config: Config, transport: Arc<T>, log: LogControl) -> Result<(), String> {
    // Taken at once, so that a stop during the join (which waits for a
    // quorum) is a clean exit rather than the signal's default action.
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let inc = config.incarnation.unwrap_or_else(boot_incarnation);
    let journal = FileJournal::new(&config.data_dir.join("kernel-tables.journal"));
    let own = OwnMarksStore::open(Box::new(journal), inc).map_err(|e| format!("local journal: {e}"))?;
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
    let members: std::collections::BTreeMap<regions::NodeId, String> =
        config.members.iter().map(|(id, addr)| (regions::NodeId(*id), addr.clone())).collect();
    let grpc = GrpcNode::start(regions::NodeId(config.id), &path, listener, settings, Some(&members))
        .await
        .map_err(|e| e.to_string())?;
    let (replica, applied, grpc) = grpc.split();

    let metrics = Arc::new(Metrics::new());
    let host_config = HostConfig {
        incarnation: inc,
        run: node::host::new_run(),
        live: LiveConfig { timing: config.timing, rate: 1.0, seed: inc ^ config.id, prevote: true, fence: true },
        clock_start: Instant::now(),
        // A write the previous writer had in flight gets this long to land.
        disk_handover: Duration::from_millis(config.timing.fence_action_max_ms.max(1_000)),
        disk_delay: Duration::ZERO,
        clear_after: config.clear_after,
    };
    let fence = Arc::new(DaemonFence {
        action: config.fence.clone(),
        limit: Duration::from_millis(config.timing.fence_action_max_ms),
    });
    let host = Host::new(replica.clone(), transport, applied, own, fence, host_config, metrics.clone());
    let gate = host.gate();
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin =
        node::admin::serve_unix(AdminService::new(replica.clone(), gate.clone()), &config.admin_socket, async move {
            let _ = admin_stopped.await;
        })
        .await
        .map_err(|e| format!("admin socket {}: {e}", config.admin_socket.display()))?;
    let (stop_admin_tcp, admin_tcp_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_tcp = match (&config.admin_tcp, &config.tls) {
        (Some((addr, token)), Some(tls)) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("admin_tcp {addr}: {e}"))?;
            let service = AdminService::new(replica.clone(), gate.clone());
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
            node::metrics::serve(addr, metrics.clone(), replica.clone(), gate.clone())
                .await
                .map_err(|e| format!("metrics {addr}: {e}"))?,
        ),
        None => None,
    };
    let endpoints =
        Endpoints { admin: (stop_admin, admin), admin_tcp: (stop_admin_tcp, admin_tcp), metrics: metrics_server };
    warn_unreachable_peers(&config);
    if config.tls.is_none() {
        tracing::warn!("peer traffic is not encrypted or authenticated: set [tls] (docs/operations.md)");
    }
    tracing::info!(id = config.id, listen = %config.listen, members = ?config.members, "starting");

    // systemd (Type=notify): ready once the node has joined, which is when
    // its lease starts; units ordered after dmlogd (LVM activation) wait
    // for that, not for the process.
    let ready = {
        let gate = gate.clone();
        tokio::spawn(async move {
            while gate.quorum().age.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("joined the cluster")]);
        })
    };
    let logging = log.logging.clone();
    let signals = {
        let replica = replica.clone();
        async move {
            let mut minute = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = int.recv() => return,
                    _ = usr1.recv() => dump(&replica),
                    _ = hup.recv() => log.hangup(),
                    _ = minute.tick() => log.report(),
                }
            }
        }
    };
    let exit = host.run(signals).await;
    ready.abort();
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(l) = &logging {
        l.stopping();
    }
    endpoints.stop().await;
    grpc.shutdown().await;
    let _ = std::fs::remove_file(&config.admin_socket);
    match exit {
        Exit::Stopped => Ok(()),
        Exit::TransportFailed(why) => Err(format!("the kernel transport failed: {why}; fenced")),
    }
}

/// Tells systemd, when it runs the daemon as `Type=notify` (nothing
/// otherwise).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(false, state)
    {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// One line per peer that cannot be reached at start, rather than only
/// the Raft layer's repeated retries.
fn warn_unreachable_peers(config: &Config) {
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

/// SIGUSR1: every log's summary and region map, to the log.
fn dump(replica: &NodeReplica) {
    replica.state.read(|m| {
        tracing::info!(members = ?m.members().keys().collect::<Vec<_>>(), logs = m.logs().len(), "state");
        for log in m.logs().values() {
            tracing::info!("{}", log.describe());
        }
    });
}
