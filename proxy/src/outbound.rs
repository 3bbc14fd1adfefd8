//! The outbound side: an HTTP proxy on port 15001 of the workload's address (requests
//! in absolute form or with a `Host` header, so `HTTP_PROXY` works; HTTP/2 with prior
//! knowledge for gRPC clients pointed at it) and one TCP listener per `TCP` service
//! port. Each request or connection is resolved in the registry, sent over mutual TLS
//! to one of the service's endpoints, and refused unless the server proves a SPIFFE ID
//! the service runs as (secure naming). A `MESH_EXTERNAL` service is routed the same
//! way, and its connections are made as [`crate::egress`] plans them (plaintext, TLS
//! originated by its DestinationRule, or mesh mutual TLS).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use crate::sock::Coalesced;
use tokio::task::JoinHandle;

use crate::balance::{self, Downstream, Held, Hint, Picked};
use crate::conn::copy_both;
use crate::context::{Context, Snapshot};
use crate::http::{self as h, Body, split_host_port};
use crate::listener::{accept_loop, serve_http_connection};
use crate::mesh::config::OutboundTrafficPolicy;
use crate::mesh::model::{Endpoint, Service, ServicePortInfo};
use crate::mesh::traffic_policy::upstream_protocol;
use crate::metrics::TcpLabels;
use crate::pipeline::{self, Exchange, Reply, Xfcc};
use crate::pool::{Buffered, UpBody, UpstreamError, UpstreamProtocol};
use crate::telemetry::{Direction, SpanKind};
use crate::tls::{TlsClient, VerifyError};
use warden_common::backoff::random_unit;

/// The SNI Istio's sidecars send to a service port: its outbound cluster name.
pub fn sni_for(host: &str, port: u16) -> String {
    format!("outbound_.{port}_._.{host}")
}

/// Accepts outbound HTTP connections from the app until draining starts.
pub async fn serve_http(ctx: Arc<Context>, listener: TcpListener) {
    accept_loop(ctx, listener, "outbound", |ctx, stream, _| async move {
        let _ = stream.set_nodelay(true);
        http_conn(&ctx, stream).await;
    })
    .await;
}

async fn http_conn(ctx: &Arc<Context>, stream: TcpStream) {
    // The connection's addresses, for a source-IP hash or a generated hash cookie.
    let conn = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(remote), Ok(local)) => Some(Downstream { remote, local }),
        _ => None,
    };
    let handler = ctx.clone();
    serve_http_connection(
        ctx,
        Coalesced::new(stream),
        None,
        "outbound",
        conn.map(|c| c.remote),
        move |req| {
            let ctx = handler.clone();
            async move { Ok::<_, std::convert::Infallible>(request(&ctx, req, conn).await) }
        },
    )
    .await;
}

/// Where a request goes: the service, its port and the endpoint chosen (borrowed from
/// the snapshot the request holds).
pub(crate) struct Route<'a> {
    pub(crate) service: &'a Arc<Service>,
    pub(crate) port: &'a ServicePortInfo,
    pub(crate) endpoint: &'a Endpoint,
    /// The endpoint's index in the service.
    pub(crate) index: usize,
    pub(crate) host: &'a str,
    /// Outlier detection for the destination, when its DestinationRule sets it.
    pub(crate) outlier: Option<crate::outlier::Policy>,
    /// The destination's DestinationRule policy, when it was looked up for the
    /// request's subset to choose the endpoint (inner `None`: no DestinationRule);
    /// `None` when not looked up.
    policy: Option<Option<serde_json::Value>>,
    /// What the endpoint choice leaves for the response (in-flight mark, cookie).
    held: Held,
    /// How the destination's connections are reused (DestinationRule
    /// `connectionPool.http`).
    pub(crate) reuse: crate::pool::Reuse,
    /// How to connect when the service is `MESH_EXTERNAL`; `None`: mesh mutual TLS.
    /// (Boxed: a `MESH_INTERNAL` route carries one null pointer.)
    pub(crate) egress: Option<Box<crate::egress::Plan>>,
    /// The DestinationRule's `connectionPool.tcp.connectTimeout` (Istio's 10 s default).
    pub(crate) connect_timeout: std::time::Duration,
    /// The DestinationRule's `connectionPool.http.maxRetries` (`None`: unlimited).
    pub(crate) max_retries: Option<usize>,
}

/// Resolves `host:port` for a caller in this workload's namespace and picks an endpoint.
fn route<'a>(
    ctx: &Context,
    snap: &'a Snapshot,
    authority: &str,
    hint: &Hint<'_>,
) -> Result<Route<'a>, (StatusCode, &'static str, String)> {
    let Some((host, port)) = split_host_port(authority, 80) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "-",
            format!("warden: cannot read a host and port from {authority:?}"),
        ));
    };
    route_with(ctx, snap, host, port, None, None, hint)
}

/// Resolves `host:port` and picks an endpoint, among those with `labels` (a
/// DestinationRule subset) when given, by the load balancer of the destination's
/// top-level traffic policy, reading nothing of the request (a consistent hash takes a
/// random point): [`route_with`] names the subset and the request.
pub(crate) fn route_to<'a>(
    ctx: &Context,
    snap: &'a Snapshot,
    host: &str,
    port: u16,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Route<'a>, (StatusCode, &'static str, String)> {
    route_with(ctx, snap, host, port, None, labels, &Hint::default())
}

/// Resolves `host:port` and picks an endpoint, among those of `subset` (its name, for
/// the traffic policy, and its `labels`) and not ejected, by the destination's
/// `loadBalancer` (see [`crate::balance`]) reading the request through `hint`.
pub(crate) fn route_with<'a>(
    ctx: &Context,
    snap: &'a Snapshot,
    host: &str,
    port: u16,
    subset: Option<&str>,
    labels: Option<&std::collections::BTreeMap<String, String>>,
    hint: &Hint<'_>,
) -> Result<Route<'a>, (StatusCode, &'static str, String)> {
    let mesh = &snap.mesh;
    let Some((service, port_info)) = mesh.registry.resolve(host, port, &mesh.local.namespace)
    else {
        return Err((
            StatusCode::NOT_FOUND,
            "NR",
            format!(
                "warden: no route to {host}:{port}: no ServiceEntry in the registry has this host and port"
            ),
        ));
    };
    let mut candidates: Vec<usize> = (0..service.endpoints.len())
        .filter(|&i| {
            labels.is_none_or(|l| {
                l.iter()
                    .all(|(k, v)| service.endpoints[i].labels.get(k) == Some(v))
            })
        })
        .collect();
    // Ejected endpoints (outlier detection) sit out, unless all are (panic routing).
    let healthy: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| {
            !ctx.outliers
                .is_ejected((mesh.generation, service.id, service.endpoints[i].inbound))
        })
        .collect();
    if !healthy.is_empty() {
        candidates = healthy;
    }
    if candidates.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            "no healthy upstream".to_string(),
        ));
    }
    // The policy is looked up only when some DestinationRule exists; it is the
    // request's own when the subset is named or there is none (else the caller looks
    // it up again for the circuit breaker and outlier detection).
    let routes = &mesh.routes;
    let policy = routes.has_destination_rules().then(|| {
        routes.traffic_policy(
            service.host(),
            subset,
            port_info.number,
            &mesh.local.namespace,
        )
    });
    let lb = balance::Policy::from_policy(policy.as_ref().and_then(Option::as_ref));
    let Picked { index, held } = snap.balance.choose(service, &candidates, &lb, hint);
    let exact = subset.is_some() || labels.is_none();
    let endpoint = &service.endpoints[index];
    let egress = egress_plan(
        service,
        port_info,
        endpoint,
        host,
        policy.as_ref().and_then(Option::as_ref),
    );
    Ok(Route {
        service,
        host: service.host(),
        port: port_info,
        endpoint,
        index,
        outlier: None,
        policy: if exact { Some(policy.flatten()) } else { None },
        held,
        reuse: crate::pool::Reuse::default(),
        connect_timeout: crate::context::CONNECT_TIMEOUT,
        max_retries: None,
        egress,
    })
}

/// How to reach `endpoint` of a `MESH_EXTERNAL` service asked for as `host`, under its
/// traffic `policy` ([`crate::egress::Plan`]); `None` for a `MESH_INTERNAL` service.
fn egress_plan(
    service: &Service,
    port: &ServicePortInfo,
    endpoint: &Endpoint,
    host: &str,
    policy: Option<&serde_json::Value>,
) -> Option<Box<crate::egress::Plan>> {
    (!service.mesh_internal).then(|| {
        Box::new(crate::egress::Plan::new(
            service, port, endpoint, host, policy,
        ))
    })
}

/// Opens mutual TLS to `route`'s endpoint, offering the ALPN of `protocol` (`None`:
/// opaque TCP) and sending Istio's SNI; secure naming is in the snapshot's config.
pub(crate) async fn connect_tls(
    ctx: &Context,
    snap: &Snapshot,
    route: &Route<'_>,
    protocol: Option<UpstreamProtocol>,
) -> std::io::Result<tokio_rustls::client::TlsStream<Coalesced<TcpStream>>> {
    let config = snap
        .tls
        .get(&route.service.id)
        .map(|t| t.for_protocol(protocol))
        .ok_or_else(|| std::io::Error::other("no TLS config for the service"))?;
    let tcp = ctx
        .connect_from_local_within(route.endpoint.inbound, route.connect_timeout)
        .await?;
    let name = ServerName::try_from(sni_for(route.host, route.port.number))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tls = TlsClient::connect_named(config, name, Coalesced::new(tcp)).await?;
    Ok(tls)
}

/// Explains a failed upstream connection: secure naming and certificate problems in
/// full, the rest as Envoy words them.
pub(crate) fn connect_error(route: &Route<'_>, e: &std::io::Error) -> String {
    if let Some(plan) = &route.egress {
        return crate::egress::connect_error(route, plan, e);
    }
    let who = format!(
        "{}:{} ({} at {})",
        route.host,
        route.port.number,
        route
            .endpoint
            .workload
            .as_deref()
            .unwrap_or("inline endpoint"),
        route.endpoint.inbound
    );
    match VerifyError::from_io(e) {
        Some(why) => format!(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error: {who}: {why}"
        ),
        None => format!(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure: {who}: {e}"
        ),
    }
}

/// One outbound request through the pipeline (see [`crate::pipeline`]): validated,
/// normalized and sanitized as on the inbound side, then routed and sent over mutual
/// TLS in the HTTP version the destination is configured for.
async fn request(
    ctx: &Arc<Context>,
    req: Request<Incoming>,
    conn: Option<Downstream>,
) -> Response<Body> {
    let snap = ctx.snapshot.load_full();
    let mut record = ctx.telemetry.record(Direction::Outbound);
    let mut ex = record.exchange(req);
    if let (Some(d), Some(c)) = (record.detail(), conn) {
        d.downstream_local = Some(c.local);
        d.downstream_remote = Some(c.remote);
    }
    // Until the request is routed, it is counted as to an unknown destination.
    let mut labels = snap.unknown_outbound.clone();
    let staged = stages(ctx, &snap, &mut ex, conn);
    crate::telemetry::ensure_request_id(ex.req.headers_mut());
    record.request_head(
        &ex.req,
        &ex.authority,
        ctx.telemetry.logged_request_headers(),
    );
    let result = match staged {
        Ok(Some((route, routed))) => {
            if let Some(d) = record.detail() {
                d.destination_port = Some(route.port.number);
                d.route_name = Some(
                    routed
                        .as_ref()
                        .map_or(std::borrow::Cow::Borrowed("default"), |r| {
                            std::borrow::Cow::Owned(r.route_name.clone())
                        }),
                );
            }
            ctx.telemetry
                .start_span(&mut record, ex.req.headers_mut(), SpanKind::Client, || {
                    Some(format!("{}:{}/*", route.host, route.port.number))
                });
            deliver(ctx, &snap, ex, route, routed, &mut labels).await
        }
        Ok(None) => {
            labels = snap.passthrough_labels.clone();
            if let Some(d) = record.detail() {
                d.upstream.cluster = Some(Arc::from("PassthroughCluster"));
            }
            let authority = &ex.authority;
            let name = || Some(format!("{authority}/*"));
            ctx.telemetry
                .start_span(&mut record, ex.req.headers_mut(), SpanKind::Client, name);
            passthrough(ctx, ex).await
        }
        Err(r) => Err(r),
    };
    let (mut resp, flags) = match result {
        Ok(resp) => (resp, "-"),
        Err(r) => (*r.resp, r.flags),
    };
    ctx.telemetry.attach(&mut resp, record, labels, flags);
    resp
}

/// A DestinationRule's `connectionPool.tcp.connectTimeout`, else Istio's 10 s.
pub(crate) fn connect_timeout(policy: &serde_json::Value) -> std::time::Duration {
    policy["connectionPool"]["tcp"]["connectTimeout"]
        .as_str()
        .and_then(|t| warden_policy::route::duration::parse(t).ok())
        .filter(|t| !t.is_zero())
        .unwrap_or(crate::context::CONNECT_TIMEOUT)
}

/// Sends a request to `route` (chosen by the route table when `routed` is set): the
/// destination's DestinationRule policy, its circuit breaker, then the forwarding.
/// `labels` become the destination's metric labels.
pub(crate) async fn deliver(
    ctx: &Arc<Context>,
    snap: &Arc<Snapshot>,
    ex: Exchange,
    mut route: Route<'_>,
    routed: Option<crate::routing::Routed>,
    labels: &mut Arc<crate::metrics::ConnLabels>,
) -> Result<Response<Body>, Reply> {
    *labels = snap.outbound_labels(route.service, route.index);
    let policy = match route.policy.take() {
        Some(p) => p,
        None => destination_policy(snap, &route, routed.as_ref()),
    };
    let held = std::mem::take(&mut route.held);
    route.outlier = policy
        .as_ref()
        .and_then(crate::outlier::Policy::from_policy);
    if let Some(p) = &policy {
        route.reuse = crate::pool::Reuse::from_policy(p);
        route.connect_timeout = connect_timeout(p);
        route.max_retries = crate::circuit::max_retries(p);
    }
    let permit = admit(ctx, snap, &route, routed.as_ref(), policy.as_ref(), &ex)
        .await
        .map_err(|mut reply| {
            if let Some(c) = routed.as_ref().and_then(|r| r.cors.as_ref()) {
                c.apply(reply.resp.headers_mut());
            }
            reply
        })?;
    // Envoy's cluster name, for the access log and the span only.
    let cluster: Option<Arc<str>> = ctx.telemetry.detailed().then(|| {
        Arc::from(format!(
            "outbound|{}|{}|{}",
            route.port.number,
            routed
                .as_ref()
                .and_then(|r| r.subset.as_deref())
                .unwrap_or_default(),
            route.host
        ))
    });
    let result = match routed {
        None => forward(ctx, snap, ex, &route).await,
        Some(routed) => forward_routed(ctx, snap, ex, &route, routed).await,
    };
    let with_cluster = |resp: &mut Response<Body>| {
        if let Some(cluster) = &cluster {
            let info = resp
                .extensions_mut()
                .get_or_insert_with(crate::telemetry::UpstreamInfo::default);
            info.cluster = Some(cluster.clone());
        }
    };
    match result {
        Ok(mut resp) => {
            if let Some(p) = permit {
                resp.body_mut().hold_permit(p);
            }
            held.finish(&mut resp);
            with_cluster(&mut resp);
            Ok(resp)
        }
        Err(mut r) => {
            with_cluster(&mut r.resp);
            Err(r)
        }
    }
}

/// The DestinationRule traffic policy of the request's destination (its subset and
/// port), `None` without one.
fn destination_policy(
    snap: &Snapshot,
    route: &Route<'_>,
    routed: Option<&crate::routing::Routed>,
) -> Option<serde_json::Value> {
    let routes = &snap.mesh.routes;
    if !routes.has_destination_rules() {
        return None;
    }
    routes.traffic_policy(
        route.host,
        routed.and_then(|r| r.subset.as_deref()),
        route.port.number,
        &snap.mesh.local.namespace,
    )
}

/// The destination's circuit breaker (DestinationRule `connectionPool`): a slot for
/// the request, `None` when no limit applies, or the overflow reply (503 `UO`).
async fn admit(
    ctx: &Context,
    snap: &Snapshot,
    route: &Route<'_>,
    routed: Option<&crate::routing::Routed>,
    policy: Option<&serde_json::Value>,
    ex: &Exchange,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Reply> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    let subset = routed.and_then(|r| r.subset.as_deref());
    let h2 = protocol_for(snap, route, ex) == UpstreamProtocol::Http2;
    let Some(limits) = crate::circuit::Limits::from_policy(policy, h2) else {
        return Ok(None);
    };
    let destination = format!(
        "outbound|{}|{}|{}",
        route.port.number,
        subset.unwrap_or_default(),
        route.host
    );
    match ctx.circuits.admit(&destination, limits).await {
        Some(p) => Ok(Some(p)),
        None => {
            tracing::info!(%destination, ?limits, "circuit breaker open: upstream overflow");
            Err(Reply {
                flags: "UO",
                ..ex.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                )
            })
        }
    }
}

/// [`forward`] with what the route table added: an injected delay first, the request
/// timeout around it (504, `UT`), the response's header operations and CORS headers
/// after ([`crate::routing::Routed::finish`]).
async fn forward_routed(
    ctx: &Arc<Context>,
    snap: &Arc<Snapshot>,
    ex: Exchange,
    route: &Route<'_>,
    routed: crate::routing::Routed,
) -> Result<Response<Body>, Reply> {
    if let Some(d) = routed.delay {
        tokio::time::sleep(d).await;
    }
    let mut ex = ex;
    // A body to be sent more than once (a retry, a mirror) is read in full first, as
    // Envoy buffers it, when its declared length is within the limit; otherwise it is
    // streamed once and neither retried nor mirrored.
    let ended = hyper::body::Body::is_end_stream(ex.req.body());
    let buffered = if !ended && (routed.retries.is_some() || routed.mirror.is_some()) {
        match Buffered::read(ex.req.body_mut(), RETRY_BUFFER_LIMIT).await {
            Ok(b) => b,
            Err(e) => {
                return Err(Reply {
                    flags: "DC",
                    ..ex.reply(
                        StatusCode::BAD_REQUEST,
                        format!("warden: the request body could not be read: {e}"),
                    )
                });
            }
        }
    } else {
        None
    };
    if let Some(mirror) = &routed.mirror
        && (ended || buffered.is_some())
    {
        spawn_mirror(
            ctx.clone(),
            snap.clone(),
            &ex,
            mirror.clone(),
            buffered.clone(),
        );
    }
    let grpc = ex.grpc;
    let sent = send_with_retries(ctx, snap, ex, route, &routed, buffered);
    let result = match routed.timeout {
        None => sent.await,
        Some(t) => match tokio::time::timeout(t, sent).await {
            Ok(r) => r,
            Err(_) => {
                tracing::info!(virtual_service = %routed.virtual_service, host = %route.host, timeout = ?t, "upstream request timeout");
                Err(Reply {
                    resp: Box::new(h::error_reply(
                        grpc,
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                    )),
                    flags: "UT",
                })
            }
        },
    };
    routed.finish(result)
}

/// Sends a copy of the request (body-less, or its body read in full) to the mirror, fire and forget: its answer is
/// read and dropped, its failure only logged. The copy's authority gets Envoy's
/// `-shadow` suffix on the host, so the mirror can tell shadow traffic apart.
fn spawn_mirror(
    ctx: Arc<Context>,
    snap: Arc<Snapshot>,
    ex: &Exchange,
    crate::routing::Mirror { host, port, labels }: crate::routing::Mirror,
    body: Option<Buffered>,
) {
    let authority = match split_host_port(&ex.authority, 80) {
        Some((h, p)) => format!("{h}-shadow:{p}"),
        None => format!("{}-shadow", ex.authority),
    };
    let mut req = Request::new(());
    *req.method_mut() = ex.req.method().clone();
    *req.uri_mut() = ex.req.uri().clone();
    *req.headers_mut() = ex.req.headers().clone();
    if let Ok(v) = http::HeaderValue::from_str(&authority) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let downstream = ex.downstream;
    tokio::spawn(async move {
        let Ok(route) = route_to(&ctx, &snap, &host, port, labels.as_ref()) else {
            tracing::debug!(%host, "mirror: no endpoint");
            return;
        };
        let mut shadow = Exchange::new(req.map(|()| body.map_or(UpBody::Empty, |b| b.body())));
        shadow.authority = authority;
        shadow.downstream = downstream;
        let protocol = protocol_for_parts(&snap, &route, downstream);
        pipeline::shape_upstream(&mut shadow, protocol);
        let (req, rest) = shadow.send_off();
        match send_once(&ctx, &snap, &rest, req, &route, protocol).await {
            Ok(resp) => {
                // Read to the end (so the connection can be reused), then dropped.
                let mut body = resp.into_body();
                while let Some(Ok(_)) = std::future::poll_fn(|cx| {
                    hyper::body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
                })
                .await
                {}
            }
            Err(r) => tracing::debug!(%host, status = %r.resp.status(), "mirror: failed"),
        }
    });
}

type Staged<'a> = (Route<'a>, Option<crate::routing::Routed>);

/// The stages before forwarding: `Ok(None)` when the host is not in the registry and
/// the outbound traffic policy (`ALLOW_ANY`) passes it through.
fn stages<'a>(
    ctx: &Context,
    snap: &'a Snapshot,
    ex: &mut Exchange,
    conn: Option<Downstream>,
) -> Result<Option<Staged<'a>>, Reply> {
    pipeline::validate(ex, &ctx.limits, ctx.accept_http10)?;
    pipeline::normalize_path(ex, snap.mesh.settings.path_normalization)?;
    // The app's own XFCC means nothing to the peer: Envoy's outbound default
    // (SANITIZE) removes it.
    pipeline::sanitize(ex, false, Xfcc::Remove)?;
    if ex.authority.is_empty() {
        return Err(ex.reply(
            StatusCode::BAD_REQUEST,
            "warden: the request names no host (absolute-form URI or Host header)",
        ));
    }
    let routed = crate::routing::apply(snap, ex)?;
    let hint = Hint::http(ex.req.headers(), ex.req.uri(), conn);
    let found = match &routed {
        None => route(ctx, snap, &ex.authority, &hint),
        Some(r) => route_with(
            ctx,
            snap,
            &r.host,
            r.port,
            r.subset.as_deref(),
            r.subset_labels.as_ref(),
            &hint,
        ),
    };
    match found {
        Ok(route) => Ok(Some((route, routed))),
        // Not in the registry (and no VirtualService): the outbound traffic policy.
        Err((StatusCode::NOT_FOUND, "NR", body)) if routed.is_none() => {
            match snap.mesh.settings.outbound_traffic_policy {
                OutboundTrafficPolicy::AllowAny => Ok(None),
                OutboundTrafficPolicy::RegistryOnly => {
                    tracing::info!(authority = %ex.authority, reason = %body, "outbound request refused: outboundTrafficPolicy REGISTRY_ONLY");
                    Err(Reply {
                        flags: "NR",
                        ..ex.reply(
                            StatusCode::BAD_GATEWAY,
                            format!("{body} (outboundTrafficPolicy REGISTRY_ONLY)"),
                        )
                    })
                }
            }
        }
        Err((status, flags, body)) => {
            tracing::info!(authority = %ex.authority, %status, reason = %body, "outbound request refused");
            let mut reply = Reply {
                flags,
                ..ex.reply(status, body)
            };
            // The route's CORS headers go on the proxy's own error replies too.
            if let Some(c) = routed.as_ref().and_then(|r| r.cors.as_ref()) {
                c.apply(reply.resp.headers_mut());
            }
            Err(reply)
        }
    }
}

/// `ALLOW_ANY`: a request for a host the registry does not know goes, in plaintext
/// HTTP/1.1, to that host and port (resolved here), as Istio's `PassthroughCluster`
/// sends it to the original destination; no mutual TLS, no routing.
async fn passthrough(ctx: &Context, mut ex: Exchange) -> Result<Response<Body>, Reply> {
    let Some((host, port)) = split_host_port(&ex.authority, 80) else {
        return Err(ex.reply(
            StatusCode::BAD_REQUEST,
            format!(
                "warden: cannot read a host and port from {:?}",
                ex.authority
            ),
        ));
    };
    let (host, port) = (host.to_string(), port);
    let own = ctx.local_ip;
    let dial = || {
        let (host, port) = (host.clone(), port);
        async move {
            let limit = crate::context::CONNECT_TIMEOUT;
            let timed_out = || {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {host}:{port} timed out after {limit:?}"),
                )
            };
            let addrs: Vec<SocketAddr> =
                tokio::time::timeout(limit, tokio::net::lookup_host((host.as_str(), port)))
                    .await
                    .map_err(|_| timed_out())??
                    .collect();
            // This workload's own address would loop through its own proxy.
            let Some(addr) = addrs.iter().copied().find(|a| a.ip() != own) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!(
                        "{host}:{port} is this workload's own address (or has none): not passed through"
                    ),
                ));
            };
            let s = tokio::time::timeout(limit, TcpStream::connect(addr))
                .await
                .map_err(|_| timed_out())??;
            s.set_nodelay(true)?;
            Ok::<_, std::io::Error>(Coalesced::new(s))
        }
    };
    if ex.websocket {
        let stream = dial().await.map_err(|e| Reply {
            flags: "UF",
            ..ex.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error: passthrough to {host}:{port}: {e}"),
            )
        })?;
        return websocket_over(ctx, ex, stream).await;
    }
    pipeline::shape_upstream(&mut ex, UpstreamProtocol::Http1);
    let (req, ex) = ex.send_off();
    let result = ctx
        .passthrough_pool
        .send(
            (host.clone(), port),
            UpstreamProtocol::Http1,
            req.map(UpBody::Stream),
            dial,
        )
        .await;
    match result {
        Ok(resp) => pipeline::sanitize_response(&ex, resp),
        Err(e) => {
            let flags = if matches!(e, UpstreamError::Connect(_)) {
                "UF"
            } else {
                "UC"
            };
            tracing::info!(%host, port, error = %e, "outbound passthrough failed");
            Err(Reply {
                flags,
                ..ex.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "upstream connect error or disconnect/reset before headers: passthrough to {host}:{port}: {e}"
                    ),
                )
            })
        }
    }
}

/// Sends the request to the route's endpoint over mutual TLS.
async fn forward(
    ctx: &Context,
    snap: &Snapshot,
    mut ex: Exchange,
    route: &Route<'_>,
) -> Result<Response<Body>, Reply> {
    if ex.websocket {
        return forward_websocket(ctx, snap, ex, route).await;
    }
    let protocol = protocol_for(snap, route, &ex);
    pipeline::shape_upstream(&mut ex, protocol);
    let (req, ex) = ex.send_off();
    send_once(ctx, snap, &ex, req.map(UpBody::Stream), route, protocol).await
}

/// The HTTP version toward the route's service (the same for all its endpoints).
fn protocol_for(snap: &Snapshot, route: &Route<'_>, ex: &Exchange) -> UpstreamProtocol {
    protocol_for_parts(snap, route, ex.downstream)
}

fn protocol_for_parts(snap: &Snapshot, route: &Route<'_>, downstream: Version) -> UpstreamProtocol {
    let mesh = &snap.mesh;
    let pool = mesh.destination_rules.http_pool(
        &mesh.local.namespace,
        &mesh.local.labels,
        route.service,
        route.port.number,
    );
    upstream_protocol(
        route.port.protocol,
        pool,
        mesh.settings.h2_upgrade_policy,
        downstream == Version::HTTP_2,
        false,
    )
}

/// One try: `req` to the route's endpoint over mutual TLS.
async fn send_once(
    ctx: &Context,
    snap: &Snapshot,
    ex: &Exchange<()>,
    req: Request<UpBody>,
    route: &Route<'_>,
    protocol: UpstreamProtocol,
) -> Result<Response<Body>, Reply> {
    let sent = Instant::now();
    let result = match &route.egress {
        None => {
            let key = (
                snap.mesh.generation,
                route.service.id,
                route.port.number,
                route.endpoint.inbound,
                protocol,
            );
            ctx.mesh_pool
                .send_limited(key, protocol, req, route.reuse, || {
                    connect_tls(ctx, snap, route, Some(protocol))
                })
                .await
        }
        Some(plan) => crate::egress::send(ctx, snap, route, plan, protocol, req).await,
    };
    if let Some(policy) = route.outlier {
        // A failed connection or reset counts as a 503 (Envoy's local-origin errors,
        // not split from the upstream's by default).
        let status = result.as_ref().map_or(503, |r| r.status().as_u16());
        let endpoint = (
            snap.mesh.generation,
            route.service.id,
            route.endpoint.inbound,
        );
        if ctx
            .outliers
            .observe(endpoint, status, route.service.endpoints.len(), policy)
        {
            tracing::info!(host = %route.host, endpoint = %route.endpoint.inbound, "outlier detection: endpoint ejected");
            ctx.metrics.upstream_event("ejection");
        }
    }
    let info = crate::telemetry::UpstreamInfo {
        host: Some(route.endpoint.inbound),
        cluster: None,
        service_time: Some(sent.elapsed()),
    };
    match result {
        Ok(resp) => pipeline::sanitize_response(ex, resp).map(|mut resp| {
            // Read by the access log and the span only.
            if ctx.telemetry.detailed() {
                resp.extensions_mut().insert(info);
            }
            resp
        }),
        Err(UpstreamError::Connect(e)) => {
            let msg = connect_error(route, &e);
            tracing::warn!(error = %msg, "outbound connection failed");
            Err(Reply {
                flags: "UF",
                ..ex.reply(StatusCode::SERVICE_UNAVAILABLE, msg)
            })
        }
        Err(e) => {
            tracing::warn!(host = %route.host, error = %e, "outbound request failed");
            Err(Reply {
                flags: "UC",
                ..ex.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: {e}"
                    ),
                )
            })
        }
    }
}

/// The request again, for a retry, with `body`.
fn copy_request(req: &Request<()>, body: UpBody) -> Request<UpBody> {
    let mut out = Request::new(body);
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    out
}

/// The largest request body read in full to be retried or mirrored (Envoy's default
/// per-connection buffer limit, 1 MiB).
pub const RETRY_BUFFER_LIMIT: u64 = 1024 * 1024;

/// Sends a routed request with its retry policy: the request (body-less, or with its
/// body in `buffered`) is tried again, on the next endpoint of the destination, after
/// Envoy's jittered backoff (25 ms doubling, at most 250 ms), while the answer is one
/// `retry_on` names and tries remain; each try is bounded by `per_try_timeout`. A body
/// that was not buffered is streamed once.
async fn send_with_retries(
    ctx: &Context,
    snap: &Snapshot,
    mut ex: Exchange,
    first: &Route<'_>,
    routed: &crate::routing::Routed,
    buffered: Option<Buffered>,
) -> Result<Response<Body>, Reply> {
    if ex.websocket {
        return forward_websocket(ctx, snap, ex, first).await;
    }
    let protocol = protocol_for(snap, first, &ex);
    pipeline::shape_upstream(&mut ex, protocol);
    let (req, ex) = ex.send_off();
    let repeatable = buffered.is_some() || hyper::body::Body::is_end_stream(req.body());
    let retries = routed.retries.as_ref().filter(|_| repeatable);
    let body_of =
        |buffered: &Option<Buffered>| buffered.as_ref().map_or(UpBody::Empty, Buffered::body);
    let Some(policy) = retries else {
        let req = match &buffered {
            Some(b) => req.map(|_| b.body()),
            None => req.map(UpBody::Stream),
        };
        return send_once(ctx, snap, &ex, req, first, protocol).await;
    };
    let template = req.map(|_| ());
    let mut attempt = 0u32;
    // Endpoints tried so far, which a retry avoids (allocated at the first retry).
    let mut tried: Vec<usize> = Vec::new();
    // The retry in flight, counted against the destination's budget.
    let mut _retrying: Option<crate::circuit::RetryGuard> = None;
    loop {
        let mut next = None;
        let route = if attempt == 0 {
            first
        } else {
            let hint = Hint {
                avoid: &tried,
                ..Hint::http(template.headers(), template.uri(), None)
            };
            match route_with(
                ctx,
                snap,
                &routed.host,
                routed.port,
                routed.subset.as_deref(),
                routed.subset_labels.as_ref(),
                &hint,
            ) {
                Ok(mut r) => {
                    r.outlier = first.outlier;
                    r.reuse = first.reuse;
                    r.connect_timeout = first.connect_timeout;
                    r.max_retries = first.max_retries;
                    &*next.insert(r)
                }
                Err(_) => first,
            }
        };
        let used = route.index;
        let sent = send_once(
            ctx,
            snap,
            &ex,
            copy_request(&template, body_of(&buffered)),
            route,
            protocol,
        );
        let result = match policy.per_try_timeout {
            None => sent.await,
            Some(t) => tokio::time::timeout(t, sent).await.unwrap_or_else(|_| {
                Err(Reply {
                    flags: "UT",
                    ..ex.reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                })
            }),
        };
        let retry = attempt < policy.attempts && policy.retriable(&result);
        // The destination's retry budget (`maxRetries` retries in flight at once).
        let budget = match (retry, first.max_retries) {
            (true, Some(max)) => {
                let key = format!(
                    "outbound|{}|{}|{}",
                    first.port.number,
                    routed.subset.as_deref().unwrap_or_default(),
                    first.host
                );
                let guard = ctx.circuits.retry(&key, max);
                if guard.is_none() {
                    tracing::info!(virtual_service = %routed.virtual_service, destination = %key, max_retries = max, "retry budget spent: the answer is not retried");
                    ctx.metrics.upstream_event("retry_overflow");
                }
                Some(guard)
            }
            _ => None,
        };
        if !retry || matches!(budget, Some(None)) {
            // A retry's endpoint keeps its in-flight mark until the body ends.
            return result.map(|mut resp| {
                if let Some(r) = next.take() {
                    r.held.without_cookie().finish(&mut resp);
                }
                resp
            });
        }
        _retrying = budget.flatten();
        tried.push(used);
        attempt += 1;
        let ceiling = (25u64 << (attempt - 1).min(4)).min(250);
        let wait = std::time::Duration::from_millis((random_unit() * ceiling as f64) as u64);
        tracing::debug!(virtual_service = %routed.virtual_service, attempt, ?wait, "retrying");
        ctx.metrics.upstream_event("retry");
        tokio::time::sleep(wait).await;
    }
}

/// A WebSocket upgrade over a mutual TLS connection of its own (to a `MESH_EXTERNAL`
/// service, one [`crate::egress`] opens); spliced on `101`.
async fn forward_websocket(
    ctx: &Context,
    snap: &Snapshot,
    ex: Exchange,
    route: &Route<'_>,
) -> Result<Response<Body>, Reply> {
    let h1 = Some(UpstreamProtocol::Http1);
    let failed = |ex: &Exchange, e: std::io::Error| {
        let msg = connect_error(route, &e);
        tracing::warn!(error = %msg, "outbound connection failed");
        Err(Reply {
            flags: "UF",
            ..ex.reply(StatusCode::SERVICE_UNAVAILABLE, msg)
        })
    };
    match &route.egress {
        None => match connect_tls(ctx, snap, route, h1).await {
            Ok(tls) => websocket_over(ctx, ex, tls).await,
            Err(e) => failed(&ex, e),
        },
        Some(plan) => match crate::egress::connect(ctx, snap, route, plan, h1).await {
            Ok(stream) => websocket_over(ctx, ex, stream).await,
            Err(e) => failed(&ex, e),
        },
    }
}

/// Sends the upgrade request on `io` and splices the two sides on `101`.
async fn websocket_over<IO>(
    ctx: &Context,
    mut ex: Exchange,
    io: IO,
) -> Result<Response<Body>, Reply>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    pipeline::shape_upstream(&mut ex, UpstreamProtocol::Http1);
    let downstream = hyper::upgrade::on(&mut ex.req);
    let (req, ex) = ex.send_off();
    match h::send_upgrade(io, req).await {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                h::splice_upgrade(
                    downstream,
                    hyper::upgrade::on(&mut resp),
                    ctx.limits.idle_timeout,
                );
            }
            pipeline::sanitize_response(&ex, resp)
        }
        Err(e) => Err(Reply {
            flags: "UC",
            ..ex.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream reset: {e}"),
            )
        }),
    }
}

/// The outbound TCP listeners, one per `TCP` service port, kept in step with the config.
#[derive(Debug, Default)]
pub struct TcpListeners {
    by_port: HashMap<u16, JoinHandle<()>>,
}

impl Drop for TcpListeners {
    fn drop(&mut self) {
        for (_, task) in self.by_port.drain() {
            task.abort();
        }
    }
}

impl TcpListeners {
    /// Binds listeners for new TCP service ports and closes those no longer wanted.
    pub async fn reconcile(&mut self, ctx: &Arc<Context>) {
        let snap = ctx.snapshot.load_full();
        let tcp = snap.mesh.registry.outbound_tcp_ports(&snap.mesh.local);
        for skipped in &tcp.skipped {
            tracing::debug!(port = skipped.port, service = %skipped.service.host(), conflict = ?skipped.conflict, "no outbound TCP listener for this service port");
        }
        let wanted: Vec<u16> = snap.outbound_tcp.keys().copied().collect();
        self.by_port.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                task.abort();
                tracing::info!(
                    port,
                    "outbound TCP listener closed: no TCP service uses the port any more"
                );
            }
            keep
        });
        for port in wanted {
            if self.by_port.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(ctx.local_ip, port);
            match crate::listener::bind(addr) {
                Ok(listener) => {
                    tracing::info!(%addr, "outbound TCP listener bound");
                    self.by_port
                        .insert(port, tokio::spawn(serve_tcp(ctx.clone(), listener, port)));
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot bind an outbound TCP listener; that service port is unreachable over TCP from this workload")
                }
            }
        }
    }
}

async fn serve_tcp(ctx: Arc<Context>, listener: TcpListener, port: u16) {
    accept_loop(
        ctx,
        listener,
        "outbound TCP",
        move |ctx, stream, _| async move {
            tcp_conn(&ctx, stream, port).await;
        },
    )
    .await;
}

async fn tcp_conn(ctx: &Context, mut stream: TcpStream, port: u16) {
    let _ = stream.set_nodelay(true);
    let snap = ctx.snapshot.load_full();
    let Some((service, port_info)) = snap.outbound_tcp.get(&port) else {
        return;
    };
    let route = match crate::routing::tcp(&snap, service.host(), port) {
        // A VirtualService's tcp rule: its destination and subset.
        Some(Ok(target)) => {
            // The connection's addresses, for a source-IP hash.
            let hint = Hint {
                conn: match (stream.peer_addr(), stream.local_addr()) {
                    (Ok(remote), Ok(local)) => Some(Downstream { remote, local }),
                    _ => None,
                },
                ..Hint::default()
            };
            match route_with(
                ctx,
                &snap,
                &target.host,
                target.port,
                None,
                target.labels.as_ref(),
                &hint,
            ) {
                Ok(r) => r,
                Err((_, _, why)) => {
                    tracing::info!(service = %service.name, port, %why, "outbound TCP refused");
                    return;
                }
            }
        }
        Some(Err(why)) => {
            tracing::info!(service = %service.name, port, %why, "outbound TCP refused");
            return;
        }
        None => {
            if service.endpoints.is_empty() {
                tracing::info!(service = %service.name, port, "outbound TCP refused: no healthy upstream");
                return;
            }
            let index = ctx.pick(service.endpoints.len());
            let endpoint = &service.endpoints[index];
            // A TCP connection names no host: an external one gets the service's.
            let egress = (!service.mesh_internal).then(|| {
                let routes = &snap.mesh.routes;
                let policy = routes
                    .has_destination_rules()
                    .then(|| {
                        routes.traffic_policy(
                            service.host(),
                            None,
                            port,
                            &snap.mesh.local.namespace,
                        )
                    })
                    .flatten();
                let host = service.exact_host().unwrap_or(service.host());
                Box::new(crate::egress::Plan::new(
                    service,
                    port_info,
                    endpoint,
                    host,
                    policy.as_ref(),
                ))
            });
            Route {
                service,
                port: port_info,
                endpoint,
                index,
                host: service.host(),
                outlier: None,
                policy: None,
                held: Held::default(),
                reuse: crate::pool::Reuse::default(),
                connect_timeout: crate::context::CONNECT_TIMEOUT,
                max_retries: None,
                egress,
            }
        }
    };
    let (service, index) = (route.service, route.index);
    let labels = TcpLabels {
        conn: snap.outbound_labels(service, index),
        flags: "-",
    };
    ctx.metrics.tcp_open(&labels);
    let mut record = ctx.telemetry.record(Direction::Outbound);
    if let Some(d) = record.detail() {
        d.downstream_local = stream.local_addr().ok();
        d.downstream_remote = stream.peer_addr().ok();
        d.destination_port = Some(route.port.number);
        d.upstream.host = Some(route.endpoint.inbound);
        d.upstream.cluster = Some(Arc::from(format!(
            "outbound|{}||{}",
            route.port.number, route.host
        )));
    }
    let idle = ctx.limits.idle_timeout;
    let mut route = route;
    if snap.mesh.routes.has_destination_rules()
        && let Some(policy) = snap.mesh.routes.traffic_policy(
            route.host,
            None,
            route.port.number,
            &snap.mesh.local.namespace,
        )
    {
        route.connect_timeout = connect_timeout(&policy);
    }
    let copied = match &route.egress {
        None => match connect_tls(ctx, &snap, &route, None).await {
            Ok(mut tls) => Ok(copy_both(&mut stream, &mut tls, idle).await),
            Err(e) => Err(e),
        },
        Some(plan) => match crate::egress::connect(ctx, &snap, &route, plan, None).await {
            Ok(mut up) => Ok(copy_both(&mut stream, &mut up, idle).await),
            Err(e) => Err(e),
        },
    };
    match copied {
        Ok((sent, received)) => ctx.telemetry.tcp_closed(record, &labels, received, sent),
        Err(e) => {
            tracing::warn!(error = %connect_error(&route, &e), "outbound TCP connection failed");
            let failed = TcpLabels {
                flags: "UF",
                ..labels
            };
            ctx.telemetry.tcp_closed(record, &failed, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeout_comes_from_the_destination_rule() {
        let p = serde_json::json!({"connectionPool": {"tcp": {"connectTimeout": "250ms"}}});
        assert_eq!(connect_timeout(&p), std::time::Duration::from_millis(250));
        for none in [
            serde_json::json!({}),
            serde_json::json!({"connectionPool": {"tcp": {"connectTimeout": "0s"}}}),
        ] {
            assert_eq!(connect_timeout(&none), crate::context::CONNECT_TIMEOUT);
        }
    }
}
