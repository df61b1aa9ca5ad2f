//! Resync: which region an instance copies next (I9), when a copy makes a
//! region in sync, the in-sync hint a kernel caches (I7), and which writes
//! IS_REMOTE_RECOVERING holds (I6), including writes let through while
//! recovery is halted everywhere.

use std::collections::BTreeSet;

use wire::Region;

use super::{Log, Phase};
use crate::command::{Instance, NodeId};
use crate::limits::RESYNC_CLAIM;

impl Log {
    /// Whether some resumed instance may copy `r`: recovery of `r` runs.
    /// A region that writes were let through to is copied only by the
    /// kernels that let them through ([`Log::halted_passes`]); while none
    /// of those is resumed, recovery of that region is halted even if
    /// other kernels run theirs. Holding a write there would wait for a
    /// copy nobody can make: two suspending kernels, each writing the
    /// region only the other may copy, each waiting for its write to
    /// drain, hung their suspends for good (the 10,000-seed run through
    /// the host pipeline, seed 5220).
    pub(crate) fn recovery_running_for(&self, r: Region) -> bool {
        self.instances.iter().any(|(i, s)| s.phase == Phase::Resumed && !self.reserved_for_others(r, *i))
    }

    /// GET_RESYNC_WORK for `i`: the region it already holds (a kernel
    /// re-send gets the same answer, I9), else its lowest claim that it may
    /// still copy, else the lowest out-of-sync region that no other
    /// instance recovers or claims, whose recovery has not failed since the
    /// last resume, and that no other instance has marked (a node that may
    /// still be writing a region must finish before it is copied). With a
    /// new region it claims up to [`RESYNC_CLAIM`] − 1 more such regions
    /// for its next requests, which its node may hand out itself
    /// ([`Log::claimed_work`]): a resync then costs one commit per batch of
    /// regions rather than two per region.
    pub(crate) fn resync_work(&mut self, i: Instance) -> Option<Region> {
        if self.instances.get(&i).map(|s| s.phase) != Some(Phase::Resumed) {
            return None;
        }
        if let Some(&r) = self.assignments.get(&i) {
            return Some(r);
        }
        // Claims that can no longer be copied are dropped, not kept: the
        // region goes back to everyone's candidates.
        let claimed: Vec<Region> = self.claims.remove(&i).unwrap_or_default().into_iter().collect();
        let mut keep: BTreeSet<Region> = claimed.into_iter().filter(|r| self.copyable_by(*r, i)).collect();
        let found = match keep.pop_first() {
            Some(r) => Some(r),
            None => {
                let mut fresh = self.resync_candidates().filter(|r| self.copyable_by(*r, i));
                let first = fresh.next();
                if first.is_some() {
                    keep.extend(fresh.take(RESYNC_CLAIM - 1));
                }
                first
            }
        };
        if !keep.is_empty() {
            self.claims.insert(i, keep);
        }
        if let Some(r) = found {
            self.assignments.insert(i, r);
        }
        found
    }

    /// Whether `i` may start a copy of `r` now: out of sync, its recovery
    /// not failed since the last resume, not unsettled, marked by no other
    /// instance, not reserved for another instance's copy.
    fn copyable_by(&self, r: Region, i: Instance) -> bool {
        !self.sync.get(r.0)
            && !self.recovery_failed.contains(&r)
            && !self.unsettled.contains(&r)
            && self.marks.get(&r).is_none_or(|who| who.iter().all(|m| *m == i))
            && !self.reserved_for_others(r, i)
    }

    /// GET_RESYNC_WORK for `i` answered by its own node from this state,
    /// without a commit: the lowest region `i` claimed that it may copy
    /// now, not counting `done` (regions its node already answered
    /// SET_REGION_SYNC for, whose commits may still be on their way).
    /// `None` when it must ask through Raft: nothing claimed, or an
    /// assignment of its own outstanding (which only the replicated answer
    /// may repeat, I9). A claim is a decision the cluster committed, as an
    /// assignment is, so this answer is as safe as a replicated one made
    /// at the claim; `copyable_by` is checked again on this node's view
    /// all the same.
    pub fn claimed_work(&self, i: Instance, done: &BTreeSet<Region>) -> Option<Region> {
        if self.instances.get(&i).map(|s| s.phase) != Some(Phase::Resumed) {
            return None;
        }
        if self.assignments.get(&i).is_some_and(|r| !done.contains(r)) {
            return None;
        }
        self.claims.get(&i)?.iter().copied().find(|r| !done.contains(r) && self.copyable_by(*r, i))
    }

    /// Whether `i` holds `r` as its assignment or a claim.
    pub fn recovers(&self, i: Instance, r: Region) -> bool {
        self.assignments.get(&i) == Some(&r) || self.claims.get(&i).is_some_and(|rs| rs.contains(&r))
    }

    /// SET_REGION_SYNC from `i`. In sync is only believed from the instance
    /// that holds the region's assignment or claim: a re-send that arrives
    /// after it was released (possibly after the region went out of sync
    /// again through an eviction) must not mark it in sync. Out of sync is
    /// always believed.
    pub(crate) fn set_region_sync(&mut self, i: Instance, r: Region, in_sync: bool) {
        let assigned = self.recovers(i, r);
        if assigned {
            if self.assignments.get(&i) == Some(&r) {
                self.assignments.remove(&i);
            }
            if let Some(rs) = self.claims.get_mut(&i) {
                rs.remove(&r);
                if rs.is_empty() {
                    self.claims.remove(&i);
                }
            }
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

    /// The hint IS_REMOTE_RECOVERING gives instance `i`'s kernel: the
    /// lowest region for which that kernel might be told "recovering"
    /// before its next RESUME (which resets the hint it caches, spec
    /// §3.3). Every write at or above the hint asks, and the kernel's
    /// throttle lets one question through per 250 ms per host, so a hint
    /// lower than it must be turns a backlog of writes into a drain of four
    /// a second. Two kinds of out-of-sync region are skipped:
    /// * the unsettled regions, while the kernel still writes behind a
    ///   stale hint. None of them can become resync work before that
    ///   kernel's next RESUME: they wait for every survivor's resume, its
    ///   own included, and it is told they are in sync and not recovering
    ///   anyway. (One exception: a failed write's SET_REGION_SYNC(r, 0)
    ///   takes r out of the unsettled set at once; a kernel that keeps a
    ///   hint above r then writes r without asking, exposed as any kernel
    ///   behind a stale hint already is, until its kick. It needs a leg
    ///   failing mid-kick.)
    /// * while `i` is presuspended (draining its writes, recovery
    ///   stopped), the regions it let writes through to
    ///   ([`Log::halted_passes`]). Its answer for them is "not recovering"
    ///   ([`Log::remote_recovering`]) and stays so until its pass ends,
    ///   which takes its own copy (after a RESUME, which resets the hint),
    ///   its DTR (no I/O left) or its eviction (its node fenced first).
    ///   Without the skip a kick's suspend drained a backlog behind such a
    ///   region at four writes a second, and the copy that would have
    ///   raised the hint waited for that suspend's resume (random seed 900
    ///   of the simulation, which `no-pass-hint` brings back).
    pub fn in_sync_hint_for(&self, i: Instance) -> u64 {
        let skip_unsettled = !self.unsettled.is_empty() && self.writes_behind_stale_hint(i.node);
        let skip_passed = self.instances.get(&i).is_some_and(|s| s.phase == Phase::Presuspended)
            && self.halted_passes.contains_key(&i)
            && !crate::breaks::off("no-pass-hint");
        if !skip_unsettled && !skip_passed {
            return self.in_sync_hint();
        }
        self.sync
            .zeros_iter()
            .map(Region)
            .find(|r| {
                let skipped = (skip_unsettled && self.unsettled.contains(r)) || (skip_passed && self.passed(*r, i));
                !skipped
            })
            .map_or(self.region_count(), |r| r.0)
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
        !self.sync.get(r.0) && !self.recovery_failed.contains(&r) && !unsettled_here && self.recovery_running_for(r)
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

    /// The instances that let writes through to `r` and have not copied it
    /// since: each must copy it before it is in sync (see
    /// [`Log::halted_passes`]).
    pub fn passers(&self, r: Region) -> impl Iterator<Item = Instance> + '_ {
        self.halted_passes.iter().filter(move |(_, rs)| rs.contains(&r)).map(|(i, _)| *i)
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
    pub(super) fn copied_by(&mut self, r: Region, i: Instance) -> bool {
        if let Some(rs) = self.halted_passes.get_mut(&i) {
            rs.remove(&r);
            if rs.is_empty() {
                self.halted_passes.remove(&i);
            }
        }
        !self.halted_passes.values().any(|rs| rs.contains(&r))
    }

    /// Whether GET_RESYNC_WORK from some resumed instance would hand out a
    /// region now (marks and reservations counted).
    pub(crate) fn claimable_work(&self) -> bool {
        let resumed: Vec<Instance> =
            self.instances.iter().filter(|(_, s)| s.phase == Phase::Resumed).map(|(i, _)| *i).collect();
        if resumed.is_empty() {
            return false;
        }
        // Claims are not counted: a claimer is never left idle with one
        // (its GET_RESYNC_WORK takes a claim or drops those it cannot copy
        // any more), and regions whose claims are released must count as
        // newly claimable, to wake the others (the claimer may be dead).
        self.resync_candidates()
            .any(|r| resumed.iter().any(|&i| !self.assignments.contains_key(&i) && self.copyable_by(r, i)))
    }

    /// Whether some out-of-sync region could be handed out for resync now
    /// (claimed regions counted: their claimer may be the one suspending).
    pub(crate) fn has_resync_work(&self) -> bool {
        self.resync_candidates().next().is_some() || !self.claims.is_empty()
    }

    /// Out-of-sync regions in increasing order that nobody recovers or
    /// claims, whose recovery has not failed since the last resume, and
    /// that are not unsettled: what GET_RESYNC_WORK may hand out (marks
    /// aside).
    pub(super) fn resync_candidates(&self) -> impl Iterator<Item = Region> + '_ {
        let taken: BTreeSet<Region> =
            self.assignments.values().copied().chain(self.claims.values().flatten().copied()).collect();
        self.sync
            .zeros_iter()
            .map(Region)
            .filter(move |r| !taken.contains(r) && !self.recovery_failed.contains(r) && !self.unsettled.contains(r))
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
}
