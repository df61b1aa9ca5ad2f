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
    assert_eq!(rejoin.len(), 4, "join, CTR, RESUME, stale hints: {rejoin:?}");
}

/// A router whose lease has run out answers nothing, even with the fence
/// flag still clear (a node waking from a pause before its liveness task
/// noticed); once a lease is granted again the kernel's re-send is answered.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_answer_goes_out_while_the_lease_has_run_out() {
    let replica = one_node().await;
    let lease = node::live::Lease::new();
    let router = Router::with_lease(replica.clone(), Arc::new(AtomicBool::new(false)), lease.clone(), Arc::default());
    let mut kernel = Kernel::new(Config::default(), 7, 0x1234);
    let (table, legs) = mirror("LVM-lease", 8);
    let m = kernel.create(table, legs);
    let start = Instant::now();
    lease.grant(Duration::ZERO);
    drive(&mut kernel, &router, start, 10_000).await;
    assert_ne!(kernel.mirror(m).unwrap().life, kernel_sim::Life::Active, "nothing answered without a lease");
    // A new lease: the kernel re-sends after its 15 s timeout and is answered.
    lease.grant(Duration::from_secs(60));
    drive(&mut kernel, &router, start, 40_000).await;
    assert_eq!(kernel.mirror(m).unwrap().life, kernel_sim::Life::Active);
    assert!(kernel.stats().timeouts > 0, "answered only after a re-send");
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

/// The clean bits a log device holds, if it holds a log.
fn on_disk(path: &std::path::Path, regions: u64) -> Option<regions::Bitmap> {
    match node::disk_log::read_image(path.to_str().unwrap(), regions) {
        regions::DiskImage::Valid { clean, .. } => Some(clean),
        regions::DiskImage::Fresh { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_log_device_holds_every_acknowledged_mark_and_ends_all_clean() {
    let replica = one_node().await;
    let fenced = Arc::new(AtomicBool::new(false));
    let router = Router::new(replica.clone(), fenced.clone(), Arc::default());
    let mut writer = {
        let r = router.clone();
        node::disk_log::DiskWriter::new(replica.clone(), fenced, Duration::ZERO, move |u| r.disk_device(u))
    };
    // A slow device: a FLUSH answered before its write is durable would
    // let the kernel write regions the device still holds clean.
    writer.slow_device = Duration::from_millis(30);
    tokio::spawn(writer.run());
    let dir = tempfile::TempDir::new().unwrap();
    let dev = dir.path().join("mlog");
    std::fs::write(&dev, vec![0u8; 4096]).unwrap();
    let regions = 64;
    let table = Table {
        uuid: Uuid::new("LVM-disk").unwrap(),
        target_sectors: regions * 8,
        log_args: format!("clustered-disk {} 8", dev.display()),
        integrated_flush: false,
    };
    let legs = SharedLegs::new(Legs::new(regions, true));
    let mut kernel = Kernel::new(Config::default(), 3, 0x5678);
    let m = kernel.create(table, legs.clone());
    let start = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut checked = 0;
    let mut step = 0;
    while start.elapsed() < Duration::from_secs(60) {
        step += 1;
        if step % 3 == 0 && kernel.mirror(m).unwrap().writes_done < 300 {
            kernel.write(m, (step * 11) % regions);
        }
        kernel.advance_to(u64::try_from(start.elapsed().as_millis()).unwrap());
        for dg in kernel.take_requests() {
            let tx = tx.clone();
            router.handle(&dg, Box::new(move |bytes| drop(tx.send(bytes))));
        }
        while let Ok(reply) = rx.try_recv() {
            kernel.deliver(&reply);
        }
        // I1 on the device: a region being written after its FLUSH was
        // answered has its clean bit 0 on disk.
        let writing = kernel.mirror(m).unwrap().inflight_regions;
        if !writing.is_empty() {
            let clean = on_disk(&dev, regions).expect("a log on the device once a FLUSH was answered");
            for r in writing {
                assert!(!clean.get(r), "region {r} is being written but clean on the device");
                checked += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        let v = kernel.mirror(m).unwrap();
        if v.writes_done >= 300 && kernel.is_idle() {
            if v.status_sync_count == Some(regions) {
                break;
            }
            kernel.status(m);
        }
    }
    let v = kernel.mirror(m).unwrap();
    assert!(kernel.violations().is_empty(), "{:?}", kernel.violations());
    assert_eq!(v.status_sync_count, Some(regions), "resynced: {v:?} {:?} idle {}", kernel.stats(), kernel.is_idle());
    assert!(checked > 0, "some writes were seen in flight");
    assert!(legs.lock().identical());
    // Everything cleared and in sync: the device ends all clean, and the
    // status line says the device is healthy.
    let settled = Instant::now();
    while on_disk(&dev, regions).is_none_or(|c| c.count_ones() != regions) {
        assert!(settled.elapsed() < Duration::from_secs(10), "the device never became all clean");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = replica.state.read(|mach| mach.log(&Uuid::new("LVM-disk").unwrap()).cloned()).unwrap();
    assert_eq!(log.last_disk_writer(), Some(regions::NodeId(1)));
    assert!(log.disk_version() > 0 && log.disk_failed_version().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_resume_of_a_disk_log_starts_from_the_device_and_resyncs_only_its_dirty_regions() {
    let replica = one_node().await;
    let fenced = Arc::new(AtomicBool::new(false));
    let router = Router::new(replica.clone(), fenced.clone(), Arc::default());
    let writer = {
        let r = router.clone();
        node::disk_log::DiskWriter::new(replica.clone(), fenced, Duration::ZERO, move |u| r.disk_device(u))
    };
    tokio::spawn(writer.run());
    let dir = tempfile::TempDir::new().unwrap();
    let dev = dir.path().join("mlog");
    let regions = 64;
    // A log left by an earlier life: region 9 dirty, the rest clean; the
    // legs differ only there.
    let mut clean = regions::Bitmap::ones(regions);
    clean.set(9, false);
    std::fs::write(&dev, vec![0u8; 4096]).unwrap();
    node::disk_log::write_image(dev.to_str().unwrap(), &clean).unwrap();
    let legs = SharedLegs::new(Legs::new(regions, false));
    legs.lock().half_written(9);
    let table = Table {
        uuid: Uuid::new("LVM-disk-again").unwrap(),
        target_sectors: regions * 8,
        log_args: format!("clustered-disk {} 8", dev.display()),
        integrated_flush: false,
    };
    let mut kernel = Kernel::new(Config::default(), 5, 0x9abc);
    let m = kernel.create(table, legs.clone());
    let start = Instant::now();
    drive(&mut kernel, &router, start, 5_000).await;
    kernel.status(m);
    drive(&mut kernel, &router, start, 7_000).await;
    let v = kernel.mirror(m).unwrap();
    assert!(kernel.violations().is_empty(), "{:?}", kernel.violations());
    assert_eq!(v.status_sync_count, Some(regions));
    assert_eq!(kernel.stats().regions_recovered, 1, "only the dirty region was copied");
    assert!(legs.lock().identical());
}
