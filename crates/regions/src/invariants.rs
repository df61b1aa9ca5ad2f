//! The invariants of spec §7, one named check each.
//!
//! State checks look at the replicated state alone and run after every
//! command in debug builds and tests ([`check_machine`]). Reply checks look
//! at an answer next to the state it came from ([`check_answer`]). The
//! invariants that need a history of what the kernel was told (I1 durable
//! before acknowledged, I4 per-node order, I5 legs equal when reported in
//! sync, I12 re-sends, I14 late requests) are checked from outside the
//! machine by the kernel simulator's checker and the cluster simulation.

use std::collections::BTreeSet;
use std::fmt;

use wire::{Answer, Region, Uuid};

use crate::command::{Instance, Query};
use crate::limits::{MAX_REGION_COUNT, MIN_REGION_SIZE};
use crate::log::{Log, Phase};
use crate::machine::Machine;

/// A broken invariant: which one, where, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The spec's invariant id, `"I2"` etc.
    pub id: &'static str,
    /// The log, if the invariant is about one.
    pub uuid: Option<Uuid>,
    /// The region, if the invariant is about one.
    pub region: Option<Region>,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated", self.id)?;
        if let Some(u) = &self.uuid {
            write!(f, " in log {u}")?;
        }
        if let Some(r) = self.region {
            write!(f, " at region {r}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

fn fail(id: &'static str, log: &Log, region: Option<Region>, detail: impl Into<String>) -> Result<(), Violation> {
    Err(Violation { id, uuid: Some(log.uuid().clone()), region, detail: detail.into() })
}

/// I1, from the kernel's side: a region a kernel is writing (its data went
/// out after a FLUSH was acknowledged) is not clean in the log. Needs to
/// know what the kernel writes, so it is run by the simulators, not by
/// [`check_machine`].
pub fn i01_written_regions_not_clean(log: &Log, writing: &[Region]) -> Result<(), Violation> {
    match writing.iter().find(|r| log.is_clean(**r)) {
        Some(r) => fail("I1", log, Some(*r), "clean while a kernel writes it after an acknowledged flush"),
        None => Ok(()),
    }
}

/// I2: a region marked by any instance is not clean, and a mark set is never
/// empty (an unmarked region has no entry).
pub fn i02_marked_regions_not_clean(log: &Log) -> Result<(), Violation> {
    for (r, who) in log.marks() {
        if who.is_empty() {
            return fail("I2", log, Some(*r), "empty mark set kept");
        }
        if log.is_clean(*r) {
            return fail("I2", log, Some(*r), format!("clean while marked by {who:?}"));
        }
        log.check_region(*r).or_else(|_| fail("I2", log, Some(*r), "mark beyond region_count"))?;
    }
    Ok(())
}

/// I3: a clean bit is only set for an in-sync region.
pub fn i03_clean_implies_in_sync(log: &Log) -> Result<(), Violation> {
    match log.sync.zeros_iter().find(|&r| log.clean.get(r)) {
        Some(r) => fail("I3", log, Some(Region(r)), "clean but out of sync"),
        None => Ok(()),
    }
}

/// I6: at most one instance recovers a given region, and each instance
/// recovers at most one region (the kernel's `MAX_RECOVERY = 1`).
pub fn i06_one_recoverer_per_region(log: &Log) -> Result<(), Violation> {
    let mut seen = BTreeSet::new();
    for (i, r) in log.assignments() {
        if !seen.insert(*r) {
            return fail("I6", log, Some(*r), format!("assigned twice (also to {i})"));
        }
    }
    // A claim is a future assignment: nobody else's.
    for (i, rs) in log.claims() {
        if let Some(r) = rs.iter().find(|r| !seen.insert(**r)) {
            return fail("I6", log, Some(*r), format!("claimed by {i} and assigned or claimed elsewhere"));
        }
    }
    Ok(())
}

/// I8: the sync count is the number of in-sync regions below region_count,
/// and both bitmaps cover exactly region_count regions.
pub fn i08_sync_count_in_range(log: &Log) -> Result<(), Violation> {
    let n = log.region_count();
    if log.clean.len() != n || log.sync.len() != n {
        return fail(
            "I8",
            log,
            None,
            format!("bitmaps of {} and {} bits for {n} regions", log.clean.len(), log.sync.len()),
        );
    }
    if log.sync_count() > n {
        return fail("I8", log, None, format!("sync count {} > {n}", log.sync_count()));
    }
    Ok(())
}

/// I9: an assigned or claimed region is below region_count, out of sync,
/// and held by a resumed instance of the log.
pub fn i09_assignments_recoverable(log: &Log) -> Result<(), Violation> {
    for (i, rs) in log.claims() {
        for r in rs {
            if r.0 >= log.region_count() || log.in_sync(*r) {
                return fail("I9", log, Some(*r), format!("claimed by {i} but in sync or out of range"));
            }
        }
        if log.instances().get(i).map(|s| s.phase) != Some(Phase::Resumed) {
            return fail("I9", log, rs.first().copied(), format!("claimed by {i}, which is not resumed"));
        }
    }
    for (i, r) in log.assignments() {
        if r.0 >= log.region_count() {
            return fail("I9", log, Some(*r), "assigned beyond region_count");
        }
        if log.in_sync(*r) {
            return fail("I9", log, Some(*r), format!("in sync but still assigned to {i}"));
        }
        if log.instances().get(i).map(|s| s.phase) != Some(Phase::Resumed) {
            return fail("I9", log, Some(*r), format!("assigned to {i}, which is not resumed"));
        }
    }
    Ok(())
}

/// I10: no log instance (and so no mark or assignment) belongs to a node
/// that is not a member: an evicted node's marks were turned into resync work.
pub fn i10_no_instances_of_departed_nodes(machine: &Machine) -> Result<(), Violation> {
    for log in machine.logs().values() {
        if let Some(i) = log.instances().keys().find(|i| !machine.members().contains_key(&i.node)) {
            return fail("I10", log, None, format!("instance {i} of a departed node"));
        }
        for (r, who) in log.marks() {
            if let Some(i) = who.iter().find(|i| !log.instances().contains_key(i)) {
                return fail("I10", log, Some(*r), format!("marked by {i}, which has no instance"));
            }
        }
        if let Some((i, r)) = log.assignments().iter().find(|(i, _)| !log.instances().contains_key(i)) {
            return fail("I10", log, Some(*r), format!("assigned to {i}, which has no instance"));
        }
        if !log.unsettled().is_empty() && log.awaiting_resume().is_empty() {
            return fail("I10", log, None, "unsettled regions with no survivor left to wait for");
        }
        if let Some(r) = log.unsettled().iter().find(|r| log.in_sync(**r)) {
            return fail("I10", log, Some(*r), "unsettled but in sync");
        }
        if let Some((i, r)) = log.assignments().iter().find(|(_, r)| log.unsettled().contains(r)) {
            return fail("I10", log, Some(*r), format!("unsettled region being recovered by {i}"));
        }
        for (i, rs) in log.claims() {
            if let Some(r) = rs.iter().find(|r| log.unsettled().contains(r)) {
                return fail("I10", log, Some(*r), format!("unsettled region claimed by {i}"));
            }
        }
    }
    Ok(())
}

/// I11: every instance of a log sees the same regions (geometry and type).
pub fn i11_instances_share_geometry(log: &Log) -> Result<(), Violation> {
    match log.instances().iter().find(|(_, s)| !s.args.same_geometry(log.args())) {
        Some((i, s)) => fail("I11", log, None, format!("instance {i} has geometry {} vs {}", s.args, log.args())),
        None => Ok(()),
    }
}

/// I13: the region size is a power of two of at least 2 sectors, and the
/// region count matches the target length and the limit.
pub fn i13_geometry_valid(log: &Log) -> Result<(), Violation> {
    let a = log.args();
    if !a.region_size.is_power_of_two() || a.region_size < MIN_REGION_SIZE {
        return fail("I13", log, None, format!("region size {}", a.region_size));
    }
    if a.region_count() != log.region_count() || log.region_count() > MAX_REGION_COUNT {
        return fail("I13", log, None, format!("region count {} for {}", log.region_count(), a));
    }
    Ok(())
}

/// Every state invariant of one log.
pub fn check_log(log: &Log) -> Result<(), Violation> {
    i02_marked_regions_not_clean(log)?;
    i03_clean_implies_in_sync(log)?;
    i06_one_recoverer_per_region(log)?;
    i06_no_copy_under_an_unmarked_write(log)?;
    i08_sync_count_in_range(log)?;
    i09_assignments_recoverable(log)?;
    i11_instances_share_geometry(log)?;
    i13_geometry_valid(log)
}

/// I6: a region some kernel was let write unmarked to the default leg is
/// copied only by a kernel that was let write it too (its own writes are
/// quiesced during its copy; see `Log::halted_passes`).
pub fn i06_no_copy_under_an_unmarked_write(log: &Log) -> Result<(), Violation> {
    for (i, r) in log.assignments() {
        if log.reserved_for_others(*r, *i) {
            return fail("I6", log, Some(*r), format!("{i} copies it while another kernel may write it unmarked"));
        }
    }
    // Nor is such a region in sync before each of those kernels copied it.
    for (i, rs) in &log.halted_passes {
        if let Some(r) = rs.iter().find(|r| log.sync.get(r.0)) {
            return fail("I6", log, Some(*r), format!("in sync while {i} may still write it to the default leg only"));
        }
    }
    Ok(())
}

/// Every state invariant of the machine.
pub fn check_machine(machine: &Machine) -> Result<(), Violation> {
    machine.logs().values().try_for_each(check_log)?;
    i10_no_instances_of_departed_nodes(machine)
}

/// I7: the hint given to instance `i`'s kernel is at most the lowest
/// region that is or could become resync work, or be answered
/// "recovering" to it, before that kernel's next RESUME, and equals the
/// region count only when no such region remains. Unsettled regions
/// cannot while it writes behind a stale hint: they wait for its resume
/// (and I10 checks that they are not being recovered). Nor can the regions
/// a presuspended instance let writes through to: only its own copy, after
/// a RESUME, ends that pass (see `Log::in_sync_hint_for`).
pub fn i07_in_sync_hint(log: &Log, i: Instance, hint: u64) -> Result<(), Violation> {
    let skips_unsettled = log.writes_behind_stale_hint(i.node);
    let presuspended = log.instances.get(&i).is_some_and(|s| s.phase == Phase::Presuspended);
    let low = log.sync.zeros_iter().find(|r| {
        let r = Region(*r);
        let skipped = (skips_unsettled && log.unsettled.contains(&r)) || (presuspended && log.passed(r, i));
        !skipped
    });
    match low {
        Some(low) if hint > low => fail("I7", log, Some(Region(low)), format!("hint {hint} above out-of-sync region")),
        None if hint > log.region_count() => fail("I7", log, None, format!("hint {hint} beyond region_count")),
        _ => Ok(()),
    }
}

/// I8 for an answer: GET_SYNC_COUNT reports the in-sync regions exactly.
pub fn i08_sync_count_answer(log: &Log, count: u64) -> Result<(), Violation> {
    if count != log.sync_count() {
        return fail("I8", log, None, format!("answered {count}, state has {}", log.sync_count()));
    }
    Ok(())
}

/// I9 for an answer: resync work is an out-of-sync region below
/// region_count, assigned to or claimed by the asking instance (a node
/// hands out its instance's claims itself, `Log::claimed_work`), and not
/// one another kernel may write unmarked (I6).
pub fn i09_resync_answer(log: &Log, instance: Instance, region: Region) -> Result<(), Violation> {
    if region.0 >= log.region_count() || log.in_sync(region) {
        return fail("I9", log, Some(region), "handed out a region that is in sync or out of range");
    }
    if !log.recovers(instance, region) {
        return fail(
            "I9",
            log,
            Some(region),
            format!("handed to {instance} but not recorded as its assignment or claim"),
        );
    }
    if log.reserved_for_others(region, instance) {
        return fail(
            "I6",
            log,
            Some(region),
            format!("handed to {instance} while another kernel may write it unmarked"),
        );
    }
    Ok(())
}

/// I6 for an answer: a write to an out-of-sync region is held while some
/// instance is able to recover it, unless the asking kernel was let write
/// it before (then only it copies the region, with its writes quiesced).
pub fn i06_remote_recovering_answer(
    log: &Log,
    instance: Instance,
    region: Region,
    is_recovering: bool,
) -> Result<(), Violation> {
    let unsettled_here = log.unsettled.contains(&region) && log.writes_behind_stale_hint(instance.node);
    // Some resumed instance may copy it (one not kept off it by another
    // instance's pass).
    let copier = log.instances.iter().any(|(i, s)| s.phase == Phase::Resumed && !log.reserved_for_others(region, *i));
    let recoverable =
        copier && !log.recovery_failed.contains(&region) && !unsettled_here && !log.passed(region, instance);
    if !log.in_sync(region) && recoverable && !is_recovering {
        return fail("I6", log, Some(region), "write allowed to an out-of-sync region under recovery");
    }
    Ok(())
}

/// I13 for an answer: the region size is never 0 and a power of two.
pub fn i13_region_size_answer(log: &Log, size: u64) -> Result<(), Violation> {
    if size == 0 || !size.is_power_of_two() {
        return fail("I13", log, None, format!("region size answer {size}"));
    }
    Ok(())
}

/// Checks an answer against the state it was computed from (for a query)
/// or produced (for GET_RESYNC_WORK).
pub fn check_answer(log: &Log, instance: Instance, query: Option<&Query>, answer: &Answer) -> Result<(), Violation> {
    match (query, answer) {
        (Some(Query::GetSyncCount), Answer::SyncCount(c)) => i08_sync_count_answer(log, *c),
        (Some(Query::GetRegionSize), Answer::RegionSize(s)) => i13_region_size_answer(log, *s),
        (Some(Query::IsRemoteRecovering(r)), Answer::RemoteRecovering { is_recovering, in_sync_hint }) => {
            i07_in_sync_hint(log, instance, *in_sync_hint)?;
            i06_remote_recovering_answer(log, instance, *r, *is_recovering)
        }
        (None, Answer::ResyncWork(Some(r))) => i09_resync_answer(log, instance, *r),
        _ => Ok(()),
    }
}
