//! HTTP pieces shared by the inbound and outbound sides: the response body type, local
//! replies in Envoy's words (and their gRPC form), authority parsing, the policy
//! engine's view of a request, and WebSocket splicing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use warden_policy::authz::HttpRequest;

use crate::conn::ActiveGuard;
use crate::pool::UpstreamError;

/// What the proxy answers downstream: the upstream's body or a local reply. It holds
/// its connection's request-in-flight mark ([`ActiveGuard`]) until it has been sent,
/// so the idle timeout never cuts a response that is still streaming.
#[derive(Debug)]
pub struct Body {
    inner: Inner,
    active: Option<ActiveGuard>,
    /// A circuit breaker's slot for the upstream connection, freed with the body.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The endpoint's request-in-flight mark for least-request balancing, ended
    /// with the body.
    in_flight: Option<crate::balance::InFlight>,
    /// The exchange's telemetry, completed when the body ends (or is dropped).
    pending: Option<Box<crate::telemetry::Pending>>,
}

#[derive(Debug)]
enum Inner {
    Upstream(Incoming),
    Local(Option<Bytes>),
}

impl Body {
    /// The upstream's body.
    pub fn upstream(body: Incoming) -> Self {
        Self {
            inner: Inner::Upstream(body),
            active: None,
            permit: None,
            in_flight: None,
            pending: None,
        }
    }

    /// A local reply's body.
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        let bytes: Bytes = bytes.into();
        Self {
            inner: Inner::Local((!bytes.is_empty()).then_some(bytes)),
            active: None,
            permit: None,
            in_flight: None,
            pending: None,
        }
    }

    /// Holds `guard` until the body has been sent.
    pub(crate) fn hold(&mut self, guard: ActiveGuard) {
        self.active = Some(guard);
    }

    /// Holds a circuit breaker's slot until the body has been read from upstream.
    pub(crate) fn hold_permit(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    /// Holds the endpoint's in-flight mark until the body has been read from upstream.
    pub(crate) fn hold_in_flight(&mut self, mark: crate::balance::InFlight) {
        self.in_flight = Some(mark);
    }

    /// Counts the body into `pending` and completes it when the body ends.
    pub(crate) fn complete_with(&mut self, pending: Box<crate::telemetry::Pending>) {
        self.pending = Some(pending);
        if self.is_end_stream_now() {
            self.finish(true);
        }
    }

    fn is_end_stream_now(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => hyper::body::Body::is_end_stream(b),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(p) = self.pending.take() {
            (*p).finish(complete);
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // A body dropped before its end: the downstream went away (Envoy's `DC`).
        let complete = self.is_end_stream_now();
        self.finish(complete);
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = match &mut self.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        };
        if let (Some(p), Poll::Ready(Some(Ok(frame)))) = (&mut self.pending, &r) {
            p.frame(frame);
        }
        match &r {
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            // The last frame: complete before it is written, so whoever reads the
            // answer sees the exchange counted.
            Poll::Ready(Some(Ok(_))) if self.is_end_stream_now() => self.finish(true),
            _ => {}
        }
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            self.active = None;
            self.permit = None;
            self.in_flight = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Bytes and gRPC messages of one body, as it streams through.
#[derive(Debug, Default)]
pub struct Tally {
    /// Data bytes.
    pub bytes: AtomicU64,
    /// gRPC messages whose 5-byte prefix went by.
    pub messages: AtomicU64,
}

/// Finds gRPC's length-prefixed messages in a byte stream split anywhere: a 1-byte
/// flag and a 4-byte big-endian length, then that many bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct GrpcFramer {
    /// Prefix bytes seen of the current message (0..5).
    prefix: usize,
    /// The length being read from the prefix.
    len: u32,
    /// Message bytes still to skip.
    skip: u64,
}

impl GrpcFramer {
    /// Reads `data`; returns how many message prefixes completed in it.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let byte = data[0];
            data = &data[1..];
            if self.prefix > 0 {
                self.len = (self.len << 8) | u32::from(byte);
            }
            self.prefix += 1;
            if self.prefix == 5 {
                started += 1;
                self.skip = u64::from(self.len);
                self.prefix = 0;
                self.len = 0;
            }
        }
        started
    }
}

/// A downstream request's body, its bytes (and for gRPC its messages) counted into a
/// [`Tally`] the request's telemetry reads when the exchange ends.
#[derive(Debug)]
pub struct ReqBody {
    inner: Incoming,
    tally: Arc<Tally>,
    grpc: Option<GrpcFramer>,
}

impl ReqBody {
    /// Counts `inner` into `tally`; gRPC messages too when `grpc`.
    pub fn new(inner: Incoming, tally: Arc<Tally>, grpc: bool) -> Self {
        Self {
            inner,
            tally,
            grpc: grpc.then(GrpcFramer::default),
        }
    }
}

impl hyper::body::Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(data) = frame.data_ref()
        {
            let this = &mut *self;
            this.tally
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some(f) = &mut this.grpc {
                let n = f.feed(data);
                if n > 0 {
                    this.tally.messages.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Envoy's RBAC denial body (rbac_filter.cc).
pub const RBAC_DENIED: &str = "RBAC: access denied";

/// A local reply with a plain-text body.
pub fn local_reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::local(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Whether a request is gRPC (`content-type: application/grpc[+proto...]`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC "trailers-only" reply: HTTP 200 with `grpc-status`/`grpc-message` in the
/// headers, as Envoy answers a gRPC request it refuses locally.
pub fn grpc_reply(code: u32, message: &str) -> Response<Body> {
    let mut resp = Response::new(Body::local(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// `grpc-message` encoding: printable ASCII except `%` as is, the rest `%XX`.
fn grpc_percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// gRPC `PERMISSION_DENIED`.
pub const GRPC_PERMISSION_DENIED: u32 = 7;
/// gRPC `UNAUTHENTICATED`.
pub const GRPC_UNAUTHENTICATED: u32 = 16;
/// gRPC `UNAVAILABLE`.
pub const GRPC_UNAVAILABLE: u32 = 14;

/// The authorization denial for this request: 403 `RBAC: access denied`, or gRPC
/// `PERMISSION_DENIED` for a gRPC request.
pub fn denied(grpc: bool) -> Response<Body> {
    if grpc {
        grpc_reply(GRPC_PERMISSION_DENIED, RBAC_DENIED)
    } else {
        local_reply(StatusCode::FORBIDDEN, RBAC_DENIED)
    }
}

/// A local reply: `body` with `status`, or for a gRPC request HTTP 200 with the
/// `grpc-status` Envoy maps the status to (`Utility::httpToGrpcStatus`).
pub fn error_reply(grpc: bool, status: StatusCode, body: impl Into<String>) -> Response<Body> {
    if grpc {
        grpc_reply(grpc_status_for(status), &body.into())
    } else {
        local_reply(status, body.into())
    }
}

/// Envoy's HTTP status to gRPC status mapping for local replies.
pub fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13, // INTERNAL
        401 => GRPC_UNAUTHENTICATED,
        403 => GRPC_PERMISSION_DENIED,
        404 => 12, // UNIMPLEMENTED
        429 | 502 | 503 | 504 => GRPC_UNAVAILABLE,
        _ => 2, // UNKNOWN
    }
}

/// The authority a request is for: the absolute-form URI's, else `Host`.
pub fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Splits `host[:port]` (IPv6 in brackets), with `default_port` when none is given.
pub fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, default_port)),
    }
}

/// The path and query of a request (`/` when empty).
pub fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

/// The engine's view of an HTTP request, read off the request at the moment a stage
/// decides: header names lower case, repeated headers joined with `,`. With `only`,
/// just the headers named there (those AuthorizationPolicies read), which spares a
/// copy of every header on every request.
pub fn policy_request<B>(
    req: &Request<B>,
    host: &str,
    only: Option<&std::collections::BTreeSet<String>>,
) -> HttpRequest {
    let mut headers = std::collections::BTreeMap::new();
    let mut add = |name: &str, value: &HeaderValue| {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.to_string())
            .and_modify(|v: &mut String| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    };
    match only {
        Some(names) => {
            for name in names {
                for value in req.headers().get_all(name.as_str()) {
                    add(name, value);
                }
            }
        }
        None => {
            for (name, value) in req.headers() {
                add(name.as_str(), value);
            }
        }
    }
    HttpRequest {
        method: req.method().as_str().to_string(),
        path: path_and_query(req.uri()).to_string(),
        host: host.to_string(),
        headers,
    }
}

/// Sends an upgrade request (WebSocket) on a connection of its own: an upgraded
/// connection never goes back to a pool.
pub async fn send_upgrade<IO>(
    io: IO,
    req: Request<ReqBody>,
) -> Result<Response<Incoming>, UpstreamError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    let alive = crate::pool::spawn_connection("upgraded HTTP/1.1", conn.with_upgrades());
    Ok(alive.answer(sender.send_request(req)).await??)
}

/// Joins an upgraded downstream request and its upstream response (both `101`) and
/// copies bytes both ways until either side closes or nothing moves for `idle`.
pub fn splice_upgrade(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        crate::conn::copy_both(&mut down, &mut up, idle).await;
    });
}

/// Sets `name: value` when `value` is a valid header value.
pub fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Applies RequestAuthentication's header edits to the request that is forwarded.
pub fn apply_jwt_edits<B>(
    req: &mut Request<B>,
    edits: &[warden_policy::request_authn::HeaderEdit],
) {
    use warden_policy::request_authn::HeaderEdit;
    for e in edits {
        match e {
            HeaderEdit::Remove(name) => {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    req.headers_mut().remove(name);
                }
            }
            HeaderEdit::Append(name, value) => {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    req.headers_mut().append(name, value);
                }
            }
            HeaderEdit::SetPath(path) => {
                let mut parts = req.uri().clone().into_parts();
                if let Ok(pq) = path.parse() {
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        let cases = [
            ("reviews:9080", Some(("reviews", 9080))),
            ("reviews", Some(("reviews", 80))),
            ("[::1]:8080", Some(("::1", 8080))),
            ("[::1]", Some(("::1", 80))),
            ("user@host:81", Some(("host", 81))),
            ("host:x", None),
            ("::1", None),
        ];
        for (input, want) in cases {
            assert_eq!(split_host_port(input, 80), want, "{input}");
        }
    }

    #[test]
    fn grpc_denial_is_trailers_only_permission_denied() {
        let r = denied(true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(r.headers()["grpc-message"], "RBAC: access denied");
        let r = denied(false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(grpc_percent_encode("a%b\n"), "a%25b%0A");
    }

    #[test]
    fn policy_view_joins_repeated_headers() {
        let req = Request::builder()
            .uri("http://x/a?b=1")
            .header("X-A", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let h = policy_request(&req, "x", None);
        assert_eq!(h.headers["x-a"], "1,2");
        let only = std::collections::BTreeSet::from(["x-a".to_string(), "x-none".to_string()]);
        let h = policy_request(&req, "x", Some(&only));
        assert_eq!(h.headers.len(), 1);
        assert_eq!(h.headers["x-a"], "1,2");
        assert_eq!(h.path, "/a?b=1");
        assert_eq!(h.method, "GET");
    }
}
