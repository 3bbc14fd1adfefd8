//! `warden-proxy` end to end: real proxies (one per workload, each on its own loopback
//! address) with certificates over SDS from a real `warden-agent` and `warden-ca`, in
//! front of real applications (`warden-test-app`), configured by a directory of Istio
//! YAML (see `warden_tests::mesh`).
//!
//! Allowed and denied calls over HTTP/1.1, h2c, gRPC (tonic and, when `.venv` has it,
//! Python's grpcio), TCP and WebSocket; plaintext callers under PERMISSIVE and STRICT;
//! JWTs; policy changes and a bad policy under a steady request loop; certificate
//! rotation under load; secure naming; SIGTERM draining; metrics and the authz log.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warden_tests::mesh::{MESH_FILE, Mesh, Req, ServiceSpec, WsClient, echo, spiffe_id, tail, ws};
use warden_tests::{Es256Issuer, POLL_INTERVAL, try_eventually};

const DENIED: &str = "RBAC: access denied";

fn client_id() -> String {
    spiffe_id("default", "client")
}
fn server_id() -> String {
    spiffe_id("default", "server")
}
fn other_id() -> String {
    spiffe_id("default", "other")
}

/// An `AuthorizationPolicy` for the `server` workload.
fn server_policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  selector:\n    matchLabels: {{app: server}}\n  action: {action}\n  rules: {rules}\n"
    )
}

/// ALLOW only the `client` principal.
fn allow_client() -> String {
    server_policy(
        "allow-client",
        "ALLOW",
        r#"[{from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]}]"#,
    )
}

/// A `PeerAuthentication` for the `server` workload.
fn server_peer_authn(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: server-mtls\n  namespace: default\nspec:\n  selector:\n    matchLabels: {{app: server}}\n  mtls:\n    mode: {mode}\n"
    )
}

/// The XFCC a server proxy sets for a client whose leaf is `client_leaf`.
fn expected_xfcc(server: &str, client: &str, client_leaf: &[u8]) -> String {
    let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, client_leaf));
    format!("By={server};Hash={hash};Subject=\"\";URI={client}")
}

/// A denied TCP connection: the peer closes (or resets) instead of echoing.
fn assert_tcp_refused(r: std::io::Result<Vec<u8>>, what: &str) {
    match r {
        Ok(back) => assert!(
            back.is_empty(),
            "{what}: denied TCP should be closed, but {} bytes came back: {:?}",
            back.len(),
            String::from_utf8_lossy(&back)
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionAborted
            ),
            "{what}: denied TCP should be closed, got {e:?}"
        ),
    }
}

/// A unary call with raw bytes from grpcio: `{"ok": true, "reply": ...}` or
/// `{"ok": false, "code": "PERMISSION_DENIED", "details": ...}`.
const GRPCIO_SAY: &str = r#"
import json, sys, grpc
addr, authority, msg = sys.argv[1], sys.argv[2], sys.argv[3].encode()
ch = grpc.insecure_channel(addr, options=[("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)])
say = ch.unary_unary("/warden.test.Echo/Say", request_serializer=None, response_deserializer=None)
try:
    r = say(msg, timeout=10)
    print(json.dumps({"ok": True, "reply": r.decode()}))
except grpc.RpcError as e:
    print(json.dumps({"ok": False, "code": e.code().name, "details": e.details()}))
"#;

fn grpcio_say(py: &PathBuf, addr: &str, authority: &str, msg: &str) -> serde_json::Value {
    let o = Command::new(py)
        .args(["-c", GRPCIO_SAY, addr, authority, msg])
        .env("no_proxy", "*")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "grpcio client failed: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(out.lines().last().unwrap_or("{}")).unwrap()
}

/// client, other and server; server offers HTTP 8080, gRPC 9090 and TCP 9000.
fn three_workloads() -> warden_tests::mesh::MeshBuilder {
    Mesh::builder()
        .workload("client", "client")
        .workload("other", "other")
        .workload("server", "server")
        .service(
            ServiceSpec::new("server", "default")
                .http(8080)
                .grpc(9090)
                .tcp(9000),
        )
}

#[test]
fn http_grpc_tcp_and_websocket_are_allowed_and_denied_by_policy() {
    // Path rules name the HTTP app port: on TCP, Istio ignores HTTP-only fields of a
    // DENY (or AUDIT) rule, which would then match every TCP connection.
    let deny_admin = server_policy(
        "deny-admin",
        "DENY",
        r#"[{to: [{operation: {paths: ["/admin/*"], ports: ["18080"]}}]}]"#,
    );
    let audit = server_policy(
        "audit-it",
        "AUDIT",
        r#"[{to: [{operation: {paths: ["/audited"], ports: ["18080"]}}]}]"#,
    );
    let dry_run = server_policy(
        "dry-deny",
        "DENY",
        r#"[{to: [{operation: {paths: ["/dry"], ports: ["18080"]}}]}]"#,
    )
    .replace(
        "  namespace: default\n",
        "  namespace: default\n  annotations: {\"istio.io/dry-run\": \"true\"}\n",
    );
    let mesh = three_workloads()
        .config(
            "policies.yaml",
            &[allow_client(), deny_admin, audit, dry_run].join("---\n"),
        )
        .start();
    let url = |path: &str| mesh.url("server", "http", path);
    let authority = format!("{}:9090", mesh.service("server").host);

    // HTTP/1.1, absolute-form: the app answers, sees the client's identity in XFCC.
    let r = mesh.get("client", &url("/hello?x=1"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["name"], "server");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/hello");
    let xfcc = v["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC at the app: {v}"))
        .to_string();
    assert_eq!(
        xfcc,
        expected_xfcc(&server_id(), &client_id(), &mesh.leaf_der(&client_id())),
        "XFCC as Istio sets it"
    );
    assert!(
        v["authority"]
            .as_str()
            .unwrap()
            .starts_with("server.default.svc.cluster.local"),
        "the app sees the service's authority: {v}"
    );

    // HTTP/1.1, origin-form with a Host header; a POST body arrives.
    let r = mesh
        .send(
            "client",
            &Req::post(&url("/echo"), "the body").origin_form(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "the body");
    assert_eq!(r.json()["method"], "POST");

    // h2c (prior knowledge) to the outbound port.
    let r = mesh.send("client", &Req::get(&url("/h2")).h2c()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.json()["path"], "/h2");

    // The app's own status codes pass through.
    assert_eq!(mesh.get("client", &url("/status/418")).status, 418);
    // A host the mesh does not know.
    let r = mesh.get("client", "http://nowhere.default.svc.cluster.local:8080/");
    assert!(matches!(r.status, 404 | 502), "{} {}", r.status, r.text());

    // Another principal is refused, over HTTP/1.1 and h2c.
    let r = mesh.get("other", &url("/hello"));
    assert_eq!((r.status, r.text().trim()), (403, DENIED));
    let r = mesh.send("other", &Req::get(&url("/hello")).h2c()).unwrap();
    assert_eq!((r.status, r.text().trim()), (403, DENIED));

    // DENY by path, with the authz log naming the policy and rule.
    mesh.mark_proxy_log("server");
    let r = mesh.get("client", &url("/admin/users"));
    assert_eq!((r.status, r.text().trim()), (403, DENIED));
    let ev = mesh
        .wait_proxy_log("server", Duration::from_secs(5), |v| {
            v["message"] == "authz" && v["path"] == "/admin/users"
        })
        .unwrap_or_else(|l| panic!("no authz log for the DENY:\n{}", tail(&l, 30)));
    assert_eq!(ev["decision"], "deny", "{ev}");
    assert_eq!(ev["policy"], "default/deny-admin", "{ev}");
    assert_eq!(ev["rule"], 0, "{ev}");
    assert_eq!(ev["method"], "GET", "{ev}");
    assert!(
        ev["source_principal"]
            .as_str()
            .is_some_and(|p| p.ends_with(client_id().trim_start_matches("spiffe://"))),
        "{ev}"
    );
    assert!(!ev["destination"].is_null(), "{ev}");
    // The other principal's refusal is logged too.
    let r = mesh.get("other", &url("/who"));
    assert_eq!(r.status, 403);
    let ev = mesh
        .wait_proxy_log("server", Duration::from_secs(5), |v| {
            v["message"] == "authz" && v["path"] == "/who"
        })
        .unwrap_or_else(|l| panic!("no authz log for the ALLOW miss:\n{}", tail(&l, 30)));
    assert_eq!(ev["decision"], "deny", "{ev}");
    assert!(
        ev["source_principal"]
            .as_str()
            .is_some_and(|p| p.ends_with(other_id().trim_start_matches("spiffe://"))),
        "{ev}"
    );

    // AUDIT: allowed and logged; a dry-run DENY: allowed and counted.
    let r = mesh.get("client", &url("/audited"));
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = mesh
        .wait_proxy_log("server", Duration::from_secs(5), |v| {
            v["message"] == "authz" && v["path"] == "/audited"
        })
        .unwrap_or_else(|l| panic!("no authz log for the AUDIT:\n{}", tail(&l, 30)));
    assert_eq!(ev["decision"], "audit", "{ev}");
    assert_eq!(ev["policy"], "default/audit-it", "{ev}");
    assert_eq!(ev["rule"], 0, "{ev}");
    let r = mesh.get("client", &url("/dry"));
    assert_eq!(
        r.status,
        200,
        "a dry-run DENY is not enforced: {}",
        r.text()
    );
    let ev = mesh
        .wait_proxy_log("server", Duration::from_secs(5), |v| {
            v["message"] == "authz" && v["path"] == "/dry"
        })
        .unwrap_or_else(|l| panic!("no authz log for the dry run:\n{}", tail(&l, 30)));
    assert_eq!(ev["decision"], "dry_run_deny", "{ev}");
    assert_eq!(ev["policy"], "default/dry-deny", "{ev}");
    assert_eq!(ev["rule"], 0, "{ev}");

    // gRPC with tonic: the echo, and PERMISSION_DENIED for the other principal.
    let reply = mesh
        .grpc_say("client", &authority, b"ping over grpc")
        .unwrap();
    assert_eq!(&reply[..], b"ping over grpc");
    let err = mesh.grpc_say("other", &authority, b"nope").unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // On the wire: HTTP 200 with grpc-status 7.
    let framed = [&[0u8, 0, 0, 0, 4][..], b"nope"].concat();
    let r = mesh
        .send(
            "other",
            &Req::post(&format!("http://{authority}/warden.test.Echo/Say"), framed)
                .h2c()
                .header("content-type", "application/grpc")
                .header("te", "trailers"),
        )
        .unwrap();
    let grpc_status = r
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| r.headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        (r.status, grpc_status.as_deref()),
        (200, Some("7")),
        "{:?} {:?}",
        r.headers,
        r.trailers
    );

    // gRPC with Python's grpcio.
    if let Some(py) = warden_tests::grpcio_python("the grpcio client") {
        let c = mesh.workload("client").outbound().to_string();
        let o = mesh.workload("other").outbound().to_string();
        let r = grpcio_say(&py, &c, &authority, "hello grpcio");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["reply"], "hello grpcio", "{r}");
        let r = grpcio_say(&py, &o, &authority, "hello grpcio");
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    }

    // TCP: echoed for the client, closed for the other principal.
    let mut s = mesh.tcp_connect("client", 9000).unwrap();
    for msg in [&b"tcp through the mesh"[..], b"and again"] {
        let back = echo(&mut s, msg);
        assert!(
            back.as_ref().is_ok_and(|b| b == msg),
            "TCP echo through the mesh: {back:?}\nclient proxy:\n{}\nserver proxy:\n{}",
            mesh.proxy_log("client").join("\n"),
            mesh.proxy_log("server").join("\n")
        );
    }
    drop(s);
    let mut s = mesh.tcp_connect("other", 9000).unwrap();
    assert_tcp_refused(echo(&mut s, b"let me in"), "other -> server:9000");

    // WebSocket through both proxies.
    let mut wsc = WsClient::connect(mesh.workload("client").outbound(), &url("/ws"), false)
        .unwrap_or_else(|e| panic!("websocket upgrade: {e}"));
    wsc.send(ws::TEXT, b"hello websocket").unwrap();
    let f = wsc.recv().unwrap();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (ws::TEXT, &b"hello websocket"[..])
    );
    let big = vec![7u8; 70_000];
    wsc.send(ws::BINARY, &big).unwrap();
    let f = wsc.recv().unwrap();
    assert_eq!((f.opcode, f.payload.len()), (ws::BINARY, big.len()));
    assert_eq!(f.payload, big);
    wsc.send(ws::CLOSE, &1000u16.to_be_bytes()).unwrap();
    assert_eq!(wsc.recv().unwrap().opcode, ws::CLOSE);
    // And refused for the other principal.
    let refused =
        WsClient::connect(mesh.workload("other").outbound(), &url("/ws"), false).unwrap_err();
    assert!(refused.contains("403"), "{refused}");

    // Metrics.
    let server = mesh.metrics("server");
    let m =
        |name: &str, labels: &[(&str, &str)]| warden_tests::mesh::metric_sum(&server, name, labels);
    assert!(
        m(
            "istio_requests_total",
            &[("reporter", "destination"), ("response_code", "200")]
        ) >= 5.0,
        "{server}"
    );
    assert!(
        m(
            "istio_requests_total",
            &[("reporter", "destination"), ("response_code", "403")]
        ) >= 3.0,
        "{server}"
    );
    assert!(
        m("warden_authz_decisions_total", &[("decision", "allow")]) >= 5.0,
        "{server}"
    );
    assert!(
        m("warden_authz_decisions_total", &[("decision", "deny")]) >= 3.0,
        "{server}"
    );
    assert!(
        m("warden_authz_decisions_total", &[("decision", "audit")]) >= 1.0,
        "{server}"
    );
    assert!(
        m(
            "warden_authz_decisions_total",
            &[("decision", "dry_run_deny")]
        ) >= 1.0,
        "{server}"
    );
    assert!(m("warden_config_generation", &[]) >= 1.0, "{server}");
    let client = mesh.metric(
        "client",
        "istio_requests_total",
        &[("reporter", "source"), ("response_code", "200")],
    );
    assert!(client >= 5.0, "{}", mesh.metrics("client"));
    // Counters only grow.
    let before = mesh.metric(
        "server",
        "istio_requests_total",
        &[("reporter", "destination"), ("response_code", "200")],
    );
    for _ in 0..3 {
        assert_eq!(mesh.get("client", &url("/more")).status, 200);
    }
    let after = mesh.metric(
        "server",
        "istio_requests_total",
        &[("reporter", "destination"), ("response_code", "200")],
    );
    assert!(after >= before + 3.0, "{before} -> {after}");
}

#[test]
fn plaintext_callers_under_permissive_and_strict() {
    let allow_any = server_policy("allow-any", "ALLOW", "[{}]");
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .config("peer.yaml", &server_peer_authn("PERMISSIVE"))
        .config("policy.yaml", &allow_any)
        .start();
    let server = mesh.workload("server").clone();
    let url = mesh.url("server", "http", "/plain");
    let plain = || mesh.send_to(server.inbound(), &Req::get(&url).origin_form());

    // PERMISSIVE with ALLOW-any: the plaintext caller is served, with no XFCC.
    let r = plain().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/plain");
    assert_eq!(
        r.app_header("x-forwarded-client-cert"),
        None,
        "{}",
        r.text()
    );
    // A forged XFCC from a plaintext caller does not reach the app as is.
    let r = mesh
        .send_to(
            server.inbound(),
            &Req::get(&url).origin_form().header(
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/default/sa/client",
            ),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(
        r.app_header("x-forwarded-client-cert").as_deref(),
        Some("URI=spiffe://cluster.local/ns/default/sa/client"),
        "a plaintext caller's XFCC must be sanitized"
    );
    assert_eq!(mesh.get("client", &url).status, 200);

    // A principals policy: plaintext has no principal and is refused; mTLS is served.
    mesh.apply_config("policy.yaml", &allow_client());
    let r = plain().unwrap();
    assert_eq!((r.status, r.text().trim()), (403, DENIED));
    assert_eq!(mesh.get("client", &url).status, 200);

    // STRICT: plaintext HTTP and TCP are closed; mTLS is served.
    mesh.apply_config("peer.yaml", &server_peer_authn("STRICT"));
    match plain() {
        Err(_) => {}
        Ok(r) => panic!(
            "STRICT should close plaintext, got {} {}",
            r.status,
            r.text()
        ),
    }
    let mut s = std::net::TcpStream::connect(server.inbound()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_tcp_refused(
        echo(&mut s, b"plain bytes\r\n\r\n"),
        "plaintext TCP under STRICT",
    );
    let r = mesh.get("client", &url);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.app_header("x-forwarded-client-cert").is_some());
}

#[test]
fn jwt_request_principals_allow_and_forged_tokens_get_401() {
    let issuer = Es256Issuer::new();
    let forger = Es256Issuer::new();
    let iss = "https://issuer.warden.test";
    let jwks = serde_json::to_string(&issuer.jwks()).unwrap();
    let request_authn = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: default\nspec:\n  selector:\n    matchLabels: {{app: server}}\n  jwtRules:\n  - issuer: {iss:?}\n    jwks: {jwks}\n    outputClaimToHeaders:\n    - {{header: x-jwt-sub, claim: sub}}\n"
    );
    let policy = server_policy(
        "require-alice",
        "ALLOW",
        &format!(r#"[{{from: [{{source: {{requestPrincipals: ["{iss}/alice"]}}}}]}}]"#),
    );
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .config("jwt.yaml", &[request_authn, policy].join("---\n"))
        .start();
    let url = mesh.url("server", "http", "/api");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims =
        |sub: &str, exp: u64| serde_json::json!({"iss": iss, "sub": sub, "exp": exp, "iat": now});
    let call = |token: Option<&str>| {
        let mut req = Req::get(&url);
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        mesh.send("client", &req).unwrap()
    };

    // alice's token: allowed; the app sees the claim header, not the token.
    let r = call(Some(&issuer.token(&claims("alice", now + 600))));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.app_header("x-jwt-sub").as_deref(),
        Some("alice"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.app_header("authorization"),
        None,
        "forwardOriginalToken is false: the token is removed"
    );
    // Over h2c too.
    let r = mesh
        .send(
            "client",
            &Req::get(&url).h2c().header(
                "authorization",
                &format!("Bearer {}", issuer.token(&claims("alice", now + 600))),
            ),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // Valid but another principal: RBAC.
    let r = call(Some(&issuer.token(&claims("bob", now + 600))));
    assert_eq!((r.status, r.text().trim()), (403, DENIED));
    // No token: no request principal, RBAC.
    let r = call(None);
    assert_eq!((r.status, r.text().trim()), (403, DENIED));
    // Forged (another key, same kid), expired, garbage: 401.
    for (what, token) in [
        ("forged", forger.token(&claims("alice", now + 600))),
        ("expired", issuer.token(&claims("alice", now - 600))),
        ("garbage", "not.a.jwt".to_string()),
    ] {
        let r = call(Some(&token));
        assert_eq!(r.status, 401, "{what} token: {}", r.text());
    }
}

/// Results of a request loop.
#[derive(Debug, Default)]
struct LoopResult {
    ok: usize,
    /// (time since start, what) of every failed request.
    failures: Vec<(Duration, String)>,
    /// (time since start, status) of every answer.
    statuses: Vec<(Duration, u16)>,
    /// XFCC hashes the app saw, in order, deduplicated consecutively.
    hashes: Vec<String>,
}

/// Sets the flag when dropped, so request loops end when a scope's main thread panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sends GETs from `client` to `url` until `stop` (at most `max` requests).
fn request_loop(
    mesh: &Mesh,
    client: &str,
    url: &str,
    stop: &AtomicBool,
    max: usize,
    start: Instant,
    expect: u16,
) -> LoopResult {
    let mut out = LoopResult::default();
    for _ in 0..max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t = start.elapsed();
        match mesh.send(client, &Req::get(url)) {
            Ok(r) => {
                out.statuses.push((t, r.status));
                if r.status == expect {
                    out.ok += 1;
                } else {
                    out.failures.push((t, format!("{} {}", r.status, r.text())));
                }
                if r.status == 200
                    && let Some(x) = r.app_header("x-forwarded-client-cert")
                    && let Some(h) = x.split(';').find_map(|p| p.strip_prefix("Hash="))
                    && out.hashes.last().map(String::as_str) != Some(h)
                {
                    out.hashes.push(h.to_string());
                }
            }
            Err(e) => out.failures.push((t, format!("{e:#}"))),
        }
    }
    out
}

#[test]
fn policy_changes_under_load_apply_within_a_second_and_bad_ones_are_rejected() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("other", "other")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .start();
    let url = mesh.url("server", "http", "/steady");
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let other_seen: Mutex<Vec<(Duration, u16)>> = Mutex::new(Vec::new());

    let (client_loop, applied_at, rejected_at, relaxed_at) = std::thread::scope(|s| {
        let steady = s.spawn(|| request_loop(&mesh, "client", &url, &stop, 20_000, start, 200));
        let probe = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let t = start.elapsed();
                let code = mesh
                    .send("other", &Req::get(&url))
                    .map(|r| r.status)
                    .unwrap_or(0);
                other_seen.lock().unwrap().push((t, code));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(700));

        // Tighten: only the client principal.
        mesh.mark_proxy_log("server");
        let applied_at = start.elapsed();
        mesh.write_config("policy.yaml", &allow_client());
        let ev = mesh
            .wait_proxy_log("server", Duration::from_secs(5), |v| {
                v["message"] == "config applied"
            })
            .unwrap_or_else(|l| panic!("no \"config applied\":\n{}", tail(&l, 30)));
        assert!(ev["generation"].as_u64().is_some(), "{ev}");
        std::thread::sleep(Duration::from_millis(1500));

        // A change that would relax the policy, in a file with a bad document: the
        // whole change is refused and the last good policy stays.
        let gen_before = mesh.generation("server");
        let rejected_before = mesh.metric("server", "warden_config_rejected_total", &[]);
        mesh.mark_proxy_log("server");
        let rejected_at = start.elapsed();
        let bad = [
            server_policy("allow-client", "ALLOW", "[{}]"),
            server_policy("broken", "PERMIT_EVERYONE", "[{}]"),
        ]
        .join("---\n");
        mesh.write_config("policy.yaml", &bad);
        let ev = mesh
            .wait_proxy_log("server", Duration::from_secs(5), |v| {
                v["message"] == "config rejected"
            })
            .unwrap_or_else(|l| {
                let config: Vec<&String> = l.iter().filter(|x| x.contains("config")).collect();
                panic!("no \"config rejected\"; config lines:\n{config:#?}")
            });
        let shown = ev.to_string();
        assert!(
            shown.contains("PERMIT_EVERYONE") || shown.contains("action"),
            "the rejection says why: {ev}"
        );
        try_eventually(
            "warden_config_rejected_total to grow after the rejection",
            Duration::from_secs(2),
            POLL_INTERVAL,
            || mesh.metric("server", "warden_config_rejected_total", &[]) > rejected_before,
        )
        .unwrap_or_else(|e| panic!("{e}: {}", mesh.metrics("server")));
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            mesh.generation("server"),
            gen_before,
            "the rejected config was not applied"
        );

        // A good relaxing change applies.
        let relaxed_at = start.elapsed();
        mesh.apply_config(
            "policy.yaml",
            &server_policy("allow-client", "ALLOW", "[{}]"),
        );
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        probe.join().unwrap();
        (steady.join().unwrap(), applied_at, rejected_at, relaxed_at)
    });

    // Not one allowed request failed, across every change.
    assert!(
        client_loop.failures.is_empty(),
        "{} of {} allowed requests failed: {:?}",
        client_loop.failures.len(),
        client_loop.ok + client_loop.failures.len(),
        &client_loop.failures[..client_loop.failures.len().min(10)]
    );
    assert!(
        client_loop.ok >= 300,
        "only {} requests in the loop",
        client_loop.ok
    );

    // The other principal: 200 before, 403 from at most ~1 s after the write (never 200
    // again until the relaxing change, also through the rejected one), 200 after.
    let seen = other_seen.into_inner().unwrap();
    assert!(seen.iter().all(|(_, c)| *c == 200 || *c == 403), "{seen:?}");
    assert!(seen.iter().any(|(t, c)| *t < applied_at && *c == 200));
    let first_denied = seen
        .iter()
        .find(|(t, c)| *t >= applied_at && *c == 403)
        .unwrap_or_else(|| panic!("the new policy never took effect: {seen:?}"))
        .0;
    let took = first_denied - applied_at;
    assert!(
        took <= Duration::from_millis(1500),
        "the new policy took {took:?} to apply"
    );
    let flapped: Vec<_> = seen
        .iter()
        .filter(|(t, c)| *t > first_denied && *t < relaxed_at && *c != 403)
        .collect();
    assert!(
        flapped.is_empty(),
        "after the policy applied (and through the rejected change at {rejected_at:?}), the other principal got {flapped:?}"
    );
    let after_relax: Vec<_> = seen.iter().filter(|(t, _)| *t > relaxed_at).collect();
    assert!(
        after_relax.last().is_some_and(|(_, c)| *c == 200),
        "the relaxing change did not apply: {after_relax:?}"
    );
    eprintln!(
        "policy change: {} allowed requests, none failed; new policy in force after {took:?}",
        client_loop.ok
    );
}

#[test]
fn certificate_rotation_under_load_fails_no_request() {
    // 6 s SVIDs: the agent rotates each at about half its life.
    let mesh = Mesh::builder()
        .svid_ttl("6s")
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080).tcp(9000))
        .config("policy.yaml", &allow_client())
        .start();
    mesh.agent_log(); // drop what came before
    let url = mesh.url("server", "http", "/rotating");
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (a, b, tcp) = std::thread::scope(|s| {
        let a = s.spawn(|| request_loop(&mesh, "client", &url, &stop, 100_000, start, 200));
        let b = s.spawn(|| request_loop(&mesh, "client", &url, &stop, 100_000, start, 200));
        // Every TCP connection is a new mTLS connection between the proxies: a new
        // handshake with whatever certificates each proxy holds at that moment.
        let tcp = s.spawn(|| {
            let mut out = LoopResult::default();
            while !stop.load(Ordering::Relaxed) {
                let t = start.elapsed();
                let msg = format!("tcp at {t:?}");
                let back = mesh
                    .tcp_connect("client", 9000)
                    .and_then(|mut c| echo(&mut c, msg.as_bytes()));
                match back {
                    Ok(b) if b == msg.as_bytes() => {
                        out.ok += 1;
                        out.statuses.push((t, 200));
                    }
                    other => out.failures.push((t, format!("{other:?}"))),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            out
        });
        let _stop = StopOnDrop(&stop);
        // Past the first certificates' expiry, through two rotations or more.
        std::thread::sleep(Duration::from_secs(9));
        stop.store(true, Ordering::Relaxed);
        (a.join().unwrap(), b.join().unwrap(), tcp.join().unwrap())
    });
    let received: Vec<String> = mesh
        .agent_log()
        .into_iter()
        .filter(|v| v["message"] == "SVID received")
        .map(|v| v["id"].as_str().unwrap_or("").to_string())
        .collect();
    for id in [client_id(), server_id()] {
        let n = received.iter().filter(|r| **r == id).count();
        assert!(
            n >= 2,
            "{id} rotated {n} times during the loop: {received:?}"
        );
    }
    let failures: Vec<_> = a.failures.iter().chain(&b.failures).collect();
    let total = a.ok + b.ok + failures.len();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during rotation: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(total >= 300, "only {total} requests");
    assert!(
        tcp.failures.is_empty(),
        "{} of {} new TCP connections failed during rotation: {:?}",
        tcp.failures.len(),
        tcp.ok + tcp.failures.len(),
        &tcp.failures[..tcp.failures.len().min(10)]
    );
    // New handshakes after the first certificates expired (6 s) succeeded: they used
    // rotated certificates.
    let late = tcp
        .statuses
        .iter()
        .filter(|(t, _)| *t > Duration::from_millis(7500))
        .count();
    assert!(late >= 10, "only {late} TCP connections after 7.5 s");
    // After the rotations, the server proxy still answers and sees a client certificate
    // the agent issued.
    let r = mesh.get("client", &url);
    assert_eq!(r.status, 200);
    eprintln!(
        "rotation: {total} requests and {} new TCP connections, none failed; client certificates the server saw over HTTP: {}",
        tcp.ok,
        a.hashes.len().max(b.hashes.len())
    );
    for name in ["client", "server"] {
        assert_eq!(
            warden_tests::mesh::try_http_get(&mesh.workload(name).health().to_string(), "/ready")
                .unwrap()
                .0,
            200
        );
    }
}

#[test]
fn secure_naming_refuses_a_server_with_another_identity() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .start();
    let url = mesh.url("server", "http", "/");
    assert_eq!(mesh.get("client", &url).status, 200);

    // The client's view of the mesh says the server's workload runs as `db`; the proxy
    // there holds `server`'s identity.
    let db = spiffe_id("default", "db");
    let alt = mesh.dir.path().join("client-view");
    std::fs::create_dir_all(&alt).unwrap();
    let yaml = mesh
        .mesh_yaml
        .replace("serviceAccount: server", "serviceAccount: db");
    assert_ne!(yaml, mesh.mesh_yaml);
    std::fs::write(alt.join(MESH_FILE), yaml).unwrap();
    mesh.spawn_proxy_in("client", &alt, &[]);
    mesh.wait_proxy_ready("client");

    let r = mesh.get("client", &url);
    assert_eq!(r.status, 503, "{}", r.text());
    let log = mesh
        .wait_proxy_log("client", Duration::from_secs(5), |v| {
            let s = v.to_string();
            s.contains(&db) && s.contains(&server_id())
        })
        .map(|v| v.to_string());
    let body = r.text();
    assert!(
        body.contains(&db) && body.contains(&server_id()) && log.is_ok(),
        "the 503 body and the client proxy's log name the expected ({db}) and presented ({}) identities: body {body:?}, log {log:?}",
        server_id()
    );
    // The server's app never saw it: the only request it answered is the first.
    let served = mesh.metric(
        "server",
        "istio_requests_total",
        &[("reporter", "destination")],
    );
    assert_eq!(served, 1.0, "{}", mesh.metrics("server"));
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .proxy_args(&["--drain-grace", "5s"])
        .start();
    let slow = mesh.url("server", "http", "/delay/2000");
    let (resp, code, log, took) = std::thread::scope(|s| {
        let inflight = s.spawn(|| mesh.send("client", &Req::get(&slow)));
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let (code, log) = mesh.sigterm_proxy("server");
        let took = t.elapsed();
        (inflight.join().unwrap(), code, log, took)
    });
    let resp = resp.unwrap_or_else(|e| {
        panic!(
            "the in-flight request failed: {e:#}\nserver log:\n{}",
            log.join("\n")
        )
    });
    assert_eq!(
        resp.status,
        200,
        "{}\nserver log:\n{}",
        resp.text(),
        log.join("\n")
    );
    assert_eq!(resp.json()["path"], "/delay/2000");
    assert_eq!(code, Some(0), "exit code; log:\n{}", log.join("\n"));
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    // Gone: nothing listens on its inbound port, and the client gets an error answer.
    assert!(std::net::TcpStream::connect(mesh.workload("server").inbound()).is_err());
    let r = mesh.get("client", &mesh.url("server", "http", "/after"));
    assert!(r.status >= 500, "{} {}", r.status, r.text());
}

#[test]
fn ready_only_once_it_has_an_identity() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .start();
    // The server's proxy again, with an SDS socket that is not there yet.
    let late = mesh.dir.path().join("late.sock");
    mesh.spawn_proxy_with("server", &mesh.config_dir, &late, &[]);
    mesh.wait_proxy_log("server", Duration::from_secs(10), |v| {
        v["message"] == "serving"
    })
    .unwrap_or_else(|l| panic!("no \"serving\":\n{}", tail(&l, 30)));
    let health = mesh.workload("server").health().to_string();
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = warden_tests::mesh::try_http_get(&health, "/ready").unwrap();
    assert_eq!(code, 503, "/ready without an identity: {body}");
    assert!(
        !mesh
            .proxy_json("server")
            .iter()
            .any(|v| v["message"] == "ready"),
        "{}",
        mesh.proxy_log("server").join("\n")
    );
    // No identity, no service: the caller gets an error answer, not the app.
    let url = mesh.url("server", "http", "/");
    let r = mesh.get("client", &url);
    assert!(r.status >= 500, "{} {}", r.status, r.text());

    // The socket appears: the proxy gets its identity and becomes ready.
    std::os::unix::fs::symlink(&mesh.sds_socket, &late).unwrap();
    mesh.wait_proxy_ready("server");
    assert_eq!(mesh.get("client", &url).status, 200);
}
