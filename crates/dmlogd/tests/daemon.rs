//! The real `dmlogd` binary in its own process: a simulated kernel drives it
//! over the Unix transport, it stops cleanly on SIGTERM, and bad
//! configuration is one line and exit status 2.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kernel_sim::{Config, Kernel, Legs, SharedLegs, Table};
use wire::Uuid;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a one-node daemon on a Unix kernel socket in `dir` and waits
/// until the socket is there.
fn start(dir: &Path) -> (Child, std::path::PathBuf) {
    let sock = dir.join("kernel.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_dmlogd"))
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

#[test]
fn a_kernel_resyncs_and_writes_through_the_daemon_which_stops_on_sigterm() {
    let dir = tempfile::TempDir::new().unwrap();
    let (mut daemon, sock) = start(dir.path());
    let me = std::os::unix::net::UnixDatagram::bind(dir.path().join("me.sock")).unwrap();
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
    let mut buf = vec![0u8; 16 * 1024];
    let mut wrote = 0;
    let mut asked = false;
    while start.elapsed() < Duration::from_secs(60) {
        let now = u64::try_from(start.elapsed().as_millis()).unwrap();
        kernel.advance_to(now);
        for dg in kernel.take_requests() {
            me.send_to(&dg, &sock).unwrap();
        }
        while let Ok(n) = me.recv(&mut buf) {
            kernel.deliver(&buf[..n]);
        }
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
    let (mut first, _sock) = start(dir.path());
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
