//! One mirror log's replicated state and the rules that change it.
//!
//! Words as in the kernel: a region is *clean* when no node is writing it
//! and its legs are identical (the bit the disk log persists); *in sync*
//! when its legs are identical; *marked* by every instance that announced a
//! write to it and has not cleared it yet.
//!
//! The state is here, with its read accessors; the rules are split by
//! concern:
//!
//! * [`marks`](self::marks): MARK, CLEAR, the clean and sync bits, a table
//!   destroyed;
//! * [`recovery`](self::recovery): resync work, SET_REGION_SYNC, the
//!   in-sync hint and IS_REMOTE_RECOVERING, writes let through while
//!   recovery is halted;
//! * [`eviction`](self::eviction): what an eviction leaves behind (the
//!   unsettled regions, the kicks, the survivors' resumes, stale hints);
//! * [`disk`](self::disk): a `clustered-disk` log's device (first
//!   activation, the writer, durable versions).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use wire::{Region, Uuid};

use crate::bitmap::Bitmap;
use crate::command::{Instance, NodeId, Refusal};
use crate::ctr::{CtrArgs, LogType, SyncMode};

mod disk;
mod eviction;
mod marks;
mod recovery;

/// Where one log instance is in the device-mapper suspend cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Constructed, never resumed (or resumed before a table reload swapped it).
    Constructed,
    /// Resumed: I/O and recovery run.
    Resumed,
    /// PRESUSPEND seen: recovery stopped, I/O still draining.
    Presuspended,
    /// POSTSUSPEND seen: no I/O, late CLEAR/FLUSH may still come (I14).
    Suspended,
}

impl Phase {
    /// Whether this instance's kernel may still issue or recover writes.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Resumed | Phase::Presuspended)
    }

    /// Lower-case name for status output.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Constructed => "constructed",
            Phase::Resumed => "resumed",
            Phase::Presuspended => "presuspended",
            Phase::Suspended => "suspended",
        }
    }
}

/// One kernel table's view of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    /// Suspend-cycle phase.
    pub phase: Phase,
    /// This instance's constructor arguments (its device token is host-local).
    pub args: CtrArgs,
    /// Whether it was ever resumed (a never-resumed instance may be replaced
    /// by a CTR with the same luid, spec §3.2).
    pub ever_resumed: bool,
}

/// The replicated state of one mirror log (one uuid), across all nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    pub(crate) uuid: Uuid,
    /// Geometry and type, from the constructor that created the log.
    pub(crate) args: CtrArgs,
    pub(crate) clean: Bitmap,
    pub(crate) sync: Bitmap,
    /// Who marks each dirty region: a set per (instance, region), I2.
    pub(crate) marks: BTreeMap<Region, BTreeSet<Instance>>,
    pub(crate) instances: BTreeMap<Instance, InstanceState>,
    /// Regions being recovered, at most one per instance and one instance
    /// per region (I6, I9).
    pub(crate) assignments: BTreeMap<Instance, Region>,
    /// Regions an instance claimed ahead for its next GET_RESYNC_WORKs
    /// (see [`Log::resync_work`]), which its own node may hand out
    /// without a Raft round ([`Log::claimed_work`]). To every other
    /// instance a claimed region is as good as assigned: never handed to
    /// them, released as an assignment is.
    pub(crate) claims: BTreeMap<Instance, BTreeSet<Region>>,
    /// Regions whose recovery failed; not handed out again until a RESUME,
    /// as the kernel's own logs do (retrying a dead leg at once would loop).
    pub(crate) recovery_failed: BTreeSet<Region>,
    /// Whether a first RESUME has initialised the bitmaps (reads the disk
    /// of a `clustered-disk` log, I11).
    pub(crate) activated: bool,
    /// Bumped on every clean-bit change; a disk log is durable up to a version.
    pub(crate) clean_version: u64,
    /// The newest clean-bit version reported durable on the log device.
    pub(crate) disk_version: u64,
    /// The newest version whose write failed, if no write has succeeded
    /// since (`D` in STATUS_INFO while set).
    pub(crate) disk_failed_version: Option<u64>,
    /// The node that reported the last device write.
    pub(crate) last_disk_writer: Option<NodeId>,
    /// Nodes whose kernels were told to resume after an eviction put
    /// regions out of sync behind their cached `in_sync_hint`, and have not
    /// resumed yet.
    pub(crate) awaiting_resume: BTreeSet<NodeId>,
    /// Those of `awaiting_resume` whose kernel has suspended (POSTSUSPEND)
    /// since: only a RESUME after such a suspend was prepared after the
    /// eviction. A RESUME that was on its way during the eviction (its
    /// kernel reset its hint before, and a GET_SYNC_COUNT answer may have
    /// raised it to region_count since) settles nothing.
    pub(crate) suspended_since: BTreeSet<NodeId>,
    /// Regions an eviction put out of sync while some survivor has not yet
    /// resumed. Such a kernel may write them without asking
    /// IS_REMOTE_RECOVERING (its hint is stale), so until every survivor
    /// has resumed no resync copy of them starts (it could race such a
    /// write). A kernel that has not resumed yet gets its writes to them
    /// through (a held write would stop the very suspend that resets its
    /// hint), and every kernel gets IN_SYNC = 1 for them, so that writes to
    /// them go to both legs and are marked rather than leaving a NOSYNC
    /// entry in a region hash that would outlive the resync; a suspend
    /// drains them before its kernel resumes. A kernel that has resumed is
    /// held off them like any out-of-sync region while recovery runs; when
    /// recovery is halted everywhere its writes pass too, marked, to both
    /// legs. Their legs can differ only in blocks of the evicted node's
    /// unacknowledged writes, which may read back old or new, as after any
    /// crash: never in a block some live kernel wrote to one leg only.
    pub(crate) unsettled: BTreeSet<Region>,
    /// Survivors still to be kicked, one at a time: while one kernel is
    /// suspended the others stay resumed, so recovery keeps running and
    /// writes to out-of-sync regions are held rather than written to the
    /// default leg only (which would leave NOSYNC region-hash entries that
    /// outlive another node's resync of the region).
    pub(crate) kick_queue: Vec<NodeId>,
    /// The survivor being kicked now.
    pub(crate) kicking: Option<NodeId>,
    /// Out-of-sync regions whose writes from an instance were let through
    /// (IS_REMOTE_RECOVERING = 0: recovery halted everywhere, where holding
    /// the write would hang that kernel's own suspend; or nobody may
    /// recover the region now). Its kernel may then keep a NOSYNC entry for
    /// the region in its region hash, and such an entry lives until that
    /// kernel recovers the region itself (or its table goes): every write
    /// it makes there meanwhile goes to the default leg only, unmarked,
    /// even after another node's copy made the region in sync. So such a
    /// region is copied only by an instance that let writes through to it
    /// (it never races its own writes: the kernel quiesces a region before
    /// copying it), is in sync only once each such instance has copied it,
    /// and its passers' further writes pass too (holding them would hang a
    /// suspend that nothing else can finish).
    pub(crate) halted_passes: BTreeMap<Instance, BTreeSet<Region>>,
    /// Regions an eviction put out of sync while the node's instance was
    /// not active (constructed, or suspended). Its next RESUME may have
    /// been prepared before the eviction, and its kernel's hint raised since
    /// by a GET_SYNC_COUNT answer (a new table's first pass runs before its
    /// RESUME is answered, and that RESUME may be a re-send): so at that
    /// RESUME the regions still out of sync are unsettled behind its hint
    /// and it is kicked (the 10,000-seed run, seed 3128: a rebooted node's
    /// RESUME, delayed by an election across another node's eviction,
    /// left its kernel writing an out-of-sync region to one leg).
    pub(crate) behind_next_resume: BTreeMap<NodeId, BTreeSet<Region>>,
    /// The regions each node's evictions put out of sync (all it had
    /// marked then), with the kernel boot they were evicted from, until
    /// that node's next stale-hints notice (used only if it comes from the
    /// same boot: a rebooted kernel has no stale hint). Its kernel counted
    /// them in sync: a mark whose CLEAR was acknowledged and not yet
    /// committed at the eviction is out of sync now, but its rejoin does not
    /// mark it again (the kernel holds it clean), and behind a stale hint
    /// the kernel may write it to one leg without asking.
    pub(crate) evicted_marks: BTreeMap<NodeId, (u64, BTreeSet<Region>)>,
}

impl Log {
    pub(crate) fn new(uuid: Uuid, args: CtrArgs) -> Log {
        let n = args.region_count();
        // A new log starts out of sync unless the table says `nosync`; a disk
        // log replaces this with what its device holds at the first RESUME.
        let bits = if args.sync == SyncMode::NoSync { Bitmap::ones(n) } else { Bitmap::zeros(n) };
        Log {
            uuid,
            args,
            clean: bits.clone(),
            sync: bits,
            marks: BTreeMap::new(),
            instances: BTreeMap::new(),
            assignments: BTreeMap::new(),
            claims: BTreeMap::new(),
            recovery_failed: BTreeSet::new(),
            activated: false,
            clean_version: 0,
            disk_version: 0,
            disk_failed_version: None,
            last_disk_writer: None,
            awaiting_resume: BTreeSet::new(),
            suspended_since: BTreeSet::new(),
            unsettled: BTreeSet::new(),
            kick_queue: Vec::new(),
            kicking: None,
            halted_passes: BTreeMap::new(),
            behind_next_resume: BTreeMap::new(),
            evicted_marks: BTreeMap::new(),
        }
    }

    /// The log's uuid.
    pub fn uuid(&self) -> &Uuid {
        &self.uuid
    }

    /// Geometry and type.
    pub fn args(&self) -> &CtrArgs {
        &self.args
    }

    /// Number of regions.
    pub fn region_count(&self) -> u64 {
        self.sync.len()
    }

    /// Regions whose legs are identical.
    pub fn sync_count(&self) -> u64 {
        self.sync.count_ones()
    }

    /// Whether region `r` is in sync.
    pub fn in_sync(&self, r: Region) -> bool {
        self.sync.get(r.0)
    }

    /// Whether region `r` is clean.
    pub fn is_clean(&self, r: Region) -> bool {
        self.clean.get(r.0)
    }

    /// Marked regions and their markers.
    pub fn marks(&self) -> &BTreeMap<Region, BTreeSet<Instance>> {
        &self.marks
    }

    /// Log instances on all nodes.
    pub fn instances(&self) -> &BTreeMap<Instance, InstanceState> {
        &self.instances
    }

    /// Regions being recovered and by whom.
    pub fn assignments(&self) -> &BTreeMap<Instance, Region> {
        &self.assignments
    }

    /// Regions claimed ahead for resync and by whom.
    pub fn claims(&self) -> &BTreeMap<Instance, BTreeSet<Region>> {
        &self.claims
    }

    /// Instance `i` recovers nothing any more (it suspended, was destroyed
    /// or evicted): its assignment and claims are released.
    pub(crate) fn release_recovery(&mut self, i: Instance) {
        self.assignments.remove(&i);
        if crate::breaks::off("no-claim-release") {
            return;
        }
        self.claims.remove(&i);
    }

    /// No copy of `regions` may be under way or start from an earlier
    /// decision: assignments and claims of them are released (their
    /// SET_REGION_SYNC will not be believed).
    pub(crate) fn release_regions(&mut self, regions: &[Region]) {
        self.assignments.retain(|_, r| !regions.contains(r));
        if crate::breaks::off("no-claim-release") {
            return;
        }
        for rs in self.claims.values_mut() {
            rs.retain(|r| !regions.contains(r));
        }
        self.claims.retain(|_, rs| !rs.is_empty());
    }

    /// The clean bitmap (what a disk log persists).
    pub fn clean_bits(&self) -> &Bitmap {
        &self.clean
    }

    /// The current clean-bit version (see [`crate::Effect::PersistDiskLog`]).
    pub fn clean_version(&self) -> u64 {
        self.clean_version
    }

    /// Whether this is a `clustered-disk` log.
    pub fn is_disk(&self) -> bool {
        matches!(self.args.log_type, LogType::Disk { .. })
    }

    pub(crate) fn check_region(&self, r: Region) -> Result<(), Refusal> {
        if r.0 < self.region_count() {
            Ok(())
        } else {
            Err(Refusal::RegionOutOfRange { region: r, count: self.region_count() })
        }
    }

    pub(crate) fn check_regions(&self, rs: &[Region]) -> Result<(), Refusal> {
        rs.iter().try_for_each(|&r| self.check_region(r))
    }

    /// Nodes with an instance but no active one, other than `except`.
    pub(crate) fn inactive_nodes_except(&self, except: NodeId) -> BTreeSet<NodeId> {
        let active = self.active_nodes();
        self.instances.keys().map(|i| i.node).filter(|n| *n != except && !active.contains(n)).collect()
    }

    /// Nodes with a resumed instance.
    pub(crate) fn resumed_nodes(&self) -> BTreeSet<NodeId> {
        self.instances.iter().filter(|(_, s)| s.phase == Phase::Resumed).map(|(i, _)| i.node).collect()
    }

    /// Nodes with a resumed instance, other than `except`.
    pub(crate) fn resumed_nodes_except(&self, except: NodeId) -> BTreeSet<NodeId> {
        self.instances
            .iter()
            .filter(|(i, s)| i.node != except && s.phase == Phase::Resumed)
            .map(|(i, _)| i.node)
            .collect()
    }

    /// Nodes with an active instance.
    pub(crate) fn active_nodes(&self) -> BTreeSet<NodeId> {
        self.instances.iter().filter(|(_, s)| s.phase.is_active()).map(|(i, _)| i.node).collect()
    }

    /// Active instances on nodes other than `except`, one per node.
    pub(crate) fn active_nodes_except(&self, except: NodeId) -> BTreeSet<NodeId> {
        self.instances.iter().filter(|(i, s)| i.node != except && s.phase.is_active()).map(|(i, _)| i.node).collect()
    }
}
