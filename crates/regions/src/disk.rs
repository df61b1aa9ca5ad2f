//! The `clustered-disk` on-disk format: the dm disk-log layout (spec §5.7,
//! §6), so a log device can move between the kernel's `disk` log and dmlogd.
//!
//! ```text
//! offset 0     u32 magic 0x4D695272 ("MiRr"), little-endian
//! offset 4     u32 version = 2
//! offset 8     u64 nr_regions (region_count when last written)
//! offset 16    unused up to 1024
//! offset 1024  clean bitmap, region i = byte i/8, bit i%8; 1 = clean
//! ```
//!
//! Only the encoding lives here; reading and writing the device (O_DIRECT,
//! a cache flush after a write that dirties bits) is the node's job.

use serde::{Deserialize, Serialize};

use crate::bitmap::Bitmap;
use crate::ctr::SyncMode;
use crate::limits::{DISK_BITMAP_OFFSET, MAX_REGION_COUNT};

/// `MIRROR_MAGIC`.
pub const MAGIC: u32 = 0x4D69_5272;
/// `MIRROR_DISK_VERSION`.
pub const VERSION: u32 = 2;

/// What a node read from a log device, as far as the machine needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskImage {
    /// A valid header and its clean bitmap.
    Valid {
        /// `nr_regions` from the header.
        nr_regions: u64,
        /// Clean bits of the first `min(nr_regions, region_count)` regions.
        clean: Bitmap,
    },
    /// No valid log on the device (new, foreign, or unreadable).
    Fresh {
        /// Why it was not usable, for the log.
        reason: String,
    },
}

impl DiskImage {
    /// Parses the bytes read from offset 0 of the log device for a log of
    /// `region_count` regions, with dm-log's rules: a wrong magic means a
    /// new log; version 1 is read as 2; any other version is unusable.
    pub fn parse(bytes: &[u8], region_count: u64) -> DiskImage {
        let fresh = |reason: &str| DiskImage::Fresh { reason: reason.to_owned() };
        let word = |off: usize| bytes.get(off..off + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let (Some(magic), Some(version)) = (word(0), word(4)) else { return fresh("short read") };
        if magic != MAGIC {
            return fresh("no MiRr header");
        }
        if version != VERSION && version != 1 {
            return DiskImage::Fresh { reason: format!("unsupported log version {version}") };
        }
        let Some(nr_regions) = bytes.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else {
            return fresh("short read");
        };
        if nr_regions > MAX_REGION_COUNT {
            return DiskImage::Fresh { reason: format!("nr_regions {nr_regions} is implausible") };
        }
        let known = nr_regions.min(region_count);
        let need = DISK_BITMAP_OFFSET + usize::try_from(known.div_ceil(8)).unwrap_or(usize::MAX);
        let Some(bits) = bytes.get(DISK_BITMAP_OFFSET..need) else { return fresh("short read of the bitmap") };
        DiskImage::Valid { nr_regions, clean: Bitmap::from_bytes(known, bits) }
    }

    /// The clean bits a log starts from at its first activation (dm-log's
    /// `disk_resume`): `sync` or `nosync` in the table, or no valid header,
    /// mean a new log; regions the header does not cover are dirty, or clean
    /// with `nosync`.
    pub fn initial_clean(&self, region_count: u64, sync: SyncMode) -> Bitmap {
        let nosync = sync == SyncMode::NoSync;
        let mut clean = if nosync { Bitmap::ones(region_count) } else { Bitmap::zeros(region_count) };
        if let (DiskImage::Valid { clean: on_disk, .. }, SyncMode::Default) = (self, sync) {
            for r in 0..on_disk.len().min(region_count) {
                clean.set(r, on_disk.get(r));
            }
        }
        clean
    }
}

/// The header and bitmap to write for `clean`: 1024 bytes of header, then the
/// bitmap rounded up to whole 64-bit words as dm-log does. The node pads the
/// write to the device's logical block size.
pub fn encode(clean: &Bitmap) -> Vec<u8> {
    let words = clean.len().div_ceil(64);
    let bitmap_len = usize::try_from(words * 8).unwrap_or(0);
    let mut out = vec![0u8; DISK_BITMAP_OFFSET + bitmap_len];
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&VERSION.to_le_bytes());
    out[8..16].copy_from_slice(&clean.len().to_le_bytes());
    let bytes = clean.to_bytes();
    out[DISK_BITMAP_OFFSET..DISK_BITMAP_OFFSET + bytes.len()].copy_from_slice(&bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_round_trips_and_matches_the_layout() {
        let mut clean = Bitmap::ones(100);
        clean.set(9, false);
        let bytes = encode(&clean);
        assert_eq!(&bytes[0..4], &[0x72, 0x52, 0x69, 0x4D], "MiRr, little-endian");
        assert_eq!(bytes.len(), 1024 + 16);
        assert_eq!(bytes[1024 + 1], 0b1111_1101, "region 9 = byte 1, bit 1");
        match DiskImage::parse(&bytes, 100) {
            DiskImage::Valid { nr_regions: 100, clean: c } => assert_eq!(c, clean),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn initial_clean_follows_dm_log_rules() {
        let mut on_disk = Bitmap::ones(8);
        on_disk.set(2, false);
        let image = DiskImage::parse(&encode(&on_disk), 10);
        let c = image.initial_clean(10, SyncMode::Default);
        assert_eq!((c.get(1), c.get(2), c.get(8), c.get(9)), (true, false, false, false), "grown regions are dirty");
        assert_eq!(image.initial_clean(10, SyncMode::NoSync).count_ones(), 10);
        assert_eq!(image.initial_clean(10, SyncMode::Sync).count_ones(), 0);
        let zeroed = DiskImage::parse(&[0u8; 2048], 10);
        assert!(matches!(zeroed, DiskImage::Fresh { .. }));
        assert_eq!(zeroed.initial_clean(10, SyncMode::Default).count_ones(), 0);
    }

    #[test]
    fn parse_rejects_short_and_unknown_versions() {
        assert!(matches!(DiskImage::parse(&[0x72, 0x52], 4), DiskImage::Fresh { .. }));
        let mut b = encode(&Bitmap::ones(4));
        b[4] = 9;
        assert!(matches!(DiskImage::parse(&b, 4), DiskImage::Fresh { .. }));
        let b = encode(&Bitmap::ones(4000));
        assert!(matches!(DiskImage::parse(&b[..1100], 4000), DiskImage::Fresh { .. }));
    }
}
