//! One mirror table on one node: dm-raid1's region hash, pending mark and
//! clear lists, recovery, in-flight writes, and the kernel caches that shape
//! what the daemon is asked (spec §3.3).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use wire::{Luid, Request, Uuid};

use crate::legs::SharedLegs;

/// A table to create: `dmsetup create` with a mirror target whose log is
/// `userspace <n> <uuid> [integrated_flush] <log_args>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The log uuid.
    pub uuid: Uuid,
    /// Mirror length in sectors.
    pub target_sectors: u64,
    /// The daemon's arguments, e.g. `"clustered-core 1024 nosync"`.
    pub log_args: String,
    /// The `integrated_flush` keyword: marks travel in FLUSH.
    pub integrated_flush: bool,
}

impl Table {
    /// The CTR payload the kernel builds: length first, single spaces.
    pub fn ctr_args(&self) -> String {
        format!("{} {}", self.target_sectors, self.log_args)
    }
}

/// Where the table is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Life {
    /// Being constructed.
    New,
    /// Constructed, not resumed.
    Constructed,
    /// Live: I/O and recovery run.
    Active,
    /// Suspended.
    Suspended,
    /// Destroyed.
    Removed,
    /// The table load failed (CTR or GET_REGION_SIZE refused).
    Failed(String),
}

/// dm-region-hash states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RState {
    Clean,
    Dirty,
    NoSync,
    Recovering,
}

#[derive(Clone, Debug)]
pub(crate) struct RegionEntry {
    pub state: RState,
    pub pending: u32,
    /// Writes held until the region's recovery ends.
    pub delayed: Vec<Bio>,
}

/// A write bio to one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bio {
    pub region: u64,
}

/// A data write between its submission and its completion: the default
/// leg has it, the second leg gets it at `complete_at` (if `both`).
#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub region: u64,
    pub content: u64,
    pub complete_at: u64,
    pub both: bool,
}

/// What a request's reply is for.
#[derive(Clone, Debug)]
pub(crate) enum Purpose {
    Ctr,
    RegionSize,
    Resume,
    Suspend,
    Dtr,
    SyncCount,
    ResyncWork,
    RecoveryAlloc(u64),
    ReadInSync(u64),
    RemoteRecovering(Bio),
    GetState(Bio),
    Alloc(Bio, RState),
    /// CLEAR/MARK/FLUSH; `true` on the write path, where a failure is sticky.
    Log(bool),
    SetSync,
    StatusCount,
    StatusInfo,
    /// A step of the reconnect loop of `userspace_do_request` (spec §1.8),
    /// carrying the request that found no daemon.
    Reconnect(Box<Reconnect>),
}

/// The reconnect loop of one request that found no daemon listening.
#[derive(Clone, Debug)]
pub(crate) struct Reconnect {
    /// `true` while the CTR is out, `false` for the RESUME after it.
    pub ctr: bool,
    /// The request to send again once reconnected.
    pub request: wire::Request,
    /// Its purpose.
    pub purpose: Purpose,
}

/// One step of a kernel thread.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Send(Request, Purpose),
    UpdateStates,
    Recovery,
    SyncCount,
    Reads,
    Writes,
    WriteCheck(Bio),
    WriteState(Bio),
    WriteInc(Bio, RState),
    Flush(bool),
    Submit,
    SleepUntil(u64),
    Pause(u64),
    Removed,
    StopRecovery,
    WaitRecoveryIdle,
    WaitIoDrained,
    ForceDelayedFlush,
    /// dm core starts holding new bios: a suspend has begun.
    BlockIo,
    Suspended,
    PrepareResume,
}

/// A kernel thread: steps to run, and the seq it waits on.
#[derive(Clone, Debug, Default)]
pub(crate) struct Thread {
    pub steps: VecDeque<Step>,
    pub waiting: Option<u32>,
}

/// Which thread of a mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Who {
    Kmirrord,
    Ioctl,
    Worker,
}

/// Admin operations, run one at a time on the ioctl thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Job {
    Create,
    Suspend,
    Resume,
    Remove,
    Status,
}

/// A mirror as the kernel holds it.
#[derive(Debug)]
pub(crate) struct Mirror {
    pub table: Table,
    pub luid: Luid,
    pub legs: SharedLegs,
    pub life: Life,
    pub region_size: u64,
    pub region_count: u64,
    pub hint: u64,
    pub in_sync: bool,
    pub log_failure: bool,
    pub recovery_enabled: bool,
    pub hash: BTreeMap<u64, RegionEntry>,
    pub clean_list: Vec<u64>,
    pub marks: Vec<u64>,
    /// Regions set dirty whose writes have not been submitted since: their
    /// MARK is still on its way (queued, sent, or its FLUSH unanswered), so
    /// the kernel cannot write them yet.
    pub unflushed: BTreeSet<u64>,
    pub clears: Vec<u64>,
    /// The region being recovered, and once copying, (what was read, done_at).
    pub recovering: Option<(u64, Option<(crate::legs::Blocks, u64)>)>,
    pub recovered: Vec<(u64, bool)>,
    pub reads: VecDeque<u64>,
    pub writes: VecDeque<Bio>,
    pub requeued: Vec<(u64, Bio)>,
    pub held: Vec<Bio>,
    /// Set when a suspend begins, cleared by RESUME: new bios are held.
    pub io_blocked: bool,
    pub batch: Vec<(Bio, RState)>,
    pub inflight: Vec<InFlight>,
    pub delayed_flush_at: Option<u64>,
    pub woken: bool,
    pub kmirrord: Thread,
    pub ioctl: Thread,
    pub worker: Thread,
    pub jobs: VecDeque<Job>,
    pub status: Option<String>,
    pub status_sync_count: Option<u64>,
    pub writes_done: u64,
}

impl Mirror {
    pub fn new(table: Table, luid: Luid, legs: SharedLegs) -> Mirror {
        Mirror {
            table,
            luid,
            legs,
            life: Life::New,
            region_size: 0,
            region_count: 0,
            hint: 0,
            in_sync: false,
            log_failure: false,
            recovery_enabled: false,
            hash: BTreeMap::new(),
            clean_list: Vec::new(),
            marks: Vec::new(),
            unflushed: BTreeSet::new(),
            clears: Vec::new(),
            recovering: None,
            recovered: Vec::new(),
            reads: VecDeque::new(),
            writes: VecDeque::new(),
            requeued: Vec::new(),
            held: Vec::new(),
            io_blocked: false,
            batch: Vec::new(),
            inflight: Vec::new(),
            delayed_flush_at: None,
            woken: false,
            kmirrord: Thread::default(),
            ioctl: Thread::default(),
            worker: Thread::default(),
            jobs: VecDeque::from([Job::Create]),
            status: None,
            status_sync_count: None,
            writes_done: 0,
        }
    }

    pub fn thread(&mut self, who: Who) -> &mut Thread {
        match who {
            Who::Kmirrord => &mut self.kmirrord,
            Who::Ioctl => &mut self.ioctl,
            Who::Worker => &mut self.worker,
        }
    }

    /// Accepts I/O: dm holds bios while the device is suspended.
    pub fn accepts_io(&self) -> bool {
        self.life == Life::Active && !self.io_blocked && !self.jobs.contains(&Job::Suspend)
    }

    /// Whether no write bio is anywhere between its arrival and its
    /// completion: dm core's suspend waits for exactly that, including bios
    /// kmirrord is in the middle of processing and bios delayed behind a
    /// region's recovery.
    pub fn io_drained(&self) -> bool {
        let in_pipeline = self
            .kmirrord
            .steps
            .iter()
            .any(|s| matches!(s, Step::WriteCheck(_) | Step::WriteState(_) | Step::WriteInc(..) | Step::Submit));
        self.inflight.is_empty()
            && self.writes.is_empty()
            && self.batch.is_empty()
            && self.requeued.is_empty()
            && !in_pipeline
            && self.hash.values().all(|e| e.delayed.is_empty())
    }

    /// Regions with writes between submission and completion.
    pub fn inflight_regions(&self) -> Vec<u64> {
        self.inflight.iter().map(|w| w.region).collect()
    }
}
