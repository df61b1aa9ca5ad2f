//! Several simulated kernels sharing one mirror and one in-process region
//! machine. There is no replication here (that is the replication crate's
//! job): the point is to exercise the region semantics end to end with the
//! kernel's real request sequences, shared legs, crashes and evictions, and
//! to check from outside the machine what a correct log must guarantee:
//!
//! * every invariant of the machine after every request (I2–I13);
//! * I1 from the kernel's side: a region with a write in flight is never
//!   clean in the log;
//! * I5: no kernel is told a region (or the whole mirror) is in sync while
//!   its legs differ, unless a write is in flight there or its writer
//!   crashed and the cluster has not caught up yet;
//! * convergence: after a crash, eviction and quiet, every survivor reports
//!   the mirror in sync and the legs are identical.
//!
//! Everything is driven by one seeded RNG, so a failure replays exactly.

use std::collections::BTreeMap;

use kernel_sim::{Config, Kernel, Legs, Life, MirrorId, SharedLegs, Table};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use regions::{Command, Effect, Machine, NodeId};
use wire::{Frame, Uuid};

/// Knobs of a run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Mirror length in sectors.
    pub target_sectors: u64,
    /// The log arguments, e.g. `"clustered-core 8 nosync"`.
    pub log_args: String,
    /// Integrated flush.
    pub integrated_flush: bool,
    /// Percentage of replies lost (the kernel re-sends after 15 s).
    pub drop_reply_pct: u32,
    /// Percentage of requests delivered twice (the second reply is stale).
    pub duplicate_pct: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 3,
            target_sectors: 64 * 8,
            log_args: "clustered-core 8 nosync".into(),
            integrated_flush: false,
            drop_reply_pct: 0,
            duplicate_pct: 0,
        }
    }
}

/// One node: its kernel (None once crashed) and its mirror.
pub struct Node {
    /// The node id.
    pub id: NodeId,
    /// Its kernel, `None` after a crash.
    pub kernel: Option<Kernel>,
    /// Its mirror table.
    pub mirror: MirrorId,
    /// Boot count, the incarnation the node joins with.
    pub incarnation: u64,
}

/// The cluster under test.
pub struct Cluster {
    /// The one region machine.
    pub machine: Machine,
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, Node>,
    /// The mirror's legs, shared by all kernels.
    pub legs: SharedLegs,
    /// The table every node loads.
    pub table: Table,
    /// Simulated time.
    pub now_ms: u64,
    /// The run's RNG.
    pub rng: SmallRng,
    /// Options.
    pub options: Options,
    /// Kernel kicks carried out (suspend + resume after an eviction).
    pub kicks: u64,
    /// What went wrong, if anything.
    pub violations: Vec<String>,
    /// Requests handled.
    pub requests: u64,
    /// Regions resynced by kernels that have since crashed.
    pub recovered_by_crashed: u64,
    /// Debug: trace requests touching this region (`DMLOGD_TRACE_REGION`).
    pub trace_region: Option<u64>,
    /// Debug trace lines.
    pub trace: Vec<String>,
}

impl Cluster {
    /// Starts `options.nodes` nodes, each loading the mirror table.
    pub fn new(options: Options, seed: u64) -> Cluster {
        let uuid = Uuid::new("LVM-sim-mirror").unwrap_or_else(|| unreachable!("a valid literal"));
        let table = Table {
            uuid,
            target_sectors: options.target_sectors,
            log_args: options.log_args.clone(),
            integrated_flush: options.integrated_flush,
        };
        let region_size = options.log_args.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8u64);
        let regions = options.target_sectors.div_ceil(region_size.max(1));
        let in_sync_at_start = options.log_args.contains("nosync");
        let legs = SharedLegs::new(Legs::new(regions, !in_sync_at_start));
        let mut c = Cluster {
            machine: Machine::new(),
            nodes: BTreeMap::new(),
            legs,
            table,
            now_ms: 0,
            rng: SmallRng::seed_from_u64(seed),
            options,
            kicks: 0,
            violations: Vec::new(),
            requests: 0,
            recovered_by_crashed: 0,
            trace_region: std::env::var("DMLOGD_TRACE_REGION").ok().and_then(|s| s.parse().ok()),
            trace: Vec::new(),
        };
        for id in 1..=c.options.nodes {
            c.boot(id, 1);
        }
        c
    }

    /// Boots node `id` (its kernel and table) with `incarnation`.
    pub fn boot(&mut self, id: u64, incarnation: u64) {
        let applied =
            self.machine.apply(&Command::NodeJoined { node: NodeId(id), incarnation, session: crate::local::SESSION });
        self.effects(&applied.effects);
        let mut kernel = Kernel::new(Config::default(), u32::try_from(id * 100_000).unwrap_or(0), id << 40);
        kernel.advance_to(self.now_ms);
        let mirror = kernel.create(self.table.clone(), self.legs.clone());
        self.nodes.insert(id, Node { id: NodeId(id), kernel: Some(kernel), mirror, incarnation });
    }

    /// Node ids whose kernel runs.
    pub fn live(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.kernel.is_some()).map(|n| n.id.0).collect()
    }

    /// Regions of the mirror.
    pub fn region_count(&self) -> u64 {
        self.legs.lock().regions()
    }

    /// A write from node `id` to `region`.
    pub fn write(&mut self, id: u64, region: u64) {
        if let Some(Node { kernel: Some(k), mirror, .. }) = self.nodes.get_mut(&id) {
            k.write(*mirror, region);
        }
    }

    /// `dmsetup status` on node `id`.
    pub fn status(&mut self, id: u64) {
        if let Some(Node { kernel: Some(k), mirror, .. }) = self.nodes.get_mut(&id) {
            k.status(*mirror);
        }
    }

    /// Node `id` dies: its kernel vanishes with its writes in flight.
    pub fn crash(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id)
            && let Some(k) = node.kernel.take()
        {
            self.violations.extend(k.violations().iter().map(|v| format!("n{id} at {} ms: {}", v.at_ms, v.what)));
            self.recovered_by_crashed += k.stats().regions_recovered;
            k.crash();
            self.trace.push(format!("{} n{id} CRASH", self.now_ms));
        }
    }

    /// The cluster declares node `id` dead.
    pub fn evict(&mut self, id: u64) {
        self.trace.push(format!("{} n{id} EVICTED", self.now_ms));
        let applied = self.machine.apply(&Command::NodeEvicted { node: NodeId(id) });
        self.effects(&applied.effects);
        self.check();
    }

    /// Node `id` reboots and rejoins with a new incarnation.
    pub fn reboot(&mut self, id: u64) {
        let inc = self.nodes.get(&id).map(|n| n.incarnation + 1).unwrap_or(1);
        self.boot(id, inc);
    }

    fn effects(&mut self, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::KickKernel { node, .. } => {
                    if let Some(Node { kernel: Some(k), mirror, .. }) = self.nodes.get_mut(&node.0) {
                        k.kick(*mirror);
                        self.kicks += 1;
                    }
                }
                Effect::WakeRecovery { node, .. } => {
                    // A read wakes kmirrord, whose pass asks for resync work.
                    if let Some(Node { kernel: Some(k), mirror, .. }) = self.nodes.get_mut(&node.0) {
                        k.read(*mirror, 0);
                    }
                }
                Effect::PersistDiskLog { .. } | Effect::LeaseRenewed { .. } => {}
            }
        }
    }

    /// Delivers every pending request of every live kernel; returns whether
    /// there were any.
    fn pump(&mut self) -> bool {
        let mut ids = self.live();
        // Nodes' requests reach the log in a seeded random order.
        for i in (1..ids.len()).rev() {
            let j = self.rng.random_range(0..=i);
            ids.swap(i, j);
        }
        let mut any = false;
        for id in ids {
            let requests = match self.nodes.get_mut(&id).and_then(|n| n.kernel.as_mut()) {
                Some(k) => k.take_requests(),
                None => continue,
            };
            for datagram in requests {
                any = true;
                let copies = if self.rng.random_range(0..100) < self.options.duplicate_pct { 2 } else { 1 };
                for _ in 0..copies {
                    let reply = self.handle(id, &datagram);
                    let lost = self.rng.random_range(0..100) < self.options.drop_reply_pct;
                    if let (Some(reply), false) = (reply, lost)
                        && let Some(k) = self.nodes.get_mut(&id).and_then(|n| n.kernel.as_mut())
                    {
                        k.deliver(&reply);
                    }
                }
                self.check();
            }
        }
        any
    }

    fn handle(&mut self, id: u64, datagram: &[u8]) -> Option<Vec<u8>> {
        self.requests += 1;
        let frame = Frame::parse(datagram).ok()?;
        let msg = frame.message().ok()?;
        let (result, effects) = crate::local::handle(&mut self.machine, NodeId(id), &msg);
        if let Some(tr) = self.trace_region {
            let touches = match &msg.request {
                wire::Request::InSync(r)
                | wire::Request::IsRemoteRecovering(r)
                | wire::Request::SetRegionSync { region: r, .. } => r.0 == tr,
                wire::Request::MarkRegion(rs) | wire::Request::ClearRegion(rs) | wire::Request::Flush { marks: rs } => {
                    rs.iter().any(|r| r.0 == tr)
                }
                wire::Request::GetResyncWork => matches!(result, Ok(wire::Answer::ResyncWork(Some(r))) if r.0 == tr),
                _ => false,
            };
            if touches {
                let legs = self.legs.lock();
                let l = format!(
                    "{} n{id} {:?} -> {:?} legs {:?}/{:?}",
                    self.now_ms, msg.request, result, legs.leg0[tr as usize], legs.leg1[tr as usize]
                );
                drop(legs);
                self.trace.push(l);
            }
        }
        self.effects(&effects);
        node::pipeline::reply(&msg, result)
    }

    /// Checks the machine and, from each kernel's side, I1: a region with a
    /// write in flight is not clean in the log.
    fn check(&mut self) {
        if let Err(v) = self.machine.check() {
            self.violations.push(format!("at {} ms: {v}", self.now_ms));
        }
        let Some(log) = self.machine.log(&self.table.uuid) else { return };
        for node in self.nodes.values() {
            let Some(view) = node.kernel.as_ref().and_then(|k| k.mirror(node.mirror)) else { continue };
            let writing: Vec<wire::Region> = view.inflight_regions.into_iter().map(wire::Region).collect();
            if let Err(v) = regions::invariants::i01_written_regions_not_clean(log, &writing) {
                self.violations.push(format!("at {} ms, {} writing: {v}", self.now_ms, node.id));
            }
        }
    }

    /// Runs until simulated time `t`.
    pub fn run_until(&mut self, t: u64) {
        loop {
            while self.pump() {}
            let next = self.nodes.values().filter_map(|n| n.kernel.as_ref()?.next_event_ms()).min();
            match next {
                Some(n) if n <= t => self.advance(n.max(self.now_ms)),
                _ => {
                    self.advance(t.max(self.now_ms));
                    while self.pump() {}
                    return;
                }
            }
        }
    }

    fn advance(&mut self, t: u64) {
        self.now_ms = t;
        for n in self.nodes.values_mut() {
            if let Some(k) = n.kernel.as_mut() {
                k.advance_to(t);
            }
        }
    }

    /// Runs until every live kernel is idle (or `limit_ms` passes).
    pub fn settle(&mut self, limit_ms: u64) -> bool {
        let deadline = self.now_ms + limit_ms;
        while self.now_ms < deadline {
            let idle = self.nodes.values().all(|n| n.kernel.as_ref().is_none_or(|k| k.is_idle()));
            if idle {
                return true;
            }
            let step = (self.now_ms + 100).min(deadline);
            self.run_until(step);
        }
        false
    }

    /// A random workload for `duration_ms`: every 10 ms each live node
    /// writes a region with probability `pct` %, half of them in a small
    /// shared hot set so that nodes overlap.
    pub fn workload(&mut self, duration_ms: u64, pct: u32) {
        let end = self.now_ms + duration_ms;
        let n = self.region_count();
        while self.now_ms < end {
            for id in self.live() {
                if self.rng.random_range(0..100) < pct {
                    let r = if self.rng.random_bool(0.5) {
                        self.rng.random_range(0..4.min(n))
                    } else {
                        self.rng.random_range(0..n)
                    };
                    self.write(id, r);
                }
            }
            let t = self.now_ms + 10;
            self.run_until(t);
        }
    }

    /// Keeps node `id` writing `region` until one of its writes is in
    /// flight (the default leg written, the second not yet): the moment
    /// to crash it. Returns whether that happened within a second.
    pub fn write_until_in_flight(&mut self, id: u64, region: u64) -> bool {
        for _ in 0..1000 {
            if self.writing(id) {
                return true;
            }
            self.write(id, region);
            let t = self.now_ms + 1;
            self.run_until(t);
        }
        false
    }

    /// Whether node `id` has a write in flight.
    pub fn writing(&self, id: u64) -> bool {
        self.nodes
            .get(&id)
            .and_then(|n| n.kernel.as_ref()?.mirror(n.mirror))
            .is_some_and(|v| !v.inflight_regions.is_empty())
    }

    /// Stops injecting faults, runs until quiet, asks every live kernel for
    /// `dmsetup status`, runs until quiet again, then checks convergence: every live mirror active and in sync, the
    /// legs identical, and no violation anywhere.
    pub fn verify_converged(&mut self) -> Result<(), String> {
        // Liveness phase: faults stop (as in TigerBeetle's simulator); a
        // correct log must now converge.
        self.options.drop_reply_pct = 0;
        self.options.duplicate_pct = 0;
        if !self.settle(120_000) {
            let busy: Vec<String> = self
                .nodes
                .values()
                .filter_map(|n| Some((n.id, n.kernel.as_ref()?)))
                .filter(|(_, k)| !k.is_idle())
                .map(|(id, k)| format!("{id}: {:?}", k.mirror_ids().iter().map(|m| k.mirror(*m)).collect::<Vec<_>>()))
                .collect();
            let log = self.machine.log(&self.table.uuid).map(|l| l.describe()).unwrap_or_default();
            return Err(format!("the kernels did not go idle: {busy:?}\n{log}"));
        }
        for id in self.live() {
            self.status(id);
        }
        if !self.settle(120_000) {
            return Err("the kernels did not go idle after status".into());
        }
        let mut problems = self.violations.clone();
        for node in self.nodes.values() {
            let Some(k) = node.kernel.as_ref() else { continue };
            problems.extend(k.violations().iter().map(|v| format!("{} at {} ms: {}", node.id, v.at_ms, v.what)));
            let Some(view) = k.mirror(node.mirror) else { continue };
            if view.life != Life::Active {
                problems.push(format!("{} mirror is {:?}", node.id, view.life));
            }
            // What `dmsetup status` prints: <in_sync>/<nr_regions>.
            if view.status_sync_count != Some(view.region_count) {
                problems.push(format!(
                    "{} status shows {:?}/{} regions in sync",
                    node.id, view.status_sync_count, view.region_count
                ));
            }
        }
        let differing = self.legs.lock().differing();
        if !differing.is_empty() {
            problems.push(format!("legs differ in regions {differing:?}"));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }

    /// Total regions resynced by all kernels, crashed ones included.
    pub fn regions_recovered(&self) -> u64 {
        self.recovered_by_crashed
            + self.nodes.values().filter_map(|n| n.kernel.as_ref()).map(|k| k.stats().regions_recovered).sum::<u64>()
    }
}

/// One seeded run: a random cluster size, log flavour and fault rate; a
/// random workload; a random node crashing at a random moment; its
/// eviction after a random delay; maybe its reboot; then the fault-free
/// liveness phase and verification. Returns the cluster for inspection, or
/// what went wrong, naming the seed.
pub fn random_run(seed: u64) -> Result<Cluster, String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let options = Options {
        nodes: rng.random_range(2..=4),
        log_args: if rng.random_bool(0.5) { "clustered-core 8 nosync".into() } else { "clustered-core 8".into() },
        integrated_flush: rng.random_bool(0.5),
        drop_reply_pct: rng.random_range(0..3),
        duplicate_pct: rng.random_range(0..5),
        ..Options::default()
    };
    let nodes = options.nodes;
    let mut c = Cluster::new(options, seed);
    c.workload(rng.random_range(50..500), rng.random_range(10..80));
    let victim = rng.random_range(1..=nodes);
    c.crash(victim);
    c.workload(rng.random_range(0..300), 30);
    c.evict(victim);
    c.workload(rng.random_range(0..300), 30);
    if rng.random_bool(0.5) {
        c.reboot(victim);
        c.workload(rng.random_range(0..300), 30);
    }
    c.verify_converged().map_err(|e| format!("seed {seed}: {e}\n{}", c.trace.join("\n")))?;
    Ok(c)
}
