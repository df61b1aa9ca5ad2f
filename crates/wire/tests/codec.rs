//! Codec tests: byte layout (spec §1.3, §2), every request type, every
//! malformed-input error, reply sizes (spec §1.5), and round-trip properties.

#![allow(clippy::unwrap_used, clippy::panic)] // Tests fail loudly by design.

use proptest::prelude::*;
use wire::*;

fn uuid(s: &str) -> Uuid {
    Uuid::new(s).expect("valid uuid")
}

fn frame_of(request: &Request) -> Vec<u8> {
    encode_request(Luid(0xff20_6a96_9fe3_de00), &uuid("harness-A"), Seq(5), request).expect("encodable")
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

#[test]
fn request_layout_matches_the_kernel_struct() {
    let b = frame_of(&Request::InSync(Region(0x0102_0304_0506_0708)));
    assert_eq!(b.len(), 196 + 8);
    assert_eq!(u32_at(&b, 0), 204, "nlmsg_len = 16+20+160+data_size");
    assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 3, "NLMSG_DONE");
    assert_eq!(u32_at(&b, 16), 7, "cn idx");
    assert_eq!(u32_at(&b, 20), 1, "cn val");
    assert_eq!(u32_at(&b, 24), 5, "cn seq = request seq");
    assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 168, "cn len = 160 + data_size");
    assert_eq!(u64::from_ne_bytes(b[36..44].try_into().unwrap()), 0xff20_6a96_9fe3_de00);
    assert_eq!(&b[44..53], b"harness-A");
    assert!(b[53..176].iter().all(|&x| x == 0), "uuid NUL padding and padding[3]");
    assert_eq!(u32_at(&b, 176), 3, "version");
    assert_eq!(u32_at(&b, 184), 5, "seq");
    assert_eq!(u32_at(&b, 188), 8, "IN_SYNC");
    assert_eq!(u32_at(&b, 192), 8, "data_size");
    assert_eq!(u64::from_ne_bytes(b[196..204].try_into().unwrap()), 0x0102_0304_0506_0708);
}

#[test]
fn all_seventeen_request_types_round_trip() {
    let requests = vec![
        Request::Ctr { args: "131072 clustered-core 1024".into(), reconnect: false },
        Request::Ctr { args: "131072 clustered-core 1024 nosync".into(), reconnect: true },
        Request::Dtr,
        Request::Presuspend,
        Request::Postsuspend,
        Request::Resume,
        Request::GetRegionSize,
        Request::IsClean(Region(9)),
        Request::InSync(Region(127)),
        Request::Flush { marks: vec![] },
        Request::Flush { marks: vec![Region(0), Region(u64::MAX)] },
        Request::MarkRegion(vec![Region(1)]),
        Request::ClearRegion((0..32).map(Region).collect()),
        Request::GetResyncWork,
        Request::SetRegionSync { region: Region(3), in_sync: true },
        Request::SetRegionSync { region: Region(3), in_sync: false },
        Request::GetSyncCount,
        Request::StatusInfo,
        Request::StatusTable,
        Request::IsRemoteRecovering(Region(126)),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for r in requests {
        let bytes = frame_of(&r);
        let frame = Frame::parse(&bytes).expect("frame");
        let msg = frame.message().expect("message");
        assert_eq!(msg.request, r);
        assert_eq!(msg.uuid.as_str(), "harness-A");
        assert_eq!(msg.seq(), Seq(5));
        seen.insert(r.request_type());
    }
    assert_eq!(seen.len(), 17);
}

#[test]
fn ctr_without_nul_is_initial_and_with_nul_is_reconnect() {
    // Trace phase C: the reconnect CTR has ds=34 for a 33-character string.
    let initial = frame_of(&Request::Ctr { args: "131072 clustered-core 1024 nosync".into(), reconnect: false });
    let again = frame_of(&Request::Ctr { args: "131072 clustered-core 1024 nosync".into(), reconnect: true });
    assert_eq!(u32_at(&initial, 192), 33);
    assert_eq!(u32_at(&again, 192), 34);
    assert!(matches!(Frame::parse(&again).unwrap().message().unwrap().request, Request::Ctr { reconnect: true, .. }));
}

#[test]
fn request_type_is_masked_to_its_low_byte() {
    let mut b = frame_of(&Request::GetSyncCount);
    b[188..192].copy_from_slice(&(0xABCD_0000u32 | 14).to_ne_bytes());
    let msg = Frame::parse(&b).unwrap().message().unwrap();
    assert_eq!(msg.request, Request::GetSyncCount);
}

#[test]
fn unaligned_u64_payloads_decode() {
    // The payload starts at offset 196, 4- but not 8-aligned; decode from a
    // buffer shifted by one more byte as well.
    let b = frame_of(&Request::MarkRegion(vec![Region(0x1122_3344_5566_7788), Region(5)]));
    let mut shifted = vec![0u8; 1];
    shifted.extend_from_slice(&b);
    let msg = Frame::parse(&shifted[1..]).unwrap().message().unwrap();
    assert_eq!(msg.request, Request::MarkRegion(vec![Region(0x1122_3344_5566_7788), Region(5)]));
}

#[test]
fn recv_padding_beyond_nlmsg_len_is_ignored() {
    let mut b = frame_of(&Request::Ctr { args: "131072 clustered-core 1024".into(), reconnect: false });
    b.extend_from_slice(&[0, 0]);
    let msg = Frame::parse(&b).unwrap().message().unwrap();
    assert_eq!(msg.request, Request::Ctr { args: "131072 clustered-core 1024".into(), reconnect: false });
}

#[test]
fn framing_errors_are_typed() {
    let good = frame_of(&Request::InSync(Region(1)));
    assert!(matches!(Frame::parse(&good[..10]), Err(FrameError::Truncated { .. })));
    assert!(matches!(Frame::parse(&good[..100]), Err(FrameError::NlmsgLen { .. })));

    let mut wrong_id = good.clone();
    wrong_id[16..20].copy_from_slice(&1u32.to_ne_bytes());
    assert_eq!(Frame::parse(&wrong_id), Err(FrameError::WrongConnectorId { idx: 1, val: 1 }));

    let mut long_cn = good.clone();
    long_cn[32..34].copy_from_slice(&400u16.to_ne_bytes());
    assert!(matches!(Frame::parse(&long_cn), Err(FrameError::CnLen { .. })));

    let mut short_cn = good.clone();
    short_cn[32..34].copy_from_slice(&100u16.to_ne_bytes());
    assert_eq!(Frame::parse(&short_cn), Err(FrameError::Incomplete { cn_len: 100 }));

    let mut ds = good.clone();
    ds[192..196].copy_from_slice(&16u32.to_ne_bytes());
    assert!(matches!(Frame::parse(&ds), Err(FrameError::DataSize { .. })));

    let ack = Reply::encode_bare_ack(Seq(1), 0);
    assert_eq!(Frame::parse(&ack), Err(FrameError::UnexpectedAck));
}

#[test]
fn content_errors_are_typed_and_answerable() {
    let good = frame_of(&Request::InSync(Region(1)));

    let mut unknown = good.clone();
    unknown[188..192].copy_from_slice(&99u32.to_ne_bytes());
    let f = Frame::parse(&unknown).unwrap();
    assert_eq!(f.message(), Err(InvalidRequest::UnknownType(99)));
    let reply = Reply::error(f.header(), Errno::EINVAL);
    assert_eq!(reply.error_code(), -22);
    assert_eq!(reply.seq(), Seq(5));

    let mut unterminated = good.clone();
    unterminated[44..173].fill(b'x');
    assert_eq!(Frame::parse(&unterminated).unwrap().message(), Err(InvalidRequest::UuidUnterminated));

    let mut empty = good.clone();
    empty[44..173].fill(0);
    assert_eq!(Frame::parse(&empty).unwrap().message(), Err(InvalidRequest::UuidEmpty));

    let mut not_utf8 = good.clone();
    not_utf8[44] = 0xff;
    assert_eq!(Frame::parse(&not_utf8).unwrap().message(), Err(InvalidRequest::UuidNotUtf8));
}

/// Builds a datagram of `request_type` with an arbitrary payload.
fn raw(request_type: RequestType, payload: &[u8]) -> Vec<u8> {
    let mut b = frame_of(&Request::GetSyncCount);
    b[188..192].copy_from_slice(&request_type.to_wire().to_ne_bytes());
    b.extend_from_slice(payload);
    let n = u32::try_from(b.len()).unwrap();
    b[0..4].copy_from_slice(&n.to_ne_bytes());
    b[32..34].copy_from_slice(&u16::try_from(160 + payload.len()).unwrap().to_ne_bytes());
    b[192..196].copy_from_slice(&u32::try_from(payload.len()).unwrap().to_ne_bytes());
    b
}

#[test]
fn payload_sizes_are_checked_per_type() {
    let decode = |t, p: &[u8]| Frame::parse(&raw(t, p)).unwrap().message().map(|m| m.request);
    assert!(matches!(decode(RequestType::InSync, &[0; 7]), Err(InvalidRequest::PayloadSize { .. })));
    assert!(matches!(decode(RequestType::MarkRegion, &[]), Err(InvalidRequest::PayloadSize { .. })));
    assert!(matches!(decode(RequestType::MarkRegion, &[0; 12]), Err(InvalidRequest::PayloadSize { .. })));
    assert!(matches!(decode(RequestType::ClearRegion, &[0; 33 * 8]), Err(InvalidRequest::PayloadSize { .. })));
    assert!(matches!(decode(RequestType::Flush, &[0; 4]), Err(InvalidRequest::PayloadSize { .. })));
    assert!(matches!(decode(RequestType::Resume, &[1]), Err(InvalidRequest::PayloadSize { .. })));
    assert!(matches!(decode(RequestType::SetRegionSync, &[0; 8]), Err(InvalidRequest::PayloadSize { .. })));
    let mut two = [0u8; 16];
    two[8..].copy_from_slice(&7i64.to_ne_bytes());
    assert_eq!(decode(RequestType::SetRegionSync, &two), Err(InvalidRequest::InSyncValue(7)));
    assert!(matches!(decode(RequestType::Ctr, &[400u16 as u8; 333]), Err(InvalidRequest::PayloadTooLarge { .. })));
    assert_eq!(decode(RequestType::Ctr, &[0]), Err(InvalidRequest::CtrArgs("empty")));
    assert!(matches!(decode(RequestType::Ctr, b"1 a\0b"), Err(InvalidRequest::CtrArgs(_))));
    assert!(matches!(decode(RequestType::Ctr, &[0xc3, 0x28]), Err(InvalidRequest::CtrArgs(_))));
    // DTR's payload is ignored (the kernel header says it may carry args).
    assert_eq!(decode(RequestType::Dtr, b"131072 clustered-core 1024"), Ok(Request::Dtr));
}

#[test]
fn replies_have_the_exact_data_size_the_kernel_expects() {
    let cases: Vec<(Request, Answer, usize)> = vec![
        (Request::Ctr { args: "1 clustered-core 2".into(), reconnect: false }, Answer::Done, 0),
        (
            Request::Ctr { args: "1 clustered-disk 253:3 2".into(), reconnect: false },
            Answer::CtrDevice("253:3".into()),
            6,
        ),
        (Request::GetRegionSize, Answer::RegionSize(1024), 8),
        (Request::IsClean(Region(1)), Answer::Bool(true), 8),
        (Request::InSync(Region(1)), Answer::Bool(false), 8),
        (Request::GetResyncWork, Answer::ResyncWork(Some(Region(4))), 16),
        (Request::GetResyncWork, Answer::ResyncWork(None), 16),
        (Request::GetSyncCount, Answer::SyncCount(128), 8),
        (Request::StatusInfo, Answer::Text("1 clustered-core".into()), 17),
        (
            Request::IsRemoteRecovering(Region(0)),
            Answer::RemoteRecovering { is_recovering: false, in_sync_hint: 128 },
            16,
        ),
        (Request::Flush { marks: vec![Region(0)] }, Answer::Done, 0),
        (Request::ClearRegion(vec![Region(0)]), Answer::Done, 0),
        (Request::SetRegionSync { region: Region(0), in_sync: true }, Answer::Done, 0),
        (Request::Dtr, Answer::Done, 0),
    ];
    for (request, answer, size) in cases {
        let bytes = frame_of(&request);
        let msg = Frame::parse(&bytes).unwrap().message().unwrap();
        let reply = Reply::new(&msg, Ok(answer.clone())).unwrap();
        assert_eq!(reply.data().len(), size, "{request:?} {answer:?}");
        assert!(reply.data().len() <= reply_capacity(&request, 4096), "{request:?} fits the kernel's buffer");
        let out = reply.encode();
        match KernelReply::parse(&out).unwrap() {
            KernelReply::Full { seq, error, data } => {
                assert_eq!(seq, Seq(5));
                assert_eq!(error, 0);
                assert_eq!(data.len(), size);
            }
            other => panic!("expected a full reply, got {other:?}"),
        }
    }
}

#[test]
fn mismatched_answers_are_refused_before_they_reach_the_kernel() {
    let msg = |r: &Request| Frame::parse(&frame_of(r)).unwrap().message().unwrap();
    assert!(matches!(
        Reply::new(&msg(&Request::Flush { marks: vec![] }), Ok(Answer::Bool(true))),
        Err(ReplyError::WrongAnswer { .. })
    ));
    // The reconnect CTR has no receive buffer: a device name would be -ENOSPC.
    let reconnect = Request::Ctr { args: "1 clustered-disk 253:3 2".into(), reconnect: true };
    assert!(Reply::new(&msg(&reconnect), Ok(Answer::CtrDevice("253:3".into()))).is_err());
    assert!(Reply::new(&msg(&reconnect), Ok(Answer::Done)).is_ok());
    let long = "x".repeat(200);
    let initial = Request::Ctr { args: "1 clustered-disk 253:3 2".into(), reconnect: false };
    assert!(matches!(Reply::new(&msg(&initial), Ok(Answer::CtrDevice(long))), Err(ReplyError::TooLong { .. })));
    assert!(matches!(
        Reply::new(&msg(&Request::StatusInfo), Ok(Answer::Text("a\0b".into()))),
        Err(ReplyError::InteriorNul(_))
    ));
}

#[test]
fn errors_carry_negative_errno_and_no_data() {
    let bytes = frame_of(&Request::GetResyncWork);
    let msg = Frame::parse(&bytes).unwrap().message().unwrap();
    let reply = Reply::new(&msg, Err(Errno::ENOENT)).unwrap();
    assert_eq!(
        KernelReply::parse(&reply.encode()).unwrap(),
        KernelReply::Full { seq: Seq(5), error: -2, data: vec![] }
    );
}

#[test]
fn bare_ack_parses_as_the_kernel_sees_it() {
    assert_eq!(
        KernelReply::parse(&Reply::encode_bare_ack(Seq(77), 11)).unwrap(),
        KernelReply::BareAck { seq: Seq(77), ack: 11 }
    );
}

#[test]
fn encoder_refuses_what_the_kernel_cannot_send() {
    let u = uuid("u");
    assert!(encode_request(Luid(1), &u, Seq(1), &Request::MarkRegion(vec![])).is_err());
    assert!(encode_request(Luid(1), &u, Seq(1), &Request::Flush { marks: (0..33).map(Region).collect() }).is_err());
    assert!(encode_request(Luid(1), &u, Seq(1), &Request::Ctr { args: "x".repeat(333), reconnect: false }).is_err());
    assert!(encode_request(Luid(1), &u, Seq(1), &Request::Ctr { args: "a\0".into(), reconnect: false }).is_err());
    assert!(Uuid::new("x".repeat(129)).is_none());
    assert!(Uuid::new("x".repeat(128)).is_some());
}

fn arb_regions(min: usize) -> impl Strategy<Value = Vec<Region>> {
    prop::collection::vec(any::<u64>().prop_map(Region), min..=32)
}

fn arb_request() -> impl Strategy<Value = Request> {
    let args = "[ -~]{1,300}".prop_filter("non-empty", |s: &String| !s.is_empty());
    prop_oneof![
        (args, any::<bool>()).prop_map(|(args, reconnect)| Request::Ctr { args, reconnect }),
        Just(Request::Dtr),
        Just(Request::Presuspend),
        Just(Request::Postsuspend),
        Just(Request::Resume),
        Just(Request::GetRegionSize),
        any::<u64>().prop_map(|r| Request::IsClean(Region(r))),
        any::<u64>().prop_map(|r| Request::InSync(Region(r))),
        arb_regions(0).prop_map(|marks| Request::Flush { marks }),
        arb_regions(1).prop_map(Request::MarkRegion),
        arb_regions(1).prop_map(Request::ClearRegion),
        Just(Request::GetResyncWork),
        (any::<u64>(), any::<bool>()).prop_map(|(r, in_sync)| Request::SetRegionSync { region: Region(r), in_sync }),
        Just(Request::GetSyncCount),
        Just(Request::StatusInfo),
        Just(Request::StatusTable),
        any::<u64>().prop_map(|r| Request::IsRemoteRecovering(Region(r))),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(
        request in arb_request(),
        luid in any::<u64>(),
        seq in any::<u32>(),
        name in "[A-Za-z0-9-]{1,128}",
    ) {
        let u = Uuid::new(name).unwrap();
        let bytes = encode_request(Luid(luid), &u, Seq(seq), &request).unwrap();
        let frame = Frame::parse(&bytes).unwrap();
        let msg = frame.message().unwrap();
        prop_assert_eq!(&msg.request, &request);
        prop_assert_eq!(&msg.uuid, &u);
        prop_assert_eq!(msg.luid(), Luid(luid));
        prop_assert_eq!(msg.seq(), Seq(seq));
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(frame) = Frame::parse(&bytes) {
            let _ = frame.message();
        }
        let _ = KernelReply::parse(&bytes);
    }

    /// Random bytes almost never get past the framing checks (lengths, the
    /// connector id): these datagrams do, by construction, and everything
    /// behind the framing is arbitrary: the uuid field, the version, the
    /// request type (mostly one of the 17), the payload and its length.
    #[test]
    fn the_content_decoder_never_panics_on_well_framed_datagrams(
        uuid_field in prop::collection::vec(prop_oneof![b'a'..=b'z', any::<u8>(), Just(0u8)], 129),
        version in prop_oneof![Just(3u32), any::<u32>()],
        request_type in prop_oneof![1u32..=17, any::<u32>()],
        payload in prop::collection::vec(any::<u8>(), 0..400),
        seq in any::<u32>(),
        luid in any::<u64>(),
    ) {
        let mut b = Vec::new();
        let total = 16 + 20 + 160 + payload.len();
        b.extend_from_slice(&u32::try_from(total).unwrap().to_ne_bytes());
        b.extend_from_slice(&3u16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&u16::try_from(160 + payload.len()).unwrap().to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&luid.to_ne_bytes());
        b.extend_from_slice(&uuid_field);
        b.extend_from_slice(&[0u8; 3]);
        b.extend_from_slice(&version.to_ne_bytes());
        b.extend_from_slice(&0i32.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&request_type.to_ne_bytes());
        b.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_ne_bytes());
        b.extend_from_slice(&payload);
        let frame = Frame::parse(&b);
        prop_assert!(frame.is_ok(), "built to pass the framing checks: {:?}", frame.err());
        let frame = frame.unwrap();
        prop_assert_eq!(frame.header().seq, Seq(seq));
        // Whatever decodes must re-encode to a frame that decodes the same;
        // whatever does not is answerable (its seq is known).
        if let Ok(msg) = frame.message()
            && let Ok(again) = encode_request(msg.luid(), &msg.uuid, msg.seq(), &msg.request)
        {
            prop_assert_eq!(Frame::parse(&again).unwrap().message().unwrap().request, msg.request);
        }
    }

    #[test]
    fn decoder_never_panics_on_mutated_requests(
        request in arb_request(),
        flips in prop::collection::vec((0usize..600, any::<u8>()), 1..8),
        cut in 0usize..600,
    ) {
        let mut bytes = encode_request(Luid(1), &Uuid::new("m").unwrap(), Seq(1), &request).unwrap();
        for (at, v) in flips {
            if let Some(b) = bytes.get_mut(at) { *b = v; }
        }
        bytes.truncate(cut.max(1));
        // Whatever decodes must re-encode to a frame that decodes the same.
        if let Ok(frame) = Frame::parse(&bytes)
            && let Ok(msg) = frame.message()
            && let Ok(again) = encode_request(msg.luid(), &msg.uuid, msg.seq(), &msg.request)
        {
            prop_assert_eq!(Frame::parse(&again).unwrap().message().unwrap().request, msg.request);
        }
    }

    #[test]
    fn every_answer_round_trips_through_the_kernel_parser(seq in any::<u32>(), v in any::<u64>(), b in any::<bool>()) {
        let u = Uuid::new("p").unwrap();
        let cases = [
            (Request::GetRegionSize, Answer::RegionSize(v)),
            (Request::InSync(Region(v)), Answer::Bool(b)),
            (Request::GetResyncWork, Answer::ResyncWork(b.then_some(Region(v)))),
            (Request::IsRemoteRecovering(Region(v)), Answer::RemoteRecovering { is_recovering: b, in_sync_hint: v }),
        ];
        for (request, answer) in cases {
            let bytes = encode_request(Luid(2), &u, Seq(seq), &request).unwrap();
            let msg = Frame::parse(&bytes).unwrap().message().unwrap();
            let reply = Reply::new(&msg, Ok(answer)).unwrap().encode();
            let parsed = KernelReply::parse(&reply).unwrap();
            prop_assert_eq!(parsed.seq(), Seq(seq));
        }
    }
}
