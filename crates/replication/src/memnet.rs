//! An in-memory network between the Raft nodes of one process, with faults
//! (cut links, isolated nodes, lost messages, delays), for tests and the
//! cluster simulation. Calls go straight to the target node's Raft handle.
//! The production transport is gRPC; both implement the same openraft
//! network traits and the same [`LeaderLink`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::error::{Fatal, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, Snapshot};
use wire::{Answer, Errno};

use crate::replica::{ForwardError, LeaderLink, Local, ReadRequest, propose_local, read_local};
use crate::state_machine::StateReader;
use crate::types::{Node, NodeId, Outcomes, Proposal, Raft, TypeConfig, Vote};

#[derive(Default)]
struct Net {
    nodes: BTreeMap<NodeId, (Raft, StateReader)>,
    cut: BTreeSet<(NodeId, NodeId)>,
    isolated: BTreeSet<NodeId>,
    delay: Duration,
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

    /// Removes node `id` (it crashed).
    pub fn unregister(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
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

    /// The target's handles, if the link from `from` works.
    fn route(&self, from: NodeId, to: NodeId) -> Result<((Raft, StateReader), Duration), LinkDown> {
        let n = self.lock();
        let down = n.isolated.contains(&from) || n.isolated.contains(&to) || n.cut.contains(&(from, to));
        match n.nodes.get(&to) {
            Some(h) if !down => Ok((h.clone(), n.delay)),
            _ => Err(LinkDown(from, to)),
        }
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
    async fn target(&self, to: NodeId) -> Result<(Raft, StateReader), LinkDown> {
        let ((raft, state), delay) = self.net.route(self.from, to)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok((raft, state))
    }
}

type RpcResult<T> = Result<T, RPCError<NodeId, Node, RaftError<NodeId>>>;

impl RaftNetwork<TypeConfig> for MemLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let (raft, _) = self.target(self.to).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        raft.append_entries(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let (raft, _) = self.target(self.to).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        raft.vote(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let (raft, _) = self.target(self.to).await.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::RemoteError(RemoteError::new(self.to, e)))
    }
}

fn forward_err(l: Local) -> ForwardError {
    match l {
        Local::Forward(_) => ForwardError::NotLeader,
        Local::Fatal(e) => ForwardError::Fatal(e),
    }
}

impl LeaderLink for MemLink {
    async fn propose(&self, leader: NodeId, p: Proposal) -> Result<Outcomes, ForwardError> {
        let (raft, _) = self.target(leader).await.map_err(|_| ForwardError::Unreachable(leader))?;
        propose_local(&raft, p).await.map_err(forward_err)
    }

    async fn read(&self, leader: NodeId, r: ReadRequest) -> Result<Result<Answer, Errno>, ForwardError> {
        let (raft, state) = self.target(leader).await.map_err(|_| ForwardError::Unreachable(leader))?;
        read_local(&raft, &state, &r).await.map_err(forward_err)
    }
}
