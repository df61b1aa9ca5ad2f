//! The real `dmlogd` binary in its own process: a simulated kernel drives it
//! over the Unix transport, it stops cleanly on SIGTERM, and bad
//! configuration is one line and exit status 2.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kernel_sim::{Config, Kernel, Legs, MirrorId, SharedLegs, Table};
use wire::Uuid;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a one-node daemon on a Unix kernel socket in `dir` and waits
/// until the socket is there; `extra` are more arguments.
fn start(dir: &Path, extra: &[&str]) -> (Child, std::path::PathBuf) {
    let sock = dir.join("kernel.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_dmlogd"))
        .args(extra)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--kernel")
        .arg(format!("unix:{}", sock.display()))
        .arg("--fence")
        .arg("command:true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < until, "the daemon never opened its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, sock)
}

/// One round between the simulated kernel (socket `me`) and the daemon at
/// `daemon`: the kernel's clock to `now`, its requests out, the replies in;
/// a kick notice suspends and resumes mirror `m`, a wake notice reads it.
/// How many kick notices came.
fn exchange(kernel: &mut Kernel, m: MirrorId, me: &UnixDatagram, daemon: &Path, now: u64) -> u32 {
    let mut kicked = 0;
    kernel.advance_to(now);
    for dg in kernel.take_requests() {
        me.send_to(&dg, daemon).unwrap();
    }
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = me.recv(&mut buf) {
        if node::kick::parse_kick_notice(&buf[..n]).is_some() {
            kernel.kick(m);
            kicked += 1;
        } else if node::kick::parse_wake_notice(&buf[..n]).is_some() {
            kernel.read(m, 0);
        } else {
            kernel.deliver(&buf[..n]);
        }
    }
    kicked
}

#[test]
fn a_kernel_resyncs_and_writes_through_the_daemon_which_stops_on_sigterm() {
    let dir = tempfile::TempDir::new().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (mut daemon, sock) = start(dir.path(), &["--metrics", &metrics]);
    let me = UnixDatagram::bind(dir.path().join("me.sock")).unwrap();
    me.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    let mut kernel = Kernel::new(Config::default(), 1, 0x99);
    let regions = 16;
    let table = Table {
        uuid: Uuid::new("LVM-daemon").unwrap(),
        target_sectors: regions * 8,
        log_args: "clustered-core 8".into(),
        integrated_flush: false,
    };
    let legs = SharedLegs::new(Legs::new(regions, true));
    let m = kernel.create(table, legs.clone());
    let start = Instant::now();
    let mut wrote = 0;
    let mut asked = false;
    while start.elapsed() < Duration::from_secs(60) {
        let now = u64::try_from(start.elapsed().as_millis()).unwrap();
        exchange(&mut kernel, m, &me, &sock, now);
        if wrote < 20 && now > 1_000 {
            kernel.write(m, wrote % regions);
            wrote += 1;
        }
        if wrote == 20 && kernel.is_idle() {
            if kernel.mirror(m).unwrap().status_sync_count == Some(regions) {
                break;
            }
            if !asked || now % 500 == 0 {
                kernel.status(m);
                asked = true;
            }
        }
    }
    let v = kernel.mirror(m).unwrap();
    assert!(kernel.violations().is_empty(), "{:?}", kernel.violations());
    assert_eq!(v.status_sync_count, Some(regions));
    assert_eq!(v.writes_done, 20);
    assert!(legs.lock().identical());
    let admin = dir.path().join("data").join("admin.sock");
    look_through_dmlogctl_and_metrics(&admin, &metrics, regions);
    // `dmlogctl resync`: every region out of sync, the kernel kicked (a
    // notice on its socket here, suspend and resume), every region copied.
    let recovered = kernel.stats().regions_recovered;
    let out = Command::new(env!("CARGO_BIN_EXE_dmlogctl"))
        .arg("--socket")
        .arg(&admin)
        .args(["resync", "LVM-daemon"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("16 of 16 regions out of sync"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let start2 = Instant::now();
    let mut kicked = 0;
    kernel.status(m);
    while start2.elapsed() < Duration::from_secs(60) {
        let now = u64::try_from(start.elapsed().as_millis()).unwrap();
        kicked += exchange(&mut kernel, m, &me, &sock, now);
        if kicked > 0 && kernel.is_idle() {
            if kernel.mirror(m).unwrap().status_sync_count == Some(regions) {
                break;
            }
            kernel.status(m);
        }
    }
    assert!(kicked > 0, "the kernel was kicked");
    assert!(kernel.violations().is_empty(), "{:?}", kernel.violations());
    assert_eq!(kernel.mirror(m).unwrap().status_sync_count, Some(regions));
    assert_eq!(kernel.stats().regions_recovered - recovered, regions, "every region copied once more");
    // The metrics say so (a kick is counted once done, so perhaps a moment
    // after its notice). Wakes are checked by the lab's crash scenario: a
    // single node never wakes its own kernel.
    let counted =
        |name: &str| metric(&scrape(&metrics), &format!("dmlogd_{name}_total{{uuid=\"LVM-daemon\"}}")).unwrap_or(0.0);
    let until = Instant::now() + Duration::from_secs(10);
    while counted("kicks") < f64::from(kicked) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(counted("kicks") >= f64::from(kicked), "kick notices seen: {kicked}");
    assert_eq!(counted("kick_failures"), 0.0);
    // SIGTERM: a clean exit.
    let status = Command::new("kill").arg("-TERM").arg(daemon.id().to_string()).status().unwrap();
    assert!(status.success());
    let until = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code:?}");
}

/// `dmlogctl` against the running daemon: status, logs and log in JSON
/// agree with what the kernel did; the admin socket is root-only; the
/// metrics endpoint counts the requests and shows the log in sync.
fn look_through_dmlogctl_and_metrics(admin: &Path, metrics: &str, regions: u64) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(admin).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode {mode:o}");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dmlogctl")).arg("--socket").arg(admin).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = ctl(&["status", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["leader"], 1);
    assert_eq!(status["healthy"], true);
    assert_eq!(status["members"][0]["id"], 1);
    // A CLEAR is acknowledged at once and committed within a second
    // (docs/architecture.md, the fast write path): the last writes' marks
    // leave the replicated log a moment after the kernel went idle.
    let until = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let (code, out, err) = ctl(&["logs", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let logs: serde_json::Value = serde_json::from_str(&out).unwrap();
        if logs["logs"][0]["dirty"].as_u64() == Some(0) || Instant::now() > until {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = &logs["logs"][0];
    assert_eq!(log["uuid"], "LVM-daemon");
    assert_eq!(log["log_type"], "clustered-core");
    assert_eq!(
        (log["regions"].as_u64(), log["in_sync"].as_u64(), log["dirty"].as_u64()),
        (Some(regions), Some(regions), Some(0))
    );
    let (code, out, _) = ctl(&["log", "LVM-daemon", "--width", "8"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("region map"), "{out}");
    assert!(out.lines().any(|l| l == "........"), "a clean map of 8-wide lines: {out}");
    let (code, _, err) = ctl(&["log", "LVM-nobody"]);
    assert_eq!(code, Some(2), "an unknown log is an error");
    assert!(err.contains("LVM-nobody"), "{err}");
    let (code, _, err) = Command::new(env!("CARGO_BIN_EXE_dmlogctl"))
        .args(["--socket", "/nonexistent/admin.sock", "status"])
        .output()
        .map(|o| (o.status.code(), (), String::from_utf8_lossy(&o.stderr).into_owned()))
        .unwrap();
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/admin.sock"), "{err}");
    // Prometheus text from /metrics.
    let body = scrape(metrics);
    let value = |prefix: &str| -> f64 { metric(&body, prefix).unwrap_or_else(|| panic!("no {prefix} in {body}")) };
    assert!(value("dmlogd_requests_total{request=\"MARK_REGION\"}") >= 1.0);
    assert_eq!(value("dmlogd_is_leader "), 1.0);
    assert_eq!(value("dmlogd_log_regions{uuid=\"LVM-daemon\",state=\"total\"}"), regions as f64);
    assert_eq!(value("dmlogd_log_regions{uuid=\"LVM-daemon\",state=\"out_of_sync\"}"), 0.0);
    // A log's failure counters are there at 0 from its first scrape on.
    assert_eq!(value("dmlogd_kick_failures_total{uuid=\"LVM-daemon\"}"), 0.0);
    assert_eq!(value("dmlogd_wake_failures_total{uuid=\"LVM-daemon\"}"), 0.0);
}

/// The whole HTTP answer of the metrics endpoint at `addr`.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(tcp, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of the first sample line starting with `prefix`.
fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn bad_configuration_is_one_line_and_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_dmlogd")).args(["--kernel", "tcp:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("expected netlink or unix:<path>"), "{err}");
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let (mut first, _sock) = start(dir.path(), &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_dmlogd"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--kernel", "unix:/nonexistent/x.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another dmlogd holds"));
    first.kill().unwrap();
    let _ = first.wait();
}
