//! Starting one Raft node: its redb store, its state machine, its Raft
//! core, and (for production) its gRPC server for peers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::grpc::{GrpcLeaderLink, GrpcNet, PeerService};
use crate::log_store::LogStore;
use crate::membership::bootstrap;
use crate::replica::Replica;
use crate::state_machine::{AppliedEffects, StateMachine};
use crate::types::{NodeId, Raft};

/// Raft timing and log retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftSettings {
    /// Leader heartbeat, ms. Must exceed the p99 of one append round trip
    /// including the follower's sync.
    pub heartbeat_ms: u64,
    /// Election timing, ms: no node grants a pre-vote or stands until it
    /// has had no contact with a leader for `election_min_ms`, and after a
    /// leader's death an election starts within `election_max_ms`
    /// (see [`RaftSettings::config`]).
    pub election_min_ms: u64,
    /// See `election_min_ms`.
    pub election_max_ms: u64,
    /// A snapshot is taken after this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind the last snapshot for slow followers.
    pub keep_behind_snapshot: u64,
    /// The cluster's name: every peer call carries it, and a node refuses
    /// calls from another cluster.
    pub cluster: String,
    /// Mutual TLS between nodes (plain HTTP/2 when absent).
    pub tls: Option<crate::grpc::PeerTls>,
}

/// The cluster name when none is configured.
pub const DEFAULT_CLUSTER: &str = "dmlogd";

impl Default for RaftSettings {
    /// LAN values: heartbeat 100 ms, elections 750–1500 ms.
    fn default() -> RaftSettings {
        RaftSettings {
            heartbeat_ms: 100,
            election_min_ms: 750,
            election_max_ms: 1500,
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            cluster: DEFAULT_CLUSTER.to_owned(),
            tls: None,
        }
    }
}

impl RaftSettings {
    /// The validated openraft configuration. openraft's upper election
    /// timeout is also the lease a follower gives its leader: it refuses
    /// every real vote for that long after the leader's last
    /// AppendEntries. With elections through pre-vote, a candidate that
    /// stands before that refusal ends loses the round and waits a whole
    /// quiet period more (1.5-3 s after a leader's death on the real
    /// kernel). So openraft's upper timeout is set to a third of the way
    /// from `election_min_ms` to `election_max_ms` (1,000 ms with the
    /// defaults), and campaigns wait between it and twice its distance
    /// from the lower one (1,000-1,250 ms; `Replica::campaign_wait`):
    /// the first round after a leader's death wins, within
    /// `election_max_ms`.
    pub fn config(&self) -> Result<Arc<openraft::Config>, String> {
        let vote_lease = self.election_min_ms + self.election_max_ms.saturating_sub(self.election_min_ms) / 3;
        let c = openraft::Config {
            cluster_name: "dmlogd".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: vote_lease.max(self.election_min_ms + 1),
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_behind_snapshot,
            ..openraft::Config::default()
        };
        c.validate().map(Arc::new).map_err(|e| format!("raft settings: {e}"))
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] crate::log_store::OpenError),
    /// Bad settings, or Raft refused to start or bootstrap.
    #[error("{0}")]
    Raft(String),
    /// The listening socket.
    #[error("listen: {0}")]
    Listen(#[from] std::io::Error),
    /// The TLS certificate or key is unusable.
    #[error("tls: {0}")]
    Tls(String),
}

/// A running node with its gRPC server.
pub struct GrpcNode {
    /// Its replica (propose, read, membership).
    pub replica: Arc<Replica<GrpcLeaderLink>>,
    /// Effects of every applied command, in log order.
    pub effects: mpsc::UnboundedReceiver<AppliedEffects>,
    /// The address the server listens on.
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcNode {
    /// Opens the store at `path`, starts Raft and serves peers on
    /// `listener`. With `initial` members, a pristine store is bootstrapped
    /// with them (see [`bootstrap`]).
    pub async fn start(
        id: impl Into<NodeId>,
        path: &Path,
        listener: TcpListener,
        settings: RaftSettings,
        initial: Option<&BTreeMap<NodeId, String>>,
    ) -> Result<GrpcNode, StartError> {
        let id = id.into();
        if let Some(tls) = &settings.tls {
            tls.check_names(id).map_err(StartError::Tls)?;
        }
        let (log, db) = LogStore::open(path)?;
        let (tx, effects) = mpsc::unbounded_channel();
        let sm = StateMachine::open(db).map_err(StartError::Raft)?.with_effects(tx);
        let state = sm.reader();
        let net = GrpcNet::new(id, &settings.cluster, settings.tls.as_ref());
        let raft = Raft::new(id, settings.config().map_err(StartError::Raft)?, net.clone(), log.clone(), sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let replica = Arc::new(Replica::new(id, raft.clone(), state, net.leader_link(raft.clone())).with_log(log));
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &settings.tls {
            builder = builder.tls_config(tls.server()).map_err(|e| StartError::Tls(e.to_string()))?;
        }
        // Bootstrapped before it serves peers: a vote or an append from a
        // peer that started first could otherwise reach the store between
        // the check and the initialisation (harmless, but openraft then
        // logs the refused initialisation as an error). Peers' calls wait
        // in the listener's backlog meanwhile.
        if let Some(members) = initial {
            bootstrap(&raft, members).await.map_err(StartError::Raft)?;
        }
        let server = builder
            .add_service(PeerService::new(replica.clone(), &settings.cluster).into_server())
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        let server = tokio::spawn(server);
        Ok(GrpcNode { replica, effects, addr, stop: Some(stop), server })
    }

    /// The replica, the stream of applied effects (for the host), and the
    /// server to shut down at the end.
    pub fn split(self) -> (Arc<Replica<GrpcLeaderLink>>, mpsc::UnboundedReceiver<AppliedEffects>, GrpcServer) {
        let GrpcNode { replica, effects, stop, server, .. } = self;
        (replica.clone(), effects, GrpcServer { replica, stop, server })
    }

    /// Stops the server and the Raft core.
    pub async fn shutdown(self) {
        self.split().2.shutdown().await;
    }
}

/// The peer server and Raft core of a node whose replica and effects were
/// handed out ([`GrpcNode::split`]).
pub struct GrpcServer {
    replica: Arc<Replica<GrpcLeaderLink>>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Stops the server and the Raft core.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.replica.raft.shutdown().await;
        let _ = (&mut self.server).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_refuse_votes_for_a_third_of_the_election_range_past_its_lower_end() {
        let c = RaftSettings::default().config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.election_timeout_min, c.election_timeout_max), (750, 1_000));
        // Campaigns wait 1,000-1,250 ms: past the refusal, within election_max_ms.
        let c = RaftSettings { election_min_ms: 300, election_max_ms: 900, ..RaftSettings::default() }
            .config()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.election_timeout_min, c.election_timeout_max), (300, 500));
        // A range too narrow to split still gives openraft a valid one.
        let c =
            RaftSettings { heartbeat_ms: 50, election_min_ms: 300, election_max_ms: 301, ..RaftSettings::default() }
                .config()
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.election_timeout_min, c.election_timeout_max), (300, 301));
    }
}
