//! `warden-proxy` between programs no one here wrote: curl and Python's grpcio and
//! `websockets` as clients, Python's `http.server` (HTTP/1.1 only), a grpcio server and
//! a `websockets` server as the apps, real Warden proxies in between (see
//! `warden_tests::mesh`). The project's own test app speaks every protocol and hid two
//! bugs; these peers would not have: grpc-core refuses a request without `te:
//! trailers`, and `http.server` cannot read HTTP/2.
//!
//! Also here, with those peers: the path that reaches the app is the path that was
//! authorized, in each `meshConfig.pathNormalization` mode.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::path::Path;
use std::process::Command;

use warden_tests::mesh::metric_sum;
use warden_tests::mesh::{Mesh, ServiceSpec, WorkloadSpec, authorization_policy};
use warden_tests::{Curl, curl, grpcio_python, interop_script, run_json, websockets_python};

/// client (proxy, no apps) and server (proxy; the test starts its apps): server
/// offers HTTP 8080, gRPC 9090 and HTTP 8081 (for WebSocket).
fn mesh_with(policies: &[(&str, String)], mesh_config: Option<&str>) -> Mesh {
    let mut b = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload_spec(WorkloadSpec::new("server", "default", "server").without_apps())
        .service(
            ServiceSpec::new("server", "default")
                .http(8080)
                .grpc(9090)
                .port("ws", 8081, warden_tests::mesh::Protocol::Http),
        );
    for (file, yaml) in policies {
        b = b.config(file, yaml);
    }
    if let Some(yaml) = mesh_config {
        b = b.mesh_config(yaml);
    }
    b.start()
}

/// Starts Python's `http.server` (tests/interop/http_echo.py) on the server's port
/// `port_name`.
fn start_http_server(mesh: &Mesh, py: &Path, port_name: &str) {
    let w = mesh.workload("server");
    let addr = w.addr(w.ports[port_name]).to_string();
    let mut cmd = Command::new(py);
    cmd.arg(interop_script("http_echo.py")).arg(&addr);
    mesh.spawn_app(cmd);
}

/// `curl` through the client's outbound port as its HTTP proxy, path sent as is.
fn via_client(mesh: &Mesh, path: &str, extra: &[&str]) -> Curl {
    let proxy = format!("http://{}", mesh.workload("client").outbound());
    let url = mesh.url("server", "http", path);
    let mut args = vec!["--path-as-is", "--proxy", &proxy];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// The last request the apps logged.
fn last_request(mesh: &Mesh) -> serde_json::Value {
    mesh.app_log()
        .into_iter()
        .rfind(|v| v["message"] == "request")
        .expect("the app logged a request")
}

fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    seen["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

fn deny_admin() -> (&'static str, String) {
    (
        "deny-admin.yaml",
        authorization_policy(
            "server",
            "deny-admin",
            "DENY",
            r#"[{to: [{operation: {paths: ["/admin*"]}}]}]"#,
        ),
    )
}

#[test]
fn curl_over_http1_and_http2_reaches_an_http1_only_app() {
    let Some(py) = grpcio_python("http.server behind the proxy") else {
        return;
    };
    let mesh = mesh_with(&[], None);
    start_http_server(&mesh, &py, "http");
    let server = mesh.workload("server").clone();

    // HTTP/1.1 through both proxies.
    let r = via_client(&mesh, "/h1", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    assert_eq!(
        (seen["path"].as_str(), seen["version"].as_str()),
        (Some("/h1"), Some("HTTP/1.1"))
    );
    assert!(
        header(&seen, "x-forwarded-client-cert")
            .is_some_and(|x| x.contains("URI=spiffe://cluster.local/ns/default/sa/client")),
        "{seen}"
    );

    // HTTP/2 with prior knowledge to the client proxy: the port is declared HTTP, so
    // HTTP/1.1 goes to the peer and to the app (Istio's setUpstreamProtocol).
    let r = via_client(&mesh, "/h2-prior", &["--http2-prior-knowledge"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["version"], "HTTP/1.1");

    // curl's h2c upgrade: no 101, a plain HTTP/1.1 request without the upgrade headers.
    let r = via_client(&mesh, "/h2c", &["--http2", "-v"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.stderr.contains("< HTTP/1.1 101"),
        "no switch to h2c: {}",
        r.stderr
    );
    let seen = r.json();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(header(&seen, h), None, "{h} reached the app: {seen}");
    }

    // HTTP/2 straight to the server's inbound port (plaintext, PERMISSIVE): the inbound
    // side also speaks HTTP/1.1 to an HTTP port.
    let inbound = format!("{}:15006:{}:15006", mesh.service("server").host, server.ip);
    let url = format!("http://{}:15006/inbound-h2", mesh.service("server").host);
    let r = curl(&[
        "--http2-prior-knowledge",
        "--connect-to",
        &inbound,
        "-H",
        &format!("host: {}:8080", mesh.service("server").host),
        &url,
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.json()["path"], "/inbound-h2");

    // `te` reaches the app only as `trailers`; hop-by-hop headers never do.
    let r = via_client(
        &mesh,
        "/headers",
        &[
            "-H",
            "TE: trailers, deflate",
            "-H",
            "Connection: x-secret",
            "-H",
            "x-secret: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "x-envoy-retry-on: 5xx",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    assert_eq!(header(&seen, "te"), Some("trailers"), "{seen}");
    for h in ["x-secret", "keep-alive", "x-envoy-retry-on", "connection"] {
        assert_eq!(header(&seen, h), None, "{h} reached the app: {seen}");
    }
    // Set by the client's proxy (the app spoke plain HTTP to it) and kept, as Envoy does.
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("http"), "{seen}");
}

#[test]
fn grpcio_client_and_server_through_two_proxies() {
    let Some(py) = grpcio_python("grpcio client and server through the proxies") else {
        return;
    };
    let deny_named = (
        "deny-named.yaml",
        authorization_policy(
            "server",
            "deny-named",
            "DENY",
            "[{when: [{key: 'request.headers[x-deny]', values: ['yes']}]}]",
        ),
    );
    let mesh = mesh_with(&[deny_named], None);
    let w = mesh.workload("server").clone();
    let mut cmd = Command::new(&py);
    cmd.arg(interop_script("grpc_echo_server.py"))
        .arg(w.addr(w.ports["grpc"]).to_string());
    mesh.spawn_app(cmd);

    let host = format!("{}:9090", mesh.service("server").host);
    let call = |msg: &str, deny: bool| {
        let script = r#"
import json, sys, grpc
addr, authority, msg, deny = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4] == "1"
ch = grpc.insecure_channel(addr, options=[("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)])
say = ch.unary_unary("/warden.test.Echo/Say", request_serializer=None, response_deserializer=None)
md = [("x-deny", "yes")] if deny else []
try:
    r = say(msg, timeout=10, metadata=md)
    print(json.dumps({"ok": True, "reply": r.decode()}))
except grpc.RpcError as e:
    print(json.dumps({"ok": False, "code": e.code().name, "details": e.details()}))
"#;
        let mut cmd = Command::new(&py);
        cmd.args(["-c", script])
            .arg(mesh.workload("client").outbound().to_string())
            .arg(&host)
            .arg(msg)
            .arg(if deny { "1" } else { "0" })
            .env("no_proxy", "*");
        run_json(&mut cmd).1
    };
    let v = call("hello", false);
    assert_eq!(
        v,
        serde_json::json!({"ok": true, "reply": "grpcio:hello"}),
        "grpcio → Warden → Warden → grpcio"
    );
    // grpc-core answers a request without `te: trailers` with RST_STREAM: the reply
    // above is the proof it arrived.
    let seen = last_request(&mesh);
    assert!(
        seen["metadata"]["x-forwarded-client-cert"]
            .as_str()
            .is_some_and(|x| x.contains("sa/client")),
        "{seen}"
    );
    let v = call("no", true);
    assert_eq!(v["code"], "PERMISSION_DENIED", "{v}");
    assert_eq!(v["details"], "RBAC: access denied", "{v}");

    // Istio's gRPC metrics on the server's proxy: the protocol, the status from the
    // trailers (OK) and from the trailers-only refusal (PERMISSION_DENIED = 7), one
    // message each way for the unary call.
    let metrics = warden_tests::eventually(
        "the server proxy's gRPC series",
        std::time::Duration::from_secs(5),
        || {
            let m = mesh.metrics("server");
            m.contains("grpc_response_status=\"7\"").then_some(m)
        },
    );
    let ok = [
        ("reporter", "destination"),
        ("request_protocol", "grpc"),
        ("grpc_response_status", "0"),
    ];
    assert_eq!(
        metric_sum(&metrics, "istio_requests_total", &ok),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "istio_request_messages_total", &ok),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "istio_response_messages_total", &ok),
        1.0,
        "{metrics}"
    );
    let denied = [("request_protocol", "grpc"), ("grpc_response_status", "7")];
    assert_eq!(
        metric_sum(&metrics, "istio_requests_total", &denied),
        1.0,
        "{metrics}"
    );

    // tonic (ours) to the grpcio server too.
    let r = mesh.grpc_say("client", &host, b"tonic");
    assert_eq!(r.unwrap().as_ref(), b"grpcio:tonic");
}

#[test]
fn websockets_client_and_server_through_two_proxies() {
    let Some(py) = websockets_python("websockets client and server through the proxies") else {
        return;
    };
    let deny = (
        "deny-ws.yaml",
        authorization_policy(
            "server",
            "deny-ws",
            "DENY",
            r#"[{to: [{operation: {paths: ["/forbidden"]}}]}]"#,
        ),
    );
    let mesh = mesh_with(&[deny], None);
    let w = mesh.workload("server").clone();
    let mut cmd = Command::new(&py);
    cmd.arg(interop_script("ws_peer.py"))
        .arg("server")
        .arg(w.addr(w.ports["ws"]).to_string());
    mesh.spawn_app(cmd);
    let ws = |path: &str, msgs: &[&str]| {
        let mut cmd = Command::new(&py);
        cmd.arg(interop_script("ws_peer.py"))
            .arg("client")
            .arg(mesh.workload("client").outbound().to_string())
            .arg(format!("ws://{}:8081{path}", mesh.service("server").host))
            .args(msgs);
        run_json(&mut cmd).1
    };
    let v = ws("/chat", &["one", "two"]);
    assert_eq!(
        v,
        serde_json::json!({"ok": true, "replies": ["ws:one", "ws:two"]})
    );
    let seen = last_request(&mesh);
    assert_eq!(seen["path"], "/chat");
    let v = ws("/forbidden", &["x"]);
    assert_eq!(
        (v["ok"].as_bool(), v["status"].as_u64()),
        (Some(false), Some(403)),
        "{v}"
    );
}

#[test]
fn the_app_receives_the_path_that_was_authorized() {
    let Some(py) = grpcio_python("http.server behind the proxy") else {
        return;
    };
    let mesh = mesh_with(&[deny_admin()], None);
    start_http_server(&mesh, &py, "http");
    // (path sent, status, path the app saw): BASE, applied by the client proxy and the
    // server proxy alike.
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/admin/../public/x", 200, Some("/public/x")),
        ("/public/../admin", 403, None),
        ("/public/%2e%2e/admin", 403, None),
        ("/public/%2E%2E/%61dmin/x", 403, None),
        ("/%61dmin", 403, None),
        ("/public/..;x/admin", 403, None),
        ("/public/./x/../y", 200, Some("/public/y")),
        // Escaped slashes stay escaped in BASE: the app gets exactly what was decided.
        ("/public/..%2Fadmin", 200, Some("/public/..%2Fadmin")),
        // Decoding never makes a new escape for the app to decode again.
        (
            "/public/%%32%65%%32%65/admin",
            200,
            Some("/public/%252e%252e/admin"),
        ),
        ("/public//admin", 200, Some("/public//admin")),
        ("/a%00b", 400, None),
    ];
    for (path, status, seen) in cases {
        let r = via_client(&mesh, path, &[]);
        assert_eq!(r.status, *status, "{path}: {r:?}");
        if let Some(seen) = seen {
            assert_eq!(r.json()["path"], *seen, "{path}");
        }
    }

    // Straight to the server's inbound port: the same decisions without the client
    // proxy's normalization in front.
    let server = mesh.workload("server");
    let host = format!("{}:8080", mesh.service("server").host);
    for (path, status, seen) in cases {
        let url = format!("http://{}{path}", server.inbound());
        let r = curl(&["--path-as-is", "-H", &format!("host: {host}"), &url]);
        assert_eq!(r.status, *status, "inbound {path}: {r:?}");
        if let Some(seen) = seen {
            assert_eq!(r.json()["path"], *seen, "inbound {path}");
        }
    }
}

#[test]
fn decode_and_merge_slashes_decides_and_forwards_the_decoded_path() {
    let Some(py) = grpcio_python("http.server behind the proxy") else {
        return;
    };
    let mesh = mesh_with(
        &[deny_admin()],
        Some(
            "pathNormalization:\n  normalization: DECODE_AND_MERGE_SLASHES\nenableAutoMtls: true\n",
        ),
    );
    start_http_server(&mesh, &py, "http");
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/public%2F..%2Fadmin", 403, None),
        ("//admin", 403, None),
        ("/public%5C..%5Cadmin", 403, None),
        ("/public%2f%2fx", 200, Some("/public/x")),
        ("/public//x?q=a//b", 200, Some("/public/x?q=a//b")),
    ];
    for (path, status, seen) in cases {
        let r = via_client(&mesh, path, &[]);
        assert_eq!(r.status, *status, "{path}: {r:?}");
        if let Some(seen) = seen {
            assert_eq!(r.json()["path"], *seen, "{path}");
        }
    }
    let warned = mesh.proxy_json("server").into_iter().any(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("Warden does not use"))
            && v.to_string().contains("enableAutoMtls")
    });
    assert!(warned, "the unused MeshConfig field is named in a warning");
}
