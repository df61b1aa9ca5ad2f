//! A reader for `tests/fixtures/kernel-6.1-trace.txt`, a request/reply trace
//! recorded from the Debian 6.1 kernel: one request and the reply it got
//! per line, grouped by the `### phase` markers.
//!
//! Line format (from the file's header):
//! `<time> seq=<n> <TYPE> luid=<hex> uuid=<s> ds=<n> <payload> -> err=<e> rs=<n> <reply>`

use std::path::PathBuf;

use wire::{Luid, Region, Request, RequestType, Seq, Uuid};

/// One recorded request and its recorded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Phase letter (`A`..`E`).
    pub phase: char,
    /// Guest monotonic time, microseconds.
    pub at_us: u64,
    /// Kernel seq.
    pub seq: Seq,
    /// Log instance.
    pub luid: Luid,
    /// Log uuid.
    pub uuid: Uuid,
    /// The request, payload included.
    pub request: Request,
    /// Recorded payload size.
    pub data_size: usize,
    /// Recorded reply error.
    pub error: i32,
    /// Recorded reply size.
    pub reply_size: usize,
    /// The reply's words after `rs=`, as recorded.
    pub reply: String,
}

/// Where the fixture lives: in this crate's `fixtures/`.
pub fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel-6.1-trace.txt")
}

/// Reads and parses the fixture.
pub fn load() -> Result<Vec<Entry>, String> {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text)
}

/// Parses trace text.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut phase = '?';
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("### phase ") {
            phase = rest.chars().next().unwrap_or('?');
            continue;
        }
        if line.starts_with('#') || !line.contains(" seq=") {
            continue;
        }
        out.push(parse_line(phase, line).map_err(|e| format!("line {}: {e}: {line}", n + 1))?);
    }
    Ok(out)
}

fn field<'a>(words: &[&'a str], key: &str) -> Result<&'a str, String> {
    words.iter().find_map(|w| w.strip_prefix(key)).ok_or_else(|| format!("no {key}"))
}

fn num(s: &str) -> Result<u64, String> {
    s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"))
}

fn parse_line(phase: char, line: &str) -> Result<Entry, String> {
    let (req, rep) = line.split_once(" -> ").ok_or("no ->")?;
    let words: Vec<&str> = req.split_whitespace().collect();
    let [time, seq, ty, ..] = words.as_slice() else { return Err("short line".into()) };
    let (secs, micros) = time.split_once('.').ok_or("time")?;
    let at_us = num(secs)? * 1_000_000 + num(micros)?;
    let seq = Seq(u32::try_from(num(seq.strip_prefix("seq=").ok_or("seq")?)?).map_err(|e| e.to_string())?);
    let rt = RequestType::from_name(ty).ok_or_else(|| format!("type {ty}"))?;
    let luid = Luid(u64::from_str_radix(field(&words, "luid=")?, 16).map_err(|e| e.to_string())?);
    let uuid = Uuid::new(field(&words, "uuid=")?).ok_or("uuid")?;
    let data_size = usize::try_from(num(field(&words, "ds=")?)?).map_err(|e| e.to_string())?;
    let region = || field(&words, "region=").and_then(num).map(Region);
    let request = match rt {
        RequestType::Ctr => {
            let q = req.split_once('"').and_then(|(_, r)| r.rsplit_once('"')).map(|(a, _)| a).ok_or("ctr args")?;
            Request::Ctr { args: q.to_owned(), reconnect: data_size == q.len() + 1 }
        }
        RequestType::Dtr => Request::Dtr,
        RequestType::Presuspend => Request::Presuspend,
        RequestType::Postsuspend => Request::Postsuspend,
        RequestType::Resume => Request::Resume,
        RequestType::GetRegionSize => Request::GetRegionSize,
        RequestType::IsClean => Request::IsClean(region()?),
        RequestType::InSync => Request::InSync(region()?),
        RequestType::IsRemoteRecovering => Request::IsRemoteRecovering(region()?),
        RequestType::GetResyncWork => Request::GetResyncWork,
        RequestType::GetSyncCount => Request::GetSyncCount,
        RequestType::StatusInfo => Request::StatusInfo,
        RequestType::StatusTable => Request::StatusTable,
        RequestType::SetRegionSync => {
            Request::SetRegionSync { region: region()?, in_sync: field(&words, "in_sync=")? == "1" }
        }
        RequestType::Flush | RequestType::MarkRegion | RequestType::ClearRegion => {
            let regions: Vec<Region> = match field(&words, "regions=") {
                Ok(list) => list
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| num(s).map(Region))
                    .collect::<Result<_, _>>()?,
                Err(_) => Vec::new(),
            };
            match rt {
                RequestType::Flush => Request::Flush { marks: regions },
                RequestType::MarkRegion => Request::MarkRegion(regions),
                _ => Request::ClearRegion(regions),
            }
        }
    };
    let rep_words: Vec<&str> = rep.split_whitespace().collect();
    let error = field(&rep_words, "err=")?.parse::<i32>().map_err(|e| e.to_string())?;
    let reply_size = usize::try_from(num(field(&rep_words, "rs=")?)?).map_err(|e| e.to_string())?;
    let reply = rep.split_once(&format!("rs={reply_size}")).map(|(_, r)| r.trim().to_owned()).unwrap_or_default();
    Ok(Entry { phase, at_us, seq, luid, uuid, request, data_size, error, reply_size, reply })
}

impl Entry {
    /// The recorded reply's `key=value` word.
    pub fn reply_field(&self, key: &str) -> Option<u64> {
        self.reply.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok())
    }

    /// The recorded reply as one number (GET_REGION_SIZE, GET_SYNC_COUNT, IN_SYNC).
    pub fn reply_number(&self) -> Option<u64> {
        self.reply.split_whitespace().next().and_then(|v| v.parse().ok())
    }
}
