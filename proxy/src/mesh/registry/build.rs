//! Building the registry: `ServiceEntry` and `WorkloadEntry` resources checked field by
//! field and compiled into the model, all or nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warden_policy::authz;
use warden_policy::loader::{CompileError, ConfigSet, Loaded};
use warden_policy::resources::{ServiceEntrySpec, ServicePort, WorkloadEntrySpec};
use warden_proto::SpiffeId;

use crate::tls::AllowedIds;

use super::super::model::*;
use super::{Registry, SVC_SUFFIX};
use crate::mesh::errors::Errors;

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
            let id = ServiceId(r.services.len());
            let service = service_entry(se, id, trust_domain, &r, &mut e);
            if let Some(s) = service {
                let si = r.services.len();
                r.index_hosts(&s, si, &service_origins, &mut e);
                if e.list.is_empty() {
                    // Endpoints known by name or by the request have no address yet.
                    for (ei, ep) in s.endpoints.iter().enumerate() {
                        if ep.dial == Dial::Address {
                            r.backed_by.entry(ep.address).or_default().push((si, ei));
                        }
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
}

/// A port number from the API's `u32`: 1-65535.
fn port_number(n: u32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{n} is not a port: expected 1-65535"))
}

/// What an entry's `address` may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddressRule {
    /// An IP literal: a `WorkloadEntry`, an endpoint of a `MESH_INTERNAL` service (a
    /// proxy listens at that address).
    Ip,
    /// An IP literal: an endpoint of a `MESH_EXTERNAL` service with `resolution: STATIC`.
    Static,
    /// An IP literal or a DNS name: `MESH_EXTERNAL` with `resolution: DNS` or
    /// `DNS_ROUND_ROBIN`.
    IpOrName,
}

/// The fields a `WorkloadEntry` and an inline endpoint share, checked; `prefix` is the
/// field path of the entry (`spec`, `spec.endpoints[2]`).
struct EntryFields {
    /// The address; unspecified when the entry gives a name.
    address: IpAddr,
    /// The DNS name given instead of an address ([`AddressRule::IpOrName`]).
    name: Option<String>,
    ports: BTreeMap<String, u16>,
    service_account: String,
    spiffe_id: SpiffeId,
}

fn entry_fields(
    spec: &WorkloadEntrySpec,
    prefix: &str,
    namespace: &str,
    trust_domain: &str,
    rule: AddressRule,
    e: &mut Errors,
) -> Option<EntryFields> {
    let before = e.list.len();
    let mut name = None;
    let address = if spec.address.is_empty() {
        e.push(
            format!("{prefix}.address"),
            "is required: the workload's IP address",
        );
        None
    } else {
        match (spec.address.parse::<IpAddr>(), rule) {
            (Ok(a), _) => Some(a),
            (Err(_), AddressRule::IpOrName) => match normalize_host(&spec.address) {
                Ok(h) if !h.starts_with('*') => {
                    name = Some(h);
                    Some(IpAddr::from([0, 0, 0, 0]))
                }
                _ => {
                    e.push(
                        format!("{prefix}.address"),
                        format!(
                            "{:?} is neither an IP address nor a DNS name (FQDN, no wildcard)",
                            spec.address
                        ),
                    );
                    None
                }
            },
            (Err(_), AddressRule::Static) => {
                e.push(
                    format!("{prefix}.address"),
                    format!(
                        "{:?} is not an IP address: resolution STATIC takes IP literals; a name needs resolution DNS",
                        spec.address
                    ),
                );
                None
            }
            (Err(_), AddressRule::Ip) => {
                e.push(
                    format!("{prefix}.address"),
                    format!(
                        "{:?} is not an IP address: Warden resolves no host names for mesh workloads; expected an IPv4 or IPv6 literal",
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
        name,
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
    let fields = entry_fields(
        &we.resource.spec,
        "spec",
        namespace,
        trust_domain,
        AddressRule::Ip,
        e,
    );
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
        key: format!("{namespace}/{}", meta.name).into(),
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
    id: ServiceId,
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
    let parsed_resolution = Resolution::parse(spec.resolution.as_deref())
        .map_err(|m| e.push("spec.resolution", m))
        .ok();
    let resolution = parsed_resolution.unwrap_or(Resolution::None);
    let export_to = export_to(&spec.export_to, namespace, e);
    let address_rule = match (mesh_internal, resolution) {
        (true, _) => AddressRule::Ip,
        (false, Resolution::Dns | Resolution::DnsRoundRobin) => AddressRule::IpOrName,
        (false, _) => AddressRule::Static,
    };

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
                let Some(f) = entry_fields(ep, &prefix, namespace, trust_domain, address_rule, e)
                else {
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
                    dial: f.name.map_or(Dial::Address, Dial::Name),
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

    if !mesh_internal && let Some(resolution) = parsed_resolution {
        let selected = spec.workload_selector.is_some();
        external_endpoints(
            &mut endpoints,
            resolution,
            &hosts,
            selected,
            namespace,
            trust_domain,
            e,
        );
    }

    if !e.list.is_empty() {
        return None;
    }
    Some(Service {
        id,
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

/// Istio's rules for the endpoints of a `MESH_EXTERNAL` service, by `resolution`
/// (`pkg/config/validation` `ValidateServiceEntry`): `NONE` and `DYNAMIC_DNS` take no
/// inline endpoints and connect to the host asked for; `DNS` and `DNS_ROUND_ROBIN`
/// without endpoints resolve the host itself, which must then be a name, not a
/// wildcard. Either way the service gets one [`Dial::AsRequested`] endpoint (added
/// after secure naming's identities were taken: it names no workload).
fn external_endpoints(
    endpoints: &mut Vec<Endpoint>,
    resolution: Resolution,
    hosts: &[String],
    selected: bool,
    namespace: &str,
    trust_domain: &str,
    e: &mut Errors,
) {
    let as_requested = match resolution {
        Resolution::Static => false,
        Resolution::None | Resolution::DynamicDns => {
            if !endpoints.is_empty() && !selected {
                e.push(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution NONE (or DYNAMIC_DNS): the proxy connects to the host the client asked for",
                );
            }
            endpoints.is_empty()
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if endpoints.is_empty() && !selected {
                for (i, h) in hosts.iter().enumerate() {
                    if h.starts_with('*') {
                        e.push(
                            format!("spec.hosts[{i}]"),
                            format!(
                                "{h:?}: hosts must be FQDNs when resolution DNS has no endpoints (the proxy resolves the host itself); use resolution NONE for a wildcard"
                            ),
                        );
                    }
                }
            }
            endpoints.is_empty()
        }
    };
    if !as_requested {
        return;
    }
    match SpiffeId::for_service_account(trust_domain, namespace, DEFAULT_SERVICE_ACCOUNT) {
        Ok(spiffe_id) => endpoints.push(Endpoint {
            workload: None,
            namespace: namespace.to_string(),
            address: IpAddr::from([0, 0, 0, 0]),
            inbound: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), DEFAULT_INBOUND_PORT),
            spiffe_id,
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            dial: Dial::AsRequested,
        }),
        Err(err) => e.push(
            "metadata.namespace",
            format!("namespace {namespace:?} makes no valid SPIFFE ID: {err}"),
        ),
    }
}
