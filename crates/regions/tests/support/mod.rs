//! A small harness shared by the regions tests: a machine with joined
//! nodes, and helpers that check every invariant after every command.

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use regions::{Applied, Command, Effect, Instance, KernelOp, Machine, NodeId, Query, Refusal};
use wire::{Answer, Luid, Region, Uuid};

pub struct H {
    pub m: Machine,
    pub uuid: Uuid,
}

pub fn inst(node: u64, luid: u64) -> Instance {
    Instance { node: NodeId(node), luid: Luid(luid) }
}

pub fn regions(rs: &[u64]) -> Vec<Region> {
    rs.iter().copied().map(Region).collect()
}

impl H {
    /// A machine with nodes 1..=nodes joined (incarnation 1).
    pub fn new(nodes: u64) -> H {
        let mut m = Machine::new();
        for n in 1..=nodes {
            let _ = m.apply(&Command::NodeJoined { node: NodeId(n), incarnation: 1, session: 0 });
        }
        H { m, uuid: Uuid::new("LVM-test").unwrap() }
    }

    pub fn apply(&mut self, c: Command) -> Applied {
        let a = self.m.apply(&c);
        if let Err(v) = self.m.check() {
            panic!("after {c:?}: {v}\n{}", self.m.log(&self.uuid).map(|l| l.describe()).unwrap_or_default());
        }
        a
    }

    pub fn full(&mut self, i: Instance, op: KernelOp) -> Applied {
        let uuid = self.uuid.clone();
        self.apply(Command::Kernel { uuid, instance: i, session: 0, op })
    }

    pub fn op(&mut self, i: Instance, op: KernelOp) -> Result<Answer, Refusal> {
        self.full(i, op).outcome
    }

    pub fn ok(&mut self, i: Instance, op: KernelOp) {
        let what = format!("{op:?}");
        assert_eq!(self.op(i, op), Ok(Answer::Done), "{what}");
    }

    pub fn q(&self, i: Instance, q: Query) -> Result<Answer, Refusal> {
        let a = self.m.read(&self.uuid, i, &q);
        if let (Ok(ans), Some(log)) = (&a, self.m.log(&self.uuid)) {
            regions::invariants::check_answer(log, i, Some(&q), ans).unwrap();
        }
        a
    }

    /// CTR + RESUME.
    pub fn up(&mut self, i: Instance, args: &str) {
        let ctr = self.op(i, KernelOp::Ctr { args: args.into() });
        assert!(ctr.is_ok(), "ctr {args}: {ctr:?}");
        self.ok(i, KernelOp::Resume { disk: None });
    }

    pub fn work(&mut self, i: Instance) -> Option<u64> {
        match self.op(i, KernelOp::GetResyncWork) {
            Ok(Answer::ResyncWork(r)) => r.map(|r| r.0),
            other => panic!("GET_RESYNC_WORK: {other:?}"),
        }
    }

    /// GET_RESYNC_WORK as `i`'s own node answers it from its claims
    /// (`done`: the regions it already answered SET_REGION_SYNC for),
    /// checked as a replicated answer is.
    pub fn claimed(&self, i: Instance, done: &[u64]) -> Option<u64> {
        let done = done.iter().map(|r| Region(*r)).collect();
        let r = self.m.claimed_work(&self.uuid, i, &done)?;
        let log = self.m.log(&self.uuid).expect("a log with claims");
        regions::invariants::check_answer(log, i, None, &Answer::ResyncWork(Some(r))).unwrap();
        Some(r.0)
    }

    pub fn in_sync(&self, i: Instance, r: u64) -> bool {
        self.q(i, Query::InSync(Region(r))) == Ok(Answer::Bool(true))
    }

    pub fn clean(&self, i: Instance, r: u64) -> bool {
        self.q(i, Query::IsClean(Region(r))) == Ok(Answer::Bool(true))
    }

    pub fn sync_count(&self, i: Instance) -> u64 {
        match self.q(i, Query::GetSyncCount) {
            Ok(Answer::SyncCount(c)) => c,
            other => panic!("GET_SYNC_COUNT: {other:?}"),
        }
    }

    pub fn recovering(&self, i: Instance, r: u64) -> (bool, u64) {
        match self.q(i, Query::IsRemoteRecovering(Region(r))) {
            Ok(Answer::RemoteRecovering { is_recovering, in_sync_hint }) => (is_recovering, in_sync_hint),
            other => panic!("IS_REMOTE_RECOVERING: {other:?}"),
        }
    }

    /// Resyncs every region `i` is handed until there is no more work.
    pub fn resync_all(&mut self, i: Instance) -> Vec<u64> {
        let mut done = Vec::new();
        while let Some(r) = self.work(i) {
            self.ok(i, KernelOp::SetRegionSync { region: Region(r), in_sync: true });
            self.ok(i, KernelOp::Clear(vec![Region(r)]));
            done.push(r);
        }
        done
    }
}

pub fn kicked(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::KickKernel { node, .. } => Some(node.0),
            _ => None,
        })
        .collect()
}
