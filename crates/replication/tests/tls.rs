//! Mutual TLS between nodes: a cluster whose nodes hold certificates of
//! its CA replicates; a peer without a certificate, or with one from
//! another cluster's CA, is refused; a peer may speak only as the node its
//! certificate names, and may forward only commands that node originates.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use regions::{Command, NodeId as Rn};
use replication::Campaign;
use replication::Proposal;
use replication::grpc::PeerTls;
use replication::node::{DEFAULT_CLUSTER, GrpcNode, RaftSettings};
use replication::pb::peer::Envelope;
use replication::pb::peer::peer_client::PeerClient;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::Endpoint;

/// A cluster's CA.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca { cert: p.self_signed(&key).unwrap(), key }
    }

    /// The certificate of node `id` at 127.0.0.1, signed by this CA.
    fn node(&self, id: u64) -> PeerTls {
        let key = KeyPair::generate().unwrap();
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned(), replication::grpc::node_name(Rn(id))];
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, format!("node {id}"));
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        PeerTls {
            ca: self.cert.pem().into_bytes(),
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
        }
    }
}

fn settings(tls: PeerTls) -> RaftSettings {
    RaftSettings {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
        tls: Some(tls),
        ..RaftSettings::default()
    }
}

async fn leader(nodes: &BTreeMap<u64, GrpcNode>) -> u64 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        for n in nodes.values() {
            if n.replica.metrics().borrow().state == openraft::ServerState::Leader {
                return n.replica.id.0;
            }
        }
        assert!(Instant::now() < until, "no leader over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_clusters_certificates_replicate_and_strangers_are_refused() {
    let ca = Ca::new("cluster A");
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(Rn(id), l.local_addr().unwrap().to_string());
        listeners.push((id, l));
    }
    let mut nodes = BTreeMap::new();
    for (id, l) in listeners {
        let s = settings(ca.node(id));
        let n = GrpcNode::start(id, &dir.path().join(format!("{id}.redb")), l, s, Some(&members)).await.unwrap();
        nodes.insert(id, n);
    }
    // Replication works over TLS: a proposal through a follower commits
    // and reaches every node.
    let lead = leader(&nodes).await;
    let follower = *nodes.keys().find(|id| **id != lead).unwrap();
    let p = Proposal { commands: vec![Command::NodeJoined { node: Rn(follower), incarnation: 1, session: 0 }] };
    let out = nodes[&follower].replica.propose(p, Instant::now() + Duration::from_secs(30)).await.unwrap();
    assert!(out.0[0].answer.is_ok(), "{:?}", out.0[0]);

    let addr = &members[&Rn(1)];
    let payload = replication::types::encode(&Campaign::Elect).unwrap();
    let envelope = || Envelope { from: 9, to: 1, payload: payload.clone(), cluster: DEFAULT_CLUSTER.into() };
    // Plain HTTP/2 to a TLS node: no answer.
    let plain = PeerClient::connect(format!("http://{addr}")).await;
    if let Ok(mut c) = plain {
        assert!(c.campaign(envelope()).await.is_err(), "a plaintext call was answered");
    }
    // TLS trusting the node, but with a certificate of another cluster's
    // CA: the handshake is refused.
    let other = Ca::new("cluster B").node(9);
    let stranger = PeerTls { ca: ca.cert.pem().into_bytes(), ..other };
    let ep = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(stranger.client()).unwrap();
    // (A connect error is the handshake refusing it at once.)
    if let Ok(ch) = ep.connect().await {
        let answered = PeerClient::new(ch).campaign(envelope()).await;
        assert!(answered.is_err(), "a certificate of another CA was accepted: {answered:?}");
    }
    // The same call with a certificate of the cluster's CA for node 9 is
    // answered.
    let friend = ca.node(9);
    let ep = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(friend.client()).unwrap();
    let mut c = PeerClient::new(ep.connect().await.unwrap());
    let ok = c.campaign(Envelope { to: 1, ..envelope() }).await;
    assert!(ok.is_ok(), "{ok:?}");
    // With node 9's certificate, a call that says it comes from node 2 is
    // refused: a node speaks only as itself.
    let e = c.campaign(Envelope { from: 2, ..envelope() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("does not name node 2"), "{e}");

    // Node 2, as itself, forwards to the leader a proposal that speaks for
    // node 3 (registers it, renews its lease) or evicts: refused, nothing
    // committed.
    let lead_addr = &members[&Rn(lead)];
    let two = ca.node(2);
    let ep = Endpoint::from_shared(format!("https://{lead_addr}")).unwrap().tls_config(two.client()).unwrap();
    let mut c = PeerClient::new(ep.connect().await.unwrap());
    for cmd in [
        Command::NodeJoined { node: Rn(3), incarnation: 77, session: 0 },
        Command::Renew { node: Rn(3), incarnation: 1, session: 0, applied: 0 },
        Command::NodeEvicted { node: Rn(3) },
        Command::NodeRetired { node: Rn(1) },
    ] {
        let p =
            Proposal { commands: vec![Command::NodeJoined { node: Rn(2), incarnation: 5, session: 0 }, cmd.clone()] };
        let env = Envelope {
            from: 2,
            to: lead,
            payload: replication::types::encode(&p).unwrap(),
            cluster: DEFAULT_CLUSTER.into(),
        };
        let reply = c.propose(env).await.unwrap().into_inner();
        let out: Result<replication::types::Outcomes, replication::ForwardError> =
            replication::types::decode(&reply.payload).unwrap();
        assert!(
            matches!(&out, Err(replication::ForwardError::Refused(why)) if why.contains("node 2 may not")),
            "{cmd:?}: {out:?}"
        );
    }
    let incarnation = nodes[&lead].replica.state.read(|m| m.members().get(&Rn(2)).map(|m| m.incarnation));
    assert_ne!(incarnation, Some(5), "a refused proposal was applied in part");
    // Its own commands it may forward (to whoever leads by then: the
    // campaign order above may have moved the leadership).
    let p = Proposal { commands: vec![Command::Resync { uuid: wire::Uuid::new("LVM-none").unwrap() }] };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now_leading = leader(&nodes).await;
        let ep = Endpoint::from_shared(format!("https://{}", members[&Rn(now_leading)]))
            .unwrap()
            .tls_config(two.client())
            .unwrap();
        let mut c = PeerClient::new(ep.connect().await.unwrap());
        let payload = replication::types::encode(&p).unwrap();
        let env = Envelope { from: 2, to: now_leading, payload, cluster: DEFAULT_CLUSTER.into() };
        let reply = c.propose(env).await.unwrap().into_inner();
        let out: Result<replication::types::Outcomes, replication::ForwardError> =
            replication::types::decode(&reply.payload).unwrap();
        match out {
            Ok(_) => break,
            Err(replication::ForwardError::NotLeader) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("node 2's own command: {other:?}"),
        }
    }
    for n in nodes.into_values() {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn an_unusable_certificate_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = PeerTls { ca: b"not a pem".to_vec(), cert: b"nor this".to_vec(), key: b"nor this".to_vec() };
    let members = BTreeMap::from([(Rn(1), l.local_addr().unwrap().to_string())]);
    let e = GrpcNode::start(1, &dir.path().join("1.redb"), l, settings(bad), Some(&members)).await.err().unwrap();
    assert!(e.to_string().starts_with("tls: "), "{e}");
}
