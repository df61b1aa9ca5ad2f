//! The daemon's refusals at start: one line on stderr, exit status 2, and
//! nothing stored changed.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::process::Command;

#[test]
fn a_data_dir_of_another_cluster_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("cluster"), "alpha\n").unwrap();
    std::fs::write(data.join("raft.redb"), b"not touched").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dmlogd"))
        .args(["--cluster", "beta", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--kernel")
        .arg(format!("unix:{}", dir.path().join("k.sock").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("belongs to cluster \"alpha\", not \"beta\""), "{err}");
    assert_eq!(std::fs::read(data.join("raft.redb")).unwrap(), b"not touched");
    assert_eq!(std::fs::read_to_string(data.join("cluster")).unwrap(), "alpha\n");
}

#[test]
fn a_bad_configuration_is_one_line_and_check_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dmlogd.toml");
    for (text, expect) in [
        ("id = 1\ncolour = 3\n", "unknown field `colour`"),
        ("cluster = \"a b\"\n", "cluster \"a b\" must be"),
        ("id = 2\n[members]\n1 = \"10.0.0.1:7601\"\n", "not among the members"),
        ("[timing]\ndead_after_ms = 1000\n", "liveness timing"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_dmlogd"))
            .arg("--config")
            .arg(&file)
            .arg("--check-config")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{text}: {err}");
        assert!(err.contains(expect), "{text}: {err}");
    }
    std::fs::write(&file, "id = 1\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_dmlogd")).arg("--config").arg(&file).arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn an_unreachable_peer_is_named_in_one_line_at_start_and_sigterm_still_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    // Three distinct free ports: the listeners are held until all three
    // are chosen (a port freed at once may be handed out again).
    let held: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(held);
    let (me, gone, me2) = (ports[0], ports[1], ports[2]);
    let file = dir.path().join("dmlogd.toml");
    std::fs::write(
        &file,
        format!(
            "id = 1\ndata_dir = \"{d}/data\"\nlisten = \"127.0.0.1:{me}\"\nkernel = \"unix:{d}/k.sock\"\n\
             [members]\n1 = \"127.0.0.1:{me}\"\n2 = \"127.0.0.1:{gone}\"\n3 = \"127.0.0.1:{me2}\"\n",
            d = dir.path().display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmlogd"))
        .arg("--config")
        .arg(&file)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.matches("peer unreachable at start").count() >= 2 || std::time::Instant::now() > until {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // It is still waiting for a quorum: SIGTERM stops it cleanly all the
    // same (exit 0, the admin socket removed).
    assert!(child.try_wait().unwrap().is_none(), "{text}");
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("no exit within 20 s of SIGTERM while waiting for a quorum");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
    assert!(!dir.path().join("data").join("admin.sock").exists(), "the admin socket was left behind");
    let line = text
        .lines()
        .find(|l| l.contains("peer unreachable at start") && l.contains("peer=2"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&format!("127.0.0.1:{gone}")) && line.contains("refused"), "{line}");
    assert_eq!(
        text.lines().filter(|l| l.contains("peer unreachable at start") && l.contains("peer=2")).count(),
        1,
        "{text}"
    );
}
