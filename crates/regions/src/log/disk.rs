//! A `clustered-disk` log's device: the first activation reads it (I11),
//! one node writes it, and versions tell how far it is durable (I1 on the
//! device).

use wire::Region;

use super::Log;
use crate::command::NodeId;
use crate::disk::DiskImage;

impl Log {
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
}
