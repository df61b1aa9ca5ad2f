//! `dmlogd-demo`: three real daemons on loopback, each with a simulated
//! kernel writing to one shared mirror; the leader's host crashes
//! mid-write, then a follower's; the cluster fails over, evicts each,
//! resyncs what they left half written, and takes them back when they
//! boot again. Every step is checked, and the run ends with a verdict:
//! every invariant held, every kernel reports the mirror in sync, the two
//! legs are identical, and no acknowledged mark was lost.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::harness::{Harness, percentiles};
use crate::{wait_for, wait_progress};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The executable to start the nodes with, and the arguments that make
    /// it run `dmlogd` (the demo binary itself, with `daemon`).
    pub exe: PathBuf,
    /// See `exe`.
    pub exe_args: Vec<String>,
    /// Working directory (a temporary one when `None`); kept on failure.
    pub dir: Option<PathBuf>,
    /// Regions of the mirror.
    pub regions: u64,
    /// Seconds of writes between the steps.
    pub write_secs: u64,
    /// Print the live table (otherwise one line per step).
    pub live: bool,
    /// Seed of the write pattern.
    pub seed: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// (step, seconds it took).
    pub steps: Vec<(String, f64)>,
    /// Writes issued by the kernels.
    pub writes: u64,
    /// Kicks delivered to kernels after evictions.
    pub kicks: u64,
    /// Acknowledged marks checked against the replicated state.
    pub marks_checked: usize,
    /// (request type, count, p50 ms, p99 ms).
    pub latency: Vec<(String, usize, f64, f64)>,
}

const WRITES_PER_TICK: usize = 2;

/// A wait fails when what is left to do has not gone down for this long;
/// there is no fixed limit, so a slow machine (a debug build, a loaded CI
/// runner) passes what a fast one passes.
const STALL: Duration = Duration::from_secs(60);

/// Runs the demo; `Err` names the first check that failed. The working
/// directory (daemon logs, data) is kept and named on failure.
pub async fn run(opts: Options) -> Result<Report, String> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("dmlogd-demo-").tempdir().map_err(|e| e.to_string())?;
            tmp.path().to_owned()
        }
    };
    let args: Vec<&str> = opts.exe_args.iter().map(String::as_str).collect();
    let mut h = Harness::new(&opts.exe, &dir, 3, opts.regions, opts.seed)?.daemon_args(&args);
    let mut d = Display::new(opts.live);
    let result = scenario(&mut h, &opts, &mut d).await;
    if result.is_err() {
        let text = diagnosis(&h).await;
        let _ = std::fs::write(dir.join("diagnosis.txt"), text);
    }
    h.stop_all();
    match result {
        Ok(mut report) => {
            report.writes = h.writes;
            report.kicks = h.kicks;
            for (name, samples) in &h.latency {
                let (p50, p99) = percentiles(samples);
                report.latency.push(((*name).to_owned(), samples.len(), p50, p99));
            }
            Ok(report)
        }
        Err(e) => {
            // Keep the evidence.
            let kept = dir.with_file_name(format!(
                "{}-failed",
                dir.file_name().map_or_else(|| "dmlogd-demo".into(), |n| n.to_string_lossy().into_owned())
            ));
            let where_ = if opts.dir.is_none() && std::fs::rename(&dir, &kept).is_ok() { kept } else { dir.clone() };
            Err(format!("{e} (daemon logs and data kept in {})", where_.display()))
        }
    }
}

async fn scenario(h: &mut Harness, opts: &Options, d: &mut Display) -> Result<Report, String> {
    let mut report = Report::default();
    let writes = Duration::from_secs(opts.write_secs);
    let n = h.regions();

    d.step(h, "starting three dmlogd processes").await;
    for id in h.ids() {
        h.boot(id).await?;
    }
    let t = wait_for!(h, Duration::from_secs(30), 0, "a leader", h.leader().await.is_some())?;
    report.steps.push(("elect a leader".into(), t.as_secs_f64()));

    d.step(h, "initial resync of the new mirror (its legs start different)").await;
    let t = wait_progress!(h, STALL, 0, "initial resync", {
        h.ask_status();
        d.show(h).await;
        not_in_sync(h, 3, n)
    })?;
    report.steps.push(("initial resync".into(), t.as_secs_f64()));

    d.step(h, "all three kernels write to overlapping regions").await;
    live_for(h, d, writes).await;

    for victim in ["leader", "follower"] {
        let leader = h.leader().await.ok_or("no leader before the crash")?;
        let id = if victim == "leader" {
            leader
        } else {
            h.running().into_iter().find(|&i| i != leader).ok_or("no follower")?
        };
        d.step(h, &format!("node {id} ({victim}) crashes mid-write: kill -9, kernel gone")).await;
        // Crash while it has writes in flight on the legs: that is the
        // point of the demo, so it waits for such a moment.
        wait_for!(h, Duration::from_secs(60), WRITES_PER_TICK, format!("node {id} with writes in flight"), {
            h.kernels().iter().any(|k| k.node == id && !k.inflight.is_empty())
        })?;
        let inflight = h.kernels().iter().find(|k| k.node == id).map_or(0, |k| k.inflight.len());
        // Every write in flight went out after its FLUSH was answered: the
        // leader has applied its mark (the kernels stand still meanwhile).
        report.marks_checked += h.check_marks(leader).await?;
        h.crash(id);
        let t = wait_for!(h, Duration::from_secs(30), WRITES_PER_TICK, "failover", {
            d.show(h).await;
            h.leader().await.is_some_and(|l| l != id)
        })?;
        report.steps.push((format!("{victim} crash ({inflight} writes in flight): leader known"), t.as_secs_f64()));
        let survivor = h.leader().await.filter(|&l| l != id).ok_or("no leader after failover")?;
        d.step(h, &format!("node {id}'s lease runs out; the leader evicts it")).await;
        let t = wait_for!(h, Duration::from_secs(30), WRITES_PER_TICK, "eviction", {
            d.show(h).await;
            h.status(survivor).await.is_ok_and(|s| s.kernels.iter().all(|k| k.id != id))
        })?;
        report.steps.push((format!("{victim} crash: evicted"), t.as_secs_f64()));
        report.marks_checked += h.check_marks(survivor).await?;

        d.step(h, "survivors resync what it left half written").await;
        let t = wait_progress!(h, STALL, WRITES_PER_TICK, "resync after the crash", {
            d.show(h).await;
            h.legs.lock().abandoned().len() as u64
        })?;
        report.steps.push((format!("{victim} crash: its regions resynced"), t.as_secs_f64()));
        report.marks_checked += h.check_marks(survivor).await?;

        d.step(h, &format!("node {id} boots again and rejoins")).await;
        h.boot(id).await?;
        let t = wait_for!(h, Duration::from_secs(60), WRITES_PER_TICK, "rejoin", {
            d.show(h).await;
            let joined = h.status(survivor).await.is_ok_and(|s| s.kernels.iter().any(|k| k.id == id));
            joined && h.status(id).await.is_ok_and(|s| s.leader != 0)
        })?;
        report.steps.push((format!("{victim} crash: rejoined"), t.as_secs_f64()));
        live_for(h, d, writes).await;
        let leader = h.leader().await.ok_or("no leader")?;
        report.marks_checked += h.check_marks(leader).await?;
    }

    d.step(h, "writes stop; every kernel must report the mirror in sync").await;
    // Every kernel idle (its queued writes drained, which may take a while:
    // see docs/operations.md), then a fresh status from each, until all
    // of them report the mirror in sync.
    let mut asked = false;
    let t = wait_progress!(h, STALL, 0, "quiesce and sync", {
        d.show(h).await;
        let kernels = h.kernels();
        let busy: u64 = kernels.iter().map(|k| k.queued as u64 + k.inflight.len() as u64 + u64::from(!k.idle)).sum();
        let idle = busy == 0;
        if idle && !(asked && not_in_sync(h, 3, n) == 0) {
            h.ask_status();
            asked = true;
        }
        if idle && asked { not_in_sync(h, 3, n) } else { busy + n * 3 }
    })?;
    report.steps.push(("quiesce: all in sync".into(), t.as_secs_f64()));
    verify(h).await?;
    d.step(h, "verified").await;
    Ok(report)
}

/// What every node and kernel looked like when a check failed.
async fn diagnosis(h: &Harness) -> String {
    let mut s = String::new();
    for k in h.kernels() {
        s.push_str(&format!("{k:?}\n"));
    }
    let (differing, abandoned) = {
        let legs = h.legs.lock();
        (legs.differing(), legs.abandoned())
    };
    s.push_str(&format!("legs differ in {differing:?}; abandoned {abandoned:?}\n"));
    for id in h.running() {
        match (h.status(id).await, h.log(id).await) {
            (Ok(st), Ok(log)) => {
                s.push_str(&dmlogd::ctl::status_text(&st));
                s.push_str(&dmlogd::ctl::log_text(&log));
            }
            (a, b) => s.push_str(&format!("node {id}: {:?} {:?}\n", a.err(), b.err())),
        }
    }
    s
}

/// Runs the writes for `d`, refreshing the display.
async fn live_for(h: &mut Harness, d: &mut Display, t: Duration) {
    let until = Instant::now() + t;
    while Instant::now() < until {
        h.run_for(Duration::from_millis(250), WRITES_PER_TICK).await;
        d.show(h).await;
    }
}

/// How far the kernels are from all reporting the mirror in sync (0: they
/// do), by their last status.
fn not_in_sync(h: &Harness, nodes: usize, regions: u64) -> u64 {
    let k = h.kernels();
    let missing = nodes.saturating_sub(k.len()) as u64 * regions;
    missing + k.iter().map(|k| regions - k.sync_count.unwrap_or(0).min(regions)).sum::<u64>()
}

/// The final checks.
async fn verify(h: &mut Harness) -> Result<(), String> {
    for k in h.kernels() {
        if !k.violations.is_empty() {
            return Err(format!("node {}'s kernel saw protocol violations: {:?}", k.node, k.violations));
        }
    }
    let differ = h.legs.lock().differing();
    if !differ.is_empty() {
        return Err(format!("the legs differ in regions {differ:?} although every node reports the mirror in sync"));
    }
    for id in h.running() {
        let s = h.status(id).await?;
        if !s.violation.is_empty() {
            return Err(format!("node {id}: invariant violated: {}", s.violation));
        }
        if s.fenced {
            return Err(format!("node {id} is fenced"));
        }
        let log = h.log(id).await?;
        let sum = log.summary.ok_or("no summary")?;
        if sum.out_of_sync != 0 || sum.recovering != 0 {
            return Err(format!("node {id}: {} regions out of sync, {} recovering", sum.out_of_sync, sum.recovering));
        }
    }
    Ok(())
}

/// The live table (on a terminal) or one line per step.
struct Display {
    live: bool,
    lines: usize,
    step: String,
    step_started: Instant,
    last: Instant,
}

impl Display {
    fn new(live: bool) -> Display {
        Display { live, lines: 0, step: String::new(), step_started: Instant::now(), last: Instant::now() }
    }

    async fn step(&mut self, h: &Harness, what: &str) {
        self.step = what.to_owned();
        self.step_started = Instant::now();
        if self.live {
            self.lines = 0;
            println!("== {what}");
            self.show_now(h).await;
        } else {
            println!("== {what}");
        }
    }

    async fn show(&mut self, h: &Harness) {
        if self.live && self.last.elapsed() >= Duration::from_millis(400) {
            self.show_now(h).await;
        }
    }

    async fn show_now(&mut self, h: &Harness) {
        self.last = Instant::now();
        let mut out = String::new();
        if self.lines > 0 {
            out.push_str(&format!("\x1b[{}A", self.lines));
        }
        let mut rows = vec![format!(
            "  {:<5} {:<7} {:<9} {:>5} {:>8}  {:>7} {:>8} {:>9}",
            "node", "daemon", "role", "term", "applied", "writes", "inflight", "in sync"
        )];
        let kernels = h.kernels();
        let running = h.running();
        for id in h.ids() {
            let (role, term, applied) = if running.contains(&id) {
                match h.status(id).await {
                    Ok(s) => (
                        if s.fenced { "FENCED".to_owned() } else { s.role },
                        s.term.to_string(),
                        s.last_applied.to_string(),
                    ),
                    Err(_) => ("?".to_owned(), "-".into(), "-".into()),
                }
            } else {
                ("-".to_owned(), "-".into(), "-".into())
            };
            let k = kernels.iter().find(|k| k.node == id);
            rows.push(format!(
                "  {:<5} {:<7} {:<9} {:>5} {:>8}  {:>7} {:>8} {:>9}",
                id,
                if running.contains(&id) { "up" } else { "DOWN" },
                role,
                term,
                applied,
                k.map_or("-".into(), |k| k.writes_done.to_string()),
                k.map_or("-".into(), |k| k.inflight.len().to_string()),
                k.and_then(|k| k.sync_count).map_or("-".into(), |c| format!("{c}/{}", h.regions())),
            ));
        }
        rows.push(format!(
            "  {:.1} s  writes issued {}  kicks {}  half-written regions awaiting resync {}",
            self.step_started.elapsed().as_secs_f64(),
            h.writes,
            h.kicks,
            h.legs.lock().abandoned().len()
        ));
        for r in &rows {
            out.push_str("\x1b[2K");
            out.push_str(r);
            out.push('\n');
        }
        self.lines = rows.len();
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

/// Whether the live table makes sense here.
pub fn is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// The summary printed at the end of a successful run.
pub fn summary(r: &Report) -> String {
    let mut s = String::from("\nsteps:\n");
    for (name, secs) in &r.steps {
        s.push_str(&format!("  {name:<52} {secs:>6.1} s\n"));
    }
    s.push_str(&format!(
        "writes issued {}, kicks {}, acknowledged marks checked against the cluster {}\n",
        r.writes, r.kicks, r.marks_checked
    ));
    s.push_str("request latency, kernel send to reply (through the Unix transport):\n");
    for (name, n, p50, p99) in &r.latency {
        s.push_str(&format!("  {name:<22} {n:>7}  p50 {p50:>7.3} ms  p99 {p99:>7.3} ms\n"));
    }
    s.push_str(
        "verdict: every invariant held, every kernel reports the mirror in sync, the legs are identical, no acknowledged mark was lost\n",
    );
    s
}
