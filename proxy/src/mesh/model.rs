//! The mesh model the proxy works from: [`Service`]s (one per `ServiceEntry`) with
//! their ports and [`Endpoint`]s, the workloads proxies run for ([`LocalWorkload`], one
//! per `WorkloadEntry`), and what the listeners are told ([`InboundTarget`],
//! [`OutboundTcp`]). Built by [`super::registry::Registry::build`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warden_policy::authz;
use warden_proto::SpiffeId;

use crate::tls::AllowedIds;

/// Where a proxy's inbound (mTLS) listener is when its `WorkloadEntry` does not say.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Annotation on a `WorkloadEntry` overriding where its proxy's inbound listener is.
pub const INBOUND_PORT_ANNOTATION: &str = "warden.io/inbound-port";
/// The service account of a workload that names none (Kubernetes' default).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// What a service port speaks, from `ServiceEntry.spec.ports[].protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    /// `HTTP`: HTTP/1.1 (HTTP/2 with prior knowledge is accepted as well).
    Http,
    /// `HTTP2`.
    Http2,
    /// `GRPC`, `GRPC-WEB`: HTTP/2 with gRPC semantics.
    Grpc,
    /// `TCP`, `TLS`, `HTTPS`, `MONGO`, `MYSQL`, `REDIS`, or unset: opaque bytes.
    Tcp,
}

/// The protocol names accepted (case-insensitively), as Istio's `protocol.Parse`.
const PROTOCOLS: &[(&str, PortProtocol)] = &[
    ("HTTP", PortProtocol::Http),
    ("HTTPS", PortProtocol::Tcp),
    ("HTTP2", PortProtocol::Http2),
    ("GRPC", PortProtocol::Grpc),
    ("GRPC-WEB", PortProtocol::Grpc),
    ("TCP", PortProtocol::Tcp),
    ("TLS", PortProtocol::Tcp),
    ("MONGO", PortProtocol::Tcp),
    ("MYSQL", PortProtocol::Tcp),
    ("REDIS", PortProtocol::Tcp),
];

impl PortProtocol {
    /// Parses a `protocol` value, case-insensitively; empty is [`PortProtocol::Tcp`].
    /// The error says what was expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(Self::Tcp);
        }
        if let Some((_, p)) = PROTOCOLS.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
            return Ok(*p);
        }
        let expected = PROTOCOLS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        if s.eq_ignore_ascii_case("UDP") {
            return Err(format!(
                "{s:?} is not supported: the proxy carries TCP only; expected one of {expected}"
            ));
        }
        Err(format!("unknown protocol {s:?}, expected {expected}"))
    }

    /// Whether requests on it are HTTP (HTTP/1.1, HTTP/2 or gRPC).
    pub fn is_http(self) -> bool {
        !matches!(self, Self::Tcp)
    }

    /// The name, as Istio writes it (`HTTP`, `HTTP2`, `GRPC`, `TCP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Tcp => "TCP",
        }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ServiceEntry.spec.resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `NONE` (the default): connect to the address the client asked for.
    None,
    /// `STATIC`: the endpoints' addresses.
    Static,
    /// `DNS`.
    Dns,
    /// `DNS_ROUND_ROBIN`.
    DnsRoundRobin,
    /// `DYNAMIC_DNS`.
    DynamicDns,
}

impl Resolution {
    pub(crate) fn parse(s: Option<&str>) -> Result<Self, String> {
        Ok(match s.unwrap_or("NONE") {
            "NONE" => Self::None,
            "STATIC" => Self::Static,
            "DNS" => Self::Dns,
            "DNS_ROUND_ROBIN" => Self::DnsRoundRobin,
            "DYNAMIC_DNS" => Self::DynamicDns,
            other => {
                return Err(format!(
                    "{other:?} is not a resolution: expected NONE, STATIC, DNS, DNS_ROUND_ROBIN or DYNAMIC_DNS"
                ));
            }
        })
    }
}

/// Which namespaces see a service (`spec.exportTo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTo {
    /// Every namespace (`*`, or `exportTo` unset).
    All,
    /// Only these (`.` is the service's own; `~` is none).
    Namespaces(Vec<String>),
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// The service port clients connect to.
    pub number: u16,
    /// Its name (may be empty); `WorkloadEntry.ports` map names to endpoint ports.
    pub name: String,
    /// What it speaks.
    pub protocol: PortProtocol,
    /// The port on the endpoints when their `ports` do not name this port.
    pub target_port: Option<u16>,
}

/// How the proxy reaches an endpoint. Every `MESH_INTERNAL` endpoint is
/// [`Dial::Address`]; the other two only occur in `MESH_EXTERNAL` services (see
/// [`crate::egress`]), whose [`Endpoint::address`] is then unspecified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// Its IP [`Endpoint::address`].
    Address,
    /// A DNS name, resolved at each new connection (`resolution: DNS` or
    /// `DNS_ROUND_ROBIN`, an endpoint given by name).
    Name(String),
    /// The host the client asked for: `resolution: NONE` and `DYNAMIC_DNS` (at the
    /// port asked for), `DNS` without endpoints (at the endpoint port).
    AsRequested,
}

/// One endpoint of a service: a `WorkloadEntry` it selects, or an inline endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The `WorkloadEntry`'s name; `None` for inline endpoints.
    pub workload: Option<String>,
    /// The namespace of the `WorkloadEntry` (of the `ServiceEntry` for inline ones).
    pub namespace: String,
    /// Its IP address.
    pub address: IpAddr,
    /// Where its proxy accepts mTLS: the address and the inbound port of the
    /// `WorkloadEntry` at that address (inline endpoints too), else 15006.
    pub inbound: SocketAddr,
    /// `spiffe://<td>/ns/<ns>/sa/<serviceAccount or default>`.
    pub spiffe_id: SpiffeId,
    /// Port name → port on this endpoint (`ports`).
    pub ports: BTreeMap<String, u16>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// How the proxy reaches it.
    pub dial: Dial,
}

impl Endpoint {
    /// The application port on this endpoint for a service port, by Istio's rule: the
    /// endpoint's port of that name, else the service port's `targetPort`, else its number.
    pub fn app_port(&self, port: &ServicePortInfo) -> u16 {
        (!port.name.is_empty())
            .then(|| self.ports.get(&port.name).copied())
            .flatten()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

/// A service's place in its registry, assigned when the registry is built: what
/// per-service state (TLS configs, metric labels, pool keys) is keyed by. It names the
/// same service only within one config generation; keys that outlive a snapshot pair
/// it with the generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub(crate) usize);

/// A service: one `ServiceEntry`.
#[derive(Debug)]
pub struct Service {
    /// Its id in the registry that holds it.
    pub id: ServiceId,
    /// The `ServiceEntry`'s name.
    pub name: String,
    /// The `ServiceEntry`'s namespace.
    pub namespace: String,
    /// Its hosts, lower case, without a trailing dot, in declared order (never empty).
    pub hosts: Vec<String>,
    /// Its ports, in declared order (never empty; numbers and names unique).
    pub ports: Vec<ServicePortInfo>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Secure naming: the endpoints' SPIFFE IDs plus `subjectAltNames`. Fails closed
    /// (allows nobody) for a service with neither.
    pub allowed_ids: AllowedIds,
    /// `location: MESH_INTERNAL`: its endpoints run proxies and speak mTLS.
    /// `MESH_EXTERNAL` (the default): reached as its DestinationRule's `tls` says,
    /// plaintext without one ([`crate::egress`]).
    pub mesh_internal: bool,
    /// `resolution`.
    pub resolution: Resolution,
    /// `exportTo`.
    pub export_to: ExportTo,
}

impl Service {
    /// A service with one host and no ports or endpoints, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(host: &str, namespace: &str) -> Self {
        Self {
            id: ServiceId(0),
            name: host.split('.').next().unwrap_or(host).to_string(),
            namespace: namespace.to_string(),
            hosts: vec![host.to_string()],
            ports: Vec::new(),
            endpoints: Vec::new(),
            allowed_ids: AllowedIds::one_of([]),
            mesh_internal: true,
            resolution: Resolution::Static,
            export_to: ExportTo::All,
        }
    }

    /// The first host, as Istio names a service in telemetry.
    pub fn host(&self) -> &str {
        self.hosts.first().map_or("", String::as_str)
    }

    /// The first host that is not a wildcard: the name to resolve or send as SNI
    /// when the client named none (a TCP connection to a `MESH_EXTERNAL` service).
    pub fn exact_host(&self) -> Option<&str> {
        self.hosts
            .iter()
            .map(String::as_str)
            .find(|h| !h.starts_with('*'))
    }

    /// The port numbered `number`.
    pub fn port(&self, number: u16) -> Option<&ServicePortInfo> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The port named `name`.
    pub fn port_by_name(&self, name: &str) -> Option<&ServicePortInfo> {
        self.ports
            .iter()
            .find(|p| !p.name.is_empty() && p.name == name)
    }

    /// The endpoint at `address`.
    pub fn endpoint_at(&self, address: IpAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.address == address)
    }

    /// Whether clients in `namespace` see it (`exportTo`).
    pub fn visible_from(&self, namespace: &str) -> bool {
        match &self.export_to {
            ExportTo::All => true,
            ExportTo::Namespaces(ns) => ns.iter().any(|n| n == namespace),
        }
    }
}

/// A workload a proxy runs for: one `WorkloadEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalWorkload {
    /// The `WorkloadEntry`'s name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its IP address.
    pub address: IpAddr,
    /// Its proxy's inbound (mTLS) port.
    pub inbound_port: u16,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub spiffe_id: SpiffeId,
    /// Port name → application port.
    pub ports: BTreeMap<String, u16>,
    /// Who policies select: namespace and labels.
    pub policy: authz::Workload,
    /// `namespace/name`, as the access log names the workload whose policies decided
    /// (made once here, not per request).
    pub key: Arc<str>,
}

impl LocalWorkload {
    /// Where its proxy accepts mTLS.
    pub fn inbound(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.inbound_port)
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            workload: Some(self.name.clone()),
            namespace: self.namespace.clone(),
            address: self.address,
            inbound: self.inbound(),
            spiffe_id: self.spiffe_id.clone(),
            ports: self.ports.clone(),
            labels: self.labels.clone(),
            dial: Dial::Address,
        }
    }
}

/// Where inbound traffic for one service port goes on the local workload.
#[derive(Debug, Clone)]
pub struct InboundTarget {
    /// The application port.
    pub app_port: u16,
    /// What it speaks (the service port's protocol).
    pub protocol: PortProtocol,
    /// The service.
    pub service: Arc<Service>,
    /// The service port it was reached by.
    pub service_port: u16,
    /// Envoy's name for the inbound cluster (`inbound|9080||`), made once with the
    /// target, for the access log and the span.
    pub cluster: Arc<str>,
}

impl InboundTarget {
    /// The target of `service`'s port `service_port`, served on `app_port`.
    pub fn new(
        app_port: u16,
        protocol: PortProtocol,
        service: Arc<Service>,
        service_port: u16,
    ) -> Self {
        Self {
            app_port,
            protocol,
            service,
            service_port,
            cluster: Arc::from(format!("inbound|{app_port}||")),
        }
    }
}

/// A port the local proxy should listen on for outbound TCP to a service.
#[derive(Debug, Clone, Copy)]
pub struct OutboundTcpPort<'a> {
    /// The port number (the service port).
    pub port: u16,
    /// The service.
    pub service: &'a Arc<Service>,
    /// Its port.
    pub service_port: &'a ServicePortInfo,
}

/// Why an outbound TCP service port gets no listener.
#[derive(Debug, Clone, Copy)]
pub enum PortConflict<'a> {
    /// The local workload's application uses that port.
    AppPort,
    /// The local proxy's inbound listener uses that port.
    InboundPort,
    /// Another TCP service has the same port number, and TCP carries no host to tell
    /// them apart: the first one (in load order) has it.
    Service(&'a Arc<Service>),
}

impl fmt::Display for PortConflict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AppPort => f.write_str("the local workload's application uses this port"),
            Self::InboundPort => f.write_str("the proxy's inbound listener uses this port"),
            Self::Service(s) => write!(
                f,
                "TCP service {} ({}/{}) already has this port; TCP carries no host to tell them apart",
                s.host(),
                s.namespace,
                s.name
            ),
        }
    }
}

/// An outbound TCP service port that gets no listener, and why.
#[derive(Debug, Clone, Copy)]
pub struct SkippedPort<'a> {
    /// The port number.
    pub port: u16,
    /// The service left without a listener on it.
    pub service: &'a Arc<Service>,
    /// Why.
    pub conflict: PortConflict<'a>,
}

/// What [`Registry::outbound_tcp_ports`] plans: listeners, and ports left out (to warn
/// about).
#[derive(Debug, Clone, Default)]
pub struct OutboundTcp<'a> {
    /// One per distinct port number, ascending.
    pub listen: Vec<OutboundTcpPort<'a>>,
    /// TCP service ports without a listener.
    pub skipped: Vec<SkippedPort<'a>>,
}
