//! The bodies of the fuzz targets in `fuzz/` that exercise this crate, shared with the
//! replay test below so a crash the fuzzer finds (kept in `fuzz/regressions/<target>/`)
//! is replayed by a plain `cargo test`. Each function takes the fuzzer's bytes, calls
//! the public entry point that meets untrusted input and panics if an invariant the
//! code documents does not hold.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use warden_policy::normalize::{PathNormalization, normalize};

use crate::admin::{Route, requested_filter, route};
use crate::conn::Limits;
use crate::gateway::client_certificate;
use crate::http::{Body, path_and_query, policy_request};
use crate::metrics::{ConnLabels, Peer, Reporter, ServiceLabels};
use crate::pipeline::{self, ENVOY_CONTROL_HEADERS, Exchange, Xfcc};
use crate::pool::UpstreamProtocol;
use crate::telemetry::Direction;
use crate::telemetry::Record;
use crate::telemetry::access_log::{Encoding, Entry, Format};
use crate::trace::{extract, hex};

/// `trace_context`: the input is header lines (`name: value`, one a line), as a
/// request brings them; [`extract`] reads them.
pub fn check_trace_context(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let Some(ctx) = extract(&headers) else {
        return;
    };
    if let Some(ids) = ctx.parent {
        assert!(ids.trace_id != [0; 16], "all-zero trace id accepted");
        assert!(ids.span_id != [0; 8], "all-zero span id accepted");
        assert_eq!(hex(&ids.trace_id).len(), 32);
    }
    if let Some(ts) = &ctx.tracestate {
        assert!(ctx.parent.is_some(), "tracestate without a traceparent");
        assert!(ts.len() <= 512, "tracestate longer than 512: {}", ts.len());
    }
}

/// `access_log_format`: the first byte picks the encoding (even TEXT, odd JSON), the
/// rest is `accessLogFormat`. A format that compiles renders an entry; under JSON every
/// line is one JSON object.
pub fn check_access_log_format(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(custom) = std::str::from_utf8(rest) else {
        return;
    };
    let encoding = if first % 2 == 0 {
        Encoding::Text
    } else {
        Encoding::Json
    };
    let Ok(format) = Format::new(encoding, Some(custom)) else {
        return;
    };
    let mut record = Record::new(Direction::Inbound, true);
    record.start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_605_323_456);
    if let Some(d) = record.detail() {
        d.method = Some(http::Method::GET);
        d.path = Some("/ratings/0?q=\"x\"\n".into());
        d.protocol = Some(Version::HTTP_11);
        d.authority = Some("ratings:9080".into());
        d.user_agent = Some("curl/8 \"quoted\" \u{7f}\u{e9}".into());
        d.downstream_remote = "127.0.0.2:4000".parse().ok();
        d.destination_port = Some(9080);
        d.request_headers = format
            .headers(false)
            .into_iter()
            .map(|h| (h, "v\"\\\u{1}".to_string()))
            .collect();
        d.response_headers = format
            .headers(true)
            .into_iter()
            .map(|h| (h, "r\t\u{2028}".to_string()))
            .collect();
    }
    let labels = ConnLabels::new(
        Reporter::Destination,
        Peer::principal_only(Some("spiffe://cluster.local/ns/bookinfo/sa/reviews")),
        Peer::unknown(),
        ServiceLabels::new("ratings.bookinfo.svc.cluster.local", "bookinfo"),
        "mutual_tls",
    );
    let entry = Entry {
        record: &record,
        labels: &labels,
        code: 403,
        flags: "-",
        received: 0,
        sent: 19,
        duration: Duration::from_millis(3),
    };
    let line = entry.render(&format);
    if format.is_json() {
        let v: Result<serde_json::Value, _> = serde_json::from_str(&line);
        assert!(
            v.as_ref().is_ok_and(serde_json::Value::is_object),
            "JSON access log line is not a JSON object: {line:?}: {v:?}"
        );
    }
}

/// A client's bytes on a connection, then its end; what the server writes is dropped.
struct Wire {
    data: Vec<u8>,
    pos: usize,
}

impl hyper::rt::Read for Wire {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serves `data` as one HTTP/1 connection with hyper's server, as the listeners
/// configure it (`max_header_size`, no header timer): every request hyper parses goes
/// to `each`, and its answer is written back. Everything is in memory, so the
/// connection is polled to its end here.
fn serve_http1(
    data: &[u8],
    max_header_size: Option<usize>,
    each: impl Fn(Request<Incoming>) -> Response<Body>,
) {
    let io = Wire {
        data: data.to_vec(),
        pos: 0,
    };
    let svc = hyper::service::service_fn(|req| std::future::ready(Ok::<_, Infallible>(each(req))));
    let mut b = hyper::server::conn::http1::Builder::new();
    if let Some(max) = max_header_size {
        b.max_header_size(max);
    }
    b.header_read_timeout(None);
    let conn = b.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if conn.as_mut().poll(&mut cx).is_ready() {
            return;
        }
    }
}

const XFCC: &str = "x-forwarded-client-cert";

/// This proxy's XFCC element on an inbound mutual-TLS connection, as `inbound` makes it.
const MY_XFCC: &str = "By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08;Subject=\"\";URI=spiffe://cluster.local/ns/bar/sa/sleep";

const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

/// `http1_head`: the first byte chooses the settings (bits 0-1 the path normalization,
/// 2 TLS, 3 `--accept-http10`, 4 an inbound mutual-TLS XFCC element, 5 an HTTP/2
/// upstream), the rest is what a client sends on an HTTP/1 connection. Every request
/// hyper parses goes through the pipeline's first stages as the listeners run them
/// ([`pipeline::validate`], [`pipeline::normalize_path`], [`pipeline::sanitize`]).
/// A refusal is a 400, 403, 404, 426, 431 or 501. A request that passes:
/// - is HTTP/1.1 (or 1.0 when accepted) with an upper-case method other than CONNECT;
/// - has an origin-form path that normalization leaves as it is (a fixpoint);
/// - has an authority of the bytes Envoy allows, and a `Host` header that says the same;
/// - has lost the hop-by-hop headers, those `Connection` names, Envoy's control
///   headers, `te` other than `trailers` and any upgrade but an accepted WebSocket;
/// - has the client's `x-forwarded-proto` or the connection's, and exactly the XFCC the
///   side sets (none, or the peer's elements then ours);
/// - is forwarded as the policy saw it: method, path, authority and headers of the
///   request shaped for the upstream equal the engine's view taken before shaping;
/// - and, sent upstream over HTTP/1.1, would pass the same stages again unchanged.
pub fn check_http1_head(data: &[u8]) {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let mode = MODES[usize::from(flags & 3)];
    let tls = flags & 4 != 0;
    let accept_http10 = flags & 8 != 0;
    let mine = HeaderValue::from_static(MY_XFCC);
    let xfcc = if flags & 16 != 0 {
        Xfcc::Append(&mine)
    } else {
        Xfcc::Remove
    };
    let upstream = if flags & 32 != 0 {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    let limits = Limits::default();
    serve_http1(wire, Some(limits.max_request_headers_bytes), |req| {
        let sent = req.headers().clone();
        let mut ex = Exchange::new(req);
        let staged = pipeline::validate(&mut ex, &limits, accept_http10)
            .and_then(|()| pipeline::normalize_path(&mut ex, mode))
            .and_then(|()| pipeline::sanitize(&mut ex, tls, xfcc));
        if let Err(reply) = staged {
            let status = reply.resp.status().as_u16();
            assert!(
                [400, 403, 404, 426, 431, 501].contains(&status),
                "refused with {status}"
            );
            return *reply.resp;
        }
        check_staged(&ex, &sent, mode, tls, accept_http10, xfcc);
        check_forwarded(&mut ex, &limits, mode, accept_http10, upstream);
        Response::new(Body::local(""))
    });
}

/// The options the `Connection` headers of `headers` name, lower case.
fn nominated(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// A request after validate, normalize and sanitize: see [`check_http1_head`].
fn check_staged<B>(
    ex: &Exchange<B>,
    sent: &HeaderMap,
    mode: PathNormalization,
    tls: bool,
    accept_http10: bool,
    xfcc: Xfcc<'_>,
) {
    let version = ex.req.version();
    assert!(
        version == Version::HTTP_11 || (version == Version::HTTP_10 && accept_http10),
        "{version:?} accepted"
    );
    let method = ex.req.method().as_str();
    assert!(
        method != "CONNECT" && !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()),
        "method {method:?} accepted"
    );
    let pq = path_and_query(ex.req.uri());
    assert!(pq.starts_with('/'), "target {pq:?} accepted");
    assert_eq!(
        normalize(pq, mode).as_deref(),
        Ok(pq),
        "{mode}: the normalized path {pq:?} is not a fixpoint"
    );
    let authority = ex.authority.as_str();
    assert!(
        authority
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"\"#/<>?\\^`{|}".contains(&b)),
        "authority {authority:?} accepted"
    );

    let headers = ex.req.headers();
    for name in ["transfer-encoding", "keep-alive", "proxy-connection"]
        .into_iter()
        .chain(ENVOY_CONTROL_HEADERS)
    {
        assert!(!headers.contains_key(name), "{name} forwarded");
    }
    let te: Vec<&HeaderValue> = headers.get_all("te").iter().collect();
    assert!(
        te.is_empty() || te == [&HeaderValue::from_static("trailers")],
        "te {te:?} forwarded"
    );
    if ex.websocket {
        assert_eq!(
            version,
            Version::HTTP_11,
            "a WebSocket upgrade over {version:?}"
        );
        let conn: Vec<&HeaderValue> = headers.get_all(CONNECTION).iter().collect();
        assert_eq!(conn, [&HeaderValue::from_static("upgrade")]);
        let up = headers.get(UPGRADE).map(|v| v.as_bytes().trim_ascii());
        assert!(
            up.is_some_and(|u| u.eq_ignore_ascii_case(b"websocket")),
            "upgrade {up:?} accepted"
        );
    } else {
        for name in [CONNECTION, UPGRADE] {
            assert!(!headers.contains_key(&name), "{name} forwarded");
        }
        assert!(!headers.contains_key("http2-settings"));
    }
    let named = nominated(sent);
    for t in &named {
        let kept = [
            "close",
            "keep-alive",
            "upgrade",
            "http2-settings",
            "te",
            "x-forwarded-proto",
            XFCC,
        ];
        if !kept.contains(&t.as_str()) {
            assert!(
                !headers.contains_key(t.as_str()),
                "Connection: {t} forwarded"
            );
        }
    }

    let proto: Vec<&HeaderValue> = headers.get_all("x-forwarded-proto").iter().collect();
    let sent_proto: Vec<&HeaderValue> = sent.get_all("x-forwarded-proto").iter().collect();
    if sent_proto.is_empty() {
        let own = HeaderValue::from_static(if tls { "https" } else { "http" });
        assert_eq!(proto, [&own]);
    } else {
        assert_eq!(proto, sent_proto, "the client's x-forwarded-proto changed");
    }
    let got: Vec<&[u8]> = headers
        .get_all(XFCC)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    match xfcc {
        Xfcc::Remove => assert!(got.is_empty(), "XFCC {got:?} forwarded"),
        Xfcc::Append(mine) => {
            let mut want: Vec<u8> = Vec::new();
            if !named.iter().any(|t| t == XFCC) {
                for v in sent.get_all(XFCC).iter().filter(|v| !v.is_empty()) {
                    want.extend_from_slice(v.as_bytes());
                    want.push(b',');
                }
            }
            want.extend_from_slice(mine.as_bytes());
            assert_eq!(got, [want.as_slice()], "XFCC");
        }
    }
}

/// The engine's view against the request shaped for `upstream`, and the shaped
/// request through the stages again: see [`check_http1_head`].
fn check_forwarded<B>(
    ex: &mut Exchange<B>,
    limits: &Limits,
    mode: PathNormalization,
    accept_http10: bool,
    upstream: UpstreamProtocol,
) {
    let view = policy_request(&ex.req, &ex.authority, None);
    if let Some(h) = view.headers.get("host") {
        assert_eq!(
            *h, view.host,
            "the policy's host and its Host header differ"
        );
    }
    pipeline::shape_upstream(ex, upstream);
    let fwd = &ex.req;
    assert_eq!(fwd.method().as_str(), view.method);
    assert_eq!(
        path_and_query(fwd.uri()),
        view.path,
        "another path forwarded"
    );
    let mut fwd_view = policy_request(fwd, &ex.authority, None);
    let fwd_host = fwd_view.headers.remove("host");
    let mut headers = view.headers.clone();
    headers.remove("host");
    assert_eq!(fwd_view.headers, headers, "other headers forwarded");
    match upstream {
        UpstreamProtocol::Http1 => {
            let hosts: Vec<&HeaderValue> = fwd.headers().get_all(HOST).iter().collect();
            assert_eq!(
                hosts.iter().map(|h| h.as_bytes()).collect::<Vec<_>>(),
                [view.host.as_bytes()],
                "another Host forwarded"
            );
        }
        UpstreamProtocol::Http2 => {
            assert_eq!(fwd_host, None, "Host over HTTP/2");
            assert_eq!(
                fwd.uri().authority().map(|a| a.as_str()),
                Some(view.host.as_str()).filter(|h| !h.is_empty()),
                "another :authority forwarded"
            );
            return;
        }
    }
    // What goes upstream over HTTP/1.1 passes the same stages unchanged.
    let mut again = Request::new(());
    *again.method_mut() = fwd.method().clone();
    *again.uri_mut() = fwd.uri().clone();
    *again.version_mut() = fwd.version();
    *again.headers_mut() = fwd.headers().clone();
    let mut again = Exchange::new(again);
    if let Err(r) = pipeline::validate(&mut again, limits, accept_http10)
        .and_then(|()| pipeline::normalize_path(&mut again, mode))
    {
        panic!(
            "the forwarded request is refused ({}): {:?}",
            r.resp.status(),
            again.req
        );
    }
    assert_eq!(path_and_query(again.req.uri()), view.path);
    assert_eq!(again.authority, view.host);
}

/// An XFCC header value read as Envoy documents the format: elements separated by
/// `,`, key-value pairs by `;`, key and value by the first `=`; a value in double
/// quotes may hold `,` `;` `=`, and a backslash in it escapes the next character.
/// `None` when a quote is left open.
fn parse_xfcc(value: &str) -> Option<Vec<Vec<(String, String)>>> {
    let (mut elements, mut pairs) = (Vec::new(), Vec::new());
    let (mut key, mut val) = (String::new(), String::new());
    let (mut in_value, mut quoted, mut escaped) = (false, false, false);
    for c in value.chars() {
        if quoted {
            match c {
                _ if escaped => {
                    val.push(c);
                    escaped = false;
                }
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => val.push(c),
            }
            continue;
        }
        match c {
            '"' if in_value => quoted = true,
            '=' if !in_value => in_value = true,
            ';' | ',' => {
                pairs.push((std::mem::take(&mut key), std::mem::take(&mut val)));
                in_value = false;
                if c == ',' {
                    elements.push(std::mem::take(&mut pairs));
                }
            }
            _ if in_value => val.push(c),
            _ => key.push(c),
        }
    }
    if quoted {
        return None;
    }
    pairs.push((key, val));
    elements.push(pairs);
    Some(elements)
}

/// `xfcc`: with an even first byte, the rest is a client certificate (DER) the
/// gateway's mutual TLS verified: its principal is the first URI SAN (without
/// `spiffe://`), else the first DNS SAN, and its XFCC element, when it is a valid
/// header value, reads back (Envoy's format) as exactly one element: `Hash` (SHA-256 of the
/// certificate), `Subject`, `URI`, each `DNS`, with the certificate's values. With an
/// odd first byte, the rest is the XFCC lines a mesh peer sent: inbound mutual TLS
/// keeps its non-empty values, in order, and appends this proxy's element as one
/// header; when they read as XFCC, the result reads as their elements then ours.
/// Plaintext and outbound remove them all.
pub fn check_xfcc(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    if first % 2 == 0 {
        check_gateway_xfcc(rest);
    } else {
        check_forwarded_xfcc(rest);
    }
}

fn check_gateway_xfcc(der: &[u8]) {
    let (principal, element) = client_certificate(&CertificateDer::from(der));
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        assert!(principal.is_none() && element.is_none());
        return;
    };
    let (mut uri, mut dns) = (None, Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) if uri.is_none() => uri = Some((*u).to_string()),
                GeneralName::DNSName(d) => dns.push((*d).to_string()),
                _ => {}
            }
        }
    }
    let want_principal = uri
        .as_deref()
        .map(|u| u.strip_prefix("spiffe://").unwrap_or(u).to_string())
        .or_else(|| dns.first().cloned());
    assert_eq!(principal, want_principal);
    // Not header text: no element at all (and the client's own XFCC is removed).
    let Some(element) = element else {
        return;
    };
    let Ok(text) = std::str::from_utf8(element.as_bytes()) else {
        panic!("the XFCC element is not UTF-8: {element:?}");
    };
    let Some(elements) = parse_xfcc(text) else {
        panic!("{text:?}: a quote left open");
    };
    let hash = hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    let mut want = vec![
        ("Hash".to_string(), hash),
        ("Subject".to_string(), cert.subject().to_string()),
    ];
    want.extend(uri.map(|u| ("URI".to_string(), u)));
    want.extend(dns.into_iter().map(|d| ("DNS".to_string(), d)));
    assert_eq!(elements, [want], "{text:?}");
}

fn check_forwarded_xfcc(lines: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(XFCC, v);
        }
    }
    let prev: Vec<Vec<u8>> = headers
        .get_all(XFCC)
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let exchange = || {
        let mut r = Request::new(());
        *r.headers_mut() = headers.clone();
        Exchange::new(r)
    };
    let (mut mtls, mut plain) = (exchange(), exchange());
    let mine = HeaderValue::from_static(MY_XFCC);
    if pipeline::sanitize(&mut mtls, true, Xfcc::Append(&mine)).is_err()
        || pipeline::sanitize(&mut plain, false, Xfcc::Remove).is_err()
    {
        panic!("sanitize refused a request without Connection or Upgrade");
    }
    assert!(!plain.req.headers().contains_key(XFCC), "XFCC kept");
    let mut want = prev.join(&b","[..]);
    if !want.is_empty() {
        want.push(b',');
    }
    want.extend_from_slice(MY_XFCC.as_bytes());
    let got: Vec<&[u8]> = mtls
        .req
        .headers()
        .get_all(XFCC)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(got, [want.as_slice()]);
    let (Ok(before), Ok(after)) = (
        String::from_utf8(prev.join(&b","[..])),
        std::str::from_utf8(&want),
    ) else {
        return;
    };
    let Some(mut elements) = (if before.is_empty() {
        Some(Vec::new())
    } else {
        parse_xfcc(&before)
    }) else {
        return;
    };
    elements.extend(parse_xfcc(MY_XFCC).unwrap_or_default());
    assert_eq!(parse_xfcc(after), Some(elements), "{after:?}");
}

/// The first `level` parameter of a query as `application/x-www-form-urlencoded`
/// decodes it (`+` a space, `%` and two hex digits a byte, any other `%` itself);
/// `None` when it is missing, empty or not UTF-8.
fn form_level(query: &str) -> Option<String> {
    let v = query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == "level").then_some(v)
    })?;
    let b = v.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'%', Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let hex = [*h, *l];
                let byte = std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok());
                out.extend(byte);
                i += 3;
                continue;
            }
            (b'+', ..) => out.push(b' '),
            (c, ..) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// `admin_api`: the bytes as one HTTP/1 connection to the admin port, each request
/// hyper parses routed as the port routes it ([`route`]): an unknown path is a 404,
/// a known one answers `GET`/`HEAD` reads, `POST /logging` is the one change and any
/// other method is a 405. For `POST /logging` the filter it would apply
/// ([`requested_filter`]) is exactly the first `level` parameter, form-decoded, and
/// only when that is UTF-8 and not empty (anything else is a 400 and changes
/// nothing); the log-filter parser then reads it (it applies nothing it refuses).
pub fn check_admin_api(data: &[u8]) {
    serve_http1(data, None, |req| {
        let (method, path) = (req.method(), req.uri().path());
        let query = req.uri().query().unwrap_or("");
        let r = route(method, path, query);
        let known = [
            "/",
            "/ready",
            "/healthz/ready",
            "/stats/prometheus",
            "/stats",
            "/config_dump",
            "/certs",
            "/logging",
        ];
        let read = method == Method::GET || method == Method::HEAD;
        let want = match (known.contains(&path), read) {
            (false, _) => Some(Route::NotFound),
            (true, true) => None,
            (true, false) if method == Method::POST && path == "/logging" => {
                Some(Route::SetLogging)
            }
            (true, false) => Some(Route::MethodNotAllowed),
        };
        match want {
            Some(w) => assert_eq!(r, w, "{method} {path}"),
            None => assert!(
                !matches!(
                    r,
                    Route::NotFound | Route::MethodNotAllowed | Route::SetLogging
                ),
                "{method} {path}: {r:?}"
            ),
        }
        if r == Route::SetLogging {
            let filter = requested_filter(query);
            assert_eq!(filter, form_level(query), "{query:?}");
            if let Some(f) = &filter {
                let _ = warden_common::process::check_log_filter(f);
            }
        }
        Response::new(Body::local(""))
    });
}

#[cfg(test)]
mod tests {
    /// Feeds every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
    fn replay(target: &str, check: fn(&[u8])) {
        let workspace = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        warden_common::testing::replay_fuzz_corpus(workspace, target, check);
    }

    #[test]
    fn trace_context_corpus() {
        replay("trace_context", super::check_trace_context);
    }

    #[test]
    fn access_log_format_corpus() {
        replay("access_log_format", super::check_access_log_format);
    }

    #[test]
    fn http1_head_corpus() {
        replay("http1_head", super::check_http1_head);
    }

    #[test]
    fn xfcc_corpus() {
        replay("xfcc", super::check_xfcc);
    }

    #[test]
    fn admin_api_corpus() {
        replay("admin_api", super::check_admin_api);
    }
}
