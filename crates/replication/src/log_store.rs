//! The Raft log, vote and commit index, durable in redb with group commit.
//!
//! Reads are served from memory: the log is bounded by the snapshot policy
//! (entries before the last snapshot are purged), and keeping it in memory
//! lets `append` make entries readable at once, as openraft requires,
//! before they are durable.
//!
//! Writes go to one flusher thread through one FIFO queue, so they reach the
//! disk in the order they were made (openraft requires votes and appends to
//! take effect in submission order). The flusher takes the first queued
//! write, drains everything queued behind it, applies all of it in one
//! redb write transaction and commits once (`Durability::Immediate`: redb
//! syncs the file before `commit` returns). Only then are the appends
//! reported durable (`LogFlushed::log_io_completed`) and the votes,
//! truncations and purges acknowledged. Many appends share one sync: that
//! is the group commit.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote, any, decode, encode};

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

pub(crate) const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Counters of the flusher, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// redb commits (each one sync).
    pub commits: AtomicU64,
    /// Writes carried by those commits.
    pub writes: AtomicU64,
}

#[derive(Debug, Default)]
struct Mem {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

type Ack = oneshot::Sender<Result<(), io::Error>>;

/// The latest commit index not yet written. It needs no sync of its own: a
/// commit index that lags is safe (openraft re-learns it from the leader),
/// so it rides along with the next batch.
type Pending = Arc<Mutex<Option<Vec<u8>>>>;

enum Write {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    Vote(Vec<u8>, Ack),
    Truncate(u64, Ack),
    Purge(u64, Vec<u8>, Ack),
}

/// The queue in front of the flusher.
enum Queue {
    Thread(mpsc::Sender<Write>),
    Task(tokio::sync::mpsc::UnboundedSender<Write>),
}

struct Inner {
    mem: Mutex<Mem>,
    committed: Pending,
    queue: Mutex<Option<Queue>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// The flusher task of [`FlushMode::Task`].
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stats: Arc<FlushStats>,
    /// Set in [`FlushMode::Inline`]: writes are done on the caller's task.
    inline: Option<Arc<Database>>,
}

/// How writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMode {
    /// A flusher thread with group commit (production).
    Thread,
    /// On the calling task, one transaction per write: no thread, so a
    /// single-threaded simulation with paused time stays deterministic.
    Inline,
    /// A flusher task on the current tokio runtime with group commit,
    /// where every sync takes `sync_latency` (of tokio's clock). Dropping
    /// the store loses every write not yet synced, as a power failure
    /// would: the simulation's crashes use it.
    Task {
        /// Simulated time one sync takes.
        sync_latency: std::time::Duration,
    },
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A flusher task is a simulated disk: what it has not synced is lost.
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        // Closing the queue ends the flusher thread after it wrote what is
        // queued.
        drop(lock(&self.queue).take());
        if let Some(h) = lock(&self.flusher).take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The log store. Clones share one log (a clone is the log reader that
/// openraft hands to its replication tasks).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// Opening the store failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// redb could not open or read the file.
    #[error("raft store: {0}")]
    Db(String),
    /// A stored record does not decode.
    #[error("raft store record {0}: {1}")]
    Record(String, crate::types::DecodeError),
}

fn db_err(e: impl std::fmt::Display) -> OpenError {
    OpenError::Db(e.to_string())
}

impl LogStore {
    /// Opens (or creates) the database at `path` and loads the log. The
    /// returned database is shared with the state machine's snapshot store.
    pub fn open(path: &Path) -> Result<(LogStore, Arc<Database>), OpenError> {
        let db = Arc::new(Database::create(path).map_err(db_err)?);
        LogStore::with_database(db, FlushMode::Thread)
    }

    /// Opens the store on an already open database (for example redb's
    /// in-memory backend in a simulation, kept across a node's restarts).
    pub fn with_database(db: Arc<Database>, mode: FlushMode) -> Result<(LogStore, Arc<Database>), OpenError> {
        let mut mem = Mem::default();
        {
            let txn = db.begin_write().map_err(db_err)?;
            // Make sure both tables exist, so reads never see "no table".
            drop(txn.open_table(LOG).map_err(db_err)?);
            drop(txn.open_table(META).map_err(db_err)?);
            txn.commit().map_err(db_err)?;
        }
        {
            let txn = db.begin_read().map_err(db_err)?;
            let meta = txn.open_table(META).map_err(db_err)?;
            let get = |k: &str| -> Result<Option<Vec<u8>>, OpenError> {
                Ok(meta.get(k).map_err(db_err)?.map(|v| v.value().to_vec()))
            };
            let rec = |k: &str, e| OpenError::Record(k.to_owned(), e);
            if let Some(b) = get(VOTE)? {
                mem.vote = Some(decode(&b).map_err(|e| rec(VOTE, e))?);
            }
            if let Some(b) = get(COMMITTED)? {
                mem.committed = decode(&b).map_err(|e| rec(COMMITTED, e))?;
            }
            if let Some(b) = get(LAST_PURGED)? {
                mem.last_purged = decode(&b).map_err(|e| rec(LAST_PURGED, e))?;
            }
            let log = txn.open_table(LOG).map_err(db_err)?;
            for item in log.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let entry: Entry = decode(v.value()).map_err(|e| rec(&format!("log {}", k.value()), e))?;
                mem.entries.insert(k.value(), entry);
            }
        }
        let stats = Arc::new(FlushStats::default());
        let committed: Pending = Arc::default();
        let inner = match mode {
            FlushMode::Thread => {
                let (tx, rx) = mpsc::channel();
                let flusher = {
                    let db = db.clone();
                    let stats = stats.clone();
                    let committed = committed.clone();
                    std::thread::Builder::new()
                        .name("raft-log-flusher".into())
                        .spawn(move || flush_loop(&db, &rx, &stats, &committed))
                        .map_err(db_err)?
                };
                let (queue, flusher) = (Mutex::new(Some(Queue::Thread(tx))), Mutex::new(Some(flusher)));
                Inner { mem: Mutex::new(mem), committed, queue, flusher, task: Mutex::new(None), stats, inline: None }
            }
            FlushMode::Task { sync_latency } => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let task = tokio::spawn(flush_task(db.clone(), rx, stats.clone(), committed.clone(), sync_latency));
                Inner {
                    mem: Mutex::new(mem),
                    committed,
                    queue: Mutex::new(Some(Queue::Task(tx))),
                    flusher: Mutex::new(None),
                    task: Mutex::new(Some(task)),
                    stats,
                    inline: None,
                }
            }
            FlushMode::Inline => Inner {
                mem: Mutex::new(mem),
                committed,
                queue: Mutex::new(None),
                flusher: Mutex::new(None),
                task: Mutex::new(None),
                stats,
                inline: Some(db.clone()),
            },
        };
        Ok((LogStore { inner: Arc::new(inner) }, db))
    }

    /// The id of the last entry (appended, not necessarily durable yet), or
    /// of the last purged one when the log is empty.
    pub fn last_log_id(&self) -> Option<LogId> {
        let mem = self.mem();
        mem.entries.values().next_back().map(|e| e.log_id).or(mem.last_purged)
    }

    /// The flusher's counters.
    pub fn flush_stats(&self) -> Arc<FlushStats> {
        self.inner.stats.clone()
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        lock(&self.inner.mem)
    }

    fn queue(&self, w: Write) -> Result<(), StorageError> {
        if let Some(db) = &self.inner.inline {
            let batch = vec![w];
            let result = write_batch(db, &batch, &self.inner.committed);
            complete(batch, &result, &self.inner.stats);
            return Ok(());
        }
        let sent = match lock(&self.inner.queue).as_ref() {
            Some(Queue::Thread(tx)) => tx.send(w).is_ok(),
            Some(Queue::Task(tx)) => tx.send(w).is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(StorageIOError::write_logs(any("log flusher stopped")).into()) }
    }

    async fn queue_and_wait(&self, make: impl FnOnce(Ack) -> Write) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.queue(make(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageIOError::write_logs(any(e)).into()),
            Err(_) => Err(StorageIOError::write_logs(any("log flusher stopped")).into()),
        }
    }
}

fn io_err(msg: &str) -> io::Error {
    io::Error::other(msg.to_owned())
}

fn encode_err(e: postcard::Error) -> StorageError {
    StorageIOError::write_logs(any(e)).into()
}

/// The flusher: one redb transaction and one sync per batch of queued writes.
fn flush_loop(db: &Database, rx: &mpsc::Receiver<Write>, stats: &FlushStats, committed: &Pending) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(next) = rx.try_recv() {
            batch.push(next);
        }
        let result = write_batch(db, &batch, committed);
        complete(batch, &result, stats);
    }
    // The store is closing: the last commit index goes down too.
    if lock(committed).is_some() {
        let _ = write_batch(db, &[], committed);
    }
}

/// The flusher of [`FlushMode::Task`]: as [`flush_loop`], with a simulated
/// sync time during which more writes queue up.
async fn flush_task(
    db: Arc<Database>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Write>,
    stats: Arc<FlushStats>,
    committed: Pending,
    sync_latency: std::time::Duration,
) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(sync_latency).await;
        let mut batch = vec![first];
        while let Ok(next) = rx.try_recv() {
            batch.push(next);
        }
        let result = write_batch(&db, &batch, &committed);
        complete(batch, &result, &stats);
    }
}

/// Reports a committed (or failed) batch to its waiters.
fn complete(batch: Vec<Write>, result: &Result<(), String>, stats: &FlushStats) {
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
    for w in batch {
        let r = result.as_ref().map(|_| ()).map_err(|e| io_err(e));
        match w {
            Write::Append(_, done) => done.log_io_completed(r),
            Write::Vote(_, ack) | Write::Truncate(_, ack) | Write::Purge(_, _, ack) => {
                let _ = ack.send(r);
            }
        }
    }
}

fn write_batch(db: &Database, batch: &[Write], committed: &Pending) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        if let Some(bytes) = lock(committed).take() {
            meta.insert(COMMITTED, bytes.as_slice()).map_err(|e| e.to_string())?;
        }
        for w in batch {
            match w {
                Write::Append(entries, _) => {
                    for (i, bytes) in entries {
                        log.insert(*i, bytes.as_slice()).map_err(|e| e.to_string())?;
                    }
                }
                Write::Vote(bytes, _) => {
                    meta.insert(VOTE, bytes.as_slice()).map_err(|e| e.to_string())?;
                }
                Write::Truncate(from, _) => {
                    log.retain_in(*from.., |_, _| false).map_err(|e| e.to_string())?;
                }
                Write::Purge(upto, last_purged, _) => {
                    // The purge point is recorded in the same transaction as
                    // the deletion: a crash cannot make the log look empty.
                    meta.insert(LAST_PURGED, last_purged.as_slice()).map_err(|e| e.to_string())?;
                    log.retain_in(..=*upto, |_, _| false).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Bound::Included(e),
            Bound::Excluded(&e) => Bound::Excluded(e),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(self.mem().entries.range((start, end)).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.mem();
        let last = mem.entries.values().next_back().map(|e| *e.get_log_id()).or(mem.last_purged);
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(any(e)))?;
        self.mem().vote = Some(*vote);
        self.queue_and_wait(|ack| Write::Vote(bytes, ack)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.mem().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Lazy: a committed index that lags is safe; the next flush carries it.
        let bytes = encode(&committed).map_err(encode_err)?;
        self.mem().committed = committed;
        *lock(&self.inner.committed) = Some(bytes);
        if let Some(db) = &self.inner.inline {
            write_batch(db, &[], &self.inner.committed).map_err(|e| StorageIOError::write_logs(any(e)))?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.mem().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut mem = self.mem();
            for e in entries {
                let index = e.get_log_id().index;
                encoded.push((index, encode(&e).map_err(encode_err)?));
                mem.entries.insert(index, e);
            }
        }
        // Readable now; reported durable by the flusher after its commit.
        self.queue(Write::Append(encoded, callback))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.mem().entries.retain(|i, _| *i < from);
        self.queue_and_wait(|ack| Write::Truncate(from, ack)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&Some(log_id)).map_err(encode_err)?;
        {
            let mut mem = self.mem();
            mem.last_purged = Some(log_id);
            mem.entries.retain(|i, _| *i > log_id.index);
        }
        self.queue_and_wait(|ack| Write::Purge(log_id.index, bytes, ack)).await
    }
}
