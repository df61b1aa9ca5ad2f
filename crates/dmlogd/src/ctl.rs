//! The admin client: a connection to a node's admin socket, and the text
//! and JSON that `dmlogctl` prints for each answer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use node::admin::pb::admin_client::AdminClient;
use node::admin::pb::{LogReply, LogSummary, LogsReply, StatusReply};
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

/// A client of one node's admin API.
pub type Client = AdminClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call when there is a
/// token (the TCP listener requires one; the Unix socket does not).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The innermost cause of an error (tonic's outer ones say only
/// "transport error").
fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(s) = e.source() {
        e = s;
    }
    e.to_string()
}

/// Connects to a node's admin API over TCP (`host:port`) with TLS,
/// trusting the CA in `ca_pem`, presenting `token`.
pub async fn connect_tcp(addr: &str, ca_pem: &[u8], token: &str) -> Result<Client, String> {
    let header: MetadataValue<Ascii> =
        format!("Bearer {token}").parse().map_err(|_| "the token holds characters a header cannot carry".to_owned())?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(120))
        .connect()
        .await
        .map_err(|e| format!("{addr}: {}", deepest(&e)))?;
    Ok(AdminClient::with_interceptor(channel, Bearer(Some(header))))
}

/// Connects to the admin socket at `path`.
pub async fn connect(path: &Path) -> Result<Client, String> {
    if !path.exists() {
        return Err(format!("{}: no admin socket (is dmlogd running? see --socket)", path.display()));
    }
    let path: PathBuf = path.to_owned();
    let shown = path.display().to_string();
    // The URI is required by the API and unused: the connector decides.
    // A daemon that does not answer is an error, not a hang; membership
    // changes may take a while (catching up a learner), reads never.
    let channel = Endpoint::from_static("http://admin.sock")
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(120))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            format!("{shown}: {why}")
        })?;
    Ok(AdminClient::with_interceptor(channel, Bearer(None)))
}

/// A refusal from the node, in one line (naming the leader when the node
/// is not it).
pub fn refusal(s: &tonic::Status) -> String {
    let meta = |k: &str| s.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match (meta("leader-id"), meta("leader-addr")) {
        (Some(id), Some(addr)) => format!("{} (run it on node {id}, the leader, at {addr})", s.message()),
        (Some(id), None) => format!("{} (run it on node {id}, the leader)", s.message()),
        _ => s.message().to_owned(),
    }
}

/// Whether the node looks healthy, and if not, why.
pub fn health(s: &StatusReply) -> Result<(), String> {
    if s.fenced || s.fence_failed {
        if !s.standing.is_empty() {
            return Err(s.standing.clone());
        }
        return Err("fenced: its lease ran out; it answers no kernel requests".into());
    }
    if !s.violation.is_empty() {
        return Err(format!("invariant violated: {}", s.violation));
    }
    if !s.quorum {
        if s.millis_since_quorum < 0 {
            return Err("not joined: no quorum has confirmed this node since it started".into());
        }
        return Err(format!(
            "no quorum for {:.1} s (bound {:.1} s): the cluster lost its majority or this node is cut off; \
             it fences when its lease runs out",
            s.millis_since_quorum as f64 / 1e3,
            s.quorum_bound_millis as f64 / 1e3
        ));
    }
    if s.leader == 0 {
        return Err("no leader known".into());
    }
    if s.role == "leader" {
        let behind: Vec<String> = s
            .replication
            .iter()
            .filter(|p| s.last_log_index.saturating_sub(p.matched) > 1_000)
            .map(|p| format!("node {} is {} entries behind", p.id, s.last_log_index - p.matched))
            .collect();
        if !behind.is_empty() {
            return Err(behind.join("; "));
        }
    }
    Ok(())
}

/// What a cluster manager (the OCF agent's monitor) should make of the
/// node: `"failed"` when it cannot serve its kernel (fenced, a failed fence
/// or kernel transport, an invariant violated, or no quorum's word for a
/// whole lease), `"degraded"` when [`health`] finds something that is not
/// (yet) this node's failure (no leader known, a brief loss of quorum, a
/// lagging peer), else `"ok"`.
pub fn verdict(s: &StatusReply) -> &'static str {
    let lease_lost = s.millis_since_quorum >= 0 && s.millis_since_quorum.unsigned_abs() > s.lease_millis;
    if s.fenced || s.fence_failed || !s.standing.is_empty() || !s.violation.is_empty() || lease_lost {
        "failed"
    } else if health(s).is_err() {
        "degraded"
    } else {
        "ok"
    }
}

/// `dmlogctl status` as text.
pub fn status_text(s: &StatusReply) -> String {
    let mut o = String::new();
    let leader = if s.leader == 0 { "none".to_owned() } else { s.leader.to_string() };
    let _ = writeln!(o, "node {}  {}  term {}  leader {}", s.id, s.role, s.term, leader);
    let _ = writeln!(o, "log index {}  applied {}", s.last_log_index, s.last_applied);
    match health(s) {
        Ok(()) => o.push_str("health: ok\n"),
        Err(why) => {
            let _ = writeln!(o, "health: DEGRADED: {why}");
        }
    }
    let _ = writeln!(o, "{:<6} {:<22} {:<8} {:<8} {:<12}", "ID", "ADDRESS", "ROLE", "LAG", "KERNEL");
    for m in &s.members {
        let lag = s
            .replication
            .iter()
            .find(|p| p.id == m.id)
            .map_or_else(|| "-".to_owned(), |p| s.last_log_index.saturating_sub(p.matched).to_string());
        let kernel = s
            .kernels
            .iter()
            .find(|k| k.id == m.id)
            .map_or_else(|| "not joined".to_owned(), |k| format!("{:08x}", k.incarnation & 0xffff_ffff));
        let role = if m.id == s.leader {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        let _ = writeln!(o, "{:<6} {:<22} {:<8} {:<8} {:<12}", m.id, m.addr, role, lag, kernel);
    }
    o
}

/// `dmlogctl status --json`.
pub fn status_json(s: &StatusReply) -> Value {
    json!({
        "id": s.id,
        "role": s.role,
        "leader": if s.leader == 0 { Value::Null } else { json!(s.leader) },
        "term": s.term,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "millis_since_quorum_ack": if s.millis_since_quorum_ack < 0 { Value::Null } else { json!(s.millis_since_quorum_ack) },
        "quorum": s.quorum,
        "millis_since_quorum": if s.millis_since_quorum < 0 { Value::Null } else { json!(s.millis_since_quorum) },
        "fenced": s.fenced,
        "fence_failed": s.fence_failed,
        "violation": if s.violation.is_empty() { Value::Null } else { json!(s.violation) },
        "healthy": health(s).is_ok(),
        "monitor": verdict(s),
        "health": health(s).err(),
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "addr": m.addr,
            "voter": m.voter,
            "matched": s.replication.iter().find(|p| p.id == m.id).map(|p| p.matched),
            "incarnation": s.kernels.iter().find(|k| k.id == m.id).map(|k| k.incarnation),
        })).collect::<Vec<_>>(),
    })
}

fn summary_json(l: &LogSummary) -> Value {
    json!({
        "uuid": l.uuid,
        "log_type": l.log_type,
        "regions": l.regions,
        "region_size": l.region_size,
        "in_sync": l.in_sync,
        "out_of_sync": l.out_of_sync,
        "dirty": l.dirty,
        "recovering": l.recovering,
        "disk": l.disk.as_ref().map(|d| json!({
            "device": d.device,
            "writer": if d.writer == 0 { Value::Null } else { json!(d.writer) },
            "clean_version": d.clean_version,
            "durable_version": d.durable_version,
            "failed": d.failed,
        })),
        "instances": l.instances.iter().map(|i| json!({
            "node": i.node,
            "luid": i.luid,
            "state": i.state,
            "marks": i.marks,
            "recovering": i.recovering,
        })).collect::<Vec<_>>(),
    })
}

/// `dmlogctl logs` as text.
pub fn logs_text(r: &LogsReply) -> String {
    let mut o = String::new();
    if r.logs.is_empty() {
        let _ = writeln!(o, "no mirror logs (applied index {})", r.last_applied);
        return o;
    }
    let _ = writeln!(
        o,
        "{:<36} {:<15} {:>8} {:>8} {:>8} {:>8} {:>5}  MARKS BY NODE",
        "UUID", "TYPE", "REGIONS", "DIRTY", "NOSYNC", "RECOVER", "NODES"
    );
    for l in &r.logs {
        let mut by_node: std::collections::BTreeMap<u64, u64> = Default::default();
        for i in &l.instances {
            *by_node.entry(i.node).or_default() += i.marks;
        }
        let marks: Vec<String> = by_node.iter().map(|(n, m)| format!("{n}:{m}")).collect();
        let _ = writeln!(
            o,
            "{:<36} {:<15} {:>8} {:>8} {:>8} {:>8} {:>5}  {}",
            l.uuid,
            l.log_type,
            l.regions,
            l.dirty,
            l.out_of_sync,
            l.recovering,
            by_node.len(),
            marks.join(" ")
        );
    }
    o
}

/// `dmlogctl logs --json`.
pub fn logs_json(r: &LogsReply) -> Value {
    json!({ "last_applied": r.last_applied, "logs": r.logs.iter().map(summary_json).collect::<Vec<_>>() })
}

/// `dmlogctl log <uuid>` as text: the summary, the instances, and the
/// region map with its legend.
pub fn log_text(r: &LogReply) -> String {
    let mut o = String::new();
    let Some(l) = &r.summary else { return o };
    let _ = writeln!(o, "log {}  {}  {} regions of {} sectors", l.uuid, l.log_type, l.regions, l.region_size);
    let _ = writeln!(
        o,
        "in sync {}  out of sync {}  dirty {}  recovering {}",
        l.in_sync, l.out_of_sync, l.dirty, l.recovering
    );
    if let Some(d) = &l.disk {
        let writer = if d.writer == 0 { "no node".to_owned() } else { format!("node {}", d.writer) };
        let state = if d.failed {
            "the last write FAILED".to_owned()
        } else if d.durable_version >= d.clean_version {
            "up to date".to_owned()
        } else {
            format!("{} changes not yet written", d.clean_version - d.durable_version)
        };
        let _ = writeln!(o, "log device {}: written by {writer}, {state}", d.device);
    }
    for i in &l.instances {
        let rec = i.recovering.map_or_else(String::new, |r| format!("  recovering region {r}"));
        let _ = writeln!(o, "  node {} table {}: {}, {} marks{rec}", i.node, i.luid, i.state, i.marks);
    }
    let per =
        if r.regions_per_char > 1 { format!(" ({} regions per character)", r.regions_per_char) } else { String::new() };
    let _ = writeln!(o, "region map{per}:  . clean  d dirty  1-9 marked by n tables  x out of sync  R recovering");
    o.push_str(&r.region_map);
    if !r.marks.is_empty() {
        let shown: Vec<String> = r
            .marks
            .iter()
            .take(32)
            .map(|m| {
                let nodes: Vec<String> = m.nodes.iter().map(u64::to_string).collect();
                format!("{}:n{}", m.region, nodes.join("+n"))
            })
            .collect();
        let more = if r.marks.len() > 32 { format!(" … {} more", r.marks.len() - 32) } else { String::new() };
        let _ = writeln!(o, "marked regions (region:nodes): {}{more}", shown.join(" "));
    }
    o
}

/// `dmlogctl log <uuid> --json`.
pub fn log_json(r: &LogReply) -> Value {
    json!({
        "last_applied": r.last_applied,
        "log": r.summary.as_ref().map(summary_json),
        "region_map": r.region_map,
        "regions_per_char": r.regions_per_char,
        "marks": r.marks.iter().map(|m| json!({ "region": m.region, "nodes": m.nodes })).collect::<Vec<_>>(),
    })
}
