//! Real nodes over real gRPC on loopback, with redb stores: forwarding,
//! reads, leadership transfer, joining (with a streamed snapshot), removal
//! with id retirement, and refusal of a call meant for another node.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use regions::{Command, NodeId as Rn, Query};
use replication::Campaign;
use replication::membership::ChangeError;
use replication::node::{GrpcNode, RaftSettings};
use replication::pb::peer::Envelope;
use replication::pb::peer::peer_client::PeerClient;
use replication::{Proposal, ReadRequest};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::time::Instant;
use wire::{Luid, Uuid};

fn settings() -> RaftSettings {
    RaftSettings {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
        snapshot_every: 40,
        keep_behind_snapshot: 0,
        ..RaftSettings::default()
    }
}

/// The bound a joiner gets to catch up in these tests.
const CATCH_UP: Duration = Duration::from_secs(20);

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

async fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

struct Cluster {
    dir: TempDir,
    nodes: BTreeMap<u64, GrpcNode>,
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        let dir = TempDir::new().unwrap();
        let mut listeners = Vec::new();
        let mut members = BTreeMap::new();
        for id in 1..=n {
            let (l, a) = listen().await;
            members.insert(Rn(id), a);
            listeners.push((id, l));
        }
        let mut nodes = BTreeMap::new();
        for (id, l) in listeners {
            let path = dir.path().join(format!("node{id}.redb"));
            let node = GrpcNode::start(id, &path, l, settings(), Some(&members)).await.unwrap();
            nodes.insert(id, node);
        }
        Cluster { dir, nodes }
    }

    async fn leader(&self) -> u64 {
        let until = deadline();
        loop {
            for n in self.nodes.values() {
                if n.replica.leader() == Some(n.replica.metrics().borrow().id)
                    && n.replica.metrics().borrow().state == openraft::ServerState::Leader
                {
                    return n.replica.id.0;
                }
            }
            assert!(Instant::now() < until, "no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Node `via` (re)registers its kernel as boot `incarnation`, through
    /// its own replica (a node may propose only for itself): one entry.
    async fn join(&self, via: u64, incarnation: u64) {
        let p = Proposal { commands: vec![Command::NodeJoined { node: Rn(via), incarnation, session: 0 }] };
        let out = self.nodes[&via].replica.propose(p, deadline()).await.unwrap();
        assert_eq!(out.0.len(), 1);
        assert!(out.0[0].answer.is_ok(), "{:?}", out.0[0]);
    }

    async fn wait_applied(&self, id: u64, index: u64) {
        let n = &self.nodes[&id];
        assert!(n.replica.wait_applied(index, Duration::from_secs(30)).await, "n{id} caught up to {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_and_reads_are_forwarded_to_the_leader() {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = c.nodes.keys().copied().find(|id| *id != leader).unwrap();
    c.join(follower, 7).await;
    // A read through the follower is linearizable: it sees the join.
    let uuid = Uuid::new("LVM-grpc").unwrap();
    let r = ReadRequest {
        uuid,
        instance: regions::Instance { node: Rn(follower), luid: Luid(1) },
        query: Query::GetSyncCount,
    };
    let answer = c.nodes[&follower].replica.read(r, deadline()).await.unwrap();
    // No such log yet: the read reaches the machine and is refused there.
    assert!(answer.is_err(), "{answer:?}");
    let incarnation = c.nodes[&leader].replica.state.read(|m| m.members().get(&Rn(follower)).map(|m| m.incarnation));
    assert_eq!(incarnation, Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_chosen_voter() {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    for target in c.nodes.keys().copied().filter(|id| *id != leader).collect::<Vec<_>>().into_iter().rev() {
        let old = c.leader().await;
        let new = c.nodes[&old].replica.transfer_leader(target, deadline()).await.unwrap();
        assert_eq!(new, Rn(target));
        assert_eq!(c.leader().await, target);
        // The cluster still commits, from the old leader too.
        c.join(old, 100 + target).await;
    }
    // Only the leader transfers; only to a voter.
    let now = c.leader().await;
    let other = c.nodes.keys().copied().find(|id| *id != now).unwrap();
    let e = c.nodes[&other].replica.transfer_leader(now, deadline()).await.unwrap_err();
    assert_eq!(e, ChangeError::NotLeader(Some(Rn(now))));
    let e = c.nodes[&now].replica.transfer_leader(42, deadline()).await.unwrap_err();
    assert_eq!(e, ChangeError::NotAVoter(Rn(42)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_from_a_streamed_snapshot_and_a_removed_id_is_never_reused() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    // Enough entries for a snapshot and a purge (snapshot_every 40, keep
    // 0): the new node cannot be sent the log, only the snapshot.
    for i in 0..60 {
        c.join(leader, 1000 + i).await;
    }
    let purged_at = Instant::now() + Duration::from_secs(30);
    while c.nodes[&leader].replica.metrics().borrow().purged.is_none() {
        assert!(Instant::now() < purged_at, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (l, addr) = listen().await;
    let path = c.dir.path().join("node4.redb");
    let four = GrpcNode::start(4, &path, l, settings(), None).await.unwrap();
    c.nodes.insert(4, four);
    let members = c.nodes[&leader].replica.add_node(4, &addr, CATCH_UP, deadline()).await.unwrap();
    assert!(members.iter().any(|m| m.id == Rn(4) && m.voter), "{members:?}");
    let applied = c.nodes[&leader].replica.metrics().borrow().last_applied.unwrap().index;
    c.wait_applied(4, applied).await;
    let snap = c.nodes[&4].replica.metrics().borrow().snapshot;
    assert!(snap.is_some(), "node 4 should have installed a snapshot");
    let at_leader = c.nodes[&leader].replica.state.read(|m| m.members().clone());
    let at_four = c.nodes[&4].replica.state.read(|m| m.members().clone());
    assert_eq!(at_leader, at_four);
    // Adding it again is refused.
    let e = c.nodes[&leader].replica.add_node(4, &addr, CATCH_UP, deadline()).await.unwrap_err();
    assert_eq!(e, ChangeError::AlreadyMember(Rn(4)));

    // Remove a follower: gone from Raft, id retired for good.
    let gone = c.nodes.keys().copied().find(|id| *id != leader && *id != 4).unwrap();
    let members = c.nodes[&leader].replica.remove_node(gone, deadline()).await.unwrap();
    assert!(members.iter().all(|m| m.id != Rn(gone)), "{members:?}");
    if let Some(n) = c.nodes.remove(&gone) {
        n.shutdown().await;
    }
    let e = c.nodes[&leader].replica.add_node(gone, "127.0.0.1:1", CATCH_UP, deadline()).await.unwrap_err();
    assert_eq!(e, ChangeError::Retired(Rn(gone)));
    let p = Proposal { commands: vec![Command::NodeJoined { node: Rn(gone), incarnation: 9, session: 0 }] };
    let out = c.nodes[&leader].replica.propose(p, deadline()).await.unwrap();
    assert!(out.0[0].answer.is_err(), "a retired id registered a kernel: {:?}", out.0[0]);
    // Three voters remain and commit.
    c.join(4, 5000).await;
    for n in c.nodes.into_values() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_that_never_answers_is_refused_and_the_cluster_keeps_its_majority() {
    let mut c = Cluster::start(1).await;
    c.join(1, 7).await;
    // A typo: nothing listens at this address.
    let nobody = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wrong = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    let e = c.nodes[&1].replica.add_node(2, &wrong, Duration::from_secs(2), deadline()).await.unwrap_err();
    assert!(matches!(&e, ChangeError::NotCaughtUp { id, .. } if *id == Rn(2)), "{e:?}");
    assert!(e.to_string().contains(&wrong), "{e}");
    // Node 1 is the only member again and still commits on its own.
    let members = c.nodes[&1].replica.members();
    assert_eq!(members.iter().map(|m| (m.id, m.voter)).collect::<Vec<_>>(), vec![(Rn(1), true)]);
    c.join(1, 8).await;
    // The right address then works, with the same id (never retired).
    let (l, addr) = listen().await;
    let two = GrpcNode::start(2, &c.dir.path().join("node2.redb"), l, settings(), None).await.unwrap();
    c.nodes.insert(2, two);
    let members = c.nodes[&1].replica.add_node(2, &addr, CATCH_UP, deadline()).await.unwrap();
    assert!(members.iter().any(|m| m.id == Rn(2) && m.voter), "{members:?}");
    for n in c.nodes.into_values() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_voter_is_removed_while_a_majority_lives() {
    let mut c = Cluster::start(3).await;
    // A leader that has committed in its term (the first election may
    // still be settling right after the start).
    let first = c.leader().await;
    c.join(first, 1).await;
    let leader = c.leader().await;
    let dead = c.nodes.keys().copied().find(|id| *id != leader).unwrap();
    c.nodes.remove(&dead).unwrap().shutdown().await;
    let members = c.nodes[&leader].replica.remove_node(dead, deadline()).await.unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|m| m.id != Rn(dead) && m.voter), "{members:?}");
    // Two voters of two: both needed, both there.
    c.join(leader, 9).await;
    for n in c.nodes.into_values() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_meant_for_another_node_is_refused() {
    let c = Cluster::start(1).await;
    let addr = c.nodes[&1].addr;
    let mut client = PeerClient::connect(format!("http://{addr}")).await.unwrap();
    let payload = replication::types::encode(&Campaign::Elect).unwrap();
    let ours = || replication::node::DEFAULT_CLUSTER.to_owned();
    let e = client.campaign(Envelope { from: 9, to: 2, payload: payload.clone(), cluster: ours() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    // Garbage for the right node is refused too, without harm.
    let e = client.vote(Envelope { from: 9, to: 1, payload: vec![1, 0xff, 0xff], cluster: ours() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // So is a call from another cluster, whatever it carries.
    let other = Envelope { from: 9, to: 1, payload: payload.clone(), cluster: "other".into() };
    let e = client.campaign(other).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("\"other\"") && e.message().contains("\"dmlogd\""), "{e}");
    let ok = client.campaign(Envelope { from: 9, to: 1, payload, cluster: ours() }).await;
    assert!(ok.is_ok(), "{ok:?}");
}

/// A snapshot stream announcing more than `MAX_SNAPSHOT` bytes is refused
/// at its first message, before anything is buffered; one announcing what
/// it then overruns is refused at the overrun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_snapshot_is_refused_before_it_is_buffered() {
    use replication::grpc::MAX_SNAPSHOT;
    use replication::pb::peer::{SnapshotChunk, snapshot_chunk};
    use replication::types::{SnapshotMeta, Vote};

    let c = Cluster::start(1).await;
    let addr = c.nodes[&1].addr;
    let mut client = PeerClient::connect(format!("http://{addr}")).await.unwrap();
    let cluster = replication::node::DEFAULT_CLUSTER.to_owned();
    // The head is (vote, meta, announced length), as postcard lays out the
    // daemon's private struct of those three fields.
    let head = |len: u64| {
        let payload = replication::types::encode(&(Vote::default(), SnapshotMeta::default(), len)).unwrap();
        let env = Envelope { from: 2, to: 1, payload, cluster: cluster.clone() };
        SnapshotChunk { kind: Some(snapshot_chunk::Kind::Meta(env)) }
    };
    let data = |n: usize| SnapshotChunk { kind: Some(snapshot_chunk::Kind::Data(vec![0; n])) };

    let huge = tokio_stream::iter(vec![head(MAX_SNAPSHOT + 1), data(16)]);
    let e = client.install_snapshot(huge).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("bound"), "{e}");

    let overrun = tokio_stream::iter(vec![head(8), data(4), data(8)]);
    let e = client.install_snapshot(overrun).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("longer than announced"), "{e}");

    // The node is unharmed: it still commits.
    c.join(1, 1).await;
}
