//! The console's HTTP side: the page, its script and style (embedded), and the JSON
//! API, over HTTP/1.1 with hyper. Only `GET` and `HEAD`; only a `Host` that is an IP
//! address or `localhost`, so a web page elsewhere cannot read the API through DNS
//! rebinding; a strict Content-Security-Policy (scripts only from the console itself).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::State;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// No inline script or style, nothing from elsewhere, not framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Accepts connections until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of descriptors and the like: the next accept may work.
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("console listener: {e}")),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            // A client that goes away mid-request is not an error worth a line.
            let _ = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || e.raw_os_error() == Some(24)
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    if !host_allowed(req.headers().get(header::HOST)) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "the console answers to an IP address or localhost only\n",
        );
    }
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/" | "/index.html" => asset("text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "/style.css" => asset("text/css; charset=utf-8", STYLE_CSS),
        "/api/graph" => json(&state.graph_json()),
        "/api/audit" => json(&state.audit_json()),
        "/api/edge" => {
            let (Some(source), Some(destination)) =
                (param(query, "source"), param(query, "destination"))
            else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "expected ?source=NAMESPACE/WORKLOAD&destination=NAMESPACE/WORKLOAD\n",
                );
            };
            json(&state.clone().edge_json(source, destination).await)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Whether `Host` names this machine by address or as `localhost`.
fn host_allowed(host: Option<&header::HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser of today.
        return host.is_none();
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// A query parameter, percent-decoded (`+` is a space, as forms send it).
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k)? == key).then(|| decode(v)).flatten()
    })
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn respond(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(content_type)
            .unwrap_or(header::HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    r
}

fn asset(content_type: &str, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    )
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "application/json",
        Bytes::from(v.to_string()),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_local_names_are_answered() {
        let ok = |h: &str| host_allowed(Some(&header::HeaderValue::from_str(h).unwrap()));
        assert!(ok("127.0.0.1:15000"));
        assert!(ok("localhost:8080"));
        assert!(ok("LOCALHOST"));
        assert!(ok("[::1]:15000"));
        assert!(ok("127.0.20.1"));
        assert!(!ok("evil.example:15000"));
        assert!(!ok("localhost.evil.example"));
        assert!(host_allowed(None));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let q = "source=bookinfo%2Freviews-v2&destination=bookinfo/ratings-v1&x=a+b";
        assert_eq!(param(q, "source").unwrap(), "bookinfo/reviews-v2");
        assert_eq!(param(q, "destination").unwrap(), "bookinfo/ratings-v1");
        assert_eq!(param(q, "x").unwrap(), "a b");
        assert_eq!(param(q, "y"), None);
        assert_eq!(param("source=%zz", "source"), None);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for asset in [INDEX_HTML, APP_JS, STYLE_CSS] {
            // The SVG namespace is a name, not something fetched.
            let rest = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(!rest.contains("http://") && !rest.contains("https://"));
            assert!(!rest.contains("@import"));
            // `url(#arrow-ok)`: a marker in the same SVG; nothing else is referenced.
            assert!(rest.split("url(").skip(1).all(|r| r.starts_with('#')));
            assert!(
                !asset.contains("innerHTML"),
                "data goes in with textContent"
            );
        }
        assert!(INDEX_HTML.contains("<script src=\"/app.js\""));
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
        assert!(
            !INDEX_HTML.contains("style=\""),
            "no inline style: the CSP forbids it"
        );
    }
}
