//! The codec's errors. Every malformed input maps to one of these; nothing
//! in the decoder panics.

use thiserror::Error;

use crate::types::RequestType;

/// A datagram whose framing is wrong. It cannot be answered (its seq or its
/// addressee is not trustworthy) and is dropped, with a log line.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Fewer bytes than the fixed headers need.
    #[error("datagram of {got} bytes is shorter than the {needed}-byte header")]
    Truncated {
        /// Bytes required.
        needed: usize,
        /// Bytes received.
        got: usize,
    },
    /// `nlmsg_len` says more bytes than were received, or fewer than the
    /// headers it must contain.
    #[error("nlmsg_len {nlmsg_len} disagrees with the {got} bytes received")]
    NlmsgLen {
        /// The header's claim.
        nlmsg_len: u32,
        /// Bytes received.
        got: usize,
    },
    /// The message is not for the dm-log-userspace connector callback
    /// (for example a process-events message on group 1).
    #[error("connector id {idx}:{val} is not dm-log-userspace (7:1)")]
    WrongConnectorId {
        /// `cn_msg.id.idx`.
        idx: u32,
        /// `cn_msg.id.val`.
        val: u32,
    },
    /// `cn_msg.len` does not fit in the netlink message or is too short for
    /// a request header.
    #[error("cn_msg.len {cn_len} does not fit nlmsg_len {nlmsg_len}")]
    CnLen {
        /// `cn_msg.len`.
        cn_len: u16,
        /// `nlmsg_len`.
        nlmsg_len: u32,
    },
    /// `cn_msg.len` is neither 0 (bare ACK) nor at least a request header.
    #[error("cn_msg.len {cn_len} is an incomplete message")]
    Incomplete {
        /// `cn_msg.len`.
        cn_len: u16,
    },
    /// A bare ACK where a request was expected.
    #[error("bare ACK (cn_msg.len 0) where a request was expected")]
    UnexpectedAck,
    /// `data_size` disagrees with `cn_msg.len`.
    #[error("data_size {data_size} disagrees with cn_msg.len {cn_len}")]
    DataSize {
        /// `dm_ulog_request.data_size`.
        data_size: u32,
        /// `cn_msg.len`.
        cn_len: u16,
    },
}

/// A well-framed request whose content is invalid. It is answered with
/// `-EINVAL` (the kernel's seq is known), never dropped, so the kernel does
/// not wait 15 s for a reply that will not come (spec §2).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum InvalidRequest {
    /// The low byte of `request_type` is not 1..=17.
    #[error("unknown request type {0}")]
    UnknownType(u32),
    /// The uuid field has no NUL terminator.
    #[error("uuid is not NUL-terminated")]
    UuidUnterminated,
    /// The uuid is empty.
    #[error("uuid is empty")]
    UuidEmpty,
    /// The uuid is not UTF-8.
    #[error("uuid is not UTF-8")]
    UuidNotUtf8,
    /// More payload than the kernel can send.
    #[error("{request_type} payload of {data_size} bytes exceeds {max}")]
    PayloadTooLarge {
        /// The request.
        request_type: RequestType,
        /// Bytes received.
        data_size: usize,
        /// Largest legal size.
        max: usize,
    },
    /// The payload size does not fit the request type.
    #[error("{request_type} payload of {data_size} bytes, expected {expected}")]
    PayloadSize {
        /// The request.
        request_type: RequestType,
        /// Bytes received.
        data_size: usize,
        /// What the request type carries.
        expected: &'static str,
    },
    /// A CTR whose argument string is not UTF-8, empty, or has a NUL inside.
    #[error("CTR arguments are not a valid string: {0}")]
    CtrArgs(&'static str),
    /// SET_REGION_SYNC with an `in_sync` other than 0 or 1.
    #[error("SET_REGION_SYNC in_sync value {0} is not 0 or 1")]
    InSyncValue(i64),
}

/// A request the encoder refuses to build because the kernel could not send it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The payload would exceed the kernel's 332-byte limit.
    #[error("payload of {0} bytes exceeds the kernel's 332-byte limit")]
    PayloadTooLarge(usize),
    /// MARK/CLEAR/FLUSH with more than 32 regions, or MARK/CLEAR with none.
    #[error("{request_type} with {count} regions (1..=32 allowed, 0 for FLUSH)")]
    RegionCount {
        /// The request.
        request_type: RequestType,
        /// Regions given.
        count: usize,
    },
    /// A CTR argument string that is empty or contains a NUL.
    #[error("CTR arguments must be non-empty and free of NUL")]
    CtrArgs,
}

/// An answer that does not fit the request it answers.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// The answer's kind is not what the request type expects.
    #[error("{request_type} cannot be answered with {answer}")]
    WrongAnswer {
        /// The request.
        request_type: RequestType,
        /// The answer's kind.
        answer: &'static str,
    },
    /// A text answer too long for the kernel's buffer.
    #[error("{what} of {len} bytes exceeds {max}")]
    TooLong {
        /// Which text.
        what: &'static str,
        /// Its length with the NUL.
        len: usize,
        /// Largest legal length.
        max: usize,
    },
    /// A text answer containing a NUL.
    #[error("{0} contains a NUL byte")]
    InteriorNul(&'static str),
    /// A request header with an unknown request type cannot be answered
    /// with anything but an error.
    #[error("request type {0} is unknown; only an error can answer it")]
    UnknownType(u32),
}
