//! Fence actions: what a node does to stop its own writes once its lease
//! has run out (see `docs/fencing.md`). Each must finish within
//! `fence_action_max_ms`, or the node cannot count itself fenced.
//!
//! * `reboot`: an immediate reset through `/proc/sysrq-trigger` (`b`: no
//!   sync, no unmount — the point is to stop writing now). Needs root and
//!   `kernel.sysrq` allowing reboot (bit 128, or 1).
//! * `suspend`: `dmsetup suspend --noflush` of every mirror this node
//!   serves, and the `reboot` reset when those have not finished within
//!   the limit (on a real kernel they cannot: a mirror suspends only once
//!   its log has answered its PRESUSPEND and its queued writes).
//! * `command:<program> [args…]`: an external program (a pacemaker/STONITH
//!   hook); exit status 0 means fenced. The mirror names are appended.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A configured fence action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceAction {
    /// Reset the machine at once.
    Reboot {
        /// The sysrq trigger file (`/proc/sysrq-trigger`; other paths for tests).
        trigger: PathBuf,
    },
    /// Suspend every served mirror with `dmsetup`; if that does not finish
    /// within the limit, reset the machine through `trigger` as `Reboot`
    /// does. (A mirror suspends only once its log has answered what its
    /// queued writes and its PRESUSPEND wait for, which a fenced daemon
    /// does not; meanwhile its writes to regions it holds dirty, which
    /// need no answer, go on. See `docs/fencing.md`.)
    Suspend {
        /// The sysrq trigger file for the fallback.
        trigger: PathBuf,
    },
    /// Run an external program.
    Command {
        /// The program.
        program: String,
        /// Its arguments (the mirror names follow them).
        args: Vec<String>,
    },
}

/// A fence action that could not be parsed or did not complete.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The configuration string.
    #[error("fence action {0:?}: expected reboot, suspend or command:<program> [args…]")]
    Parse(String),
    /// The action did not finish in time.
    #[error("fence action did not finish within {0:?}")]
    Timeout(Duration),
    /// The action failed.
    #[error("fence action failed: {0}")]
    Failed(String),
    /// The suspend did not finish; the machine was reset instead.
    #[error("suspend did not finish ({0}); the machine was reset")]
    Reset(Box<FenceError>),
}

impl std::str::FromStr for FenceAction {
    type Err = FenceError;

    fn from_str(s: &str) -> Result<FenceAction, FenceError> {
        match s.trim() {
            "reboot" => Ok(FenceAction::Reboot { trigger: PathBuf::from("/proc/sysrq-trigger") }),
            "suspend" => Ok(FenceAction::Suspend { trigger: PathBuf::from("/proc/sysrq-trigger") }),
            other => {
                let Some(rest) = other.strip_prefix("command:") else { return Err(FenceError::Parse(s.into())) };
                let mut words = rest.split_whitespace().map(str::to_owned);
                let program = words.next().ok_or_else(|| FenceError::Parse(s.into()))?;
                Ok(FenceAction::Command { program, args: words.collect() })
            }
        }
    }
}

impl FenceAction {
    /// Runs the action for the given mirrors (device-mapper names), waiting
    /// at most `limit`.
    pub fn run(&self, mirrors: &[String], limit: Duration) -> Result<(), FenceError> {
        match self {
            FenceAction::Reboot { trigger } => reset(trigger),
            FenceAction::Suspend { trigger } => suspend_or_reset("dmsetup", mirrors, limit, trigger),
            FenceAction::Command { program, args } => {
                let mut all = args.clone();
                all.extend(mirrors.iter().cloned());
                run_bounded(program, &all, limit)
            }
        }
    }
}

/// Resets the machine at once through the sysrq `trigger`.
fn reset(trigger: &Path) -> Result<(), FenceError> {
    std::fs::write(trigger, b"b").map_err(|e| FenceError::Failed(format!("{}: {e}", trigger.display())))
}

/// `dmsetup suspend --noflush` of every mirror (`dmsetup` is `program`),
/// all within `limit`; on any failure, a reset through `trigger`.
fn suspend_or_reset(program: &str, mirrors: &[String], limit: Duration, trigger: &Path) -> Result<(), FenceError> {
    let started = Instant::now();
    for m in mirrors {
        let left = limit.saturating_sub(started.elapsed());
        let args = vec!["suspend".to_owned(), "--noflush".to_owned(), m.clone()];
        if let Err(e) = run_bounded(program, &args, left) {
            // Said before the reset: nothing is logged after it.
            tracing::error!(mirror = %m, error = %e, "the suspend did not finish: resetting the machine");
            reset(trigger)?;
            return Err(FenceError::Reset(Box::new(e)));
        }
    }
    Ok(())
}

/// Runs `program` and waits for it, killing it at `limit` (without waiting
/// for it to go: a process stuck in a device-mapper ioctl cannot die).
fn run_bounded(program: &str, args: &[String], limit: Duration) -> Result<(), FenceError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| FenceError::Failed(format!("{program}: {e}")))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(FenceError::Failed(format!("{program}: {status}"))),
            Ok(None) if started.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.try_wait();
                return Err(FenceError::Timeout(limit));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(FenceError::Failed(format!("{program}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_bad_ones_are_refused() {
        assert!(matches!("suspend".parse(), Ok(FenceAction::Suspend { .. })));
        assert!(matches!("reboot".parse(), Ok(FenceAction::Reboot { .. })));
        assert_eq!(
            "command:/usr/sbin/fence_node -v".parse(),
            Ok(FenceAction::Command { program: "/usr/sbin/fence_node".into(), args: vec!["-v".into()] })
        );
        assert!(matches!("command:".parse::<FenceAction>(), Err(FenceError::Parse(_))));
        assert!(matches!("halt".parse::<FenceAction>(), Err(FenceError::Parse(_))));
    }

    #[test]
    fn a_command_gets_the_mirrors_and_its_exit_status_counts() {
        let dir = tempfile::TempDir::new().unwrap();
        let out = dir.path().join("args");
        let script = format!("printf '%s ' \"$@\" > {}", out.display());
        let ok = FenceAction::Command { program: "sh".into(), args: vec!["-c".into(), script, "fence".into()] };
        ok.run(&["m1".into(), "m2".into()], Duration::from_secs(5)).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "m1 m2 ");
        let failing: FenceAction = "command:false".parse().unwrap();
        assert!(matches!(failing.run(&[], Duration::from_secs(5)), Err(FenceError::Failed(_))));
    }

    #[test]
    fn a_command_that_hangs_is_killed_at_the_limit() {
        let slow: FenceAction = "command:sleep 30".parse().unwrap();
        assert_eq!(slow.run(&[], Duration::from_millis(200)), Err(FenceError::Timeout(Duration::from_millis(200))));
    }

    #[test]
    fn a_suspend_that_cannot_finish_resets_the_machine() {
        let dir = tempfile::TempDir::new().unwrap();
        let trigger = dir.path().join("sysrq-trigger");
        // A dmsetup whose suspend hangs, as against a fenced daemon.
        let hangs = dir.path().join("dmsetup-hangs");
        std::fs::write(&hangs, "#!/bin/sh\nexec sleep 30\n").unwrap();
        let ok = dir.path().join("dmsetup-ok");
        std::fs::write(&ok, "#!/bin/sh\nexit 0\n").unwrap();
        for p in [&hangs, &ok] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mirrors = ["vg-m".to_owned()];
        let started = Instant::now();
        let r = suspend_or_reset(hangs.to_str().unwrap(), &mirrors, Duration::from_millis(200), &trigger);
        assert!(matches!(r, Err(FenceError::Reset(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "it did not wait for the hung suspend");
        assert_eq!(std::fs::read(&trigger).unwrap(), b"b");
        // A suspend that finishes resets nothing.
        std::fs::remove_file(&trigger).unwrap();
        suspend_or_reset(ok.to_str().unwrap(), &mirrors, Duration::from_secs(5), &trigger).unwrap();
        assert!(!trigger.exists());
    }

    #[test]
    fn reboot_writes_b_to_the_trigger() {
        let dir = tempfile::TempDir::new().unwrap();
        let trigger = dir.path().join("sysrq-trigger");
        FenceAction::Reboot { trigger: trigger.clone() }.run(&[], Duration::from_secs(1)).unwrap();
        assert_eq!(std::fs::read(&trigger).unwrap(), b"b");
        let missing = FenceAction::Reboot { trigger: dir.path().join("no/such/file") };
        assert!(matches!(missing.run(&[], Duration::from_secs(1)), Err(FenceError::Failed(_))));
    }
}
