//! The `clustered-disk` log device: reading it at RESUME and writing the
//! clean bitmap in the dm disk-log layout ([`regions::disk`]).
//!
//! * **One writer.** The replicated state names the writer of each log
//!   ([`regions::Log::disk_writer`]: the lowest node with a table of it).
//!   Its [`DiskWriter`] task writes whenever the applied clean bits are
//!   newer than what was last reported durable, then reports the version
//!   with a [`Command::DiskLogWritten`] through Raft. Every node answers a
//!   FLUSH (and the first RESUME) of a disk log only once the version its
//!   command produced is reported durable ([`wait_durable`]), so I1 holds
//!   for the device as well as for the replicated state.
//! * **Durable.** A write is `pwrite` of the header and bitmap followed by
//!   `fdatasync`, which on a block device flushes the device's volatile
//!   cache. A write that fails is reported (`D` in STATUS_INFO) and the
//!   FLUSHes waiting for it are answered `-EIO`, as dm's own disk log
//!   fails a flush it could not persist.
//! * **Fresh reads.** Shared storage is written by other hosts, so the page
//!   cache of the device is dropped (`posix_fadvise(DONTNEED)`) before it
//!   is read.
//! * **Hand-over.** A node that becomes the writer after another node
//!   wrote waits [`DiskWriter::handover`] before its first write, so a
//!   write the previous writer still had in flight (it left, or was
//!   evicted after fencing itself) lands first and cannot overwrite a newer
//!   bitmap. A fenced node writes nothing.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regions::{Bitmap, Command, DiskImage};
use replication::{LeaderLink, Proposal, Replica, ReplicaError};
use tokio::time::Instant;
use wire::Uuid;

/// Where a table's log device token points: `major:minor` is the block
/// device node under `/dev/block` (udev's links) or, on a host without
/// those links (an initramfs, a container), the node the kernel names in
/// `/sys/dev/block/<major:minor>/uevent`; anything else is a path.
pub fn device_path(token: &str) -> PathBuf {
    device_path_in(token, Path::new("/"))
}

/// [`device_path`] with `/dev` and `/sys` under `root` (for tests).
fn device_path_in(token: &str, root: &Path) -> PathBuf {
    let is_dev_number = token.split_once(':').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a.chars().chain(b.chars())).all(|c| c.is_ascii_digit())
    });
    if !is_dev_number {
        return PathBuf::from(token);
    }
    let link = root.join("dev/block").join(token);
    if link.exists() {
        return link;
    }
    let uevent = std::fs::read_to_string(root.join("sys/dev/block").join(token).join("uevent")).unwrap_or_default();
    match uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
        Some(name) if !name.is_empty() && !name.contains("..") => root.join("dev").join(name),
        _ => link,
    }
}

/// Reads the header and bitmap of a log of `region_count` regions from the
/// device at `token` (blocking). A device that cannot be read is a fresh
/// log, with the reason (dm-log treats it the same way).
pub fn read_image(token: &str, region_count: u64) -> DiskImage {
    let path = device_path(token);
    let len = regions::limits::DISK_BITMAP_OFFSET + usize::try_from(region_count.div_ceil(8)).unwrap_or(0);
    let read = || -> io::Result<Vec<u8>> {
        let f = OpenOptions::new().read(true).open(&path)?;
        // Another host may have written the device since this one cached it.
        let _ = nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    };
    match read() {
        Ok(bytes) => DiskImage::parse(&bytes, region_count),
        Err(e) => DiskImage::Fresh { reason: format!("{}: {e}", path.display()) },
    }
}

/// Writes `clean` in the dm disk-log layout to the device at `token` and
/// waits until it is durable (blocking).
pub fn write_image(token: &str, clean: &Bitmap) -> io::Result<()> {
    let path = device_path(token);
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut bytes = regions::disk::encode(clean);
    // Whole 512-byte sectors, as a block device is written.
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    f.write_all_at(&bytes, 0)?;
    f.sync_data()
}

/// Waits until the clean bits of `version` of log `uuid` are reported
/// durable on its device, in the state this node has applied. `Err` when
/// the write of that version (or a newer one) failed and none succeeded
/// since, or the log is gone.
pub async fn wait_durable<L: LeaderLink>(replica: &Replica<L>, uuid: &Uuid, version: u64) -> Result<(), String> {
    let mut applied = replica.metrics();
    loop {
        let now = replica.state.read(|m| {
            let log = m.log(uuid)?;
            if log.disk_version() >= version {
                return Some(Ok(()));
            }
            match log.disk_failed_version() {
                Some(v) if v >= version => Some(Err(format!("the write of log {uuid}'s device failed"))),
                _ => None,
            }
        });
        match now {
            Some(r) => return r,
            None if replica.state.read(|m| m.log(uuid).is_none()) => return Err(format!("log {uuid} is gone")),
            None => {}
        }
        // Woken by every applied entry; the timeout is a safety net.
        let _ = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
    }
}

/// Finds the log device token of a log as this host's kernel named it.
pub type DeviceOf = Box<dyn Fn(&Uuid) -> Option<String> + Send + Sync>;

/// The writer task of one node: writes the device of every disk log this
/// node is the writer of.
pub struct DiskWriter<L: LeaderLink> {
    replica: Arc<Replica<L>>,
    gate: crate::gate::Gate,
    /// How long a new writer waits before its first write after another
    /// node wrote.
    pub handover: Duration,
    /// The device token of a log as this host's kernel named it, if known
    /// (the table's own constructor); otherwise the replicated one is used.
    device_of: DeviceOf,
    /// Extra time every write takes: a slow device, for tests.
    pub slow_device: Duration,
}

/// What one pass found to write.
struct Due {
    uuid: Uuid,
    token: String,
    version: u64,
    clean: Bitmap,
    taking_over: bool,
}

impl<L: LeaderLink> DiskWriter<L> {
    /// A writer for `replica`'s node, silent while `gate` is closed (the
    /// node is fenced).
    pub fn new(
        replica: Arc<Replica<L>>,
        gate: crate::gate::Gate,
        handover: Duration,
        device_of: impl Fn(&Uuid) -> Option<String> + Send + Sync + 'static,
    ) -> DiskWriter<L> {
        DiskWriter { replica, gate, handover, device_of: Box::new(device_of), slow_device: Duration::ZERO }
    }

    /// The logs this node must write now.
    fn due(&self) -> Vec<Due> {
        let me = self.replica.id;
        self.replica.state.read(|m| {
            m.logs()
                .values()
                .filter(|l| l.is_disk() && l.is_activated() && l.disk_writer() == Some(me))
                .filter(|l| l.clean_version() > l.disk_version() && l.disk_failed_version() < Some(l.clean_version()))
                .filter_map(|l| {
                    let regions::LogType::Disk { device } = &l.args().log_type else { return None };
                    Some(Due {
                        uuid: l.uuid().clone(),
                        token: (self.device_of)(l.uuid()).unwrap_or_else(|| device.clone()),
                        version: l.clean_version(),
                        clean: l.clean_bits().clone(),
                        taking_over: l.last_disk_writer().is_some_and(|w| w != me),
                    })
                })
                .collect()
        })
    }

    /// Runs until the node stops.
    pub async fn run(self) {
        let mut applied = self.replica.metrics();
        // Logs this process has written (no hand-over wait for them again).
        let mut mine: std::collections::HashSet<Uuid> = Default::default();
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(200), applied.changed()).await;
            if self.gate.is_closed() {
                continue;
            }
            for due in self.due() {
                if due.taking_over && !mine.contains(&due.uuid) {
                    tracing::info!(uuid = %due.uuid, wait = ?self.handover, "taking over the log device from another node");
                    tokio::time::sleep(self.handover).await;
                    mine.insert(due.uuid.clone());
                    // The state moved on meanwhile: start again from it.
                    break;
                }
                mine.insert(due.uuid.clone());
                if self.gate.is_closed() {
                    break;
                }
                let (token, clean, slow) = (due.token.clone(), due.clean, self.slow_device);
                let result = tokio::task::spawn_blocking(move || {
                    std::thread::sleep(slow);
                    write_image(&token, &clean)
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                let failed = match &result {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::error!(uuid = %due.uuid, device = %due.token, error = %e, "log device write failed");
                        true
                    }
                };
                let report = Command::DiskLogWritten {
                    uuid: due.uuid.clone(),
                    node: self.replica.id,
                    version: due.version,
                    failed,
                };
                self.report(report).await;
            }
        }
    }

    /// Commits a write report, retrying while there is no quorum.
    async fn report(&self, c: Command) {
        loop {
            let p = Proposal { commands: vec![c.clone()] };
            match self.replica.propose(p, Instant::now() + Duration::from_secs(5)).await {
                Ok(_) => return,
                Err(ReplicaError::Timeout) if !self.gate.is_closed() => {
                    tracing::warn!("no quorum to report a log device write; retrying");
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_are_udev_links_or_the_node_sysfs_names_and_anything_else_a_path() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(device_path_in("253:3", root.path()), root.path().join("dev/block/253:3"));
        std::fs::create_dir_all(root.path().join("sys/dev/block/254:32")).unwrap();
        std::fs::write(
            root.path().join("sys/dev/block/254:32/uevent"),
            "MAJOR=254\nMINOR=32\nDEVNAME=vdc\nDEVTYPE=disk\n",
        )
        .unwrap();
        assert_eq!(device_path_in("254:32", root.path()), root.path().join("dev/vdc"));
        std::fs::create_dir_all(root.path().join("dev/block")).unwrap();
        std::fs::write(root.path().join("dev/block/254:32"), "").unwrap();
        assert_eq!(device_path_in("254:32", root.path()), root.path().join("dev/block/254:32"));
        assert_eq!(device_path("/dev/vg/lv_mlog"), PathBuf::from("/dev/vg/lv_mlog"));
        assert_eq!(device_path("253:"), PathBuf::from("253:"));
        assert_eq!(device_path("a:1"), PathBuf::from("a:1"));
    }

    #[test]
    fn a_written_bitmap_reads_back_and_an_unreadable_device_is_a_fresh_log() {
        let dir = tempfile::TempDir::new().unwrap();
        let dev = dir.path().join("mlog");
        std::fs::write(&dev, vec![0u8; 4096]).unwrap();
        let token = dev.to_str().unwrap();
        assert!(matches!(read_image(token, 100), DiskImage::Fresh { .. }), "zeros are no log");
        let mut clean = Bitmap::ones(100);
        clean.set(7, false);
        write_image(token, &clean).unwrap();
        match read_image(token, 100) {
            DiskImage::Valid { nr_regions, clean: back } => {
                assert_eq!(nr_regions, 100);
                assert!(!back.get(7) && back.get(8) && back.get(99));
            }
            other => panic!("{other:?}"),
        }
        let missing = dir.path().join("nope");
        match read_image(missing.to_str().unwrap(), 100) {
            DiskImage::Fresh { reason } => assert!(reason.contains("nope"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(write_image(missing.to_str().unwrap(), &clean).is_err());
    }
}
