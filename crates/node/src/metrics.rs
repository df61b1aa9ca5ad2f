//! Prometheus metrics of one node, served at `/metrics`.
//!
//! Counters and histograms are updated where things happen (the router,
//! the liveness hooks, the kick); the per-log region gauges and the Raft
//! gauges are read from the applied state when a scrape comes, so they are
//! never stale. Every metric name starts with `dmlogd_`; `docs/operations.md`
//! says what each one means and which deserve an alert.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use replication::{LeaderLink, Replica};

/// A request type label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// The kernel's name of the request (`MARK_REGION`, …).
    pub request: &'static str,
}

/// A log label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabel {
    /// The log's uuid.
    pub uuid: String,
}

/// A log and region-state label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabel {
    /// The log's uuid.
    pub uuid: String,
    /// `total`, `dirty`, `out_of_sync` or `recovering`.
    pub state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~26 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 20))
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    /// Kernel requests answered, by type.
    pub requests: Family<RequestLabel, Counter>,
    /// Time from a kernel request's arrival to its reply, by type.
    pub request_seconds: Family<RequestLabel, Histogram, fn() -> Histogram>,
    /// Time for one batch of commands to commit and apply.
    pub commit_seconds: Histogram,
    /// Commands per committed batch.
    pub batch_commands: Histogram,
    /// Malformed kernel datagrams (answered EINVAL or dropped).
    pub malformed: Counter,
    /// Kernel requests answered from this node alone, without a Raft
    /// round (a held region's MARK or IN_SYNC, a deferred CLEAR, an empty
    /// FLUSH).
    pub local: Counter,
    /// Leader changes seen by this node.
    pub leader_changes: Counter,
    /// Evictions this node proposed as leader and saw committed.
    pub evictions: Counter,
    /// Times this node fenced itself.
    pub fences: Counter,
    /// Replies dropped at the send because the gate had closed since they
    /// were answered (the lease ran out meanwhile, or the node fenced).
    pub withheld: Counter,
    /// Kicks of this node's kernel (suspend/resume to pick up resync work), by log.
    pub kicks: Family<LogLabel, Counter>,
    /// Kicks that failed, by log.
    pub kick_failures: Family<LogLabel, Counter>,
    /// Wakes of this node's kernel (a read that makes an idle mirror ask
    /// for resync work again), by log; counted when tried.
    pub wakes: Family<LogLabel, Counter>,
    /// Wakes that failed, by log.
    pub wake_failures: Family<LogLabel, Counter>,
    fenced: Gauge,
    fence_failed: Gauge,
    is_leader: Gauge,
    term: Gauge,
    last_applied: Gauge,
    members: Gauge,
    regions: Family<RegionLabel, Gauge>,
    last_leader: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("dmlogd"),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            commit_seconds: latency_histogram(),
            batch_commands: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 10)),
            malformed: Counter::default(),
            local: Counter::default(),
            leader_changes: Counter::default(),
            evictions: Counter::default(),
            fences: Counter::default(),
            withheld: Counter::default(),
            kicks: Family::default(),
            kick_failures: Family::default(),
            wakes: Family::default(),
            wake_failures: Family::default(),
            fenced: Gauge::default(),
            fence_failed: Gauge::default(),
            is_leader: Gauge::default(),
            term: Gauge::default(),
            last_applied: Gauge::default(),
            members: Gauge::default(),
            regions: Family::default(),
            last_leader: AtomicU64::new(0),
        };
        let r = &mut m.registry;
        r.register("requests", "Kernel requests answered, by type", m.requests.clone());
        r.register("request_seconds", "Kernel request arrival to reply, by type", m.request_seconds.clone());
        r.register("commit_seconds", "One batch of commands proposed to applied", m.commit_seconds.clone());
        r.register("batch_commands", "Commands per committed batch", m.batch_commands.clone());
        r.register("malformed_datagrams", "Kernel datagrams that did not decode", m.malformed.clone());
        r.register(
            "local_answers",
            "Kernel requests answered without a Raft round (held marks, deferred clears, empty flushes)",
            m.local.clone(),
        );
        r.register("leader_changes", "Leader changes seen by this node", m.leader_changes.clone());
        r.register("evictions", "Nodes evicted by this node as leader", m.evictions.clone());
        r.register("fences", "Times this node fenced itself", m.fences.clone());
        r.register("kicks", "Suspend/resume kicks of this node's mirrors, by log", m.kicks.clone());
        r.register("kick_failures", "Kicks that failed, by log", m.kick_failures.clone());
        r.register("wakes", "Reads that wake this node's idle mirrors to ask for resync work, by log", m.wakes.clone());
        r.register("wake_failures", "Wakes that failed, by log", m.wake_failures.clone());
        r.register("fenced", "1 while this node is fenced", m.fenced.clone());
        r.register(
            "fence_failed",
            "1 after a fence action failed: the node answers nothing until an operator restarts it",
            m.fence_failed.clone(),
        );
        r.register(
            "withheld_replies",
            "Replies dropped at the send because the lease ran out or the node fenced since they were answered",
            m.withheld.clone(),
        );
        r.register("is_leader", "1 on the Raft leader", m.is_leader.clone());
        r.register("term", "Current Raft term", m.term.clone());
        r.register("last_applied", "Index of the last applied Raft entry", m.last_applied.clone());
        r.register("kernel_members", "Nodes whose kernels are registered in the region machine", m.members.clone());
        r.register(
            "log_regions",
            "Regions per log by state (total, dirty, out_of_sync, recovering)",
            m.regions.clone(),
        );
        m
    }

    /// A request of type `name` was answered `elapsed` after it arrived.
    pub fn answered(&self, name: &'static str, elapsed: Duration) {
        let l = RequestLabel { request: name };
        self.requests.get_or_create(&l).inc();
        self.request_seconds.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// Refreshes the gauges from `replica` and renders the text format.
    pub fn render<L: LeaderLink>(&self, replica: &Replica<L>, gate: &crate::gate::Gate) -> String {
        {
            let m = replica.metrics();
            let m = m.borrow();
            self.is_leader.set(i64::from(m.state.is_leader()));
            self.term.set(i64::try_from(m.current_term).unwrap_or(i64::MAX));
            self.last_applied.set(m.last_applied.map_or(0, |l| i64::try_from(l.index).unwrap_or(i64::MAX)));
        }
        self.fenced.set(i64::from(gate.is_closed()));
        self.fence_failed.set(i64::from(matches!(gate.standing(), crate::gate::Standing::FenceFailed(_))));
        self.regions.clear();
        replica.state.read(|m| {
            self.members.set(i64::try_from(m.members().len()).unwrap_or(0));
            for (uuid, log) in m.logs() {
                let n = log.region_count();
                let counts = [
                    ("total", n),
                    ("dirty", n - log.clean_bits().count_ones()),
                    ("out_of_sync", n - log.sync_count()),
                    ("recovering", log.assignments().len() as u64),
                ];
                for (state, v) in counts {
                    let l = RegionLabel { uuid: uuid.to_string(), state };
                    self.regions.get_or_create(&l).set(i64::try_from(v).unwrap_or(i64::MAX));
                }
            }
        });
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a leader change when `leader` differs from the last one seen.
    pub fn saw_leader(&self, leader: Option<regions::NodeId>) {
        let l = leader.map_or(0, |l| l.0);
        if l != 0 && self.last_leader.swap(l, Ordering::SeqCst) != l {
            self.leader_changes.inc();
        }
    }
}

/// Serves `GET /metrics` on `addr` until the task is dropped.
pub async fn serve<L: LeaderLink>(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    replica: Arc<Replica<L>>,
    gate: crate::gate::Gate,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = metrics.render(&replica, &gate);
            async move { ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], text) }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    }))
}
