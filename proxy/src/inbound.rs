//! The inbound side (port 15006 on the workload's address): PeerAuthentication decides
//! whether a connection must be mutual TLS (PERMISSIVE tells TLS from plaintext by the
//! first byte), the client's SVID is verified against `ROOTCA` and its SPIFFE ID
//! becomes the source principal, then RequestAuthentication and AuthorizationPolicy
//! run on every request (or once per TCP connection) before anything reaches the app.
//!
//! Which app port a connection is for comes from the SNI Istio's sidecars send
//! (`outbound_.<port>_._.<host>`), else from the `Host` header, else from the
//! workload's only port.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use warden_policy::authz::{Decision, Protocol, Request as PolicyRequest};
use warden_policy::request_authn::Outcome as JwtOutcome;
use warden_policy::resources::MtlsMode;

use crate::context::{Context, Snapshot, forces_h2, service_key};
use crate::http::{
    self as h, Body, UpstreamError, UpstreamProtocol, authority_of, is_grpc, is_upgrade,
    local_reply, split_host_port,
};
use crate::metrics::{ConnLabels, Outcome, Reporter, ServiceLabels, TcpLabels};
use crate::registry::{InboundTarget, PortProtocol, parse_sni};
use crate::tls::{VerifyError, peer_spiffe_id};

/// How long a new connection may take to send its first byte (TLS hello or request).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is known of a downstream connection once TLS (if any) is done.
#[derive(Debug)]
struct Conn {
    /// Caller address.
    peer: SocketAddr,
    /// The address it connected to.
    local: SocketAddr,
    /// Verified SPIFFE ID, `spiffe://...`.
    principal: Option<String>,
    /// SNI.
    sni: Option<String>,
    /// The target from the SNI.
    target: Option<InboundTarget>,
    /// This connection's `x-forwarded-client-cert` element (mutual TLS only).
    xfcc: Option<HeaderValue>,
    /// Metric labels of the last request: (generation, service key, labels).
    labels: Mutex<Option<(u64, usize, Arc<ConnLabels>)>>,
}

impl Conn {
    /// The metric labels for a request to `target` under `snap`, made once per
    /// connection (and again only if the config or the service changes).
    fn labels(&self, snap: &Snapshot, target: Option<&InboundTarget>) -> Arc<ConnLabels> {
        let key = target.map_or(0, |t| service_key(&t.service));
        let generation = snap.mesh.generation;
        let mut cache = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((g, k, labels)) = cache.as_ref()
            && *g == generation
            && *k == key
        {
            return labels.clone();
        }
        let service = target.map_or_else(ServiceLabels::unknown, |t| {
            ServiceLabels::new(t.service.host(), &t.service.namespace)
        });
        let labels = Arc::new(ConnLabels::new(
            Reporter::Destination,
            snap.peer_at(self.peer.ip(), self.principal.as_deref()),
            snap.local_peer.clone(),
            service,
            self.security(),
        ));
        *cache = Some((generation, key, labels.clone()));
        labels
    }

    /// The engine's view of a request on this connection to `app_port`.
    fn policy_request(
        &self,
        app_port: u16,
        http: Option<warden_policy::authz::HttpRequest>,
        jwt: Option<serde_json::Value>,
    ) -> PolicyRequest {
        PolicyRequest {
            protocol: if http.is_some() {
                Protocol::Http
            } else {
                Protocol::Tcp
            },
            source_principal: self
                .principal
                .as_deref()
                .map(|p| p.strip_prefix("spiffe://").unwrap_or(p).to_string()),
            source_ip: Some(self.peer.ip()),
            remote_ip: None,
            destination_ip: Some(self.local.ip()),
            destination_port: app_port,
            sni: self.sni.clone(),
            http,
            jwt,
        }
    }

    fn security(&self) -> &'static str {
        if self.principal.is_some() {
            "mutual_tls"
        } else {
            "none"
        }
    }
}

/// Accepts inbound connections until draining starts.
pub async fn serve(ctx: Arc<Context>, listener: TcpListener) {
    accept_loop(ctx, listener, "inbound", |ctx, stream, peer| async move {
        handle(&ctx, stream, peer).await;
    })
    .await;
}

/// Accepts connections on `listener` until draining starts, running `handle` on each
/// in a task of its own that counts as open for the drain.
pub(crate) async fn accept_loop<F, Fut>(
    ctx: Arc<Context>,
    listener: TcpListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<Context>, TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = ctx.drain.started() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = ctx.drain.guard(&ctx.metrics.gauges);
                let task = handle(ctx.clone(), stream, peer);
                tokio::spawn(async move {
                    task.await;
                    drop(guard);
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(ctx: &Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut first = [0u8; 1];
    let n = match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    if n == 0 {
        return;
    }
    if first[0] == 0x16 {
        handle_tls(ctx, stream, peer, local).await;
    } else {
        handle_plaintext(ctx, stream, peer, local).await;
    }
}

fn target_from_sni(snap: &Snapshot, sni: &str) -> Option<InboundTarget> {
    snap.mesh.registry.inbound_target_sni(&snap.mesh.local, sni)
}

async fn handle_tls(ctx: &Arc<Context>, stream: TcpStream, peer: SocketAddr, local: SocketAddr) {
    let snap = ctx.snapshot.load_full();
    let start = match tokio::time::timeout(
        FIRST_BYTE_TIMEOUT,
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound: not a TLS client hello");
            return;
        }
        Err(_) => return,
    };
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let target = match &sni {
        Some(s) => match target_from_sni(&snap, s) {
            Some(t) => Some(t),
            None if parse_sni(s).is_some() => {
                tracing::info!(
                    %peer,
                    sni = %s,
                    workload = %snap.mesh.local.name,
                    "inbound connection refused: the SNI names a service port this workload does not serve"
                );
                return;
            }
            None => snap.only_target.clone(),
        },
        None => snap.only_target.clone(),
    };
    let mode = match &target {
        Some(t) => snap.mode(t.app_port),
        None => snap.strictest(),
    };
    let server = if mode == MtlsMode::Strict {
        &ctx.tls_strict
    } else {
        &ctx.tls_permissive
    };
    let config = server.config_for(&hello);
    let tls = match start.into_stream(config).await {
        Ok(t) => t,
        Err(e) => {
            match VerifyError::from_io(&e) {
                Some(why) => tracing::info!(%peer, error = %why, "inbound mTLS handshake refused"),
                None => tracing::debug!(%peer, error = %e, "inbound TLS handshake failed"),
            }
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let principal = peer_spiffe_id(session).map(|id| id.as_str().to_string());
    // XFCC as Istio's sidecar sets it (`APPEND_FORWARD` with subject, URI and DNS):
    // `By=<us>;Hash=<sha256 of the client leaf>;Subject="";URI=<client>`, made once.
    let xfcc = principal.as_ref().and_then(|uri| {
        let leaf = session.peer_certificates()?.first()?;
        let hash = hex(ring::digest::digest(&ring::digest::SHA256, leaf).as_ref());
        let by = snap.mesh.local.spiffe_id.as_str();
        HeaderValue::from_str(&format!("By={by};Hash={hash};Subject=\"\";URI={uri}")).ok()
    });
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let conn = Arc::new(Conn {
        peer,
        local,
        principal,
        sni,
        target,
        xfcc,
        labels: Mutex::default(),
    });
    match conn.target.as_ref().map(|t| t.protocol) {
        Some(PortProtocol::Tcp) => tcp(ctx, conn, tls).await,
        _ => {
            let version = match alpn.as_deref() {
                Some(b"h2") => Some(Version::HTTP_2),
                Some(b"http/1.1") => Some(Version::HTTP_11),
                _ => None,
            };
            http(ctx, conn, tls, version).await;
        }
    }
}

async fn handle_plaintext(
    ctx: &Arc<Context>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let snap = ctx.snapshot.load_full();
    let mut head = [0u8; 16];
    let n = stream.peek(&mut head).await.unwrap_or(0);
    let conn = Arc::new(Conn {
        peer,
        local,
        principal: None,
        sni: None,
        target: snap.only_target.clone(),
        xfcc: None,
        labels: Mutex::default(),
    });
    if looks_like_http(&head[..n]) {
        // The mode is checked per request, once the Host header names the port.
        if !snap.accepts_plaintext() {
            refuse_plaintext(&snap, peer, None);
            return;
        }
        http(ctx, conn, stream, None).await;
        return;
    }
    let Some(target) = &conn.target else {
        tracing::info!(%peer, "inbound plaintext TCP refused: the workload has several ports and the connection names none");
        return;
    };
    if snap.mode(target.app_port) == MtlsMode::Strict {
        refuse_plaintext(&snap, peer, Some(target.app_port));
        return;
    }
    tcp(ctx, conn, stream).await;
}

fn refuse_plaintext(snap: &Snapshot, peer: SocketAddr, port: Option<u16>) {
    tracing::info!(
        %peer,
        workload = %snap.mesh.local.name,
        port,
        "inbound plaintext connection refused: PeerAuthentication requires mutual TLS (STRICT)"
    );
}

/// Whether the first bytes are an HTTP/1.x request line or the HTTP/2 preface.
fn looks_like_http(head: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"CONNECT ",
    ];
    head.starts_with(b"PRI * HTTP/2")
        || METHODS
            .iter()
            .any(|m| head.starts_with(m) || (head.len() < m.len() && m.starts_with(head)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Serves HTTP on `io` (HTTP/2 or HTTP/1.1 as ALPN said, else detected), with graceful
/// shutdown when draining starts.
async fn http<IO>(ctx: &Arc<Context>, conn: Arc<Conn>, io: IO, version: Option<Version>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc = {
        let ctx = ctx.clone();
        hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            let conn = conn.clone();
            async move { request(&ctx, &conn, req).await }
        })
    };
    let io = TokioIo::new(io);
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = match version {
        Some(Version::HTTP_2) => {
            let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc);
            serve_until_drained(ctx, c, |c| c.graceful_shutdown())
                .await
                .map_err(Into::into)
        }
        Some(_) => {
            let c = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades();
            serve_until_drained(ctx, c, |c| c.graceful_shutdown())
                .await
                .map_err(Into::into)
        }
        None => {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let c = builder.serve_connection_with_upgrades(io, svc);
            serve_until_drained(ctx, c, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "inbound HTTP connection ended");
    }
}

/// Drives a hyper connection; when draining starts, asks it to finish gracefully
/// (HTTP/1.1: close after the response in flight; HTTP/2: GOAWAY) and keeps driving it.
pub(crate) async fn serve_until_drained<C, E>(
    ctx: &Context,
    conn: C,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<(), E>
where
    C: std::future::Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        () = ctx.drain.started() => {}
    }
    shutdown(conn.as_mut());
    conn.await
}

/// A request refused by PeerAuthentication: closes the connection.
#[derive(Debug, thiserror::Error)]
#[error("plaintext refused: PeerAuthentication requires mutual TLS")]
struct PlaintextRefused;

fn resolve_target(snap: &Snapshot, conn: &Conn, host: &str) -> Option<InboundTarget> {
    if let Some(t) = &conn.target {
        return Some(t.clone());
    }
    let (name, port) = split_host_port(host, 80)?;
    snap.mesh
        .registry
        .inbound_target(&snap.mesh.local, name, port)
        .or_else(|| snap.only_target.clone())
}

async fn request(
    ctx: &Context,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, PlaintextRefused> {
    let started = Instant::now();
    let snap = ctx.snapshot.load_full();
    let mesh = &snap.mesh;
    let local = &mesh.local;
    let grpc = is_grpc(req.headers());
    let host = authority_of(&req).unwrap_or_default().to_string();
    let target = resolve_target(&snap, conn, &host);
    let labels = conn.labels(&snap, target.as_ref());
    let finish = |resp: Response<Body>, flags: &'static str| {
        ctx.metrics.response(&labels, grpc, &resp, flags, started);
        resp
    };
    let Some(target) = target else {
        return Ok(finish(
            h::error_reply(
                grpc,
                StatusCode::NOT_FOUND,
                format!(
                    "warden: workload {}/{} serves no service port for host {host:?}",
                    local.namespace, local.name
                ),
            ),
            "NR",
        ));
    };
    if conn.principal.is_none() && snap.mode(target.app_port) == MtlsMode::Strict {
        refuse_plaintext(&snap, conn.peer, Some(target.app_port));
        return Err(PlaintextRefused);
    }

    // RequestAuthentication, then AuthorizationPolicy, on the engine's view.
    let mut http_req = h::policy_request(&req, &host);
    let mut jwt = None;
    if snap.jwt_applies {
        match mesh
            .request_authn
            .authenticate(&local.policy, &http_req, SystemTime::now())
        {
            JwtOutcome::NoToken { edits } => {
                warden_policy::request_authn::apply_edits(&edits, &mut http_req);
                h::apply_jwt_edits(&mut req, &edits);
            }
            JwtOutcome::Authenticated(a) => {
                warden_policy::request_authn::apply_edits(&a.edits, &mut http_req);
                h::apply_jwt_edits(&mut req, &a.edits);
                jwt = Some(a.claims);
            }
            JwtOutcome::Rejected(r) => {
                tracing::info!(
                    source_principal = conn.principal.as_deref().unwrap_or(""),
                    destination = %host,
                    method = %req.method(),
                    path = %req.uri().path(),
                    reason = %r.reason(),
                    status = r.status,
                    "request authentication refused"
                );
                let resp = jwt_reply(grpc, r.status, &host, req.uri().path());
                return Ok(finish(resp, "UAEX"));
            }
        }
    }
    let policy_req = conn.policy_request(target.app_port, Some(http_req), jwt);
    let decision = mesh.authz.evaluate(&local.policy, &policy_req);
    if !record_decision(ctx, &decision, &policy_req, target.service.host(), false) {
        return Ok(finish(h::denied(grpc), "-"));
    }

    // Forward to the app.
    let upgrade = is_upgrade(&req);
    h::strip_hop_by_hop(req.headers_mut(), upgrade);
    set_xfcc(&mut req, conn);
    let app = SocketAddr::new(local_app_ip(ctx, conn), target.app_port);
    if upgrade {
        return Ok(finish(forward_upgrade(req, app).await, "-"));
    }
    let protocol = if req.version() == Version::HTTP_2 || forces_h2(target.protocol) {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    if protocol == UpstreamProtocol::Http2 && req.uri().scheme().is_none() {
        absolute_uri(&mut req, "http", &host);
    }
    let result = ctx
        .app_pool
        .send((target.app_port, protocol), protocol, req, || async move {
            let s = TcpStream::connect(app).await?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .await;
    match result {
        Ok(resp) => Ok(finish(resp.map(Body::Left), "-")),
        Err(e) => {
            tracing::warn!(%app, error = %e, "inbound: the app did not answer");
            let flags = if matches!(e, UpstreamError::Connect(_)) {
                "UF"
            } else {
                "UC"
            };
            Ok(finish(
                h::error_reply(
                    grpc,
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "upstream connect error or disconnect/reset before headers: app at {app}: {e}"
                    ),
                ),
                flags,
            ))
        }
    }
}

/// The app listens on the workload's address (the one the caller connected to).
fn local_app_ip(ctx: &Context, conn: &Conn) -> IpAddr {
    if conn.local.ip().is_unspecified() {
        ctx.local_ip
    } else {
        conn.local.ip()
    }
}

/// Makes the URI absolute (HTTP/2 needs `:scheme` and `:authority`).
pub(crate) fn absolute_uri<B>(req: &mut Request<B>, scheme: &str, authority: &str) {
    let pq = h::path_and_query(req.uri());
    if let Ok(uri) = format!("{scheme}://{authority}{pq}").parse() {
        *req.uri_mut() = uri;
    }
}

/// Envoy's jwt_authn replies: 401 `Jwt verification fails` with `WWW-Authenticate`,
/// or 403 `Audiences in Jwt are not allowed`.
fn jwt_reply(grpc: bool, status: u16, host: &str, path: &str) -> Response<Body> {
    if status == 403 {
        return if grpc {
            h::grpc_reply(
                h::GRPC_PERMISSION_DENIED,
                "Audiences in Jwt are not allowed",
            )
        } else {
            local_reply(StatusCode::FORBIDDEN, "Audiences in Jwt are not allowed")
        };
    }
    let mut resp = if grpc {
        h::grpc_reply(h::GRPC_UNAUTHENTICATED, "Jwt verification fails")
    } else {
        local_reply(StatusCode::UNAUTHORIZED, "Jwt verification fails")
    };
    let challenge = format!("Bearer realm=\"http://{host}{path}\", error=\"invalid_token\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Sets `x-forwarded-client-cert` for the app: the element of this connection appended
/// to any the peer proxy forwarded (Istio's `APPEND_FORWARD`). A plaintext request's
/// header is removed: with no certificate behind it, it could only be forged.
fn set_xfcc<B>(req: &mut Request<B>, conn: &Conn) {
    const XFCC: &str = "x-forwarded-client-cert";
    let Some(mine) = &conn.xfcc else {
        req.headers_mut().remove(XFCC);
        return;
    };
    let prev = req
        .headers()
        .get(XFCC)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    match prev {
        Some(prev) => {
            let value = format!("{prev},{}", mine.to_str().unwrap_or_default());
            h::set_header(req.headers_mut(), XFCC, &value);
        }
        None => {
            req.headers_mut()
                .insert(http::header::HeaderName::from_static(XFCC), mine.clone());
        }
    }
}

async fn forward_upgrade(mut req: Request<Incoming>, app: SocketAddr) -> Response<Body> {
    let downstream = hyper::upgrade::on(&mut req);
    let stream = match TcpStream::connect(app).await {
        Ok(s) => s,
        Err(e) => {
            return local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error: app at {app}: {e}"),
            );
        }
    };
    match h::send_upgrade(stream, req).await {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut resp);
                h::splice_upgrade(downstream, upstream);
            }
            resp.map(Body::Left)
        }
        Err(e) => local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error: app at {app}: {e}"),
        ),
    }
}

/// Logs DENY and AUDIT matches, counts every outcome; returns whether to go on.
pub(crate) fn record_decision(
    ctx: &Context,
    d: &Decision,
    r: &PolicyRequest,
    destination: &str,
    tcp: bool,
) -> bool {
    let event = |decision: &str, policy: &str, rule: Option<usize>, reason: &str| {
        log_authz(r, destination, decision, policy, rule, reason);
    };
    for a in &d.audit {
        ctx.metrics.decision(Outcome::Audit, tcp);
        event("audit", &a.policy, Some(a.rule), "");
    }
    for dr in &d.dry_run {
        if dr.would_deny() {
            ctx.metrics.decision(Outcome::DryRunDeny, tcp);
            event("dry_run_deny", &dr.policy, dr.rule, "");
        } else {
            ctx.metrics.decision(Outcome::DryRunAllow, tcp);
        }
    }
    // CUSTOM needs an external authorizer; Warden has none, so it fails closed as
    // Istio does when the provider cannot be used.
    let allowed = d.allowed && d.custom.is_none();
    if allowed {
        ctx.metrics.decision(Outcome::Allow, tcp);
    } else {
        ctx.metrics.decision(Outcome::Deny, tcp);
        let deciding = d.deciding.as_ref().or(d.custom.as_ref().map(|(_, m)| m));
        let (policy, rule) = deciding.map_or(("", None), |m| (m.policy.as_str(), Some(m.rule)));
        event("deny", policy, rule, &d.reason);
    }
    allowed
}

/// One structured `authz` event (an empty `reason` is left out).
fn log_authz(
    r: &PolicyRequest,
    destination: &str,
    decision: &str,
    policy: &str,
    rule: Option<usize>,
    reason: &str,
) {
    let (method, path) = r
        .http
        .as_ref()
        .map_or(("", ""), |h| (h.method.as_str(), h.path.as_str()));
    tracing::info!(
        decision,
        source_principal = r.source_principal.as_deref().unwrap_or(""),
        source_ip = %r.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        destination,
        destination_port = r.destination_port,
        method,
        path,
        policy,
        rule,
        reason = (!reason.is_empty()).then_some(reason),
        "authz"
    );
}

/// An opaque TCP connection: one authorization at open, then bytes both ways.
async fn tcp<IO>(ctx: &Arc<Context>, conn: Arc<Conn>, mut io: IO)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let snap = ctx.snapshot.load_full();
    let Some(target) = conn.target.clone() else {
        return;
    };
    let mesh = &snap.mesh;
    let host = target.service.host().to_string();
    let labels = TcpLabels {
        conn: conn.labels(&snap, Some(&target)),
        flags: "-",
    };
    let policy_req = conn.policy_request(target.app_port, None, None);
    let decision = mesh.authz.evaluate(&mesh.local.policy, &policy_req);
    ctx.metrics.tcp_open(&labels);
    if !record_decision(ctx, &decision, &policy_req, &host, true) {
        ctx.metrics.tcp_close(&labels, 0, 0);
        // Envoy's network RBAC closes without flushing: the client sees the close.
        return;
    }
    let app = SocketAddr::new(local_app_ip(ctx, &conn), target.app_port);
    let mut upstream = match TcpStream::connect(app).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%app, error = %e, "inbound TCP: the app refused the connection");
            ctx.metrics.tcp_close(&labels, 0, 0);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (received, sent) = copy_both(ctx, &mut io, &mut upstream).await;
    ctx.metrics.tcp_close(&labels, sent, received);
}

/// Copies both ways until both sides close; returns (downstream→upstream,
/// upstream→downstream) byte counts. Draining does not cut a tunnel: the grace period
/// bounds it.
pub(crate) async fn copy_both<A, B>(_ctx: &Context, a: &mut A, b: &mut B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(a, b).await.unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_bytes() {
        for yes in [
            &b"GET / HTTP/1.1"[..],
            b"PRI * HTTP/2.0\r\n",
            b"POS",
            b"DELETE /x",
        ] {
            assert!(looks_like_http(yes), "{yes:?}");
        }
        for no in [&b"\x16\x03\x01"[..], b"hello", b"get / HTTP/1.1", b"GETX"] {
            assert!(!looks_like_http(no), "{no:?}");
        }
    }
}
