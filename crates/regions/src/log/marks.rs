//! MARK, CLEAR and the two bitmaps: a region is clean only when nobody has
//! it marked and it is in sync (I2, I3); a destroyed table's marks are
//! writes that completed.

use wire::Region;

use super::Log;
use crate::command::Instance;

impl Log {
    pub(super) fn set_clean(&mut self, r: Region, v: bool) {
        if self.clean.set(r.0, v) {
            self.clean_version += 1;
        }
    }

    pub(super) fn set_out_of_sync(&mut self, r: Region) {
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

    pub(super) fn unmark(&mut self, i: Instance, r: Region) {
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
        self.release_recovery(i);
        self.halted_passes.remove(&i);
        self.instances.remove(&i);
    }
}
