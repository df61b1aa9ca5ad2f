//! What this node's kernel believes about its own log instances, kept by
//! the daemon from the requests it acknowledged, so that a node evicted
//! without a reboot (its kernel tables still up) can rejoin safely.
//!
//! Eviction dropped the node's instances and marks from the replicated
//! state and put its marked regions out of sync. Its kernel does not know:
//! it may still hold regions dirty and write them without another MARK.
//! Before the node answers its kernel again it must therefore register its
//! tables again and re-mark every region the kernel may hold dirty, in one
//! Raft entry ([`OwnMarks::rejoin`]): every region the kernel asked to mark,
//! answered or not (it sets a region dirty before it sends the MARK, and
//! its writes go ahead once that MARK, or a re-send of it, is answered),
//! minus acknowledged clears. Counting only answered marks missed a MARK
//! the fence left unanswered: answered after the rejoin, it let the kernel
//! write a region another node was copying (the 10,000-seed run, seed
//! 3767).

use std::collections::{BTreeMap, BTreeSet};

use regions::{Command, Instance, KernelOp, NodeId};
use wire::{Luid, Region, Request, Uuid};

/// One table as the kernel sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Table {
    /// The constructor arguments it was created with.
    ctr_args: String,
    /// Resumed (not suspended) as far as the kernel knows.
    resumed: bool,
    /// Regions the kernel may hold dirty.
    dirty: BTreeSet<Region>,
}

/// The node's own tables, by (log, local id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnMarks {
    tables: BTreeMap<(Uuid, Luid), Table>,
}

impl OwnMarks {
    /// Nothing known yet.
    pub fn new() -> OwnMarks {
        OwnMarks::default()
    }

    /// The kernel sent `request` of table (`uuid`, `luid`): a MARK or a
    /// FLUSH with marks counts its regions dirty at once.
    pub fn requested(&mut self, uuid: &Uuid, luid: Luid, request: &Request) {
        if let Request::MarkRegion(rs) | Request::Flush { marks: rs } = request
            && let Some(t) = self.tables.get_mut(&(uuid.clone(), luid))
        {
            t.dirty.extend(rs.iter().copied());
        }
    }

    /// The daemon answered `request` of table (`uuid`, `luid`) with success.
    pub fn acknowledged(&mut self, uuid: &Uuid, luid: Luid, request: &Request) {
        let key = (uuid.clone(), luid);
        match request {
            Request::Ctr { args, .. } => {
                let t = self.tables.entry(key).or_default();
                t.ctr_args = args.clone();
            }
            Request::Dtr => {
                self.tables.remove(&key);
            }
            Request::Resume => self.tables.entry(key).or_default().resumed = true,
            Request::Postsuspend => self.tables.entry(key).or_default().resumed = false,
            Request::MarkRegion(rs) | Request::Flush { marks: rs } => {
                self.tables.entry(key).or_default().dirty.extend(rs.iter().copied());
            }
            Request::ClearRegion(rs) => {
                if let Some(t) = self.tables.get_mut(&key) {
                    for r in rs {
                        t.dirty.remove(r);
                    }
                }
            }
            _ => {}
        }
    }

    /// The logs this node's kernel has tables of.
    pub fn uuids(&self) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = self.tables.keys().map(|(u, _)| u.clone()).collect();
        v.dedup();
        v
    }

    /// The constructor arguments of table (`uuid`, `luid`), if known.
    pub fn ctr_args(&self, uuid: &Uuid, luid: Luid) -> Option<&str> {
        self.tables.get(&(uuid.clone(), luid)).map(|t| t.ctr_args.as_str())
    }

    /// The log device token of log `uuid` as this node's kernel named it in
    /// a `clustered-disk` constructor, if it has such a table.
    pub fn disk_device(&self, uuid: &Uuid) -> Option<String> {
        self.tables.iter().filter(|((u, _), _)| u == uuid).find_map(|(_, t)| {
            match regions::CtrArgs::parse(&t.ctr_args).ok()?.log_type {
                regions::LogType::Disk { device } => Some(device),
                regions::LogType::Core => None,
            }
        })
    }

    /// Regions table (`uuid`, `luid`) may hold dirty.
    pub fn dirty(&self, uuid: &Uuid, luid: Luid) -> Vec<Region> {
        self.tables.get(&(uuid.clone(), luid)).map(|t| t.dirty.iter().copied().collect()).unwrap_or_default()
    }

    /// The commands that bring node `node` (kernel boot `incarnation`)
    /// back after an eviction, to be proposed as one entry before it
    /// answers its kernel again: rejoin, then for every table its
    /// constructor, its resume if the kernel has it resumed, and a FLUSH
    /// carrying every region it may hold dirty; last, if a table is
    /// resumed, the notice that its kernel's cached hints may be stale.
    pub fn rejoin(&self, node: NodeId, incarnation: u64) -> Vec<Command> {
        let mut out = vec![Command::NodeJoined { node, incarnation }];
        let any_resumed = self.tables.values().any(|t| t.resumed);
        for ((uuid, luid), t) in &self.tables {
            let instance = Instance { node, luid: *luid };
            let op = |op| Command::Kernel { uuid: uuid.clone(), instance, op };
            out.push(op(KernelOp::Ctr { args: t.ctr_args.clone() }));
            if t.resumed {
                out.push(op(KernelOp::Resume { disk: None }));
            }
            if !t.dirty.is_empty() {
                out.push(op(KernelOp::Flush { marks: t.dirty.iter().copied().collect() }));
            }
        }
        if any_resumed {
            out.push(Command::StaleHints { node });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regions::{Machine, Query};
    use wire::Answer;

    fn uuid() -> Uuid {
        Uuid::new("LVM-own").unwrap_or_else(|| unreachable!())
    }

    /// A MARK the kernel sent and the fence left unanswered counts: the
    /// kernel set the region dirty before sending it, and writes once a
    /// re-send is answered.
    #[test]
    fn an_unanswered_mark_is_marked_again_at_the_rejoin() {
        let luid = Luid(4);
        let mut own = OwnMarks::new();
        own.acknowledged(&uuid(), luid, &Request::Ctr { args: "64 clustered-core 8".into(), reconnect: false });
        own.acknowledged(&uuid(), luid, &Request::Resume);
        own.requested(&uuid(), luid, &Request::MarkRegion(vec![Region(7)]));
        assert_eq!(own.dirty(&uuid(), luid), vec![Region(7)]);
        let flushes: Vec<Command> = own
            .rejoin(NodeId(1), 1)
            .into_iter()
            .filter(|c| matches!(c, Command::Kernel { op: KernelOp::Flush { .. }, .. }))
            .collect();
        assert_eq!(flushes.len(), 1, "{flushes:?}");
        // Not for a table it never acknowledged a constructor of.
        own.requested(&uuid(), Luid(99), &Request::MarkRegion(vec![Region(1)]));
        assert!(own.dirty(&uuid(), Luid(99)).is_empty());
    }

    #[test]
    fn an_evicted_node_rejoins_with_its_dirty_regions_marked_again() {
        let (me, other) = (NodeId(1), NodeId(2));
        let mut m = Machine::new();
        let mut own = OwnMarks::new();
        let _ = m.apply(&Command::NodeJoined { node: me, incarnation: 7 });
        let _ = m.apply(&Command::NodeJoined { node: other, incarnation: 1 });
        let luid = Luid(9);
        let instance = Instance { node: me, luid };
        // The kernel's requests, applied and acknowledged.
        let requests = [
            Request::Ctr { args: "64 clustered-core 8 nosync".into(), reconnect: false },
            Request::Resume,
            Request::MarkRegion(vec![Region(1), Region(2)]),
            Request::Flush { marks: vec![] },
            Request::Flush { marks: vec![Region(5)] },
            Request::ClearRegion(vec![Region(1)]),
        ];
        for r in &requests {
            let op = match r {
                Request::Ctr { args, .. } => KernelOp::Ctr { args: args.clone() },
                Request::Resume => KernelOp::Resume { disk: None },
                Request::MarkRegion(rs) => KernelOp::Mark(rs.clone()),
                Request::Flush { marks } => KernelOp::Flush { marks: marks.clone() },
                Request::ClearRegion(rs) => KernelOp::Clear(rs.clone()),
                _ => unreachable!(),
            };
            let applied = m.apply(&Command::Kernel { uuid: uuid(), instance, op });
            assert!(applied.outcome.is_ok());
            own.acknowledged(&uuid(), luid, r);
        }
        assert_eq!(own.dirty(&uuid(), luid), vec![Region(2), Region(5)]);
        // Cut off, fenced, evicted: the replicated state forgot it.
        let _ = m.apply(&Command::NodeEvicted { node: me });
        assert!(m.read(&uuid(), instance, &Query::IsClean(Region(2))).is_err());
        // Rejoin in one go, before answering the kernel again.
        for c in own.rejoin(me, 7) {
            assert!(m.apply(&c).outcome.is_ok(), "{c:?}");
        }
        for r in [2, 5] {
            assert_eq!(m.read(&uuid(), instance, &Query::IsClean(Region(r))), Ok(Answer::Bool(false)), "region {r}");
        }
        // Its kernel writes those regions: nobody else may be handed them.
        let theirs = Instance { node: other, luid: Luid(3) };
        let _ = m.apply(&Command::Kernel {
            uuid: uuid(),
            instance: theirs,
            op: KernelOp::Ctr { args: "64 clustered-core 8 nosync".into() },
        });
        let _ = m.apply(&Command::Kernel { uuid: uuid(), instance: theirs, op: KernelOp::Resume { disk: None } });
        loop {
            let got = m.apply(&Command::Kernel { uuid: uuid(), instance: theirs, op: KernelOp::GetResyncWork });
            match got.outcome {
                Ok(Answer::ResyncWork(Some(r))) => {
                    assert!(r != Region(2) && r != Region(5), "handed {r:?}, which the rejoined node may be writing");
                    let set = KernelOp::SetRegionSync { region: r, in_sync: true };
                    let _ = m.apply(&Command::Kernel { uuid: uuid(), instance: theirs, op: set });
                }
                _ => break,
            }
        }
        // A DTR forgets the table.
        own.acknowledged(&uuid(), luid, &Request::Dtr);
        assert_eq!(own.rejoin(me, 7), vec![Command::NodeJoined { node: me, incarnation: 7 }]);
    }
}
