//! Newtypes for the protocol's identities, so no bare integer crosses a crate
//! boundary with an unclear meaning.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::consts::MAX_UUID_LEN;

/// A region number: the mirror is cut into `region_count` regions of
/// `region_size` sectors, numbered from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Region(pub u64);

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The kernel's local id of one log *instance* (one table): the address of
/// its `log_c`. A table reload constructs a second instance of the same uuid
/// with another luid (spec §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Luid(pub u64);

impl fmt::Display for Luid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The kernel's request sequence number: one global counter for all logs on
/// a host, taken afresh for every (re-)send, wrapping at `u32::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub u32);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A positive errno value (`EINVAL` = 22). Replies carry it negated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Errno(pub i32);

impl Errno {
    /// No such file or directory: an unknown log or log instance.
    pub const ENOENT: Errno = Errno(2);
    /// I/O error: the log device could not be written.
    pub const EIO: Errno = Errno(5);
    /// Try again: makes the kernel re-send at once (never used for a busy
    /// cluster, which would become a busy loop; spec §1.8).
    pub const EAGAIN: Errno = Errno(11);
    /// The object exists already.
    pub const EEXIST: Errno = Errno(17);
    /// Invalid argument: a malformed or impossible request.
    pub const EINVAL: Errno = Errno(22);
    /// No space: what the kernel reports when a reply is larger than the
    /// buffer it waits with.
    pub const ENOSPC: Errno = Errno(28);
    /// No such process: no listener on the connector group.
    pub const ESRCH: Errno = Errno(3);

    /// The value carried in `dm_ulog_request.error` of a failed reply.
    pub fn negated(self) -> i32 {
        self.0.saturating_neg()
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Errno::ENOENT => "ENOENT",
            Errno::EIO => "EIO",
            Errno::EAGAIN => "EAGAIN",
            Errno::EEXIST => "EEXIST",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ESRCH => "ESRCH",
            _ => return write!(f, "errno {}", self.0),
        };
        f.write_str(name)
    }
}

/// The cluster-wide name of a mirror log: the uuid token of the table,
/// 1 to 128 bytes of UTF-8 without NUL.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Uuid(String);

impl Uuid {
    /// Checks and wraps a uuid. `None` when it is empty, longer than 128
    /// bytes or contains a NUL.
    pub fn new(s: impl Into<String>) -> Option<Uuid> {
        let s = s.into();
        if s.is_empty() || s.len() > MAX_UUID_LEN || s.contains('\0') {
            return None;
        }
        Some(Uuid(s))
    }

    /// The uuid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last 8 characters, as the kernel prints them in its messages.
    pub fn short(&self) -> &str {
        let start = self.0.len().saturating_sub(8);
        self.0.get(start..).unwrap_or(&self.0)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The 17 request types (spec §2, §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum RequestType {
    /// Construct a log instance.
    Ctr = 1,
    /// Destroy a log instance.
    Dtr = 2,
    /// The mirror is about to suspend.
    Presuspend = 3,
    /// The mirror has suspended (all I/O drained).
    Postsuspend = 4,
    /// The mirror resumes.
    Resume = 5,
    /// Ask the region size.
    GetRegionSize = 6,
    /// Is a region clean (never sent by 6.1 dm-raid1).
    IsClean = 7,
    /// Is a region in sync.
    InSync = 8,
    /// Make marks durable; may carry marks (integrated flush).
    Flush = 9,
    /// Mark regions dirty.
    MarkRegion = 10,
    /// Clear regions' marks.
    ClearRegion = 11,
    /// Ask for a region to resync.
    GetResyncWork = 12,
    /// Report a region in or out of sync.
    SetRegionSync = 13,
    /// Ask how many regions are in sync.
    GetSyncCount = 14,
    /// Status text for `dmsetup status`.
    StatusInfo = 15,
    /// Status text for `dmsetup table` (never sent by 6.1).
    StatusTable = 16,
    /// Is a region being recovered somewhere (hold writes).
    IsRemoteRecovering = 17,
}

impl RequestType {
    /// All types in wire order.
    pub const ALL: [RequestType; 17] = [
        RequestType::Ctr,
        RequestType::Dtr,
        RequestType::Presuspend,
        RequestType::Postsuspend,
        RequestType::Resume,
        RequestType::GetRegionSize,
        RequestType::IsClean,
        RequestType::InSync,
        RequestType::Flush,
        RequestType::MarkRegion,
        RequestType::ClearRegion,
        RequestType::GetResyncWork,
        RequestType::SetRegionSync,
        RequestType::GetSyncCount,
        RequestType::StatusInfo,
        RequestType::StatusTable,
        RequestType::IsRemoteRecovering,
    ];

    /// Decodes a (masked) wire value.
    pub fn from_wire(v: u32) -> Option<RequestType> {
        let i = usize::try_from(v).ok()?.checked_sub(1)?;
        RequestType::ALL.get(i).copied()
    }

    /// The wire value.
    pub fn to_wire(self) -> u32 {
        self as u32
    }

    /// The kernel's name, as in its log messages and the recorded trace.
    pub fn name(self) -> &'static str {
        match self {
            RequestType::Ctr => "CTR",
            RequestType::Dtr => "DTR",
            RequestType::Presuspend => "PRESUSPEND",
            RequestType::Postsuspend => "POSTSUSPEND",
            RequestType::Resume => "RESUME",
            RequestType::GetRegionSize => "GET_REGION_SIZE",
            RequestType::IsClean => "IS_CLEAN",
            RequestType::InSync => "IN_SYNC",
            RequestType::Flush => "FLUSH",
            RequestType::MarkRegion => "MARK_REGION",
            RequestType::ClearRegion => "CLEAR_REGION",
            RequestType::GetResyncWork => "GET_RESYNC_WORK",
            RequestType::SetRegionSync => "SET_REGION_SYNC",
            RequestType::GetSyncCount => "GET_SYNC_COUNT",
            RequestType::StatusInfo => "STATUS_INFO",
            RequestType::StatusTable => "STATUS_TABLE",
            RequestType::IsRemoteRecovering => "IS_REMOTE_RECOVERING",
        }
    }

    /// Looks a type up by its kernel name.
    pub fn from_name(name: &str) -> Option<RequestType> {
        RequestType::ALL.iter().copied().find(|t| t.name() == name)
    }
}

impl fmt::Display for RequestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
