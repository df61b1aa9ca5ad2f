//! Recovery from a lost majority: make one surviving node the only voter
//! of its cluster, offline, on its stopped store (`dmlogd
//! force-new-cluster`).
//!
//! Raft cannot change its membership without a quorum of the old one, so
//! a cluster that lost its majority for good (two of three hosts burnt)
//! stays without a leader. This writes, on one survivor's store, a new
//! membership entry after its last one, with that node as the only voter,
//! under a new term, and a vote for itself in that term. Started again,
//! the node is alone in its configuration: it elects itself and commits
//! the entry, and everything the old cluster committed that reached it
//! (its whole log) stays. Entries the old majority committed that never
//! reached this node are lost: choose the survivor with the highest log
//! index. Every other old member must be wiped before it runs again; one
//! started with its old store still believes in the old membership and
//! could elect a second leader with another old member.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader};

use crate::log_store::{FlushMode, LOG, LogStore, META, VOTE};
use crate::state_machine::StateMachine;
use crate::types::{Entry, LogId, Node, NodeId, Vote, encode};

/// What [`force_sole_voter`] found and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forced {
    /// The voters of the membership it replaced.
    pub old_voters: BTreeSet<NodeId>,
    /// The last entry of the log before (`None`: empty).
    pub last: Option<LogId>,
    /// The new membership entry.
    pub entry: LogId,
}

/// Makes node `me` the only voter of the store at `path` (a stopped
/// node's `raft.redb`; the caller holds the data directory's lock).
/// Refused if the store has no membership yet, or does not know `me`.
pub async fn force_sole_voter(path: &Path, me: NodeId) -> Result<Forced, String> {
    let db = redb::Database::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let db = std::sync::Arc::new(db);
    let (mut log, db) = LogStore::with_database(db, FlushMode::Inline).map_err(|e| e.to_string())?;
    let state = log.get_log_state().await.map_err(|e| e.to_string())?;
    let vote = log.read_vote().await.map_err(|e| e.to_string())?;
    // The newest membership: the log's last membership entry, or else what
    // the state machine applied (the log may have been purged past it).
    let entries = log.get_log_reader().await.try_get_log_entries(..).await.map_err(|e| e.to_string())?;
    let in_log = entries.iter().rev().find_map(|e| match &e.payload {
        EntryPayload::Membership(m) => Some(m.clone()),
        _ => None,
    });
    let membership = match in_log {
        Some(m) => m,
        None => {
            let mut sm = StateMachine::open(db.clone())?;
            let (_, stored) = sm.applied_state().await.map_err(|e| e.to_string())?;
            stored.membership().clone()
        }
    };
    let old_voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if old_voters.is_empty() {
        return Err("this store has no cluster membership yet: nothing to recover".into());
    }
    let Some(node) = membership.get_node(&me).cloned() else {
        return Err(format!("node {me} is not a member in this store (members: {old_voters:?})"));
    };
    let last = state.last_log_id;
    let term = last.map_or(0, |l| l.leader_id.term).max(vote.map_or(0, |v| v.leader_id().term)) + 1;
    let index = last.map_or(0, |l| l.index + 1);
    let entry_id = LogId::new(CommittedLeaderId::new(term, me), index);
    let nodes: BTreeMap<NodeId, Node> = BTreeMap::from([(me, node)]);
    let sole = Membership::new(vec![BTreeSet::from([me])], nodes);
    let entry = Entry { log_id: entry_id, payload: EntryPayload::Membership(sole) };
    // A vote for itself in the new term, not committed: started again it
    // is a follower that stands for election and, alone in its
    // configuration, wins.
    let new_vote = Vote::new(term, me);
    let entry_bytes = encode(&entry).map_err(|e| e.to_string())?;
    let vote_bytes = encode(&new_vote).map_err(|e| e.to_string())?;
    drop(log);
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut l = txn.open_table(LOG).map_err(|e| e.to_string())?;
        l.insert(index, entry_bytes.as_slice()).map_err(|e| e.to_string())?;
        let mut m = txn.open_table(META).map_err(|e| e.to_string())?;
        m.insert(VOTE, vote_bytes.as_slice()).map_err(|e| e.to_string())?;
    }
    // One transaction, synced at commit: all of it or none.
    txn.commit().map_err(|e| e.to_string())?;
    Ok(Forced { old_voters, last, entry: entry_id })
}
