//! `node`: what runs on one dmlogd host around the replicated region
//! machine.
//!
//! * [`liveness`]: leases, eviction of dead nodes and self-fencing, as pure
//!   state machines with time as an input; the timing inequality that
//!   makes fencing safe is checked by [`liveness::Timing::validate`].

#![deny(missing_docs)]

pub mod liveness;
