//! The daemon's configuration: a TOML file, command-line overrides, and
//! an embedded default (a one-node cluster in `./dmlogd-data`) when there
//! is neither. Every value is checked before anything starts; a bad one is
//! one line on stderr and exit status 2.

use std::collections::BTreeMap;
use std::path::PathBuf;

use node::liveness::Timing;
use serde::Deserialize;

/// Where the kernel's requests come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The netlink connector (production).
    Netlink,
    /// A Unix datagram socket at this path (tests, the demo).
    Unix(PathBuf),
}

impl std::str::FromStr for Kernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Kernel, String> {
        match s {
            "netlink" => Ok(Kernel::Netlink),
            _ => match s.strip_prefix("unix:") {
                Some(p) if !p.is_empty() => Ok(Kernel::Unix(PathBuf::from(p))),
                _ => Err(format!("kernel {s:?}: expected netlink or unix:<path>")),
            },
        }
    }
}

/// The file's shape (every key optional; the default fills in).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The cluster's name (default `dmlogd`): checked on every peer call
    /// and stamped into the data directory.
    pub cluster: Option<String>,
    /// This node's id (1 or more).
    pub id: Option<u64>,
    /// Where the Raft store lives.
    pub data_dir: Option<PathBuf>,
    /// host:port for node-to-node and admin gRPC.
    pub listen: Option<String>,
    /// The initial members, id → host:port (this node included).
    pub members: Option<BTreeMap<String, String>>,
    /// `netlink` or `unix:<path>`.
    pub kernel: Option<String>,
    /// `reboot`, `suspend` or `command:<program> [args…]`.
    pub fence: Option<String>,
    /// Liveness timings.
    pub timing: Option<Timing>,
    /// The admin API's Unix socket (default `<data_dir>/admin.sock`).
    pub admin_socket: Option<PathBuf>,
    /// host:port for Prometheus `/metrics` (off when absent).
    pub metrics: Option<String>,
    /// Mutual TLS between nodes (plain when absent).
    pub tls: Option<TlsFiles>,
    /// host:port for the admin API over TCP (off when absent; needs
    /// `[tls]` and `admin_token_file`).
    pub admin_tcp: Option<String>,
    /// A file holding the token remote admin calls must present.
    pub admin_token_file: Option<PathBuf>,
    /// The daemon's own log.
    pub log: Option<LogTable>,
    /// How long a region this node's kernel no longer writes stays marked
    /// in the cluster, in milliseconds.
    pub clear_after_ms: Option<u64>,
}

/// The `[log]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogTable {
    /// Level directives, e.g. `info` or `info,openraft=debug` (default
    /// `info,openraft=warn`); SIGHUP re-reads it.
    pub level: Option<String>,
    /// Append to this file instead of stderr; SIGHUP reopens it.
    pub file: Option<PathBuf>,
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// Seconds in which a repeated Raft library message is logged once
    /// (default 30; 0 logs every one).
    pub repeat_window_secs: Option<u64>,
}

/// A secret that `Debug` does not print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The `[tls]` table: PEM files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate: peers must present a certificate it
    /// signed.
    pub ca: PathBuf,
    /// This node's certificate; it must name the host of its `listen`
    /// address.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// The longest `clear_after_ms` accepted (ten minutes).
pub const MAX_CLEAR_AFTER_MS: u64 = 600_000;

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster's name.
    pub cluster: String,
    /// This node.
    pub id: u64,
    /// The store's directory.
    pub data_dir: PathBuf,
    /// The gRPC listen address.
    pub listen: String,
    /// The initial members.
    pub members: BTreeMap<u64, String>,
    /// The kernel transport.
    pub kernel: Kernel,
    /// The fence action.
    pub fence: node::fence::FenceAction,
    /// Liveness timings.
    pub timing: Timing,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Mutual TLS between nodes, loaded.
    pub tls: Option<replication::grpc::PeerTls>,
    /// The admin API on TCP: where, and the token it requires.
    pub admin_tcp: Option<(std::net::SocketAddr, Secret)>,
    /// The kernel's boot identity, when given (tests and the demo, whose
    /// simulated kernels "reboot" without the host rebooting).
    pub incarnation: Option<u64>,
    /// The daemon's log.
    pub log: crate::logging::LogSettings,
    /// How long a region this node's kernel no longer writes stays marked
    /// (`clear_after_ms`): writes that come back to it within that time
    /// need no Raft round; a crash of this node resyncs what it wrote
    /// within it.
    pub clear_after: std::time::Duration,
}

/// Overrides from the command line.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--cluster`.
    pub cluster: Option<String>,
    /// `--id`.
    pub id: Option<u64>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--member ID=ADDR`, repeated.
    pub members: Vec<String>,
    /// `--kernel`.
    pub kernel: Option<String>,
    /// `--fence`.
    pub fence: Option<String>,
    /// `--admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// `--metrics`.
    pub metrics: Option<String>,
    /// `--incarnation`.
    pub incarnation: Option<u64>,
}

impl Config {
    /// Builds and checks the configuration from a file's text (or none)
    /// and the overrides.
    pub fn build(file: Option<&str>, o: &Overrides) -> Result<Config, String> {
        let f: File = match file {
            Some(text) => toml::from_str(text).map_err(|e| format!("config: {}", e.message()))?,
            None => File::default(),
        };
        let cluster = o.cluster.clone().or(f.cluster).unwrap_or_else(|| replication::node::DEFAULT_CLUSTER.into());
        let name_ok = |c: &str| {
            (1..=64).contains(&c.len()) && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
        };
        if !name_ok(&cluster) {
            return Err(format!("config: cluster {cluster:?} must be 1 to 64 letters, digits, '.', '_' or '-'"));
        }
        let id = o.id.or(f.id).unwrap_or(1);
        if id == 0 {
            return Err("config: id must be 1 or more".into());
        }
        let listen = o.listen.clone().or(f.listen).unwrap_or_else(|| "127.0.0.1:7601".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("config: listen {listen:?} is not host:port with a numeric host"));
        }
        let mut members = BTreeMap::new();
        for (k, v) in f.members.unwrap_or_default() {
            let n: u64 = k.parse().map_err(|_| format!("config: member id {k:?} is not a number"))?;
            if n == 0 {
                return Err("config: member id 0: ids are 1 or more".into());
            }
            if members.insert(n, v).is_some() {
                return Err(format!("config: member id {n} is given twice ({k:?})"));
            }
        }
        for m in &o.members {
            let (k, v) = m.split_once('=').ok_or_else(|| format!("--member {m:?}: expected ID=HOST:PORT"))?;
            let n: u64 = k.parse().map_err(|_| format!("--member {m:?}: {k:?} is not a number"))?;
            members.insert(n, v.to_owned());
        }
        if members.is_empty() {
            members.insert(id, listen.clone());
        }
        let mut seen = BTreeMap::new();
        for (n, addr) in &members {
            if addr.parse::<std::net::SocketAddr>().is_err()
                && !addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return Err(format!("config: member {n} address {addr:?} is not host:port"));
            }
            if let Some(other) = seen.insert(addr.clone(), *n) {
                return Err(format!("config: members {other} and {n} have the same address {addr}"));
            }
        }
        if !members.contains_key(&id) {
            return Err(format!("config: this node ({id}) is not among the members {:?}", members.keys()));
        }
        let kernel = o.kernel.clone().or(f.kernel).unwrap_or_else(|| "netlink".into()).parse()?;
        let fence = o.fence.clone().or(f.fence).unwrap_or_else(|| "reboot".into());
        let fence = fence.parse().map_err(|e: node::fence::FenceError| e.to_string())?;
        let timing = f.timing.unwrap_or_default();
        timing.validate().map_err(|e| e.to_string())?;
        let clear_after = match f.clear_after_ms {
            None => node::router::CLEAR_AFTER,
            Some(ms) if ms <= MAX_CLEAR_AFTER_MS => std::time::Duration::from_millis(ms),
            Some(ms) => {
                return Err(format!(
                    "config: clear_after_ms = {ms} is more than {MAX_CLEAR_AFTER_MS} (a region idle that long \
                     should be clean: a crash of this node resyncs every region it wrote within it)"
                ));
            }
        };
        let data_dir = o.data_dir.clone().or(f.data_dir).unwrap_or_else(|| PathBuf::from("dmlogd-data"));
        let admin_socket = o.admin_socket.clone().or(f.admin_socket).unwrap_or_else(|| data_dir.join("admin.sock"));
        let metrics = match o.metrics.clone().or(f.metrics) {
            Some(m) => {
                Some(m.parse().map_err(|_| format!("config: metrics {m:?} is not host:port with a numeric host"))?)
            }
            None => None,
        };
        let tls = match f.tls {
            Some(t) => {
                let read = |what: &str, p: &PathBuf| {
                    std::fs::read(p).map_err(|e| format!("config: tls {what} {}: {e}", p.display()))
                };
                Some(replication::grpc::PeerTls {
                    ca: read("ca", &t.ca)?,
                    cert: read("cert", &t.cert)?,
                    key: read("key", &t.key)?,
                })
            }
            None => None,
        };
        let admin_tcp = match (f.admin_tcp, f.admin_token_file) {
            (None, None) => None,
            (Some(_), None) => return Err("config: admin_tcp needs admin_token_file".into()),
            (None, Some(_)) => return Err("config: admin_token_file without admin_tcp".into()),
            (Some(_), Some(_)) if tls.is_none() => {
                return Err("config: admin_tcp needs [tls] (the admin API is never served in the clear)".into());
            }
            (Some(addr), Some(file)) => {
                let addr = addr
                    .parse()
                    .map_err(|_| format!("config: admin_tcp {addr:?} is not host:port with a numeric host"))?;
                let token = std::fs::read_to_string(&file)
                    .map_err(|e| format!("config: admin_token_file {}: {e}", file.display()))?
                    .trim()
                    .to_owned();
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!(
                        "config: admin_token_file {}: the token must be at least 16 characters, without spaces",
                        file.display()
                    ));
                }
                Some((addr, Secret(token)))
            }
        };
        let log = match f.log {
            None => crate::logging::LogSettings::default(),
            Some(t) => {
                let level = t.level.unwrap_or_else(|| crate::logging::DEFAULT_LEVEL.into());
                crate::logging::check_level(&level).map_err(|e| format!("config: {e}"))?;
                let json = match t.format.as_deref() {
                    None | Some("text") => false,
                    Some("json") => true,
                    Some(other) => return Err(format!("config: log format {other:?}: expected text or json")),
                };
                let repeat_window =
                    t.repeat_window_secs.map_or(crate::logging::DEFAULT_REPEAT_WINDOW, std::time::Duration::from_secs);
                crate::logging::LogSettings { level, file: t.file, json, repeat_window }
            }
        };
        Ok(Config {
            log,
            admin_tcp,
            tls,
            cluster,
            id,
            data_dir,
            listen,
            members,
            kernel,
            fence,
            timing,
            clear_after,
            admin_socket,
            metrics,
            incarnation: o.incarnation,
        })
    }
}

/// The `[log] level` of a configuration file's text (the default if it
/// has none), for SIGHUP.
pub fn log_level(text: &str) -> Result<String, String> {
    let f: File = toml::from_str(text).map_err(|e| format!("config: {}", e.message()))?;
    let level = f.log.and_then(|l| l.level).unwrap_or_else(|| crate::logging::DEFAULT_LEVEL.into());
    crate::logging::check_level(&level)?;
    Ok(level)
}

/// The file in a data directory naming the cluster it belongs to.
const CLUSTER_FILE: &str = "cluster";

/// Stamps `data_dir` with `cluster` the first time, and refuses a data
/// directory that belongs to another cluster (its Raft state would be
/// another cluster's: joining with it would corrupt both). A directory
/// from before the stamp existed is stamped as it is.
pub fn claim_data_dir(data_dir: &std::path::Path, cluster: &str) -> Result<(), String> {
    let path = data_dir.join(CLUSTER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == cluster => Ok(()),
        Ok(text) => Err(format!(
            "data dir {} belongs to cluster {:?}, not {cluster:?}: refusing to start (nothing was changed)",
            data_dir.display(),
            text.trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = data_dir.join(format!("{CLUSTER_FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                std::io::Write::write_all(&mut f, format!("{cluster}\n").as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_given_is_a_one_node_cluster() {
        let c = Config::build(None, &Overrides::default()).unwrap();
        assert_eq!(c.id, 1);
        assert_eq!(c.members, BTreeMap::from([(1, "127.0.0.1:7601".to_owned())]));
        assert_eq!(c.kernel, Kernel::Netlink);
        assert_eq!(c.admin_socket, PathBuf::from("dmlogd-data/admin.sock"));
        assert_eq!(c.metrics, None);
    }

    #[test]
    fn a_file_with_overrides() {
        let text = r#"
            id = 2
            listen = "10.0.0.2:7601"
            kernel = "unix:/run/dmlogd/kernel.sock"
            [members]
            1 = "10.0.0.1:7601"
            2 = "10.0.0.2:7601"
            3 = "10.0.0.3:7601"
        "#;
        let o = Overrides { fence: Some("command:/usr/sbin/fence_self".into()), ..Overrides::default() };
        let c = Config::build(Some(text), &o).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.members.len(), 3);
        assert_eq!(c.kernel, Kernel::Unix("/run/dmlogd/kernel.sock".into()));
    }

    #[test]
    fn the_sample_configurations_in_deploy_are_valid() {
        for (n, text) in [
            (1, include_str!("../../../deploy/config/node1.toml")),
            (2, include_str!("../../../deploy/config/node2.toml")),
            (3, include_str!("../../../deploy/config/node3.toml")),
        ] {
            // Their [tls] files, where the samples expect them.
            let dir = tempfile::tempdir().unwrap();
            for f in ["ca.pem", &format!("node{n}.pem"), &format!("node{n}.key")] {
                std::fs::write(dir.path().join(f), "pem").unwrap();
            }
            assert!(text.contains("\n[tls]\n"), "node{n}.toml without TLS");
            let text = text.replace("/etc/dmlogd/tls/", &format!("{}/", dir.path().display()));
            let c = Config::build(Some(&text), &Overrides::default()).unwrap_or_else(|e| panic!("node{n}.toml: {e}"));
            assert!(c.tls.is_some());
            assert_eq!((c.id, c.members.len(), c.kernel, c.cluster.as_str()), (n, 3, Kernel::Netlink, "san-a"));
            assert_eq!(c.listen, c.members[&n]);
            assert_eq!(c.timing, node::liveness::Timing::default());
        }
    }

    #[test]
    fn a_data_dir_is_stamped_with_its_cluster_and_refused_to_another() {
        let dir = tempfile::tempdir().unwrap();
        claim_data_dir(dir.path(), "alpha").unwrap();
        claim_data_dir(dir.path(), "alpha").unwrap();
        std::fs::write(dir.path().join("raft.redb"), b"state").unwrap();
        let e = claim_data_dir(dir.path(), "beta").unwrap_err();
        assert!(e.contains("belongs to cluster \"alpha\", not \"beta\""), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(std::fs::read_to_string(dir.path().join("cluster")).unwrap(), "alpha\n");
        assert_eq!(std::fs::read(dir.path().join("raft.redb")).unwrap(), b"state", "the refusal changed the store");
        let c = Config::build(Some("cluster = \"prod-a\""), &Overrides::default()).unwrap();
        assert_eq!(c.cluster, "prod-a");
        assert_eq!(Config::build(None, &Overrides::default()).unwrap().cluster, "dmlogd");
    }

    #[test]
    fn tls_files_are_read_at_start_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "node.pem", "node.key"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let d = dir.path().display();
        let text = format!("[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/node.pem\"\nkey = \"{d}/node.key\"\n");
        let tls = Config::build(Some(&text), &Overrides::default()).unwrap().tls.unwrap();
        assert_eq!((tls.ca, tls.cert, tls.key), (b"ca.pem".to_vec(), b"node.pem".to_vec(), b"node.key".to_vec()));
        let e = Config::build(Some(&text.replace("node.key", "gone.key")), &Overrides::default()).unwrap_err();
        assert!(e.starts_with("config: tls key ") && e.contains("gone.key") && !e.contains('\n'), "{e}");
        let e = Config::build(Some("[tls]\nca = \"/x\"\n"), &Overrides::default()).unwrap_err();
        assert!(e.contains("missing field `cert`"), "{e}");
    }

    #[test]
    fn the_admin_tcp_listener_needs_tls_and_a_real_token() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "node.pem", "node.key"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        std::fs::write(dir.path().join("token"), "0123456789abcdef0123\n").unwrap();
        std::fs::write(dir.path().join("short"), "abc\n").unwrap();
        let d = dir.path().display();
        let tls = format!("[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/node.pem\"\nkey = \"{d}/node.key\"\n");
        let admin = |token: &str| format!("admin_tcp = \"127.0.0.1:7611\"\nadmin_token_file = \"{d}/{token}\"\n");
        let c = Config::build(Some(&format!("{}{tls}", admin("token"))), &Overrides::default()).unwrap();
        let (addr, token) = c.admin_tcp.unwrap();
        assert_eq!((addr.port(), token.0.as_str()), (7611, "0123456789abcdef0123"));
        assert!(!format!("{token:?}").contains("0123"), "Debug shows the token");
        let bad = |text: String| Config::build(Some(&text), &Overrides::default()).unwrap_err();
        assert!(bad(admin("token")).contains("admin_tcp needs [tls]"));
        assert!(bad(format!("{}{tls}", admin("short"))).contains("at least 16 characters"));
        assert!(bad(format!("{}{tls}", admin("missing"))).contains("admin_token_file"));
        assert!(bad(format!("admin_tcp = \"127.0.0.1:7611\"\n{tls}")).contains("needs admin_token_file"));
    }

    #[test]
    fn bad_values_are_one_clear_line() {
        let bad = |text: &str, o: Overrides| Config::build(Some(text), &o).unwrap_err();
        assert!(bad("id = 0", Overrides::default()).contains("id must be 1 or more"));
        assert!(bad("cluster = \"a b\"", Overrides::default()).contains("cluster \"a b\" must be"));
        let dup = "id = 1\n[members]\n1 = \"10.0.0.1:7601\"\n01 = \"10.0.0.9:7601\"";
        assert!(bad(dup, Overrides::default()).contains("member id 1 is given twice"));
        let same = "id = 1\n[members]\n1 = \"10.0.0.1:7601\"\n2 = \"10.0.0.1:7601\"";
        assert!(bad(same, Overrides::default()).contains("members 1 and 2 have the same address 10.0.0.1:7601"));
        let noport = "id = 1\n[members]\n1 = \"10.0.0.1\"";
        assert!(bad(noport, Overrides::default()).contains("member 1 address \"10.0.0.1\" is not host:port"));
        assert!(bad("cluster = \"\"", Overrides::default()).contains("must be 1 to 64"));
        assert!(bad("colour = 3", Overrides::default()).contains("unknown field"));
        assert!(bad("kernel = \"tcp\"", Overrides::default()).contains("expected netlink or unix"));
        assert!(
            bad("clear_after_ms = 600001", Overrides::default())
                .contains("clear_after_ms = 600001 is more than 600000")
        );
        let c = Config::build(Some("clear_after_ms = 0"), &Overrides::default()).unwrap();
        assert_eq!(c.clear_after, std::time::Duration::ZERO);
        let c = Config::build(None, &Overrides::default()).unwrap();
        assert_eq!(c.clear_after, node::router::CLEAR_AFTER);
        assert!(bad("id = 4\n[members]\n1 = \"a:1\"", Overrides::default()).contains("not among the members"));
        let timing = "[timing]\nrenew_every_ms = 500\ntick_ms = 100\nfence_after_ms = 8000\nfence_action_max_ms = 2000\ndead_after_ms = 9000\nclock_drift_ppm = 10000\nelection_max_ms = 1500";
        let e = bad(timing, Overrides::default());
        assert!(e.contains("dead_after_ms (9000) must be at least 10305"), "{e}");
        assert!(!e.contains('\n'));
        let o = Overrides { members: vec!["x".into()], ..Overrides::default() };
        assert!(bad("", o).contains("expected ID=HOST:PORT"));
        assert!(
            bad("metrics = \"localhost\"", Overrides::default()).contains("metrics \"localhost\" is not host:port")
        );
    }
}
