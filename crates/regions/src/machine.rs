//! The whole replicated state: cluster members and every mirror log, with
//! the one entry point for commands ([`Machine::apply`]) and one for
//! queries ([`Machine::read`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use wire::{Answer, Region, Uuid};

use crate::command::{Applied, Command, Effect, Instance, KernelOp, NodeId, Query, Refusal};
use crate::ctr::{CtrArgs, LogType};
use crate::invariants::{self, Violation};
use crate::log::{InstanceState, Log, Phase};

/// A cluster member as the state machine knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Boot identity of the node's kernel when it joined.
    pub incarnation: u64,
    /// Which join this membership is: a number that grows with every
    /// `NodeJoined` applied, so a later join is always told apart.
    pub joined: u64,
    /// The session the node opened with this join
    /// ([`Command::NodeJoined`]): only its kernel commands and renewals
    /// made in this session are applied.
    pub session: u64,
    /// The highest log index the node's replica had applied when it
    /// proposed a renewal of this membership (0 before its first). A node
    /// answers some IN_SYNC requests from its own replica; a failed leg
    /// write is answered once every node that might do so for its region
    /// has applied it (see [`Machine::lagging_holders`]).
    pub applied: u64,
}

/// The region-state machine. Same commands in the same order give the same
/// state, byte for byte ([`Machine::snapshot`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    members: BTreeMap<NodeId, Member>,
    /// `NodeJoined` commands applied so far (see [`Member::joined`]).
    joins: u64,
    logs: BTreeMap<Uuid, Log>,
    /// Ids of nodes removed from the cluster: never members again.
    retired: BTreeSet<NodeId>,
}

/// A snapshot that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("snapshot does not decode: {0}")]
pub struct SnapshotError(#[from] postcard::Error);

impl Machine {
    /// An empty machine: no members, no logs.
    pub fn new() -> Machine {
        Machine::default()
    }

    /// Cluster members.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// Members other than `me` that mark `region` of log `uuid` and have
    /// not yet said (in a renewal) that they applied log index `index`.
    ///
    /// A node answers IN_SYNC of a region its own table marks from its own
    /// replica, without a Raft round. So when a node's leg write fails and
    /// its SET_REGION_SYNC(r, 0) commits at `index`, its answer (after which
    /// its kernel completes the write, with the data on one leg only) waits
    /// until this list is empty: no node may then still answer 1 for `r`
    /// from a replica that has not applied the failure, and send its
    /// kernel's read to the stale leg. Nodes that do not mark `r` answer
    /// IN_SYNC of it through the leader (linearizable); evicted nodes have
    /// no marks and fenced before their eviction.
    pub fn lagging_holders(&self, uuid: &Uuid, region: Region, me: NodeId, index: u64) -> Vec<NodeId> {
        let Some(holders) = self.logs.get(uuid).and_then(|l| l.marks().get(&region)) else { return Vec::new() };
        let nodes: BTreeSet<NodeId> = holders.iter().map(|i| i.node).filter(|&n| n != me).collect();
        nodes.into_iter().filter(|n| self.members.get(n).is_some_and(|m| m.applied < index)).collect()
    }

    /// Whether `node`'s id was retired (removed from the cluster).
    pub fn is_retired(&self, node: NodeId) -> bool {
        self.retired.contains(&node)
    }

    /// All logs by uuid.
    pub fn logs(&self) -> &BTreeMap<Uuid, Log> {
        &self.logs
    }

    /// One log.
    pub fn log(&self, uuid: &Uuid) -> Option<&Log> {
        self.logs.get(uuid)
    }

    /// Applies one command. Never panics on any input. Whoever drives the
    /// machine runs [`Machine::check`] after it (the replicated state
    /// machine does, in the simulation in every build profile).
    pub fn apply(&mut self, command: &Command) -> Applied {
        // Renewals change no log; anything else may make resync work
        // claimable that was not (see below).
        let before: BTreeSet<Uuid> = match command {
            Command::Renew { .. } => BTreeSet::new(),
            _ => self.logs.iter().filter(|(_, l)| !l.claimable_work()).map(|(u, _)| u.clone()).collect(),
        };
        let mut applied = self.dispatch(command);
        // A resumed kernel that asked for resync work and got none asks
        // again only when something wakes it: when this command made a
        // region claimable (the CLEAR of its last mark, a released
        // assignment or reservation, a copy that leaves it to another
        // writer, an eviction), the resumed kernels are woken, but the
        // one that sent it (its kernel's pass asks next anyway).
        let sender = match command {
            Command::Kernel { instance, .. } => Some(instance.node),
            _ => None,
        };
        for uuid in before {
            let Some(log) = self.logs.get(&uuid) else { continue };
            if !log.claimable_work() {
                continue;
            }
            let woken = match sender {
                Some(s) => log.resumed_nodes_except(s),
                None => log.resumed_nodes(),
            };
            for n in woken {
                let wake = Effect::WakeRecovery { node: n, uuid: uuid.clone() };
                if !applied.effects.contains(&wake) {
                    applied.effects.push(wake);
                }
            }
        }
        applied
    }

    fn dispatch(&mut self, command: &Command) -> Applied {
        match command {
            Command::NodeJoined { node, incarnation, session } => self.node_joined(*node, *incarnation, *session),
            Command::NodeEvicted { node } => self.node_evicted(*node),
            Command::NodeExpired { node, joined } => match self.members.get(node) {
                Some(m) if m.joined == *joined => self.node_evicted(*node),
                Some(_) => Applied::refuse(Refusal::StaleEviction(*node)),
                // Already gone: nothing to do (a re-sent eviction).
                None => Applied::answer(Answer::Done),
            },
            Command::Renew { node, incarnation, session, applied } => match self.members.get_mut(node) {
                Some(m)
                    if m.incarnation == *incarnation && (m.session == *session || crate::breaks::off("no-session")) =>
                {
                    m.applied = m.applied.max(*applied);
                    Applied { outcome: Ok(Answer::Done), effects: vec![Effect::LeaseRenewed { node: *node }] }
                }
                _ => Applied::refuse(Refusal::NotAMember(*node)),
            },
            Command::NodeRetired { node } => {
                let applied = self.node_evicted(*node);
                self.retired.insert(*node);
                applied
            }
            Command::StaleHints { node } => {
                if !self.members.contains_key(node) {
                    return Applied::refuse(Refusal::NotAMember(*node));
                }
                let mut effects = Vec::new();
                for (uuid, log) in &mut self.logs {
                    if !log.active_nodes().contains(node) {
                        continue;
                    }
                    let incarnation = self.members.get(node).map(|m| m.incarnation);
                    let behind = log.disown_behind_stale_hint(*node, incarnation);
                    if behind.is_empty() {
                        continue;
                    }
                    if let Some(first) = log.unsettle(&behind, BTreeSet::from([*node])) {
                        effects.push(Effect::KickKernel { node: first, uuid: uuid.clone() });
                    }
                }
                Applied { outcome: Ok(Answer::Done), effects }
            }
            Command::Resync { uuid } => match self.logs.get_mut(uuid) {
                Some(log) => {
                    let changed = log.resync_all();
                    let mut effects = Vec::new();
                    if !changed.is_empty() {
                        let active = log.active_nodes();
                        if let Some(first) = log.unsettle(&changed, active) {
                            effects.push(Effect::KickKernel { node: first, uuid: uuid.clone() });
                        }
                        if log.is_disk() {
                            effects.push(Effect::PersistDiskLog { uuid: uuid.clone(), version: log.clean_version });
                        }
                    }
                    Applied { outcome: Ok(Answer::Done), effects }
                }
                None => Applied::refuse(Refusal::UnknownLog(uuid.clone())),
            },
            Command::DiskLogWritten { uuid, node, version, failed } => match self.logs.get_mut(uuid) {
                Some(log) => {
                    log.disk_written(*node, *version, *failed);
                    Applied::answer(Answer::Done)
                }
                None => Applied::refuse(Refusal::UnknownLog(uuid.clone())),
            },
            Command::Kernel { uuid, instance, session, op } => {
                match self.members.get(&instance.node) {
                    None => return Applied::refuse(Refusal::NotAMember(instance.node)),
                    Some(m) if m.session != *session && !crate::breaks::off("no-session") => {
                        return Applied::refuse(Refusal::StaleSession(instance.node));
                    }
                    Some(_) => {}
                }
                match op {
                    KernelOp::Ctr { args } => self.ctr(uuid, *instance, args),
                    KernelOp::Dtr => self.dtr(uuid, *instance),
                    _ => match self.logs.get_mut(uuid) {
                        None => Applied::refuse(Refusal::UnknownLog(uuid.clone())),
                        Some(log) if !log.instances.contains_key(instance) => {
                            Applied::refuse(Refusal::UnknownInstance(*instance))
                        }
                        Some(log) => log_op(log, *instance, op),
                    },
                }
            }
        }
    }

    fn node_joined(&mut self, node: NodeId, incarnation: u64, session: u64) -> Applied {
        if self.retired.contains(&node) {
            return Applied::refuse(Refusal::Retired(node));
        }
        let mut effects = Vec::new();
        match self.members.get(&node) {
            Some(m) if m.incarnation == incarnation => {}
            Some(_) => {
                // The node's kernel rebooted: its old tables are gone and
                // whatever they were writing must be resynced (I10).
                effects = self.evict_instances(node, None);
            }
            None => {}
        }
        self.joins += 1;
        self.members.insert(node, Member { incarnation, joined: self.joins, session, applied: 0 });
        Applied { outcome: Ok(Answer::Done), effects }
    }

    fn node_evicted(&mut self, node: NodeId) -> Applied {
        let incarnation = self.members.remove(&node).map(|m| m.incarnation);
        let effects = self.evict_instances(node, incarnation);
        Applied { outcome: Ok(Answer::Done), effects }
    }

    /// Drops every instance of `node`, turning its marks into out-of-sync
    /// regions. Logs keep their state even with no instance left, so the
    /// next activation resyncs exactly the regions that may differ.
    /// `incarnation`: the kernel boot of the node being evicted, if it may
    /// come back with that kernel (see [`Log::evicted_marks`]); `None` when
    /// that kernel has rebooted.
    fn evict_instances(&mut self, node: NodeId, incarnation: Option<u64>) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (uuid, log) in &mut self.logs {
            let gone: Vec<Instance> = log.instances.keys().filter(|i| i.node == node).copied().collect();
            let mut changed = Vec::new();
            for i in gone {
                changed.extend(log.evict_instance(i, incarnation));
            }
            // A node that is gone will not resume.
            log.behind_next_resume.remove(&node);
            if let Some(next) = log.node_settled(node) {
                effects.push(Effect::KickKernel { node: next, uuid: uuid.clone() });
            }
            if !changed.is_empty() {
                // Survivors' kernels cache an in_sync_hint and will not ask
                // about these regions until they are resumed, one at a time.
                let survivors = log.active_nodes_except(node);
                let idle = log.inactive_nodes_except(node);
                log.remember_for_resume(&changed, idle);
                if let Some(first) = log.unsettle(&changed, survivors) {
                    effects.push(Effect::KickKernel { node: first, uuid: uuid.clone() });
                }
                if log.is_disk() {
                    effects.push(Effect::PersistDiskLog { uuid: uuid.clone(), version: log.clean_version });
                }
            }
        }
        effects
    }

    fn ctr(&mut self, uuid: &Uuid, i: Instance, raw: &str) -> Applied {
        let args = match CtrArgs::parse(raw) {
            Ok(a) => a,
            Err(e) => return Applied::refuse(e.into()),
        };
        let answer = match &args.log_type {
            LogType::Core => Answer::Done,
            LogType::Disk { device } => Answer::CtrDevice(device.clone()),
        };
        let log = self.logs.entry(uuid.clone()).or_insert_with(|| Log::new(uuid.clone(), args.clone()));
        let mismatch = !log.args.same_geometry(&args);
        match log.instances.get(&i) {
            Some(existing) if existing.args == args => return Applied::answer(answer),
            Some(existing) if existing.ever_resumed => return Applied::refuse(Refusal::InstanceExists(i)),
            // A never-resumed instance whose luid the kernel reused (its
            // constructor failed after CTR without a DTR) is replaced.
            Some(_) => {
                log.destroy_instance(i);
            }
            None => {}
        }
        if mismatch {
            if !log.instances.is_empty() {
                return Applied::refuse(Refusal::GeometryMismatch {
                    existing: log.args.to_string(),
                    new: args.to_string(),
                });
            }
            // Nobody uses the old geometry any more: start a new log.
            *log = Log::new(uuid.clone(), args.clone());
        }
        log.instances.insert(i, InstanceState { phase: Phase::Constructed, args, ever_resumed: false });
        Applied::answer(answer)
    }

    fn dtr(&mut self, uuid: &Uuid, i: Instance) -> Applied {
        if let Some(log) = self.logs.get_mut(uuid)
            && log.instances.contains_key(&i)
        {
            log.destroy_instance(i);
            if !log.instances.keys().any(|x| x.node == i.node) {
                log.behind_next_resume.remove(&i.node);
            }
            // The last table is gone. A log whose legs are known equal is
            // forgotten, and the next CTR starts a new one. A log with
            // regions still to resync (an evicted writer's, or an unfinished
            // resync) is kept, so the next activation resyncs exactly those.
            if log.instances.is_empty() && log.sync_count() == log.region_count() {
                self.logs.remove(uuid);
            }
        }
        // A repeated DTR (kernel re-send) finds nothing and succeeds.
        Applied::answer(Answer::Done)
    }

    /// Answers a read-only request from `instance` of log `uuid`.
    pub fn read(&self, uuid: &Uuid, instance: Instance, query: &Query) -> Result<Answer, Refusal> {
        if !self.members.contains_key(&instance.node) {
            return Err(Refusal::NotAMember(instance.node));
        }
        let log = self.logs.get(uuid).ok_or_else(|| Refusal::UnknownLog(uuid.clone()))?;
        let inst = log.instances.get(&instance).ok_or(Refusal::UnknownInstance(instance))?;
        Ok(match query {
            Query::GetRegionSize => Answer::RegionSize(log.args.region_size),
            Query::IsClean(r) => {
                log.check_region(*r)?;
                Answer::Bool(log.is_clean(*r))
            }
            Query::InSync(r) => {
                log.check_region(*r)?;
                Answer::Bool(log.in_sync_answer(*r))
            }
            Query::GetSyncCount => Answer::SyncCount(log.sync_count()),
            Query::StatusInfo => Answer::Text(match &inst.args.log_type {
                LogType::Core => "1 clustered-core".to_owned(),
                LogType::Disk { device } => {
                    format!("3 clustered-disk {device} {}", if log.disk_failed_version.is_some() { 'D' } else { 'A' })
                }
            }),
            Query::StatusTable => Answer::Text(inst.args.status_table()),
            Query::IsRemoteRecovering(r) => {
                log.check_region(*r)?;
                Answer::RemoteRecovering {
                    is_recovering: log.remote_recovering(*r, instance),
                    in_sync_hint: log.in_sync_hint_for(instance),
                }
            }
        })
    }

    /// GET_RESYNC_WORK from `instance` of log `uuid` answered by its own
    /// node from this copy of the state, without a commit (see
    /// [`Log::claimed_work`]; `done` are the regions that node already
    /// answered SET_REGION_SYNC for). `None`: ask through Raft.
    pub fn claimed_work(&self, uuid: &Uuid, instance: Instance, done: &BTreeSet<Region>) -> Option<Region> {
        if !self.members.contains_key(&instance.node) {
            return None;
        }
        self.logs.get(uuid)?.claimed_work(instance, done)
    }

    /// Whether a FLUSH without marks from `instance` of log `uuid` would
    /// change nothing and answer `Done`: a member's existing instance of a
    /// `clustered-core` log. Such a FLUSH has nothing to make durable
    /// (every MARK and CLEAR its kernel sent before it was committed before
    /// it was answered), so a node may answer it from its own copy of the
    /// state without a Raft round. A stale copy can only say `false` too
    /// early (an instance not applied here yet) or keep saying `true` for
    /// a node evicted elsewhere, which fences before it is evicted (see
    /// `docs/fencing.md`) and then answers nothing. A disk log's FLUSH
    /// writes the device, so it always goes through Raft.
    pub fn empty_flush_is_noop(&self, uuid: &Uuid, instance: Instance) -> bool {
        self.members.contains_key(&instance.node)
            && self.logs.get(uuid).is_some_and(|l| !l.is_disk() && l.instances.contains_key(&instance))
    }

    /// Runs every state invariant (see [`crate::invariants`]).
    pub fn check(&self) -> Result<(), Violation> {
        invariants::check_machine(self)
    }

    /// The state as bytes: deterministic (ordered maps, canonical bitmaps),
    /// compact (one bit per region and bitmap kind).
    pub fn snapshot(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Rebuilds a machine from [`Machine::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Machine, SnapshotError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

/// The kernel requests that act on an existing instance.
fn log_op(log: &mut Log, i: Instance, op: &KernelOp) -> Applied {
    let set_phase = |log: &mut Log, phase: Phase| {
        if let Some(s) = log.instances.get_mut(&i) {
            s.phase = phase;
            if phase == Phase::Resumed {
                s.ever_resumed = true;
            }
        }
    };
    match op {
        KernelOp::Ctr { .. } | KernelOp::Dtr => Applied::answer(Answer::Done),
        KernelOp::Presuspend => {
            // The kernel stopped recovery and waited for the region copy in
            // flight before sending this; nothing of ours is being recovered.
            log.release_recovery(i);
            set_phase(log, Phase::Presuspended);
            // Its remaining writes to out-of-sync regions wait for a resync
            // that only a resumed kernel can do, and only once woken.
            let mut effects = Vec::new();
            if log.has_resync_work() {
                for n in log.resumed_nodes_except(i.node) {
                    effects.push(Effect::WakeRecovery { node: n, uuid: log.uuid.clone() });
                }
            }
            Applied { outcome: Ok(Answer::Done), effects }
        }
        KernelOp::Postsuspend => {
            log.release_recovery(i);
            set_phase(log, Phase::Suspended);
            log.node_suspended(i.node);
            // Regions it let writes through to stay reserved for its own
            // copy: its region hash outlives the suspend (`Log::halted_passes`).
            Applied::answer(Answer::Done)
        }
        KernelOp::Resume { disk } => {
            let first = log.activate(disk.as_ref());
            set_phase(log, Phase::Resumed);
            // This kernel's hint is reset: it asks about every region again
            // (unless this RESUME was prepared before the eviction).
            let next = log.node_resumed(i.node);
            // A RESUME prepared before an eviction that found this node idle
            // may carry a hint raised since: kick it too.
            let behind = log.unsettle_behind_resume(i.node);
            // Regions whose recovery failed are tried again after a resume.
            log.recovery_failed.clear();
            let mut effects = Vec::new();
            for n in [next, behind].into_iter().flatten() {
                effects.push(Effect::KickKernel { node: n, uuid: log.uuid.clone() });
            }
            if first && log.is_disk() {
                effects.push(Effect::PersistDiskLog { uuid: log.uuid.clone(), version: log.clean_version });
            }
            Applied { outcome: Ok(Answer::Done), effects }
        }
        KernelOp::Mark(rs) => {
            if let Err(e) = log.check_regions(rs) {
                return Applied::refuse(e);
            }
            log.mark(i, rs);
            Applied::answer(Answer::Done)
        }
        KernelOp::Clear(rs) => {
            if let Err(e) = log.check_regions(rs) {
                return Applied::refuse(e);
            }
            log.clear(i, rs);
            Applied::answer(Answer::Done)
        }
        KernelOp::Flush { marks } => {
            if let Err(e) = log.check_regions(marks) {
                return Applied::refuse(e);
            }
            log.mark(i, marks);
            let mut effects = Vec::new();
            if log.is_disk() {
                effects.push(Effect::PersistDiskLog { uuid: log.uuid.clone(), version: log.clean_version });
            }
            Applied { outcome: Ok(Answer::Done), effects }
        }
        KernelOp::Remark(marks) => {
            if let Err(e) = log.check_regions(marks) {
                return Applied::refuse(e);
            }
            let stale: Vec<_> = log.marked_by(i).into_iter().filter(|r| !marks.contains(r)).collect();
            log.clear(i, &stale);
            log.mark(i, marks);
            let mut effects = Vec::new();
            if log.is_disk() {
                effects.push(Effect::PersistDiskLog { uuid: log.uuid.clone(), version: log.clean_version });
            }
            Applied { outcome: Ok(Answer::Done), effects }
        }
        KernelOp::GetResyncWork => Applied::answer(Answer::ResyncWork(log.resync_work(i))),
        KernelOp::IsRemoteRecovering(r) => {
            if let Err(e) = log.check_region(*r) {
                return Applied::refuse(e);
            }
            let is_recovering = log.remote_recovering_for_write(*r, i);
            Applied::answer(Answer::RemoteRecovering { is_recovering, in_sync_hint: log.in_sync_hint_for(i) })
        }
        KernelOp::SetRegionSync { region, in_sync } => {
            if let Err(e) = log.check_region(*region) {
                return Applied::refuse(e);
            }
            log.set_region_sync(i, *region, *in_sync);
            Applied::answer(Answer::Done)
        }
    }
}
