//! `dmlogd-demo`: three dmlogd processes on loopback, each with a simulated
//! kernel writing to one shared mirror: the leader's host crashes
//! mid-write, then a follower's; failover, eviction, resync, rejoin, and a
//! verdict. Exit status 1 if a check fails. `dmlogd-demo daemon <dmlogd
//! arguments>` is one of its daemons: `dmlogd` itself.

use std::path::PathBuf;

use clap::Parser;

/// Three dmlogd processes on loopback, each with a simulated kernel
/// writing to one shared mirror: crashes, failover, eviction, resync,
/// rejoin, then a verification. Exit status 1 if a check fails.
#[derive(Parser, Debug)]
#[command(name = "dmlogd-demo", version)]
struct Demo {
    /// Regions of the mirror.
    #[arg(long, default_value_t = 256)]
    regions: u64,
    /// Seconds of writes between the steps.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Working directory (default: a temporary one, kept on failure).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the write pattern.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One line per step instead of the live table.
    #[arg(long)]
    plain: bool,
}

fn main() {
    let mut args = std::env::args_os();
    let me = args.next().unwrap_or_default();
    let rest: Vec<_> = args.collect();
    if rest.first().is_some_and(|a| a == "daemon") {
        let argv = std::iter::once(std::ffi::OsString::from("dmlogd")).chain(rest.into_iter().skip(1));
        dmlogd::entry::main_with(<dmlogd::cli::Daemon as Parser>::parse_from(argv));
    }
    let opts = Demo::parse_from(std::iter::once(me).chain(rest));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => fail(&format!("cannot find my own executable: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    let live = !opts.plain && dmlogd_demo::demo::is_terminal();
    let run = dmlogd_demo::demo::Options {
        exe,
        exe_args: vec!["daemon".into()],
        dir: opts.dir,
        regions: opts.regions.max(8),
        write_secs: opts.seconds,
        live,
        seed: opts.seed,
    };
    match runtime.block_on(dmlogd_demo::demo::run(run)) {
        Ok(report) => {
            print!("{}", dmlogd_demo::demo::summary(&report));
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("dmlogd-demo: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// One line on stderr, exit status 2.
fn fail(msg: &str) -> ! {
    eprintln!("dmlogd-demo: {msg}");
    std::process::exit(2);
}
