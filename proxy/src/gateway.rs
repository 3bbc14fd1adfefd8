//! `warden-proxy run --mode gateway`: an ingress gateway, as Istio's
//! `istio-ingressgateway` serves `Gateway` resources.
//!
//! The Gateways whose `selector` matches this workload's labels decide the listeners:
//! one per server port, on the workload's address, kept in step with the config
//! ([`GatewayListeners::reconcile`]). On each connection:
//!
//! - plaintext on an `HTTP`/`HTTP2`/`GRPC` server: HTTP, routed by the VirtualServices
//!   bound to the Gateways whose server on that port serves the request's host (their
//!   routes merged per host, as Istio merges them for gateways); `tls.httpsRedirect`
//!   answers 301 to `https`;
//! - TLS: the ClientHello's SNI picks the server (its `hosts`), then by `tls.mode`:
//!   `SIMPLE` and `MUTUAL` terminate TLS with the files the server names
//!   (`serverCertificate`, `privateKey`, `caCertificates`; re-read when they change)
//!   and serve HTTP (`HTTPS`) or TCP (`TLS`); `PASSTHROUGH` sends the client's TLS
//!   untouched to the destination of the `tls` route matching the SNI; and
//!   `AUTO_PASSTHROUGH` sends it to the service port the SNI names in Istio's form
//!   (`outbound_.<port>_.<subset>_.<host>`), the mesh client's own mutual TLS reaching
//!   the endpoint's proxy end to end;
//! - plaintext on a `TCP` server: the `tcp` routes.
//!
//! Every request passes RequestAuthentication and AuthorizationPolicy of the gateway
//! workload first (as Istio's ingress enforces them), with `remoteIpBlocks` read from
//! `X-Forwarded-For` past `--num-trusted-proxies` (Envoy's `xff_num_trusted_hops`).
//! Upstream, requests go over SPIFFE mutual TLS with the gateway's own SVID, exactly
//! as the sidecar's outbound side sends them (secure naming, DestinationRule policy,
//! retries, timeouts, faults, mirrors).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::sock::Coalesced;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use warden_policy::authz::{Protocol, Request as PolicyRequest};
use warden_policy::route::{GatewayServer, RouteRequest, ServerProtocol, TlsMode};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::conn::{Rewind, copy_both};
use crate::context::{Context, Snapshot};
use crate::http::{self as h, Body, split_host_port};
use crate::listener::{accept_loop, serve_http_connection};
use crate::metrics::TcpLabels;
use crate::pipeline::{self, Exchange, Reply, Xfcc};
use crate::routing::Via;

/// The most a ClientHello may take before the server is chosen (Envoy's TLS
/// inspector gives up at 64 KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// The gateway's listeners, one per Gateway server port, kept in step with the config.
#[derive(Debug, Default)]
pub struct GatewayListeners {
    by_port: HashMap<u16, JoinHandle<()>>,
    /// TLS server configs made from the servers' files.
    certs: Arc<CertCache>,
}

impl Drop for GatewayListeners {
    fn drop(&mut self) {
        for (_, task) in self.by_port.drain() {
            task.abort();
        }
    }
}

impl GatewayListeners {
    /// The ports bound now.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.by_port.keys().copied().collect();
        p.sort_unstable();
        p
    }

    /// Binds a listener for each new server port and closes those no server uses any
    /// more. A port that cannot be bound is logged and tried again on the next change.
    pub async fn reconcile(&mut self, ctx: &Arc<Context>) {
        let snap = ctx.snapshot.load_full();
        let mut wanted: Vec<u16> = snap.gateway_servers.iter().map(|s| s.port).collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            tracing::warn!(
                workload = %snap.mesh.local.name,
                labels = ?snap.mesh.local.labels,
                "gateway: no Gateway selects this workload's labels; nothing is served"
            );
        }
        self.by_port.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                task.abort();
                tracing::info!(
                    port,
                    "gateway listener closed: no Gateway server uses the port any more"
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
                    tracing::info!(%addr, "gateway listener bound");
                    let certs = self.certs.clone();
                    self.by_port.insert(
                        port,
                        tokio::spawn(serve(ctx.clone(), listener, port, certs)),
                    );
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "gateway: cannot bind a Gateway server port");
                }
            }
        }
    }
}

async fn serve(ctx: Arc<Context>, listener: TcpListener, port: u16, certs: Arc<CertCache>) {
    accept_loop(ctx, listener, "gateway", move |ctx, stream, peer| {
        let certs = certs.clone();
        async move {
            let _ = stream.set_nodelay(true);
            connection(&ctx, &certs, stream, peer, port).await;
        }
    })
    .await;
}

/// What is known of a downstream connection once TLS (if any) is done.
#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    port: u16,
    /// The server chosen by SNI (TLS), or `None` for plaintext HTTP (each request's
    /// host then picks among the port's servers).
    server: Option<GatewayServer>,
    tls: bool,
    sni: Option<String>,
    /// The client certificate's URI SAN (else DNS SAN), `MUTUAL` only.
    principal: Option<String>,
    /// `x-forwarded-client-cert` for the client certificate (Istio's gateway default,
    /// `SANITIZE_SET`).
    xfcc: Option<HeaderValue>,
}

async fn connection(
    ctx: &Arc<Context>,
    certs: &CertCache,
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let snap = ctx.snapshot.load_full();
    let on_port: Vec<&GatewayServer> = snap
        .gateway_servers
        .iter()
        .filter(|s| s.port == port)
        .collect();
    if on_port.is_empty() {
        return;
    }
    let mut first = [0u8; 1];
    match tokio::time::timeout(ctx.limits.handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    let wants_tls = on_port
        .iter()
        .any(|s| matches!(s.protocol, ServerProtocol::Https | ServerProtocol::Tls));
    if first[0] == 0x16 && wants_tls {
        tls_connection(ctx, certs, &snap, stream, peer, local, port).await;
        return;
    }
    if wants_tls {
        tracing::debug!(%peer, port, "gateway: plaintext on a TLS server port; closed");
        return;
    }
    let conn = Conn {
        peer,
        local,
        port,
        server: None,
        tls: false,
        sni: None,
        principal: None,
        xfcc: None,
    };
    if on_port.iter().all(|s| s.protocol == ServerProtocol::Tcp) {
        let server = on_port[0].clone();
        drop(snap);
        tcp(ctx, conn, &server, stream, Vec::new()).await;
    } else {
        drop(snap);
        http(ctx, Arc::new(conn), Coalesced::new(stream), None).await;
    }
}

/// Reads the ClientHello without consuming it for good: the bytes read, and the SNI.
async fn client_hello(
    stream: &mut TcpStream,
    limit: std::time::Duration,
) -> Result<(Vec<u8>, Option<String>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the client closed before its ClientHello ended".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut fresh = &chunk[..n];
            while !fresh.is_empty() {
                acceptor
                    .read_tls(&mut fresh)
                    .map_err(|e| format!("not TLS: {e}"))?;
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni = accepted
                        .client_hello()
                        .server_name()
                        .map(str::to_ascii_lowercase);
                    return Ok(sni);
                }
                Ok(None) if buf.len() < MAX_CLIENT_HELLO => {}
                Ok(None) => return Err("the ClientHello is too large".to_string()),
                Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
            }
        }
    };
    let sni = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| "the ClientHello did not arrive in time".to_string())??;
    Ok((buf, sni))
}

/// The server on the port for `sni`: the most specific of those whose hosts serve it
/// (an exact host before a wildcard); without SNI, one serving `*`.
fn server_for<'a>(servers: &[&'a GatewayServer], sni: Option<&str>) -> Option<&'a GatewayServer> {
    match sni {
        Some(name) => servers
            .iter()
            .filter_map(|s| Some((s.host_score(name)?, *s)))
            .max_by_key(|(score, _)| *score)
            .map(|(_, s)| s),
        None => servers
            .iter()
            .find(|s| {
                s.hosts
                    .iter()
                    .any(|h| h.rsplit_once('/').map_or(h.as_str(), |(_, h)| h) == "*")
            })
            .copied(),
    }
}

async fn tls_connection(
    ctx: &Arc<Context>,
    certs: &CertCache,
    snap: &Snapshot,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    port: u16,
) {
    let (hello, sni) = match client_hello(&mut stream, ctx.limits.handshake_timeout).await {
        Ok(found) => found,
        Err(why) => {
            tracing::debug!(%peer, port, %why, "gateway: no TLS connection");
            return;
        }
    };
    let on_port: Vec<&GatewayServer> = snap
        .gateway_servers
        .iter()
        .filter(|s| s.port == port && s.tls.is_some())
        .collect();
    let Some(server) = server_for(&on_port, sni.as_deref()).cloned() else {
        tracing::info!(%peer, port, sni = sni.as_deref().unwrap_or(""), "gateway: no server on the port serves this SNI; connection closed");
        return;
    };
    let mode = server.tls.as_ref().map_or(TlsMode::Passthrough, |t| t.mode);
    let mut conn = Conn {
        peer,
        local,
        port,
        server: Some(server.clone()),
        tls: true,
        sni: sni.clone(),
        principal: None,
        xfcc: None,
    };
    match mode {
        TlsMode::Passthrough => {
            tcp(ctx, conn, &server, stream, hello).await;
        }
        TlsMode::AutoPassthrough => auto_passthrough(ctx, conn, stream, hello).await,
        TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual | TlsMode::IstioMutual => {
            let config = if mode == TlsMode::IstioMutual {
                // The mesh's own mutual TLS, with this gateway's SVID.
                ctx.tls_strict.config().clone()
            } else {
                match certs.config(&server) {
                    Ok(c) => c,
                    Err(why) => {
                        tracing::warn!(gateway = %server.gateway, port, error = %why, "gateway: the server's certificate cannot be used; connection closed");
                        return;
                    }
                }
            };
            let deadline = tokio::time::Instant::now() + ctx.limits.handshake_timeout;
            let io = Rewind::with_prefix(hello, Coalesced::new(stream));
            let start = match tokio::time::timeout_at(
                deadline,
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => return,
            };
            let tls = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::info!(%peer, gateway = %server.gateway, port, error = %e, "gateway: TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let (_, session) = tls.get_ref();
            if let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) {
                let (principal, xfcc) = client_certificate(leaf);
                conn.principal = principal;
                conn.xfcc = xfcc;
            }
            let version = match session.alpn_protocol() {
                Some(b"h2") => Some(Version::HTTP_2),
                Some(b"http/1.1") => Some(Version::HTTP_11),
                _ => None,
            };
            if server.protocol == ServerProtocol::Tls {
                tcp(ctx, conn, &server, tls, Vec::new()).await;
            } else {
                http(ctx, Arc::new(conn), tls, version).await;
            }
        }
    }
}

/// The client certificate as Envoy's RBAC reads a principal (URI SAN, else DNS SAN)
/// and the XFCC element the gateway sets for it.
pub(crate) fn client_certificate(
    leaf: &CertificateDer<'_>,
) -> (Option<String>, Option<HeaderValue>) {
    let hash: String = ring::digest::digest(&ring::digest::SHA256, leaf)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return (None, None);
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
    let subject = xfcc_value(&cert.subject().to_string(), true);
    let mut xfcc = format!("Hash={hash};Subject={subject}");
    if let Some(u) = &uri {
        xfcc.push_str(&format!(";URI={}", xfcc_value(u, false)));
    }
    for d in &dns {
        xfcc.push_str(&format!(";DNS={}", xfcc_value(d, false)));
    }
    let principal = uri
        .map(|u| u.strip_prefix("spiffe://").map(str::to_string).unwrap_or(u))
        .or_else(|| dns.first().cloned());
    (principal, HeaderValue::from_str(&xfcc).ok())
}

/// A value of an XFCC element as Envoy documents the header: in double quotes when
/// `quote` says so (`Subject`) or when it holds `,` `;` `=` or `"`, which would
/// otherwise start another element, pair or quote; inside the quotes `"` and `\` are
/// escaped with a backslash.
fn xfcc_value(value: &str, quote: bool) -> String {
    if !quote && !value.contains([',', ';', '=', '"']) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// HTTP on `io`, each request through [`request`].
async fn http<IO>(ctx: &Arc<Context>, conn: Arc<Conn>, io: IO, version: Option<Version>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = conn.peer;
    let handler = ctx.clone();
    serve_http_connection(ctx, io, version, "gateway", Some(peer), move |req| {
        let ctx = handler.clone();
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(request(&ctx, &conn, req).await) }
    })
    .await;
}

/// One request: the pipeline, the server for its host, `httpsRedirect`, the gateway
/// workload's RequestAuthentication and AuthorizationPolicy, then the route.
async fn request(ctx: &Arc<Context>, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    let snap = ctx.snapshot.load_full();
    let mut record = ctx.telemetry.record(crate::telemetry::Direction::Gateway);
    let mut ex = record.exchange(req);
    if let Some(d) = record.detail() {
        d.downstream_local = Some(conn.local);
        d.downstream_remote = Some(conn.peer);
        d.sni = conn.sni.clone();
    }
    let mut labels = snap.unknown_outbound.clone();
    let mut added = Vec::new();
    let staged = stages(ctx, conn, &snap, &mut ex, &mut record);
    // An edge proxy: a client's own request id is not trusted (Envoy's
    // `preserve_external_request_id: false`); every request gets a fresh one.
    ex.req.headers_mut().remove("x-request-id");
    crate::telemetry::ensure_request_id(ex.req.headers_mut());
    record.request_head(
        &ex.req,
        &ex.authority,
        ctx.telemetry.logged_request_headers(),
    );
    let result = match staged {
        Ok((routed, limited)) => {
            added = limited;
            if let Some(d) = record.detail() {
                // The port the gateway's policies saw.
                d.destination_port = Some(conn.port);
                d.route_name = Some(std::borrow::Cow::Owned(routed.route_name.clone()));
            }
            ctx.telemetry.start_span(
                &mut record,
                ex.req.headers_mut(),
                crate::telemetry::SpanKind::Server,
                || Some(format!("{}:{}/*", routed.host, routed.port)),
            );
            let hint = crate::balance::Hint::http(
                ex.req.headers(),
                ex.req.uri(),
                Some(crate::balance::Downstream {
                    remote: conn.peer,
                    local: conn.local,
                }),
            );
            let found = crate::outbound::route_with(
                ctx,
                &snap,
                &routed.host,
                routed.port,
                routed.subset.as_deref(),
                routed.subset_labels.as_ref(),
                &hint,
            );
            match found {
                Ok(route) => {
                    crate::outbound::deliver(ctx, &snap, ex, route, Some(routed), &mut labels).await
                }
                Err((status, flags, body)) => {
                    tracing::info!(authority = %ex.authority, %status, reason = %body, virtual_service = %routed.virtual_service, "gateway request refused");
                    let mut reply = Reply {
                        flags,
                        ..ex.reply(status, body)
                    };
                    if let Some(c) = &routed.cors {
                        c.apply(reply.resp.headers_mut());
                    }
                    Err(reply)
                }
            }
        }
        Err(r) => Err(r),
    };
    let (mut resp, flags) = match result {
        Ok(resp) => (resp, "-"),
        Err(r) => (*r.resp, r.flags),
    };
    for (name, value) in added {
        resp.headers_mut().insert(name, value);
    }
    ctx.telemetry.attach(&mut resp, record, labels, flags);
    resp
}

/// The headers a rate limit adds to the answer.
type Added = Vec<(HeaderName, HeaderValue)>;

fn stages(
    ctx: &Context,
    conn: &Conn,
    snap: &Snapshot,
    ex: &mut Exchange,
    record: &mut crate::telemetry::Record,
) -> Result<(crate::routing::Routed, Added), Reply> {
    pipeline::validate(ex, &ctx.limits, ctx.accept_http10)?;
    pipeline::normalize_path(ex, snap.mesh.settings.path_normalization)?;
    // An edge proxy: the client's own `x-forwarded-proto` and XFCC mean nothing.
    ex.req.headers_mut().remove("x-forwarded-proto");
    pipeline::sanitize(ex, conn.tls, Xfcc::Remove)?;
    if let Some(v) = &conn.xfcc {
        ex.req.headers_mut().insert(
            HeaderName::from_static("x-forwarded-client-cert"),
            v.clone(),
        );
    }
    let remote = forwarded_for(ex, conn.peer.ip(), ctx.num_trusted_proxies);
    let Some((host, _)) = split_host_port(&ex.authority, conn.port) else {
        return Err(ex.reply(StatusCode::BAD_REQUEST, "warden: the request names no host"));
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    // The servers whose hosts serve the request: on TLS, only the one the SNI chose
    // (a request may not reach another server's routes through a shared connection).
    let servers: Vec<&GatewayServer> = match &conn.server {
        Some(s) => vec![s]
            .into_iter()
            .filter(|s| s.serves_host(&host))
            .collect(),
        None => snap
            .gateway_servers
            .iter()
            .filter(|s| {
                s.port == conn.port
                    && matches!(
                        s.protocol,
                        ServerProtocol::Http | ServerProtocol::Http2 | ServerProtocol::Grpc
                    )
                    && s.serves_host(&host)
            })
            .collect(),
    };
    if servers.is_empty() {
        tracing::debug!(%host, port = conn.port, "gateway: no server on the port serves the host");
        return Err(Reply {
            flags: "NR",
            ..ex.reply(StatusCode::NOT_FOUND, "")
        });
    }
    if !conn.tls
        && servers
            .iter()
            .any(|s| s.tls.as_ref().is_some_and(|t| t.https_redirect))
    {
        return Err(https_redirect(ex, &host));
    }
    let limited = crate::ratelimit::check_exchange(
        ctx,
        &snap.rate_limits,
        ex,
        conn.port,
        conn.principal.as_deref(),
        Some(remote),
    )?;
    // RequestAuthentication as on a sidecar's inbound side (Envoy's jwt_authn replies).
    crate::inbound::authenticate(conn.principal.as_deref(), snap, ex)?;
    authorize(ctx, conn, snap, ex, remote, record)?;
    let mut gateways: Vec<String> = servers.iter().map(|s| s.gateway.clone()).collect();
    gateways.dedup();
    let routed = crate::routing::apply_gateway(
        snap,
        ex,
        Via {
            gateways: &gateways,
            port: conn.port,
            tls: conn.tls,
        },
    )?;
    Ok((routed, limited))
}

/// Envoy's `x-forwarded-for` at the edge (`use_remote_address`): the trusted client
/// address is the `num_trusted`-th from the right of what the client sent (its peer
/// address with fewer entries or none trusted), then the peer's address is appended.
/// Returns the trusted client address (`remoteIpBlocks` match it).
fn forwarded_for<B>(ex: &mut Exchange<B>, peer: IpAddr, num_trusted: usize) -> IpAddr {
    let xff = HeaderName::from_static("x-forwarded-for");
    let sent: Vec<String> = ex
        .req
        .headers()
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let remote = if num_trusted == 0 || sent.len() < num_trusted {
        peer
    } else {
        sent[sent.len() - num_trusted].parse().unwrap_or(peer)
    };
    let mut value = sent.join(",");
    if !value.is_empty() {
        value.push(',');
    }
    value.push_str(&peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&value) {
        ex.req.headers_mut().insert(xff, v);
    }
    if let Ok(v) = HeaderValue::from_str(&remote.to_string()) {
        ex.req
            .headers_mut()
            .insert(HeaderName::from_static("x-envoy-external-address"), v);
    }
    remote
}

/// `tls.httpsRedirect`: 301 to the same host and path over `https` (Envoy's
/// `require_tls: ALL`).
fn https_redirect(ex: &Exchange, host: &str) -> Reply {
    let path = crate::http::path_and_query(ex.req.uri());
    let mut resp = h::local_reply(StatusCode::MOVED_PERMANENTLY, String::new());
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    Reply {
        resp: Box::new(resp),
        flags: "-",
    }
}

fn authorize(
    ctx: &Context,
    conn: &Conn,
    snap: &Snapshot,
    ex: &mut Exchange,
    remote: IpAddr,
    record: &mut crate::telemetry::Record,
) -> Result<(), Reply> {
    let mesh = &snap.mesh;
    let view = h::policy_request(&ex.req, &ex.authority, Some(mesh.authz.header_names()));
    let policy_req = PolicyRequest {
        protocol: Protocol::Http,
        source_principal: conn.principal.clone(),
        source_ip: Some(conn.peer.ip()),
        remote_ip: Some(remote),
        destination_ip: Some(conn.local.ip()),
        destination_port: conn.port,
        sni: conn.sni.clone(),
        http: Some(view),
        jwt: ex.jwt.take(),
    };
    let decision = mesh.authz.evaluate(&mesh.local.policy, &policy_req);
    let allowed =
        crate::inbound::record_decision(ctx, &decision, &policy_req, &ex.authority, false);
    record.authz(&decision, allowed, policy_req.jwt.as_ref());
    if let Some(d) = record.detail() {
        d.authz_workload = Some(mesh.local.key.clone());
    }
    if allowed {
        Ok(())
    } else {
        Err(Reply {
            resp: Box::new(h::denied(ex.grpc)),
            flags: "-",
        })
    }
}

/// A TCP server, a terminated `TLS` server or `PASSTHROUGH`: the gateway workload's
/// AuthorizationPolicy once, then the `tcp` (or, with an SNI, `tls`) route, over
/// mutual TLS to the destination; `prefix` (the client's ClientHello when passed
/// through) goes first.
async fn tcp<IO>(
    ctx: &Arc<Context>,
    conn: Conn,
    server: &GatewayServer,
    mut io: IO,
    prefix: Vec<u8>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let snap = ctx.snapshot.load_full();
    let passthrough = !prefix.is_empty();
    let host = conn.sni.clone().unwrap_or_else(|| {
        server
            .hosts
            .first()
            .map(|h| {
                h.rsplit_once('/')
                    .map_or(h.as_str(), |(_, h)| h)
                    .to_string()
            })
            .unwrap_or_else(|| "*".into())
    });
    let req = RouteRequest {
        source_namespace: snap.mesh.local.namespace.clone(),
        source_labels: snap.mesh.local.labels.clone(),
        http: false,
        host: host.clone(),
        port: conn.port,
        skip_policy: true,
        gateways: vec![server.gateway.clone()],
        sni: if passthrough { conn.sni.clone() } else { None },
        ..Default::default()
    };
    let d = snap.mesh.routes.decide(&req, None);
    let target = match (d.action, crate::routing::pick_weighted(&d.destinations)) {
        ("route", Some(dest)) => {
            let vs = d.virtual_service.clone().unwrap_or_default();
            match crate::routing::subset_labels(&snap, dest, &vs) {
                Ok(labels) => Some((dest.clone(), labels)),
                Err(why) => {
                    tracing::info!(peer = %conn.peer, %host, %why, "gateway TCP refused");
                    None
                }
            }
        }
        _ => {
            tracing::info!(peer = %conn.peer, %host, port = conn.port, gateway = %server.gateway, "gateway TCP refused: no tcp or tls route of a VirtualService bound to the gateway matches");
            None
        }
    };
    let Some((dest, subset)) = target else {
        return;
    };
    let policy_req = PolicyRequest {
        protocol: Protocol::Tcp,
        source_principal: conn.principal.clone(),
        source_ip: Some(conn.peer.ip()),
        remote_ip: Some(conn.peer.ip()),
        destination_ip: Some(conn.local.ip()),
        destination_port: conn.port,
        sni: conn.sni.clone(),
        http: None,
        jwt: None,
    };
    let decision = snap
        .mesh
        .authz
        .evaluate(&snap.mesh.local.policy, &policy_req);
    let allowed = crate::inbound::record_decision(ctx, &decision, &policy_req, &host, true);
    let mut record = tcp_record(ctx, &conn);
    record.authz(&decision, allowed, None);
    if let Some(d) = record.detail() {
        d.authz_workload = Some(snap.mesh.local.key.clone());
    }
    if !allowed {
        ctx.telemetry
            .closed(record, snap.unknown_outbound.clone(), "-");
        return;
    }
    let port = dest
        .port
        .and_then(|p| u16::try_from(p).ok())
        .or_else(|| snap.mesh.registry.only_port(&dest.host))
        .unwrap_or(conn.port);
    let route = match crate::outbound::route_to(ctx, &snap, &dest.host, port, subset.as_ref()) {
        Ok(r) => r,
        Err((_, _, why)) => {
            tracing::info!(peer = %conn.peer, host = %dest.host, port, %why, "gateway TCP refused");
            return;
        }
    };
    let labels = TcpLabels {
        conn: snap.outbound_labels(route.service, route.index),
        flags: "-",
    };
    ctx.metrics.tcp_open(&labels);
    if let Some(d) = record.detail() {
        d.upstream.host = Some(route.endpoint.inbound);
        d.upstream.cluster = Some(Arc::from(format!(
            "outbound|{}|{}|{}",
            route.port.number,
            dest.subset.as_deref().unwrap_or_default(),
            route.host
        )));
    }
    // Mesh mutual TLS, or to a MESH_EXTERNAL service what its egress plan says.
    let upstream = match &route.egress {
        None => crate::outbound::connect_tls(ctx, &snap, &route, None)
            .await
            .map(|t| crate::egress::Stream::Tls(Box::new(t))),
        Some(plan) => crate::egress::connect(ctx, &snap, &route, plan, None).await,
    };
    let mut upstream = match upstream {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %crate::outbound::connect_error(&route, &e), "gateway TCP connection failed");
            let failed = TcpLabels {
                flags: "UF",
                ..labels
            };
            ctx.telemetry.tcp_closed(record, &failed, 0, 0);
            return;
        }
    };
    if passthrough && upstream.write_all(&prefix).await.is_err() {
        ctx.telemetry.tcp_closed(record, &labels, 0, 0);
        return;
    }
    let (sent, received) = copy_both(&mut io, &mut upstream, ctx.limits.idle_timeout).await;
    ctx.telemetry
        .tcp_closed(record, &labels, received, sent + prefix.len() as u64);
}

/// A gateway TCP connection's record: its addresses and SNI.
fn tcp_record(ctx: &Context, conn: &Conn) -> crate::telemetry::Record {
    let mut record = ctx.telemetry.record(crate::telemetry::Direction::Gateway);
    if let Some(d) = record.detail() {
        d.downstream_local = Some(conn.local);
        d.downstream_remote = Some(conn.peer);
        d.sni.clone_from(&conn.sni);
        d.destination_port = Some(conn.port);
    }
    record
}

/// `AUTO_PASSTHROUGH`: the SNI names the service port in Istio's form; the client's
/// TLS goes, untouched, to an endpoint's proxy, which authenticates the client itself.
async fn auto_passthrough(ctx: &Arc<Context>, conn: Conn, mut stream: TcpStream, prefix: Vec<u8>) {
    let snap = ctx.snapshot.load_full();
    let Some(sni) = conn.sni.as_deref() else {
        return;
    };
    let Some((port, host)) = crate::mesh::registry::parse_sni(sni) else {
        tracing::info!(peer = %conn.peer, sni, "gateway AUTO_PASSTHROUGH refused: the SNI is not outbound_.<port>_.<subset>_.<host>");
        return;
    };
    let subset = sni
        .strip_prefix("outbound_.")
        .and_then(|r| r.split('_').nth(2))
        .map(|s| s.trim_start_matches('.'))
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let labels = match &subset {
        Some(s) => {
            let fqdn = snap
                .mesh
                .registry
                .resolve(host, port, &snap.mesh.local.namespace)
                .map(|(svc, _)| svc.host().to_string())
                .unwrap_or_else(|| host.to_string());
            snap.mesh
                .routes
                .subset_labels(&fqdn, s, &snap.mesh.local.namespace)
        }
        None => None,
    };
    let route = match crate::outbound::route_to(ctx, &snap, host, port, labels.as_ref()) {
        Ok(r) => r,
        Err((_, _, why)) => {
            tracing::info!(peer = %conn.peer, sni, %why, "gateway AUTO_PASSTHROUGH refused");
            return;
        }
    };
    if !route.service.mesh_internal {
        tracing::info!(peer = %conn.peer, sni, "gateway AUTO_PASSTHROUGH refused: the SNI names a MESH_EXTERNAL service, which has no proxy to take the client's mutual TLS");
        return;
    }
    let tcp_labels = TcpLabels {
        conn: snap.outbound_labels(route.service, route.index),
        flags: "-",
    };
    ctx.metrics.tcp_open(&tcp_labels);
    let mut record = tcp_record(ctx, &conn);
    if let Some(d) = record.detail() {
        d.upstream.host = Some(route.endpoint.inbound);
        d.upstream.cluster = Some(Arc::from(format!(
            "outbound|{port}|{}|{host}",
            subset.as_deref().unwrap_or("")
        )));
    }
    let mut upstream = match ctx.connect_from_local(route.endpoint.inbound).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(endpoint = %route.endpoint.inbound, error = %e, "gateway AUTO_PASSTHROUGH: cannot reach the endpoint");
            let failed = TcpLabels {
                flags: "UF",
                ..tcp_labels
            };
            ctx.telemetry.tcp_closed(record, &failed, 0, 0);
            return;
        }
    };
    if upstream.write_all(&prefix).await.is_err() {
        ctx.telemetry.tcp_closed(record, &tcp_labels, 0, 0);
        return;
    }
    let (sent, received) = copy_both(&mut stream, &mut upstream, ctx.limits.idle_timeout).await;
    ctx.telemetry
        .tcp_closed(record, &tcp_labels, received, sent + prefix.len() as u64);
}

/// TLS server configs made from a server's files, remade when a file changes (its
/// modification time or size), as Istio's SDS follows mounted certificates.
#[derive(Debug, Default)]
pub(crate) struct CertCache {
    by_server: Mutex<HashMap<(String, usize), Made>>,
}

type FileStamp = Option<(SystemTime, u64)>;

/// A config and the state of the files it was made from.
type Made = (Vec<FileStamp>, Arc<ServerConfig>);

fn stamp(path: &str) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl CertCache {
    fn config(&self, server: &GatewayServer) -> Result<Arc<ServerConfig>, String> {
        let tls = server
            .tls
            .as_ref()
            .ok_or_else(|| "the server has no tls settings".to_string())?;
        if tls.credential_name.is_some() && tls.server_certificate.is_none() {
            return Err(format!(
                "credentialName {:?} needs a Kubernetes secret; Warden's gateway reads certificates from files (serverCertificate, privateKey, caCertificates)",
                tls.credential_name.as_deref().unwrap_or_default()
            ));
        }
        let files: Vec<&str> = [
            &tls.server_certificate,
            &tls.private_key,
            &tls.ca_certificates,
        ]
        .into_iter()
        .filter_map(|f| f.as_deref())
        .collect();
        let stamps: Vec<FileStamp> = files.iter().map(|f| stamp(f)).collect();
        let key = (server.gateway.clone(), server.index);
        let mut cache = self
            .by_server
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, config)) = cache.get(&key)
            && *seen == stamps
        {
            return Ok(config.clone());
        }
        let config = Arc::new(server_config(server)?);
        cache.insert(key, (stamps, config.clone()));
        Ok(config)
    }
}

/// A rustls server config for a `SIMPLE` or `MUTUAL` server (ring; TLS 1.2 and 1.3
/// unless `minProtocolVersion`/`maxProtocolVersion` narrow it; ALPN `h2` and
/// `http/1.1` for HTTPS servers, as Istio's gateway offers them).
pub(crate) fn server_config(server: &GatewayServer) -> Result<ServerConfig, String> {
    let tls = server
        .tls
        .as_ref()
        .ok_or_else(|| "the server has no tls settings".to_string())?;
    let cert_path = tls
        .server_certificate
        .as_deref()
        .ok_or_else(|| "tls.serverCertificate is not set".to_string())?;
    let key_path = tls
        .private_key
        .as_deref()
        .ok_or_else(|| "tls.privateKey is not set".to_string())?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("tls.serverCertificate {cert_path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.serverCertificate {cert_path}: no certificate in the file"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("tls.privateKey {key_path}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = {
        let min = tls.min_protocol_version.as_deref().unwrap_or("TLSV1_2");
        let max = tls.max_protocol_version.as_deref().unwrap_or("TLSV1_3");
        let mut v = Vec::new();
        if min != "TLSV1_3" && max != "TLSV1_1" && max != "TLSV1_0" {
            v.push(&rustls::version::TLS12);
        }
        if max == "TLSV1_3" || max == "TLS_AUTO" {
            v.push(&rustls::version::TLS13);
        }
        if v.is_empty() {
            return Err(format!(
                "tls protocol versions {min}..{max} leave nothing Warden speaks (TLS 1.2, 1.3)"
            ));
        }
        v
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls versions: {e}"))?;
    let builder = match tls.mode {
        TlsMode::Mutual | TlsMode::OptionalMutual => {
            let ca_path = tls
                .ca_certificates
                .as_deref()
                .ok_or_else(|| "tls.caCertificates is required for MUTUAL".to_string())?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca_path)
                .map_err(|e| format!("tls.caCertificates {ca_path}: {e}"))?
            {
                let cert = cert.map_err(|e| format!("tls.caCertificates {ca_path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.caCertificates {ca_path}: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if tls.mode == TlsMode::OptionalMutual {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("tls.caCertificates {ca_path}: {e}"))?,
            )
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.serverCertificate/privateKey: {e}"))?;
    if server.protocol != ServerProtocol::Tls {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn server(hosts: &[&str]) -> GatewayServer {
        GatewayServer {
            gateway: "istio-system/gw".into(),
            name: None,
            index: 0,
            port: 443,
            port_name: "https".into(),
            protocol: ServerProtocol::Https,
            hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
            tls: None,
        }
    }

    #[test]
    fn xfcc_values_are_quoted_as_envoy_documents() {
        assert_eq!(
            xfcc_value("spiffe://td/ns/a/sa/b", false),
            "spiffe://td/ns/a/sa/b"
        );
        assert_eq!(xfcc_value("CN=a, O=b", true), "\"CN=a, O=b\"");
        assert_eq!(xfcc_value("say \"hi\" \\", true), r#""say \"hi\" \\""#);
        // Found by the xfcc fuzz target: a SAN with `,` or `;` made another element or
        // pair (`DNS=a.example,By=spiffe://...` read as two elements).
        assert_eq!(
            xfcc_value("a.example,By=spiffe://td/ns/x/sa/admin", false),
            "\"a.example,By=spiffe://td/ns/x/sa/admin\""
        );
        assert_eq!(
            xfcc_value("spiffe://td/a;URI=x", false),
            "\"spiffe://td/a;URI=x\""
        );
    }

    #[test]
    fn the_sni_picks_the_most_specific_server() {
        let any = server(&["*"]);
        let wild = server(&["*/*.example.com"]);
        let exact = server(&["ns/a.example.com"]);
        let all = [&any, &wild, &exact];
        assert_eq!(server_for(&all, Some("a.example.com")), Some(&exact));
        assert_eq!(server_for(&all, Some("b.example.com")), Some(&wild));
        assert_eq!(server_for(&all, Some("other.org")), Some(&any));
        assert_eq!(server_for(&all, None), Some(&any));
        assert_eq!(server_for(&[&exact], None), None);
        assert_eq!(server_for(&[&exact], Some("example.com")), None);
    }

    #[test]
    fn forwarded_for_trusts_only_the_configured_hops() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let run = |xff: Option<&str>, n: usize| {
            let mut b = Request::builder().uri("/");
            if let Some(x) = xff {
                b = b.header("x-forwarded-for", x);
            }
            let mut ex = Exchange::new(b.body(()).unwrap());
            let remote = forwarded_for(&mut ex, peer, n);
            let sent = ex.req.headers()["x-forwarded-for"]
                .to_str()
                .unwrap()
                .to_string();
            (remote.to_string(), sent)
        };
        // No trusted hops: the peer, whatever the client claims.
        assert_eq!(
            run(Some("1.2.3.4"), 0),
            ("10.0.0.9".into(), "1.2.3.4,10.0.0.9".into())
        );
        // One trusted proxy in front: the address it appended.
        assert_eq!(
            run(Some("6.6.6.6, 1.2.3.4"), 1),
            ("1.2.3.4".into(), "6.6.6.6,1.2.3.4,10.0.0.9".into())
        );
        assert_eq!(run(Some("6.6.6.6, 1.2.3.4"), 2).0, "6.6.6.6");
        // Fewer entries than trusted hops: the peer.
        assert_eq!(run(Some("1.2.3.4"), 2).0, "10.0.0.9");
        assert_eq!(run(None, 1), ("10.0.0.9".into(), "10.0.0.9".into()));
        // Garbage is not an address: the peer.
        assert_eq!(run(Some("not-an-ip"), 1).0, "10.0.0.9");
    }

    #[test]
    fn server_config_names_the_file_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(&["*"]);
        s.tls = Some(warden_policy::route::ServerTls {
            mode: TlsMode::Simple,
            server_certificate: Some(dir.path().join("missing.pem").display().to_string()),
            private_key: Some(dir.path().join("key.pem").display().to_string()),
            ..Default::default()
        });
        let err = server_config(&s).unwrap_err();
        assert!(
            err.contains("tls.serverCertificate") && err.contains("missing.pem"),
            "{err}"
        );
    }
}
