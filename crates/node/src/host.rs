//! One host's pipeline: everything between a kernel transport and the
//! replicated region machine, in the manner of mini-redis's `server::run`.
//! The daemon, the Raft simulation, the multi-process tests and the demo
//! all run this code; only the transport, the Raft network and the fence
//! action differ.
//!
//! ```text
//!            ┌──────────── Host::run ─────────────────────────────────────┐
//! kernel ──▶ │ recv ─▶ decode ─▶ Router (lanes, proposer) ─▶ replica       │
//!            │                      │ before-reply effects     │ applied  │
//!            │                      ▼                          ▼ entries  │
//! kernel ◀── │ try_send ◀─ gate? ◀─ writable ◀─ send queue    Effects     │
//!            │ liveness: renew, fence, evict, rejoin; disk writer         │
//!            └────────────────────────────────────────────────────────────┘
//! ```
//!
//! What [`Host::run`] does, in order:
//!
//! 1. **Join** before anything is answered: `NodeJoined`, or, when the
//!    local journal says the kernel already has tables (a daemon restarted
//!    under a live kernel), the whole rejoin entry: tables, resumes,
//!    re-marks of every region the kernel may hold dirty, and the notice
//!    that its cached hints may be stale ([`OwnMarks::rejoin`]).
//! 2. **Serve**: one receive loop, the router's lanes, and one send loop.
//!    The send loop checks the gate (not fenced, lease holding)
//!    immediately before each send system call, after its last wait: a
//!    process stopped while a reply waits in the queue sends nothing once
//!    it runs again past its lease. A request the router answers in the
//!    receive loop itself (its table's lane idle, the answer local: see
//!    [`Router::handle`]) is sent from there at once, with the same check
//!    just before the system call.
//! 3. **Liveness**: renewals, the self-fence, evictions on the leader and
//!    pre-vote elections ([`crate::live`]). When the lease runs out the gate
//!    closes and the [`Fence`] action runs. After a fence that stopped the
//!    node's writes the node rejoins once it reaches the cluster and then
//!    answers again; after a fence that failed it answers nothing more
//!    until an operator restarts it ([`Standing::FenceFailed`]); after a
//!    reset nothing runs.
//! 4. **Effects** of applied entries ([`crate::effects`]), and the
//!    `clustered-disk` writer.
//! 5. **Stop**: on `shutdown`, leadership is handed over and
//!    [`Exit::Stopped`] returned. If the kernel transport fails instead,
//!    renewals stop, the gate closes, the fence runs, and
//!    [`Exit::TransportFailed`] tells the daemon to exit non-zero: a
//!    daemon that cannot hear its kernel must not go on renewing a lease
//!    for a kernel whose mirrors all hang.
//!
//! Every task the host starts ends when `run` returns or its future is
//! dropped (a simulated `kill -9`).

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use regions::{Command, KernelOp, NodeId};
use replication::{AppliedEffects, LeaderLink, Proposal, Replica};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::Uuid;

use crate::effects::Effects;
use crate::gate::{Gate, Standing};
use crate::live::{LiveConfig, LiveHooks, LiveTask};
use crate::metrics::Metrics;
use crate::own_marks::{OwnMarks, OwnMarksStore};
use crate::pipeline::{self, Incoming};
use crate::router::{ReplyTo, Router};
use crate::transport::Transport;

/// How a host runs.
#[derive(Clone, Copy, Debug)]
pub struct HostConfig {
    /// The kernel's boot identity (a reboot changes it).
    pub incarnation: u64,
    /// This run of the host: a value no earlier run of the node used (the
    /// daemon draws it at random when it starts). Its joins' sessions are
    /// derived from it ([`session`]).
    pub run: u64,
    /// The liveness task's timings and switches.
    pub live: LiveConfig,
    /// The origin of the node's clock for the liveness task.
    pub clock_start: Instant,
    /// How long a new `clustered-disk` writer waits before its first write
    /// (a write the previous writer had in flight lands first).
    pub disk_handover: Duration,
    /// Extra time every log-device write takes: a slow device, for tests
    /// (zero in the daemon).
    pub disk_delay: Duration,
    /// How long a region its kernel no longer writes stays marked
    /// ([`crate::router::CLEAR_AFTER`] by default).
    pub clear_after: Duration,
}

/// What a fence action did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceOutcome {
    /// The node's writes stopped. `undo` is handed back to
    /// [`Fence::after_rejoin`] once the node has rejoined (the mirrors a
    /// suspend suspended).
    Stopped {
        /// What to undo after the rejoin.
        undo: Vec<String>,
    },
    /// The machine is being reset: nothing more happens here.
    Resetting,
    /// The action failed: the node's writes may go on. The node answers
    /// nothing more until an operator acts.
    Failed(String),
}

/// The fence action and the events around it, supplied by whoever runs
/// the host (the daemon's configured action, the simulation's kernel).
pub trait Fence: Send + Sync + 'static {
    /// Runs the fence action on this node's mirrors of `logs` (blocking is
    /// fine: nothing else of the node should run meanwhile).
    fn fence(&self, logs: &[Uuid]) -> FenceOutcome;
    /// After a rejoin, undoes what the fence left that the kernel must not
    /// keep (resumes suspended mirrors).
    fn after_rejoin(&self, undo: Vec<String>);
    /// Whether the node is stopped (the simulation freezes whole nodes):
    /// the liveness task does nothing meanwhile, as a stopped process.
    fn frozen(&self) -> bool {
        false
    }
    /// The node rejoined and answers again.
    fn rejoined(&self) {}
    /// This node, as leader, evicted `node`.
    fn evicted(&self, _node: NodeId) {}
    /// A line for debugging.
    fn trace(&self, _line: String) {}
}

/// Why [`Host::run`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop; leadership was handed over if this node led.
    Stopped,
    /// The kernel transport failed: the node fenced. The daemon exits
    /// non-zero so that its supervisor restarts it.
    TransportFailed(String),
}

/// One host: a replica, a kernel transport and what runs between them.
pub struct Host<T: Transport, L: LeaderLink> {
    replica: Arc<Replica<L>>,
    transport: Arc<T>,
    applied: mpsc::UnboundedReceiver<AppliedEffects>,
    own: OwnMarksStore,
    fence: Arc<dyn Fence>,
    config: HostConfig,
    gate: Gate,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `fut` as a task that ends when `scope` is cancelled.
fn spawn_in<F>(scope: &CancellationToken, fut: F) -> tokio::task::JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(scope.clone().run_until_cancelled_owned(fut))
}

impl<T: Transport, L: LeaderLink> Host<T, L> {
    /// A host for `replica` (whose applied entries' effects arrive on
    /// `applied`) and the kernel behind `transport`; `own` is what the
    /// kernel holds, from the local journal.
    pub fn new(
        replica: Arc<Replica<L>>,
        transport: Arc<T>,
        applied: mpsc::UnboundedReceiver<AppliedEffects>,
        own: OwnMarksStore,
        fence: Arc<dyn Fence>,
        config: HostConfig,
        metrics: Arc<Metrics>,
    ) -> Host<T, L> {
        let gate = Gate::new();
        let t = config.live.timing;
        gate.set_quorum_bound(
            Duration::from_millis(t.renew_every_ms + t.election_max_ms),
            Duration::from_millis(t.fence_after_ms),
        );
        Host { replica, transport, applied, own, fence, config, gate, metrics }
    }

    /// The gate of this host's answers (for the admin API and metrics).
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }

    /// Runs the host until `shutdown` completes or the transport fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Exit {
        let Host { replica, transport, mut applied, own, fence, config, gate, metrics } = self;
        let scope = CancellationToken::new();
        let _stop_all = scope.clone().drop_guard();
        let me = replica.id;
        tokio::pin!(shutdown);

        // 1. Join, with what the kernel kept if the daemon restarted.
        let elections = config.live.prevote.then(|| {
            spawn_in(&scope, crate::live::prevote_elections(replica.clone(), config.live.seed ^ replica.id.0))
        });
        let first_session = session(config.run, gate.epoch());
        let (first, what) = if own.marks().is_empty() {
            (vec![Command::NodeJoined { node: me, incarnation: config.incarnation, session: first_session }], "join")
        } else {
            tracing::warn!(tables = own.marks().uuids().len(), "the kernel kept its tables: rejoining with them");
            (rejoin_commands(own.marks(), me, config.incarnation, first_session), "rejoin")
        };
        tokio::select! {
            () = commit_until_accepted(&replica, first, what) => {}
            () = &mut shutdown => {
                tracing::info!("stopping before the join");
                return Exit::Stopped;
            }
        }
        if let Some(e) = elections {
            e.abort();
        }
        tracing::info!(id = replica.id.0, "joined");

        // 2. The parts that run from now on.
        let effects = Effects::new(replica.clone(), transport.clone(), metrics.clone());
        let router = Router::new(
            replica.clone(),
            gate.clone(),
            own,
            metrics.clone(),
            effects.clone(),
            scope.clone(),
            config.clear_after,
            config.run,
        );
        spawn_in(&scope, {
            let effects = effects.clone();
            async move {
                while let Some(entry) = applied.recv().await {
                    effects.after_apply(&entry.effects).await;
                }
            }
        });
        spawn_in(&scope, watch_leader(replica.clone(), metrics.clone()));
        let mut writer = {
            let router = router.clone();
            crate::disk_log::DiskWriter::new(replica.clone(), gate.clone(), config.disk_handover, move |u| {
                router.disk_device(u)
            })
        };
        writer.slow_device = config.disk_delay;
        spawn_in(&scope, writer.run());
        let live = spawn_in(
            &scope,
            liveness(replica.clone(), router.clone(), effects, fence.clone(), gate.clone(), metrics.clone(), config),
        );
        let (replies, outbox) = mpsc::unbounded_channel::<(Vec<u8>, T::Peer)>();
        spawn_in(&scope, send_loop(transport.clone(), outbox, gate.clone(), metrics.clone()));

        // 3. Serve until stopped or the transport fails.
        let failed = tokio::select! {
            e = receive_loop(transport.clone(), router.clone(), replies, gate.clone(), metrics.clone()) => e,
            () = &mut shutdown => {
                tracing::info!("stopping");
                live.abort();
                handoff(&replica).await;
                return Exit::Stopped;
            }
        };
        if crate::breaks::off("no-transport-watch") {
            // The old behaviour, for the simulation to show it fails: the
            // node renews on while nothing answers its kernel.
            shutdown.await;
            return Exit::Stopped;
        }
        let why = failed.to_string();
        tracing::error!(error = %why, "the kernel transport failed: no more renewals; fencing and stopping");
        live.abort();
        gate.lease().end();
        gate.close(Standing::TransportFailed(why.clone()));
        metrics.fences.inc();
        let logs = router.own_marks().uuids();
        match fence.fence(&logs) {
            FenceOutcome::Failed(e) => {
                tracing::error!(error = %e, "the fence action failed; stop this host's writes by hand");
                gate.close(Standing::FenceFailed(e));
            }
            outcome => tracing::error!(?outcome, "fenced"),
        }
        Exit::TransportFailed(why)
    }
}

/// Receives datagrams and hands them to the router until receiving fails
/// (interrupted calls aside); returns the error.
async fn receive_loop<T: Transport, L: LeaderLink>(
    transport: Arc<T>,
    router: Arc<Router<L>>,
    replies: mpsc::UnboundedSender<(Vec<u8>, T::Peer)>,
    gate: Gate,
    metrics: Arc<Metrics>,
) -> io::Error {
    // A kernel that sends garbage sends it with every request: one line a
    // minute (the count is in dmlogd_malformed_datagrams_total).
    let malformed = crate::quiet::Quiet::new(Duration::from_secs(60));
    loop {
        let (datagram, peer) = match transport.recv().await {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return e,
        };
        match pipeline::decode(&datagram) {
            Incoming::Request(msg) => {
                let later = || -> ReplyTo {
                    let (replies, peer) = (replies.clone(), peer.clone());
                    Box::new(move |bytes| drop(replies.send((bytes, peer))))
                };
                if let Some(bytes) = router.handle(msg, later) {
                    send_now(&*transport, bytes, peer, &gate, &replies, &metrics);
                }
            }
            Incoming::Malformed { reply, why } => {
                metrics.malformed.inc();
                if let Some(n) = malformed.hit() {
                    tracing::warn!(error = %why, malformed = n, "answered a malformed request with EINVAL");
                }
                let _ = replies.send((reply, peer));
            }
            Incoming::Dropped => {
                metrics.malformed.inc();
                tracing::debug!(len = datagram.len(), "dropped a datagram that does not frame");
            }
        }
    }
}

/// Sends a reply the router answered in the receive task as [`send_loop`]
/// does, without waiting: if the transport is writable now, and the gate
/// open at the moment of the send system call. A reply that would have to
/// wait joins the send queue instead, whose loop waits for it.
fn send_now<T: Transport>(
    transport: &T,
    bytes: Vec<u8>,
    peer: T::Peer,
    gate: &Gate,
    queue: &mpsc::UnboundedSender<(Vec<u8>, T::Peer)>,
    metrics: &Metrics,
) {
    let writable = std::pin::pin!(transport.writable());
    match writable.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(Ok(())) => {}
        std::task::Poll::Ready(Err(e)) => {
            tracing::warn!(error = %e, "could not send a reply; the kernel re-sends");
            return;
        }
        std::task::Poll::Pending => {
            let _ = queue.send((bytes, peer));
            return;
        }
    }
    if !send_if_open(transport, &bytes, &peer, gate, metrics) {
        let _ = queue.send((bytes, peer));
    }
}

/// The send itself, for both senders: the gate is checked at this moment,
/// with nothing between the check and the system call. `false` if the
/// socket would block (try again once it is writable); a reply withheld
/// or failed counts as done (the kernel re-sends after its timeout; nothing
/// is lost).
fn send_if_open<T: Transport>(transport: &T, bytes: &[u8], peer: &T::Peer, gate: &Gate, metrics: &Metrics) -> bool {
    if !gate.open() && !crate::breaks::off("no-send-gate") {
        metrics.withheld.inc();
        return true;
    }
    match transport.try_send(bytes, peer) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not send a reply");
            true
        }
    }
}

/// Sends the replies, each only if the gate is open at the moment of its
/// send system call: the check follows the last wait, with nothing in
/// between that could stop the task.
async fn send_loop<T: Transport>(
    transport: Arc<T>,
    mut outbox: mpsc::UnboundedReceiver<(Vec<u8>, T::Peer)>,
    gate: Gate,
    metrics: Arc<Metrics>,
) {
    while let Some((bytes, peer)) = outbox.recv().await {
        loop {
            if let Err(e) = transport.writable().await {
                tracing::warn!(error = %e, "could not send a reply; the kernel re-sends");
                break;
            }
            if send_if_open(&*transport, &bytes, &peer, &gate, &metrics) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The liveness task, and after each fence what follows it: a rejoin, or
/// nothing ever again.
async fn liveness<L: LeaderLink>(
    replica: Arc<Replica<L>>,
    router: Arc<Router<L>>,
    effects: Arc<Effects<L>>,
    fence: Arc<dyn Fence>,
    gate: Gate,
    metrics: Arc<Metrics>,
    config: HostConfig,
) {
    let hooks = Arc::new(Hooks {
        fence: fence.clone(),
        gate: gate.clone(),
        router: router.clone(),
        metrics,
        outcome: Mutex::new(None),
    });
    loop {
        // The session of the node's last join: it renews that one.
        let joined_as = session(config.run, gate.epoch());
        let task = LiveTask::new(replica.clone(), config.incarnation, joined_as, config.live, config.clock_start)
            .with_lease(gate.lease().clone());
        effects.set_renewals(task.renewals());
        task.run(hooks.clone()).await;
        let outcome = lock(&hooks.outcome).take();
        let undo = match outcome {
            Some(FenceOutcome::Stopped { undo }) => undo,
            Some(FenceOutcome::Failed(_)) if crate::breaks::off("no-failed-fence-hold") => Vec::new(),
            // A reset, or a failed fence: nothing more from this node.
            _ => return std::future::pending().await,
        };
        // A new session: whatever the node made before its fence and is
        // still on its way to the leader is refused once this commits.
        let commands =
            rejoin_commands(&router.own_marks(), replica.id, config.incarnation, session(config.run, gate.epoch()));
        commit_until_accepted(&replica, commands, "rejoin").await;
        // The rejoin committed through a quorum just now: a lease starts,
        // as at a join (the next task keeps it).
        gate.lease().grant(Duration::from_secs_f64(config.live.timing.fence_after_ms as f64 / 1e3 / config.live.rate));
        if !gate.reopen() {
            return std::future::pending().await;
        }
        tracing::warn!("rejoined: answering the kernel again");
        fence.rejoined();
        fence.after_rejoin(undo);
    }
}

/// The liveness task's view of the host.
struct Hooks<L: LeaderLink> {
    fence: Arc<dyn Fence>,
    gate: Gate,
    router: Arc<Router<L>>,
    metrics: Arc<Metrics>,
    outcome: Mutex<Option<FenceOutcome>>,
}

impl<L: LeaderLink> LiveHooks for Hooks<L> {
    fn fence(&self) {
        self.gate.close(Standing::Fenced);
        self.metrics.fences.inc();
        tracing::error!("lease lost: fenced; no more answers to the kernel");
        let outcome = self.fence.fence(&self.router.own_marks().uuids());
        match &outcome {
            FenceOutcome::Stopped { undo } => tracing::error!(?undo, "fence action done"),
            FenceOutcome::Resetting => tracing::error!("fence action: resetting the machine"),
            FenceOutcome::Failed(e) => {
                tracing::error!(error = %e, "fence action failed: this node answers nothing until it is restarted; stop its I/O by hand");
                self.gate.close(Standing::FenceFailed(e.clone()));
            }
        }
        *lock(&self.outcome) = Some(outcome);
    }

    fn frozen(&self) -> bool {
        self.fence.frozen()
    }

    fn evicted(&self, node: NodeId) {
        self.metrics.evictions.inc();
        tracing::warn!(node = node.0, "evicted a node whose lease ran out");
        self.fence.evicted(node);
    }

    fn trace(&self, line: String) {
        self.fence.trace(line);
    }
}

/// A fresh host run for [`HostConfig::run`], drawn from the operating
/// system's randomness.
pub fn new_run() -> u64 {
    rand08::random()
}

/// The session of a join made by host run `run` in gate epoch `epoch`
/// (see [`regions::Command::NodeJoined`]): each fence closes the gate and
/// moves the epoch, so each rejoin opens a new session, and a command is
/// stamped with the session of the epoch its lane's knowledge belongs to.
/// Runs differ by far more than any run's count of fences, so no two joins
/// of a node share a session.
pub fn session(run: u64, epoch: u64) -> u64 {
    run.wrapping_add(epoch)
}

/// The entry that brings this node back with what its kernel holds: its
/// tables, their resumes, re-marks of what the kernel may hold dirty and
/// the stale-hints notice (minus what the simulation switched off).
fn rejoin_commands(own: &OwnMarks, me: NodeId, incarnation: u64, session: u64) -> Vec<Command> {
    let mut commands = own.rejoin(me, incarnation, session);
    if crate::breaks::off("no-remark") {
        commands.retain(|c| !matches!(c, Command::Kernel { op: KernelOp::Remark(_), .. }));
    }
    if crate::breaks::off("no-stale-hints") {
        commands.retain(|c| !matches!(c, Command::StaleHints { .. }));
    }
    commands
}

/// Commits `commands` as one entry, retrying until it commits with no
/// refusal (a refusal is logged; the node stays out meanwhile).
async fn commit_until_accepted<L: LeaderLink>(replica: &Replica<L>, commands: Vec<Command>, what: &str) {
    let marks: usize = commands
        .iter()
        .map(|c| match c {
            Command::Kernel { op: KernelOp::Remark(marks), .. } => marks.len(),
            _ => 0,
        })
        .sum();
    let p = Proposal { commands };
    loop {
        match replica.propose(p.clone(), Instant::now() + Duration::from_secs(5)).await {
            Ok(outcomes) => {
                let refused: Vec<String> = outcomes.0.iter().filter_map(|o| o.refusal.clone()).collect();
                if refused.is_empty() {
                    if what == "rejoin" {
                        tracing::warn!(regions = marks, "rejoined: tables registered and dirty regions marked again");
                    }
                    return;
                }
                tracing::error!(?refused, "the {what} was refused; trying again");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the cluster to {what}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Keeps the leader gauges of the metrics current.
async fn watch_leader<L: LeaderLink>(replica: Arc<Replica<L>>, metrics: Arc<Metrics>) {
    let mut watch = replica.metrics();
    loop {
        let leader = watch.borrow_and_update().current_leader;
        metrics.saw_leader(leader);
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// A leader that stops hands leadership to another voter first, so the
/// cluster does not wait an election timeout for a new one.
async fn handoff<L: LeaderLink>(replica: &Replica<L>) {
    if !replica.metrics().borrow().state.is_leader() {
        return;
    }
    let Some(to) = replica.members().into_iter().find(|m| m.voter && m.id != replica.id).map(|m| m.id) else {
        return;
    };
    match replica.transfer_leader(to, Instant::now() + Duration::from_secs(10)).await {
        Ok(leader) => tracing::info!(leader = leader.0, "leadership handed over"),
        Err(e) => tracing::warn!(error = %e, "could not hand leadership over; the others will elect"),
    }
}
