//! The kernel transport: a `NETLINK_CONNECTOR` socket in the dm-log group.
//!
//! The socket is bound with no group bits and joins group 7 (`CN_IDX_DM`)
//! with `NETLINK_ADD_MEMBERSHIP`; the kernel's `dm-log-userspace` sends its
//! requests there and takes replies sent to port 0. Only datagrams from port
//! 0 (the kernel) are accepted: any other process in the group could
//! otherwise inject requests. The connector id ({7, 1}) is checked by
//! [`wire::Frame::parse`] in the router. Replies go to port 0, one per
//! datagram, in whatever order the router finishes them.
//!
//! A receive queue that overflowed (a burst of requests from many
//! mirrors) makes the next receive fail once with `ENOBUFS` (spec §1.8):
//! the requests that did not fit are lost, and the kernel sends each of
//! them again after its 15 s timeout. That is not the end of the socket:
//! it is counted, logged at most once a minute, and the loop reads on.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

use crate::transport::Transport;

/// `ENOBUFS`: the receive queue overflowed and datagrams were dropped.
const ENOBUFS: i32 = 105;

/// `NETLINK_CONNECTOR`.
pub const NETLINK_CONNECTOR: isize = 11;
/// The connector index of device-mapper's userspace log (`CN_IDX_DM`), also
/// the multicast group joined.
pub const CN_IDX_DM: u32 = 7;
/// Receive buffer asked for: bursts of requests from many mirrors must not
/// overflow it (the kernel would wait 15 s for each dropped one).
pub const RECEIVE_BUFFER: usize = 8 << 20;

/// Why the connector could not be opened, in words an admin can act on.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The kernel has no connector.
    #[error(
        "the netlink connector is not available ({0}); is the kernel built with CONFIG_CONNECTOR and dm-log-userspace loaded?"
    )]
    NoConnector(io::Error),
    /// Joining the group needs privileges.
    #[error(
        "joining the device-mapper log group needs CAP_NET_ADMIN ({0}); run dmlogd as root (replies also need CAP_SYS_ADMIN)"
    )]
    NotPermitted(io::Error),
    /// Anything else.
    #[error("opening the netlink connector: {0}")]
    Other(io::Error),
}

fn classify(e: io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(93) | Some(97) => OpenError::NoConnector(e), // EPROTONOSUPPORT, EAFNOSUPPORT
        Some(1) | Some(13) => OpenError::NotPermitted(e), // EPERM, EACCES
        _ => OpenError::Other(e),
    }
}

/// Whether a datagram from `sender_port` is taken: only the kernel's.
pub fn from_kernel(sender_port: u32) -> bool {
    sender_port == 0
}

/// The connector transport.
pub struct NetlinkTransport {
    socket: TokioSocket,
    /// The daemon's executable, run as `wake-read` to wake a mirror.
    program: std::path::PathBuf,
    /// Overflows of the receive queue, and when one was last logged.
    overruns: Mutex<(u64, Option<Instant>)>,
    /// Datagrams from senders other than the kernel, for the log.
    strangers: crate::quiet::Quiet,
}

/// Whether a receive error only means datagrams were lost to an overflow
/// (the socket goes on working).
pub fn is_overrun(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ENOBUFS)
}

impl NetlinkTransport {
    /// Opens the socket, joins the dm-log group and sizes the buffer; wakes
    /// run `program wake-read <device>` ([`crate::kick::spawn_wake`]). Needs
    /// a tokio runtime.
    pub fn open(program: &std::path::Path) -> Result<NetlinkTransport, OpenError> {
        let mut socket = TokioSocket::new(NETLINK_CONNECTOR).map_err(classify)?;
        socket.socket_mut().bind(&SocketAddr::new(0, 0)).map_err(classify)?;
        socket.socket_ref().add_membership(CN_IDX_DM).map_err(classify)?;
        // SO_RCVBUFFORCE passes net.core.rmem_max (it needs CAP_NET_ADMIN,
        // which joining the group already required); SO_RCVBUF is the
        // fallback, capped by rmem_max.
        let forced =
            nix::sys::socket::setsockopt(socket.socket_ref(), nix::sys::socket::sockopt::RcvBufForce, &RECEIVE_BUFFER);
        if let Err(e) = forced {
            tracing::warn!(error = %e, "SO_RCVBUFFORCE refused; asking SO_RCVBUF (raise net.core.rmem_max)");
            if let Err(e) = socket.socket_ref().set_rx_buf_sz(RECEIVE_BUFFER) {
                // Not fatal: the default buffer works for a few mirrors.
                tracing::warn!(error = %e, "could not raise the netlink receive buffer");
            }
        }
        Ok(NetlinkTransport {
            socket,
            program: program.to_owned(),
            overruns: Mutex::new((0, None)),
            strangers: crate::quiet::Quiet::new(Duration::from_secs(60)),
        })
    }

    /// Counts an overflow and logs it, at most once a minute.
    fn overrun(&self) {
        let mut o = self.overruns.lock().unwrap_or_else(|e| e.into_inner());
        o.0 += 1;
        if o.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            o.1 = Some(Instant::now());
            tracing::warn!(
                overruns = o.0,
                "the netlink receive queue overflowed: requests were lost and the kernel re-sends them after 15 s \
                 (raise net.core.rmem_max)"
            );
        }
    }

    /// Receive-queue overflows so far.
    pub fn overruns(&self) -> u64 {
        self.overruns.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Transport for NetlinkTransport {
    type Peer = ();

    async fn recv(&self) -> io::Result<(Vec<u8>, ())> {
        loop {
            let (bytes, from) = match self.socket.recv_from_full().await {
                Ok(got) => got,
                Err(e) if is_overrun(&e) => {
                    self.overrun();
                    continue;
                }
                Err(e) => return Err(e),
            };
            if from_kernel(from.port_number()) {
                return Ok((bytes, ()));
            }
            if let Some(n) = self.strangers.hit() {
                tracing::warn!(
                    port = from.port_number(),
                    dropped = n,
                    "dropped connector messages that are not from the kernel (one line a minute at most)"
                );
            }
        }
    }

    /// A unicast to the kernel is handed to the kernel inside the send
    /// call; it does not queue, so there is nothing to wait for (the host
    /// backs off briefly after the rare `EAGAIN`).
    async fn writable(&self) -> io::Result<()> {
        tokio::task::yield_now().await;
        Ok(())
    }

    fn try_send(&self, bytes: &[u8], _peer: &()) -> io::Result<()> {
        self.socket.socket_ref().send_to(bytes, &SocketAddr::new(0, 0), 0).map(|_| ())
    }

    async fn kick(&self, uuid: &wire::Uuid) -> Result<String, String> {
        let uuid = uuid.clone();
        match tokio::task::spawn_blocking(move || crate::kick::dm_kick(&uuid)).await {
            Ok(Ok(names)) => Ok(format!("suspended and resumed {}", names.join(", "))),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("kick task: {e}")),
        }
    }

    async fn wake(&self, uuid: &wire::Uuid) -> Result<String, String> {
        match crate::kick::spawn_wake(&self.program, uuid).await {
            Ok(names) => Ok(format!("read {} to wake its recovery", names.join(", "))),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowed_receive_queue_is_not_the_end_of_the_socket() {
        assert!(is_overrun(&io::Error::from_raw_os_error(ENOBUFS)));
        assert!(!is_overrun(&io::Error::from_raw_os_error(9)), "EBADF ends it");
    }

    #[test]
    fn only_the_kernel_is_heard() {
        assert!(from_kernel(0));
        assert!(!from_kernel(4242));
    }

    #[test]
    fn open_errors_say_what_to_do() {
        let no = classify(io::Error::from_raw_os_error(93)).to_string();
        assert!(no.contains("CONFIG_CONNECTOR"), "{no}");
        let perm = classify(io::Error::from_raw_os_error(1)).to_string();
        assert!(perm.contains("CAP_NET_ADMIN"), "{perm}");
        assert!(matches!(classify(io::Error::from_raw_os_error(5)), OpenError::Other(_)));
    }
}
