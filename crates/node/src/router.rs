//! The request router: decoded kernel requests to replicated commands and
//! reads, and their answers back to the host's send queue.
//!
//! * **Order.** Each log table (uuid, local id) has its own lane, a task
//!   that handles that table's requests one at a time in arrival order, so
//!   a CLEAR is applied before the FLUSH that follows it (I4). Different
//!   tables run concurrently. While a lane is idle, a request it would
//!   answer locally at once is answered by the receive task itself, in
//!   the same order ([`Router::handle`]): no task switch for a steady
//!   writer's requests.
//! * **Batching.** Lanes hand their commands to one proposer, which puts
//!   everything queued at that moment into one Raft entry (one
//!   [`replication::Proposal`]), so concurrent logs share a commit.
//! * **Empty flushes.** A FLUSH without marks of a `clustered-core` log
//!   is answered without a Raft round: the lane committed every MARK and
//!   CLEAR before it answered them, so there is nothing left to make
//!   durable ([`regions::Machine::empty_flush_is_noop`]). A write then
//!   costs two commits (its MARK and its CLEAR), not four.
//! * **No quorum.** A command or read that cannot complete is retried until
//!   it does; the kernel gets no error that would fail its mirror, and
//!   re-sends after 15 s, which queue behind the original in the same lane
//!   and are answered again (every command is idempotent).
//! * **Closed gate.** A lane whose node is fenced, or whose lease ran out,
//!   acknowledges nothing, nor an answer computed across a fence
//!   ([`crate::gate::Gate::epoch`]); the host checks the gate again at the
//!   send itself (see [`crate::host`]).
//! * **Effects before the reply.** An effect that must finish before the
//!   answer ([`regions::Effect::before_reply`]) is carried out by the lane
//!   ([`crate::effects`]); a `clustered-disk` FLUSH is answered only once
//!   its clean bits are durable on the device.
//! * **What the kernel holds.** Every MARK is recorded in the node's own
//!   journal when it arrives, and every acknowledged change before its
//!   answer leaves ([`crate::own_marks`]): a restarted daemon and a rejoin
//!   know what the kernel may write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use regions::{Command, Instance, KernelOp, NodeId};
use replication::{LeaderLink, Outcome, Proposal, ReadRequest, Replica, ReplicaError};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::{Errno, Luid, Message, Region, Uuid};

use crate::effects::Effects;
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::own_marks::{OwnMarks, OwnMarksStore};
use crate::pipeline::{self, Routed};

/// Where a reply goes: the host's send queue for the sender of the request.
pub type ReplyTo = Box<dyn FnOnce(Vec<u8>) + Send>;

/// How long one attempt may take before it is tried again.
const ATTEMPT: Duration = Duration::from_secs(5);
/// Most commands in one Raft entry.
const MAX_BATCH: usize = 256;

struct Job {
    msg: Message,
    reply: ReplyTo,
    arrived: Instant,
}

type Pending = (Command, oneshot::Sender<Outcome>, u64);

/// What [`Router::local_now`] makes of a request.
enum Local {
    /// Answered from this node alone.
    Answer(Result<wire::Answer, Errno>),
    /// Answered from this node alone once this table's own commands are
    /// applied here ([`Router::local`] waits for that).
    Wait,
    /// Takes the replicated path.
    Replicated,
}

/// A table's lane as the router sees it: its queue, and what it shares with
/// the receive task, which answers a request itself when the lane is idle
/// and the answer is local ([`Router::handle`]).
struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    shared: Arc<LaneShared>,
}

/// What a lane shares with the receive task.
struct LaneShared {
    /// The table's knowledge of its marks; the lane locks it for each job,
    /// the receive task only when the lane is idle.
    state: tokio::sync::Mutex<LaneState>,
    /// Jobs sent to the lane and not finished.
    queued: AtomicUsize,
    /// Wakes the lane to set its timer again (the receive task deferred a
    /// CLEAR that falls due before the lane's timer).
    wake: Notify,
}

struct LaneState {
    held: Held,
    /// When the lane's timer fires next (its earliest due CLEARs).
    armed: Option<Instant>,
}

/// The router of one node.
pub struct Router<L: LeaderLink> {
    replica: Arc<Replica<L>>,
    node: NodeId,
    gate: Gate,
    own: Mutex<OwnMarksStore>,
    lanes: Mutex<HashMap<(Uuid, Luid), Lane>>,
    proposer: mpsc::UnboundedSender<Pending>,
    metrics: Arc<Metrics>,
    effects: Arc<Effects<L>>,
    scope: CancellationToken,
    /// This node's kernel reporting failed leg writes: warned of at most
    /// once a minute.
    leg_failures: crate::quiet::Quiet,
    /// How long a region no longer written stays held ([`CLEAR_AFTER`]).
    clear_after: Duration,
    /// The host's run: with a gate epoch, the session a command is made in
    /// ([`crate::host::session`]).
    run: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<L: LeaderLink> Router<L> {
    /// A router for `replica`'s node, answering only while `gate` is open,
    /// recording what its kernel holds in `own`, in host run `run`. Its
    /// tasks end when `scope` is cancelled. Must be called within a tokio
    /// runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        replica: Arc<Replica<L>>,
        gate: Gate,
        own: OwnMarksStore,
        metrics: Arc<Metrics>,
        effects: Arc<Effects<L>>,
        scope: CancellationToken,
        clear_after: Duration,
        run: u64,
    ) -> Arc<Router<L>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let proposer = propose_loop(replica.clone(), gate.clone(), rx, metrics.clone());
        tokio::spawn(scope.clone().run_until_cancelled_owned(proposer));
        let node = replica.id;
        Arc::new(Router {
            replica,
            node,
            gate,
            own: Mutex::new(own),
            lanes: Mutex::default(),
            proposer: tx,
            metrics,
            effects,
            scope,
            leg_failures: crate::quiet::Quiet::new(Duration::from_secs(60)),
            clear_after,
            run,
        })
    }

    /// What this node's kernel holds, from the requests seen so far.
    pub fn own_marks(&self) -> OwnMarks {
        lock(&self.own).marks().clone()
    }

    /// The log device token of disk log `uuid` as this node's kernel named
    /// it, if it has a table of it.
    pub fn disk_device(&self, uuid: &Uuid) -> Option<String> {
        lock(&self.own).marks().disk_device(uuid)
    }

    /// The device token and region count of table (`uuid`, `luid`) if it is
    /// a `clustered-disk` log: from the table's own constructor, else from
    /// the replicated log.
    fn disk_table(&self, uuid: &Uuid, luid: Luid) -> Option<(String, u64)> {
        let own = lock(&self.own).marks().ctr_args(uuid, luid).and_then(|a| regions::CtrArgs::parse(a).ok());
        let args = own.or_else(|| self.replica.state.read(|m| m.log(uuid).map(|l| l.args().clone())))?;
        match &args.log_type {
            regions::LogType::Disk { device } => Some((device.clone(), args.region_count())),
            regions::LogType::Core => None,
        }
    }

    /// Takes one decoded request. When its table's lane is idle and the
    /// answer needs nothing but the lane's own knowledge (a steady writer's
    /// requests: see [`Held`]), the request is answered here, in the
    /// caller's task, and its reply returned for the caller to send: two
    /// task hops fewer than through the lane and the send queue. Else it
    /// joins its lane's queue, and the reply `reply` makes (only then) is
    /// called at most once later.
    /// Either way the table's requests are handled one at a time in
    /// arrival order: here only when nothing of the table is queued or
    /// under way.
    pub fn handle(self: &Arc<Self>, msg: Message, reply: impl FnOnce() -> ReplyTo) -> Option<Vec<u8>> {
        let arrived = Instant::now();
        let key = (msg.uuid.clone(), msg.luid());
        // The kernel set a region dirty before it sent this MARK: recorded
        // before anything else can happen to it.
        if let Err(e) = lock(&self.own).requested(&msg.uuid, msg.luid(), &msg.request) {
            tracing::error!(error = %e, "could not record a mark in the local journal; not answering (the kernel re-sends)");
            return None;
        }
        let mut lanes = lock(&self.lanes);
        let idle = lanes
            .get(&key)
            .filter(|l| !l.tx.is_closed() && l.shared.queued.load(Ordering::Acquire) == 0)
            .map(|l| l.shared.clone());
        if let Some(shared) = idle
            && !crate::breaks::off("no-inline")
            && let Ok(mut st) = shared.state.try_lock()
        {
            let epoch = self.gate.epoch();
            st.held.forget_if_fenced(epoch);
            let relay = |h: &Held| h.prefetch.as_ref().map(|p| Arc::as_ptr(&p.relay));
            let before = relay(&st.held);
            if let Local::Answer(result) = self.local_now(&mut st.held, &msg) {
                self.metrics.local.inc();
                // A CLEAR deferred here may fall due before the lane's
                // timer, and marks started here in the background are for
                // the lane to wait for (see [`Router::prefetch`]).
                let started = relay(&st.held).is_some_and(|now| before != Some(now));
                if started || st.held.due().is_some_and(|due| st.armed.is_none_or(|armed| due < armed)) {
                    shared.wake.notify_one();
                }
                drop(st);
                drop(lanes);
                return self.settle(&msg, result, epoch, arrived);
            }
        }
        let mut job = Job { msg, reply: reply(), arrived };
        for _ in 0..2 {
            let lane = lanes.entry(key.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let shared = Arc::new(LaneShared {
                    state: tokio::sync::Mutex::new(LaneState {
                        held: Held::new(self.gate.epoch(), self.clear_after),
                        armed: None,
                    }),
                    queued: AtomicUsize::new(0),
                    wake: Notify::new(),
                });
                let task = lane(self.clone(), key.clone(), shared.clone(), rx);
                tokio::spawn(self.scope.clone().run_until_cancelled_owned(task));
                Lane { tx, shared }
            });
            lane.shared.queued.fetch_add(1, Ordering::AcqRel);
            match lane.tx.send(job) {
                Ok(()) => return None,
                // The lane's task is gone: start a new one.
                Err(mpsc::error::SendError(back)) => {
                    lane.shared.queued.fetch_sub(1, Ordering::AcqRel);
                    lanes.remove(&key);
                    job = back;
                }
            }
        }
        None
    }

    /// The last steps of a request answered with `result` by a lane, or
    /// by the receive task, in gate epoch `epoch`: its reply, if it may be
    /// sent. Nothing is acknowledged through a closed gate (the host checks
    /// it again when it sends), nor an answer computed while the node
    /// fenced and rejoined: it may rest on the state before the rejoin (the
    /// 10,000-seed run, seed 1726: a CTR proposed before a fence was
    /// applied after the eviction, refused as from a non-member, and that
    /// refusal reached the kernel after the rejoin and failed its table).
    /// The kernel sends the request again.
    fn settle(
        &self,
        msg: &Message,
        result: Result<wire::Answer, Errno>,
        epoch: u64,
        arrived: Instant,
    ) -> Option<Vec<u8>> {
        if !self.gate.open() || self.gate.epoch() != epoch {
            return None;
        }
        if result.is_ok() {
            if let Err(e) = lock(&self.own).acknowledged(&msg.uuid, msg.luid(), &msg.request) {
                tracing::error!(error = %e, "could not record an answer in the local journal; not answering");
                return None;
            }
            if msg.request == wire::Request::Dtr {
                self.forget_lane(&msg.uuid, msg.luid());
            }
        }
        let bytes = pipeline::reply(msg, result)?;
        self.metrics.answered(msg.request.request_type().name(), arrived.elapsed());
        Some(bytes)
    }

    /// A table was destroyed: its lane ends once its queue is empty.
    fn forget_lane(&self, uuid: &Uuid, luid: Luid) {
        lock(&self.lanes).remove(&(uuid.clone(), luid));
    }

    /// The session a command is made in from knowledge of gate epoch
    /// `epoch`: the replicated state applies it only if the node has not
    /// joined again since (see [`regions::Command::NodeJoined`]).
    fn session(&self, epoch: u64) -> u64 {
        crate::host::session(self.run, epoch)
    }

    /// The command `op` of table instance `instance` of log `uuid`, made
    /// from the lane's knowledge `held`: stamped with the session of its
    /// epoch.
    fn command(&self, held: &Held, uuid: &Uuid, instance: Instance, op: KernelOp) -> Command {
        Command::Kernel { uuid: uuid.clone(), instance, session: self.session(held.epoch), op }
    }

    /// Sends `c`, made from knowledge of gate epoch `epoch` (the lane's
    /// [`Held::epoch`]) and stamped with its session, to the proposer; its
    /// outcome comes on the receiver.
    fn propose(&self, c: Command, epoch: u64) -> Option<oneshot::Receiver<Outcome>> {
        let (tx, rx) = oneshot::channel();
        self.proposer.send((c, tx, epoch)).ok()?;
        Some(rx)
    }

    /// Proposes the CLEARs the lane acknowledged and has not proposed yet
    /// (when their delay ran out and nothing carried them along). The lane
    /// does not wait for their commit: its later commands follow them
    /// through the same proposer, which keeps its order (a batch is
    /// proposed again until it commits before the next one goes), so a
    /// later MARK of the same region always commits after its CLEAR. Their
    /// regions stopped being held when they were taken; a CLEAR touches no
    /// region the lane still holds, so its local answers need not wait for
    /// it either. (Waiting cost a sequential writer one commit per region
    /// it left behind, during which its lane answered nothing.)
    fn commit_clears(&self, uuid: &Uuid, luid: Luid, held: &mut Held) {
        let clears = held.take_clears(Some(Instant::now()));
        if clears.is_empty() {
            return;
        }
        let c = self.command(held, uuid, Instance { node: self.node, luid }, KernelOp::Clear(clears));
        // Its outcome is not needed: if the proposer is gone, the regions
        // stay marked, which costs a resync after a crash and nothing else.
        let _ = self.propose(c, held.epoch);
    }

    /// A request answered from this node alone, without a Raft round,
    /// where that is as good as the replicated answer (see [`Held`]):
    /// `None` when it must take the replicated path. Waits, where the
    /// answer needs it, for this table's own commands to be applied here.
    async fn local(&self, held: &mut Held, msg: &Message) -> Option<Result<wire::Answer, Errno>> {
        loop {
            match self.local_now(held, msg) {
                Local::Answer(result) => return Some(result),
                Local::Replicated => return None,
                Local::Wait => {
                    if matches!(msg.request, wire::Request::MarkRegion(_) | wire::Request::Flush { .. })
                        && let Some(relay) = held.prefetch.as_ref().map(|p| p.relay.clone())
                    {
                        // Taken in by `local_now` once it is there.
                        relay.arrived().await;
                        continue;
                    }
                    if let wire::Request::InSync(r) = &msg.request {
                        self.settle_syncs(held, *r).await;
                    }
                    if !self.caught_up(held).await {
                        return None;
                    }
                }
            }
        }
    }

    /// [`Router::local`] without waiting: [`Local::Wait`] where the answer
    /// needs this table's own commands applied here first, or marks made
    /// ahead of the writer to commit. Changes `held` only when it answers
    /// (besides taking in such marks once committed).
    fn local_now(&self, held: &mut Held, msg: &Message) -> Local {
        use wire::Request as Q;
        let instance = Instance { node: self.node, luid: msg.luid() };
        // A member's known instance of a `clustered-core` log, and regions
        // in range (else the replicated path gives the errno).
        let in_range = |rs: &[Region]| {
            self.replica.state.read(|m| {
                m.empty_flush_is_noop(&msg.uuid, instance)
                    && m.log(&msg.uuid).is_some_and(|l| rs.iter().all(|r| r.0 < l.region_count()))
            })
        };
        held.harvest();
        let answer = match &msg.request {
            Q::Flush { marks } if marks.is_empty() && in_range(&[]) => Ok(wire::Answer::Done),
            Q::MarkRegion(rs) | Q::Flush { marks: rs } if held.holds(rs) && in_range(rs) => {
                held.cancel(rs);
                self.prefetch(held, &msg.uuid, instance, rs);
                held.last_mark = rs.iter().max().copied();
                Ok(wire::Answer::Done)
            }
            // The planted bug: a MARK of a region not held is acknowledged
            // before its commit, which is left to finish in the background.
            Q::MarkRegion(rs) if crate::breaks::off("plant-early-mark-ack") && in_range(rs) => {
                let c = self.command(held, &msg.uuid, instance, KernelOp::Mark(rs.clone()));
                let _ = self.propose(c, held.epoch);
                Ok(wire::Answer::Done)
            }
            // Marks on their way in the background: held once they commit.
            Q::MarkRegion(rs) | Q::Flush { marks: rs } if held.prefetching(rs) && in_range(rs) => return Local::Wait,
            Q::ClearRegion(rs) if in_range(rs) => {
                held.defer(rs, Instant::now());
                Ok(wire::Answer::Done)
            }
            // Resync work from this instance's claims (see [`Held::handed`]).
            Q::GetResyncWork if held.handed.is_none() && in_range(&[]) => {
                if !self.applied_here(held) {
                    return Local::Wait;
                }
                let claimed = self.replica.state.read(|m| m.claimed_work(&msg.uuid, instance, &held.synced));
                let Some(r) = claimed else { return Local::Replicated };
                held.handed = Some(r);
                Ok(wire::Answer::ResyncWork(Some(r)))
            }
            Q::SetRegionSync { region, in_sync: true } if held.handed == Some(*region) && in_range(&[*region]) => {
                let op = KernelOp::SetRegionSync { region: *region, in_sync: true };
                // Its outcome is not awaited here: the lane's later commands
                // follow it through the same proposer, and a later read of
                // the region waits for it (see [`Held::syncing`]).
                let Some(rx) = self.propose(self.command(held, &msg.uuid, instance, op), held.epoch) else {
                    return Local::Replicated;
                };
                held.syncing.push((*region, rx));
                held.handed = None;
                held.synced.insert(*region);
                Ok(wire::Answer::Done)
            }
            // Any count below the region count only shows in the status: the
            // kernel acts on the count only when it reaches the region count
            // (spec §3: it stops asking and raises its in-sync hint), which is
            // asked of the leader. Counted once this table's own last
            // command is applied here (its SET_REGION_SYNCs included), so a
            // kernel that just finished its resync sees it at once.
            Q::GetSyncCount if in_range(&[]) => {
                if !self.applied_here(held) {
                    return Local::Wait;
                }
                let query = regions::Query::GetSyncCount;
                let count = self.replica.state.read(|m| {
                    let count = m.read(&msg.uuid, instance, &query).ok()?;
                    let all = m.log(&msg.uuid)?.region_count();
                    matches!(count, wire::Answer::SyncCount(c) if c < all).then_some(count)
                });
                let Some(count) = count else { return Local::Replicated };
                Ok(count)
            }
            // The IN_SYNC of the region just handed out for resync: the
            // kernel asks it to allocate the region's entry, which it sets
            // to recovering at once and frees after the copy; writes to
            // the region wait in that entry meanwhile, so no other IN_SYNC
            // of it comes, and this answer decides nothing.
            Q::InSync(r) if held.handed == Some(*r) && in_range(&[*r]) => {
                if !self.applied_here(held) {
                    return Local::Wait;
                }
                let query = regions::Query::InSync(*r);
                self.replica.state.read(|m| m.read(&msg.uuid, instance, &query).map_err(|e| e.errno()))
            }
            Q::InSync(r) if held.holds(&[*r]) && in_range(&[*r]) => {
                if held.unsettled(*r) || !self.applied_here(held) {
                    return Local::Wait;
                }
                let query = regions::Query::InSync(*r);
                self.replica.state.read(|m| m.read(&msg.uuid, instance, &query).map_err(|e| e.errno()))
            }
            _ => return Local::Replicated,
        };
        Local::Answer(answer)
    }

    /// Waits for the commits of the SET_REGION_SYNCs of `r` this lane
    /// acknowledged ahead of them (see [`Held::syncing`]).
    async fn settle_syncs(&self, held: &mut Held, r: Region) {
        if !held.unsettled(r) {
            return;
        }
        for (_, rx) in std::mem::take(&mut held.syncing) {
            if let Ok(o) = rx.await {
                held.seen = held.seen.max(o.index);
            }
        }
    }

    /// Whether this node's replica has applied the table's last committed
    /// command (waiting up to [`LOCAL_WAIT`] for it).
    async fn caught_up(&self, held: &Held) -> bool {
        self.applied_here(held) || self.replica.wait_applied(held.seen, LOCAL_WAIT).await
    }

    /// Whether this node's replica has applied the table's last committed
    /// command now.
    fn applied_here(&self, held: &Held) -> bool {
        self.replica.state.last_applied().map_or(0, |l| l.index) >= held.seen
    }

    /// One request, to its answer through Raft. `None` when Raft stopped.
    async fn answer(&self, msg: &Message, held: &mut Held) -> Option<Result<wire::Answer, Errno>> {
        match pipeline::route(self.node, self.session(held.epoch), msg) {
            Routed::Command(mut c) => {
                if let Command::Kernel { uuid, instance, op: KernelOp::Resume { disk }, .. } = &mut c
                    && let Some((token, regions)) = self.disk_table(uuid, instance.luid)
                {
                    let image = tokio::task::spawn_blocking(move || crate::disk_log::read_image(&token, regions));
                    let image = image.await.ok()?;
                    if let regions::DiskImage::Fresh { reason } = &image {
                        tracing::info!(%uuid, %reason, "the log device holds no log");
                    }
                    *disk = Some(image);
                }
                // A mark cancels its own region's deferred CLEAR, and the
                // other deferred CLEARs go first, in the same order the
                // kernel sent them (a CLEAR committed after a later MARK of
                // its region would drop a mark the kernel writes under).
                let Command::Kernel { uuid, instance, .. } = &c else { return None };
                let (uuid, instance) = (uuid.clone(), *instance);
                let mut marks = marks_of(&c);
                // A sequential writer's next regions are marked with this
                // one (see [`MARK_AHEAD`]).
                let ahead = self.ahead_of(held, &uuid, instance, &marks, MARK_AHEAD);
                held.last_mark = marks.iter().max().copied().or(held.last_mark);
                if !ahead.is_empty()
                    && !crate::breaks::off("plant-ahead-unmarked")
                    && let Command::Kernel { op: KernelOp::Mark(rs) | KernelOp::Flush { marks: rs }, .. } = &mut c
                {
                    rs.extend(ahead.iter().copied());
                }
                let cleared = match &c {
                    Command::Kernel { op: KernelOp::Clear(rs), .. } => Some(rs.clone()),
                    _ => None,
                };
                let late = crate::breaks::off("plant-late-clear");
                if !late {
                    held.cancel(&marks);
                }
                // A mark or a flush carries only the CLEARs that are due: a
                // region written again within `clear_after` stays held.
                // Anything else carries them all, as before it.
                let routine = matches!(
                    &c,
                    Command::Kernel { op: KernelOp::Mark(_) | KernelOp::Flush { .. } | KernelOp::Clear(_), .. }
                );
                let clears = held.take_clears(routine.then(Instant::now));
                let clear =
                    (!clears.is_empty()).then(|| self.command(held, &uuid, instance, KernelOp::Clear(clears.clone())));
                let mut carried = None;
                if let (false, Some(cc)) = (late, clear.clone()) {
                    carried = Some(self.propose(cc, held.epoch)?);
                }
                #[cfg(feature = "canary-drop-marks")]
                let c = canary::drop_marks(c);
                let is_dtr = matches!(c, Command::Kernel { op: KernelOp::Dtr, .. });
                let failed = match &c {
                    Command::Kernel { op: KernelOp::SetRegionSync { region, in_sync: false }, .. } => Some(*region),
                    _ => None,
                };
                // Out of sync from a region the kernel was not handed to
                // copy: a write failed on one of its legs, here.
                if let Some(region) = failed
                    && held.handed != Some(region)
                    && let Some(n) = self.leg_failures.hit()
                {
                    tracing::warn!(
                        uuid = %msg.uuid,
                        region = region.0,
                        failures = n,
                        "this node's kernel failed a write on one leg of the mirror; with handle_errors the write \
                         is held until the mirror is reconfigured (docs/operations.md, \"A failed leg\")"
                    );
                }
                if let Some(rs) = &cleared {
                    held.proposing_clear(rs);
                }
                let rx = self.propose(c, held.epoch)?;
                if let (true, Some(cc)) = (late, clear) {
                    carried = Some(self.propose(cc, held.epoch)?);
                }
                let outcome = rx.await.ok()?;
                // Every command the lane proposed before this one is
                // committed now (one proposer, in order).
                held.synced.clear();
                held.handed = match (&msg.request, &outcome.answer) {
                    (wire::Request::GetResyncWork, Ok(wire::Answer::ResyncWork(r))) => *r,
                    (
                        wire::Request::GetResyncWork
                        | wire::Request::SetRegionSync { .. }
                        | wire::Request::Presuspend
                        | wire::Request::Postsuspend
                        | wire::Request::Resume
                        | wire::Request::Dtr,
                        _,
                    ) => None,
                    _ => held.handed,
                };
                if let Some(carried) = carried
                    && let Ok(o) = carried.await
                {
                    held.cleared(&clears, &o);
                }
                if let Some(why) = &outcome.refusal {
                    tracing::info!(request = ?msg.request, %why, "refused");
                }
                if outcome.answer.is_err() {
                    return Some(outcome.answer);
                }
                marks.extend(ahead.iter().copied());
                held.committed(&marks, &outcome);
                // Marked before the kernel asked: cleared once idle for
                // clear_after, unless the kernel marks them meanwhile.
                held.defer(&ahead, Instant::now());
                // A CLEAR that took this path (the table not known here yet)
                // unmarked its regions all the same.
                if let Some(cleared) = &cleared {
                    held.cleared(cleared, &outcome);
                }
                if is_dtr {
                    *held = Held::new(held.epoch, held.clear_after);
                }
                if let Some(region) = failed
                    && !self.failure_seen(&msg.uuid, region, outcome.index).await
                {
                    return None;
                }
                if let Err(errno) = self.effects.before_reply(&msg.uuid, &outcome.effects).await {
                    tracing::error!(request = ?msg.request, ?errno, "an effect before the reply failed");
                    return Some(Err(errno));
                }
                Some(outcome.answer)
            }
            Routed::Query { uuid, instance, query } => {
                if let regions::Query::InSync(r) | regions::Query::IsRemoteRecovering(r) = &query {
                    self.settle_syncs(held, *r).await;
                }
                let r = ReadRequest { uuid, instance, query };
                loop {
                    match self.replica.read(r.clone(), Instant::now() + ATTEMPT).await {
                        Ok(a) => return Some(a),
                        Err(ReplicaError::Timeout) => tracing::warn!("no quorum for a read; waiting"),
                        Err(ReplicaError::Fatal(e) | ReplicaError::Refused(e)) => {
                            tracing::error!(error = %e, "read not served");
                            return None;
                        }
                    }
                }
            }
        }
    }
}

impl<L: LeaderLink> Router<L> {
    /// The regions to mark ahead of a MARK or FLUSH of `marks`: when its
    /// lowest region follows the table's newest mark (a sequential writer),
    /// those of the next `span` regions past its highest that this table
    /// does not hold and that are in sync on this node's replica, for a
    /// `clustered-core` log.
    ///
    /// Never while the node is fenced (nor after a fence this lane's
    /// knowledge predates): only the lane knows of such marks (the journal
    /// has the kernel's own), and a command made while the node is fenced
    /// may commit before its rejoin, whose re-marks from the journal would
    /// then clear them while the lane counts them held. (A lease that ran
    /// out without a fence is no such case: no rejoin follows it.)
    fn ahead_of(&self, held: &Held, uuid: &Uuid, instance: Instance, marks: &[Region], span: u64) -> Vec<Region> {
        let (Some(lo), Some(hi)) = (marks.iter().min(), marks.iter().max()) else { return Vec::new() };
        if lo.0 == 0 || held.last_mark != Some(Region(lo.0 - 1)) || crate::breaks::off("no-mark-ahead") {
            return Vec::new();
        }
        if self.gate.is_closed() || self.gate.epoch() != held.epoch {
            return Vec::new();
        }
        self.replica.state.read(|m| {
            let Some(count) = m.log(uuid).filter(|_| m.empty_flush_is_noop(uuid, instance)).map(|l| l.region_count())
            else {
                return Vec::new();
            };
            let in_sync =
                |r: Region| matches!(m.read(uuid, instance, &regions::Query::InSync(r)), Ok(wire::Answer::Bool(true)));
            (hi.0 + 1..count.min(hi.0 + 1 + span))
                .map(Region)
                .filter(|r| !held.marked.contains(r) && !marks.contains(r) && in_sync(*r))
                .collect()
        })
    }

    /// After a held MARK (or FLUSH) `rs` of a sequential writer that stepped
    /// to the next region, with fewer than [`MARK_AHEAD`] held regions left
    /// in front of it: those of the next `2 × MARK_AHEAD` regions it does
    /// not hold are proposed now, in the background, so that they are held
    /// by the time the writer gets there instead of costing it a round when
    /// it does (see [`Held::prefetch`]). One such proposal at a time. The
    /// writer keeps at least `MARK_AHEAD` held regions in front of it
    /// while the proposal is on its way, so a writer that crosses fewer
    /// regions than that per commit never waits for one (on loopback a
    /// commit takes ~13 regions of a writer that moves to the next region
    /// every write; in the lab, a 1 MiB writer crosses about as many); a
    /// proposal carries about `MARK_AHEAD` regions, as one of the writer's
    /// own MARKs does.
    fn prefetch(&self, held: &mut Held, uuid: &Uuid, instance: Instance, rs: &[Region]) {
        let Some(hi) = rs.iter().max() else { return };
        if held.prefetch.is_some() || crate::breaks::off("no-prefetch") {
            return;
        }
        let left = (1..=MARK_AHEAD).take_while(|d| held.marked.contains(&Region(hi.0 + d))).count();
        if left as u64 >= MARK_AHEAD {
            return;
        }
        let ahead = self.ahead_of(held, uuid, instance, rs, 2 * MARK_AHEAD);
        if ahead.is_empty() {
            return;
        }
        let c = self.command(held, uuid, instance, KernelOp::Mark(ahead.clone()));
        let Some(rx) = self.propose(c, held.epoch) else { return };
        // A small task passes the outcome on, so that nothing holds the
        // lane meanwhile.
        let relay = Arc::new(Relay::default());
        let to = relay.clone();
        let pass_on = async move {
            let outcome = rx.await.ok();
            *lock(&to.outcome) = Some(outcome);
            to.ready.notify_one();
        };
        tokio::spawn(self.scope.clone().run_until_cancelled_owned(pass_on));
        held.prefetch = Some(Prefetch { regions: ahead, relay });
    }

    /// After a failed leg write of `region` committed at `index`: waits
    /// until every other node that marks the region (and so may answer
    /// IN_SYNC of it from its own replica, see [`Held`]) has said in a
    /// renewal that it applied the failure, or was evicted
    /// ([`regions::Machine::lagging_holders`]). Only then may the kernel
    /// complete the write with its data on one leg. `false` if the gate
    /// closed meanwhile (nothing is answered then).
    async fn failure_seen(&self, uuid: &Uuid, region: Region, index: u64) -> bool {
        let epoch = self.gate.epoch();
        let mut logged = false;
        loop {
            let applied = self.replica.state.last_applied().map_or(0, |l| l.index);
            let lagging = self.replica.state.read(|m| m.lagging_holders(uuid, region, self.node, index));
            if applied >= index && (lagging.is_empty() || crate::breaks::off("no-failure-barrier")) {
                return true;
            }
            if !self.gate.open() || self.gate.epoch() != epoch {
                return false;
            }
            if !logged && !lagging.is_empty() {
                tracing::info!(%uuid, region = region.0, ?lagging, "a failed write waits until the nodes marking its region have applied it");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The regions a MARK or a FLUSH command marks.
fn marks_of(c: &Command) -> Vec<Region> {
    match c {
        Command::Kernel { op: KernelOp::Mark(rs) | KernelOp::Flush { marks: rs }, .. } => rs.clone(),
        _ => Vec::new(),
    }
}

/// How long a local IN_SYNC answer waits for this node's replica to apply
/// its own table's last command before it asks the leader instead.
const LOCAL_WAIT: Duration = Duration::from_millis(500);

/// How long a region this table no longer writes stays held, by default
/// (`clear_after_ms` in the daemon's configuration): an acknowledged CLEAR
/// is committed once its region has been idle this long, unless a command
/// other than a MARK or FLUSH carries it along sooner. A write to the
/// region within that time costs no Raft round; a crash of the node
/// resyncs the regions it wrote within it (the trade md's write-intent
/// bitmap makes with its lazy clearing).
pub const CLEAR_AFTER: Duration = Duration::from_secs(1);

/// How many regions past a sequential writer's newest mark are marked with
/// it: such a writer pays one Raft commit per `MARK_AHEAD` regions instead
/// of one per region. Its lane then keeps `MARK_AHEAD` to `2 × MARK_AHEAD`
/// regions marked in front of it in the background ([`Router::prefetch`]).
/// Regions it does not reach are cleared once idle for `clear_after`; a
/// crash of the node meanwhile resyncs them.
pub const MARK_AHEAD: u64 = 16;

/// What a table's lane knows of its own marks, which lets it answer the
/// requests of a steady writer without a Raft round:
///
/// * A CLEAR is acknowledged at once and committed later (after
///   `clear_after`, or with the table's next command, before it): a
///   region whose CLEAR is late only stays marked a little longer, which
///   is what a lost CLEAR costs anyway (spec §3.4). The journal has the
///   CLEAR, so a daemon restart does not lose it ([`KernelOp::Remark`]).
/// * A region this table marked in a committed entry, and whose CLEAR has
///   not been committed since, is *held*: a MARK of it (and a FLUSH
///   carrying only such marks) is acknowledged at once, cancelling the
///   deferred CLEAR. Its mark is durable in the replicated state already
///   (I1), which is all the FLUSH's answer must guarantee.
/// * IN_SYNC of a held region is answered from this node's replica, once
///   it has applied this table's last committed command: no other node can
///   copy a region this table marks (only the marker may), so it cannot
///   become in sync behind this node's back; what can change behind it is
///   a region going out of sync (an eviction, which keeps answering 1 for
///   it until the survivors resumed, or another node's failed write, whose
///   data its kernel holds back until the mirror is reconfigured).
///
/// All of it is forgotten when the gate closes (the node fenced: after an
/// eviction its marks are gone from the replicated state, and the rejoin
/// states them again from the journal), and it applies to
/// `clustered-core` logs only (a disk log's FLUSH persists the device).
#[derive(Debug, Default)]
struct Held {
    /// The gate epoch this knowledge belongs to.
    epoch: u64,
    /// How long a region no longer written stays held.
    clear_after: Duration,
    /// Regions durably marked by this table.
    marked: BTreeSet<Region>,
    /// CLEARs acknowledged and not proposed yet, each with the time since
    /// which its region has been idle.
    clears: Deferred,
    /// The highest region of this table's newest MARK (or FLUSH with marks).
    last_mark: Option<Region>,
    /// The highest log index of this table's committed commands.
    seen: u64,
    /// The region this table's kernel is copying: the last GET_RESYNC_WORK
    /// answer, until its SET_REGION_SYNC. The kernel copies one region at a
    /// time, so while none is handed out the next GET_RESYNC_WORK is
    /// answered from the regions the table claimed
    /// ([`regions::Machine::claimed_work`]), and a SET_REGION_SYNC(r, 1)
    /// of the handed region is acknowledged at once with its commit
    /// following in order: until it commits, the cluster still counts the
    /// region out of sync and claimed (other writers held off it, readers
    /// kept on the default leg, its copy not counted), which is where a
    /// lost SET_REGION_SYNC leaves it too; the region is then copied again.
    handed: Option<Region>,
    /// Regions whose SET_REGION_SYNC(r, 1) was acknowledged and proposed
    /// since the table's last committed command: not handed out again.
    synced: BTreeSet<Region>,
    /// Those SET_REGION_SYNCs' outcomes to come. The kernel counts such a
    /// region in sync at once: its next write there asks IN_SYNC to
    /// allocate the region's entry, and a read that does not see the
    /// commit yet would answer 0 and have the kernel write the region to
    /// its default leg only, which the commit then declares in sync (the
    /// lab's `failover` run, region 3 left different). Commands need no
    /// wait (they follow through the same proposer); a read of such a
    /// region waits for them.
    syncing: Vec<(Region, oneshot::Receiver<Outcome>)>,
    /// Regions marked ahead of a sequential writer in the background
    /// ([`Router::prefetch`]), and the outcome to come: held once it
    /// commits. A MARK of them meanwhile waits for it.
    prefetch: Option<Prefetch>,
}

/// Marks on their way in the background ([`Held::prefetch`]).
#[derive(Debug)]
struct Prefetch {
    regions: Vec<Region>,
    relay: Arc<Relay>,
}

/// Where the outcome of background marks arrives: set once by the task
/// that waits for it, which then notifies whoever waits (the lane).
#[derive(Debug, Default)]
struct Relay {
    /// `Some(None)`: the proposer dropped the command (made before a
    /// fence), so nothing was marked.
    outcome: Mutex<Option<Option<Outcome>>>,
    ready: Notify,
}

impl Relay {
    /// Returns once the outcome is there (at once if it is already).
    async fn arrived(&self) {
        let notified = self.ready.notified();
        tokio::pin!(notified);
        // Registered before the look, so a notice in between is not missed.
        notified.as_mut().enable();
        if lock(&self.outcome).is_none() {
            notified.await;
        }
    }
}

impl Held {
    fn new(epoch: u64, clear_after: Duration) -> Held {
        Held { epoch, clear_after, ..Held::default() }
    }

    /// Forgets everything if the gate moved to `epoch` since: the node
    /// fenced, and what it knew of its marks may be gone.
    fn forget_if_fenced(&mut self, epoch: u64) {
        if epoch != self.epoch {
            *self = Held::new(epoch, self.clear_after);
        }
    }

    fn holds(&self, rs: &[Region]) -> bool {
        !rs.is_empty()
            && rs.iter().all(|r| {
                self.marked.contains(r) || (crate::breaks::off("plant-unheld-cancel") && self.clears.contains(*r))
            })
    }

    /// Whether every region of `rs` is held or marked in the background
    /// (and not all held).
    fn prefetching(&self, rs: &[Region]) -> bool {
        self.prefetch
            .as_ref()
            .is_some_and(|p| !rs.is_empty() && rs.iter().all(|r| p.regions.contains(r) || self.marked.contains(r)))
    }

    /// Takes in the background marks if they committed meanwhile.
    fn harvest(&mut self) {
        let Some(p) = &self.prefetch else { return };
        let Some(outcome) = lock(&p.relay.outcome).take() else { return };
        let Some(p) = self.prefetch.take() else { return };
        // Dropped by the proposer (made before a fence): not held.
        if let Some(outcome) = outcome {
            self.prefetched(&p.regions, &outcome);
        }
    }

    /// The background marks of `rs` committed with `outcome`: held, and
    /// cleared once idle for `clear_after` unless the kernel marks them.
    fn prefetched(&mut self, rs: &[Region], outcome: &Outcome) {
        self.committed(rs, outcome);
        if outcome.answer.is_ok() {
            self.defer(rs, Instant::now());
        }
    }

    /// Whether a read of `r` must first wait for this table's
    /// SET_REGION_SYNCs of it to commit (see [`Held::syncing`]).
    fn unsettled(&self, r: Region) -> bool {
        self.syncing.iter().any(|(s, _)| *s == r) && !crate::breaks::off("no-sync-read-wait")
    }

    fn cancel(&mut self, rs: &[Region]) {
        for r in rs {
            self.clears.remove(r);
        }
    }

    /// `rs` idle since `now`: cleared once due, unless marked again.
    fn defer(&mut self, rs: &[Region], now: Instant) {
        for r in rs {
            self.clears.insert_if_new(*r, now);
        }
    }

    /// When the lane proposes its due CLEARs: a tenth of `clear_after`
    /// after the oldest falls due, so that the CLEARs of a writer leaving a
    /// region every few milliseconds go in one entry rather than one each
    /// (each is a commit, and the table's next MARK that needs a round waits
    /// behind it in the proposer). A hold lasts at least `clear_after`.
    fn due(&self) -> Option<Instant> {
        self.clears.oldest().map(|t| t + self.clear_after + self.clear_after / 10)
    }

    /// The deferred CLEARs due at `now` (all of them if `None`), to be
    /// proposed now.
    fn take_clears(&mut self, now: Option<Instant>) -> Vec<Region> {
        let clear_after = self.clear_after;
        let clears = self.clears.take_while(|since| now.is_none_or(|now| since + clear_after <= now));
        self.proposing_clear(&clears);
        clears
    }

    /// A CLEAR of `rs` is about to be proposed. From now on it may commit
    /// at any moment, even if its outcome never reaches this lane (the
    /// proposer gone, an answer lost), so its regions are no longer held.
    fn proposing_clear(&mut self, rs: &[Region]) {
        for r in rs {
            self.marked.remove(r);
        }
        // Nor held when background marks made before this CLEAR commit:
        // the CLEAR commits after them (random seed 1013, with that
        // removal switched off: a region re-held from such an outcome
        // while its CLEAR had committed clean, and its MARK answered at
        // once; I1).
        if let Some(p) = &mut self.prefetch
            && !crate::breaks::off("plant-stale-prefetch")
        {
            p.regions.retain(|r| !rs.contains(r));
        }
    }

    /// A CLEAR of `rs` committed with `outcome`.
    fn cleared(&mut self, rs: &[Region], outcome: &Outcome) {
        self.seen = self.seen.max(outcome.index);
        self.proposing_clear(rs);
    }

    /// A command marking `rs` committed with `outcome`.
    fn committed(&mut self, rs: &[Region], outcome: &Outcome) {
        self.seen = self.seen.max(outcome.index);
        if outcome.answer.is_ok() {
            self.marked.extend(rs.iter().copied());
        }
    }
}

/// A table's lane: its requests one at a time, in order, and its deferred
/// CLEARs committed when they are due. While it is idle the receive task
/// may answer the table's requests itself ([`Router::handle`]).
async fn lane<L: LeaderLink>(
    router: Arc<Router<L>>,
    (uuid, luid): (Uuid, Luid),
    shared: Arc<LaneShared>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    loop {
        let (due, relay) = {
            let mut st = shared.state.lock().await;
            st.held.harvest();
            st.armed = st.held.due();
            (st.armed, st.held.prefetch.as_ref().map(|p| p.relay.clone()))
        };
        // The lane's state is not locked while it waits, so the receive
        // task answers the table's local requests meanwhile.
        let woke = wait(&mut rx, &shared.wake, due, relay.as_deref()).await;
        let mut st = shared.state.lock().await;
        let job = match woke {
            // Also when background marks committed (or were dropped): taken
            // in at the top of the loop, and deferred like a CLEAR from then
            // on, so a writer that stopped does not leave them marked.
            Woke::Wake => continue,
            Woke::Timer => {
                // After a fence there is nothing left to clear.
                st.held.forget_if_fenced(router.gate.epoch());
                router.commit_clears(&uuid, luid, &mut st.held);
                continue;
            }
            Woke::Job(None) => break,
            Woke::Job(Some(job)) => job,
        };
        let epoch = router.gate.epoch();
        st.held.forget_if_fenced(epoch);
        let result = match router.local(&mut st.held, &job.msg).await {
            Some(r) => {
                router.metrics.local.inc();
                Some(r)
            }
            None => router.answer(&job.msg, &mut st.held).await,
        };
        if let Some(bytes) = result.and_then(|r| router.settle(&job.msg, r, epoch, job.arrived)) {
            (job.reply)(bytes);
        }
        drop(st);
        shared.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The CLEARs a lane acknowledged and has not proposed yet
/// ([`Held::clears`]): each region with the time since which it has been
/// idle, also ordered by that time, so the earliest is found without a
/// scan (a random writer's table may hold thousands).
#[derive(Debug, Default)]
struct Deferred {
    since: BTreeMap<Region, Instant>,
    by_time: BTreeSet<(Instant, Region)>,
}

impl Deferred {
    fn contains(&self, r: Region) -> bool {
        self.since.contains_key(&r)
    }

    /// Deferred since `now`, unless it already was (it keeps the earlier
    /// time).
    fn insert_if_new(&mut self, r: Region, now: Instant) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.since.entry(r) {
            e.insert(now);
            self.by_time.insert((now, r));
        }
    }

    fn remove(&mut self, r: &Region) {
        if let Some(t) = self.since.remove(r) {
            self.by_time.remove(&(t, *r));
        }
    }

    /// The earliest time a region became idle.
    fn oldest(&self) -> Option<Instant> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Takes the regions idle since a time `due` accepts, oldest first
    /// (`due` must accept every time before one it accepts); returned in
    /// region order.
    fn take_while(&mut self, due: impl Fn(Instant) -> bool) -> Vec<Region> {
        let mut out = Vec::new();
        while let Some(&(t, r)) = self.by_time.first()
            && due(t)
        {
            self.by_time.pop_first();
            self.since.remove(&r);
            out.push(r);
        }
        out.sort_unstable();
        out
    }
}

/// What ended a lane's wait (on the stack for a moment: not boxed).
#[allow(clippy::large_enum_variant)]
enum Woke {
    /// A request, or `None` when the lane's queue is gone.
    Job(Option<Job>),
    /// Look at the state again: set the timer again, take in the outcome
    /// of background marks.
    Wake,
    /// The earliest deferred CLEARs are due.
    Timer,
}

/// A lane's wait for its next request, its timer `due`, a wake, or the
/// outcome of its background marks.
async fn wait(
    rx: &mut mpsc::UnboundedReceiver<Job>,
    wake: &Notify,
    due: Option<Instant>,
    prefetch: Option<&Relay>,
) -> Woke {
    let timer = async {
        match due {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    };
    let prefetched = async {
        match prefetch {
            Some(relay) => relay.arrived().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        j = rx.recv() => Woke::Job(j),
        () = wake.notified() => Woke::Wake,
        () = timer => Woke::Timer,
        () = prefetched => Woke::Wake,
    }
}

/// The proposer: everything queued goes into one entry; a batch whose
/// outcome is unknown (no quorum before the attempt's deadline) is proposed
/// again, which is safe because every command is idempotent.
///
/// A command made before the gate last closed (an older epoch) is dropped
/// instead of proposed, or proposed again: the node fenced since, its
/// eviction removed its marks and its rejoin stated them again from the
/// journal, and nothing computed before that is answered (the kernel sends
/// the request again). Committed after the rejoin, such a command would
/// bring back what the rejoin dropped: the regions a lane marked ahead of
/// its writer, which its lane no longer knows of (it forgot them at the
/// fence) and so would never clear, leaving them marked and out of sync for
/// good, every write to them held (random seed 2018, with CLEARs proposed
/// without waiting). Switched off with `no-stale-drop`.
async fn propose_loop<L: LeaderLink>(
    replica: Arc<Replica<L>>,
    gate: Gate,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    metrics: Arc<Metrics>,
) {
    let keep_stale = crate::breaks::off("no-stale-drop");
    let current = |batch: &mut Vec<Pending>| {
        let epoch = gate.epoch();
        let before = batch.len();
        batch.retain(|(_, _, e)| *e == epoch || keep_stale);
        if batch.len() < before {
            tracing::info!(dropped = before - batch.len(), "dropped commands made before the node last fenced");
        }
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let outcomes = loop {
            current(&mut batch);
            if batch.is_empty() {
                break None;
            }
            let proposal = Proposal { commands: batch.iter().map(|(c, _, _)| c.clone()).collect() };
            match replica.propose(proposal, Instant::now() + ATTEMPT).await {
                Ok(o) => break Some(o),
                Err(ReplicaError::Timeout) => tracing::warn!(commands = batch.len(), "no quorum; proposing again"),
                Err(ReplicaError::Fatal(e)) => {
                    tracing::error!(error = %e, "raft stopped");
                    break None;
                }
                // A command this node may not originate: a bug here, never
                // committed; the kernel's re-send meets the same refusal.
                Err(ReplicaError::Refused(e)) => {
                    tracing::error!(error = %e, "the leader refused a batch");
                    break None;
                }
            }
        };
        let Some(outcomes) = outcomes else { continue };
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.batch_commands.observe(batch.len() as f64);
        for ((_, tx, _), outcome) in batch.into_iter().zip(outcomes.0) {
            let _ = tx.send(outcome);
        }
    }
}

/// The planted bug of the `canary-drop-marks` feature: the marks of a
/// FLUSH or a MARK are dropped on their way into Raft, so the kernel is
/// told its marks are durable when they are not (I1). The simulation must
/// report exactly that (`tests/raft_sim.rs`).
#[cfg(feature = "canary-drop-marks")]
mod canary {
    use regions::{Command, KernelOp};

    pub(super) fn drop_marks(c: Command) -> Command {
        match c {
            Command::Kernel { uuid, instance, session, op: KernelOp::Flush { .. } | KernelOp::Mark(_) } => {
                Command::Kernel { uuid, instance, session, op: KernelOp::Flush { marks: Vec::new() } }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(index: u64) -> Outcome {
        Outcome { answer: Ok(wire::Answer::Done), refusal: None, effects: Vec::new(), index }
    }

    #[test]
    fn a_region_whose_clear_was_proposed_is_not_held_even_if_its_outcome_is_lost() {
        let mut held = Held::new(0, CLEAR_AFTER);
        held.committed(&[Region(3), Region(4)], &done(7));
        assert!(held.holds(&[Region(3)]));
        held.defer(&[Region(3)], Instant::now());
        assert!(held.holds(&[Region(3)]), "a deferred CLEAR is cancelled by a MARK of its region");
        // The CLEAR goes to the proposer and its outcome never comes back:
        // it may have committed, so a MARK of region 3 must take a Raft round.
        let proposed = held.take_clears(None);
        assert_eq!(proposed, vec![Region(3)]);
        assert!(!held.holds(&[Region(3)]));
        assert!(held.holds(&[Region(4)]));
    }

    #[test]
    fn deferred_clears_fall_due_by_the_time_their_region_went_idle() {
        let t0 = Instant::now();
        let after = Duration::from_secs(5);
        let mut held = Held::new(0, after);
        held.defer(&[Region(9), Region(2)], t0);
        held.defer(&[Region(5)], t0 + Duration::from_secs(2));
        // Deferred again later: it keeps its first time.
        held.defer(&[Region(9)], t0 + Duration::from_secs(3));
        assert_eq!(held.due(), Some(t0 + after + after / 10));
        assert!(held.take_clears(Some(t0 + Duration::from_secs(4))).is_empty());
        assert_eq!(held.take_clears(Some(t0 + after)), vec![Region(2), Region(9)]);
        assert_eq!(held.due(), Some(t0 + Duration::from_secs(2) + after + after / 10));
        // A MARK of region 5 cancels its CLEAR: nothing is left.
        held.cancel(&[Region(5)]);
        assert_eq!(held.due(), None);
        assert!(held.take_clears(None).is_empty());
    }
}
