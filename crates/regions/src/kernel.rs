//! From a decoded kernel request to the machine and back: which requests are
//! commands (replicated) and which are queries (read-only), and the answer
//! the kernel gets.

use wire::{Answer, Errno, Frame, Message, Reply, Request, Uuid};

use crate::command::{Applied, Command, Effect, Instance, KernelOp, NodeId, Query};
use crate::machine::Machine;

/// Where a kernel request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// A state change: replicate, then apply.
    Command(Command),
    /// A read: answer from state at least as new as the request.
    Query {
        /// The log.
        uuid: Uuid,
        /// The asking instance.
        instance: Instance,
        /// What it asks.
        query: Query,
    },
}

/// Classifies a request from `node`'s kernel. GET_RESYNC_WORK is a command
/// (it assigns a region); IS_REMOTE_RECOVERING is a query.
pub fn route(node: NodeId, msg: &Message) -> Routed {
    let uuid = msg.uuid.clone();
    let instance = Instance { node, luid: msg.luid() };
    let cmd = |op| Routed::Command(Command::Kernel { uuid: uuid.clone(), instance, op });
    let query = |query| Routed::Query { uuid: uuid.clone(), instance, query };
    match &msg.request {
        Request::Ctr { args, .. } => cmd(KernelOp::Ctr { args: args.clone() }),
        Request::Dtr => cmd(KernelOp::Dtr),
        Request::Presuspend => cmd(KernelOp::Presuspend),
        Request::Postsuspend => cmd(KernelOp::Postsuspend),
        Request::Resume => cmd(KernelOp::Resume { disk: None }),
        Request::Flush { marks } => cmd(KernelOp::Flush { marks: marks.clone() }),
        Request::MarkRegion(rs) => cmd(KernelOp::Mark(rs.clone())),
        Request::ClearRegion(rs) => cmd(KernelOp::Clear(rs.clone())),
        Request::GetResyncWork => cmd(KernelOp::GetResyncWork),
        Request::SetRegionSync { region, in_sync } => {
            cmd(KernelOp::SetRegionSync { region: *region, in_sync: *in_sync })
        }
        Request::GetRegionSize => query(Query::GetRegionSize),
        Request::IsClean(r) => query(Query::IsClean(*r)),
        Request::InSync(r) => query(Query::InSync(*r)),
        Request::GetSyncCount => query(Query::GetSyncCount),
        Request::StatusInfo => query(Query::StatusInfo),
        Request::StatusTable => query(Query::StatusTable),
        // A command: its answer may let an unmarked write through, which
        // the state must remember (see `Log::halted_passes`).
        Request::IsRemoteRecovering(r) => cmd(KernelOp::IsRemoteRecovering(*r)),
    }
}

/// The answer the kernel gets for `request`. The reconnect CTR has no
/// receive buffer, so a disk log's device name is dropped there (spec §1.8).
pub fn kernel_answer(request: &Request, outcome: Result<Answer, Errno>) -> Result<Answer, Errno> {
    match (request, outcome) {
        (Request::Ctr { reconnect: true, .. }, Ok(_)) => Ok(Answer::Done),
        (_, outcome) => outcome,
    }
}

impl Machine {
    /// Handles one kernel request in place, without replication: route,
    /// apply or read, answer. For single-process use (tests, the kernel
    /// simulator's demo); the daemon replicates commands first.
    pub fn handle(&mut self, node: NodeId, msg: &Message) -> (Result<Answer, Errno>, Vec<Effect>) {
        let (outcome, effects) = match route(node, msg) {
            Routed::Command(c) => {
                let Applied { outcome, effects } = self.apply(&c);
                (outcome, effects)
            }
            Routed::Query { uuid, instance, query } => (self.read(&uuid, instance, &query), Vec::new()),
        };
        (kernel_answer(&msg.request, outcome.map_err(|r| r.errno())), effects)
    }

    /// Answers one request datagram with one reply datagram, in place (see
    /// [`Machine::handle`]). A datagram whose framing is wrong gets no reply
    /// (the kernel's connector would drop a reply to it too); one whose
    /// content is invalid gets `-EINVAL`.
    pub fn respond(&mut self, node: NodeId, datagram: &[u8]) -> Option<Vec<u8>> {
        let frame = Frame::parse(datagram).ok()?;
        let reply = match frame.message() {
            Ok(msg) => {
                let (result, _effects) = self.handle(node, &msg);
                Reply::new(&msg, result).unwrap_or_else(|_| Reply::error(frame.header(), Errno::EINVAL))
            }
            Err(_) => Reply::error(frame.header(), Errno::EINVAL),
        };
        Some(reply.encode())
    }
}
