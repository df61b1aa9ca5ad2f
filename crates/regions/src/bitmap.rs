//! A fixed-size bitmap, one bit per region, that serialises as raw bytes
//! (one bit per region, little-endian bit order: region `i` is byte `i / 8`,
//! bit `i % 8`, the layout of the dm disk log, spec §6).
//!
//! Bits at or past `len` are always zero, so equal bitmaps serialise to
//! equal bytes and the population count never over-counts (cmirrord's
//! `nosync` over-count, spec §5.10 item 23, cannot happen here).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A bitmap of `len` bits.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitmap({} of {} set)", self.ones, self.len)
    }
}

fn word_count(len: u64) -> usize {
    usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX)
}

impl Bitmap {
    /// `len` bits, all zero.
    pub fn zeros(len: u64) -> Bitmap {
        Bitmap { words: vec![0; word_count(len)], len, ones: 0 }
    }

    /// `len` bits, all one.
    pub fn ones(len: u64) -> Bitmap {
        let mut b = Bitmap { words: vec![u64::MAX; word_count(len)], len, ones: len };
        b.mask_tail();
        b
    }

    fn mask_tail(&mut self) {
        let rem = self.len % 64;
        if rem != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << rem) - 1;
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a bitmap of no bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of bits set (kept up to date, O(1)).
    pub fn count_ones(&self) -> u64 {
        self.ones
    }

    fn slot(&self, i: u64) -> Option<(usize, u64)> {
        if i >= self.len {
            return None;
        }
        Some((usize::try_from(i / 64).ok()?, 1u64 << (i % 64)))
    }

    /// Bit `i`; false past the end.
    pub fn get(&self, i: u64) -> bool {
        self.slot(i).and_then(|(w, m)| self.words.get(w).map(|x| x & m != 0)).unwrap_or(false)
    }

    /// Sets bit `i` to `v`; returns whether it changed. Past the end it does
    /// nothing (callers bounds-check regions before).
    pub fn set(&mut self, i: u64, v: bool) -> bool {
        let Some((w, m)) = self.slot(i) else { return false };
        let Some(word) = self.words.get_mut(w) else { return false };
        let was = *word & m != 0;
        if was == v {
            return false;
        }
        if v {
            *word |= m;
            self.ones += 1;
        } else {
            *word &= !m;
            self.ones -= 1;
        }
        true
    }

    /// Lowest clear bit at or after `from`, if any.
    pub fn next_zero(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.len {
            let (w, _) = self.slot(i)?;
            let word = *self.words.get(w)?;
            let shifted = !word >> (i % 64);
            if shifted != 0 {
                let found = i + u64::from(shifted.trailing_zeros());
                return (found < self.len).then_some(found);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// Iterates over the clear bits in increasing order.
    pub fn zeros_iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut next = self.next_zero(0);
        std::iter::from_fn(move || {
            let cur = next?;
            next = cur.checked_add(1).and_then(|n| self.next_zero(n));
            Some(cur)
        })
    }

    /// The bits as bytes, region `i` at byte `i / 8`, bit `i % 8`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = usize::try_from(self.len.div_ceil(8)).unwrap_or(0);
        self.words.iter().flat_map(|w| w.to_le_bytes()).take(n).collect()
    }

    /// Reads `len` bits from bytes in [`Bitmap::to_bytes`] order. Missing
    /// bytes read as zero; bits past `len` are ignored.
    pub fn from_bytes(len: u64, bytes: &[u8]) -> Bitmap {
        let mut b = Bitmap::zeros(len);
        for (w, chunk) in b.words.iter_mut().zip(bytes.chunks(8)) {
            let mut buf = [0u8; 8];
            buf.iter_mut().zip(chunk).for_each(|(d, s)| *d = *s);
            *w = u64::from_le_bytes(buf);
        }
        b.mask_tail();
        b.ones = b.words.iter().map(|w| u64::from(w.count_ones())).sum();
        b
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    len: u64,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

impl Serialize for Bitmap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire { len: self.len, bytes: self.to_bytes() }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Bitmap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bitmap, D::Error> {
        let w = Wire::deserialize(d)?;
        if w.len > crate::limits::MAX_REGION_COUNT {
            return Err(serde::de::Error::custom("bitmap longer than the region limit"));
        }
        Ok(Bitmap::from_bytes(w.len, &w.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_tail_masking() {
        let mut b = Bitmap::ones(70);
        assert_eq!(b.count_ones(), 70);
        assert!(b.get(69) && !b.get(70));
        assert!(b.set(3, false));
        assert!(!b.set(3, false));
        assert_eq!(b.count_ones(), 69);
        assert_eq!(b.next_zero(0), Some(3));
        assert_eq!(b.next_zero(4), None);
        assert_eq!(Bitmap::from_bytes(70, &b.to_bytes()), b);
        assert_eq!(b.to_bytes().len(), 9);
    }

    #[test]
    fn zeros_iter_walks_word_boundaries() {
        let mut b = Bitmap::ones(200);
        for i in [0, 63, 64, 127, 199] {
            b.set(i, false);
        }
        assert_eq!(b.zeros_iter().collect::<Vec<_>>(), vec![0, 63, 64, 127, 199]);
        assert_eq!(Bitmap::zeros(0).zeros_iter().count(), 0);
    }

    #[test]
    fn from_bytes_ignores_bits_past_len() {
        let b = Bitmap::from_bytes(4, &[0xff, 0xff]);
        assert_eq!(b.count_ones(), 4);
        assert_eq!(b.to_bytes(), vec![0x0f]);
    }
}
