//! Three Raft nodes in one process on the in-memory network, with real redb
//! stores: proposals from any node, linearizable reads, leader failure,
//! a partitioned leader, a leader whose core stopped, and a full restart
//! from disk.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config};
use regions::{Command, Instance, KernelOp, NodeId as Rn, Query};
use replication::memnet::{MemLink, MemNet};
use replication::{Campaign, ForwardError, LogStore, Proposal, Raft, ReadRequest, Replica, ReplicaError, StateMachine};
use tempfile::TempDir;
use tokio::time::Instant;
use wire::{Answer, Luid, Region, Uuid};

fn config() -> Arc<Config> {
    let c =
        Config { heartbeat_interval: 50, election_timeout_min: 300, election_timeout_max: 600, ..Config::default() };
    Arc::new(c.validate().unwrap())
}

async fn start(net: &MemNet, id: u64, dir: &Path) -> Replica<MemLink> {
    // After a shutdown in the same process, openraft's replication tasks
    // may hold the old store for a moment; a new process would not wait.
    let path = dir.join(format!("node{id}.redb"));
    let mut tries = 0;
    let (log, db) = loop {
        match LogStore::open(&path) {
            Ok(opened) => break opened,
            Err(e) if tries < 100 => {
                tries += 1;
                assert!(e.to_string().contains("already open"), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let sm = StateMachine::open(db).unwrap();
    let state = sm.reader();
    let id = Rn(id);
    let raft = Raft::new(id, config(), net.factory(id), log, sm).await.unwrap();
    net.register(id, raft.clone(), state.clone());
    Replica::new(id, raft, state, net.link(id))
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

fn uuid() -> Uuid {
    Uuid::new("LVM-raft").unwrap()
}

fn kernel(node: u64, op: KernelOp) -> Command {
    Command::Kernel { uuid: uuid(), instance: Instance { node: Rn(node), luid: Luid(node) }, session: 0, op }
}

/// Joins `node` and brings its table up (CTR + RESUME), in one proposal.
fn bring_up(node: u64) -> Proposal {
    Proposal {
        commands: vec![
            Command::NodeJoined { node: Rn(node), incarnation: 1, session: 0 },
            kernel(node, KernelOp::Ctr { args: "64 clustered-core 8 nosync".into() }),
            kernel(node, KernelOp::Resume { disk: None }),
        ],
    }
}

async fn cluster(dir: &Path, net: &MemNet) -> Vec<Replica<MemLink>> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(net, id, dir).await);
    }
    let members: BTreeMap<Rn, BasicNode> = (1..=3).map(|i| (Rn(i), BasicNode::new(format!("mem:{i}")))).collect();
    nodes[0].initialize(members).await.unwrap();
    nodes[0].wait_for_leader(Duration::from_secs(10)).await.unwrap();
    nodes
}

async fn read(r: &Replica<MemLink>, node: u64, query: Query) -> Answer {
    let req = ReadRequest { uuid: uuid(), instance: Instance { node: Rn(node), luid: Luid(node) }, query };
    r.read(req, deadline()).await.unwrap().unwrap()
}

/// Waits until every replica has applied as far as the first one.
async fn converge(nodes: &[&Replica<MemLink>]) {
    let target = nodes.iter().filter_map(|n| n.state.last_applied()).map(|l| l.index).max().unwrap_or(0);
    for n in nodes {
        assert!(n.wait_applied(target, Duration::from_secs(10)).await, "converge");
    }
    let snaps: Vec<Vec<u8>> = nodes.iter().map(|n| n.state.read(|m| m.snapshot())).collect();
    assert!(snaps.windows(2).all(|w| w[0] == w[1]), "replicas differ at the same applied index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_from_any_node_reach_every_replica() {
    let dir = TempDir::new().unwrap();
    let net = MemNet::new();
    let nodes = cluster(dir.path(), &net).await;
    for (i, n) in nodes.iter().enumerate() {
        // Each node proposes its own bring-up; followers forward.
        let out = n.propose(bring_up(i as u64 + 1), deadline()).await.unwrap();
        assert_eq!(out.0.len(), 3);
        assert!(out.0.iter().all(|o| o.answer.is_ok()), "{out:?}");
    }
    let flush = Proposal { commands: vec![kernel(2, KernelOp::Flush { marks: vec![Region(5)] })] };
    nodes[1].propose(flush, deadline()).await.unwrap();
    // A read on another follower sees the mark (linearizable).
    assert_eq!(read(&nodes[2], 3, Query::IsClean(Region(5))).await, Answer::Bool(false));
    assert_eq!(read(&nodes[0], 1, Query::GetSyncCount).await, Answer::SyncCount(8));
    converge(&nodes.iter().collect::<Vec<_>>()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_flush_survives_the_leaders_death() {
    let dir = TempDir::new().unwrap();
    let net = MemNet::new();
    let nodes = cluster(dir.path(), &net).await;
    for i in 1..=3 {
        nodes[0].propose(bring_up(i), deadline()).await.unwrap();
    }
    let leader = nodes[0].leader().unwrap();
    let follower = (1..=3).find(|i| Rn(*i) != leader).unwrap();
    let flush = Proposal { commands: vec![kernel(follower, KernelOp::Flush { marks: vec![Region(3)] })] };
    nodes[follower as usize - 1].propose(flush, deadline()).await.unwrap();
    // The leader dies.
    net.unregister(leader);
    nodes[leader.0 as usize - 1].shutdown().await;
    let survivors: Vec<&Replica<MemLink>> = nodes.iter().filter(|n| n.id != leader).collect();
    // A survivor reads the mark: it was committed on a majority (I1).
    assert_eq!(read(survivors[0], survivors[0].id.0, Query::IsClean(Region(3))).await, Answer::Bool(false));
    // And the cluster goes on taking proposals (the CLEAR from the node
    // whose instance it is: a peer may forward only what it may originate).
    let clear = Proposal { commands: vec![kernel(follower, KernelOp::Clear(vec![Region(3)]))] };
    nodes[follower as usize - 1].propose(clear, deadline()).await.unwrap();
    assert_eq!(read(survivors[1], survivors[1].id.0, Query::IsClean(Region(3))).await, Answer::Bool(true));
    assert_ne!(survivors[0].leader(), Some(leader));
    converge(&survivors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_core_stopped_is_not_the_followers_end() {
    let dir = TempDir::new().unwrap();
    let net = MemNet::new();
    let nodes = cluster(dir.path(), &net).await;
    nodes[0].propose(bring_up(1), deadline()).await.unwrap();
    let leader = nodes[0].leader().unwrap();
    // The leader's core stops while it can still be reached: a forwarded
    // call gets its "raft stopped" answer, which says nothing of the
    // follower's own core. The follower asks again until the survivors
    // elected a leader, and the proposal commits.
    nodes[leader.0 as usize - 1].shutdown().await;
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let out = follower.propose(bring_up(follower.id.0), deadline()).await;
    assert!(out.is_ok(), "{out:?}");
    assert_ne!(follower.leader(), Some(leader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_cannot_commit_or_read() {
    let dir = TempDir::new().unwrap();
    let net = MemNet::new();
    let nodes = cluster(dir.path(), &net).await;
    nodes[0].propose(bring_up(1), deadline()).await.unwrap();
    let leader = nodes[0].leader().unwrap();
    net.isolate(leader);
    let cut_off = &nodes[leader.0 as usize - 1];
    let short = Instant::now() + Duration::from_secs(2);
    let p = Proposal { commands: vec![Command::NodeJoined { node: Rn(9), incarnation: 1, session: 0 }] };
    assert_eq!(cut_off.propose(p, short).await, Err(ReplicaError::Timeout), "no quorum: the request waits");
    let req =
        ReadRequest { uuid: uuid(), instance: Instance { node: Rn(1), luid: Luid(1) }, query: Query::GetSyncCount };
    let short = Instant::now() + Duration::from_secs(2);
    assert_eq!(cut_off.read(req, short).await, Err(ReplicaError::Timeout));
    // The majority elects a leader and commits.
    let other = nodes.iter().find(|n| n.id != leader).unwrap();
    other.propose(bring_up(2), deadline()).await.unwrap();
    net.heal();
    converge(&nodes.iter().collect::<Vec<_>>()).await;
    assert!(nodes[0].state.read(|m| m.members().contains_key(&Rn(2))));
    assert!(!nodes[0].state.read(|m| m.members().contains_key(&Rn(9))), "the cut-off proposal never committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_recovers_the_state_from_disk() {
    let dir = TempDir::new().unwrap();
    {
        let net = MemNet::new();
        let nodes = cluster(dir.path(), &net).await;
        for i in 1..=3 {
            nodes[0].propose(bring_up(i), deadline()).await.unwrap();
        }
        let flush = Proposal { commands: vec![kernel(3, KernelOp::Flush { marks: vec![Region(7)] })] };
        nodes[2].propose(flush, deadline()).await.unwrap();
        for n in &nodes {
            n.shutdown().await;
        }
    }
    let net = MemNet::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&net, id, dir.path()).await);
    }
    nodes[0].wait_for_leader(Duration::from_secs(10)).await.unwrap();
    assert_eq!(read(&nodes[1], 2, Query::IsClean(Region(7))).await, Answer::Bool(false));
    assert_eq!(read(&nodes[1], 2, Query::GetSyncCount).await, Answer::SyncCount(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pre_vote_a_cut_off_leader_reads_under_its_lease_only_for_half_the_lower_election_timeout() {
    let dir = TempDir::new().unwrap();
    let net = MemNet::new();
    let nodes = cluster(dir.path(), &net).await;
    for n in &nodes {
        n.take_over_elections();
    }
    nodes[0].propose(bring_up(1), deadline()).await.unwrap();
    let leader = nodes[0].leader().unwrap();
    let l = &nodes[leader.0 as usize - 1];
    let query =
        || ReadRequest { uuid: uuid(), instance: Instance { node: Rn(1), luid: Luid(1) }, query: Query::GetSyncCount };
    // A read-index round gives the lease; the next read needs no round.
    let confirmed = Instant::now();
    l.read(query(), deadline()).await.unwrap().unwrap();
    assert_eq!(l.lease_reads(), 0);
    net.isolate(leader);
    let short = Instant::now() + Duration::from_millis(50);
    l.read(query(), short).await.unwrap().unwrap();
    assert_eq!(l.lease_reads(), 1, "answered under the lease, with the followers out of reach");
    // Half of the lower election timeout (300 ms) later, it no longer may.
    tokio::time::sleep_until(confirmed + Duration::from_millis(150)).await;
    let short = Instant::now() + Duration::from_secs(1);
    assert_eq!(l.read(query(), short).await, Err(ReplicaError::Timeout));
    assert_eq!(l.lease_reads(), 1);
    net.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_stand_on_the_order_of_a_node_other_than_its_leader() {
    let dir = TempDir::new().unwrap();
    let net = MemNet::new();
    let nodes = cluster(dir.path(), &net).await;
    nodes[0].propose(bring_up(1), deadline()).await.unwrap();
    let leader = nodes[0].leader().unwrap();
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let other = nodes.iter().find(|n| n.id != leader && n.id != follower.id).unwrap();
    follower.wait_for_leader(Duration::from_secs(5)).await.unwrap();
    let refused = follower.obey(Campaign::Elect, other.id).await;
    assert!(matches!(refused, Err(ForwardError::Refused(_))), "{refused:?}");
    assert_eq!(follower.leader(), Some(leader), "it did not stand");
    // Its leader may make it stand.
    follower.obey(Campaign::Elect, leader).await.unwrap();
}
