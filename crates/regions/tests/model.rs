//! Model-based test: random command sequences from several nodes, applied
//! to the machine and to a deliberately naive reference model (vectors of
//! booleans and tuples, linear scans, no shared code), comparing every
//! answer, every eviction's kick list and the whole observable state after
//! every step, and running every invariant check.
//!
//! Sequences cover marks, clears, flushes with and without marks, resync
//! work, set-sync, suspend/resume, table reloads (several luids per node),
//! evictions, rejoins after reboot, and kernel re-sends (the same request
//! applied again, as the kernel does with a new seq after a timeout).

#![allow(clippy::unwrap_used, clippy::panic)]

mod support;

use proptest::prelude::*;
use regions::{Command, DiskImage, Instance, KernelOp, Machine, NodeId, Query, disk};
use wire::{Answer, Errno, Luid, Region, Uuid};

/// What the model knows of a constructor string: (regions, disk, nosync).
type Geometry = (usize, bool, bool);

/// Constructor strings with their geometry, or `None` when invalid.
const ARGS: [(&str, Option<Geometry>); 5] = [
    ("64 clustered-core 8", Some((8, false, false))),
    ("64 clustered-core 8 nosync", Some((8, false, true))),
    ("128 clustered-core 8", Some((16, false, false))),
    ("64 clustered-disk 253:3 8", Some((8, true, false))),
    ("64 clustered-core 7", None),
];
const UUIDS: [&str; 2] = ["A", "B"];

#[derive(Clone, Debug)]
enum Image {
    None,
    Fresh,
    Valid(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Join(u64, u64),
    Evict(u64),
    Kernel(u64, u64, usize, KOp),
    Query(u64, u64, usize, QOp),
    Resend,
}

#[derive(Clone, Debug)]
enum KOp {
    Ctr(usize),
    Dtr,
    Presuspend,
    Postsuspend,
    Resume(Image),
    Mark(Vec<u64>),
    Clear(Vec<u64>),
    Flush(Vec<u64>),
    Work,
    SetSync(u64, bool),
}

#[derive(Clone, Debug)]
enum QOp {
    RegionSize,
    IsClean(u64),
    InSync(u64),
    SyncCount,
    Status,
    Recovering(u64),
}

// ---------------------------------------------------------------------
// The naive model.

#[derive(Clone, Debug)]
struct MInst {
    node: u64,
    luid: u64,
    phase: u8, // 0 constructed, 1 resumed, 2 presuspended, 3 suspended
    args: usize,
    ever: bool,
}

#[derive(Clone, Debug)]
struct MLog {
    uuid: usize,
    n: usize,
    disk: bool,
    clean: Vec<bool>,
    sync: Vec<bool>,
    marks: Vec<(u64, u64, u64)>,
    insts: Vec<MInst>,
    assigned: Vec<(u64, u64, u64)>,
    /// Regions claimed ahead for resync: (node, luid, region).
    claimed: Vec<(u64, u64, u64)>,
    failed: Vec<u64>,
    activated: bool,
    awaiting: Vec<u64>,
    /// Nodes of `awaiting` whose kernel suspended since the eviction: only
    /// their RESUME was prepared after it.
    suspended_since: Vec<u64>,
    unsettled: Vec<u64>,
    kick_queue: Vec<u64>,
    kicking: Option<u64>,
    /// Nodes idle at an eviction, with its regions: unsettled behind their
    /// hint at their next RESUME.
    behind: Vec<(u64, Vec<u64>)>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    members: Vec<(u64, u64)>,
    logs: Vec<MLog>,
}

type Out = (Result<Answer, Errno>, Vec<u64>);

fn done() -> Out {
    (Ok(Answer::Done), vec![])
}
fn err(e: Errno) -> Out {
    (Err(e), vec![])
}

impl MLog {
    fn fresh(uuid: usize, args: usize) -> MLog {
        let (n, disk, nosync) = ARGS[args].1.unwrap();
        MLog {
            uuid,
            n,
            disk,
            clean: vec![nosync; n],
            sync: vec![nosync; n],
            marks: vec![],
            insts: vec![],
            assigned: vec![],
            claimed: vec![],
            failed: vec![],
            activated: false,
            awaiting: vec![],
            suspended_since: vec![],
            unsettled: vec![],
            kick_queue: vec![],
            kicking: None,
            behind: vec![],
        }
    }
    fn settle(&mut self, node: u64) -> Option<u64> {
        self.awaiting.retain(|n| *n != node);
        self.suspended_since.retain(|n| *n != node);
        self.kick_queue.retain(|n| *n != node);
        if self.kicking == Some(node) {
            self.kicking = None;
        }
        if self.awaiting.is_empty() {
            self.unsettled.clear();
        }
        self.next_kick()
    }

    fn next_kick(&mut self) -> Option<u64> {
        if self.kicking.is_some() || self.kick_queue.is_empty() {
            return None;
        }
        let n = self.kick_queue.remove(0);
        self.kicking = Some(n);
        Some(n)
    }

    fn marked(&self, r: u64) -> bool {
        self.marks.iter().any(|m| m.2 == r)
    }
    fn clear_one(&mut self, node: u64, luid: u64, r: u64) {
        self.marks.retain(|m| *m != (node, luid, r));
        if !self.marked(r) && self.sync[r as usize] {
            self.clean[r as usize] = true;
        }
    }
    fn drop_inst(&mut self, node: u64, luid: u64, evict: bool) -> Vec<u64> {
        let mine: Vec<u64> = self.marks.iter().filter(|m| m.0 == node && m.1 == luid).map(|m| m.2).collect();
        let mut went = vec![];
        for r in mine {
            if evict {
                self.marks.retain(|m| *m != (node, luid, r));
                if self.sync[r as usize] {
                    went.push(r);
                }
                self.sync[r as usize] = false;
                self.clean[r as usize] = false;
            } else {
                self.clear_one(node, luid, r);
            }
        }
        self.assigned.retain(|a| !(a.0 == node && a.1 == luid));
        self.claimed.retain(|a| !(a.0 == node && a.1 == luid));
        self.insts.retain(|i| !(i.node == node && i.luid == luid));
        went
    }
}

impl Model {
    fn member(&self, n: u64) -> bool {
        self.members.iter().any(|m| m.0 == n)
    }

    fn evict_instances(&mut self, node: u64) -> Vec<u64> {
        let mut kicked = vec![];
        for log in &mut self.logs {
            let luids: Vec<u64> = log.insts.iter().filter(|i| i.node == node).map(|i| i.luid).collect();
            let mut went = vec![];
            for l in luids {
                went.extend(log.drop_inst(node, l, true));
            }
            kicked.extend(log.settle(node));
            log.behind.retain(|(n, _)| *n != node);
            if !went.is_empty() {
                let mut idle: Vec<u64> = log
                    .insts
                    .iter()
                    .map(|i| i.node)
                    .filter(|n| *n != node && !log.insts.iter().any(|i| i.node == *n && (i.phase == 1 || i.phase == 2)))
                    .collect();
                idle.sort();
                idle.dedup();
                for n in idle {
                    match log.behind.iter_mut().find(|(b, _)| *b == n) {
                        Some((_, rs)) => rs.extend(went.iter().copied()),
                        None => log.behind.push((n, went.clone())),
                    }
                }
                let mut ns: Vec<u64> = log
                    .insts
                    .iter()
                    .filter(|i| i.node != node && (i.phase == 1 || i.phase == 2))
                    .map(|i| i.node)
                    .collect();
                ns.sort();
                ns.dedup();
                for n in &ns {
                    log.suspended_since.retain(|s| s != n);
                    if !log.awaiting.contains(n) {
                        log.awaiting.push(*n);
                        log.kick_queue.push(*n);
                    }
                }
                if !ns.is_empty() {
                    log.unsettled.extend(went);
                }
                kicked.extend(log.next_kick());
            }
        }
        kicked
    }

    fn apply(&mut self, op: &Op) -> Out {
        match op {
            Op::Join(n, inc) => {
                let mut kicked = vec![];
                if let Some(pos) = self.members.iter().position(|m| m.0 == *n) {
                    if self.members[pos].1 != *inc {
                        kicked = self.evict_instances(*n);
                    }
                    self.members[pos].1 = *inc;
                } else {
                    self.members.push((*n, *inc));
                }
                (Ok(Answer::Done), kicked)
            }
            Op::Evict(n) => {
                self.members.retain(|m| m.0 != *n);
                (Ok(Answer::Done), self.evict_instances(*n))
            }
            Op::Kernel(n, l, u, k) => self.kernel(*n, *l, *u, k),
            Op::Query(n, l, u, q) => (self.query(*n, *l, *u, q), vec![]),
            Op::Resend => unreachable!(),
        }
    }

    fn kernel(&mut self, node: u64, luid: u64, u: usize, k: &KOp) -> Out {
        if !self.member(node) {
            return err(Errno::ENOENT);
        }
        if let KOp::Ctr(a) = k {
            return self.ctr(node, luid, u, *a);
        }
        let Some(li) = self.logs.iter().position(|l| l.uuid == u) else {
            return if matches!(k, KOp::Dtr) { done() } else { err(Errno::ENOENT) };
        };
        let log = &mut self.logs[li];
        let Some(ii) = log.insts.iter().position(|i| i.node == node && i.luid == luid) else {
            return if matches!(k, KOp::Dtr) { done() } else { err(Errno::ENOENT) };
        };
        let inbounds = |rs: &[u64], n: usize| rs.iter().all(|&r| (r as usize) < n);
        match k {
            KOp::Ctr(_) => unreachable!(),
            KOp::Dtr => {
                log.drop_inst(node, luid, false);
                if !log.insts.iter().any(|i| i.node == node) {
                    log.behind.retain(|(n, _)| *n != node);
                }
                if log.insts.is_empty() && log.sync.iter().all(|s| *s) {
                    self.logs.remove(li);
                }
                done()
            }
            KOp::Presuspend | KOp::Postsuspend => {
                log.assigned.retain(|a| !(a.0 == node && a.1 == luid));
                log.claimed.retain(|a| !(a.0 == node && a.1 == luid));
                log.insts[ii].phase = if matches!(k, KOp::Presuspend) { 2 } else { 3 };
                if matches!(k, KOp::Postsuspend) && log.awaiting.contains(&node) && !log.suspended_since.contains(&node)
                {
                    log.suspended_since.push(node);
                }
                done()
            }
            KOp::Resume(img) => {
                if !log.activated {
                    log.activated = true;
                    if log.disk {
                        let bits: Vec<bool> = (0..log.n)
                            .map(|r| match img {
                                Image::Valid(p) => r < 8 && p & (1 << r) != 0,
                                _ => false,
                            })
                            .collect();
                        log.clean = bits.clone();
                        log.sync = bits;
                        for m in log.marks.clone() {
                            log.clean[m.2 as usize] = false;
                        }
                    }
                }
                log.insts[ii].phase = 1;
                log.insts[ii].ever = true;
                log.failed.clear();
                // A RESUME that may have been prepared before the eviction
                // (no suspend since) settles nothing.
                let mut kicked = vec![];
                if !log.awaiting.contains(&node) || log.suspended_since.contains(&node) {
                    kicked.extend(log.settle(node));
                }
                // One prepared before an eviction that found the node idle
                // may carry a stale hint: unsettle those regions, kick it.
                if let Some(pos) = log.behind.iter().position(|(b, _)| *b == node) {
                    let (_, rs) = log.behind.remove(pos);
                    let mut rs: Vec<u64> = rs.into_iter().filter(|r| !log.sync[*r as usize]).collect();
                    rs.sort();
                    rs.dedup();
                    if !rs.is_empty() {
                        log.assigned.retain(|a| !rs.contains(&a.2));
                        log.claimed.retain(|a| !rs.contains(&a.2));
                        log.unsettled.extend(rs);
                        log.suspended_since.retain(|s| *s != node);
                        if !log.awaiting.contains(&node) {
                            log.awaiting.push(node);
                            log.kick_queue.push(node);
                        }
                        kicked.extend(log.next_kick());
                    }
                }
                (Ok(Answer::Done), kicked)
            }
            KOp::Mark(rs) | KOp::Flush(rs) => {
                if !inbounds(rs, log.n) {
                    return err(Errno::EINVAL);
                }
                for &r in rs {
                    if !log.marks.contains(&(node, luid, r)) {
                        log.marks.push((node, luid, r));
                    }
                    log.clean[r as usize] = false;
                }
                done()
            }
            KOp::Clear(rs) => {
                if !inbounds(rs, log.n) {
                    return err(Errno::EINVAL);
                }
                for &r in rs {
                    log.clear_one(node, luid, r);
                }
                done()
            }
            KOp::Work => {
                if log.insts[ii].phase != 1 {
                    return (Ok(Answer::ResyncWork(None)), vec![]);
                }
                if let Some(a) = log.assigned.iter().find(|a| a.0 == node && a.1 == luid) {
                    return (Ok(Answer::ResyncWork(Some(Region(a.2)))), vec![]);
                }
                let copyable = |log: &MLog, r: u64| {
                    !log.sync[r as usize]
                        && !log.failed.contains(&r)
                        && !log.unsettled.contains(&r)
                        && log.marks.iter().filter(|m| m.2 == r).all(|m| m.0 == node && m.1 == luid)
                };
                // Its own claims first, lowest first; those it can no
                // longer copy are dropped.
                let mut mine: Vec<u64> =
                    log.claimed.iter().filter(|a| a.0 == node && a.1 == luid).map(|a| a.2).collect();
                mine.sort();
                log.claimed.retain(|a| !(a.0 == node && a.1 == luid));
                let mine: Vec<u64> = mine.into_iter().filter(|r| copyable(log, *r)).collect();
                if let Some((&first, rest)) = mine.split_first() {
                    log.claimed.extend(rest.iter().map(|r| (node, luid, *r)));
                    log.assigned.push((node, luid, first));
                    return (Ok(Answer::ResyncWork(Some(Region(first)))), vec![]);
                }
                let free: Vec<u64> = (0..log.n as u64)
                    .filter(|&r| {
                        copyable(log, r)
                            && !log.assigned.iter().any(|a| a.2 == r)
                            && !log.claimed.iter().any(|a| a.2 == r)
                    })
                    .take(regions::limits::RESYNC_CLAIM)
                    .collect();
                if let Some((&first, rest)) = free.split_first() {
                    log.assigned.push((node, luid, first));
                    log.claimed.extend(rest.iter().map(|r| (node, luid, *r)));
                    return (Ok(Answer::ResyncWork(Some(Region(first)))), vec![]);
                }
                (Ok(Answer::ResyncWork(None)), vec![])
            }
            KOp::SetSync(r, s) => {
                if *r as usize >= log.n {
                    return err(Errno::EINVAL);
                }
                let assigned = log.assigned.contains(&(node, luid, *r)) || log.claimed.contains(&(node, luid, *r));
                log.assigned.retain(|a| *a != (node, luid, *r));
                log.claimed.retain(|a| *a != (node, luid, *r));
                if *s {
                    if assigned {
                        log.sync[*r as usize] = true;
                        log.failed.retain(|f| f != r);
                    }
                } else {
                    log.sync[*r as usize] = false;
                    log.clean[*r as usize] = false;
                    log.unsettled.retain(|u| u != r);
                    if assigned && !log.failed.contains(r) {
                        log.failed.push(*r);
                    }
                }
                done()
            }
        }
    }

    fn ctr(&mut self, node: u64, luid: u64, u: usize, a: usize) -> Out {
        let Some((n, disk, _)) = ARGS[a].1 else { return err(Errno::EINVAL) };
        let answer = if disk { Answer::CtrDevice("253:3".into()) } else { Answer::Done };
        if !self.logs.iter().any(|l| l.uuid == u) {
            self.logs.push(MLog::fresh(u, a));
        }
        let log = self.logs.iter_mut().find(|l| l.uuid == u).unwrap();
        if let Some(i) = log.insts.iter().find(|i| i.node == node && i.luid == luid) {
            if i.args == a {
                return (Ok(answer), vec![]);
            }
            if i.ever {
                return err(Errno::EEXIST);
            }
            log.drop_inst(node, luid, false);
        }
        if log.n != n || log.disk != disk {
            if !log.insts.is_empty() {
                return err(Errno::EINVAL);
            }
            *log = MLog::fresh(u, a);
        }
        log.insts.push(MInst { node, luid, phase: 0, args: a, ever: false });
        (Ok(answer), vec![])
    }

    fn query(&self, node: u64, luid: u64, u: usize, q: &QOp) -> Result<Answer, Errno> {
        if !self.member(node) {
            return Err(Errno::ENOENT);
        }
        let log = self.logs.iter().find(|l| l.uuid == u).ok_or(Errno::ENOENT)?;
        let inst = log.insts.iter().find(|i| i.node == node && i.luid == luid).ok_or(Errno::ENOENT)?;
        let check = |r: u64| if (r as usize) < log.n { Ok(r as usize) } else { Err(Errno::EINVAL) };
        Ok(match q {
            QOp::RegionSize => Answer::RegionSize(8),
            QOp::IsClean(r) => Answer::Bool(log.clean[check(*r)?]),
            QOp::InSync(r) => {
                let i = check(*r)?;
                Answer::Bool(log.sync[i] || log.unsettled.contains(r))
            }
            QOp::SyncCount => Answer::SyncCount(log.sync.iter().filter(|s| **s).count() as u64),
            QOp::Status => {
                let (_, disk, _) = ARGS[inst.args].1.unwrap();
                Answer::Text(if disk { "3 clustered-disk 253:3 A".into() } else { "1 clustered-core".into() })
            }
            QOp::Recovering(r) => {
                let r = check(*r)?;
                let running = log.insts.iter().any(|i| i.phase == 1);
                let stale = log.unsettled.contains(&(r as u64)) && log.awaiting.contains(&node);
                let rec = !log.sync[r] && !log.failed.contains(&(r as u64)) && !stale && running;
                // A kernel behind a stale hint skips the unsettled regions.
                let skips = log.awaiting.contains(&node);
                let hint = (0..log.n)
                    .find(|&r| !log.sync[r] && (!skips || !log.unsettled.contains(&(r as u64))))
                    .unwrap_or(log.n) as u64;
                Answer::RemoteRecovering { is_recovering: rec, in_sync_hint: hint }
            }
        })
    }
}

// ---------------------------------------------------------------------
// Driving the real machine.

fn uuid(u: usize) -> Uuid {
    Uuid::new(UUIDS[u]).unwrap()
}

fn to_regions(rs: &[u64]) -> Vec<Region> {
    rs.iter().copied().map(Region).collect()
}

fn real(m: &mut Machine, op: &Op) -> Out {
    let cmd = match op {
        Op::Join(n, inc) => Command::NodeJoined { node: NodeId(*n), incarnation: *inc, session: 0 },
        Op::Evict(n) => Command::NodeEvicted { node: NodeId(*n) },
        Op::Query(n, l, u, q) => {
            let query = match q {
                QOp::RegionSize => Query::GetRegionSize,
                QOp::IsClean(r) => Query::IsClean(Region(*r)),
                QOp::InSync(r) => Query::InSync(Region(*r)),
                QOp::SyncCount => Query::GetSyncCount,
                QOp::Status => Query::StatusInfo,
                QOp::Recovering(r) => Query::IsRemoteRecovering(Region(*r)),
            };
            let i = Instance { node: NodeId(*n), luid: Luid(*l) };
            let a = m.read(&uuid(*u), i, &query);
            if let (Ok(ans), Some(log)) = (&a, m.log(&uuid(*u))) {
                regions::invariants::check_answer(log, i, Some(&query), ans).unwrap();
            }
            return (a.map_err(|e| e.errno()), vec![]);
        }
        Op::Kernel(n, l, u, k) => {
            let op = match k {
                KOp::Ctr(a) => KernelOp::Ctr { args: ARGS[*a].0.into() },
                KOp::Dtr => KernelOp::Dtr,
                KOp::Presuspend => KernelOp::Presuspend,
                KOp::Postsuspend => KernelOp::Postsuspend,
                KOp::Resume(img) => KernelOp::Resume {
                    disk: match img {
                        Image::None => None,
                        Image::Fresh => Some(DiskImage::Fresh { reason: "zeroed".into() }),
                        Image::Valid(p) => {
                            let bits = regions::Bitmap::from_bytes(8, &[*p]);
                            Some(DiskImage::parse(&disk::encode(&bits), 8))
                        }
                    },
                },
                KOp::Mark(rs) => KernelOp::Mark(to_regions(rs)),
                KOp::Clear(rs) => KernelOp::Clear(to_regions(rs)),
                KOp::Flush(rs) => KernelOp::Flush { marks: to_regions(rs) },
                KOp::Work => KernelOp::GetResyncWork,
                KOp::SetSync(r, s) => KernelOp::SetRegionSync { region: Region(*r), in_sync: *s },
            };
            Command::Kernel { uuid: uuid(*u), instance: Instance { node: NodeId(*n), luid: Luid(*l) }, session: 0, op }
        }
        Op::Resend => unreachable!(),
    };
    let applied = m.apply(&cmd);
    if let (Ok(Answer::ResyncWork(Some(r))), Command::Kernel { uuid, instance, .. }) = (&applied.outcome, &cmd) {
        regions::invariants::i09_resync_answer(m.log(uuid).unwrap(), *instance, *r).unwrap();
    }
    (applied.outcome.map_err(|e| e.errno()), support::kicked(&applied.effects))
}

fn same_state(model: &Model, m: &Machine) -> Result<(), String> {
    if model.logs.len() != m.logs().len() {
        return Err(format!("{} logs in the model, {} in the machine", model.logs.len(), m.logs().len()));
    }
    for ml in &model.logs {
        let log = m.log(&uuid(ml.uuid)).ok_or("log missing")?;
        for r in 0..ml.n as u64 {
            let (c, s) = (log.is_clean(Region(r)), log.in_sync(Region(r)));
            if (c, s) != (ml.clean[r as usize], ml.sync[r as usize]) {
                return Err(format!(
                    "region {r}: machine clean={c} sync={s}, model {:?}",
                    (ml.clean[r as usize], ml.sync[r as usize])
                ));
            }
        }
        let mut want: Vec<(u64, u64, u64)> = ml.marks.clone();
        want.sort();
        let mut got: Vec<(u64, u64, u64)> =
            log.marks().iter().flat_map(|(r, who)| who.iter().map(move |i| (i.node.0, i.luid.0, r.0))).collect();
        got.sort();
        if want != got {
            return Err(format!("marks: machine {got:?}, model {want:?}"));
        }
        let mut want: Vec<(u64, u64, u64)> = ml.claimed.clone();
        want.sort();
        let got: Vec<(u64, u64, u64)> =
            log.claims().iter().flat_map(|(i, rs)| rs.iter().map(move |r| (i.node.0, i.luid.0, r.0))).collect();
        if want != got {
            return Err(format!("claims: machine {got:?}, model {want:?}"));
        }
        let mut want: Vec<(u64, u64, u64)> = ml.assigned.clone();
        want.sort();
        let got: Vec<(u64, u64, u64)> = log.assignments().iter().map(|(i, r)| (i.node.0, i.luid.0, r.0)).collect();
        if want != got {
            return Err(format!("assignments: machine {got:?}, model {want:?}"));
        }
        let mut want: Vec<(u64, u64, u8)> = ml.insts.iter().map(|i| (i.node, i.luid, i.phase)).collect();
        want.sort();
        let got: Vec<(u64, u64, u8)> = log
            .instances()
            .iter()
            .map(|(i, s)| {
                let p = match s.phase {
                    regions::Phase::Constructed => 0,
                    regions::Phase::Resumed => 1,
                    regions::Phase::Presuspended => 2,
                    regions::Phase::Suspended => 3,
                };
                (i.node.0, i.luid.0, p)
            })
            .collect();
        if want != got {
            return Err(format!("instances: machine {got:?}, model {want:?}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------
// Generators.

fn region() -> impl Strategy<Value = u64> {
    prop_oneof![9 => 0u64..8, 1 => 8u64..17]
}

fn kop() -> impl Strategy<Value = KOp> {
    prop_oneof![
        3 => (0usize..5).prop_map(KOp::Ctr),
        1 => Just(KOp::Dtr),
        1 => Just(KOp::Presuspend),
        1 => Just(KOp::Postsuspend),
        3 => prop_oneof![Just(Image::None), Just(Image::Fresh), any::<u8>().prop_map(Image::Valid)].prop_map(KOp::Resume),
        6 => prop::collection::vec(region(), 1..4).prop_map(KOp::Mark),
        6 => prop::collection::vec(region(), 1..4).prop_map(KOp::Clear),
        4 => prop::collection::vec(region(), 0..4).prop_map(KOp::Flush),
        5 => Just(KOp::Work),
        4 => (region(), any::<bool>()).prop_map(|(r, s)| KOp::SetSync(r, s)),
    ]
}

fn qop() -> impl Strategy<Value = QOp> {
    prop_oneof![
        Just(QOp::RegionSize),
        region().prop_map(QOp::IsClean),
        region().prop_map(QOp::InSync),
        Just(QOp::SyncCount),
        Just(QOp::Status),
        region().prop_map(QOp::Recovering),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let who = (1u64..=3, 1u64..=2, 0usize..2);
    prop_oneof![
        1 => (1u64..=4, 1u64..=2).prop_map(|(n, i)| Op::Join(n, i)),
        1 => (1u64..=3).prop_map(Op::Evict),
        20 => (who.clone(), kop()).prop_map(|((n, l, u), k)| Op::Kernel(n, l, u, k)),
        8 => (who, qop()).prop_map(|((n, l, u), q)| Op::Query(n, l, u, q)),
        3 => Just(Op::Resend),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn machine_matches_the_naive_model(ops in prop::collection::vec(op(), 1..150)) {
        let mut model = Model::default();
        let mut m = Machine::new();
        for n in 1..=3 {
            let join = Op::Join(n, 1);
            prop_assert_eq!(model.apply(&join), real(&mut m, &join));
        }
        let mut last: Option<Op> = None;
        for (step, op) in ops.iter().enumerate() {
            let op = match op {
                Op::Resend => match &last { Some(l) => l.clone(), None => continue },
                other => other.clone(),
            };
            let mut want = model.apply(&op);
            let mut got = real(&mut m, &op);
            // Kicks of different logs come in no particular order.
            want.1.sort();
            got.1.sort();
            prop_assert_eq!(&got, &want, "step {} {:?}", step, op);
            if let Err(v) = m.check() {
                prop_assert!(false, "step {} {:?}: {}", step, op, v);
            }
            if let Err(e) = same_state(&model, &m) {
                prop_assert!(false, "step {} {:?}: {}", step, op, e);
            }
            last = Some(op);
        }
        // Snapshots restore to the same machine.
        prop_assert_eq!(Machine::restore(&m.snapshot()).unwrap(), m);
    }
}
