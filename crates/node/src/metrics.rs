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

/// A peer label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's node id.
    pub peer: String,
}

/// The build label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    /// The package version.
    pub version: &'static str,
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
    quorum: Gauge,
    quorum_age: Gauge<f64, AtomicU64>,
    peer_lag: Family<PeerLabel, Gauge>,
    build: Family<BuildLabel, Gauge>,
    last_leader: AtomicU64,
    lease_reads: Counter,
    /// The replica's lease-read count at the last render.
    lease_reads_seen: AtomicU64,
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
            registry: Registry::default(),
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
            quorum: Gauge::default(),
            quorum_age: Gauge::default(),
            peer_lag: Family::default(),
            build: Family::default(),
            last_leader: AtomicU64::new(0),
            lease_reads: Counter::default(),
            lease_reads_seen: AtomicU64::new(0),
        };
        // Every request type from the start, so that a rate or an
        // increase() sees the first one.
        for t in wire::RequestType::ALL {
            let l = RequestLabel { request: t.name() };
            let _ = m.requests.get_or_create(&l);
            let _ = m.request_seconds.get_or_create(&l);
        }
        m.build.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        // The node's own families are dmlogd_*; the process ones (below)
        // keep their customary names.
        let r = m.registry.sub_registry_with_prefix("dmlogd");
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
        r.register(
            "lease_reads",
            "Reads this node answered as leader under its read lease, without a round to the followers",
            m.lease_reads.clone(),
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
        r.register(
            "quorum",
            "1 while a quorum has confirmed this node within its bound (a renewal interval plus an election)",
            m.quorum.clone(),
        );
        r.register(
            "quorum_age_seconds",
            "Time since a quorum last confirmed this node (-1 before it joined)",
            m.quorum_age.clone(),
        );
        r.register(
            "peer_lag_entries",
            "On the leader: Raft entries each peer is behind the leader's log",
            m.peer_lag.clone(),
        );
        r.register("build_info", "The running version (value 1)", m.build.clone());
        m.registry.register_collector(Box::new(process::Process));
        m
    }

    /// A request of type `name` was answered `elapsed` after it arrived.
    pub fn answered(&self, name: &'static str, elapsed: Duration) {
        let l = RequestLabel { request: name };
        self.requests.get_or_create(&l).inc();
        self.request_seconds.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// Refreshes the gauges from `replica` and renders OpenMetrics text.
    pub fn render<L: LeaderLink>(&self, replica: &Replica<L>, gate: &crate::gate::Gate) -> String {
        self.peer_lag.clear();
        {
            let m = replica.metrics();
            let m = m.borrow();
            self.is_leader.set(i64::from(m.state.is_leader()));
            self.term.set(i64::try_from(m.current_term).unwrap_or(i64::MAX));
            self.last_applied.set(m.last_applied.map_or(0, |l| i64::try_from(l.index).unwrap_or(i64::MAX)));
            let last = m.last_log_index.unwrap_or(0);
            for (id, matched) in m.replication.iter().flatten() {
                if *id == m.id {
                    continue;
                }
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                self.peer_lag
                    .get_or_create(&PeerLabel { peer: id.0.to_string() })
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
        }
        let reads = replica.lease_reads();
        let seen = self.lease_reads_seen.swap(reads, std::sync::atomic::Ordering::Relaxed);
        self.lease_reads.inc_by(reads.saturating_sub(seen));
        let q = gate.quorum();
        self.quorum.set(i64::from(q.holds()));
        self.quorum_age.set(q.age.map_or(-1.0, |a| a.as_secs_f64()));

        self.fenced.set(i64::from(gate.is_closed()));
        self.fence_failed.set(i64::from(matches!(gate.standing(), crate::gate::Standing::FenceFailed(_))));
        self.regions.clear();
        replica.state.read(|m| {
            self.members.set(i64::try_from(m.members().len()).unwrap_or(0));
            for (uuid, log) in m.logs() {
                // A log's counters exist from its first scrape on.
                let l = LogLabel { uuid: uuid.to_string() };
                for f in [&self.kicks, &self.kick_failures, &self.wakes, &self.wake_failures] {
                    let _ = f.get_or_create(&l);
                }
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

/// OpenMetrics, for scrapers that ask for it (Prometheus does).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format, for everyone else (curl, promtool).
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the classic Prometheus text format: a counter's
/// family is named with its `_total` suffix (OpenMetrics names the family
/// without it and only the sample with it), `_created` samples, `# UNIT`
/// and `# EOF` lines are dropped. What `promtool check metrics` and
/// older scrapers read.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut counters = std::collections::BTreeSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter")) {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or(line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            if name.strip_suffix("_created").is_some_and(|f| counters.contains(f)) {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on `addr` until the task is dropped: OpenMetrics
/// to a scraper whose `Accept` names it, the classic text format otherwise.
pub async fn serve<L: LeaderLink>(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    replica: Arc<Replica<L>>,
    gate: crate::gate::Gate,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let text = metrics.render(&replica, &gate);
            let wants_openmetrics = headers
                .get_all(axum::http::header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            async move {
                if wants_openmetrics {
                    ([("content-type", OPENMETRICS)], text)
                } else {
                    ([("content-type", TEXT)], to_text_format(&text))
                }
            }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    }))
}

/// The process's own figures under the names other exporters use
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …), read
/// from `/proc/self` at each scrape; nothing when `/proc` cannot be read.
mod process {
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    #[derive(Debug, Default)]
    pub(super) struct Process;

    /// What `/proc/self` says.
    struct Stats {
        cpu_seconds: f64,
        start_seconds: f64,
        threads: i64,
        virtual_bytes: i64,
        resident_bytes: i64,
        open_fds: i64,
        max_fds: i64,
    }

    fn read() -> Option<Stats> {
        use nix::unistd::{SysconfVar, sysconf};
        let tick = sysconf(SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0)? as f64;
        let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten().filter(|p| *p > 0)?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name, which may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
        // Fields 14, 15 (utime, stime), 20 (threads), 22 (starttime), 23
        // (vsize), 24 (rss) of proc(5), here from field 3 on.
        let num = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<i64>().ok());
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
        let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        });
        Some(Stats {
            cpu_seconds: (num(14)? + num(15)?) as f64 / tick,
            start_seconds: boot + num(22)? as f64 / tick,
            threads: num(20)?,
            virtual_bytes: num(23)?,
            resident_bytes: num(24)? * page,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as i64,
            max_fds: max_fds.unwrap_or(-1),
        })
    }

    impl Collector for Process {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let Some(s) = read() else { return Ok(()) };
            let cpu = ConstCounter::new(s.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let start = ConstGauge::new(s.start_seconds);
            start.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                None,
                start.metric_type(),
            )?)?;
            let gauges = [
                ("process_resident_memory_bytes", "Resident memory size, in bytes", s.resident_bytes),
                ("process_virtual_memory_bytes", "Virtual memory size, in bytes", s.virtual_bytes),
                ("process_open_fds", "Open file descriptors", s.open_fds),
                ("process_max_fds", "Maximum number of open file descriptors", s.max_fds),
                ("process_threads", "Threads of the process", s.threads),
            ];
            for (name, help, v) in gauges {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
            Ok(())
        }
    }
}
