//! Safety mechanisms of the machine a simulation may switch off, to show
//! that the test aimed at each one fails without it
//! (`DMLOGD_SIM_BREAK=name,name`). [`off`] is also what `node::breaks`
//! reads the node's own switches with.
//!
//! Compiled in only with the `fault-injection` feature, which the
//! simulation turns on; in any other build [`off`] is a constant `false`
//! and the machine stays a pure function of its commands.
//!
//! | name | what is switched off |
//! |---|---|
//! | `no-claim-release` | releasing resync claims: of an instance that suspends, is destroyed or evicted, and of regions that an eviction or a stale-hints rejoin makes unsafe to copy |
//! | `no-evicted-marks` | a stale-hints rejoin counting the regions its node's eviction put out of sync that it does not mark again (deferred CLEARs) |
//! | `no-pass-hint` | the in-sync hint of a presuspended kernel skipping the regions only it may copy (its halted passes) |
//! | `no-session` | refusing a node's kernel commands and renewals made before its last join (an older session than its membership's) |

/// Whether the mechanism `name` is switched off.
#[cfg(feature = "fault-injection")]
pub fn off(name: &str) -> bool {
    static BROKEN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    BROKEN
        .get_or_init(|| {
            std::env::var("DMLOGD_SIM_BREAK").map(|v| v.split(',').map(str::to_owned).collect()).unwrap_or_default()
        })
        .iter()
        .any(|f| f == name)
}

/// Whether the mechanism `name` is switched off: never, in this build.
#[cfg(not(feature = "fault-injection"))]
pub fn off(_name: &str) -> bool {
    false
}
