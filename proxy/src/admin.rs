//! The admin port (Envoy's and Istio's 15000): what `istioctl proxy-config` users reach
//! for, on the workload's address.
//!
//! - `GET /config_dump`: the workload, the resources in force (kind, name, file and
//!   line), the registry's services, the certificates (SPIFFE ID, serial, validity; never
//!   a key) and the telemetry settings, as JSON;
//! - `GET /certs`: the certificates alone;
//! - `GET /stats`: the metrics as `name{labels}: value` lines; `/stats/prometheus` in
//!   Prometheus's text format;
//! - `GET /ready`;
//! - `GET /logging` shows the log filter; `POST /logging?level=debug` (or any
//!   `RUST_LOG`-style filter: `?level=warden_proxy=debug,info`) changes it.
//!
//! The port answers anyone who can reach the workload's address, as Envoy's admin
//! answers anyone in the pod: it shows no secret, and its one change is the log level.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use warden_common::monitoring::PROMETHEUS;
use warden_common::readiness::Ready;

use crate::context::Context;
use crate::mesh::watch::ConfigStats;
use crate::telemetry::TelemetrySettings;

/// What the admin port reads.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The proxy's state.
    pub ctx: Arc<Context>,
    /// The config watch's counters.
    pub stats: Arc<ConfigStats>,
    /// Readiness.
    pub ready: Ready,
    /// Telemetry in force.
    pub telemetry: TelemetrySettings,
    /// `sidecar` or `gateway`.
    pub mode: &'static str,
}

type Answer = Response<crate::http::Body>;

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut resp = Response::new(crate::http::Body::local(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn json(value: &serde_json::Value) -> Answer {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    answer(StatusCode::OK, "application/json", text)
}

/// Serves the admin port until `shutdown` changes.
pub async fn serve(listener: TcpListener, admin: Admin, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = admin.handle(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc)
                .await;
        });
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a request to the admin port asks for, from its method, path and query alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /`.
    Index,
    /// `GET /ready`, `GET /healthz/ready`.
    Ready,
    /// `GET /stats/prometheus`, `GET /stats?format=prometheus`.
    Prometheus,
    /// `GET /stats`.
    Stats,
    /// `GET /config_dump`.
    ConfigDump,
    /// `GET /certs`.
    Certs,
    /// `GET /logging`.
    GetLogging,
    /// `POST /logging?level=...`: the one change the port makes.
    SetLogging,
    /// A known path with a method it does not take (405).
    MethodNotAllowed,
    /// Anything else (404).
    NotFound,
}

/// Routes a request: reads are `GET` or `HEAD`, the one change is `POST /logging`.
pub(crate) fn route(method: &Method, path: &str, query: &str) -> Route {
    let get = method == Method::GET || method == Method::HEAD;
    match (path, get) {
        ("/", true) => Route::Index,
        ("/ready" | "/healthz/ready", true) => Route::Ready,
        ("/stats/prometheus", true) => Route::Prometheus,
        ("/stats", true) if query.contains("format=prometheus") => Route::Prometheus,
        ("/stats", true) => Route::Stats,
        ("/config_dump", true) => Route::ConfigDump,
        ("/certs", true) => Route::Certs,
        ("/logging", true) => Route::GetLogging,
        ("/logging", false) if method == Method::POST => Route::SetLogging,
        (
            "/" | "/ready" | "/healthz/ready" | "/stats/prometheus" | "/stats" | "/config_dump"
            | "/certs" | "/logging",
            false,
        ) => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// The filter `POST /logging?level=<filter>` asks for: the first `level` parameter,
/// percent-decoded; `None` when it is missing or empty (answered 400, nothing changed).
pub(crate) fn requested_filter(query: &str) -> Option<String> {
    url_param(query, "level").filter(|l| !l.is_empty())
}

impl Admin {
    fn handle<B>(&self, req: &Request<B>) -> Answer {
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        match route(req.method(), path, query) {
            Route::Index => answer(
                StatusCode::OK,
                "text/plain",
                "warden-proxy admin\n  /config_dump  resources, registry, certificates, telemetry (JSON)\n  /certs        certificates (JSON)\n  /stats        metrics, name{labels}: value\n  /stats/prometheus\n  /ready\n  /logging      GET: the log filter; POST ?level=<filter>: change it\n",
            ),
            Route::Ready => {
                let (status, content_type, body) = self.ready.answer();
                answer(status, content_type, body)
            }
            Route::Prometheus => answer(StatusCode::OK, PROMETHEUS, self.ctx.metrics.encode()),
            Route::Stats => answer(
                StatusCode::OK,
                "text/plain",
                envoy_stats(&self.ctx.metrics.encode()),
            ),
            Route::ConfigDump => json(&self.config_dump()),
            Route::Certs => json(&self.certs()),
            Route::GetLogging => json(&serde_json::json!({
                "filter": warden_common::process::log_filter(),
            })),
            Route::SetLogging => self.logging(query),
            Route::MethodNotAllowed => answer(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                format!("{} {path}: method not allowed\n", req.method()),
            ),
            Route::NotFound => answer(StatusCode::NOT_FOUND, "text/plain", "not found; see /\n"),
        }
    }

    fn logging(&self, query: &str) -> Answer {
        let Some(level) = requested_filter(query) else {
            return answer(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "POST /logging?level=<filter>: expected a level (trace, debug, info, warn, error) or a RUST_LOG filter\n",
            );
        };
        match warden_common::process::set_log_filter(&level) {
            Ok(()) => {
                tracing::info!(filter = %level, "log filter changed on the admin port");
                answer(
                    StatusCode::OK,
                    "text/plain",
                    format!("log filter: {level}\n"),
                )
            }
            Err(e) => answer(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        }
    }

    fn certs(&self) -> serde_json::Value {
        let identity = self.ctx.identity.borrow().clone();
        match identity {
            None => {
                serde_json::json!({"certificates": [], "note": "no SVID yet (waiting for SDS)"})
            }
            Some(id) => {
                let now = SystemTime::now();
                let remaining = id
                    .not_after()
                    .duration_since(now)
                    .map_or(0, |d| d.as_secs());
                serde_json::json!({
                    "certificates": [{
                        "spiffe_id": id.spiffe_id().as_str(),
                        "serial": id.serial(),
                        "not_after": crate::telemetry::access_log::rfc3339_ms(id.not_after()),
                        "not_after_unix": seconds(id.not_after()),
                        "seconds_left": remaining,
                        "chain_length": id.chain().len(),
                    }],
                    "roots": id.roots().len(),
                })
            }
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        let snap = self.ctx.snapshot.load_full();
        let mesh = &snap.mesh;
        let local = &mesh.local;
        let services: Vec<serde_json::Value> = mesh
            .registry
            .services()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "host": s.host(),
                    "namespace": s.namespace,
                    "ports": s.ports.iter().map(|p| serde_json::json!({
                        "number": p.number,
                        "protocol": format!("{:?}", p.protocol),
                    })).collect::<Vec<_>>(),
                    "endpoints": s.endpoints.iter().map(|e| e.inbound.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let t = &self.telemetry;
        serde_json::json!({
            "workload": {
                "name": local.name,
                "namespace": local.namespace,
                "address": local.address.to_string(),
                "labels": local.labels,
                "service_account": local.service_account,
                "spiffe_id": local.spiffe_id.as_str(),
                "mode": self.mode,
            },
            "config": {
                "generation": mesh.generation,
                "files": mesh.files,
                "resources": mesh.inventory,
            },
            "registry": services,
            "certificates": self.certs(),
            "telemetry": {
                "access_log_file": t.access_log_file,
                "access_log_encoding": format!("{:?}", t.access_log_encoding).to_uppercase(),
                "access_log_format": t.access_log_format,
                "tracing_otlp_endpoint": t.otlp_endpoint,
                "tracing_sampling": t.sampling,
            },
        })
    }
}

/// The first parameter `name` of a query, percent-decoded; `None` when there is none
/// or when it does not decode to UTF-8 (it is refused, not guessed at).
fn url_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
        .flatten()
}

/// `application/x-www-form-urlencoded` decoding: `%` and two hex digits is a byte,
/// `+` a space, any other `%` itself; `None` when the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                // Two hex digits: `from_str_radix` alone would also take a sign (`%+1`).
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Prometheus text as Envoy's `/stats` lines: `name{labels}: value`, no comments.
fn envoy_stats(prometheus: &str) -> String {
    let mut out = String::with_capacity(prometheus.len());
    for line in prometheus.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((name, value)) = line.rsplit_once(' ') {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(url_param("level=debug", "level").as_deref(), Some("debug"));
        assert_eq!(
            url_param("a=1&level=warden_proxy%3Ddebug%2Cinfo", "level").as_deref(),
            Some("warden_proxy=debug,info")
        );
        assert_eq!(url_param("level=%zz%", "level").as_deref(), Some("%zz%"));
        assert_eq!(url_param("x=1", "level"), None);
        // Found by the admin_api fuzz target: a sign is not a hex digit (`%+1` was
        // byte 1; the `%` stays and `+` is a space), and bytes that are not UTF-8 are
        // refused rather than applied as U+FFFD.
        assert_eq!(
            url_param("level=%+1%-f", "level").as_deref(),
            Some("% 1%-f")
        );
        assert_eq!(url_param("level=%ff%fe&level=debug", "level"), None);
        assert_eq!(requested_filter("level=%C3%A9"), Some("\u{e9}".to_string()));
    }

    #[test]
    fn stats_read_as_envoys() {
        let s = envoy_stats("# HELP x y\n# TYPE x counter\nx_total{a=\"b c\"} 3\n");
        assert_eq!(s, "x_total{a=\"b c\"}: 3\n");
    }
}
