//! What an eviction leaves behind: the evicted instance's marks become
//! out-of-sync regions (I10), which stay unsettled until every survivor's
//! kernel has resumed, with the survivors kicked one at a time; and what a
//! node that comes back without a reboot may still write behind its
//! stale hint.

use std::collections::BTreeSet;

use wire::Region;

use super::Log;
use crate::command::{Instance, NodeId};

impl Log {
    /// Eviction of `i` (its node died): every region it marked may differ
    /// between legs, so it goes out of sync for the survivors to resync
    /// (I10). Returns the regions that were in sync and no longer are.
    /// `incarnation`: the kernel boot of its node if that kernel may come
    /// back behind a stale hint (recorded in [`Log::evicted_marks`]).
    pub(crate) fn evict_instance(&mut self, i: Instance, incarnation: Option<u64>) -> Vec<Region> {
        let rs = self.marked_by(i);
        match incarnation {
            Some(inc) if !crate::breaks::off("no-evicted-marks") => {
                let entry = self.evicted_marks.entry(i.node).or_insert_with(|| (inc, BTreeSet::new()));
                if entry.0 != inc {
                    *entry = (inc, BTreeSet::new());
                }
                entry.1.extend(rs.iter().copied());
            }
            _ => {
                self.evicted_marks.remove(&i.node);
            }
        }
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
        self.release_recovery(i);
        // Its unmarked writes died with it.
        self.halted_passes.remove(&i);
        self.instances.remove(&i);
        changed
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

    pub(super) fn next_kick(&mut self) -> Option<NodeId> {
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
        self.release_regions(&regions);
        self.unsettle(&regions, BTreeSet::from([n]))
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
    /// regions whose legs may differ in old data). The regions its own
    /// evictions put out of sync count whether it marks them again or not
    /// (see [`Log::evicted_marks`]).
    pub(crate) fn disown_behind_stale_hint(&mut self, n: NodeId, incarnation: Option<u64>) -> Vec<Region> {
        let mut regions: BTreeSet<Region> = self.unsettled.clone();
        for (r, who) in &self.marks {
            if who.iter().any(|i| i.node == n) && !self.sync.get(r.0) {
                regions.insert(*r);
            }
        }
        // Only what the evictions of this same kernel boot left: a kernel
        // that rebooted since has no stale hint about them.
        if let Some((inc, evicted)) = self.evicted_marks.remove(&n)
            && Some(inc) == incarnation
        {
            regions.extend(evicted.into_iter().filter(|r| !self.sync.get(r.0)));
        }
        let regions: Vec<Region> = regions.into_iter().collect();
        self.release_regions(&regions);
        regions
    }
}
