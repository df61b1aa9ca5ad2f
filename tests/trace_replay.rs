//! Replays the real 6.1 kernel trace (`tests/fixtures/kernel-6.1-trace.txt`,
//! phases A–D) request by request through `wire` and the region machine of
//! one node, and checks every reply against what the kernel saw.
//!
//! What must match exactly: the echoed seq, the reply's `data_size`, the
//! error, the region size, every sync count, every IN_SYNC answer, the
//! resync order (GET_RESYNC_WORK's `i` and region), the status text and the
//! in_sync_hint. One deliberate difference: the recording responder let
//! writes to out-of-sync regions through during resync; dmlogd holds them
//! (IS_REMOTE_RECOVERING = 1, invariant I6), which the test asserts instead.

#![allow(clippy::unwrap_used, clippy::panic)]

use dmlogd_tests::trace::{self, Entry};
use regions::{Command, Machine, NodeId};
use wire::{KernelReply, Request, encode_request};

fn replay(entries: &[Entry]) -> (usize, usize) {
    let mut m = Machine::new();
    let node = NodeId(1);
    let _ = m.apply(&Command::NodeJoined { node, incarnation: 1, session: dmlogd_tests::local::SESSION });
    let (mut checked, mut held) = (0, 0);
    for e in entries {
        let bytes = encode_request(e.luid, &e.uuid, e.seq, &e.request).unwrap();
        assert_eq!(bytes.len(), 196 + e.data_size, "seq {}: request size", e.seq);
        let reply =
            dmlogd_tests::local::respond(&mut m, node, &bytes).unwrap_or_else(|| panic!("seq {}: no reply", e.seq));
        let KernelReply::Full { seq, error, data } = KernelReply::parse(&reply).unwrap() else {
            panic!("seq {}: bare ACK", e.seq)
        };
        let at = format!("phase {} seq {} {:?}", e.phase, e.seq, e.request);
        assert_eq!(seq, e.seq, "{at}: seq echoed");
        assert_eq!(error, e.error, "{at}: error");
        assert_eq!(data.len(), e.reply_size, "{at}: reply data_size");
        let word = |i: usize| u64::from_ne_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
        match &e.request {
            Request::GetRegionSize | Request::GetSyncCount | Request::InSync(_) => {
                assert_eq!(Some(word(0)), e.reply_number(), "{at}");
            }
            Request::GetResyncWork => {
                assert_eq!(Some(word(0)), e.reply_field("i="), "{at}: work assigned");
                if word(0) == 1 {
                    assert_eq!(Some(word(1)), e.reply_field("r="), "{at}: resync order");
                }
            }
            Request::StatusInfo => {
                let text = std::str::from_utf8(&data[..data.len() - 1]).unwrap();
                assert_eq!(format!("\"{text}\""), e.reply, "{at}");
            }
            Request::IsRemoteRecovering(r) => {
                assert_eq!(Some(word(1)), e.reply_field("in_sync_hint="), "{at}: hint");
                let log = m.log(&e.uuid).unwrap();
                if log.in_sync(*r) {
                    assert_eq!(Some(word(0)), e.reply_field("is_recovering="), "{at}");
                } else {
                    assert_eq!(word(0), 1, "{at}: a write to an out-of-sync region is held (I6)");
                    held += 1;
                }
            }
            _ => {}
        }
        m.check().unwrap_or_else(|v| panic!("{at}: {v}"));
        checked += 1;
    }
    (checked, held)
}

#[test]
fn phases_a_to_d_replay_with_the_recorded_answers() {
    let entries = trace::load().unwrap();
    let ad: Vec<Entry> = entries.into_iter().filter(|e| ('A'..='D').contains(&e.phase)).collect();
    assert!(ad.len() > 1600, "the whole fixture was read ({} requests)", ad.len());
    let (checked, held) = replay(&ad);
    assert_eq!(checked, ad.len());
    assert_eq!(held, 2, "phase B's two writes during resync are held");
}

#[test]
fn each_phase_replays_on_its_own() {
    let entries = trace::load().unwrap();
    for phase in ['A', 'B', 'C', 'D'] {
        let one: Vec<Entry> = entries.iter().filter(|e| e.phase == phase).cloned().collect();
        assert!(!one.is_empty(), "phase {phase}");
        replay(&one);
    }
}

#[test]
fn phase_c_reconnect_ctr_carries_a_nul_and_gets_no_data() {
    let entries = trace::load().unwrap();
    let reconnect: Vec<&Entry> =
        entries.iter().filter(|e| matches!(e.request, Request::Ctr { reconnect: true, .. })).collect();
    assert_eq!(reconnect.len(), 1);
    assert_eq!(reconnect[0].phase, 'C');
    assert_eq!(reconnect[0].data_size, 34);
    assert_eq!(reconnect[0].reply_size, 0);
}

#[test]
fn phase_d_re_sent_resync_request_is_answered_the_same() {
    // seq 1649 and 1650: the same GET_RESYNC_WORK under two seqs.
    let entries = trace::load().unwrap();
    let d: Vec<&Entry> = entries.iter().filter(|e| e.phase == 'D').collect();
    let pair: Vec<&&Entry> = d.iter().filter(|e| e.seq.0 == 1649 || e.seq.0 == 1650).collect();
    assert_eq!(pair.len(), 2);
    assert_eq!(pair[0].request, pair[1].request);
    assert_eq!(pair[0].reply, pair[1].reply);
}
