//! The deterministic cluster simulation over many seeds (see
//! `dmlogd_tests::raft_sim`). `DMLOGD_RAFT_SEEDS` sets how many.

#![allow(clippy::unwrap_used, clippy::panic)]

use dmlogd_tests::raft_sim::{run_recoverer_dies, run_seed};

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

/// The node recovering a region dies mid-copy: the resync continues on
/// another node (`DMLOGD_RECOVERER_SEEDS` sets how many seeds).
#[cfg(not(feature = "sim-canary"))]
#[test]
fn when_the_recovering_node_dies_the_resync_continues_elsewhere() {
    let seeds: u64 = std::env::var("DMLOGD_RECOVERER_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    for seed in 0..seeds {
        match run_recoverer_dies(seed) {
            Ok((node, region)) => assert!((1..=3).contains(&node) && region < 32),
            Err(e) => panic!("{e}"),
        }
    }
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
