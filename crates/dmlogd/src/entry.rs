//! The `dmlogd` program from its parsed command line: the configuration,
//! logging and the runtime around [`crate::daemon::run`]. The demo's
//! daemon processes run exactly this (`dmlogd-demo daemon …`).

use crate::cli::{Daemon, DaemonCmd};
use crate::config::{Config, Overrides};

/// Runs `dmlogd` with `args` and exits: 0 after SIGTERM or SIGINT, 1 if the
/// daemon stopped on an error (its kernel transport failed), 2 for a
/// configuration or start-up error, with one line on stderr.
pub fn main_with(args: Daemon) -> ! {
    if let Some(DaemonCmd::WakeRead { device }) = &args.command {
        // Run by the daemon as a separate process: the read completes only
        // once the daemon answers the kernel, which it must never wait for
        // itself (see `node::kick::spawn_wake`).
        match node::kick::wake_read(device) {
            Ok(()) => std::process::exit(0),
            Err(e) => fail(&format!("{}: {e}", device.display())),
        }
    }
    let text = match &args.config {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) => fail(&format!("config {}: {e}", p.display())),
        },
        None => None,
    };
    let overrides = Overrides {
        cluster: args.cluster.clone(),
        id: args.id,
        data_dir: args.data_dir.clone(),
        listen: args.listen.clone(),
        members: args.members.clone(),
        kernel: args.kernel.clone(),
        fence: args.fence.clone(),
        admin_socket: args.admin_socket.clone(),
        metrics: args.metrics.clone(),
        incarnation: args.incarnation,
    };
    let config = match Config::build(text.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    if args.check_config {
        println!("dmlogd: configuration ok: node {} of {} members", config.id, config.members.len());
        std::process::exit(0);
    }
    let settings = crate::logging::LogSettings { json: args.json || config.log.json, ..config.log.clone() };
    let logging = match crate::logging::init(&settings) {
        Ok(l) => l,
        Err(e) => fail(&e),
    };
    let log = crate::daemon::LogControl { logging: Some(std::sync::Arc::new(logging)), config: args.config.clone() };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    match runtime.block_on(crate::daemon::run(config, log)) {
        Ok(()) => std::process::exit(0),
        Err(e) if e.starts_with("the kernel transport failed") => {
            eprintln!("dmlogd: {e}");
            std::process::exit(1);
        }
        Err(e) => fail(&e),
    }
}

/// One line on stderr, exit status 2.
fn fail(msg: &str) -> ! {
    eprintln!("dmlogd: {msg}");
    std::process::exit(2);
}
