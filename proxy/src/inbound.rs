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
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::sock::Coalesced;
use tokio_rustls::LazyConfigAcceptor;

use warden_policy::authz::{Decision, Protocol, Request as PolicyRequest};
use warden_policy::request_authn::Outcome as JwtOutcome;
use warden_policy::resources::MtlsMode;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::conn::copy_both;
use crate::context::{Context, Snapshot};
use crate::http::{self as h, Body, local_reply, split_host_port};
use crate::listener::{accept_loop, serve_http_connection};
use crate::mesh::model::{InboundTarget, PortProtocol, ServiceId};
use crate::mesh::registry::parse_sni;
use crate::mesh::traffic_policy::upstream_protocol;
use crate::metrics::{ConnLabels, Outcome, Reporter, ServiceLabels, TcpLabels};
use crate::pipeline::{self, Exchange, Reply, Xfcc};
use crate::pool::{UpstreamError, UpstreamProtocol};
use crate::telemetry::{Direction, Record, SpanKind, UpstreamInfo};
use crate::tls::{VerifyError, peer_spiffe_id};

/// What is known of a downstream connection once TLS (if any) is done.
#[derive(Debug)]
struct Conn {
    /// Caller address.
    peer: SocketAddr,
    /// The address it connected to.
    local: SocketAddr,
    /// Verified SPIFFE ID, `spiffe://...`.
    principal: Option<String>,
    /// TLS (mutual or not).
    tls: bool,
    /// SNI.
    sni: Option<String>,
    /// The target from the SNI.
    target: Option<InboundTarget>,
    /// This connection's `x-forwarded-client-cert` element (mutual TLS only).
    xfcc: Option<HeaderValue>,
    /// Metric labels of the last request.
    labels: Mutex<Option<CachedLabels>>,
}

/// A connection's metric labels for one (config generation, service) pair.
#[derive(Debug)]
struct CachedLabels {
    generation: u64,
    service: Option<ServiceId>,
    labels: Arc<ConnLabels>,
}

impl Conn {
    /// The metric labels for a request to `target` under `snap`, made once per
    /// connection (and again only if the config or the service changes).
    fn labels(&self, snap: &Snapshot, target: Option<&InboundTarget>) -> Arc<ConnLabels> {
        let key = target.map(|t| t.service.id);
        let generation = snap.mesh.generation;
        let mut cache = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.as_ref()
            && c.generation == generation
            && c.service == key
        {
            return c.labels.clone();
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
        *cache = Some(CachedLabels {
            generation,
            service: key,
            labels: labels.clone(),
        });
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

async fn handle(ctx: &Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut first = [0u8; 1];
    let n = match tokio::time::timeout(ctx.limits.handshake_timeout, stream.peek(&mut first)).await
    {
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
    let deadline = tokio::time::Instant::now() + ctx.limits.handshake_timeout;
    let start = match tokio::time::timeout_at(
        deadline,
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), Coalesced::new(stream)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound: not a TLS client hello");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "inbound: TLS handshake timed out");
            return;
        }
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
    let tls = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            match VerifyError::from_io(&e) {
                Some(why) => tracing::info!(%peer, error = %why, "inbound mTLS handshake refused"),
                None => tracing::debug!(%peer, error = %e, "inbound TLS handshake failed"),
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "inbound: TLS handshake timed out");
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
        tls: true,
        sni,
        target,
        xfcc,
        labels: Mutex::default(),
    });
    let serial = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| X509Certificate::from_der(leaf).ok())
        .map(|(_, c)| crate::identity::hex_lower(c.raw_serial()));
    let principal = conn.principal.clone();
    let serve = async move {
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
    };
    let Some(serial) = serial else {
        serve.await;
        return;
    };
    // A connection lives only as long as its peer's certificate is not revoked: a new
    // CRL listing it closes the connection (and its streams) at once.
    tokio::select! {
        () = serve => {}
        () = revoked(ctx.identity.clone(), &serial) => {
            tracing::info!(%peer, principal = principal.as_deref().unwrap_or_default(), %serial, "closing an inbound connection: the CA revoked the peer's certificate");
        }
    }
}

/// Completes once the trust bundle's CRLs revoke `serial`; never if they don't.
async fn revoked(mut identity: crate::identity::IdentityWatch, serial: &str) {
    loop {
        if identity
            .borrow_and_update()
            .as_ref()
            .is_some_and(|i| i.bundle().revokes(serial))
        {
            return;
        }
        if identity.changed().await.is_err() {
            std::future::pending::<()>().await;
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
        tls: false,
        sni: None,
        target: snap.only_target.clone(),
        xfcc: None,
        labels: Mutex::default(),
    });
    // A port's declared protocol decides, as Istio's listener does: an HTTP port is
    // always read as HTTP (bytes that are not get a 400, never a TCP tunnel past the
    // HTTP filters). Only a workload with several ports is told apart by the bytes.
    let http_port = match &conn.target {
        Some(t) => t.protocol.is_http(),
        None => looks_like_http(&head[..n]),
    };
    if http_port {
        // The mode is checked per request, once the Host header names the port.
        if !snap.accepts_plaintext() {
            refuse_plaintext(&snap, peer, None);
            return;
        }
        http(ctx, conn, Coalesced::new(stream), None).await;
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

/// Serves HTTP on `io` (HTTP/2 or HTTP/1.1 as ALPN said, else detected) within the
/// downstream limits, until it ends, drains or times out.
async fn http<IO>(ctx: &Arc<Context>, conn: Arc<Conn>, io: IO, version: Option<Version>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = conn.peer;
    let handler = ctx.clone();
    serve_http_connection(ctx, io, version, "inbound", Some(peer), move |req| {
        let ctx = handler.clone();
        let conn = conn.clone();
        async move { request(&ctx, &conn, req).await }
    })
    .await;
}

/// A request refused by PeerAuthentication: closes the connection.
#[derive(Debug, thiserror::Error)]
#[error("plaintext refused: PeerAuthentication requires mutual TLS")]
struct PlaintextRefused;

/// How the inbound pipeline stops early: a local reply, or closing the connection.
enum Stop {
    Reply(Reply),
    Close,
}

impl From<Reply> for Stop {
    fn from(r: Reply) -> Self {
        Self::Reply(r)
    }
}

/// One inbound request through the pipeline (see [`crate::pipeline`]), its telemetry
/// (metrics, access log, span) completed when the answer has been sent, whatever its
/// outcome.
async fn request(
    ctx: &Context,
    conn: &Conn,
    req: Request<Incoming>,
) -> Result<Response<Body>, PlaintextRefused> {
    let snap = ctx.snapshot.load_full();
    let mut record = ctx.telemetry.record(Direction::Inbound);
    let mut ex = record.exchange(req);
    if let Some(d) = record.detail() {
        d.sni.clone_from(&conn.sni);
        d.downstream_local = Some(conn.local);
        d.downstream_remote = Some(conn.peer);
    }
    let mut target = None;
    let mut added = Vec::new();
    let staged = stages(
        ctx,
        conn,
        &snap,
        &mut ex,
        &mut target,
        &mut added,
        &mut record,
    );
    record.request_head(
        &ex.req,
        &ex.authority,
        ctx.telemetry.logged_request_headers(),
    );
    if let Some(d) = record.detail() {
        d.destination_port = target.as_ref().map(|t| t.app_port);
    }
    let name = || {
        target
            .as_ref()
            .map(|t| format!("{}:{}/*", t.service.host(), t.service_port))
    };
    ctx.telemetry
        .start_span(&mut record, ex.req.headers_mut(), SpanKind::Server, name);
    let result = match staged {
        Ok(()) => forward(ctx, conn, &snap, ex, target.as_ref())
            .await
            .map(|mut resp| {
                for (name, value) in added {
                    resp.headers_mut().insert(name, value);
                }
                resp
            }),
        Err(stop) => Err(stop),
    };
    let labels = conn.labels(&snap, target.as_ref());
    let (mut resp, flags) = match result {
        Ok(resp) => (resp, "-"),
        Err(Stop::Reply(r)) => (*r.resp, r.flags),
        Err(Stop::Close) => {
            ctx.telemetry.closed(record, labels, "-");
            return Err(PlaintextRefused);
        }
    };
    ctx.telemetry.attach(&mut resp, record, labels, flags);
    Ok(resp)
}

/// The stages before forwarding, in Envoy's order, each on `ex` itself.
fn stages(
    ctx: &Context,
    conn: &Conn,
    snap: &Snapshot,
    ex: &mut Exchange,
    target: &mut Option<InboundTarget>,
    added: &mut Vec<(http::HeaderName, HeaderValue)>,
    record: &mut Record,
) -> Result<(), Stop> {
    pipeline::validate(ex, &ctx.limits, ctx.accept_http10)?;
    pipeline::normalize_path(ex, snap.mesh.settings.path_normalization)?;
    let xfcc = conn.xfcc.as_ref().map_or(Xfcc::Remove, Xfcc::Append);
    pipeline::sanitize(ex, conn.tls, xfcc)?;
    let t = route(snap, conn, ex)?;
    let t = target.insert(t);
    if conn.principal.is_none() && snap.mode(t.app_port) == MtlsMode::Strict {
        refuse_plaintext(snap, conn.peer, Some(t.app_port));
        return Err(Stop::Close);
    }
    // Local rate limits first, as Istio's EnvoyFilter inserts the filter.
    *added = crate::ratelimit::check_exchange(
        ctx,
        &snap.rate_limits,
        ex,
        t.app_port,
        conn.principal.as_deref(),
        Some(conn.peer.ip()),
    )?;
    authenticate(conn.principal.as_deref(), snap, ex)?;
    authorize(ctx, conn, snap, ex, t, record)?;
    Ok(())
}

/// Which service port of this workload the request is for: the connection's (from
/// the SNI, or the workload's only one), else the authority's.
fn route(snap: &Snapshot, conn: &Conn, ex: &Exchange) -> Result<InboundTarget, Reply> {
    if let Some(t) = &conn.target {
        return Ok(t.clone());
    }
    let found = split_host_port(&ex.authority, 80).and_then(|(name, port)| {
        snap.mesh
            .registry
            .inbound_target(&snap.mesh.local, name, port)
    });
    found.or_else(|| snap.only_target.clone()).ok_or_else(|| {
        let local = &snap.mesh.local;
        Reply {
            flags: "NR",
            ..ex.reply(
                StatusCode::NOT_FOUND,
                format!(
                    "warden: workload {}/{} serves no service port for host {:?}",
                    local.namespace, local.name, ex.authority
                ),
            )
        }
    })
}

/// RequestAuthentication (Envoy's `jwt_authn`): a bad token ends the request; a good
/// one leaves its claims; the header edits are made on the request itself.
pub(crate) fn authenticate(
    principal: Option<&str>,
    snap: &Snapshot,
    ex: &mut Exchange,
) -> Result<(), Reply> {
    if !snap.jwt_applies {
        return Ok(());
    }
    let mesh = &snap.mesh;
    let view = h::policy_request(&ex.req, &ex.authority, None);
    match mesh
        .request_authn
        .authenticate(&mesh.local.policy, &view, SystemTime::now())
    {
        JwtOutcome::NoToken { edits } => h::apply_jwt_edits(&mut ex.req, &edits),
        JwtOutcome::Authenticated(a) => {
            h::apply_jwt_edits(&mut ex.req, &a.edits);
            ex.jwt = Some(a.claims);
        }
        JwtOutcome::Rejected(r) => {
            tracing::info!(
                source_principal = principal.unwrap_or(""),
                destination = %ex.authority,
                method = %ex.req.method(),
                path = %ex.req.uri().path(),
                reason = %r.reason(),
                status = r.status,
                "request authentication refused"
            );
            let resp = jwt_reply(ex.grpc, r.status, &ex.authority, ex.req.uri().path());
            return Err(Reply {
                resp: Box::new(resp),
                flags: "UAEX",
            });
        }
    }
    Ok(())
}

/// AuthorizationPolicy (Envoy's RBAC) on the request as it stands: the path normalized
/// above, the headers after every edit, exactly what [`forward`] sends.
fn authorize(
    ctx: &Context,
    conn: &Conn,
    snap: &Snapshot,
    ex: &mut Exchange,
    target: &InboundTarget,
    record: &mut Record,
) -> Result<(), Reply> {
    let mesh = &snap.mesh;
    let view = h::policy_request(&ex.req, &ex.authority, Some(mesh.authz.header_names()));
    let policy_req = conn.policy_request(target.app_port, Some(view), ex.jwt.take());
    let decision = mesh.authz.evaluate(&mesh.local.policy, &policy_req);
    let allowed = record_decision(ctx, &decision, &policy_req, target.service.host(), false);
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

/// Sends the request to the app, in the HTTP version its port is declared with.
async fn forward(
    ctx: &Context,
    conn: &Conn,
    snap: &Snapshot,
    mut ex: Exchange,
    target: Option<&InboundTarget>,
) -> Result<Response<Body>, Stop> {
    let Some(target) = target else {
        return Err(Stop::Close);
    };
    let app = SocketAddr::new(local_app_ip(ctx, conn), target.app_port);
    if ex.websocket {
        return Ok(forward_websocket(ctx, ex, app).await?);
    }
    let mesh = &snap.mesh;
    let pool = mesh.destination_rules.http_pool(
        &mesh.local.namespace,
        &mesh.local.labels,
        &target.service,
        target.service_port,
    );
    let protocol = upstream_protocol(
        target.protocol,
        pool,
        mesh.settings.h2_upgrade_policy,
        ex.downstream == Version::HTTP_2,
        true,
    );
    pipeline::shape_upstream(&mut ex, protocol);
    let (req, ex) = ex.send_off();
    let sent = Instant::now();
    let result = ctx
        .app_pool
        .send((target.app_port, protocol), protocol, req, || async move {
            let s = TcpStream::connect(app).await?;
            s.set_nodelay(true)?;
            Ok(Coalesced::new(s))
        })
        .await;
    match result {
        Ok(resp) => {
            let mut resp = pipeline::sanitize_response(&ex, resp)?;
            // Read by the access log and the span only.
            if ctx.telemetry.detailed() {
                resp.extensions_mut().insert(UpstreamInfo {
                    host: Some(app),
                    cluster: Some(target.cluster.clone()),
                    service_time: Some(sent.elapsed()),
                });
            }
            Ok(resp)
        }
        Err(e) => {
            tracing::warn!(%app, error = %e, "inbound: the app did not answer");
            let flags = if matches!(e, UpstreamError::Connect(_)) {
                "UF"
            } else {
                "UC"
            };
            Err(Stop::Reply(Reply {
                flags,
                ..ex.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "upstream connect error or disconnect/reset before headers: app at {app}: {e}"
                    ),
                )
            }))
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

/// A WebSocket upgrade: its own connection to the app; on `101` the two upgraded
/// connections are spliced (with the idle timeout), on anything else the answer goes
/// back as [`pipeline::sanitize_response`] says.
async fn forward_websocket(
    ctx: &Context,
    mut ex: Exchange,
    app: SocketAddr,
) -> Result<Response<Body>, Reply> {
    pipeline::shape_upstream(&mut ex, UpstreamProtocol::Http1);
    let downstream = hyper::upgrade::on(&mut ex.req);
    let stream = TcpStream::connect(app).await.map_err(|e| Reply {
        flags: "UF",
        ..ex.reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error: app at {app}: {e}"),
        )
    })?;
    let (req, ex) = ex.send_off();
    match h::send_upgrade(stream, req).await {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut resp);
                h::splice_upgrade(downstream, upstream, ctx.limits.idle_timeout);
            }
            pipeline::sanitize_response(&ex, resp)
        }
        Err(e) => Err(Reply {
            flags: "UC",
            ..ex.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error: app at {app}: {e}"),
            )
        }),
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
    let mut record = ctx.telemetry.record(Direction::Inbound);
    if let Some(d) = record.detail() {
        d.sni.clone_from(&conn.sni);
        d.downstream_local = Some(conn.local);
        d.downstream_remote = Some(conn.peer);
        d.destination_port = Some(target.app_port);
    }
    let policy_req = conn.policy_request(target.app_port, None, None);
    let decision = mesh.authz.evaluate(&mesh.local.policy, &policy_req);
    ctx.metrics.tcp_open(&labels);
    let allowed = record_decision(ctx, &decision, &policy_req, &host, true);
    record.authz(&decision, allowed, None);
    if let Some(d) = record.detail() {
        d.authz_workload = Some(mesh.local.key.clone());
    }
    if !allowed {
        ctx.telemetry.tcp_closed(record, &labels, 0, 0);
        // Envoy's network RBAC closes without flushing: the client sees the close.
        return;
    }
    let app = SocketAddr::new(local_app_ip(ctx, &conn), target.app_port);
    let mut upstream = match TcpStream::connect(app).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%app, error = %e, "inbound TCP: the app refused the connection");
            ctx.telemetry.tcp_closed(record, &labels, 0, 0);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Some(d) = record.detail() {
        d.upstream.host = Some(app);
        d.upstream.cluster = Some(target.cluster.clone());
    }
    let (received, sent) = copy_both(&mut io, &mut upstream, ctx.limits.idle_timeout).await;
    ctx.telemetry.tcp_closed(record, &labels, sent, received);
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
