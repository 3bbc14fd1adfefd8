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
use std::process::Command;
use std::time::Duration;

use warden_tests::envoy::{Bootstrap, Cluster, Envoy, Listener, UpstreamTls};
use warden_tests::mesh::{Mesh, Req, ServiceSpec, WorkloadSpec, authorization_policy, spiffe_id};

// Istio's node ID for these Envoys.
use warden_tests::envoy::SIDECAR_NODE_ID as NODE_ID;

/// An upstream mTLS cluster to `server` with SNI `sni`, ALPN `h2` or `http/1.1`,
/// accepting only `server_id`, speaking HTTP/2 when `h2`.
fn mtls_cluster(
    name: &str,
    server: (&str, u16),
    sni: &str,
    h2: bool,
    my_id: &str,
    server_id: &str,
) -> Cluster {
    let tls = UpstreamTls::new(my_id, server_id).sni(sni);
    let c = Cluster::to(name, server.0, server.1);
    if h2 {
        c.http2().tls(tls.alpn("h2"))
    } else {
        c.http1().tls(tls.alpn("http/1.1"))
    }
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
) -> Bootstrap {
    Bootstrap::new(NODE_ID, socket)
        .listener(
            Listener::http("plain_out", listen.0, listen.1)
                .route("/h2/", "to_server_h2")
                .route("/", "to_server_h1"),
        )
        .cluster(mtls_cluster(
            "to_server_h1",
            server,
            sni,
            false,
            my_id,
            server_id,
        ))
        .cluster(mtls_cluster(
            "to_server_h2",
            server,
            sni,
            true,
            my_id,
            server_id,
        ))
}

/// Starts Envoy (one worker thread) with `bootstrap` in `dir`; ready once it says LIVE.
fn start_envoy(dir: &Path, bootstrap: &Bootstrap) -> Envoy {
    Envoy::start(dir, bootstrap, 1)
}

/// Envoy as workload `envoy-client`'s sidecar ([`client_bootstrap`] on its address,
/// port 15001), calling service `server` (port 8080) on workload `server`'s inbound
/// port as `envoy-client`'s SPIFFE ID.
fn start_client_envoy(mesh: &Mesh) -> Envoy {
    let (me, server) = (mesh.workload("envoy-client"), mesh.workload("server"));
    let host = &mesh.service("server").host;
    let bootstrap = client_bootstrap(
        &mesh.sds_socket,
        (&me.ip.to_string(), 15001),
        (&server.ip.to_string(), 15006),
        &format!("outbound_.8080_._.{host}"),
        &me.spiffe_id(),
        &server.spiffe_id(),
    );
    start_envoy(&mesh.dir.path().join("envoy"), &bootstrap)
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
    let envoy_ip = mesh.workload("envoy-client").ip.to_string();
    let envoy = start_client_envoy(&mesh);
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
    assert_eq!(
        r.status,
        200,
        "{}\nenvoy: {}",
        r.text(),
        envoy.drain_log().join("\n")
    );
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
    assert_eq!(
        r.status,
        200,
        "{}\nenvoy: {}",
        r.text(),
        envoy.drain_log().join("\n")
    );
    assert_eq!(r.json()["path"], "/h2/from-envoy");
    assert!(
        envoy.stat("cluster.to_server_h2.upstream_cx_http2_total") >= 1,
        "Envoy spoke HTTP/2 to the Warden proxy"
    );
    assert!(envoy.stat("cluster.to_server_h1.ssl.handshake") >= 1);

    // A policy denying Envoy's principal.
    mesh.apply_config(
        "deny-envoy.yaml",
        &authorization_policy(
            "server",
            "deny-envoy",
            "DENY",
            r#"[{from: [{source: {principals: ["cluster.local/ns/default/sa/envoy-client"]}}]}]"#,
        ),
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
    let envoy = start_client_envoy(&mesh);
    for (path, cluster) in [
        ("/h2/via-envoy", "to_server_h2"),
        ("/via-envoy", "to_server_h1"),
    ] {
        let url = format!("http://{envoy_ip}:15001{path}");
        let r = warden_tests::curl(&["-H", &format!("host: {host}:8080"), &url]);
        assert_eq!(
            r.status,
            200,
            "{path}: {r:?}\nenvoy: {}",
            envoy.drain_log().join("\n")
        );
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
    let bootstrap = warden_tests::envoy::server_sidecar(
        &mesh.sds_socket,
        (&es.ip.to_string(), 15006),
        (&es.ip.to_string(), es.ports["http"]),
        &envoy_id,
        false,
    );
    let envoy = start_envoy(&mesh.dir.path().join("envoy"), &bootstrap);
    mesh.relay(mesh.workload("impostor").inbound(), es.inbound());

    // The app behind Envoy answers and sees the Warden client's SPIFFE ID, from Envoy.
    let r = mesh.get("client", &mesh.url("envoy-server", "http", "/behind-envoy"));
    assert_eq!(
        r.status,
        200,
        "{}\nenvoy: {}",
        r.text(),
        envoy.drain_log().join("\n")
    );
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
