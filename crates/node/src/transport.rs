//! Kernel transports: where datagrams come from and where replies go.
//!
//! * The netlink connector transport, the kernel's own, is in
//!   [`crate::netlink`].
//! * [`UnixTransport`]: a Unix datagram socket carrying exactly the bytes
//!   the kernel would send over netlink (`nlmsghdr` + `cn_msg` +
//!   `dm_ulog_request`), so a kernel simulator in another process drives
//!   the daemon through the same pipeline. Replies go back to the
//!   sender's socket address; a kick or a wake is a notice datagram
//!   ([`crate::kick::kick_notice`]).
//! * [`MemTransport`]: the same datagrams in memory, for a simulated kernel
//!   in the same process (the Raft simulation and the router tests): the
//!   in-memory equivalent of the netlink socket.
//!
//! A reply is sent in two steps, [`Transport::writable`] then
//! [`Transport::try_send`], so that the host can check its lease between
//! the last wait and the send system call (see [`crate::host`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use wire::Uuid;

/// Largest datagram read: a connector message is at most 16 KiB.
pub const MAX_DATAGRAM: usize = 16 * 1024;

/// A datagram transport to kernels.
pub trait Transport: Send + Sync + 'static {
    /// Who sent a datagram, to answer them.
    type Peer: Clone + Send + 'static;
    /// The next datagram from a kernel. An error other than
    /// [`io::ErrorKind::Interrupted`] ends the transport: the host fences
    /// and stops.
    fn recv(&self) -> impl Future<Output = io::Result<(Vec<u8>, Self::Peer)>> + Send;
    /// Waits until a reply can probably be sent without blocking.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Sends a reply to `peer` now, without waiting: `WouldBlock` if it
    /// cannot (the host waits for [`Transport::writable`] again).
    fn try_send(&self, bytes: &[u8], peer: &Self::Peer) -> io::Result<()>;
    /// Makes the kernel pick up resync work of log `uuid` (suspend and
    /// resume its mirrors, see [`crate::kick`]); says what was done.
    fn kick(&self, uuid: &Uuid) -> impl Future<Output = Result<String, String>> + Send;
    /// Makes an idle kernel ask for resync work of log `uuid` (see
    /// [`crate::kick::dm_wake`]); says what was done.
    fn wake(&self, uuid: &Uuid) -> impl Future<Output = Result<String, String>> + Send;
}

/// The Unix datagram transport (multi-process tests, the demo).
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

    /// Sends `notice` to the last simulated kernel heard from.
    async fn notice(&self, notice: &[u8]) -> Result<String, String> {
        let to = self.kernel.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let to = to.ok_or("no kernel has spoken on this socket yet")?;
        self.socket.send_to(notice, &to).await.map_err(|e| e.to_string())?;
        Ok(format!("sent a notice to {}", to.display()))
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

    async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    fn try_send(&self, bytes: &[u8], peer: &PathBuf) -> io::Result<()> {
        self.socket.try_send_to(bytes, peer).map(|_| ())
    }

    async fn kick(&self, uuid: &Uuid) -> Result<String, String> {
        self.notice(&crate::kick::kick_notice(uuid)).await
    }

    async fn wake(&self, uuid: &Uuid) -> Result<String, String> {
        self.notice(&crate::kick::wake_notice(uuid)).await
    }
}

/// The kernel's side of a [`MemTransport`]: a simulated kernel in the same
/// process, which takes replies as they are sent.
pub trait MemKernel: Send + Sync + 'static {
    /// A reply datagram, delivered the moment it is sent (as the netlink
    /// connector hands a reply to the kernel inside the send call).
    fn deliver(&self, reply: &[u8]);
    /// Suspend and resume the mirrors of `uuid`.
    fn kick(&self, uuid: &Uuid) -> Result<String, String>;
    /// Run a pass of the mirrors of `uuid` (a read does it).
    fn wake(&self, uuid: &Uuid) -> Result<String, String>;
    /// Whether the daemon's process is stopped (SIGSTOP, a VM pause): a
    /// stopped process sends nothing, so replies wait in
    /// [`Transport::writable`] until it runs again.
    fn stopped(&self) -> bool {
        false
    }
}

/// What the kernel's end of a [`MemTransport`] holds: the way in, and a
/// switch that makes the transport fail.
#[derive(Clone)]
pub struct MemKernelEnd {
    requests: mpsc::UnboundedSender<Vec<u8>>,
    broken: Arc<Mutex<Option<io::ErrorKind>>>,
}

impl MemKernelEnd {
    /// Sends a request datagram to the daemon. `false` when no daemon
    /// listens any more (its end was dropped): the kernel sees `-ESRCH`.
    pub fn send(&self, datagram: Vec<u8>) -> bool {
        self.requests.send(datagram).is_ok()
    }

    /// Whether a daemon still listens.
    pub fn listening(&self) -> bool {
        !self.requests.is_closed()
    }

    /// Makes the daemon's next receive fail with `kind` (a transport that
    /// dies, as netlink's receive can).
    pub fn fail_receive(&self, kind: io::ErrorKind) {
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(kind);
    }
}

/// The daemon's end of an in-memory kernel transport.
pub struct MemTransport<K: MemKernel> {
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    kernel: K,
    broken: Arc<Mutex<Option<io::ErrorKind>>>,
}

impl<K: MemKernel> MemTransport<K> {
    /// A transport to `kernel`, and the kernel's end.
    pub fn new(kernel: K) -> (MemTransport<K>, MemKernelEnd) {
        let (tx, rx) = mpsc::unbounded_channel();
        let broken: Arc<Mutex<Option<io::ErrorKind>>> = Arc::default();
        let end = MemKernelEnd { requests: tx, broken: broken.clone() };
        (MemTransport { requests: tokio::sync::Mutex::new(rx), kernel, broken }, end)
    }

    /// The simulated kernel.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    fn failure(&self) -> Option<io::Error> {
        let kind = *self.broken.lock().unwrap_or_else(|e| e.into_inner());
        kind.map(|k| io::Error::new(k, "the in-memory kernel transport was broken on purpose"))
    }
}

impl<K: MemKernel> Transport for MemTransport<K> {
    type Peer = ();

    async fn recv(&self) -> io::Result<(Vec<u8>, ())> {
        let mut rx = self.requests.lock().await;
        loop {
            if let Some(e) = self.failure() {
                return Err(e);
            }
            // Woken now and then to notice a failure switched on meanwhile.
            match tokio::time::timeout(Duration::from_millis(10), rx.recv()).await {
                // A transport that failed while this receive waited hands
                // out nothing more: this receive is the one that fails.
                Ok(Some(d)) => return self.failure().map_or(Ok((d, ())), Err),
                Ok(None) => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the kernel's end is gone")),
                Err(_) => {}
            }
        }
    }

    async fn writable(&self) -> io::Result<()> {
        while self.kernel.stopped() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    fn try_send(&self, bytes: &[u8], _peer: &()) -> io::Result<()> {
        self.kernel.deliver(bytes);
        Ok(())
    }

    async fn kick(&self, uuid: &Uuid) -> Result<String, String> {
        self.kernel.kick(uuid)
    }

    async fn wake(&self, uuid: &Uuid) -> Result<String, String> {
        self.kernel.wake(uuid)
    }
}
