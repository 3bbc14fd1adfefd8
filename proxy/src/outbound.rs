//! The outbound side: an HTTP proxy on port 15001 of the workload's address (requests
//! in absolute form or with a `Host` header, so `HTTP_PROXY` works; HTTP/2 with prior
//! knowledge for gRPC clients pointed at it) and one TCP listener per `TCP` service
//! port. Each request or connection is resolved in the registry, sent over mutual TLS
//! to one of the service's endpoints, and refused unless the server proves a SPIFFE ID
//! the service runs as (secure naming).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::context::{Context, Snapshot, forces_h2, service_key};
use crate::http::{
    self as h, Body, UpstreamError, UpstreamProtocol, authority_of, is_grpc, is_upgrade,
    split_host_port,
};
use crate::inbound::{absolute_uri, accept_loop, copy_both, serve_until_drained};
use crate::metrics::{ConnLabels, TcpLabels};
use crate::registry::{Endpoint, Service, ServicePortInfo};
use crate::tls::{TlsClient, VerifyError};

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
    let svc = {
        let ctx = ctx.clone();
        hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, std::convert::Infallible>(request(&ctx, req).await) }
        })
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    if let Err(e) = serve_until_drained(ctx, conn, |c| c.graceful_shutdown()).await {
        tracing::debug!(error = %e, "outbound HTTP connection ended");
    }
}

/// Where a request goes: the service, its port and the endpoint chosen (borrowed from
/// the snapshot the request holds).
struct Route<'a> {
    service: &'a Arc<Service>,
    port: &'a ServicePortInfo,
    endpoint: &'a Endpoint,
    /// The endpoint's index in the service.
    index: usize,
    host: &'a str,
}

/// Resolves `host:port` for a caller in this workload's namespace and picks an endpoint.
fn route<'a>(
    ctx: &Context,
    snap: &'a Snapshot,
    authority: &str,
) -> Result<Route<'a>, (StatusCode, &'static str, String)> {
    let Some((host, port)) = split_host_port(authority, 80) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "-",
            format!("warden: cannot read a host and port from {authority:?}"),
        ));
    };
    let mesh = &snap.mesh;
    let Some((service, port_info)) = mesh.registry.resolve(host, port, &mesh.local.namespace)
    else {
        return Err((
            StatusCode::NOT_FOUND,
            "NR",
            format!(
                "warden: no route to {host}:{port}: no MESH_INTERNAL ServiceEntry in the registry has this host and port"
            ),
        ));
    };
    if !service.mesh_internal {
        return Err((
            StatusCode::BAD_GATEWAY,
            "NR",
            format!(
                "warden: {host}:{port} is ServiceEntry {}/{} with location MESH_EXTERNAL; Warden proxies only MESH_INTERNAL services",
                service.namespace, service.name
            ),
        ));
    }
    if service.endpoints.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            "no healthy upstream".to_string(),
        ));
    }
    let index = ctx.pick(service.endpoints.len());
    Ok(Route {
        service,
        host: service.host(),
        port: port_info,
        endpoint: &service.endpoints[index],
        index,
    })
}

/// Opens mutual TLS to `route`'s endpoint, offering the ALPN of `protocol` (`None`:
/// opaque TCP) and sending Istio's SNI; secure naming is in the snapshot's config.
async fn connect_tls(
    ctx: &Context,
    snap: &Snapshot,
    route: &Route<'_>,
    protocol: Option<UpstreamProtocol>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = snap
        .tls
        .get(&service_key(route.service))
        .map(|t| t.for_protocol(protocol))
        .ok_or_else(|| std::io::Error::other("no TLS config for the service"))?;
    let tcp = ctx.connect_from_local(route.endpoint.inbound).await?;
    let name = ServerName::try_from(sni_for(route.host, route.port.number))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tls = TlsClient::connect_named(config, name, tcp).await?;
    Ok(tls)
}

/// Explains a failed upstream connection: secure naming and certificate problems in
/// full, the rest as Envoy words them.
fn connect_error(route: &Route<'_>, e: &std::io::Error) -> String {
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

async fn request(ctx: &Context, mut req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let snap = ctx.snapshot.load_full();
    let grpc = is_grpc(req.headers());
    let authority = authority_of(&req).unwrap_or_default().to_string();
    // Until the request is routed, it is counted as to an unknown destination.
    let labels = snap.unknown_outbound.clone();
    let finish = |labels: Arc<ConnLabels>, resp: Response<Body>, flags: &'static str| {
        ctx.metrics.response(&labels, grpc, &resp, flags, started);
        resp
    };
    if req.method() == http::Method::CONNECT {
        return finish(
            labels,
            h::local_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "warden: CONNECT is not supported: send plain HTTP to the proxy (HTTP_PROXY), not HTTPS_PROXY tunnels",
            ),
            "-",
        );
    }
    if authority.is_empty() {
        return finish(
            labels,
            h::local_reply(
                StatusCode::BAD_REQUEST,
                "warden: the request names no host (absolute-form URI or Host header)",
            ),
            "-",
        );
    }
    let route = match route(ctx, &snap, &authority) {
        Ok(r) => r,
        Err((status, flags, body)) => {
            tracing::info!(authority = %authority, %status, reason = %body, "outbound request refused");
            return finish(labels, h::error_reply(grpc, status, body), flags);
        }
    };
    let labels = snap.outbound_labels(route.service, route.index);

    // The app's own XFCC means nothing to the peer: Envoy's outbound default
    // (SANITIZE) removes it.
    req.headers_mut().remove("x-forwarded-client-cert");
    let upgrade = is_upgrade(&req);
    h::strip_hop_by_hop(req.headers_mut(), upgrade);
    if !req.headers().contains_key(http::header::HOST) && req.version() != Version::HTTP_2 {
        h::set_header(req.headers_mut(), "host", &authority);
    }
    if upgrade {
        let resp = match connect_tls(ctx, &snap, &route, Some(UpstreamProtocol::Http1)).await {
            Ok(tls) => {
                let downstream = hyper::upgrade::on(&mut req);
                let pq = h::path_and_query(req.uri()).to_string();
                if let Ok(uri) = pq.parse() {
                    *req.uri_mut() = uri;
                }
                match h::send_upgrade(tls, req).await {
                    Ok(mut resp) => {
                        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                            h::splice_upgrade(downstream, hyper::upgrade::on(&mut resp));
                        }
                        resp.map(Body::Left)
                    }
                    Err(e) => h::local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("upstream reset: {e}"),
                    ),
                }
            }
            Err(e) => {
                let msg = connect_error(&route, &e);
                tracing::warn!(error = %msg, "outbound connection failed");
                h::local_reply(StatusCode::SERVICE_UNAVAILABLE, msg)
            }
        };
        return finish(labels, resp, "-");
    }
    let protocol = if req.version() == Version::HTTP_2 || forces_h2(route.port.protocol) {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    if protocol == UpstreamProtocol::Http2 {
        req.headers_mut().remove(http::header::HOST);
        absolute_uri(&mut req, "http", &authority);
    }
    let key = (
        snap.mesh.generation,
        service_key(route.service),
        route.port.number,
        route.endpoint.inbound,
        protocol,
    );
    let result = ctx
        .mesh_pool
        .send(key, protocol, req, || {
            connect_tls(ctx, &snap, &route, Some(protocol))
        })
        .await;
    match result {
        Ok(resp) => finish(labels, resp.map(Body::Left), "-"),
        Err(UpstreamError::Connect(e)) => {
            let msg = connect_error(&route, &e);
            tracing::warn!(error = %msg, "outbound connection failed");
            finish(
                labels,
                h::error_reply(grpc, StatusCode::SERVICE_UNAVAILABLE, msg),
                "UF",
            )
        }
        Err(e) => {
            let msg = format!(
                "upstream connect error or disconnect/reset before headers. reset reason: {e}"
            );
            tracing::warn!(host = %route.host, error = %e, "outbound request failed");
            finish(
                labels,
                h::error_reply(grpc, StatusCode::SERVICE_UNAVAILABLE, msg),
                "UC",
            )
        }
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
            match TcpListener::bind(addr).await {
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
    if service.endpoints.is_empty() {
        tracing::info!(service = %service.name, port, "outbound TCP refused: no healthy upstream");
        return;
    }
    let index = ctx.pick(service.endpoints.len());
    let route = Route {
        service,
        port: port_info,
        endpoint: &service.endpoints[index],
        index,
        host: service.host(),
    };
    let labels = TcpLabels {
        conn: snap.outbound_labels(service, index),
        flags: "-",
    };
    ctx.metrics.tcp_open(&labels);
    let mut tls = match connect_tls(ctx, &snap, &route, None).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!(error = %connect_error(&route, &e), "outbound TCP connection failed");
            ctx.metrics.tcp_close(&labels, 0, 0);
            return;
        }
    };
    let (sent, received) = copy_both(ctx, &mut stream, &mut tls).await;
    ctx.metrics.tcp_close(&labels, received, sent);
}
