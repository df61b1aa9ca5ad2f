//! `kernel-sim`: the Linux 6.1 kernel side of a userspace-logged mirror, for
//! one node, in simulation.
//!
//! It models what `dm-raid1` and `dm-log-userspace` send and when (spec §3,
//! §8): create (CTR, GET_REGION_SIZE, a first kmirrord pass before RESUME),
//! the resync loop (GET_RESYNC_WORK, the region's IN_SYNC, GET_SYNC_COUNT,
//! then SET_REGION_SYNC + CLEAR + FLUSH), writes (IS_REMOTE_RECOVERING with
//! its host-wide 250 ms throttle, IN_SYNC twice for a cold region, MARK +
//! FLUSH or an integrated FLUSH carrying the marks, CLEAR later, the 3 s
//! delayed FLUSH), batches of at most 32 regions, the `in_sync_hint` cache
//! reset only at RESUME, suspend/resume/remove, 15 s timeouts re-sent under a
//! new seq, `-EAGAIN` re-sends, and a daemon that is not there: `-ESRCH`
//! for the constructor and suspend calls, the reconnect loop (CTR with the
//! saved arguments, RESUME, the request again) for the rest
//! ([`Kernel::unheard`]). It checks every reply as the kernel
//! would (exact `data_size`, capacity, 0/1 answers) and records violations.
//!
//! It also models the data legs ([`Legs`]): which regions were written on
//! which leg, what a resync copies, what a crash leaves half written, so a
//! test can tell whether a region whose legs differ is ever reported in sync.
//!
//! The simulator is sans-IO: requests come out of [`Kernel::take_requests`]
//! as datagrams, replies go in through [`Kernel::deliver`], and time moves
//! only through [`Kernel::advance_to`]. [`drive`] runs one kernel against a
//! synchronous handler until it is idle.

mod kernel;
mod legs;
mod mirror;

pub use kernel::{
    Config, DELAYED_FLUSH_MS, Kernel, MirrorId, MirrorView, RECONNECT_SLEEP_MS, REMOTE_RECOVERING_THROTTLE_MS,
    REQUEUE_DELAY_MS, RETRY_TIMEOUT_MS, Stats, Violation,
};
pub use legs::{Legs, SharedLegs};
pub use mirror::{Life, Table};

/// A synchronous daemon stand-in: simulated time and one request datagram
/// in, one reply datagram out (or `None` for no reply).
pub type Handler<'a> = dyn FnMut(u64, &[u8]) -> Option<Vec<u8>> + 'a;

/// Runs `kernel` against a synchronous `handler` (the simulated time and one
/// request datagram in, one reply datagram out, or `None` for no reply)
/// until it is idle or simulated time passes `until_ms`. Replies are
/// delivered at once. Returns the simulated time reached.
pub fn drive(kernel: &mut Kernel, handler: &mut Handler<'_>, until_ms: u64) -> u64 {
    loop {
        let requests = kernel.take_requests();
        if !requests.is_empty() {
            for r in requests {
                if let Some(reply) = handler(kernel.now_ms(), &r) {
                    kernel.deliver(&reply);
                }
            }
            continue;
        }
        match kernel.next_event_ms() {
            Some(t) if t <= until_ms => kernel.advance_to(t),
            _ => return kernel.now_ms(),
        }
    }
}
