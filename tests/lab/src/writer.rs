//! `lab-writer`: the lab's write load, run inside a guest. One process
//! writes O_DIRECT blocks into a device for a given time, sequentially or
//! at random block offsets over the whole device, one write at a time, and
//! prints how many it wrote, how long that took and how long single writes
//! took (median, 99th percentile, and the longest with the moment it
//! started: a write stalled by a failover). One process for the whole run,
//! so that a process start per write (a shell loop of `dd`) does not hide
//! the cost of the log.
//!
//! Usage: `lab-writer [--record FILE] [--span BLOCKS] DEVICE seq|rand BLOCK_BYTES SECONDS [SLOT SLOTS]`
//! and `lab-writer check DEVICE BLOCK_BYTES FILE...`.
//! With `SLOT SLOTS`, only blocks `b` with `b % SLOTS == SLOT` are written,
//! so that writers on several nodes share regions but never a block (two
//! nodes writing one block at once may leave the legs different, rightly).
//! Prints: `writes N bytes B seconds S p50_ms X p99_ms Y max_ms Z max_at_s T`.
//!
//! Every block written starts with an 8-byte stamp that differs per write.
//! `--record FILE` keeps the last stamp of each block written (lines
//! `block stamp`; on a failed write, the ones acknowledged before it, without
//! the failed block); `check` reads those blocks back with O_DIRECT (through
//! the mirror, which picks the leg) and fails if any holds another stamp:
//! a read of data older than what was last written there. `--span BLOCKS`
//! keeps the writes within the device's first BLOCKS blocks.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `O_DIRECT` on x86-64 Linux.
const O_DIRECT: i32 = 0o40000;
/// Buffer alignment O_DIRECT needs (a page covers every logical block size).
const ALIGN: usize = 4096;

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lab-writer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "check") {
        return check(&args[1..]);
    }
    let (mut record, mut span) = (None, None);
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        if args.is_empty() {
            return Err(format!("{flag} needs a value"));
        }
        let value = args.remove(0);
        match flag.as_str() {
            "--record" => record = Some(value),
            "--span" => span = Some(value.parse::<u64>().map_err(|e| format!("--span {value:?}: {e}"))?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let usage = "usage: lab-writer [--record FILE] [--span BLOCKS] DEVICE seq|rand BLOCK_BYTES SECONDS [SLOT SLOTS]";
    let (device, pattern, block, seconds, slot, slots) = match &args[..] {
        [d, p, b, s] => (d, p, b, s, 0, 1),
        [d, p, b, s, slot, slots] => {
            let slot: u64 = slot.parse().map_err(|e| format!("slot {slot:?}: {e}"))?;
            let slots: u64 = slots.parse().map_err(|e| format!("slots {slots:?}: {e}"))?;
            if slot >= slots {
                return Err(format!("slot {slot} of {slots}: {usage}"));
            }
            (d, p, b, s, slot, slots)
        }
        _ => return Err(usage.into()),
    };
    let random = match pattern.as_str() {
        "seq" => false,
        "rand" => true,
        other => return Err(format!("pattern {other:?}: seq or rand")),
    };
    let block: usize = block.parse().map_err(|e| format!("block size {block:?}: {e}"))?;
    if block == 0 || !block.is_multiple_of(ALIGN) {
        return Err(format!("block size {block}: a positive multiple of {ALIGN}"));
    }
    let seconds: f64 = seconds.parse().map_err(|e| format!("seconds {seconds:?}: {e}"))?;
    let limit = Duration::try_from_secs_f64(seconds).map_err(|e| format!("seconds {seconds}: {e}"))?;
    let mut file =
        OpenOptions::new().write(true).custom_flags(O_DIRECT).open(device).map_err(|e| format!("{device}: {e}"))?;
    let size = file.seek(SeekFrom::End(0)).map_err(|e| format!("{device}: {e}"))?;
    // This writer's blocks are slot, slot + slots, slot + 2 slots, ...
    let blocks = (size / block as u64).min(span.unwrap_or(u64::MAX)).saturating_sub(slot) / slots;
    if blocks == 0 {
        return Err(format!("{device}: {size} bytes, too small for slot {slot} of {slots}"));
    }
    // An aligned buffer inside a larger one, filled with a pattern that
    // changes per write (the legs then hold data, not zeros).
    let mut backing = vec![0u8; block + ALIGN];
    let skip = backing.as_ptr().align_offset(ALIGN);
    let buf = backing.get_mut(skip..skip + block).ok_or("buffer alignment")?;
    let mut state = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    let started = Instant::now();
    let mut writes: u64 = 0;
    let mut took: Vec<Duration> = Vec::new();
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    let mut failed = None;
    let (mut longest, mut longest_at) = (Duration::ZERO, Duration::ZERO);
    while started.elapsed() < limit {
        // xorshift64: offsets and contents, no dependency needed.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let index = (if random { state % blocks } else { writes % blocks }) * slots + slot;
        buf[..8].copy_from_slice(&state.to_le_bytes());
        let at = started.elapsed();
        if let Err(e) = file.write_all_at(buf, index * block as u64) {
            // What the block holds now is either stamp: it is not checked.
            last.remove(&index);
            failed = Some(format!("{device}: write {writes}: {e}"));
            break;
        }
        let one = started.elapsed().saturating_sub(at);
        if one > longest {
            (longest, longest_at) = (one, at);
        }
        took.push(one);
        if record.is_some() {
            last.insert(index, state);
        }
        writes += 1;
    }
    if let Some(path) = &record {
        let text: String = last.iter().map(|(b, s)| format!("{b} {s}\n")).collect();
        std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
    }
    // The record holds the writes acknowledged before a failure.
    if let Some(why) = failed {
        return Err(why);
    }
    let elapsed = started.elapsed().as_secs_f64();
    took.sort_unstable();
    let ms = |q: f64| {
        let i = ((took.len() as f64 - 1.0) * q).round() as usize;
        took.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(format!(
        "writes {writes} bytes {} seconds {elapsed:.3} p50_ms {:.3} p99_ms {:.3} max_ms {:.3} max_at_s {:.3}",
        writes * block as u64,
        ms(0.5),
        ms(0.99),
        longest.as_secs_f64() * 1000.0,
        longest_at.as_secs_f64()
    ))
}

/// `check DEVICE BLOCK_BYTES FILE...`: reads back every block the record
/// files name and compares its stamp with the one last written there.
fn check(args: &[String]) -> Result<String, String> {
    let [device, block, files @ ..] = args else {
        return Err("usage: lab-writer check DEVICE BLOCK_BYTES FILE...".into());
    };
    let block: usize = block.parse().map_err(|e| format!("block size {block:?}: {e}"))?;
    if block == 0 || !block.is_multiple_of(ALIGN) {
        return Err(format!("block size {block}: a positive multiple of {ALIGN}"));
    }
    let file =
        OpenOptions::new().read(true).custom_flags(O_DIRECT).open(device).map_err(|e| format!("{device}: {e}"))?;
    let mut backing = vec![0u8; block + ALIGN];
    let skip = backing.as_ptr().align_offset(ALIGN);
    let buf = backing.get_mut(skip..skip + block).ok_or("buffer alignment")?;
    let (mut checked, mut stale) = (0u64, Vec::new());
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        for line in text.lines() {
            let mut w = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(index)), Some(Ok(stamp))) = (w.next(), w.next()) else {
                return Err(format!("{path}: not a record line: {line:?}"));
            };
            file.read_exact_at(buf, index * block as u64).map_err(|e| format!("{device}: read block {index}: {e}"))?;
            let mut got = [0u8; 8];
            got.copy_from_slice(&buf[..8]);
            if u64::from_le_bytes(got) != stamp {
                stale.push(index);
            }
            checked += 1;
        }
    }
    if stale.is_empty() {
        Ok(format!("checked {checked} stale 0"))
    } else {
        Err(format!("checked {checked} stale {}: blocks {:?}", stale.len(), &stale[..stale.len().min(20)]))
    }
}
