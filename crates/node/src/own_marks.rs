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
//!
//! **Kept on local disk.** A daemon restarted under a live kernel (after a
//! `kill -9`, or a crash of the daemon alone) must still know its tables'
//! constructor arguments and what its kernel holds dirty: the kernel keeps
//! both and only reconnects. [`Journal`] records every change before the
//! request's answer can leave (a `write(2)` without `fsync`: it survives
//! the death of the process, and a crash of the whole machine takes the
//! kernel and its tables too, which the boot `incarnation` recorded first
//! tells apart). [`FileJournal`] appends to a file in the data directory
//! and rewrites it compacted from time to time; [`MemJournal`] keeps the
//! bytes in memory for the simulation, where they outlive a simulated
//! daemon's death.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use regions::{Command, Instance, KernelOp, NodeId};
use serde::{Deserialize, Serialize};
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
        for r in self.requested_records(uuid, luid, request) {
            self.apply(&r);
        }
    }

    /// The daemon answered `request` of table (`uuid`, `luid`) with success.
    pub fn acknowledged(&mut self, uuid: &Uuid, luid: Luid, request: &Request) {
        for r in OwnMarks::acknowledged_records(uuid, luid, request) {
            self.apply(&r);
        }
    }

    /// Whether the kernel has no table this node knows of.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
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
    /// back in a new `session` (see [`regions::Command::NodeJoined`]) after
    /// an eviction, to be proposed as one entry before it
    /// answers its kernel again: rejoin, then for every table its
    /// constructor, its resume if the kernel has it resumed, and the exact
    /// set of regions it may hold dirty ([`KernelOp::Remark`]: those are
    /// marked, and marks of CLEARs acknowledged but never committed are
    /// dropped); last, if a table is resumed, the notice that its kernel's
    /// cached hints may be stale.
    pub fn rejoin(&self, node: NodeId, incarnation: u64, session: u64) -> Vec<Command> {
        let mut out = vec![Command::NodeJoined { node, incarnation, session }];
        let any_resumed = self.tables.values().any(|t| t.resumed);
        for ((uuid, luid), t) in &self.tables {
            let instance = Instance { node, luid: *luid };
            let op = |op| Command::Kernel { uuid: uuid.clone(), instance, session, op };
            out.push(op(KernelOp::Ctr { args: t.ctr_args.clone() }));
            if t.resumed {
                out.push(op(KernelOp::Resume { disk: None }));
            }
            out.push(op(KernelOp::Remark(t.dirty.iter().copied().collect())));
        }
        if any_resumed {
            out.push(Command::StaleHints { node });
        }
        out
    }
}

/// One change to [`OwnMarks`], as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Record {
    /// The kernel boot these records belong to (always first).
    Boot(u64),
    /// A table was constructed with these arguments.
    Table { uuid: Uuid, luid: Luid, args: String },
    /// A table was destroyed.
    Gone { uuid: Uuid, luid: Luid },
    /// A table was resumed (`true`) or suspended (`false`).
    Resumed { uuid: Uuid, luid: Luid, resumed: bool },
    /// Regions the kernel may hold dirty.
    Dirty { uuid: Uuid, luid: Luid, regions: Vec<Region> },
    /// Regions the kernel cleared.
    Cleared { uuid: Uuid, luid: Luid, regions: Vec<Region> },
}

impl OwnMarks {
    /// Applies one journal record.
    fn apply(&mut self, record: &Record) {
        match record {
            Record::Boot(_) => {}
            Record::Table { uuid, luid, args } => {
                self.tables.entry((uuid.clone(), *luid)).or_default().ctr_args = args.clone();
            }
            Record::Gone { uuid, luid } => {
                self.tables.remove(&(uuid.clone(), *luid));
            }
            Record::Resumed { uuid, luid, resumed } => {
                self.tables.entry((uuid.clone(), *luid)).or_default().resumed = *resumed;
            }
            Record::Dirty { uuid, luid, regions } => {
                self.tables.entry((uuid.clone(), *luid)).or_default().dirty.extend(regions.iter().copied());
            }
            Record::Cleared { uuid, luid, regions } => {
                if let Some(t) = self.tables.get_mut(&(uuid.clone(), *luid)) {
                    for r in regions {
                        t.dirty.remove(r);
                    }
                }
            }
        }
    }

    /// The records that rebuild this state, after `Boot(incarnation)`.
    fn records(&self, incarnation: u64) -> Vec<Record> {
        let mut out = vec![Record::Boot(incarnation)];
        for ((uuid, luid), t) in &self.tables {
            let (uuid, luid) = (uuid.clone(), *luid);
            out.push(Record::Table { uuid: uuid.clone(), luid, args: t.ctr_args.clone() });
            out.push(Record::Resumed { uuid: uuid.clone(), luid, resumed: t.resumed });
            if !t.dirty.is_empty() {
                out.push(Record::Dirty { uuid, luid, regions: t.dirty.iter().copied().collect() });
            }
        }
        out
    }

    /// The records for the kernel's `request` of table (`uuid`, `luid`):
    /// what [`OwnMarks::requested`] changes.
    fn requested_records(&self, uuid: &Uuid, luid: Luid, request: &Request) -> Vec<Record> {
        match request {
            Request::MarkRegion(rs) | Request::Flush { marks: rs }
                if !rs.is_empty() && self.tables.contains_key(&(uuid.clone(), luid)) =>
            {
                vec![Record::Dirty { uuid: uuid.clone(), luid, regions: rs.clone() }]
            }
            _ => Vec::new(),
        }
    }

    /// The records for a successful answer to `request`: what
    /// [`OwnMarks::acknowledged`] changes.
    fn acknowledged_records(uuid: &Uuid, luid: Luid, request: &Request) -> Vec<Record> {
        let (uuid, luid) = (uuid.clone(), luid);
        match request {
            Request::Ctr { args, .. } => vec![Record::Table { uuid, luid, args: args.clone() }],
            Request::Dtr => vec![Record::Gone { uuid, luid }],
            Request::Resume => vec![Record::Resumed { uuid, luid, resumed: true }],
            Request::Postsuspend => vec![Record::Resumed { uuid, luid, resumed: false }],
            Request::MarkRegion(rs) | Request::Flush { marks: rs } if !rs.is_empty() => {
                vec![Record::Dirty { uuid, luid, regions: rs.clone() }]
            }
            Request::ClearRegion(rs) => vec![Record::Cleared { uuid, luid, regions: rs.clone() }],
            _ => Vec::new(),
        }
    }
}

/// Where [`OwnMarksStore`] keeps its records: bytes that outlive the
/// daemon's process.
pub trait Journal: Send {
    /// Everything written so far.
    fn load(&mut self) -> io::Result<Vec<u8>>;
    /// Adds `bytes` at the end; done once the bytes would survive the
    /// process.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Replaces everything with `bytes`, atomically.
    fn replace(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// A journal in a file: appends are `write(2)` calls on a file opened for
/// appending (no `fsync`: only the process may die with the kernel still
/// up); a compaction writes a new file and renames it over the old one.
pub struct FileJournal {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl FileJournal {
    /// The journal at `path` (created at the first write).
    pub fn new(path: &Path) -> FileJournal {
        FileJournal { path: path.to_owned(), file: None }
    }

    fn file(&mut self) -> io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.file = Some(f);
        }
        self.file.as_mut().ok_or_else(|| io::Error::other("journal not open"))
    }
}

impl Journal for FileJournal {
    fn load(&mut self) -> io::Result<Vec<u8>> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file()?.write_all(bytes)
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = None;
        Ok(())
    }
}

/// A journal in memory, shared by its clones: the simulation's local disk,
/// which outlives a simulated daemon.
#[derive(Clone, Debug, Default)]
pub struct MemJournal(Arc<Mutex<Vec<u8>>>);

impl MemJournal {
    /// An empty journal.
    pub fn new() -> MemJournal {
        MemJournal::default()
    }
}

impl Journal for MemJournal {
    fn load(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(bytes);
        Ok(())
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = bytes.to_vec();
        Ok(())
    }
}

/// Records appended before the journal is rewritten compacted.
const COMPACT_AFTER: usize = 4096;

/// [`OwnMarks`] with every change recorded in a [`Journal`] first.
pub struct OwnMarksStore {
    marks: OwnMarks,
    journal: Box<dyn Journal>,
    incarnation: u64,
    appended: usize,
}

/// Each record as a little-endian `u32` length and its postcard bytes.
fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        // Serialising plain data into a Vec cannot fail.
        let bytes = postcard::to_stdvec(r).unwrap_or_default();
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// The records in `bytes`, up to the first that does not decode (a write
/// torn by the process's death leaves at most the last one incomplete).
fn decode(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some(body) = tail.get(..len) else { break };
        let Ok(r) = postcard::from_bytes::<Record>(body) else { break };
        out.push(r);
        rest = &tail[len..];
    }
    out
}

impl OwnMarksStore {
    /// Opens `journal` for kernel boot `incarnation`: what it holds if it
    /// was written under the same boot (a daemon restarted under a live
    /// kernel), else nothing (the machine rebooted: those tables are gone).
    pub fn open(mut journal: Box<dyn Journal>, incarnation: u64) -> io::Result<OwnMarksStore> {
        let marks = OwnMarksStore::read(journal.as_mut(), incarnation)?;
        journal.replace(&encode(&marks.records(incarnation)))?;
        Ok(OwnMarksStore { marks, journal, incarnation, appended: 0 })
    }

    /// What `journal` says the kernel of boot `incarnation` holds, without
    /// changing it (for inspection).
    pub fn read(journal: &mut dyn Journal, incarnation: u64) -> io::Result<OwnMarks> {
        let records = decode(&journal.load()?);
        let mut marks = OwnMarks::new();
        if records.first() == Some(&Record::Boot(incarnation)) {
            for r in &records {
                marks.apply(r);
            }
        }
        Ok(marks)
    }

    /// A store that keeps nothing beyond the process (tests).
    pub fn in_memory(incarnation: u64) -> OwnMarksStore {
        OwnMarksStore { marks: OwnMarks::new(), journal: Box::new(MemJournal::new()), incarnation, appended: 0 }
    }

    /// What the kernel holds, as known so far.
    pub fn marks(&self) -> &OwnMarks {
        &self.marks
    }

    /// [`OwnMarks::requested`], recorded first.
    pub fn requested(&mut self, uuid: &Uuid, luid: Luid, request: &Request) -> io::Result<()> {
        let records = self.marks.requested_records(uuid, luid, request);
        self.record(records)
    }

    /// [`OwnMarks::acknowledged`], recorded first.
    pub fn acknowledged(&mut self, uuid: &Uuid, luid: Luid, request: &Request) -> io::Result<()> {
        self.record(OwnMarks::acknowledged_records(uuid, luid, request))
    }

    fn record(&mut self, records: Vec<Record>) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.journal.append(&encode(&records))?;
        for r in &records {
            self.marks.apply(r);
        }
        self.appended += records.len();
        if self.appended >= COMPACT_AFTER {
            self.journal.replace(&encode(&self.marks.records(self.incarnation)))?;
            self.appended = 0;
        }
        Ok(())
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
            .rejoin(NodeId(1), 1, 0)
            .into_iter()
            .filter(|c| matches!(c, Command::Kernel { op: KernelOp::Remark(rs), .. } if !rs.is_empty()))
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
        let _ = m.apply(&Command::NodeJoined { node: me, incarnation: 7, session: 0 });
        let _ = m.apply(&Command::NodeJoined { node: other, incarnation: 1, session: 0 });
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
            let applied = m.apply(&Command::Kernel { uuid: uuid(), instance, session: 0, op });
            assert!(applied.outcome.is_ok());
            own.acknowledged(&uuid(), luid, r);
        }
        assert_eq!(own.dirty(&uuid(), luid), vec![Region(2), Region(5)]);
        // Cut off, fenced, evicted: the replicated state forgot it.
        let _ = m.apply(&Command::NodeEvicted { node: me });
        assert!(m.read(&uuid(), instance, &Query::IsClean(Region(2))).is_err());
        // Rejoin in one go, before answering the kernel again.
        for c in own.rejoin(me, 7, 1) {
            assert!(m.apply(&c).outcome.is_ok(), "{c:?}");
        }
        // A MARK it made before its fence (marking ahead of its writer),
        // still on its way to the leader, arrives now: refused, so no mark
        // is left that nothing on the node knows of.
        let before = Command::Kernel { uuid: uuid(), instance, session: 0, op: KernelOp::Mark(vec![Region(6)]) };
        assert_eq!(m.apply(&before).outcome, Err(regions::Refusal::StaleSession(me)));
        assert_eq!(m.read(&uuid(), instance, &Query::IsClean(Region(6))), Ok(Answer::Bool(true)));
        for r in [2, 5] {
            assert_eq!(m.read(&uuid(), instance, &Query::IsClean(Region(r))), Ok(Answer::Bool(false)), "region {r}");
        }
        // Its kernel writes those regions: nobody else may be handed them.
        let theirs = Instance { node: other, luid: Luid(3) };
        let _ = m.apply(&Command::Kernel {
            uuid: uuid(),
            instance: theirs,
            session: 0,
            op: KernelOp::Ctr { args: "64 clustered-core 8 nosync".into() },
        });
        let _ = m.apply(&Command::Kernel {
            uuid: uuid(),
            instance: theirs,
            session: 0,
            op: KernelOp::Resume { disk: None },
        });
        loop {
            let got =
                m.apply(&Command::Kernel { uuid: uuid(), instance: theirs, session: 0, op: KernelOp::GetResyncWork });
            match got.outcome {
                Ok(Answer::ResyncWork(Some(r))) => {
                    assert!(r != Region(2) && r != Region(5), "handed {r:?}, which the rejoined node may be writing");
                    let set = KernelOp::SetRegionSync { region: r, in_sync: true };
                    let _ = m.apply(&Command::Kernel { uuid: uuid(), instance: theirs, session: 0, op: set });
                }
                _ => break,
            }
        }
        // A DTR forgets the table.
        own.acknowledged(&uuid(), luid, &Request::Dtr);
        assert_eq!(own.rejoin(me, 7, 2), vec![Command::NodeJoined { node: me, incarnation: 7, session: 2 }]);
    }
}
