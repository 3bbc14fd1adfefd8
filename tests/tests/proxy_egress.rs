//! Egress to `MESH_EXTERNAL` ServiceEntries through a client's `warden-proxy`, as an
//! Istio sidecar sends it: curl (a client no one here wrote) asks the outbound proxy
//! for plain `http://<host>/`, and the proxy reaches servers no one here wrote either:
//! `openssl s_server -www` with a certificate the openssl command line made (TLS
//! originated by the DestinationRule, `SIMPLE` and `MUTUAL`, Istio's "egress TLS
//! origination" task with port 80's `targetPort` on the TLS port), and Python's
//! `http.server` in plaintext (STATIC, DNS and NONE resolution). A wrong
//! `subjectAltNames` is refused with a 503 naming both sides; `ISTIO_MUTUAL` reaches a
//! `MESH_EXTERNAL` workload that runs a proxy over the mesh's mutual TLS; the outbound
//! TCP listener originates TLS for raw bytes too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use warden_tests::mesh::{Mesh, WorkloadSpec};
use warden_tests::{KillOnDrop, curl, grpcio_python, interop_script};

/// A CA, the external server's certificate (api.example.com, mtls.example.com) and the
/// client certificate the sidecar presents for `MUTUAL`, all by the openssl command line.
fn make_certs(dir: &Path) {
    warden_tests::openssl_pki(
        dir,
        "Egress Test CA",
        &[
            (
                "server",
                "api.example.com",
                "subjectAltName=DNS:api.example.com,DNS:mtls.example.com",
            ),
            (
                "client",
                "sleep client",
                "subjectAltName=DNS:sleep.example.com",
            ),
        ],
    );
}

/// A port nothing listens on now, on 127.0.0.1 (outside every mesh's subnet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl s_server -www` on 127.0.0.1:`port` with the server certificate (and
/// `extra` flags), once it listens.
fn s_server(dir: &Path, port: u16, extra: &[&str]) -> KillOnDrop {
    let accept = format!("127.0.0.1:{port}");
    let child = Command::new("openssl")
        .current_dir(dir)
        .args(["s_server", "-accept", &accept])
        .args([
            "-cert",
            "server.pem",
            "-key",
            "server-key.pem",
            "-www",
            "-quiet",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    warden_tests::eventually(
        format!("openssl s_server on {accept}"),
        Duration::from_secs(10),
        || TcpStream::connect(&accept).map(drop),
    );
    KillOnDrop(child)
}

/// Where the `legacy` workload's http.server listens.
const LEGACY_APP_PORT: u16 = 18080;

/// The ServiceEntries and DestinationRules: `MESH_EXTERNAL` (the default location)
/// services on 127.0.0.1, TLS origination by the DestinationRules.
fn egress_yaml(certs: &Path, tls_port: u16, mtls_port: u16, http_port: u16) -> String {
    let f = |n: &str| certs.join(n).display().to_string();
    format!(
        r#"
# Istio's egress TLS origination task: the app speaks HTTP to port 80, whose
# targetPort is the TLS port; the DestinationRule originates TLS on port 80.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {tls_port}}}
  - {{number: 9443, name: tcp-tls, protocol: TCP, targetPort: {tls_port}}}
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: default}}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, caCertificates: {ca}}}
    - port: {{number: 9443}}
      tls: {{mode: SIMPLE, caCertificates: {ca}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mtls, namespace: default}}
spec:
  hosts: [mtls.example.com]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {mtls_port}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: mtls, namespace: default}}
spec:
  host: mtls.example.com
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: {client}
      privateKey: {client_key}
      caCertificates: {ca}
---
# The same server, asked to prove a name its certificate does not have.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pinned, namespace: default}}
spec:
  hosts: [pinned.example.com]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {tls_port}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pinned, namespace: default}}
spec:
  host: pinned.example.com
  trafficPolicy:
    tls:
      mode: SIMPLE
      caCertificates: {ca}
      sni: api.example.com
      subjectAltNames: [payments.example.com]
---
# Plaintext: no DestinationRule. STATIC, DNS (an endpoint by name) and NONE (the
# host the client asks for, at the port it asks for).
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: default}}
spec:
  hosts: [plain.example.com]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {http_port}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: by-name, namespace: default}}
spec:
  hosts: [by-name.example.com]
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {http_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: localhost, namespace: default}}
spec:
  hosts: [localhost]
  resolution: NONE
  ports: [{{number: {http_port}, name: http, protocol: HTTP}}]
---
# MESH_EXTERNAL, but its workload runs a proxy: ISTIO_MUTUAL asks for the mesh's TLS.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: default}}
spec:
  hosts: [legacy.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {LEGACY_APP_PORT}}}]
  workloadSelector: {{labels: {{app: legacy}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: legacy, namespace: default}}
spec:
  host: legacy.example.com
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
"#,
        ca = f("ca.pem"),
        client = f("client.pem"),
        client_key = f("client-key.pem"),
    )
}

#[test]
fn a_sidecar_reaches_external_services_and_originates_tls() {
    let Some(py) = grpcio_python("http.server as an external service") else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let (tls_port, mtls_port, http_port) = (free_port(), free_port(), free_port());
    let _api = s_server(certs.path(), tls_port, &[]);
    let _mtls = s_server(
        certs.path(),
        mtls_port,
        &["-Verify", "1", "-CAfile", "ca.pem"],
    );
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("sleep", "default", "sleep").without_apps())
        .workload_spec(WorkloadSpec::new("legacy", "default", "legacy").without_apps())
        .config(
            "egress.yaml",
            &egress_yaml(certs.path(), tls_port, mtls_port, http_port),
        )
        .start();
    let mut cmd = Command::new(&py);
    cmd.arg(interop_script("http_echo.py"))
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("external");
    mesh.spawn_app(cmd);
    let legacy = mesh.workload("legacy");
    let mut cmd = Command::new(&py);
    cmd.arg(interop_script("http_echo.py"))
        .arg(legacy.addr(LEGACY_APP_PORT).to_string())
        .arg("legacy");
    mesh.spawn_app(cmd);
    let sleep = mesh.workload("sleep");
    let proxy = format!("http://{}", sleep.outbound());
    let get = |url: &str| curl(&["--proxy", &proxy, url]);

    // SIMPLE: plain HTTP from the app, TLS from the sidecar to the TLS port, the
    // server's certificate checked against the CA for the name the request used.
    let r = get("http://api.example.com/");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("s_server -accept"), "{r:?}");
    assert!(r.body.contains("no client certificate available"), "{r:?}");
    // Again, on a new connection (s_server -www answers HTTP/1.0 and closes).
    let r = get("http://api.example.com/again");
    assert_eq!(r.status, 200, "{r:?}");

    // MUTUAL: the sidecar presents clientCertificate to a server that requires one.
    let r = get("http://mtls.example.com/");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("Subject: CN=sleep client"), "{r:?}");

    // subjectAltNames the certificate lacks: 503 naming what was wanted and found.
    let r = get("http://pinned.example.com/");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("TLS error: pinned.example.com:80")
            && r.body.contains(
                "the server's certificate names DNS:api.example.com, DNS:mtls.example.com, none of tls.subjectAltNames [payments.example.com]"
            ),
        "{r:?}"
    );

    // Plaintext to http.server: STATIC, a DNS endpoint by name, NONE.
    let plain = [
        (
            "http://plain.example.com".to_string(),
            "plain.example.com".to_string(),
        ),
        (
            "http://by-name.example.com".into(),
            "by-name.example.com".into(),
        ),
        (
            format!("http://localhost:{http_port}"),
            format!("localhost:{http_port}"),
        ),
    ];
    for (base, host) in &plain {
        let url = format!("{base}/hello?x=1");
        let r = get(&url);
        assert_eq!(r.status, 200, "{url}: {r:?}");
        let seen = r.json();
        assert_eq!(seen["path"], "/hello?x=1", "{url}: {seen}");
        let headers = seen["headers"].as_array().unwrap();
        assert!(
            headers
                .iter()
                .any(|h| h[0] == "host" && h[1] == host.as_str()),
            "{url}: {seen}"
        );
        // No mesh identity goes to an external service.
        assert!(
            !headers.iter().any(|h| h[0] == "x-forwarded-client-cert"),
            "{url}: {seen}"
        );
    }

    // ISTIO_MUTUAL to a MESH_EXTERNAL service: the mesh's mutual TLS to the workload's
    // proxy, which tells the app who called.
    let r = get("http://legacy.example.com/");
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    let xfcc = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-forwarded-client-cert")
        .map(|h| h[1].as_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/sleep"),
        "{seen}"
    );

    // The outbound TCP listener for api.example.com:9443 originates TLS for raw bytes.
    let mut tcp = warden_tests::eventually(
        "the outbound TCP listener on 9443",
        Duration::from_secs(10),
        || TcpStream::connect(sleep.addr(9443)),
    );
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200 ok"), "{answer:?}");

    // Istio's labels for an external destination: the host, no workload.
    let ok = mesh.metric(
        "sleep",
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", "api.example.com"),
            ("destination_service_name", "api.example.com"),
            ("destination_service_namespace", "default"),
            ("destination_workload", "unknown"),
            ("response_code", "200"),
        ],
    );
    assert_eq!(ok, 2.0);
    let refused = mesh.metric(
        "sleep",
        "istio_requests_total",
        &[
            ("destination_service", "pinned.example.com"),
            ("response_code", "503"),
            ("response_flags", "UF"),
        ],
    );
    assert_eq!(refused, 1.0);
    let tcp_opened = mesh.metric(
        "sleep",
        "istio_tcp_connections_opened_total",
        &[("destination_service", "api.example.com")],
    );
    assert_eq!(tcp_opened, 1.0);
}

/// Istio's outbound traffic policy for hosts outside the registry: `ALLOW_ANY` (the
/// default) passes the request through to the host and port asked for, counted as
/// `PassthroughCluster`; `REGISTRY_ONLY` refuses it with 502.
#[test]
fn hosts_outside_the_registry_follow_the_outbound_traffic_policy() {
    let Some(py) = grpcio_python("http.server outside the mesh") else {
        return;
    };
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .start();
    let port = free_port();
    let mut cmd = Command::new(&py);
    cmd.arg(interop_script("http_echo.py"))
        .arg(format!("127.0.0.1:{port}"))
        .arg("outside");
    mesh.spawn_app(cmd);
    let proxy = format!("http://{}", mesh.workload("client").outbound());
    let url = format!("http://127.0.0.1:{port}/passed?x=1");

    let r = curl(&["--proxy", &proxy, &url]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/passed?x=1", "{r:?}");
    let through = mesh.metric(
        "client",
        "istio_requests_total",
        &[("destination_service_name", "PassthroughCluster")],
    );
    assert_eq!(through, 1.0);
    // The workload's own address is never passed through (it would loop through its
    // own proxy).
    let own = format!("http://{}/", mesh.workload("client").outbound());
    let r = curl(&["--proxy", &proxy, &own]);
    assert_eq!(r.status, 503, "{r:?}");

    // REGISTRY_ONLY: 502, nothing reaches the server.
    let mesh_config = mesh.dir.path().join("registry-only.yaml");
    std::fs::write(
        &mesh_config,
        "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n",
    )
    .unwrap();
    let path = mesh_config.display().to_string();
    mesh.spawn_proxy("client", &["--mesh-config", &path]);
    mesh.wait_proxy_ready("client");
    let _ = mesh.app_log(); // what the server logged so far
    let r = curl(&["--proxy", &proxy, &url]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("REGISTRY_ONLY"), "{r:?}");
    assert!(
        mesh.app_log().iter().all(|v| v["message"] != "request"),
        "a refused request reached the server"
    );
}
