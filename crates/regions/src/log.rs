//! One mirror log's replicated state and the rules that change it.
//!
//! Words as in the kernel: a region is *clean* when no node is writing it
//! and its legs are identical (the bit the disk log persists); *in sync*
//! when its legs are identical; *marked* by every instance that announced a
//! write to it and has not cleared it yet.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use wire::{Region, Uuid};

use crate::bitmap::Bitmap;
use crate::command::{Instance, NodeId, Refusal};
use crate::ctr::{CtrArgs, LogType, SyncMode};
use crate::disk::DiskImage;

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

    /// The clean bitmap (what a disk log persists).
    pub fn clean_bits(&self) -> &Bitmap {
        &self.clean
    }

    /// The current clean-bit version (see [`crate::Effect::PersistDiskLog`]).
    pub fn clean_version(&self) -> u64 {
        self.clean_version
    }

    /// Whether a first RESUME has initialised the bitmaps (for a disk log:
    /// from the device). Before that the device must not be written: it
    /// holds the only copy of the log's state.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The node that writes a `clustered-disk` log's device: the lowest
    /// node with an instance of the log (its kernel has the table, so its
    /// host sees the device). One writer at a time, chosen from the
    /// replicated state, so every node agrees on it; `None` when no node
    /// has the log. Later writes carry later versions of the same bitmap,
    /// so one writer's writes never go back in time; see
    /// `docs/architecture.md` for the hand-over between writers.
    pub fn disk_writer(&self) -> Option<NodeId> {
        self.instances.keys().map(|i| i.node).min()
    }

    /// The newest clean-bit version reported durable on the device.
    pub fn disk_version(&self) -> u64 {
        self.disk_version
    }

    /// The newest version whose write failed, unless a write succeeded since.
    pub fn disk_failed_version(&self) -> Option<u64> {
        self.disk_failed_version
    }

    /// The node that reported the last device write.
    pub fn last_disk_writer(&self) -> Option<NodeId> {
        self.last_disk_writer
    }

    /// Records a device write by `node` (see [`crate::Command::DiskLogWritten`]).
    pub(crate) fn disk_written(&mut self, node: NodeId, version: u64, failed: bool) {
        self.last_disk_writer = Some(node);
        if failed {
            self.disk_failed_version = Some(self.disk_failed_version.map_or(version, |v| v.max(version)));
        } else {
            self.disk_version = self.disk_version.max(version);
            self.disk_failed_version = None;
        }
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

    fn set_clean(&mut self, r: Region, v: bool) {
        if self.clean.set(r.0, v) {
            self.clean_version += 1;
        }
    }

    fn set_out_of_sync(&mut self, r: Region) {
        self.sync.set(r.0, false);
        // I3: a clean bit is only ever set for an in-sync region.
        self.set_clean(r, false);
    }

    /// MARK: `i` is about to write these regions. A set per (instance,
    /// region): a repeated MARK is a no-op (spec §3.4).
    pub(crate) fn mark(&mut self, i: Instance, rs: &[Region]) {
        for &r in rs {
            self.marks.entry(r).or_default().insert(i);
            self.set_clean(r, false);
        }
    }

    /// CLEAR: `i` finished writing these regions. A region becomes clean
    /// when its last marker cleared it and it is in sync (I2, I3).
    pub(crate) fn clear(&mut self, i: Instance, rs: &[Region]) {
        for &r in rs {
            self.unmark(i, r);
        }
    }

    fn unmark(&mut self, i: Instance, r: Region) {
        let now_unmarked = match self.marks.get_mut(&r) {
            Some(set) => {
                set.remove(&i);
                set.is_empty()
            }
            None => true,
        };
        if now_unmarked {
            self.marks.remove(&r);
            if self.sync.get(r.0) {
                self.set_clean(r, true);
            }
        }
    }

    /// Regions `i` has marked.
    pub(crate) fn marked_by(&self, i: Instance) -> Vec<Region> {
        self.marks.iter().filter(|(_, who)| who.contains(&i)).map(|(r, _)| *r).collect()
    }

    /// DTR: the kernel destroys a table only after all its I/O drained, so
    /// marks it still holds are writes that completed on every leg whose
    /// CLEAR was not sent; they are cleared (a failed leg write would have
    /// set the region out of sync first).
    pub(crate) fn destroy_instance(&mut self, i: Instance) {
        let rs = self.marked_by(i);
        self.clear(i, &rs);
        self.assignments.remove(&i);
        self.halted_passes.remove(&i);
        self.instances.remove(&i);
    }

    /// Eviction of `i` (its node died): every region it marked may differ
    /// between legs, so it goes out of sync for the survivors to resync
    /// (I10). Returns the regions that were in sync and no longer are.
    pub(crate) fn evict_instance(&mut self, i: Instance) -> Vec<Region> {
        let rs = self.marked_by(i);
        let mut changed = Vec::new();
        for &r in &rs {
            if let Some(set) = self.marks.get_mut(&r) {
                set.remove(&i);
                if set.is_empty() {
                    self.marks.remove(&r);
                }
            }
            if self.sync.get(r.0) {
                changed.push(r);
            }
            self.set_out_of_sync(r);
        }
        // A dead recoverer's region stays out of sync and is handed out again.
        self.assignments.remove(&i);
        // Its unmarked writes died with it.
        self.halted_passes.remove(&i);
        self.instances.remove(&i);
        changed
    }

    /// The first RESUME of the log initialises its bitmaps; for a disk log
    /// from what the device holds (I11). Later resumes keep the replicated
    /// state, which is newer than anything on disk.
    pub(crate) fn activate(&mut self, disk: Option<&DiskImage>) -> bool {
        if self.activated {
            return false;
        }
        self.activated = true;
        if !self.is_disk() {
            return false;
        }
        let n = self.region_count();
        let fresh = DiskImage::Fresh { reason: "no image supplied".into() };
        let clean = disk.unwrap_or(&fresh).initial_clean(n, self.args.sync);
        self.sync = clean.clone();
        self.clean = clean;
        self.clean_version += 1;
        // Marks made before the first resume keep their regions dirty (I2).
        let marked: Vec<Region> = self.marks.keys().copied().collect();
        for r in marked {
            self.set_clean(r, false);
        }
        true
    }

    /// Whether any instance can recover regions (resumed, not suspending).
    pub(crate) fn recovery_running(&self) -> bool {
        self.instances.values().any(|s| s.phase == Phase::Resumed)
    }

    /// GET_RESYNC_WORK for `i`: the region it already holds (a kernel
    /// re-send gets the same answer, I9), else the lowest out-of-sync region
    /// that no other instance recovers, whose recovery has not failed since
    /// the last resume, and that no other instance has marked (a node that
    /// may still be writing a region must finish before it is copied).
    pub(crate) fn resync_work(&mut self, i: Instance) -> Option<Region> {
        if self.instances.get(&i).map(|s| s.phase) != Some(Phase::Resumed) {
            return None;
        }
        if let Some(&r) = self.assignments.get(&i) {
            return Some(r);
        }
        let found = self.resync_candidates().find(|r| {
            self.marks.get(r).is_none_or(|who| who.iter().all(|m| *m == i)) && !self.reserved_for_others(*r, i)
        });
        if let Some(r) = found {
            self.assignments.insert(i, r);
        }
        found
    }

    /// SET_REGION_SYNC from `i`. In sync is only believed from the instance
    /// that holds the region's assignment: a re-send that arrives after the
    /// assignment was released (possibly after the region went out of sync
    /// again through an eviction) must not mark it in sync. Out of sync is
    /// always believed.
    pub(crate) fn set_region_sync(&mut self, i: Instance, r: Region, in_sync: bool) {
        let assigned = self.assignments.get(&i) == Some(&r);
        if assigned {
            self.assignments.remove(&i);
        }
        if in_sync {
            if assigned && self.copied_by(r, i) {
                self.sync.set(r.0, true);
                self.recovery_failed.remove(&r);
            }
        } else {
            // A failed write: the legs really differ, in acknowledged data.
            self.set_out_of_sync(r);
            self.unsettled.remove(&r);
            if assigned {
                self.recovery_failed.insert(r);
            }
        }
    }

    /// Lowest region that is or may become subject to recovery, or the
    /// region count when none is (I7).
    pub fn in_sync_hint(&self) -> u64 {
        self.sync.next_zero(0).unwrap_or(self.region_count())
    }

    /// The hint IS_REMOTE_RECOVERING gives `node`'s kernel: the lowest
    /// out-of-sync region, but one that skips the unsettled regions while
    /// the kernel still writes behind a stale hint. None of them can become
    /// resync work before that kernel's next RESUME (which resets its hint):
    /// they wait for every survivor's resume, its own included. And it is
    /// told they are in sync and not recovering anyway, so a lower hint
    /// only sends each of its writes above it through the kernel's
    /// IS_REMOTE_RECOVERING throttle (one query per 250 ms per host): a
    /// backlog that its kick's suspend must then drain at four writes a
    /// second, while every other survivor's kick and the resync wait.
    /// (One exception: a failed write's SET_REGION_SYNC(r, 0) takes r out
    /// of the unsettled set at once; a kernel that keeps a hint above r
    /// then writes r without asking, exposed as any kernel behind a stale
    /// hint already is, until its kick. It needs a leg failing mid-kick.)
    pub fn in_sync_hint_for(&self, node: NodeId) -> u64 {
        if self.unsettled.is_empty() || !self.writes_behind_stale_hint(node) {
            return self.in_sync_hint();
        }
        self.sync.zeros_iter().find(|r| !self.unsettled.contains(&Region(*r))).unwrap_or(self.region_count())
    }

    /// Whether `node`'s kernel may still write unsettled regions behind a
    /// stale hint (it has not resumed since the eviction).
    pub fn writes_behind_stale_hint(&self, node: NodeId) -> bool {
        self.awaiting_resume.contains(&node)
    }

    /// IS_REMOTE_RECOVERING from `node`: writes to an out-of-sync region
    /// are held while some instance can recover it (I6); with recovery
    /// halted everywhere they pass, or a suspend would hang on its own
    /// writes. An unsettled region is held only from kernels that already
    /// resumed; the others still have to drain their writes to finish the
    /// suspend that resets their hint (see [`Log::unsettled`]).
    pub fn is_remote_recovering(&self, r: Region, node: NodeId) -> bool {
        let unsettled_here = self.unsettled.contains(&r) && self.writes_behind_stale_hint(node);
        !self.sync.get(r.0) && !self.recovery_failed.contains(&r) && !unsettled_here && self.recovery_running()
    }

    /// IS_REMOTE_RECOVERING from instance `i`: as
    /// [`Log::is_remote_recovering`], except that a kernel let through to a
    /// region before is let through again (see [`Log::halted_passes`]).
    pub fn remote_recovering(&self, r: Region, i: Instance) -> bool {
        !self.passed(r, i) && self.is_remote_recovering(r, i.node)
    }

    /// IN_SYNC: the sync bit, except for unsettled regions, which every
    /// kernel is told are in sync (see [`Log::unsettled`]).
    pub fn in_sync_answer(&self, r: Region) -> bool {
        self.sync.get(r.0) || self.unsettled.contains(&r)
    }

    /// Nodes whose kernels must resume before an eviction's regions are
    /// resynced.
    pub fn awaiting_resume(&self) -> &BTreeSet<NodeId> {
        &self.awaiting_resume
    }

    /// The node whose kernel is being kicked now (suspended and resumed to
    /// drop its cached hint), if any.
    pub fn kicking(&self) -> Option<NodeId> {
        self.kicking
    }

    /// Regions an eviction put out of sync, not resynced until every
    /// survivor's kernel has resumed.
    pub fn unsettled(&self) -> &BTreeSet<Region> {
        &self.unsettled
    }

    /// An eviction put `regions` out of sync behind the hints of
    /// `survivors`. Returns the survivor to kick now, if none is being
    /// kicked already.
    pub(crate) fn unsettle(&mut self, regions: &[Region], survivors: BTreeSet<NodeId>) -> Option<NodeId> {
        if survivors.is_empty() {
            return None;
        }
        self.unsettled.extend(regions.iter().copied());
        for n in survivors {
            self.suspended_since.remove(&n);
            if self.awaiting_resume.insert(n) {
                self.kick_queue.push(n);
            }
        }
        self.next_kick()
    }

    fn next_kick(&mut self) -> Option<NodeId> {
        if self.kicking.is_some() || self.kick_queue.is_empty() {
            return None;
        }
        let n = self.kick_queue.remove(0);
        self.kicking = Some(n);
        Some(n)
    }

    /// Node `n`'s kernel resumed (or `n` is gone): it no longer writes
    /// behind a stale hint. With every survivor resumed, the unsettled
    /// regions become ordinary resync work. Returns the next survivor to
    /// kick, if any.
    pub(crate) fn node_settled(&mut self, n: NodeId) -> Option<NodeId> {
        self.awaiting_resume.remove(&n);
        self.suspended_since.remove(&n);
        self.kick_queue.retain(|q| *q != n);
        if self.kicking == Some(n) {
            self.kicking = None;
        }
        if self.awaiting_resume.is_empty() {
            self.unsettled.clear();
        }
        self.next_kick()
    }

    /// Whether instance `i` let writes through to `r` and has not copied
    /// it since (see [`Log::halted_passes`]).
    pub(crate) fn passed(&self, r: Region, i: Instance) -> bool {
        self.halted_passes.get(&i).is_some_and(|rs| rs.contains(&r))
    }

    /// Whether `r` may be copied only by instances other than `i`: some
    /// instance let writes through to it and `i` did not (see
    /// [`Log::halted_passes`]).
    pub(crate) fn reserved_for_others(&self, r: Region, i: Instance) -> bool {
        !self.passed(r, i) && self.halted_passes.values().any(|rs| rs.contains(&r))
    }

    /// IS_REMOTE_RECOVERING from `i` on its write path: the answer, and a
    /// record of the pass when it lets a write through to an out-of-sync
    /// region (see [`Log::halted_passes`]).
    pub(crate) fn remote_recovering_for_write(&mut self, r: Region, i: Instance) -> bool {
        if self.sync.get(r.0) || self.passed(r, i) {
            return false;
        }
        let recovering = self.is_remote_recovering(r, i.node);
        // A kernel behind a stale hint is told IN_SYNC = 1 for an unsettled
        // region until it has resumed, which its suspend (draining this
        // write) comes before: its write is marked and goes to both legs.
        let marked_pass = self.unsettled.contains(&r) && self.writes_behind_stale_hint(i.node);
        if !recovering && !marked_pass {
            self.halted_passes.entry(i).or_default().insert(r);
        }
        recovering
    }

    /// Instance `i` copied `r`: its kernel dropped its region-hash entry.
    /// Returns whether the region may be in sync now (no other instance let
    /// writes through to it since its last copy).
    fn copied_by(&mut self, r: Region, i: Instance) -> bool {
        if let Some(rs) = self.halted_passes.get_mut(&i) {
            rs.remove(&r);
            if rs.is_empty() {
                self.halted_passes.remove(&i);
            }
        }
        !self.halted_passes.values().any(|rs| rs.contains(&r))
    }

    /// Node `n`'s kernel suspended (POSTSUSPEND).
    pub(crate) fn node_suspended(&mut self, n: NodeId) {
        if self.awaiting_resume.contains(&n) {
            self.suspended_since.insert(n);
        }
    }

    /// Node `n`'s kernel resumed: it settles if it suspended since it was
    /// put behind a stale hint (see [`Log::suspended_since`]).
    pub(crate) fn node_resumed(&mut self, n: NodeId) -> Option<NodeId> {
        if self.awaiting_resume.contains(&n) && !self.suspended_since.contains(&n) {
            return None;
        }
        self.node_settled(n)
    }

    /// Whether GET_RESYNC_WORK from some resumed instance would hand out a
    /// region now (marks and reservations counted).
    pub(crate) fn claimable_work(&self) -> bool {
        let resumed: Vec<Instance> =
            self.instances.iter().filter(|(_, s)| s.phase == Phase::Resumed).map(|(i, _)| *i).collect();
        if resumed.is_empty() {
            return false;
        }
        self.resync_candidates().any(|r| {
            resumed.iter().any(|&i| {
                !self.assignments.contains_key(&i)
                    && self.marks.get(&r).is_none_or(|who| who.iter().all(|m| *m == i))
                    && !self.reserved_for_others(r, i)
            })
        })
    }

    /// Whether some out-of-sync region could be handed out for resync now.
    pub(crate) fn has_resync_work(&self) -> bool {
        self.resync_candidates().next().is_some()
    }

    /// Out-of-sync regions in increasing order that nobody recovers, whose
    /// recovery has not failed since the last resume, and that are not
    /// unsettled: what GET_RESYNC_WORK may hand out (marks aside).
    fn resync_candidates(&self) -> impl Iterator<Item = Region> + '_ {
        let taken: BTreeSet<Region> = self.assignments.values().copied().collect();
        self.sync
            .zeros_iter()
            .map(Region)
            .filter(move |r| !taken.contains(r) && !self.recovery_failed.contains(r) && !self.unsettled.contains(r))
    }

    /// Nodes with an instance but no active one, other than `except`.
    pub(crate) fn inactive_nodes_except(&self, except: NodeId) -> BTreeSet<NodeId> {
        let active = self.active_nodes();
        self.instances.keys().map(|i| i.node).filter(|n| *n != except && !active.contains(n)).collect()
    }

    /// An eviction put `regions` out of sync while `nodes` had no active
    /// instance (see [`Log::behind_next_resume`]).
    pub(crate) fn remember_for_resume(&mut self, regions: &[Region], nodes: BTreeSet<NodeId>) {
        for n in nodes {
            self.behind_next_resume.entry(n).or_default().extend(regions.iter().copied());
        }
    }

    /// Node `n` resumed: the regions remembered for its resume that are
    /// still out of sync become unsettled behind its hint, their copies
    /// under way are disowned, and it is queued for a kick. Returns the
    /// node to kick now, if any.
    pub(crate) fn unsettle_behind_resume(&mut self, n: NodeId) -> Option<NodeId> {
        let regions: Vec<Region> = self
            .behind_next_resume
            .remove(&n)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !self.sync.get(r.0))
            .collect();
        if regions.is_empty() {
            return None;
        }
        self.assignments.retain(|_, r| !regions.contains(r));
        self.unsettle(&regions, BTreeSet::from([n]))
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

    /// The regions node `n`'s kernel may write behind a stale hint after
    /// it comes back without a reboot, with their recovery assignments
    /// released (a copy under way could race such a write, so its
    /// SET_REGION_SYNC will not be believed and the region is copied again
    /// later; see [`crate::Command::StaleHints`]): the out-of-sync regions
    /// it marks (its own eviction put them out of sync) and those still
    /// unsettled by other evictions. Regions that were out of sync before
    /// it went away are below the hint it last got (I7): it asks about
    /// them and gets the true answer, so they are left alone (counting
    /// them as unsettled would tell it and the survivors IN_SYNC = 1 for
    /// regions whose legs may differ in old data).
    pub(crate) fn disown_behind_stale_hint(&mut self, n: NodeId) -> Vec<Region> {
        let mut regions: BTreeSet<Region> = self.unsettled.clone();
        for (r, who) in &self.marks {
            if who.iter().any(|i| i.node == n) && !self.sync.get(r.0) {
                regions.insert(*r);
            }
        }
        self.assignments.retain(|_, r| !regions.contains(r));
        regions.into_iter().collect()
    }

    /// A full resync: every region goes out of sync. Returns the regions
    /// that were in sync. Marks and recovery assignments stay: a marked
    /// region is copied once its writers clear it, and a copy under way
    /// still ends with the legs identical.
    pub(crate) fn resync_all(&mut self) -> Vec<Region> {
        let changed: Vec<Region> = (0..self.region_count()).map(Region).filter(|r| self.sync.get(r.0)).collect();
        for &r in &changed {
            self.set_out_of_sync(r);
        }
        changed
    }

    /// Active instances on nodes other than `except`, one per node.
    pub(crate) fn active_nodes_except(&self, except: NodeId) -> BTreeSet<NodeId> {
        self.instances.iter().filter(|(i, s)| i.node != except && s.phase.is_active()).map(|(i, _)| i.node).collect()
    }
}
