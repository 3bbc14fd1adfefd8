//! Revocation end to end: `warden cert revoke` (a serial, then a whole identity) while
//! proxies hold open connections from the revoked peer; the CA's CRL checked by
//! openssl, delivered by the agent over SDS to `warden-proxy` and to a real Envoy, which
//! both refuse the revoked certificate on the next handshake; the proxy closes the open
//! connection from it; the agent drops the revoked SVID and gets none while the identity
//! stays revoked; `warden cert unrevoke` lets it back.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use warden_tests::mesh::{Mesh, Req, ServiceSpec, WorkloadSpec, echo, spiffe_id};
use warden_tests::{fails, ok, try_eventually};
use x509_parser::prelude::{FromDer, X509Certificate};

fn serial(der: &[u8]) -> String {
    let (_, c) = X509Certificate::from_der(der).unwrap();
    hex::encode(c.raw_serial())
}

fn write_pem(dir: &std::path::Path, name: &str, label: &str, der: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, warden_common::files::pem_encode(label, der)).unwrap();
    path
}

/// The CA's CRLs from `GET /crl.pem` on its monitoring port.
fn crl_pem(mesh: &Mesh) -> String {
    let addr = mesh.ca.lock().unwrap().monitoring_addr.clone();
    let (status, body) = warden_tests::http_get(&addr, "/crl.pem");
    assert_eq!(status, 200, "{body}");
    body
}

/// `openssl verify -crl_check` of `leaf` with the CA's roots and CRLs: Ok, or what
/// openssl printed.
fn openssl_crl_check(mesh: &Mesh, leaf: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let leaf = write_pem(dir.path(), "leaf.pem", "CERTIFICATE", leaf);
    let crl = dir.path().join("crl.pem");
    std::fs::write(&crl, crl_pem(mesh)).unwrap();
    let roots = mesh.ca.lock().unwrap().data_dir.join("root-cert.pem");
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-CRLfile"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&roots)
        .arg(&leaf)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

/// The serial of the certificate the agent wrote for `id`, if it holds one.
fn current_serial(mesh: &Mesh, id: &str) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let path = id.strip_prefix("spiffe://cluster.local/").unwrap();
    let file = mesh
        .dir
        .path()
        .join("svids")
        .join(path)
        .join("cert-chain.pem");
    let first = CertificateDer::pem_file_iter(&file).ok()?.next()?.ok()?;
    Some(serial(&first))
}

fn warden(mesh: &Mesh, args: &[&str]) -> std::process::Output {
    mesh.ca.lock().unwrap().warden(args)
}

#[test]
fn a_revoked_peer_is_refused_and_its_open_connection_closed() {
    let mesh = Mesh::builder()
        .svid_ttl("1h")
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080).tcp(9000))
        .start();
    let client = spiffe_id("default", "client");
    let url = mesh.url("server", "http", "/");
    assert_eq!(mesh.get("client", &url).status, 200);

    // The CRLs exist before anything is revoked: one per authority, empty, signed by
    // the root (openssl checks the signature).
    let dir = tempfile::tempdir().unwrap();
    let crl = dir.path().join("crl.pem");
    std::fs::write(&crl, crl_pem(&mesh)).unwrap();
    let roots = mesh.ca.lock().unwrap().data_dir.join("root-cert.pem");
    let out = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&roots)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("verify OK"), "{text}");
    assert!(text.contains("No Revoked Certificates"), "{text}");
    let first_leaf = mesh.leaf_der(&client);
    openssl_crl_check(&mesh, &first_leaf).unwrap();

    // An open mTLS connection from the client, through both proxies.
    let mut open = mesh.tcp_connect("client", 9000).unwrap();
    assert_eq!(echo(&mut open, b"before").unwrap(), b"before");
    mesh.mark_proxy_log("server");

    // Bad input changes nothing and names what was wrong.
    let err = fails(warden(&mesh, &["cert", "revoke", "zz"]));
    assert!(err.contains("expected hexadecimal digits"), "{err}");
    let err = fails(warden(&mesh, &["cert", "revoke", "00ff"]));
    assert!(err.contains("no certificate with serial 00ff"), "{err}");
    let err = fails(warden(
        &mesh,
        &[
            "cert",
            "revoke",
            "--spiffe-id",
            &client,
            "--reason",
            "bored",
        ],
    ));
    assert!(
        err.contains("reason \"bored\"") && err.contains("keyCompromise"),
        "{err}"
    );

    // Revoke the client's certificate (not its identity).
    let first_serial = serial(&first_leaf);
    let revoked_at = Instant::now();
    let out = ok(warden(
        &mesh,
        &["cert", "revoke", &first_serial, "--reason", "keyCompromise"],
    ));
    assert!(out.contains(&first_serial), "{out}");
    // openssl: the certificate is revoked by the CA's CRL.
    let err = openssl_crl_check(&mesh, &first_leaf).unwrap_err();
    assert!(err.contains("certificate revoked"), "{err}");
    // The server proxy closes the open connection from it once the CRL arrives.
    let closed = mesh
        .wait_proxy_log("server", Duration::from_secs(10), |v| {
            v["message"] == "closing an inbound connection: the CA revoked the peer's certificate"
        })
        .unwrap_or_else(|l| panic!("the open connection was not closed: {l:#?}"));
    let took = revoked_at.elapsed();
    assert_eq!(closed["serial"], first_serial.as_str());
    assert_eq!(closed["principal"], client.as_str());
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = open.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "the connection from the revoked certificate still delivers data"
    );
    // The agent dropped it and got a new certificate at once (only the serial was
    // revoked); requests go through with it.
    try_eventually(
        "the client to get a new certificate",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || match current_serial(&mesh, &client) {
            Some(now) if now != first_serial => Ok(()),
            other => Err(other),
        },
    )
    .unwrap();
    try_eventually(
        "requests to go through with the new certificate",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let r = mesh.get("client", &url);
            if r.status == 200 {
                Ok(())
            } else {
                Err(r.status)
            }
        },
    )
    .unwrap();

    // Revoke the identity: its current certificate is in the CRL, it gets no new one.
    let second_serial = current_serial(&mesh, &client).unwrap();
    let out = ok(warden(&mesh, &["cert", "revoke", "--spiffe-id", &client]));
    assert!(out.contains(&second_serial), "{out}");
    // The client proxy still holds the revoked certificate; the server refuses it on
    // the next handshake, naming why.
    mesh.mark_proxy_log("server");
    try_eventually(
        "the server to refuse the revoked client",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || match mesh
            .tcp_connect("client", 9000)
            .and_then(|mut c| echo(&mut c, b"x"))
        {
            Ok(back) if back == b"x" => Err("still accepted"),
            _ => Ok(()),
        },
    )
    .unwrap();
    // (The first refusal may have been the close of a connection accepted just
    // before the CRL arrived; this one meets the CRL at the handshake.)
    assert!(
        mesh.tcp_connect("client", 9000)
            .and_then(|mut c| echo(&mut c, b"y"))
            .map_or(true, |b| b != b"y")
    );
    mesh.wait_proxy_log("server", Duration::from_secs(5), |v| {
        v["message"] == "inbound mTLS handshake refused"
            && v["error"].as_str().unwrap_or_default().contains("revoked")
    })
    .unwrap_or_else(|l| panic!("no refusal naming the revocation: {l:#?}"));
    // The agent holds no certificate for it, and the CA refuses new ones (audited).
    std::thread::sleep(Duration::from_secs(2));
    let audit = ok(warden(
        &mesh,
        &["audit", "list", "--json", "--identity", &client],
    ));
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r["event"] == "cert.revoked" && r["detail"]["reason"] == "keyCompromise"),
        "{rows:#?}"
    );
    let denied = rows
        .iter()
        .filter(|r| r["event"] == "cert.denied" && r["detail"].to_string().contains("revoked"))
        .count();
    assert!(
        denied >= 1,
        "the CA did not refuse the revoked identity: {rows:#?}"
    );
    assert_eq!(
        current_serial(&mesh, &client),
        None,
        "the agent still writes a certificate for the revoked identity"
    );

    // Unrevoke: the agent gets a new certificate and requests work again.
    ok(warden(&mesh, &["cert", "unrevoke", "--spiffe-id", &client]));
    try_eventually(
        "requests to work again after unrevoke",
        Duration::from_secs(40),
        Duration::from_millis(200),
        || {
            let r = mesh.get("client", &url);
            if r.status == 200 {
                Ok(())
            } else {
                Err(r.status)
            }
        },
    )
    .unwrap();
    eprintln!(
        "revocation: the open connection from the revoked certificate closed {took:?} after `warden cert revoke`"
    );
}

/// A real Envoy takes the CRL over SDS (`validation_context.crl`) and refuses a
/// revoked Warden client on its next handshake.
#[test]
fn envoy_refuses_a_revoked_client() {
    use warden_tests::envoy::Envoy;
    let mesh = Mesh::builder()
        .svid_ttl("1h")
        .workload("client", "client")
        .workload_spec(WorkloadSpec::new("envoy-server", "default", "envoy-server").without_proxy())
        .service(ServiceSpec::new("envoy-server", "default").http(8080))
        .start();
    let es = mesh.workload("envoy-server").clone();
    let bootstrap = warden_tests::envoy::server_sidecar(
        &mesh.sds_socket,
        (&es.ip.to_string(), 15006),
        (&es.ip.to_string(), es.ports["http"]),
        &es.spiffe_id(),
        true,
    );
    let envoy = Envoy::start(&mesh.dir.path().join("envoy"), &bootstrap, 1);
    let url = mesh.url("envoy-server", "http", "/behind-envoy");
    let r = mesh.get("client", &url);
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.text(),
        envoy.drain_log().join("\n")
    );
    let updates = envoy.stat("sds.ROOTCA.update_success");

    let client = spiffe_id("default", "client");
    ok(warden(&mesh, &["cert", "revoke", "--spiffe-id", &client]));
    // Envoy takes the new CRL over SDS...
    try_eventually(
        "Envoy to take the CRL",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let now = envoy.stat("sds.ROOTCA.update_success");
            if now > updates { Ok(()) } else { Err(now) }
        },
    )
    .unwrap();
    // ...and refuses the revoked client certificate on the next handshake.
    try_eventually(
        "Envoy to refuse the revoked client",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let r = mesh.send("client", &Req::get(&url));
            match r {
                Ok(r) if r.status == 200 => Err(200),
                _ => Ok(()),
            }
        },
    )
    .unwrap();
    let refused = envoy.stat(&format!("listener.{}_15006.ssl.fail_verify_error", es.ip));
    assert!(
        refused >= 1,
        "Envoy counted no verification failure: {}",
        envoy.drain_log().join("\n")
    );
}
