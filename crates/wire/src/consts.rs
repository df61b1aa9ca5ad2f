//! Sizes, identifiers and limits of the protocol, each with where it comes
//! from. Relations between them are checked at compile time.

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct cn_msg)`.
pub const CN_MSG_LEN: usize = 20;
/// `sizeof(struct dm_ulog_request)` without its flexible `data[]`.
pub const ULOG_REQUEST_LEN: usize = 160;
/// Offset of the payload in a datagram: 16 + 20 + 160.
pub const HEADER_LEN: usize = NLMSG_HDR_LEN + CN_MSG_LEN + ULOG_REQUEST_LEN;

/// The kernel builds every request in one 512-byte buffer holding `cn_msg`,
/// the request header and the payload (spec §1.4).
pub const KERNEL_PREALLOC_LEN: usize = 512;
/// Largest payload the kernel can send: 512 − 20 − 160 = 332 bytes.
pub const MAX_REQUEST_PAYLOAD: usize = KERNEL_PREALLOC_LEN - CN_MSG_LEN - ULOG_REQUEST_LEN;
/// The kernel sends marks and clears in groups of at most 32 regions
/// (`MAX_FLUSH_GROUP_COUNT`).
pub const MAX_REGIONS_PER_REQUEST: usize = 32;
/// The connector drops replies whose `cn_msg` plus data exceed 16 KiB.
pub const CONNECTOR_MAX_MSG_SIZE: usize = 16384;
/// Largest reply payload the connector accepts.
pub const MAX_REPLY_PAYLOAD: usize = CONNECTOR_MAX_MSG_SIZE - CN_MSG_LEN - ULOG_REQUEST_LEN;
/// A CTR reply carries a device name of at most `DM_NAME_LEN` bytes,
/// including its NUL.
pub const CTR_REPLY_CAPACITY: usize = 128;

/// Size of the uuid field in `dm_ulog_request`, NUL-padded.
pub const UUID_FIELD_LEN: usize = 129;
/// Longest uuid: the field always ends with at least one NUL.
pub const MAX_UUID_LEN: usize = UUID_FIELD_LEN - 1;

/// `CN_IDX_DM`: connector index of device-mapper, also the netlink
/// multicast group the requests are broadcast on.
pub const CN_IDX_DM: u32 = 7;
/// `CN_VAL_DM_USERSPACE_LOG`.
pub const CN_VAL_DM_USERSPACE_LOG: u32 = 1;
/// `NETLINK_CONNECTOR` protocol number.
pub const NETLINK_CONNECTOR: i32 = 11;
/// `NLMSG_DONE`, the message type the kernel uses and replies carry.
pub const NLMSG_DONE: u16 = 3;
/// `DM_ULOG_REQUEST_VERSION` sent by the 6.1 kernel.
pub const REQUEST_VERSION: u32 = 3;
/// Only the low byte of `request_type` carries the type (`DM_ULOG_REQUEST_MASK`).
pub const REQUEST_TYPE_MASK: u32 = 0xFF;

/// How long the kernel waits for a reply before it re-sends the request under
/// a new seq (`DM_ULOG_RETRY_TIMEOUT`, 15 s).
pub const KERNEL_RETRY_TIMEOUT_MS: u64 = 15_000;

const _: () = {
    assert!(HEADER_LEN == 196);
    assert!(MAX_REQUEST_PAYLOAD == 332);
    // 32 marks of 8 bytes fit in one request.
    assert!(MAX_REGIONS_PER_REQUEST * 8 <= MAX_REQUEST_PAYLOAD);
    // The longest uuid still leaves its terminating NUL in the field.
    assert!(MAX_UUID_LEN < UUID_FIELD_LEN);
    assert!(CTR_REPLY_CAPACITY <= MAX_REPLY_PAYLOAD);
};
