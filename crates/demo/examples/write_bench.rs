//! What a write costs through the daemon's own pipeline, against the floor
//! of this machine measured in the same run.
//!
//! * Floor: a 4 KiB append + `fdatasync` on a plain file, plus one loopback
//!   gRPC round trip (a peer call addressed to another id, refused): the
//!   least a durable, replicated mark can cost.
//! * Three hosts in this process, each the daemon's pipeline
//!   (`node::host::Host`) over a real Raft node (redb files, gRPC on
//!   loopback), each with a simulated kernel sending the kernel's real
//!   requests per write (IN_SYNC, MARK, FLUSH, later CLEAR and FLUSH)
//!   through the in-memory transport. Writes one at a time, each waited
//!   for: to the same region again, to a new region each time (never next
//!   to the last), and to the next region each time (a sequential writer,
//!   marked ahead), from a kernel on the leader and from one on a follower;
//!   p50/p99 and their ratio to the floor.
//! * One locally answered request (an empty FLUSH) through the Unix
//!   transport, to a one-node daemon.
//! * 64 mirrors at once over the three hosts: aggregate kernel requests
//!   answered per second.
//! * A resync: a mirror whose legs start different, on one host, from its
//!   creation until its kernel counts every region in sync (copies take no
//!   time here, so this is what the log costs per region).
//!
//! Run: `cargo run --release -p dmlogd-demo --example write_bench [dir] [seconds]`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dmlogd_demo::harness::{percentile, sync_floor};
use kernel_sim::{Config, Kernel, Legs, MirrorId, SharedLegs, Table};
use node::host::{Fence, FenceOutcome, Host, HostConfig};
use node::live::LiveConfig;
use node::liveness::Timing;
use node::own_marks::OwnMarksStore;
use node::transport::{MemKernel, MemKernelEnd, MemTransport};
use regions::NodeId;
use replication::Replica;
use replication::grpc::GrpcLeaderLink;
use replication::node::{GrpcNode, RaftSettings};
use replication::pb::peer::Envelope;
use replication::pb::peer::peer_client::PeerClient;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use wire::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, samples: &[Duration]) -> (Duration, Duration) {
    let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
    println!("{name:<56} p50 {:>8.3} ms  p99 {:>8.3} ms  ({} ops)", ms(p50), ms(p99), samples.len());
    (p50, p99)
}

fn ratio(p50: Duration, p99: Duration, floor: (Duration, Duration)) {
    println!(
        "{:<56} p50 {:>8.2}x     p99 {:>8.2}x",
        "  ratio to the floor",
        p50.as_secs_f64() / floor.0.as_secs_f64(),
        p99.as_secs_f64() / floor.1.as_secs_f64()
    );
}

/// A simulated kernel behind a host's in-memory transport.
#[derive(Clone)]
struct Sim {
    kernel: Arc<Mutex<Kernel>>,
    /// Wakes the pump (a reply or a write arrived).
    wake: Arc<Notify>,
    /// Wakes the writers (the pump ran).
    changed: Arc<Notify>,
}

impl MemKernel for Sim {
    fn deliver(&self, reply: &[u8]) {
        self.kernel.lock().unwrap_or_else(|e| e.into_inner()).deliver(reply);
        self.wake.notify_one();
    }
    fn kick(&self, _uuid: &Uuid) -> Result<String, String> {
        Ok("no kicks in the benchmark".into())
    }
    fn wake(&self, _uuid: &Uuid) -> Result<String, String> {
        Ok("no wakes in the benchmark".into())
    }
}

/// A fence that does nothing (nothing fences in a benchmark).
struct NoFence;

impl Fence for NoFence {
    fn fence(&self, _logs: &[Uuid]) -> FenceOutcome {
        FenceOutcome::Stopped { undo: Vec::new() }
    }
    fn after_rejoin(&self, _undo: Vec<String>) {}
}

/// One host: its replica and its kernel.
struct Node {
    replica: Arc<Replica<GrpcLeaderLink>>,
    sim: Sim,
}

/// Moves the kernel's clock and hands its datagrams to the host, woken by
/// every reply.
async fn pump(sim: Sim, end: MemKernelEnd, start: Instant) {
    loop {
        {
            let mut k = sim.kernel.lock().unwrap_or_else(|e| e.into_inner());
            k.advance_to(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
            for d in k.take_requests() {
                if !end.send(d.clone()) {
                    k.unheard(&d);
                }
            }
        }
        sim.changed.notify_waiters();
        let _ = tokio::time::timeout(Duration::from_millis(1), sim.wake.notified()).await;
    }
}

/// A write of `region` by mirror `m`, waited for.
async fn write(sim: &Sim, m: MirrorId, region: u64) -> Duration {
    let t = Instant::now();
    let before = {
        let mut k = sim.kernel.lock().unwrap_or_else(|e| e.into_inner());
        let done = k.mirror(m).map_or(0, |v| v.writes_done);
        k.write(m, region);
        done
    };
    loop {
        let changed = sim.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        sim.wake.notify_one();
        let done = sim.kernel.lock().unwrap_or_else(|e| e.into_inner()).mirror(m).map_or(0, |v| v.writes_done);
        if done > before {
            return t.elapsed();
        }
        let _ = tokio::time::timeout(Duration::from_millis(1), changed).await;
    }
}

/// A mirror of `regions` regions with these log arguments.
fn table(name: &str, regions: u64, log_args: &str) -> Result<Table, Error> {
    Ok(Table {
        uuid: Uuid::new(name).ok_or("uuid")?,
        target_sectors: regions * 8,
        log_args: log_args.into(),
        integrated_flush: false,
    })
}

/// Log arguments of a mirror in sync from the start.
const IN_SYNC: &str = "clustered-core 8 nosync";

/// How long a new mirror of `regions` regions whose legs start different
/// takes on `node` until its kernel counts every region in sync.
async fn resync(node: &Node, name: &str, regions: u64) -> Result<Duration, Error> {
    let t = table(name, regions, "clustered-core 8")?;
    let started = Instant::now();
    let m =
        node.sim.kernel.lock().unwrap_or_else(|e| e.into_inner()).create(t, SharedLegs::new(Legs::new(regions, true)));
    let until = started + Duration::from_secs(300);
    loop {
        node.sim.wake.notify_one();
        if node.sim.kernel.lock().unwrap_or_else(|e| e.into_inner()).mirror(m).is_some_and(|v| v.in_sync) {
            return Ok(started.elapsed());
        }
        if Instant::now() > until {
            return Err("a resync did not finish in 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Creates a mirror on `node`'s kernel and waits until it is active.
async fn create(node: &Node, t: Table, regions: u64) -> Result<MirrorId, Error> {
    let m =
        node.sim.kernel.lock().unwrap_or_else(|e| e.into_inner()).create(t, SharedLegs::new(Legs::new(regions, false)));
    let until = Instant::now() + Duration::from_secs(30);
    while node.sim.kernel.lock().unwrap_or_else(|e| e.into_inner()).mirror(m).map(|v| v.life)
        != Some(kernel_sim::Life::Active)
    {
        if Instant::now() > until {
            return Err("a mirror did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(m)
}

fn host_config(id: u64) -> HostConfig {
    let live = LiveConfig { timing: Timing::default(), rate: 1.0, seed: id, prevote: true, fence: true };
    HostConfig {
        incarnation: 1,
        // One run per node in this process; run 0 joins in session 0, which
        // the leader's measured renewals name.
        run: 0,
        live,
        clock_start: tokio::time::Instant::now(),
        disk_handover: Duration::from_secs(1),
        disk_delay: Duration::ZERO,
        clear_after: node::router::CLEAR_AFTER,
    }
}

async fn three_hosts(dir: &std::path::Path, start: Instant) -> Result<BTreeMap<u64, Node>, Error> {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        members.insert(NodeId(id), l.local_addr()?.to_string());
        listeners.push((id, l));
    }
    let mut nodes = BTreeMap::new();
    for (id, l) in listeners {
        let path = dir.join(format!("node{id}.redb"));
        let grpc = GrpcNode::start(NodeId(id), &path, l, RaftSettings::default(), Some(&members)).await?;
        let (replica, applied, server) = grpc.split();
        std::mem::forget(server);
        let sim = Sim {
            kernel: Arc::new(Mutex::new(Kernel::new(
                Config { write_ms: 0, copy_ms: 0, create_gap_ms: 0 },
                0,
                id << 40,
            ))),
            wake: Arc::new(Notify::new()),
            changed: Arc::new(Notify::new()),
        };
        let (transport, end) = MemTransport::new(sim.clone());
        let host = Host::new(
            replica.clone(),
            Arc::new(transport),
            applied,
            OwnMarksStore::in_memory(1),
            Arc::new(NoFence),
            host_config(id),
            Arc::default(),
        );
        tokio::spawn(host.run(std::future::pending()));
        tokio::spawn(pump(sim.clone(), end, start));
        nodes.insert(id, Node { replica, sim });
    }
    for (id, n) in &nodes {
        let until = Instant::now() + Duration::from_secs(30);
        while !n.replica.state.read(|m| m.members().contains_key(&NodeId(*id))) {
            if Instant::now() > until {
                return Err(format!("node {id} did not join").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(nodes)
}

/// The floor: a synced 4 KiB append and a loopback gRPC round trip.
async fn floor(dir: &std::path::Path, peer_addr: &str, n: usize) -> Result<(Duration, Duration), Error> {
    let samples = sync_floor(&dir.join("floor"), n)?;
    let (sync50, sync99) = report("floor: 4 KiB append + fdatasync", &samples);
    let mut peer = PeerClient::connect(format!("http://{peer_addr}")).await?;
    let mut samples = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let refused =
            peer.pre_vote(Envelope { from: 0, to: u64::MAX, payload: Vec::new(), cluster: "dmlogd".into() }).await;
        samples.push(t.elapsed());
        if refused.is_ok() {
            return Err("a call to another id was answered".into());
        }
    }
    let (rtt50, rtt99) = report("floor: loopback gRPC round trip", &samples);
    let f = (sync50 + rtt50, sync99 + rtt99);
    println!("{:<56} p50 {:>8.3} ms  p99 {:>8.3} ms", "floor: sync + round trip", ms(f.0), ms(f.1));
    Ok(f)
}

/// An empty FLUSH through the Unix transport to a one-node daemon.
async fn unix_local(dir: &std::path::Path, n: usize) -> Result<(), Error> {
    use node::transport::UnixTransport;
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let members = BTreeMap::from([(NodeId(1), l.local_addr()?.to_string())]);
    let grpc = GrpcNode::start(NodeId(1), &dir.join("single.redb"), l, RaftSettings::default(), Some(&members)).await?;
    let (replica, applied, server) = grpc.split();
    std::mem::forget(server);
    let sock = dir.join("dmlogd.sock");
    let transport = Arc::new(UnixTransport::bind(&sock)?);
    let host = Host::new(
        replica,
        transport,
        applied,
        OwnMarksStore::in_memory(1),
        Arc::new(NoFence),
        host_config(1),
        Arc::default(),
    );
    tokio::spawn(host.run(std::future::pending()));
    let k = tokio::net::UnixDatagram::bind(dir.join("kernel.sock"))?;
    let uuid = Uuid::new("bench-unix").ok_or("uuid")?;
    let mut seq = 0u32;
    let mut buf = vec![0u8; 16 * 1024];
    let mut ask = async |req: wire::Request| -> Result<Duration, Error> {
        seq += 1;
        let bytes = wire::encode_request(wire::Luid(7), &uuid, wire::Seq(seq), &req)?;
        let t = Instant::now();
        loop {
            k.send_to(&bytes, &sock).await?;
            match tokio::time::timeout(Duration::from_secs(5), k.recv(&mut buf)).await {
                Ok(Ok(_)) => return Ok(t.elapsed()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    ask(wire::Request::Ctr { args: "8192 clustered-core 8 nosync".into(), reconnect: false }).await?;
    ask(wire::Request::Resume).await?;
    let mut samples = Vec::new();
    for _ in 0..n {
        samples.push(ask(wire::Request::Flush { marks: Vec::new() }).await?);
    }
    report("a locally answered request (empty FLUSH), Unix transport", &samples);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = tempfile::TempDir::new_in(base)?;
    let n = 500;
    let start = Instant::now();
    let nodes = three_hosts(dir.path(), start).await?;
    let leader = loop {
        if let Some(l) = nodes[&1].replica.leader() {
            break l.0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let follower = if leader == 1 { 2 } else { 1 };
    let peer_addr = nodes[&leader].replica.members().into_iter().find(|m| m.id.0 == leader).map(|m| m.addr);
    let f = floor(dir.path(), &peer_addr.ok_or("no leader address")?, n).await?;

    // The parts: one committed entry and one read (under the leader lease,
    // renewed in the background), on the leader.
    let r = &nodes[&leader].replica;
    let mut commits = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..200 {
        let p = replication::Proposal {
            commands: vec![regions::Command::Renew { node: NodeId(leader), incarnation: 1, session: 0, applied: 0 }],
        };
        let t = Instant::now();
        r.propose(p, tokio::time::Instant::now() + Duration::from_secs(10)).await?;
        commits.push(t.elapsed());
        let q = replication::ReadRequest {
            uuid: Uuid::new("nothing").ok_or("uuid")?,
            instance: regions::Instance { node: NodeId(leader), luid: wire::Luid(1) },
            query: regions::Query::GetSyncCount,
        };
        let t = Instant::now();
        let _ = r.read(q, tokio::time::Instant::now() + Duration::from_secs(10)).await?;
        reads.push(t.elapsed());
    }
    report("  one committed entry on the leader", &commits);
    report("  one read on the leader (under its lease)", &reads);

    let regions = 8192;
    for (name, id) in [("leader", leader), ("follower", follower)] {
        let node = &nodes[&id];
        let m = create(node, table(&format!("bench-{name}"), regions, IN_SYNC)?, regions).await?;
        // Warm up: the first write of each kind pays for connections.
        write(&node.sim, m, 5).await;
        let same: Vec<Duration> = {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(write(&node.sim, m, 5).await);
            }
            v
        };
        let (p50, p99) = report(&format!("write to the same region again, kernel on the {name}"), &same);
        ratio(p50, p99, f);
        // Never next to the last one, so nothing is marked ahead: each
        // write costs one commit.
        let fresh: Vec<Duration> = {
            let mut v = Vec::new();
            for i in 0..n as u64 {
                v.push(write(&node.sim, m, 100 + (i * 37) % 4000).await);
            }
            v
        };
        let (p50, p99) = report(&format!("write to a new region each time, kernel on the {name}"), &fresh);
        ratio(p50, p99, f);
        // A sequential writer moving to the next region each write: one
        // commit per MARK_AHEAD regions.
        let next: Vec<Duration> = {
            let mut v = Vec::new();
            for i in 0..n as u64 {
                v.push(write(&node.sim, m, 4100 + i).await);
            }
            v
        };
        let (p50, p99) = report(&format!("write to the next region each time, kernel on the {name}"), &next);
        ratio(p50, p99, f);
    }

    unix_local(dir.path(), n).await?;

    for (name, id) in [("leader", leader), ("follower", follower)] {
        let regions = 512;
        let took = resync(&nodes[&id], &format!("bench-resync-{name}"), regions).await?;
        println!(
            "{:<56} {:>8.3} s       {:>8.3} ms per region",
            format!("resync of {regions} regions, kernel on the {name}"),
            took.as_secs_f64(),
            ms(took) / regions as f64,
        );
    }

    // 64 mirrors at once, spread over the three hosts, each writing its
    // own working set of 16 regions.
    let mirrors = 64u64;
    let mut writers = Vec::new();
    for i in 0..mirrors {
        let node = &nodes[&(1 + i % 3)];
        let m = create(node, table(&format!("bench-par-{i}"), 1024, IN_SYNC)?, 1024).await?;
        writers.push((node.sim.clone(), m));
    }
    let requests = |nodes: &BTreeMap<u64, Node>| -> u64 {
        nodes.values().map(|n| n.sim.kernel.lock().unwrap_or_else(|e| e.into_inner()).stats().requests).sum()
    };
    let before = requests(&nodes);
    let t = Instant::now();
    let stop = t + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, (sim, m)) in writers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut k = i as u64;
            let mut writes = 0u64;
            while Instant::now() < stop {
                write(&sim, m, k % 16).await;
                k += 7;
                writes += 1;
            }
            writes
        }));
    }
    let mut writes = 0;
    for task in tasks {
        writes += task.await?;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let answered = requests(&nodes) - before;
    println!(
        "{:<56} {:>9.0} requests/s ({answered} requests, {writes} writes in {elapsed:.1} s)",
        format!("{mirrors} mirrors at once, kernels on all 3 hosts"),
        answered as f64 / elapsed,
    );
    std::process::exit(0);
}
