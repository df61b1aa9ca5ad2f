//! Kernel transports: where datagrams come from and where replies go.
//!
//! * [`UnixTransport`]: a Unix datagram socket carrying exactly the bytes
//!   the kernel would send over netlink (`nlmsghdr` + `cn_msg` +
//!   `dm_ulog_request`), so a kernel simulator in another process drives
//!   the daemon through the same parser, router and replies. Replies go
//!   back to the sender's socket address.
//!   A kick ([`Transport::kick`]) is a notice datagram to that kernel.
//! * The netlink connector transport is in [`crate::netlink`].
//!
//! [`serve`] connects a transport to a [`Router`]: one receive loop, one
//! send loop, replies in whatever order the lanes finish.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use replication::LeaderLink;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use wire::Uuid;

use crate::router::Router;

/// Largest datagram read: a connector message is at most 16 KiB.
pub const MAX_DATAGRAM: usize = 16 * 1024;

/// A datagram transport to kernels.
pub trait Transport: Send + Sync + 'static {
    /// Who sent a datagram, to answer them.
    type Peer: Clone + Send + 'static;
    /// The next datagram from a kernel.
    fn recv(&self) -> impl Future<Output = io::Result<(Vec<u8>, Self::Peer)>> + Send;
    /// Sends a reply to `peer`.
    fn send(&self, bytes: &[u8], peer: &Self::Peer) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes the kernel pick up resync work of log `uuid` (suspend and
    /// resume its mirrors, see [`crate::kick`]); says what was done.
    fn kick(&self, uuid: &Uuid) -> impl Future<Output = Result<String, String>> + Send;
    /// Makes an idle kernel ask for resync work of log `uuid` (see
    /// [`crate::kick::dm_wake`]); says what was done.
    fn wake(&self, uuid: &Uuid) -> impl Future<Output = Result<String, String>> + Send;
}

/// The Unix datagram transport (tests, benches, the demo).
pub struct UnixTransport {
    socket: UnixDatagram,
    path: PathBuf,
    /// The last kernel heard from: where kick notices go.
    kernel: Mutex<Option<PathBuf>>,
}

impl UnixTransport {
    /// Binds `path` (a stale socket file left by a dead daemon is replaced).
    pub fn bind(path: &Path) -> io::Result<UnixTransport> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let socket = UnixDatagram::bind(path)?;
        Ok(UnixTransport { socket, path: path.to_owned(), kernel: Mutex::new(None) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixTransport {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Transport for UnixTransport {
    type Peer = PathBuf;

    async fn recv(&self) -> io::Result<(Vec<u8>, PathBuf)> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = self.socket.recv_from(&mut buf).await?;
            // An unbound sender cannot be answered: ignore it.
            if let Some(p) = from.as_pathname() {
                *self.kernel.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.to_owned());
                return Ok((buf[..n].to_vec(), p.to_owned()));
            }
        }
    }

    async fn send(&self, bytes: &[u8], peer: &PathBuf) -> io::Result<()> {
        self.socket.send_to(bytes, peer).await.map(|_| ())
    }

    /// Sends a kick notice to the last simulated kernel heard from.
    async fn kick(&self, uuid: &Uuid) -> Result<String, String> {
        let to = self.kernel.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let to = to.ok_or("no kernel has spoken on this socket yet")?;
        self.socket.send_to(&crate::kick::kick_notice(uuid), &to).await.map_err(|e| e.to_string())?;
        Ok(format!("sent a kick notice to {}", to.display()))
    }

    /// Sends a wake notice to the last simulated kernel heard from.
    async fn wake(&self, uuid: &Uuid) -> Result<String, String> {
        let to = self.kernel.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let to = to.ok_or("no kernel has spoken on this socket yet")?;
        self.socket.send_to(&crate::kick::wake_notice(uuid), &to).await.map_err(|e| e.to_string())?;
        Ok(format!("sent a wake notice to {}", to.display()))
    }
}

/// Serves `transport` with `router` until receiving fails for good.
pub async fn serve<T: Transport, L: LeaderLink>(transport: Arc<T>, router: Arc<Router<L>>) -> io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, T::Peer)>();
    let sender = {
        let transport = transport.clone();
        tokio::spawn(async move {
            while let Some((bytes, peer)) = rx.recv().await {
                if let Err(e) = transport.send(&bytes, &peer).await {
                    // The kernel re-sends after its timeout; nothing is lost.
                    tracing::warn!(error = %e, "could not send a reply");
                }
            }
        })
    };
    let result = loop {
        match transport.recv().await {
            Ok((datagram, peer)) => {
                let tx = tx.clone();
                router.handle(&datagram, Box::new(move |reply| drop(tx.send((reply, peer)))));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    sender.abort();
    result
}
