//! `warden-proxy` and a real Envoy (1.40, from `.venv`; `./test.sh` installs it) in one
//! mesh, both ways, each with its certificates over SDS from the same `warden-agent`:
//!
//! - an Envoy sidecar calls a Warden-proxied app: plain HTTP into Envoy, mTLS from
//!   Envoy (SNI `outbound_.8080_._.<host>`, ALPN `http/1.1` or `h2`, the server's
//!   SPIFFE ID checked) to the Warden server proxy, which hands the app Envoy's SPIFFE
//!   ID in XFCC and enforces AuthorizationPolicy on Envoy's principal;
//! - a Warden proxy calls an Envoy-fronted app: Envoy's inbound listener requires a
//!   client certificate and sets XFCC from it, and the Warden client checks Envoy's
//!   SPIFFE ID (secure naming) against the service's service account.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warden_tests::envoy::{envoy_binary, http, sds_cluster};
use warden_tests::mesh::{Mesh, Req, ServiceSpec, WorkloadSpec, spiffe_id};
use warden_tests::spawn_logged;

/// An `SdsSecretConfig` for `name` from the `sds-grpc` cluster (Istio's form).
fn sds(name: &str) -> String {
    format!(
        r#"{{"name": "{name}", "sds_config": {{"api_config_source": {{"api_type": "GRPC", "grpc_services": [{{"envoy_grpc": {{"cluster_name": "sds-grpc"}}}}], "set_node_on_first_message_only": true, "transport_api_version": "V3"}}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}}}"#
    )
}

const HEAD: &str = r#"node:
  id: sidecar~127.0.0.1~envoy.default~default.svc.cluster.local
  cluster: envoy.default
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
"#;

const ROUTER: &str = r#"          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

/// An upstream mTLS cluster to `addr` with SNI `sni`, ALPN `alpn`, accepting only
/// `server_id`, speaking HTTP/2 when `h2`.
fn mtls_cluster(
    name: &str,
    addr: &str,
    port: u16,
    sni: &str,
    h2: bool,
    my_id: &str,
    server_id: &str,
) -> String {
    let (alpn, proto) = if h2 {
        ("h2", "http2_protocol_options: {}")
    } else {
        ("http/1.1", "http_protocol_options: {}")
    };
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          {proto}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {addr}, port_value: {port} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: "{sni}"
        common_tls_context:
          alpn_protocols: ["{alpn}"]
          tls_certificate_sds_secret_configs:
          - {cert}
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ exact: "{server_id}" }}
            validation_context_sds_secret_config: {rootca}
"#,
        cert = sds(my_id),
        rootca = sds("ROOTCA"),
    )
}

/// The client sidecar: a plain HTTP listener on `listen` routing `/h2/...` to the
/// server over HTTP/2 and everything else over HTTP/1.1, both mTLS to
/// `server_addr:15006`.
fn client_bootstrap(
    socket: &Path,
    listen: (&str, u16),
    server: (&str, u16),
    sni: &str,
    my_id: &str,
    server_id: &str,
) -> String {
    format!(
        r#"{HEAD}static_resources:
  listeners:
  - name: plain_out
    address:
      socket_address: {{ address: {}, port_value: {} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: plain_out
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/h2/" }}
                route: {{ cluster: to_server_h2, timeout: 10s }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: to_server_h1, timeout: 10s }}
{ROUTER}  clusters:
{}{}{}"#,
        listen.0,
        listen.1,
        sds_cluster(socket),
        mtls_cluster(
            "to_server_h1",
            server.0,
            server.1,
            sni,
            false,
            my_id,
            server_id
        ),
        mtls_cluster(
            "to_server_h2",
            server.0,
            server.1,
            sni,
            true,
            my_id,
            server_id
        ),
    )
}

/// The server sidecar: mTLS on `listen` requiring a client certificate from the trust
/// domain, XFCC sanitized and set from the client's URI SAN, forwarding to the app on
/// `app`.
fn server_bootstrap(socket: &Path, listen: (&str, u16), app: (&str, u16), my_id: &str) -> String {
    format!(
        r#"{HEAD}static_resources:
  listeners:
  - name: mtls_in
    address:
      socket_address: {{ address: {}, port_value: {} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificate_sds_secret_configs:
            - {}
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names:
                - san_type: URI
                  matcher: {{ prefix: "spiffe://cluster.local/" }}
              validation_context_sds_secret_config: {}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mtls_in
          codec_type: AUTO
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {{ uri: true }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: app, timeout: 10s }}
{ROUTER}  clusters:
{}  - name: app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {}, port_value: {} }}
"#,
        listen.0,
        listen.1,
        sds(my_id),
        sds("ROOTCA"),
        sds_cluster(socket),
        app.0,
        app.1,
    )
}

/// A running Envoy, killed on drop.
#[derive(Debug)]
struct Envoy {
    child: Child,
    log: mpsc::Receiver<String>,
    admin: String,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` in `dir` and waits until its admin `/ready` says
    /// LIVE (which needs its SDS secrets).
    fn start(dir: &Path, bootstrap: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, bootstrap).unwrap();
        let admin_path = dir.join("admin-address");
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--use-dynamic-base-id")
            .arg("--base-id-path")
            .arg(dir.join("base-id"))
            .args(["--concurrency", "1", "-l"])
            .arg(std::env::var("WARDEN_TEST_ENVOY_LOG").unwrap_or_else(|_| "warn".into()));
        let (mut child, log) = spawn_logged(cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let lines: Vec<String> = log.try_iter().collect();
                panic!("envoy exited ({status}):\n{}", lines.join("\n"));
            }
            if let Ok(a) = std::fs::read_to_string(&admin_path)
                && !a.trim().is_empty()
                && http(a.trim(), "/ready").is_ok_and(|(code, _)| code == 200)
            {
                return Self {
                    child,
                    log,
                    admin: a.trim().to_string(),
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let lines: Vec<String> = log.try_iter().collect();
                panic!(
                    "envoy's /ready did not say LIVE within 30 s:\n{}",
                    lines.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A stat's value from the admin `/stats` (0 when absent).
    fn stat(&self, name: &str) -> u64 {
        let (_, body) = http(&self.admin, &format!("/stats?filter=^{name}$")).unwrap();
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    fn drain_log(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn envoy_sidecar_calls_a_warden_proxied_app() {
    let envoy_id = spiffe_id("default", "envoy-client");
    let server_id = spiffe_id("default", "server");
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("envoy-client", "default", "envoy-client").without_proxy())
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .start();
    let server = mesh.workload("server").clone();
    let host = mesh.service("server").host.clone();
    let envoy_ip = mesh.workload("envoy-client").ip.to_string();
    let bootstrap = client_bootstrap(
        &mesh.sds_socket,
        (&envoy_ip, 15001),
        (&server.ip.to_string(), 15006),
        &format!("outbound_.8080_._.{host}"),
        &envoy_id,
        &server_id,
    );
    let envoy = Envoy::start(&mesh.dir.path().join("envoy"), &bootstrap);
    let via_envoy = format!("{envoy_ip}:15001").parse().unwrap();
    let call = |path: &str| {
        mesh.send_to(
            via_envoy,
            &Req::get(&mesh.url("server", "http", path)).origin_form(),
        )
        .unwrap()
    };

    // HTTP/1.1 upstream: the app answers and sees Envoy's SPIFFE ID in XFCC.
    let r = call("/from-envoy");
    assert_eq!(r.status, 200, "{}\nenvoy: {}", r.text(), envoy.drain_log());
    let v = r.json();
    assert_eq!(v["name"], "server");
    assert_eq!(v["path"], "/from-envoy");
    let xfcc = v["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC at the app: {v}"));
    let hash = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &mesh.leaf_der(&envoy_id),
    ));
    assert_eq!(
        xfcc,
        format!("By={server_id};Hash={hash};Subject=\"\";URI={envoy_id}"),
        "{v}"
    );
    // HTTP/2 upstream (ALPN h2).
    let r = call("/h2/from-envoy");
    assert_eq!(r.status, 200, "{}\nenvoy: {}", r.text(), envoy.drain_log());
    assert_eq!(r.json()["path"], "/h2/from-envoy");
    assert!(
        envoy.stat("cluster.to_server_h2.upstream_cx_http2_total") >= 1,
        "Envoy spoke HTTP/2 to the Warden proxy"
    );
    assert!(envoy.stat("cluster.to_server_h1.ssl.handshake") >= 1);

    // A policy denying Envoy's principal.
    mesh.apply_config(
        "deny-envoy.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-envoy, namespace: default}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules: [{from: [{source: {principals: [\"cluster.local/ns/default/sa/envoy-client\"]}}]}]\n",
    );
    for path in ["/denied", "/h2/denied"] {
        let r = call(path);
        assert_eq!(
            (r.status, r.text().trim()),
            (403, "RBAC: access denied"),
            "{path}"
        );
    }
    let ev = mesh
        .wait_proxy_log("server", Duration::from_secs(5), |v| {
            v["message"] == "authz" && v["decision"] == "deny"
        })
        .unwrap_or_else(|l| panic!("no authz deny log:\n{}", l.join("\n")));
    assert_eq!(ev["policy"], "default/deny-envoy", "{ev}");
}

/// curl → Envoy (HTTP/2 over ALPN h2 to the Warden proxy) → Warden → Python's
/// `http.server`, which speaks only HTTP/1.1: the port is declared `HTTP`, so Warden
/// speaks HTTP/1.1 to the app whatever the client spoke, as Istio's inbound cluster
/// does. (Before, the app got HTTP/2 and the client a 503.)
#[test]
fn envoy_over_h2_reaches_an_http1_only_app_behind_warden() {
    let Some(py) = warden_tests::grpcio_python("http.server behind the proxy") else {
        return;
    };
    let envoy_id = spiffe_id("default", "envoy-client");
    let server_id = spiffe_id("default", "server");
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("envoy-client", "default", "envoy-client").without_proxy())
        .workload_spec(WorkloadSpec::new("server", "default", "server").without_apps())
        .service(ServiceSpec::new("server", "default").http(8080))
        .start();
    let server = mesh.workload("server").clone();
    let mut app = Command::new(&py);
    app.arg(warden_tests::interop_script("http_echo.py"))
        .arg(server.addr(server.ports["http"]).to_string());
    mesh.spawn_app(app);
    let host = mesh.service("server").host.clone();
    let envoy_ip = mesh.workload("envoy-client").ip.to_string();
    let bootstrap = client_bootstrap(
        &mesh.sds_socket,
        (&envoy_ip, 15001),
        (&server.ip.to_string(), 15006),
        &format!("outbound_.8080_._.{host}"),
        &envoy_id,
        &server_id,
    );
    let envoy = Envoy::start(&mesh.dir.path().join("envoy"), &bootstrap);
    for (path, cluster) in [
        ("/h2/via-envoy", "to_server_h2"),
        ("/via-envoy", "to_server_h1"),
    ] {
        let url = format!("http://{envoy_ip}:15001{path}");
        let r = warden_tests::curl(&["-H", &format!("host: {host}:8080"), &url]);
        assert_eq!(r.status, 200, "{path}: {r:?}\nenvoy: {}", envoy.drain_log());
        let seen = r.json();
        assert_eq!(seen["path"], path);
        assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
        assert!(
            seen.to_string().contains(&format!("URI={envoy_id}")),
            "the app sees Envoy's identity in XFCC: {seen}"
        );
        assert!(envoy.stat(&format!("cluster.{cluster}.upstream_rq_200")) >= 1);
    }
    assert!(envoy.stat("cluster.to_server_h2.upstream_cx_http2_total") >= 1);
}

#[test]
fn warden_proxy_calls_an_envoy_fronted_app_and_checks_its_identity() {
    let envoy_id = spiffe_id("default", "envoy-server");
    let client_id = spiffe_id("default", "client");
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload_spec(WorkloadSpec::new("envoy-server", "default", "envoy-server").without_proxy())
        // Its inbound port leads to Envoy, which does not hold its service account.
        .workload_spec(
            WorkloadSpec::new("impostor", "default", "not-envoy")
                .without_proxy()
                .without_apps(),
        )
        .service(ServiceSpec::new("envoy-server", "default").http(8080))
        .service(ServiceSpec::new("impostor", "default").http(8080))
        .start();
    let es = mesh.workload("envoy-server").clone();
    let bootstrap = server_bootstrap(
        &mesh.sds_socket,
        (&es.ip.to_string(), 15006),
        (&es.ip.to_string(), es.ports["http"]),
        &envoy_id,
    );
    let envoy = Envoy::start(&mesh.dir.path().join("envoy"), &bootstrap);
    mesh.relay(mesh.workload("impostor").inbound(), es.inbound());

    // The app behind Envoy answers and sees the Warden client's SPIFFE ID, from Envoy.
    let r = mesh.get("client", &mesh.url("envoy-server", "http", "/behind-envoy"));
    assert_eq!(r.status, 200, "{}\nenvoy: {}", r.text(), envoy.drain_log());
    let v = r.json();
    assert_eq!(v["path"], "/behind-envoy");
    let xfcc = v["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC at the app: {v}"));
    assert!(
        xfcc.contains(&format!("URI={client_id}")),
        "XFCC from Envoy names the Warden client: {xfcc}"
    );
    assert!(envoy.stat("http.mtls_in.downstream_rq_2xx") >= 1);
    // Over h2c from the test to the Warden client too.
    let r = mesh
        .send(
            "client",
            &Req::get(&mesh.url("envoy-server", "http", "/behind-envoy-h2")).h2c(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // Secure naming: the same endpoint under a service whose service account is not
    // Envoy's is refused by the Warden client.
    mesh.mark_proxy_log("client");
    let r = mesh.get("client", &mesh.url("impostor", "http", "/"));
    assert_eq!(r.status, 503, "{}", r.text());
    let expected = spiffe_id("default", "not-envoy");
    let body = r.text();
    let log = mesh
        .wait_proxy_log("client", Duration::from_secs(5), |v| {
            let s = v.to_string();
            s.contains(&expected) && s.contains(&envoy_id)
        })
        .map(|v| v.to_string());
    assert!(
        (body.contains(&expected) && body.contains(&envoy_id)) || log.is_ok(),
        "neither the 503 body nor the client proxy's log names the expected ({expected}) and presented ({envoy_id}) identities: body {body:?}, log {log:?}"
    );
}
