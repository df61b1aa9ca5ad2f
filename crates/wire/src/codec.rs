//! Bounds-checked reads and writes of host-endian integers at byte offsets.
//!
//! The kernel and the daemon share a host, so every integer is in the host's
//! byte order (spec: "no endianness conversion anywhere"). Payloads start at
//! offset 196, which is 4- but not 8-byte aligned, so nothing here casts
//! pointers: values are assembled from byte slices.

/// Reads `N` bytes at `off`, or `None` past the end.
fn take<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    let end = off.checked_add(N)?;
    buf.get(off..end)?.try_into().ok()
}

pub(crate) fn u16_at(buf: &[u8], off: usize) -> Option<u16> {
    take::<2>(buf, off).map(u16::from_ne_bytes)
}

pub(crate) fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    take::<4>(buf, off).map(u32::from_ne_bytes)
}

pub(crate) fn i32_at(buf: &[u8], off: usize) -> Option<i32> {
    take::<4>(buf, off).map(i32::from_ne_bytes)
}

pub(crate) fn u64_at(buf: &[u8], off: usize) -> Option<u64> {
    take::<8>(buf, off).map(u64::from_ne_bytes)
}

pub(crate) fn i64_at(buf: &[u8], off: usize) -> Option<i64> {
    take::<8>(buf, off).map(i64::from_ne_bytes)
}

/// Writes `bytes` at `off`. The callers size the buffer first, so a write
/// past the end is a programming error; it is ignored rather than panicking
/// and the round-trip tests would catch it.
pub(crate) fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = off.checked_add(bytes.len()).and_then(|end| buf.get_mut(off..end)) {
        dst.copy_from_slice(bytes);
    } else {
        debug_assert!(false, "write past the end of a sized buffer");
    }
}
