//! Several simulated kernels on one shared region machine: a node crash
//! mid-write leads to its regions being resynced by the survivors and the
//! legs converging (I10); without the eviction they would not (what
//! cmirrord does). Seeded random runs add crashes, reboots, lost replies
//! and duplicated requests.

#![allow(clippy::unwrap_used, clippy::panic)]

use dmlogd_tests::cluster::{Cluster, Options, random_run};

/// Three nodes write for half a second; node 1 crashes with a write to
/// region 40 in flight (one leg written).
fn crashed_mid_write() -> Cluster {
    let mut c = Cluster::new(Options::default(), 7);
    c.settle(10_000);
    c.workload(500, 50);
    assert!(c.write_until_in_flight(1, 40), "node 1 never had a write in flight");
    c.crash(1);
    c
}

#[test]
fn a_crash_mid_write_is_resynced_by_the_survivors_and_the_legs_converge() {
    let mut c = crashed_mid_write();
    let half_written = c.legs.lock().abandoned();
    assert!(half_written.contains(&40), "the crash left region 40 with one leg written: {half_written:?}");
    let recovered_before = c.regions_recovered();
    c.evict(1);
    assert_eq!(c.kicks, 1, "survivors' kernels are made to look again, one at a time");
    c.workload(500, 30);
    assert_eq!(c.kicks, 2, "the second survivor is kicked after the first resumed");
    c.verify_converged().unwrap();
    assert!(c.regions_recovered() - recovered_before >= half_written.len() as u64);
    assert!(c.legs.lock().abandoned().is_empty());
}

#[test]
fn without_eviction_the_mirror_reports_in_sync_while_the_legs_differ() {
    // The control experiment for the test above: cmirrord never releases a
    // departed node's marks, and the survivors go on reporting the mirror
    // in sync. The same run without the eviction must fail verification.
    let mut c = crashed_mid_write();
    c.workload(500, 30);
    let err = c.verify_converged().unwrap_err();
    assert!(err.contains("legs differ"), "{err}");
    for id in c.live() {
        let n = &c.nodes[&id];
        assert!(n.kernel.as_ref().unwrap().mirror(n.mirror).unwrap().in_sync, "n{id} believes the mirror is in sync");
    }
}

#[test]
fn a_full_resync_from_three_nodes_converges() {
    let options = Options { log_args: "clustered-core 8".into(), ..Options::default() };
    let mut c = Cluster::new(options, 3);
    c.workload(300, 40);
    c.verify_converged().unwrap();
    let per_node: Vec<u64> = c.nodes.values().map(|n| n.kernel.as_ref().unwrap().stats().regions_recovered).collect();
    assert_eq!(per_node.iter().sum::<u64>(), 64, "every region copied exactly once: {per_node:?}");
    assert!(per_node.iter().filter(|&&n| n > 0).count() >= 2, "resync work is shared: {per_node:?}");
}

#[test]
fn a_rebooted_node_rejoins_and_writes_again() {
    let mut c = Cluster::new(Options { integrated_flush: true, ..Options::default() }, 11);
    c.settle(10_000);
    c.workload(300, 50);
    assert!(c.write_until_in_flight(2, 7));
    c.crash(2);
    c.evict(2);
    c.workload(300, 30);
    c.reboot(2);
    c.workload(600, 40);
    c.verify_converged().unwrap();
}

#[test]
fn seeded_random_crash_runs_converge() {
    let seeds: u64 = std::env::var("DMLOGD_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    for seed in 0..seeds {
        if let Err(e) = random_run(seed) {
            panic!("{e}\nreplay: DMLOGD_SEEDS={} cargo test -p dmlogd-tests --test shared_state", seed + 1);
        }
    }
}
