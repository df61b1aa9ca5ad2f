//! An in-memory network between the Raft nodes of one process, with faults
//! (cut links, isolated nodes, lost requests and replies, duplicated and
//! delayed messages, drawn from a seeded generator), for tests and the
//! cluster simulation. Calls go straight to the target node's Raft handle.
//! The production transport is gRPC; both implement the same openraft
//! network traits and the same [`LeaderLink`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use openraft::error::{Fatal, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, Snapshot};
use rand08::rngs::SmallRng;
use rand08::{Rng, SeedableRng};
use wire::{Answer, Errno};

use crate::replica::Campaign;
use crate::replica::{ForwardError, LeaderLink, ReadRequest, Replica, propose_local, read_local};
use crate::state_machine::StateReader;
use crate::types::{LogId, Node, NodeId, Outcomes, Proposal, Raft, TypeConfig, Vote};

struct Net {
    nodes: BTreeMap<NodeId, (Raft, StateReader)>,
    replicas: BTreeMap<NodeId, Weak<Replica<MemLink>>>,
    cut: BTreeSet<(NodeId, NodeId)>,
    isolated: BTreeSet<NodeId>,
    delay: Duration,
    faults: Faults,
    rng: SmallRng,
}

impl Default for Net {
    fn default() -> Net {
        Net {
            nodes: BTreeMap::new(),
            replicas: BTreeMap::new(),
            cut: BTreeSet::new(),
            isolated: BTreeSet::new(),
            delay: Duration::ZERO,
            faults: Faults::default(),
            rng: SmallRng::seed_from_u64(0),
        }
    }
}

/// Random message faults, each drawn per message.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Chance that a request is lost (the sender sees the link down).
    pub drop_request: f64,
    /// Chance that the request is delivered and handled but its reply is
    /// lost (the sender cannot tell it from a lost request).
    pub drop_reply: f64,
    /// Chance that a Raft message is delivered a second time, later.
    pub duplicate: f64,
    /// Each message is delayed by a random time up to this, on top of the
    /// fixed delay.
    pub jitter: Duration,
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Deliver,
    DropRequest,
    DropReply,
    /// Delivered, and delivered again after this much more time.
    Duplicate(Duration),
}

/// The network. Clones share it.
#[derive(Clone, Default)]
pub struct MemNet {
    net: Arc<Mutex<Net>>,
}

#[derive(Debug, thiserror::Error)]
#[error("link {0} -> {1} is down")]
struct LinkDown(NodeId, NodeId);

impl MemNet {
    /// An empty network.
    pub fn new() -> MemNet {
        MemNet::default()
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes node `id` reachable.
    pub fn register(&self, id: NodeId, raft: Raft, state: StateReader) {
        self.lock().nodes.insert(id, (raft, state));
    }

    /// Makes node `id`'s replica answer pre-votes.
    pub fn register_replica(&self, id: NodeId, replica: &Arc<Replica<MemLink>>) {
        self.lock().replicas.insert(id, Arc::downgrade(replica));
    }

    /// Node `id`'s replica, if registered and alive.
    fn replica(&self, id: NodeId) -> Option<Arc<Replica<MemLink>>> {
        self.lock().replicas.get(&id).and_then(Weak::upgrade)
    }

    /// Removes node `id` (it crashed).
    pub fn unregister(&self, id: NodeId) {
        let mut n = self.lock();
        n.nodes.remove(&id);
        n.replicas.remove(&id);
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.lock().isolated.insert(id);
    }

    /// Cuts the link from `a` to `b` (one way).
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.lock().cut.insert((a, b));
    }

    /// Restores every link.
    pub fn heal(&self) {
        let mut n = self.lock();
        n.cut.clear();
        n.isolated.clear();
    }

    /// Delays every message by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Sets the random message faults, drawn from a generator seeded with
    /// `seed` (the same seed and the same order of messages give the same
    /// faults).
    pub fn set_faults(&self, faults: Faults, seed: u64) {
        let mut n = self.lock();
        n.faults = faults;
        n.rng = SmallRng::seed_from_u64(seed);
    }

    /// The target's handles, the message's delay and its fate, if the link
    /// from `from` works.
    fn route(&self, from: NodeId, to: NodeId) -> Result<((Raft, StateReader), Duration, Fate), LinkDown> {
        let mut n = self.lock();
        let down = n.isolated.contains(&from) || n.isolated.contains(&to) || n.cut.contains(&(from, to));
        let Some(h) = n.nodes.get(&to).cloned().filter(|_| !down) else {
            return Err(LinkDown(from, to));
        };
        let f = n.faults;
        let mut delay = n.delay;
        let mut fate = Fate::Deliver;
        if f != Faults::default() {
            let jitter = |rng: &mut SmallRng| {
                let us = u64::try_from(f.jitter.as_micros()).unwrap_or(u64::MAX);
                Duration::from_micros(if us == 0 { 0 } else { rng.gen_range(0..=us) })
            };
            delay += jitter(&mut n.rng);
            let roll: f64 = n.rng.r#gen();
            fate = if roll < f.drop_request {
                Fate::DropRequest
            } else if roll < f.drop_request + f.drop_reply {
                Fate::DropReply
            } else if roll < f.drop_request + f.drop_reply + f.duplicate {
                Fate::Duplicate(jitter(&mut n.rng) + Duration::from_millis(1))
            } else {
                Fate::Deliver
            };
        }
        Ok((h, delay, fate))
    }

    /// The openraft network factory for node `from`.
    pub fn factory(&self, from: NodeId) -> MemNetFactory {
        MemNetFactory { net: self.clone(), from }
    }

    /// The leader link for node `from`.
    pub fn link(&self, from: NodeId) -> MemLink {
        MemLink { net: self.clone(), from, to: from }
    }
}

/// Creates [`MemLink`]s for one node.
pub struct MemNetFactory {
    net: MemNet,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for MemNetFactory {
    type Network = MemLink;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> MemLink {
        MemLink { net: self.net.clone(), from: self.from, to: target }
    }
}

/// A link from one node to another.
pub struct MemLink {
    net: MemNet,
    from: NodeId,
    to: NodeId,
}

impl MemLink {
    /// Routes one message; a lost request fails here, after its delay.
    async fn target(&self, to: NodeId) -> Result<((Raft, StateReader), Fate), LinkDown> {
        let ((raft, state), delay, fate) = self.net.route(self.from, to)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fate == Fate::DropRequest {
            return Err(LinkDown(self.from, to));
        }
        Ok(((raft, state), fate))
    }

    /// Delivers one Raft message with its fate: `call` is run once, or
    /// twice for a duplicate (the copy later, its result ignored); a lost
    /// reply turns a handled message into a link error.
    async fn deliver<Req, Resp, E, Fut>(&self, req: Req, call: impl Fn(Raft, Req) -> Fut) -> Result<Resp, Lost<E>>
    where
        Req: Clone + Send + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
        Resp: Send + 'static,
        E: Send + 'static,
    {
        let ((raft, _), fate) = self.target(self.to).await.map_err(Lost::Link)?;
        if let Fate::Duplicate(after) = fate {
            let copy = call(raft.clone(), req.clone());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = copy.await;
            });
        }
        let result = call(raft, req).await.map_err(Lost::Remote)?;
        if fate == Fate::DropReply {
            return Err(Lost::Link(LinkDown(self.from, self.to)));
        }
        Ok(result)
    }
}

/// A message that did not come back.
enum Lost<E> {
    Link(LinkDown),
    Remote(E),
}

impl<E> Lost<E> {
    fn rpc(self, to: NodeId) -> RPCError<NodeId, Node, E>
    where
        E: std::error::Error,
    {
        match self {
            Lost::Link(e) => RPCError::Unreachable(Unreachable::new(&e)),
            Lost::Remote(e) => RPCError::RemoteError(RemoteError::new(to, e)),
        }
    }
}

type RpcResult<T> = Result<T, RPCError<NodeId, Node, RaftError<NodeId>>>;

impl RaftNetwork<TypeConfig> for MemLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let out = self
            .deliver(rpc, |raft, rpc| async move { raft.append_entries(rpc).await })
            .await
            .map_err(|e| e.rpc(self.to));
        // What the gRPC server does through `Replica::accept_append_entries`.
        if let (Ok(answer), Some(replica)) = (&out, self.net.replica(self.to)) {
            replica.answered_append(answer);
        }
        out
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.deliver(rpc, |raft, rpc| async move { raft.vote(rpc).await }).await.map_err(|e| e.rpc(self.to))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let ((raft, _), _) =
            self.target(self.to).await.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::RemoteError(RemoteError::new(self.to, e)))
    }
}

impl LeaderLink for MemLink {
    async fn propose(&self, leader: NodeId, p: Proposal) -> Result<Outcomes, ForwardError> {
        let ((raft, _), fate) = self.target(leader).await.map_err(|_| ForwardError::Unreachable(leader))?;
        // The leader's check of who may forward what, as over gRPC.
        p.check_forwarded_by(self.from).map_err(ForwardError::Refused)?;
        let out = propose_local(&raft, p).await.map_err(ForwardError::from)?;
        if fate == Fate::DropReply {
            // Committed, but the follower never hears: it retries, and the
            // command is applied twice (every command is idempotent).
            return Err(ForwardError::Unreachable(leader));
        }
        Ok(out)
    }

    async fn read(&self, leader: NodeId, r: ReadRequest) -> Result<Result<Answer, Errno>, ForwardError> {
        let ((raft, state), fate) = self.target(leader).await.map_err(|_| ForwardError::Unreachable(leader))?;
        // What the gRPC server does: the leader's replica answers, under
        // its lease.
        let out = match self.net.replica(leader) {
            Some(replica) => replica.read_here(&r).await,
            None => read_local(&raft, &state, &r).await,
        }
        .map_err(ForwardError::from)?;
        if fate == Fate::DropReply {
            return Err(ForwardError::Unreachable(leader));
        }
        Ok(out)
    }

    async fn pre_vote(&self, to: NodeId, last_log: Option<LogId>) -> Result<bool, ForwardError> {
        let (_, fate) = self.target(to).await.map_err(|_| ForwardError::Unreachable(to))?;
        let Some(replica) = self.net.replica(to) else { return Err(ForwardError::Unreachable(to)) };
        let yes = replica.answer_pre_vote(last_log).await;
        if fate == Fate::DropReply {
            return Err(ForwardError::Unreachable(to));
        }
        Ok(yes)
    }

    async fn campaign(&self, to: NodeId, order: Campaign) -> Result<(), ForwardError> {
        let ((raft, _), _) = self.target(to).await.map_err(|_| ForwardError::Unreachable(to))?;
        match self.net.replica(to) {
            Some(r) => r.obey(order, self.from).await,
            None => crate::membership::obey(&raft, true, order).await,
        }
    }
}
