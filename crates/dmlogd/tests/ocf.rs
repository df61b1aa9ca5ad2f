//! The pacemaker resource agent (`deploy/ocf/dmlogd`) run against a real
//! `dmlogd`: every action and its OCF exit code.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/ocf/dmlogd");

/// OCF exit codes.
const SUCCESS: i32 = 0;
const ERR_CONFIGURED: i32 = 6;
const ERR_INSTALLED: i32 = 5;
const NOT_RUNNING: i32 = 7;

struct Agent {
    dir: PathBuf,
    config: PathBuf,
}

impl Agent {
    fn new(dir: &Path) -> Agent {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.join("dmlogd.toml");
        std::fs::write(
            &config,
            format!(
                "id = 1\ndata_dir = \"{d}/data\"\nlisten = \"127.0.0.1:{port}\"\nkernel = \"unix:{d}/kernel.sock\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        Agent { dir: dir.to_owned(), config }
    }

    fn run(&self, action: &str, extra: &[(&str, &str)]) -> Output {
        let mut c = Command::new("sh");
        c.arg(AGENT)
            .arg(action)
            .env("OCF_RESKEY_binary", env!("CARGO_BIN_EXE_dmlogd"))
            .env("OCF_RESKEY_ctl", env!("CARGO_BIN_EXE_dmlogctl"))
            .env("OCF_RESKEY_config", &self.config)
            .env("OCF_RESKEY_admin_socket", self.dir.join("data/admin.sock"))
            .env("OCF_RESKEY_pidfile", self.dir.join("run/dmlogd.pid"))
            .env("OCF_RESKEY_logfile", self.dir.join("dmlogd.log"));
        for (k, v) in extra {
            c.env(format!("OCF_RESKEY_{k}"), v);
        }
        c.output().unwrap()
    }

    fn code(&self, action: &str) -> i32 {
        let out = self.run(action, &[]);
        out.status.code().unwrap_or_else(|| panic!("{action} killed: {out:?}"))
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("run/dmlogd.pid")).unwrap().trim().parse().unwrap()
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[test]
fn meta_data_describes_every_action_and_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::new(dir.path());
    let out = a.run("meta-data", &[]);
    assert_eq!(out.status.code(), Some(SUCCESS));
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(xml.contains("<resource-agent name=\"dmlogd\""), "{xml}");
    for action in ["start", "stop", "monitor", "meta-data", "validate-all"] {
        assert!(xml.contains(&format!("<action name=\"{action}\"")), "no {action} in {xml}");
    }
    for p in ["config", "binary", "ctl", "admin_socket", "pidfile", "logfile", "args"] {
        assert!(xml.contains(&format!("<parameter name=\"{p}\"")), "no {p} in {xml}");
    }
}

#[test]
fn validate_all_refuses_a_bad_configuration_and_a_missing_program() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::new(dir.path());
    assert_eq!(a.code("validate-all"), SUCCESS);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = 1\ncolour = 3\n").unwrap();
    let out = a.run("validate-all", &[("config", bad.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(ERR_CONFIGURED));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("unknown field") && why.contains("colour"), "{why}");
    let out = a.run("validate-all", &[("config", "/nonexistent/dmlogd.toml")]);
    assert_eq!(out.status.code(), Some(ERR_CONFIGURED));
    let out = a.run("validate-all", &[("binary", "/nonexistent/dmlogd")]);
    assert_eq!(out.status.code(), Some(ERR_INSTALLED));
    // A start with a bad configuration fails the same way and starts nothing.
    let out = a.run("start", &[("config", bad.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(ERR_CONFIGURED));
    assert_eq!(a.code("monitor"), NOT_RUNNING);
}

#[test]
fn start_monitor_stop_run_a_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::new(dir.path());
    assert_eq!(a.code("monitor"), NOT_RUNNING);
    assert_eq!(a.code("stop"), SUCCESS, "stopping what is not running succeeds");

    assert_eq!(a.code("start"), SUCCESS);
    let pid = a.pid();
    assert!(alive(pid));
    assert_eq!(a.code("monitor"), SUCCESS);
    assert_eq!(a.code("start"), SUCCESS, "start is idempotent");
    assert_eq!(a.pid(), pid, "a second start must not start a second daemon");
    // `start` returns once the admin socket answers, which may be before
    // the join: wait for it, so that the stop below is of a serving daemon.
    let logfile = dir.path().join("dmlogd.log");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&logfile).unwrap_or_default().contains("joined") {
        assert!(std::time::Instant::now() < until, "no join within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    assert_eq!(a.code("stop"), SUCCESS);
    assert!(!alive(pid), "the daemon still runs after stop");
    assert_eq!(a.code("monitor"), NOT_RUNNING);
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert!(log.contains("stopping"), "{log}");

    // A daemon that dies is noticed, and a start brings it back.
    assert_eq!(a.code("start"), SUCCESS);
    let pid = a.pid();
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    while alive(pid) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(a.code("monitor"), NOT_RUNNING);
    assert_eq!(a.code("start"), SUCCESS);
    assert_eq!(a.code("monitor"), SUCCESS);
    assert_eq!(a.code("stop"), SUCCESS);
}
