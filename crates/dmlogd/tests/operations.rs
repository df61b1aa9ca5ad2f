//! What an administrator meets in the first week, against real `dmlogd`
//! processes: a typo in `members add`, a cluster that lost its quorum (in
//! `dmlogctl status`, its JSON, `/metrics` and the OCF monitor), SIGHUP
//! and its log file, systemd's readiness notice, and a scrape that
//! `promtool` accepts.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One daemon of a test cluster, with its directory.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// Starts node `id` with the configuration `toml` (written to
    /// `dir/node<id>.toml`; its kernel socket and data dir are added).
    fn start(dir: &Path, id: u64, toml: &str) -> Daemon {
        Daemon::start_with(dir, id, toml, &[])
    }

    /// As `start`, with these environment variables set.
    fn start_with(dir: &Path, id: u64, toml: &str, env: &[(&str, &Path)]) -> Daemon {
        let node = dir.join(format!("n{id}"));
        std::fs::create_dir_all(&node).unwrap();
        let config = node.join("dmlogd.toml");
        let full = format!(
            "id = {id}\ndata_dir = \"{d}/data\"\nkernel = \"unix:{d}/kernel.sock\"\nfence = \"command:true\"\n{toml}",
            d = node.display()
        );
        std::fs::write(&config, full).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dmlogd"))
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(node.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, dir: node }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("data/admin.sock")
    }

    /// `dmlogctl --socket … args`: exit code, stdout, stderr.
    fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_dmlogctl")).arg("--socket").arg(self.socket()).args(args).output();
        let out = out.unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn status(&self) -> serde_json::Value {
        let (_, out, err) = self.ctl(&["--json", "status"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
    }

    /// Waits until `status --json` satisfies `ok`.
    fn wait_status(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if self.socket().exists() {
                let (_, out, _) = self.ctl(&["--json", "status"]);
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out)
                    && ok(&v)
                {
                    return v;
                }
            }
            assert!(Instant::now() < until, "node in {}: never {what}", self.dir.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    /// The OCF agent's `monitor` against this daemon: its exit code and
    /// what it logged.
    fn ocf_monitor(&self) -> (i32, String) {
        let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/ocf/dmlogd");
        std::fs::write(self.dir.join("pid"), self.child.id().to_string()).unwrap();
        let out: Output = Command::new("sh")
            .args([agent, "monitor"])
            .env("OCF_RESKEY_binary", env!("CARGO_BIN_EXE_dmlogd"))
            .env("OCF_RESKEY_ctl", env!("CARGO_BIN_EXE_dmlogctl"))
            .env("OCF_RESKEY_config", self.dir.join("dmlogd.toml"))
            .env("OCF_RESKEY_admin_socket", self.socket())
            .env("OCF_RESKEY_pidfile", self.dir.join("pid"))
            .output()
            .unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn members(ports: &[u16]) -> String {
    let mut s = String::from("[members]\n");
    for (i, p) in ports.iter().enumerate() {
        s.push_str(&format!("{} = \"127.0.0.1:{p}\"\n", i + 1));
    }
    s
}

#[test]
fn a_typo_in_members_add_is_refused_and_the_node_keeps_its_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let one = Daemon::start(dir.path(), 1, &format!("listen = \"127.0.0.1:{port}\"\n"));
    one.wait_status("healthy", |s| s["healthy"] == true);
    let nobody = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = one.ctl(&["members", "add", "2", &nobody, "--catch-up-timeout", "2"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("did not catch up") && err.contains(&nobody), "{err}");
    let s = one.status();
    assert_eq!(s["members"].as_array().unwrap().len(), 1, "{s}");
    // Past a whole lease (8 s): still a quorum of one, never fenced.
    std::thread::sleep(Duration::from_secs(9));
    let s = one.status();
    assert_eq!(
        (s["healthy"].as_bool(), s["quorum"].as_bool(), s["fenced"].as_bool()),
        (Some(true), Some(true), Some(false)),
        "{s}"
    );
    // Removing what is not a member says so.
    let (code, _, err) = one.ctl(&["members", "remove", "2"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a member"), "{err}");
}

#[test]
fn a_node_without_quorum_is_unhealthy_in_status_json_metrics_and_the_ocf_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let metrics = format!("127.0.0.1:{}", free_port());
    let conf = |i: usize, extra: &str| format!("listen = \"127.0.0.1:{}\"\n{extra}{}", ports[i], members(&ports));
    let one = Daemon::start(dir.path(), 1, &conf(0, &format!("metrics = \"{metrics}\"\n")));
    let two = Daemon::start(dir.path(), 2, &conf(1, ""));
    // Node 3 never starts: two of three is a quorum.
    one.wait_status("healthy", |s| s["healthy"] == true);
    assert_eq!(one.ocf_monitor().0, 0);
    assert_eq!(scrape_value(&metrics, "dmlogd_quorum "), 1.0);
    drop(two);
    let s = one.wait_status("without quorum", |s| s["quorum"] == false);
    assert_eq!(s["healthy"], false, "{s}");
    assert!(s["health"].as_str().unwrap().contains("no quorum"), "{s}");
    let (code, out, _) = one.ctl(&["status"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("health: DEGRADED: no quorum"), "{out}");
    assert_eq!(scrape_value(&metrics, "dmlogd_quorum "), 0.0);
    assert!(scrape_value(&metrics, "dmlogd_quorum_age_seconds ") > 2.0);
    // A whole lease without quorum: the cluster manager is told it failed.
    one.wait_status("failed", |s| s["monitor"] == "failed");
    let (code, said) = one.ocf_monitor();
    assert_eq!(code, 1, "OCF_ERR_GENERIC: {said}");
    assert!(said.contains("failed"), "{said}");
}

#[test]
fn sighup_reopens_the_log_file_and_rereads_the_level_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dmlogd.log");
    let listen = format!("listen = \"127.0.0.1:{}\"\n", free_port());
    let one = Daemon::start(dir.path(), 1, &format!("{listen}[log]\nfile = \"{}\"\n", log.display()));
    one.wait_status("healthy", |s| s["healthy"] == true);
    // logrotate: move the file away, then SIGHUP.
    let rotated = dir.path().join("dmlogd.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let config = one.dir.join("dmlogd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}level = \"info,node=debug\"\n")).unwrap();
    one.signal("-HUP");
    let until = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("log level set") {
        assert!(Instant::now() < until, "no new log file after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    let fresh = std::fs::read_to_string(&log).unwrap();
    assert!(fresh.contains("SIGHUP: log file reopened"), "{fresh}");
    assert!(std::fs::read_to_string(&rotated).unwrap().contains("joined"));
    // Still serving.
    let (code, out, _) = one.ctl(&["status"]);
    assert_eq!(code, Some(0), "{out}");
    // A bad level on the next SIGHUP is refused and said so; the daemon stays.
    std::fs::write(&config, format!("{text}level = \"info,node=loud\"\n")).unwrap();
    one.signal("-HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(one.ctl(&["status"]).0, Some(0));
    std::fs::write(&config, &text).unwrap();
    // SIGTERM: exit 0, and nothing logged as an error on the way.
    let mut one = one;
    one.signal("-TERM");
    let status = one.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let all = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = all.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "only the bad level: {errors:?}");
    assert!(errors[0].contains("log level not re-read"), "{errors:?}");
    assert!(all.contains("stopping"), "{all}");
}

/// systemd's `Type=notify`: READY=1 only once the node has joined (a
/// node alone of three never does), STOPPING=1 on SIGTERM.
#[test]
fn systemd_hears_ready_after_the_join_and_stopping_at_the_end() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let conf = |i: usize| format!("listen = \"127.0.0.1:{}\"\n{}", ports[i], members(&ports));
    let mut one = Daemon::start_with(dir.path(), 1, &conf(0), &[("NOTIFY_SOCKET", &path)]);
    let mut buf = [0u8; 512];
    let heard = |systemd: &UnixDatagram, buf: &mut [u8]| {
        systemd.recv(buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    // Alone of three: no quorum, no join, not ready.
    let early = heard(&systemd, &mut buf);
    assert!(early.is_err(), "ready before the join: {early:?}");
    let _two = Daemon::start(dir.path(), 2, &conf(1));
    systemd.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let ready = heard(&systemd, &mut buf).unwrap();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert_eq!(one.status()["quorum"], true);
    one.signal("-TERM");
    let stopping = heard(&systemd, &mut buf).unwrap();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert_eq!(one.child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_scrape_passes_promtool_and_has_every_family_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let one =
        Daemon::start(dir.path(), 1, &format!("listen = \"127.0.0.1:{}\"\nmetrics = \"{metrics}\"\n", free_port()));
    one.wait_status("healthy", |s| s["healthy"] == true);
    let (head, body) = scrape(&metrics, None);
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    for sample in [
        "dmlogd_requests_total{request=\"MARK_REGION\"} 0",
        "dmlogd_requests_total{request=\"IS_REMOTE_RECOVERING\"} 0",
        "dmlogd_evictions_total 0",
        "dmlogd_quorum 1",
        "dmlogd_build_info{version=\"",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(body.lines().any(|l| l.starts_with(sample)), "no {sample} in {body}");
    }
    assert!(!body.contains("# EOF"));
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            use std::io::Write;
            p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
        }
        Err(e) => {
            assert!(std::env::var_os("DMLOGD_REQUIRE_PROMTOOL").is_none(), "promtool: {e}");
            eprintln!("promtool not installed ({e}): the scrape was not linted");
        }
    }
    // The alert rules and the dashboard in deploy/ use only names a node
    // exports (a misspelt one would stay silent for ever).
    // (A family without samples yet, such as a per-log counter before any
    // log exists, is still declared.)
    let names: std::collections::BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ").unwrap_or(l).split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    for file in ["prometheus/dmlogd-alerts.yml", "grafana/dmlogd.json"] {
        let text = std::fs::read_to_string(format!("{}/../../deploy/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 10, "{file}: {used:?}");
        for name in used {
            // Per-log families start with their log (tests/daemon.rs sees
            // them at 0), peer lag on a leader with peers; this node has
            // neither.
            let later = ["_kicks_", "_kick_failures_", "_wakes_", "_wake_failures_", "_log_regions", "_peer_lag_"];
            if !later.iter().any(|l| name.contains(l)) {
                assert!(names.contains(&name), "{file} uses {name}, which no scrape has");
            }
        }
    }
    // Prometheus asks for OpenMetrics and gets it.
    let (head, body) = scrape(&metrics, Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"));
    assert!(head.contains("content-type: application/openmetrics-text; version=1.0.0"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    assert!(body.contains("# TYPE dmlogd_evictions counter"), "{body}");
}

/// The `dmlogd_*` and `process_*` names in a text.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for prefix in ["dmlogd_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.insert(name.clone());
            rest = &rest[at + name.len()..];
        }
    }
    out
}

/// The head and body of `GET /metrics`, with `accept` if given.
fn scrape(addr: &str, accept: Option<&str>) -> (String, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(tcp, "GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n").unwrap();
    let mut all = String::new();
    tcp.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_ascii_lowercase(), body.to_owned())
}

fn scrape_value(addr: &str, prefix: &str) -> f64 {
    let (_, body) = scrape(addr, None);
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {body}"))
}

#[test]
fn a_cluster_that_lost_its_majority_is_recovered_from_one_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let conf = |i: usize| format!("listen = \"127.0.0.1:{}\"\n{}", ports[i], members(&ports));
    let mut one = Daemon::start(dir.path(), 1, &conf(0));
    let two = Daemon::start(dir.path(), 2, &conf(1));
    let three = Daemon::start(dir.path(), 3, &conf(2));
    let before = one.wait_status("healthy", |s| s["healthy"] == true && s["last_applied"].as_u64() > Some(3));
    let applied = before["last_applied"].as_u64().unwrap();
    // Two of three hosts are lost for good.
    drop(two);
    drop(three);
    one.wait_status("without quorum", |s| s["quorum"] == false);
    one.signal("-TERM");
    one.child.wait().unwrap();
    let force = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dmlogd"))
            .arg("--config")
            .arg(one.dir.join("dmlogd.toml"))
            .arg("force-new-cluster")
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Refused unless asked for explicitly; nothing changed.
    let (code, _, err) = force(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("Nothing was changed"), "{err}");
    let (code, out, err) = force(&["--force"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("node 1 is now the only voter") && out.contains("[1, 2, 3]"), "{out}");
    // Started again it leads alone, with everything it had.
    let one = Daemon::start(dir.path(), 1, &conf(0));
    let s = one.wait_status("healthy alone", |s| s["healthy"] == true);
    assert_eq!(s["members"].as_array().unwrap().len(), 1, "{s}");
    assert!(s["last_applied"].as_u64().unwrap() > applied, "{s}");
    // While it runs the tool refuses to touch its store.
    let (code, _, err) = force(&["--force"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("stop it first"), "{err}");
    // Host 2 comes back wiped, configured with the current members, and
    // is added as a node again.
    std::fs::remove_dir_all(dir.path().join("n2")).unwrap();
    let two_conf = format!(
        "listen = \"127.0.0.1:{}\"\n[members]\n1 = \"127.0.0.1:{}\"\n2 = \"127.0.0.1:{}\"\n",
        ports[1], ports[0], ports[1]
    );
    let _two = Daemon::start(dir.path(), 2, &two_conf);
    let (code, out, err) = one.ctl(&["members", "add", "2", &format!("127.0.0.1:{}", ports[1])]);
    assert_eq!(code, Some(0), "{out}{err}");
    let s = one.wait_status("two voters", |s| {
        s["healthy"] == true
            && s["members"].as_array().is_some_and(|m| m.len() == 2 && m.iter().all(|m| m["voter"] == true))
    });
    assert_eq!(s["leader"], 1, "{s}");
}
