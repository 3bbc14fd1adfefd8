//! `warden-proxy` against clients that break the rules on purpose, in front of Python's
//! `http.server` (an HTTP/1.1 app no one here wrote, which logs every request it
//! receives): upgrade smuggling (h2c, unknown upgrades, a WebSocket upgrade the app
//! declines with bytes already sent behind it), request smuggling (CL.TE, TE.CL,
//! unknown codings), path confusion with raw bytes curl will not send, Host
//! confusion, oversized and endless headers, slow clients, idle connections and the
//! connection bound. Each case checks the answer and exactly which requests reached
//! the app. The raw client is a socket; the app and the policy engine's decisions are
//! the judges.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use warden_tests::mesh::{
    Mesh, ServiceSpec, WorkloadSpec, authorization_policy, raw_http, read_until_quiet,
};
use warden_tests::{curl, grpcio_python, interop_script};

const QUIET: Duration = Duration::from_millis(1500);

/// One workload `server` (HTTP 8080, Python's http.server behind it, a DENY on
/// `/admin*`), its proxy started with `proxy_args`.
fn server_mesh(proxy_args: &[&str]) -> Option<Mesh> {
    let py = grpcio_python("http.server behind the proxy")?;
    let deny = &authorization_policy(
        "server",
        "deny-admin",
        "DENY",
        r#"[{to: [{operation: {paths: ["/admin*"]}}]}]"#,
    );
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("server", "default", "server").without_apps())
        .service(ServiceSpec::new("server", "default").http(8080))
        .config("deny-admin.yaml", deny)
        .proxy_args(proxy_args)
        .start();
    let w = mesh.workload("server");
    let mut cmd = Command::new(py);
    cmd.arg(interop_script("http_echo.py"))
        .arg(w.addr(w.ports["http"]).to_string());
    mesh.spawn_app(cmd);
    Some(mesh)
}

fn host(mesh: &Mesh) -> String {
    format!("{}:8080", mesh.service("server").host)
}

/// The requests the app received since the last call: (method, path).
fn app_saw(mesh: &Mesh) -> Vec<(String, String)> {
    app_saw_headers(mesh)
        .into_iter()
        .map(|v| {
            (
                v["method"].as_str().unwrap_or("").to_string(),
                v["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The requests the app logged since the last call, in full. The app logs before it
/// answers, but its log travels through a pipe and a thread: give it a moment.
fn app_saw_headers(mesh: &Mesh) -> Vec<serde_json::Value> {
    std::thread::sleep(Duration::from_millis(150));
    mesh.app_log()
        .into_iter()
        .filter(|v| v["message"] == "request")
        .collect()
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

#[test]
fn upgrades_other_than_websocket_never_open_a_tunnel() {
    let Some(mesh) = server_mesh(&[]) else {
        return;
    };
    let h = host(&mesh);
    let inbound = mesh.workload("server").inbound();

    // h2c: answered as a plain request; what follows is read as HTTP and judged.
    let req = get(
        "/public",
        &h,
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    ) + &get("/admin", &h, "Connection: close\r\n");
    let r = raw_http(inbound, req.as_bytes(), QUIET);
    assert_eq!(r.statuses(), [200, 403], "{}", r.text);
    let seen = app_saw_headers(&mesh);
    assert_eq!(seen.len(), 1, "only /public reached the app: {seen:?}");
    assert_eq!(seen[0]["path"], "/public");
    let names: Vec<&str> = seen[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h[0].as_str())
        .collect();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert!(!names.contains(&h), "{h} reached the app: {names:?}");
    }

    // Any other upgrade: 403, the connection closed, nothing reaches the app.
    let req =
        get("/public", &h, "Connection: upgrade\r\nUpgrade: tls/1.3\r\n") + &get("/admin", &h, "");
    let r = raw_http(inbound, req.as_bytes(), QUIET);
    assert_eq!(r.statuses(), [403], "{}", r.text);
    assert!(r.closed, "the connection is closed after a refused upgrade");
    assert!(app_saw(&mesh).is_empty());

    // A WebSocket upgrade the app declines (http.server answers 200): the answer comes
    // back, the connection ends, and the bytes the client already sent for the tunnel
    // are never read as a request (CVE-2024-23326's class).
    let req = get(
        "/public/ws",
        &h,
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ) + &get("/admin/smuggled", &h, "");
    let r = raw_http(inbound, req.as_bytes(), QUIET);
    assert_eq!(r.statuses(), [200], "{}", r.text);
    assert!(
        r.closed,
        "the connection ends after a declined upgrade: {}",
        r.text
    );
    assert_eq!(
        app_saw(&mesh),
        [("GET".to_string(), "/public/ws".to_string())]
    );

    // Upgrade without `Connection: upgrade` is no upgrade: both headers go.
    let r = raw_http(
        inbound,
        get(
            "/public/plain",
            &h,
            "Upgrade: websocket\r\nConnection: close\r\n",
        )
        .as_bytes(),
        QUIET,
    );
    assert_eq!(r.statuses(), [200], "{}", r.text);
    let seen = app_saw_headers(&mesh);
    assert!(!seen[0].to_string().contains("websocket"), "{seen:?}");

    // CONNECT is not a tunnel either.
    let r = raw_http(
        inbound,
        format!("CONNECT {h} HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes(),
        QUIET,
    );
    assert_eq!(r.statuses(), [404], "{}", r.text);
    assert!(app_saw(&mesh).is_empty());
}

#[test]
fn smuggled_requests_never_reach_the_app() {
    let Some(mesh) = server_mesh(&[]) else {
        return;
    };
    let h = host(&mesh);
    let inbound = mesh.workload("server").inbound();

    // CL.TE: Transfer-Encoding wins, the body ends at the 0 chunk, the connection
    // closes; "GET /admin" is never parsed.
    let req = format!(
        "POST /public HTTP/1.1\r\nHost: {h}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: {h}\r\n\r\n"
    );
    let r = raw_http(inbound, req.as_bytes(), QUIET);
    assert!(
        r.statuses().iter().all(|s| *s != 403),
        "/admin was parsed: {}",
        r.text
    );
    assert!(r.statuses().len() <= 1, "{}", r.text);
    let saw = app_saw(&mesh);
    assert!(saw.iter().all(|(_, p)| p == "/public"), "{saw:?}");

    // TE.CL: the chunk carries a request; Content-Length would have cut it short.
    let smuggled = format!("GET /admin HTTP/1.1\r\nHost: {h}\r\n\r\n");
    let req = format!(
        "POST /public HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let r = raw_http(inbound, req.as_bytes(), QUIET);
    assert!(
        r.statuses().len() <= 1 && !r.statuses().contains(&403),
        "{}",
        r.text
    );
    let saw = app_saw(&mesh);
    assert!(saw.iter().all(|(_, p)| p == "/public"), "{saw:?}");

    // Codings other than chunked: 501 (Envoy's answer) or 400, nothing forwarded.
    for te in [
        "gzip, chunked",
        "chunked, identity",
        "identity",
        "chunked\r\nTransfer-Encoding: chunked",
    ] {
        let req = format!(
            "POST /public HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n"
        );
        let r = raw_http(inbound, req.as_bytes(), QUIET);
        let s = r.statuses();
        assert!(
            s == [501] || s == [400],
            "Transfer-Encoding: {te}: {}",
            r.text
        );
        assert!(r.closed, "{te}");
    }
    // Conflicting Content-Lengths.
    let req = format!(
        "POST /public HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc"
    );
    assert_eq!(raw_http(inbound, req.as_bytes(), QUIET).statuses(), [400]);
    assert!(app_saw(&mesh).is_empty());

    // A body-carrying request smuggling another in its body: one request reaches the
    // app, with the whole body.
    let inner = get("/admin", &h, "");
    let req = format!(
        "POST /public HTTP/1.1\r\nHost: {h}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{inner}",
        inner.len()
    );
    let r = raw_http(inbound, req.as_bytes(), QUIET);
    assert_eq!(r.statuses(), [200], "{}", r.text);
    assert_eq!(
        app_saw(&mesh),
        [("POST".to_string(), "/public".to_string())]
    );
}

#[test]
fn hosts_methods_and_raw_paths_are_judged_as_envoy_judges_them() {
    let Some(mesh) = server_mesh(&[]) else {
        return;
    };
    let h = host(&mesh);
    let inbound = mesh.workload("server").inbound();
    let one = |req: String| {
        let r = raw_http(inbound, req.as_bytes(), QUIET);
        (r.statuses(), r)
    };

    // Raw bytes in the path curl would clean up: backslashes, fragments.
    let (s, _) = one(get("/public\\..\\admin", &h, "Connection: close\r\n"));
    assert_eq!(s, [403]);
    let (s, _) = one(get("/admin#/../public", &h, "Connection: close\r\n"));
    assert_eq!(s, [403]);
    let (s, r) = one(get("/public/x#frag", &h, "Connection: close\r\n"));
    assert_eq!(s, [200], "{}", r.text);
    assert_eq!(
        app_saw(&mesh),
        [("GET".to_string(), "/public/x".to_string())]
    );

    // The absolute-form target's authority is the Host, for the policy and the app.
    let (s, r) = one(format!(
        "GET http://{h}/public/abs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(s, [200], "{}", r.text);
    let seen = app_saw_headers(&mesh);
    assert!(
        seen[0].to_string().contains(&format!("[\"host\",\"{h}\"]")),
        "{seen:?}"
    );
    assert!(!seen[0].to_string().contains("evil.example"), "{seen:?}");
    // Absolute form without a path is `/` to the policy and to the app (found by the
    // http1_head fuzz target: the request line sent upstream had no target at all).
    let (s, r) = one(format!(
        "GET http://{h}#frag HTTP/1.1\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(s, [200], "{}", r.text);
    let (s, r) = one(format!(
        "GET http://{h}?q=1 HTTP/1.1\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(s, [200], "{}", r.text);
    assert_eq!(
        app_saw(&mesh),
        [
            ("GET".to_string(), "/".to_string()),
            ("GET".to_string(), "/?q=1".to_string())
        ]
    );
    // Schemes other than http(s), and none at all: 400, as Envoy.
    for target in [format!("ftp://{h}/public"), format!("://{h}/public")] {
        let (s, r) = one(format!("GET {target} HTTP/1.1\r\nHost: {h}\r\n\r\n"));
        assert_eq!(s, [400], "{target}: {}", r.text);
    }
    // A Host an HTTP/2 upstream could not carry, and one that is not text (both found
    // by the http1_head fuzz target): 400.
    for bad in [&b"a:1:2"[..], &b"svc\xff"[..]] {
        let mut req = b"GET /public HTTP/1.1\r\nHost: ".to_vec();
        req.extend_from_slice(bad);
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let r = raw_http(inbound, &req, QUIET);
        assert_eq!(r.statuses(), [400], "{bad:?}: {}", r.text);
    }
    assert!(app_saw(&mesh).is_empty());
    // Two Hosts, a bad Host: 400.
    let (s, _) = one(format!(
        "GET /public HTTP/1.1\r\nHost: {h}\r\nHost: other\r\n\r\n"
    ));
    assert_eq!(s, [400]);
    let (s, _) = one("GET /public HTTP/1.1\r\nHost: a/b\r\n\r\n".to_string());
    assert_eq!(s, [400]);
    let (s, _) = one("GET /public HTTP/1.1\r\n\r\n".to_string());
    assert_eq!(s, [400], "HTTP/1.1 without Host");

    // Methods are upper case from the registered set; HTTP/1.0 is refused (426).
    let (s, _) = one(get("/admin", &h, "").replace("GET ", "get "));
    assert_eq!(s, [400]);
    let (s, _) = one(get("/public", &h, "").replace("HTTP/1.1", "HTTP/1.0"));
    assert_eq!(s, [426]);
    // `OPTIONS *` is not a path.
    let (s, _) = one(format!("OPTIONS * HTTP/1.1\r\nHost: {h}\r\n\r\n"));
    assert_eq!(s, [404]);
    // Connection may not nominate X-Forwarded-For (it would be stripped after
    // authorization looked at it).
    let (s, _) = one(get(
        "/public",
        &h,
        "Connection: x-forwarded-for\r\nX-Forwarded-For: 1.2.3.4\r\n",
    ));
    assert_eq!(s, [400]);
    assert!(app_saw(&mesh).is_empty());

    // A forged XFCC from a plaintext caller never reaches the app.
    let (s, _) = one(get(
        "/public",
        &h,
        "X-Forwarded-Client-Cert: By=x;URI=spiffe://cluster.local/ns/default/sa/admin\r\nConnection: close\r\n",
    ));
    assert_eq!(s, [200]);
    assert!(
        !app_saw_headers(&mesh)[0]
            .to_string()
            .contains("x-forwarded-client-cert")
    );
}

#[test]
fn header_limits_answer_431_and_forward_nothing() {
    let Some(mesh) = server_mesh(&[]) else {
        return;
    };
    let h = host(&mesh);
    let inbound = mesh.workload("server").inbound();

    // 200 KB in one header, over HTTP/1.1.
    let big = "a".repeat(200 * 1024);
    let r = raw_http(
        inbound,
        get("/public", &h, &format!("X-Big: {big}\r\n")).as_bytes(),
        QUIET,
    );
    assert_eq!(r.statuses(), [431], "{}", &r.text[..r.text.len().min(300)]);
    assert!(r.closed);
    // 101 headers.
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw_http(inbound, get("/public", &h, &many).as_bytes(), QUIET);
    assert_eq!(r.statuses(), [431]);
    // Just under the limits passes.
    let fine: String = (0..90).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw_http(
        inbound,
        get(
            "/public",
            &h,
            &format!(
                "{fine}X-Big: {}\r\nConnection: close\r\n",
                "a".repeat(50 * 1024)
            ),
        )
        .as_bytes(),
        QUIET,
    );
    assert_eq!(r.statuses(), [200]);
    assert_eq!(app_saw(&mesh).len(), 1);

    // Over HTTP/2 (curl with prior knowledge): 431 too.
    let url = format!("http://{inbound}/public");
    let big_header = format!("x-big: {}", "b".repeat(70 * 1024));
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &format!("host: {h}"),
        "-H",
        &big_header,
        &url,
    ]);
    // A block this far over the limit spans CONTINUATION frames the h2 crate will not
    // skip: it closes the connection (Envoy resets the stream). Either way the client
    // is refused and nothing is forwarded.
    assert!(
        r.status == 431 || (r.status == 0 && r.stderr.contains("(56)")),
        "{r:?}"
    );
    let mut args = vec![
        "--http2-prior-knowledge".to_string(),
        "-H".into(),
        format!("host: {h}"),
    ];
    for i in 0..120 {
        args.push("-H".into());
        args.push(format!("x-h{i}: v"));
    }
    args.push(url.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(curl(&args).status, 431);
    assert!(app_saw(&mesh).is_empty());
}

#[test]
fn slow_idle_and_surplus_connections_are_closed() {
    let Some(mesh) = server_mesh(&[
        "--request-headers-timeout",
        "1s",
        "--idle-timeout",
        "3s",
        "--max-connections",
        "4",
    ]) else {
        return;
    };
    let h = host(&mesh);
    let inbound = mesh.workload("server").inbound();

    // A client that never finishes its headers is cut after the header timeout.
    let mut slow = TcpStream::connect(inbound).unwrap();
    slow.write_all(format!("GET /public HTTP/1.1\r\nHost: {h}\r\nX-Slow: ").as_bytes())
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).unwrap_or(0);
    let took = start.elapsed();
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );

    // A keep-alive connection between requests is idle, not slow: it outlives the
    // header timeout and is closed at the idle timeout.
    let mut idle = TcpStream::connect(inbound).unwrap();
    idle.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    idle.write_all(get("/public/1", &h, "").as_bytes()).unwrap();
    let first = read_until_quiet(&mut idle);
    assert!(first.text.starts_with("HTTP/1.1 200"), "{}", first.text);
    std::thread::sleep(Duration::from_millis(1500));
    idle.write_all(get("/public/2", &h, "").as_bytes()).unwrap();
    let second = read_until_quiet(&mut idle);
    assert!(
        second.text.starts_with("HTTP/1.1 200"),
        "still open after the header timeout: {}",
        second.text
    );
    idle.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let start = Instant::now();
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    let took = start.elapsed();
    // 3 s after the last response, which read_until_quiet waited 0.5 s past.
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_secs(6),
        "idle close after {took:?}"
    );

    // The connection bound: 4 open connections, the 5th is closed at once.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(inbound).unwrap();
            s.write_all(get("/public/held", &h, "").as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            assert!(read_until_quiet(&mut s).text.starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let r = raw_http(
        inbound,
        get("/public/fifth", &h, "").as_bytes(),
        Duration::from_secs(2),
    );
    assert!(
        r.closed && r.text.is_empty(),
        "the fifth connection is refused: {r:?}"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let r = raw_http(
        inbound,
        get("/public/after", &h, "Connection: close\r\n").as_bytes(),
        QUIET,
    );
    assert_eq!(r.statuses(), [200], "a slot is free again");

    let metrics = mesh.metrics("server");
    for (metric, min) in [
        ("warden_downstream_request_headers_timeouts_total", 1.0),
        ("warden_downstream_idle_timeouts_total", 1.0),
        ("warden_downstream_connections_overflow_total", 1.0),
    ] {
        let v = warden_tests::mesh::metric_sum(&metrics, metric, &[]);
        assert!(v >= min, "{metric} = {v}");
    }
}
