//! Simulated kernels driving real hosts: three (or more) nodes in one
//! process, each running the product's pipeline ([`node::host::Host`]:
//! router, lease gate, liveness, fence and rejoin, effects) over a real
//! Raft replica (openraft, redb, the in-memory network), with a
//! `kernel-sim` kernel behind an in-memory transport that carries the same
//! datagrams as the netlink socket ([`node::transport::MemTransport`]).
//!
//! The harness is the machines: it moves each kernel's clock, hands its
//! datagrams to the daemon (or, when no daemon listens, lets the kernel see
//! `-ESRCH` and run its reconnect loop), kills and restarts daemons under
//! live kernels, crashes and reboots whole nodes, freezes them, cuts them
//! off, and watches from outside what no node may ever do.

#![allow(clippy::panic)] // Test support: a failed setup fails the test loudly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kernel_sim::{Config as KernelConfig, Kernel, Legs, MirrorId, SharedLegs, Table};
use node::gate::Gate;
use node::host::{Exit, Fence, FenceOutcome, Host, HostConfig};
use node::live::LiveConfig;
use node::liveness::Timing;
use node::own_marks::{MemJournal, OwnMarks, OwnMarksStore};
use node::transport::{MemKernel, MemKernelEnd, MemTransport};
use openraft::BasicNode;
use regions::NodeId as Rn;
use replication::memnet::{MemLink, MemNet};
use replication::{FlushMode, LogStore, Proposal, Raft, Replica, StateMachine, Violations};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wire::{KernelReply, Uuid};

type SimReplica = Arc<Replica<MemLink>>;

/// One node: its kernel (which outlives its daemon) and its daemon.
pub struct RaftNode {
    /// The node id (Raft and region machine).
    pub id: u64,
    /// The running daemon's replica (a restarted daemon has a new one).
    pub replica: SimReplica,
    /// Its simulated kernel.
    pub kernel: Arc<Mutex<Kernel>>,
    /// Its mirror.
    pub mirror: MirrorId,
    /// The daemon's task, `None` while the daemon is dead.
    daemon: Option<JoinHandle<Exit>>,
    /// The kernel's way to the running daemon (`None`: nobody listens).
    end: Arc<Mutex<Option<MemKernelEnd>>>,
    /// The running daemon's gate.
    gate: Gate,
    /// The kernel's clock and datagrams.
    pump: JoinHandle<()>,
    /// Set when the node fenced by a reboot (its kernel is dead).
    pub down: Arc<AtomicBool>,
    /// Set while the whole node (kernel, daemon, network) is stopped.
    pub frozen: Arc<AtomicBool>,
    /// What stops the node at a chosen point of its daemon's sending.
    trap: Arc<Traps>,
    /// The node's local disk: the daemon's journal of what its kernel holds.
    journal: MemJournal,
    /// Its kernel's boot identity.
    incarnation: u64,
}

/// Automatic liveness: leases renewed through Raft, the leader evicting
/// nodes unseen for `dead_after`, nodes fencing themselves after
/// `fence_after`.
#[derive(Clone, Debug)]
pub struct LivenessConfig {
    /// The timings (validated).
    pub timing: Timing,
    /// Each node's clock rate (local ms per real ms), by node id; 1.0 if absent.
    pub rates: BTreeMap<u64, f64>,
    /// Seeds the nodes' election timeouts.
    pub seed: u64,
    /// The fence action: `false` reboots the node (its kernel dies);
    /// `true` suspends its mirror and stops answering, and the node rejoins
    /// without a reboot once it can reach the cluster.
    pub suspend: bool,
}

impl LivenessConfig {
    /// Production timings, every clock exact, reboot fences.
    pub fn production() -> LivenessConfig {
        LivenessConfig { timing: Timing::default(), rates: BTreeMap::new(), seed: 1, suspend: false }
    }
}

/// What the liveness layer did, at simulated milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveEvent {
    /// A node fenced itself.
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
    /// A node's daemon exited because its kernel transport failed.
    TransportFailed {
        /// The node.
        node: u64,
        /// When.
        at_ms: u64,
    },
}

impl LiveEvent {
    /// The node it is about.
    pub fn node(&self) -> u64 {
        match self {
            LiveEvent::Fenced { node, .. }
            | LiveEvent::Evicted { node, .. }
            | LiveEvent::Rejoined { node, .. }
            | LiveEvent::Thawed { node, .. }
            | LiveEvent::TransportFailed { node, .. } => *node,
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
    /// Daemon starts so far, of all nodes: each start is a new host run
    /// ([`HostConfig::run`]).
    starts: u64,
    liveness: LivenessConfig,
    /// Fences, evictions, rejoins, thaws, in order.
    pub events: Arc<Mutex<Vec<LiveEvent>>>,
    /// What the harness saw go wrong outside the kernels.
    watch: Watch,
    /// Invariant violations found by any replica after any command.
    violations: Violations,
    /// The fence action of these nodes fails (after stopping the mirror's
    /// writes, which the action did not report).
    failing_fences: Arc<Mutex<BTreeSet<u64>>>,
    /// The region each node wrote last.
    last_written: Mutex<BTreeMap<u64, u64>>,
}

/// Checks across nodes, from outside them:
///
/// * no node is handed a region to copy while another node's kernel holds
///   it dirty and may write it without a MARK (an answering node: not
///   stopped, fenced or out of lease), unless that other kernel was let
///   write it while recovery was halted and so must copy it itself, with
///   its own writes quiesced, before the region can be in sync
///   (`Log::passers`);
/// * I1 from the kernel's side: when a node's kernel gets an answer, every
///   region it is writing is not clean in the replicated state;
/// * every reply delivered, by node and time.
#[derive(Clone)]
struct Watch {
    nodes: Arc<Mutex<BTreeMap<u64, Watched>>>,
    problems: Arc<Mutex<Vec<String>>>,
    deliveries: Arc<Mutex<BTreeMap<u64, Vec<u64>>>>,
    /// When a node last crashed or had its daemon killed (ms): the I1 check
    /// waits a second after it, since the replica that applied a FLUSH may
    /// have died with the others not caught up yet.
    last_death_ms: Arc<Mutex<Option<u64>>>,
    /// Failed leg writes injected ([`RaftCluster::fail_write`]): by request
    /// seq, the node and region; and when each was answered.
    failures: Arc<Mutex<BTreeMap<u32, (u64, u64)>>>,
    failures_answered: Arc<Mutex<Vec<(u64, u64, u64)>>>,
    /// When each IN_SYNC request was first sent, by node and seq (ms).
    in_sync_sent: Arc<Mutex<BTreeMap<(u64, u32), u64>>>,
    start: Instant,
}

/// What the watch needs of a node.
#[derive(Clone)]
struct Watched {
    kernel: Arc<Mutex<Kernel>>,
    gate: Gate,
    frozen: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    replica: SimReplica,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Watched {
    fn answering(&self) -> bool {
        !self.frozen.load(Ordering::SeqCst) && !self.down.load(Ordering::SeqCst) && self.gate.open()
    }
}

impl Watch {
    fn new(start: Instant) -> Watch {
        Watch {
            nodes: Arc::default(),
            problems: Arc::default(),
            deliveries: Arc::default(),
            last_death_ms: Arc::default(),
            failures: Arc::default(),
            failures_answered: Arc::default(),
            in_sync_sent: Arc::default(),
            start,
        }
    }

    /// The answer to an injected failed write, if `reply` is one: checks I5
    /// for the local IN_SYNC answers (no node that marks the region, and so
    /// answers IN_SYNC of it from its own replica, may still see it in sync
    /// while the cluster has it out of sync), and records it.
    fn failure_answered(&self, id: u64, reply: &[u8]) -> bool {
        let Ok(r) = KernelReply::parse(reply) else { return false };
        let Some((node, region)) = lock(&self.failures).remove(&r.seq().0) else { return false };
        let at = ms_since(self.start);
        lock(&self.failures_answered).push((node, region, at));
        let nodes = lock(&self.nodes).clone();
        let Some(newest) = newest(&nodes) else { return true };
        let reg = wire::Region(region);
        let out_of_sync = newest.replica.state.read(|m| m.logs().values().any(|l| !l.in_sync(reg)));
        if !out_of_sync {
            // Recovered already: nothing stale to see.
            return true;
        }
        for (n, w) in &nodes {
            if *n == id || !w.answering() {
                continue;
            }
            let (marks, in_sync) = w.replica.state.read(|m| {
                let marks = m
                    .logs()
                    .values()
                    .any(|l| l.marks().get(&reg).is_some_and(|who| who.iter().any(|i| i.node.0 == *n)));
                (marks, m.logs().values().any(|l| l.in_sync(reg)))
            });
            if marks && in_sync {
                self.problem(format!(
                    "I5 violated at {at} ms: n{id}'s failed write of region {region} was answered while n{n}, \
                     which marks it and answers IN_SYNC of it from its own replica, still has it in sync"
                ));
            }
        }
        true
    }

    fn problem(&self, p: String) {
        lock(&self.problems).push(p);
    }

    /// `reply` (to `request`) reached node `id`'s kernel now.
    fn delivered(&self, id: u64, request: Option<&wire::Request>, reply: &[u8]) {
        let at = ms_since(self.start);
        lock(&self.deliveries).entry(id).or_default().push(at);
        let Ok(KernelReply::Full { error: 0, data, seq, .. }) = KernelReply::parse(reply) else { return };
        if let (Some(wire::Request::GetResyncWork), Some(1)) = (request, word(&data, 0)) {
            self.handed_out(id, word(&data, 1).unwrap_or(u64::MAX), at);
        }
        if let Some(wire::Request::InSync(r)) = request {
            self.told_in_sync(id, seq.0, r.0, word(&data, 0) == Some(1), at);
        }
    }

    /// Node `id`'s kernel sends IN_SYNC with `seq` (a re-send keeps the
    /// first time).
    fn in_sync_sent(&self, id: u64, seq: u32) {
        lock(&self.in_sync_sent).entry((id, seq)).or_insert_with(|| ms_since(self.start));
    }

    /// I5 for every IN_SYNC answer: a kernel that asked about `region`
    /// after a failed write of it was answered is not told it is in sync
    /// while the cluster (the most advanced replica that answers) still
    /// answers 0 for it. A read asked before that answer may be ordered
    /// before the failed write; one asked after may not.
    fn told_in_sync(&self, id: u64, seq: u32, region: u64, in_sync: bool, at: u64) {
        let Some(sent) = lock(&self.in_sync_sent).remove(&(id, seq)) else { return };
        if !in_sync {
            return;
        }
        let failed = lock(&self.failures_answered).iter().any(|&(_, r, t)| r == region && t < sent);
        if !failed {
            return;
        }
        let nodes = lock(&self.nodes).clone();
        let Some(newest) = newest(&nodes) else { return };
        let reg = wire::Region(region);
        let zero = newest.replica.state.read(|m| m.logs().values().any(|l| !l.in_sync_answer(reg)));
        if zero {
            self.problem(format!(
                "I5 violated at {at} ms: n{id}'s kernel, asking at {sent} ms, was told region {region} is in sync \
                 after a failed write of it was answered, while the cluster has it out of sync"
            ));
        }
    }

    /// No other answering node's kernel holds `region` dirty, unless the
    /// replicated state took the copy back since it was handed out (a
    /// rejoin that re-marked the region did: that copy's end will not be
    /// believed), or that node must copy the region itself before it is in
    /// sync (it let writes through to it while recovery was halted).
    fn handed_out(&self, id: u64, region: u64, at: u64) {
        let nodes = lock(&self.nodes).clone();
        let newest = newest(&nodes);
        // Handed out as an assignment or from a claim (by its own node).
        let still_held = newest.is_none_or(|w| {
            w.replica.state.read(|m| {
                m.logs()
                    .values()
                    .any(|l| l.instances().keys().any(|i| i.node.0 == id && l.recovers(*i, wire::Region(region))))
            })
        });
        if !still_held {
            return;
        }
        let passers: BTreeSet<u64> = newest
            .map(|w| {
                w.replica.state.read(|m| {
                    m.logs().values().flat_map(|l| l.passers(wire::Region(region)).map(|i| i.node.0)).collect()
                })
            })
            .unwrap_or_default();
        for (n, w) in nodes {
            if n != id
                && w.answering()
                && !passers.contains(&n)
                && lock(&w.kernel).writable_dirty_regions(MirrorId(0)).contains(&region)
            {
                self.problem(format!(
                    "{at} ms: n{id} was handed region {region} to copy while n{n}'s kernel holds it dirty"
                ));
            }
        }
    }

    /// I1 from the kernel's side: node `id`'s kernel, `writing` these
    /// regions, writes only regions that are not clean in the state.
    fn check_i1(&self, id: u64, uuid: &Uuid, writing: &[u64]) {
        let at = ms_since(self.start);
        if writing.is_empty() || lock(&self.last_death_ms).is_some_and(|t| at < t + 1_000) {
            return;
        }
        let nodes = lock(&self.nodes).clone();
        let Some(me) = nodes.get(&id) else { return };
        if !me.answering() {
            return;
        }
        let Some(newest) = newest(&nodes) else { return };
        let clean: Vec<u64> = newest.replica.state.read(|m| {
            if !m.members().contains_key(&Rn(id)) {
                return Vec::new();
            }
            let Some(log) = m.log(uuid) else { return Vec::new() };
            writing.iter().copied().filter(|&r| log.is_clean(wire::Region(r))).collect()
        });
        if !clean.is_empty() {
            self.problem(format!(
                "I1 violated at {at} ms: n{id}'s kernel writes regions {clean:?}, which are clean in the replicated state"
            ));
        }
    }
}

/// The live replica that has applied the most: it holds every entry whose
/// commit any live node has seen.
fn newest(nodes: &BTreeMap<u64, Watched>) -> Option<&Watched> {
    nodes
        .values()
        .filter(|w| !w.down.load(Ordering::SeqCst) && !w.frozen.load(Ordering::SeqCst))
        .max_by_key(|w| w.replica.state.last_applied().map_or(0, |l| l.index))
}

fn word(data: &[u8], i: usize) -> Option<u64> {
    data.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
}

/// The kernel's side of a node's in-memory transport.
struct SimKernel {
    id: u64,
    kernel: Arc<Mutex<Kernel>>,
    frozen: Arc<AtomicBool>,
    trap: Arc<Traps>,
    watch: Watch,
    net: MemNet,
}

/// Points at which a scenario stops a node's daemon, set per node.
#[derive(Default)]
pub(crate) struct Traps {
    /// Freeze the whole node when its daemon next has a reply ready to send.
    freeze: AtomicBool,
    /// Kill the daemon right after its next reply to this kind of request
    /// reached the kernel.
    kill_after: Mutex<Option<wire::RequestType>>,
    /// The daemon died there: nothing it sends from now on reaches the
    /// kernel (the scenario then stops its tasks with `kill_daemon`).
    dead: AtomicBool,
}

impl MemKernel for SimKernel {
    fn deliver(&self, reply: &[u8]) {
        if self.trap.dead.load(Ordering::SeqCst) || self.watch.failure_answered(self.id, reply) {
            return;
        }
        let request =
            KernelReply::parse(reply).ok().and_then(|r| lock(&self.kernel).outstanding_request(r.seq().0).cloned());
        let kind = request.as_ref().map(wire::Request::request_type);
        let mut kill = lock(&self.trap.kill_after);
        if kind.is_some() && *kill == kind {
            // The process dies right after this send returned.
            *kill = None;
            self.trap.dead.store(true, Ordering::SeqCst);
            note(&format!("n{} DAEMON DIES after answering a {:?}", self.id, kind));
        }
        drop(kill);
        self.watch.delivered(self.id, request.as_ref(), reply);
        if let Some(q) = &request {
            let answer = KernelReply::parse(reply).map(|r| match r {
                KernelReply::Full { error, data, .. } => {
                    format!("error {error} data {:?}", (word(&data, 0), word(&data, 1)))
                }
                KernelReply::BareAck { ack, .. } => format!("ack {ack}"),
            });
            note_request(self.id, &format!("<- {answer:?} for"), q);
        }
        lock(&self.kernel).deliver(reply);
    }

    fn kick(&self, _uuid: &Uuid) -> Result<String, String> {
        lock(&self.kernel).kick(MirrorId(0));
        Ok("kicked the simulated mirror".into())
    }

    fn wake(&self, _uuid: &Uuid) -> Result<String, String> {
        // A read wakes kmirrord, whose pass asks for resync work.
        lock(&self.kernel).read(MirrorId(0), 0);
        Ok("read the simulated mirror".into())
    }

    fn stopped(&self) -> bool {
        if self.trap.freeze.swap(false, Ordering::SeqCst) {
            // The whole node stops right here, with a reply ready to send.
            self.frozen.store(true, Ordering::SeqCst);
            self.net.isolate(Rn(self.id));
            note(&format!("n{} FROZEN with a reply ready to send", self.id));
        }
        self.frozen.load(Ordering::SeqCst)
    }
}

/// The simulation's fence action: a reboot (the kernel dies with its
/// writes in flight, the node goes down), or a suspend of the mirror.
struct SimFence {
    id: u64,
    kernel: Arc<Mutex<Kernel>>,
    down: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    suspend: bool,
    failing: Arc<Mutex<BTreeSet<u64>>>,
    events: Arc<Mutex<Vec<LiveEvent>>>,
    net: MemNet,
    start: Instant,
}

impl Fence for SimFence {
    fn fence(&self, _logs: &[Uuid]) -> FenceOutcome {
        let at_ms = ms_since(self.start);
        let last_write_ms = lock(&self.kernel).stats().last_write_ms;
        lock(&self.events).push(LiveEvent::Fenced { node: self.id, at_ms, last_write_ms });
        note(&format!("n{} FENCED", self.id));
        if lock(&self.failing).contains(&self.id) {
            // The action stopped the writes but could not say so.
            lock(&self.kernel).suspend(MirrorId(0));
            return FenceOutcome::Failed("the simulated fence action failed".into());
        }
        if self.suspend {
            // Its writes are held; the suspend itself waits for answers
            // until the rejoin.
            lock(&self.kernel).suspend(MirrorId(0));
            return FenceOutcome::Stopped { undo: vec!["mirror 0".into()] };
        }
        self.down.store(true, Ordering::SeqCst);
        let dead = std::mem::replace(&mut *lock(&self.kernel), Kernel::new(KernelConfig::default(), 0, 0));
        dead.crash();
        self.net.unregister(Rn(self.id));
        FenceOutcome::Resetting
    }

    fn after_rejoin(&self, _undo: Vec<String>) {
        lock(&self.kernel).resume(MirrorId(0));
    }

    fn frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    fn rejoined(&self) {
        lock(&self.events).push(LiveEvent::Rejoined { node: self.id, at_ms: ms_since(self.start) });
        note(&format!("n{} REJOINED", self.id));
    }

    fn evicted(&self, node: Rn) {
        lock(&self.events).push(LiveEvent::Evicted { node: node.0, at_ms: ms_since(self.start) });
    }

    fn trace(&self, line: String) {
        note(&line);
    }
}

/// Debug trace (`DMLOGD_TRACE_REGION=r`): what the harness did, and the
/// requests touching region `r` with their answers (18446744073709551615:
/// every request).
pub static TRACE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn trace_region() -> Option<u64> {
    static REGION: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *REGION.get_or_init(|| std::env::var("DMLOGD_TRACE_REGION").ok().and_then(|s| s.parse().ok()))
}

fn note(line: &str) {
    if trace_region().is_some() {
        lock(&TRACE).push(format!("{:?} {line}", Instant::now()));
    }
}

/// Traces `request` of node `id` if it touches the traced region.
fn note_request(id: u64, what: &str, request: &wire::Request) {
    use wire::Request as Q;
    let Some(r) = trace_region() else { return };
    let touches = r == u64::MAX
        || match request {
            Q::InSync(x) | Q::IsRemoteRecovering(x) | Q::SetRegionSync { region: x, .. } => x.0 == r,
            Q::MarkRegion(rs) | Q::ClearRegion(rs) | Q::Flush { marks: rs } => rs.iter().any(|x| x.0 == r),
            Q::GetResyncWork | Q::Resume | Q::Presuspend | Q::Postsuspend | Q::Ctr { .. } => true,
            _ => false,
        };
    if touches {
        note(&format!("n{id} {what} {request:?}"));
    }
}

/// Elections of 300-900 ms (the simulation's `election_max_ms` is 900),
/// mapped to openraft's timeouts as the daemon maps them
/// (`RaftSettings::config`): openraft's upper timeout, the followers' vote
/// lease, a third of the way up the range.
fn raft_config() -> Arc<openraft::Config> {
    let settings = replication::node::RaftSettings {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 900,
        ..replication::node::RaftSettings::default()
    };
    let mapped = settings.config().unwrap_or_else(|e| panic!("raft config: {e}"));
    let c = openraft::Config {
        heartbeat_interval: mapped.heartbeat_interval,
        election_timeout_min: mapped.election_timeout_min,
        election_timeout_max: mapped.election_timeout_max,
        ..openraft::Config::default()
    };
    Arc::new(c.validate().unwrap_or_else(|e| panic!("raft config: {e}")))
}

/// The kernel of one node: its clock moves with the runtime's; its
/// requests go to the daemon that listens, or find nobody (`-ESRCH`).
/// Every write it has on the legs is checked against I1.
async fn pump(k: PumpOf) {
    let PumpOf { id, kernel, end, down, frozen, start, watch, uuid } = k;
    loop {
        if down.load(Ordering::SeqCst) {
            return;
        }
        // A frozen node's kernel stands still; its clock jumps at the thaw.
        if !frozen.load(Ordering::SeqCst) {
            let writing = {
                let mut k = lock(&kernel);
                k.advance_to(ms_since(start));
                let requests = k.take_requests();
                let listener = lock(&end).clone();
                for datagram in requests {
                    if let Ok(frame) = wire::Frame::parse(&datagram)
                        && let Ok(msg) = frame.message()
                    {
                        if matches!(msg.request, wire::Request::InSync(_)) {
                            watch.in_sync_sent(id, msg.header.seq.0);
                        }
                        if trace_region().is_some() {
                            note_request(id, "->", &msg.request);
                        }
                    }
                    let heard = listener.as_ref().is_some_and(|e| e.send(datagram.clone()));
                    if !heard {
                        k.unheard(&datagram);
                    }
                }
                k.mirror(MirrorId(0)).map(|v| v.inflight_regions).unwrap_or_default()
            };
            watch.check_i1(id, &uuid, &writing);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What a node's kernel pump works with.
struct PumpOf {
    id: u64,
    kernel: Arc<Mutex<Kernel>>,
    end: Arc<Mutex<Option<MemKernelEnd>>>,
    down: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    start: Instant,
    watch: Watch,
    uuid: Uuid,
}

impl RaftCluster {
    /// Starts `n` nodes with their stores in `dir` and production timings,
    /// initialises Raft, and creates the mirror table on every kernel.
    pub async fn start(dir: &Path, n: u64, log_args: &str, regions: u64) -> RaftCluster {
        RaftCluster::start_live(Storage::Dir(dir.to_owned()), n, log_args, regions, LivenessConfig::production()).await
    }

    /// Starts `n` nodes with `storage` and `liveness`.
    pub async fn start_live(
        storage: Storage,
        n: u64,
        log_args: &str,
        regions: u64,
        liveness: LivenessConfig,
    ) -> RaftCluster {
        let net = MemNet::new();
        let uuid = Uuid::new("LVM-raft-sim").unwrap_or_else(|| unreachable!());
        let table = Table { uuid, target_sectors: regions * 8, log_args: log_args.into(), integrated_flush: false };
        let legs = SharedLegs::new(Legs::new(regions, !log_args.contains("nosync")));
        let start = Instant::now();
        let mut c = RaftCluster {
            nodes: BTreeMap::new(),
            net,
            legs,
            table,
            storage,
            start,
            incarnations: BTreeMap::new(),
            starts: 0,
            liveness,
            events: Arc::default(),
            watch: Watch::new(start),
            violations: Arc::default(),
            failing_fences: Arc::default(),
            last_written: Mutex::default(),
        };
        for id in 1..=n {
            c.boot(id, 1).await;
        }
        let members: BTreeMap<Rn, BasicNode> = (1..=n).map(|i| (Rn(i), BasicNode::new(format!("mem:{i}")))).collect();
        if let Some(first) = c.nodes.values().next() {
            let _ = first.replica.initialize(members).await;
        }
        for id in 1..=n {
            if !c.wait_joined(id, 1, Duration::from_secs(30)).await {
                panic!("n{id} did not join; {}", c.raft_states());
            }
            if let Some(node) = c.nodes.get(&id) {
                lock(&node.kernel).create(c.table.clone(), c.legs.clone());
            }
        }
        c
    }

    /// Boots node `id`: a new kernel of boot `incarnation` and its daemon.
    async fn boot(&mut self, id: u64, incarnation: u64) {
        let mut k = Kernel::new(KernelConfig::default(), u32::try_from(id * 100_000).unwrap_or(0), id << 40);
        k.advance_to(self.now_ms());
        let kernel = Arc::new(Mutex::new(k));
        let end: Arc<Mutex<Option<MemKernelEnd>>> = Arc::default();
        let (down, frozen) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let pump = tokio::spawn(pump(PumpOf {
            id,
            kernel: kernel.clone(),
            end: end.clone(),
            down: down.clone(),
            frozen: frozen.clone(),
            start: self.start,
            watch: self.watch.clone(),
            uuid: self.table.uuid.clone(),
        }));
        // The local disk survives daemon deaths, not reboots (a new boot
        // identity makes the journal start afresh anyway).
        let journal = MemJournal::new();
        let trap = Arc::new(Traps::default());
        let (replica, daemon, gate) =
            self.start_daemon(id, incarnation, &kernel, &end, &down, &frozen, &journal, &trap).await;
        let node = RaftNode {
            id,
            replica,
            kernel,
            mirror: MirrorId(0),
            daemon: Some(daemon),
            end,
            gate,
            pump,
            down,
            frozen,
            trap,
            journal,
            incarnation,
        };
        self.nodes.insert(id, node);
        self.watch_node(id);
    }

    fn watch_node(&self, id: u64) {
        let Some(n) = self.nodes.get(&id) else { return };
        let w = Watched {
            kernel: n.kernel.clone(),
            gate: n.gate.clone(),
            frozen: n.frozen.clone(),
            down: n.down.clone(),
            replica: n.replica.clone(),
        };
        lock(&self.watch.nodes).insert(id, w);
    }

    /// Starts node `id`'s daemon over its store, with its kernel.
    #[allow(clippy::too_many_arguments)]
    async fn start_daemon(
        &mut self,
        id: u64,
        incarnation: u64,
        kernel: &Arc<Mutex<Kernel>>,
        end: &Arc<Mutex<Option<MemKernelEnd>>>,
        down: &Arc<AtomicBool>,
        frozen: &Arc<AtomicBool>,
        journal: &MemJournal,
        trap: &Arc<Traps>,
    ) -> (SimReplica, JoinHandle<Exit>, Gate) {
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
        let (tx, applied) = tokio::sync::mpsc::unbounded_channel();
        let sm = StateMachine::open(db)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_effects(tx)
            .with_checks(self.violations.clone());
        let state = sm.reader();
        let raft = Raft::new(Rn(id), raft_config(), self.net.factory(Rn(id)), log.clone(), sm)
            .await
            .unwrap_or_else(|e| panic!("raft {id}: {e}"));
        self.net.register(Rn(id), raft.clone(), state.clone());
        let replica = Arc::new(Replica::new(Rn(id), raft, state, self.net.link(Rn(id))).with_log(log));
        self.net.register_replica(Rn(id), &replica);
        let sim_kernel = SimKernel {
            id,
            kernel: kernel.clone(),
            frozen: frozen.clone(),
            trap: trap.clone(),
            watch: self.watch.clone(),
            net: self.net.clone(),
        };
        let (transport, kernel_end) = MemTransport::new(sim_kernel);
        *lock(end) = Some(kernel_end);
        let own = if node::breaks::off("no-journal") {
            OwnMarksStore::in_memory(incarnation)
        } else {
            OwnMarksStore::open(Box::new(journal.clone()), incarnation).unwrap_or_else(|e| panic!("journal: {e}"))
        };
        let cfg = &self.liveness;
        let live = LiveConfig {
            timing: cfg.timing,
            rate: cfg.rates.get(&id).copied().unwrap_or(1.0),
            seed: cfg.seed ^ (id << 32) ^ incarnation,
            prevote: !node::breaks::off("no-prevote"),
            fence: !node::breaks::off("no-fence"),
        };
        let fence = Arc::new(SimFence {
            id,
            kernel: kernel.clone(),
            down: down.clone(),
            frozen: frozen.clone(),
            suspend: cfg.suspend,
            failing: self.failing_fences.clone(),
            events: self.events.clone(),
            net: self.net.clone(),
            start: self.start,
        });
        self.starts += 1;
        let config = HostConfig {
            incarnation,
            // Far apart, as the daemon's random runs are.
            run: self.starts << 32,
            live,
            clock_start: self.start,
            disk_handover: Duration::from_millis(100),
            disk_delay: Duration::ZERO,
            clear_after: node::router::CLEAR_AFTER,
        };
        let host = Host::new(replica.clone(), Arc::new(transport), applied, own, fence, config, Arc::default());
        let gate = host.gate();
        let (events, start, net, process) = (self.events.clone(), self.start, self.net.clone(), replica.clone());
        let task = tokio::spawn(async move {
            let exit = host.run(std::future::pending()).await;
            if let Exit::TransportFailed(_) = &exit {
                lock(&events).push(LiveEvent::TransportFailed { node: id, at_ms: ms_since(start) });
                // The daemon's process exits, and its Raft with it (as in
                // `dmlogd`, which returns from main after `Host::run`).
                net.unregister(Rn(id));
                process.shutdown().await;
            }
            exit
        });
        (replica, task, gate)
    }

    /// Waits until node `id` is a member of boot `incarnation` in its own
    /// replica, up to `limit`.
    async fn wait_joined(&self, id: u64, incarnation: u64, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let joined = self.nodes.get(&id).is_some_and(|n| {
                n.replica.state.read(|m| m.members().get(&Rn(id)).is_some_and(|mm| mm.incarnation == incarnation))
            });
            if joined {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Stops node `id`'s daemon and Raft (its process dies); its kernel
    /// and its local disk stay.
    async fn stop_daemon(&mut self, id: u64) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        *lock(&n.end) = None;
        if let Some(d) = n.daemon.take() {
            d.abort();
        }
        self.net.unregister(Rn(id));
        let _ = n.replica.shutdown().await;
        *lock(&self.watch.last_death_ms) = Some(ms_since(self.start));
    }

    /// `kill -9` of node `id`'s daemon alone: its kernel keeps its tables
    /// and writes; requests it sends meanwhile find nobody.
    pub async fn kill_daemon(&mut self, id: u64) {
        note(&format!("n{id} DAEMON KILLED"));
        self.stop_daemon(id).await;
    }

    /// Starts node `id`'s daemon again under its running kernel (as
    /// systemd would after a crash of the daemon). Returns whether it
    /// joined within `limit`.
    pub async fn restart_daemon(&mut self, id: u64, limit: Duration) -> bool {
        note(&format!("n{id} DAEMON RESTARTED"));
        let Some(n) = self.nodes.get(&id) else { return false };
        if n.daemon.as_ref().is_some_and(|d| !d.is_finished()) {
            self.stop_daemon(id).await;
        }
        let Some(n) = self.nodes.get(&id) else { return false };
        let (kernel, end, down, frozen, journal, inc) =
            (n.kernel.clone(), n.end.clone(), n.down.clone(), n.frozen.clone(), n.journal.clone(), n.incarnation);
        let trap = n.trap.clone();
        trap.dead.store(false, Ordering::SeqCst);
        let (replica, daemon, gate) = self.start_daemon(id, inc, &kernel, &end, &down, &frozen, &journal, &trap).await;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.replica = replica;
            n.daemon = Some(daemon);
            n.gate = gate;
        }
        self.watch_node(id);
        self.wait_joined(id, inc, limit).await
    }

    /// Node `id`'s daemon exited (its transport failed, or it was killed).
    pub fn daemon_exited(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.daemon.as_ref().is_none_or(|d| d.is_finished()))
    }

    /// Makes the next receive of node `id`'s daemon fail, as a netlink
    /// socket's can.
    pub fn break_transport(&self, id: u64) {
        note(&format!("n{id} TRANSPORT BROKEN"));
        if let Some(e) = self.nodes.get(&id).and_then(|n| lock(&n.end).clone()) {
            e.fail_receive(std::io::ErrorKind::Other);
        }
    }

    /// The fence action of node `id` fails from now on.
    pub fn fail_fences_of(&self, id: u64) {
        lock(&self.failing_fences).insert(id);
    }

    /// Node `id`'s daemon's gate.
    pub fn gate(&self, id: u64) -> Option<Gate> {
        self.nodes.get(&id).map(|n| n.gate.clone())
    }

    /// Freezes node `id` (kernel, daemon, network) the moment its daemon
    /// next has a reply ready to send.
    pub fn freeze_at_next_send(&self, id: u64) {
        if let Some(n) = self.nodes.get(&id) {
            n.trap.freeze.store(true, Ordering::SeqCst);
        }
    }

    /// Kills node `id`'s daemon right after its next answer to a request
    /// of `kind` reached the kernel: from then on nothing it sends arrives,
    /// and [`RaftCluster::died_at_trap`] says so (the scenario then calls
    /// [`RaftCluster::kill_daemon`], which stops the rest of it).
    pub fn kill_after_next(&self, id: u64, kind: wire::RequestType) {
        if let Some(n) = self.nodes.get(&id) {
            *lock(&n.trap.kill_after) = Some(kind);
        }
    }

    /// Whether node `id`'s daemon died at the trap of
    /// [`RaftCluster::kill_after_next`].
    pub fn died_at_trap(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.trap.dead.load(Ordering::SeqCst))
    }

    /// Node `id`'s kernel fails a write of `region` on one leg: it sends
    /// SET_REGION_SYNC(region, 0) (spec §3.6) and holds the write until the
    /// answer. The simulated kernel does not model the failed leg; the
    /// request comes from beside it, with a seq of its own. Returns whether
    /// it was sent.
    pub fn fail_write(&self, id: u64, region: u64) -> bool {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0xF000_0000);
        let Some(n) = self.nodes.get(&id) else { return false };
        let Some(view) = lock(&n.kernel).mirror(n.mirror) else { return false };
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let request = wire::Request::SetRegionSync { region: wire::Region(region), in_sync: false };
        let Ok(bytes) = wire::encode_request(view.luid, &view.table.uuid, wire::Seq(seq), &request) else {
            return false;
        };
        let Some(end) = lock(&n.end).clone() else { return false };
        note(&format!("n{id} FAILED WRITE of region {region}"));
        lock(&self.watch.failures).insert(seq, (id, region));
        end.send(bytes)
    }

    /// The admin reloads node `id`'s mirror table after a leg failure (a
    /// suspend and a resume: its kernel asks for resync work again).
    pub fn reload(&self, id: u64) {
        if let Some(n) = self.nodes.get(&id) {
            note(&format!("n{id} TABLE RELOADED"));
            lock(&n.kernel).kick(n.mirror);
        }
    }

    /// When node `id`'s injected failed writes were answered, by region.
    pub fn failures_answered(&self, id: u64) -> Vec<(u64, u64)> {
        lock(&self.watch.failures_answered).iter().filter(|(n, _, _)| *n == id).map(|&(_, r, t)| (r, t)).collect()
    }

    /// Regions node `id`'s kernel holds dirty.
    pub fn kernel_dirty(&self, id: u64) -> BTreeSet<u64> {
        self.nodes.get(&id).map(|n| lock(&n.kernel).dirty_regions(n.mirror).into_iter().collect()).unwrap_or_default()
    }

    /// Whether node `id` is frozen.
    pub fn is_frozen(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.frozen.load(Ordering::SeqCst))
    }

    /// The first time a reply reached node `id`'s kernel at or after `ms`.
    pub fn delivered_after(&self, id: u64, ms: u64) -> Option<u64> {
        self.deliveries(id).into_iter().find(|&t| t >= ms)
    }

    /// When replies reached node `id`'s kernel, in simulated ms.
    pub fn deliveries(&self, id: u64) -> Vec<u64> {
        lock(&self.watch.deliveries).get(&id).cloned().unwrap_or_default()
    }

    /// Node `id`'s kernel's counters.
    pub fn kernel_stats(&self, id: u64) -> Option<kernel_sim::Stats> {
        self.nodes.get(&id).map(|n| lock(&n.kernel).stats().clone())
    }

    /// Removes nodes that fenced by a reboot (their machines went down), so
    /// they can be booted again. Returns their ids.
    pub async fn reap_fenced(&mut self) -> Vec<u64> {
        let down: Vec<u64> = self.nodes.values().filter(|n| n.down.load(Ordering::SeqCst)).map(|n| n.id).collect();
        for id in &down {
            self.remove(*id).await;
        }
        down
    }

    /// Takes node `id` out: daemon, Raft and kernel pump stop.
    async fn remove(&mut self, id: u64) -> Option<RaftNode> {
        lock(&self.watch.nodes).remove(&id);
        *lock(&self.watch.last_death_ms) = Some(ms_since(self.start));
        let mut n = self.nodes.remove(&id)?;
        n.pump.abort();
        *lock(&n.end) = None;
        if let Some(d) = n.daemon.take() {
            d.abort();
        }
        self.net.unregister(Rn(id));
        let _ = n.replica.shutdown().await;
        Some(n)
    }

    /// Each node's Raft state, for failure reports.
    pub fn raft_states(&self) -> String {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            let m = n.replica.metrics().borrow().clone();
            out.push(format!(
                "n{} {:?} term {} leader {:?} last_log {:?} applied {:?} voters {:?} down {} gate {:?}",
                n.id,
                m.state,
                m.current_term,
                m.current_leader,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
                m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
                n.down.load(Ordering::SeqCst),
                n.gate.standing(),
            ));
        }
        out.join("; ")
    }

    /// Waits until node `id` is evicted at or after simulated millisecond
    /// `since`, up to `limit`.
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
            let fenced = events[since..i].iter().any(|f| {
                matches!(f, LiveEvent::Fenced { node: n, .. } | LiveEvent::TransportFailed { node: n, .. } if n == node)
            });
            let crashed_before = crashed.get(node).is_some_and(|t| t <= at_ms);
            if !fenced && !crashed_before {
                return Err(format!("n{node} evicted at {at_ms} ms while its kernel could still write"));
            }
        }
        Ok(())
    }

    /// Milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        ms_since(self.start)
    }

    /// A write from node `id` to `region`.
    pub fn write(&self, id: u64, region: u64) {
        if let Some(n) = self.nodes.get(&id) {
            lock(&n.kernel).write(n.mirror, region);
            lock(&self.last_written).insert(id, region);
        }
    }

    /// A region below `spread` that node `id`'s table does not have marked
    /// in the most advanced replica (so a write to it sends a MARK that
    /// takes a Raft round), if there is one (held regions are cleared once
    /// idle for the router's CLEAR_AFTER).
    pub fn unmarked_region(&self, id: u64, rng: &mut impl rand::Rng, spread: u64) -> Option<u64> {
        let marked = self.marked_by(id);
        let free: Vec<u64> = (0..spread).filter(|r| !marked.contains(r)).collect();
        (!free.is_empty()).then(|| free[rng.random_range(0..free.len())])
    }

    /// A region for node `id`'s next write, below `spread`: half the time
    /// the one after its last write (a sequential writer, which the
    /// daemon marks ahead of), else any.
    pub fn pick_region(&self, id: u64, rng: &mut impl rand::Rng, spread: u64) -> u64 {
        match lock(&self.last_written).get(&id) {
            Some(&last) if rng.random_bool(0.5) => (last + 1) % spread,
            _ => rng.random_range(0..spread),
        }
    }

    /// A read by node `id` of `region` (its kernel asks IN_SYNC unless its
    /// region hash holds the region).
    pub fn read(&self, id: u64, region: u64) {
        if let Some(n) = self.nodes.get(&id) {
            lock(&n.kernel).read(n.mirror, region);
        }
    }

    /// The node (kernel and daemon) dies.
    pub async fn crash(&mut self, id: u64) {
        note(&format!("n{id} CRASH"));
        if let Some(n) = self.remove(id).await {
            let dead = std::mem::replace(&mut *lock(&n.kernel), Kernel::new(KernelConfig::default(), 0, 0));
            dead.crash();
        }
    }

    /// The whole node stops (a VM pause, SIGSTOP of everything): its
    /// kernel, its daemon's tasks and its network. Its answers already on
    /// their way wait for the thaw.
    pub fn freeze(&self, id: u64) {
        if let Some(n) = self.nodes.get(&id) {
            n.frozen.store(true, Ordering::SeqCst);
            self.net.isolate(Rn(id));
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
    /// and its daemon restarted from its store; it joins and loads the
    /// table again.
    pub async fn reboot(&mut self, id: u64) -> bool {
        note(&format!("n{id} REBOOT"));
        if self.nodes.contains_key(&id) {
            return false;
        }
        let inc = {
            let e = self.incarnations.entry(id).or_insert(1);
            *e += 1;
            *e
        };
        self.boot(id, inc).await;
        if !self.wait_joined(id, inc, Duration::from_secs(30)).await {
            return false;
        }
        if let Some(node) = self.nodes.get(&id) {
            lock(&node.kernel).create(self.table.clone(), self.legs.clone());
        }
        true
    }

    /// Some live node proposes the eviction of `id` (the liveness layer's
    /// job, done by hand here).
    pub async fn evict(&self, id: u64) -> bool {
        note(&format!("n{id} EVICT proposed by hand"));
        let Some(n) = self.nodes.values().find(|n| n.id != id) else { return false };
        let p = Proposal { commands: vec![regions::Command::NodeEvicted { node: Rn(id) }] };
        n.replica.propose(p, Instant::now() + Duration::from_secs(10)).await.is_ok()
    }

    /// A recovery under way, as (node, region), in some node's replica.
    pub fn recovering(&self) -> Option<(u64, u64)> {
        self.nodes.values().find_map(|n| {
            n.replica.state.read(|m| {
                m.log(&self.table.uuid).and_then(|l| l.assignments().iter().next().map(|(i, r)| (i.node.0, r.0)))
            })
        })
    }

    /// A node holding resync claims (in some node's replica), and how
    /// many.
    pub fn claiming(&self) -> Option<(u64, usize)> {
        self.nodes.values().find_map(|n| {
            n.replica.state.read(|m| {
                let (i, rs) = m.log(&self.table.uuid)?.claims().iter().next()?;
                Some((i.node.0, rs.len()))
            })
        })
    }

    /// How many reads node `id`'s replica answered under its leader lease.
    pub fn lease_reads(&self, id: u64) -> u64 {
        self.nodes.get(&id).map_or(0, |n| n.replica.lease_reads())
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
        note(line);
    }

    /// Waits until no node is fenced without a reboot (they rejoin by
    /// themselves once they reach the cluster), up to `limit`.
    pub async fn wait_unfenced(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if !self.nodes.values().any(|n| n.gate.is_closed() && !n.down.load(Ordering::SeqCst)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// The node that leads, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes.values().find(|n| n.replica.metrics().borrow().state.is_leader()).map(|n| n.id)
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
        self.nodes
            .values()
            .find(|n| n.replica.metrics().borrow().state.is_leader())
            .and_then(|n| {
                n.replica.state.read(|m| {
                    m.log(&self.table.uuid)
                        .map(|l| (0..l.region_count()).filter(|&r| !l.in_sync(wire::Region(r))).collect())
                })
            })
            .unwrap_or_default()
    }

    /// The out-of-sync regions, in some live node's replica.
    pub fn out_of_sync(&self) -> BTreeSet<u64> {
        self.read_log(|l| (0..l.region_count()).filter(|&r| !l.in_sync(wire::Region(r))).collect())
    }

    /// What node `id`'s daemon recorded on its local disk about its
    /// kernel's tables.
    pub fn journaled(&self, id: u64) -> OwnMarks {
        let Some(n) = self.nodes.get(&id) else { return OwnMarks::new() };
        OwnMarksStore::read(&mut n.journal.clone(), n.incarnation).unwrap_or_default()
    }

    fn read_log<T: Default>(&self, f: impl Fn(&regions::Log) -> T) -> T {
        self.nodes
            .values()
            .find(|n| !n.down.load(Ordering::SeqCst) && !n.frozen.load(Ordering::SeqCst) && n.daemon.is_some())
            .and_then(|n| n.replica.state.read(|m| m.log(&self.table.uuid).map(&f)))
            .unwrap_or_default()
    }

    /// The events of `node` (fences, evictions, rejoins, thaws), in order.
    pub fn events_of(&self, node: u64) -> Vec<LiveEvent> {
        lock(&self.events).iter().filter(|e| e.node() == node).cloned().collect()
    }

    /// Whether node `id`'s kernel has a write in flight.
    pub fn writing(&self, id: u64) -> bool {
        !self.inflight_regions(id).is_empty()
    }

    /// Whether node `id`'s kernel waits for an answer to a FLUSH or a MARK.
    pub fn marking(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| lock(&n.kernel).awaits_mark(n.mirror))
    }

    /// Waits until every kernel is idle, then asks `dmsetup status`
    /// everywhere and checks: every node's status shows all regions in
    /// sync, the legs are identical, the replicas hold the same state, no
    /// kernel saw a violation, no replica broke an invariant, and the watch
    /// saw nothing wrong.
    pub async fn verify(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        // Settled: every kernel idle, every replica at the same state, and
        // no kernel still to be kicked after an eviction (a kick reaches a
        // follower's kernel only when it applies the entry). (Replicas are
        // compared by state, not applied index: lease renewals commit all
        // the time and change nothing.)
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
        note(&format!("SETTLED\n{}", self.read_log(|l| l.describe())));
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
        problems.extend(lock(&self.violations).iter().map(|v| format!("invariant violated {v}")));
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

    /// What went wrong so far that the end state cannot show: the watch's
    /// findings and invariant violations (empty if nothing).
    pub fn problems_so_far(&self) -> Vec<String> {
        let mut p = lock(&self.watch.problems).clone();
        p.extend(lock(&self.violations).iter().map(|v| format!("invariant violated {v}")));
        p
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.remove(id).await;
        }
    }
}
