//! The server side of `dmlogd.admin.Admin`: status and membership changes
//! for `dmlogctl`. A change asked of a follower is refused with
//! FAILED_PRECONDITION naming the leader and its address (`leader-id`,
//! `leader-addr` metadata), so the client can ask there.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::grpc::GrpcLeaderLink;
use crate::membership::{ChangeError, MemberInfo};
use crate::pb::admin::admin_server::{Admin, AdminServer};
use crate::pb::admin::{
    AddNodeRequest, ChangeReply, Member, RemoveNodeRequest, StatusReply, StatusRequest, TransferLeaderRequest,
};
use crate::replica::Replica;

/// How long a membership change may take (a learner catching up from a
/// snapshot is the slow part).
pub const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// The admin service of one node.
pub struct AdminService {
    replica: Arc<Replica<GrpcLeaderLink>>,
}

impl AdminService {
    /// Serves `replica`'s node.
    pub fn new(replica: Arc<Replica<GrpcLeaderLink>>) -> AdminService {
        AdminService { replica }
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
            ChangeError::Raft(_) => Status::unavailable(e.to_string()),
        }
    }

    fn reply(&self) -> ChangeReply {
        let leader = self.replica.leader().unwrap_or(0);
        ChangeReply { leader, members: members(self.replica.members()) }
    }
}

fn members(list: Vec<MemberInfo>) -> Vec<Member> {
    list.into_iter().map(|m| Member { id: m.id, addr: m.addr, voter: m.voter }).collect()
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
        let reply = {
            let m = self.replica.raft.metrics();
            let m = m.borrow();
            StatusReply {
                id: m.id,
                role: role(m.state).to_owned(),
                leader: m.current_leader.unwrap_or(0),
                term: m.current_term,
                last_log_index: m.last_log_index.unwrap_or(0),
                last_applied: m.last_applied.map_or(0, |l| l.index),
                members: Vec::new(),
                millis_since_quorum_ack: m.millis_since_quorum_ack.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
            }
        };
        Ok(Response::new(StatusReply { members: members(self.replica.members()), ..reply }))
    }

    async fn add_node(&self, request: Request<AddNodeRequest>) -> Result<Response<ChangeReply>, Status> {
        let r = request.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("node id 0 is reserved"));
        }
        if r.addr.parse::<std::net::SocketAddr>().is_err() && !r.addr.contains(':') {
            return Err(Status::invalid_argument(format!("address {:?} is not host:port", r.addr)));
        }
        let deadline = Instant::now() + CHANGE_DEADLINE;
        self.replica.add_node(r.id, &r.addr, deadline).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(self.reply()))
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Result<Response<ChangeReply>, Status> {
        let r = request.into_inner();
        let deadline = Instant::now() + CHANGE_DEADLINE;
        self.replica.remove_node(r.id, deadline).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(self.reply()))
    }

    async fn transfer_leader(&self, request: Request<TransferLeaderRequest>) -> Result<Response<ChangeReply>, Status> {
        let r = request.into_inner();
        let deadline = Instant::now() + CHANGE_DEADLINE;
        self.replica.transfer_leader(r.to, deadline).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(self.reply()))
    }
}
