//! `wire`: the dm-log-userspace kernel protocol as bytes and types, nothing else.
//!
//! The kernel's `dm-log-userspace` module sends one netlink datagram per log
//! request: a 16-byte `nlmsghdr`, a 20-byte `cn_msg`, the 160-byte
//! `dm_ulog_request` header and up to 332 bytes of payload
//! (`docs/protocol.md`, spec §1.3 and §2). The daemon answers every request
//! with one datagram of the same framing.
//!
//! This crate turns those bytes into typed values and back:
//!
//! * [`Frame::parse`] checks the framing of a received datagram (lengths, the
//!   connector id) and yields the raw header fields plus the payload. A frame
//!   that fails here cannot be answered and is dropped.
//! * [`Frame::message`] decodes the payload into a typed [`Request`]. A frame
//!   that fails here *can* be answered, with `-EINVAL`, because its `seq` is
//!   known.
//! * [`Reply`] builds the answer. A reply is made from the request's
//!   [`Header`] and an [`Answer`]; [`Reply::new`] refuses an answer whose
//!   payload is not the exact size the kernel expects for that request type
//!   (spec §1.5), so a wrong `data_size` cannot be sent by mistake.
//! * [`encode_request`] and [`KernelReply::parse`] are the kernel's half, used
//!   by the kernel simulator and by tests.
//!
//! It never does I/O, never allocates more than the datagram it is given can
//! justify, and never panics on any input: every malformed datagram is a typed
//! error ([`FrameError`], [`InvalidRequest`]).
//!
//! ```
//! use wire::{encode_request, Frame, Luid, Request, Seq, Uuid, Region, Reply, Answer};
//!
//! let uuid = Uuid::new("LVM-demo").unwrap();
//! let bytes = encode_request(Luid(7), &uuid, Seq(42), &Request::InSync(Region(3))).unwrap();
//! let frame = Frame::parse(&bytes).unwrap();
//! let msg = frame.message().unwrap();
//! assert_eq!(msg.request, Request::InSync(Region(3)));
//!
//! let reply = Reply::new(&msg, Ok(Answer::Bool(true))).unwrap();
//! let out = reply.encode();
//! assert_eq!(out.len(), wire::HEADER_LEN + 8);
//! ```

#![deny(missing_docs)]

mod codec;
mod consts;
mod error;
mod frame;
mod reply;
mod request;
mod types;

pub use consts::*;
pub use error::{EncodeError, FrameError, InvalidRequest, ReplyError};
pub use frame::{Frame, Header, encode_request};
pub use reply::{Answer, KernelReply, Reply, reply_capacity};
pub use request::{Message, Request};
pub use types::{Errno, Luid, Region, RequestType, Seq, Uuid};
