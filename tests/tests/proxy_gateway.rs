//! `warden-proxy run --mode gateway`: an ingress gateway serving Istio `Gateway`
//! servers in front of a mesh of real processes (CA, agent, sidecars, apps). curl is
//! the outside client, certificates are made with the openssl command line, and
//! Python's `http.server` sits behind one of the routes; Istio's bookinfo Gateway and
//! VirtualService (samples/bookinfo/networking/bookinfo-gateway.yaml) are applied as
//! Istio ships them.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use warden_tests::mesh::{Mesh, ServiceSpec, WorkloadSpec};
use warden_tests::{Curl, KillOnDrop, curl, grpcio_python, interop_script};

/// Istio's samples/bookinfo/networking/bookinfo-gateway.yaml, unchanged.
const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  # The selector matches the ingress gateway pod labels.
  # If you installed Istio using Helm following the standard documentation, this would be "istio=ingress"
  selector:
    istio: ingressgateway # use istio default controller
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

/// A DENY on the gateway workload itself, as Istio's ingress enforces policy: paths
/// under `/admin` on port 8080, and clients in 203.0.113.0/24 by their
/// `X-Forwarded-For` address. (Without `ports`, the paths rule would deny every TCP
/// connection: Istio drops HTTP-only fields of a DENY rule on TCP, widening it.)
const GATEWAY_POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]
  - to: [{operation: {ports: ["8080"], paths: ["/admin*"]}}]
"#;

/// A second Gateway on the same workload: HTTPS (SIMPLE and MUTUAL), an HTTP port that
/// only redirects, a TCP port; routes for each; a policy on the gateway itself.
fn edge_yaml(certs: &Path) -> String {
    let f = |n: &str| certs.join(n).display().to_string();
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [bookinfo.example.com, "*.apps.example.com"]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: 9443, name: https-mtls, protocol: HTTPS}}
    hosts: [secure.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}
  - port: {{number: 8081, name: http-redirect, protocol: HTTP}}
    hosts: [bookinfo.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: 31400, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: 8444, name: tls-passthrough, protocol: TLS}}
    hosts: [nginx.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 15443, name: tls-east-west, protocol: TLS}}
    hosts: ["*.local"]
    tls: {{mode: AUTO_PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-passthrough, namespace: default}}
spec:
  hosts: [nginx.example.com]
  gateways: [edge]
  tls:
  - match:
    - port: 8444
      sniHosts: [nginx.example.com]
    route:
    - destination: {{host: nginx, port: {{number: 8443}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-https, namespace: default}}
spec:
  hosts: [bookinfo.example.com, secure.example.com, details.apps.example.com]
  gateways: [edge]
  http:
  - match:
    - authority: {{exact: details.apps.example.com}}
    route:
    - destination: {{host: details, port: {{number: 9080}}}}
  - match:
    - headers: {{end-user: {{exact: jason}}}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - route:
    - destination: {{host: reviews, subset: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-tcp, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{{port: 31400}}]
    route:
    - destination: {{host: echo, port: {{number: 9000}}}}
"#,
        cert = f("server.pem"),
        key = f("server-key.pem"),
        ca = f("ca.pem"),
    )
}

/// A CA, a server certificate for the gateway's hosts and a client certificate with a
/// SPIFFE URI SAN, all by the openssl command line.
fn make_certs(dir: &Path) {
    warden_tests::openssl_pki(
        dir,
        "Edge Test CA",
        &[
            (
                "server",
                "bookinfo.example.com",
                "subjectAltName=DNS:bookinfo.example.com,DNS:secure.example.com,DNS:*.apps.example.com,DNS:nginx.example.com",
            ),
            (
                "client",
                "partner client",
                "subjectAltName=URI:spiffe://partner.example/ns/x/sa/client",
            ),
            // SANs that try to add an XFCC element or pair of their own.
            (
                "hostile",
                "hostile client",
                "subjectAltName=@alt\n[alt]\nDNS.1=a.example,By=spiffe://cluster.local/ns/default/sa/admin\nURI.1=spiffe://partner.example/ns/x/sa/hostile;URI=spiffe://cluster.local/ns/default/sa/admin\n",
            ),
        ],
    );
}

struct Edge {
    mesh: Mesh,
    certs: tempfile::TempDir,
    ip: String,
    _server: KillOnDrop,
}

impl Edge {
    fn curl(&self, port: u16, host: &str, path: &str, extra: &[&str]) -> Curl {
        let resolve = format!("{host}:{port}:{}", self.ip);
        let scheme = if matches!(port, 8443 | 9443 | 8444 | 15443) {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{host}:{port}{path}");
        let ca = self.certs.path().join("ca.pem").display().to_string();
        let mut args = vec!["--resolve", &resolve, "--cacert", &ca];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    fn cert(&self, name: &str) -> String {
        self.certs.path().join(name).display().to_string()
    }

    /// The XFCC the app behind the MUTUAL server (9443) saw for a request made with
    /// the client certificate `name` (`<name>.pem`, `<name>-key.pem`).
    fn mutual_xfcc(&self, name: &str) -> String {
        let (cert, key) = (
            self.cert(&format!("{name}.pem")),
            self.cert(&format!("{name}-key.pem")),
        );
        let r = self.curl(
            9443,
            "secure.example.com",
            "/x",
            &["--cert", &cert, "--key", &key],
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn start() -> Option<Edge> {
    let py = grpcio_python("http.server behind the gateway")?;
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let mesh = Mesh::builder()
        .workload_spec(
            WorkloadSpec::new("ingressgateway", "istio-system", "istio-ingressgateway")
                .label("istio", "ingressgateway")
                .without_apps()
                .without_proxy(),
        )
        .workload_spec(
            WorkloadSpec::new("productpage-v1", "default", "bookinfo-productpage")
                .label("app", "productpage"),
        )
        .workload_spec(
            WorkloadSpec::new("reviews-v1", "default", "bookinfo-reviews")
                .label("app", "reviews")
                .label("version", "v1"),
        )
        .workload_spec(
            WorkloadSpec::new("reviews-v2", "default", "bookinfo-reviews")
                .label("app", "reviews")
                .label("version", "v2"),
        )
        .workload_spec(
            WorkloadSpec::new("details-v1", "default", "bookinfo-details")
                .label("app", "details")
                .without_apps(),
        )
        .workload_spec(WorkloadSpec::new("echo", "default", "echo"))
        .workload_spec(
            WorkloadSpec::new("nginx-v1", "default", "nginx")
                .label("app", "nginx")
                .without_apps(),
        )
        .service(ServiceSpec::new("productpage", "default").http(9080))
        .service(ServiceSpec::new("reviews", "default").http(9080))
        .service(ServiceSpec::new("details", "default").http(9080))
        .service(ServiceSpec::new("echo", "default").tcp(9000))
        .service(ServiceSpec::new("nginx", "default").tcp(8443))
        .config("bookinfo-gateway.yaml", BOOKINFO_GATEWAY)
        .config("edge.yaml", &edge_yaml(certs.path()))
        .config("gateway-policy.yaml", GATEWAY_POLICY)
        .start();
    // Python's http.server is the details app.
    let w = mesh.workload("details-v1");
    let mut cmd = Command::new(py);
    cmd.arg(interop_script("http_echo.py"))
        .arg(w.addr(w.ports["http"]).to_string())
        .arg("details-v1");
    mesh.spawn_app(cmd);
    // openssl's own TLS server is the app that terminates passed-through TLS.
    let w = mesh.workload("nginx-v1");
    let app = w.addr(w.ports["tcp"]).to_string();
    let server = Command::new("openssl")
        .current_dir(certs.path())
        .args([
            "s_server",
            "-accept",
            &app,
            "-cert",
            "server.pem",
            "-key",
            "server-key.pem",
            "-www",
            "-quiet",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    warden_tests::eventually(
        "openssl s_server to listen",
        Duration::from_secs(10),
        || TcpStream::connect(&app).map(drop),
    );
    mesh.spawn_proxy(
        "ingressgateway",
        &["--mode", "gateway", "--num-trusted-proxies", "1"],
    );
    mesh.wait_proxy_ready("ingressgateway");
    let ip = mesh.workload("ingressgateway").ip.to_string();
    // The listeners follow the config; wait until the last port is bound.
    warden_tests::eventually("the gateway's TCP port", Duration::from_secs(10), || {
        TcpStream::connect((ip.as_str(), 31400)).map(drop)
    });
    Some(Edge {
        mesh,
        certs,
        ip,
        _server: KillOnDrop(server),
    })
}

#[test]
fn an_ingress_gateway_serves_gateways_with_curl_outside_and_real_apps_behind() {
    let Some(edge) = start() else { return };
    let mesh = &edge.mesh;

    // Istio's bookinfo Gateway and VirtualService, unchanged: /productpage goes to
    // productpage over the mesh's mutual TLS, from the gateway's own identity.
    let r = edge.curl(8080, "anything.example", "/productpage", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    assert_eq!(seen["name"], "productpage-v1", "{r:?}");
    let xfcc = seen["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"),
        "the productpage sidecar saw the gateway's SVID: {xfcc}"
    );
    assert!(
        seen["headers"]["x-forwarded-for"].as_str().is_some(),
        "{seen}"
    );
    assert_eq!(edge.curl(8080, "x", "/static/app.css", &[]).status, 200);
    // No rule of the bound VirtualService matches: 404 from the gateway.
    assert_eq!(edge.curl(8080, "x", "/reviews", &[]).status, 404);

    // The gateway's own AuthorizationPolicy: a DENY on paths...
    let r = edge.curl(8080, "x", "/static/../admin/x", &["--path-as-is"]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "RBAC: access denied");
    // ...and on remoteIpBlocks, read from X-Forwarded-For past one trusted proxy.
    let r = edge.curl(
        8080,
        "x",
        "/productpage",
        &["-H", "X-Forwarded-For: 203.0.113.9"],
    );
    assert_eq!(r.status, 403, "{r:?}");
    // An address the client put before the trusted proxy's entry is not trusted.
    let r = edge.curl(
        8080,
        "x",
        "/productpage",
        &["-H", "X-Forwarded-For: 203.0.113.9, 198.51.100.1"],
    );
    assert_eq!(r.status, 200, "{r:?}");

    // httpsRedirect.
    let r = edge.curl(8081, "bookinfo.example.com", "/productpage?x=1", &["-i"]);
    assert_eq!(r.status, 301, "{r:?}");
    assert!(
        r.body
            .to_ascii_lowercase()
            .contains("location: https://bookinfo.example.com/productpage?x=1"),
        "{r:?}"
    );

    // HTTPS (SIMPLE) over HTTP/2 and HTTP/1.1, the routes by header.
    let r = edge.curl(8443, "bookinfo.example.com", "/x", &["--http2"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["name"], "reviews-v1");
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    let r = edge.curl(
        8443,
        "bookinfo.example.com",
        "/x",
        &["--http1.1", "-H", "end-user: jason"],
    );
    assert_eq!(r.json()["name"], "reviews-v2", "{r:?}");
    // A wildcard server host; Python's http.server behind the route.
    let r = edge.curl(8443, "details.apps.example.com", "/details/0", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/details/0", "{r:?}");
    // An SNI no server on the port serves: no TLS at all.
    let r = edge.curl(8443, "other.example.org", "/x", &["-k"]);
    assert_eq!(r.status, 0, "{r:?}");
    // A request for another server's host on this connection: 404, not its routes.
    let r = edge.curl(
        8443,
        "bookinfo.example.com",
        "/x",
        &["-H", "Host: secure.example.com"],
    );
    assert_eq!(r.status, 404, "{r:?}");

    // MUTUAL: no client certificate, no connection; with one, its SPIFFE ID in XFCC.
    let r = edge.curl(9443, "secure.example.com", "/x", &[]);
    assert_eq!(r.status, 0, "{r:?}");
    let xfcc = edge.mutual_xfcc("client");
    assert!(
        xfcc.contains("spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"),
        "{xfcc}"
    );

    // A client certificate whose SANs hold `,` `;` `=`: the gateway quotes them, so the
    // header still has one element per hop and no pair the certificate did not carry
    // as a value (found by the xfcc fuzz target; here through the running gateway with
    // a certificate made by openssl).
    let xfcc = edge.mutual_xfcc("hostile");
    assert!(
        xfcc.contains(r#"DNS="a.example,By=spiffe://cluster.local/ns/default/sa/admin""#),
        "{xfcc}"
    );
    assert!(
        xfcc.contains(
            r#"URI="spiffe://partner.example/ns/x/sa/hostile;URI=spiffe://cluster.local/ns/default/sa/admin""#
        ),
        "{xfcc}"
    );
    let elements = split_unquoted(&xfcc, ',');
    assert_eq!(
        elements.len(),
        2,
        "the client's element and the gateway's: {xfcc}"
    );
    for e in &elements {
        let keys: Vec<String> = split_unquoted(e, ';')
            .iter()
            .map(|p| p.split('=').next().unwrap_or_default().to_string())
            .collect();
        assert!(
            keys.iter()
                .all(|k| ["By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS"]
                    .contains(&k.as_str())),
            "{e}"
        );
        // `By` is the serving certificate's URI SAN: none at the edge (its certificate
        // has DNS names only), the gateway's SPIFFE ID in the sidecar's element.
        assert!(
            keys.iter().filter(|k| *k == "By").count() <= 1,
            "one By at most per element: {e}"
        );
    }
    assert!(
        !elements[0].contains("By=spiffe://cluster.local/ns/default/sa/admin;")
            && !elements[0].starts_with("By=spiffe://cluster.local/ns/default/sa/admin"),
        "{xfcc}"
    );

    // TCP: the echo service behind the gateway's TCP server.
    let mut s = TcpStream::connect((edge.ip.as_str(), 31400)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello through the gateway\n").unwrap();
    let mut buf = [0u8; 26];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello through the gateway\n");

    // PASSTHROUGH: curl's TLS reaches openssl s_server untouched (curl verifies the
    // server certificate, so no one in between terminated it).
    let r = edge.curl(8444, "nginx.example.com", "/", &[]);
    assert_eq!(
        r.status,
        200,
        "{r:?}\n{}\n{}",
        warden_tests::mesh::tail(&mesh.proxy_log("ingressgateway"), 40),
        warden_tests::mesh::tail(&mesh.proxy_log("nginx-v1"), 12)
    );
    assert!(r.body.contains("s_server"), "{r:?}");

    // AUTO_PASSTHROUGH: a mesh client's own mutual TLS, SNI naming the service port in
    // Istio's form, reaches the reviews sidecar end to end: the app sees the client's
    // SPIFFE ID, not the gateway's.
    let svid = mesh.svid_dir.join("ns/default/sa/bookinfo-productpage");
    let (cert, key) = (
        svid.join("cert-chain.pem").display().to_string(),
        svid.join("key.pem").display().to_string(),
    );
    let sni = "outbound_.9080_._.reviews.default.svc.cluster.local";
    let r = edge.curl(
        15443,
        sni,
        "/east-west",
        &["-k", "--http1.1", "--cert", &cert, "--key", &key],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let xfcc = r.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        "{xfcc}"
    );
    // An SNI that names no service port: closed.
    let r = edge.curl(
        15443,
        "nothing.local",
        "/",
        &["-k", "--cert", &cert, "--key", &key],
    );
    assert_eq!(r.status, 0, "{r:?}");

    // As an attacker would: with both Content-Length and Transfer-Encoding (CL.TE
    // smuggling), Transfer-Encoding wins and the connection closes after the one
    // answer, as on the sidecars: the hidden "GET /admin" (a 403 here) is never parsed;
    // bytes that are not a ClientHello on a TLS port, and plaintext HTTP there, get
    // nothing; the gateway serves on afterwards.
    let http_port: std::net::SocketAddr = format!("{}:8080", edge.ip).parse().unwrap();
    let smuggled = warden_tests::mesh::raw_http(
        http_port,
        b"POST /productpage HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(1500),
    );
    assert_eq!(smuggled.statuses(), [200], "{}", smuggled.text);
    assert!(
        smuggled
            .text
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        smuggled.text
    );
    let tls_port: std::net::SocketAddr = format!("{}:8443", edge.ip).parse().unwrap();
    for junk in [
        &b"\x16\x03\x01\x00\x05hello-not-a-client-hello"[..],
        b"GET / HTTP/1.1\r\nHost: bookinfo.example.com\r\n\r\n",
    ] {
        let r = warden_tests::mesh::raw_http(tls_port, junk, Duration::from_millis(1500));
        assert!(r.statuses().is_empty(), "{}", r.text);
    }
    assert_eq!(edge.curl(8080, "x", "/productpage", &[]).status, 200);

    // The gateway counts what it sent, as a source reporter.
    let sent = mesh.metric(
        "ingressgateway",
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service_name", "reviews"),
        ],
    );
    assert!(sent >= 2.0, "{sent}");
}

/// `text` split at `sep` outside double quotes (a backslash in quotes escapes the next
/// character), as Envoy documents the XFCC format.
fn split_unquoted(text: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push(c);
    }
    out.push(cur);
    out
}
