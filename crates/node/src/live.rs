//! The liveness task of one node: the loop around [`crate::liveness`].
//!
//! Every tick (of the node's own clock) it renews the node's lease through
//! Raft when due, fences the node when its lease has run out, on the leader
//! evicts members whose leases ran out, and stands for election through
//! pre-vote when no leader has answered for a randomised quiet period.
//! What a fence does and who hears of evictions are [`LiveHooks`]: the
//! daemon runs its fence action, the simulation kills its simulated kernel.
//!
//! Every answer to the kernel is also gated by the lease itself
//! ([`Lease::holds`]), not only by the fence the task runs once a tick: a
//! node whose process or machine was stopped (SIGSTOP, a VM pause) for
//! longer than its lease runs its pending answers when it wakes, possibly
//! before the task's next tick.
//!
//! The leader's lease table also needs every applied
//! [`regions::Effect::LeaseRenewed`]; whoever consumes the node's applied
//! effects calls [`Renewals::renewed`] (from [`LiveTask::renewals`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand08::rngs::SmallRng;
use rand08::{Rng, SeedableRng};
use regions::{Command, NodeId};
use replication::{LeaderLink, Proposal, Replica};
use tokio::time::Instant;

use crate::liveness::{LeaseTable, SelfFence, Timing, Verdict};

/// The deadline of this node's lease, shared by the liveness task (which
/// extends it with every committed renewal) and whatever answers the
/// kernel (which answers only while it holds). Without a liveness task it
/// always holds. It also keeps when the node last had a quorum's word (the
/// send time of its newest committed renewal, or its join), for health.
#[derive(Clone, Debug, Default)]
pub struct Lease(Arc<Mutex<LeaseState>>);

#[derive(Clone, Copy, Debug, Default)]
struct LeaseState {
    until: Option<Instant>,
    confirmed: Option<Instant>,
}

impl Lease {
    /// A lease in force for nothing yet: it holds until a liveness task
    /// starts it.
    pub fn new() -> Lease {
        Lease::default()
    }

    /// Whether the node may answer its kernel now.
    pub fn holds(&self) -> bool {
        lock(&self.0).until.is_none_or(|until| Instant::now() < until)
    }

    /// The lease holds for `valid_for` from now (the node joined or
    /// rejoined through a quorum just now).
    pub fn grant(&self, valid_for: Duration) {
        let now = Instant::now();
        *lock(&self.0) = LeaseState { until: Some(now + valid_for), confirmed: Some(now) };
    }

    /// A renewal sent at `sent` committed: the lease holds until `until`,
    /// if later.
    fn extend_to(&self, sent: Instant, until: Instant) {
        let mut d = lock(&self.0);
        if d.until.is_none_or(|old| old < until) {
            d.until = Some(until);
        }
        if d.confirmed.is_none_or(|old| old < sent) {
            d.confirmed = Some(sent);
        }
    }

    /// How long ago a quorum last confirmed this node (the send time of
    /// its newest committed renewal, or its join); `None` before its
    /// liveness task started (not joined yet).
    pub fn quorum_age(&self) -> Option<Duration> {
        lock(&self.0).confirmed.map(|c| c.elapsed())
    }

    /// The lease ran out (or the node stops renewing): nothing is answered
    /// until the next grant.
    pub fn end(&self) {
        lock(&self.0).until = Some(Instant::now());
    }
}

/// What the liveness task does outside itself.
pub trait LiveHooks: Send + Sync + 'static {
    /// The lease ran out: run the fence action now. The task ends after.
    fn fence(&self);
    /// Whether the node is stopped (the simulation freezes nodes to test
    /// pauses): the task does nothing meanwhile, as a stopped process.
    fn frozen(&self) -> bool {
        false
    }
    /// The eviction of `node`, proposed by this node as leader, committed.
    fn evicted(&self, _node: NodeId) {}
    /// A line for debugging (renewal failures, campaigns).
    fn trace(&self, _line: String) {}
}

/// How the task runs.
#[derive(Clone, Copy, Debug)]
pub struct LiveConfig {
    /// The cluster's liveness timings (validated).
    pub timing: Timing,
    /// This node's clock rate relative to tokio's clock (1.0 but in the
    /// simulation, which skews clocks).
    pub rate: f64,
    /// Seed of the election-timeout jitter.
    pub seed: u64,
    /// Drive elections through pre-vote (openraft's timer off).
    pub prevote: bool,
    /// Run the fence when the lease runs out (off only for a demonstration
    /// that the simulation catches its absence).
    pub fence: bool,
}

/// The liveness task of one node.
pub struct LiveTask<L: LeaderLink> {
    id: NodeId,
    incarnation: u64,
    session: u64,
    replica: Arc<Replica<L>>,
    table: Arc<Mutex<LeaseTable>>,
    config: LiveConfig,
    start: Instant,
    lease: Lease,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<L: LeaderLink> LiveTask<L> {
    /// The task of `replica`'s node, whose kernel joined with `incarnation`
    /// in `session` (the session its renewals renew); its clock starts at
    /// `start`.
    pub fn new(
        replica: Arc<Replica<L>>,
        incarnation: u64,
        session: u64,
        config: LiveConfig,
        start: Instant,
    ) -> LiveTask<L> {
        let id = replica.id;
        LiveTask { id, incarnation, session, replica, table: Arc::default(), config, start, lease: Lease::new() }
    }

    /// The task keeps `lease` (shared with the node's answers to its
    /// kernel) in step with its own.
    pub fn with_lease(mut self, lease: Lease) -> LiveTask<L> {
        self.lease = lease;
        self
    }

    /// The lease length in tokio time on this node's clock.
    fn lease_length(&self) -> Duration {
        Duration::from_secs_f64(self.config.timing.fence_after_ms as f64 / 1e3 / self.config.rate)
    }

    /// The node's clock, in milliseconds since `start`.
    pub fn now(&self) -> u64 {
        local_ms(self.start, self.config.rate)
    }

    /// A handle for the effects consumer: call it with every applied
    /// `LeaseRenewed`.
    pub fn renewals(&self) -> Renewals {
        Renewals { table: self.table.clone(), start: self.start, rate: self.config.rate }
    }

    /// Runs until the node fences.
    pub async fn run(self, hooks: Arc<dyn LiveHooks>) {
        let t = self.config.timing;
        let fence = Arc::new(Mutex::new(SelfFence::new(self.now())));
        self.lease.grant(self.lease_length());
        let evicting: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
        let mut next_renew = 0;
        let tick = Duration::from_secs_f64(t.tick_ms as f64 / 1e3 / self.config.rate);
        if self.config.prevote {
            self.replica.take_over_elections();
        }
        let mut rng = SmallRng::seed_from_u64(self.config.seed);
        let replica = &self.replica;
        let mut quiet = || replica.campaign_wait(rng.gen_range(0.0..=1.0));
        let mut wait = quiet();
        loop {
            tokio::time::sleep(tick).await;
            if hooks.frozen() {
                continue;
            }
            let now = self.now();
            if now >= next_renew {
                next_renew = now + t.renew_every_ms;
                self.renew(now, &fence, &hooks);
            }
            if lock(&fence).check(now, &t) == Verdict::Fence && self.config.fence {
                self.lease.end();
                hooks.fence();
                return;
            }
            self.leader_duty(now, &evicting, &hooks);
            if self.config.prevote {
                let due =
                    self.replica.leader_contact_age() >= wait && !self.replica.metrics().borrow().state.is_leader();
                if self.replica.campaign_if_leaderless(wait).await {
                    hooks.trace(format!("n{} stood for election", self.id));
                }
                if due {
                    wait = quiet();
                }
            }
        }
    }

    /// Proposes a renewal sent at `now`; its commit extends the lease.
    fn renew(&self, now: u64, fence: &Arc<Mutex<SelfFence>>, hooks: &Arc<dyn LiveHooks>) {
        let (replica, fence, hooks) = (self.replica.clone(), fence.clone(), hooks.clone());
        let applied = self.replica.state.last_applied().map_or(0, |l| l.index);
        let renew = Command::Renew { node: self.id, incarnation: self.incarnation, session: self.session, applied };
        let sent = Instant::now();
        let deadline = sent + Duration::from_millis(2 * self.config.timing.renew_every_ms);
        let (lease, until) = (self.lease.clone(), sent + self.lease_length());
        tokio::spawn(async move {
            match replica.propose(Proposal { commands: vec![renew] }, deadline).await {
                Ok(out) if out.0.first().is_some_and(|o| o.answer.is_ok()) => {
                    let mut f = lock(&fence);
                    f.committed(now);
                    if !f.is_fenced() {
                        lease.extend_to(sent, until);
                    }
                }
                other => hooks.trace(format!("n{} renewal failed: {other:?}", replica.id)),
            }
        });
    }

    /// On the leader: evict every member unseen for `dead_after`.
    fn leader_duty(&self, now: u64, evicting: &Arc<Mutex<BTreeSet<u64>>>, hooks: &Arc<dyn LiveHooks>) {
        let leads = self.replica.metrics().borrow().state.is_leader();
        let expired = {
            let mut table = lock(&self.table);
            match (leads, table.leading()) {
                (true, false) => table.became_leader(now),
                (false, true) => table.stepped_down(),
                _ => {}
            }
            if !leads {
                return;
            }
            let members: Vec<(NodeId, u64)> =
                self.replica.state.read(|m| m.members().iter().map(|(n, mm)| (*n, mm.joined)).collect());
            table.set_members(members, now);
            table.expired(self.id, now, &self.config.timing)
        };
        // Each eviction names the membership its timer ran for.
        for (n, joined) in expired {
            if !lock(evicting).insert(n.0) {
                continue;
            }
            let (replica, evicting, hooks) = (self.replica.clone(), evicting.clone(), hooks.clone());
            tokio::spawn(async move {
                hooks.trace(format!("n{} EVICT proposed by the leader", n.0));
                let p = Proposal { commands: vec![Command::NodeExpired { node: n, joined }] };
                match replica.propose_as_leader(p, Instant::now() + Duration::from_secs(5)).await {
                    Ok(out) if out.0.first().is_some_and(|o| o.refusal.is_none()) => hooks.evicted(n),
                    Ok(_) => hooks.trace(format!("n{} eviction void: it joined again", n.0)),
                    Err(_) => {}
                }
                lock(&evicting).remove(&n.0);
            });
        }
    }
}

/// Elections through pre-vote from the start, before the node runs its
/// liveness task (while it joins): with openraft's own timer a restarted
/// node that cannot reach a leader, or whose log is behind, raises its term
/// election after election, and once it reaches the others its term makes
/// every real candidate's vote request fail while its own log cannot win
/// (the 10,000-seed run, seed 9280: a rebooted node at term 51 kept a
/// cluster at term 13 leaderless until every node fenced). Runs until it
/// is dropped; the liveness task takes over when it starts.
pub async fn prevote_elections<L: LeaderLink>(replica: Arc<Replica<L>>, seed: u64) {
    replica.take_over_elections();
    let raft_config = replica.config().clone();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut quiet = || replica.campaign_wait(rng.gen_range(0.0..=1.0));
    let mut wait = quiet();
    loop {
        tokio::time::sleep(Duration::from_millis(raft_config.heartbeat_interval)).await;
        let due = replica.leader_contact_age() >= wait && !replica.metrics().borrow().state.is_leader();
        let _ = replica.campaign_if_leaderless(wait).await;
        if due {
            wait = quiet();
        }
    }
}

/// Feeds applied renewals to the leader's lease table.
#[derive(Clone)]
pub struct Renewals {
    table: Arc<Mutex<LeaseTable>>,
    start: Instant,
    rate: f64,
}

impl Renewals {
    /// `node` renewed (its `LeaseRenewed` was applied here).
    pub fn renewed(&self, node: NodeId) {
        lock(&self.table).renewed(node, local_ms(self.start, self.rate));
    }
}

/// Milliseconds since `start` on a clock running at `rate`.
pub fn local_ms(start: Instant, rate: f64) -> u64 {
    (start.elapsed().as_secs_f64() * 1e3 * rate) as u64
}
