//! Wire compatibility of the certificate API with a client Warden did not write:
//! Python's grpcio (gRPC C-core) with messages encoded by hand from Istio's field
//! numbers (`tests/interop/istio_ca_client.py`). `./test.sh` installs grpcio into
//! `.venv`; without it this test is skipped loudly, or fails under CI=true.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking; env read here

use std::path::PathBuf;
use std::process::Command;

use warden_tests::{CaProcess, ok, run_json, warden};

#[test]
fn python_grpcio_client_gets_and_is_refused_certificates() {
    let Some(py) = warden_tests::grpcio_python("grpcio interop") else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/istio_ca_client.py");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ca = CaProcess::start(&data, &[]);
    let root = data.join("root-cert.pem");
    let token = ok(ca.warden(&["token", "create", "--node", "py-node"]))
        .lines()
        .last()
        .unwrap()
        .to_string();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let addr = format!("localhost:{}", ca.grpc_addr.rsplit(':').next().unwrap());
    let client = |out: &str, extra: &[&str]| {
        let (ok, r) = run_json(
            Command::new(&py)
                .arg(&script)
                .args([
                    "--addr",
                    &addr,
                    "--root",
                    root.to_str().unwrap(),
                    "--token-file",
                    token_file.to_str().unwrap(),
                ])
                .args(["--out", tmp.path().join(out).to_str().unwrap()])
                .args(extra),
        );
        assert!(ok, "client failed: {r}");
        r
    };

    // ImpersonatedIdentity in the Struct (field 4) is read: a join token may not impersonate.
    let r = client(
        "imp",
        &[
            "--impersonate",
            "spiffe://cluster.local/ns/default/sa/web",
            "--expect-code",
            "PERMISSION_DENIED",
        ],
    );
    assert!(
        r["details"]
            .as_str()
            .unwrap()
            .contains("join token proves only"),
        "{r}"
    );

    // csr (field 1) and validity_duration (field 3) are read; cert_chain (field 1) is answered.
    let r = client("node", &["--ttl", "600"]);
    assert_eq!(r["chain_len"], 2, "{r}");
    let chain = tmp.path().join("node/cert-chain.pem");
    let v = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(tmp.path().join("node/root-cert.pem"))
        .arg(&chain)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let info: serde_json::Value = serde_json::from_str(
        ok(warden(&[
            "cert",
            "inspect",
            "--json",
            chain.to_str().unwrap(),
        ]))
        .trim(),
    )
    .unwrap();
    assert_eq!(
        info["spiffe_id"],
        "spiffe://cluster.local/warden/node/py-node"
    );
    let parse = |k: &str| {
        time::OffsetDateTime::parse(
            info[k].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let lifetime = (parse("not_after") - parse("not_before")).whole_seconds();
    assert_eq!(
        lifetime,
        600 + 120,
        "600s requested plus the 2-minute backdating"
    );

    // A refused request reaches grpcio as UNAUTHENTICATED with the reason.
    let r = client("again", &["--expect-code", "UNAUTHENTICATED"]);
    assert!(
        r["details"].as_str().unwrap().contains("already used"),
        "{r}"
    );

    // A request over the CA's 64 KiB message limit: RESOURCE_EXHAUSTED, as gRPC's
    // status codes say, not tonic's OUT_OF_RANGE.
    let r = client(
        "huge",
        &[
            "--csr-bytes",
            "100000",
            "--expect-code",
            "RESOURCE_EXHAUSTED",
        ],
    );
    assert!(r["details"].as_str().unwrap().contains("too large"), "{r}");
}

/// The CA's admin API on its unix socket with grpcio (`tests/interop/admin_client.py`),
/// which sends the socket path as the HTTP/2 `:authority`: served, and an oversized
/// request refused with RESOURCE_EXHAUSTED.
#[test]
fn python_grpcio_client_is_served_on_the_admin_socket() {
    let Some(py) = warden_tests::grpcio_python("grpcio on the admin socket") else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/admin_client.py");
    let tmp = tempfile::tempdir().unwrap();
    let ca = CaProcess::start(&tmp.path().join("data"), &[]);
    let id = "spiffe://cluster.local/ns/default/sa/py";
    ca.entry("py-node", id, &["unix:uid:1000"]);
    let socket = ca.admin_socket();
    let client = |extra: &[&str]| {
        run_json(
            Command::new(&py)
                .arg(&script)
                .args(["--socket", socket.to_str().unwrap()])
                .args(extra),
        )
    };
    let (ok, r) = client(&[]);
    assert!(ok, "ListEntries failed: {r}");
    assert_eq!(r["spiffe_ids"], serde_json::json!([id]), "{r}");

    let (ok, r) = client(&[
        "--oversize",
        "100000",
        "--expect-code",
        "RESOURCE_EXHAUSTED",
    ]);
    assert!(ok, "{r}");
    assert!(r["details"].as_str().unwrap().contains("too large"), "{r}");
}

/// A node over its rate, with grpcio renewing over mutual TLS: RESOURCE_EXHAUSTED with
/// the `grpc-retry-pushback-ms` trailer gRPC clients honour (C-core's retry policy,
/// Warden's agent), naming the limit.
#[test]
fn python_grpcio_client_over_its_rate_gets_a_retry_hint() {
    let Some(py) = warden_tests::grpcio_python("grpcio pushback") else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/istio_ca_client.py");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // One certificate request per node per 100 s, none in reserve.
    let ca = CaProcess::start(&data, &["--csr-node-rate", "0.01", "--csr-node-burst", "1"]);
    let root = data.join("root-cert.pem");
    let token = ok(ca.warden(&["token", "create", "--node", "busy-node"]))
        .lines()
        .last()
        .unwrap()
        .to_string();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let addr = format!("localhost:{}", ca.grpc_addr.rsplit(':').next().unwrap());
    let run = |args: &[&str]| {
        let (ok, r) = run_json(
            Command::new(&py)
                .arg(&script)
                .args(["--addr", &addr, "--root", root.to_str().unwrap()])
                .args(args),
        );
        assert!(ok, "client failed: {r}");
        r
    };
    let node = tmp.path().join("node");
    let r = run(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "--out",
        node.to_str().unwrap(),
    ]);
    assert_eq!(r["ok"], true, "{r}");
    // The node renews at once over mTLS: its bucket is empty.
    let r = run(&[
        "--cert",
        node.join("cert-chain.pem").to_str().unwrap(),
        "--key",
        node.join("key.pem").to_str().unwrap(),
        "--out",
        tmp.path().join("again").to_str().unwrap(),
        "--expect-code",
        "RESOURCE_EXHAUSTED",
    ]);
    assert!(
        r["details"]
            .as_str()
            .unwrap()
            .contains("over its certificate request rate"),
        "{r}"
    );
    let pushback: u64 = r["trailers"]["grpc-retry-pushback-ms"]
        .as_str()
        .unwrap_or_else(|| panic!("no grpc-retry-pushback-ms trailer: {r}"))
        .parse()
        .unwrap();
    assert!(pushback > 1000, "{r}");
}
