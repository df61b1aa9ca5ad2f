//! The data legs of a two-way mirror, modelled per region.
//!
//! A region holds, on each leg, the id of the last write each writer put
//! there. Writers are nodes: a cluster filesystem never lets two hosts
//! write the same block at once, so each node writes its own blocks of a
//! shared region, and a region "differs" when any of its blocks differs
//! between the legs. Legs are shared storage: every node's simulated kernel
//! writes the same [`Legs`], so writes from several nodes interleave exactly
//! as the simulation orders them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// A region's content on one leg: the last write id per writer.
pub type Blocks = BTreeMap<u64, u64>;

/// The writer id that stands for data left over from before the mirror
/// was synchronised.
pub const STALE: u64 = u64::MAX;

/// Contents of both legs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Legs {
    /// The default (primary) leg: reads go here, resync copies from here.
    pub leg0: Vec<Blocks>,
    /// The second leg.
    pub leg1: Vec<Blocks>,
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
        let stale: Blocks = if differ { BTreeMap::from([(STALE, 1)]) } else { BTreeMap::new() };
        Legs {
            leg0: vec![BTreeMap::new(); n],
            leg1: vec![stale; n],
            inflight: BTreeMap::new(),
            abandoned: BTreeSet::new(),
        }
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.leg0.len() as u64
    }

    fn idx(r: u64) -> usize {
        usize::try_from(r).unwrap_or(usize::MAX)
    }

    /// Whether region `r` holds the same data on both legs.
    pub fn same(&self, r: u64) -> bool {
        self.leg0.get(Self::idx(r)) == self.leg1.get(Self::idx(r))
    }

    /// Regions whose legs differ.
    pub fn differing(&self) -> Vec<u64> {
        (0..self.regions()).filter(|&r| !self.same(r)).collect()
    }

    /// Whether the two legs are identical.
    pub fn identical(&self) -> bool {
        self.leg0 == self.leg1
    }

    pub(crate) fn write(&mut self, leg: u8, r: u64, writer: u64, id: u64) {
        let target = if leg == 0 { &mut self.leg0 } else { &mut self.leg1 };
        if let Some(slot) = target.get_mut(Self::idx(r)) {
            slot.insert(writer, id);
        }
        if self.same(r) {
            self.abandoned.remove(&r);
        }
    }

    /// A resync copy: what the default leg holds now.
    pub(crate) fn read0(&self, r: u64) -> Blocks {
        self.leg0.get(Self::idx(r)).cloned().unwrap_or_default()
    }

    /// The end of a resync copy: the second leg gets what was read.
    pub(crate) fn copy_to_leg1(&mut self, r: u64, blocks: Blocks) {
        if let Some(slot) = self.leg1.get_mut(Self::idx(r)) {
            *slot = blocks;
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

    /// Region `r` as a crash mid-write leaves it: the default leg written,
    /// the other not (for tests that start from such legs).
    pub fn half_written(&mut self, r: u64) {
        self.write(0, r, u64::MAX, 1);
        self.abandon(r);
    }

    /// Regions a crashed node left half written and not yet resynced.
    pub fn abandoned(&self) -> Vec<u64> {
        self.abandoned.iter().copied().collect()
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
