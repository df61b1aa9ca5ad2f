//! Cluster lifecycle: bootstrap, join (learner, then voter), removal and
//! leadership transfer. Changes run on the leader, one at a time.
//!
//! * Node ids are never reused: removing a node retires its id in the
//!   replicated region machine ([`regions::Command::NodeRetired`]), and a
//!   retired id can neither join Raft again nor register a kernel.
//! * openraft 0.9 has no leadership transfer. [`Replica::transfer_leader`]
//!   builds one from what it has: the leader stops taking proposals (they
//!   wait, they are not refused), waits until the target holds its whole
//!   log, tells the other voters to hold their elections, stops its own
//!   heartbeats, waits out the followers' leader lease (an openraft voter
//!   refuses any candidate while its leader's lease runs) and orders the
//!   target to stand. The target's log is complete, so it wins. Every hold
//!   ends by itself, so an interrupted transfer leaves no node unable to
//!   elect.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::time::Instant;

use crate::replica::Campaign;
use crate::replica::{ForwardError, LeaderLink, Local, Replica};
use crate::types::{NodeId, Proposal, Raft};

/// One member as the admin sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its id.
    pub id: NodeId,
    /// Its peer address.
    pub addr: String,
    /// A voter (or else a learner).
    pub voter: bool,
}

/// Why a membership change or transfer was not done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// Changes are made on the leader; this node is not it.
    #[error("not the leader (the leader is {})", leader_name(*.0))]
    NotLeader(Option<NodeId>),
    /// The id belonged to a removed node.
    #[error("node id {0} was removed from this cluster and is never reused")]
    Retired(NodeId),
    /// The id is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The id is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// Leadership goes to voters only.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// A cluster keeps at least one voter.
    #[error("node {0} is the last voter")]
    LastVoter(NodeId),
    /// The change did not finish before the deadline; it may still finish.
    #[error("not done before the deadline (it may still complete; check the status)")]
    Timeout,
    /// The joiner did not hold the log up to its own addition within the
    /// catch-up bound; it was taken out again and the cluster is as before.
    #[error(
        "node {id} at {addr} did not catch up within {secs} s (is it running, with this address and port, \
         and does it reach this node?); it was not added"
    )]
    NotCaughtUp {
        /// The joiner.
        id: NodeId,
        /// The address it was given.
        addr: String,
        /// The bound, in seconds.
        secs: u64,
    },
    /// Raft refused or stopped.
    #[error("raft: {0}")]
    Raft(String),
}

fn leader_name(l: Option<NodeId>) -> String {
    l.map_or_else(|| "unknown".to_owned(), |l| format!("node {l}"))
}

/// Initialises a pristine node with the cluster's first members. Every
/// node of a new cluster may call it with the same members (openraft makes
/// a repeated identical initialisation harmless); a node that already
/// holds a log is left alone. Returns whether this call initialised it.
pub async fn bootstrap(raft: &Raft, members: &BTreeMap<NodeId, String>) -> Result<bool, String> {
    if raft.is_initialized().await.map_err(|e| e.to_string())? {
        return Ok(false);
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
    match raft.initialize(nodes).await {
        Ok(()) => Ok(true),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Carries out a campaign order on `raft`. `own_timer` says whether
/// openraft's election timer is in use on this node (it is not once the
/// liveness task drives elections through pre-vote); a hold that ends turns
/// it back on only then.
pub(crate) async fn obey(raft: &Raft, own_timer: bool, order: Campaign) -> Result<(), ForwardError> {
    match order {
        Campaign::Elect => raft.trigger().elect().await.map_err(|e| ForwardError::Fatal(e.to_string())),
        Campaign::Hold { millis: 0 } => {
            raft.runtime_config().elect(own_timer);
            Ok(())
        }
        Campaign::Hold { millis } => {
            raft.runtime_config().elect(false);
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                raft.runtime_config().elect(own_timer);
            });
            Ok(())
        }
    }
}

fn raft_err<E: std::fmt::Display>(e: RaftError<NodeId, E>) -> ChangeError {
    ChangeError::Raft(e.to_string())
}

fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ChangeError {
    match e.forward_to_leader() {
        Some(f) => ChangeError::NotLeader(f.leader_id),
        None => raft_err(e),
    }
}

impl<L: LeaderLink> Replica<L> {
    /// Carries out a campaign order from node `from` on this node.
    ///
    /// An order to stand is refused while this node follows another
    /// leader than `from`: standing skips the pre-vote, and a leader that
    /// was deposed in the middle of a transfer must not make this node
    /// stand against the one that deposed it, which may be answering
    /// reads under a lease that this node's acknowledgements gave it
    /// (docs/architecture.md, "Lease reads").
    pub async fn obey(&self, order: Campaign, from: NodeId) -> Result<(), ForwardError> {
        // A hold also stops pre-vote campaigns and pre-vote grants here.
        if let Campaign::Hold { millis } = order {
            let until = (millis > 0).then(|| Instant::now() + Duration::from_millis(millis));
            *self.held_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
        }
        if order == Campaign::Elect {
            let leader = self.raft.metrics().borrow().current_leader;
            if let Some(l) = leader.filter(|l| *l != from && *l != self.id) {
                return Err(ForwardError::Refused(format!(
                    "node {} follows node {l}; node {from} may not make it stand",
                    self.id
                )));
            }
        }
        obey(&self.raft, self.uses_own_election_timer(), order).await
    }

    /// The members this node knows, voters and learners.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| MemberInfo { id: *id, addr: n.addr.clone(), voter: voters.contains(id) })
            .collect()
    }

    fn require_leader(&self) -> Result<(), ChangeError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state == ServerState::Leader { Ok(()) } else { Err(ChangeError::NotLeader(m.current_leader)) }
    }

    /// Adds node `id` at `addr`: as a learner first, then, once it holds
    /// the log up to the entry that added it, as a voter. A joiner that
    /// has not got that far within `catch_up` (a wrong address, a node not
    /// started) is removed again and [`ChangeError::NotCaughtUp`] returned:
    /// a learner never counts towards a quorum, so a typo cannot cost the
    /// cluster its majority. (openraft's own blocking `add_learner` does
    /// not wait for this: it calls a learner up to date while it lags by
    /// fewer than `replication_lag_threshold` entries, 5,000 by default,
    /// which a young cluster's whole log is.)
    pub async fn add_node(
        &self,
        id: impl Into<NodeId>,
        addr: &str,
        catch_up: Duration,
        deadline: Instant,
    ) -> Result<Vec<MemberInfo>, ChangeError> {
        let id = id.into();
        let _one = self.changing.lock().await;
        self.require_leader()?;
        if self.state.read(|m| m.is_retired(id)) {
            return Err(ChangeError::Retired(id));
        }
        if self.members().iter().any(|m| m.id == id) {
            return Err(ChangeError::AlreadyMember(id));
        }
        let timeout = |_| ChangeError::Timeout;
        let added = tokio::time::timeout_at(deadline, self.raft.add_learner(id, BasicNode::new(addr), false))
            .await
            .map_err(timeout)?
            .map_err(write_err)?;
        let bound = (Instant::now() + catch_up).min(deadline);
        if !self.learner_holds(id, added.log_id.index, bound).await? {
            let out = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
            tokio::time::timeout_at(deadline, self.raft.change_membership(out, false))
                .await
                .map_err(timeout)?
                .map_err(write_err)?;
            let secs = catch_up.as_secs().max(1);
            tracing::warn!(node = %id, addr, secs, "a joiner did not catch up; taken out again");
            return Err(ChangeError::NotCaughtUp { id, addr: addr.to_owned(), secs });
        }
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        tokio::time::timeout_at(deadline, self.raft.change_membership(voters, false))
            .await
            .map_err(timeout)?
            .map_err(write_err)?;
        Ok(self.members())
    }

    /// Waits until learner `id` has acknowledged the log up to `index`
    /// (true), or `bound` passes (false). Fails if this node stops leading.
    async fn learner_holds(&self, id: NodeId, index: u64, bound: Instant) -> Result<bool, ChangeError> {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader {
                    return Err(ChangeError::NotLeader(m.current_leader));
                }
                let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
                if matched >= Some(index) {
                    return Ok(true);
                }
            }
            match tokio::time::timeout_at(bound, metrics.changed()).await {
                Err(_) => return Ok(false),
                Ok(Err(_)) => return Err(ChangeError::Raft("raft stopped".into())),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Removes node `id` from the cluster and retires its id. The region
    /// machine evicts it first (its marks become resync work for the
    /// survivors); then Raft forgets it. Removing the leader itself is
    /// allowed: it steps down once the change commits.
    pub async fn remove_node(&self, id: impl Into<NodeId>, deadline: Instant) -> Result<Vec<MemberInfo>, ChangeError> {
        let id = id.into();
        let _one = self.changing.lock().await;
        self.require_leader()?;
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.id == id) else {
            return Err(ChangeError::NotAMember(id));
        };
        if member.voter && members.iter().filter(|m| m.voter).count() == 1 {
            return Err(ChangeError::LastVoter(id));
        }
        let retire = Proposal { commands: vec![regions::Command::NodeRetired { node: id }] };
        let timeout = |_| ChangeError::Timeout;
        match tokio::time::timeout_at(deadline, self.propose_here(retire)).await.map_err(timeout)? {
            Ok(_) => {}
            Err(Local::Forward(l)) => return Err(ChangeError::NotLeader(l)),
            Err(Local::Fatal(e)) => return Err(ChangeError::Raft(e)),
        }
        let change = if member.voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tokio::time::timeout_at(deadline, self.raft.change_membership(change, false))
            .await
            .map_err(timeout)?
            .map_err(write_err)?;
        Ok(self.members())
    }

    /// Hands leadership to voter `to` and returns the leader afterwards.
    pub async fn transfer_leader(&self, to: impl Into<NodeId>, deadline: Instant) -> Result<NodeId, ChangeError> {
        let to = to.into();
        let _one = self.changing.lock().await;
        self.require_leader()?;
        if to == self.id {
            return Ok(to);
        }
        let voters: Vec<NodeId> = self.members().iter().filter(|m| m.voter).map(|m| m.id).collect();
        if !voters.contains(&to) {
            return Err(ChangeError::NotAVoter(to));
        }
        // No new entries from here on: proposals wait behind the gate.
        let gate = tokio::time::timeout_at(deadline, self.gate.write()).await.map_err(|_| ChangeError::Timeout)?;
        let result = self.hand_over(to, &voters, deadline).await;
        drop(gate);
        result
    }

    async fn hand_over(&self, to: NodeId, voters: &[NodeId], deadline: Instant) -> Result<NodeId, ChangeError> {
        let config = self.raft.config().clone();
        let lease = Duration::from_millis(config.election_timeout_max);
        let beat = Duration::from_millis(config.heartbeat_interval);
        // 1. The target holds the whole log.
        loop {
            let caught_up = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let matched = m.replication.as_ref().and_then(|r| r.get(&to).cloned().flatten()).map(|l| l.index);
                matched >= m.last_log_index
            };
            if caught_up {
                break;
            }
            if Instant::now() + beat > deadline {
                return Err(ChangeError::Timeout);
            }
            tokio::time::sleep(beat).await;
        }
        // 2. Only the target may stand; every hold expires by itself.
        let hold = u64::try_from((lease * 4).as_millis()).unwrap_or(u64::MAX);
        for v in voters.iter().filter(|v| **v != to && **v != self.id) {
            let _ = self.link.campaign(*v, Campaign::Hold { millis: hold }).await;
        }
        let _ = self.obey(Campaign::Hold { millis: hold }, self.id).await;
        // 3. Go quiet until the followers' lease on this leader has expired.
        self.raft.runtime_config().heartbeat(false);
        tokio::time::sleep(lease + beat).await;
        // 4. The target stands, again if an election fails, until it leads.
        let mut leader = None;
        while Instant::now() < deadline {
            let _ = self.link.campaign(to, Campaign::Elect).await;
            let until = (Instant::now() + lease).min(deadline);
            while Instant::now() < until {
                let now = self.raft.metrics().borrow().current_leader;
                if now.is_some() && now != Some(self.id) {
                    leader = now;
                    break;
                }
                tokio::time::sleep(beat).await;
            }
            if leader.is_some() {
                break;
            }
        }
        // 5. Back to normal everywhere.
        self.raft.runtime_config().heartbeat(true);
        let _ = self.obey(Campaign::Hold { millis: 0 }, self.id).await;
        for v in voters.iter().filter(|v| **v != to && **v != self.id) {
            let _ = self.link.campaign(*v, Campaign::Hold { millis: 0 }).await;
        }
        leader.ok_or(ChangeError::Timeout)
    }
}
