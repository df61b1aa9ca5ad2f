//! `sim`: dmlogd's region machine driven by simulated kernels.
//!
//! With no arguments it runs the demo: three nodes share a mirror, resync it
//! under writes, one node crashes mid-write, the cluster evicts it, the
//! survivors resync exactly what it was writing, it reboots and rejoins,
//! and the run ends by checking that every node reports the mirror in sync
//! and the legs are identical. It exits non-zero if any check fails.
//!
//! `--seed S` replays one seeded random run of the in-process cluster;
//! `--seeds N` runs seeds 0..N. `--raft-seed S` / `--raft-seeds N` do the
//! same for the Raft cluster simulation, `--scenario NAME` runs one of its
//! named liveness scenarios (`--scenario-seed S`, `--scenario-seeds N`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use dmlogd_tests::cluster::{Cluster, Options, random_run};
use dmlogd_tests::raft_sim::run_seed;
use dmlogd_tests::scenarios::{self, Scenario};

#[derive(Parser)]
#[command(about = "Simulated kernels against dmlogd's region state machine")]
struct Args {
    /// Replay one seeded random run (crash, eviction, reboot, faults).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run seeds 0..N and report the first failure.
    #[arg(long)]
    seeds: Option<u64>,
    /// Demo: do not pause between frames.
    #[arg(long)]
    fast: bool,
    /// Replay one seed of the Raft cluster simulation.
    #[arg(long)]
    raft_seed: Option<u64>,
    /// Run Raft cluster simulation seeds 0..N.
    #[arg(long)]
    raft_seeds: Option<u64>,
    /// With `--raft-seeds N`: start at this seed (runs FROM..N).
    #[arg(long, requires = "raft_seeds", default_value_t = 0)]
    raft_from: u64,
    /// A named liveness scenario of the Raft cluster simulation:
    /// writer-crash, partitioned-minority, rejoin, recoverer-dies, frozen,
    /// frozen-at-send, transport-dies, fence-fails, daemon-restart,
    /// leader-change, mark-ack-kill, clears-lost, failed-write, lease-read.
    #[arg(long, value_parser = parse_scenario)]
    scenario: Option<Scenario>,
    /// Replay one seed of `--scenario`.
    #[arg(long, requires = "scenario")]
    scenario_seed: Option<u64>,
    /// Run seeds 0..N of `--scenario` (default 100).
    #[arg(long, requires = "scenario", conflicts_with = "scenario_seed")]
    scenario_seeds: Option<u64>,
}

fn parse_scenario(name: &str) -> Result<Scenario, String> {
    Scenario::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        format!("no scenario {name:?}; there are {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(scenario) = args.scenario {
        let seeds = match args.scenario_seed {
            Some(s) => s..s + 1,
            None => 0..args.scenario_seeds.unwrap_or(100),
        };
        let (started, n) = (Instant::now(), seeds.end - seeds.start);
        for seed in seeds {
            match scenarios::run(scenario, seed) {
                Ok(what) if n == 1 => {
                    // A traced replay shows its trace even when it passes.
                    let trace = trace();
                    if !trace.is_empty() {
                        println!("{trace}");
                    }
                    println!("{} seed {seed}: {what}", scenario.name())
                }
                Ok(_) => {}
                Err(e) => {
                    let trace = trace();
                    eprintln!("{e}\n{trace}");
                    eprintln!(
                        "replay: cargo run --release -p dmlogd-tests --bin sim -- --scenario {} --scenario-seed {seed}",
                        scenario.name()
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        println!("{n} seeds of {} passed in {:.1} s", scenario.name(), started.elapsed().as_secs_f64());
        return ExitCode::SUCCESS;
    }
    if let Some(seed) = args.seed {
        return report(seed, random_run(seed).map(|_| ()));
    }
    if let Some(seed) = args.raft_seed {
        return match run_seed(seed) {
            Ok(summary) => {
                println!("{summary:?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                let trace = trace();
                report(seed, Err(format!("{e}\n{trace}")))
            }
        };
    }
    if let Some(n) = args.raft_seeds {
        let started = Instant::now();
        for seed in args.raft_from..n {
            if seed > args.raft_from && seed % 1000 == 0 {
                eprintln!("seed {seed}: {:.1} s", started.elapsed().as_secs_f64());
            }
            if let Err(e) = run_seed(seed) {
                eprintln!("{e}");
                eprintln!("replay: cargo run --release -p dmlogd-tests --bin sim -- --raft-seed {seed}");
                return ExitCode::FAILURE;
            }
        }
        let count = n.saturating_sub(args.raft_from);
        println!("{count} raft seeds ({}..{n}) passed in {:.1} s", args.raft_from, started.elapsed().as_secs_f64());
        return ExitCode::SUCCESS;
    }
    if let Some(n) = args.seeds {
        let started = Instant::now();
        for seed in 0..n {
            if let Err(e) = random_run(seed) {
                return report(seed, Err(e));
            }
        }
        println!("{n} seeds passed in {:.1} s", started.elapsed().as_secs_f64());
        return ExitCode::SUCCESS;
    }
    demo(args.fast)
}

fn report(seed: u64, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => {
            println!("seed {seed}: converged");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("replay: cargo run -p dmlogd-tests --bin sim -- --seed {seed} (or --raft-seed)");
            ExitCode::FAILURE
        }
    }
}

/// Draws the cluster: one line per node and the log's region map.
struct Screen {
    tty: bool,
    fast: bool,
    last_plain_ms: u64,
}

impl Screen {
    fn frame(&mut self, c: &Cluster, phase: &str) {
        if !self.tty && c.now_ms < self.last_plain_ms + 1000 && !phase.starts_with('*') {
            return;
        }
        self.last_plain_ms = c.now_ms;
        let mut out = String::new();
        if self.tty {
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&format!("dmlogd simulation  t = {:>6.2} s   {}\n\n", c.now_ms as f64 / 1000.0, phase));
        out.push_str("node   kernel     in sync   writes  resynced  requests\n");
        let count = c.region_count();
        for n in c.nodes.values() {
            match n.kernel.as_ref().and_then(|k| Some((k, k.mirror(n.mirror)?))) {
                Some((k, v)) => {
                    let life = format!("{:?}", v.life).to_lowercase();
                    let synced = c.machine.log(&c.table.uuid).map(|l| l.sync_count()).unwrap_or(0);
                    out.push_str(&format!(
                        "{:<6} {:<10} {:>4}/{:<4} {:>7} {:>9} {:>9}\n",
                        n.id.to_string(),
                        life,
                        synced,
                        count,
                        v.writes_done,
                        k.stats().regions_recovered,
                        k.stats().requests
                    ));
                }
                None => out.push_str(&format!("{:<6} crashed\n", n.id.to_string())),
            }
        }
        if let Some(log) = c.machine.log(&c.table.uuid) {
            out.push_str("\nregion map (. clean  d dirty  1-9 marked by n nodes  x out of sync  R resyncing):\n");
            out.push_str(&log.region_map(64, 256));
        }
        let half = c.legs.lock().abandoned();
        if !half.is_empty() {
            out.push_str(&format!("half-written by a crash, awaiting resync: {half:?}\n"));
        }
        print!("{out}");
        if !self.tty {
            println!();
        }
        let _ = std::io::stdout().flush();
        if self.tty && !self.fast {
            std::thread::sleep(Duration::from_millis(40));
        }
    }
}

/// Runs `ms` of workload, drawing a frame every 100 simulated ms.
fn run(c: &mut Cluster, screen: &mut Screen, ms: u64, pct: u32, phase: &str) {
    let end = c.now_ms + ms;
    while c.now_ms < end {
        c.workload(100.min(end - c.now_ms), pct);
        screen.frame(c, phase);
    }
}

fn demo(fast: bool) -> ExitCode {
    let started = Instant::now();
    let options =
        Options { nodes: 3, target_sectors: 256 * 128, log_args: "clustered-core 128".into(), ..Options::default() };
    let mut c = Cluster::new(options, 2026);
    let mut screen = Screen { tty: std::io::stdout().is_terminal(), fast, last_plain_ms: 0 };
    screen.frame(&c, "* three nodes create a 256-region mirror; the log starts out of sync");

    run(&mut c, &mut screen, 1500, 40, "resync shared by all nodes while they write");
    // Crash node 1 in the middle of a write: one leg written, not the other.
    if !c.write_until_in_flight(1, 3) {
        println!("n1 never had a write in flight");
        return ExitCode::FAILURE;
    }
    c.crash(1);
    screen.frame(&c, "* n1 crashed mid-write");
    run(&mut c, &mut screen, 600, 30, "n1 is silent; the survivors keep writing");
    c.evict(1);
    screen.frame(&c, "* the cluster evicts n1: its marks become resync work; survivors' kernels are kicked");
    run(&mut c, &mut screen, 1200, 30, "survivors resync n1's regions");
    c.reboot(1);
    screen.frame(&c, "* n1 reboots and rejoins");
    run(&mut c, &mut screen, 1200, 40, "three nodes writing again");
    let verdict = c.verify_converged();
    screen.frame(&c, "* quiet: verification");

    let requests: u64 = c.requests;
    let resends: u64 = c.nodes.values().filter_map(|n| n.kernel.as_ref()).map(|k| k.stats().timeouts).sum();
    println!("\nsummary");
    println!(
        "  simulated time      {:.1} s (ran in {:.1} s)",
        c.now_ms as f64 / 1000.0,
        started.elapsed().as_secs_f64()
    );
    println!("  requests handled    {requests} (every invariant checked after each)");
    println!("  kernel re-sends     {resends}");
    println!("  regions resynced    {}", c.regions_recovered());
    println!("  kernels kicked      {}", c.kicks);
    match verdict {
        Ok(()) => {
            println!("  verdict             every node reports the mirror in sync; the legs are identical");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("  verdict             FAILED\n{e}");
            ExitCode::FAILURE
        }
    }
}

/// What the harness traced (`DMLOGD_TRACE_REGION`), one line each.
fn trace() -> String {
    dmlogd_tests::raft_cluster::TRACE.lock().map(|t| t.join("\n")).unwrap_or_default()
}
