//! The local mesh registry: Istio's `ServiceEntry` and `WorkloadEntry` compiled into
//! [`Service`]s with their [`Endpoint`]s, and the workloads proxies run for
//! ([`LocalWorkload`]), as istiod's ServiceEntry controller builds them
//! (`pilot/pkg/serviceregistry/serviceentry`).
//!
//! - A `WorkloadEntry` is one workload: an IP address (no DNS here), labels, a service
//!   account (`default` when unset) that makes its SPIFFE ID
//!   `spiffe://<td>/ns/<ns>/sa/<sa>`, named ports, and where its proxy listens for
//!   inbound mTLS ([`INBOUND_PORT_ANNOTATION`], default [`DEFAULT_INBOUND_PORT`]).
//! - A `ServiceEntry` is a service: hosts, ports, and endpoints either inline
//!   (`spec.endpoints`) or selected by label among the `WorkloadEntry`s of its namespace
//!   (`spec.workloadSelector`, an empty selector selects them all, as in Istio). Its
//!   [`Service::allowed_ids`] are the endpoints' SPIFFE IDs plus `subjectAltNames`: the
//!   secure-naming set a client checks the server against.
//!
//! [`Registry::resolve`] answers "which service and port is this Host (or SNI) for" with
//! hash lookups precomputed at build time: exact hosts, the Kubernetes short names a pod
//! may use (`reviews`, `reviews.ns`, `reviews.ns.svc` for
//! `reviews.ns.svc.cluster.local`, as Istio's `GenerateAltVirtualHosts`), then wildcard
//! hosts (`*.example.com`, longest suffix first).
//!
//! Deliberate differences from Istio, each refused with an error naming the resource and
//! field rather than half-applied:
//! - Addresses must be IP literals (the proxy resolves no DNS names), also for
//!   `resolution: DNS`.
//! - `subjectAltNames` must be SPIFFE IDs: the TLS client checks the server's SPIFFE ID,
//!   and a bare DNS SAN could never match one.
//! - One `ServiceEntry` per host: Istio merges or picks between `ServiceEntry`s that
//!   share a host (by namespace and age); Warden refuses the ambiguity.
//! - Two `WorkloadEntry`s cannot share an address (two pods cannot share an IP).
//! - `spec.addresses` (VIPs) are accepted and ignored: there is no traffic capture.
//!
//! A port without `protocol` is TCP: Istio would sniff HTTP on it; Warden proxies its
//! bytes, which is correct for any protocol (HTTP included, without L7 features).
//! Declare `HTTP`, `HTTP2` or `GRPC` to get them.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warden_policy::authz;
use warden_policy::loader::{CompileError, ConfigSet, Loaded};
use warden_policy::resources::{ServiceEntrySpec, ServicePort, WorkloadEntrySpec};
use warden_proto::SpiffeId;

use crate::tls::AllowedIds;

/// Where a proxy's inbound (mTLS) listener is when its `WorkloadEntry` does not say.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Annotation on a `WorkloadEntry` overriding where its proxy's inbound listener is.
pub const INBOUND_PORT_ANNOTATION: &str = "warden.io/inbound-port";
/// The service account of a workload that names none (Kubernetes' default).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// `.svc.` and the Kubernetes cluster DNS domain: hosts `<name>.<ns>.svc.cluster.local`
/// also answer to their short names.
const SVC_SUFFIX: &str = ".svc.cluster.local";

/// The SNI prefix of Istio's outbound cluster names, which sidecars send to servers.
const SNI_PREFIX: &str = "outbound_.";

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
    fn parse(s: Option<&str>) -> Result<Self, String> {
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

/// A service: one `ServiceEntry`.
#[derive(Debug)]
pub struct Service {
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
}

impl LocalWorkload {
    /// Where its proxy accepts mTLS.
    pub fn inbound(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.inbound_port)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            workload: Some(self.name.clone()),
            namespace: self.namespace.clone(),
            address: self.address,
            inbound: self.inbound(),
            spiffe_id: self.spiffe_id.clone(),
            ports: self.ports.clone(),
            labels: self.labels.clone(),
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

/// The registry: services, workloads, and the indexes that answer lookups.
#[derive(Debug, Default)]
pub struct Registry {
    services: Vec<Arc<Service>>,
    workloads: Vec<LocalWorkload>,
    /// namespace → name → index in `workloads`.
    workload_names: HashMap<String, HashMap<String, usize>>,
    /// address → index in `workloads`.
    workload_addresses: HashMap<IpAddr, usize>,
    /// Exact (non-wildcard) host → index in `services`.
    hosts: HashMap<String, usize>,
    /// `name.ns`, `name.ns.svc` of `name.ns.svc.cluster.local` hosts → service.
    aliases: HashMap<String, usize>,
    /// namespace → `name` of `name.<namespace>.svc.cluster.local` hosts → service.
    short_names: HashMap<String, HashMap<String, usize>>,
    /// Wildcard host without its `*` (`.example.com`) → service.
    wildcards: HashMap<String, usize>,
    /// Endpoint address → (service, endpoint) indexes.
    backed_by: HashMap<IpAddr, Vec<(usize, usize)>>,
}

impl Registry {
    /// Builds the registry from the `ServiceEntry`s and `WorkloadEntry`s of `set`, with
    /// SPIFFE IDs in `trust_domain`. All or nothing: every error names the file, the
    /// resource, the field and what was expected.
    pub fn build(set: &ConfigSet, trust_domain: &str) -> Result<Self, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut r = Self::default();
        let mut workload_origins: Vec<&Loaded<WorkloadEntrySpec>> = Vec::new();
        for we in &set.workload_entries {
            let mut e = Errors::new("WorkloadEntry", we);
            let Some(w) = workload_entry(we, trust_domain, &mut e) else {
                errors.extend(e.list);
                continue;
            };
            if let Some(&first) = r.workload_addresses.get(&w.address) {
                let (first_we, first_w) = (workload_origins[first], &r.workloads[first]);
                e.push(
                    "spec.address",
                    format!(
                        "{} is also the address of WorkloadEntry {}/{} ({}): two workloads cannot share an address",
                        w.address, first_w.namespace, first_w.name, first_we.origin
                    ),
                );
                errors.extend(e.list);
                continue;
            }
            let i = r.workloads.len();
            r.workload_addresses.insert(w.address, i);
            r.workload_names
                .entry(w.namespace.clone())
                .or_default()
                .insert(w.name.clone(), i);
            r.workloads.push(w);
            workload_origins.push(we);
        }

        let mut service_origins: Vec<&Loaded<ServiceEntrySpec>> = Vec::new();
        for se in &set.service_entries {
            let mut e = Errors::new("ServiceEntry", se);
            let service = service_entry(se, trust_domain, &r, &mut e);
            if let Some(s) = service {
                let si = r.services.len();
                r.index_hosts(&s, si, &service_origins, &mut e);
                if e.list.is_empty() {
                    for (ei, ep) in s.endpoints.iter().enumerate() {
                        r.backed_by.entry(ep.address).or_default().push((si, ei));
                    }
                    r.services.push(Arc::new(s));
                    service_origins.push(se);
                }
            }
            errors.extend(e.list);
        }
        if errors.is_empty() {
            Ok(r)
        } else {
            Err(errors)
        }
    }

    /// Indexes the hosts of service `si`; a host another service already has is an error.
    fn index_hosts(
        &mut self,
        s: &Service,
        si: usize,
        origins: &[&Loaded<ServiceEntrySpec>],
        e: &mut Errors,
    ) {
        // Check first, then insert, so a rejected entry leaves nothing behind.
        for (hi, host) in s.hosts.iter().enumerate() {
            let taken = match host.strip_prefix('*') {
                Some(suffix) => self.wildcards.get(suffix),
                None => self.hosts.get(host),
            };
            if let Some(&other) = taken {
                let o = origins[other];
                e.push(
                    format!("spec.hosts[{hi}]"),
                    format!(
                        "{host:?} is also a host of ServiceEntry {}/{} ({}): Warden needs one ServiceEntry per host",
                        o.resource.namespace(),
                        o.resource.metadata.name,
                        o.origin
                    ),
                );
            }
        }
        if !e.list.is_empty() {
            return;
        }
        for host in &s.hosts {
            if let Some(suffix) = host.strip_prefix('*') {
                self.wildcards.insert(suffix.to_string(), si);
                continue;
            }
            self.hosts.insert(host.clone(), si);
            // Istio's GenerateAltVirtualHosts: `name.ns.svc.<domain>` is also `name.ns`
            // and `name.ns.svc` to everyone, and `name` inside namespace `ns`.
            if let Some(prefix) = host.strip_suffix(SVC_SUFFIX)
                && let Some((name, ns)) = prefix.rsplit_once('.')
            {
                self.aliases.entry(prefix.to_string()).or_insert(si);
                self.aliases.entry(format!("{prefix}.svc")).or_insert(si);
                if !name.contains('.') {
                    self.short_names
                        .entry(ns.to_string())
                        .or_default()
                        .entry(name.to_string())
                        .or_insert(si);
                }
            }
        }
    }

    /// All services, in load order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// All workloads, in load order.
    pub fn workloads(&self) -> &[LocalWorkload] {
        &self.workloads
    }

    /// The workload of `WorkloadEntry` `namespace/name`.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&LocalWorkload> {
        let i = *self.workload_names.get(namespace)?.get(name)?;
        self.workloads.get(i)
    }

    /// The workload at `address` (to name a caller in logs and metrics).
    pub fn workload_by_address(&self, address: IpAddr) -> Option<&LocalWorkload> {
        self.workloads.get(*self.workload_addresses.get(&address)?)
    }

    /// The service and port a client in `from_namespace` means by `host` (a `Host`
    /// header or SNI without `:port`) and `port`, by Istio's rules: an exact host, then
    /// the Kubernetes short names of `name.ns.svc.cluster.local` hosts (`name` from
    /// namespace `ns` only, `name.ns` and `name.ns.svc` from anywhere), then wildcard
    /// hosts, longest suffix first. Case-insensitive; a trailing dot is ignored. The
    /// first of these that is exported to `from_namespace` and has `port` wins.
    /// `MESH_EXTERNAL` services resolve too: see [`Service::mesh_internal`].
    /// No allocation unless `host` has upper-case letters.
    pub fn resolve(
        &self,
        host: &str,
        port: u16,
        from_namespace: &str,
    ) -> Option<(&Arc<Service>, &ServicePortInfo)> {
        self.lookup(host, port, from_namespace, true)
    }

    /// [`Self::resolve`] for an Istio SNI `outbound_.<port>_.<subset>_.<host>`.
    pub fn resolve_sni(
        &self,
        sni: &str,
        from_namespace: &str,
    ) -> Option<(&Arc<Service>, &ServicePortInfo)> {
        let (port, host) = parse_sni(sni)?;
        self.resolve(host, port, from_namespace)
    }

    fn lookup(
        &self,
        host: &str,
        port: u16,
        from_namespace: &str,
        check_export: bool,
    ) -> Option<(&Arc<Service>, &ServicePortInfo)> {
        let host = lookup_key(host);
        let host: &str = &host;
        let exact = self.hosts.get(host);
        let short = if host.contains('.') {
            None
        } else {
            self.short_names
                .get(from_namespace)
                .and_then(|names| names.get(host))
        };
        let alias = self.aliases.get(host);
        let wildcard = host
            .match_indices('.')
            .filter_map(|(i, _)| self.wildcards.get(&host[i..]));
        exact
            .into_iter()
            .chain(short)
            .chain(alias)
            .chain(wildcard)
            .find_map(|&i| {
                let s = self.services.get(i)?;
                if check_export && !s.visible_from(from_namespace) {
                    return None;
                }
                s.port(port).map(|p| (s, p))
            })
    }

    /// The services workload `w` is an endpoint of (by its address), with its endpoint.
    pub fn services_of(&self, w: &LocalWorkload) -> Vec<(&Arc<Service>, &Endpoint)> {
        self.backed_by
            .get(&w.address)
            .into_iter()
            .flatten()
            .filter_map(|&(si, ei)| {
                let s = self.services.get(si)?;
                Some((s, s.endpoints.get(ei)?))
            })
            .collect()
    }

    /// Where inbound traffic for `host:port` goes on workload `w`: its application port
    /// for that service port ([`Endpoint::app_port`]) and the protocol. `host` is resolved
    /// as from `w`'s namespace, ignoring `exportTo` (the service reached `w` already).
    /// `None` when the host is unknown, or `w` is not one of its endpoints.
    pub fn inbound_target(
        &self,
        w: &LocalWorkload,
        host: &str,
        port: u16,
    ) -> Option<InboundTarget> {
        let (service, sp) = self.lookup(host, port, &w.namespace, false)?;
        let ep = service.endpoint_at(w.address)?;
        Some(InboundTarget {
            app_port: ep.app_port(sp),
            protocol: sp.protocol,
            service: service.clone(),
            service_port: sp.number,
        })
    }

    /// [`Self::inbound_target`] for an Istio SNI `outbound_.<port>_.<subset>_.<host>`.
    pub fn inbound_target_sni(&self, w: &LocalWorkload, sni: &str) -> Option<InboundTarget> {
        let (port, host) = parse_sni(sni)?;
        self.inbound_target(w, host, port)
    }

    /// Every application port of `w` that a service port leads to, ascending, one
    /// target each: when several service ports lead to one application port, the first
    /// (services in load order, ports in declared order) gives the protocol. A
    /// connection that names no service (no SNI, no `Host`) can use the only target of a
    /// workload that has exactly one.
    pub fn inbound_targets(&self, w: &LocalWorkload) -> Vec<InboundTarget> {
        let mut by_port: BTreeMap<u16, InboundTarget> = BTreeMap::new();
        for (service, ep) in self.services_of(w) {
            for sp in &service.ports {
                if let Entry::Vacant(v) = by_port.entry(ep.app_port(sp)) {
                    v.insert(InboundTarget {
                        app_port: ep.app_port(sp),
                        protocol: sp.protocol,
                        service: service.clone(),
                        service_port: sp.number,
                    });
                }
            }
        }
        by_port.into_values().collect()
    }

    /// The TCP ports the proxy of `w` listens on (at `w`'s address) for outbound TCP:
    /// every TCP port of every `MESH_INTERNAL` service exported to `w`'s namespace, one
    /// listener per port number. Ports `w` itself uses (its application ports, its
    /// inbound port) and second services on a taken number are in
    /// [`OutboundTcp::skipped`].
    pub fn outbound_tcp_ports(&self, w: &LocalWorkload) -> OutboundTcp<'_> {
        let own: BTreeSet<u16> = w
            .ports
            .values()
            .copied()
            .chain(self.inbound_targets(w).iter().map(|t| t.app_port))
            .collect();
        let mut taken: BTreeMap<u16, OutboundTcpPort<'_>> = BTreeMap::new();
        let mut skipped = Vec::new();
        for service in &self.services {
            if !service.mesh_internal || !service.visible_from(&w.namespace) {
                continue;
            }
            for sp in service
                .ports
                .iter()
                .filter(|p| p.protocol == PortProtocol::Tcp)
            {
                let port = sp.number;
                let conflict = if port == w.inbound_port {
                    Some(PortConflict::InboundPort)
                } else if own.contains(&port) {
                    Some(PortConflict::AppPort)
                } else {
                    taken.get(&port).map(|t| PortConflict::Service(t.service))
                };
                match conflict {
                    Some(conflict) => skipped.push(SkippedPort {
                        port,
                        service,
                        conflict,
                    }),
                    None => {
                        taken.insert(
                            port,
                            OutboundTcpPort {
                                port,
                                service,
                                service_port: sp,
                            },
                        );
                    }
                }
            }
        }
        OutboundTcp {
            listen: taken.into_values().collect(),
            skipped,
        }
    }
}

/// Splits Istio's cluster-name SNI `outbound_.<port>_.<subset>_.<host>` (what sidecars
/// send to servers; the subset is empty without one) into port and host.
pub fn parse_sni(sni: &str) -> Option<(u16, &str)> {
    let rest = sni.strip_prefix(SNI_PREFIX)?;
    let (port, rest) = rest.split_once("_.")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let (_subset, host) = rest.split_once("_.")?;
    (!host.is_empty()).then_some((port, host))
}

/// `host` as the indexes hold hosts: lower case, no trailing dot. Borrows unless it has
/// upper-case letters.
fn lookup_key(host: &str) -> Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The errors of one resource.
pub(crate) struct Errors {
    kind: &'static str,
    name: String,
    origin: warden_policy::loader::Origin,
    list: Vec<CompileError>,
}

impl Errors {
    pub(crate) fn new<S>(kind: &'static str, l: &Loaded<S>) -> Self {
        Self {
            kind,
            name: format!("{}/{}", l.resource.namespace(), l.resource.metadata.name),
            origin: l.origin.clone(),
            list: Vec::new(),
        }
    }

    pub(crate) fn into_list(self) -> Vec<CompileError> {
        self.list
    }

    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(CompileError {
            kind: self.kind,
            policy: self.name.clone(),
            origin: self.origin.clone(),
            path: path.into(),
            message: message.into(),
        });
    }
}

/// A port number from the API's `u32`: 1-65535.
fn port_number(n: u32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{n} is not a port: expected 1-65535"))
}

/// The fields a `WorkloadEntry` and an inline endpoint share, checked; `prefix` is the
/// field path of the entry (`spec`, `spec.endpoints[2]`).
struct EntryFields {
    address: IpAddr,
    ports: BTreeMap<String, u16>,
    service_account: String,
    spiffe_id: SpiffeId,
}

fn entry_fields(
    spec: &WorkloadEntrySpec,
    prefix: &str,
    namespace: &str,
    trust_domain: &str,
    e: &mut Errors,
) -> Option<EntryFields> {
    let before = e.list.len();
    let address = if spec.address.is_empty() {
        e.push(
            format!("{prefix}.address"),
            "is required: the workload's IP address",
        );
        None
    } else {
        match spec.address.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                e.push(
                    format!("{prefix}.address"),
                    format!(
                        "{:?} is not an IP address: Warden resolves no host names; expected an IPv4 or IPv6 literal",
                        spec.address
                    ),
                );
                None
            }
        }
    };
    let mut ports = BTreeMap::new();
    for (name, &n) in &spec.ports {
        match port_number(n) {
            Ok(p) => {
                ports.insert(name.clone(), p);
            }
            Err(m) => e.push(format!("{prefix}.ports.{name}"), m),
        }
    }
    let service_account = spec
        .service_account
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    // `for_service_account` would accept `a/b` as two path segments: check the round trip.
    let spiffe_id = SpiffeId::for_service_account(trust_domain, namespace, service_account)
        .map_err(|err| err.to_string())
        .and_then(|id| match id.service_account() {
            Some(parsed) if parsed == (namespace, service_account) => Ok(id),
            _ => Err("the namespace and the service account must each be one path segment".into()),
        });
    let spiffe_id = match spiffe_id {
        Ok(id) => Some(id),
        Err(err) => {
            e.push(
                format!("{prefix}.serviceAccount"),
                format!(
                    "service account {service_account:?} in namespace {namespace:?} makes no valid SPIFFE ID: {err}"
                ),
            );
            None
        }
    };
    if e.list.len() > before {
        return None;
    }
    Some(EntryFields {
        address: address?,
        ports,
        service_account: service_account.to_string(),
        spiffe_id: spiffe_id?,
    })
}

fn workload_entry(
    we: &Loaded<WorkloadEntrySpec>,
    trust_domain: &str,
    e: &mut Errors,
) -> Option<LocalWorkload> {
    let meta = &we.resource.metadata;
    let namespace = we.resource.namespace();
    let fields = entry_fields(&we.resource.spec, "spec", namespace, trust_domain, e);
    let inbound_port = match meta.annotations.get(INBOUND_PORT_ANNOTATION) {
        None => Some(DEFAULT_INBOUND_PORT),
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p != 0 => Some(p),
            _ => {
                e.push(
                    format!("metadata.annotations[{INBOUND_PORT_ANNOTATION}]"),
                    format!("{v:?} is not a port: expected 1-65535"),
                );
                None
            }
        },
    };
    let (fields, inbound_port) = (fields?, inbound_port?);
    if let Some((name, _)) = fields.ports.iter().find(|(_, p)| **p == inbound_port) {
        e.push(
            format!("spec.ports.{name}"),
            format!(
                "{inbound_port} is also the proxy's inbound port; move the application, or the proxy with the annotation {INBOUND_PORT_ANNOTATION}"
            ),
        );
        return None;
    }
    Some(LocalWorkload {
        name: meta.name.clone(),
        namespace: namespace.to_string(),
        address: fields.address,
        inbound_port,
        labels: we.resource.spec.labels.clone(),
        service_account: fields.service_account,
        spiffe_id: fields.spiffe_id,
        ports: fields.ports,
        policy: authz::Workload {
            namespace: namespace.to_string(),
            labels: we.resource.spec.labels.clone(),
        },
    })
}

/// A `ServiceEntry` host, checked: lower case, no trailing dot; `*.suffix` wildcards.
fn normalize_host(host: &str) -> Result<String, String> {
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if h.is_empty() {
        return Err("is empty; expected a host name".into());
    }
    if h == "*" {
        return Err(
            "\"*\" is not allowed; expected a host name or a wildcard such as \"*.example.com\""
                .into(),
        );
    }
    let body = h.strip_prefix("*.").unwrap_or(&h);
    if body.contains('*') {
        return Err(format!(
            "{host:?}: a wildcard is only allowed as the first label (\"*.example.com\")"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !body.split('.').all(label_ok) {
        return Err(format!(
            "{host:?} is not a host name: expected dot-separated labels of [a-z0-9-_] (no port, no scheme)"
        ));
    }
    Ok(h)
}

fn service_ports(ports: &[ServicePort], e: &mut Errors) -> Vec<ServicePortInfo> {
    if ports.is_empty() {
        e.push("spec.ports", "at least one port is required");
    }
    let mut out: Vec<ServicePortInfo> = Vec::new();
    // The `spec.ports` index of each entry of `out`.
    let mut index: Vec<usize> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let number = port_number(p.number)
            .map_err(|m| e.push(format!("spec.ports[{i}].number"), m))
            .ok();
        let protocol = PortProtocol::parse(&p.protocol)
            .map_err(|m| e.push(format!("spec.ports[{i}].protocol"), m))
            .ok();
        let target_port = match p.target_port {
            None | Some(0) => Ok(None),
            Some(t) => port_number(t).map(Some),
        }
        .map_err(|m| e.push(format!("spec.ports[{i}].targetPort"), m))
        .ok();
        let (Some(number), Some(protocol), Some(target_port)) = (number, protocol, target_port)
        else {
            continue;
        };
        if let Some(j) = out.iter().position(|o| o.number == number) {
            e.push(
                format!("spec.ports[{i}].number"),
                format!(
                    "port {number} is declared twice (also spec.ports[{}])",
                    index[j]
                ),
            );
            continue;
        }
        if let Some(j) = out
            .iter()
            .position(|o| !p.name.is_empty() && o.name == p.name)
        {
            e.push(
                format!("spec.ports[{i}].name"),
                format!(
                    "name {:?} is used twice (also spec.ports[{}])",
                    p.name, index[j]
                ),
            );
            continue;
        }
        index.push(i);
        out.push(ServicePortInfo {
            number,
            name: p.name.clone(),
            protocol,
            target_port,
        });
    }
    out
}

fn export_to(values: &[String], namespace: &str, e: &mut Errors) -> ExportTo {
    if values.is_empty() || values.iter().any(|v| v == "*") {
        return ExportTo::All;
    }
    if values.len() > 1 && values.iter().any(|v| v == "~") {
        e.push(
            "spec.exportTo",
            "\"~\" (exported nowhere) cannot be combined with other values",
        );
    }
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v.as_str() {
            "~" => {}
            "." => out.push(namespace.to_string()),
            "" => e.push(
                format!("spec.exportTo[{i}]"),
                "is empty; expected \"*\", \".\", \"~\" or a namespace",
            ),
            ns => out.push(ns.to_string()),
        }
    }
    ExportTo::Namespaces(out)
}

fn service_entry(
    se: &Loaded<ServiceEntrySpec>,
    trust_domain: &str,
    r: &Registry,
    e: &mut Errors,
) -> Option<Service> {
    let spec = &se.resource.spec;
    let namespace = se.resource.namespace();

    let mut hosts: Vec<String> = Vec::new();
    if spec.hosts.is_empty() {
        e.push("spec.hosts", "at least one host is required");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        match normalize_host(h) {
            Ok(h) if !hosts.contains(&h) => hosts.push(h),
            Ok(_) => {}
            Err(m) => e.push(format!("spec.hosts[{i}]"), m),
        }
    }
    let ports = service_ports(&spec.ports, e);
    let mesh_internal = match spec.location.as_deref() {
        None | Some("MESH_EXTERNAL") => false,
        Some("MESH_INTERNAL") => true,
        Some(other) => {
            e.push(
                "spec.location",
                format!("{other:?} is not a location: expected MESH_EXTERNAL or MESH_INTERNAL"),
            );
            false
        }
    };
    let resolution = Resolution::parse(spec.resolution.as_deref())
        .map_err(|m| e.push("spec.resolution", m))
        .unwrap_or(Resolution::None);
    let export_to = export_to(&spec.export_to, namespace, e);

    let mut endpoints = Vec::new();
    match &spec.workload_selector {
        Some(_) if !spec.endpoints.is_empty() => e.push(
            "spec.workloadSelector",
            "cannot be combined with spec.endpoints: endpoints come from one or the other",
        ),
        // Istio: the WorkloadEntries of the ServiceEntry's namespace whose labels include
        // the selector's (an empty selector selects them all).
        Some(sel) => endpoints.extend(
            r.workloads
                .iter()
                .filter(|w| {
                    w.namespace == namespace
                        && sel.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                })
                .map(LocalWorkload::endpoint),
        ),
        None => {
            for (i, ep) in spec.endpoints.iter().enumerate() {
                let prefix = format!("spec.endpoints[{i}]");
                let Some(f) = entry_fields(ep, &prefix, namespace, trust_domain, e) else {
                    continue;
                };
                let inbound_port = r
                    .workload_by_address(f.address)
                    .map_or(DEFAULT_INBOUND_PORT, |w| w.inbound_port);
                endpoints.push(Endpoint {
                    workload: None,
                    namespace: namespace.to_string(),
                    address: f.address,
                    inbound: SocketAddr::new(f.address, inbound_port),
                    spiffe_id: f.spiffe_id,
                    ports: f.ports,
                    labels: ep.labels.clone(),
                });
            }
        }
    }

    let mut ids: BTreeSet<SpiffeId> = endpoints.iter().map(|ep| ep.spiffe_id.clone()).collect();
    for (i, san) in spec.subject_alt_names.iter().enumerate() {
        match SpiffeId::parse_workload(san) {
            Ok(id) => {
                ids.insert(id);
            }
            Err(err) => e.push(
                format!("spec.subjectAltNames[{i}]"),
                format!(
                    "{err}; Warden checks the server's SPIFFE ID, so each entry must be one (spiffe://<trust domain>/ns/<ns>/sa/<sa>)"
                ),
            ),
        }
    }

    if !e.list.is_empty() {
        return None;
    }
    Some(Service {
        name: se.resource.metadata.name.clone(),
        namespace: namespace.to_string(),
        hosts,
        ports,
        endpoints,
        allowed_ids: AllowedIds::one_of(ids),
        mesh_internal,
        resolution,
        export_to,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use warden_policy::loader::load_str;

    use super::*;

    const TD: &str = "cluster.local";

    fn registry(yaml: &str) -> Registry {
        let set = load_str(Path::new("mesh.yaml"), yaml).unwrap();
        match Registry::build(&set, TD) {
            Ok(r) => r,
            Err(e) => panic!("{}", messages(&e).join("\n")),
        }
    }

    fn errors(yaml: &str) -> Vec<String> {
        let set = load_str(Path::new("mesh.yaml"), yaml).unwrap();
        messages(&Registry::build(&set, TD).unwrap_err())
    }

    fn messages(e: &[CompileError]) -> Vec<String> {
        e.iter().map(ToString::to_string).collect()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    /// reviews (HTTP, two versions by label), ratings (inline endpoint), mongo (TCP),
    /// an external wildcard, a namespace-private service, and the workloads.
    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec:
  address: 127.0.0.2
  labels: {app: reviews, version: v1}
  serviceAccount: bookinfo-reviews
  ports: {http: 19080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v2
  namespace: default
  annotations: {warden.io/inbound-port: "16006"}
spec:
  address: 127.0.0.3
  labels: {app: reviews, version: v2}
  serviceAccount: bookinfo-reviews
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: productpage, namespace: front}
spec:
  address: 127.0.0.4
  labels: {app: productpage}
  ports: {http: 9080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-other-ns, namespace: front}
spec:
  address: 127.0.0.5
  labels: {app: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [Reviews.default.svc.cluster.local.]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9443, name: admin, protocol: grpc, targetPort: 19443}
  - {number: 9090, protocol: TCP}
  workloadSelector:
    labels: {app: reviews}
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/reviews-canary"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: http, protocol: HTTP2}
  endpoints:
  - address: 127.0.0.3
    ports: {http: 29080}
  - address: 10.0.0.9
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mongo, namespace: db}
spec:
  hosts: [mongo.db.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 27017, name: mongo, protocol: MONGO}
  - {number: 9080, name: clash, protocol: TCP}
  endpoints:
  - {address: 127.0.0.9, serviceAccount: mongo}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example, namespace: egress}
spec:
  hosts: ["*.example.com", "api.example.com"]
  ports:
  - {number: 443, name: https, protocol: TLS}
  - {number: 80, name: http, protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: deep, namespace: egress}
spec:
  hosts: ["*.eu.example.com"]
  ports:
  - {number: 443, name: https, protocol: TLS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: secret}
spec:
  hosts: [vault.secret.svc.cluster.local]
  location: MESH_INTERNAL
  exportTo: ["."]
  ports:
  - {number: 8200, name: tcp, protocol: TCP}
  endpoints:
  - address: 127.0.0.10
"#;

    #[test]
    fn protocol_mapping() {
        use PortProtocol::*;
        for (input, want) in [
            ("HTTP", Ok(Http)),
            ("http", Ok(Http)),
            ("Http2", Ok(Http2)),
            ("GRPC", Ok(Grpc)),
            ("grpc-web", Ok(Grpc)),
            ("HTTPS", Ok(Tcp)),
            ("TCP", Ok(Tcp)),
            ("TLS", Ok(Tcp)),
            ("MONGO", Ok(Tcp)),
            ("MySQL", Ok(Tcp)),
            ("REDIS", Ok(Tcp)),
            ("", Ok(Tcp)),
            (
                "HTTPX",
                Err("unknown protocol \"HTTPX\", expected HTTP, HTTPS, HTTP2"),
            ),
            ("UDP", Err("\"UDP\" is not supported")),
        ] {
            match (PortProtocol::parse(input), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{input}: {got}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        assert!(Http.is_http() && Http2.is_http() && Grpc.is_http());
        assert!(!Tcp.is_http());
    }

    #[test]
    fn resolves_hosts_as_istio() {
        let r = registry(MESH);
        // (host, port, from namespace, the service it resolves to or "-")
        let cases: &[(&str, u16, &str, &str)] = &[
            // FQDN, from anywhere, case-insensitive, trailing dot.
            (
                "reviews.default.svc.cluster.local",
                9080,
                "front",
                "reviews",
            ),
            (
                "REVIEWS.Default.svc.cluster.local",
                9443,
                "front",
                "reviews",
            ),
            (
                "reviews.default.svc.cluster.local.",
                9090,
                "default",
                "reviews",
            ),
            // Short names: `name` only from the same namespace.
            ("reviews", 9080, "default", "reviews"),
            ("reviews", 9080, "front", "-"),
            ("reviews.default", 9080, "front", "reviews"),
            ("reviews.default.svc", 9080, "front", "reviews"),
            ("Ratings.Default", 9080, "front", "ratings"),
            ("reviews.default.svc.cluster", 9080, "default", "-"),
            // The port must be one of the service's.
            ("reviews", 8080, "default", "-"),
            // Wildcards: exact first, then the longest suffix that has the port.
            ("api.example.com", 443, "default", "example"),
            ("www.example.com", 80, "default", "example"),
            ("a.b.example.com", 443, "default", "example"),
            ("x.eu.example.com", 443, "default", "deep"),
            ("x.eu.example.com", 80, "default", "example"),
            ("example.com", 443, "default", "-"),
            // exportTo ".": only its own namespace sees it.
            ("vault.secret.svc.cluster.local", 8200, "secret", "private"),
            ("vault", 8200, "secret", "private"),
            ("vault.secret.svc.cluster.local", 8200, "default", "-"),
            // Unknown.
            ("details", 9080, "default", "-"),
            ("", 9080, "default", "-"),
        ];
        for &(host, port, from, want) in cases {
            let got = r.resolve(host, port, from).map(|(s, p)| {
                assert_eq!(p.number, port);
                s.name.as_str()
            });
            assert_eq!(
                got.unwrap_or("-"),
                want,
                "resolve({host:?}, {port}, from {from:?})"
            );
        }
        let (s, _) = r.resolve("reviews", 9080, "default").unwrap();
        assert!(s.mesh_internal);
        assert_eq!(s.hosts, ["reviews.default.svc.cluster.local"]);
        let (s, _) = r.resolve("api.example.com", 443, "default").unwrap();
        assert!(!s.mesh_internal, "MESH_EXTERNAL resolves, flagged");
    }

    #[test]
    fn endpoints_and_app_ports() {
        let r = registry(MESH);
        let (reviews, _) = r.resolve("reviews", 9080, "default").unwrap();
        // Selected by label in the ServiceEntry's namespace only.
        let names: Vec<_> = reviews
            .endpoints
            .iter()
            .map(|e| e.workload.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["reviews-v1", "reviews-v2"]);
        let (v1, v2) = (&reviews.endpoints[0], &reviews.endpoints[1]);
        assert_eq!(v1.inbound, "127.0.0.2:15006".parse().unwrap());
        assert_eq!(v2.inbound, "127.0.0.3:16006".parse().unwrap());
        let http = reviews.port(9080).unwrap();
        let admin = reviews.port(9443).unwrap();
        let tcp = reviews.port(9090).unwrap();
        // ports[name], else targetPort, else the number.
        for (ep, port, want) in [
            (v1, http, 19080),
            (v2, http, 9080),
            (v1, admin, 19443),
            (v1, tcp, 9090),
        ] {
            assert_eq!(ep.app_port(port), want, "{:?} {}", ep.workload, port.number);
        }
        // Inline endpoints: no workload name, the inbound port of the WorkloadEntry at
        // that address if there is one.
        let (ratings, _) = r.resolve("ratings.default", 9080, "x").unwrap();
        assert_eq!(ratings.endpoints[0].workload, None);
        assert_eq!(
            ratings.endpoints[0].inbound,
            "127.0.0.3:16006".parse().unwrap()
        );
        assert_eq!(
            ratings.endpoints[1].inbound,
            "10.0.0.9:15006".parse().unwrap()
        );
        assert_eq!(
            ratings.endpoints[0].spiffe_id,
            id("spiffe://cluster.local/ns/default/sa/default")
        );
    }

    #[test]
    fn secure_naming_ids() {
        let r = registry(MESH);
        let allowed = |host: &str, port| {
            r.resolve(host, port, "default")
                .unwrap()
                .0
                .allowed_ids
                .clone()
        };
        assert_eq!(
            allowed("reviews", 9080),
            AllowedIds::one_of([
                id("spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
                id("spiffe://cluster.local/ns/default/sa/reviews-canary"),
            ])
        );
        assert_eq!(
            allowed("ratings", 9080),
            AllowedIds::one_of([id("spiffe://cluster.local/ns/default/sa/default")])
        );
        assert_eq!(
            allowed("mongo.db", 27017),
            AllowedIds::one_of([id("spiffe://cluster.local/ns/db/sa/mongo")])
        );
        // No endpoints, no SANs: nobody (fails closed).
        assert_eq!(allowed("api.example.com", 443), AllowedIds::one_of([]));

        let w = r.workload("front", "productpage").unwrap();
        assert_eq!(w.service_account, "default");
        assert_eq!(
            w.spiffe_id,
            id("spiffe://cluster.local/ns/front/sa/default")
        );
        let other =
            Registry::build(&load_str(Path::new("m.yaml"), MESH).unwrap(), "example.org").unwrap();
        assert_eq!(
            other.workload("default", "reviews-v1").unwrap().spiffe_id,
            id("spiffe://example.org/ns/default/sa/bookinfo-reviews")
        );
    }

    #[test]
    fn workloads_by_name_and_address() {
        let r = registry(MESH);
        let w = r.workload("default", "reviews-v2").unwrap();
        assert_eq!(w.address, "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(w.inbound_port, 16006);
        assert_eq!(w.inbound(), "127.0.0.3:16006".parse().unwrap());
        assert_eq!(w.policy.namespace, "default");
        assert_eq!(w.policy.labels["version"], "v2");
        assert!(r.workload("front", "reviews-v2").is_none());
        let by_ip = r.workload_by_address("127.0.0.4".parse().unwrap()).unwrap();
        assert_eq!(by_ip.name, "productpage");
        assert!(
            r.workload_by_address("127.0.0.99".parse().unwrap())
                .is_none()
        );
        assert_eq!(r.workloads().len(), 4);
        assert_eq!(r.services().len(), 6);
    }

    #[test]
    fn sni_parsing() {
        for (sni, want) in [
            (
                "outbound_.9080_._.reviews.default.svc.cluster.local",
                Some((9080, "reviews.default.svc.cluster.local")),
            ),
            (
                "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
                Some((9080, "reviews.default.svc.cluster.local")),
            ),
            (
                "outbound_.443_._.api.example.com",
                Some((443, "api.example.com")),
            ),
            ("reviews.default.svc.cluster.local", None),
            ("inbound_.9080_._.reviews", None),
            ("outbound_.0_._.reviews", None),
            ("outbound_.70000_._.reviews", None),
            ("outbound_.+80_._.reviews", None),
            ("outbound_._._.reviews", None),
            ("outbound_.9080_._.", None),
            ("outbound_.9080_.reviews", None),
            ("outbound_.9080", None),
            ("", None),
        ] {
            assert_eq!(parse_sni(sni), want, "{sni:?}");
        }
        let r = registry(MESH);
        let (s, p) = r
            .resolve_sni(
                "outbound_.9443_.v2_.reviews.default.svc.cluster.local",
                "front",
            )
            .unwrap();
        assert_eq!(
            (s.name.as_str(), p.protocol),
            ("reviews", PortProtocol::Grpc)
        );
    }

    #[test]
    fn inbound_targets_of_the_local_workload() {
        let r = registry(MESH);
        let v1 = r.workload("default", "reviews-v1").unwrap();
        let v2 = r.workload("default", "reviews-v2").unwrap();
        let t = r
            .inbound_target(v1, "reviews.default.svc.cluster.local", 9080)
            .unwrap();
        assert_eq!(
            (t.app_port, t.protocol, t.service_port),
            (19080, PortProtocol::Http, 9080)
        );
        assert_eq!(t.service.name, "reviews");
        // Short name as seen from the workload's own namespace.
        assert_eq!(
            r.inbound_target(v2, "reviews", 9443).unwrap().app_port,
            19443
        );
        // v2 also backs ratings by an inline endpoint; v1 does not.
        let t = r
            .inbound_target_sni(v2, "outbound_.9080_._.ratings.default.svc.cluster.local")
            .unwrap();
        assert_eq!((t.app_port, t.protocol), (29080, PortProtocol::Http2));
        assert!(r.inbound_target(v1, "ratings", 9080).is_none());
        assert!(r.inbound_target(v1, "mongo.db", 27017).is_none());
        assert!(r.inbound_target(v1, "reviews", 1).is_none());

        let all = |w| {
            r.inbound_targets(w)
                .iter()
                .map(|t| (t.app_port, t.protocol, t.service.name.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            all(v1),
            [
                (9090, PortProtocol::Tcp, "reviews".to_string()),
                (19080, PortProtocol::Http, "reviews".to_string()),
                (19443, PortProtocol::Grpc, "reviews".to_string()),
            ]
        );
        assert_eq!(
            all(v2),
            [
                (9080, PortProtocol::Http, "reviews".to_string()),
                (9090, PortProtocol::Tcp, "reviews".to_string()),
                (19443, PortProtocol::Grpc, "reviews".to_string()),
                (29080, PortProtocol::Http2, "ratings".to_string()),
            ]
        );
        let services: Vec<_> = r
            .services_of(v2)
            .iter()
            .map(|(s, _)| s.name.as_str())
            .collect();
        assert_eq!(services, ["reviews", "ratings"]);
        let pp = r.workload("front", "productpage").unwrap();
        assert!(r.inbound_targets(pp).is_empty());
    }

    #[test]
    fn outbound_tcp_ports_skip_conflicts() {
        let r = registry(MESH);
        let plan = |w: &LocalWorkload| {
            let p = r.outbound_tcp_ports(w);
            let listen: Vec<_> = p
                .listen
                .iter()
                .map(|l| (l.port, l.service.name.clone()))
                .collect();
            let skipped: Vec<_> = p
                .skipped
                .iter()
                .map(|s| (s.port, s.service.name.clone(), s.conflict.to_string()))
                .collect();
            (listen, skipped)
        };
        // productpage (front) uses 9080 itself; the private vault is not exported to it;
        // external services get no TCP listener.
        let (listen, skipped) = plan(r.workload("front", "productpage").unwrap());
        assert_eq!(listen, [(9090, "reviews".into()), (27017, "mongo".into())]);
        assert_eq!(skipped.len(), 1);
        assert_eq!((skipped[0].0, skipped[0].1.as_str()), (9080, "mongo"));
        assert!(skipped[0].2.contains("application"), "{}", skipped[0].2);
        // reviews-v1: 9090 is its own (it backs reviews:9090), 9080 goes to mongo.
        let (listen, skipped) = plan(r.workload("default", "reviews-v1").unwrap());
        assert_eq!(listen, [(9080, "mongo".into()), (27017, "mongo".into())]);
        assert_eq!(skipped[0].0, 9090);
    }

    #[test]
    fn shared_tcp_port_goes_to_the_first_service() {
        let r = registry(
            r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: app, namespace: a, annotations: {warden.io/inbound-port: "15106"}}
spec: {address: 127.0.0.2, ports: {http: 15006}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: one, namespace: a}
spec:
  hosts: [one.a.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: pg, protocol: TCP}, {number: 15106, name: x}]
  endpoints: [{address: 127.0.0.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: two, namespace: a}
spec:
  hosts: [two.a.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: pg, protocol: TCP}]
  endpoints: [{address: 127.0.0.8}]
"#,
        );
        let w = r.workload("a", "app").unwrap();
        let p = r.outbound_tcp_ports(w);
        let listen: Vec<_> = p
            .listen
            .iter()
            .map(|l| (l.port, l.service.name.as_str()))
            .collect();
        assert_eq!(listen, [(5432, "one")]);
        let skipped: Vec<_> = p
            .skipped
            .iter()
            .map(|s| (s.port, s.service.name.as_str(), s.conflict.to_string()))
            .collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].2.contains("inbound listener"), "{skipped:?}");
        assert!(
            skipped[1].2.contains("one.a.svc.cluster.local (a/one)"),
            "{skipped:?}"
        );
    }

    #[test]
    fn build_errors_name_resource_and_field() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: foo}
spec:
  hosts: [reviews.foo.svc.cluster.local]
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9081, name: bad, protocol: HTTPX}
"#,
                &[
                    "mesh.yaml:2: document 1: ServiceEntry foo/reviews: spec.ports[1].protocol: unknown protocol \"HTTPX\", expected HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, MYSQL, REDIS",
                ],
            ),
            (
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: foo}
spec:
  hosts: ["*", "a/b", "x.*.com", ""]
  location: MESH_SOMEWHERE
  resolution: MAGIC
  exportTo: ["~", "bar"]
  ports:
  - {number: 0, name: a}
  - {number: 70000, name: b}
  - {number: 80, name: c, targetPort: 65536}
  - {number: 81, name: d}
  - {number: 81, name: e}
  - {number: 82, name: d}
  subjectAltNames: ["reviews.foo.svc", "spiffe://cluster.local"]
  workloadSelector: {labels: {app: x}}
  endpoints: [{address: 1.2.3.4}]
"#,
                &[
                    "spec.hosts[0]: \"*\" is not allowed",
                    "spec.hosts[1]: \"a/b\" is not a host name",
                    "spec.hosts[2]: \"x.*.com\": a wildcard is only allowed as the first label",
                    "spec.hosts[3]: is empty",
                    "spec.ports[0].number: 0 is not a port: expected 1-65535",
                    "spec.ports[1].number: 70000 is not a port",
                    "spec.ports[2].targetPort: 65536 is not a port",
                    "spec.ports[4].number: port 81 is declared twice (also spec.ports[3])",
                    "spec.ports[5].name: name \"d\" is used twice (also spec.ports[3])",
                    "spec.location: \"MESH_SOMEWHERE\" is not a location: expected MESH_EXTERNAL or MESH_INTERNAL",
                    "spec.resolution: \"MAGIC\" is not a resolution",
                    "spec.exportTo: \"~\" (exported nowhere) cannot be combined",
                    "spec.workloadSelector: cannot be combined with spec.endpoints",
                    "spec.subjectAltNames[0]: \"reviews.foo.svc\" is not a SPIFFE ID",
                    "spec.subjectAltNames[1]: \"spiffe://cluster.local\" names a trust domain, not a workload",
                ],
            ),
            (
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: foo}
spec:
  hosts: []
  ports: []
"#,
                &[
                    "ServiceEntry foo/s: spec.hosts: at least one host is required",
                    "ServiceEntry foo/s: spec.ports: at least one port is required",
                ],
            ),
            (
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: foo}
spec:
  hosts: [s.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS
  endpoints:
  - {address: backend.example.com}
  - {address: 10.0.0.1, ports: {http: 0}, serviceAccount: "bad/sa"}
"#,
                &[
                    "ServiceEntry foo/s: spec.endpoints[0].address: \"backend.example.com\" is not an IP address: Warden resolves no host names",
                    "ServiceEntry foo/s: spec.endpoints[1].ports.http: 0 is not a port",
                    "ServiceEntry foo/s: spec.endpoints[1].serviceAccount: service account \"bad/sa\" in namespace \"foo\" makes no valid SPIFFE ID",
                ],
            ),
            (
                r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: foo, annotations: {warden.io/inbound-port: "99999"}}
spec: {address: a.example.com}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: foo}
spec: {address: 127.0.0.2, serviceAccount: "..", ports: {web: 15006}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: c, namespace: foo}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: d, namespace: foo}
spec: {address: "127.0.0.3", ports: {web: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: e, namespace: bar}
spec: {address: "127.0.0.3"}
"#,
                &[
                    "mesh.yaml:2: document 1: WorkloadEntry foo/a: spec.address: \"a.example.com\" is not an IP address",
                    "WorkloadEntry foo/a: metadata.annotations[warden.io/inbound-port]: \"99999\" is not a port: expected 1-65535",
                    "WorkloadEntry foo/b: spec.serviceAccount: service account \"..\" in namespace \"foo\" makes no valid SPIFFE ID",
                    "WorkloadEntry foo/c: spec.address: is required",
                    "mesh.yaml:22: document 5: WorkloadEntry bar/e: spec.address: 127.0.0.3 is also the address of WorkloadEntry foo/d (mesh.yaml:17: document 4): two workloads cannot share an address",
                ],
            ),
            (
                r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: foo}
spec: {address: 127.0.0.2, ports: {web: 15006}}
"#,
                &["WorkloadEntry foo/b: spec.ports.web: 15006 is also the proxy's inbound port"],
            ),
            (
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: foo}
spec:
  hosts: [x.example.com, "*.example.com"]
  ports: [{number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: bar}
spec:
  hosts: [X.example.com, "*.Example.com", y.example.com]
  ports: [{number: 80, name: http}]
"#,
                &[
                    "mesh.yaml:9: document 2: ServiceEntry bar/b: spec.hosts[0]: \"x.example.com\" is also a host of ServiceEntry foo/a (mesh.yaml:2: document 1): Warden needs one ServiceEntry per host",
                    "ServiceEntry bar/b: spec.hosts[1]: \"*.example.com\" is also a host of ServiceEntry foo/a",
                ],
            ),
        ];
        for (yaml, want) in cases {
            let got = errors(yaml);
            assert_eq!(got.len(), want.len(), "{got:#?}");
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(g.contains(w), "got:\n{g}\nwant it to contain:\n{w}");
            }
        }
    }

    #[test]
    fn a_rejected_service_entry_claims_no_host() {
        let set = load_str(
            Path::new("m.yaml"),
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: foo}
spec:
  hosts: [x.example.com]
  ports: [{number: 80, name: http, protocol: BAD}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: foo}
spec:
  hosts: [x.example.com]
  ports: [{number: 80, name: http}]
"#,
        )
        .unwrap();
        let e = Registry::build(&set, TD).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].policy, "foo/a");
    }

    #[test]
    fn empty_selector_selects_the_whole_namespace() {
        let r = registry(
            r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: foo}
spec: {address: 127.0.0.2}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: bar}
spec: {address: 127.0.0.3}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: all, namespace: foo}
spec:
  hosts: [all.foo.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {}
"#,
        );
        let (s, _) = r.resolve("all", 80, "foo").unwrap();
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].workload.as_deref(), Some("a"));
    }

    #[test]
    fn lookup_key_borrows_lower_case_hosts() {
        assert!(matches!(
            lookup_key("reviews.default"),
            Cow::Borrowed("reviews.default")
        ));
        assert!(matches!(lookup_key("reviews."), Cow::Borrowed("reviews")));
        assert_eq!(lookup_key("Reviews"), "reviews");
    }
}
