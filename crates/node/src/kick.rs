//! Kicking this node's kernel: after an eviction turned regions out of
//! sync, a kernel that had cached `in_sync_hint = region_count` does not
//! ask for resync work again until its mirror is resumed (spec §3.3, the
//! I10 caveat). The daemon therefore suspends and resumes every local
//! mirror that uses the log; RESUME resets the cached hint and recovery
//! starts.
//!
//! On a real host this is `dmsetup suspend` + `dmsetup resume` of the
//! device-mapper devices whose table names the log's uuid (found in
//! `dmsetup table`). `dmsetup` rather than a device-mapper ioctl crate:
//! it is present wherever LVM mirrors are, and the crates that wrap the
//! ioctls need libclang at build time. A suspend drains the mirror's
//! in-flight writes, which need this daemon's answers, so the kick runs
//! beside the router, never in its way.
//!
//! A simulated kernel on the Unix transport is kicked with a notice
//! datagram instead ([`kick_notice`]); its driver suspends and resumes the
//! simulated mirror.
//!
//! Nothing here waits, inside the daemon's process, for I/O that only the
//! daemon can complete: `dmsetup` runs as a child process and is waited
//! for with a limit (a thread waiting for a child can always be killed),
//! and the wake read runs in a child process ([`spawn_wake`]).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wire::Uuid;

/// How long one `dmsetup` call may take.
pub const DMSETUP_LIMIT: Duration = Duration::from_secs(30);

/// Prefix of a kick notice on the Unix transport; the log's uuid follows.
pub const KICK_NOTICE: &[u8] = b"dmlogd-kick\n";

/// Prefix of a wake notice on the Unix transport; the log's uuid follows.
pub const WAKE_NOTICE: &[u8] = b"dmlogd-wake\n";

/// A notice for a simulated kernel: `prefix`, then the log's uuid.
fn notice(prefix: &[u8], uuid: &Uuid) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(uuid.to_string().as_bytes());
    v
}

/// The uuid of a notice with `prefix`, or `None` for any other datagram.
fn parse_notice(prefix: &[u8], datagram: &[u8]) -> Option<Uuid> {
    let rest = datagram.strip_prefix(prefix)?;
    Uuid::new(std::str::from_utf8(rest).ok()?)
}

/// The notice that asks a simulated kernel to suspend and resume the
/// mirrors of `uuid`.
pub fn kick_notice(uuid: &Uuid) -> Vec<u8> {
    notice(KICK_NOTICE, uuid)
}

/// The uuid of a kick notice, or `None` for any other datagram.
pub fn parse_kick_notice(datagram: &[u8]) -> Option<Uuid> {
    parse_notice(KICK_NOTICE, datagram)
}

/// The notice that asks a simulated kernel to run a pass of its mirrors of
/// `uuid` (it asks for resync work).
pub fn wake_notice(uuid: &Uuid) -> Vec<u8> {
    notice(WAKE_NOTICE, uuid)
}

/// The uuid of a wake notice, or `None` for any other datagram.
pub fn parse_wake_notice(datagram: &[u8]) -> Option<Uuid> {
    parse_notice(WAKE_NOTICE, datagram)
}

/// The device-mapper devices, in `dmsetup table` output, whose mirror
/// target uses the userspace log `uuid`.
pub fn devices_using(table: &str, uuid: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in table.lines() {
        let Some((name, rest)) = line.split_once(": ") else { continue };
        let words: Vec<&str> = rest.split_whitespace().collect();
        // start length mirror userspace <argc> <uuid> ...
        let uses = words.len() > 5 && words[2] == "mirror" && words[3] == "userspace" && words[5] == uuid;
        if uses && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// Why a kick failed.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    /// `dmsetup` could not run, failed, or took too long.
    #[error("dmsetup {args}: {why}")]
    Dmsetup {
        /// Its arguments.
        args: String,
        /// What went wrong.
        why: String,
    },
    /// No local device uses the log.
    #[error("no device-mapper device uses log {0}")]
    NoDevice(String),
    /// A mirror could not be read (to wake it).
    #[error("reading {device}: {why}")]
    Read {
        /// The device-mapper name.
        device: String,
        /// What went wrong.
        why: String,
    },
}

/// Runs `dmsetup args`, returning its standard output, killed at `limit`.
fn dmsetup(args: &[&str], limit: Duration) -> Result<String, KickError> {
    let fail = |why: String| KickError::Dmsetup { args: args.join(" "), why };
    let mut child = Command::new("dmsetup")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {limit:?}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The local mirrors using `uuid`, by `dmsetup table`.
pub fn local_mirrors(uuid: &Uuid) -> Result<Vec<String>, KickError> {
    let table = dmsetup(&["table"], DMSETUP_LIMIT)?;
    Ok(devices_using(&table, &uuid.to_string()))
}

/// Suspends and resumes every local mirror using `uuid`; returns their
/// names. Blocking: run it on a blocking thread.
pub fn dm_kick(uuid: &Uuid) -> Result<Vec<String>, KickError> {
    let names = local_mirrors(uuid)?;
    if names.is_empty() {
        return Err(KickError::NoDevice(uuid.to_string()));
    }
    for name in &names {
        dmsetup(&["suspend", name], DMSETUP_LIMIT)?;
        dmsetup(&["resume", name], DMSETUP_LIMIT)?;
    }
    Ok(names)
}

/// How long the daemon waits for a wake read before it leaves it running:
/// the read completes only once the kernel's log requests are answered.
pub const WAKE_WAIT: Duration = Duration::from_secs(5);

/// Wakes the mirrors using `uuid` so they ask for resync work: an idle
/// mirror's kernel thread runs only on I/O. A direct read of the mirror's
/// last 4 KiB does it: the userspace log cannot answer IN_SYNC for a read
/// without blocking above its cached hint, so the read is queued to the
/// mirror's thread, whose pass asks GET_RESYNC_WORK. Returns the names.
///
/// The read completes only once this daemon has answered its kernel, so it
/// must never run inside the daemon: a thread of the daemon stuck in that
/// read (uninterruptible) keeps a killed daemon from exiting, with its lock
/// and its connector socket, and no new daemon can start to answer it. It
/// runs in a child process, `program wake-read <device>` (the daemon's own
/// executable), which the daemon waits for at most [`WAKE_WAIT`] and then
/// leaves to finish by itself; the child holds none of the daemon's files
/// (every descriptor is close-on-exec).
pub async fn spawn_wake(program: &std::path::Path, uuid: &Uuid) -> Result<Vec<String>, KickError> {
    let id = uuid.clone();
    let names = tokio::task::spawn_blocking(move || local_mirrors(&id))
        .await
        .map_err(|e| KickError::Read { device: uuid.to_string(), why: e.to_string() })??;
    if names.is_empty() {
        return Err(KickError::NoDevice(uuid.to_string()));
    }
    for name in &names {
        let device = format!("/dev/mapper/{name}");
        let fail = |why: String| KickError::Read { device: name.clone(), why };
        let mut child = tokio::process::Command::new(program)
            .args(["wake-read", &device])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", program.display())))?;
        match tokio::time::timeout(WAKE_WAIT, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => return Err(fail(format!("the wake read exited with {status}"))),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            // Still waiting for the log (for answers this daemon is about
            // to give): reaped whenever it ends.
            Err(_) => {
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
    }
    Ok(names)
}

/// Reads the last 4 KiB of block device `path`, bypassing the page cache
/// (the body of `dmlogd wake-read`; blocking).
pub fn wake_read(path: &std::path::Path) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 4096;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .map_err(|e| e.to_string())?;
    let size = f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let at = size.checked_sub(BLOCK as u64).ok_or("smaller than 4 KiB")? / BLOCK as u64 * BLOCK as u64;
    // O_DIRECT wants an aligned buffer: take an aligned window of a larger one.
    let mut buf = vec![0u8; 2 * BLOCK];
    let skip = buf.as_ptr().align_offset(BLOCK);
    let window = buf.get_mut(skip..skip + BLOCK).ok_or("no aligned buffer")?;
    f.read_at(window, at).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_found_by_their_log_uuid() {
        let table = "\
vg-data: 0 131072 mirror userspace 4 LVM-abc integrated_flush clustered-core 1024 2 253:1 0 253:2 0 1 handle_errors
vg-other: 0 131072 mirror userspace 3 LVM-xyz clustered-core 1024 2 253:3 0 253:4 0 1 handle_errors
vg-lin: 0 2048 linear 8:16 0
vg-two: 0 1024 mirror userspace 3 LVM-abc clustered-core 1024 2 253:5 0 253:6 0
vg-two: 1024 1024 mirror userspace 3 LVM-abc clustered-core 1024 2 253:5 0 253:6 0
broken line without a colon
vg-short: 0 8 mirror userspace
";
        assert_eq!(devices_using(table, "LVM-abc"), vec!["vg-data".to_owned(), "vg-two".to_owned()]);
        assert_eq!(devices_using(table, "LVM-xyz"), vec!["vg-other".to_owned()]);
        assert!(devices_using(table, "LVM-none").is_empty());
        assert!(devices_using("", "LVM-abc").is_empty());
    }

    #[test]
    fn a_kick_notice_carries_its_uuid_and_nothing_else_parses_as_one() {
        let uuid = Uuid::new("LVM-kick").unwrap_or_else(|| unreachable!());
        assert_eq!(parse_kick_notice(&kick_notice(&uuid)), Some(uuid));
        assert_eq!(parse_kick_notice(b"dmlogd-kick"), None);
        assert_eq!(parse_kick_notice(&[0u8; 40]), None);
    }
}
