//! The host pipeline end to end on one node: a simulated kernel's datagrams
//! through [`node::host::Host`] (router, gate, liveness, effects, disk
//! writer) into a one-node Raft cluster (openraft, redb in memory) and back.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kernel_sim::{Config, Kernel, Legs, MirrorId, SharedLegs, Table};
use node::gate::{Gate, Standing};
use node::host::{Exit, Fence, FenceOutcome, Host, HostConfig};
use node::live::LiveConfig;
use node::liveness::Timing;
use node::own_marks::{MemJournal, OwnMarksStore};
use node::transport::{MemKernel, MemKernelEnd, MemTransport};
use replication::memnet::{MemLink, MemNet};
use replication::{FlushMode, LogStore, Raft, Replica, StateMachine};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wire::Uuid;

type Shared<T> = Arc<Mutex<T>>;

/// The one node.
const N1: regions::NodeId = regions::NodeId(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The kernel's side: replies go straight into the simulated kernel, or
/// (with no kernel) into a list.
struct K {
    kernel: Shared<Kernel>,
    raw: Shared<Vec<Vec<u8>>>,
}

impl MemKernel for K {
    fn deliver(&self, reply: &[u8]) {
        lock(&self.raw).push(reply.to_vec());
        lock(&self.kernel).deliver(reply);
    }
    fn kick(&self, _uuid: &Uuid) -> Result<String, String> {
        lock(&self.kernel).kick(MirrorId(0));
        Ok("kicked".into())
    }
    fn wake(&self, _uuid: &Uuid) -> Result<String, String> {
        lock(&self.kernel).read(MirrorId(0), 0);
        Ok("woke".into())
    }
}

/// A fence action that records its calls and answers as told.
struct TestFence {
    calls: Shared<u32>,
    outcome: FenceOutcome,
}

impl Fence for TestFence {
    fn fence(&self, _logs: &[Uuid]) -> FenceOutcome {
        *lock(&self.calls) += 1;
        self.outcome.clone()
    }
    fn after_rejoin(&self, _undo: Vec<String>) {}
}

/// One node's disk: its Raft store and its journal, which outlive a daemon.
struct Disk {
    db: Arc<redb::Database>,
    journal: MemJournal,
    net: MemNet,
}

impl Disk {
    fn new() -> Disk {
        let db = Arc::new(redb::Builder::new().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap());
        Disk { db, journal: MemJournal::new(), net: MemNet::new() }
    }
}

/// A running one-node daemon.
struct Daemon {
    replica: Arc<Replica<MemLink>>,
    gate: Gate,
    end: MemKernelEnd,
    task: JoinHandle<Exit>,
    fences: Shared<u32>,
    /// Every reply sent, in order.
    replies: Shared<Vec<Vec<u8>>>,
}

fn timing() -> Timing {
    Timing {
        renew_every_ms: 200,
        tick_ms: 50,
        fence_after_ms: 3_500,
        fence_action_max_ms: 500,
        dead_after_ms: 4_500,
        clock_drift_ppm: 10_000,
        election_max_ms: 800,
    }
}

/// Starts a daemon on `disk` for `kernel`, with liveness `live` and a fence
/// answering `outcome`.
async fn daemon(disk: &Disk, kernel: &Shared<Kernel>, live: LiveConfig, outcome: FenceOutcome) -> Daemon {
    daemon_with(disk, kernel, live, outcome, Duration::ZERO).await
}

/// [`daemon`] whose log-device writes take `disk_delay` longer.
async fn daemon_with(
    disk: &Disk,
    kernel: &Shared<Kernel>,
    live: LiveConfig,
    outcome: FenceOutcome,
    disk_delay: Duration,
) -> Daemon {
    let (log, db) = LogStore::with_database(disk.db.clone(), FlushMode::Inline).unwrap();
    let (tx, applied) = tokio::sync::mpsc::unbounded_channel();
    let checks = Arc::default();
    let sm = StateMachine::open(db).unwrap().with_effects(tx).with_checks(checks);
    let state = sm.reader();
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    };
    let raft =
        Raft::new(N1, Arc::new(config.validate().unwrap()), disk.net.factory(N1), log.clone(), sm).await.unwrap();
    disk.net.register(N1, raft.clone(), state.clone());
    let members: BTreeMap<regions::NodeId, openraft::BasicNode> =
        BTreeMap::from([(N1, openraft::BasicNode::new("mem:1"))]);
    let _ = raft.initialize(members).await;
    let replica = Arc::new(Replica::new(N1, raft, state, disk.net.link(N1)).with_log(log));
    let replies: Shared<Vec<Vec<u8>>> = Arc::default();
    let (transport, end) = MemTransport::new(K { kernel: kernel.clone(), raw: replies.clone() });
    let own = OwnMarksStore::open(Box::new(disk.journal.clone()), 1).unwrap();
    let fences: Shared<u32> = Arc::default();
    let fence = Arc::new(TestFence { calls: fences.clone(), outcome });
    let config = HostConfig {
        incarnation: 1,
        run: node::host::new_run(),
        live,
        clock_start: Instant::now(),
        disk_handover: Duration::ZERO,
        disk_delay,
        clear_after: node::router::CLEAR_AFTER,
    };
    let host = Host::new(replica.clone(), Arc::new(transport), applied, own, fence, config, Arc::default());
    let gate = host.gate();
    let task = tokio::spawn(host.run(std::future::pending()));
    Daemon { replica, gate, end, task, fences, replies }
}

fn live(fence: bool) -> LiveConfig {
    LiveConfig { timing: timing(), rate: 1.0, seed: 7, prevote: true, fence }
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

/// Moves the kernel's clock and hands its datagrams to the daemon (or lets
/// it see that nobody listens) until `until_ms`.
async fn drive(kernel: &Shared<Kernel>, end: Option<&MemKernelEnd>, start: Instant, until_ms: u64) {
    loop {
        let now = u64::try_from(start.elapsed().as_millis()).unwrap();
        if now >= until_ms {
            return;
        }
        {
            let mut k = lock(kernel);
            k.advance_to(now);
            for dg in k.take_requests() {
                if !end.is_some_and(|e| e.send(dg.clone())) {
                    k.unheard(&dg);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The seq and error of every reply the daemon sent, in order.
fn answered(d: &Daemon) -> Vec<(u32, i32)> {
    lock(&d.replies)
        .iter()
        .map(|r| match wire::KernelReply::parse(r).unwrap() {
            wire::KernelReply::Full { seq, error, .. } => (seq.0, error),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A daemon whose kernel's requests are made by hand (nothing drives the
/// simulated kernel), with a table of log `uuid` (constructor arguments
/// `log_args`, luid 1) constructed and resumed as requests 1 and 2.
async fn by_hand(disk: &Disk, uuid: &Uuid, log_args: &str) -> Daemon {
    let kernel = new_kernel(1, 1);
    let d = daemon(disk, &kernel, live(true), FenceOutcome::Resetting).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(&d, uuid, 1, wire::Request::Ctr { args: log_args.into(), reconnect: false });
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(&d, uuid, 2, wire::Request::Resume);
    tokio::time::sleep(Duration::from_secs(1)).await;
    d
}

/// Sends `request` with `seq` from table (`uuid`, luid 1) to daemon `d`.
fn send(d: &Daemon, uuid: &Uuid, seq: u32, request: wire::Request) {
    assert!(d.end.send(wire::encode_request(wire::Luid(1), uuid, wire::Seq(seq), &request).unwrap()));
}

fn new_kernel(seq: u32, luid: u64) -> Shared<Kernel> {
    Arc::new(Mutex::new(Kernel::new(Config::default(), seq, luid)))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_kernel_resyncs_writes_and_reports_in_sync_through_the_host() {
    let disk = Disk::new();
    let kernel = new_kernel(7, 0x1234);
    let d = daemon(&disk, &kernel, live(true), FenceOutcome::Resetting).await;
    let regions = 64;
    let (table, legs) = mirror("LVM-host", regions);
    let m = lock(&kernel).create(table, legs.clone());
    let start = Instant::now();
    drive(&kernel, Some(&d.end), start, 2_000).await;
    for r in 0..200 {
        lock(&kernel).write(m, (r * 7) % regions);
        drive(&kernel, Some(&d.end), start, 2_000 + 5 * (r + 1)).await;
    }
    drive(&kernel, Some(&d.end), start, 20_000).await;
    lock(&kernel).status(m);
    drive(&kernel, Some(&d.end), start, 25_000).await;
    let k = lock(&kernel);
    let view = k.mirror(m).unwrap();
    assert!(k.violations().is_empty(), "{:?}", k.violations());
    assert_eq!(view.status_sync_count, Some(regions), "the mirror reports fully in sync");
    assert!(view.writes_done >= 200, "{} writes done", view.writes_done);
    assert!(legs.lock().identical(), "legs differ in {:?}", legs.lock().differing());
    assert!(d.gate.open() && *lock(&d.fences) == 0, "renewed all along: {:?}", d.gate);
    // The journal knows the table for a rejoin, with nothing dirty.
    let own = OwnMarksStore::read(&mut disk.journal.clone(), 1).unwrap();
    let rejoin = own.rejoin(regions::NodeId(1), 1, 0);
    assert_eq!(rejoin.len(), 5, "join, CTR, RESUME, the exact marks (none), stale hints: {rejoin:?}");
}

/// With the lease run out (and no liveness task to fence or renew), no
/// reply leaves; once a lease is granted again the kernel's re-send is
/// answered.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_reply_leaves_while_the_lease_has_run_out() {
    let disk = Disk::new();
    let kernel = new_kernel(7, 0x1234);
    // Renewals far apart and no fence: the lease is what the test says.
    let quiet = LiveConfig { timing: Timing { renew_every_ms: 1_000_000, ..timing() }, ..live(false) };
    let d = daemon(&disk, &kernel, quiet, FenceOutcome::Resetting).await;
    let (table, legs) = mirror("LVM-lease", 8);
    let start = Instant::now();
    drive(&kernel, Some(&d.end), start, 1_000).await;
    d.gate.lease().grant(Duration::ZERO);
    let m = lock(&kernel).create(table, legs);
    drive(&kernel, Some(&d.end), start, 10_000).await;
    assert_ne!(lock(&kernel).mirror(m).unwrap().life, kernel_sim::Life::Active, "nothing answered without a lease");
    // A new lease: the kernel re-sends after its 15 s timeout and is answered.
    d.gate.lease().grant(Duration::from_secs(60));
    drive(&kernel, Some(&d.end), start, 40_000).await;
    let k = lock(&kernel);
    assert_eq!(k.mirror(m).unwrap().life, kernel_sim::Life::Active);
    assert!(k.stats().timeouts > 0, "answered only after a re-send");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn garbage_is_dropped_a_bad_request_gets_einval_and_an_unknown_log_an_errno() {
    let disk = Disk::new();
    let kernel = new_kernel(1, 1);
    let d = daemon(&disk, &kernel, live(true), FenceOutcome::Resetting).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let uuid = Uuid::new("LVM-bad").unwrap();
    let good =
        wire::encode_request(wire::Luid(1), &uuid, wire::Seq(5), &wire::Request::InSync(wire::Region(1))).unwrap();
    // The request type (offset 188 of a request datagram) set to 99.
    let mut unknown = good.clone();
    unknown[188..192].copy_from_slice(&99u32.to_ne_bytes());
    for dg in [vec![1, 2, 3], unknown, good] {
        assert!(d.end.send(dg));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut errors = answered(&d);
    errors.sort();
    // No reply to the garbage; EINVAL for the unknown type, ENOENT for a
    // log nobody constructed.
    assert_eq!(errors, vec![(5, -22), (5, -2)]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_transport_that_dies_stops_renewals_fences_and_ends_the_host() {
    let disk = Disk::new();
    let kernel = new_kernel(7, 0x1234);
    let d = daemon(&disk, &kernel, live(true), FenceOutcome::Stopped { undo: Vec::new() }).await;
    let (table, legs) = mirror("LVM-dies", 16);
    lock(&kernel).create(table, legs);
    let start = Instant::now();
    drive(&kernel, Some(&d.end), start, 2_000).await;
    assert!(d.gate.open());
    d.end.fail_receive(std::io::ErrorKind::Other);
    drive(&kernel, Some(&d.end), start, 3_000).await;
    assert!(d.task.is_finished(), "the host ended");
    let exit = d.task.await.unwrap();
    assert!(matches!(exit, Exit::TransportFailed(_)), "{exit:?}");
    assert!(matches!(d.gate.standing(), Standing::TransportFailed(_)), "{:?}", d.gate.standing());
    assert!(!d.gate.open(), "nothing is answered any more");
    assert_eq!(*lock(&d.fences), 1, "the fence action ran");
    // No renewal commits after the failure (the lease is over).
    let applied = d.replica.state.last_applied();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(d.replica.state.last_applied(), applied, "nothing more was proposed");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn after_a_failed_fence_the_node_answers_nothing_until_restarted() {
    let disk = Disk::new();
    let kernel = new_kernel(7, 0x1234);
    // No renewals: the lease runs out after fence_after.
    let quiet = LiveConfig { timing: Timing { renew_every_ms: 1_000_000, ..timing() }, ..live(true) };
    let d = daemon(&disk, &kernel, quiet, FenceOutcome::Failed("no sysrq".into())).await;
    let (table, legs) = mirror("LVM-failed", 16);
    let m = lock(&kernel).create(table, legs);
    let start = Instant::now();
    drive(&kernel, Some(&d.end), start, 8_000).await;
    assert_eq!(*lock(&d.fences), 1, "fenced once");
    assert_eq!(d.gate.standing(), Standing::FenceFailed("no sysrq".into()));
    // Long enough for a rejoin, which must not happen.
    let answered = lock(&kernel).stats().requests;
    lock(&kernel).status(m);
    drive(&kernel, Some(&d.end), start, 30_000).await;
    assert!(!d.gate.open(), "still closed: {:?}", d.gate);
    assert_eq!(lock(&kernel).mirror(m).unwrap().status, None, "no status answered");
    assert!(lock(&kernel).stats().requests > answered);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_daemon_restarted_under_its_kernel_rejoins_with_the_tables_and_marks_it_kept() {
    let disk = Disk::new();
    let kernel = new_kernel(7, 0x1234);
    let d = daemon(&disk, &kernel, live(true), FenceOutcome::Resetting).await;
    let regions = 32;
    let (table, legs) = mirror("LVM-restart", regions);
    let uuid = table.uuid.clone();
    let m = lock(&kernel).create(table, legs.clone());
    let start = Instant::now();
    drive(&kernel, Some(&d.end), start, 3_000).await;
    // A write whose MARK is on its way when the daemon dies.
    for _ in 0..100 {
        lock(&kernel).write(m, 5);
        drive(&kernel, Some(&d.end), start, u64::try_from(start.elapsed().as_millis()).unwrap() + 1).await;
        if lock(&kernel).awaits_mark(m) {
            break;
        }
    }
    d.task.abort();
    let _ = d.replica.shutdown().await;
    disk.net.unregister(N1);
    let journaled = OwnMarksStore::read(&mut disk.journal.clone(), 1).unwrap();
    let luid = lock(&kernel).mirror(m).unwrap().luid;
    assert!(journaled.ctr_args(&uuid, luid).is_some_and(|a| a.contains("clustered-core")), "{journaled:?}");
    // Down for 20 s: the kernel's re-send finds nobody and it reconnects.
    drive(&kernel, None, start, 23_000).await;
    assert!(lock(&kernel).stats().unheard > 0, "the kernel found no daemon");
    let d = daemon(&disk, &kernel, live(true), FenceOutcome::Resetting).await;
    drive(&kernel, Some(&d.end), start, 40_000).await;
    let stats = lock(&kernel).stats().clone();
    assert!(stats.reconnects > 0, "the reconnect loop ran: {stats:?}");
    // What a later rejoin needs is still on disk after the restart.
    let again = OwnMarksStore::read(&mut disk.journal.clone(), 1).unwrap();
    assert_eq!(again.ctr_args(&uuid, luid), journaled.ctr_args(&uuid, luid));
    let instance = regions::Instance { node: regions::NodeId(1), luid };
    let known = d.replica.state.read(|mm| mm.log(&uuid).is_some_and(|l| l.instances().contains_key(&instance)));
    assert!(known, "the table is registered after the restart");
    lock(&kernel).status(m);
    drive(&kernel, Some(&d.end), start, 60_000).await;
    let k = lock(&kernel);
    assert!(k.violations().is_empty(), "{:?}", k.violations());
    assert_eq!(k.mirror(m).unwrap().status_sync_count, Some(regions));
    assert!(legs.lock().identical());
}

/// A `clustered-disk` table of `regions` regions on the file `dev`.
fn disk_table(uuid: &str, dev: &std::path::Path, regions: u64) -> Table {
    Table {
        uuid: Uuid::new(uuid).unwrap(),
        target_sectors: regions * 8,
        log_args: format!("clustered-disk {} 8", dev.display()),
        integrated_flush: false,
    }
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
    let disk = Disk::new();
    let kernel = new_kernel(3, 0x5678);
    // A slow device: a FLUSH answered before its write is durable would
    // let the kernel write regions the device still holds clean.
    let d = daemon_with(&disk, &kernel, live(true), FenceOutcome::Resetting, Duration::from_millis(30)).await;
    let dir = tempfile::TempDir::new().unwrap();
    let dev = dir.path().join("mlog");
    std::fs::write(&dev, vec![0u8; 4096]).unwrap();
    let regions = 64;
    let legs = SharedLegs::new(Legs::new(regions, true));
    let m = lock(&kernel).create(disk_table("LVM-disk", &dev, regions), legs.clone());
    let start = Instant::now();
    let mut checked = 0;
    let mut step = 0;
    while start.elapsed() < Duration::from_secs(60) {
        step += 1;
        if step % 3 == 0 && lock(&kernel).mirror(m).unwrap().writes_done < 300 {
            lock(&kernel).write(m, (step * 11) % regions);
        }
        let now = u64::try_from(start.elapsed().as_millis()).unwrap();
        drive(&kernel, Some(&d.end), start, now + 1).await;
        // I1 on the device: a region being written after its FLUSH was
        // answered has its clean bit 0 on disk.
        let writing = lock(&kernel).mirror(m).unwrap().inflight_regions;
        if !writing.is_empty() {
            let clean = on_disk(&dev, regions).expect("a log on the device once a FLUSH was answered");
            for r in writing {
                assert!(!clean.get(r), "region {r} is being written but clean on the device");
                checked += 1;
            }
        }
        let (done, idle, synced) = {
            let k = lock(&kernel);
            let v = k.mirror(m).unwrap();
            (v.writes_done >= 300, k.is_idle(), v.status_sync_count == Some(regions))
        };
        if done && idle {
            if synced {
                break;
            }
            lock(&kernel).status(m);
        }
    }
    {
        let k = lock(&kernel);
        assert!(k.violations().is_empty(), "{:?}", k.violations());
        assert_eq!(k.mirror(m).unwrap().status_sync_count, Some(regions), "resynced: {:?}", k.stats());
    }
    assert!(checked > 0, "some writes were seen in flight");
    assert!(legs.lock().identical());
    // Everything cleared and in sync: the device ends all clean.
    let settled = Instant::now();
    while on_disk(&dev, regions).is_none_or(|c| c.count_ones() != regions) {
        assert!(settled.elapsed() < Duration::from_secs(10), "the device never became all clean");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = d.replica.state.read(|mach| mach.log(&Uuid::new("LVM-disk").unwrap()).cloned()).unwrap();
    assert_eq!(log.last_disk_writer(), Some(regions::NodeId(1)));
    assert!(log.disk_version() > 0 && log.disk_failed_version().is_none());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_first_resume_of_a_disk_log_starts_from_the_device_and_resyncs_only_its_dirty_regions() {
    let disk = Disk::new();
    let kernel = new_kernel(5, 0x9abc);
    let d = daemon(&disk, &kernel, live(true), FenceOutcome::Resetting).await;
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
    let m = lock(&kernel).create(disk_table("LVM-disk-again", &dev, regions), legs.clone());
    let start = Instant::now();
    drive(&kernel, Some(&d.end), start, 5_000).await;
    lock(&kernel).status(m);
    drive(&kernel, Some(&d.end), start, 7_000).await;
    let k = lock(&kernel);
    assert!(k.violations().is_empty(), "{:?}", k.violations());
    assert_eq!(k.mirror(m).unwrap().status_sync_count, Some(regions));
    assert_eq!(k.stats().regions_recovered, 1, "only the dirty region was copied");
    assert!(legs.lock().identical());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_in_another_socket_is_served_over_the_unix_transport() {
    use node::transport::UnixTransport;
    let disk = Disk::new();
    let (log, db) = LogStore::with_database(disk.db.clone(), FlushMode::Inline).unwrap();
    let (tx, applied) = tokio::sync::mpsc::unbounded_channel();
    let sm = StateMachine::open(db).unwrap().with_effects(tx);
    let state = sm.reader();
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    };
    let raft =
        Raft::new(N1, Arc::new(config.validate().unwrap()), disk.net.factory(N1), log.clone(), sm).await.unwrap();
    disk.net.register(N1, raft.clone(), state.clone());
    let _ = raft.initialize(BTreeMap::from([(N1, openraft::BasicNode::new("mem:1"))])).await;
    let replica = Arc::new(Replica::new(N1, raft, state, disk.net.link(N1)).with_log(log));
    let dir = tempfile::TempDir::new().unwrap();
    let daemon_sock = dir.path().join("dmlogd.sock");
    let transport = Arc::new(UnixTransport::bind(&daemon_sock).unwrap());
    let fence = Arc::new(TestFence { calls: Arc::default(), outcome: FenceOutcome::Resetting });
    let hc = HostConfig {
        incarnation: 1,
        run: node::host::new_run(),
        live: live(true),
        clock_start: Instant::now(),
        disk_handover: Duration::ZERO,
        disk_delay: Duration::ZERO,
        clear_after: node::router::CLEAR_AFTER,
    };
    let host = Host::new(replica, transport, applied, OwnMarksStore::in_memory(1), fence, hc, Arc::default());
    let server = tokio::spawn(host.run(std::future::pending()));
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
            kernel_sock.send_to(&dg, &daemon_sock).await.unwrap();
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

/// A request that arrives while its table's lane is busy waits its turn,
/// even one the receive task could answer at once by itself (a CLEAR, an
/// empty FLUSH): one table's requests are answered in the order they came
/// (I4). Shown to fail when the receive task answers without looking
/// at the lane's queue: the CLEAR and the FLUSH overtake the MARK.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_tables_requests_are_answered_in_order_even_those_answered_without_a_round() {
    let disk = Disk::new();
    let (table, _) = mirror("LVM-order", 16);
    let uuid = table.uuid.clone();
    let d = by_hand(&disk, &uuid, &table.ctr_args()).await;
    let send = |seq, request| send(&d, &uuid, seq, request);
    assert_eq!(answered(&d), vec![(1, 0), (2, 0)]);
    // Region 3 was never marked: its MARK takes a Raft round, and the CLEAR
    // and the FLUSH sent right behind it wait for it.
    let r3 = vec![wire::Region(3)];
    send(10, wire::Request::MarkRegion(r3.clone()));
    send(11, wire::Request::ClearRegion(r3.clone()));
    send(12, wire::Request::Flush { marks: Vec::new() });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Region 3 is held now: the same again, all answered without a round.
    send(20, wire::Request::MarkRegion(r3.clone()));
    send(21, wire::Request::Flush { marks: Vec::new() });
    send(22, wire::Request::ClearRegion(r3));
    send(23, wire::Request::Flush { marks: Vec::new() });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seqs = [1, 2, 10, 11, 12, 20, 21, 22, 23];
    assert_eq!(answered(&d), seqs.iter().map(|&s| (s, 0)).collect::<Vec<_>>());
}

/// A sequential writer finds its next regions marked before it gets there:
/// its second MARK marks the next 16 regions with it, and once fewer than
/// 16 are left in front of it, its lane marks the rest of the next 32 in
/// the background; the writer stops, and every region ends clean. Shown
/// to fail with that background marking switched off (`no-prefetch`,
/// with the `fault-injection` feature: only regions 0-17 marked).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_sequential_writers_next_regions_are_marked_before_it_reaches_them() {
    let disk = Disk::new();
    let uuid = Uuid::new("LVM-sequential").unwrap();
    let table = Table {
        uuid: uuid.clone(),
        target_sectors: 64 * 8,
        log_args: "clustered-core 8 nosync".into(),
        integrated_flush: false,
    };
    let d = by_hand(&disk, &uuid, &table.ctr_args()).await;
    let send = |seq, request| send(&d, &uuid, seq, request);
    for r in 0..=10 {
        send(10 + r, wire::Request::MarkRegion(vec![wire::Region(u64::from(r))]));
        if r == 10 {
            // It clears what it wrote and stops, before the background
            // marks are in: nothing more comes from it.
            send(30, wire::Request::ClearRegion((0..=10).map(wire::Region).collect()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let marked: Vec<u64> =
        d.replica.state.read(|m| m.log(&uuid).map(|l| l.marks().keys().map(|r| r.0).collect()).unwrap_or_default());
    assert_eq!(lock(&d.replies).len(), 14, "every request answered");
    // 0 and 1 by the kernel, 2-17 with 1, 18-34 in the background at 2
    // (15 held in front of it: its window of 32, 3-34, less the held
    // 3-17); the writer stops at 10 with 24 held in front of it.
    assert_eq!(marked, (0..=34).collect::<Vec<_>>());
    // Every region, those marked ahead included, is clean once idle for
    // `clear_after`.
    tokio::time::sleep(node::router::CLEAR_AFTER * 3).await;
    let marked = d.replica.state.read(|m| m.log(&uuid).map(|l| l.marks().len()).unwrap_or_default());
    assert_eq!(marked, 0);
}
