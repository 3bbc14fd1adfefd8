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
//! `MESH_EXTERNAL` services (the default `location`) follow Istio's `resolution` rules:
//! `STATIC` endpoints are IP literals; `DNS` and `DNS_ROUND_ROBIN` endpoints may be DNS
//! names ([`Dial::Name`]), and without endpoints the host itself is resolved; `NONE` and
//! `DYNAMIC_DNS` take no inline endpoints and connect to the host the client asked for
//! ([`Dial::AsRequested`]). See [`crate::egress`] for how they are reached.
//!
//! Deliberate differences from Istio, each refused with an error naming the resource and
//! field rather than half-applied:
//! - `WorkloadEntry` addresses and the endpoints of `MESH_INTERNAL` services must be IP
//!   literals (a proxy listens at each), whatever the `resolution`.
//! - `subjectAltNames` must be SPIFFE IDs: the TLS client checks the server's SPIFFE ID,
//!   and a bare DNS SAN could never match one. (TLS origination to a `MESH_EXTERNAL`
//!   service takes its names from the DestinationRule's `tls.subjectAltNames`.)
//! - One `ServiceEntry` per host: Istio merges or picks between `ServiceEntry`s that
//!   share a host (by namespace and age); Warden refuses the ambiguity.
//! - Two `WorkloadEntry`s cannot share an address (two pods cannot share an IP).
//! - `spec.addresses` (VIPs) are accepted and ignored: there is no traffic capture.
//!
//! A port without `protocol` is TCP: Istio would sniff HTTP on it; Warden proxies its
//! bytes, which is correct for any protocol (HTTP included, without L7 features).
//! Declare `HTTP`, `HTTP2` or `GRPC` to get them.

mod build;

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::model::*;

/// `.svc.` and the Kubernetes cluster DNS domain: hosts `<name>.<ns>.svc.cluster.local`
/// also answer to their short names.
const SVC_SUFFIX: &str = ".svc.cluster.local";

/// The SNI prefix of Istio's outbound cluster names, which sidecars send to servers.
const SNI_PREFIX: &str = "outbound_.";

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

    /// The port of the service `host` names (a fully qualified host, as the route
    /// table writes destinations) when it has exactly one; what a gateway's route
    /// without `destination.port` goes to.
    pub fn only_port(&self, host: &str) -> Option<u16> {
        let host = lookup_key(host);
        let i = self
            .hosts
            .get(host.as_ref())
            .or_else(|| self.aliases.get(host.as_ref()))?;
        match self.services.get(*i)?.ports.as_slice() {
            [only] => Some(only.number),
            _ => None,
        }
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
        Some(InboundTarget::new(
            ep.app_port(sp),
            sp.protocol,
            service.clone(),
            sp.number,
        ))
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
                    v.insert(InboundTarget::new(
                        ep.app_port(sp),
                        sp.protocol,
                        service.clone(),
                        sp.number,
                    ));
                }
            }
        }
        by_port.into_values().collect()
    }

    /// The TCP ports the proxy of `w` listens on (at `w`'s address) for outbound TCP:
    /// every TCP port of every service exported to `w`'s namespace, one listener per
    /// port number, except `MESH_EXTERNAL` services that connect to the host asked for
    /// and have no host but wildcards (a TCP connection names no host). Ports `w` itself
    /// uses (its application ports, its inbound port) and second services on a taken
    /// number are in [`OutboundTcp::skipped`].
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
            if !service.visible_from(&w.namespace) {
                continue;
            }
            let needs_host = service
                .endpoints
                .iter()
                .any(|ep| ep.dial == Dial::AsRequested);
            if needs_host && service.exact_host().is_none() {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
