//! The in-process shortcut for tests that drive one region machine with no
//! replication: a kernel datagram through the pipeline's own steps
//! ([`node::pipeline`]: decode, route, reply), applied to the machine in
//! place. The trace replay and the shared-state simulator use it; the
//! daemon and the Raft simulation run the whole host.

use node::pipeline::{self, Incoming, Routed};
use regions::{Effect, Machine, NodeId};
use wire::{Answer, Errno, Message};

/// The session every node of these harnesses joins in (no node fences
/// and rejoins here).
pub const SESSION: u64 = 0;

/// Applies or reads `msg` from `node`'s kernel in place: its answer and the
/// effects of the command.
pub fn handle(machine: &mut Machine, node: NodeId, msg: &Message) -> (Result<Answer, Errno>, Vec<Effect>) {
    match pipeline::route(node, SESSION, msg) {
        Routed::Command(c) => {
            let applied = machine.apply(&c);
            (applied.outcome.map_err(|r| r.errno()), applied.effects)
        }
        Routed::Query { uuid, instance, query } => {
            (machine.read(&uuid, instance, &query).map_err(|r| r.errno()), Vec::new())
        }
    }
}

/// Answers one request datagram with one reply datagram, in place. A
/// datagram whose framing is wrong gets no reply; one whose content is
/// invalid gets `-EINVAL`.
pub fn respond(machine: &mut Machine, node: NodeId, datagram: &[u8]) -> Option<Vec<u8>> {
    match pipeline::decode(datagram) {
        Incoming::Request(msg) => {
            let (result, _effects) = handle(machine, node, &msg);
            pipeline::reply(&msg, result)
        }
        Incoming::Malformed { reply, .. } => Some(reply),
        Incoming::Dropped => None,
    }
}
