//! Fuzz target: any bytes through the decoder. The decoder must never
//! panic; an error reply to any parsed frame echoes its seq; whatever
//! decodes re-encodes to a datagram that decodes to the same request.
//!
//! Each input is tried twice: as a raw datagram, and wrapped in valid
//! framing (first byte = request type, next 16 bytes = uuid field, rest =
//! payload) so the fuzzer also reaches the payload decoders.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{Errno, Frame, KernelReply, Luid, Reply, Request, Seq, Uuid, encode_request};

fn check(data: &[u8]) {
    let _ = KernelReply::parse(data);
    let Ok(frame) = Frame::parse(data) else { return };
    let error_reply = Reply::error(frame.header(), Errno::EINVAL).encode();
    let parsed = KernelReply::parse(&error_reply).expect("an error reply always parses");
    assert_eq!(parsed.seq(), frame.header().seq);
    let Ok(msg) = frame.message() else { return };
    if let Ok(again) = encode_request(msg.luid(), &msg.uuid, msg.seq(), &msg.request) {
        let back = Frame::parse(&again).expect("re-encoded frame").message().expect("re-encoded message");
        assert_eq!(back.request, msg.request);
    }
}

fn framed(data: &[u8]) -> Option<Vec<u8>> {
    let (&request_type, rest) = data.split_first()?;
    let (uuid, payload) = rest.split_at(rest.len().min(16));
    let payload = &payload[..payload.len().min(600)];
    let mut b = encode_request(Luid(1), &Uuid::new("f")?, Seq(9), &Request::GetSyncCount).ok()?;
    b[44..44 + uuid.len()].copy_from_slice(uuid);
    b[188..192].copy_from_slice(&u32::from(request_type).to_ne_bytes());
    b.extend_from_slice(payload);
    let len = u32::try_from(b.len()).ok()?;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[32..34].copy_from_slice(&u16::try_from(160 + payload.len()).ok()?.to_ne_bytes());
    b[192..196].copy_from_slice(&u32::try_from(payload.len()).ok()?.to_ne_bytes());
    Some(b)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(b) = framed(data) {
        check(&b);
    }
});
