//! Leases, eviction and self-fencing. Pure: every method takes the time
//! (milliseconds of the caller's monotonic clock) as an argument, so the
//! simulation drives it on simulated clocks, skewed per node.
//!
//! * Every node proposes [`regions::Command::Renew`] every
//!   [`Timing::renew_every_ms`]. A renewal that commits proves the node
//!   reached a quorum at or after the moment it was *sent*.
//! * The node ([`SelfFence`]) counts its lease from the send time of its
//!   last committed renewal. Once [`Timing::fence_after_ms`] have passed
//!   since, it fences: it stops answering its kernel and runs the fence
//!   action, which must have stopped its writes within
//!   [`Timing::fence_action_max_ms`].
//! * The leader ([`LeaseTable`]) notes each renewal when it applies it, by
//!   its own clock, and proposes [`regions::Command::NodeEvicted`] for a
//!   node unseen for [`Timing::dead_after_ms`]. A new leader starts every
//!   node's timer afresh at the moment it took office: it never evicts
//!   early on the strength of its predecessor's clock.
//!
//! Why that is safe is written out in `docs/fencing.md`; the inequality it
//! rests on is [`Timing::validate`].

use std::collections::BTreeMap;

use regions::NodeId;

/// The liveness timings of a cluster (every node must use the same). In a
/// configuration file every key is optional; a missing one keeps its
/// default, and the whole set is checked against the fencing inequality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// How often a node renews its lease.
    pub renew_every_ms: u64,
    /// How often a node checks its own lease and the leader its table.
    pub tick_ms: u64,
    /// A node whose last committed renewal was sent this long ago fences.
    pub fence_after_ms: u64,
    /// The longest the fence action may take to stop the node's writes.
    pub fence_action_max_ms: u64,
    /// The leader evicts a node it has not seen renew for this long.
    pub dead_after_ms: u64,
    /// The largest rate difference between any node's monotonic clock and
    /// real time, in parts per million.
    pub clock_drift_ppm: u64,
    /// Raft's upper election timeout: a leader's death stops every
    /// renewal until a new leader is elected, which may take several
    /// rounds; the lease must outlast that.
    pub election_max_ms: u64,
}

impl Default for Timing {
    /// Renew every 500 ms, fence after 8 s (a leader's death and four
    /// election rounds of 1.5 s fit in it), a fence action of at most 2 s,
    /// evict after 12 s, clocks within 1 % of real time.
    fn default() -> Timing {
        Timing {
            renew_every_ms: 500,
            tick_ms: 100,
            fence_after_ms: 8_000,
            fence_action_max_ms: 2_000,
            dead_after_ms: 12_000,
            clock_drift_ppm: 10_000,
            election_max_ms: 1_500,
        }
    }
}

/// Timings that break the fencing inequality, or are unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("liveness timing: {0}")]
pub struct TimingError(pub String);

impl Timing {
    /// The least `dead_after_ms` these timings allow: a fenced node has
    /// stopped writing, by the slowest real clock, before the leader, by
    /// the fastest, can evict it.
    pub fn least_dead_after_ms(&self) -> u64 {
        let rho = self.clock_drift_ppm.min(999_999) as u128;
        let m = 1_000_000u128;
        let node_side = (self.fence_after_ms + self.tick_ms + self.fence_action_max_ms) as u128;
        // node_side / (1 - rho) < dead_after / (1 + rho), with the leader's
        // own tick on top (it only delays an eviction, so it is not added).
        let need = node_side * (m + rho) / (m - rho);
        u64::try_from(need + 1).unwrap_or(u64::MAX)
    }

    /// Checks the fencing inequality and the liveness margins; one line
    /// per failure, the first one returned.
    pub fn validate(&self) -> Result<(), TimingError> {
        let e = |s: String| Err(TimingError(s));
        if self.renew_every_ms == 0 || self.tick_ms == 0 {
            return e("renew_every_ms and tick_ms must be above 0".into());
        }
        if self.clock_drift_ppm >= 100_000 {
            return e(format!("clock_drift_ppm {} is not a clock (at most 99999)", self.clock_drift_ppm));
        }
        if self.fence_after_ms < 3 * self.renew_every_ms {
            return e(format!(
                "fence_after_ms ({}) must be at least 3 × renew_every_ms ({}), or a healthy node fences after two lost renewals",
                self.fence_after_ms, self.renew_every_ms
            ));
        }
        let failover = self.renew_every_ms + 4 * self.election_max_ms;
        if self.fence_after_ms < failover {
            return e(format!(
                "fence_after_ms ({}) must be at least renew_every_ms + 4 × election_max_ms = {failover}, or every node fences while a new leader is elected",
                self.fence_after_ms
            ));
        }
        let least = self.least_dead_after_ms();
        if self.dead_after_ms < least {
            return e(format!(
                "dead_after_ms ({}) must be at least {least}: (fence_after {} + tick {} + fence_action_max {}) × (1+ρ)/(1−ρ) with ρ = {} ppm; otherwise survivors may resync a region a cut-off node is still writing",
                self.dead_after_ms, self.fence_after_ms, self.tick_ms, self.fence_action_max_ms, self.clock_drift_ppm
            ));
        }
        Ok(())
    }
}

/// The leader's view: when it last saw each member renew, by its clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTable {
    /// Per member: the membership ([`regions::Member::joined`]) and when it
    /// was last seen.
    seen: BTreeMap<NodeId, (u64, u64)>,
    /// When this node became leader (`None`: it is not leading).
    leading_since: Option<u64>,
}

impl LeaseTable {
    /// An empty table of a node that does not lead.
    pub fn new() -> LeaseTable {
        LeaseTable::default()
    }

    /// This node became leader at `now`: every member's timer starts now.
    pub fn became_leader(&mut self, now: u64) {
        self.leading_since = Some(now);
        for (_, t) in self.seen.values_mut() {
            *t = now;
        }
    }

    /// This node no longer leads.
    pub fn stepped_down(&mut self) {
        self.leading_since = None;
    }

    /// Whether this node leads.
    pub fn leading(&self) -> bool {
        self.leading_since.is_some()
    }

    /// The members are now `members`, each with its membership number
    /// (which changes when the node joins again): new ones, and ones that
    /// joined again since, start their timer at `now` (or at the start of
    /// this leadership, if later); gone ones are forgotten. Without the
    /// restart on a new join, a node evicted and back between two looks
    /// would be evicted again at once on its old timer.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = (NodeId, u64)>, now: u64) {
        let start = self.leading_since.map_or(now, |s| s.max(now));
        let members: BTreeMap<NodeId, (u64, u64)> = members
            .into_iter()
            .map(|(n, joined)| match self.seen.get(&n) {
                Some(&(j, t)) if j == joined => (n, (j, t)),
                _ => (n, (joined, start)),
            })
            .collect();
        self.seen = members;
    }

    /// `node` renewed; the leader applied the renewal at `now`.
    pub fn renewed(&mut self, node: NodeId, now: u64) {
        if let Some((_, t)) = self.seen.get_mut(&node) {
            *t = (*t).max(now);
        }
    }

    /// Members other than `me` unseen for more than `dead_after_ms`, if
    /// this node leads, each with the membership ([`regions::Member::joined`])
    /// its timer ran for: the eviction must name that one, not whatever
    /// membership the node has by the time it is proposed. A timer never
    /// started before this leadership.
    pub fn expired(&self, me: NodeId, now: u64, timing: &Timing) -> Vec<(NodeId, u64)> {
        let Some(since) = self.leading_since else { return Vec::new() };
        self.seen
            .iter()
            .filter(|(n, (_, t))| **n != me && now.saturating_sub((*t).max(since)) > timing.dead_after_ms)
            .map(|(n, (joined, _))| (*n, *joined))
            .collect()
    }

    /// When `node` was last seen, if it is a member.
    pub fn last_seen(&self, node: NodeId) -> Option<u64> {
        self.seen.get(&node).map(|(_, t)| *t)
    }
}

/// What a node must do about its own lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The lease holds: serve the kernel.
    Serve,
    /// The lease ran out just now: stop answering the kernel and run the
    /// fence action.
    Fence,
    /// Fenced earlier and still fenced.
    Fenced,
}

/// A node's own lease, counted from the send time of its last committed
/// renewal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelfFence {
    /// Send time of the newest renewal known committed.
    valid_from: Option<u64>,
    fenced: bool,
}

impl SelfFence {
    /// A node that has not renewed yet: the lease starts at `now` (the
    /// node has just joined, which itself committed through a quorum).
    pub fn new(now: u64) -> SelfFence {
        SelfFence { valid_from: Some(now), fenced: false }
    }

    /// A renewal sent at `sent_at` committed.
    pub fn committed(&mut self, sent_at: u64) {
        if !self.fenced {
            self.valid_from = Some(self.valid_from.map_or(sent_at, |v| v.max(sent_at)));
        }
    }

    /// The verdict at `now`. Once fenced, a node stays fenced until
    /// [`SelfFence::rejoined`]: a renewal that commits later does not undo
    /// a fence action already taken.
    pub fn check(&mut self, now: u64, timing: &Timing) -> Verdict {
        if self.fenced {
            return Verdict::Fenced;
        }
        let expired = self.valid_from.is_none_or(|v| now.saturating_sub(v) >= timing.fence_after_ms);
        if expired {
            self.fenced = true;
            Verdict::Fence
        } else {
            Verdict::Serve
        }
    }

    /// Whether the node is fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// The node rejoined the cluster at `now` (re-marked and re-registered
    /// its tables): it serves again.
    pub fn rejoined(&mut self, now: u64) {
        self.fenced = false;
        self.valid_from = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_timing_is_valid_and_the_inequality_bites() {
        let t = Timing::default();
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.least_dead_after_ms(), 10_305);
        let bad = Timing { dead_after_ms: 10_304, ..t };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("dead_after_ms (10304) must be at least 10305"), "{err}");
        let jumpy = Timing { fence_after_ms: 1_000, ..t };
        assert!(jumpy.validate().unwrap_err().to_string().contains("3 × renew_every_ms"));
        let hasty = Timing { fence_after_ms: 6_000, ..t };
        assert!(hasty.validate().unwrap_err().to_string().contains("4 × election_max_ms = 6500"));
        let no_clock = Timing { clock_drift_ppm: 200_000, ..t };
        assert!(no_clock.validate().is_err());
    }

    #[test]
    fn a_node_fences_when_its_last_committed_renewal_is_too_old() {
        let t = Timing::default();
        let mut f = SelfFence::new(0);
        f.committed(400);
        assert_eq!(f.check(8_399, &t), Verdict::Serve);
        assert_eq!(f.check(8_400, &t), Verdict::Fence);
        assert_eq!(f.check(8_401, &t), Verdict::Fenced);
        // A late commit does not lift a fence.
        f.committed(8_300);
        assert_eq!(f.check(8_402, &t), Verdict::Fenced);
        f.rejoined(10_000);
        assert_eq!(f.check(10_001, &t), Verdict::Serve);
    }

    #[test]
    fn the_lease_counts_from_the_send_time_not_the_commit_time() {
        let t = Timing::default();
        let mut f = SelfFence::new(0);
        // Sent at 100, committed (and learned) at 7 900: still from 100.
        f.committed(100);
        assert_eq!(f.check(8_099, &t), Verdict::Serve);
        assert_eq!(f.check(8_100, &t), Verdict::Fence);
    }

    #[test]
    fn a_new_leader_starts_every_timer_afresh() {
        let t = Timing::default();
        let mut table = LeaseTable::new();
        table.set_members([(NodeId(1), 1), (NodeId(2), 2), (NodeId(3), 3)], 0);
        assert!(table.expired(NodeId(1), 100_000, &t).is_empty(), "not leading: no verdicts");
        table.became_leader(50_000);
        assert!(table.expired(NodeId(1), 62_000, &t).is_empty());
        table.renewed(NodeId(2), 61_000);
        assert_eq!(table.expired(NodeId(1), 62_001, &t), vec![(NodeId(3), 3)]);
        table.stepped_down();
        assert!(table.expired(NodeId(1), 90_000, &t).is_empty());
    }

    #[test]
    fn a_member_added_while_leading_gets_a_full_period() {
        let t = Timing::default();
        let mut table = LeaseTable::new();
        table.became_leader(1_000);
        table.set_members([(NodeId(1), 1), (NodeId(4), 4)], 5_000);
        assert!(table.expired(NodeId(1), 17_000, &t).is_empty());
        assert_eq!(table.expired(NodeId(1), 17_001, &t), vec![(NodeId(4), 4)]);
    }

    #[test]
    fn a_member_that_joined_again_gets_a_full_period() {
        let t = Timing::default();
        let mut table = LeaseTable::new();
        table.became_leader(0);
        table.set_members([(NodeId(1), 1), (NodeId(2), 2)], 0);
        // Node 2 was evicted and joined again between two looks: its old
        // timer does not carry over.
        table.set_members([(NodeId(1), 1), (NodeId(2), 5)], 20_000);
        assert!(table.expired(NodeId(1), 20_001, &t).is_empty());
        assert_eq!(table.expired(NodeId(1), 20_000 + t.dead_after_ms + 1, &t), vec![(NodeId(2), 5)]);
    }

    proptest::proptest! {
        /// The inequality holds for every valid timing: the latest real
        /// moment a fenced node can still write is before the earliest real
        /// moment the leader can evict it, whatever the clock rates within
        /// the drift bound.
        #[test]
        fn a_valid_timing_fences_before_any_eviction(
            fence_after in 2_500u64..20_000,
            action in 0u64..10_000,
            tick in 1u64..500,
            ppm in 0u64..50_000,
            slack in 0u64..5_000,
            node_rate in 0.0f64..1.0,
            leader_rate in 0.0f64..1.0,
        ) {
            let mut t = Timing {
                renew_every_ms: 500,
                tick_ms: tick,
                fence_after_ms: fence_after,
                fence_action_max_ms: action,
                dead_after_ms: 0,
                clock_drift_ppm: ppm,
                election_max_ms: 500,
            };
            t.dead_after_ms = t.least_dead_after_ms() + slack;
            proptest::prop_assert!(t.validate().is_ok());
            let rho = ppm as f64 / 1e6;
            // Clock rates (local ms per real ms) within [1-ρ, 1+ρ].
            let node = 1.0 - rho + 2.0 * rho * node_rate;
            let leader = 1.0 - rho + 2.0 * rho * leader_rate;
            // Real time from the renewal's send to the end of the fence
            // action (latest), and from then to the eviction (earliest).
            let stops = (t.fence_after_ms + t.tick_ms + t.fence_action_max_ms) as f64 / node;
            let evicts = t.dead_after_ms as f64 / leader;
            proptest::prop_assert!(stops < evicts, "stops {stops} evicts {evicts}");
        }
    }
}
