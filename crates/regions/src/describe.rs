//! One canonical text rendering of a log, used by tests, failure dumps and
//! the admin tools.
//!
//! The region map draws one character per region (or per group of regions
//! for large logs, showing the most urgent state in the group):
//!
//! | char | meaning |
//! |---|---|
//! | `.` | clean and in sync |
//! | `d` | in sync, dirty (not clean): marked, or waiting for its CLEAR |
//! | `1`–`9`, `+` | marked by that many instances (`+` for ten or more) |
//! | `x` | out of sync, waiting for resync |
//! | `R` | out of sync, being recovered |

use std::fmt::Write as _;

use crate::log::Log;

impl Log {
    /// The state character of region `r` (see the module table).
    pub fn region_char(&self, r: u64) -> char {
        let region = wire::Region(r);
        if self.assignments.values().any(|a| *a == region) {
            return 'R';
        }
        if !self.sync.get(r) {
            return 'x';
        }
        match self.marks.get(&region).map(|m| m.len()) {
            Some(n @ 1..=9) => char::from_digit(u32::try_from(n).unwrap_or(9), 10).unwrap_or('+'),
            Some(_) => '+',
            None if !self.clean.get(r) => 'd',
            None => '.',
        }
    }

    /// The region map, `width` characters per line, at most `max_chars`
    /// characters in all (regions are grouped when there are more).
    pub fn region_map(&self, width: usize, max_chars: u64) -> String {
        let n = self.region_count();
        let per_char = n.div_ceil(max_chars.max(1)).max(1);
        let rank = |c: char| match c {
            'R' => 5,
            'x' => 4,
            '1'..='9' | '+' => 3,
            'd' => 2,
            _ => 1,
        };
        let mut out = String::new();
        let mut col = 0;
        let mut start = 0;
        while start < n {
            let end = (start + per_char).min(n);
            let c = (start..end).map(|r| self.region_char(r)).max_by_key(|c| rank(*c)).unwrap_or('.');
            out.push(c);
            col += 1;
            if col == width.max(1) {
                out.push('\n');
                col = 0;
            }
            start = end;
        }
        if col != 0 {
            out.push('\n');
        }
        out
    }

    /// The full description: geometry, counts, instances, marks,
    /// assignments and the region map.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let a = self.args();
        let _ = writeln!(
            s,
            "log {} {} region_size={} regions={} in_sync={} dirty={} recovering={}",
            self.uuid(),
            a.log_type.name(),
            a.region_size,
            self.region_count(),
            self.sync_count(),
            self.region_count() - self.clean.count_ones(),
            self.assignments.len(),
        );
        for (i, st) in &self.instances {
            let _ = writeln!(s, "  instance {i} {}", st.phase.name());
        }
        for (r, who) in &self.marks {
            let names: Vec<String> = who.iter().map(|i| i.to_string()).collect();
            let _ = writeln!(s, "  mark {r} by {}", names.join(","));
        }
        for (i, r) in &self.assignments {
            let _ = writeln!(s, "  recovering {r} by {i}");
        }
        if !self.unsettled.is_empty() || !self.awaiting_resume.is_empty() {
            let _ = writeln!(
                s,
                "  after an eviction: unsettled {:?}, awaiting resume {:?} (suspended since {:?}), kicking {:?}, to kick {:?}",
                self.unsettled.iter().map(|r| r.0).collect::<Vec<_>>(),
                self.awaiting_resume.iter().map(|n| n.0).collect::<Vec<_>>(),
                self.suspended_since.iter().map(|n| n.0).collect::<Vec<_>>(),
                self.kicking.map(|n| n.0),
                self.kick_queue.iter().map(|n| n.0).collect::<Vec<_>>(),
            );
        }
        for (i, rs) in &self.halted_passes {
            let _ = writeln!(
                s,
                "  passed while recovery was halted: {:?} by {i}",
                rs.iter().map(|r| r.0).collect::<Vec<_>>()
            );
        }
        for (n, rs) in &self.behind_next_resume {
            let _ = writeln!(s, "  to unsettle at {n}'s next resume: {:?}", rs.iter().map(|r| r.0).collect::<Vec<_>>());
        }
        if !self.recovery_failed.is_empty() {
            let _ =
                writeln!(s, "  recovery failed: {:?}", self.recovery_failed.iter().map(|r| r.0).collect::<Vec<_>>());
        }
        s.push_str(&self.region_map(64, 4096));
        s
    }
}
