//! One node's view of the replicated region machine: propose commands and
//! read answers, wherever the leader is.
//!
//! * [`Replica::propose`] writes a [`Proposal`] through Raft. On a follower
//!   it is forwarded to the leader (one hop, through a [`LeaderLink`]); with
//!   no leader known (an election) it backs off and retries until its
//!   deadline. A retried proposal may be applied twice; every region
//!   command is idempotent under re-sends, as it must be for the kernel's
//!   own 15 s re-sends.
//! * [`Replica::read`] answers a query linearizably: the leader confirms
//!   its leadership with a quorum (openraft's read index), waits until it
//!   has applied up to that index, and answers from its state machine. A
//!   confirmation gives the leader a read lease: for half the lower
//!   election timeout from when it asked, no other node can have been
//!   elected, and it answers reads from its state without asking again
//!   (docs/architecture.md, "Lease reads"). A follower forwards the read
//!   to the leader.

use std::future::Future;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::time::Instant;
use wire::{Answer, Errno, Uuid};

use crate::state_machine::StateReader;
use crate::types::{LogId, NodeId, Outcomes, Proposal, Raft};

/// A read request: one kernel query for one log instance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadRequest {
    /// The log.
    pub uuid: Uuid,
    /// The asking instance.
    pub instance: regions::Instance,
    /// The query.
    pub query: regions::Query,
}

/// Why a forwarded call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ForwardError {
    /// The leader could not be reached.
    #[error("leader {0} unreachable")]
    Unreachable(NodeId),
    /// The node asked is not (or no longer) the leader.
    #[error("not the leader")]
    NotLeader,
    /// The Raft core stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The leader refused the forwarded proposal: it holds a command the
    /// forwarding node may not originate ([`regions::Command::origin`]).
    #[error("refused: {0}")]
    Refused(String),
}

/// Why a proposal or a read did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// No leader answered before the deadline (no quorum, or an election
    /// that did not end). The outcome of a proposal is unknown.
    #[error("no quorum before the deadline")]
    Timeout,
    /// The Raft core stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The leader refused the proposal for coming from this node (a bug,
    /// or a node speaking for another): retrying would not help.
    #[error("refused by the leader: {0}")]
    Refused(String),
}

/// A campaign order, for leadership transfer (openraft 0.9 has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Campaign {
    /// Stand for election now.
    Elect,
    /// Do not start elections for this long (0: resume at once).
    Hold {
        /// Milliseconds.
        millis: u64,
    },
}

/// How a follower reaches the leader's replica.
pub trait LeaderLink: Send + Sync + 'static {
    /// Proposes on `leader`'s Raft.
    fn propose(&self, leader: NodeId, p: Proposal) -> impl Future<Output = Result<Outcomes, ForwardError>> + Send;
    /// Reads linearizably on `leader`.
    fn read(
        &self,
        leader: NodeId,
        r: ReadRequest,
    ) -> impl Future<Output = Result<Result<Answer, Errno>, ForwardError>> + Send;
    /// Gives node `to` a campaign order (leadership transfer).
    fn campaign(&self, to: NodeId, order: Campaign) -> impl Future<Output = Result<(), ForwardError>> + Send;
    /// Asks node `to` whether it would vote for a candidate whose log ends
    /// at `last_log` (see [`Replica::campaign_if_leaderless`]).
    fn pre_vote(&self, to: NodeId, last_log: Option<LogId>) -> impl Future<Output = Result<bool, ForwardError>> + Send;
}

/// How long a read waits for the restart floor before the caller retries.
const FLOOR_WAIT: Duration = Duration::from_secs(2);

/// How long to wait before retrying when no leader is known.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// One node's replica of the region machine.
pub struct Replica<L: LeaderLink> {
    /// This node.
    pub id: NodeId,
    /// Its Raft (sealed: callers use the methods below).
    pub(crate) raft: Raft,
    /// Its applied state.
    pub state: StateReader,
    pub(crate) link: L,
    /// Held for writing while leadership is handed over: proposals on this
    /// node wait, so the log stops growing and the target can catch up.
    pub(crate) gate: tokio::sync::RwLock<()>,
    /// One membership change or transfer at a time.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// When this node last had proof of a leader: a proposal of its own
    /// committed (renewals keep it fresh), or the leader's AppendEntries
    /// was accepted ([`Replica::accept_append_entries`]).
    leader_contact: std::sync::Mutex<Instant>,
    /// The node's log, for its last log id (pre-vote).
    log: std::sync::Mutex<Option<crate::LogStore>>,
    /// When this node last asked for pre-votes (its own backoff; not
    /// evidence of a leader, so kept apart from `leader_contact`).
    last_campaign: std::sync::Mutex<Option<Instant>>,
    /// Set once elections go through pre-vote (openraft's timer off).
    prevote: std::sync::atomic::AtomicBool,
    /// Until when this node neither stands for election nor grants a
    /// pre-vote (a leadership transfer to another node is under way).
    pub(crate) held_until: std::sync::Mutex<Option<Instant>>,
    /// This node's read lease as leader, if it has one.
    lease: std::sync::Arc<std::sync::Mutex<Option<ReadLease>>>,
    /// A renewal of the lease is under way (one at a time).
    renewing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Reads answered under the lease, without a round to the followers.
    lease_reads: std::sync::atomic::AtomicU64,
}

/// A leader's read lease: until `until` this node, leading in `term`,
/// answers reads from its own state (see [`Replica::lease_length`]).
#[derive(Clone, Copy, Debug)]
struct ReadLease {
    term: u64,
    until: Instant,
}

impl<L: LeaderLink> Replica<L> {
    /// Wraps a running Raft node.
    pub fn new(id: NodeId, raft: Raft, state: StateReader, link: L) -> Replica<L> {
        Replica {
            id,
            raft,
            state,
            link,
            gate: tokio::sync::RwLock::new(()),
            changing: tokio::sync::Mutex::new(()),
            leader_contact: std::sync::Mutex::new(Instant::now()),
            log: std::sync::Mutex::new(None),
            last_campaign: std::sync::Mutex::new(None),
            prevote: std::sync::atomic::AtomicBool::new(false),
            held_until: std::sync::Mutex::new(None),
            lease: std::sync::Arc::default(),
            renewing: std::sync::Arc::default(),
            lease_reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// This node's Raft metrics: role, term, leader, log and applied
    /// index, replication progress on a leader.
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<crate::types::Metrics> {
        self.raft.metrics()
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state.is_leader()
    }

    /// The Raft configuration (heartbeat, election timeouts).
    pub fn config(&self) -> &openraft::Config {
        self.raft.config()
    }

    /// Initialises a new cluster of `members` (a no-op on a node that
    /// already has a log).
    pub async fn initialize(
        &self,
        members: std::collections::BTreeMap<NodeId, crate::types::Node>,
    ) -> Result<(), String> {
        self.raft.initialize(members).await.map_err(|e| e.to_string())
    }

    /// Waits until this node knows a leader, at most `limit`; the leader.
    pub async fn wait_for_leader(&self, limit: Duration) -> Option<NodeId> {
        let m = self.raft.wait(Some(limit)).metrics(|m| m.current_leader.is_some(), "a leader").await.ok()?;
        m.current_leader
    }

    /// Waits until this node has applied the log up to `index`, at most
    /// `limit`; whether it has.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> bool {
        self.raft.wait(Some(limit)).applied_index_at_least(Some(index), "applied").await.is_ok()
    }

    /// Stops the Raft core.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Gives the replica its log store (a clone), which pre-votes need.
    pub fn with_log(self, log: crate::LogStore) -> Replica<L> {
        *self.log.lock().unwrap_or_else(|e| e.into_inner()) = Some(log);
        self
    }

    /// The last log id, if the log store was given.
    fn last_log_id(&self) -> Result<Option<LogId>, ()> {
        match &*self.log.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(l) => Ok(l.last_log_id()),
            None => Err(()),
        }
    }

    fn touch_leader_contact(&self) {
        *self.leader_contact.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Notes this node's answer to a leader's AppendEntries: if the sender's
    /// vote was accepted (whatever became of the entries), that is contact
    /// with the leader this node follows.
    pub(crate) fn answered_append(&self, answer: &openraft::raft::AppendEntriesResponse<NodeId>) {
        use openraft::raft::AppendEntriesResponse as R;
        if matches!(answer, R::Success | R::PartialSuccess(_) | R::Conflict) {
            self.touch_leader_contact();
        }
    }

    /// Hands a leader's AppendEntries (heartbeats included) to Raft. An
    /// accepted one is contact with a leader: like a commit of its own, it
    /// keeps this node from campaigning and from granting pre-votes. An
    /// idle node or one whose proposals wait behind a leadership transfer
    /// would otherwise count the new leader as absent and depose it the
    /// moment it won (the bounce seen on the real kernel after a crash).
    pub async fn accept_append_entries(
        &self,
        req: openraft::raft::AppendEntriesRequest<crate::TypeConfig>,
    ) -> Result<openraft::raft::AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let out = self.raft.append_entries(req).await;
        if let Ok(answer) = &out {
            self.answered_append(answer);
        }
        out
    }

    /// How long since this node last had contact with a leader (see
    /// `leader_contact`).
    pub fn leader_contact_age(&self) -> Duration {
        self.leader_contact.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    /// Turns off openraft's own election timer: from now on this node
    /// stands for election only through [`Replica::campaign_if_leaderless`],
    /// which the caller runs on every tick.
    pub fn take_over_elections(&self) {
        self.prevote.store(true, std::sync::atomic::Ordering::SeqCst);
        self.raft.runtime_config().elect(false);
    }

    /// Whether a transfer's hold is on (see `held_until`).
    fn held(&self) -> bool {
        self.held_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| Instant::now() < t)
    }

    /// Whether openraft's own election timer is in use (no pre-vote).
    pub fn uses_own_election_timer(&self) -> bool {
        !self.prevote.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How long a node waits without contact with a leader before it
    /// campaigns: from openraft's upper election timeout (the lease its
    /// peers give their leader: a real vote asked sooner is refused) to
    /// as far again above it as it is above the lower one; `pick` (in
    /// 0..=1) chooses within.
    pub fn campaign_wait(&self, pick: f64) -> Duration {
        let c = self.raft.config();
        let lo = c.election_timeout_max;
        let spread = c.election_timeout_max.saturating_sub(c.election_timeout_min);
        Duration::from_millis(lo + (spread as f64 * pick.clamp(0.0, 1.0)) as u64)
    }

    /// Pre-vote (openraft 0.9 has none). If this node is not the leader and
    /// none of its proposals committed for `quiet`, it asks the other voters
    /// whether they too have lost their leader and would vote for its log;
    /// only with a majority of yes (itself included) does it start a real
    /// election. A node cut off from the others therefore never raises its
    /// term and cannot depose a working leader when it returns, and the
    /// node with the most complete log is not outrun, round after round, by
    /// a candidate that cannot win. Returns whether it started an election.
    pub async fn campaign_if_leaderless(&self, quiet: Duration) -> bool {
        let (leads, voters) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.state == openraft::ServerState::Leader, voters)
        };
        let backing_off =
            self.last_campaign.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t.elapsed() < quiet);
        if leads || !voters.contains(&self.id) || self.leader_contact_age() < quiet || backing_off || self.held() {
            return false;
        }
        let Ok(mine) = self.last_log_id() else { return false };
        let ask = Duration::from_millis(self.raft.config().election_timeout_min / 2);
        let mut asks: futures_util::stream::FuturesUnordered<_> = voters
            .iter()
            .filter(|v| **v != self.id)
            .map(|v| tokio::time::timeout(ask, self.link.pre_vote(*v, mine)))
            .collect();
        // A majority of yes is enough: a dead voter's answer is not waited
        // for (that would add the whole `ask` to every failover).
        let mut yes = 1;
        while yes * 2 <= voters.len() {
            match futures_util::StreamExt::next(&mut asks).await {
                Some(Ok(Ok(true))) => yes += 1,
                Some(_) => {}
                None => break,
            }
        }
        drop(asks);
        // Whatever the outcome, a full quiet period passes before the next try.
        *self.last_campaign.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if yes * 2 > voters.len() {
            return self.raft.trigger().elect().await.is_ok();
        }
        false
    }

    /// The answer to a pre-vote: yes if this node is not the leader, none of
    /// its proposals committed for an election timeout either, and the
    /// candidate's log is at least as complete as its own.
    pub async fn answer_pre_vote(&self, candidate_last_log: Option<LogId>) -> bool {
        let quiet = Duration::from_millis(self.raft.config().election_timeout_min);
        if self.leader_contact_age() < quiet || self.held() {
            return false;
        }
        if self.raft.metrics().borrow().state == openraft::ServerState::Leader {
            return false;
        }
        match self.last_log_id() {
            Ok(mine) => candidate_last_log >= mine,
            Err(()) => false,
        }
    }

    /// Proposes on this node's Raft only (no forwarding), after any
    /// leadership transfer under way.
    pub(crate) async fn propose_here(&self, p: Proposal) -> Result<Outcomes, Local> {
        let _open = self.gate.read().await;
        propose_local(&self.raft, p).await
    }

    /// The leader this node currently knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Commits `p` and returns its outcomes, forwarding to the leader.
    ///
    /// A leader cut off from its quorum keeps believing it leads and its
    /// writes hang (openraft 0.9); the deadline bounds every attempt, and a
    /// timeout means the outcome is unknown.
    pub async fn propose(&self, p: Proposal, deadline: Instant) -> Result<Outcomes, ReplicaError> {
        let out = self
            .with_leader(deadline, || self.propose_here(p.clone()), |leader| self.link.propose(leader, p.clone()))
            .await;
        if out.is_ok() {
            self.touch_leader_contact();
        }
        out
    }

    /// Commits `p` only while this node leads: never forwarded, never
    /// retried. For decisions that are only valid from the leader that
    /// made them (an eviction on its lease clock): forwarded to a newer
    /// leader, such a decision could evict a node that has been renewing
    /// its lease there all along. A timeout means the outcome is unknown;
    /// an entry of a cut-off leader commits only if no other leader was
    /// elected meanwhile (then nobody else could renew either).
    pub async fn propose_as_leader(&self, p: Proposal, deadline: Instant) -> Result<Outcomes, ReplicaError> {
        match tokio::time::timeout_at(deadline, self.propose_here(p)).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(Local::Fatal(e))) => Err(ReplicaError::Fatal(e)),
            Ok(Err(Local::Forward(_))) | Err(_) => Err(ReplicaError::Timeout),
        }
    }

    /// Answers `r` linearizably, forwarding to the leader.
    pub async fn read(&self, r: ReadRequest, deadline: Instant) -> Result<Result<Answer, Errno>, ReplicaError> {
        self.with_leader(deadline, || self.read_here(&r), |leader| self.link.read(leader, r.clone())).await
    }

    /// How long a confirmation of this node's leadership, asked for at t,
    /// lets it answer reads alone: until t + half the lower election
    /// timeout. The followers that confirmed it answered AppendEntries
    /// sent at or after t, and each of them then neither grants a pre-vote
    /// nor stands for election for a full lower election timeout
    /// ([`Replica::answer_pre_vote`], [`Replica::campaign_if_leaderless`]);
    /// any election needs one of them, so no other node leads before t +
    /// the lower timeout, by the followers' clocks. Half of it leaves the
    /// rest for clock rates (1 % is assumed elsewhere) and scheduling.
    /// Zero (no lease) while openraft's own election timer is in use:
    /// openraft's vote lease does not bind a leader's own grant.
    fn lease_length(&self) -> Duration {
        if self.uses_own_election_timer() {
            return Duration::ZERO;
        }
        let c = self.raft.config();
        if regions::breaks::off("plant-long-lease") {
            return Duration::from_millis(4 * c.election_timeout_max);
        }
        Duration::from_millis(c.election_timeout_min / 2)
    }

    /// When this node's lease ends, if it lets it answer a read alone now:
    /// it still leads in the lease's term, the lease has not run out, and
    /// no leadership transfer is under way (the transfer's target stands
    /// without a pre-vote).
    fn lease_until(&self) -> Option<Instant> {
        let lease = (*self.lease.lock().unwrap_or_else(|e| e.into_inner()))?;
        if Instant::now() >= lease.until || self.held() {
            return None;
        }
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state.is_leader() && m.current_term == lease.term).then_some(lease.until)
    }

    /// A read on this node, if it leads: from its own state under its
    /// lease (renewed in the background once half of it has passed),
    /// otherwise after a confirmation of its leadership, which gives it a
    /// new lease.
    pub(crate) async fn read_here(&self, r: &ReadRequest) -> Result<Result<Answer, Errno>, Local> {
        if let Some(until) = self.lease_until() {
            self.lease_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.renew_lease_if_old(until);
            return read_state(&self.raft, &self.state, r).await;
        }
        confirm_and_grant(&self.raft, &self.lease, self.lease_length()).await?;
        read_state(&self.raft, &self.state, r).await
    }

    /// How many reads this node answered under its lease.
    pub fn lease_reads(&self) -> u64 {
        self.lease_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a confirmation that extends the lease (ending at `until`)
    /// when less than half of it is left, so that a steady reader never
    /// waits for one.
    fn renew_lease_if_old(&self, until: Instant) {
        let length = self.lease_length();
        let old = until.saturating_duration_since(Instant::now()) < length / 2;
        if !old || self.renewing.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let raft = self.raft.clone();
        let lease = self.lease.clone();
        let renewing = self.renewing.clone();
        tokio::spawn(async move {
            let _ = confirm_and_grant(&raft, &lease, length).await;
            renewing.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Tries `local`; if another node leads, tries `forward` there; with no
    /// leader known, backs off and tries again, until `deadline`.
    async fn with_leader<T, LF, FF>(
        &self,
        deadline: Instant,
        local: impl Fn() -> LF,
        forward: impl Fn(NodeId) -> FF,
    ) -> Result<T, ReplicaError>
    where
        LF: Future<Output = Result<T, Local>>,
        FF: Future<Output = Result<T, ForwardError>>,
    {
        loop {
            let attempt = async {
                let leader = match local().await {
                    Ok(v) => return Ok(Some(v)),
                    Err(Local::Fatal(e)) => return Err(ReplicaError::Fatal(e)),
                    Err(Local::Forward(leader)) => leader,
                };
                if let Some(leader) = leader.filter(|l| *l != self.id) {
                    // A forward to a leader that crashed or was cut off can
                    // hang until the deadline; once this node follows
                    // another leader (or none), it is abandoned and asked
                    // anew. Safe as a timeout is: a command is idempotent,
                    // and if the abandoned copy commits at all, it commits
                    // before anything the next leader appends.
                    let mut metrics = self.raft.metrics();
                    let moved = async move {
                        let _ = metrics.wait_for(|m| m.current_leader != Some(leader)).await;
                    };
                    tokio::select! {
                        // Any failure of the leader, even its core
                        // stopping (it crashed or is shutting down), only
                        // means this attempt's outcome is unknown: this
                        // node goes on and asks again. Taken for this
                        // node's own end, it made the router drop a batch
                        // that had committed (the 10,000-seed run, seed
                        // 6783: a deferred CLEAR committed unbeknown to its
                        // lane, which then acknowledged a MARK of the
                        // region from memory, I1).
                        out = forward(leader) => match out {
                            Ok(v) => return Ok(Some(v)),
                            Err(ForwardError::Refused(why)) => return Err(ReplicaError::Refused(why)),
                            Err(_) => {}
                        },
                        () = moved => {}
                    }
                }
                Ok(None)
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(Some(v))) => return Ok(v),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(None)) => {}
                Err(_) => return Err(ReplicaError::Timeout),
            }
            if Instant::now() + RETRY_BACKOFF > deadline {
                return Err(ReplicaError::Timeout);
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }
}

/// A local call that must go elsewhere.
pub(crate) enum Local {
    /// To this leader, if one is known.
    Forward(Option<NodeId>),
    /// The core stopped.
    Fatal(String),
}

/// What a forwarding node learns when the node it asked could not do the
/// call itself.
impl From<Local> for ForwardError {
    fn from(l: Local) -> ForwardError {
        match l {
            Local::Forward(_) => ForwardError::NotLeader,
            Local::Fatal(e) => ForwardError::Fatal(e),
        }
    }
}

/// `client_write` on this node.
pub(crate) async fn propose_local(raft: &Raft, p: Proposal) -> Result<Outcomes, Local> {
    match raft.client_write(p).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(Local::Forward(f.leader_id)),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(Local::Fatal(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(Local::Fatal(e.to_string())),
    }
}

/// A linearizable read on this node, if it is the leader (no lease: for a
/// node whose [`Replica`] is not at hand).
pub(crate) async fn read_local(
    raft: &Raft,
    state: &StateReader,
    r: &ReadRequest,
) -> Result<Result<Answer, Errno>, Local> {
    confirm_leader(raft).await?;
    read_state(raft, state, r).await
}

/// Has a quorum confirm that this node leads (openraft's read index: a
/// fresh AppendEntries round) and waits until it has applied what was
/// committed before.
async fn confirm_leader(raft: &Raft) -> Result<(), Local> {
    match raft.ensure_linearizable().await {
        Ok(_) => Ok(()),
        Err(RaftError::Fatal(e)) => Err(Local::Fatal(e.to_string())),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(Local::Forward(f.leader_id)),
        // Leadership not confirmed by a quorum: ask again later.
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => Err(Local::Forward(None)),
    }
}

/// Confirms this node's leadership and records a lease of `length` from
/// when it asked.
async fn confirm_and_grant(
    raft: &Raft,
    lease: &std::sync::Mutex<Option<ReadLease>>,
    length: Duration,
) -> Result<(), Local> {
    let asked = Instant::now();
    let term = raft.metrics().borrow().current_term;
    confirm_leader(raft).await?;
    grant_lease(raft, lease, term, asked + length);
    Ok(())
}

/// Records a lease until `until` for leadership confirmed in `term`, if
/// this node still leads in that term (a confirmation that spanned a
/// change of term proves nothing about the new one).
fn grant_lease(raft: &Raft, lease: &std::sync::Mutex<Option<ReadLease>>, term: u64, until: Instant) {
    let m = raft.metrics();
    let m = m.borrow();
    if !m.state.is_leader() || m.current_term != term {
        return;
    }
    let mut l = lease.lock().unwrap_or_else(|e| e.into_inner());
    if l.is_none_or(|old| old.term != term || old.until < until) {
        *l = Some(ReadLease { term, until });
    }
}

/// Answers `r` from this leader's state, once it has applied the entries a
/// leader that restarted had in its log (the read floor).
async fn read_state(raft: &Raft, state: &StateReader, r: &ReadRequest) -> Result<Result<Answer, Errno>, Local> {
    let (term, floor) = state.read_floor();
    let same_term = raft.metrics().borrow().current_term == term;
    if same_term && state.last_applied().map_or(0, |l| l.index) < floor {
        let waited = raft.wait(Some(FLOOR_WAIT)).applied_index_at_least(Some(floor), "read floor after restart").await;
        if waited.is_err() {
            return Err(Local::Forward(None));
        }
    }
    Ok(state.read(|m| m.read(&r.uuid, r.instance, &r.query).map_err(|e| e.errno())))
}
