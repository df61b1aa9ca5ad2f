//! The constructor string: what a CTR request says about the log (spec §4).
//!
//! The kernel sends `"<target length> <log args...>"`, e.g.
//! `"2097152 clustered-disk 253:3 1024 nosync"`. dmlogd follows cmirrord's
//! rules where they are sane and fixes them where they are not:
//!
//! * the type word decides core vs disk (cmirrord guesses from whether
//!   token 2 is a number);
//! * the region size must be a power of two, at least 2 sectors and at most
//!   the target length, as the kernel's own logs require; cmirrord only
//!   checks non-zero, and a non-power of two silently corrupts the kernel's
//!   region mapping (I13);
//! * an unknown option, or both `sync` and `nosync`, is an error instead of
//!   being ignored;
//! * the log device may be any block device, as `major:minor` or a path.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_REGION_COUNT, MIN_REGION_SIZE};

/// Where the log's clean bits live between activations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogType {
    /// `clustered-core`: only in the replicated state.
    Core,
    /// `clustered-disk`: also on a log device in the dm disk-log layout.
    Disk {
        /// The device token as given in the table (`major:minor` or a path);
        /// echoed to the kernel in the CTR reply.
        device: String,
    },
}

impl LogType {
    /// The type word of the table.
    pub fn name(&self) -> &'static str {
        match self {
            LogType::Core => "clustered-core",
            LogType::Disk { .. } => "clustered-disk",
        }
    }
}

/// The table's resync option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMode {
    /// Neither word: a new log starts out of sync (full resync).
    Default,
    /// `sync`: force a full resync of a new log.
    Sync,
    /// `nosync`: a new log starts in sync (the admin vouches the legs are equal).
    NoSync,
}

/// A parsed constructor string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtrArgs {
    /// The mirror target length in sectors.
    pub target_sectors: u64,
    /// Core or disk.
    pub log_type: LogType,
    /// Region size in sectors: a power of two, ≥ 2, ≤ the target length.
    pub region_size: u64,
    /// Resync option.
    pub sync: SyncMode,
    /// `block_on_error` (only echoed in STATUS_TABLE).
    pub block_on_error: bool,
}

/// Why a constructor string was refused. Answered with `-EINVAL`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtrError {
    /// Too few or too many words.
    #[error("{0}")]
    Arity(&'static str),
    /// The target length is not a positive decimal number.
    #[error("target length {0:?} is not a positive number")]
    TargetLength(String),
    /// Not `clustered-core` or `clustered-disk`.
    #[error("unsupported log type {0:?} (clustered-core or clustered-disk)")]
    LogType(String),
    /// The region size is not a usable number.
    #[error("region size {0:?} must be a power of two of at least 2 sectors, at most the target length")]
    RegionSize(String),
    /// More regions than dmlogd keeps.
    #[error("{count} regions exceed the limit of {max}; use a larger region size")]
    TooManyRegions {
        /// Regions the table asks for.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// An option dmlogd does not know.
    #[error("unknown option {0:?} (sync, nosync, block_on_error)")]
    Option(String),
    /// `sync` and `nosync` together.
    #[error("both sync and nosync given")]
    SyncConflict,
}

impl CtrArgs {
    /// Parses the payload of a CTR request.
    pub fn parse(s: &str) -> Result<CtrArgs, CtrError> {
        let words: Vec<&str> = s.split_ascii_whitespace().collect();
        let [len, kind, rest @ ..] = words.as_slice() else {
            return Err(CtrError::Arity("expected \"<length> <log type> <args>\""));
        };
        let target_sectors =
            len.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| CtrError::TargetLength((*len).to_owned()))?;
        let (log_type, size_word, options) = match *kind {
            "clustered-core" => match rest {
                [size, opts @ ..] if opts.len() <= 2 => (LogType::Core, *size, opts),
                _ => return Err(CtrError::Arity("clustered-core takes 1 to 3 arguments")),
            },
            "clustered-disk" => match rest {
                [dev, size, opts @ ..] if opts.len() <= 2 => (LogType::Disk { device: (*dev).to_owned() }, *size, opts),
                _ => return Err(CtrError::Arity("clustered-disk takes 2 to 4 arguments")),
            },
            other => return Err(CtrError::LogType(other.to_owned())),
        };
        let region_size = size_word
            .parse::<u64>()
            .ok()
            .filter(|&n| n.is_power_of_two() && n >= MIN_REGION_SIZE && n <= target_sectors)
            .ok_or_else(|| CtrError::RegionSize(size_word.to_owned()))?;
        let mut sync = SyncMode::Default;
        let mut block_on_error = false;
        for opt in options {
            let next = match *opt {
                "sync" => SyncMode::Sync,
                "nosync" => SyncMode::NoSync,
                "block_on_error" => {
                    block_on_error = true;
                    continue;
                }
                other => return Err(CtrError::Option(other.to_owned())),
            };
            if sync != SyncMode::Default && sync != next {
                return Err(CtrError::SyncConflict);
            }
            sync = next;
        }
        let args = CtrArgs { target_sectors, log_type, region_size, sync, block_on_error };
        let count = args.region_count();
        if count > MAX_REGION_COUNT {
            return Err(CtrError::TooManyRegions { count, max: MAX_REGION_COUNT });
        }
        Ok(args)
    }

    /// `ceil(target / region_size)`.
    pub fn region_count(&self) -> u64 {
        self.target_sectors.div_ceil(self.region_size)
    }

    /// Whether two instances describe the same log geometry (region size and
    /// count, and core vs disk): every node must see the same regions.
    pub fn same_geometry(&self, other: &CtrArgs) -> bool {
        self.region_size == other.region_size
            && self.region_count() == other.region_count()
            && self.log_type.name() == other.log_type.name()
    }

    /// STATUS_TABLE text: the log arguments after the length, each followed
    /// by a space, as cmirrord prints them (spec §4.6).
    pub fn status_table(&self) -> String {
        let mut s = format!("{} ", self.log_type.name());
        if let LogType::Disk { device } = &self.log_type {
            s.push_str(device);
            s.push(' ');
        }
        s.push_str(&format!("{} ", self.region_size));
        match self.sync {
            SyncMode::Default => {}
            SyncMode::Sync => s.push_str("sync "),
            SyncMode::NoSync => s.push_str("nosync "),
        }
        if self.block_on_error {
            s.push_str("block_on_error ");
        }
        s
    }
}

impl fmt::Display for CtrArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.target_sectors, self.status_table().trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvm_forms_parse() {
        let a = CtrArgs::parse("2097152 clustered-core 1024").unwrap();
        assert_eq!(
            (a.log_type.clone(), a.region_size, a.sync, a.region_count()),
            (LogType::Core, 1024, SyncMode::Default, 2048)
        );
        let a = CtrArgs::parse("2097152 clustered-disk 253:3 1024 sync").unwrap();
        assert_eq!(a.log_type, LogType::Disk { device: "253:3".into() });
        assert_eq!(a.sync, SyncMode::Sync);
        let a = CtrArgs::parse("32768 clustered-core 1024 nosync block_on_error").unwrap();
        assert_eq!((a.sync, a.block_on_error), (SyncMode::NoSync, true));
        assert_eq!(a.status_table(), "clustered-core 1024 nosync block_on_error ");
        assert_eq!(CtrArgs::parse("131072 clustered-core 1000 ").map(|_| ()), Err(CtrError::RegionSize("1000".into())));
    }

    #[test]
    fn region_count_rounds_up() {
        assert_eq!(CtrArgs::parse("1025 clustered-core 1024").unwrap().region_count(), 2);
    }

    #[test]
    fn bad_strings_are_refused_with_a_reason() {
        for (s, want) in [
            ("", "Arity"),
            ("0 clustered-core 1024", "TargetLength"),
            ("x clustered-core 1024", "TargetLength"),
            ("100 core 2", "LogType"),
            ("100 clustered-core", "Arity"),
            ("100 clustered-core 0", "RegionSize"),
            ("100 clustered-core 1", "RegionSize"),
            ("100 clustered-core 3", "RegionSize"),
            ("100 clustered-core 128", "RegionSize"),
            ("100 clustered-core 2 fast", "Option"),
            ("100 clustered-core 2 sync nosync", "SyncConflict"),
            ("100 clustered-core 2 sync nosync block_on_error", "Arity"),
            ("100 clustered-disk 2", "Arity"),
            ("18446744073709551615 clustered-core 2", "TooManyRegions"),
        ] {
            let err = CtrArgs::parse(s).expect_err(s);
            assert!(format!("{err:?}").starts_with(want), "{s:?}: {err:?}");
        }
    }
}
