//! The region machine as openraft's state machine.
//!
//! The machine lives in memory. Snapshots are its deterministic serialised
//! form ([`regions::Machine::snapshot`]) and are kept in the same redb file
//! as the log, in one record, written in one transaction (crash-atomic).
//! openraft 0.9 does not restore a state machine by itself: [`StateMachine::open`]
//! loads the last snapshot, and openraft then re-applies the committed log
//! after it.
//!
//! `apply` never fails on a kernel request: a refused request is an
//! [`Outcome`](crate::Outcome) with an errno, not an error (an error from
//! `apply` stops the Raft node).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::log_store::{LOG, META, VOTE};
use crate::types::{
    Entry, LogId, Outcome, Outcomes, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote, any, decode,
    encode,
};

const SNAPSHOT: &str = "snapshot";

/// Effects of applied commands, in log order, for the node that runs this
/// replica (every replica applies every entry; each node acts on the
/// effects addressed to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedEffects {
    /// The entry that produced them.
    pub log_id: LogId,
    /// The effects.
    pub effects: Vec<regions::Effect>,
}

#[derive(Clone, Debug, Default)]
struct State {
    machine: regions::Machine,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The replicated state machine of one node.
pub struct StateMachine {
    db: Arc<Database>,
    state: Arc<Mutex<State>>,
    snapshots_built: Arc<AtomicU64>,
    effects: Option<mpsc::UnboundedSender<AppliedEffects>>,
    read_floor: Arc<(u64, u64)>,
    checks: Option<Violations>,
}

/// Where [`StateMachine::with_checks`] records each invariant violation,
/// in words.
pub type Violations = Arc<Mutex<Vec<String>>>;

/// Read access to a node's applied state, for answering queries after a
/// read index was confirmed.
#[derive(Clone)]
pub struct StateReader {
    state: Arc<Mutex<State>>,
    /// The term and last log index this node held when it started (see
    /// [`StateReader::read_floor`]).
    floor: Arc<(u64, u64)>,
}

impl StateReader {
    /// Runs `f` on the region machine as applied so far.
    pub fn read<R>(&self, f: impl FnOnce(&regions::Machine) -> R) -> R {
        f(&lock(&self.state).machine)
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        lock(&self.state).last_applied
    }

    /// The term this node was in when it started, and the index reads in
    /// that term must wait for: its last log index at start.
    ///
    /// openraft 0.9 restores a leader after a restart without a new
    /// election, so without the blank entry whose commit would prove its
    /// commit index, and its read index is then the commit index loaded
    /// from disk, which may lag. Every entry that leader committed before
    /// is in its own log, so waiting until that log is applied makes its
    /// reads linearizable again. In any later term the new leader's blank
    /// entry does that job and the floor no longer applies.
    pub fn read_floor(&self) -> (u64, u64) {
        *self.floor
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_snapshot(db: &Database) -> Result<Option<StoredSnapshot>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let meta = txn.open_table(META).map_err(|e| e.to_string())?;
    let Some(bytes) = meta.get(SNAPSHOT).map_err(|e| e.to_string())? else { return Ok(None) };
    decode(bytes.value()).map(Some).map_err(|e| e.to_string())
}

/// The term of the stored vote and the index of the last stored log entry
/// (0 for none), read in one transaction: the read floor.
fn start_point(db: &Database) -> Result<(u64, u64), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let meta = txn.open_table(META).map_err(|e| e.to_string())?;
    let term = match meta.get(VOTE).map_err(|e| e.to_string())? {
        Some(bytes) => decode::<Vote>(bytes.value()).map_err(|e| e.to_string())?.leader_id().term,
        None => 0,
    };
    let log = txn.open_table(LOG).map_err(|e| e.to_string())?;
    let last = log.last().map_err(|e| e.to_string())?.map_or(0, |(k, _)| k.value());
    Ok((term, last))
}

fn write_snapshot(db: &Database, s: &StoredSnapshot) -> Result<(), String> {
    let bytes = encode(s).map_err(|e| e.to_string())?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.open_table(META).map_err(|e| e.to_string())?.insert(SNAPSHOT, bytes.as_slice()).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())
}

impl StateMachine {
    /// Opens the state machine on the log store's database, restoring the
    /// last snapshot if there is one, and sets the read floor to the last
    /// index of the stored log (see [`StateReader::read_floor`]).
    pub fn open(db: Arc<Database>) -> Result<StateMachine, String> {
        let mut state = State::default();
        if let Some(s) = read_snapshot(&db)? {
            state.machine = regions::Machine::restore(&s.data).map_err(|e| e.to_string())?;
            state.last_applied = s.meta.last_log_id;
            state.membership = s.meta.last_membership.clone();
        }
        let floor = start_point(&db)?;
        Ok(StateMachine {
            db,
            state: Arc::new(Mutex::new(state)),
            snapshots_built: Arc::new(AtomicU64::new(0)),
            read_floor: Arc::new(floor),
            effects: None,
            checks: None,
        })
    }

    /// A reader of this state machine's applied state.
    pub fn reader(&self) -> StateReader {
        StateReader { state: self.state.clone(), floor: self.read_floor.clone() }
    }

    /// Checks every invariant of the region machine after every applied
    /// command, in any build profile, and records each violation in `sink`
    /// (the simulation does this). Without it, debug builds check and
    /// assert; release builds do not check.
    pub fn with_checks(mut self, sink: Violations) -> StateMachine {
        self.checks = Some(sink);
        self
    }

    /// Sends the effects of every applied command to `tx`.
    pub fn with_effects(mut self, tx: mpsc::UnboundedSender<AppliedEffects>) -> StateMachine {
        self.effects = Some(tx);
        self
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked
/// for the builder (the build runs concurrently with later applies).
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: State,
    seq: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let last = self.state.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!("{}-{n}", last.map(|l| l.index).unwrap_or(0)),
        };
        let data = self.state.machine.snapshot();
        let stored = StoredSnapshot { meta: meta.clone(), data };
        write_snapshot(&self.db, &stored).map_err(|e| StorageIOError::write_snapshot(None, any(e)))?;
        Ok(Snapshot { meta, snapshot: Box::new(stored.data) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = lock(&self.state);
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcomes>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut st = lock(&self.state);
        for entry in entries {
            st.last_applied = Some(entry.log_id);
            let outcomes = match entry.payload {
                EntryPayload::Blank => Outcomes::default(),
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                    Outcomes::default()
                }
                EntryPayload::Normal(proposal) => {
                    let mut results = Vec::with_capacity(proposal.commands.len());
                    for c in &proposal.commands {
                        results.push(Outcome { index: entry.log_id.index, ..Outcome::from(st.machine.apply(c)) });
                        if self.checks.is_none() && !cfg!(debug_assertions) {
                            continue;
                        }
                        if let Err(v) = st.machine.check() {
                            let line = format!("after {c:?} in entry {}: {v}", entry.log_id);
                            match &self.checks {
                                Some(sink) => lock(sink).push(line),
                                None => {
                                    tracing::error!("invariant violated {line}");
                                    debug_assert!(false, "invariant violated {line}");
                                }
                            }
                        }
                    }
                    if let Some(tx) = &self.effects {
                        let effects: Vec<regions::Effect> =
                            results.iter().flat_map(|o| o.effects.iter().cloned()).collect();
                        if !effects.is_empty() {
                            let _ = tx.send(AppliedEffects { log_id: entry.log_id, effects });
                        }
                    }
                    Outcomes(results)
                }
            };
            out.push(outcomes);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), state: lock(&self.state).clone(), seq: self.snapshots_built.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Vec<u8>>) -> Result<(), StorageError> {
        let machine = regions::Machine::restore(&snapshot)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        let stored = StoredSnapshot { meta: meta.clone(), data: *snapshot };
        write_snapshot(&self.db, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        *lock(&self.state) =
            State { machine, last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let stored = read_snapshot(&self.db).map_err(|e| StorageIOError::read_snapshot(None, any(e)))?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(s.data) }))
    }
}
