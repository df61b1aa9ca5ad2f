//! The deterministic cluster simulation over many seeds (see
//! `dmlogd_tests::raft_sim`; `DMLOGD_RAFT_SEEDS` sets how many) and its
//! named liveness scenarios (`dmlogd_tests::scenarios`;
//! `DMLOGD_SCENARIO_SEEDS`).

#![allow(clippy::unwrap_used, clippy::panic)]

use dmlogd_tests::raft_sim::run_seed;
use dmlogd_tests::scenarios::{self, Scenario};

#[cfg(not(feature = "sim-canary"))]
#[test]
fn seeded_raft_runs_converge() {
    let seeds: u64 = std::env::var("DMLOGD_RAFT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed) {
            panic!("{e}\nreplay: cargo run --release -p dmlogd-tests --bin sim -- --raft-seed {seed}");
        }
    }
}

/// Runs a named scenario over seeds 0..`DMLOGD_SCENARIO_SEEDS` (default 10).
fn scenario_seeds(scenario: Scenario) {
    let seeds: u64 = std::env::var("DMLOGD_SCENARIO_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    for seed in 0..seeds {
        if let Err(e) = scenarios::run(scenario, seed) {
            panic!(
                "{e}\nreplay: cargo run --release -p dmlogd-tests --bin sim -- --scenario {} --scenario-seed {seed}",
                scenario.name()
            );
        }
    }
}

#[cfg(not(feature = "sim-canary"))]
#[test]
fn a_crashed_writers_regions_are_resynced_by_the_survivors() {
    scenario_seeds(Scenario::WriterCrash);
}

#[cfg(not(feature = "sim-canary"))]
#[test]
fn a_cut_off_node_fences_before_its_eviction_and_writes_nothing_after() {
    scenario_seeds(Scenario::PartitionedMinority);
}

#[cfg(not(feature = "sim-canary"))]
#[test]
fn a_node_back_without_a_reboot_marks_again_before_it_answers() {
    scenario_seeds(Scenario::Rejoin);
}

#[cfg(not(feature = "sim-canary"))]
#[test]
fn when_the_recovering_node_dies_the_resync_continues_elsewhere() {
    scenario_seeds(Scenario::RecovererDies);
}

#[cfg(not(feature = "sim-canary"))]
#[test]
fn a_node_frozen_past_its_lease_answers_nothing_before_it_fences() {
    scenario_seeds(Scenario::Frozen);
}

#[cfg(not(feature = "sim-canary"))]
#[test]
fn a_leader_change_while_a_lease_runs_out_evicts_nobody_early() {
    scenario_seeds(Scenario::LeaderChange);
}

#[cfg(not(feature = "sim-canary"))]
#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7).unwrap();
    let b = run_seed(7).unwrap();
    assert_eq!(a, b);
}

/// With the planted bug (marks dropped on their way into Raft), the
/// simulation must notice within a few seeds.
#[cfg(feature = "sim-canary")]
#[test]
fn the_planted_bug_is_caught() {
    let caught = (0..50).find(|&seed| run_seed(seed).is_err());
    assert!(caught.is_some(), "50 seeds ran clean with FLUSH marks dropped");
    println!("planted bug caught by seed {caught:?}");
}
