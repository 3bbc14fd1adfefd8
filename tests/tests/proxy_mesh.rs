//! `warden-proxy` end to end: real proxies (one per workload, each on its own loopback
//! address) with certificates over SDS from a real `warden-agent` and `warden-ca`, in
//! front of real applications (`warden-test-app`), configured by a directory of Istio
//! YAML (see `warden_tests::mesh`).
//!
//! Allowed and denied calls over HTTP/1.1, h2c, gRPC (tonic and, when `.venv` has it,
//! Python's grpcio), TCP and WebSocket; plaintext callers under PERMISSIVE and STRICT;
//! JWTs; secure naming; metrics and the authz log. Under load and over a proxy's
//! lifetime (policy changes, rotation, draining, readiness): `proxy_mesh_load.rs`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use warden_tests::Es256Issuer;
use warden_tests::mesh::{
    MESH_FILE, Mesh, Req, ServiceSpec, WsClient, allow_only, authorization_policy, echo,
    peer_authentication, spiffe_id, tail, ws,
};

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
    let deny_admin = authorization_policy(
        "server",
        "deny-admin",
        "DENY",
        r#"[{to: [{operation: {paths: ["/admin/*"], ports: ["18080"]}}]}]"#,
    );
    let audit = authorization_policy(
        "server",
        "audit-it",
        "AUDIT",
        r#"[{to: [{operation: {paths: ["/audited"], ports: ["18080"]}}]}]"#,
    );
    let dry_run = authorization_policy(
        "server",
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
            &[allow_only("server", "client"), deny_admin, audit, dry_run].join("---\n"),
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
    // A host the mesh does not know: passed through (ALLOW_ANY), and this one does
    // not resolve.
    let r = mesh.get("client", "http://nowhere.default.svc.cluster.local:8080/");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("passthrough to nowhere"), "{}", r.text());

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
    let allow_any = authorization_policy("server", "allow-any", "ALLOW", "[{}]");
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .config("peer.yaml", &peer_authentication("server", "PERMISSIVE"))
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
    mesh.apply_config("policy.yaml", &allow_only("server", "client"));
    let r = plain().unwrap();
    assert_eq!((r.status, r.text().trim()), (403, DENIED));
    assert_eq!(mesh.get("client", &url).status, 200);

    // STRICT: plaintext HTTP and TCP are closed; mTLS is served.
    mesh.apply_config("peer.yaml", &peer_authentication("server", "STRICT"));
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
    let policy = authorization_policy(
        "server",
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
