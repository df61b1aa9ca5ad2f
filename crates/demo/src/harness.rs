//! Real `dmlogd` processes on loopback, each driven by a simulated kernel
//! (`kernel-sim`) through the Unix transport, all sharing one pair of
//! simulated mirror legs. Used by `dmlogd-demo` and the multi-process
//! tests.
//!
//! The harness is the hosts: it starts and kills daemons (SIGKILL is a
//! host crash: the simulated kernel dies with every write in flight, which
//! leaves the default leg written and the other not), boots kernels,
//! drives their clocks in real time, delivers datagrams both ways, answers
//! kick notices with a suspend and resume, and times every request.
//! Checks read the cluster through each node's admin socket.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kernel_sim::{Config as SimConfig, Kernel, Legs, MirrorId, SharedLegs, Table};
use node::admin::pb::{LogReply, LogRequest, StatusReply, StatusRequest};
use node::liveness::Timing;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use wire::{Frame, Uuid};

use dmlogd::ctl;

/// The liveness timings of the demo and the tests: evictions within about
/// five seconds (validated like any configuration).
pub fn quick_timing() -> Timing {
    Timing {
        renew_every_ms: 200,
        tick_ms: 50,
        fence_after_ms: 3_500,
        fence_action_max_ms: 500,
        dead_after_ms: 4_500,
        clock_drift_ppm: 10_000,
        election_max_ms: 800,
    }
}

/// One node: its daemon process and its simulated kernel.
struct Host {
    daemon: Option<Child>,
    kernel: Option<Booted>,
    /// Kernel boots so far (each one a new incarnation).
    boots: u64,
    listen: String,
    /// The address the other nodes use: `listen`, or a proxy in front of it.
    advertised: String,
}

/// A TCP proxy in front of one node's peer port, which a test can cut:
/// while cut, its connections are dropped and new ones closed at once, so
/// nothing reaches the node over the network and nothing it sent on those
/// connections is answered.
pub struct Proxy {
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listener` and forwards every connection to `target`.
    fn start(listener: tokio::net::TcpListener, target: String) -> Proxy {
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let (cut, links) = (cut.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    let target = target.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    let mut l = links.lock().unwrap_or_else(|e| e.into_inner());
                    l.retain(|h| !h.is_finished());
                    l.push(link.abort_handle());
                }
            })
        };
        Proxy { cut, links, accept }
    }

    /// Cuts (`true`) or heals (`false`) the link.
    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for l in self.links.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                l.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set_cut(true);
        self.accept.abort();
    }
}

/// A booted simulated kernel.
struct Booted {
    kernel: Kernel,
    born: Instant,
    socket: UnixDatagram,
    mirror: MirrorId,
    /// Requests sent and not yet answered: seq → (sent, type).
    sent: HashMap<u32, (Instant, &'static str)>,
}

/// A cluster of real daemons with simulated kernels.
pub struct Harness {
    dir: PathBuf,
    exe: PathBuf,
    /// Arguments before the daemon's own (`daemon` for the demo binary).
    exe_args: Vec<String>,
    timing: Timing,
    hosts: BTreeMap<u64, Host>,
    /// The mirror's legs, shared by every kernel.
    pub legs: SharedLegs,
    table: Table,
    regions: u64,
    rng: SmallRng,
    /// Reply latency of every request, by type.
    pub latency: BTreeMap<&'static str, Vec<Duration>>,
    /// Kick notices delivered to kernels.
    pub kicks: u64,
    /// Writes issued.
    pub writes: u64,
    proxies: BTreeMap<u64, Proxy>,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl Harness {
    /// `n` nodes (not started) in `dir`, running the daemon at `exe`, over
    /// a mirror of `regions` regions whose legs start different.
    pub fn new(exe: &Path, dir: &Path, n: u64, regions: u64, seed: u64) -> Result<Harness, String> {
        let mut hosts = BTreeMap::new();
        for id in 1..=n {
            let listen = format!("127.0.0.1:{}", free_port()?);
            let advertised = listen.clone();
            hosts.insert(id, Host { daemon: None, kernel: None, boots: 0, listen, advertised });
        }
        let uuid = Uuid::new("LVM-dmlogd-demo-mirror").ok_or("bad uuid")?;
        let table =
            Table { uuid, target_sectors: regions * 8, log_args: "clustered-core 8".into(), integrated_flush: false };
        Ok(Harness {
            dir: dir.to_owned(),
            exe: exe.to_owned(),
            exe_args: Vec::new(),
            timing: quick_timing(),
            hosts,
            legs: SharedLegs::new(Legs::new(regions, true)),
            table,
            regions,
            rng: SmallRng::seed_from_u64(seed),
            latency: BTreeMap::new(),
            kicks: 0,
            writes: 0,
            proxies: BTreeMap::new(),
        })
    }

    /// Starts the daemons as `exe <args…> <dmlogd arguments>` (the demo
    /// binary runs `dmlogd` as its `daemon` subcommand).
    pub fn daemon_args(mut self, args: &[&str]) -> Harness {
        self.exe_args = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Puts a [`Proxy`] in front of every node's peer port (before any
    /// boot): the nodes reach each other only through them.
    pub async fn use_proxies(&mut self) -> Result<(), String> {
        for (id, h) in &mut self.hosts {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("proxy: {e}"))?;
            h.advertised = listener.local_addr().map_err(|e| e.to_string())?.to_string();
            self.proxies.insert(*id, Proxy::start(listener, h.listen.clone()));
        }
        Ok(())
    }

    /// Cuts (`true`) or heals (`false`) every network link into node `id`
    /// (see [`Harness::use_proxies`]).
    pub fn cut(&self, id: u64, cut: bool) {
        if let Some(p) = self.proxies.get(&id) {
            p.set_cut(cut);
        }
    }

    /// Makes the mirror's log a `clustered-disk` log on the file `device`
    /// (shared by every node, as shared storage is). Before any boot.
    pub fn use_disk_log(&mut self, device: &Path) {
        self.table.log_args = format!("clustered-disk {} 8", device.display());
    }

    /// The mirror's log uuid.
    pub fn uuid(&self) -> &Uuid {
        &self.table.uuid
    }

    /// The mirror's region count.
    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.hosts.keys().copied().collect()
    }

    /// Nodes whose daemon runs.
    pub fn running(&self) -> Vec<u64> {
        self.hosts.iter().filter(|(_, h)| h.daemon.is_some()).map(|(id, _)| *id).collect()
    }

    fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    /// Node `id`'s admin socket.
    pub fn admin_socket(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("admin.sock")
    }

    /// Node `id`'s daemon log file.
    pub fn log_file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    fn kernel_socket(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("kernel.sock")
    }

    fn config(&self, id: u64) -> String {
        let t = &self.timing;
        let mut s = format!(
            "id = {id}\ndata_dir = {:?}\nadmin_socket = {:?}\nlisten = {:?}\nkernel = \"unix:{}\"\nfence = \"command:true\"\n\n[members]\n",
            self.node_dir(id).join("data"),
            self.admin_socket(id),
            self.hosts[&id].listen,
            self.kernel_socket(id).display(),
        );
        for (n, h) in &self.hosts {
            s.push_str(&format!("{n} = {:?}\n", h.advertised));
        }
        s.push_str(&format!(
            "\n[timing]\nrenew_every_ms = {}\ntick_ms = {}\nfence_after_ms = {}\nfence_action_max_ms = {}\ndead_after_ms = {}\nclock_drift_ppm = {}\nelection_max_ms = {}\n",
            t.renew_every_ms,
            t.tick_ms,
            t.fence_after_ms,
            t.fence_action_max_ms,
            t.dead_after_ms,
            t.clock_drift_ppm,
            t.election_max_ms
        ));
        s
    }

    /// Boots node `id`: a new kernel incarnation, its daemon, and once the
    /// daemon's socket is there, the kernel with the mirror created.
    pub async fn boot(&mut self, id: u64) -> Result<(), String> {
        let host = self.hosts.get_mut(&id).ok_or(format!("no node {id}"))?;
        host.boots += 1;
        let incarnation = id * 1_000 + host.boots;
        self.start_daemon(id, incarnation, true).await?;
        let dir = self.node_dir(id);
        let me = dir.join(format!("kernel-{incarnation}.sock"));
        let _ = std::fs::remove_file(&me);
        let socket = UnixDatagram::bind(&me).map_err(|e| format!("{}: {e}", me.display()))?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        // Each boot numbers its requests and tables from its own base.
        let seq = u32::try_from((incarnation % 40_000) * 100_000).unwrap_or(0);
        // Writes take 20 ms on the legs, so a crash usually finds some in
        // flight (the case that leaves the legs different).
        let sim = SimConfig { write_ms: 20, ..SimConfig::default() };
        let mut kernel = Kernel::new(sim, seq, incarnation << 16);
        let mirror = kernel.create(self.table.clone(), self.legs.clone());
        if let Some(h) = self.hosts.get_mut(&id) {
            h.kernel = Some(Booted { kernel, born: Instant::now(), socket, mirror, sent: HashMap::new() });
        }
        Ok(())
    }

    /// Starts node `id`'s daemon as kernel incarnation `incarnation` and
    /// waits for its kernel and admin sockets, driving the kernels
    /// meanwhile if `pump`.
    async fn start_daemon(&mut self, id: u64, incarnation: u64, pump: bool) -> Result<(), String> {
        let dir = self.node_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = dir.join("dmlogd.toml");
        std::fs::write(&config, self.config(id)).map_err(|e| format!("{}: {e}", config.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(id))
            .map_err(|e| format!("{}: {e}", self.log_file(id).display()))?;
        let ksock = self.kernel_socket(id);
        let _ = std::fs::remove_file(&ksock);
        let _ = std::fs::remove_file(self.admin_socket(id));
        let child = Command::new(&self.exe)
            .args(&self.exe_args)
            .arg("--config")
            .arg(&config)
            .arg("--incarnation")
            .arg(incarnation.to_string())
            .env("DMLOGD_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.exe.display()))?;
        if let Some(h) = self.hosts.get_mut(&id) {
            h.daemon = Some(child);
        }
        let until = Instant::now() + Duration::from_secs(30);
        while !ksock.exists() || !self.admin_socket(id).exists() {
            if Instant::now() > until {
                return Err(format!(
                    "node {id}'s daemon did not open its sockets (see {})",
                    self.log_file(id).display()
                ));
            }
            if let Some(c) = self.hosts.get_mut(&id).and_then(|h| h.daemon.as_mut())
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("node {id}'s daemon exited: {status} (see {})", self.log_file(id).display()));
            }
            if pump {
                self.pump();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Kills node `id`'s daemon (SIGKILL); its kernel stays up.
    pub fn kill_daemon(&mut self, id: u64) {
        if let Some(mut c) = self.hosts.get_mut(&id).and_then(|h| h.daemon.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `id`'s daemon again on the same data directory after
    /// [`Harness::kill_daemon`], for the kernel that kept running (same
    /// incarnation: a daemon crash without a host reboot). The kernels are
    /// not driven while it starts, so what they have in flight stays put.
    pub async fn restart_daemon(&mut self, id: u64) -> Result<(), String> {
        self.kill_daemon(id);
        let boots = self.hosts.get(&id).ok_or(format!("no node {id}"))?.boots;
        self.start_daemon(id, id * 1_000 + boots, false).await
    }

    /// SIGTERM to node `id`'s daemon; its exit status once it exits, or an
    /// error after `limit`. The kernels are driven meanwhile.
    pub async fn terminate(&mut self, id: u64, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let pid = self.hosts.get(&id).and_then(|h| h.daemon.as_ref()).map(Child::id).ok_or("not running")?;
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().is_ok_and(|s| s.success());
        if !sent {
            return Err(format!("kill -TERM {pid} failed"));
        }
        let until = Instant::now() + limit;
        loop {
            if let Some(c) = self.hosts.get_mut(&id).and_then(|h| h.daemon.as_mut())
                && let Ok(Some(status)) = c.try_wait()
            {
                if let Some(h) = self.hosts.get_mut(&id) {
                    h.daemon = None;
                }
                return Ok(status);
            }
            if Instant::now() > until {
                return Err(format!("node {id} did not exit within {limit:?} of SIGTERM"));
            }
            self.run_for(Duration::from_millis(20), 0).await;
        }
    }

    /// Crashes node `id`: SIGKILL to its daemon, and its kernel dies with
    /// every write in flight.
    pub fn crash(&mut self, id: u64) {
        if let Some(h) = self.hosts.get_mut(&id) {
            if let Some(mut c) = h.daemon.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if let Some(b) = h.kernel.take() {
                b.kernel.crash();
            }
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to node `id`'s daemon.
    pub fn freeze(&mut self, id: u64, stop: bool) -> Result<(), String> {
        let pid = self.hosts.get(&id).and_then(|h| h.daemon.as_ref()).map(Child::id).ok_or("not running")?;
        let sig = if stop { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
        if ok { Ok(()) } else { Err(format!("kill {sig} {pid} failed")) }
    }

    /// Asks every running daemon to log its state (SIGUSR1).
    pub fn dump_state(&self) {
        for h in self.hosts.values() {
            if let Some(c) = &h.daemon {
                let _ = Command::new("kill").args(["-USR1", &c.id().to_string()]).status();
            }
        }
    }

    /// Stops every daemon (SIGKILL) without touching the kernels' legs.
    pub fn stop_all(&mut self) {
        for h in self.hosts.values_mut() {
            if let Some(mut c) = h.daemon.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            h.kernel = None;
        }
    }

    /// One round of the kernels: clocks forward, requests out, replies and
    /// kick notices in.
    pub fn pump(&mut self) {
        let dir = self.dir.clone();
        for (id, h) in &mut self.hosts {
            let Some(b) = h.kernel.as_mut() else { continue };
            let now = u64::try_from(b.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            b.kernel.advance_to(now);
            let daemon = dir.join(format!("node{id}")).join("kernel.sock");
            for dg in b.kernel.take_requests() {
                if let Ok(f) = Frame::parse(&dg)
                    && let Some(t) = f.header().request_type()
                {
                    b.sent.insert(f.header().seq.0, (Instant::now(), t.name()));
                }
                // A daemon that is down: the kernel re-sends after 15 s.
                let _ = b.socket.send_to(&dg, &daemon);
            }
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = b.socket.recv(&mut buf) {
                let dg = &buf[..n];
                if node::kick::parse_kick_notice(dg).is_some() {
                    b.kernel.kick(b.mirror);
                    self.kicks += 1;
                    continue;
                }
                if node::kick::parse_wake_notice(dg).is_some() {
                    b.kernel.read(b.mirror, 0);
                    continue;
                }
                if let Ok(f) = Frame::parse(dg)
                    && let Some((at, name)) = b.sent.remove(&f.header().seq.0)
                {
                    self.latency.entry(name).or_default().push(at.elapsed());
                }
                b.kernel.deliver(dg);
            }
        }
    }

    /// Issues `n` writes to random regions on every booted kernel.
    pub fn write(&mut self, n: usize) {
        for h in self.hosts.values_mut() {
            let Some(b) = h.kernel.as_mut() else { continue };
            for _ in 0..n {
                let r = self.rng.random_range(0..self.regions);
                b.kernel.write(b.mirror, r);
                self.writes += 1;
            }
        }
    }

    /// Asks every booted kernel for its mirror status (GET_SYNC_COUNT and
    /// STATUS_INFO, as `dmsetup status` does).
    pub fn ask_status(&mut self) {
        for h in self.hosts.values_mut() {
            if let Some(b) = h.kernel.as_mut() {
                b.kernel.status(b.mirror);
            }
        }
    }

    /// Runs the kernels for `d`, writing `per_tick` writes per kernel every
    /// 10 ms.
    pub async fn run_for(&mut self, d: Duration, per_tick: usize) {
        let until = Instant::now() + d;
        let mut next_write = Instant::now();
        while Instant::now() < until {
            if per_tick > 0 && Instant::now() >= next_write {
                self.write(per_tick);
                next_write += Duration::from_millis(10);
            }
            self.pump();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Node `id`'s status.
    pub async fn status(&self, id: u64) -> Result<StatusReply, String> {
        let mut c = ctl::connect(&self.admin_socket(id)).await?;
        c.status(StatusRequest {}).await.map(|r| r.into_inner()).map_err(|s| ctl::refusal(&s))
    }

    /// The mirror log as node `id` has applied it.
    pub async fn log(&self, id: u64) -> Result<LogReply, String> {
        let mut c = ctl::connect(&self.admin_socket(id)).await?;
        let r = LogRequest { uuid: self.table.uuid.to_string(), width: 64, max_chars: 4096 };
        c.log(r).await.map(|r| r.into_inner()).map_err(|s| ctl::refusal(&s))
    }

    /// The leader every running node agrees on, if they do.
    pub async fn leader(&self) -> Option<u64> {
        let mut seen = None;
        for id in self.running() {
            let s = self.status(id).await.ok()?;
            if s.leader == 0 || seen.is_some_and(|l| l != s.leader) {
                return None;
            }
            seen = Some(s.leader);
        }
        seen
    }

    /// Per booted kernel: (node, writes in flight, sync count it last
    /// printed, violations, in sync as the kernel believes).
    pub fn kernels(&self) -> Vec<KernelReport> {
        let mut out = Vec::new();
        for (id, h) in &self.hosts {
            let Some(b) = h.kernel.as_ref() else { continue };
            let Some(v) = b.kernel.mirror(b.mirror) else { continue };
            out.push(KernelReport {
                node: *id,
                inflight: v.inflight_regions,
                queued: v.queued_writes,
                sync_count: v.status_sync_count,
                writes_done: v.writes_done,
                regions_recovered: b.kernel.stats().regions_recovered,
                violations: b.kernel.violations().iter().map(|v| format!("{v:?}")).collect(),
                idle: b.kernel.is_idle(),
                life: format!("hint {} {}", v.in_sync_hint, b.kernel.explain(b.mirror)),
                log_failure: v.log_failure,
                unanswered: b.sent.values().map(|(at, name)| (*name, at.elapsed().as_millis())).collect(),
            });
        }
        out
    }

    /// No acknowledged mark is lost: every region a live kernel is writing
    /// right now (its FLUSH was answered, its CLEAR not yet sent) is marked
    /// by that node in the replicated state read from node `from`. The
    /// kernels are not driven while this runs, so they cannot move on.
    pub async fn check_marks(&self, from: u64) -> Result<usize, String> {
        let log = self.log(from).await?;
        let mut checked = 0;
        for k in self.kernels() {
            for r in &k.inflight {
                let marked = log.marks.iter().any(|m| m.region == *r && m.nodes.contains(&k.node));
                if !marked {
                    return Err(format!(
                        "node {} is writing region {r} after its FLUSH was acknowledged, but node {from} has no mark of it",
                        k.node
                    ));
                }
                checked += 1;
            }
        }
        Ok(checked)
    }
}

/// One simulated kernel's view of the mirror.
#[derive(Clone, Debug)]
pub struct KernelReport {
    /// Its node.
    pub node: u64,
    /// Regions with writes in flight.
    pub inflight: Vec<u64>,
    /// Writes not yet submitted.
    pub queued: usize,
    /// The in-sync count its last status printed.
    pub sync_count: Option<u64>,
    /// Writes completed.
    pub writes_done: u64,
    /// Regions its recovery copied.
    pub regions_recovered: u64,
    /// Protocol violations it saw.
    pub violations: Vec<String>,
    /// Nothing outstanding, queued or in flight.
    pub idle: bool,
    /// Requests sent and not answered: type and age in milliseconds.
    pub unanswered: Vec<(&'static str, u128)>,
    /// The table's life stage and in-sync hint, as the kernel has them.
    pub life: String,
    /// A log request on the write path failed: the kernel would fail the
    /// mirror's writes.
    pub log_failure: bool,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Drives harness `$h`'s kernels (`$per_tick` writes every 10 ms) until
/// `$cond` holds, checking every 100 ms; an `Err` naming `$what` after
/// `$limit`. Evaluates to the time it took.
#[macro_export]
macro_rules! wait_for {
    ($h:expr, $limit:expr, $per_tick:expr, $what:expr, $cond:expr) => {{
        let started = tokio::time::Instant::now();
        loop {
            $h.run_for(std::time::Duration::from_millis(100), $per_tick).await;
            if $cond {
                break Ok::<std::time::Duration, String>(started.elapsed());
            }
            if started.elapsed() > $limit {
                break Err(format!("{}: not within {:?}", $what, $limit));
            }
        }
    }};
}

/// Like [`wait_for!`], with no fixed limit, so that a slow machine passes
/// what a fast one passes: `$left` says how much is left to do (0: done),
/// and the wait fails only when it has not gone down for `$stall`.
#[macro_export]
macro_rules! wait_progress {
    ($h:expr, $stall:expr, $per_tick:expr, $what:expr, $left:expr) => {{
        let started = tokio::time::Instant::now();
        let mut best = u64::MAX;
        let mut moved = started;
        loop {
            $h.run_for(std::time::Duration::from_millis(100), $per_tick).await;
            let left: u64 = $left;
            if left == 0 {
                break Ok::<std::time::Duration, String>(started.elapsed());
            }
            if left < best {
                best = left;
                moved = tokio::time::Instant::now();
            }
            if moved.elapsed() > $stall {
                break Err(format!("{}: {left} left, and no progress for {:?}", $what, $stall));
            }
        }
    }};
}

/// The `q` quantile (0 to 1) of `samples` by the nearest rank; zero for
/// none. The demo, the tests and the benchmarks all use this one.
pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut v: Vec<Duration> = samples.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize]
}

/// The storage floor of this machine: `n` times a 4 KiB append to a plain
/// file at `path` and an `fdatasync`, each timed. What the benchmarks set
/// their figures against.
pub fn sync_floor(path: &Path, n: usize) -> std::io::Result<Vec<Duration>> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let block = vec![0x5au8; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// p50 and p99 of `samples`, in milliseconds.
pub fn percentiles(samples: &[Duration]) -> (f64, f64) {
    let ms = |q| percentile(samples, q).as_secs_f64() * 1e3;
    (ms(0.50), ms(0.99))
}
