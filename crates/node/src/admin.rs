//! The server side of `dmlogd.admin.Admin` (`proto/dmlogd/admin.proto`):
//! status, the mirror logs and membership changes, for `dmlogctl`.
//!
//! Reads answer from this node's applied state and say how far that is
//! (`last_applied`). A change asked of a follower is refused with
//! FAILED_PRECONDITION naming the leader and its address (`leader-id`,
//! `leader-addr` metadata), so the client can ask there. The daemon serves
//! this on a Unix socket only root can open (see [`serve_unix`]).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use regions::Phase;
use replication::Replica;
use replication::grpc::GrpcLeaderLink;
use replication::membership::{ChangeError, MemberInfo};
/// Code generated from `proto/dmlogd/admin.proto`: the messages and the
/// client `dmlogctl` uses.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("dmlogd.admin");
}

use self::pb::admin_server::{Admin, AdminServer};
use self::pb::{
    AddNodeRequest, ChangeReply, DiskState, Instance, KernelMember, LogReply, LogRequest, LogSummary, LogsReply,
    LogsRequest, Member, Progress, RegionMarks, RemoveNodeRequest, ResyncReply, ResyncRequest, StatusReply,
    StatusRequest, TransferLeaderRequest,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use wire::Uuid;

/// How long a membership change may take (a learner catching up from a
/// snapshot is the slow part).
pub const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// How long a joiner has to receive the log as a learner, unless the
/// request says.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(30);

/// The admin service of one node.
pub struct AdminService {
    replica: Arc<Replica<GrpcLeaderLink>>,
    gate: crate::gate::Gate,
}

impl AdminService {
    /// Serves `replica`'s node, whose answers to its kernel pass `gate`.
    pub fn new(replica: Arc<Replica<GrpcLeaderLink>>, gate: crate::gate::Gate) -> AdminService {
        AdminService { replica, gate }
    }

    /// The tonic service.
    pub fn into_server(self) -> AdminServer<AdminService> {
        AdminServer::new(self)
    }

    fn refuse(&self, e: ChangeError) -> Status {
        match e {
            ChangeError::NotLeader(leader) => {
                let mut s = Status::failed_precondition(e.to_string());
                if let Some(l) = leader {
                    let addr = self.replica.members().into_iter().find(|m| m.id == l).map(|m| m.addr);
                    if let Ok(v) = l.to_string().parse() {
                        s.metadata_mut().insert("leader-id", v);
                    }
                    if let Some(v) = addr.and_then(|a| a.parse().ok()) {
                        s.metadata_mut().insert("leader-addr", v);
                    }
                }
                s
            }
            ChangeError::Retired(_)
            | ChangeError::AlreadyMember(_)
            | ChangeError::NotAMember(_)
            | ChangeError::NotAVoter(_)
            | ChangeError::LastVoter(_) => Status::invalid_argument(e.to_string()),
            ChangeError::Timeout => Status::deadline_exceeded(e.to_string()),
            ChangeError::NotCaughtUp { .. } => Status::failed_precondition(e.to_string()),
            ChangeError::Raft(_) => Status::unavailable(e.to_string()),
        }
    }

    fn last_applied(&self) -> u64 {
        self.replica.state.last_applied().map_or(0, |l| l.index)
    }

    fn reply(&self) -> ChangeReply {
        let leader = self.replica.leader().map_or(0, |l| l.0);
        ChangeReply { leader, members: members(self.replica.members()) }
    }
}

/// Counts and instances of one log.
fn summary(log: &regions::Log) -> LogSummary {
    let n = log.region_count();
    let marked: std::collections::BTreeMap<regions::Instance, u64> =
        log.marks().values().flatten().fold(Default::default(), |mut acc, i| {
            *acc.entry(*i).or_default() += 1;
            acc
        });
    LogSummary {
        uuid: log.uuid().to_string(),
        log_type: log.args().log_type.name().to_owned(),
        regions: n,
        region_size: log.args().region_size,
        in_sync: log.sync_count(),
        out_of_sync: n - log.sync_count(),
        dirty: n - log.clean_bits().count_ones(),
        recovering: log.assignments().len() as u64,
        disk: match &log.args().log_type {
            regions::LogType::Disk { device } => Some(DiskState {
                device: device.clone(),
                writer: log.disk_writer().map_or(0, |n| n.0),
                clean_version: log.clean_version(),
                durable_version: log.disk_version(),
                failed: log.disk_failed_version().is_some(),
            }),
            regions::LogType::Core => None,
        },
        instances: log
            .instances()
            .iter()
            .map(|(i, st)| Instance {
                node: i.node.0,
                luid: i.luid.0,
                state: match st.phase {
                    Phase::Constructed => "registered",
                    Phase::Resumed | Phase::Presuspended => "resumed",
                    Phase::Suspended => "suspended",
                }
                .to_owned(),
                marks: marked.get(i).copied().unwrap_or(0),
                recovering: log.assignments().get(i).map(|r| r.0),
            })
            .collect(),
    }
}

/// Serves `service` on a Unix socket at `path` that only its owner (root,
/// for the daemon) may open: the socket is created under a umask of 077
/// semantics by setting mode 0600 before anyone can connect (the listener
/// accepts nothing until the returned future runs).
pub async fn serve_unix(
    service: AdminService,
    path: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let server = tonic::transport::Server::builder().add_service(service.into_server());
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, "admin socket stopped");
        }
    }))
}

/// Serves the admin API on TCP for remote tools: TLS only (the node's
/// certificate), and every call must carry `authorization: Bearer <token>`
/// (refused with UNAUTHENTICATED otherwise). Off unless configured; the
/// Unix socket stays the way for local tools.
pub async fn serve_tcp(
    service: AdminService,
    listener: tokio::net::TcpListener,
    tls: tonic::transport::ServerTlsConfig,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let expected = format!("Bearer {token}").into_bytes();
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        let given = req.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
        if constant_time_eq(given, &expected) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("the admin API needs a valid token (authorization: Bearer …)"))
        }
    };
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| format!("admin tls: {e}"))?
        .add_service(AdminServer::with_interceptor(service, check));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, "admin TCP listener stopped");
        }
    }))
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn members(list: Vec<MemberInfo>) -> Vec<Member> {
    list.into_iter().map(|m| Member { id: m.id.0, addr: m.addr, voter: m.voter }).collect()
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let quorum = self.gate.quorum();
        let reply = {
            let m = self.replica.metrics();
            let m = m.borrow();
            StatusReply {
                id: m.id.0,
                role: role(m.state).to_owned(),
                leader: m.current_leader.map_or(0, |l| l.0),
                term: m.current_term,
                last_log_index: m.last_log_index.unwrap_or(0),
                last_applied: m.last_applied.map_or(0, |l| l.index),
                members: Vec::new(),
                millis_since_quorum_ack: m.millis_since_quorum_ack.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
                replication: m
                    .replication
                    .iter()
                    .flat_map(|r| r.iter())
                    .map(|(id, matched)| Progress { id: id.0, matched: matched.map_or(0, |l| l.index) })
                    .collect(),
                fenced: self.gate.is_closed(),
                violation: String::new(),
                kernels: Vec::new(),
                standing: self.gate.standing().describe(),
                fence_failed: matches!(self.gate.standing(), crate::gate::Standing::FenceFailed(_)),
                quorum: quorum.holds(),
                millis_since_quorum: quorum.age.map_or(-1, |a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
                quorum_bound_millis: u64::try_from(quorum.bound.as_millis()).unwrap_or(u64::MAX),
                lease_millis: u64::try_from(quorum.lease.as_millis()).unwrap_or(u64::MAX),
            }
        };
        let (violation, kernels) = self.replica.state.read(|m| {
            let v = m.check().err().map(|v| v.to_string()).unwrap_or_default();
            let k = m.members().iter().map(|(n, mm)| KernelMember { id: n.0, incarnation: mm.incarnation }).collect();
            (v, k)
        });
        Ok(Response::new(StatusReply { members: members(self.replica.members()), violation, kernels, ..reply }))
    }

    async fn logs(&self, _request: Request<LogsRequest>) -> Result<Response<LogsReply>, Status> {
        let logs = self.replica.state.read(|m| m.logs().values().map(summary).collect());
        Ok(Response::new(LogsReply { logs, last_applied: self.last_applied() }))
    }

    async fn log(&self, request: Request<LogRequest>) -> Result<Response<LogReply>, Status> {
        let r = request.into_inner();
        let uuid =
            Uuid::new(&r.uuid).ok_or_else(|| Status::invalid_argument(format!("{:?} is not a log uuid", r.uuid)))?;
        let width = if r.width == 0 { 64 } else { r.width as usize };
        let max_chars = if r.max_chars == 0 { 1024 } else { r.max_chars };
        let reply = self.replica.state.read(|m| {
            let log = m.log(&uuid)?;
            Some(LogReply {
                summary: Some(summary(log)),
                region_map: log.region_map(width, max_chars),
                regions_per_char: log.region_count().div_ceil(max_chars).max(1),
                marks: log
                    .marks()
                    .iter()
                    .map(|(region, who)| {
                        let mut nodes: Vec<u64> = who.iter().map(|i| i.node.0).collect();
                        nodes.dedup();
                        RegionMarks { region: region.0, nodes }
                    })
                    .collect(),
                last_applied: 0,
            })
        });
        let reply = reply.ok_or_else(|| Status::not_found(format!("no log {uuid}")))?;
        Ok(Response::new(LogReply { last_applied: self.last_applied(), ..reply }))
    }

    async fn add_node(&self, request: Request<AddNodeRequest>) -> Result<Response<ChangeReply>, Status> {
        let r = request.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("node id 0 is reserved"));
        }
        if r.addr.parse::<std::net::SocketAddr>().is_err() && !r.addr.contains(':') {
            return Err(Status::invalid_argument(format!("address {:?} is not host:port", r.addr)));
        }
        let catch_up = if r.catch_up_millis == 0 { DEFAULT_CATCH_UP } else { Duration::from_millis(r.catch_up_millis) };
        let deadline = Instant::now() + catch_up + CHANGE_DEADLINE;
        self.replica.add_node(regions::NodeId(r.id), &r.addr, catch_up, deadline).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(self.reply()))
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Result<Response<ChangeReply>, Status> {
        let r = request.into_inner();
        let deadline = Instant::now() + CHANGE_DEADLINE;
        self.replica.remove_node(regions::NodeId(r.id), deadline).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(self.reply()))
    }

    async fn transfer_leader(&self, request: Request<TransferLeaderRequest>) -> Result<Response<ChangeReply>, Status> {
        let r = request.into_inner();
        let deadline = Instant::now() + CHANGE_DEADLINE;
        self.replica.transfer_leader(regions::NodeId(r.to), deadline).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(self.reply()))
    }

    async fn resync(&self, request: Request<ResyncRequest>) -> Result<Response<ResyncReply>, Status> {
        let r = request.into_inner();
        let uuid =
            wire::Uuid::new(&r.uuid).ok_or_else(|| Status::invalid_argument(format!("bad uuid {:?}", r.uuid)))?;
        let proposal = replication::Proposal { commands: vec![regions::Command::Resync { uuid: uuid.clone() }] };
        let outcomes = self
            .replica
            .propose(proposal, Instant::now() + CHANGE_DEADLINE)
            .await
            .map_err(|e| Status::unavailable(format!("not committed: {e}")))?;
        if let Some(why) = outcomes.0.first().and_then(|o| o.refusal.clone()) {
            return Err(Status::not_found(why));
        }
        tracing::warn!(%uuid, "full resync requested by an administrator");
        let counts =
            self.replica.state.read(|m| m.log(&uuid).map(|l| (l.region_count() - l.sync_count(), l.region_count())));
        let (out_of_sync, regions) = counts.unwrap_or((0, 0));
        Ok(Response::new(ResyncReply { out_of_sync, regions }))
    }
}
