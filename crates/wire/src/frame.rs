//! Datagram framing: `nlmsghdr` + `cn_msg` + `dm_ulog_request` header.
//!
//! Offsets, from the start of the datagram (spec §1.3, §2):
//!
//! ```text
//!   0 nlmsg_len u32 | 4 nlmsg_type u16 | 6 nlmsg_flags u16 | 8 nlmsg_seq u32 | 12 nlmsg_pid u32
//!  16 cn idx u32    | 20 cn val u32    | 24 cn seq u32     | 28 cn ack u32   | 32 cn len u16 | 34 cn flags u16
//!  36 luid u64 | 44 uuid [129] | 173 padding [3] | 176 version u32 | 180 error i32
//! 184 seq u32  | 188 request_type u32 | 192 data_size u32 | 196 payload
//! ```

use crate::codec::{put, u16_at, u32_at, u64_at};
use crate::consts::*;
use crate::error::{EncodeError, FrameError};
use crate::request::Request;
use crate::types::{Luid, RequestType, Seq, Uuid};

pub(crate) const OFF_NLMSG_LEN: usize = 0;
pub(crate) const OFF_NLMSG_TYPE: usize = 4;
pub(crate) const OFF_NLMSG_SEQ: usize = 8;
pub(crate) const OFF_CN_IDX: usize = 16;
pub(crate) const OFF_CN_VAL: usize = 20;
pub(crate) const OFF_CN_SEQ: usize = 24;
pub(crate) const OFF_CN_ACK: usize = 28;
pub(crate) const OFF_CN_LEN: usize = 32;
pub(crate) const OFF_LUID: usize = 36;
pub(crate) const OFF_UUID: usize = 44;
pub(crate) const OFF_VERSION: usize = 176;
pub(crate) const OFF_ERROR: usize = 180;
pub(crate) const OFF_SEQ: usize = 184;
pub(crate) const OFF_REQUEST_TYPE: usize = 188;
pub(crate) const OFF_DATA_SIZE: usize = 192;

/// The fixed fields of a request, kept raw so that a reply can echo them
/// even when the request's content turns out to be invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Local id of the log instance.
    pub luid: Luid,
    /// The uuid field as received (NUL-padded, not yet validated).
    pub uuid_raw: [u8; UUID_FIELD_LEN],
    /// `DM_ULOG_REQUEST_VERSION` of the sender (3 on 6.1).
    pub version: u32,
    /// Sequence number the reply must echo.
    pub seq: Seq,
    /// `request_type` as received, before masking.
    pub request_type_raw: u32,
}

impl Header {
    /// The request type, if its low byte names one of the 17.
    pub fn request_type(&self) -> Option<RequestType> {
        RequestType::from_wire(self.request_type_raw & REQUEST_TYPE_MASK)
    }

    /// Builds the header the kernel would send for `uuid`.
    pub fn new(luid: Luid, uuid: &Uuid, seq: Seq, request_type: RequestType) -> Header {
        let mut uuid_raw = [0u8; UUID_FIELD_LEN];
        put(&mut uuid_raw, 0, uuid.as_str().as_bytes());
        Header { luid, uuid_raw, version: REQUEST_VERSION, seq, request_type_raw: request_type.to_wire() }
    }
}

/// A received datagram whose framing has been checked: a request header and
/// a payload of exactly `data_size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    header: Header,
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Checks the framing of one received datagram.
    ///
    /// `recv()` may return up to 3 padding bytes beyond `nlmsg_len`; only the
    /// lengths in the headers are trusted (spec §1.3).
    pub fn parse(buf: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let cn_len = check_connector_frame(buf)?;
        if cn_len == 0 {
            return Err(FrameError::UnexpectedAck);
        }
        if usize::from(cn_len) < ULOG_REQUEST_LEN {
            return Err(FrameError::Incomplete { cn_len });
        }
        let field = |off| u32_at(buf, off).ok_or(FrameError::Truncated { needed: HEADER_LEN, got: buf.len() });
        let data_size = field(OFF_DATA_SIZE)?;
        if usize::try_from(data_size).ok() != Some(usize::from(cn_len) - ULOG_REQUEST_LEN) {
            return Err(FrameError::DataSize { data_size, cn_len });
        }
        let payload_end = HEADER_LEN + (usize::from(cn_len) - ULOG_REQUEST_LEN);
        let payload =
            buf.get(HEADER_LEN..payload_end).ok_or(FrameError::Truncated { needed: payload_end, got: buf.len() })?;
        let mut uuid_raw = [0u8; UUID_FIELD_LEN];
        if let Some(src) = buf.get(OFF_UUID..OFF_UUID + UUID_FIELD_LEN) {
            uuid_raw.copy_from_slice(src);
        }
        let luid = u64_at(buf, OFF_LUID).ok_or(FrameError::Truncated { needed: HEADER_LEN, got: buf.len() })?;
        let header = Header {
            luid: Luid(luid),
            uuid_raw,
            version: field(OFF_VERSION)?,
            seq: Seq(field(OFF_SEQ)?),
            request_type_raw: field(OFF_REQUEST_TYPE)?,
        };
        Ok(Frame { header, payload })
    }

    /// The request header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The payload, exactly `data_size` bytes.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// Checks the netlink and connector headers common to requests and replies
/// and returns `cn_msg.len`.
pub(crate) fn check_connector_frame(buf: &[u8]) -> Result<u16, FrameError> {
    let min = NLMSG_HDR_LEN + CN_MSG_LEN;
    let truncated = FrameError::Truncated { needed: min, got: buf.len() };
    if buf.len() < min {
        return Err(truncated);
    }
    let nlmsg_len = u32_at(buf, OFF_NLMSG_LEN).ok_or(truncated.clone())?;
    let fits = usize::try_from(nlmsg_len).is_ok_and(|n| n >= min && n <= buf.len());
    if !fits {
        return Err(FrameError::NlmsgLen { nlmsg_len, got: buf.len() });
    }
    let idx = u32_at(buf, OFF_CN_IDX).ok_or(truncated.clone())?;
    let val = u32_at(buf, OFF_CN_VAL).ok_or(truncated.clone())?;
    if (idx, val) != (CN_IDX_DM, CN_VAL_DM_USERSPACE_LOG) {
        return Err(FrameError::WrongConnectorId { idx, val });
    }
    let cn_len = u16_at(buf, OFF_CN_LEN).ok_or(truncated)?;
    let room = usize::try_from(nlmsg_len).unwrap_or(0) - min;
    if usize::from(cn_len) > room {
        return Err(FrameError::CnLen { cn_len, nlmsg_len });
    }
    Ok(cn_len)
}

/// Writes the `nlmsghdr` and `cn_msg` of a datagram carrying `cn_len` bytes
/// after the connector header into `buf` (sized by the caller).
pub(crate) fn put_connector_headers(buf: &mut [u8], nl_seq: u32, cn_seq: u32, cn_ack: u32, cn_len: u16) {
    let nlmsg_len = u32::try_from(NLMSG_HDR_LEN + CN_MSG_LEN + usize::from(cn_len)).unwrap_or(u32::MAX);
    put(buf, OFF_NLMSG_LEN, &nlmsg_len.to_ne_bytes());
    put(buf, OFF_NLMSG_TYPE, &NLMSG_DONE.to_ne_bytes());
    put(buf, OFF_NLMSG_SEQ, &nl_seq.to_ne_bytes());
    put(buf, OFF_CN_IDX, &CN_IDX_DM.to_ne_bytes());
    put(buf, OFF_CN_VAL, &CN_VAL_DM_USERSPACE_LOG.to_ne_bytes());
    put(buf, OFF_CN_SEQ, &cn_seq.to_ne_bytes());
    put(buf, OFF_CN_ACK, &cn_ack.to_ne_bytes());
    put(buf, OFF_CN_LEN, &cn_len.to_ne_bytes());
}

/// Writes the 160-byte request header at offset 36.
pub(crate) fn put_ulog_header(buf: &mut [u8], header: &Header, error: i32, data_size: usize) {
    let data_size = u32::try_from(data_size).unwrap_or(u32::MAX);
    put(buf, OFF_LUID, &header.luid.0.to_ne_bytes());
    put(buf, OFF_UUID, &header.uuid_raw);
    put(buf, OFF_VERSION, &header.version.to_ne_bytes());
    put(buf, OFF_ERROR, &error.to_ne_bytes());
    put(buf, OFF_SEQ, &header.seq.0.to_ne_bytes());
    put(buf, OFF_REQUEST_TYPE, &header.request_type_raw.to_ne_bytes());
    put(buf, OFF_DATA_SIZE, &data_size.to_ne_bytes());
}

/// Builds the datagram the 6.1 kernel sends for `request` (the kernel's half
/// of the protocol, for the simulator and tests).
pub fn encode_request(luid: Luid, uuid: &Uuid, seq: Seq, request: &Request) -> Result<Vec<u8>, EncodeError> {
    let payload = request.encode_payload()?;
    if payload.len() > MAX_REQUEST_PAYLOAD {
        return Err(EncodeError::PayloadTooLarge(payload.len()));
    }
    let header = Header::new(luid, uuid, seq, request.request_type());
    let mut buf = vec![0u8; HEADER_LEN + payload.len()];
    // The payload is at most 332 bytes, so this fits a u16.
    let cn_len = u16::try_from(ULOG_REQUEST_LEN + payload.len()).unwrap_or(u16::MAX);
    put_connector_headers(&mut buf, seq.0, seq.0, 0, cn_len);
    put_ulog_header(&mut buf, &header, 0, payload.len());
    put(&mut buf, HEADER_LEN, &payload);
    Ok(buf)
}
