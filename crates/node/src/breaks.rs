//! Safety mechanisms a simulation may switch off, to show that the test
//! aimed at each one fails without it (`DMLOGD_SIM_BREAK=name,name`).
//!
//! Compiled in only with the `fault-injection` feature, which the
//! simulation's crate turns on; in a build without it every mechanism is
//! always on and [`off`] is a constant `false`.
//!
//! | name | what is switched off |
//! |---|---|
//! | `no-lease-gate` | the lease: replies go out while it has run out |
//! | `no-send-gate` | the gate check at the send: only the lane's check remains |
//! | `no-kick` | kicks of this node's kernel after an eviction |
//! | `no-remark` | the re-marks of a rejoin |
//! | `no-stale-hints` | the stale-hints notice of a rejoin |
//! | `no-transport-watch` | fencing and stopping when the kernel transport dies |
//! | `no-failed-fence-hold` | staying fenced after a failed fence action |
//! | `no-journal` | the local journal of what the kernel holds |
//! | `no-sync-read-wait` | a read of a region whose SET_REGION_SYNC was acknowledged ahead of its commit does not wait for that commit |
//! | `no-failure-barrier` | waiting, before a failed leg write is answered, for the other nodes that mark its region to apply it |
//! | `plant-late-clear` | (a planted bug) a deferred CLEAR is committed after a later MARK of its region instead of being cancelled |
//! | `plant-early-mark-ack` | (a planted bug) a MARK of a region not held is acknowledged before its commit |
//! | `plant-long-lease` | (a planted bug) a leader's read lease lasts four upper election timeouts instead of half the lower one |
//! | `no-inline` | answering a request in the receive task while its lane is idle (a speed mechanism: switched off, every request goes through its lane and the send queue) |
//! | `no-prefetch` | marking the next regions of a sequential writer in the background before it reaches them (a speed mechanism: switched off, it marks them with its first MARK there, waiting one round) |
//! | `plant-stale-prefetch` | (a planted bug) regions marked in the background are held once their entry commits even if the lane proposed a CLEAR of them meanwhile |
//! | `no-mark-ahead` | marking ahead of a sequential writer (a speed mechanism: switched off, only the figures change) |
//! | `no-stale-drop` | the proposer dropping commands made before the node last fenced (instead of proposing them after its rejoin) |
//! | `plant-ahead-unmarked` | (a planted bug) regions marked ahead of a sequential writer are counted held but left out of the committed entry |
//! | `plant-unheld-cancel` | (a planted bug) a MARK of a region whose CLEAR is deferred is acknowledged at once even when its mark was never committed |

/// Whether the mechanism `name` is switched off: the one reader of
/// `DMLOGD_SIM_BREAK`, shared with the region machine's own switches (the
/// `fault-injection` feature turns on the machine's too).
pub use regions::breaks::off;
