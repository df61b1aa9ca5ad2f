//! Whether this node may answer its kernel now, and if not, why.
//!
//! The gate is closed while the node is fenced (its lease ran out and it
//! ran its fence action), after a fence action that failed (until an
//! operator restarts the daemon), and once the kernel transport died. It
//! is also closed, without anyone closing it, while the node's lease has
//! run out by its own clock ([`Lease::holds`]): a node woken from a pause
//! answers nothing before its liveness task notices and fences.
//!
//! The host checks the gate immediately before each reply's send system
//! call, with no wait in between ([`crate::host`]); the admin API, the
//! metrics and the `clustered-disk` writer read it too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::live::Lease;

/// Why the gate is closed, or that it is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Answering the kernel.
    Answering,
    /// Fenced: the lease ran out and the fence action ran; the node rejoins
    /// by itself once it reaches the cluster (unless it rebooted).
    Fenced,
    /// The fence action failed: the node answers nothing until an operator
    /// has stopped this host's writes and restarted the daemon.
    FenceFailed(String),
    /// The kernel transport died; the daemon fenced and is stopping.
    TransportFailed(String),
}

impl Standing {
    /// One line for `dmlogctl status`, the log and the OCF agent; empty
    /// while answering.
    pub fn describe(&self) -> String {
        match self {
            Standing::Answering => String::new(),
            Standing::Fenced => "fenced: its lease ran out; it answers no kernel requests until it rejoins".into(),
            Standing::FenceFailed(e) => format!(
                "fence failed ({e}): it answers no kernel requests; stop this host's writes (reset it), then restart dmlogd"
            ),
            Standing::TransportFailed(e) => format!("kernel transport failed ({e}): fenced and stopping"),
        }
    }
}

/// The quorum bound of the default timings: a 500 ms renewal interval
/// plus a 1.5 s election.
const DEFAULT_QUORUM_BOUND_MS: u64 = 2_000;
/// The default lease.
const DEFAULT_LEASE_MS: u64 = 8_000;

struct Inner {
    closed: AtomicBool,
    /// Times the gate was closed: an answer computed across a close is
    /// not sent (see [`Gate::epoch`]).
    epoch: AtomicU64,
    lease: Lease,
    standing: Mutex<Standing>,
    /// Longer than this without a quorum's word and the node is reported
    /// without quorum, in milliseconds.
    quorum_bound_ms: AtomicU64,
    lease_ms: AtomicU64,
}

/// Whether a quorum has confirmed this node recently: what `dmlogctl
/// status`, the OCF monitor and the `dmlogd_quorum` gauge report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    /// How long ago a quorum last confirmed the node; `None` if it has not
    /// joined since it started.
    pub age: Option<std::time::Duration>,
    /// The bound `age` is held to.
    pub bound: std::time::Duration,
    /// The node's lease: without a quorum's word for this long it must
    /// have fenced.
    pub lease: std::time::Duration,
}

impl Quorum {
    /// Confirmed within the bound.
    pub fn holds(&self) -> bool {
        self.age.is_some_and(|a| a <= self.bound)
    }

    /// No quorum's word for a whole lease (after having joined): the node
    /// is of no use to its kernel, whether or not its fence ran.
    pub fn lost(&self) -> bool {
        self.age.is_some_and(|a| a > self.lease)
    }
}

/// The gate of one node's answers to its kernel (cheap to clone).
#[derive(Clone)]
pub struct Gate(Arc<Inner>);

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gate({:?}, lease holds: {})", self.standing(), self.0.lease.holds())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gate {
    /// An open gate with a lease that holds until a liveness task starts it.
    pub fn new() -> Gate {
        Gate(Arc::new(Inner {
            closed: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            lease: Lease::new(),
            standing: Mutex::new(Standing::Answering),
            quorum_bound_ms: AtomicU64::new(DEFAULT_QUORUM_BOUND_MS),
            lease_ms: AtomicU64::new(DEFAULT_LEASE_MS),
        }))
    }

    /// Sets how long the node may go without a quorum's word before it is
    /// reported without quorum (`bound`: a renewal interval, as renewals
    /// are what a quorum confirms, plus the longest election, as a leader
    /// change stops every commit meanwhile) and the length of its lease.
    pub fn set_quorum_bound(&self, bound: std::time::Duration, lease: std::time::Duration) {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.quorum_bound_ms.store(ms(bound), Ordering::SeqCst);
        self.0.lease_ms.store(ms(lease), Ordering::SeqCst);
    }

    /// Whether a quorum confirmed the node within the bound.
    pub fn quorum(&self) -> Quorum {
        let ms = |a: &AtomicU64| std::time::Duration::from_millis(a.load(Ordering::SeqCst));
        Quorum { age: self.0.lease.quorum_age(), bound: ms(&self.0.quorum_bound_ms), lease: ms(&self.0.lease_ms) }
    }

    /// The node's lease (extended by the liveness task).
    pub fn lease(&self) -> &Lease {
        &self.0.lease
    }

    /// Whether a reply may leave now: not closed, and the lease holds.
    pub fn open(&self) -> bool {
        !self.0.closed.load(Ordering::SeqCst) && (self.0.lease.holds() || crate::breaks::off("no-lease-gate"))
    }

    /// How many times the gate was closed. A request whose answer was
    /// computed while the node fenced and rejoined (the epoch moved) is not
    /// answered: the answer may rest on the state before the rejoin (a
    /// refusal because the node was not a member then, an assignment the
    /// eviction released), and the kernel re-sends the request anyway.
    pub fn epoch(&self) -> u64 {
        self.0.epoch.load(Ordering::SeqCst)
    }

    /// Whether the node is fenced, whatever the lease says.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::SeqCst)
    }

    /// Closes the gate for `why`. A failed fence is never downgraded to a
    /// plain fence by a later close.
    pub fn close(&self, why: Standing) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.epoch.fetch_add(1, Ordering::SeqCst);
        let mut s = lock(&self.0.standing);
        if !matches!(*s, Standing::FenceFailed(_)) || matches!(why, Standing::FenceFailed(_)) {
            *s = why;
        }
    }

    /// Opens the gate again (the node rejoined). Refused, returning
    /// `false`, after a failed fence: that takes an operator.
    pub fn reopen(&self) -> bool {
        let mut s = lock(&self.0.standing);
        if matches!(*s, Standing::FenceFailed(_)) && !crate::breaks::off("no-failed-fence-hold") {
            return false;
        }
        *s = Standing::Answering;
        self.0.closed.store(false, Ordering::SeqCst);
        true
    }

    /// Why the gate is closed (or [`Standing::Answering`]).
    pub fn standing(&self) -> Standing {
        lock(&self.0.standing).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fence_stays_closed_until_an_operator_acts() {
        let g = Gate::new();
        assert!(g.open());
        let before = g.epoch();
        g.close(Standing::Fenced);
        assert!(!g.open());
        assert!(g.reopen(), "a plain fence reopens at the rejoin");
        assert_ne!(g.epoch(), before, "a fence and rejoin moved the epoch");
        g.close(Standing::FenceFailed("no sysrq".into()));
        g.close(Standing::Fenced);
        assert_eq!(g.standing(), Standing::FenceFailed("no sysrq".into()), "not downgraded");
        assert!(!g.reopen());
        assert!(!g.open());
        assert!(g.standing().describe().contains("restart dmlogd"));
    }

    #[test]
    fn quorum_is_reported_only_within_the_bound_after_a_confirmation() {
        let g = Gate::new();
        assert!(!g.quorum().holds(), "not joined yet: no quorum");
        g.lease().grant(std::time::Duration::from_secs(8));
        assert!(g.quorum().holds());
        assert!(!g.quorum().lost());
        g.set_quorum_bound(std::time::Duration::ZERO, std::time::Duration::from_secs(8));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let q = g.quorum();
        assert!(!q.holds() && q.age.is_some() && !q.lost(), "{q:?}");
        g.set_quorum_bound(std::time::Duration::ZERO, std::time::Duration::ZERO);
        assert!(g.quorum().lost());
    }
}
