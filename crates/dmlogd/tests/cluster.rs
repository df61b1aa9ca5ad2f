//! Three real `dmlogd` processes on loopback: they elect a leader, and a
//! leader stopped with SIGTERM hands leadership to another voter and exits 0.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use replication::pb::admin::StatusRequest;
use replication::pb::admin::admin_client::AdminClient;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    id: u64,
    addr: String,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn status(addr: &str) -> Option<replication::pb::admin::StatusReply> {
    let mut c = AdminClient::connect(format!("http://{addr}")).await.ok()?;
    c.status(StatusRequest {}).await.ok().map(|r| r.into_inner())
}

async fn leader_seen_by(nodes: &[&Node], limit: Duration) -> u64 {
    let until = Instant::now() + limit;
    loop {
        let mut seen = Vec::new();
        for n in nodes {
            if let Some(s) = status(&n.addr).await {
                seen.push(s.leader);
            }
        }
        if seen.len() == nodes.len() && seen[0] != 0 && seen.iter().all(|l| *l == seen[0]) {
            return seen[0];
        }
        assert!(Instant::now() < until, "no agreed leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_and_exits_cleanly() {
    let dir = tempfile::TempDir::new().unwrap();
    let addrs: Vec<(u64, String)> = (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let mut nodes = Vec::new();
    for (id, addr) in &addrs {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmlogd"));
        cmd.arg("--id").arg(id.to_string());
        cmd.arg("--listen").arg(addr);
        cmd.arg("--data-dir").arg(dir.path().join(format!("n{id}")));
        cmd.arg("--kernel").arg(format!("unix:{}", dir.path().join(format!("k{id}.sock")).display()));
        cmd.arg("--fence").arg("command:true");
        for (m, a) in &addrs {
            cmd.arg("--member").arg(format!("{m}={a}"));
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        nodes.push(Node { id: *id, addr: addr.clone(), child });
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = leader_seen_by(&all, Duration::from_secs(60)).await;
    // The stopping leader hands over to the first other voter by id.
    let expected = nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    let idx = nodes.iter().position(|n| n.id == leader).unwrap();
    let pid = nodes[idx].child.id();
    assert!(Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap().success());
    let until = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = nodes[idx].child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the leader did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "{code:?}");
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let new = leader_seen_by(&rest, Duration::from_secs(60)).await;
    assert_eq!(new, expected, "leadership went to the chosen voter");
}
