//! The production transport: gRPC (tonic 0.14) between the nodes.
//!
//! * [`GrpcNet`] is openraft's network factory. It keeps one lazily
//!   connected HTTP/2 channel per peer address (a channel multiplexes every
//!   call to that peer) and hands out [`GrpcLink`]s.
//! * [`GrpcLink`] sends votes, appends and snapshots (a client stream of
//!   1 MiB chunks), each call under a deadline; it also forwards proposals,
//!   reads and campaign orders to the leader ([`LeaderLink`]).
//! * [`PeerService`] is the server side. It refuses a call meant for
//!   another node id, so a stale address cannot vote or commit.
//!
//! Payloads are openraft's serde types in postcard (see `proto/dmlogd/peer.proto`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, Snapshot};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Code, Request, Response, Status, Streaming};
use wire::{Answer, Errno};

use crate::pb::peer::peer_client::PeerClient;
use crate::pb::peer::peer_server::{Peer, PeerServer};
use crate::pb::peer::{Envelope, SnapshotChunk, snapshot_chunk};
use crate::replica::{Campaign, ForwardError, LeaderLink, ReadRequest, Replica};
use crate::types::{LogId, Node, NodeId, Outcomes, Proposal, Raft, SnapshotMeta, TypeConfig, Vote, decode, encode};

/// Largest message either side accepts: far above one snapshot chunk and
/// one append batch.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Snapshot chunk size.
pub const CHUNK: usize = 1 << 20;
/// How long one snapshot chunk may wait for the receiver before the
/// transfer is abandoned (openraft retries it).
pub const CHUNK_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline of a forwarded proposal or read (the caller's own deadline
/// also bounds it).
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(10);
/// The largest snapshot a node accepts from a peer. The region state of
/// even very large mirrors is a few bitmaps per log (32 Mi regions of a
/// 16 TiB mirror make 4 MiB each); a peer announcing more is refused before
/// anything is buffered.
pub const MAX_SNAPSHOT: u64 = 1 << 30;

/// The DNS name a node's certificate carries (as a subject alternative
/// name, beside its address) to speak as node `id`: `dmlogd-node-<id>`.
/// With TLS on, a peer call is answered only if the caller's certificate
/// names the node the call says it comes from.
pub fn node_name(id: NodeId) -> String {
    format!("dmlogd-node-{}", id.0)
}

/// Whether the certificate `der` names node `id` ([`node_name`]).
pub fn certificate_names(der: &rustls_pki_types::CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(name) = rustls_pki_types::ServerName::try_from(node_name(id)) else { return false };
    webpki::EndEntityCert::try_from(der).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Mutual TLS between the nodes of a cluster: the cluster's CA certificate
/// and this node's certificate and key, PEM. Each side presents its
/// certificate and accepts only a peer whose certificate the cluster's CA
/// signed (a node of another cluster, with another CA, fails the
/// handshake); a node's certificate must name the host part of its peer
/// address (IP or DNS subject alternative name).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The cluster CA's certificate.
    pub ca: Vec<u8>,
    /// This node's certificate (chain).
    pub cert: Vec<u8>,
    /// This node's private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("ca", &self.ca.len()).field("cert", &self.cert.len()).finish_non_exhaustive()
    }
}

impl PeerTls {
    /// The client side: present our certificate, trust only the CA.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// A server for tools rather than peers: present our certificate, ask
    /// for no client certificate (such a listener authenticates its
    /// callers otherwise, e.g. by token).
    pub fn server_for_tools(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// Checks that this node's certificate names node `id`
    /// ([`node_name`]): its peers answer nothing else.
    pub fn check_names(&self, id: NodeId) -> Result<(), String> {
        use rustls_pki_types::pem::PemObject;
        let first = rustls_pki_types::CertificateDer::pem_slice_iter(&self.cert)
            .next()
            .ok_or("the certificate file holds no certificate")?
            .map_err(|e| format!("the certificate: {e}"))?;
        if certificate_names(&first, id) {
            Ok(())
        } else {
            Err(format!(
                "the certificate does not name node {id} (it needs the DNS name {} among its subject \
                 alternative names; peers refuse a node's calls otherwise)",
                node_name(id)
            ))
        }
    }

    /// The server side: present our certificate, require a client
    /// certificate signed by the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }
}

/// The network factory: one channel per peer, shared by every link to it.
#[derive(Clone)]
pub struct GrpcNet {
    id: NodeId,
    cluster: Arc<str>,
    tls: Option<ClientTlsConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl GrpcNet {
    /// The network of node `id` of cluster `cluster`, over TLS when
    /// `tls` is given.
    pub fn new(id: NodeId, cluster: &str, tls: Option<&PeerTls>) -> GrpcNet {
        GrpcNet { id, cluster: cluster.into(), tls: tls.map(PeerTls::client), channels: Arc::default() }
    }

    /// The channel to `addr` (`host:port`), created lazily: no connection
    /// is made until the first call, and a broken one is redialled.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let ch = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    fn client(&self, addr: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        Ok(PeerClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// The link used by node `raft` to reach its leader, whoever that is.
    pub fn leader_link(&self, raft: Raft) -> GrpcLeaderLink {
        GrpcLeaderLink { net: self.clone(), raft }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNet {
    type Network = GrpcLink;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> GrpcLink {
        let client = self.client(&node.addr).map_err(|e| e.to_string());
        GrpcLink { from: self.id, cluster: self.cluster.clone(), to: target, client }
    }
}

/// A link to one peer.
pub struct GrpcLink {
    from: NodeId,
    cluster: Arc<str>,
    to: NodeId,
    client: Result<PeerClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcError = RPCError<NodeId, Node, RaftError<NodeId>>;

/// How a failed call looks to openraft: an unreachable peer backs off, a
/// transient failure is retried.
fn status_to_rpc<E: std::error::Error>(s: &Status) -> RPCError<NodeId, Node, E> {
    let e = TransportError(format!("{}: {}", s.code(), s.message()));
    match s.code() {
        Code::Unavailable | Code::FailedPrecondition | Code::Unimplemented => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl GrpcLink {
    fn envelope<T: Serialize>(&self, to: NodeId, v: &T) -> Result<Envelope, TransportError> {
        let payload = encode(v).map_err(|e| TransportError(format!("encode: {e}")))?;
        Ok(Envelope { from: self.from.0, to: to.0, payload, cluster: self.cluster.to_string() })
    }

    fn client(&self) -> Result<PeerClient<Channel>, TransportError> {
        self.client.clone().map_err(TransportError)
    }

    /// One unary Raft call under `ttl`.
    async fn unary<Req, Resp>(
        &mut self,
        req: &Req,
        ttl: Duration,
        call: impl AsyncFnOnce(PeerClient<Channel>, Request<Envelope>) -> Result<Response<Envelope>, Status>,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let env = self.envelope(self.to, req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = Request::new(env);
        request.set_timeout(ttl);
        let reply = match tokio::time::timeout(ttl, call(client, request)).await {
            Err(_) => return Err(RPCError::Network(NetworkError::new(&TransportError("deadline exceeded".into())))),
            Ok(Err(s)) => return Err(status_to_rpc(&s)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.unary(&rpc, option.hard_ttl(), async |mut c, r| c.append_entries(r).await).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcError> {
        self.unary(&rpc, option.hard_ttl(), async |mut c, r| c.vote(r).await).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let unreachable = |e: &TransportError| StreamingError::Unreachable(Unreachable::new(e));
        let data = *snapshot.snapshot;
        let head = SnapshotHead { vote, meta: snapshot.meta, len: data.len() as u64 };
        let meta = self.envelope(self.to, &head).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(|e| unreachable(&e))?;
        // A feeder task pushes the chunks; each one must be taken by the
        // receiver within CHUNK_DEADLINE, or the stream ends short and the
        // receiver refuses the incomplete snapshot.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let feeder = tokio::spawn(async move {
            let first = SnapshotChunk { kind: Some(snapshot_chunk::Kind::Meta(meta)) };
            if tx.send_timeout(first, CHUNK_DEADLINE).await.is_err() {
                return;
            }
            for piece in data.chunks(CHUNK) {
                let c = SnapshotChunk { kind: Some(snapshot_chunk::Kind::Data(piece.to_vec())) };
                if tx.send_timeout(c, CHUNK_DEADLINE).await.is_err() {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let result = tokio::select! {
            r = client.install_snapshot(stream) => r,
            closed = cancel => {
                feeder.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        feeder.abort();
        let reply = result.map_err(|s| unreachable(&TransportError(format!("{}: {}", s.code(), s.message()))))?;
        let out: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> = decode(&reply.into_inner().payload)
            .map_err(|e| StreamingError::Network(NetworkError::new(&TransportError(e.to_string()))))?;
        out.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.to, e)))
    }
}

/// The first message of a snapshot stream.
#[derive(Serialize, serde::Deserialize)]
struct SnapshotHead {
    vote: Vote,
    meta: SnapshotMeta,
    /// Total data length, so a stream cut short is recognised.
    len: u64,
}

/// Forwards proposals, reads and campaign orders to the leader, found in
/// the membership this node knows.
#[derive(Clone)]
pub struct GrpcLeaderLink {
    net: GrpcNet,
    raft: Raft,
}

impl GrpcLeaderLink {
    fn addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// One forwarded call: `Result<T, ForwardError>` comes back.
    async fn forward<Req: Serialize, T: DeserializeOwned>(
        &self,
        to: NodeId,
        req: &Req,
        call: impl AsyncFnOnce(PeerClient<Channel>, Request<Envelope>) -> Result<Response<Envelope>, Status>,
    ) -> Result<T, ForwardError> {
        let addr = self.addr(to).ok_or(ForwardError::Unreachable(to))?;
        let client = self.net.client(&addr).map_err(|_| ForwardError::Unreachable(to))?;
        let payload = encode(req).map_err(|e| ForwardError::Fatal(e.to_string()))?;
        let mut request =
            Request::new(Envelope { from: self.net.id.0, to: to.0, payload, cluster: self.net.cluster.to_string() });
        request.set_timeout(FORWARD_DEADLINE);
        let reply = match tokio::time::timeout(FORWARD_DEADLINE, call(client, request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(_)) | Err(_) => return Err(ForwardError::Unreachable(to)),
        };
        let out: Result<T, ForwardError> = decode(&reply.payload).map_err(|_| ForwardError::Unreachable(to))?;
        out
    }

    /// Sends a campaign order to `to`.
    pub async fn campaign(&self, to: NodeId, order: Campaign) -> Result<(), ForwardError> {
        self.forward(to, &order, async |mut c, r| c.campaign(r).await).await
    }
}

impl LeaderLink for GrpcLeaderLink {
    async fn propose(&self, leader: NodeId, p: Proposal) -> Result<Outcomes, ForwardError> {
        self.forward(leader, &p, async |mut c, r| c.propose(r).await).await
    }

    async fn read(&self, leader: NodeId, r: ReadRequest) -> Result<Result<Answer, Errno>, ForwardError> {
        self.forward(leader, &r, async |mut c, req| c.read(req).await).await
    }

    async fn campaign(&self, to: NodeId, order: Campaign) -> Result<(), ForwardError> {
        GrpcLeaderLink::campaign(self, to, order).await
    }

    async fn pre_vote(&self, to: NodeId, last_log: Option<LogId>) -> Result<bool, ForwardError> {
        self.forward(to, &last_log, async |mut c, r| c.pre_vote(r).await).await
    }
}

/// The server side of `dmlogd.peer.Peer` for one node.
pub struct PeerService {
    replica: Arc<Replica<GrpcLeaderLink>>,
    cluster: String,
    /// One warning per kind of refusal per minute, with a count.
    refusals: Mutex<HashMap<&'static str, (std::time::Instant, u64)>>,
}

/// The client certificates of a call (TLS only).
type PeerCerts = Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>;

impl PeerService {
    /// Serves `replica`'s node, a member of `cluster`.
    pub fn new(replica: Arc<Replica<GrpcLeaderLink>>, cluster: &str) -> PeerService {
        PeerService { replica, cluster: cluster.to_owned(), refusals: Mutex::default() }
    }

    /// Logs a refused call: the first of its kind at once, then at most one
    /// line a minute with the number refused meanwhile.
    fn warn_refused(&self, kind: &'static str, from: u64, why: &str) {
        let now = std::time::Instant::now();
        let mut seen = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(kind).or_insert((now - Duration::from_secs(3600), 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            tracing::warn!(from, refused = entry.1, "refused a peer call ({kind}): {why}");
            *entry = (now, 0);
        }
    }

    /// The tonic service, with raised message limits.
    pub fn into_server(self) -> PeerServer<PeerService> {
        PeerServer::new(self).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
    }

    fn open<T: DeserializeOwned>(&self, env: &Envelope, certs: &PeerCerts) -> Result<T, Status> {
        if env.cluster != self.cluster {
            let why = format!(
                "this is node {} of cluster {:?}; node {} of cluster {:?} may not call it",
                self.replica.id, self.cluster, env.from, env.cluster
            );
            self.warn_refused("another cluster", env.from, &why);
            return Err(Status::permission_denied(why));
        }
        // With TLS, the caller is who its certificate names, not who the
        // envelope says.
        if let Some(certs) = certs
            && !certs.first().is_some_and(|c| certificate_names(c, NodeId(env.from)))
        {
            let why = format!(
                "the caller's certificate does not name node {} (DNS name {}): a node may only speak as itself",
                env.from,
                node_name(NodeId(env.from))
            );
            self.warn_refused("certificate of another node", env.from, &why);
            return Err(Status::permission_denied(why));
        }
        if NodeId(env.to) != self.replica.id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {} (stale address?)",
                self.replica.id, env.to
            )));
        }
        decode(&env.payload).map_err(|e| Status::invalid_argument(format!("payload from node {}: {e}", env.from)))
    }

    fn seal<T: Serialize>(&self, to: NodeId, v: &T) -> Result<Response<Envelope>, Status> {
        let payload = encode(v).map_err(|e| Status::internal(format!("encode: {e}")))?;
        Ok(Response::new(Envelope { from: self.replica.id.0, to: to.0, payload, cluster: self.cluster.clone() }))
    }

    fn raft(&self) -> &Raft {
        &self.replica.raft
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn vote(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let certs = request.peer_certs();
        let env = request.into_inner();
        let req: VoteRequest<NodeId> = self.open(&env, &certs)?;
        let out = self.raft().vote(req).await;
        self.seal(NodeId(env.from), &out)
    }

    async fn append_entries(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let certs = request.peer_certs();
        let env = request.into_inner();
        let req: AppendEntriesRequest<TypeConfig> = self.open(&env, &certs)?;
        let out = self.replica.accept_append_entries(req).await;
        self.seal(NodeId(env.from), &out)
    }

    async fn install_snapshot(&self, request: Request<Streaming<SnapshotChunk>>) -> Result<Response<Envelope>, Status> {
        let certs = request.peer_certs();
        let mut stream = request.into_inner();
        let first = stream.message().await?.and_then(|c| c.kind);
        let Some(snapshot_chunk::Kind::Meta(env)) = first else {
            return Err(Status::invalid_argument("a snapshot stream starts with its metadata"));
        };
        let head: SnapshotHead = self.open(&env, &certs)?;
        if head.len > MAX_SNAPSHOT {
            let why = format!("a snapshot of {} bytes is over the {MAX_SNAPSHOT}-byte bound", head.len);
            self.warn_refused("snapshot too large", env.from, &why);
            return Err(Status::resource_exhausted(why));
        }
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            match chunk.kind {
                Some(snapshot_chunk::Kind::Data(d)) => data.extend_from_slice(&d),
                _ => return Err(Status::invalid_argument("a second metadata message in a snapshot stream")),
            }
            if data.len() as u64 > head.len {
                return Err(Status::invalid_argument("snapshot longer than announced"));
            }
        }
        if data.len() as u64 != head.len {
            return Err(Status::aborted(format!("snapshot cut short: {} of {} bytes", data.len(), head.len)));
        }
        let snapshot = Snapshot { meta: head.meta, snapshot: Box::new(data) };
        let out = self.raft().install_full_snapshot(head.vote, snapshot).await;
        self.seal(NodeId(env.from), &out)
    }

    async fn propose(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let certs = request.peer_certs();
        let env = request.into_inner();
        let p: Proposal = self.open(&env, &certs)?;
        if let Err(why) = p.check_forwarded_by(NodeId(env.from)) {
            self.warn_refused("a command the peer may not originate", env.from, &why);
            return self.seal(NodeId(env.from), &Err::<Outcomes, _>(ForwardError::Refused(why)));
        }
        let out = self.replica.propose_here(p).await.map_err(ForwardError::from);
        self.seal(NodeId(env.from), &out)
    }

    async fn read(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let certs = request.peer_certs();
        let env = request.into_inner();
        let r: ReadRequest = self.open(&env, &certs)?;
        let out = self.replica.read_here(&r).await.map_err(ForwardError::from);
        self.seal(NodeId(env.from), &out)
    }

    async fn campaign(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let certs = request.peer_certs();
        let env = request.into_inner();
        let order: Campaign = self.open(&env, &certs)?;
        let out = self.replica.obey(order, NodeId(env.from)).await;
        self.seal(NodeId(env.from), &out)
    }

    async fn pre_vote(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let certs = request.peer_certs();
        let env = request.into_inner();
        let last_log: Option<LogId> = self.open(&env, &certs)?;
        let out: Result<bool, ForwardError> = Ok(self.replica.answer_pre_vote(last_log).await);
        self.seal(NodeId(env.from), &out)
    }
}
