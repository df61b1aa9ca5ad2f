//! Rate limits for log lines that an outsider can make repeat at will (a
//! flood of datagrams from a process that is not the kernel, malformed
//! requests): the first is logged at once, then at most one line per
//! interval, which says how many were dropped meanwhile.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One rate-limited kind of log line.
#[derive(Debug)]
pub struct Quiet {
    every: Duration,
    /// When a line was last let through, and the events since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Quiet {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Quiet {
        Quiet { every, state: Mutex::new((None, 0)) }
    }

    /// An event happened. `Some(n)`: log a line now, covering `n` events
    /// (this one and those held back since the last line); `None`: held
    /// back.
    pub fn hit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 += 1;
        if s.0.is_none_or(|last| now.duration_since(last) >= self.every) {
            let n = s.1;
            *s = (Some(now), 0);
            Some(n)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_passes_then_one_per_interval_with_the_count() {
        let q = Quiet::new(Duration::from_secs(3600));
        assert_eq!(q.hit(), Some(1));
        for _ in 0..999 {
            assert_eq!(q.hit(), None);
        }
        let open = Quiet::new(Duration::ZERO);
        assert_eq!(open.hit(), Some(1));
        assert_eq!(open.hit(), Some(1));
    }
}
