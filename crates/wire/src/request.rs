//! Typed requests: one variant per `DM_ULOG_*` request type (spec §3).

use serde::{Deserialize, Serialize};

use crate::codec::{i64_at, u64_at};
use crate::consts::{MAX_REGIONS_PER_REQUEST, MAX_REQUEST_PAYLOAD};
use crate::error::{EncodeError, InvalidRequest};
use crate::frame::{Frame, Header};
use crate::types::{Luid, Region, RequestType, Seq, Uuid};

/// One kernel request with its payload decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Construct a log instance. `args` is the string after the uuid, with
    /// the target length first (spec §4.1). `reconnect` is set when the
    /// payload ended with a NUL: the kernel's reconnect path, whose reply must
    /// carry no data (spec §1.8).
    Ctr {
        /// The constructor arguments, without any trailing NUL.
        args: String,
        /// Sent by the kernel's reconnect loop.
        reconnect: bool,
    },
    /// Destroy the instance.
    Dtr,
    /// The mirror is about to suspend; recovery has stopped.
    Presuspend,
    /// The mirror has suspended.
    Postsuspend,
    /// The mirror resumes.
    Resume,
    /// Ask the region size in sectors.
    GetRegionSize,
    /// Is the region clean.
    IsClean(Region),
    /// Is the region in sync.
    InSync(Region),
    /// Make every earlier mark durable. With `integrated_flush` the marks of
    /// this flush travel in it (up to 32).
    Flush {
        /// Marks carried by an integrated flush; empty otherwise.
        marks: Vec<Region>,
    },
    /// Mark 1 to 32 regions dirty.
    MarkRegion(Vec<Region>),
    /// Clear this node's mark on 1 to 32 regions.
    ClearRegion(Vec<Region>),
    /// Ask for a region to resync.
    GetResyncWork,
    /// Report a region in sync (after recovery) or out of sync (failure).
    SetRegionSync {
        /// The region.
        region: Region,
        /// Whether its legs are now identical.
        in_sync: bool,
    },
    /// Ask how many regions are in sync.
    GetSyncCount,
    /// Status text for `dmsetup status`.
    StatusInfo,
    /// Status text for `dmsetup table`.
    StatusTable,
    /// May the kernel write this region, or is it (about to be) recovered.
    IsRemoteRecovering(Region),
}

impl Request {
    /// The request's type.
    pub fn request_type(&self) -> RequestType {
        match self {
            Request::Ctr { .. } => RequestType::Ctr,
            Request::Dtr => RequestType::Dtr,
            Request::Presuspend => RequestType::Presuspend,
            Request::Postsuspend => RequestType::Postsuspend,
            Request::Resume => RequestType::Resume,
            Request::GetRegionSize => RequestType::GetRegionSize,
            Request::IsClean(_) => RequestType::IsClean,
            Request::InSync(_) => RequestType::InSync,
            Request::Flush { .. } => RequestType::Flush,
            Request::MarkRegion(_) => RequestType::MarkRegion,
            Request::ClearRegion(_) => RequestType::ClearRegion,
            Request::GetResyncWork => RequestType::GetResyncWork,
            Request::SetRegionSync { .. } => RequestType::SetRegionSync,
            Request::GetSyncCount => RequestType::GetSyncCount,
            Request::StatusInfo => RequestType::StatusInfo,
            Request::StatusTable => RequestType::StatusTable,
            Request::IsRemoteRecovering(_) => RequestType::IsRemoteRecovering,
        }
    }

    /// Decodes the payload of a request of type `rt`.
    pub fn decode(rt: RequestType, payload: &[u8]) -> Result<Request, InvalidRequest> {
        if payload.len() > MAX_REQUEST_PAYLOAD {
            return Err(InvalidRequest::PayloadTooLarge {
                request_type: rt,
                data_size: payload.len(),
                max: MAX_REQUEST_PAYLOAD,
            });
        }
        let size_err = |expected| InvalidRequest::PayloadSize { request_type: rt, data_size: payload.len(), expected };
        let empty = |r: Request| if payload.is_empty() { Ok(r) } else { Err(size_err("0 bytes")) };
        let one_region = || match payload.len() {
            8 => u64_at(payload, 0).map(Region).ok_or(size_err("8 bytes")),
            _ => Err(size_err("8 bytes")),
        };
        let regions = |min: usize| {
            let n = payload.len() / 8;
            if !payload.len().is_multiple_of(8) || n < min || n > MAX_REGIONS_PER_REQUEST {
                return Err(size_err(if min == 0 { "0 to 32 u64 regions" } else { "1 to 32 u64 regions" }));
            }
            Ok(payload.chunks_exact(8).filter_map(|c| u64_at(c, 0)).map(Region).collect::<Vec<_>>())
        };
        match rt {
            RequestType::Ctr => decode_ctr(payload),
            // The kernel's header comment says DTR carries the constructor
            // arguments; the 6.1 code sends none. Either is accepted.
            RequestType::Dtr => Ok(Request::Dtr),
            RequestType::Presuspend => empty(Request::Presuspend),
            RequestType::Postsuspend => empty(Request::Postsuspend),
            RequestType::Resume => empty(Request::Resume),
            RequestType::GetRegionSize => empty(Request::GetRegionSize),
            RequestType::IsClean => one_region().map(Request::IsClean),
            RequestType::InSync => one_region().map(Request::InSync),
            RequestType::Flush => regions(0).map(|marks| Request::Flush { marks }),
            RequestType::MarkRegion => regions(1).map(Request::MarkRegion),
            RequestType::ClearRegion => regions(1).map(Request::ClearRegion),
            RequestType::GetResyncWork => empty(Request::GetResyncWork),
            RequestType::SetRegionSync => {
                if payload.len() != 16 {
                    return Err(size_err("16 bytes"));
                }
                let region = u64_at(payload, 0).ok_or(size_err("16 bytes"))?;
                let in_sync = i64_at(payload, 8).ok_or(size_err("16 bytes"))?;
                let in_sync = match in_sync {
                    0 => false,
                    1 => true,
                    other => return Err(InvalidRequest::InSyncValue(other)),
                };
                Ok(Request::SetRegionSync { region: Region(region), in_sync })
            }
            RequestType::GetSyncCount => empty(Request::GetSyncCount),
            RequestType::StatusInfo => empty(Request::StatusInfo),
            RequestType::StatusTable => empty(Request::StatusTable),
            RequestType::IsRemoteRecovering => one_region().map(Request::IsRemoteRecovering),
        }
    }

    /// The payload bytes the kernel sends for this request.
    pub fn encode_payload(&self) -> Result<Vec<u8>, EncodeError> {
        let regions = |rs: &[Region], min: usize| {
            if rs.len() < min || rs.len() > MAX_REGIONS_PER_REQUEST {
                return Err(EncodeError::RegionCount { request_type: self.request_type(), count: rs.len() });
            }
            Ok(rs.iter().flat_map(|r| r.0.to_ne_bytes()).collect())
        };
        match self {
            Request::Ctr { args, reconnect } => {
                if args.is_empty() || args.contains('\0') {
                    return Err(EncodeError::CtrArgs);
                }
                let mut p = args.as_bytes().to_vec();
                if *reconnect {
                    p.push(0);
                }
                if p.len() > MAX_REQUEST_PAYLOAD {
                    return Err(EncodeError::PayloadTooLarge(p.len()));
                }
                Ok(p)
            }
            Request::IsClean(r) | Request::InSync(r) | Request::IsRemoteRecovering(r) => Ok(r.0.to_ne_bytes().to_vec()),
            Request::Flush { marks } => regions(marks, 0),
            Request::MarkRegion(rs) | Request::ClearRegion(rs) => regions(rs, 1),
            Request::SetRegionSync { region, in_sync } => {
                let mut p = region.0.to_ne_bytes().to_vec();
                p.extend_from_slice(&i64::from(*in_sync).to_ne_bytes());
                Ok(p)
            }
            Request::Dtr
            | Request::Presuspend
            | Request::Postsuspend
            | Request::Resume
            | Request::GetRegionSize
            | Request::GetResyncWork
            | Request::GetSyncCount
            | Request::StatusInfo
            | Request::StatusTable => Ok(Vec::new()),
        }
    }
}

fn decode_ctr(payload: &[u8]) -> Result<Request, InvalidRequest> {
    let (body, reconnect) = match payload.split_last() {
        None => return Err(InvalidRequest::CtrArgs("empty")),
        Some((0, body)) => (body, true),
        Some(_) => (payload, false),
    };
    if body.is_empty() {
        return Err(InvalidRequest::CtrArgs("empty"));
    }
    if body.contains(&0) {
        return Err(InvalidRequest::CtrArgs("NUL inside the arguments"));
    }
    let args = std::str::from_utf8(body).map_err(|_| InvalidRequest::CtrArgs("not UTF-8"))?;
    Ok(Request::Ctr { args: args.to_owned(), reconnect })
}

/// A request with its identity: which log instance sent it, under which seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The raw header, for the reply.
    pub header: Header,
    /// The log's uuid.
    pub uuid: Uuid,
    /// The decoded request.
    pub request: Request,
}

impl Message {
    /// The log instance's local id.
    pub fn luid(&self) -> Luid {
        self.header.luid
    }

    /// The sequence number the reply must echo.
    pub fn seq(&self) -> Seq {
        self.header.seq
    }
}

impl Frame<'_> {
    /// Decodes the uuid and payload. An error here is answered with
    /// `-EINVAL` using [`Frame::header`].
    pub fn message(&self) -> Result<Message, InvalidRequest> {
        let header = *self.header();
        let rt = header
            .request_type()
            .ok_or(InvalidRequest::UnknownType(header.request_type_raw & crate::consts::REQUEST_TYPE_MASK))?;
        let uuid = decode_uuid(&header.uuid_raw)?;
        let request = Request::decode(rt, self.payload())?;
        Ok(Message { header, uuid, request })
    }
}

fn decode_uuid(raw: &[u8]) -> Result<Uuid, InvalidRequest> {
    let end = raw.iter().position(|&b| b == 0).ok_or(InvalidRequest::UuidUnterminated)?;
    let bytes = raw.get(..end).unwrap_or_default();
    if bytes.is_empty() {
        return Err(InvalidRequest::UuidEmpty);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| InvalidRequest::UuidNotUtf8)?;
    Uuid::new(s).ok_or(InvalidRequest::UuidEmpty)
}
