//! The redb store against openraft's storage conformance suite, and
//! durability across a close and reopen of the same file.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::Ordering;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use replication::types::{LogId, StorageError, Vote};
use replication::{Entry, LogStore, Proposal, StateMachine, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().unwrap();
        let (log, db) = LogStore::open(&dir.path().join("raft.redb")).unwrap();
        let sm = StateMachine::open(db).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn the_redb_store_passes_the_openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1.into()), index)
}

fn entry(term: u64, index: u64, commands: Vec<regions::Command>) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Proposal { commands }) }
}

/// Appends and waits until the store reports the entries durable.
async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    log.blocking_append(entries).await.unwrap();
}

#[tokio::test]
async fn log_vote_and_snapshot_survive_a_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("raft.redb");
    let join = regions::Command::NodeJoined { node: regions::NodeId(1), incarnation: 7, session: 0 };
    {
        let (mut log, db) = LogStore::open(&path).unwrap();
        let mut sm = StateMachine::open(db).unwrap();
        log.save_vote(&Vote::new(3, 1.into())).await.unwrap();
        append(&mut log, (1..=10).map(|i| entry(1, i, vec![join.clone()])).collect()).await;
        log.truncate(log_id(1, 9)).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        log.save_committed(Some(log_id(1, 8))).await.unwrap();
        let applied = sm.apply(vec![entry(1, 1, vec![join.clone()])]).await.unwrap();
        assert_eq!(applied.len(), 1);
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        let stats = log.flush_stats();
        assert!(stats.commits.load(Ordering::Relaxed) >= 1);
        // Closing the store waits for the flusher to write what is queued.
    }
    let (mut log, db) = LogStore::open(&path).unwrap();
    let mut sm = StateMachine::open(db).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1.into())));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 8)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 8)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (3..=8).collect::<Vec<_>>());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1)), "the state machine restarts from its snapshot");
    // Reads wait until the whole stored log is applied, whatever the
    // stored commit index says (a restored leader's may lag).
    assert_eq!(sm.reader().read_floor(), (3, 8));
    assert!(sm.reader().read(|m| m.members().contains_key(&regions::NodeId(1))));
}

#[tokio::test]
async fn a_refused_request_is_an_outcome_not_an_error() {
    let dir = TempDir::new().unwrap();
    let (_log, db) = LogStore::open(&dir.path().join("raft.redb")).unwrap();
    let mut sm = StateMachine::open(db).unwrap();
    let bad = regions::Command::Kernel {
        uuid: wire::Uuid::new("x").unwrap(),
        instance: regions::Instance { node: regions::NodeId(9), luid: wire::Luid(1) },
        session: 0,
        op: regions::KernelOp::Dtr,
    };
    let out = sm.apply(vec![entry(1, 1, vec![bad])]).await.unwrap();
    assert_eq!(out[0].0[0].answer, Err(wire::Errno::ENOENT));
    assert!(out[0].0[0].refusal.as_deref().unwrap().contains("not a member"));
}
