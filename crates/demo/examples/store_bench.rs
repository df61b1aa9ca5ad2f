//! Measures the durable-write floor on this machine and what the Raft store
//! costs on top of it:
//!
//! 1. a 4 KiB append + `fdatasync` on a plain file (the floor);
//! 2. one redb commit (`Durability::Immediate`) of one 256-byte record;
//! 3. the log store's append path, one entry at a time, waiting for each to
//!    be reported durable (no group commit possible);
//! 4. the log store with 64 appends queued at once (group commit).
//!
//! Run: `cargo run --release -p dmlogd-demo --example store_bench [dir]`.

use std::time::{Duration, Instant};

use dmlogd_demo::harness::{percentile, sync_floor};
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload};
use replication::types::LogId;
use replication::{Entry, LogStore, Proposal};

fn report(name: &str, samples: Vec<Duration>) {
    let n = samples.len();
    let total: Duration = samples.iter().sum();
    println!(
        "{name:<44} p50 {:>7.3} ms  p99 {:>7.3} ms  ({n} ops, {:.0} ops/s)",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        n as f64 / total.as_secs_f64()
    );
}

fn entry(index: u64) -> Entry {
    let cmd = regions::Command::NodeJoined { node: regions::NodeId(index % 7), incarnation: index, session: 0 };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, regions::NodeId(1)), index),
        payload: EntryPayload::Normal(Proposal { commands: vec![cmd] }),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::TempDir::new_in(base)?;
    let n = 300;

    report("floor: 4 KiB append + fdatasync", sync_floor(&dir.path().join("floor"), n)?);

    let db = redb::Database::create(dir.path().join("plain.redb"))?;
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let record = vec![7u8; 256];
    let mut samples = Vec::new();
    for i in 0..n as u64 {
        let t = Instant::now();
        let txn = db.begin_write()?;
        txn.open_table(table)?.insert(i, record.as_slice())?;
        txn.commit()?;
        samples.push(t.elapsed());
    }
    report("redb: one 256-byte record per commit", samples);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (mut log, _db) = LogStore::open(&dir.path().join("raft.redb")).map_err(|e| e.to_string())?;
        let mut samples = Vec::new();
        for i in 1..=n as u64 {
            let t = Instant::now();
            log.blocking_append(vec![entry(i)]).await.map_err(|e| e.to_string())?;
            samples.push(t.elapsed());
        }
        report("log store: one entry, wait for durability", samples);

        let stats = log.flush_stats();
        let before = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
        let t = Instant::now();
        let mut waits = Vec::new();
        for i in (n as u64 + 1)..=(n as u64 + 64 * 20) {
            let mut l = log.clone();
            waits.push(tokio::spawn(async move { l.blocking_append(vec![entry(i)]).await }));
            if waits.len() == 64 {
                for w in waits.drain(..) {
                    w.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
                }
            }
        }
        let elapsed = t.elapsed();
        let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed) - before;
        println!(
            "{:<44} {:.0} entries/s, {} entries in {} syncs",
            "log store: 64 appends in flight (group commit)",
            1280.0 / elapsed.as_secs_f64(),
            1280,
            commits
        );
        Ok::<(), String>(())
    })?;
    Ok(())
}
