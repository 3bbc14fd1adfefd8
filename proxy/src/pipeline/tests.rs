//! Unit tests of `pipeline`.

#![allow(clippy::unwrap_used)]

use super::*;

fn ex(req: http::request::Builder) -> Exchange<()> {
    Exchange::new(req.body(()).unwrap())
}

fn h1(method: &str, target: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(target)
        .version(Version::HTTP_11)
        .header("host", "svc.ns:8080")
}

fn status(r: Stage) -> Option<u16> {
    r.err().map(|r| r.resp.status().as_u16())
}

fn closes(r: &Reply) -> bool {
    r.resp
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v == "close")
}

#[test]
fn validate_refuses_what_envoy_refuses() {
    let l = Limits::default();
    let v = |b| {
        let mut e = ex(b);
        status(validate(&mut e, &l, false))
    };
    assert_eq!(v(h1("GET", "/a")), None);
    assert_eq!(v(h1("GET", "/a").version(Version::HTTP_10)), Some(426));
    assert_eq!(v(h1("get", "/a")), Some(400));
    assert_eq!(v(h1("QUERY", "/a")), Some(400));
    assert_eq!(v(h1("GET", "/a").header("host", "other")), Some(400));
    assert_eq!(
        v(Request::builder().uri("/a")),
        Some(400),
        "HTTP/1.1 without Host"
    );
    assert_eq!(v(h1("CONNECT", "svc.ns:443")), Some(404));
    assert_eq!(v(h1("OPTIONS", "*")), Some(404));
    assert_eq!(
        v(h1("POST", "/a").header("transfer-encoding", "gzip, chunked")),
        Some(501)
    );
    assert_eq!(
        v(h1("POST", "/a").header("transfer-encoding", "Chunked")),
        None
    );
    assert_eq!(
        v(h1("GET", "/a").header("connection", "x-forwarded-for")),
        Some(400)
    );
    assert_eq!(
        v(h1("GET", "/a").header("connection", "a,b,c,d,e,f,g,h,i,j")),
        Some(400)
    );
    assert_eq!(
        v(Request::builder().uri("/a").header("host", "a b")),
        Some(400)
    );
    // Found by the http1_head fuzz target: an authority the HTTP/2 upstream request
    // cannot carry was authorized, then forwarded without any `:authority`.
    assert_eq!(
        v(Request::builder().uri("/a").header("host", "a:1:2")),
        Some(400)
    );
    // Found by the http1_head fuzz target: a Host that is not text was no authority
    // to the policy (empty), yet it was forwarded.
    assert_eq!(
        v(Request::builder()
            .uri("/a")
            .header("host", HeaderValue::from_bytes(b"svc.ns\xff").unwrap())),
        Some(400)
    );
    // Found by the http1_head fuzz target: a target with a scheme other than http(s).
    assert_eq!(v(h1("GET", "://svc.ns:8080/a")), Some(400));
    assert_eq!(v(h1("GET", "ftp://svc.ns:8080/a")), Some(400));
    assert_eq!(v(h1("GET", "HTTPS://svc.ns:8080/a")), None);
    // HTTP/1.0 when accepted.
    let mut e = ex(h1("GET", "/a").version(Version::HTTP_10));
    assert!(validate(&mut e, &l, true).is_ok());
    // Refusals end an HTTP/1 connection.
    let mut e = ex(h1("get", "/a"));
    assert!(closes(&validate(&mut e, &l, false).unwrap_err()));
}

#[test]
fn the_authority_is_one_value() {
    let l = Limits::default();
    // Absolute form: its authority replaces Host (RFC 9112 3.2.2).
    let mut e = ex(h1("GET", "http://real.ns:80/x"));
    validate(&mut e, &l, false).unwrap();
    assert_eq!(e.authority, "real.ns:80");
    assert_eq!(e.req.headers()[header::HOST], "real.ns:80");
    // HTTP/2: `host` beside `:authority` is dropped.
    let mut e = ex(Request::builder()
        .uri("http://real.ns/x")
        .version(Version::HTTP_2)
        .header("host", "forged"));
    validate(&mut e, &l, false).unwrap();
    assert_eq!(e.authority, "real.ns");
    assert!(e.req.headers().get(header::HOST).is_none());
}

#[test]
fn an_absolute_target_without_a_path_is_slash() {
    // Found by the http1_head fuzz target: `http://h#x` kept an empty path that the
    // policy read as `/` and that went upstream as no request target at all.
    let l = Limits::default();
    for (target, want) in [
        ("http://svc.ns:8080", "/"),
        ("http://svc.ns:8080#frag", "/"),
        ("http://svc.ns:8080?q=1", "/?q=1"),
        ("http://svc.ns:8080/a?q", "/a?q"),
    ] {
        let mut e = ex(h1("GET", target));
        validate(&mut e, &l, false).unwrap();
        assert_eq!(path_and_query(e.req.uri()), want, "{target}");
        shape_upstream(&mut e, UpstreamProtocol::Http1);
        assert_eq!(e.req.uri().to_string(), want, "{target}: the request line");
        assert_eq!(e.req.headers()[header::HOST], "svc.ns:8080");
    }
}

#[test]
fn http2_header_limits() {
    let l = Limits {
        max_request_headers: 10,
        max_request_headers_bytes: 100,
        ..Limits::default()
    };
    let h2 = || {
        Request::builder()
            .uri("http://a/x")
            .version(Version::HTTP_2)
    };
    let mut b = h2();
    for i in 0..6 {
        b = b.header(format!("x-{i}"), "v");
    }
    assert_eq!(
        status(validate(&mut ex(b), &l, false)),
        None,
        "6 + 4 pseudo-headers"
    );
    let mut b = h2();
    for i in 0..7 {
        b = b.header(format!("x-{i}"), "v");
    }
    assert_eq!(status(validate(&mut ex(b), &l, false)), Some(431));
    let b = h2().header("x-big", "v".repeat(95));
    assert_eq!(status(validate(&mut ex(b), &l, false)), Some(431));
}

#[test]
fn the_path_is_normalized_in_place() {
    let mut e = ex(h1("GET", "/a/../b/%61?x=%2e%2e"));
    normalize_path(&mut e, PathNormalization::Base).unwrap();
    assert_eq!(e.req.uri().path_and_query().unwrap(), "/b/a?x=%2e%2e");
    let mut e = ex(h1("GET", "http://h/a/./b"));
    normalize_path(&mut e, PathNormalization::Base).unwrap();
    assert_eq!(
        e.req.uri().to_string(),
        "http://h/a/b",
        "scheme and authority kept"
    );
    let mut e = ex(h1("GET", "/a%00"));
    assert_eq!(
        status(normalize_path(&mut e, PathNormalization::None)),
        Some(400)
    );
}

fn sanitized(b: http::request::Builder, xfcc: Xfcc<'_>) -> (Exchange<()>, Stage) {
    let mut e = ex(b);
    let r = sanitize(&mut e, false, xfcc);
    (e, r)
}

#[test]
fn upgrades_websocket_only() {
    let (e, r) = sanitized(
        h1("GET", "/")
            .header("connection", "Upgrade")
            .header("upgrade", "WebSocket"),
        Xfcc::Remove,
    );
    assert!(r.is_ok() && e.websocket);
    assert_eq!(e.req.headers()[header::CONNECTION], "upgrade");
    assert_eq!(e.req.headers()[header::UPGRADE], "WebSocket");
    let (e, r) = sanitized(
        h1("GET", "/")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAA"),
        Xfcc::Remove,
    );
    assert!(r.is_ok() && !e.websocket);
    for h in ["connection", "upgrade", "http2-settings"] {
        assert!(!e.req.headers().contains_key(h), "{h}");
    }
    let (_, r) = sanitized(
        h1("GET", "/")
            .header("connection", "upgrade")
            .header("upgrade", "tls/1.3"),
        Xfcc::Remove,
    );
    assert_eq!(status(r), Some(403));
    // Upgrade without Connection: upgrade is not an upgrade.
    let (e, r) = sanitized(h1("GET", "/").header("upgrade", "websocket"), Xfcc::Remove);
    assert!(r.is_ok() && !e.websocket && !e.req.headers().contains_key("upgrade"));
}

#[test]
fn hop_by_hop_te_envoy_headers_and_forwarded_headers() {
    let (e, _) = sanitized(
        h1("GET", "/")
            .header("connection", "keep-alive, X-Secret, te")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers, deflate")
            .header("transfer-encoding", "chunked")
            .header("x-envoy-retry-on", "5xx")
            .header("x-envoy-original-path", "/kept")
            .header("x-kept", "1"),
        Xfcc::Remove,
    );
    let mut names: Vec<&str> = e.req.headers().keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "host",
            "te",
            "x-envoy-original-path",
            "x-forwarded-proto",
            "x-kept"
        ],
    );
    assert_eq!(e.req.headers()[header::TE], "trailers");
    assert_eq!(e.req.headers()["x-forwarded-proto"], "http");
    let (e, _) = sanitized(h1("GET", "/").header("te", "Trailers"), Xfcc::Remove);
    assert!(
        !e.req.headers().contains_key("te"),
        "the trailers token is case-sensitive"
    );
}

#[test]
fn xfcc_is_appended_or_removed() {
    let mine = HeaderValue::from_static("By=b;URI=me");
    let (e, _) = sanitized(
        h1("GET", "/").header(XFCC, "By=a;URI=peer"),
        Xfcc::Append(&mine),
    );
    assert_eq!(e.req.headers()[XFCC], "By=a;URI=peer,By=b;URI=me");
    let (e, _) = sanitized(h1("GET", "/"), Xfcc::Append(&mine));
    assert_eq!(e.req.headers()[XFCC], "By=b;URI=me");
    let (e, _) = sanitized(h1("GET", "/").header(XFCC, "forged"), Xfcc::Remove);
    assert!(!e.req.headers().contains_key(XFCC));
}

#[test]
fn upstream_shapes() {
    let mut e = ex(Request::builder()
        .uri("http://svc.ns:8080/x?y")
        .version(Version::HTTP_2));
    validate(&mut e, &Limits::default(), false).unwrap();
    shape_upstream(&mut e, UpstreamProtocol::Http1);
    assert_eq!(e.req.uri().to_string(), "/x?y");
    assert_eq!(e.req.headers()[header::HOST], "svc.ns:8080");
    assert_eq!(e.req.version(), Version::HTTP_11);
    let mut e = ex(h1("GET", "/x"));
    validate(&mut e, &Limits::default(), false).unwrap();
    shape_upstream(&mut e, UpstreamProtocol::Http2);
    assert_eq!(e.req.uri().to_string(), "http://svc.ns:8080/x");
    assert!(!e.req.headers().contains_key(header::HOST));
}

#[test]
fn authorities_are_checked_as_envoy_does() {
    for ok in ["a", "svc.ns:8080", "[::1]:80", "user@host", "a-b_c.d"] {
        assert!(authority_is_valid(ok), "{ok}");
    }
    for bad in [
        "", "a b", "a/b", "a\\b", "a?b", "a#b", "a\"b", "a{b", "a\u{7f}", "é",
    ] {
        assert!(!authority_is_valid(bad), "{bad:?}");
    }
}

#[test]
fn connection_options_are_read_from_every_header() {
    let mut h = HeaderMap::new();
    h.append(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, X-A"),
    );
    h.append(header::CONNECTION, HeaderValue::from_static(" upgrade ,"));
    assert_eq!(connection_tokens(&h), ["keep-alive", "X-A", "upgrade"]);
}
