//! Limits of the region-state machine, each with its reason.

/// Most regions one log may have: 2^25 regions cost 4 MiB per bitmap in a
/// snapshot. The kernel's own logs cap `region_count` at 2^32; an admin with a
/// mirror larger than `2^25 × region_size` picks a larger region size.
pub const MAX_REGION_COUNT: u64 = 1 << 25;

/// Smallest region size in sectors (the in-kernel logs refuse 1).
pub const MIN_REGION_SIZE: u64 = 2;

/// Regions in one MARK, CLEAR or integrated FLUSH (the kernel's batch).
pub const MAX_REGIONS_PER_REQUEST: usize = wire::MAX_REGIONS_PER_REQUEST;

/// Regions one GET_RESYNC_WORK commit hands an instance: the one it
/// copies now and claims on the next ones, which its node then hands out
/// without a commit (`Log::resync_work`). The kernel copies one region at
/// a time (`MAX_RECOVERY` = 1), so a resync costs one commit per this many
/// regions. Other nodes' writes to a claimed region wait
/// (IS_REMOTE_RECOVERING) until its copy: 16 copies of a 512 KiB region
/// take ~0.1 s on a disk that copies 64 MiB in 1 s.
pub const RESYNC_CLAIM: usize = 16;

/// Bytes of a `clustered-disk` log header before the bitmap (spec §6:
/// `LOG_OFFSET` = 2 sectors).
pub const DISK_BITMAP_OFFSET: usize = 1024;

const _: () = {
    // One bit per region: the largest log costs 4 MiB per bitmap kind.
    assert!(MAX_REGION_COUNT / 8 <= 4 << 20);
    assert!(MIN_REGION_SIZE.is_power_of_two());
    assert!(RESYNC_CLAIM >= 1);
};
