//! The request router: kernel datagrams in, replies out.
//!
//! * **Order.** Each log table (uuid, local id) has its own lane, a task
//!   that handles that table's requests one at a time in arrival order, so
//!   a CLEAR is applied before the FLUSH that follows it (I4). Different
//!   tables run concurrently.
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
//! * **Fenced.** A fenced node answers nothing (see `docs/fencing.md`),
//!   nor does a node whose lease has run out by its own clock before its
//!   liveness task noticed (it woke from a pause; see [`crate::live`]).
//! * **Disk logs.** A RESUME of a `clustered-disk` log carries what the
//!   log device holds; a FLUSH (or first RESUME) is answered only once its
//!   clean bits are durable on the device (see [`crate::disk_log`]).
//! * **Bad input.** A datagram whose framing is broken is dropped (there is
//!   no trustworthy seq to answer); one that frames but does not decode is
//!   answered `-EINVAL`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use regions::{Command, Effect, KernelOp, NodeId, Routed, kernel_answer, route};
use replication::{LeaderLink, Outcome, Proposal, ReadRequest, Replica, ReplicaError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use wire::{Errno, Frame, Luid, Message, Reply, Uuid};

use crate::live::Lease;
use crate::metrics::Metrics;
use crate::own_marks::OwnMarks;

/// Where a reply goes: the transport's way back to the sender.
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

type Pending = (Command, oneshot::Sender<Outcome>);

/// The router of one node.
pub struct Router<L: LeaderLink> {
    replica: Arc<Replica<L>>,
    node: NodeId,
    fenced: Arc<AtomicBool>,
    lease: Lease,
    own: Mutex<OwnMarks>,
    lanes: Mutex<HashMap<(Uuid, Luid), mpsc::UnboundedSender<Job>>>,
    proposer: mpsc::UnboundedSender<Pending>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<L: LeaderLink> Router<L> {
    /// A router for `replica`'s node; `fenced` stops all answers when set;
    /// requests and commits are counted in `metrics`. Must be called
    /// within a tokio runtime (it starts the proposer task).
    pub fn new(replica: Arc<Replica<L>>, fenced: Arc<AtomicBool>, metrics: Arc<Metrics>) -> Arc<Router<L>> {
        Router::with_lease(replica, fenced, Lease::new(), metrics)
    }

    /// Like [`Router::new`], answering also only while `lease` holds (see
    /// [`crate::live`]).
    pub fn with_lease(
        replica: Arc<Replica<L>>,
        fenced: Arc<AtomicBool>,
        lease: Lease,
        metrics: Arc<Metrics>,
    ) -> Arc<Router<L>> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(propose_loop(replica.clone(), rx, metrics.clone()));
        let node = NodeId(replica.id);
        Arc::new(Router {
            replica,
            node,
            fenced,
            lease,
            own: Mutex::new(OwnMarks::new()),
            lanes: Mutex::default(),
            proposer: tx,
            metrics,
        })
    }

    /// Whether an answer may go to the kernel now: not fenced, and the
    /// lease holds (a node that wakes from a pause past its lease must not
    /// answer before its liveness task fences it).
    fn may_answer(&self) -> bool {
        !self.fenced.load(Ordering::SeqCst) && self.lease.holds()
    }

    /// What this node's kernel holds, from the requests answered so far.
    pub fn own_marks(&self) -> OwnMarks {
        lock(&self.own).clone()
    }

    /// The log device token of disk log `uuid` as this node's kernel named
    /// it, if it has a table of it.
    pub fn disk_device(&self, uuid: &Uuid) -> Option<String> {
        lock(&self.own).disk_device(uuid)
    }

    /// The device token and region count of table (`uuid`, `luid`) if it is
    /// a `clustered-disk` log: from the table's own constructor, else (the
    /// daemon restarted under a running kernel) from the replicated log.
    fn disk_table(&self, uuid: &Uuid, luid: Luid) -> Option<(String, u64)> {
        let own = lock(&self.own).ctr_args(uuid, luid).and_then(|a| regions::CtrArgs::parse(a).ok());
        let args = own.or_else(|| self.replica.state.read(|m| m.log(uuid).map(|l| l.args().clone())))?;
        match &args.log_type {
            regions::LogType::Disk { device } => Some((device.clone(), args.region_count())),
            regions::LogType::Core => None,
        }
    }

    /// Takes one datagram from the kernel; `reply` is called at most once.
    pub fn handle(self: &Arc<Self>, datagram: &[u8], reply: ReplyTo) {
        let arrived = Instant::now();
        let Ok(frame) = Frame::parse(datagram) else {
            tracing::debug!(len = datagram.len(), "dropped a datagram that does not frame");
            self.metrics.malformed.inc();
            return;
        };
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                self.metrics.malformed.inc();
                tracing::warn!(error = %e, "answered a malformed request with EINVAL");
                if self.may_answer() {
                    reply(Reply::error(frame.header(), Errno::EINVAL).encode());
                }
                return;
            }
        };
        let key = (msg.uuid.clone(), msg.luid());
        lock(&self.own).requested(&msg.uuid, msg.luid(), &msg.request);
        let mut job = Job { msg, reply, arrived };
        let mut lanes = lock(&self.lanes);
        for _ in 0..2 {
            let tx = lanes.entry(key.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(lane(self.clone(), rx));
                tx
            });
            match tx.send(job) {
                Ok(()) => return,
                // The lane's task is gone: start a new one.
                Err(mpsc::error::SendError(back)) => {
                    lanes.remove(&key);
                    job = back;
                }
            }
        }
    }

    /// A table was destroyed: its lane ends once its queue is empty.
    fn forget_lane(&self, uuid: &Uuid, luid: Luid) {
        lock(&self.lanes).remove(&(uuid.clone(), luid));
    }

    /// One request, to its answer.
    async fn answer(&self, msg: &Message) -> Option<Result<wire::Answer, Errno>> {
        match route(self.node, msg) {
            Routed::Command(Command::Kernel { uuid, instance, op: KernelOp::Flush { marks } })
                if marks.is_empty() && self.replica.state.read(|m| m.empty_flush_is_noop(&uuid, instance)) =>
            {
                Some(Ok(wire::Answer::Done))
            }
            Routed::Command(mut c) => {
                if let Command::Kernel { uuid, instance, op: KernelOp::Resume { disk } } = &mut c
                    && let Some((token, regions)) = self.disk_table(uuid, instance.luid)
                {
                    let image = tokio::task::spawn_blocking(move || crate::disk_log::read_image(&token, regions));
                    let image = image.await.ok()?;
                    if let regions::DiskImage::Fresh { reason } = &image {
                        tracing::info!(%uuid, %reason, "the log device holds no log");
                    }
                    *disk = Some(image);
                }
                let (tx, rx) = oneshot::channel();
                self.proposer.send((c, tx)).ok()?;
                let outcome = rx.await.ok()?;
                if let Some(why) = &outcome.refusal {
                    tracing::info!(request = ?msg.request, %why, "refused");
                }
                let mut answer = outcome.answer;
                for e in &outcome.effects {
                    if let Effect::PersistDiskLog { uuid, version } = e
                        && *uuid == msg.uuid
                        && answer.is_ok()
                        && let Err(why) = crate::disk_log::wait_durable(&self.replica, uuid, *version).await
                    {
                        tracing::error!(request = ?msg.request, %why, "answered EIO");
                        answer = Err(Errno::EIO);
                    }
                }
                Some(answer)
            }
            Routed::Query { uuid, instance, query } => {
                let r = ReadRequest { uuid, instance, query };
                loop {
                    match self.replica.read(r.clone(), Instant::now() + ATTEMPT).await {
                        Ok(a) => return Some(a),
                        Err(ReplicaError::Timeout) => tracing::warn!("no quorum for a read; waiting"),
                        Err(ReplicaError::Fatal(e)) => {
                            tracing::error!(error = %e, "raft stopped");
                            return None;
                        }
                    }
                }
            }
        }
    }
}

/// A table's lane: its requests one at a time, in order.
async fn lane<L: LeaderLink>(router: Arc<Router<L>>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(result) = router.answer(&job.msg).await else { continue };
        if !router.may_answer() {
            continue;
        }
        let result = kernel_answer(&job.msg.request, result);
        if result.is_ok() {
            lock(&router.own).acknowledged(&job.msg.uuid, job.msg.luid(), &job.msg.request);
            if job.msg.request == wire::Request::Dtr {
                router.forget_lane(&job.msg.uuid, job.msg.luid());
            }
        }
        match Reply::new(&job.msg, result) {
            Ok(r) => {
                (job.reply)(r.encode());
                router.metrics.answered(job.msg.request.request_type().name(), job.arrived.elapsed());
            }
            Err(e) => tracing::error!(error = %e, "no valid reply for a request; the kernel will re-send"),
        }
    }
}

/// The proposer: everything queued goes into one entry; a batch whose
/// outcome is unknown (no quorum before the attempt's deadline) is proposed
/// again, which is safe because every command is idempotent.
async fn propose_loop<L: LeaderLink>(
    replica: Arc<Replica<L>>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let proposal = Proposal { commands: batch.iter().map(|(c, _)| c.clone()).collect() };
        let started = Instant::now();
        let outcomes = loop {
            match replica.propose(proposal.clone(), Instant::now() + ATTEMPT).await {
                Ok(o) => break Some(o),
                Err(ReplicaError::Timeout) => tracing::warn!(commands = batch.len(), "no quorum; proposing again"),
                Err(ReplicaError::Fatal(e)) => {
                    tracing::error!(error = %e, "raft stopped");
                    break None;
                }
            }
        };
        let Some(outcomes) = outcomes else { continue };
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.batch_commands.observe(batch.len() as f64);
        for ((_, tx), outcome) in batch.into_iter().zip(outcomes.0) {
            let _ = tx.send(outcome);
        }
    }
}
