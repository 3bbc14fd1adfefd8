//! The HTTP both ends of every demo app share: the server loop, a request read whole,
//! and the client that reaches other services through the workload's sidecar.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The largest request body an app reads (a login form).
const MAX_BODY: usize = 16 * 1024;

/// The headers bookinfo's apps copy from the request they serve onto the requests they
/// make: tracing context (so the proxies' spans join one trace), the request ID (access
/// logs), and what routing rules match on (`end-user`, `user-agent`, `cookie`).
pub const FORWARDED_HEADERS: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "end-user",
    "user-agent",
    "cookie",
];

/// A request read whole.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    /// A GET of `path` (tests).
    #[cfg(test)]
    pub fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            path: path.to_string(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    /// The headers to send on with a request this one causes ([`FORWARDED_HEADERS`]).
    pub fn forwarded(&self) -> HeaderMap {
        let mut out = HeaderMap::new();
        for name in FORWARDED_HEADERS {
            for v in self.headers.get_all(*name) {
                out.append(*name, v.clone());
            }
        }
        out
    }
}

/// An app: a request in, a response out.
pub trait App: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: Req) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Serves `app` on `listener` over HTTP/1.1 until the task is dropped; logs a line per
/// request on stderr.
pub async fn serve<A: App>(listener: TcpListener, app: A) {
    let app = Arc::new(app);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(&*app, req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer<A: App>(
    app: &A,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
    };
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    let (method, path) = (req.method.clone(), req.path.clone());
    let request_id = req
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let resp = app.handle(req).await;
    eprintln!(
        "{}",
        serde_json::json!({
            "message": "request", "method": method.as_str(), "path": path,
            "status": resp.status().as_u16(), "peer": peer.to_string(),
            "x_request_id": request_id, "ms": start.elapsed().as_millis() as u64,
        })
    );
    resp
}

/// A response with `body` of `content_type`.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", v.to_string())
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// 404 as bookinfo's apps answer it.
/// What a JSON service answers before its own routes: 404 to anything but GET, and
/// `{"status": "<Name> is healthy"}` on `/health`; `None`: the request is the service's.
pub fn get_or_health(req: &Req, name: &str) -> Option<Response<Full<Bytes>>> {
    if req.method != http::Method::GET {
        return Some(not_found());
    }
    (req.path == "/health").then(|| {
        json(
            StatusCode::OK,
            &serde_json::json!({"status": format!("{name} is healthy")}),
        )
    })
}

pub fn not_found() -> Response<Full<Bytes>> {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "please provide numeric product ID"}),
    )
}

/// How a call to another service failed.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// No answer within the app's timeout.
    Timeout(Duration),
    /// No answer: the sidecar could not be reached, or the connection broke.
    Io(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(d) => write!(f, "no answer within {d:?}"),
            Self::Io(e) => f.write_str(e),
        }
    }
}

/// Another service, reached through the workload's sidecar as an HTTP proxy (the
/// request line carries the absolute URI, as with `HTTP_PROXY`).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The sidecar's outbound listener.
    pub proxy: SocketAddr,
    /// `http://details:9080` (the service as the app names it).
    pub base: String,
    /// How long the app waits for an answer.
    pub timeout: Duration,
}

impl Upstream {
    /// GETs `path` with `headers`; the status and body.
    pub async fn get(
        &self,
        path: &str,
        headers: HeaderMap,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let url = format!("{}{path}", self.base);
        tokio::time::timeout(self.timeout, self.get_inner(&url, headers))
            .await
            .map_err(|_| CallError::Timeout(self.timeout))?
    }

    async fn get_inner(
        &self,
        url: &str,
        headers: HeaderMap,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let io =
            |e: &dyn std::fmt::Display| CallError::Io(format!("GET {url} via {}: {e}", self.proxy));
        let uri: Uri = url.parse().map_err(|e| io(&e))?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| io(&"no host in the URL"))?;
        let stream = TcpStream::connect(self.proxy).await.map_err(|e| io(&e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
        tokio::spawn(conn);
        let mut req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| io(&e))?;
        *req.headers_mut() = headers;
        let host = HeaderValue::from_str(&host).map_err(|e| io(&e))?;
        req.headers_mut().insert(HOST, host);
        let resp = sender.send_request(req).await.map_err(|e| io(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| io(&e))?
            .to_bytes();
        Ok((status, body))
    }
}

/// The sidecar's outbound address for an app listening on `listen`: port 15001 of the
/// same address (each workload has its own).
pub fn sidecar_of(listen: SocketAddr) -> SocketAddr {
    SocketAddr::new(listen.ip(), 15001)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_tracing_and_routing_headers_only() {
        let mut r = Req::get("/");
        r.headers
            .insert("x-request-id", HeaderValue::from_static("abc"));
        r.headers
            .insert("traceparent", HeaderValue::from_static("00-1-2-01"));
        r.headers
            .insert("x-b3-sampled", HeaderValue::from_static("1"));
        r.headers
            .insert("end-user", HeaderValue::from_static("jason"));
        r.headers
            .insert("content-length", HeaderValue::from_static("0"));
        r.headers.insert(
            "x-forwarded-client-cert",
            HeaderValue::from_static("By=..."),
        );
        let f = r.forwarded();
        assert_eq!(f.len(), 4);
        assert_eq!(f["x-request-id"], "abc");
        assert_eq!(f["end-user"], "jason");
        assert!(f.get("x-forwarded-client-cert").is_none());
    }

    #[test]
    fn reads_a_cookie() {
        let mut r = Req::get("/");
        r.headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; user=jason"),
        );
        assert_eq!(r.cookie("user").as_deref(), Some("jason"));
        assert_eq!(r.cookie("b"), None);
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        });
        let up = Upstream {
            proxy,
            base: "http://ratings:9080".into(),
            timeout: Duration::from_millis(100),
        };
        let err = up.get("/ratings/0", HeaderMap::new()).await.unwrap_err();
        assert_eq!(err, CallError::Timeout(Duration::from_millis(100)));
    }
}
