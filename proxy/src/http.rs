//! HTTP pieces shared by the inbound and outbound sides: the response body type, local
//! replies in Envoy's words, hop-by-hop header handling, the policy engine's view of a
//! request, and the upstream connection pool.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use warden_policy::authz::HttpRequest;

/// What the proxy answers downstream: the upstream's body, or a local reply.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Envoy's RBAC denial body (rbac_filter.cc).
pub const RBAC_DENIED: &str = "RBAC: access denied";

/// A local reply with a plain-text body.
pub fn local_reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(body.into())));
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
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
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

/// An error reply (no route, no upstream, upstream failure): the status for HTTP, the
/// matching gRPC code for gRPC.
pub fn error_reply(grpc: bool, status: StatusCode, body: String) -> Response<Body> {
    if grpc {
        grpc_reply(GRPC_UNAVAILABLE, &body)
    } else {
        local_reply(status, body)
    }
}

/// Connection-specific headers (RFC 9110 7.6.1) that a proxy never forwards, plus the
/// ones named in `Connection`. `Upgrade` is kept for a WebSocket upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION).cloned()
        && let Ok(conn) = conn.to_str()
    {
        for name in conn.split(',').map(str::trim) {
            if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                && name != header::CONNECTION
            {
                headers.remove(name);
            }
        }
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
}

/// Whether `req` asks for a WebSocket (or other HTTP/1.1) upgrade.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get(header::CONNECTION).is_some_and(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
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

/// The engine's view of an HTTP request (header names lowercase; repeated headers
/// joined with `,`).
pub fn policy_request<B>(req: &Request<B>, host: &str) -> HttpRequest {
    let mut headers = std::collections::BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v: &mut String| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    HttpRequest {
        method: req.method().as_str().to_string(),
        path: path_and_query(req.uri()).to_string(),
        host: host.to_string(),
        headers,
    }
}

/// Which HTTP version to speak upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (ALPN `h2` over TLS, prior knowledge in plaintext).
    Http2,
}

/// Idle HTTP/1.1 connections kept per destination.
const MAX_IDLE_PER_KEY: usize = 256;

/// Upstream connections by key: idle HTTP/1.1 senders, one shared HTTP/2 sender.
#[derive(Debug)]
pub struct Pool<K> {
    inner: Mutex<PoolInner<K>>,
}

#[derive(Debug)]
struct PoolInner<K> {
    h1: HashMap<K, Vec<http1::SendRequest<Incoming>>>,
    h2: HashMap<K, http2::SendRequest<Incoming>>,
}

impl<K> Default for Pool<K> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(PoolInner {
                h1: HashMap::new(),
                h2: HashMap::new(),
            }),
        }
    }
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting (TCP or TLS) failed.
    #[error("{0}")]
    Connect(io::Error),
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl<K: Clone + Eq + Hash + Send + 'static> Pool<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner<K>> {
        // A poisoned pool only holds connections: keep using it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn idle_h1(&self, key: &K) -> Option<http1::SendRequest<Incoming>> {
        let mut inner = self.lock();
        let list = inner.h1.get_mut(key)?;
        // Newest first: the likeliest to be warm and still open. Busy senders (a body
        // still streaming) stay for later; closed ones go.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].is_closed() {
                list.swap_remove(i);
            } else if list[i].is_ready() {
                return Some(list.swap_remove(i));
            }
        }
        None
    }

    fn put_h1(&self, key: K, sender: http1::SendRequest<Incoming>) {
        let mut inner = self.lock();
        let list = inner.h1.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(sender);
        }
    }

    /// Sends `req` to the destination `key`, reusing a connection when one is free and
    /// otherwise opening one with `connect`. A request that could not be written on a
    /// reused connection (the upstream closed it while idle) is retried once on a new
    /// one.
    pub async fn send<C, F, IO>(
        &self,
        key: K,
        protocol: UpstreamProtocol,
        req: Request<Incoming>,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match protocol {
            UpstreamProtocol::Http2 => self.send_h2(key, req, connect).await,
            UpstreamProtocol::Http1 => self.send_h1(key, req, connect).await,
        }
    }

    async fn send_h1<C, F, IO>(
        &self,
        key: K,
        mut req: Request<Incoming>,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        // HTTP/1.1 upstream: origin-form.
        if req.uri().scheme().is_some() {
            let pq = path_and_query(req.uri()).to_string();
            *req.uri_mut() = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
        }
        *req.version_mut() = Version::HTTP_11;
        if let Some(mut sender) = self.idle_h1(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.put_h1(key, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closed under us; retry below.
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let io = connect().await.map_err(UpstreamError::Connect)?;
        let (mut sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
        spawn_connection("HTTP/1.1", conn);
        let resp = sender.send_request(req).await?;
        self.put_h1(key, sender);
        Ok(resp)
    }

    async fn send_h2<C, F, IO>(
        &self,
        key: K,
        mut req: Request<Incoming>,
        connect: C,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        C: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        *req.version_mut() = Version::HTTP_2;
        let cached = {
            let inner = self.lock();
            inner.h2.get(&key).filter(|s| !s.is_closed()).cloned()
        };
        if let Some(mut sender) = cached {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let io = connect().await.map_err(UpstreamError::Connect)?;
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await?;
        spawn_connection("HTTP/2", conn);
        self.lock().h2.insert(key, sender.clone());
        Ok(sender.send_request(req).await?)
    }

    /// Drops every pooled connection (their tasks end when the peers see them close).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.h1.clear();
        inner.h2.clear();
    }
}

/// Drives an upstream connection in a task of its own until it ends.
fn spawn_connection<C>(what: &'static str, conn: C)
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(connection = what, error = %e, "upstream connection ended");
        }
    });
}

/// Sends an upgrade request (WebSocket) on a connection of its own: an upgraded
/// connection never goes back to a pool.
pub async fn send_upgrade<IO>(
    io: IO,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, UpstreamError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    spawn_connection("upgraded HTTP/1.1", conn.with_upgrades());
    Ok(sender.send_request(req).await?)
}

/// Joins an upgraded downstream request and its upstream response (both `101`) and
/// copies bytes both ways until either side closes.
pub fn splice_upgrade(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
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
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
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

/// Shares an `Arc<T>` under a cheap lock-free pointer swap (the current config).
pub type Shared<T> = Arc<arc_swap::ArcSwap<T>>;

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
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
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
        let h = policy_request(&req, "x");
        assert_eq!(h.headers["x-a"], "1,2");
        assert_eq!(h.path, "/a?b=1");
        assert_eq!(h.method, "GET");
    }
}
