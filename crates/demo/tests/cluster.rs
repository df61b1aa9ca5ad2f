//! Three real daemon processes on loopback (the demo binary running
//! `dmlogd`'s own entry point), each driven by a simulated kernel over the
//! Unix transport (the [`dmlogd_demo::harness`]): leader
//! hand-over on SIGTERM, acknowledged marks across a restart of every
//! daemon, and the demo's crash scenario end to end.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use dmlogd_demo::harness::Harness;
use dmlogd_demo::wait_for;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dmlogd-demo"))
}

/// A harness whose daemons are `dmlogd-demo daemon …`.
fn harness(dir: &Path, regions: u64, seed: u64) -> Harness {
    Harness::new(exe(), dir, 3, regions, seed).unwrap().daemon_args(&["daemon"])
}

async fn three_nodes(dir: &Path, regions: u64, seed: u64) -> Harness {
    let mut h = harness(dir, regions, seed);
    boot_all(&mut h).await;
    h
}

/// Boots every node and waits until they agree on a leader.
async fn boot_all(h: &mut Harness) {
    for id in h.ids() {
        h.boot(id).await.unwrap();
    }
    wait_for!(h, Duration::from_secs(60), 0, "a leader", h.leader().await.is_some()).unwrap();
}

/// Waits until every kernel reports the new mirror (legs different at the
/// start) resynced.
async fn initial_resync(h: &mut Harness) {
    let regions = h.regions();
    wait_for!(h, Duration::from_secs(60), 0, "initial resync", {
        h.ask_status();
        h.kernels().iter().all(|k| k.sync_count == Some(regions))
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_and_exits_cleanly() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut h = three_nodes(dir.path(), 64, 1).await;
    let leader = h.leader().await.unwrap();
    // The stopping leader hands over to the first other voter by id.
    let expected = h.ids().into_iter().find(|id| *id != leader).unwrap();
    let code = h.terminate(leader, Duration::from_secs(30)).await.unwrap();
    assert!(code.success(), "{code:?}");
    let new = wait_for!(h, Duration::from_secs(60), 0, "a new leader", h.leader().await.is_some()).map(|_| ());
    new.unwrap();
    assert_eq!(h.leader().await, Some(expected), "leadership went to the chosen voter");
}

/// Every (node, region) a kernel is writing after its FLUSH was answered
/// is marked by that node in the state node `from` has applied.
async fn unmarked(h: &Harness, from: u64, writing: &BTreeSet<(u64, u64)>) -> Vec<(u64, u64)> {
    let log = h.log(from).await.unwrap();
    let marked: BTreeSet<(u64, u64)> =
        log.marks.iter().flat_map(|m| m.nodes.iter().map(move |n| (*n, m.region))).collect();
    writing.difference(&marked).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_marks_survive_kill_9_of_every_daemon_and_the_mirror_still_resyncs() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut h = three_nodes(dir.path(), 128, 7).await;
    initial_resync(&mut h).await;
    // Write until kernels have writes in flight past their FLUSH.
    let busy = wait_for!(h, Duration::from_secs(30), 2, "writes in flight", {
        h.kernels().iter().any(|k| !k.inflight.is_empty())
    });
    busy.unwrap_or_else(|e| panic!("{e}: {:?}", h.kernels()));
    let writing: BTreeSet<(u64, u64)> =
        h.kernels().iter().flat_map(|k| k.inflight.iter().map(move |r| (k.node, *r))).collect();
    assert!(!writing.is_empty());
    // The kernels are not driven from here until every daemon is back, so
    // none of these writes can complete and be cleared.
    for id in h.ids() {
        h.kill_daemon(id);
    }
    for id in h.ids() {
        h.restart_daemon(id).await.unwrap();
    }
    let mut leader = None;
    for _ in 0..600 {
        leader = h.leader().await;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leader.is_some(), "no leader after the restart");
    // A restarted node applies what was committed before the kill only as
    // the new leader tells it the commit index, a moment after the
    // election: each node is given 10 s to catch up, with the kernels
    // still not driven (so nothing new is acknowledged meanwhile, and a
    // mark can come back only from the state or the rejoin's journal).
    for id in h.ids() {
        let until = Instant::now() + Duration::from_secs(10);
        let mut lost = unmarked(&h, id, &writing).await;
        while !lost.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            lost = unmarked(&h, id, &writing).await;
        }
        assert!(lost.is_empty(), "node {id} lost acknowledged marks {lost:?} of {writing:?}");
    }
    // The kernels go on: requests lost with the daemons are re-sent, the
    // writes finish and clear, and the mirror ends in sync.
    h.run_for(Duration::from_secs(2), 1).await;
    let drained = wait_for!(h, Duration::from_secs(90), 0, "every request answered after the restart", {
        h.kernels().iter().all(|k| k.idle)
    });
    drained.unwrap_or_else(|e| panic!("{e}: {:?}", h.kernels()));
    h.ask_status();
    let settled = wait_for!(h, Duration::from_secs(30), 0, "in sync after the restart", {
        h.kernels().iter().all(|k| k.idle && k.sync_count == Some(128))
    });
    settled.unwrap_or_else(|e| panic!("{e}: {:?}", h.kernels()));
    for k in h.kernels() {
        assert!(k.violations.is_empty(), "node {}: {:?}", k.node, k.violations);
    }
    assert!(h.legs.lock().identical(), "legs differ in {:?}", h.legs.lock().differing());
    // The last CLEARs were acknowledged at once and are committed within
    // router::CLEAR_AFTER of their regions' last write.
    let clean = wait_for!(h, Duration::from_secs(10), 0, "the last CLEARs committed", {
        h.log(1).await.ok().and_then(|l| l.summary).is_some_and(|s| s.dirty == 0)
    });
    clean.unwrap();
    let s = h.log(1).await.unwrap().summary.unwrap();
    assert_eq!((s.dirty, s.out_of_sync, s.recovering), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_crashes_the_leader_and_a_follower_mid_write_and_verifies_the_legs() {
    let dir = tempfile::TempDir::new().unwrap();
    let opts = dmlogd_demo::demo::Options {
        exe: exe().to_owned(),
        exe_args: vec!["daemon".into()],
        dir: Some(dir.path().to_owned()),
        regions: 128,
        write_secs: 2,
        live: false,
        seed: 11,
    };
    match dmlogd_demo::demo::run(opts).await {
        Ok(report) => {
            assert!(report.writes > 0);
            assert!(report.kicks > 0, "the survivors' kernels were kicked to resync");
        }
        Err(e) => {
            let diag = std::fs::read_to_string(dir.path().join("diagnosis.txt")).unwrap_or_default();
            panic!("demo failed: {e}\n{diag}");
        }
    }
}

/// The clean bits on a disk log device, if it holds a log.
fn on_disk(device: &Path, regions: u64) -> Option<regions::Bitmap> {
    match node::disk_log::read_image(device.to_str().unwrap(), regions) {
        regions::DiskImage::Valid { clean, .. } => Some(clean),
        regions::DiskImage::Fresh { .. } => None,
    }
}

/// The end of a scenario: every kernel drains its queued writes, then
/// reports the mirror in sync (`regions` of them); no kernel saw a protocol
/// violation or a log error on its write path, and the legs are identical.
async fn settle_and_verify(h: &mut Harness, regions: u64) {
    let drained =
        wait_for!(h, Duration::from_secs(120), 0, "every request answered", h.kernels().iter().all(|k| k.idle));
    drained.unwrap_or_else(|e| panic!("{e}: {:?}\n{}", h.kernels(), tails(h)));
    h.ask_status();
    let settled = wait_for!(h, Duration::from_secs(60), 0, "in sync", {
        if h.kernels().iter().all(|k| k.idle) {
            h.ask_status();
        }
        h.kernels().iter().all(|k| k.sync_count == Some(regions))
    });
    settled.unwrap_or_else(|e| panic!("{e}: {:?}", h.kernels()));
    for k in h.kernels() {
        if !k.violations.is_empty() {
            h.dump_state();
            tokio::time::sleep(Duration::from_millis(300)).await;
            panic!("node {}: {:?}\n{}", k.node, k.violations, tails(h));
        }
        assert!(!k.log_failure, "node {}'s kernel got a log error on its write path", k.node);
    }
    assert!(h.legs.lock().identical(), "legs differ in {:?}", h.legs.lock().differing());
}

/// The last lines of every node's daemon log, for a failure message.
fn tails(h: &Harness) -> String {
    let mut out = String::new();
    for id in h.ids() {
        let text = std::fs::read_to_string(h.log_file(id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("openraft")).collect();
        out.push_str(&format!("--- node {id}\n{}\n", lines[lines.len().saturating_sub(25)..].join("\n")));
    }
    out
}

/// Every region a kernel is writing past its FLUSH is dirty on the device.
fn check_device(h: &Harness, device: &Path) -> usize {
    let mut checked = 0;
    for k in h.kernels() {
        if k.inflight.is_empty() {
            continue;
        }
        let clean = on_disk(device, h.regions()).expect("a log on the device once a FLUSH was answered");
        for r in &k.inflight {
            assert!(!clean.get(*r), "node {} is writing region {r}, clean on the device", k.node);
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clustered_disk_log_survives_a_crash_of_its_writer_and_the_device_ends_holding_the_clean_bits() {
    let dir = tempfile::TempDir::new().unwrap();
    let device = dir.path().join("mirror_mlog");
    std::fs::write(&device, vec![0u8; 8192]).unwrap();
    let mut h = harness(dir.path(), 128, 5);
    h.use_disk_log(&device);
    for id in h.ids() {
        h.boot(id).await.unwrap();
    }
    wait_for!(h, Duration::from_secs(60), 0, "a leader", h.leader().await.is_some()).unwrap();
    let mut checked = 0;
    let busy = wait_for!(h, Duration::from_secs(60), 1, "writes checked against the device", {
        checked += check_device(&h, &device);
        checked > 20
    });
    let before = checked;
    busy.unwrap();
    // Node 1 writes the device (the lowest node with the log): crash it
    // mid-write. Node 2 takes over the device once node 1 is evicted, and
    // the writes the survivors queued meanwhile go through it. (No new
    // writes: while the evicted node's regions wait for resync, a kernel
    // lets writes above its in-sync hint through at the rate it may ask
    // IS_REMOTE_RECOVERING, four a second.)
    h.crash(1);
    let evicted = wait_for!(h, Duration::from_secs(60), 0, "node 1 evicted", {
        checked += check_device(&h, &device);
        let log = h.log(2).await.unwrap();
        log.summary.is_some_and(|s| s.instances.iter().all(|i| i.node != 1))
    });
    evicted.unwrap_or_else(|e| panic!("{e}: {:?}", h.kernels()));
    let drained = wait_for!(h, Duration::from_secs(90), 0, "every request answered", {
        checked += check_device(&h, &device);
        h.kernels().iter().all(|k| k.idle)
    });
    if let Err(e) = drained {
        let disk = h.log(2).await.map(|l| (l.summary, l.region_map));
        h.dump_state();
        tokio::time::sleep(Duration::from_millis(500)).await;
        panic!("{e}: {:?}\n{disk:?}\n{}", h.kernels(), tails(&h));
    }
    assert!(checked > before, "writes went on after the crash");
    h.ask_status();
    // In sync everywhere, and the device holds the replicated clean bits at
    // their current version. A region may stay dirty after its write or its
    // recovery copy: the kernel sends the CLEAR with its next flush, and an
    // idle mirror may not flush again (dm's own disk log behaves the same).
    let settled = wait_for!(h, Duration::from_secs(60), 0, "in sync, the device up to date", {
        if h.kernels().iter().all(|k| k.idle) {
            h.ask_status();
        }
        let log = h.log(2).await.unwrap();
        let current = log.summary.is_some_and(|s| {
            s.disk.as_ref().is_some_and(|d| d.durable_version == d.clean_version && !d.failed)
                && on_disk(&device, 128).is_some_and(|c| c.count_ones() == 128 - s.dirty)
        });
        h.kernels().iter().all(|k| k.sync_count == Some(128)) && current
    });
    if let Err(e) = settled {
        let log = h.log(2).await.map(|l| (l.summary, l.marks.len(), l.region_map));
        panic!("{e}: {:?} device {:?}\n{log:?}", h.kernels(), on_disk(&device, 128).map(|c| c.count_ones()));
    }
    for k in h.kernels() {
        assert!(k.violations.is_empty(), "node {}: {:?}", k.node, k.violations);
    }
    assert!(h.legs.lock().identical(), "legs differ in {:?}", h.legs.lock().differing());
    let status = h.status(2).await.unwrap();
    assert!(status.violation.is_empty(), "{}", status.violation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_evicted_then_fences_on_waking_and_rejoins_with_its_marks() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut h = three_nodes(dir.path(), 128, 3).await;
    initial_resync(&mut h).await;
    h.run_for(Duration::from_secs(1), 1).await;
    let leader = h.leader().await.unwrap();
    let paused = h.ids().into_iter().find(|id| *id != leader).unwrap();
    let other = h.ids().into_iter().find(|id| *id != leader && *id != paused).unwrap();
    // SIGSTOP: the daemon stops (a VM pause, a stalled host); its kernel
    // goes on and its requests wait unanswered.
    h.freeze(paused, true).unwrap();
    let evicted = wait_for!(h, Duration::from_secs(60), 0, "the paused node evicted", {
        let log = h.log(leader).await.unwrap();
        log.summary.is_some_and(|s| s.instances.iter().all(|i| i.node != paused))
    });
    evicted.unwrap();
    h.freeze(paused, false).unwrap();
    // On waking its lease is long gone: it fences before answering, then
    // rejoins, re-registers its table and re-marks what its kernel holds
    // dirty, and unfences.
    let back = wait_for!(h, Duration::from_secs(60), 1, "the woken node back with its table", {
        let log = h.log(leader).await.unwrap();
        let registered = log.summary.is_some_and(|s| s.instances.iter().any(|i| i.node == paused));
        registered && h.status(paused).await.is_ok_and(|s| !s.fenced && s.leader != 0)
    });
    back.unwrap_or_else(|e| panic!("{e}: {:?}\n{}", h.kernels(), tails(&h)));
    let log = std::fs::read_to_string(h.log_file(paused)).unwrap();
    let fenced_at = log.find("lease lost: fenced").unwrap_or_else(|| panic!("no fence logged:\n{}", tails(&h)));
    let rejoined_at = log.find("rejoined: tables registered").unwrap_or_else(|| panic!("no rejoin:\n{}", tails(&h)));
    assert!(fenced_at < rejoined_at, "it fenced before it rejoined");
    h.run_for(Duration::from_secs(2), 1).await;
    for from in [leader, other, paused] {
        h.check_marks(from).await.unwrap();
    }
    settle_and_verify(&mut h, 128).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_link_cut_every_node_fences_and_healing_brings_back_the_marks() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut h = harness(dir.path(), 128, 9);
    h.use_proxies().await.unwrap();
    boot_all(&mut h).await;
    initial_resync(&mut h).await;
    h.run_for(Duration::from_secs(1), 1).await;
    // The network goes: nobody can renew a lease, so every node fences
    // itself (its kernel's requests wait unanswered) within fence_after.
    for id in h.ids() {
        h.cut(id, true);
    }
    let fenced = wait_for!(h, Duration::from_secs(30), 1, "every node fenced", {
        let mut all = true;
        for id in h.ids() {
            all &= h.status(id).await.is_ok_and(|s| s.fenced);
        }
        all
    });
    fenced.unwrap_or_else(|e| panic!("{e}\n{}", tails(&h)));
    h.run_for(Duration::from_secs(2), 1).await;
    for id in h.ids() {
        h.cut(id, false);
    }
    // Healed: a leader again, and every node unfenced with its table
    // registered and its dirty regions marked again.
    let back = wait_for!(h, Duration::from_secs(90), 1, "every node back", {
        let mut all = h.leader().await.is_some();
        for id in h.ids() {
            all &= h.status(id).await.is_ok_and(|s| !s.fenced);
        }
        all && h.log(1).await.is_ok_and(|l| {
            l.summary.is_some_and(|s| h.ids().iter().all(|id| s.instances.iter().any(|i| i.node == *id)))
        })
    });
    back.unwrap_or_else(|e| panic!("{e}: {:?}\n{}", h.kernels(), tails(&h)));
    h.run_for(Duration::from_secs(2), 1).await;
    let leader = h.leader().await.unwrap();
    h.check_marks(leader).await.unwrap();
    settle_and_verify(&mut h, 128).await;
}
