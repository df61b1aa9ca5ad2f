//! Replies: typed answers encoded with exactly the `data_size` the kernel
//! expects (spec §1.5), and the kernel's view of a reply datagram.

use serde::{Deserialize, Serialize};

use crate::codec::{i32_at, put, u32_at};
use crate::consts::*;
use crate::error::{FrameError, ReplyError};
use crate::frame::{
    Header, OFF_CN_ACK, OFF_CN_SEQ, OFF_DATA_SIZE, OFF_ERROR, OFF_SEQ, check_connector_frame, put_connector_headers,
    put_ulog_header,
};
use crate::request::{Message, Request};
use crate::types::{Errno, Region, RequestType, Seq};

/// What a successful reply says. Each request type has exactly one answer
/// kind, and each kind one payload size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// No payload: DTR, PRESUSPEND, POSTSUSPEND, RESUME, FLUSH, MARK,
    /// CLEAR, SET_REGION_SYNC, and CTR of a core log or on reconnect.
    Done,
    /// CTR of a disk log: the log device for the kernel's `dm_get_device`,
    /// sent NUL-terminated.
    CtrDevice(String),
    /// GET_REGION_SIZE: sectors, as a u64.
    RegionSize(u64),
    /// IS_CLEAN, IN_SYNC: an i64 0 or 1.
    Bool(bool),
    /// GET_RESYNC_WORK: `{i64 i; u64 region}`.
    ResyncWork(Option<Region>),
    /// GET_SYNC_COUNT: a u64.
    SyncCount(u64),
    /// STATUS_INFO, STATUS_TABLE: text, sent NUL-terminated.
    Text(String),
    /// IS_REMOTE_RECOVERING: `{i64 is_recovering; u64 in_sync_hint}`.
    RemoteRecovering {
        /// Hold writes to the region.
        is_recovering: bool,
        /// Regions below this need no further question until RESUME.
        in_sync_hint: u64,
    },
}

impl Answer {
    fn kind(&self) -> &'static str {
        match self {
            Answer::Done => "no data",
            Answer::CtrDevice(_) => "a device name",
            Answer::RegionSize(_) => "a region size",
            Answer::Bool(_) => "a boolean",
            Answer::ResyncWork(_) => "resync work",
            Answer::SyncCount(_) => "a sync count",
            Answer::Text(_) => "text",
            Answer::RemoteRecovering { .. } => "a recovering answer",
        }
    }

    fn fits(&self, request: &Request) -> bool {
        use RequestType as T;
        match (self, request.request_type()) {
            (Answer::Done, T::Ctr) => true,
            (Answer::CtrDevice(_), T::Ctr) => !matches!(request, Request::Ctr { reconnect: true, .. }),
            (
                Answer::Done,
                T::Dtr
                | T::Presuspend
                | T::Postsuspend
                | T::Resume
                | T::Flush
                | T::MarkRegion
                | T::ClearRegion
                | T::SetRegionSync,
            ) => true,
            (Answer::RegionSize(_), T::GetRegionSize) => true,
            (Answer::Bool(_), T::IsClean | T::InSync) => true,
            (Answer::ResyncWork(_), T::GetResyncWork) => true,
            (Answer::SyncCount(_), T::GetSyncCount) => true,
            (Answer::Text(_), T::StatusInfo | T::StatusTable) => true,
            (Answer::RemoteRecovering { .. }, T::IsRemoteRecovering) => true,
            _ => false,
        }
    }

    fn encode(&self) -> Result<Vec<u8>, ReplyError> {
        let text = |s: &str, what: &'static str, max: usize| {
            if s.contains('\0') {
                return Err(ReplyError::InteriorNul(what));
            }
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            if v.len() > max {
                return Err(ReplyError::TooLong { what, len: v.len(), max });
            }
            Ok(v)
        };
        let two = |a: i64, b: u64| {
            let mut v = a.to_ne_bytes().to_vec();
            v.extend_from_slice(&b.to_ne_bytes());
            v
        };
        Ok(match self {
            Answer::Done => Vec::new(),
            Answer::CtrDevice(name) => text(name, "CTR device name", CTR_REPLY_CAPACITY)?,
            Answer::RegionSize(v) | Answer::SyncCount(v) => v.to_ne_bytes().to_vec(),
            Answer::Bool(b) => i64::from(*b).to_ne_bytes().to_vec(),
            Answer::ResyncWork(None) => two(0, 0),
            Answer::ResyncWork(Some(r)) => two(1, r.0),
            Answer::Text(s) => text(s, "status text", MAX_REPLY_PAYLOAD)?,
            Answer::RemoteRecovering { is_recovering, in_sync_hint } => two(i64::from(*is_recovering), *in_sync_hint),
        })
    }
}

/// A reply datagram ready to send to the kernel (netlink port 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    header: Header,
    error: i32,
    data: Vec<u8>,
}

impl Reply {
    /// Answers `message` with `result`. Fails when the answer does not fit
    /// the request (a programming error in the caller, never sent).
    pub fn new(message: &Message, result: Result<Answer, Errno>) -> Result<Reply, ReplyError> {
        match result {
            Err(errno) => Ok(Reply::error(&message.header, errno)),
            Ok(answer) => {
                if !answer.fits(&message.request) {
                    return Err(ReplyError::WrongAnswer {
                        request_type: message.request.request_type(),
                        answer: answer.kind(),
                    });
                }
                Ok(Reply { header: message.header, error: 0, data: answer.encode()? })
            }
        }
    }

    /// A failed reply: `error = -errno`, no data. Used for requests that
    /// could not even be decoded, too.
    pub fn error(header: &Header, errno: Errno) -> Reply {
        Reply { header: *header, error: errno.negated(), data: Vec::new() }
    }

    /// The sequence number this reply answers.
    pub fn seq(&self) -> Seq {
        self.header.seq
    }

    /// `dm_ulog_request.error`: 0 or a negative errno.
    pub fn error_code(&self) -> i32 {
        self.error
    }

    /// The payload (`data_size` bytes).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The datagram: `cn_msg.len = 160 + data_size`, header echoed.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + self.data.len()];
        let cn_len = u16::try_from(ULOG_REQUEST_LEN + self.data.len()).unwrap_or(u16::MAX);
        put_connector_headers(&mut buf, 0, self.header.seq.0, 0, cn_len);
        put_ulog_header(&mut buf, &self.header, self.error, self.data.len());
        put(&mut buf, HEADER_LEN, &self.data);
        buf
    }

    /// A bare ACK (`cn_msg.len = 0`): `ack` is a positive errno, 0 for
    /// success. Only legal for requests without reply data (spec §1.5).
    pub fn encode_bare_ack(seq: Seq, ack: u32) -> Vec<u8> {
        let mut buf = vec![0u8; NLMSG_HDR_LEN + CN_MSG_LEN];
        put_connector_headers(&mut buf, 0, seq.0, ack, 0);
        buf
    }
}

/// How many reply bytes the kernel waits with for a request (spec §1.5).
/// `status_maxlen` is the room left in the status buffer for STATUS_*.
pub fn reply_capacity(request: &Request, status_maxlen: usize) -> usize {
    match request {
        Request::Ctr { reconnect: true, .. } => 0,
        Request::Ctr { reconnect: false, .. } => CTR_REPLY_CAPACITY,
        Request::GetRegionSize | Request::IsClean(_) | Request::InSync(_) | Request::GetSyncCount => 8,
        Request::GetResyncWork | Request::IsRemoteRecovering(_) => 16,
        Request::StatusInfo | Request::StatusTable => status_maxlen,
        Request::Dtr
        | Request::Presuspend
        | Request::Postsuspend
        | Request::Resume
        | Request::Flush { .. }
        | Request::MarkRegion(_)
        | Request::ClearRegion(_)
        | Request::SetRegionSync { .. } => 0,
    }
}

/// A reply datagram as the kernel's connector callback sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelReply {
    /// `cn_msg.len == 0`: matched by `cn_msg.seq`; `ack` is a positive errno.
    BareAck {
        /// `cn_msg.seq`.
        seq: Seq,
        /// `cn_msg.ack`.
        ack: u32,
    },
    /// A full reply, matched by `dm_ulog_request.seq`.
    Full {
        /// The echoed seq.
        seq: Seq,
        /// 0 or a negative errno.
        error: i32,
        /// `data_size` bytes of payload.
        data: Vec<u8>,
    },
}

impl KernelReply {
    /// Parses a reply with the connector's checks (spec §1.5 step 1, 3–5).
    pub fn parse(buf: &[u8]) -> Result<KernelReply, FrameError> {
        let cn_len = check_connector_frame(buf)?;
        let truncated = FrameError::Truncated { needed: HEADER_LEN, got: buf.len() };
        if cn_len == 0 {
            let seq = u32_at(buf, OFF_CN_SEQ).ok_or(truncated.clone())?;
            let ack = u32_at(buf, OFF_CN_ACK).ok_or(truncated)?;
            return Ok(KernelReply::BareAck { seq: Seq(seq), ack });
        }
        if usize::from(cn_len) < ULOG_REQUEST_LEN {
            return Err(FrameError::Incomplete { cn_len });
        }
        if usize::from(cn_len) + CN_MSG_LEN > CONNECTOR_MAX_MSG_SIZE {
            return Err(FrameError::CnLen { cn_len, nlmsg_len: u32_at(buf, 0).unwrap_or(0) });
        }
        let data_size = u32_at(buf, OFF_DATA_SIZE).ok_or(truncated.clone())?;
        if usize::try_from(data_size).ok() != Some(usize::from(cn_len) - ULOG_REQUEST_LEN) {
            return Err(FrameError::DataSize { data_size, cn_len });
        }
        let end = HEADER_LEN + usize::from(cn_len) - ULOG_REQUEST_LEN;
        let data = buf.get(HEADER_LEN..end).ok_or(truncated.clone())?.to_vec();
        let seq = u32_at(buf, OFF_SEQ).ok_or(truncated.clone())?;
        let error = i32_at(buf, OFF_ERROR).ok_or(truncated)?;
        Ok(KernelReply::Full { seq: Seq(seq), error, data })
    }

    /// The seq the kernel matches this reply against.
    pub fn seq(&self) -> Seq {
        match self {
            KernelReply::BareAck { seq, .. } | KernelReply::Full { seq, .. } => *seq,
        }
    }
}
