//! The deterministic cluster simulation: a seeded run of three Raft nodes
//! (openraft, redb in memory, the in-memory network) with one simulated
//! kernel each, on a single-threaded tokio runtime with paused time.
//!
//! One seed decides everything: the log flavour, the workload, the sync
//! latency of the simulated disks, the rates of lost requests, lost
//! replies and late duplicates on the network, which node is cut off from
//! the others and when, which node is frozen (kernel and daemon) past its
//! lease, whose daemon alone is killed with a write on its way and
//! restarted under its running kernel, which node crashes mid-write
//! (losing what its disk had not synced), and whether it comes back.
//! Faults first (safety phase), then the network heals and the cluster
//! must converge (liveness phase): every node's
//! `dmsetup status` shows the mirror in sync, the legs are identical and
//! every replica holds the same state. Every request is checked by the
//! kernel simulator as the kernel would (sizes, values, I5 against the
//! legs), every replica checks the machine's invariants after every
//! command (in every build profile), and every node runs the daemon's own
//! pipeline (`node::host::Host`).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use replication::memnet::Faults;

use node::liveness::Timing;

use crate::raft_cluster::{LivenessConfig, RaftCluster, Storage};

/// What a seed did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimSummary {
    /// The seed.
    pub seed: u64,
    /// The node that crashed, if any.
    pub crashed: Option<u64>,
    /// Whether it rebooted.
    pub rebooted: bool,
    /// Partitions injected.
    pub partitions: u32,
    /// Nodes that fenced themselves (cut off past their lease).
    pub fenced: u32,
    /// Nodes frozen past their lease.
    pub freezes: u32,
    /// Daemons killed alone (their kernels kept running) and restarted.
    pub daemon_kills: u32,
    /// Simulated milliseconds.
    pub sim_ms: u64,
    /// A hash of the final replicated state and the legs: equal for equal
    /// runs.
    pub fingerprint: u64,
}

/// Runs one seed on its own single-threaded runtime with paused time.
pub fn run_seed(seed: u64) -> Result<SimSummary, String> {
    on_sim_runtime(seed, scenario(seed)).map_err(|e| format!("seed {seed}: {e}"))
}

/// Runs a seed's future on its own single-threaded runtime with paused
/// time, openraft's randomness seeded from `seed`.
pub(crate) fn on_sim_runtime<T>(
    seed: u64,
    run: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    replication::runtime::seed_thread_rng(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(run)
}

/// The simulation's lease timings: the fencing inequality holds with a
/// seed-chosen slack.
pub(crate) fn sim_timing(rng: &mut SmallRng) -> Result<Timing, String> {
    let mut timing = Timing {
        renew_every_ms: 200,
        tick_ms: 50,
        fence_after_ms: 4_000,
        fence_action_max_ms: 100,
        dead_after_ms: 0,
        clock_drift_ppm: 10_000,
        election_max_ms: 900,
    };
    timing.dead_after_ms = timing.least_dead_after_ms() + rng.random_range(0..500);
    timing.validate().map_err(|e| e.to_string())?;
    Ok(timing)
}

async fn scenario(seed: u64) -> Result<SimSummary, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let log_args = if rng.random_bool(0.5) { "clustered-core 8 nosync" } else { "clustered-core 8" };
    let regions = 32;
    // Every sync takes 0.1–2 ms; unsynced writes die with their node.
    let sync_latency = Duration::from_micros(rng.random_range(100..2000));
    let storage = Storage::Memory { dbs: BTreeMap::new(), sync_latency };
    // Leases: every node's clock runs at its own rate within the drift
    // bound; the timing satisfies the fencing inequality by a seed-chosen
    // slack.
    let timing = sim_timing(&mut rng)?;
    let rates: BTreeMap<u64, f64> = (1..=3).map(|id| (id, 1.0 + rng.random_range(-0.0099..0.0099))).collect();
    // The fence action: a reboot, or for half the seeds a suspend of the
    // mirror and a rejoin without a reboot (DMLOGD_SIM_FENCE=reboot keeps
    // to reboots).
    let suspend = rng.random_bool(0.5) && std::env::var("DMLOGD_SIM_FENCE").map_or(true, |v| v != "reboot");
    let liveness = LivenessConfig { timing, rates, seed: rng.random(), suspend };
    let mut c = RaftCluster::start_live(storage, 3, log_args, regions, liveness).await;
    let mut crashed: BTreeMap<u64, u64> = BTreeMap::new();
    // Nodes whose kernel was stopped (frozen), from when.
    let mut stopped: BTreeMap<u64, u64> = BTreeMap::new();
    // Lost requests, lost replies, late duplicates and jitter on every
    // message, from the seed.
    let faults = Faults {
        drop_request: rng.random_range(0.0..0.02),
        drop_reply: rng.random_range(0.0..0.02),
        duplicate: rng.random_range(0.0..0.05),
        jitter: Duration::from_micros(rng.random_range(0..3000)),
    };
    c.net.set_faults(faults, rng.random());
    let mut summary = SimSummary {
        seed,
        crashed: None,
        rebooted: false,
        partitions: 0,
        fenced: 0,
        freezes: 0,
        daemon_kills: 0,
        sim_ms: 0,
        fingerprint: 0,
    };

    // Safety phase: writes from every node, with a node cut off now and then.
    let mut cut_until: Option<(u64, u64)> = None;
    for _ in 0..rng.random_range(50..150) {
        for id in c.nodes.keys().copied().collect::<Vec<_>>() {
            if rng.random_range(0..100) < 30 {
                let r =
                    if rng.random_bool(0.4) { rng.random_range(0..4) } else { c.pick_region(id, &mut rng, regions) };
                c.write(id, r);
            }
        }
        match cut_until {
            Some((_, until)) if c.now_ms() >= until => {
                c.net.heal();
                c.note("HEALED");
                cut_until = None;
                // A node that fenced while cut off rebooted; it comes back.
                for id in c.reap_fenced().await {
                    summary.fenced += 1;
                    if !c.reboot(id).await {
                        return Err(format!("n{id} could not rejoin after its fence; {}", c.raft_states()));
                    }
                }
            }
            None if rng.random_range(0..100) < 3 => {
                let victim = rng.random_range(1..=3);
                c.net.isolate(regions::NodeId(victim));
                summary.partitions += 1;
                cut_until = Some((victim, c.now_ms() + rng.random_range(100..5000)));
                c.note(&format!("n{victim} CUT OFF until {:?}", cut_until));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.net.heal();
    // Sometimes one node is cut off for longer than dead_after while every
    // node keeps writing: it must fence before the others evict it and
    // resync what it was writing.
    if rng.random_bool(0.3) {
        let victim = rng.random_range(1..=3u64);
        c.net.isolate(regions::NodeId(victim));
        c.note(&format!("n{victim} CUT OFF past dead_after"));
        summary.partitions += 1;
        let until = c.now_ms() + timing.dead_after_ms + rng.random_range(500..1500);
        while c.now_ms() < until {
            for id in c.nodes.keys().copied().collect::<Vec<_>>() {
                if rng.random_range(0..100) < 30 {
                    // The victim's kernel rewrites regions it has marked.
                    c.write(id, rng.random_range(0..8));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.net.heal();
    }
    // A node cut off near the end may fence just after the heal (its lease
    // ran out meanwhile): wait a lease, then bring fenced nodes back, so
    // the crash below is the only fault (three nodes survive one).
    tokio::time::sleep(Duration::from_millis(timing.fence_after_ms + 500)).await;
    for id in c.reap_fenced().await {
        summary.fenced += 1;
        if !c.reboot(id).await {
            return Err(format!("n{id} could not rejoin after its fence; {}", c.raft_states()));
        }
    }

    // Sometimes a whole node is frozen (kernel and daemon, a VM pause) for
    // longer than dead_after: the others evict it; when it wakes it must
    // answer nothing before it fences.
    if rng.random_bool(0.15) {
        let victim = rng.random_range(1..=3u64);
        let at = c.now_ms();
        c.freeze(victim);
        c.note(&format!("n{victim} FROZEN"));
        summary.freezes += 1;
        stopped.entry(victim).or_insert(at);
        let until = at + timing.dead_after_ms + rng.random_range(500..3000);
        while c.now_ms() < until {
            for id in c.nodes.keys().copied().filter(|&id| id != victim).collect::<Vec<_>>() {
                if rng.random_range(0..100) < 30 {
                    c.write(id, rng.random_range(0..8));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.thaw(victim);
        // It fences at its first tick awake; a rebooted one comes back.
        tokio::time::sleep(Duration::from_millis(timing.tick_ms * 4)).await;
        for id in c.reap_fenced().await {
            summary.fenced += 1;
            if !c.reboot(id).await {
                return Err(format!("n{id} could not rejoin after its fence; {}", c.raft_states()));
            }
        }
    }
    // A node fenced without a reboot rejoins by itself: let it, so that the
    // crash below hits a member.
    if !c.wait_unfenced(Duration::from_secs(30)).await {
        return Err(format!("a fenced node did not rejoin; {}", c.raft_states()));
    }
    // Sometimes a node's daemon alone dies (`kill -9`) with a MARK or FLUSH
    // on its way; its kernel keeps its tables, and its supervisor restarts
    // the daemon within its lease. Requests the kernel sends meanwhile
    // find nobody (it reconnects when the daemon is back).
    if rng.random_bool(0.2) {
        let victim = rng.random_range(1..=3u64);
        for _ in 0..6_000 {
            if c.marking(victim) {
                break;
            }
            if let Some(r) = c.unmarked_region(victim, &mut rng, regions) {
                c.write(victim, r);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c.kill_daemon(victim).await;
        summary.daemon_kills += 1;
        let until = c.now_ms() + rng.random_range(200..3000);
        while c.now_ms() < until {
            for id in c.nodes.keys().copied().collect::<Vec<_>>() {
                if rng.random_range(0..100) < 30 {
                    let r = c.pick_region(id, &mut rng, regions);
                    c.write(id, r);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !c.restart_daemon(victim, Duration::from_secs(30)).await {
            return Err(format!("n{victim}'s daemon did not join again; {}", c.raft_states()));
        }
    }
    // A node dies mid-write; the cluster evicts it; maybe it comes back.
    if rng.random_bool(0.7) {
        let victim = rng.random_range(1..=3u64);
        for _ in 0..500 {
            if c.writing(victim) {
                break;
            }
            c.write(victim, rng.random_range(0..regions));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let at = c.now_ms();
        crashed.insert(victim, at);
        c.crash(victim).await;
        summary.crashed = Some(victim);
        // The leader notices the silence and evicts it.
        if !c.wait_evicted(victim, at, Duration::from_secs(30)).await {
            return Err(format!("n{victim} was never evicted; {}", c.raft_states()));
        }
        for _ in 0..rng.random_range(10..60) {
            for id in c.nodes.keys().copied().collect::<Vec<_>>() {
                if rng.random_range(0..100) < 30 {
                    let r = c.pick_region(id, &mut rng, regions);
                    c.write(id, r);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if rng.random_bool(0.5) {
            if !c.reboot(victim).await {
                return Err(format!("n{victim} could not rejoin"));
            }
            summary.rebooted = true;
        }
    }

    // Liveness phase: no more faults; the cluster must converge.
    c.net.heal();
    c.net.set_faults(Faults::default(), 0);
    for id in c.reap_fenced().await {
        summary.fenced += 1;
        if !c.reboot(id).await {
            return Err(format!("n{id} could not rejoin after its fence; {}", c.raft_states()));
        }
    }
    // A node evicted while frozen could not write either (the earliest
    // stop of a node counts).
    for (id, at) in stopped {
        let t = crashed.entry(id).or_insert(at);
        *t = (*t).min(at);
    }
    // Up to 10 simulated minutes: a kernel draining a backlog of writes
    // while a low region is out of sync asks IS_REMOTE_RECOVERING for each
    // (at most one per 250 ms per host), and a kick waits for that drain.
    let verdict = c.verify(Duration::from_secs(600)).await.and_then(|()| c.check_fencing(&crashed));
    summary.sim_ms = c.now_ms();
    let mut h = DefaultHasher::new();
    if let Some(n) = c.nodes.values().next() {
        n.replica.state.read(|m| m.snapshot()).hash(&mut h);
    }
    c.legs.lock().leg0.hash(&mut h);
    summary.fingerprint = h.finish();
    c.shutdown().await;
    verdict.map(|()| summary)
}
