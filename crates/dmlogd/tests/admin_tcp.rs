//! The admin API over TCP: TLS with the node's certificate and a token;
//! every refusal (no token, a wrong token, a client that does not trust
//! the cluster CA, plaintext) and the accepted call, through `dmlogctl`.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA and a node certificate for 127.0.0.1, as PEM files in `dir`
/// (`<prefix>ca.pem`, `<prefix>node.pem`, `<prefix>node.key`).
fn certificates(dir: &Path, prefix: &str) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, format!("{prefix} CA"));
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names = vec!["127.0.0.1".to_owned(), replication::grpc::node_name(regions::NodeId(1))];
    let node = CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join(format!("{prefix}ca.pem")), ca.pem()).unwrap();
    std::fs::write(dir.join(format!("{prefix}node.pem")), node.pem()).unwrap();
    std::fs::write(dir.join(format!("{prefix}node.key")), key.serialize_pem()).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ctl(dir: &Path, admin: &str, ca: &str, token_file: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dmlogctl"));
    c.args(["--connect", admin, "--ca"]).arg(dir.join(ca)).arg("status").env_remove("DMLOGD_TOKEN_FILE");
    if let Some(t) = token_file {
        c.arg("--token-file").arg(dir.join(t));
    }
    c.output().unwrap()
}

#[test]
fn the_tcp_admin_api_answers_only_tls_clients_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d, "");
    certificates(d, "other-");
    std::fs::write(d.join("token"), "s3cret-token-0123456789\n").unwrap();
    std::fs::write(d.join("wrong"), "not-the-token-0123456789\n").unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "id = 1\ndata_dir = \"{p}/data\"\nlisten = \"127.0.0.1:{port}\"\nkernel = \"unix:{p}/kernel.sock\"\n\
         admin_tcp = \"{admin}\"\nadmin_token_file = \"{p}/token\"\n\
         [tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/node.pem\"\nkey = \"{p}/node.key\"\n",
        p = d.display(),
        port = free_port(),
    );
    std::fs::write(d.join("dmlogd.toml"), config).unwrap();
    let log = std::fs::File::create(d.join("dmlogd.log")).unwrap();
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_dmlogd"))
            .arg("--config")
            .arg(d.join("dmlogd.toml"))
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The right token over TLS: answered (once the node has elected itself).
    let until = Instant::now() + Duration::from_secs(30);
    let ok = loop {
        let out = ctl(d, &admin, "ca.pem", Some("token"));
        if out.status.code() == Some(0) {
            break out;
        }
        assert!(
            Instant::now() < until,
            "never answered: {out:?}\n{}",
            std::fs::read_to_string(d.join("dmlogd.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(String::from_utf8_lossy(&ok.stdout).contains("health: ok"));

    let refused = |out: Output, why: &str| {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "expected {why:?} in {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    };
    refused(ctl(d, &admin, "ca.pem", Some("wrong")), "valid token");
    refused(ctl(d, &admin, "ca.pem", None), "--connect needs --token-file");
    // A client that trusts another CA does not accept the node's certificate.
    refused(ctl(d, &admin, "other-ca.pem", Some("token")), &admin);

    // Plaintext HTTP/2 to the TLS listener gets nothing.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let plain = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await;
        match ch {
            Err(e) => Err(e.to_string()),
            Ok(ch) => node::admin::pb::admin_client::AdminClient::new(ch)
                .status(node::admin::pb::StatusRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    });
    assert!(plain.is_err(), "a plaintext call was answered");
}
