//! The kernel simulator against the region machine of one node, compared
//! with what the real 6.1 kernel sent in `tests/fixtures/kernel-6.1-trace.txt`.
//! If the simulator drifts from the real kernel, these fail.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;

use dmlogd_tests::trace::{self, Entry};
use kernel_sim::{Config, Kernel, Legs, Life, MirrorId, SharedLegs, Table, drive};
use regions::{Command, Machine, NodeId};
use wire::{Errno, Frame, Reply, Request, Uuid};

/// A kernel with one mirror, its machine, and the requests it sent.
struct Rig {
    kernel: Kernel,
    machine: Machine,
    mirror: MirrorId,
    sent: Vec<(u32, u64, Request)>,
    legs: SharedLegs,
}

fn rig(uuid: &str, log_args: &str, integrated_flush: bool) -> Rig {
    let mut machine = Machine::new();
    let _ =
        machine.apply(&Command::NodeJoined { node: NodeId(1), incarnation: 1, session: dmlogd_tests::local::SESSION });
    let mut kernel = Kernel::new(Config::default(), 0, 0xff20_6a96_0000_0000);
    let table =
        Table { uuid: Uuid::new(uuid).unwrap(), target_sectors: 131_072, log_args: log_args.into(), integrated_flush };
    let legs = SharedLegs::new(Legs::new(128, !log_args.contains("nosync")));
    let mirror = kernel.create(table, legs.clone());
    Rig { kernel, machine, mirror, sent: Vec::new(), legs }
}

impl Rig {
    /// Runs until idle; `drop` says which requests (by index in `sent`)
    /// get no reply.
    fn run(&mut self, until_ms: u64, drop: &dyn Fn(usize, &Request) -> bool) {
        let Rig { kernel, machine, sent, .. } = self;
        let mut handler = |now: u64, bytes: &[u8]| {
            let msg = Frame::parse(bytes).unwrap().message().unwrap();
            sent.push((msg.seq().0, now, msg.request.clone()));
            let reply = dmlogd_tests::local::respond(machine, NodeId(1), bytes);
            if drop(sent.len() - 1, &msg.request) { None } else { reply }
        };
        drive(kernel, &mut handler, until_ms);
    }

    fn requests_from(&self, i: usize) -> Vec<Request> {
        self.sent[i..].iter().map(|(_, _, r)| r.clone()).collect()
    }
}

/// The requests of a phase in a seq range, without the harness's own
/// `dmsetup status` calls (a GET_SYNC_COUNT followed by STATUS_INFO).
fn phase(entries: &[Entry], p: char, seqs: std::ops::RangeInclusive<u32>) -> Vec<Request> {
    let all: Vec<Request> =
        entries.iter().filter(|e| e.phase == p && seqs.contains(&e.seq.0)).map(|e| e.request.clone()).collect();
    let mut out = Vec::new();
    for (i, r) in all.iter().enumerate() {
        let status_count = *r == Request::GetSyncCount && all.get(i + 1) == Some(&Request::StatusInfo);
        if !status_count && *r != Request::StatusInfo {
            out.push(r.clone());
        }
    }
    out
}

/// Compares request sequences, showing the first difference only.
fn same_requests(got: &[Request], want: &[Request]) {
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        let lo = i.saturating_sub(3);
        panic!(
            "request {i} differs ({} sent, {} recorded)\n sent: {:?}\n real: {:?}",
            got.len(),
            want.len(),
            &got[lo..(i + 3).min(got.len())],
            &want[lo..(i + 3).min(want.len())]
        );
    }
}

#[test]
fn create_and_full_resync_send_what_the_real_kernel_sent() {
    // Trace phase A, seq 2..=777: CTR, GET_REGION_SIZE, GET_SYNC_COUNT,
    // RESUME, then per region GET_RESYNC_WORK, IN_SYNC, GET_SYNC_COUNT,
    // SET_REGION_SYNC, CLEAR_REGION, FLUSH, until the mirror is in sync.
    let entries = trace::load().unwrap();
    let want = phase(&entries, 'A', 2..=777);
    let mut rig = rig("harness-A", "clustered-core 1024", false);
    rig.run(60_000, &|_, _| false);
    same_requests(&rig.requests_from(0), &want);
    let view = rig.kernel.mirror(rig.mirror).unwrap();
    assert!(view.in_sync && view.in_sync_hint == 128 && view.life == Life::Active);
    assert!(rig.legs.lock().identical(), "the resync copied every region");
    assert!(rig.kernel.violations().is_empty(), "{:?}", rig.kernel.violations());
}

#[test]
fn integrated_flush_resync_sends_no_flush_until_the_delayed_one() {
    // Trace phase B, seq 887..=908: SET_REGION_SYNC and CLEAR without FLUSH.
    let entries = trace::load().unwrap();
    let want = phase(&entries, 'B', 887..=908);
    let mut rig = rig("harness-B", "clustered-core 1024", true);
    rig.run(60_000, &|_, _| false);
    same_requests(&rig.requests_from(0)[..want.len().min(rig.sent.len())], &want);
    // The first CLEAR without marks schedules one FLUSH 3 s later
    // (schedule_delayed_work does nothing while one is pending); no other
    // FLUSH is sent.
    let first_clear = rig.sent.iter().position(|(_, _, r)| matches!(r, Request::ClearRegion(_))).unwrap();
    let flushes: Vec<&(u32, u64, Request)> =
        rig.sent.iter().filter(|(_, _, r)| matches!(r, Request::Flush { .. })).collect();
    assert_eq!(flushes.len(), 1);
    assert_eq!(flushes[0].2, Request::Flush { marks: vec![] });
    assert!(flushes[0].1 >= rig.sent[first_clear].1 + kernel_sim::DELAYED_FLUSH_MS);
    assert!(rig.kernel.mirror(rig.mirror).unwrap().in_sync);
}

#[test]
fn a_write_with_a_lost_reply_is_re_sent_after_15_s_as_in_phase_d() {
    // Trace phase D: create nosync, then a write whose first
    // GET_RESYNC_WORK got no answer: the kernel re-sent it 15 s later under
    // a new seq, then IS_REMOTE_RECOVERING, IN_SYNC x2, MARK, FLUSH,
    // CLEAR, FLUSH.
    let entries = trace::load().unwrap();
    let want = phase(&entries, 'D', 1644..=1657);
    let mut rig = rig("harness-D", "clustered-core 1024 nosync", false);
    rig.run(1_000, &|_, _| false);
    let created = rig.sent.len();
    rig.kernel.write(rig.mirror, 0);
    rig.run(60_000, &|i, _| i == created);
    same_requests(&rig.requests_from(0), &want);
    let (s1, t1, _) = &rig.sent[created];
    let (s2, t2, _) = &rig.sent[created + 1];
    assert_ne!(s1, s2, "the re-send has a new seq");
    assert!(t2 - t1 >= kernel_sim::RETRY_TIMEOUT_MS);
    assert_eq!(rig.kernel.stats().timeouts, 1);
    assert!(rig.legs.lock().identical());
}

#[test]
fn integrated_writes_carry_their_marks_in_flush() {
    // Trace phase B, seq 1549..=1552: IN_SYNC x2, FLUSH [0], CLEAR [0].
    let entries = trace::load().unwrap();
    let want = phase(&entries, 'B', 1549..=1552);
    let mut rig = rig("harness-B", "clustered-core 1024 nosync", true);
    rig.run(60_000, &|_, _| false);
    let start = rig.sent.len();
    rig.kernel.write(rig.mirror, 0);
    rig.run(rig.kernel.now_ms() + 100, &|_, _| false);
    let got: Vec<Request> = rig
        .requests_from(start)
        .into_iter()
        .filter(|r| !matches!(r, Request::GetResyncWork | Request::IsRemoteRecovering(_)))
        .collect();
    same_requests(&got[..want.len().min(got.len())], &want);
}

#[test]
fn suspend_resume_and_remove_send_the_recorded_requests() {
    // Trace phase A, seq 880..=886.
    let entries = trace::load().unwrap();
    let want = phase(&entries, 'A', 880..=886);
    let mut rig = rig("harness-A", "clustered-core 1024 nosync", false);
    rig.run(60_000, &|_, _| false);
    let start = rig.sent.len();
    rig.kernel.suspend(rig.mirror);
    rig.kernel.resume(rig.mirror);
    rig.run(120_000, &|_, _| false);
    rig.kernel.remove(rig.mirror);
    rig.run(180_000, &|_, _| false);
    same_requests(&rig.requests_from(start), &want);
    assert_eq!(rig.kernel.mirror(rig.mirror).unwrap().life, Life::Removed);
    assert!(rig.machine.log(&Uuid::new("harness-A").unwrap()).is_none(), "the last DTR dropped the log");
}

#[test]
fn status_reads_the_daemons_text() {
    let mut rig = rig("harness-A", "clustered-core 1024 nosync", false);
    rig.run(60_000, &|_, _| false);
    rig.kernel.status(rig.mirror);
    rig.run(120_000, &|_, _| false);
    assert_eq!(rig.kernel.mirror(rig.mirror).unwrap().status.as_deref(), Some("1 clustered-core"));
}

#[test]
fn a_write_during_resync_is_held_until_its_region_is_recovered() {
    let mut rig = rig("harness-B", "clustered-core 1024", false);
    rig.run(1, &|_, _| false);
    rig.kernel.write(rig.mirror, 126);
    rig.run(60_000, &|_, _| false);
    let irr = rig.sent.iter().filter(|(_, _, r)| matches!(r, Request::IsRemoteRecovering(_))).count();
    assert!(irr >= 2, "asked again after being held ({irr} times)");
    let sets: Vec<u64> = rig
        .sent
        .iter()
        .filter_map(|(_, _, r)| match r {
            Request::SetRegionSync { region, .. } => Some(region.0),
            _ => None,
        })
        .collect();
    let marks: BTreeSet<u64> = rig
        .sent
        .iter()
        .filter_map(|(_, _, r)| match r {
            Request::MarkRegion(rs) => Some(rs.iter().map(|r| r.0)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(marks, BTreeSet::from([126]), "the write went through as a normal, marked write");
    assert!(sets.contains(&126));
    assert_eq!(rig.kernel.mirror(rig.mirror).unwrap().writes_done, 1);
    assert!(rig.legs.lock().identical());
    assert!(rig.kernel.violations().is_empty(), "{:?}", rig.kernel.violations());
}

#[test]
fn the_simulator_flags_replies_the_kernel_would_reject() {
    let mut kernel = Kernel::new(Config::default(), 0, 1 << 40);
    let table = Table {
        uuid: Uuid::new("bad").unwrap(),
        target_sectors: 1024,
        log_args: "clustered-core 8".into(),
        integrated_flush: false,
    };
    let m = kernel.create(table, SharedLegs::new(Legs::new(128, false)));
    let mut again = 0;
    let mut handler = |_now: u64, bytes: &[u8]| {
        let msg = Frame::parse(bytes).unwrap().message().unwrap();
        match msg.request {
            // EAGAIN once: the kernel re-sends at once.
            Request::Ctr { .. } if again == 0 => {
                again += 1;
                Some(Reply::error(&msg.header, Errno::EAGAIN).encode())
            }
            Request::Ctr { .. } => Some(Reply::new(&msg, Ok(wire::Answer::Done)).unwrap().encode()),
            // A region size of 3 would corrupt the kernel's region mapping.
            _ => Some(Reply::new(&msg, Ok(wire::Answer::RegionSize(3))).unwrap().encode()),
        }
    };
    drive(&mut kernel, &mut handler, 10_000);
    assert_eq!(kernel.stats().eagain, 1);
    assert!(matches!(kernel.mirror(m).unwrap().life, Life::Failed(_)));
    assert!(kernel.violations().iter().any(|v| v.what.contains("GET_REGION_SIZE answered 3")));
}

#[test]
fn a_burst_of_writes_is_marked_in_batches_of_at_most_32() {
    for integrated in [false, true] {
        let mut rig = rig("harness-A", "clustered-core 1024 nosync", integrated);
        rig.run(60_000, &|_, _| false);
        let start = rig.sent.len();
        for r in 0..40 {
            rig.kernel.write(rig.mirror, r);
        }
        rig.run(120_000, &|_, _| false);
        let batches: Vec<usize> = rig.sent[start..]
            .iter()
            .filter_map(|(_, _, r)| match r {
                Request::MarkRegion(rs) => Some(rs.len()),
                Request::Flush { marks } if !marks.is_empty() => Some(marks.len()),
                _ => None,
            })
            .collect();
        assert_eq!(batches, vec![32, 8], "integrated = {integrated}");
        let clears: usize = rig.sent[start..]
            .iter()
            .filter_map(|(_, _, r)| match r {
                Request::ClearRegion(rs) => Some(rs.len()),
                _ => None,
            })
            .max()
            .unwrap();
        assert_eq!(clears, 32, "clears are batched too");
        assert!(rig.legs.lock().identical());
        assert!(rig.kernel.violations().is_empty(), "{:?}", rig.kernel.violations());
    }
}

#[test]
fn a_write_arriving_while_a_suspend_is_under_way_waits_for_the_resume() {
    let mut rig = rig("harness-A", "clustered-core 1024 nosync", false);
    rig.run(60_000, &|_, _| false);
    let Rig { kernel, machine, mirror, .. } = &mut rig;
    let mirror = *mirror;
    // Answers everything the kernel sends until it goes quiet.
    let mut pump = |kernel: &mut Kernel, first: Vec<Vec<u8>>| {
        let mut seen = Vec::new();
        let mut batch = first;
        for _ in 0..1000 {
            if batch.is_empty() {
                kernel.advance_to(60_000);
                batch = kernel.take_requests();
                if batch.is_empty() {
                    break;
                }
            }
            for bytes in std::mem::take(&mut batch) {
                seen.push(Frame::parse(&bytes).unwrap().message().unwrap().request);
                if let Some(reply) = dmlogd_tests::local::respond(machine, NodeId(1), &bytes) {
                    kernel.deliver(&reply);
                }
            }
        }
        seen
    };
    kernel.suspend(mirror);
    kernel.advance_to(60_000);
    let first = kernel.take_requests();
    assert_eq!(first.len(), 1, "the suspend starts with PRESUSPEND alone");
    // dm core already holds new bios: this write must not reach the log.
    kernel.write(mirror, 5);
    let during = pump(kernel, first);
    assert!(during.contains(&Request::Postsuspend), "{during:?}");
    let touches_5 = |r: &Request| match r {
        Request::InSync(x) | Request::IsRemoteRecovering(x) => x.0 == 5,
        Request::MarkRegion(rs) | Request::Flush { marks: rs } => rs.iter().any(|x| x.0 == 5),
        _ => false,
    };
    assert!(!during.iter().any(touches_5), "a held write reached the log during the suspend: {during:?}");
    assert_eq!(kernel.mirror(mirror).unwrap().writes_done, 0);
    kernel.resume(mirror);
    let after = pump(kernel, Vec::new());
    assert!(after.iter().any(touches_5), "the write goes ahead after RESUME: {after:?}");
    rig.run(120_000, &|_, _| false);
    assert_eq!(rig.kernel.mirror(mirror).unwrap().writes_done, 1);
    assert!(rig.legs.lock().identical());
    assert!(rig.kernel.violations().is_empty(), "{:?}", rig.kernel.violations());
}
