//! The client side of traffic management on an outbound HTTP request: the route table
//! (`warden_policy::route`, the one `warden route check` prints) decides, and this
//! applies the decision: a redirect, a direct response or a 404 answered here; for a
//! route, the weighted destination and its subset's endpoints, the rewrite, the header
//! operations, an injected abort or delay, and the request timeout.
//!
//! Retries and mirrors are applied by `outbound` (a body is buffered for them when its
//! declared length is within 1 MiB), and [`tcp`] routes TCP connections by the `tcp`
//! rules. [`apply_gateway`] decides for an ingress gateway (`crate::gateway`): only
//! the VirtualServices bound to its Gateways route. A route's `corsPolicy` is applied
//! by [`crate::cors`] once the route is chosen: a preflight it answers ends here, and
//! the CORS headers for the answer travel in [`Routed::cors`].

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{StatusCode, Uri};

use warden_common::backoff::random_unit;
use warden_policy::route::model::HeaderOperations;
use warden_policy::route::{Decision, DestinationOut, RouteRequest, duration};

use crate::context::Snapshot;
use crate::http::{self as h, path_and_query, split_host_port};
use crate::pipeline::{Exchange, Reply};

/// Where the route table sends a request, and what happens around the forwarding.
#[derive(Debug, Default)]
pub struct Routed {
    /// The destination host (fully qualified) and port.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The subset's endpoint labels.
    pub subset_labels: Option<BTreeMap<String, String>>,
    /// The subset's name.
    pub subset: Option<String>,
    /// Delay to inject before forwarding.
    pub delay: Option<Duration>,
    /// The request timeout (504 after it).
    pub timeout: Option<Duration>,
    /// Header operations on the response.
    pub response_headers: Option<HeaderOperations>,
    /// The CORS headers the answer gets (the request's origin is allowed).
    pub cors: Option<crate::cors::Allowed>,
    /// `ns/name` of the VirtualService, for errors and logs.
    pub virtual_service: String,
    /// The route's `name` (Envoy's `%ROUTE_NAME%`), else `default`.
    pub route_name: String,
    /// The retry policy (`None`: no retries).
    pub retries: Option<RetryPolicy>,
    /// Where to mirror this request (already drawn by the mirror percentage).
    pub mirror: Option<Mirror>,
}

/// A destination beside the main one: a mirror, or a TCP rule's.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Fully qualified host.
    pub host: String,
    /// Port (the request's).
    pub port: u16,
    /// The subset's endpoint labels.
    pub labels: Option<BTreeMap<String, String>>,
}

/// A route's retries, as Envoy takes them from Istio.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub attempts: u32,
    /// Bound on each try.
    pub per_try_timeout: Option<Duration>,
    /// `retry_on` conditions.
    pub retry_on: Vec<String>,
    /// HTTP statuses named in `retry_on`.
    pub statuses: Vec<u16>,
}

impl RetryPolicy {
    fn from_decision(v: &serde_json::Value) -> Option<Self> {
        let attempts = u32::try_from(v["attempts"].as_i64()?)
            .ok()
            .filter(|a| *a > 0)?;
        let on = v["retry_on"].as_str().unwrap_or_default();
        let retry_on: Vec<String> = on
            .split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        Some(Self {
            attempts,
            per_try_timeout: v["per_try_timeout"]
                .as_str()
                .and_then(|t| duration::parse(t).ok()),
            statuses: retry_on.iter().filter_map(|c| c.parse().ok()).collect(),
            retry_on,
        })
    }

    fn on(&self, condition: &str) -> bool {
        self.retry_on.iter().any(|c| c == condition)
    }

    /// Whether this answer is one to try again (Envoy's `retry_on` semantics).
    pub fn retriable(&self, result: &Result<http::Response<crate::http::Body>, Reply>) -> bool {
        match result {
            // Answered by this proxy: a failed connection, a reset, a per-try timeout.
            Err(r) => match r.flags {
                "UF" => {
                    self.on("connect-failure")
                        || self.on("5xx")
                        || self.on("gateway-error")
                        || self.on("reset")
                }
                "UC" => self.on("reset") || self.on("5xx") || self.on("refused-stream"),
                "UT" => self.on("5xx") || self.on("gateway-error"),
                _ => false,
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                if (self.on("5xx") && status >= 500)
                    || (self.on("gateway-error") && matches!(status, 502..=504))
                    || (self.on("retriable-4xx") && status == 409)
                    || (self.on("retriable-status-codes") || !self.statuses.is_empty())
                        && self.statuses.contains(&status)
                {
                    return true;
                }
                let grpc = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok());
                matches!(
                    (grpc, self),
                    (Some(1), p) if p.on("cancelled")
                ) || matches!((grpc, self), (Some(4), p) if p.on("deadline-exceeded"))
                    || matches!((grpc, self), (Some(8), p) if p.on("resource-exhausted"))
                    || matches!((grpc, self), (Some(13), p) if p.on("internal"))
                    || matches!((grpc, self), (Some(14), p) if p.on("unavailable"))
            }
        }
    }
}

/// A request an ingress gateway's server accepted: the Gateways whose server on its
/// port serves the request's host, that port, and whether the connection was TLS.
#[derive(Debug, Clone, Copy)]
pub struct Via<'a> {
    /// `ns/name` of those Gateways.
    pub gateways: &'a [String],
    /// The gateway server's port.
    pub port: u16,
    /// HTTPS (the scheme redirects keep).
    pub tls: bool,
}

fn route_request(snap: &Snapshot, ex: &Exchange, via: Option<Via<'_>>) -> Option<RouteRequest> {
    let (_, port) = split_host_port(&ex.authority, via.map_or(80, |v| v.port))?;
    let port = via.map_or(port, |v| v.port);
    let mut headers = BTreeMap::new();
    for (k, v) in ex.req.headers() {
        if let Ok(v) = v.to_str() {
            headers
                .entry(k.as_str().to_string())
                .and_modify(|e: &mut String| {
                    e.push(',');
                    e.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
    }
    Some(RouteRequest {
        source_namespace: snap.mesh.local.namespace.clone(),
        source_labels: snap.mesh.local.labels.clone(),
        http: true,
        host: ex.authority.clone(),
        port,
        method: ex.req.method().as_str().to_string(),
        path: path_and_query(ex.req.uri()).to_string(),
        headers,
        scheme: if via.is_some_and(|v| v.tls) {
            "https".into()
        } else {
            "http".into()
        },
        skip_policy: true,
        gateways: via.map(|v| v.gateways.to_vec()).unwrap_or_default(),
        ..Default::default()
    })
}

/// Decides `ex` by the route table. `Ok(None)`: no VirtualService owns the host, the
/// request goes where its authority says. `Err`: answered here.
pub fn apply(snap: &Snapshot, ex: &mut Exchange) -> Result<Option<Routed>, Reply> {
    if !snap.mesh.routes.has_virtual_services() {
        return Ok(None);
    }
    let Some(req) = route_request(snap, ex, None) else {
        return Ok(None);
    };
    decided(snap, ex, &req, None)
}

/// Decides a request an ingress gateway accepted: only VirtualServices bound to its
/// Gateways route it; without one the gateway answers 404 (`NR`), as Envoy does for a
/// host with no virtual host.
pub fn apply_gateway(snap: &Snapshot, ex: &mut Exchange, via: Via<'_>) -> Result<Routed, Reply> {
    let no_route = |ex: &Exchange, why: String| {
        tracing::debug!(authority = %ex.authority, gateways = ?via.gateways, %why, "gateway: no route");
        Reply {
            flags: "NR",
            ..ex.reply(StatusCode::NOT_FOUND, "")
        }
    };
    let Some(req) = route_request(snap, ex, Some(via)) else {
        return Err(no_route(ex, "the authority has no host".into()));
    };
    match decided(snap, ex, &req, Some(via))? {
        Some(r) => Ok(r),
        None => Err(no_route(
            ex,
            "no VirtualService bound to the gateway names the host".into(),
        )),
    }
}

fn decided(
    snap: &Snapshot,
    ex: &mut Exchange,
    req: &RouteRequest,
    via: Option<Via<'_>>,
) -> Result<Option<Routed>, Reply> {
    let d = snap.mesh.routes.decide(req, None);
    let Some(vs) = d.virtual_service.clone() else {
        return Ok(None);
    };
    match d.action {
        "redirect" => Err(redirect(ex, &d)),
        "direct_response" => {
            let status = d
                .status
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let body = d
                .direct_response
                .as_ref()
                .and_then(|r| r["body"].as_str())
                .unwrap_or_default()
                .to_string();
            let mut resp = h::local_reply(status, body);
            headers(resp.headers_mut(), d.response_headers.as_ref());
            Err(Reply {
                resp: Box::new(resp),
                flags: "-",
            })
        }
        "route" => {
            // Envoy's CORS filter runs before the fault filter and the router: its
            // headers go on their local replies too.
            let cors = crate::cors::filter(d.cors.as_deref(), &ex.req)?;
            routed(snap, ex, &d, vs, via, cors.as_ref()).map_err(|mut r| {
                if let Some(c) = &cors {
                    c.apply(r.resp.headers_mut());
                }
                r
            })
        }
        _ => {
            tracing::debug!(virtual_service = %vs, authority = %ex.authority, "no route of the VirtualService matches");
            Err(Reply {
                flags: "NR",
                ..ex.reply(StatusCode::NOT_FOUND, "")
            })
        }
    }
}

fn redirect(ex: &Exchange, d: &Decision) -> Reply {
    let status = d
        .status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut resp = h::local_reply(status, String::new());
    if let Some(loc) = d.redirect.as_ref().and_then(|r| r["location"].as_str())
        && let Ok(v) = HeaderValue::from_str(loc)
    {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    headers(resp.headers_mut(), d.response_headers.as_ref());
    let _ = ex;
    Reply {
        resp: Box::new(resp),
        flags: "-",
    }
}

fn routed(
    snap: &Snapshot,
    ex: &mut Exchange,
    d: &Decision,
    vs: String,
    via: Option<Via<'_>>,
    cors: Option<&crate::cors::Allowed>,
) -> Result<Option<Routed>, Reply> {
    let Some(dest) = pick_weighted(&d.destinations) else {
        return Err(Reply {
            flags: "NR",
            ..ex.reply(StatusCode::NOT_FOUND, "")
        });
    };
    let (_, req_port) = split_host_port(&ex.authority, 80).unwrap_or(("", 80));
    let port = dest.port.and_then(|p| u16::try_from(p).ok());
    let port = match (port, via) {
        (Some(p), _) => p,
        (None, None) => req_port,
        // A gateway's destination without a port: the service's only port (Istio
        // refuses the route when the service has several).
        (None, Some(_)) => match snap.mesh.registry.only_port(&dest.host) {
            Some(p) => p,
            None => {
                return Err(Reply {
                    flags: "NR",
                    ..ex.reply(
                        StatusCode::NOT_FOUND,
                        format!(
                            "warden: VirtualService {vs} sends to {} without a port, and the service does not have exactly one",
                            dest.host
                        ),
                    )
                });
            }
        },
    };
    let subset_labels = match subset_labels(snap, dest, &vs) {
        Ok(l) => l,
        Err(why) => {
            return Err(Reply {
                flags: "NC",
                ..ex.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no healthy upstream: {why}"),
                )
            });
        }
    };
    // Faults: an abort answers here; a delay waits before forwarding.
    if let Some(f) = &d.fault {
        let abort = &f["abort"];
        if abort.is_object() && random_unit() * 100.0 < abort["percent"].as_f64().unwrap_or(0.0) {
            // A gRPC abort is a trailers-only gRPC response with that status, as
            // Envoy's fault filter answers.
            if let Some(code) = abort["grpc_status"].as_str().and_then(grpc_code) {
                return Err(Reply {
                    resp: Box::new(h::grpc_reply(code, "fault filter abort")),
                    flags: "FI",
                });
            }
            let status = abort["http_status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err(Reply {
                flags: "FI",
                ..ex.reply(status, "fault filter abort")
            });
        }
    }
    let delay = d.fault.as_ref().and_then(|f| {
        let delay = &f["delay"];
        let hit = random_unit() * 100.0 < delay["percent"].as_f64().unwrap_or(0.0);
        hit.then(|| {
            delay["fixed_delay"]
                .as_str()
                .and_then(|t| duration::parse(t).ok())
        })
        .flatten()
    });
    // The rewrite and the request's header operations.
    if let Some(rw) = &d.rewrite {
        if let Some(uri) = rw["uri"].as_str() {
            // A rewrite that is not a valid path is refused, never sent as another one.
            let mut parts = ex.req.uri().clone().into_parts();
            parts.path_and_query = uri.parse().ok();
            match parts
                .path_and_query
                .is_some()
                .then(|| Uri::from_parts(parts))
            {
                Some(Ok(new)) => *ex.req.uri_mut() = new,
                _ => {
                    tracing::warn!(virtual_service = %vs, rewritten = %uri, "the rewritten path is not a valid request target");
                    return Err(ex.reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("warden: VirtualService {vs} rewrites the path to {uri:?}, which is not a valid request target"),
                    ));
                }
            }
        }
        if let Some(a) = rw["authority"].as_str()
            && let Ok(v) = HeaderValue::from_str(a)
        {
            ex.authority = a.to_string();
            ex.req.headers_mut().insert(http::header::HOST, v);
        }
    }
    headers(ex.req.headers_mut(), d.request_headers.as_ref());
    // A mirror, drawn by its percentage.
    let mirror = d.mirror.as_ref().and_then(|m| {
        let host = m["host"].as_str()?.to_string();
        if random_unit() * 100.0 >= m["percent"].as_f64().unwrap_or(100.0) {
            return None;
        }
        let labels = match m["subset"].as_str() {
            Some(s) => Some(snap.mesh.routes.subset_labels(
                &host,
                s,
                &snap.mesh.local.namespace,
            )?),
            None => None,
        };
        Some(Mirror {
            host,
            port: req_port,
            labels,
        })
    });
    Ok(Some(Routed {
        mirror,
        subset: dest.subset.clone(),
        host: dest.host.clone(),
        port,
        subset_labels,
        delay,
        timeout: d.timeout.as_deref().and_then(|t| duration::parse(t).ok()),
        response_headers: d.response_headers.clone(),
        cors: cors.cloned(),
        virtual_service: vs,
        route_name: d
            .route_name
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        retries: d.retries.as_ref().and_then(RetryPolicy::from_decision),
    }))
}

impl Routed {
    /// The route's edits to the answer: the response header operations on the app's
    /// answer, then the CORS headers on it or on the proxy's own reply (Envoy's
    /// router applies the former, the CORS filter's `encodeHeaders` the latter).
    pub fn finish(
        &self,
        result: Result<http::Response<crate::http::Body>, Reply>,
    ) -> Result<http::Response<crate::http::Body>, Reply> {
        let cors = |h: &mut http::HeaderMap| {
            if let Some(c) = &self.cors {
                c.apply(h);
            }
        };
        match result {
            Ok(mut resp) => {
                headers(resp.headers_mut(), self.response_headers.as_ref());
                cors(resp.headers_mut());
                Ok(resp)
            }
            Err(mut r) => {
                cors(r.resp.headers_mut());
                Err(r)
            }
        }
    }
}

/// The endpoint labels of `dest`'s subset (`None` without one); an error naming the
/// VirtualService when no DestinationRule defines the subset.
pub(crate) fn subset_labels(
    snap: &Snapshot,
    dest: &DestinationOut,
    vs: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let Some(s) = &dest.subset else {
        return Ok(None);
    };
    snap.mesh
        .routes
        .subset_labels(&dest.host, s, &snap.mesh.local.namespace)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "VirtualService {vs} routes to subset {s} of {}, which no DestinationRule defines",
                dest.host
            )
        })
}

/// One destination, drawn by weight.
pub(crate) fn pick_weighted(destinations: &[DestinationOut]) -> Option<&DestinationOut> {
    let total: i64 = destinations.iter().map(|x| x.weight.max(0)).sum();
    if destinations.len() == 1 || total <= 0 {
        return destinations.first();
    }
    let mut r = random_unit() * total as f64;
    destinations
        .iter()
        .find(|x| {
            r -= x.weight.max(0) as f64;
            r < 0.0
        })
        .or(destinations.last())
}

/// Where a TCP connection to `host:port` goes by the VirtualServices' `tcp` rules:
/// `None` when no VirtualService owns the host (the service itself), `Some(Err)` when
/// one does and no rule matches (the connection is closed), else the destination
/// drawn by weight, with its subset's labels.
pub fn tcp(snap: &Snapshot, host: &str, port: u16) -> Option<Result<Mirror, String>> {
    if !snap.mesh.routes.has_virtual_services() {
        return None;
    }
    let req = RouteRequest {
        source_namespace: snap.mesh.local.namespace.clone(),
        source_labels: snap.mesh.local.labels.clone(),
        http: false,
        host: host.to_string(),
        port,
        skip_policy: true,
        ..Default::default()
    };
    let d = snap.mesh.routes.decide(&req, None);
    let vs = d.virtual_service.clone()?;
    if d.action != "route" {
        return Some(Err(format!(
            "VirtualService {vs} has no tcp rule for port {port}"
        )));
    }
    let dest = pick_weighted(&d.destinations)?;
    let labels = match subset_labels(snap, dest, &vs) {
        Ok(l) => l,
        Err(why) => return Some(Err(why)),
    };
    Some(Ok(Mirror {
        host: dest.host.clone(),
        port: dest
            .port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(port),
        labels,
    }))
}

/// The number of a gRPC status name (`UNAVAILABLE` → 14).
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
        .or_else(|| name.parse().ok().filter(|c| *c <= 16))
}

/// Applies `set`, `add`, `remove` (in Envoy's order: remove, then set and add).
pub fn headers(map: &mut http::HeaderMap, ops: Option<&HeaderOperations>) {
    let Some(ops) = ops else {
        return;
    };
    for name in &ops.remove {
        if let Ok(n) = HeaderName::try_from(name.as_str()) {
            map.remove(n);
        }
    }
    for (k, v) in &ops.set {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            map.insert(n, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            map.append(n, v);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_names() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("unauthenticated"), Some(16));
        assert_eq!(grpc_code("4"), Some(4));
        assert_eq!(grpc_code("NOPE"), None);
        assert_eq!(grpc_code("17"), None);
    }

    #[test]
    fn header_operations_remove_then_set_then_add() {
        let mut map = http::HeaderMap::new();
        map.insert("x-old", HeaderValue::from_static("1"));
        map.insert("x-set", HeaderValue::from_static("before"));
        map.insert("x-add", HeaderValue::from_static("first"));
        let ops = HeaderOperations {
            set: BTreeMap::from([("x-set".into(), "after".into())]),
            add: BTreeMap::from([("x-add".into(), "second".into())]),
            remove: vec!["x-old".into(), "bad header name".into()],
        };
        headers(&mut map, Some(&ops));
        assert!(map.get("x-old").is_none());
        assert_eq!(map.get("x-set").unwrap(), "after");
        let added: Vec<_> = map.get_all("x-add").iter().collect();
        assert_eq!(added, ["first", "second"]);
        // Values that are not header values are skipped, nothing panics.
        let bad = HeaderOperations {
            set: BTreeMap::from([("x-bad".into(), "a\nb".into())]),
            ..Default::default()
        };
        headers(&mut map, Some(&bad));
        assert!(map.get("x-bad").is_none());
    }
}
