//! The pure steps of a kernel request's path, shared by everything that
//! answers a kernel: the host pipeline ([`crate::host`]), and the
//! in-process test drivers that apply commands to a machine directly.
//!
//! ```text
//! datagram ──decode──▶ Message ──route──▶ Command (replicate, apply) ─┐
//!    │ framing broken: drop        └────▶ Query   (read)           ──┤
//!    │ content broken: EINVAL reply                                   ▼
//!    └──────────────────────────────────────── reply(message, outcome) ──▶ datagram
//! ```
//!
//! Nothing here does I/O or waits: replication, the lease and the send
//! are the host's. There is exactly one place that turns an outcome into
//! the bytes the kernel gets ([`reply`]).

use regions::{Command, Instance, KernelOp, NodeId, Query};
use wire::{Answer, Errno, Frame, Message, Reply, Request, Uuid};

/// A received datagram, decoded as far as it goes.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed request.
    Request(Message),
    /// It frames (its seq is known) but its content does not decode: the
    /// `-EINVAL` reply to send, so the kernel does not wait 15 s for
    /// nothing.
    Malformed {
        /// The reply.
        reply: Vec<u8>,
        /// What was wrong, for the log.
        why: String,
    },
    /// The framing is broken (no trustworthy seq) or it is not for us:
    /// dropped without a reply.
    Dropped,
}

/// Decodes one datagram from a kernel.
pub fn decode(datagram: &[u8]) -> Incoming {
    let Ok(frame) = Frame::parse(datagram) else { return Incoming::Dropped };
    match frame.message() {
        Ok(msg) => Incoming::Request(msg),
        Err(e) => {
            Incoming::Malformed { reply: Reply::error(frame.header(), Errno::EINVAL).encode(), why: e.to_string() }
        }
    }
}

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

/// Classifies a request from `node`'s kernel, a command made in `session`
/// ([`regions::Command::NodeJoined`]). GET_RESYNC_WORK and
/// IS_REMOTE_RECOVERING are commands: the first assigns a region, the
/// second may let an unmarked write through, which the state must remember
/// (see `regions::Log::halted_passes`).
pub fn route(node: NodeId, session: u64, msg: &Message) -> Routed {
    let uuid = msg.uuid.clone();
    let instance = Instance { node, luid: msg.luid() };
    let cmd = |op| Routed::Command(Command::Kernel { uuid: uuid.clone(), instance, session, op });
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
        Request::IsRemoteRecovering(r) => cmd(KernelOp::IsRemoteRecovering(*r)),
        Request::GetRegionSize => query(Query::GetRegionSize),
        Request::IsClean(r) => query(Query::IsClean(*r)),
        Request::InSync(r) => query(Query::InSync(*r)),
        Request::GetSyncCount => query(Query::GetSyncCount),
        Request::StatusInfo => query(Query::StatusInfo),
        Request::StatusTable => query(Query::StatusTable),
    }
}

/// The reply datagram for `msg` with `outcome`. The reconnect CTR has no
/// receive buffer, so a disk log's device name is dropped there (spec
/// §1.8). `None` only if no valid reply exists for that answer (a bug: the
/// kernel re-sends after its timeout).
pub fn reply(msg: &Message, outcome: Result<Answer, Errno>) -> Option<Vec<u8>> {
    let outcome = match (&msg.request, outcome) {
        (Request::Ctr { reconnect: true, .. }, Ok(_)) => Ok(Answer::Done),
        (_, outcome) => outcome,
    };
    match Reply::new(msg, outcome) {
        Ok(r) => Some(r.encode()),
        Err(e) => {
            tracing::error!(error = %e, request = ?msg.request, "no valid reply for a request; the kernel will re-send");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{KernelReply, Luid, Region, Seq, encode_request};

    fn uuid() -> Uuid {
        Uuid::new("LVM-pipe").unwrap_or_else(|| unreachable!())
    }

    fn message(request: Request) -> Message {
        let bytes = encode_request(Luid(3), &uuid(), Seq(9), &request).unwrap_or_default();
        match decode(&bytes) {
            Incoming::Request(m) => m,
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn broken_framing_is_dropped_and_bad_content_gets_einval() {
        assert!(matches!(decode(&[1, 2, 3]), Incoming::Dropped));
        let mut bytes = encode_request(Luid(3), &uuid(), Seq(9), &Request::InSync(Region(1))).unwrap_or_default();
        // An unknown request type (the type word is at datagram offset 188).
        bytes[188..192].copy_from_slice(&99u32.to_ne_bytes());
        match decode(&bytes) {
            Incoming::Malformed { reply, .. } => match KernelReply::parse(&reply) {
                Ok(r) => assert_eq!(r.seq(), Seq(9)),
                Err(e) => unreachable!("{e}"),
            },
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn a_reconnect_ctr_of_a_disk_log_is_answered_without_the_device_name() {
        let initial = message(Request::Ctr { args: "8 clustered-disk 8:1 8".into(), reconnect: false });
        let again = message(Request::Ctr { args: "8 clustered-disk 8:1 8".into(), reconnect: true });
        let named = Ok(Answer::CtrDevice("8:1".into()));
        let first = reply(&initial, named.clone()).unwrap_or_default();
        let second = reply(&again, named).unwrap_or_default();
        assert_eq!(first.len(), wire::HEADER_LEN + 4, "the device name and its NUL");
        assert_eq!(second.len(), wire::HEADER_LEN, "the reconnect CTR has no receive buffer");
    }

    #[test]
    fn reads_are_queries_and_everything_that_changes_state_is_a_command() {
        let node = NodeId(2);
        assert!(matches!(route(node, 5, &message(Request::InSync(Region(1)))), Routed::Query { .. }));
        assert!(matches!(route(node, 5, &message(Request::GetResyncWork)), Routed::Command(_)));
        assert!(matches!(route(node, 5, &message(Request::IsRemoteRecovering(Region(1)))), Routed::Command(_)));
        match route(node, 5, &message(Request::Flush { marks: vec![Region(4)] })) {
            Routed::Command(Command::Kernel { instance, session, op: KernelOp::Flush { marks }, .. }) => {
                assert_eq!(instance, Instance { node, luid: Luid(3) });
                assert_eq!(session, 5);
                assert_eq!(marks, vec![Region(4)]);
            }
            other => unreachable!("{other:?}"),
        }
    }
}
