//! Named liveness scenarios of the deterministic cluster simulation. Each
//! aims at one mechanism of eviction, fencing or rejoin, runs over seeds of
//! its own (timings, clock rates, workload, which node) and checks what
//! that mechanism is for, besides the usual end state (every node reports
//! the mirror in sync, the legs are identical, the replicas agree, no
//! kernel saw a violation). `DMLOGD_SIM_BREAK` switches a mechanism off
//! (see `docs/testing.md`): the scenario aimed at it must then fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use node::liveness::Timing;

use crate::raft_cluster::{LiveEvent, LivenessConfig, RaftCluster, Storage};
use crate::raft_sim::{on_sim_runtime, sim_timing};

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A writer dies with writes half done: the survivors resync exactly
    /// the regions it had marked, and the legs converge.
    WriterCrash,
    /// A node cut off from the others while writing fences before they
    /// evict it and writes nothing after its eviction.
    PartitionedMinority,
    /// A node fenced by suspending its mirror comes back without a
    /// reboot: it marks again what its kernel may hold dirty before it
    /// answers, and no other node copies those regions until it cleared
    /// them.
    Rejoin,
    /// The node recovering a region dies mid-copy, holding resync claims
    /// on further regions, some of them answered SET_REGION_SYNC by its
    /// node and not yet committed: the others recover the region and
    /// everything it claimed.
    RecovererDies,
    /// A whole node (kernel and daemon) is frozen for longer than
    /// `dead_after`: the others evict it and resync; when it wakes it
    /// answers nothing before it fences.
    Frozen,
    /// The leader dies just as a follower, cut off for most of its lease,
    /// comes back: the new leader does not evict the follower on the old
    /// leader's timer (no node is evicted before it fenced).
    LeaderChange,
    /// A whole node stops exactly when its daemon has a reply ready to send
    /// (between the lane's lease check and the send): after it wakes, past
    /// its lease, no reply reaches its kernel before it fenced.
    FrozenAtSend,
    /// A writer's kernel transport dies: its daemon stops renewing, fences
    /// and exits before the others evict it; they resync its regions.
    TransportDies,
    /// A node's fence action fails: it answers nothing more, never rejoins
    /// by itself, until an operator resets it.
    FenceFails,
    /// A writer's daemon alone is killed (`kill -9`) with a MARK or FLUSH
    /// unanswered, and restarted before or after the kernel's 15 s re-send
    /// (which then finds no daemon and reconnects); then another node
    /// crashes mid-write; later the restarted node is cut off, fences and
    /// rejoins with what its journal kept.
    DaemonRestart,
    /// A writer's daemon alone is killed right after it acknowledged a
    /// MARK, before the FLUSH that follows is answered; it restarts before
    /// or after the kernel's 15 s re-send; the kernel then writes under
    /// that mark and the whole node crashes mid-write: the survivors
    /// resync what it wrote.
    MarkAckKill,
    /// A writer's daemon alone is killed right after it acknowledged a
    /// CLEAR, whose commit it had deferred; once it is back and its kernel
    /// idle, the cluster holds no mark of it that its kernel does not
    /// (nothing stays dirty for good), and a later crash of the node is
    /// resynced.
    ClearsLost,
    /// A node's leg write fails (SET_REGION_SYNC(r, 0)) while another node
    /// writes the same region, and so answers IN_SYNC of it from its own
    /// replica; that node may be cut off at that moment. The failed write
    /// is answered only once no such node can still answer 1 for the
    /// region (I5).
    FailedWrite,
    /// The leader answers IN_SYNC under its read lease, and then is cut
    /// off or has its daemon restarted while another node's leg write of
    /// the region fails: no kernel that asks after the failed write was
    /// answered is told the region is in sync (I5).
    LeaseRead,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 14] = [
        Scenario::WriterCrash,
        Scenario::PartitionedMinority,
        Scenario::Rejoin,
        Scenario::RecovererDies,
        Scenario::Frozen,
        Scenario::LeaderChange,
        Scenario::FrozenAtSend,
        Scenario::TransportDies,
        Scenario::FenceFails,
        Scenario::DaemonRestart,
        Scenario::MarkAckKill,
        Scenario::ClearsLost,
        Scenario::FailedWrite,
        Scenario::LeaseRead,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::WriterCrash => "writer-crash",
            Scenario::PartitionedMinority => "partitioned-minority",
            Scenario::Rejoin => "rejoin",
            Scenario::RecovererDies => "recoverer-dies",
            Scenario::Frozen => "frozen",
            Scenario::LeaderChange => "leader-change",
            Scenario::FrozenAtSend => "frozen-at-send",
            Scenario::TransportDies => "transport-dies",
            Scenario::FenceFails => "fence-fails",
            Scenario::DaemonRestart => "daemon-restart",
            Scenario::MarkAckKill => "mark-ack-kill",
            Scenario::ClearsLost => "clears-lost",
            Scenario::FailedWrite => "failed-write",
            Scenario::LeaseRead => "lease-read",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Runs `scenario` with `seed`; on success, one line on what happened.
pub fn run(scenario: Scenario, seed: u64) -> Result<String, String> {
    let run = async move {
        match scenario {
            Scenario::WriterCrash => writer_crash(seed).await,
            Scenario::PartitionedMinority => partitioned_minority(seed).await,
            Scenario::Rejoin => rejoin(seed).await,
            Scenario::RecovererDies => recoverer_dies(seed).await,
            Scenario::Frozen => frozen(seed).await,
            Scenario::LeaderChange => leader_change(seed).await,
            Scenario::FrozenAtSend => frozen_at_send(seed).await,
            Scenario::TransportDies => transport_dies(seed).await,
            Scenario::FenceFails => fence_fails(seed).await,
            Scenario::DaemonRestart => daemon_restart(seed).await,
            Scenario::MarkAckKill => mark_ack_kill(seed).await,
            Scenario::ClearsLost => clears_lost(seed).await,
            Scenario::FailedWrite => failed_write(seed).await,
            Scenario::LeaseRead => lease_read(seed).await,
        }
    };
    on_sim_runtime(seed, run).map_err(|e| format!("{} seed {seed}: {e}", scenario.name()))
}

/// A cluster of three with automatic liveness; the fence action is a
/// reboot, or a suspend and a rejoin without reboot if `suspend`.
async fn start(rng: &mut SmallRng, log_args: &str, suspend: bool) -> Result<(Timing, RaftCluster), String> {
    let timing = sim_timing(rng)?;
    start_with(rng, log_args, suspend, timing).await
}

/// [`start`] with the given timings.
async fn start_with(
    rng: &mut SmallRng,
    log_args: &str,
    suspend: bool,
    timing: Timing,
) -> Result<(Timing, RaftCluster), String> {
    let storage =
        Storage::Memory { dbs: BTreeMap::new(), sync_latency: Duration::from_micros(rng.random_range(100..2000)) };
    let rates: BTreeMap<u64, f64> = (1..=3).map(|id| (id, 1.0 + rng.random_range(-0.0099..0.0099))).collect();
    let liveness = LivenessConfig { timing, rates, seed: rng.random(), suspend };
    let c = RaftCluster::start_live(storage, 3, log_args, REGIONS, liveness).await;
    Ok((timing, c))
}

const REGIONS: u64 = 32;

/// A number of rounds drawn from `rounds`, of 10 ms each, in which each
/// running node writes with probability 0.3 to one of the first `spread`
/// regions.
async fn churn(c: &RaftCluster, rng: &mut SmallRng, rounds: std::ops::Range<u64>, spread: u64) {
    churn_but(c, rng, rounds, spread, None).await;
}

/// [`churn`] in which node `quiet`, if any, writes nothing.
async fn churn_but(c: &RaftCluster, rng: &mut SmallRng, rounds: std::ops::Range<u64>, spread: u64, quiet: Option<u64>) {
    for _ in 0..rng.random_range(rounds) {
        for id in c.nodes.keys().copied().collect::<Vec<_>>() {
            let frozen = c.nodes.get(&id).is_some_and(|n| n.frozen.load(std::sync::atomic::Ordering::SeqCst));
            if !frozen && Some(id) != quiet && rng.random_range(0..100) < 30 {
                let r = c.pick_region(id, rng, spread);
                c.write(id, r);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The common opening: a cluster whose regions all start in sync (the only
/// resync work is what the scenario causes), some writes from every node,
/// and a node chosen by the seed with a write in flight.
async fn opening(seed: u64, suspend: bool) -> Result<(SmallRng, Timing, RaftCluster, u64), String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let timing = sim_timing(&mut rng)?;
    opening_with(rng, suspend, timing).await
}

/// [`opening`] with the given timings.
async fn opening_with(
    mut rng: SmallRng,
    suspend: bool,
    timing: Timing,
) -> Result<(SmallRng, Timing, RaftCluster, u64), String> {
    let (timing, c) = start_with(&mut rng, "clustered-core 8 nosync", suspend, timing).await?;
    churn(&c, &mut rng, 20..60, REGIONS).await;
    let victim = rng.random_range(1..=3u64);
    until_writing(&c, &mut rng, victim).await?;
    Ok((rng, timing, c, victim))
}

/// Writes from `victim` until its kernel has a write in flight.
async fn until_writing(c: &RaftCluster, rng: &mut SmallRng, victim: u64) -> Result<(), String> {
    for _ in 0..2000 {
        if c.writing(victim) {
            return Ok(());
        }
        c.write(victim, rng.random_range(0..8));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(format!("n{victim} never had a write in flight"))
}

/// Writes go on until `victim` is evicted (after `since`); when.
async fn until_evicted(
    c: &RaftCluster,
    rng: &mut SmallRng,
    victim: u64,
    since: u64,
    timing: &Timing,
) -> Result<u64, String> {
    let limit = since + 3 * timing.dead_after_ms + 10_000;
    while c.now_ms() < limit {
        if let Some(t) = first(c, victim, since, evicted) {
            return Ok(t);
        }
        churn(c, rng, 1..2, 8).await;
    }
    Err(format!("n{victim} was not evicted; {}", c.raft_states()))
}

/// When `node` was first evicted, fenced or thawed at or after `since`.
fn first(c: &RaftCluster, node: u64, since: u64, kind: fn(&LiveEvent) -> Option<u64>) -> Option<u64> {
    c.events_of(node).iter().filter_map(kind).find(|&t| t >= since)
}

fn evicted(e: &LiveEvent) -> Option<u64> {
    if let LiveEvent::Evicted { at_ms, .. } = e { Some(*at_ms) } else { None }
}

fn fenced(e: &LiveEvent) -> Option<u64> {
    if let LiveEvent::Fenced { at_ms, .. } = e { Some(*at_ms) } else { None }
}

fn rejoined(e: &LiveEvent) -> Option<u64> {
    if let LiveEvent::Rejoined { at_ms, .. } = e { Some(*at_ms) } else { None }
}

/// When the kernel `node` had at its fence (at or after `since`) last
/// wrote a leg.
fn last_write_at_fence(c: &RaftCluster, node: u64, since: u64) -> Option<u64> {
    c.events_of(node).iter().find_map(|e| match e {
        LiveEvent::Fenced { at_ms, last_write_ms, .. } if *at_ms >= since => *last_write_ms,
        _ => None,
    })
}

/// Brings back nodes that fenced by a reboot, then checks the end state
/// and that no node was evicted while its kernel could still write
/// (`stopped`: nodes whose kernel could not, from when).
async fn finish(mut c: RaftCluster, stopped: &BTreeMap<u64, u64>) -> Result<(), String> {
    c.net.heal();
    for id in c.reap_fenced().await {
        if !c.reboot(id).await {
            return Err(format!("n{id} could not rejoin after its fence"));
        }
    }
    let verdict = c.verify(Duration::from_secs(120)).await.and_then(|()| c.check_fencing(stopped));
    c.shutdown().await;
    verdict
}

async fn writer_crash(seed: u64) -> Result<String, String> {
    // Every region starts in sync: the only resync work is the writer's.
    let (mut rng, timing, mut c, victim) = opening(seed, false).await?;
    let (at, half, out) = crash_writing(&mut c, victim, &timing).await?;
    churn(&c, &mut rng, 10..50, REGIONS).await;
    finish(c, &BTreeMap::from([(victim, at)])).await?;
    Ok(format!("n{victim} crashed with {half:?} half written; {out:?} resynced"))
}

/// Crashes `victim`, which has writes in flight, and checks what its
/// eviction left out of sync: every region it had half written, and only
/// regions it had marked. Returns when it crashed, the half-written
/// regions and the out-of-sync ones.
async fn crash_writing(
    c: &mut RaftCluster,
    victim: u64,
    timing: &Timing,
) -> Result<(u64, BTreeSet<u64>, BTreeSet<u64>), String> {
    let half: BTreeSet<u64> = c.inflight_regions(victim).into_iter().collect();
    let at = c.now_ms();
    c.crash(victim).await;
    // Its marks until the eviction (a MARK on its way may still commit).
    let mut marked = BTreeSet::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(timing.dead_after_ms + 30_000);
    while first(c, victim, at, evicted).is_none() && tokio::time::Instant::now() < until {
        marked.extend(c.marked_by(victim));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if first(c, victim, at, evicted).is_none() {
        return Err(format!("n{victim} was never evicted; {}", c.raft_states()));
    }
    let out = c.out_of_sync_at_leader();
    if !half.is_subset(&out) {
        return Err(format!(
            "regions {half:?} were half written by n{victim}, out of sync after its eviction: {out:?}"
        ));
    }
    if !out.is_subset(&marked) {
        return Err(format!("out of sync after the eviction: {out:?}, but n{victim} had marked only {marked:?}"));
    }
    Ok((at, half, out))
}

async fn partitioned_minority(seed: u64) -> Result<String, String> {
    let (mut rng, timing, c, victim) = opening(seed, false).await?;
    let at = c.now_ms();
    c.net.isolate(regions::NodeId(victim));
    // Everyone keeps writing, the victim to regions its kernel has marked,
    // until a while after its eviction (a leader cut off is evicted a
    // lease after the new leader took over).
    let evicted_at = until_evicted(&c, &mut rng, victim, at, &timing).await?;
    churn(&c, &mut rng, 50..200, 8).await;
    // Its kernel (the one that fenced, or still running) wrote nothing
    // after the eviction: it had fenced before.
    let wrote = last_write_at_fence(&c, victim, at).max(c.last_write_ms(victim));
    if wrote.is_some_and(|t| t > evicted_at) {
        return Err(format!("n{victim} wrote at {wrote:?} ms, after its eviction at {evicted_at} ms"));
    }
    let fenced_at = first(&c, victim, at, fenced).ok_or(format!("n{victim} never fenced"))?;
    if fenced_at >= evicted_at {
        return Err(format!("n{victim} fenced at {fenced_at} ms, after its eviction at {evicted_at} ms"));
    }
    finish(c, &BTreeMap::new()).await?;
    Ok(format!("n{victim} cut off at {at} ms, fenced at {fenced_at}, evicted at {evicted_at}"))
}

async fn rejoin(seed: u64) -> Result<String, String> {
    let (mut rng, timing, c, victim) = opening(seed, true).await?;
    let at = c.now_ms();
    c.net.isolate(regions::NodeId(victim));
    // Cut off until just after its eviction, writing all along.
    let evicted_at = until_evicted(&c, &mut rng, victim, at, &timing).await?;
    let fenced_at = first(&c, victim, at, fenced).ok_or(format!("n{victim} never fenced"))?;
    c.net.heal();
    let mut rejoined_at = None;
    while rejoined_at.is_none() && c.now_ms() < evicted_at + 30_000 {
        churn(&c, &mut rng, 1..2, 8).await;
        rejoined_at = first(&c, victim, evicted_at, rejoined);
    }
    let rejoined_at = rejoined_at.ok_or(format!("n{victim} never rejoined"))?;
    if !(fenced_at < evicted_at && evicted_at <= rejoined_at) {
        return Err(format!("n{victim}: fenced {fenced_at}, evicted {evicted_at}, rejoined {rejoined_at} ms"));
    }
    // Nothing written between its eviction and its rejoin (the suspend
    // held its writes); it writes again after.
    let before = c.last_write_ms(victim);
    churn(&c, &mut rng, 50..150, 8).await;
    if before.is_some_and(|t| t > evicted_at && t < rejoined_at) {
        return Err(format!("n{victim} wrote at {before:?} ms, between its eviction and its rejoin"));
    }
    finish(c, &BTreeMap::new()).await?;
    Ok(format!("n{victim} fenced at {fenced_at} ms, evicted at {evicted_at}, rejoined at {rejoined_at}"))
}

async fn recoverer_dies(seed: u64) -> Result<String, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    // Without nosync: every region starts out of sync and is recovered.
    let (_, mut c) = start(&mut rng, "clustered-core 8", false).await?;
    let mut found = None;
    // Some node copies a region and holds claims on more; the seed picks
    // how far into its batch it dies.
    let into_batch = rng.random_range(0..8usize);
    for _ in 0..10_000 {
        if let Some((n, left)) = c.claiming()
            && left + into_batch < regions::limits::RESYNC_CLAIM
        {
            found = Some((n, left));
            break;
        }
        // Writes go on meanwhile.
        if rng.random_range(0..100) < 10 {
            let id = rng.random_range(1..=3u64);
            c.write(id, rng.random_range(0..REGIONS));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (victim, left) = found.ok_or("no node ever claimed regions to recover")?;
    let at = c.now_ms();
    c.crash(victim).await;
    if !c.wait_evicted(victim, at, Duration::from_secs(30)).await {
        return Err(format!("n{victim} was never evicted; {}", c.raft_states()));
    }
    finish(c, &BTreeMap::from([(victim, at)])).await?;
    Ok(format!("n{victim} died copying with {left} regions claimed"))
}

async fn frozen(seed: u64) -> Result<String, String> {
    let (mut rng, timing, c, victim) = opening(seed, false).await?;
    let at = c.now_ms();
    c.freeze(victim);
    let evicted_at = until_evicted(&c, &mut rng, victim, at, &timing).await?;
    churn(&c, &mut rng, 0..500, 8).await;
    let thawed = c.now_ms();
    c.thaw(victim);
    let mut fenced_at = None;
    while fenced_at.is_none() && c.now_ms() < thawed + 5_000 {
        churn(&c, &mut rng, 1..2, 8).await;
        fenced_at = first(&c, victim, thawed, fenced);
    }
    let fenced_at = fenced_at.ok_or(format!("n{victim} did not fence after it woke"))?;
    // Asleep, its kernel could not write; awake, it must not have written
    // before its fence (it would have needed answers it must not get).
    let wrote = last_write_at_fence(&c, victim, thawed);
    if wrote.is_some_and(|t| t >= thawed) {
        return Err(format!(
            "n{victim} woke at {thawed} ms and wrote at {wrote:?} ms, before its fence at {fenced_at}"
        ));
    }
    churn(&c, &mut rng, 10..50, REGIONS).await;
    finish(c, &BTreeMap::from([(victim, at)])).await?;
    Ok(format!("n{victim} frozen at {at} ms, evicted at {evicted_at}, woke at {thawed}, fenced at {fenced_at}"))
}

async fn leader_change(seed: u64) -> Result<String, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (timing, mut c) = start(&mut rng, "clustered-core 8 nosync", false).await?;
    churn(&c, &mut rng, 20..60, REGIONS).await;
    let leader = c.leader().ok_or("no leader")?;
    let follower = (1..=3u64).find(|&n| n != leader).ok_or("no follower")?;
    // Cut off for most of its lease: it must not fence, nor be evicted.
    let cut = timing.fence_after_ms - 2 * timing.renew_every_ms - rng.random_range(0..600);
    c.net.isolate(regions::NodeId(follower));
    churn(&c, &mut rng, cut / 10..cut / 10 + 1, REGIONS).await;
    c.net.heal();
    // The leader dies right after the follower's first renewal since (on
    // the old leader's timer the follower was nearly dead; with no
    // renewal at all it would fence: no leader to renew with).
    churn(&c, &mut rng, (timing.renew_every_ms + 50) / 10..(2 * timing.renew_every_ms + 50) / 10, REGIONS).await;
    let at = c.now_ms();
    c.crash(leader).await;
    churn(&c, &mut rng, (timing.dead_after_ms + 2000) / 10..(timing.dead_after_ms + 4000) / 10, REGIONS).await;
    let new_leader = c.leader().ok_or(format!("no new leader; {}", c.raft_states()))?;
    let follower_fenced = first(&c, follower, 0, fenced);
    if let Some(t) = first(&c, follower, 0, evicted)
        && follower_fenced.is_none()
    {
        return Err(format!("n{follower} was evicted at {t} ms by n{new_leader} without having fenced"));
    }
    if !c.reboot(leader).await {
        return Err(format!("n{leader} could not rejoin"));
    }
    finish(c, &BTreeMap::from([(leader, at)])).await?;
    Ok(format!(
        "n{follower} cut off {cut} ms, n{leader} died at {at} ms, n{new_leader} leads; n{follower} fenced: {follower_fenced:?}"
    ))
}

/// Deliveries to node `id`'s kernel in [`from`, `to`).
fn delivered_between(c: &RaftCluster, id: u64, from: u64, to: u64) -> Vec<u64> {
    c.deliveries(id).into_iter().filter(|&t| t >= from && t < to).collect()
}

async fn frozen_at_send(seed: u64) -> Result<String, String> {
    let (mut rng, timing, c, victim) = opening(seed, false).await?;
    // Stopped the moment its daemon has the next reply in hand.
    c.freeze_at_next_send(victim);
    let mut at = None;
    for _ in 0..5_000 {
        if c.is_frozen(victim) {
            at = Some(c.now_ms());
            break;
        }
        c.write(victim, rng.random_range(0..8));
        churn(&c, &mut rng, 0..1, 8).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let at = at.ok_or(format!("n{victim} never had a reply to send"))?;
    let evicted_at = until_evicted(&c, &mut rng, victim, at, &timing).await?;
    let thawed = c.now_ms();
    c.thaw(victim);
    let mut fenced_at = None;
    while fenced_at.is_none() && c.now_ms() < thawed + 5_000 {
        churn(&c, &mut rng, 1..2, 8).await;
        fenced_at = first(&c, victim, thawed, fenced);
    }
    let fenced_at = fenced_at.ok_or(format!("n{victim} did not fence after it woke"))?;
    // The reply it held when it stopped, or any other, must not have
    // reached its kernel: its lease ran out while it slept.
    let late = delivered_between(&c, victim, at, fenced_at + 1);
    if !late.is_empty() {
        return Err(format!(
            "n{victim} stopped at {at} ms with a reply in hand, was evicted at {evicted_at}, woke at {thawed}, \
             and its kernel got answers at {late:?} ms, before its fence at {fenced_at}"
        ));
    }
    churn(&c, &mut rng, 10..50, REGIONS).await;
    finish(c, &BTreeMap::from([(victim, at)])).await?;
    Ok(format!("n{victim} stopped at {at} ms with a reply to send, evicted at {evicted_at}, fenced at {fenced_at}"))
}

async fn transport_dies(seed: u64) -> Result<String, String> {
    let (mut rng, timing, c, victim) = opening(seed, false).await?;
    let at = c.now_ms();
    c.break_transport(victim);
    // Everyone else writes on; the victim's daemon must give up its lease.
    let mut exited = None;
    while exited.is_none() && c.now_ms() < at + 10_000 {
        churn(&c, &mut rng, 1..2, 8).await;
        exited = c.events_of(victim).iter().find_map(|e| match e {
            LiveEvent::TransportFailed { at_ms, .. } if *at_ms >= at => Some(*at_ms),
            _ => None,
        });
    }
    let exited = exited.ok_or(format!("n{victim}'s daemon went on after its kernel transport died"))?;
    let evicted_at = until_evicted(&c, &mut rng, victim, at, &timing).await?;
    if exited >= evicted_at {
        return Err(format!("n{victim} gave up its lease at {exited} ms, after its eviction at {evicted_at}"));
    }
    let late = delivered_between(&c, victim, exited, u64::MAX);
    if !late.is_empty() {
        return Err(format!("n{victim}'s kernel got answers at {late:?} ms, after its transport failed at {exited}"));
    }
    churn(&c, &mut rng, 10..50, REGIONS).await;
    finish(c, &BTreeMap::new()).await?;
    Ok(format!("n{victim}'s transport died at {at} ms; it fenced and exited at {exited}, evicted at {evicted_at}"))
}

async fn fence_fails(seed: u64) -> Result<String, String> {
    let (mut rng, timing, mut c, victim) = opening(seed, true).await?;
    c.fail_fences_of(victim);
    let at = c.now_ms();
    c.net.isolate(regions::NodeId(victim));
    let evicted_at = until_evicted(&c, &mut rng, victim, at, &timing).await?;
    let fenced_at = first(&c, victim, at, fenced).ok_or(format!("n{victim} never fenced"))?;
    c.net.heal();
    // Long enough for a rejoin, which must not come.
    let healed = c.now_ms();
    churn(&c, &mut rng, 300..500, 8).await;
    if let Some(t) = first(&c, victim, fenced_at, rejoined) {
        return Err(format!("n{victim} rejoined at {t} ms after its fence action failed at {fenced_at}"));
    }
    let late = delivered_between(&c, victim, fenced_at, u64::MAX);
    if !late.is_empty() {
        return Err(format!("n{victim}'s kernel got answers at {late:?} ms after its fence action failed"));
    }
    let standing = c.gate(victim).map(|g| g.standing());
    if !matches!(standing, Some(node::gate::Standing::FenceFailed(_))) {
        return Err(format!("n{victim} says {standing:?} after its fence action failed"));
    }
    // The operator resets the machine.
    c.crash(victim).await;
    if !c.reboot(victim).await {
        return Err(format!("n{victim} could not rejoin after its reset"));
    }
    churn(&c, &mut rng, 10..50, REGIONS).await;
    finish(c, &BTreeMap::new()).await?;
    Ok(format!("n{victim}: fence failed at {fenced_at} ms, evicted at {evicted_at}, silent from {healed} on"))
}

/// Timings with leases long enough that a daemon down for 20 s is not
/// evicted: a node's own supervisor restarts it well within its lease.
fn restart_timing(rng: &mut SmallRng) -> Result<Timing, String> {
    let mut timing = sim_timing(rng)?;
    timing.fence_after_ms = 30_000;
    timing.dead_after_ms = timing.least_dead_after_ms() + rng.random_range(0..500);
    timing.validate().map_err(|e| e.to_string())?;
    Ok(timing)
}

/// Kills `victim`'s daemon alone (at `at`) and starts it again before the
/// kernel's 15 s re-send or after it (the re-send then finds no daemon and
/// the kernel reconnects), writes going on all along; returns once the
/// kernel's request outstanding at the kill has been sent again and could
/// be answered: whether it was late, how long the daemon was down, and
/// when it was back.
async fn down_and_back(
    c: &mut RaftCluster,
    rng: &mut SmallRng,
    victim: u64,
    at: u64,
) -> Result<(bool, u64, u64), String> {
    c.kill_daemon(victim).await;
    let late = rng.random_bool(0.5);
    let down = if late { rng.random_range(16_000..20_000) } else { rng.random_range(500..10_000) };
    while c.now_ms() < at + down {
        churn(c, rng, 1..2, REGIONS).await;
    }
    if !c.restart_daemon(victim, Duration::from_secs(30)).await {
        return Err(format!("n{victim}'s daemon did not join again; {}", c.raft_states()));
    }
    let restarted = c.now_ms();
    while c.now_ms() < settled(at, restarted) {
        churn(c, rng, 1..2, REGIONS).await;
    }
    Ok((late, down, restarted))
}

/// When the kernel's request outstanding at a daemon kill at `at` has
/// surely been answered by the daemon back at `restarted`: it is sent again
/// after the kernel's 15 s timeout (to the new daemon), or after the
/// reconnect loop's next CTR (every 2 s) found the daemon back.
fn settled(at: u64, restarted: u64) -> u64 {
    (at + kernel_sim::RETRY_TIMEOUT_MS).max(restarted + kernel_sim::RECONNECT_SLEEP_MS) + 3_000
}

/// Writes from `victim` (and the others) until its daemon died right
/// after answering a request of `kind`; when.
async fn until_died_after(
    c: &RaftCluster,
    rng: &mut SmallRng,
    victim: u64,
    kind: wire::RequestType,
) -> Result<u64, String> {
    c.kill_after_next(victim, kind);
    for _ in 0..5_000 {
        if c.died_at_trap(victim) {
            return Ok(c.now_ms());
        }
        if rng.random_range(0..100) < 20 {
            c.write(victim, rng.random_range(0..REGIONS));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(format!("n{victim}'s daemon never answered a {kind:?}"))
}

async fn mark_ack_kill(seed: u64) -> Result<String, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let timing = restart_timing(&mut rng)?;
    let (mut rng, timing, mut c, victim) = opening_with(rng, true, timing).await?;
    let at = until_died_after(&c, &mut rng, victim, wire::RequestType::MarkRegion).await?;
    // What its kernel holds dirty, the region of the acknowledged MARK
    // among them: it writes there once the FLUSH is answered.
    let pending = c.kernel_dirty(victim);
    c.kill_daemon(victim).await;
    let late = rng.random_bool(0.5);
    let down = if late { rng.random_range(16_000..20_000) } else { rng.random_range(500..10_000) };
    while c.now_ms() < at + down {
        churn_but(&c, &mut rng, 1..2, REGIONS, Some(victim)).await;
    }
    if !c.restart_daemon(victim, Duration::from_secs(30)).await {
        return Err(format!("n{victim}'s daemon did not join again; {}", c.raft_states()));
    }
    let restarted = c.now_ms();
    // The whole node crashes the moment its kernel writes under those
    // marks (or, failing that, under any).
    let mut hit = false;
    while c.now_ms() < settled(at, restarted) {
        let writing: BTreeSet<u64> = c.inflight_regions(victim).into_iter().collect();
        if !writing.is_disjoint(&pending) {
            hit = true;
            break;
        }
        if rng.random_range(0..100) < 3 {
            let other = (1..=3u64).filter(|&n| n != victim).nth(rng.random_range(0..2)).unwrap_or(victim);
            c.write(other, rng.random_range(0..REGIONS));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if c.delivered_after(victim, restarted).is_none() {
        return Err(format!("n{victim}'s kernel got no answer after its daemon came back"));
    }
    if !hit {
        until_writing(&c, &mut rng, victim).await?;
    }
    let (crashed_at, half, out) = crash_writing(&mut c, victim, &timing).await?;
    churn(&c, &mut rng, 10..50, REGIONS).await;
    finish(c, &BTreeMap::from([(victim, crashed_at)])).await?;
    Ok(format!(
        "n{victim}'s daemon died after a MARK at {at} ms (dirty {pending:?}), down {down} ms; crashed at {crashed_at} \
         writing {half:?} (under those marks: {hit}); {out:?} resynced"
    ))
}

async fn clears_lost(seed: u64) -> Result<String, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let timing = restart_timing(&mut rng)?;
    let (mut rng, timing, mut c, victim) = opening_with(rng, true, timing).await?;
    let at = until_died_after(&c, &mut rng, victim, wire::RequestType::ClearRegion).await?;
    // Marked for it in the cluster, clean in its kernel: CLEARs acknowledged
    // (the last one just now) whose commit was still to come.
    let unsaid: BTreeSet<u64> = c.marked_by(victim).difference(&c.kernel_dirty(victim)).copied().collect();
    // Its kernel writes nothing more from here on: a stale mark left by
    // the restart would not be cleared by a later write of the region.
    c.kill_daemon(victim).await;
    let down = if rng.random_bool(0.5) { rng.random_range(16_000..20_000) } else { rng.random_range(500..10_000) };
    while c.now_ms() < at + down {
        churn_but(&c, &mut rng, 1..2, REGIONS, Some(victim)).await;
    }
    if !c.restart_daemon(victim, Duration::from_secs(30)).await {
        return Err(format!("n{victim}'s daemon did not join again; {}", c.raft_states()));
    }
    let restarted = c.now_ms();
    while c.now_ms() < settled(at, restarted) {
        churn_but(&c, &mut rng, 1..2, REGIONS, Some(victim)).await;
    }
    // Its kernel goes quiet: the cluster's marks of it come down to what
    // the kernel holds dirty (its last CLEARs are committed within
    // CLEAR_AFTER, and so are regions marked ahead of it).
    let quiet = c.now_ms();
    let mut stale = BTreeSet::new();
    while c.now_ms() < quiet + node::router::CLEAR_AFTER.as_millis() as u64 + 5_000 {
        churn_but(&c, &mut rng, 1..2, REGIONS, Some(victim)).await;
        stale = c.marked_by(victim).difference(&c.kernel_dirty(victim)).copied().collect();
        if stale.is_empty() && !c.writing(victim) && c.now_ms() > quiet + 2_000 {
            break;
        }
    }
    if !stale.is_empty() {
        return Err(format!(
            "n{victim}'s kernel holds {:?} dirty, the cluster has {stale:?} marked for it as well \
             (acknowledged CLEARs unsaid at the daemon's death: {unsaid:?})",
            c.kernel_dirty(victim)
        ));
    }
    until_writing(&c, &mut rng, victim).await?;
    let (crashed_at, half, out) = crash_writing(&mut c, victim, &timing).await?;
    churn(&c, &mut rng, 10..50, REGIONS).await;
    finish(c, &BTreeMap::from([(victim, crashed_at)])).await?;
    Ok(format!(
        "n{victim}'s daemon died after a CLEAR at {at} ms with {unsaid:?} cleared unsaid, down {down} ms; \
         crashed at {crashed_at} writing {half:?}; {out:?} resynced"
    ))
}

async fn daemon_restart(seed: u64) -> Result<String, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let timing = restart_timing(&mut rng)?;
    let (mut rng, timing, mut c, victim) = opening_with(rng, true, timing).await?;
    // Up to CLEAR_AFTER and more: its held regions are cleared once idle.
    for _ in 0..10_000 {
        if c.marking(victim) {
            break;
        }
        if let Some(r) = c.unmarked_region(victim, &mut rng, REGIONS) {
            c.write(victim, r);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if !c.marking(victim) {
        return Err(format!("n{victim} never had a MARK on its way"));
    }
    let at = c.now_ms();
    let (late, down, restarted) = down_and_back(&mut c, &mut rng, victim, at).await?;
    let stats = c.kernel_stats(victim).unwrap_or_default();
    if late && stats.reconnects == 0 {
        return Err(format!("n{victim}'s kernel never reconnected after {down} ms without a daemon: {stats:?}"));
    }
    if c.delivered_after(victim, restarted).is_none() {
        return Err(format!("n{victim}'s kernel got no answer after its daemon came back"));
    }
    // Another node dies mid-write; the restarted node takes part in its
    // resync.
    let other = (1..=3u64).filter(|&n| n != victim).nth(rng.random_range(0..2)).ok_or("no other node")?;
    until_writing(&c, &mut rng, other).await?;
    let crashed_at = c.now_ms();
    c.crash(other).await;
    until_evicted(&c, &mut rng, other, crashed_at, &timing).await?;
    churn(&c, &mut rng, 50..100, REGIONS).await;
    if !c.reboot(other).await {
        return Err(format!("n{other} could not rejoin"));
    }
    // Later the restarted node is cut off past its lease, fences (by
    // suspending) and rejoins: with what its journal kept from before the
    // restart.
    let cut = c.now_ms();
    c.net.isolate(regions::NodeId(victim));
    let evicted_at = until_evicted(&c, &mut rng, victim, cut, &timing).await?;
    c.net.heal();
    let mut back = None;
    while back.is_none() && c.now_ms() < evicted_at + 30_000 {
        churn(&c, &mut rng, 1..2, 8).await;
        back = first(&c, victim, evicted_at, rejoined);
    }
    let back = back.ok_or(format!("n{victim} never rejoined after its restart and fence; {}", c.raft_states()))?;
    churn(&c, &mut rng, 20..60, REGIONS).await;
    finish(c, &BTreeMap::from([(other, crashed_at)])).await?;
    Ok(format!(
        "n{victim}'s daemon killed at {at} ms for {down} ms (reconnects {}), n{other} crashed at {crashed_at}, \
         n{victim} evicted at {evicted_at}, rejoined at {back}",
        stats.reconnects
    ))
}

async fn failed_write(seed: u64) -> Result<String, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (timing, c) = start(&mut rng, "clustered-core 8 nosync", false).await?;
    churn(&c, &mut rng, 20..60, REGIONS).await;
    let holder = rng.random_range(1..=3u64);
    let failing = (1..=3u64).filter(|&n| n != holder).nth(rng.random_range(0..2)).ok_or("no other node")?;
    let region = rng.random_range(0..8u64);
    // The holder writes the region until the cluster has it marked for it.
    for _ in 0..3_000 {
        if c.marked_by(holder).contains(&region) {
            break;
        }
        c.write(holder, region);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if !c.marked_by(holder).contains(&region) {
        return Err(format!("n{holder} never had region {region} marked"));
    }
    let cut = rng.random_bool(0.5);
    if cut {
        c.net.isolate(regions::NodeId(holder));
    }
    let at = c.now_ms();
    if !c.fail_write(failing, region) {
        return Err(format!("n{failing}'s kernel could not send its failed write"));
    }
    // Nobody writes the region any more (a kernel that learns it is out of
    // sync writes it to the default leg only, unmarked, and with its cached
    // hint does not ask whether another node recovers it: until the admin
    // reloads its table, spec §3.6). The others write other regions until
    // the failed write is answered (after the holder's eviction, if cut off).
    let limit = at + 3 * timing.dead_after_ms + 10_000;
    let mut answered = None;
    while answered.is_none() && c.now_ms() < limit {
        for id in (1..=3u64).filter(|&n| n != holder) {
            let r = rng.random_range(0..8u64);
            if r != region && rng.random_range(0..100) < 30 {
                c.write(id, r);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        answered = c.failures_answered(failing).first().map(|&(_, t)| t);
    }
    let answered = answered.ok_or(format!("n{failing}'s failed write of region {region} was never answered"))?;
    reload_all_and_finish(c, &mut rng).await?;
    Ok(format!(
        "n{failing}'s write of region {region} failed at {at} ms while n{holder} wrote it (cut off: {cut}); answered at {answered}"
    ))
}

/// After a failed leg write: the leg is back and the admin reloads the
/// table everywhere, so the kernels ask again and the region is resynced;
/// then the usual end checks.
async fn reload_all_and_finish(c: RaftCluster, rng: &mut SmallRng) -> Result<(), String> {
    c.net.heal();
    for id in 1..=3u64 {
        c.reload(id);
    }
    churn(&c, rng, 10..50, REGIONS).await;
    finish(c, &BTreeMap::new()).await
}

/// Every node's kernel reads `region` (their IN_SYNC goes to the leader,
/// which answers under its lease), for `rounds` rounds of 5 ms.
async fn read_everywhere(c: &RaftCluster, region: u64, rounds: u64) {
    for _ in 0..rounds {
        for id in c.nodes.keys().copied().collect::<Vec<_>>() {
            c.read(id, region);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn lease_read(seed: u64) -> Result<String, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (timing, mut c) = start(&mut rng, "clustered-core 8 nosync", false).await?;
    // Writes to the first 8 regions only: the region read below stays out
    // of every kernel's region hash, so each read asks IN_SYNC.
    churn(&c, &mut rng, 20..60, 8).await;
    let region = rng.random_range(8..REGIONS);
    let mut leader = None;
    for _ in 0..300 {
        leader = c.leader();
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = leader.ok_or("no leader")?;
    // Reads only, for longer than a deferred CLEAR waits: the leader's
    // lane then has nothing of its own to commit, and its kernel's reads
    // are answered at once (under its lease) even once it is cut off.
    read_everywhere(&c, region, rng.random_range(300..400)).await;
    let before = c.lease_reads(leader);
    if before == 0 {
        return Err(format!("n{leader} answered no read under its lease"));
    }
    let failing = (1..=3u64).filter(|&n| n != leader).nth(rng.random_range(0..2)).ok_or("no other node")?;
    let restart = rng.random_bool(0.5);
    if restart {
        c.kill_daemon(leader).await;
    } else {
        c.net.isolate(regions::NodeId(leader));
    }
    let at = c.now_ms();
    if !c.fail_write(failing, region) {
        return Err(format!("n{failing}'s kernel could not send its failed write"));
    }
    // Everyone keeps reading the region until well after the failed write
    // was answered; the old leader's daemon comes back meanwhile.
    let limit = at + 3 * timing.dead_after_ms + 10_000;
    let back_at = at + rng.random_range(0..2_000);
    let mut answered = None;
    let mut back = !restart;
    while c.now_ms() < limit {
        if !back && c.now_ms() >= back_at {
            if !c.restart_daemon(leader, Duration::from_secs(30)).await {
                return Err(format!("n{leader}'s daemon did not come back"));
            }
            back = true;
        }
        read_everywhere(&c, region, 2).await;
        if answered.is_none() {
            answered = c.failures_answered(failing).first().map(|&(_, t)| t);
        }
        if answered.is_some_and(|t| c.now_ms() > t + 1_000) && back {
            break;
        }
    }
    let answered = answered.ok_or(format!("n{failing}'s failed write of region {region} was never answered"))?;
    // A restarted daemon counts from zero.
    let under_lease = c.lease_reads(leader).saturating_sub(if restart { 0 } else { before });
    reload_all_and_finish(c, &mut rng).await?;
    Ok(format!(
        "n{leader} led with {before} reads under its lease, then {}; n{failing}'s write of region {region} failed at {at} ms, answered at {answered}; {under_lease} more lease reads on n{leader}",
        if restart { "its daemon restarted" } else { "was cut off" }
    ))
}
