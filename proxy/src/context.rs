//! What every connection shares: the config snapshot in force (swapped atomically when
//! the config directory changes), the TLS sides, the upstream pools, the metrics, the
//! downstream limits and the drain signal.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use warden_policy::resources::MtlsMode;

use crate::conn::{Drain, Limits, connection_permits};
use crate::identity::IdentityWatch;
use crate::mesh::config::MeshConfig;
use crate::mesh::model::{InboundTarget, Service, ServiceId, ServicePortInfo};
use crate::metrics::{ConnLabels, Metrics, Peer, Reporter, ServiceLabels};
use crate::pool::{Pool, UpstreamProtocol};
use crate::tls::{ClientAuth, ServerOptions, TlsClient, TlsServer, alpn};

/// How long to wait for a TCP connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN offered to a peer proxy for HTTP/1.1, HTTP/2 and opaque TCP.
const ALPN_H1: &[&[u8]] = &[b"http/1.1"];
const ALPN_H2: &[&[u8]] = &[b"h2"];
const ALPN_TCP: &[&[u8]] = &[b"istio"];

/// Client TLS configs for one destination service: secure naming is the service's
/// identities, and each config offers one ALPN list.
#[derive(Debug)]
pub struct ServiceTls {
    /// HTTP/1.1.
    pub h1: Arc<ClientConfig>,
    /// HTTP/2.
    pub h2: Arc<ClientConfig>,
    /// Opaque TCP.
    pub tcp: Arc<ClientConfig>,
}

impl ServiceTls {
    /// The config for a protocol.
    pub fn for_protocol(&self, p: Option<UpstreamProtocol>) -> Arc<ClientConfig> {
        match p {
            Some(UpstreamProtocol::Http1) => self.h1.clone(),
            Some(UpstreamProtocol::Http2) => self.h2.clone(),
            None => self.tcp.clone(),
        }
    }
}

/// One config generation with everything derived from it that requests need.
#[derive(Debug)]
pub struct Snapshot {
    /// The config.
    pub mesh: Arc<MeshConfig>,
    /// Client TLS configs by service.
    pub tls: HashMap<ServiceId, ServiceTls>,
    /// This workload as a metrics peer.
    pub local_peer: Arc<Peer>,
    /// Outbound metric labels by (service, endpoint index).
    outbound_labels: HashMap<(ServiceId, usize), Arc<ConnLabels>>,
    /// Outbound metric labels of a request that was not routed.
    pub unknown_outbound: Arc<ConnLabels>,
    /// Outbound metric labels of a request passed through (`ALLOW_ANY`): Istio's
    /// `PassthroughCluster`.
    pub passthrough_labels: Arc<ConnLabels>,
    /// The workload's inbound target when it has exactly one (for connections that
    /// name no service port).
    pub only_target: Option<InboundTarget>,
    /// Outbound TCP listener ports with the service port each one tunnels to.
    pub outbound_tcp: HashMap<u16, (Arc<Service>, ServicePortInfo)>,
    /// Whether any RequestAuthentication applies to this workload.
    pub jwt_applies: bool,
    /// Load-balancing state of this generation: turns, requests in flight per
    /// endpoint, consistent-hash rings.
    pub balance: crate::balance::Tables,
    /// The local rate limits of this workload.
    pub rate_limits: Vec<Arc<warden_policy::ratelimit::Limit>>,
    /// The servers of the Gateways that select this workload (served in gateway mode).
    pub gateway_servers: Vec<warden_policy::route::GatewayServer>,
    /// PeerAuthentication mode by app port (0: the workload level).
    modes: HashMap<u16, MtlsMode>,
    /// The mode for ports not in `modes`.
    workload_mode: MtlsMode,
}

impl Snapshot {
    /// Derives a snapshot from `mesh`.
    pub fn new(mesh: Arc<MeshConfig>, client: &TlsClient) -> Self {
        let local = &mesh.local;
        let mut tls = HashMap::new();
        for svc in mesh.registry.services() {
            let make = |alpn_list: &[&[u8]]| {
                client.config_with_alpn(svc.allowed_ids.clone(), Some(alpn(alpn_list)))
            };
            tls.insert(
                svc.id,
                ServiceTls {
                    h1: make(ALPN_H1),
                    h2: make(ALPN_H2),
                    tcp: make(ALPN_TCP),
                },
            );
        }
        let workload_mode = mesh.peer_authn.mode(&local.policy, 0).mode;
        let mut modes = HashMap::new();
        let mut targets = mesh.registry.inbound_targets(local);
        for t in &targets {
            modes.insert(
                t.app_port,
                mesh.peer_authn.mode(&local.policy, t.app_port).mode,
            );
        }
        let only_target = if targets.len() == 1 {
            targets.pop()
        } else {
            None
        };
        let outbound_tcp = mesh
            .registry
            .outbound_tcp_ports(local)
            .listen
            .into_iter()
            .map(|p| (p.port, (p.service.clone(), p.service_port.clone())))
            .collect();
        for port in local.ports.values() {
            modes.insert(*port, mesh.peer_authn.mode(&local.policy, *port).mode);
        }
        let local_peer = Peer::workload(
            &local.name,
            &local.namespace,
            Some(local.spiffe_id.as_str()),
            &local.labels,
        );
        let mut outbound_labels = HashMap::new();
        for svc in mesh.registry.services() {
            // A MESH_EXTERNAL service is named by its host, as istiod names a
            // ServiceEntry's service (`destination_service_name` is the host), and its
            // endpoints are no known workload.
            let service = if svc.mesh_internal {
                ServiceLabels::new(svc.host(), &svc.namespace)
            } else {
                Arc::new(ServiceLabels {
                    host: Arc::from(svc.host()),
                    name: Arc::from(svc.host()),
                    namespace: Arc::from(svc.namespace.as_str()),
                })
            };
            for (i, ep) in svc.endpoints.iter().enumerate() {
                let destination = match &ep.workload {
                    _ if !svc.mesh_internal => Peer::unknown(),
                    Some(w) => {
                        Peer::workload(w, &ep.namespace, Some(ep.spiffe_id.as_str()), &ep.labels)
                    }
                    None => Peer::principal_only(Some(ep.spiffe_id.as_str())),
                };
                let labels = ConnLabels::new(
                    Reporter::Source,
                    local_peer.clone(),
                    destination,
                    service.clone(),
                    "unknown",
                );
                outbound_labels.insert((svc.id, i), Arc::new(labels));
            }
        }
        let passthrough_labels = Arc::new(ConnLabels::new(
            Reporter::Source,
            local_peer.clone(),
            Peer::unknown(),
            ServiceLabels::new("PassthroughCluster", "unknown"),
            "unknown",
        ));
        let unknown_outbound = Arc::new(ConnLabels::new(
            Reporter::Source,
            local_peer.clone(),
            Peer::unknown(),
            ServiceLabels::unknown(),
            "unknown",
        ));
        Self {
            jwt_applies: mesh.request_authn.applies_to(&local.policy),
            balance: crate::balance::Tables::new(mesh.registry.services()),
            gateway_servers: mesh.routes.gateway_servers(&local.labels),
            rate_limits: mesh
                .rate_limits
                .for_workload(&local.namespace, &local.labels),
            local_peer,
            outbound_labels,
            unknown_outbound,
            passthrough_labels,
            only_target,
            outbound_tcp,
            tls,
            modes,
            workload_mode,
            mesh,
        }
    }

    /// The PeerAuthentication mode on an app port.
    pub fn mode(&self, port: u16) -> MtlsMode {
        match self.modes.get(&port) {
            Some(m) => *m,
            None => self.workload_mode,
        }
    }

    /// The mode for a connection whose port is not known yet (TLS without SNI): STRICT
    /// if any port is, so a client certificate is asked for whenever one may be needed.
    pub fn strictest(&self) -> MtlsMode {
        if self.workload_mode == MtlsMode::Strict
            || self.modes.values().any(|m| *m == MtlsMode::Strict)
        {
            MtlsMode::Strict
        } else {
            self.workload_mode
        }
    }

    /// The outbound labels for endpoint `index` of `service`.
    pub fn outbound_labels(&self, service: &Arc<Service>, index: usize) -> Arc<ConnLabels> {
        self.outbound_labels
            .get(&(service.id, index))
            .unwrap_or(&self.unknown_outbound)
            .clone()
    }

    /// Whether any port of the workload accepts plaintext (is not STRICT).
    pub fn accepts_plaintext(&self) -> bool {
        self.workload_mode != MtlsMode::Strict
            || self.modes.values().any(|m| *m != MtlsMode::Strict)
    }

    /// The metrics peer for a caller at `ip` with SPIFFE ID `principal`: the registered
    /// workload at that address if its identity matches, else one known by its ID.
    pub fn peer_at(&self, ip: IpAddr, principal: Option<&str>) -> Arc<Peer> {
        match self.mesh.registry.workload_by_address(ip) {
            Some(w) if principal.is_none_or(|p| p == w.spiffe_id.as_str()) => {
                Peer::workload(&w.name, &w.namespace, principal, &w.labels)
            }
            _ => Peer::principal_only(principal),
        }
    }
}

/// Which pool key an HTTP upstream connection to a peer proxy has: the config
/// generation, the service, the endpoint and the protocol.
pub type MeshKey = (u64, ServiceId, u16, SocketAddr, UpstreamProtocol);

/// Everything the listeners share.
#[derive(Debug)]
pub struct Context {
    /// The snapshot in force.
    pub snapshot: ArcSwap<Snapshot>,
    /// The SVID and bundle.
    pub identity: IdentityWatch,
    /// Inbound TLS requiring a client SVID (STRICT).
    pub tls_strict: TlsServer,
    /// Inbound TLS accepting clients without one (PERMISSIVE).
    pub tls_permissive: TlsServer,
    /// Outbound TLS.
    pub tls_client: TlsClient,
    /// Inbound → app connections, by app port and protocol.
    pub app_pool: Pool<(u16, UpstreamProtocol)>,
    /// Outbound → peer proxy connections.
    pub mesh_pool: Pool<MeshKey, crate::pool::UpBody>,
    /// Outbound connections to hosts outside the registry (`ALLOW_ANY`).
    pub passthrough_pool: Pool<(String, u16), crate::pool::UpBody>,
    /// Outbound → `MESH_EXTERNAL` endpoints: connections and TLS configs.
    pub egress: crate::egress::Egress,
    /// Circuit breakers by destination (DestinationRule `connectionPool`).
    pub circuits: crate::circuit::Circuits,
    /// Endpoint health by outlier detection (DestinationRule `outlierDetection`).
    pub outliers: crate::outlier::Outliers,
    /// Local rate limit buckets.
    pub ratelimits: crate::ratelimit::Buckets,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Metrics, access log and spans, completed per exchange.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Drain.
    pub drain: Drain,
    /// Downstream limits and timeouts.
    pub limits: Limits,
    /// One permit per downstream connection allowed ([`Limits::max_connections`]).
    pub connection_permits: Arc<Semaphore>,
    /// Accept HTTP/1.0 requests (Istio's `HTTP10` proxy metadata); 426 otherwise.
    pub accept_http10: bool,
    /// Round-robin position over endpoints.
    next_endpoint: AtomicU64,
    /// Proxies in front of a gateway whose `X-Forwarded-For` entries are trusted
    /// (Istio's `numTrustedProxies`, Envoy's `xff_num_trusted_hops`).
    pub num_trusted_proxies: usize,
    /// The address the listeners are bound to (the workload's).
    pub local_ip: IpAddr,
}

impl Context {
    /// A context for the workload at `local_ip`, starting from `mesh`.
    pub fn new(
        mesh: Arc<MeshConfig>,
        identity: IdentityWatch,
        drain: Drain,
        local_ip: IpAddr,
        limits: Limits,
        telemetry: Arc<crate::telemetry::Telemetry>,
    ) -> Self {
        let tls_client = TlsClient::new(identity.clone(), alpn(ALPN_H1));
        let server = |client_auth| {
            TlsServer::new(
                identity.clone(),
                ServerOptions {
                    client_auth,
                    ..ServerOptions::default()
                },
            )
        };
        let snapshot = Snapshot::new(mesh, &tls_client);
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            tls_strict: server(ClientAuth::Required),
            tls_permissive: server(ClientAuth::Optional),
            tls_client,
            app_pool: Pool::default(),
            mesh_pool: Pool::default(),
            passthrough_pool: Pool::default(),
            egress: crate::egress::Egress::default(),
            circuits: crate::circuit::Circuits::default(),
            outliers: crate::outlier::Outliers::default(),
            ratelimits: crate::ratelimit::Buckets::default(),
            metrics: telemetry.metrics.clone(),
            telemetry,
            drain,
            connection_permits: connection_permits(&limits),
            limits,
            accept_http10: false,
            next_endpoint: AtomicU64::new(0),
            num_trusted_proxies: 0,
            identity,
            local_ip,
        }
    }

    /// Puts a new config in force for new requests; pooled connections to peers made
    /// under the old one are dropped (their secure naming may have changed), and so
    /// are egress connections and TLS configs (their DestinationRule may have).
    pub fn apply(&self, mesh: Arc<MeshConfig>) {
        self.snapshot
            .store(Arc::new(Snapshot::new(mesh, &self.tls_client)));
        self.mesh_pool.clear();
        self.egress.clear();
    }

    /// Whether the proxy has an SVID and a bundle.
    pub fn has_identity(&self) -> bool {
        self.identity.borrow().is_some()
    }

    /// The next endpoint index out of `n` (round robin).
    pub fn pick(&self, n: usize) -> usize {
        let i = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        usize::try_from(i % n.max(1) as u64).unwrap_or(0)
    }

    /// A TCP connection from this workload's address (so the peer sees the caller's
    /// address, as pods do) to `addr`.
    pub async fn connect_from_local(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.connect_from_local_within(addr, CONNECT_TIMEOUT).await
    }

    /// [`Context::connect_from_local`] giving up after `limit` (a DestinationRule's
    /// `connectionPool.tcp.connectTimeout`).
    pub async fn connect_from_local_within(
        &self,
        addr: SocketAddr,
        limit: Duration,
    ) -> std::io::Result<TcpStream> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if self.local_ip.is_ipv4() == addr.is_ipv4() && !self.local_ip.is_unspecified() {
            socket.bind(SocketAddr::new(self.local_ip, 0))?;
        }
        let stream = tokio::time::timeout(limit, socket.connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out after {limit:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
