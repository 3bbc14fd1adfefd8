//! The HTTP request path as one pipeline of stages over the request itself, in the
//! order Envoy's connection manager and Istio's filter chain run them:
//!
//! 1. [`validate`]: what Envoy's codec and connection manager refuse (HTTP/1.0,
//!    unknown or lower-case HTTP/1 methods, header limits, several or bad `Host`
//!    headers, `CONNECT` and non-path targets, transfer codings other than `chunked`,
//!    abusive `Connection` nominations), and the authority made one value;
//! 2. [`normalize_path`]: `meshConfig.pathNormalization` applied to `:path` in place;
//! 3. [`sanitize`]: hop-by-hop headers, `te`, the upgrade decision (WebSocket only),
//!    Envoy's internal control headers, `x-forwarded-proto`, `x-forwarded-client-cert`;
//! 4. the side's own stages (inbound: route, PeerAuthentication, RequestAuthentication,
//!    AuthorizationPolicy; outbound: route), each reading and editing the same request;
//! 5. [`shape_upstream`] and the pool: the request goes out in the HTTP version the
//!    destination speaks, and [`sanitize_response`] cleans what comes back.
//!
//! Each stage takes the [`Exchange`] by `&mut` and either lets it go on or ends it
//! with a local [`Reply`]. No stage builds a second copy of the request to decide on:
//! the engine's view is read off the request at the moment it decides, so what was
//! authorized is, by construction, what is forwarded. Routing (a later issue) is one
//! more stage.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use warden_policy::normalize::{PathNormalization, normalize};

use crate::conn::Limits;
use crate::http::{self as h, Body, authority_of, path_and_query};
use crate::pool::UpstreamProtocol;

/// One request on its way through the proxy: the request (the one value every stage
/// reads and edits, and the one forwarded) and what the stages learned about it.
#[derive(Debug)]
pub struct Exchange<B = crate::http::ReqBody> {
    /// The request.
    pub req: Request<B>,
    /// `content-type: application/grpc*`: local replies take gRPC's form.
    pub grpc: bool,
    /// The authority (`:authority`, an absolute-form target's, or `Host`), made one
    /// value by [`validate`]; empty until then.
    pub authority: String,
    /// The HTTP version the client spoke.
    pub downstream: Version,
    /// A WebSocket upgrade [`sanitize`] accepted.
    pub websocket: bool,
    /// Claims of a JWT RequestAuthentication accepted.
    pub jwt: Option<serde_json::Value>,
}

/// A local reply that ends the pipeline, with Envoy's response flags.
#[derive(Debug)]
pub struct Reply {
    /// The response (boxed: replies are the rare path, and small results keep the
    /// stages cheap).
    pub resp: Box<Response<Body>>,
    /// `NR`, `UF`, `UAEX`, ... or `-`.
    pub flags: &'static str,
}

/// What a stage returns: go on, or the reply.
pub type Stage = Result<(), Reply>;

impl<B> Exchange<B> {
    /// A request as it arrived.
    pub fn new(req: Request<B>) -> Self {
        Self {
            grpc: h::is_grpc(req.headers()),
            downstream: req.version(),
            req,
            authority: String::new(),
            websocket: false,
            jwt: None,
        }
    }

    /// Takes the request out to send it; what the stages learned stays.
    pub fn send_off(self) -> (Request<B>, Exchange<()>) {
        let Self {
            req,
            grpc,
            authority,
            downstream,
            websocket,
            jwt,
        } = self;
        let rest = Exchange {
            req: Request::new(()),
            grpc,
            authority,
            downstream,
            websocket,
            jwt,
        };
        (req, rest)
    }

    /// A local reply to this request (gRPC's form for gRPC).
    pub fn reply(&self, status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            resp: Box::new(h::error_reply(self.grpc, status, body)),
            flags: "-",
        }
    }

    /// A local reply after which an HTTP/1 connection is closed, as Envoy closes it
    /// after a codec or header error (the bytes that follow cannot be trusted).
    pub fn refuse(&self, status: StatusCode, body: impl Into<String>) -> Reply {
        let mut r = self.reply(status, body);
        close_after(&mut r.resp, self.downstream);
        r
    }
}

/// Marks an HTTP/1 response as the connection's last.
pub fn close_after<B>(resp: &mut Response<B>, downstream: Version) {
    if downstream < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// The methods Envoy's HTTP/1 parser accepts (balsa with `allow_custom_methods` off):
/// case-sensitive, so `get` is a 400.
const HTTP1_METHODS: [&str; 34] = [
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// Bytes Envoy refuses in an authority (`HeaderUtility::authorityIsValid`).
fn authority_is_valid(a: &str) -> bool {
    !a.is_empty()
        && a.bytes().all(|b| {
            b > 0x20
                && b < 0x7f
                && !matches!(
                    b,
                    b'"' | b'#'
                        | b'/'
                        | b'<'
                        | b'>'
                        | b'?'
                        | b'\\'
                        | b'^'
                        | b'`'
                        | b'{'
                        | b'|'
                        | b'}'
                )
        })
}

/// Stage 1: refuses what Envoy's codec and connection manager refuse, and makes the
/// authority one value (an absolute-form target's authority replaces `Host`, RFC 9112
/// 3.2.2; over HTTP/2 a `host` header beside `:authority` is dropped, as Envoy does).
pub fn validate<B>(ex: &mut Exchange<B>, limits: &Limits, accept_http10: bool) -> Stage {
    let version = ex.req.version();
    if version < Version::HTTP_11 && !accept_http10 {
        return Err(ex.refuse(
            StatusCode::UPGRADE_REQUIRED,
            "warden: HTTP/1.0 is not accepted (as Istio's sidecars by default): use HTTP/1.1, or start the proxy with --accept-http10",
        ));
    }
    let method = ex.req.method().as_str();
    if version < Version::HTTP_2 && !HTTP1_METHODS.contains(&method) {
        let m = method.escape_debug().to_string();
        return Err(ex.refuse(
            StatusCode::BAD_REQUEST,
            format!("warden: {m:?} is not an HTTP/1.1 method (methods are upper case and from the registered set)"),
        ));
    }
    if version >= Version::HTTP_2 {
        // HTTP/1.1 heads are bounded by hyper as they are read (431 there too).
        let headers = ex.req.headers();
        let count = headers.len() + 4; // with the pseudo-headers, as Envoy counts
        let bytes = path_and_query(ex.req.uri()).len()
            + ex.req.uri().authority().map_or(0, |a| a.as_str().len())
            + headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>();
        if count > limits.max_request_headers || bytes > limits.max_request_headers_bytes {
            return Err(ex.reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "warden: request headers over the limit: {count} headers and {bytes} bytes, at most {} and {}",
                    limits.max_request_headers, limits.max_request_headers_bytes
                ),
            ));
        }
    }

    // The authority.
    let hosts = ex.req.headers().get_all(header::HOST).iter().count();
    if version >= Version::HTTP_2 {
        if ex.req.uri().authority().is_some() {
            ex.req.headers_mut().remove(header::HOST);
        } else if hosts > 1 {
            return Err(ex.refuse(StatusCode::BAD_REQUEST, "warden: several host headers"));
        }
    } else {
        if hosts > 1 {
            return Err(ex.refuse(
                StatusCode::BAD_REQUEST,
                "warden: several Host headers: a request names one host",
            ));
        }
        if let Some(a) = ex.req.uri().authority() {
            let a = HeaderValue::from_str(a.as_str()).map_err(|_| {
                ex.refuse(
                    StatusCode::BAD_REQUEST,
                    "warden: the request target's authority is not a valid Host",
                )
            })?;
            ex.req.headers_mut().insert(header::HOST, a);
        } else if hosts == 0 && version == Version::HTTP_11 {
            return Err(ex.refuse(
                StatusCode::BAD_REQUEST,
                "warden: HTTP/1.1 requests need a Host header",
            ));
        }
    }
    // A `Host` that is not text would be no authority to the policy and yet be sent on.
    if ex.req.uri().authority().is_none()
        && ex
            .req
            .headers()
            .get(header::HOST)
            .is_some_and(|h| h.to_str().is_err())
    {
        return Err(ex.refuse(
            StatusCode::BAD_REQUEST,
            "warden: the Host header is not a valid authority (host[:port])",
        ));
    }
    let authority = authority_of(&ex.req).unwrap_or_default();
    // Envoy's check, and one value `http` can carry as `:authority` (not `a:1:2`, a `%`
    // outside userinfo or an unclosed `[`): the HTTP/2 upstream gets what was authorized.
    if !authority.is_empty()
        && (!authority_is_valid(authority) || Authority::try_from(authority).is_err())
    {
        let a = authority.escape_debug().to_string();
        return Err(ex.refuse(
            StatusCode::BAD_REQUEST,
            format!("warden: {a:?} is not a valid authority (host[:port])"),
        ));
    }
    ex.authority = authority.to_string();

    // The target.
    if ex.req.method() == Method::CONNECT {
        return Err(Reply {
            flags: "NR",
            ..ex.refuse(
                StatusCode::NOT_FOUND,
                "warden: CONNECT is not proxied (only WebSocket upgrades are, as Istio configures Envoy); send plain HTTP to the proxy (HTTP_PROXY), not HTTPS_PROXY tunnels",
            )
        });
    }
    if let Some(scheme) = ex.req.uri().scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        // Envoy's check: a request target names an `http` or `https` resource.
        let s = scheme.escape_debug().to_string();
        return Err(ex.refuse(
            StatusCode::BAD_REQUEST,
            format!("warden: the request target's scheme {s:?} is not http or https"),
        ));
    }
    if version < Version::HTTP_2 && ex.req.uri().scheme().is_some() {
        // Absolute form with no path (`http://h`, `http://h#x`, `http://h?q`): its path
        // is `/` (RFC 9112 3.2.1), written out so that the policy, the normalizer and
        // the upstream's request line all see the same target. Found by the http1_head
        // fuzz target: `http` kept such a target's path empty, which the policy read
        // as `/` and which went upstream as no target at all once the scheme was gone.
        let pq = path_and_query(ex.req.uri());
        let explicit = if pq.starts_with('/') {
            pq.to_string()
        } else {
            format!("/{pq}")
        };
        let mut parts = std::mem::take(ex.req.uri_mut()).into_parts();
        parts.path_and_query = PathAndQuery::try_from(explicit).ok();
        *ex.req.uri_mut() = Uri::from_parts(parts).map_err(|_| {
            ex.refuse(
                StatusCode::BAD_REQUEST,
                "warden: the request target is not a valid absolute URI",
            )
        })?;
    }
    if !ex.req.uri().path().starts_with('/') {
        let target = ex.req.uri().to_string().escape_debug().to_string();
        return Err(Reply {
            flags: "NR",
            ..ex.reply(
                StatusCode::NOT_FOUND,
                format!("warden: the request target {target:?} is not an absolute path"),
            )
        });
    }

    // Framing and connection headers (HTTP/1.1; HTTP/2 forbids them outright).
    let headers = ex.req.headers();
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let all: Vec<&[u8]> = codings.map(HeaderValue::as_bytes).collect();
        if all.len() != 1 || !all[0].trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(ex.refuse(
                StatusCode::NOT_IMPLEMENTED,
                "warden: only Transfer-Encoding: chunked is accepted",
            ));
        }
    }
    let tokens = connection_tokens(headers);
    if tokens.len() >= 10 {
        return Err(ex.refuse(
            StatusCode::BAD_REQUEST,
            "warden: the Connection header names 10 or more options",
        ));
    }
    for t in &tokens {
        let t = t.to_ascii_lowercase();
        if t.starts_with(':')
            || matches!(
                t.as_str(),
                "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            )
        {
            let t = t.escape_debug().to_string();
            return Err(ex.refuse(
                StatusCode::BAD_REQUEST,
                format!("warden: the Connection header may not name {t:?}"),
            ));
        }
    }
    Ok(())
}

/// The options the `Connection` header(s) name.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Stage 2: normalizes `:path` in place as `mode` says; a NUL is a 400.
pub fn normalize_path<B>(ex: &mut Exchange<B>, mode: PathNormalization) -> Stage {
    let normalized = match normalize(path_and_query(ex.req.uri()), mode) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(p)) => p,
        Err(e) => {
            return Err(ex.refuse(StatusCode::BAD_REQUEST, format!("warden: {e}")));
        }
    };
    let mut parts = std::mem::take(ex.req.uri_mut()).into_parts();
    match PathAndQuery::try_from(normalized) {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => {
            return Err(ex.refuse(
                StatusCode::BAD_REQUEST,
                "warden: the normalized path is not a valid request target",
            ));
        }
    }
    *ex.req.uri_mut() = Uri::from_parts(parts).map_err(|_| {
        ex.refuse(
            StatusCode::BAD_REQUEST,
            "warden: the normalized path is not a valid request target",
        )
    })?;
    Ok(())
}

/// Envoy's internal control headers, removed from requests that do not come from an
/// internal address (for a sidecar: all of them).
pub(crate) const ENVOY_CONTROL_HEADERS: [&str; 15] = [
    "x-envoy-internal",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];

const XFCC: &str = "x-forwarded-client-cert";

/// What a side does with `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy)]
pub enum Xfcc<'a> {
    /// Inbound over mutual TLS (Istio's `APPEND_FORWARD`): this connection's element
    /// appended to any the peer forwarded.
    Append(&'a HeaderValue),
    /// Plaintext inbound (it could only be forged) and outbound (Envoy's `SANITIZE`).
    Remove,
}

/// Stage 3: Envoy's `mutateRequestHeaders`. Removes the hop-by-hop headers and those
/// `Connection` names, keeps `te` only as `trailers`, decides the upgrade (WebSocket
/// is kept; `h2c` is dropped and the request goes on as a plain one; any other upgrade
/// is a 403), removes Envoy's internal control headers, sets `x-forwarded-proto` when
/// absent, and sets or removes `x-forwarded-client-cert`.
pub fn sanitize<B>(ex: &mut Exchange<B>, tls: bool, xfcc: Xfcc<'_>) -> Stage {
    let tokens = connection_tokens(ex.req.headers());
    let has = |t: &str| tokens.iter().any(|x| x.eq_ignore_ascii_case(t));
    let headers = ex.req.headers();
    if has("upgrade") && ex.downstream == Version::HTTP_11 {
        let kind = headers
            .get(header::UPGRADE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string());
        match kind {
            Some(k) if k.eq_ignore_ascii_case("websocket") => ex.websocket = true,
            Some(k) if k.eq_ignore_ascii_case("h2c") => {}
            Some(k) => {
                let k = k.escape_debug().to_string();
                return Err(ex.refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "warden: Upgrade: {k:?} is refused: only WebSocket upgrades are proxied"
                    ),
                ));
            }
            None => {}
        }
    }
    let headers = ex.req.headers_mut();
    for t in &tokens {
        let keep = ["close", "keep-alive", "upgrade", "http2-settings", "te"];
        if !keep.iter().any(|k| t.eq_ignore_ascii_case(k))
            && let Ok(name) = HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes())
        {
            headers.remove(name);
        }
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "trailers");
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    } else {
        headers.remove(header::TE);
    }
    if ex.websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove(header::TRANSFER_ENCODING);
    let websocket = ex.websocket;
    remove_where(headers, |n| {
        matches!(n, "keep-alive" | "proxy-connection")
            || (n == "http2-settings" && !websocket)
            || (n.starts_with("x-envoy-") && ENVOY_CONTROL_HEADERS.contains(&n))
    });
    if !headers.contains_key("x-forwarded-proto") {
        let proto = if tls { "https" } else { "http" };
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(proto),
        );
    }
    match xfcc {
        Xfcc::Remove => {
            headers.remove(XFCC);
        }
        Xfcc::Append(mine) => {
            let prev: Vec<&[u8]> = headers
                .get_all(XFCC)
                .iter()
                .map(HeaderValue::as_bytes)
                .filter(|v| !v.is_empty())
                .collect();
            let value = if prev.is_empty() {
                mine.clone()
            } else {
                let mut v = prev.join(&b","[..]);
                v.push(b',');
                v.extend_from_slice(mine.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or_else(|_| mine.clone())
            };
            headers.insert(HeaderName::from_static(XFCC), value);
        }
    }
    Ok(())
}

/// Removes the headers whose names `pred` picks, in one pass over the names (a
/// lookup per candidate name would parse and hash each of them on every request).
fn remove_where(headers: &mut HeaderMap, pred: impl Fn(&str) -> bool) {
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|n| pred(n.as_str()))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
    }
}

/// Puts the request in the form `protocol` sends: HTTP/1.1 in origin form with `Host`,
/// HTTP/2 with `:scheme` and `:authority` and no `Host`.
pub fn shape_upstream<B>(ex: &mut Exchange<B>, protocol: UpstreamProtocol) {
    match protocol {
        UpstreamProtocol::Http1 => {
            if ex.req.uri().scheme().is_some() {
                let mut parts = std::mem::take(ex.req.uri_mut()).into_parts();
                parts.scheme = None;
                parts.authority = None;
                // `/` is also what `http` shows for an empty path, which without a
                // scheme would be written as no request target at all.
                if parts
                    .path_and_query
                    .as_ref()
                    .is_none_or(|p| p.as_str() == "/")
                {
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                }
                *ex.req.uri_mut() =
                    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
            }
            if !ex.req.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(&ex.authority)
            {
                ex.req.headers_mut().insert(header::HOST, v);
            }
            *ex.req.version_mut() = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            ex.req.headers_mut().remove(header::HOST);
            if ex.req.uri().scheme().is_none()
                && let Ok(authority) = Authority::try_from(ex.authority.as_str())
            {
                let mut parts = std::mem::take(ex.req.uri_mut()).into_parts();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(authority);
                if parts.path_and_query.is_none() {
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                }
                if let Ok(uri) = Uri::from_parts(parts) {
                    *ex.req.uri_mut() = uri;
                }
            }
            *ex.req.version_mut() = Version::HTTP_2;
        }
    }
}

/// Cleans an upstream response for the client: hop-by-hop headers go (an accepted
/// WebSocket's `101` keeps `Upgrade` and `Connection`). A `101` to anything but an
/// accepted WebSocket upgrade is a 502. A WebSocket upgrade answered with an error
/// (4xx, 5xx) passes and ends the client's connection; answered with anything else it
/// becomes a local reply with the upstream's status and headers, and ends the
/// connection (CVE-2024-23326: a client that already sent tunnel bytes must never have
/// them read as requests).
pub fn sanitize_response<B>(
    ex: &Exchange<B>,
    mut resp: Response<Incoming>,
) -> Result<Response<Body>, Reply> {
    let status = resp.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !ex.websocket {
        return Err(Reply {
            flags: "UPE",
            ..ex.reply(
                StatusCode::BAD_GATEWAY,
                "warden: the upstream switched protocols on a request that was not an upgrade",
            )
        });
    }
    let headers = resp.headers_mut();
    if !(ex.websocket && switching) {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove(header::TRANSFER_ENCODING);
    remove_where(headers, |n| matches!(n, "keep-alive" | "proxy-connection"));
    if ex.websocket && !switching {
        let mut out = if status.is_client_error() || status.is_server_error() {
            resp.map(Body::upstream)
        } else {
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, Body::local(""))
        };
        close_after(&mut out, ex.downstream);
        return Ok(out);
    }
    Ok(resp.map(Body::upstream))
}

#[cfg(test)]
mod tests;
