//! The data legs of a two-way mirror, modelled per region.
//!
//! Each region of each leg holds the id of the last write that reached it
//! (0 = never written). A region "differs" when the legs hold different ids.
//! Legs are shared storage: every node's simulated kernel writes the same
//! [`Legs`], so writes from several nodes interleave exactly as the
//! simulation orders them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Contents of both legs, one write id per region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Legs {
    /// The default (primary) leg: reads go here, resync copies from here.
    pub leg0: Vec<u64>,
    /// The second leg.
    pub leg1: Vec<u64>,
    /// Writes in flight per region, from any node: the legs may differ
    /// there for a moment, legitimately.
    inflight: BTreeMap<u64, u32>,
    /// Regions a crashed node was writing: they differ until resynced.
    abandoned: BTreeSet<u64>,
}

impl Legs {
    /// Two legs of `regions` regions. With `differ` they start different
    /// everywhere (a new mirror whose legs were never synchronised).
    pub fn new(regions: u64, differ: bool) -> Legs {
        let n = usize::try_from(regions).unwrap_or(0);
        Legs {
            leg0: vec![0; n],
            leg1: if differ { vec![u64::MAX; n] } else { vec![0; n] },
            inflight: BTreeMap::new(),
            abandoned: BTreeSet::new(),
        }
    }

    /// Whether region `r` holds the same data on both legs.
    pub fn same(&self, r: u64) -> bool {
        let i = usize::try_from(r).unwrap_or(usize::MAX);
        self.leg0.get(i) == self.leg1.get(i)
    }

    /// Regions whose legs differ.
    pub fn differing(&self) -> Vec<u64> {
        (0..self.leg0.len() as u64).filter(|&r| !self.same(r)).collect()
    }

    /// Whether the two legs are identical.
    pub fn identical(&self) -> bool {
        self.leg0 == self.leg1
    }

    pub(crate) fn write(&mut self, leg: u8, r: u64, id: u64) {
        let i = usize::try_from(r).unwrap_or(usize::MAX);
        let target = if leg == 0 { &mut self.leg0 } else { &mut self.leg1 };
        if let Some(slot) = target.get_mut(i) {
            *slot = id;
        }
        if self.same(r) {
            self.abandoned.remove(&r);
        }
    }

    pub(crate) fn begin_write(&mut self, r: u64) {
        *self.inflight.entry(r).or_default() += 1;
    }

    pub(crate) fn end_write(&mut self, r: u64) {
        if let Some(n) = self.inflight.get_mut(&r) {
            *n -= 1;
            if *n == 0 {
                self.inflight.remove(&r);
            }
        }
    }

    pub(crate) fn abandon(&mut self, r: u64) {
        if !self.same(r) {
            self.abandoned.insert(r);
        }
    }

    /// Whether a difference at `r` is expected right now: a write is in
    /// flight there, or a crashed node left it half written and the cluster
    /// has not resynced it yet. (Whether it is resynced in the end is what
    /// the final comparison of the legs checks.)
    pub fn excused(&self, r: u64) -> bool {
        self.inflight.contains_key(&r) || self.abandoned.contains(&r)
    }

    /// Regions a crashed node left half written and not yet resynced.
    pub fn abandoned(&self) -> Vec<u64> {
        self.abandoned.iter().copied().collect()
    }

    pub(crate) fn read0(&self, r: u64) -> u64 {
        self.leg0.get(usize::try_from(r).unwrap_or(usize::MAX)).copied().unwrap_or(0)
    }
}

/// Legs shared by the simulated kernels of several nodes.
#[derive(Clone, Debug, Default)]
pub struct SharedLegs(Arc<Mutex<Legs>>);

impl SharedLegs {
    /// Wraps legs for sharing.
    pub fn new(legs: Legs) -> SharedLegs {
        SharedLegs(Arc::new(Mutex::new(legs)))
    }

    /// Locks the legs. A poisoned lock (a panicking test thread) still
    /// yields the data.
    pub fn lock(&self) -> MutexGuard<'_, Legs> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
