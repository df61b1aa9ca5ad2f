//! `lab`: runs dmlogd against a real kernel (Debian's 6.1 cloud kernel,
//! `dm-mirror` + `dm-log-userspace`) in qemu guests and checks each
//! scenario's outcome, the mirror legs compared byte for byte on the host.
//!
//! ```text
//! lab --image <dir with vmlinuz, initrd.gz> [--dir <run dir>] <scenario>...
//! ```
//!
//! Scenarios: `single`, `three`, `crash`, `iscsi`, `leg-fail`, `path-fail`,
//! `partition`, `partition-suspend`, `disk`, `daemon-kill`, `speed`,
//! `failover`; `ci` is the first four, `all` every one. `tests/lab/run` builds the
//! image and calls this. The run directory (disk images, consoles with
//! dmlogd's log) is removed after a pass (unless `LAB_KEEP` is set) and
//! kept after a failure. A console line showing the kernel giving up on
//! the log server, a kernel bug or a daemon error fails the scenario.

mod guest;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: lab --image <dir> [--dir <run dir>] <single|three|crash|iscsi|leg-fail|path-fail|partition|partition-suspend|disk|daemon-kill|speed|failover|ci|all>...";

fn main() -> ExitCode {
    let mut image = None;
    let mut dir = None;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--image" => image = args.next().map(PathBuf::from),
            "--dir" => dir = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "ci" => names.extend(["single", "three", "crash", "iscsi"].map(String::from)),
            "all" => names.extend(scenarios::ALL.iter().map(|(n, _, _)| n.to_string())),
            other if scenarios::ALL.iter().any(|(n, _, _)| *n == other) => names.push(other.to_owned()),
            other => {
                eprintln!("lab: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(image) = image else {
        eprintln!("lab: --image is required\n{USAGE}");
        return ExitCode::from(2);
    };
    if names.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let root = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("dmlogd-lab-{}", std::process::id())));
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let Some((_, run, allowed)) = scenarios::ALL.iter().find(|(n, _, _)| n == name) else { continue };
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        // Each scenario its own multicast port, so leftovers cannot talk to it.
        let port = 20_000 + (std::process::id() % 20_000) as u16 + i as u16;
        println!("== {name}");
        let started = Instant::now();
        let result =
            guest::Lab::new(&dir, &image, port).and_then(|lab| run(&lab)).and_then(|()| scan_consoles(&dir, allowed));
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                println!("== {name}: passed in {secs:.0} s");
                summary.push(format!("{name:<17} passed  {secs:>5.0} s"));
                if std::env::var_os("LAB_KEEP").is_none() {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
            Err(why) => {
                println!("== {name}: FAILED after {secs:.0} s: {why}");
                println!("   consoles and disk images kept in {}", dir.display());
                summary.push(format!("{name:<17} FAILED  {secs:>5.0} s"));
                failed.push(name.clone());
            }
        }
    }
    println!("\n{}", summary.join("\n"));
    if failed.is_empty() {
        let _ = std::fs::remove_dir(&root);
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Lines no guest console may hold after a scenario: the kernel giving up
/// on the log server, a kernel bug, a daemon error or panic.
const BAD: &[&str] = &[
    "Request timed out",
    "Userspace log server not found",
    "COM_FAILURE",
    "Kernel panic",
    "BUG:",
    "Call Trace",
    "panicked",
    " ERROR ",
];

/// Fails with the first bad line of any console in the scenario's
/// directory, but for the lines the scenario expects (`allowed`).
fn scan_consoles(dir: &std::path::Path, allowed: &[&str]) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("console") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        // openraft logs an unreachable or timed-out peer at ERROR level,
        // which is expected while the other guests boot, after one crashed
        // or while one is frozen.
        let expected = |l: &str| {
            (l.contains("openraft::") && ["Unreachable node", "NetworkError", "imeout"].iter().any(|w| l.contains(w)))
                || allowed.iter().any(|a| l.contains(a))
        };
        if let Some(line) = text.lines().find(|l| BAD.iter().any(|b| l.contains(b)) && !expected(l)) {
            return Err(format!("{name}: {line}"));
        }
    }
    Ok(())
}
