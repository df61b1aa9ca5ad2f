//! Simulated kernels driving a real Raft cluster: three (or more) Raft
//! nodes in one process on the in-memory network with real redb stores,
//! each with a `kernel-sim` whose requests go through the node's
//! [`Replica`]: commands are proposed (forwarded to the leader), queries
//! are read linearizably. Runs in real time.

#![allow(clippy::panic)] // Test support: a failed setup fails the test loudly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kernel_sim::{Config as KernelConfig, Kernel, Legs, MirrorId, SharedLegs, Table};
use node::live::{Lease, LiveConfig, LiveHooks, LiveTask, Renewals};
use node::liveness::Timing;
use node::own_marks::OwnMarks;
use openraft::BasicNode;
use regions::{Effect, NodeId as Rn, Routed, kernel_answer, route};
use replication::memnet::{MemLink, MemNet};
use replication::{AppliedEffects, FlushMode, LogStore, Proposal, Raft, ReadRequest, Replica, StateMachine};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wire::{Frame, Reply, Uuid};

/// One node: its Raft replica and its kernel.
pub struct RaftNode {
    /// The node id (Raft and region machine).
    pub id: u64,
    /// Its replica.
    pub replica: Arc<Replica<MemLink>>,
    /// Its simulated kernel (shared with the driver task).
    pub kernel: Arc<Mutex<Kernel>>,
    /// Its mirror.
    pub mirror: MirrorId,
    driver: JoinHandle<()>,
    /// The liveness task (leases, eviction, fencing), if automatic.
    live: Option<JoinHandle<()>>,
    /// Set when the node fenced itself (the fence action rebooted it).
    pub down: Arc<AtomicBool>,
    /// Where applied lease renewals go (the liveness task's lease table).
    renewals: Arc<Mutex<Option<Renewals>>>,
    /// Set while the node is fenced without a reboot: nothing is answered.
    pub fenced: Arc<AtomicBool>,
    /// What its kernel holds, from the requests answered (for a rejoin).
    own: Arc<Mutex<OwnMarks>>,
    /// Its lease: answers go to the kernel only while it holds.
    lease: Lease,
    /// Set while the whole node (kernel, daemon, workload) is stopped.
    pub frozen: Arc<AtomicBool>,
    /// Pre-vote elections until the liveness task starts (automatic mode).
    elections: Option<JoinHandle<()>>,
}

/// Automatic liveness in the simulation: leases renewed through Raft, the
/// leader evicting nodes unseen for `dead_after`, nodes fencing themselves
/// after `fence_after`. The fence action is a reboot: the kernel dies with
/// its writes in flight and the daemon stops.
#[derive(Clone, Debug)]
pub struct LivenessConfig {
    /// The timings (validated).
    pub timing: Timing,
    /// Each node's clock rate (local ms per real ms), by node id; 1.0 if absent.
    pub rates: BTreeMap<u64, f64>,
    /// Seeds the nodes' election timeouts (pre-vote driven by the
    /// liveness task instead of openraft's timer).
    pub seed: u64,
    /// The fence action: `false` reboots the node (its kernel dies);
    /// `true` suspends its mirror and stops answering, and the node rejoins
    /// without a reboot once it can reach the cluster: it re-registers its
    /// table and re-marks what its kernel holds dirty before it answers
    /// again (the daemon's `suspend` fence and rejoin).
    pub suspend: bool,
}

/// What the liveness layer did, at simulated milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveEvent {
    /// A node fenced itself (and its kernel died).
    Fenced {
        /// The node.
        node: u64,
        /// When.
        at_ms: u64,
        /// When its kernel had last put a write on a leg.
        last_write_ms: Option<u64>,
    },
    /// The leader's eviction of a node committed.
    Evicted {
        /// The node.
        node: u64,
        /// When.
        at_ms: u64,
    },
    /// A fenced node rejoined without a reboot and answers its kernel again.
    Rejoined {
        /// The node.
        node: u64,
        /// When.
        at_ms: u64,
    },
    /// A frozen node woke up.
    Thawed {
        /// The node.
        node: u64,
        /// When.
        at_ms: u64,
    },
}

/// The cluster.
pub struct RaftCluster {
    /// Nodes by id.
    pub nodes: BTreeMap<u64, RaftNode>,
    /// The network.
    pub net: MemNet,
    /// The mirror's legs.
    pub legs: SharedLegs,
    /// The table.
    pub table: Table,
    storage: Storage,
    start: Instant,
    incarnations: BTreeMap<u64, u64>,
    liveness: Option<LivenessConfig>,
    /// Fences and evictions, in order.
    pub events: Arc<Mutex<Vec<LiveEvent>>>,
    /// What the harness saw go wrong outside the kernels and replicas.
    watch: Watch,
}

/// A cross-node check of the answers: no node is handed a region to copy
/// while another node's kernel holds it dirty and may write it without a
/// MARK (a node that answers its kernel, not stopped or fenced). A dirty
/// region is marked in the log until its CLEAR, except after an eviction
/// of a node that did not fence, or a rejoin without a reboot that did not
/// mark again what its kernel held: the copy would race that kernel's
/// writes.
#[derive(Clone, Default)]
struct Watch {
    /// Every node's kernel and state, by id.
    nodes: Arc<Mutex<BTreeMap<u64, Watched>>>,
    /// Violations seen.
    problems: Arc<Mutex<Vec<String>>>,
}

/// What the watch needs of a node.
#[derive(Clone)]
struct Watched {
    kernel: Arc<Mutex<Kernel>>,
    fenced: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    lease: Lease,
}

impl Watch {
    /// Node `id` was delivered `answer` to `request`.
    fn answered(&self, id: u64, request: &wire::Request, answer: &wire::Answer, at: Instant) {
        let (wire::Request::GetResyncWork, wire::Answer::ResyncWork(Some(r))) = (request, answer) else { return };
        let nodes = lock(&self.nodes).clone();
        for (n, w) in nodes {
            let stopped = w.fenced.load(Ordering::SeqCst)
                || w.frozen.load(Ordering::SeqCst)
                || w.down.load(Ordering::SeqCst)
                || !w.lease.holds();
            if n == id || stopped {
                continue;
            }
            if lock(&w.kernel).dirty_regions(MirrorId(0)).contains(&r.0) {
                lock(&self.problems).push(format!(
                    "{at:?}: n{id} was handed region {} to copy while n{n}'s kernel holds it dirty",
                    r.0
                ));
            }
        }
    }
}

/// Where the nodes keep their Raft state.
pub enum Storage {
    /// redb files in a directory, written by the group-commit thread.
    Dir(PathBuf),
    /// redb's in-memory backend written by a flusher task whose every sync
    /// takes `sync_latency` of simulated time: no threads, so a
    /// single-threaded runtime with paused time runs deterministically. The
    /// databases outlive a node's crash (they are its "disk"); the writes
    /// still queued in the flusher are lost in the crash.
    Memory {
        /// The disks, by node.
        dbs: BTreeMap<u64, Arc<redb::Database>>,
        /// Simulated time of one sync.
        sync_latency: Duration,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn raft_config() -> Arc<openraft::Config> {
    let c = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 900,
        ..openraft::Config::default()
    };
    Arc::new(c.validate().unwrap_or_else(|e| panic!("raft config: {e}")))
}

/// Answers one kernel datagram through the replica. `None` when the
/// cluster did not answer in time (the kernel re-sends after 15 s).
/// The planted bug of the `sim-canary` feature: a FLUSH's marks and a
/// MARK's regions are dropped before they are proposed, so the kernel is
/// told its marks are durable when they are not (I1).
#[cfg(feature = "sim-canary")]
fn plant_dropped_marks(c: regions::Command) -> regions::Command {
    use regions::{Command, KernelOp};
    match c {
        Command::Kernel { uuid, instance, op: KernelOp::Flush { .. } | KernelOp::Mark(_) } => {
            Command::Kernel { uuid, instance, op: KernelOp::Flush { marks: Vec::new() } }
        }
        other => other,
    }
}

/// Debug trace of requests touching one region (`DMLOGD_TRACE_REGION`;
/// 18446744073709551615 traces every request).
pub static TRACE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn trace_region() -> Option<u64> {
    std::env::var("DMLOGD_TRACE_REGION").ok().and_then(|s| s.parse().ok())
}

fn touches(req: &wire::Request, r: u64) -> bool {
    use wire::Request as Q;
    if r == u64::MAX {
        return true;
    }
    match req {
        Q::InSync(x) | Q::IsRemoteRecovering(x) | Q::SetRegionSync { region: x, .. } => x.0 == r,
        Q::MarkRegion(rs) | Q::ClearRegion(rs) | Q::Flush { marks: rs } => rs.iter().any(|x| x.0 == r),
        Q::GetResyncWork | Q::Resume | Q::Presuspend | Q::Postsuspend => true,
        _ => false,
    }
}

/// A reply to the kernel, the request when it succeeded, and the answer.
type Answered = (Vec<u8>, Option<wire::Message>, Option<wire::Answer>);

async fn answer(replica: &Replica<MemLink>, datagram: &[u8]) -> Option<Answered> {
    let frame = Frame::parse(datagram).ok()?;
    let msg = match frame.message() {
        Ok(m) => m,
        Err(_) => return Some((Reply::error(frame.header(), wire::Errno::EINVAL).encode(), None, None)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let result = match route(Rn(replica.id), &msg) {
        Routed::Command(c) => {
            #[cfg(feature = "sim-canary")]
            let c = plant_dropped_marks(c);
            let out = replica.propose(Proposal { commands: vec![c] }, deadline).await.ok()?;
            out.0.into_iter().next()?.answer
        }
        Routed::Query { uuid, instance, query } => {
            replica.read(ReadRequest { uuid, instance, query }, deadline).await.ok()?
        }
    };
    if let Some(r) = trace_region()
        && touches(&msg.request, r)
    {
        lock(&TRACE).push(format!("{:?} n{} {:?} -> {:?}", Instant::now(), replica.id, msg.request, result));
    }
    let result = kernel_answer(&msg.request, result);
    let answered = result.as_ref().ok().cloned();
    let reply = Reply::new(&msg, result).ok()?.encode();
    let ok = answered.is_some().then_some(msg);
    Some((reply, ok, answered))
}

impl RaftCluster {
    /// Starts `n` nodes with their stores in `dir`, initialises Raft, and
    /// creates the mirror table on every kernel.
    pub async fn start(dir: &Path, n: u64, log_args: &str, regions: u64) -> RaftCluster {
        RaftCluster::start_with(Storage::Dir(dir.to_owned()), n, log_args, regions).await
    }

    /// Like [`RaftCluster::start`], with the given storage.
    pub async fn start_with(storage: Storage, n: u64, log_args: &str, regions: u64) -> RaftCluster {
        RaftCluster::start_live(storage, n, log_args, regions, None).await
    }

    /// Like [`RaftCluster::start_with`], with automatic liveness.
    pub async fn start_live(
        storage: Storage,
        n: u64,
        log_args: &str,
        regions: u64,
        liveness: Option<LivenessConfig>,
    ) -> RaftCluster {
        let net = MemNet::new();
        let uuid = Uuid::new("LVM-raft-sim").unwrap_or_else(|| unreachable!());
        let table = Table { uuid, target_sectors: regions * 8, log_args: log_args.into(), integrated_flush: false };
        let legs = SharedLegs::new(Legs::new(regions, !log_args.contains("nosync")));
        let mut c = RaftCluster {
            nodes: BTreeMap::new(),
            net,
            legs,
            table,
            storage,
            start: Instant::now(),
            incarnations: BTreeMap::new(),
            liveness,
            events: Arc::default(),
            watch: Watch::default(),
        };
        for id in 1..=n {
            c.boot(id).await;
        }
        let members: BTreeMap<u64, BasicNode> = (1..=n).map(|i| (i, BasicNode::new(format!("mem:{i}")))).collect();
        if let Some(first) = c.nodes.values().next() {
            let _ = first.replica.raft.initialize(members).await;
            let _ = first
                .replica
                .raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.current_leader.is_some(), "leader")
                .await;
        }
        for id in 1..=n {
            let join = Proposal { commands: vec![regions::Command::NodeJoined { node: Rn(id), incarnation: 1 }] };
            let node = &c.nodes[&id];
            let _ = node.replica.propose(join, Instant::now() + Duration::from_secs(10)).await;
            lock(&node.kernel).create(c.table.clone(), c.legs.clone());
            c.start_liveness(id, 1);
        }
        c
    }

    /// Starts node `id`'s liveness task (automatic mode only).
    fn start_liveness(&mut self, id: u64, incarnation: u64) {
        let Some(cfg) = self.liveness.clone() else { return };
        let rate = cfg.rates.get(&id).copied().unwrap_or(1.0);
        let config = LiveConfig {
            timing: cfg.timing,
            rate,
            seed: cfg.seed ^ (id << 32) ^ incarnation,
            prevote: !broken("no-prevote"),
            fence: !broken("no-fence"),
        };
        let (start, events, net) = (self.start, self.events.clone(), self.net.clone());
        let Some(n) = self.nodes.get_mut(&id) else { return };
        let hooks = Arc::new(SimHooks {
            id,
            kernel: n.kernel.clone(),
            down: n.down.clone(),
            fenced: n.fenced.clone(),
            frozen: n.frozen.clone(),
            lease: n.lease.clone(),
            fence_after: Duration::from_millis(cfg.timing.fence_after_ms),
            suspend: cfg.suspend,
            events,
            net,
            start,
        });
        let (replica, renewals, own) = (n.replica.clone(), n.renewals.clone(), n.own.clone());
        if let Some(e) = n.elections.take() {
            e.abort();
        }
        n.live = Some(tokio::spawn(async move {
            loop {
                let task = LiveTask::new(replica.clone(), incarnation, config, start).with_lease(hooks.lease.clone());
                *lock(&renewals) = Some(task.renewals());
                task.run(hooks.clone()).await;
                if !hooks.suspend {
                    return;
                }
                rejoin(&replica, &own, incarnation, &hooks).await;
            }
        }));
    }

    /// Removes nodes that fenced themselves (their machines rebooted), so
    /// they can be booted again. Returns their ids.
    pub async fn reap_fenced(&mut self) -> Vec<u64> {
        let down: Vec<u64> = self.nodes.values().filter(|n| n.down.load(Ordering::SeqCst)).map(|n| n.id).collect();
        for id in &down {
            if let Some(n) = self.nodes.remove(id) {
                n.driver.abort();
                if let Some(e) = &n.elections {
                    e.abort();
                }
                if let Some(e) = &n.elections {
                    e.abort();
                }
                if let Some(l) = &n.live {
                    l.abort();
                }
                self.net.unregister(*id);
                let _ = n.replica.raft.shutdown().await;
            }
        }
        down
    }

    /// Each node's Raft state, for failure reports.
    pub fn raft_states(&self) -> String {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            let m = n.replica.raft.metrics().borrow().clone();
            out.push(format!(
                "n{} {:?} term {} leader {:?} last_log {:?} applied {:?} voters {:?} down {}",
                n.id,
                m.state,
                m.current_term,
                m.current_leader,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
                m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
                n.down.load(Ordering::SeqCst)
            ));
        }
        out.join("; ")
    }

    /// Waits until node `id` is evicted (automatic mode) at or after
    /// simulated millisecond `since`, up to `limit`.
    pub async fn wait_evicted(&self, id: u64, since: u64, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let evicted =
                |e: &LiveEvent| matches!(e, LiveEvent::Evicted { node, at_ms } if *node == id && *at_ms >= since);
            if lock(&self.events).iter().any(evicted) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Liveness checks over the events: every node evicted while its
    /// kernel was up had fenced before the eviction committed.
    pub fn check_fencing(&self, crashed: &BTreeMap<u64, u64>) -> Result<(), String> {
        let events = lock(&self.events).clone();
        for (i, e) in events.iter().enumerate() {
            let LiveEvent::Evicted { node, at_ms } = e else { continue };
            // Fenced since it last came back (a rejoin answers again).
            let since = events[..i]
                .iter()
                .rposition(|f| matches!(f, LiveEvent::Rejoined { node: n, .. } if n == node))
                .map_or(0, |p| p + 1);
            let fenced = events[since..i].iter().any(|f| matches!(f, LiveEvent::Fenced { node: n, .. } if n == node));
            let crashed_before = crashed.get(node).is_some_and(|t| t <= at_ms);
            if !fenced && !crashed_before {
                return Err(format!("n{node} evicted at {at_ms} ms while its kernel could still write"));
            }
        }
        Ok(())
    }

    async fn boot(&mut self, id: u64) {
        let opened = match &mut self.storage {
            Storage::Dir(dir) => LogStore::open(&dir.join(format!("node{id}.redb"))),
            Storage::Memory { dbs, sync_latency } => {
                let db = dbs
                    .entry(id)
                    .or_insert_with(|| {
                        let backend = redb::backends::InMemoryBackend::new();
                        let db = redb::Builder::new().create_with_backend(backend);
                        Arc::new(db.unwrap_or_else(|e| panic!("in-memory redb: {e}")))
                    })
                    .clone();
                LogStore::with_database(db, FlushMode::Task { sync_latency: *sync_latency })
            }
        };
        let (log, db) = opened.unwrap_or_else(|e| panic!("open store of node {id}: {e}"));
        let (tx, rx) = mpsc::unbounded_channel();
        let sm = StateMachine::open(db).unwrap_or_else(|e| panic!("{e}")).with_effects(tx);
        let state = sm.reader();
        let raft = Raft::new(id, raft_config(), self.net.factory(id), log.clone(), sm)
            .await
            .unwrap_or_else(|e| panic!("raft {id}: {e}"));
        self.net.register(id, raft.clone(), state.clone());
        let replica = Arc::new(Replica::new(id, raft, state, self.net.link(id)).with_log(log));
        self.net.register_replica(id, &replica);
        let mut k = Kernel::new(KernelConfig::default(), u32::try_from(id * 100_000).unwrap_or(0), id << 40);
        k.advance_to(self.now_ms());
        let kernel = Arc::new(Mutex::new(k));
        let renewals: Arc<Mutex<Option<Renewals>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let fenced = Arc::new(AtomicBool::new(false));
        let own: Arc<Mutex<OwnMarks>> = Arc::default();
        let (lease, frozen) = (Lease::new(), Arc::new(AtomicBool::new(false)));
        let driver = tokio::spawn(drive(
            Driver {
                id,
                replica: replica.clone(),
                kernel: kernel.clone(),
                start: self.start,
                renewals: renewals.clone(),
                down: down.clone(),
                fenced: fenced.clone(),
                own: own.clone(),
                lease: lease.clone(),
                frozen: frozen.clone(),
                watch: self.watch.clone(),
            },
            rx,
        ));
        let watched = Watched {
            kernel: kernel.clone(),
            fenced: fenced.clone(),
            frozen: frozen.clone(),
            down: down.clone(),
            lease: lease.clone(),
        };
        lock(&self.watch.nodes).insert(id, watched);
        let node = RaftNode {
            id,
            replica,
            kernel,
            mirror: MirrorId(0),
            driver,
            live: None,
            down,
            renewals,
            fenced,
            own,
            lease,
            frozen,
            elections: None,
        };
        self.nodes.insert(id, node);
        // As the daemon: elections through pre-vote from the start.
        if let (Some(cfg), Some(n)) = (&self.liveness, self.nodes.get_mut(&id)) {
            n.elections = Some(node::live::spawn_prevote_elections(n.replica.clone(), cfg.seed ^ id));
        }
    }

    /// Milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A write from node `id` to `region`.
    pub fn write(&self, id: u64, region: u64) {
        if let Some(n) = self.nodes.get(&id) {
            lock(&n.kernel).write(n.mirror, region);
        }
    }

    /// The node (kernel and daemon) dies.
    pub async fn crash(&mut self, id: u64) {
        if trace_region().is_some() {
            lock(&TRACE).push(format!("{:?} n{id} CRASH", Instant::now()));
        }
        lock(&self.watch.nodes).remove(&id);
        if let Some(n) = self.nodes.remove(&id) {
            n.driver.abort();
            if let Some(e) = &n.elections {
                e.abort();
            }
            if let Some(l) = &n.live {
                l.abort();
            }
            self.net.unregister(id);
            let _ = n.replica.raft.shutdown().await;
            let kernel = Arc::try_unwrap(n.kernel).ok().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()));
            if let Some(k) = kernel {
                k.crash();
            }
        }
    }

    /// The whole node stops (a VM pause, SIGSTOP of everything): its
    /// kernel, its daemon's tasks and its network. Its answers already on
    /// their way wait for the thaw.
    pub fn freeze(&self, id: u64) {
        if let Some(n) = self.nodes.get(&id) {
            n.frozen.store(true, Ordering::SeqCst);
            self.net.isolate(id);
        }
    }

    /// The frozen node runs again, its clock jumped: it must fence before
    /// its kernel is answered again.
    pub fn thaw(&self, id: u64) {
        if let Some(n) = self.nodes.get(&id) {
            self.net.heal();
            n.frozen.store(false, Ordering::SeqCst);
            lock(&self.events).push(LiveEvent::Thawed { node: id, at_ms: self.now_ms() });
        }
    }

    /// Node `id` boots again after a crash: a new kernel (new incarnation)
    /// and its Raft node restarted from its store; it rejoins and loads the
    /// table again.
    pub async fn reboot(&mut self, id: u64) -> bool {
        if trace_region().is_some() {
            lock(&TRACE).push(format!("{:?} n{id} REBOOT", Instant::now()));
        }
        if self.nodes.contains_key(&id) {
            return false;
        }
        self.boot(id).await;
        let inc = {
            let e = self.incarnations.entry(id).or_insert(1);
            *e += 1;
            *e
        };
        let join = Proposal { commands: vec![regions::Command::NodeJoined { node: Rn(id), incarnation: inc }] };
        let Some(node) = self.nodes.get(&id) else { return false };
        if node.replica.propose(join, Instant::now() + Duration::from_secs(30)).await.is_err() {
            return false;
        }
        lock(&node.kernel).create(self.table.clone(), self.legs.clone());
        self.start_liveness(id, inc);
        true
    }

    /// Some live node proposes the eviction of `id` (the liveness layer's
    /// job, done by hand here).
    pub async fn evict(&self, id: u64) -> bool {
        if trace_region().is_some() {
            lock(&TRACE).push(format!("{:?} n{id} EVICT proposed", Instant::now()));
        }
        let Some(n) = self.nodes.values().find(|n| n.id != id) else { return false };
        let p = Proposal { commands: vec![regions::Command::NodeEvicted { node: Rn(id) }] };
        n.replica.propose(p, Instant::now() + Duration::from_secs(10)).await.is_ok()
    }

    /// A recovery under way, as (node, region), in some node's replica.
    pub fn recovering(&self) -> Option<(u64, u64)> {
        let uuid = Uuid::new("LVM-raft-sim")?;
        self.nodes.values().find_map(|n| {
            n.replica
                .state
                .read(|m| m.log(&uuid).and_then(|l| l.assignments().iter().next().map(|(i, r)| (i.node.0, r.0))))
        })
    }

    /// When node `id`'s current kernel last put a write on a leg.
    pub fn last_write_ms(&self, id: u64) -> Option<u64> {
        self.nodes.get(&id).and_then(|n| lock(&n.kernel).stats().last_write_ms)
    }

    /// The regions node `id` has marked, in some live node's replica.
    pub fn marked_by(&self, id: u64) -> BTreeSet<u64> {
        self.read_log(|l| {
            l.marks().iter().filter(|(_, who)| who.iter().any(|i| i.node.0 == id)).map(|(r, _)| r.0).collect()
        })
    }

    /// A line in the debug trace (`DMLOGD_TRACE_REGION`).
    pub fn note(&self, line: &str) {
        if trace_region().is_some() {
            lock(&TRACE).push(format!("{:?} {line}", Instant::now()));
        }
    }

    /// Waits until no node is fenced without a reboot (they rejoin by
    /// themselves once they reach the cluster), up to `limit`.
    pub async fn wait_unfenced(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if !self.nodes.values().any(|n| n.fenced.load(Ordering::SeqCst)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// The node that leads, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes.values().find(|n| n.replica.raft.metrics().borrow().state.is_leader()).map(|n| n.id)
    }

    /// Regions with writes in flight in node `id`'s kernel.
    pub fn inflight_regions(&self, id: u64) -> Vec<u64> {
        self.nodes
            .get(&id)
            .and_then(|n| lock(&n.kernel).mirror(n.mirror).map(|v| v.inflight_regions))
            .unwrap_or_default()
    }

    /// The out-of-sync regions in the leader's replica (which has applied
    /// everything committed).
    pub fn out_of_sync_at_leader(&self) -> BTreeSet<u64> {
        let Some(uuid) = Uuid::new("LVM-raft-sim") else { return BTreeSet::new() };
        self.nodes
            .values()
            .find(|n| n.replica.raft.metrics().borrow().state.is_leader())
            .and_then(|n| {
                n.replica.state.read(|m| {
                    m.log(&uuid).map(|l| (0..l.region_count()).filter(|&r| !l.in_sync(wire::Region(r))).collect())
                })
            })
            .unwrap_or_default()
    }

    /// The out-of-sync regions, in some live node's replica.
    pub fn out_of_sync(&self) -> BTreeSet<u64> {
        self.read_log(|l| (0..l.region_count()).filter(|&r| !l.in_sync(wire::Region(r))).collect())
    }

    /// The regions node `id`'s kernel holds dirty, as its daemon counts them
    /// from the requests it answered (what a rejoin marks again).
    pub fn held_dirty(&self, id: u64) -> BTreeSet<u64> {
        let Some(n) = self.nodes.get(&id) else { return BTreeSet::new() };
        let Some(luid) = lock(&n.kernel).mirror(n.mirror).map(|v| v.luid) else { return BTreeSet::new() };
        lock(&n.own).dirty(&self.table.uuid, luid).into_iter().map(|r| r.0).collect()
    }

    fn read_log<T: Default>(&self, f: impl Fn(&regions::Log) -> T) -> T {
        let Some(uuid) = Uuid::new("LVM-raft-sim") else { return T::default() };
        self.nodes
            .values()
            .find(|n| !n.down.load(Ordering::SeqCst) && !n.frozen.load(Ordering::SeqCst))
            .and_then(|n| n.replica.state.read(|m| m.log(&uuid).map(&f)))
            .unwrap_or_default()
    }

    /// The events of `node` (fences, evictions, rejoins, thaws), in order.
    pub fn events_of(&self, node: u64) -> Vec<LiveEvent> {
        lock(&self.events)
            .iter()
            .filter(|e| match e {
                LiveEvent::Fenced { node: n, .. }
                | LiveEvent::Evicted { node: n, .. }
                | LiveEvent::Rejoined { node: n, .. }
                | LiveEvent::Thawed { node: n, .. } => *n == node,
            })
            .cloned()
            .collect()
    }

    /// Whether node `id`'s kernel has a write in flight.
    pub fn writing(&self, id: u64) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| lock(&n.kernel).mirror(n.mirror).is_some_and(|v| !v.inflight_regions.is_empty()))
    }

    /// Waits until every kernel is idle, then asks `dmsetup status`
    /// everywhere and checks: every node's status shows all regions in
    /// sync, the legs are identical, the replicas hold the same state, no
    /// kernel saw a violation.
    pub async fn verify(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        // Settled: every kernel idle, every replica at the same applied
        // index, and no kernel still to be kicked after an eviction (a kick
        // reaches a follower's kernel only when it applies the entry).
        // (Replicas are compared by state, not applied index: lease
        // renewals commit all the time and change nothing.)
        let settled = || {
            let states: Vec<Vec<u8>> = self.nodes.values().map(|n| n.replica.state.read(|m| m.snapshot())).collect();
            self.nodes.values().all(|n| lock(&n.kernel).is_idle())
                && states.windows(2).all(|w| w[0] == w[1])
                && self
                    .nodes
                    .values()
                    .all(|n| n.replica.state.read(|m| m.logs().values().all(|l| l.awaiting_resume().is_empty())))
        };
        let wait_settled = async |deadline: Instant| {
            let mut quiet = 0;
            while quiet < 3 && Instant::now() < deadline {
                quiet = if settled() { quiet + 1 } else { 0 };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        wait_settled(deadline).await;
        self.note(&format!("SETTLED\n{}", self.read_log(|l| l.describe())));
        for n in self.nodes.values() {
            lock(&n.kernel).status(n.mirror);
        }
        wait_settled(Instant::now() + Duration::from_secs(30)).await;
        let mut problems = Vec::new();
        for n in self.nodes.values() {
            let k = lock(&n.kernel);
            problems.extend(k.violations().iter().map(|v| format!("n{} at {} ms: {}", n.id, v.at_ms, v.what)));
            match k.mirror(n.mirror) {
                Some(v) if v.status_sync_count == Some(v.region_count) => {}
                v => problems.push(format!(
                    "n{} status: {:?}; kernel: {}",
                    n.id,
                    v.map(|v| (v.status_sync_count, v.region_count)),
                    k.explain(n.mirror)
                )),
            }
        }
        let differ = self.legs.lock().differing();
        if !differ.is_empty() {
            problems.push(format!("legs differ in {differ:?}"));
        }
        problems.extend(lock(&self.watch.problems).iter().cloned());
        if !problems.is_empty() {
            problems.push(self.read_log(|l| l.describe()));
        }
        // Followers learn the last commit index with the next heartbeat.
        let applied = || self.nodes.values().map(|n| n.replica.state.last_applied()).collect::<Vec<_>>();
        let snaps = || self.nodes.values().map(|n| n.replica.state.read(|m| m.snapshot())).collect::<Vec<_>>();
        let until = Instant::now() + Duration::from_secs(30);
        while !snaps().windows(2).all(|w| w[0] == w[1]) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !snaps().windows(2).all(|w| w[0] == w[1]) {
            problems.push(format!("replicas differ at applied ids {:?}", applied()));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for n in self.nodes.into_values() {
            n.driver.abort();
            if let Some(e) = &n.elections {
                e.abort();
            }
            if let Some(l) = &n.live {
                l.abort();
            }
            let _ = n.replica.raft.shutdown().await;
        }
    }
}

/// The node loop: moves the kernel's clock, sends its requests through the
/// replica (each in its own task, so the kernel's threads overlap as in the
/// real kernel), and acts on effects addressed to this node.
struct Driver {
    id: u64,
    replica: Arc<Replica<MemLink>>,
    kernel: Arc<Mutex<Kernel>>,
    start: Instant,
    renewals: Arc<Mutex<Option<Renewals>>>,
    down: Arc<AtomicBool>,
    fenced: Arc<AtomicBool>,
    own: Arc<Mutex<OwnMarks>>,
    lease: Lease,
    frozen: Arc<AtomicBool>,
    watch: Watch,
}

async fn drive(d: Driver, mut effects: mpsc::UnboundedReceiver<AppliedEffects>) {
    let Driver { id, replica, kernel, start, renewals, down, fenced, own, lease, frozen, watch } = d;
    loop {
        if down.load(Ordering::SeqCst) {
            return;
        }
        // A frozen node's kernel stands still; its clock jumps at the thaw.
        if frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let requests = {
            let mut k = lock(&kernel);
            k.advance_to(now);
            k.take_requests()
        };
        for datagram in requests {
            if let Ok(frame) = Frame::parse(&datagram)
                && let Ok(msg) = frame.message()
            {
                lock(&own).requested(&msg.uuid, msg.luid(), &msg.request);
            }
            let (replica, kernel, fenced, own) = (replica.clone(), kernel.clone(), fenced.clone(), own.clone());
            let (lease, frozen, watch) = (lease.clone(), frozen.clone(), watch.clone());
            tokio::spawn(async move {
                if let Some((reply, ok, answered)) = answer(&replica, &datagram).await {
                    // A stopped process sends its answer when it wakes.
                    while frozen.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    // A fenced node answers nothing, nor one whose lease ran
                    // out (as the daemon's router).
                    if fenced.load(Ordering::SeqCst) || !(lease.holds() || broken("no-lease-gate")) {
                        return;
                    }
                    if let Some(msg) = ok {
                        lock(&own).acknowledged(&msg.uuid, msg.luid(), &msg.request);
                        if let (wire::Request::GetResyncWork, Some(a)) = (&msg.request, &answered) {
                            watch.answered(id, &msg.request, a, Instant::now());
                        }
                    }
                    lock(&kernel).deliver(&reply);
                }
            });
        }
        while let Ok(applied) = effects.try_recv() {
            for e in applied.effects {
                match e {
                    Effect::KickKernel { node, .. } if node.0 == id && !broken("no-kick") => {
                        lock(&kernel).kick(MirrorId(0))
                    }
                    // A read wakes kmirrord, whose pass asks for resync work.
                    Effect::WakeRecovery { node, .. } if node.0 == id => lock(&kernel).read(MirrorId(0), 0),
                    Effect::LeaseRenewed { node } => {
                        if let Some(r) = lock(&renewals).as_ref() {
                            r.renewed(node);
                        }
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether a safety feature is switched off for a demonstration run
/// (`DMLOGD_SIM_BREAK=no-fence` or `no-prevote`): the seeded runs must
/// then fail, which shows they test the feature.
fn broken(feature: &str) -> bool {
    std::env::var("DMLOGD_SIM_BREAK").is_ok_and(|v| v.split(',').any(|f| f == feature))
}

/// The simulation's side of a node's liveness task: the fence action is a
/// reboot (the kernel dies with its writes in flight, the daemon stops).
struct SimHooks {
    id: u64,
    kernel: Arc<Mutex<Kernel>>,
    down: Arc<AtomicBool>,
    fenced: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    lease: Lease,
    fence_after: Duration,
    suspend: bool,
    events: Arc<Mutex<Vec<LiveEvent>>>,
    net: MemNet,
    start: Instant,
}

impl SimHooks {
    fn sim_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl LiveHooks for SimHooks {
    fn frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    fn fence(&self) {
        let at_ms = self.sim_ms();
        let last_write_ms = lock(&self.kernel).stats().last_write_ms;
        lock(&self.events).push(LiveEvent::Fenced { node: self.id, at_ms, last_write_ms });
        self.trace(format!("n{} FENCED", self.id));
        if self.suspend {
            // Stop answering, and suspend the mirror: its writes are held
            // (the suspend itself waits for answers until the rejoin).
            self.fenced.store(true, Ordering::SeqCst);
            lock(&self.kernel).suspend(MirrorId(0));
            return;
        }
        self.down.store(true, Ordering::SeqCst);
        let dead = std::mem::replace(&mut *lock(&self.kernel), Kernel::new(KernelConfig::default(), 0, 0));
        dead.crash();
        self.net.unregister(self.id);
    }

    fn evicted(&self, node: Rn) {
        let at_ms = self.sim_ms();
        lock(&self.events).push(LiveEvent::Evicted { node: node.0, at_ms });
    }

    fn trace(&self, line: String) {
        if trace_region().is_some() {
            lock(&TRACE).push(format!("{:?} {line}", Instant::now()));
        }
    }
}

/// After a `suspend` fence: one entry registering the node's table and
/// re-marking what its kernel may hold dirty (with the stale-hints notice),
/// retried until it commits without refusals; then the node answers again
/// and its mirror is resumed. `DMLOGD_SIM_BREAK=no-remark` leaves the marks
/// out, `no-stale-hints` the notice (the seeded runs must then fail).
async fn rejoin(replica: &Replica<MemLink>, own: &Mutex<OwnMarks>, incarnation: u64, hooks: &SimHooks) {
    loop {
        let mut commands = lock(own).rejoin(Rn(replica.id), incarnation);
        if broken("no-remark") {
            commands.retain(|c| !matches!(c, regions::Command::Kernel { op: regions::KernelOp::Flush { .. }, .. }));
        }
        if broken("no-stale-hints") {
            commands.retain(|c| !matches!(c, regions::Command::StaleHints { .. }));
        }
        let p = Proposal { commands };
        match replica.propose(p, Instant::now() + Duration::from_secs(5)).await {
            Ok(out) if out.0.iter().all(|o| o.refusal.is_none()) => break,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    hooks.lease.grant(hooks.fence_after);
    hooks.fenced.store(false, Ordering::SeqCst);
    lock(&hooks.events).push(LiveEvent::Rejoined { node: hooks.id, at_ms: hooks.sim_ms() });
    hooks.trace(format!("n{} REJOINED", hooks.id));
    lock(&hooks.kernel).resume(MirrorId(0));
}
