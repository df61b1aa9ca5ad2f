//! The router end to end: a simulated kernel's datagrams through the router
//! into a one-node Raft cluster (openraft, redb in memory) and back.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kernel_sim::{Config, Kernel, Legs, SharedLegs, Table};
use node::router::Router;
use replication::memnet::{MemLink, MemNet};
use replication::{FlushMode, LogStore, Proposal, Raft, Replica, StateMachine};
use tokio::sync::mpsc;
use tokio::time::Instant;
use wire::Uuid;

async fn one_node() -> Arc<Replica<MemLink>> {
    let net = MemNet::new();
    let db = Arc::new(redb::Builder::new().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap());
    let (log, db) = LogStore::with_database(db, FlushMode::Inline).unwrap();
    let sm = StateMachine::open(db).unwrap();
    let state = sm.reader();
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    };
    let raft = Raft::new(1, Arc::new(config.validate().unwrap()), net.factory(1), log.clone(), sm).await.unwrap();
    net.register(1, raft.clone(), state.clone());
    let members: BTreeMap<u64, openraft::BasicNode> = BTreeMap::from([(1, openraft::BasicNode::new("mem:1"))]);
    raft.initialize(members).await.unwrap();
    let replica = Arc::new(Replica::new(1, raft, state, net.link(1)).with_log(log));
    let join = Proposal { commands: vec![regions::Command::NodeJoined { node: regions::NodeId(1), incarnation: 1 }] };
    replica.propose(join, Instant::now() + Duration::from_secs(10)).await.unwrap();
    replica
}

/// A `clustered-core` mirror of `regions` regions of 8 sectors that starts
/// out of sync, and its legs.
fn mirror(uuid: &str, regions: u64) -> (Table, SharedLegs) {
    let table = Table {
        uuid: Uuid::new(uuid).unwrap(),
        target_sectors: regions * 8,
        log_args: "clustered-core 8".into(),
        integrated_flush: false,
    };
    (table, SharedLegs::new(Legs::new(regions, true)))
}

/// Moves the kernel's clock, sends its datagrams through the router and
/// delivers the replies, until `until_ms`.
async fn drive(kernel: &mut Kernel, router: &Arc<Router<MemLink>>, start: Instant, until_ms: u64) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    loop {
        let now = u64::try_from(start.elapsed().as_millis()).unwrap();
        if now >= until_ms {
            return;
        }
        kernel.advance_to(now);
        for dg in kernel.take_requests() {
            let tx = tx.clone();
            router.handle(&dg, Box::new(move |bytes| drop(tx.send(bytes))));
        }
        while let Ok(reply) = rx.try_recv() {
            kernel.deliver(&reply);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_kernel_resyncs_writes_and_reports_in_sync_through_the_router() {
    let replica = one_node().await;
    let router = Router::new(replica.clone(), Arc::new(AtomicBool::new(false)), Arc::default());
    let mut kernel = Kernel::new(Config::default(), 7, 0x1234);
    let regions = 64;
    let (table, legs) = mirror("LVM-router", regions);
    let m = kernel.create(table, legs.clone());
    let start = Instant::now();
    drive(&mut kernel, &router, start, 2_000).await;
    for r in 0..200 {
        kernel.write(m, (r * 7) % regions);
        drive(&mut kernel, &router, start, 2_000 + 5 * (r + 1)).await;
    }
    drive(&mut kernel, &router, start, 20_000).await;
    kernel.status(m);
    drive(&mut kernel, &router, start, 25_000).await;
    let view = kernel.mirror(m).unwrap();
    assert!(kernel.violations().is_empty(), "{:?}", kernel.violations());
    assert_eq!(view.status_sync_count, Some(regions), "the mirror reports fully in sync");
    assert!(view.writes_done >= 200, "{} writes done", view.writes_done);
    assert!(legs.lock().identical(), "legs differ in {:?}", legs.lock().differing());
    // The router remembered the table for a rejoin, with nothing dirty.
    let own = router.own_marks();
    let rejoin = own.rejoin(regions::NodeId(1), 1);
    assert_eq!(rejoin.len(), 3, "join, CTR, RESUME: {rejoin:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn garbage_is_dropped_a_bad_request_gets_einval_and_an_unknown_log_an_errno() {
    let replica = one_node().await;
    let router = Router::new(replica, Arc::new(AtomicBool::new(false)), Arc::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<(&str, Vec<u8>)>();
    let send = |name: &'static str| {
        let tx = tx.clone();
        Box::new(move |b: Vec<u8>| drop(tx.send((name, b)))) as node::router::ReplyTo
    };
    router.handle(&[1, 2, 3], send("garbage"));
    let uuid = Uuid::new("LVM-bad").unwrap();
    let good =
        wire::encode_request(wire::Luid(1), &uuid, wire::Seq(5), &wire::Request::InSync(wire::Region(1))).unwrap();
    // The request type (offset 188 of a request datagram) set to 99.
    let mut unknown = good.clone();
    unknown[188..192].copy_from_slice(&99u32.to_ne_bytes());
    router.handle(&unknown, send("unknown type"));
    router.handle(&good, send("unknown log"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replies: BTreeMap<&str, Vec<u8>> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(!replies.contains_key("garbage"), "a datagram that does not frame gets no reply");
    let error = |name: &str| match wire::KernelReply::parse(&replies[name]).unwrap() {
        wire::KernelReply::Full { seq, error, .. } => (seq, error),
        other => panic!("{other:?}"),
    };
    assert_eq!(error("unknown type"), (wire::Seq(5), -22));
    assert_eq!(error("unknown log"), (wire::Seq(5), -2), "ENOENT for a log nobody constructed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_in_another_socket_is_served_over_the_unix_transport() {
    use node::transport::{UnixTransport, serve};
    let replica = one_node().await;
    let router = Router::new(replica, Arc::new(AtomicBool::new(false)), Arc::default());
    let dir = tempfile::TempDir::new().unwrap();
    let daemon = dir.path().join("dmlogd.sock");
    let transport = Arc::new(UnixTransport::bind(&daemon).unwrap());
    let server = tokio::spawn(serve(transport, router));
    // The "kernel": its own bound socket, sending what the kernel sends.
    let kernel_sock = tokio::net::UnixDatagram::bind(dir.path().join("kernel.sock")).unwrap();
    let mut kernel = Kernel::new(Config::default(), 1, 0x77);
    let regions = 32;
    let (table, legs) = mirror("LVM-unix", regions);
    let m = kernel.create(table, legs.clone());
    let start = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let mut wrote = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let now = u64::try_from(start.elapsed().as_millis()).unwrap();
        kernel.advance_to(now);
        for dg in kernel.take_requests() {
            kernel_sock.send_to(&dg, &daemon).await.unwrap();
        }
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), kernel_sock.recv(&mut buf)).await {
            kernel.deliver(&buf[..n]);
        }
        if wrote < 50 && now > 500 {
            kernel.write(m, wrote % regions);
            wrote += 1;
        }
        if wrote == 50 && kernel.is_idle() {
            let v = kernel.mirror(m).unwrap();
            if v.status_sync_count == Some(regions) {
                break;
            }
            if v.status_sync_count.is_none() || now % 1000 == 0 {
                kernel.status(m);
            }
        }
    }
    let v = kernel.mirror(m).unwrap();
    assert!(kernel.violations().is_empty(), "{:?}", kernel.violations());
    assert_eq!(v.status_sync_count, Some(regions), "resynced and in sync over the socket");
    assert_eq!(v.writes_done, 50);
    assert!(legs.lock().identical());
    server.abort();
}
