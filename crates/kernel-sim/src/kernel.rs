//! The simulated kernel of one node: its mirrors, its request sequence
//! counter, its outstanding requests with their 15 s timeouts, and the
//! threads (kmirrord, the ioctl caller, the delayed-flush worker) that send
//! requests and wait for their replies.
//!
//! It is sans-IO: [`Kernel::take_requests`] yields datagrams to deliver to
//! the daemon, [`Kernel::deliver`] consumes a reply datagram, and
//! [`Kernel::advance_to`] moves simulated time. The caller decides when and
//! in which order datagrams travel, so a cluster simulation can interleave
//! many kernels deterministically.

use std::collections::BTreeMap;

use wire::{Errno, KernelReply, Luid, Region, Request, Seq, encode_request, reply_capacity};

use crate::legs::SharedLegs;
use crate::mirror::{Bio, InFlight, Job, Life, Mirror, Purpose, RState, Reconnect, RegionEntry, Step, Table, Who};

/// Timing of the simulated hardware and kernel.
#[derive(Clone, Debug)]
pub struct Config {
    /// From a write's submission until its second leg is written (ms).
    pub write_ms: u64,
    /// Time to copy one region during resync (ms).
    pub copy_ms: u64,
    /// Gap the ioctl caller leaves between GET_REGION_SIZE and RESUME, so
    /// kmirrord's first pass runs before RESUME as on the real kernel (ms).
    pub create_gap_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config { write_ms: 2, copy_ms: 5, create_gap_ms: 5 }
    }
}

/// The kernel's reply timeout: no reply in 15 s means re-send under a new seq.
pub const RETRY_TIMEOUT_MS: u64 = wire::KERNEL_RETRY_TIMEOUT_MS;
/// The IS_REMOTE_RECOVERING throttle (HZ/4 at HZ=250, host-wide).
pub const REMOTE_RECOVERING_THROTTLE_MS: u64 = 248;
/// How long a write held by IS_REMOTE_RECOVERING waits (HZ/5).
pub const REQUEUE_DELAY_MS: u64 = 200;
/// Integrated mode: the delayed FLUSH after a flush that carried no marks.
pub const DELAYED_FLUSH_MS: u64 = 3000;
/// The reconnect loop's sleep between CTRs when no daemon listens (2 s).
pub const RECONNECT_SLEEP_MS: u64 = 2000;

/// A handle to one mirror of a [`Kernel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MirrorId(pub usize);

/// What the simulator saw that a correct daemon must never cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time.
    pub at_ms: u64,
    /// What happened.
    pub what: String,
}

#[derive(Clone, Debug)]
struct Outstanding {
    mirror: usize,
    who: Who,
    request: Request,
    purpose: Purpose,
    sent_at: u64,
}

/// Counters for tests and the demo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent, re-sends included.
    pub requests: u64,
    /// Re-sends after a 15 s timeout.
    pub timeouts: u64,
    /// Re-sends after `-EAGAIN`.
    pub eagain: u64,
    /// Replies whose seq matched nothing outstanding (late or duplicate).
    pub stale_replies: u64,
    /// Writes completed on their legs.
    pub writes_completed: u64,
    /// Regions copied by this node's recovery.
    pub regions_recovered: u64,
    /// When this kernel last put a write on a leg (ms), if ever.
    pub last_write_ms: Option<u64>,
    /// Requests that found no daemon listening (`-ESRCH`).
    pub unheard: u64,
    /// Reconnect CTRs sent (the kernel's "Attempting to contact userspace
    /// log server...").
    pub reconnects: u64,
}

/// A read-only view of one mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorView {
    /// The table.
    pub table: Table,
    /// The log instance id.
    pub luid: Luid,
    /// Life stage.
    pub life: Life,
    /// Region size learned at CTR.
    pub region_size: u64,
    /// Regions.
    pub region_count: u64,
    /// `ms->in_sync`: the kernel believes the whole mirror is in sync.
    pub in_sync: bool,
    /// The cached `in_sync_hint`.
    pub in_sync_hint: u64,
    /// A write-path flush failed (sticky until the table is reloaded).
    pub log_failure: bool,
    /// The last `dmsetup status` log text.
    pub status: Option<String>,
    /// The in-sync region count the last `dmsetup status` printed.
    pub status_sync_count: Option<u64>,
    /// Writes in flight (submitted, second leg not yet written).
    pub inflight_regions: Vec<u64>,
    /// Writes queued or held, not yet submitted.
    pub queued_writes: usize,
    /// Writes completed.
    pub writes_done: u64,
}

/// One node's simulated dm-raid1 + dm-log-userspace.
#[derive(Debug)]
pub struct Kernel {
    config: Config,
    /// Which blocks of a shared region this node writes (its luid base).
    writer: u64,
    now_ms: u64,
    seq: u32,
    next_luid: u64,
    next_content: u64,
    throttle_ms: Option<u64>,
    mirrors: Vec<Mirror>,
    outstanding: BTreeMap<u32, Outstanding>,
    outbox: Vec<Vec<u8>>,
    /// Reconnect loops asleep: when each sends its next CTR.
    reconnecting: Vec<(u64, usize, Who, Reconnect)>,
    stats: Stats,
    violations: Vec<Violation>,
}

impl Kernel {
    /// A kernel whose request counter starts after `seq` and whose log
    /// instance ids start at `luid_base` (kernel addresses in reality).
    pub fn new(config: Config, seq: u32, luid_base: u64) -> Kernel {
        Kernel {
            config,
            writer: luid_base,
            now_ms: 0,
            seq,
            next_luid: luid_base,
            next_content: luid_base.wrapping_mul(1_000_003).max(1),
            throttle_ms: None,
            mirrors: Vec::new(),
            outstanding: BTreeMap::new(),
            outbox: Vec::new(),
            reconnecting: Vec::new(),
            stats: Stats::default(),
            violations: Vec::new(),
        }
    }

    /// Simulated time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Protocol violations seen so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// `dmsetup create`: loads and resumes a mirror table over `legs`.
    pub fn create(&mut self, table: Table, legs: SharedLegs) -> MirrorId {
        self.next_luid += 0x100;
        self.mirrors.push(Mirror::new(table, Luid(self.next_luid), legs));
        MirrorId(self.mirrors.len() - 1)
    }

    /// A write to `region`, queued to kmirrord (held while suspended).
    pub fn write(&mut self, m: MirrorId, region: u64) {
        if let Some(mirror) = self.mirrors.get_mut(m.0) {
            let bio = Bio { region };
            if mirror.accepts_io() {
                mirror.writes.push_back(bio);
                mirror.woken = true;
            } else {
                mirror.held.push(bio);
            }
        }
    }

    /// A read of a region not in the kernel's region hash asks IN_SYNC.
    pub fn read(&mut self, m: MirrorId, region: u64) {
        if let Some(mirror) = self.mirrors.get_mut(m.0) {
            mirror.reads.push_back(region);
            mirror.woken = true;
        }
    }

    /// `dmsetup suspend`.
    pub fn suspend(&mut self, m: MirrorId) {
        self.job(m, Job::Suspend);
    }

    /// `dmsetup resume`.
    pub fn resume(&mut self, m: MirrorId) {
        self.job(m, Job::Resume);
    }

    /// `dmsetup suspend` then `dmsetup resume`: what the daemon does to make
    /// a kernel drop its cached `in_sync_hint` (spec §3.3, I10).
    pub fn kick(&mut self, m: MirrorId) {
        self.job(m, Job::Suspend);
        self.job(m, Job::Resume);
    }

    /// `dmsetup remove`.
    pub fn remove(&mut self, m: MirrorId) {
        self.job(m, Job::Remove);
    }

    /// `dmsetup status`: GET_SYNC_COUNT then STATUS_INFO.
    pub fn status(&mut self, m: MirrorId) {
        self.job(m, Job::Status);
    }

    fn job(&mut self, m: MirrorId, job: Job) {
        if let Some(mirror) = self.mirrors.get_mut(m.0) {
            mirror.jobs.push_back(job);
        }
    }

    /// Regions mirror `m` holds dirty in its region hash: it writes them
    /// without asking the log (no MARK) until it sends their CLEAR.
    pub fn dirty_regions(&self, m: MirrorId) -> Vec<u64> {
        self.dirty_where(m, false)
    }

    /// The regions mirror `m` holds dirty and may write without another
    /// MARK: dirty, with their mark answered (a region whose MARK is still
    /// on its way is written only after that MARK is committed).
    pub fn writable_dirty_regions(&self, m: MirrorId) -> Vec<u64> {
        self.dirty_where(m, true)
    }

    /// The dirty regions of mirror `m`, only those whose MARK was answered
    /// if `writable`.
    fn dirty_where(&self, m: MirrorId, writable: bool) -> Vec<u64> {
        self.mirrors.get(m.0).map_or_else(Vec::new, |x| {
            x.hash
                .iter()
                .filter(|(r, e)| e.state == RState::Dirty && !(writable && x.unflushed.contains(r)))
                .map(|(r, _)| *r)
                .collect()
        })
    }

    /// A view of one mirror.
    pub fn mirror(&self, m: MirrorId) -> Option<MirrorView> {
        let x = self.mirrors.get(m.0)?;
        Some(MirrorView {
            table: x.table.clone(),
            luid: x.luid,
            life: x.life.clone(),
            region_size: x.region_size,
            region_count: x.region_count,
            in_sync: x.in_sync,
            in_sync_hint: x.hint,
            log_failure: x.log_failure,
            status: x.status.clone(),
            status_sync_count: x.status_sync_count,
            inflight_regions: x.inflight_regions(),
            queued_writes: x.writes.len() + x.requeued.len() + x.held.len() + x.batch.len(),
            writes_done: x.writes_done,
        })
    }

    /// All mirrors.
    pub fn mirror_ids(&self) -> Vec<MirrorId> {
        (0..self.mirrors.len()).map(MirrorId).collect()
    }

    /// Whether a write bio of mirror `mi` is waiting for a log reply
    /// (IS_REMOTE_RECOVERING or IN_SYNC on its way through kmirrord): it is
    /// in flight for dm core, and a suspend waits for it like any other.
    fn bio_awaits_reply(&self, mi: usize) -> bool {
        self.outstanding.values().any(|o| {
            o.mirror == mi
                && matches!(o.purpose, Purpose::RemoteRecovering(_) | Purpose::GetState(_) | Purpose::Alloc(..))
        })
    }

    /// The threads and queues of mirror `m`, for diagnosing a stall.
    pub fn explain(&self, m: MirrorId) -> String {
        let Some(x) = self.mirrors.get(m.0) else { return String::new() };
        let delayed: Vec<(u64, RState, usize)> =
            x.hash.iter().filter(|(_, e)| !e.delayed.is_empty()).map(|(r, e)| (*r, e.state, e.delayed.len())).collect();
        format!(
            "life {:?} io_blocked {} woken {} recovery_enabled {} recovering {:?} recovered {:?} writes {} requeued {} held {} batch {} inflight {} delayed {:?} kmirrord {:?} (waiting {:?}) ioctl {:?} (waiting {:?}) jobs {:?}",
            x.life,
            x.io_blocked,
            x.woken,
            x.recovery_enabled,
            x.recovering.as_ref().map(|(r, c)| (*r, c.is_some())),
            x.recovered,
            x.writes.len(),
            x.requeued.len(),
            x.held.len(),
            x.batch.len(),
            x.inflight.len(),
            delayed,
            x.kmirrord.steps.iter().take(4).collect::<Vec<_>>(),
            x.kmirrord.waiting,
            x.ioctl.steps.iter().take(6).collect::<Vec<_>>(),
            x.ioctl.waiting,
            x.jobs,
        )
    }

    /// Whether nothing is outstanding, queued, in flight or scheduled.
    pub fn is_idle(&self) -> bool {
        self.outstanding.is_empty()
            && self.outbox.is_empty()
            && self.reconnecting.is_empty()
            && self.mirrors.iter().all(|m| {
                m.jobs.is_empty()
                    && m.kmirrord.steps.is_empty()
                    && m.ioctl.steps.is_empty()
                    && m.worker.steps.is_empty()
                    && !m.woken
                    && m.io_drained()
                    && m.recovering.is_none()
                    && m.recovered.is_empty()
                    && m.delayed_flush_at.is_none()
            })
    }

    /// Whether mirror `m` waits for the answer to a MARK or to a FLUSH
    /// carrying marks: a write is between its mark and its data.
    pub fn awaits_mark(&self, m: MirrorId) -> bool {
        self.outstanding.values().any(|o| {
            o.mirror == m.0
                && matches!(&o.request, Request::MarkRegion(_) | Request::Flush { marks: _ })
                && matches!(o.purpose, Purpose::Log(true))
        })
    }

    /// The request waiting for a reply under `seq`, if any.
    pub fn outstanding_request(&self, seq: u32) -> Option<&Request> {
        self.outstanding.get(&seq).map(|o| &o.request)
    }

    /// Datagrams to deliver to the daemon, in sending order.
    pub fn take_requests(&mut self) -> Vec<Vec<u8>> {
        self.run();
        std::mem::take(&mut self.outbox)
    }

    /// The earliest time something happens without a reply arriving.
    pub fn next_event_ms(&self) -> Option<u64> {
        let mut t: Vec<u64> = self.outstanding.values().map(|o| o.sent_at + RETRY_TIMEOUT_MS).collect();
        t.extend(self.reconnecting.iter().map(|(at, ..)| *at));
        for m in &self.mirrors {
            t.extend(m.inflight.iter().map(|w| w.complete_at));
            t.extend(m.recovering.as_ref().and_then(|(_, c)| c.as_ref()).map(|(_, done)| *done));
            t.extend(m.requeued.iter().map(|(at, _)| *at));
            t.extend(m.delayed_flush_at);
            for th in [&m.kmirrord, &m.ioctl, &m.worker] {
                if let (None, Some(Step::SleepUntil(at))) = (th.waiting, th.steps.front()) {
                    t.push(*at);
                }
            }
        }
        t.into_iter().min()
    }

    /// Moves time forward to `now_ms`, running every timer due on the way
    /// (write completions, recovery copies, delayed flushes, re-sends).
    pub fn advance_to(&mut self, now_ms: u64) {
        while let Some(t) = self.next_event_ms().filter(|&t| t <= now_ms) {
            self.now_ms = self.now_ms.max(t);
            self.fire_timers();
            self.run();
        }
        self.now_ms = self.now_ms.max(now_ms);
        self.fire_timers();
        self.run();
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms;
        // 15 s without a reply: re-send under a new seq (spec §1.8).
        let expired: Vec<u32> =
            self.outstanding.iter().filter(|(_, o)| o.sent_at + RETRY_TIMEOUT_MS <= now).map(|(s, _)| *s).collect();
        for s in expired {
            if let Some(o) = self.outstanding.remove(&s) {
                self.stats.timeouts += 1;
                self.send(o.mirror, o.who, o.request, o.purpose);
            }
        }
        // Reconnect loops whose 2 s sleep is over send their CTR again.
        let (due, asleep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reconnecting).into_iter().partition(|(at, ..)| *at <= now);
        self.reconnecting = asleep;
        for (_, mi, who, r) in due {
            self.stats.reconnects += 1;
            let args = self.mirrors[mi].table.ctr_args();
            self.send(mi, who, Request::Ctr { args, reconnect: true }, Purpose::Reconnect(Box::new(r)));
        }
        for mi in 0..self.mirrors.len() {
            let m = &mut self.mirrors[mi];
            // Writes reach their second leg and complete.
            let (done, rest): (Vec<InFlight>, Vec<InFlight>) =
                std::mem::take(&mut m.inflight).into_iter().partition(|w| w.complete_at <= now);
            m.inflight = rest;
            for w in done {
                if w.both {
                    m.legs.lock().write(1, w.region, self.writer, w.content);
                }
                m.legs.lock().end_write(w.region);
                m.writes_done += 1;
                self.stats.writes_completed += 1;
                if let Some(e) = m.hash.get_mut(&w.region) {
                    e.pending = e.pending.saturating_sub(1);
                    if e.pending == 0 && e.state == RState::Dirty {
                        e.state = RState::Clean;
                        m.clean_list.push(w.region);
                    }
                }
                m.woken = true;
            }
            start_copy(m, now, self.config.copy_ms);
            if let Some((_, Some((_, done_at)))) = &m.recovering
                && *done_at <= now
                && let Some((r, Some((snapshot, _)))) = m.recovering.take()
            {
                m.legs.lock().copy_to_leg1(r, snapshot);
                m.recovering = None;
                m.recovered.push((r, true));
                self.stats.regions_recovered += 1;
                m.woken = true;
            }
            let mut due = Vec::new();
            m.requeued.retain(|(at, bio)| {
                let ready = *at <= now;
                if ready {
                    due.push(*bio);
                }
                !ready
            });
            if !due.is_empty() {
                m.writes.extend(due);
                m.woken = true;
            }
            if m.delayed_flush_at.is_some_and(|at| at <= now) {
                m.delayed_flush_at = None;
                m.worker.steps.push_back(Step::Send(Request::Flush { marks: vec![] }, Purpose::Log(false)));
            }
        }
    }

    /// Runs every thread until each waits for a reply, a condition or a timer.
    fn run(&mut self) {
        loop {
            let mut progress = false;
            for mi in 0..self.mirrors.len() {
                for who in [Who::Ioctl, Who::Kmirrord, Who::Worker] {
                    progress |= self.step_thread(mi, who);
                }
            }
            if !progress {
                break;
            }
        }
    }

    /// Runs one step of a thread, starting new work when it is idle.
    fn step_thread(&mut self, mi: usize, who: Who) -> bool {
        let now = self.now_ms;
        let bio_awaits_reply = self.bio_awaits_reply(mi);
        let m = &mut self.mirrors[mi];
        if m.thread(who).waiting.is_some() {
            return false;
        }
        if m.thread(who).steps.is_empty() && !start_work(m, who, self.config.create_gap_ms) {
            return false;
        }
        let Some(step) = m.thread(who).steps.pop_front() else { return false };
        match step {
            Step::Send(req, purpose) => {
                self.send(mi, who, req, purpose);
            }
            Step::SleepUntil(at) if at > now => {
                m.thread(who).steps.push_front(Step::SleepUntil(at));
                return false;
            }
            Step::SleepUntil(_) => {}
            Step::WaitRecoveryIdle if m.recovering.is_some() || !m.recovered.is_empty() => {
                m.thread(who).steps.push_front(step);
                return false;
            }
            Step::WaitIoDrained if !m.io_drained() || bio_awaits_reply => {
                m.thread(who).steps.push_front(step);
                return false;
            }
            Step::WaitRecoveryIdle | Step::WaitIoDrained => {}
            Step::StopRecovery => m.recovery_enabled = false,
            Step::BlockIo => m.io_blocked = true,
            Step::ForceDelayedFlush => {
                if m.delayed_flush_at.take().is_some() {
                    m.thread(who).steps.push_front(Step::Send(Request::Flush { marks: vec![] }, Purpose::Log(false)));
                }
            }
            Step::Pause(ms) => m.thread(who).steps.push_front(Step::SleepUntil(now + ms)),
            Step::Suspended => m.life = Life::Suspended,
            Step::Removed => m.life = Life::Removed,
            Step::PrepareResume => {
                // userspace_resume resets the cached hint before RESUME.
                m.hint = 0;
            }
            other => self.kmirrord_step(mi, other),
        }
        true
    }

    /// The steps of a kmirrord pass (dm-raid1 `do_mirror`).
    fn kmirrord_step(&mut self, mi: usize, step: Step) {
        let now = self.now_ms;
        let m = &mut self.mirrors[mi];
        let front = |m: &mut Mirror, steps: Vec<Step>| {
            for s in steps.into_iter().rev() {
                m.kmirrord.steps.push_front(s);
            }
        };
        match step {
            Step::UpdateStates => {
                let mut steps = Vec::new();
                for (r, ok) in std::mem::take(&mut m.recovered) {
                    steps.push(Step::Send(Request::SetRegionSync { region: Region(r), in_sync: ok }, Purpose::SetSync));
                    m.clears.insert(0, r);
                    if let Some(e) = m.hash.remove(&r) {
                        m.writes.extend(e.delayed);
                    }
                }
                for r in std::mem::take(&mut m.clean_list) {
                    if m.hash.get(&r).is_some_and(|e| e.state == RState::Clean && e.pending == 0) {
                        m.hash.remove(&r);
                        m.clears.insert(0, r);
                    }
                }
                steps.push(Step::Flush(false));
                front(m, steps);
            }
            // The recovery semaphore is raised only at resume; a hint at
            // region_count short-circuits the request (spec §3.2).
            Step::Recovery if m.recovery_enabled && m.recovering.is_none() && m.hint < m.region_count => {
                front(m, vec![Step::Send(Request::GetResyncWork, Purpose::ResyncWork)]);
            }
            // Asked on every pass until the kernel believes the mirror in sync.
            Step::SyncCount if !m.in_sync && m.region_count > 0 => {
                front(m, vec![Step::Send(Request::GetSyncCount, Purpose::SyncCount)]);
            }
            Step::Reads => {
                let steps = std::mem::take(&mut m.reads)
                    .into_iter()
                    .filter(|r| !m.hash.contains_key(r))
                    .map(|r| Step::Send(Request::InSync(Region(r)), Purpose::ReadInSync(r)))
                    .collect();
                front(m, steps);
            }
            Step::Writes => {
                let mut steps: Vec<Step> = std::mem::take(&mut m.writes).into_iter().map(Step::WriteCheck).collect();
                if !steps.is_empty() {
                    steps.push(Step::Flush(true));
                    steps.push(Step::Submit);
                }
                front(m, steps);
            }
            Step::WriteCheck(bio) => {
                let r = bio.region;
                if r >= m.region_count {
                    self.violation(format!("workload wrote region {r} beyond {}", self.mirrors[mi].region_count));
                    return;
                }
                if r < m.hint {
                    front(m, vec![Step::WriteState(bio)]);
                } else if self.throttle_ms.is_some_and(|t| now < t + REMOTE_RECOVERING_THROTTLE_MS) {
                    // Answered 1 locally: the write waits 200 ms.
                    m.requeued.push((now + REQUEUE_DELAY_MS, bio));
                } else {
                    self.throttle_ms = Some(now);
                    front(m, vec![Step::Send(Request::IsRemoteRecovering(Region(r)), Purpose::RemoteRecovering(bio))]);
                }
            }
            Step::WriteState(bio) => match m.hash.get(&bio.region) {
                Some(e) => {
                    let st = e.state;
                    front(m, vec![Step::WriteInc(bio, st)]);
                }
                None => front(m, vec![Step::Send(Request::InSync(Region(bio.region)), Purpose::GetState(bio))]),
            },
            Step::WriteInc(bio, list) => {
                if list == RState::Recovering {
                    match m.hash.get_mut(&bio.region) {
                        Some(e) => e.delayed.push(bio),
                        None => m.writes.push_back(bio),
                    }
                    return;
                }
                let r = bio.region;
                match m.hash.get_mut(&r) {
                    None => {
                        front(m, vec![Step::Send(Request::InSync(Region(r)), Purpose::Alloc(bio, list))]);
                    }
                    Some(e) if e.state == RState::Recovering => e.delayed.push(bio),
                    Some(e) => {
                        e.pending += 1;
                        if e.state == RState::Clean {
                            e.state = RState::Dirty;
                            m.clean_list.retain(|x| *x != r);
                            m.marks.insert(0, r);
                            m.unflushed.insert(r);
                        }
                        m.batch.push((bio, list));
                    }
                }
            }
            Step::Flush(write_path) => {
                let steps = flush_steps(m, write_path, now);
                front(m, steps);
            }
            Step::Submit => {
                for (bio, list) in std::mem::take(&mut m.batch) {
                    m.unflushed.remove(&bio.region);
                    self.next_content += 1;
                    self.stats.last_write_ms = Some(now);
                    let both = list != RState::NoSync;
                    // The default leg is written first; the second leg at
                    // completion. A crash in between leaves them different.
                    {
                        let mut legs = m.legs.lock();
                        legs.begin_write(bio.region);
                        legs.write(0, bio.region, self.writer, self.next_content);
                    }
                    m.inflight.push(InFlight {
                        region: bio.region,
                        content: self.next_content,
                        complete_at: now + self.config.write_ms,
                        both,
                    });
                }
            }
            _ => {}
        }
    }

    fn violation(&mut self, what: String) {
        self.violations.push(Violation { at_ms: self.now_ms, what });
    }

    fn send(&mut self, mirror: usize, who: Who, request: Request, purpose: Purpose) {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let m = &mut self.mirrors[mirror];
        match encode_request(m.luid, &m.table.uuid, Seq(seq), &request) {
            Ok(bytes) => {
                self.outbox.push(bytes);
                self.stats.requests += 1;
                m.thread(who).waiting = Some(seq);
                self.outstanding.insert(seq, Outstanding { mirror, who, request, purpose, sent_at: self.now_ms });
            }
            Err(e) => {
                // The kernel fails such a request locally (-EINVAL).
                self.violation(format!("kernel could not encode {request:?}: {e}"));
            }
        }
    }

    /// A request datagram found no daemon listening on the connector (no
    /// socket in the group, or its receive queue full): the kernel's send
    /// returns `-ESRCH` at once (spec §1.8). CTR, DTR, the suspend and
    /// resume calls and GET_REGION_SIZE get the error; every other request
    /// enters the reconnect loop: every 2 s a CTR with the saved
    /// arguments (NUL-terminated, no receive buffer), then a RESUME, then
    /// the request again under a new seq.
    pub fn unheard(&mut self, datagram: &[u8]) {
        let Ok(frame) = wire::Frame::parse(datagram) else { return };
        let Some(o) = self.outstanding.remove(&frame.header().seq.0) else { return };
        self.stats.unheard += 1;
        let esrch = Errno::ESRCH.negated();
        match o.purpose {
            // The loop's own CTR: sleep and try again.
            Purpose::Reconnect(r) if r.ctr => {
                self.reconnecting.push((self.now_ms + RECONNECT_SLEEP_MS, o.mirror, o.who, *r))
            }
            // Its RESUME failed: the request fails with -ESRCH.
            Purpose::Reconnect(r) => {
                let original = Outstanding { request: r.request, purpose: r.purpose, ..o };
                self.fail(original, esrch);
            }
            _ if is_direct(&o.request) => self.fail(o, esrch),
            purpose => {
                // The thread stays blocked (waiting on a seq nobody answers).
                let r = Reconnect { ctr: true, request: o.request, purpose };
                self.reconnecting.push((self.now_ms + RECONNECT_SLEEP_MS, o.mirror, o.who, r));
            }
        }
    }

    /// The waiting thread gets `error` for `o` without a reply.
    fn fail(&mut self, o: Outstanding, error: i32) {
        if let Some(m) = self.mirrors.get_mut(o.mirror) {
            m.thread(o.who).waiting = None;
        }
        self.on_reply(o, error, &[]);
    }

    /// Consumes one reply datagram from the daemon, as `cn_ulog_callback`
    /// and the waiting caller would (spec §1.5).
    pub fn deliver(&mut self, datagram: &[u8]) {
        let reply = match KernelReply::parse(datagram) {
            Ok(r) => r,
            Err(e) => {
                // The connector drops it silently; the waiter times out.
                self.violation(format!("malformed reply dropped: {e}"));
                return;
            }
        };
        let Some(o) = self.outstanding.remove(&reply.seq().0) else {
            self.stats.stale_replies += 1;
            return;
        };
        let (mut error, data) = match reply {
            KernelReply::BareAck { ack, .. } => (-(i32::try_from(ack).unwrap_or(i32::MAX)), Vec::new()),
            KernelReply::Full { error, data, .. } => (error, data),
        };
        let capacity = reply_capacity(&o.request, 4096);
        if error == 0 && data.len() > capacity {
            self.violation(format!(
                "{} reply of {} bytes exceeds {capacity}: -ENOSPC",
                o.request.request_type(),
                data.len()
            ));
            error = Errno::ENOSPC.negated();
        }
        if error == Errno::EAGAIN.negated() {
            self.stats.eagain += 1;
            self.send(o.mirror, o.who, o.request, o.purpose);
            return;
        }
        if let Some(m) = self.mirrors.get_mut(o.mirror) {
            m.thread(o.who).waiting = None;
        }
        self.on_reply(o, error, &data);
    }

    fn on_reply(&mut self, o: Outstanding, error: i32, data: &[u8]) {
        let now = self.now_ms;
        let rt = o.request.request_type();
        let ok = error == 0;
        let word = |i: usize| data.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes);
        let exact = |n: usize| data.len() == n;
        if ok && !matches!(o.purpose, Purpose::Ctr | Purpose::StatusInfo) {
            let want = reply_capacity(&o.request, 0);
            if data.len() != want {
                self.violation(format!("{rt} reply carries {} bytes, exactly {want} expected", data.len()));
            }
        }
        let bool_word = |k: &mut Kernel, v: Option<u64>| match v {
            Some(0) => false,
            Some(1) => true,
            other => {
                k.violation(format!("{rt} answered {other:?}, not 0 or 1"));
                true
            }
        };
        let mi = o.mirror;
        match o.purpose {
            Purpose::Reconnect(r) if r.ctr && ok => {
                let r = Reconnect { ctr: false, ..*r };
                self.send(mi, o.who, Request::Resume, Purpose::Reconnect(Box::new(r)));
            }
            Purpose::Reconnect(r) if r.ctr => {
                self.mirrors[mi].thread(o.who).waiting = Some(u32::MAX);
                self.reconnecting.push((now + RECONNECT_SLEEP_MS, mi, o.who, *r));
            }
            // Reconnected: the request goes again, under a new seq.
            Purpose::Reconnect(r) if ok => self.send(mi, o.who, r.request, r.purpose),
            Purpose::Reconnect(r) => {
                let original = Outstanding { request: r.request, purpose: r.purpose, ..o };
                self.fail(original, Errno::ESRCH.negated());
            }
            Purpose::Ctr => {
                let m = &mut self.mirrors[mi];
                if !ok {
                    m.life = Life::Failed(format!("CTR failed: {error}"));
                    m.ioctl.steps.clear();
                } else if !data.is_empty() && data.last() != Some(&0) {
                    m.life = Life::Failed("CTR device string not NUL-terminated".into());
                    m.ioctl.steps.clear();
                } else {
                    m.life = Life::Constructed;
                }
            }
            Purpose::RegionSize => {
                let size = word(0).filter(|_| ok && exact(8)).unwrap_or(0);
                if size == 0 || !size.is_power_of_two() {
                    self.violation(format!("GET_REGION_SIZE answered {size} (error {error})"));
                    let m = &mut self.mirrors[mi];
                    m.life = Life::Failed("bad region size".into());
                    m.ioctl.steps.clear();
                } else {
                    let m = &mut self.mirrors[mi];
                    m.region_size = size;
                    m.region_count = m.table.target_sectors.div_ceil(size);
                    // The constructor wakes kmirrord: its first pass runs
                    // before RESUME (spec §3.2 GET_SYNC_COUNT).
                    m.woken = true;
                }
            }
            Purpose::Resume => {
                let m = &mut self.mirrors[mi];
                if matches!(m.life, Life::Constructed | Life::Suspended) {
                    m.life = Life::Active;
                }
                m.recovery_enabled = true;
                m.woken = true;
                m.io_blocked = false;
                let held = std::mem::take(&mut m.held);
                m.writes.extend(held);
            }
            Purpose::Suspend | Purpose::Log(false) | Purpose::SetSync | Purpose::Dtr => {}
            Purpose::Log(true) => {
                if !ok {
                    self.mirrors[mi].log_failure = true;
                }
            }
            Purpose::SyncCount | Purpose::StatusCount => {
                let count = if ok { word(0).unwrap_or(0) } else { 0 };
                let m = &mut self.mirrors[mi];
                if count >= m.region_count {
                    m.hint = m.region_count;
                }
                if count > m.region_count {
                    self.violation(format!("GET_SYNC_COUNT {count} > region_count"));
                }
                let m = &mut self.mirrors[mi];
                if matches!(o.purpose, Purpose::StatusCount) {
                    m.status_sync_count = Some(count);
                }
                if matches!(o.purpose, Purpose::SyncCount) && count == m.region_count && !m.in_sync {
                    m.in_sync = true;
                    self.check_mirror_in_sync(mi);
                }
            }
            Purpose::ResyncWork => {
                let (i, r) = (word(0), word(1));
                if ok && i == Some(1) {
                    let r = r.unwrap_or(u64::MAX);
                    let m = &mut self.mirrors[mi];
                    if r >= m.region_count {
                        self.violation(format!("GET_RESYNC_WORK handed out region {r} beyond region_count"));
                    } else if let Some(e) = m.hash.get_mut(&r) {
                        e.state = RState::Recovering;
                        m.recovering = Some((r, None));
                        start_copy(m, now, self.config.copy_ms);
                    } else {
                        m.kmirrord.steps.push_front(Step::Send(Request::InSync(Region(r)), Purpose::RecoveryAlloc(r)));
                    }
                } else if ok && i != Some(0) {
                    self.violation(format!("GET_RESYNC_WORK i = {i:?}"));
                }
            }
            Purpose::RecoveryAlloc(r) => {
                let m = &mut self.mirrors[mi];
                m.hash.insert(r, RegionEntry { state: RState::Recovering, pending: 0, delayed: Vec::new() });
                m.recovering = Some((r, None));
                start_copy(m, now, self.config.copy_ms);
            }
            Purpose::ReadInSync(r) => {
                let in_sync = ok && bool_word(self, word(0));
                if in_sync {
                    self.check_region_in_sync(mi, r);
                }
            }
            Purpose::RemoteRecovering(bio) => {
                let recovering = !ok || bool_word(self, word(0));
                let m = &mut self.mirrors[mi];
                if ok {
                    m.hint = word(1).unwrap_or(0);
                }
                if recovering {
                    m.requeued.push((now + REQUEUE_DELAY_MS, bio));
                } else {
                    m.kmirrord.steps.push_front(Step::WriteState(bio));
                }
            }
            Purpose::GetState(bio) => {
                let in_sync = ok && bool_word(self, word(0));
                if in_sync {
                    self.check_region_in_sync(mi, bio.region);
                }
                let list = if in_sync { RState::Clean } else { RState::NoSync };
                self.mirrors[mi].kmirrord.steps.push_front(Step::WriteInc(bio, list));
            }
            Purpose::Alloc(bio, list) => {
                let in_sync = ok && bool_word(self, word(0));
                let m = &mut self.mirrors[mi];
                let state = if in_sync { RState::Clean } else { RState::NoSync };
                m.hash.entry(bio.region).or_insert(RegionEntry { state, pending: 0, delayed: Vec::new() });
                m.kmirrord.steps.push_front(Step::WriteInc(bio, list));
            }
            Purpose::StatusInfo => {
                let text = if ok {
                    String::from_utf8_lossy(data.strip_suffix(&[0]).unwrap_or(data)).into_owned()
                } else {
                    "userspace 1 COM_FAILURE".to_owned()
                };
                self.mirrors[mi].status = Some(text);
            }
        }
    }

    /// The kernel now reads region `r` from any leg: the legs must agree,
    /// unless a write to it is in flight somewhere or its writer crashed
    /// before the cluster noticed (I5).
    fn check_region_in_sync(&mut self, mi: usize, r: u64) {
        let legs = self.mirrors[mi].legs.lock();
        let bad = !legs.same(r) && !legs.excused(r);
        drop(legs);
        if bad {
            self.violation(format!("IN_SYNC(region {r}) = 1 while its legs differ"));
        }
    }

    /// The kernel now believes the whole mirror is in sync (I5, I8).
    fn check_mirror_in_sync(&mut self, mi: usize) {
        let legs = self.mirrors[mi].legs.lock();
        let bad: Vec<u64> = legs.differing().into_iter().filter(|&r| !legs.excused(r)).collect();
        drop(legs);
        if !bad.is_empty() {
            self.violation(format!("mirror reported in sync while regions {bad:?} differ"));
        }
    }

    /// The node crashes: its kernel is gone with every write in flight. The
    /// default leg has those writes, the second leg does not.
    pub fn crash(self) {
        for m in &self.mirrors {
            let mut legs = m.legs.lock();
            for w in &m.inflight {
                legs.end_write(w.region);
                legs.abandon(w.region);
            }
        }
    }
}

/// Whether the kernel sends `request` straight through
/// `dm_consult_userspace`, so that "no daemon" is an error for the caller
/// rather than the reconnect loop (spec §1.8).
fn is_direct(request: &Request) -> bool {
    matches!(
        request,
        Request::Ctr { .. }
            | Request::Dtr
            | Request::Presuspend
            | Request::Postsuspend
            | Request::Resume
            | Request::GetRegionSize
    )
}

/// kcopyd starts copying the region under recovery once its writes have
/// drained; the copy reads the default leg now and writes the second leg
/// `copy_ms` later.
fn start_copy(m: &mut Mirror, now: u64, copy_ms: u64) {
    if let Some((r, None)) = &m.recovering
        && m.hash.get(r).is_none_or(|e| e.pending == 0)
    {
        let r = *r;
        let snapshot = m.legs.lock().read0(r);
        m.recovering = Some((r, Some((snapshot, now + copy_ms))));
    }
}

/// Starts the next piece of work on an idle thread. Returns whether any.
fn start_work(m: &mut Mirror, who: Who, create_gap_ms: u64) -> bool {
    let steps: Vec<Step> = match who {
        Who::Kmirrord => {
            if !m.woken || m.region_count == 0 {
                return false;
            }
            m.woken = false;
            vec![Step::UpdateStates, Step::Recovery, Step::SyncCount, Step::Reads, Step::Writes]
        }
        Who::Worker => return false,
        Who::Ioctl => {
            let Some(job) = m.jobs.front().copied() else { return false };
            if matches!(m.life, Life::Failed(_) | Life::Removed) {
                m.jobs.clear();
                return false;
            }
            m.jobs.pop_front();
            job_steps(m, job, create_gap_ms)
        }
    };
    m.thread(who).steps.extend(steps);
    true
}

fn job_steps(m: &mut Mirror, job: Job, create_gap_ms: u64) -> Vec<Step> {
    let suspend = |with_io_wait: bool| {
        let mut v = vec![
            Step::BlockIo,
            Step::StopRecovery,
            Step::WaitRecoveryIdle,
            Step::Send(Request::Presuspend, Purpose::Suspend),
        ];
        if with_io_wait {
            v.push(Step::WaitIoDrained);
        }
        v.push(Step::ForceDelayedFlush);
        v.push(Step::Send(Request::Postsuspend, Purpose::Suspend));
        v.push(Step::Suspended);
        v
    };
    match job {
        Job::Create => vec![
            Step::Send(Request::Ctr { args: m.table.ctr_args(), reconnect: false }, Purpose::Ctr),
            Step::Send(Request::GetRegionSize, Purpose::RegionSize),
            Step::Pause(create_gap_ms),
            Step::PrepareResume,
            Step::Send(Request::Resume, Purpose::Resume),
        ],
        Job::Suspend if m.life == Life::Active => suspend(true),
        Job::Suspend => vec![],
        Job::Resume if m.life == Life::Suspended => {
            vec![Step::PrepareResume, Step::Send(Request::Resume, Purpose::Resume)]
        }
        Job::Resume => vec![],
        Job::Remove => {
            let mut v = if m.life == Life::Active { suspend(false) } else { vec![] };
            v.push(Step::WaitIoDrained);
            v.push(Step::Send(Request::Dtr, Purpose::Dtr));
            v.push(Step::Removed);
            v
        }
        Job::Status => vec![
            Step::Send(Request::GetSyncCount, Purpose::StatusCount),
            Step::Send(Request::StatusInfo, Purpose::StatusInfo),
        ],
    }
}

/// The steps of `userspace_flush` for the pending lists (spec §3.4).
fn flush_steps(m: &mut Mirror, write_path: bool, now: u64) -> Vec<Step> {
    let clears = std::mem::take(&mut m.clears);
    let marks = std::mem::take(&mut m.marks);
    if clears.is_empty() && marks.is_empty() {
        return Vec::new();
    }
    let groups = |v: &[u64]| -> Vec<Vec<Region>> {
        v.chunks(wire::MAX_REGIONS_PER_REQUEST).map(|c| c.iter().copied().map(Region).collect()).collect()
    };
    let mut steps: Vec<Step> =
        groups(&clears).into_iter().map(|g| Step::Send(Request::ClearRegion(g), Purpose::Log(write_path))).collect();
    if m.table.integrated_flush {
        if marks.is_empty() {
            if m.delayed_flush_at.is_none() {
                m.delayed_flush_at = Some(now + DELAYED_FLUSH_MS);
            }
        } else {
            m.delayed_flush_at = None;
            steps.extend(
                groups(&marks).into_iter().map(|g| Step::Send(Request::Flush { marks: g }, Purpose::Log(write_path))),
            );
        }
    } else {
        steps.extend(groups(&marks).into_iter().map(|g| Step::Send(Request::MarkRegion(g), Purpose::Log(write_path))));
        steps.push(Step::Send(Request::Flush { marks: vec![] }, Purpose::Log(write_path)));
    }
    steps
}
