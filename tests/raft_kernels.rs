//! Simulated kernels against a real three-node Raft cluster (openraft +
//! redb + the in-memory network), in real time: the region state is
//! replicated, a node crashes mid-write, its eviction is committed, the
//! survivors resync its regions, and everything converges.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use dmlogd_tests::raft_cluster::RaftCluster;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_on_raft_survive_a_node_crash_and_converge() {
    let dir = TempDir::new().unwrap();
    let mut c = RaftCluster::start(dir.path(), 3, "clustered-core 8", 32).await;
    // The mirror starts out of sync: the three kernels resync it through
    // Raft while they write.
    for round in 0..100u64 {
        for id in 1..=3 {
            c.write(id, (round * 7 + id * 5) % 32);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Node 2 dies with a write in flight.
    let mut tries = 0;
    while !c.writing(2) && tries < 2000 {
        c.write(2, 9);
        tokio::time::sleep(Duration::from_millis(1)).await;
        tries += 1;
    }
    assert!(c.writing(2), "node 2 never had a write in flight");
    c.crash(2).await;
    assert!(c.evict(2).await, "the eviction commits on the surviving majority");
    for round in 0..50u64 {
        for id in [1, 3] {
            c.write(id, (round * 3 + id) % 32);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let verdict = c.verify(Duration::from_secs(60)).await;
    c.shutdown().await;
    verdict.unwrap();
}
