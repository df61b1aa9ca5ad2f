//! The cost of a replicated dirty-region log, measured against the floor of
//! the same machine in the same run.
//!
//! * Floor: a 4 KiB append + `fdatasync` on a plain file, and one loopback
//!   gRPC round trip (a peer call addressed to another id, refused).
//! * A 3-node cluster on loopback with real redb stores and real gRPC:
//!   sequential FLUSH requests carrying one mark (the integrated-flush
//!   path), from a kernel on the leader and from a kernel on a follower
//!   (forwarded), p50/p99 and their ratio to the floor (one sync + one round
//!   trip is the least a replicated, durable FLUSH can cost).
//! * 64 logs at once, spread over the three nodes, each a kernel doing
//!   FLUSH-with-mark then CLEAR in a loop: aggregate requests/s.
//!
//! Run: `cargo run --release -p dmlogd-demo --example cluster_bench [dir] [seconds]`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dmlogd_demo::harness::percentile;
use regions::{Command, Instance, KernelOp, NodeId as Rn};
use replication::node::{GrpcNode, RaftSettings};
use replication::pb::peer::Envelope;
use replication::pb::peer::peer_client::PeerClient;
use replication::{Proposal, Replica};
use tokio::net::TcpListener;
use tokio::time::Instant;
use wire::{Luid, Region, Uuid};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, samples: &mut [Duration]) -> (Duration, Duration) {
    let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
    println!("{name:<52} p50 {:>7.3} ms  p99 {:>7.3} ms  ({} ops)", ms(p50), ms(p99), samples.len());
    (p50, p99)
}

fn kernel(uuid: Uuid, node: u64, luid: u64, op: KernelOp) -> Command {
    Command::Kernel { uuid, instance: Instance { node: Rn(node), luid: Luid(luid) }, op }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// Brings up log `uuid` for a kernel on `node` (CTR + RESUME).
async fn bring_up<L: replication::LeaderLink>(r: &Replica<L>, uuid: Uuid, node: u64, luid: u64) -> Result<(), Error> {
    let p = Proposal {
        commands: vec![
            kernel(uuid.clone(), node, luid, KernelOp::Ctr { args: "262144 clustered-core 1024 nosync".into() }),
            kernel(uuid, node, luid, KernelOp::Resume { disk: None }),
        ],
    };
    let out = r.propose(p, far()).await?;
    match out.0.iter().find_map(|o| o.answer.as_ref().err()) {
        Some(e) => Err(format!("bring-up refused: {e:?}").into()),
        None => Ok(()),
    }
}

/// One kernel command of table (`node`, `luid`) of log `uuid`, committed.
async fn one<L: replication::LeaderLink>(
    r: &Replica<L>,
    uuid: Uuid,
    node: u64,
    luid: u64,
    op: KernelOp,
) -> Result<(), Error> {
    r.propose(Proposal { commands: vec![kernel(uuid, node, luid, op)] }, far()).await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = tempfile::TempDir::new_in(base)?;
    let n = 1000;

    // Floor 1: a synced 4 KiB append.
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("floor"))?;
    let block = vec![0x5au8; 4096];
    let mut samples = Vec::new();
    for _ in 0..n {
        let t = std::time::Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed());
    }
    let (sync50, sync99) = report("floor: 4 KiB append + fdatasync", &mut samples);

    // The cluster.
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        members.insert(Rn(id), l.local_addr()?.to_string());
        listeners.push((id, l));
    }
    let mut nodes = BTreeMap::new();
    for (id, l) in listeners {
        let path = dir.path().join(format!("node{id}.redb"));
        nodes.insert(id, GrpcNode::start(Rn(id), &path, l, RaftSettings::default(), Some(&members)).await?);
    }
    let leader = loop {
        if let Some(l) = nodes[&1].replica.leader() {
            break l.0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let follower = if leader == 1 { 2 } else { 1 };
    for id in 1..=3u64 {
        let p = Proposal { commands: vec![Command::NodeJoined { node: Rn(id), incarnation: 1 }] };
        nodes[&id].replica.propose(p, far()).await?;
    }

    // Floor 2: a loopback gRPC round trip.
    // A call addressed to another id is refused before it touches any
    // state: a pure round trip through tonic.
    let mut peer = PeerClient::connect(format!("http://{}", nodes[&leader].addr)).await?;
    let mut samples = Vec::new();
    for _ in 0..n {
        let t = std::time::Instant::now();
        let refused = peer
            .pre_vote(Envelope {
                from: 0,
                to: u64::MAX,
                payload: Vec::new(),
                cluster: replication::node::DEFAULT_CLUSTER.into(),
            })
            .await;
        samples.push(t.elapsed());
        if refused.is_ok() {
            return Err("a call to another id was answered".into());
        }
    }
    let (rtt50, rtt99) = report("floor: loopback gRPC round trip", &mut samples);
    let floor50 = sync50 + rtt50;
    let floor99 = sync99 + rtt99;
    println!("{:<52} p50 {:>7.3} ms  p99 {:>7.3} ms", "floor: sync + round trip", ms(floor50), ms(floor99));

    // Sequential FLUSH with one mark, from the leader and from a follower.
    for (name, node) in
        [("FLUSH + 1 mark, kernel on the leader", leader), ("FLUSH + 1 mark, kernel on a follower", follower)]
    {
        let uuid = Uuid::new(format!("bench-seq-{node}")).ok_or("uuid")?;
        let r = &nodes[&node].replica;
        bring_up(r, uuid.clone(), node, 1).await?;
        let mut samples = Vec::new();
        for i in 0..n as u64 {
            let t = std::time::Instant::now();
            one(r, uuid.clone(), node, 1, KernelOp::Flush { marks: vec![Region(i % 1024)] }).await?;
            samples.push(t.elapsed());
        }
        let (p50, p99) = report(name, &mut samples);
        println!(
            "{:<52} p50 {:>7.2}x     p99 {:>7.2}x",
            "  ratio to the floor",
            p50.as_secs_f64() / floor50.as_secs_f64(),
            p99.as_secs_f64() / floor99.as_secs_f64()
        );
    }

    // 64 logs at once.
    let logs = 64u64;
    let done = Arc::new(AtomicU64::new(0));
    let mut uuids = Vec::new();
    for i in 0..logs {
        let node = 1 + i % 3;
        let uuid = Uuid::new(format!("bench-par-{i}")).ok_or("uuid")?;
        bring_up(&nodes[&node].replica, uuid.clone(), node, 100 + i).await?;
        uuids.push(uuid);
    }
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, uuid) in (0..logs).zip(uuids) {
        let node = 1 + i % 3;
        let replica = nodes[&node].replica.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            while Instant::now() < stop {
                let region = k % 1024;
                let flush = KernelOp::Flush { marks: vec![Region(region)] };
                one(&replica, uuid.clone(), node, 100 + i, flush).await?;
                one(&replica, uuid.clone(), node, 100 + i, KernelOp::Clear(vec![Region(region)])).await?;
                done.fetch_add(2, Ordering::Relaxed);
                k += 1;
            }
            Ok::<(), Error>(())
        }));
    }
    let started = std::time::Instant::now();
    for t in tasks {
        t.await??;
    }
    let total = done.load(Ordering::Relaxed);
    println!(
        "{:<52} {:>9.0} requests/s ({} requests in {:.1} s; half FLUSH+mark, half CLEAR)",
        format!("{logs} logs at once, kernels on all 3 nodes"),
        total as f64 / started.elapsed().as_secs_f64(),
        total,
        started.elapsed().as_secs_f64()
    );
    for n in nodes.into_values() {
        n.shutdown().await;
    }
    Ok(())
}
