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
    if let Some(DaemonCmd::ForceNewCluster { force }) = &args.command {
        force_new_cluster(&config, *force);
    }
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

/// `dmlogd force-new-cluster`: see [`replication::recovery`].
fn force_new_cluster(config: &Config, force: bool) -> ! {
    let lock_path = config.data_dir.join("dmlogd.lock");
    let lock = match std::fs::File::create(&lock_path) {
        Ok(l) => l,
        Err(e) => fail(&format!("{}: {e}", lock_path.display())),
    };
    if lock.try_lock().is_err() {
        fail(&format!(
            "dmlogd is running on {} (it holds {}): stop it first",
            config.data_dir.display(),
            lock_path.display()
        ));
    }
    let store = config.data_dir.join("raft.redb");
    if !store.exists() {
        fail(&format!("{}: no Raft store: nothing to recover", store.display()));
    }
    if !force {
        eprintln!(
            "dmlogd: force-new-cluster makes node {} the only voter of cluster {:?}, from {}.\n\
             Only for a cluster that lost its majority for good. Before you run it with --force:\n\
             * choose the survivor with the highest log index (`dmlogctl status` showed it) and\n\
             * make sure no other member starts again with its data directory (wipe it): one\n\
               that did could elect a second leader with another old member.\n\
             Then start this node and add the other hosts back as new nodes with empty data\n\
             directories (`dmlogctl members add`). Nothing was changed.",
            config.id,
            config.cluster,
            store.display()
        );
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    match runtime.block_on(replication::recovery::force_sole_voter(&store, regions::NodeId(config.id))) {
        Ok(f) => {
            println!(
                "dmlogd: node {} is now the only voter (it was one of {:?}); new membership at log index {} term {}. \
                 Start it, then add the other hosts back as new nodes with empty data directories.",
                config.id,
                f.old_voters.iter().map(|n| n.0).collect::<Vec<_>>(),
                f.entry.index,
                f.entry.leader_id.term
            );
            std::process::exit(0);
        }
        Err(e) => fail(&e),
    }
}

/// One line on stderr, exit status 2.
fn fail(msg: &str) -> ! {
    eprintln!("dmlogd: {msg}");
    std::process::exit(2);
}
