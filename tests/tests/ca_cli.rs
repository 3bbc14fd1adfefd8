//! The CA and the `warden` CLI as a user runs them: real processes, real TLS, the SQLite
//! file on disk, openssl as the judge of the certificates, SIGTERM for shutdown.
#![allow(clippy::unwrap_used)] // tests fail by panicking

use std::path::Path;
use std::time::Duration;

use warden_tests::{CaProcess, fails, ok, warden};

const TD: &str = "cluster.local";

fn openssl_verify(chain: &Path, root: &Path, purpose: &str) {
    let out = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
        .arg(root)
        .arg(chain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn tamper(db: &Path, sql: &'static str) {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_token_cert_entry_impersonation_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ca = CaProcess::start(&data, &[]);
    let root = data.join("root-cert.pem");
    let root_pem = std::fs::read_to_string(&root).unwrap();

    // A join token; the token is the last line.
    let out = ok(ca.warden(&["token", "create", "--node", "node-1", "--ttl", "10m"]));
    let token = out.lines().last().unwrap().to_string();
    assert!(token.starts_with("wjt_"));
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, &token).unwrap();

    // The node's certificate, with a key made here.
    let node_dir = tmp.path().join("node");
    let ca_url = ca.url();
    let request = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "cert",
            "request",
            "--ca-addr",
            &ca_url,
            "--ca-root",
            root.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        warden(&args)
    };
    ok(request(
        &["--token-file", token_file.to_str().unwrap()],
        &node_dir,
    ));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node_dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    for purpose in ["sslclient", "sslserver"] {
        openssl_verify(&node_dir.join("cert-chain.pem"), &root, purpose);
    }
    let inspected = json_lines(&ok(warden(&[
        "cert",
        "inspect",
        "--json",
        node_dir.join("cert-chain.pem").to_str().unwrap(),
    ])));
    let node_id = format!("spiffe://{TD}/warden/node/node-1");
    assert_eq!(inspected[0]["spiffe_id"], node_id.as_str());
    assert_eq!(inspected[0]["status"], "valid");
    // Single use.
    let err = fails(request(
        &["--token-file", token_file.to_str().unwrap()],
        &tmp.path().join("again"),
    ));
    assert!(err.contains("already used"), "{err}");

    // Register a workload under the node; the node obtains it over mTLS.
    let web = format!("spiffe://{TD}/ns/default/sa/web");
    let out = ok(ca.warden(&[
        "entry",
        "create",
        "--parent-id",
        &node_id,
        "--spiffe-id",
        &web,
        "--selector",
        "unix:uid:1000",
        "--selector",
        "socket:web",
    ]));
    assert!(
        out.contains("Entry ID") && out.contains("unix:uid:1000"),
        "{out}"
    );
    let (cert_path, key_path) = (node_dir.join("cert-chain.pem"), node_dir.join("key.pem"));
    let node_auth = [
        "--cert",
        cert_path.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
    ];
    let web_dir = tmp.path().join("web");
    ok(request(
        &[&node_auth[..], &["--spiffe-id", &web, "--ttl", "1h"]].concat(),
        &web_dir,
    ));
    let inspected = json_lines(&ok(warden(&[
        "cert",
        "inspect",
        "--json",
        web_dir.join("cert-chain.pem").to_str().unwrap(),
    ])));
    assert_eq!(inspected[0]["spiffe_id"], web.as_str());
    let db_id = format!("spiffe://{TD}/ns/default/sa/db");
    let err = fails(request(
        &[&node_auth[..], &["--spiffe-id", &db_id]].concat(),
        &tmp.path().join("db"),
    ));
    assert!(err.contains("no registration entry has parent"), "{err}");

    let entries = json_lines(&ok(ca.warden(&["entry", "list", "--json"])));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["spiffe_id"], web.as_str());

    // The audit log, whole and filtered.
    let rows = json_lines(&ok(ca.warden(&["audit", "list", "--json"])));
    let events: Vec<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    for e in [
        "token.created",
        "token.used",
        "cert.issued",
        "entry.created",
        "cert.denied",
    ] {
        assert!(events.contains(&e), "{e} missing from {events:?}");
    }
    let denied = json_lines(&ok(ca.warden(&[
        "audit",
        "list",
        "--json",
        "--outcome",
        "denied",
    ])));
    assert_eq!(denied.len(), 2);
    assert!(
        denied
            .iter()
            .all(|r| r["outcome"] == "denied" && r["detail"]["reason"].is_string())
    );
    let for_web = json_lines(&ok(ca.warden(&[
        "audit",
        "list",
        "--json",
        "--identity",
        &web,
    ])));
    assert!(!for_web.is_empty() && for_web.iter().all(|r| r["identity"] == web.as_str()));
    let future = ok(ca.warden(&["audit", "list", "--json", "--since", "2999-01-01T00:00:00Z"]));
    assert!(future.is_empty());
    let table = ok(ca.warden(&["audit", "list"]));
    assert!(table.contains("SEQ") && table.contains("cert.issued"));
    let verified = ok(ca.warden(&["audit", "verify"]));
    assert!(
        verified.contains(&format!("{} rows", rows.len())),
        "{verified}"
    );
    // Tokens never appear in the audit log.
    assert!(!ok(ca.warden(&["audit", "list", "--json"])).contains(&token));

    // SIGTERM: clean exit, socket gone.
    let (code, log) = ca.terminate();
    assert_eq!(code, Some(0), "{log:?}");
    assert!(
        log.iter().any(|l| l.contains("warden-ca stopped")),
        "{log:?}"
    );
    assert!(!data.join("admin.sock").exists());

    // Edit one row behind the CA's back; after a restart, verify names it.
    tamper(
        &data.join("warden.db"),
        "UPDATE audit_log SET detail = '{}' WHERE seq = 3",
    )
    .await;
    let ca = CaProcess::start(&data, &[]);
    assert_eq!(
        std::fs::read_to_string(&root).unwrap(),
        root_pem,
        "the root survives restarts"
    );
    let err = fails(ca.warden(&["audit", "verify"]));
    assert!(
        err.contains("broken at row 3") && err.contains("edited"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_server_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    // No CA at that socket.
    let err = fails(warden(&[
        "--admin-socket",
        "/nonexistent/admin.sock",
        "audit",
        "list",
    ]));
    assert!(
        err.contains("/nonexistent/admin.sock does not exist"),
        "{err}"
    );
    // Bad input caught before connecting.
    let err = fails(warden(&[
        "--admin-socket",
        "/x",
        "entry",
        "create",
        "--parent-id",
        "a",
        "--spiffe-id",
        "b",
        "--selector",
        "nocolon",
    ]));
    assert!(err.contains("expected TYPE:VALUE"), "{err}");
    let err = fails(warden(&[
        "token", "create", "--node", "n", "--ttl", "forever",
    ]));
    assert!(err.contains("invalid duration"), "{err}");
    let err = fails(warden(&["cert", "inspect", "/nonexistent.pem"]));
    assert!(err.contains("cannot read /nonexistent.pem"), "{err}");
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let err = fails(warden(&["cert", "inspect", garbage.to_str().unwrap()]));
    assert!(err.contains("holds no certificate"), "{err}");

    // Refusals from the CA, passed on.
    let ca = CaProcess::start(&tmp.path().join("data"), &[]);
    let web = format!("spiffe://{TD}/ns/default/sa/web");
    // (parent-id, spiffe-id, selector) -> what the refusal must say.
    let other_td = "spiffe://other.td/ns/a/sa/b";
    let refused_entries: [([&str; 3], &[&str]); 5] = [
        (["node-1", &web, "unix:uid:1"], &["parent-id", "spiffe://"]),
        ([&web, other_td, "unix:uid:1"], &["not in trust domain"]),
        (
            [&web, &web, "docker:label:a"],
            &["selector type \"docker\" is not known"],
        ),
        (
            [&web, &web, "k8s:zone:a"],
            &["\"k8s:zone:a\" is not understood"],
        ),
        ([&web, &web, "unix:uid:-5"], &["unix:uid:N"]),
    ];
    for ([parent, id, selector], needles) in refused_entries {
        let err = fails(ca.warden(&[
            "entry",
            "create",
            "--parent-id",
            parent,
            "--spiffe-id",
            id,
            "--selector",
            selector,
        ]));
        assert!(needles.iter().all(|n| err.contains(n)), "{err}");
    }
    let err = fails(ca.warden(&["entry", "delete", "no-such-id"]));
    assert!(err.contains("no entry has ID \"no-such-id\""), "{err}");
    let err = fails(ca.warden(&["token", "create", "--node", "bad name"]));
    assert!(err.contains("node name"), "{err}");
    let err = fails(ca.warden(&["audit", "list", "--since", "yesterday"]));
    assert!(err.contains("RFC 3339"), "{err}");
    // Duplicate entries are refused and nothing is added.
    let args = [
        "entry",
        "create",
        "--parent-id",
        &web,
        "--spiffe-id",
        &web,
        "--selector",
        "unix:uid:1",
    ];
    ok(ca.warden(&args));
    let err = fails(ca.warden(&args));
    assert!(err.contains("already grants"), "{err}");
    assert_eq!(
        ok(ca.warden(&["entry", "list", "--json"])).lines().count(),
        1
    );
    let (code, _) = ca.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn server_config_errors_exit_non_zero_naming_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(warden_tests::bin("warden-ca"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir: is required"));

    let cfg = tmp.path().join("ca.yaml");
    std::fs::write(&cfg, "data-dir: /tmp/x\ngrpc-adr: 1.2.3.4:5\n").unwrap();
    let out = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.yaml") && err.contains("grpc-adr"), "{err}");

    std::fs::write(&cfg, "data-dir: [unclosed\n").unwrap();
    let out = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca.yaml"));

    let empty = tmp.path().join("cacerts");
    std::fs::create_dir(&empty).unwrap();
    let data = tmp.path().join("data");
    let out = run(&[
        "run",
        "--data-dir",
        data.to_str().unwrap(),
        "--plugin-certs",
        empty.to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--monitoring-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca-cert.pem"), "{err}");
    assert!(
        !data.join("ca-key.pem").exists(),
        "nothing is made when the plugged-in CA is bad"
    );

    let out = run(&[
        "run",
        "--data-dir",
        data.to_str().unwrap(),
        "--key-type",
        "dsa",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key type"));
}

/// SIGTERM in the middle of a stream of requests: the CA exits cleanly, and every
/// certificate a client received is in the database (none was handed out unrecorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_every_issued_certificate_is_recorded() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    use warden_proto::istio_ca::IstioCertificateRequest;
    use warden_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ca = CaProcess::start(&data, &[]);
    let root = data.join("root-cert.pem");
    let token = ok(ca.warden(&["token", "create", "--node", "busy"]))
        .lines()
        .last()
        .unwrap()
        .to_string();
    std::fs::write(tmp.path().join("token"), &token).unwrap();
    let node = tmp.path().join("node");
    ok(warden(&[
        "cert",
        "request",
        "--ca-addr",
        &ca.url(),
        "--ca-root",
        root.to_str().unwrap(),
        "--token-file",
        tmp.path().join("token").to_str().unwrap(),
        "--out",
        node.to_str().unwrap(),
    ]));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&root).unwrap()))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            std::fs::read(node.join("cert-chain.pem")).unwrap(),
            std::fs::read(node.join("key.pem")).unwrap(),
        ));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let channel = Endpoint::from_shared(ca.url())
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = IstioCertificateServiceClient::new(channel);
        let csr = csr.clone();
        tasks.push(tokio::spawn(async move {
            let mut serials = Vec::new();
            let mut failures = 0;
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(5) && failures < 3 {
                let req = IstioCertificateRequest {
                    csr: csr.clone(),
                    validity_duration: 600,
                    metadata: None,
                };
                match client.create_certificate(req).await {
                    Ok(r) => {
                        let pem = &r.into_inner().cert_chain[0];
                        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
                            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
                            .unwrap();
                        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                        serials.push(cert.raw_serial_as_string().replace(':', ""));
                    }
                    Err(_) => failures += 1,
                }
            }
            serials
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, log) = tokio::task::spawn_blocking(move || ca.terminate())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{log:?}");
    let mut received = Vec::new();
    for t in tasks {
        received.extend(t.await.unwrap());
    }
    assert!(
        !received.is_empty(),
        "some requests should have completed before SIGTERM"
    );

    use sqlx::{Connection, Row};
    let mut db =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", data.join("warden.db").display()))
            .await
            .unwrap();
    let recorded: std::collections::HashSet<String> =
        sqlx::query("SELECT serial FROM issued_certs")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("serial"))
            .collect();
    for s in &received {
        assert!(
            recorded.contains(s),
            "certificate {s} was handed out but is not recorded"
        );
    }
}

/// Signed audit checkpoints as an operator uses them: made at an interval and on
/// demand, kept in a file, checked against the log, pinned to a key, and used to prune.
#[test]
fn audit_checkpoints_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CaProcess::start(
        &tmp.path().join("data"),
        &["--audit-checkpoint-interval", "1s"],
    );
    for node in ["n1", "n2", "n3"] {
        ca.join_token(node);
    }
    let v = warden_tests::wait_log(&ca.log, Duration::from_secs(10), |v| {
        v["message"] == "audit checkpoint"
    })
    .expect("a periodic checkpoint");
    assert_eq!(v["seq"], 3, "{v}");
    let key_mode = std::fs::metadata(ca.data_dir.join("audit-key.pem"))
        .unwrap()
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_mode.mode() & 0o777, 0o600);

    let cp = tmp.path().join("checkpoint.json");
    ok(ca.warden(&["audit", "checkpoint", "--out", cp.to_str().unwrap()]));
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    assert_eq!(c["version"], "warden-audit-checkpoint/v1");
    assert_eq!(c["seq"], 3);
    let key_id = c["key_id"].as_str().unwrap().to_string();
    // openssl, which no one here wrote, verifies the Ed25519 signature over the
    // documented message with the checkpoint's public key.
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw = b64.decode(c["public_key"].as_str().unwrap()).unwrap();
        // SubjectPublicKeyInfo for Ed25519 (RFC 8410): a fixed 12-byte prefix, then the key.
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(&raw);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            b64.encode(&spki)
        );
        let dir = tmp.path();
        std::fs::write(dir.join("pub.pem"), pem).unwrap();
        std::fs::write(
            dir.join("sig"),
            b64.decode(c["signature"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let message = format!(
            "warden-audit-checkpoint/v1\ntrust_domain={}\nseq={}\nhash={}\ntime_nanos={}\n",
            c["trust_domain"].as_str().unwrap(),
            c["seq"],
            c["hash"].as_str().unwrap(),
            c["time_nanos"]
        );
        let verify = |msg: &str| {
            std::fs::write(dir.join("msg"), msg).unwrap();
            std::process::Command::new("openssl")
                .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(dir.join("pub.pem"))
                .arg("-in")
                .arg(dir.join("msg"))
                .arg("-sigfile")
                .arg(dir.join("sig"))
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify(&message), "openssl rejects the checkpoint signature");
        assert!(
            !verify(&message.replace("seq=3", "seq=2")),
            "openssl accepts an altered checkpoint"
        );
    }
    let out = ok(ca.warden(&[
        "audit",
        "verify",
        "--checkpoint",
        cp.to_str().unwrap(),
        "--key-id",
        &key_id,
    ]));
    assert!(out.contains("matches the checkpoint at row 3"), "{out}");

    // Pinned to another key, or altered: refused before the CA is asked.
    let err = fails(ca.warden(&[
        "audit",
        "verify",
        "--checkpoint",
        cp.to_str().unwrap(),
        "--key-id",
        &"ab".repeat(32),
    ]));
    assert!(err.contains("not the expected key"), "{err}");
    let mut altered = c.clone();
    altered["seq"] = serde_json::json!(2);
    let bad = tmp.path().join("altered.json");
    std::fs::write(&bad, altered.to_string()).unwrap();
    let err = fails(ca.warden(&["audit", "verify", "--checkpoint", bad.to_str().unwrap()]));
    assert!(err.contains("signature does not verify"), "{err}");

    // Prune up to it: the rest verifies from the checkpoint; the pruning is audited.
    ca.join_token("n4");
    let out = ok(ca.warden(&["audit", "prune", "--checkpoint", cp.to_str().unwrap()]));
    assert!(out.contains("removed 3 audit rows up to row 3"), "{out}");
    let out = ok(ca.warden(&["audit", "verify"]));
    assert!(out.contains("after the checkpoint at row 3"), "{out}");
    assert!(out.contains(&key_id), "{out}");
    // Pinned: the anchor is signed by the same key, so this passes too.
    ok(ca.warden(&[
        "audit",
        "verify",
        "--checkpoint",
        cp.to_str().unwrap(),
        "--key-id",
        &key_id,
    ]));
    let rows = json_lines(&ok(ca.warden(&["audit", "list", "--json"])));
    assert_eq!(rows.first().unwrap()["seq"], 4);
    assert!(
        rows.iter().any(|r| r["event"] == "audit.pruned"),
        "{rows:?}"
    );
}

/// `--database-url-file`: the CA takes its database URL from a file (as the chart mounts
/// the Secret), so the URL is not in its command line for other users of the node to read.
#[test]
fn the_database_url_comes_from_a_file_not_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("elsewhere.db");
    let url = format!("sqlite://{}", db.display());
    let url_file = tmp.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let ca = CaProcess::start(
        &tmp.path().join("data"),
        &["--database-url-file", url_file.to_str().unwrap()],
    );
    ca.join_token("n1");
    assert!(db.exists(), "the CA opened the database the file names");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", ca.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&url));
}
