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
