//! Istio `Gateway`s in the route table: the servers of the Gateways that select a
//! workload ([`RouteTable::gateway_servers`]), and the decision for a request one of
//! their servers accepted (`RouteRequest::gateways` non-empty), as istiod builds a
//! gateway's configuration (istio/istio `pilot/pkg/networking/core/gateway.go`,
//! `pilot/pkg/model/gateway.go`, `push_context.go` `VirtualServicesForGateway`):
//!
//! - HTTP: the `http` rules of every VirtualService bound to the gateway (visible from
//!   the gateway workload's namespace, its hosts intersecting the server's) are merged
//!   into one virtual host per intersected host, in VirtualService precedence order,
//!   catch-all rules moved last; the most specific virtual host serves the request.
//! - TLS passthrough: `tls` rules by `sniHosts` (Envoy's filter-chain order: exact
//!   name, then the longest wildcard); TLS terminated on a TCP/TLS server and plain
//!   TCP: the first bound VirtualService with a matching `tcp` rule.
//!
//! Sidecars' `tls` rules (by SNI) are decided here too.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::{Value, json};

use super::model::{GatewaySpec, L4Match, RouteDestination};
use super::table::{
    CompiledMatch, CompiledVs, Decision, DestinationOut, RouteError, RouteRequest, RouteTable,
    bare_host, err_at, export_group, inherit, name_of, request_matches, typed, weighted,
};
use crate::loader::Loaded;

/// One server of a Gateway that selects a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayServer {
    /// "ns/name" of the Gateway.
    pub gateway: String,
    /// servers[i].name, if set.
    pub name: Option<String>,
    /// Its index in spec.servers.
    pub index: usize,
    /// The port the gateway listens on.
    pub port: u16,
    /// `port.name`.
    pub port_name: String,
    /// `port.protocol`.
    pub protocol: ServerProtocol,
    /// As written ("ns/host", "*/host", "host"), lowercase, "./" replaced by the
    /// Gateway's namespace.
    pub hosts: Vec<String>,
    /// `tls`, if set.
    pub tls: Option<ServerTls>,
}

/// The protocol of a gateway server (Istio's `protocol.Parse`; `GRPC-WEB` is gRPC,
/// `HTTP_PROXY` HTTP, and `MONGO`, `REDIS`, `MYSQL` are TCP to a gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerProtocol {
    /// `HTTP`, `HTTP_PROXY`.
    Http,
    /// `HTTPS`: HTTP over TLS the gateway terminates, or TLS it passes through.
    Https,
    /// `HTTP2`.
    Http2,
    /// `GRPC`, `GRPC-WEB`.
    Grpc,
    /// `TCP`, `MONGO`, `REDIS`, `MYSQL`.
    Tcp,
    /// `TLS`: TCP over TLS, terminated or passed through.
    Tls,
}

impl ServerProtocol {
    /// Parses `port.protocol` case-insensitively; `None` for protocols a gateway does
    /// not serve (`UDP`) or Istio does not know.
    pub fn parse(protocol: &str) -> Option<Self> {
        Some(match protocol.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" => Self::Http,
            "https" => Self::Https,
            "http2" => Self::Http2,
            "grpc" | "grpc-web" => Self::Grpc,
            "tcp" | "mongo" | "redis" | "mysql" => Self::Tcp,
            "tls" => Self::Tls,
            _ => return None,
        })
    }

    /// Plain-text HTTP (Istio's `Instance.IsHTTP`).
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }
}

/// `Server.tls` (`ServerTLSSettings`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerTls {
    /// How the gateway handles TLS.
    pub mode: TlsMode,
    /// Plain-text requests get a 301 to `https`.
    pub https_redirect: bool,
    /// PEM file of the server certificate.
    pub server_certificate: Option<String>,
    /// PEM file of its key.
    pub private_key: Option<String>,
    /// PEM file of the CAs that verify client certificates.
    pub ca_certificates: Option<String>,
    /// Secret holding the certificate, key and CAs.
    pub credential_name: Option<String>,
    /// Client certificate SANs accepted.
    pub subject_alt_names: Vec<String>,
    /// `TLS_AUTO`, `TLSV1_0` .. `TLSV1_3`.
    pub min_protocol_version: Option<String>,
    /// Likewise.
    pub max_protocol_version: Option<String>,
}

/// `ServerTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Forward the TLS connection by SNI, without terminating it (the proto's default).
    #[default]
    Passthrough,
    /// Terminate TLS with the server certificate.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Passthrough to the cluster the SNI names (`outbound_.PORT_.SUBSET_.HOST`).
    AutoPassthrough,
    /// Terminate with the workload's mesh certificate, mTLS.
    IstioMutual,
    /// Like `Mutual`, the client certificate optional.
    OptionalMutual,
}

impl TlsMode {
    /// The gateway forwards the TLS bytes (Istio's `IsPassThroughServer`).
    pub fn is_passthrough(self) -> bool {
        matches!(self, Self::Passthrough | Self::AutoPassthrough)
    }
}

impl GatewayServer {
    /// Whether this server serves `host` (lowercase, no port; a Host header's name or an
    /// SNI), by its `hosts` (wildcards as Istio: "*", "*.example.com"), ignoring the
    /// namespace part.
    pub fn serves_host(&self, host: &str) -> bool {
        self.host_score(host).is_some()
    }

    /// How specifically this server's hosts cover `host` (larger is more specific:
    /// exact, then the longest wildcard suffix, `*` last); `None` when they do not.
    pub fn host_score(&self, host: &str) -> Option<usize> {
        self.bare_hosts().filter_map(|h| host_score(h, host)).max()
    }

    /// Whether requests are HTTP routed by `http` rules: an HTTP, HTTP2 or gRPC server,
    /// or HTTPS that terminates TLS (Istio's `IsHTTPServer`).
    pub fn is_http(&self) -> bool {
        self.protocol.is_http()
            || (self.protocol == ServerProtocol::Https
                && self.tls.as_ref().is_some_and(|t| !t.mode.is_passthrough()))
    }

    /// Whether TLS connections are forwarded undecrypted (PASSTHROUGH, AUTO_PASSTHROUGH).
    pub fn is_passthrough(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.mode.is_passthrough())
    }

    /// The hosts without their namespace part.
    fn bare_hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .iter()
            .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h))
    }

    /// The hosts a VirtualService in `namespace` may bind (Istio's `NamesForNamespace`:
    /// `ns/host` only for that namespace, `*/host` and `host` for any).
    fn hosts_for<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.hosts
            .iter()
            .filter_map(move |h| match h.split_once('/') {
                Some((ns, host)) if ns == "*" || ns == namespace => Some(host),
                Some(_) => None,
                None => Some(h.as_str()),
            })
    }

    fn describe(&self) -> String {
        format!(
            "{} servers[{}]{} (port {} {:?}, hosts {})",
            self.gateway,
            self.index,
            self.name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            self.port,
            self.protocol,
            self.hosts.join(", ")
        )
    }
}

/// A Gateway as the route table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// "ns/name".
    pub gateway: String,
    /// Its namespace.
    pub namespace: String,
    /// Workload labels it selects; `None` (or empty): every gateway workload.
    pub selector: Option<BTreeMap<String, String>>,
    /// Its servers (those on UDP or a unix socket left out).
    pub servers: Vec<GatewayServer>,
    pub(super) created: String,
    pub(super) name: String,
}

impl GatewayConfig {
    /// Whether it applies to a workload with `labels` (its selector is a subset).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// How specifically `pattern` (an exact name, `*.suffix`, or `*`; lowercase) covers
/// `host`: exact beats every wildcard, a longer suffix a shorter one, `*` comes last
/// (Envoy's virtual host and server-name order). `None` when it does not.
pub(super) fn host_score(pattern: &str, host: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len());
    }
    (pattern == host).then_some(usize::MAX)
}

/// Istio's `host.Name.SubsetOf`: every name `a` covers, `b` covers too.
fn subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.len() >= sb.len() && sa.ends_with(sb),
        (Some(_), None) => false,
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.Matches`: the two names cover a name in common.
fn overlaps(a: &str, b: &str) -> bool {
    subset_of(a, b) || subset_of(b, a)
}

/// Istio's `host.Names.Intersection`: for each pair that overlaps, the more specific
/// name, once.
fn intersection<'a>(server: impl Iterator<Item = &'a str>, vs: &'a [String]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for s in server {
        for v in vs {
            let pick = if subset_of(s, v) {
                s
            } else if subset_of(v, s) {
                v.as_str()
            } else {
                continue;
            };
            if !out.contains(&pick) {
                out.push(pick);
            }
        }
    }
    out
}

/// Istio's `resolveGatewayName`: `name` is `ns/name` in the VirtualService's namespace
/// (`./name` too); a legacy `name.ns.svc...` is `ns/name`; `mesh` stays.
pub(super) fn resolve_gateway_name(name: &str, namespace: &str) -> String {
    if name == "mesh" {
        return name.to_string();
    }
    match name.split_once('/') {
        Some((".", rest)) => format!("{namespace}/{rest}"),
        Some(_) => name.to_string(),
        None => match name.split_once('.') {
            None => format!("{namespace}/{name}"),
            Some((short, rest)) => {
                let ns = rest.split('.').next().unwrap_or(rest);
                format!("{ns}/{short}")
            }
        },
    }
}

/// Compiles a Gateway: the typed spec, then each server's protocol and port.
pub(super) fn compile_gateway(res: &Loaded<Value>) -> Result<GatewayConfig, Vec<RouteError>> {
    const KIND: &str = "Gateway";
    let spec: GatewaySpec = typed(res, KIND).map_err(|e| vec![*e])?;
    let namespace = res.resource.namespace().to_string();
    let name = res.resource.metadata.name.clone();
    let gateway = format!("{namespace}/{name}");
    let mut errors = Vec::new();
    let mut servers = Vec::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let at = |f: &str| format!("spec.servers[{i}].{f}");
        let unix = s.bind.as_deref().is_some_and(|b| b.starts_with("unix://"));
        let protocol = match ServerProtocol::parse(&s.port.protocol) {
            Some(p) => p,
            // Istio accepts UDP, and builds no TCP listener for it.
            None if s.port.protocol.eq_ignore_ascii_case("udp") => continue,
            None => {
                errors.push(err_at(
                    res,
                    KIND,
                    at("port.protocol"),
                    format!(
                        "{:?} is not a gateway protocol (HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, REDIS, MYSQL)",
                        s.port.protocol
                    ),
                ));
                continue;
            }
        };
        let port = match u16::try_from(s.port.number) {
            Ok(p) if p > 0 => p,
            // A unix-socket server has no port.
            Ok(0) if unix => continue,
            _ => {
                errors.push(err_at(
                    res,
                    KIND,
                    at("port.number"),
                    format!(
                        "port number {} must be in the range 1..65535",
                        s.port.number
                    ),
                ));
                continue;
            }
        };
        let hosts = s
            .hosts
            .iter()
            .map(|h| {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix("./") {
                    Some(rest) => format!("{namespace}/{rest}"),
                    None => h,
                }
            })
            .collect();
        let tls = s.tls.as_ref().map(|t| ServerTls {
            mode: t.mode,
            https_redirect: t.https_redirect,
            server_certificate: t.server_certificate.clone(),
            private_key: t.private_key.clone(),
            ca_certificates: t.ca_certificates.clone(),
            credential_name: t.credential_name.clone(),
            subject_alt_names: t.subject_alt_names.clone(),
            min_protocol_version: t.min_protocol_version.clone(),
            max_protocol_version: t.max_protocol_version.clone(),
        });
        servers.push(GatewayServer {
            gateway: gateway.clone(),
            name: s.name.clone(),
            index: i,
            port,
            port_name: s.port.name.clone(),
            protocol,
            hosts,
            tls,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(GatewayConfig {
        gateway,
        namespace,
        selector: spec.selector.filter(|s| !s.is_empty()),
        servers,
        created: res
            .resource
            .metadata
            .creation_timestamp
            .clone()
            .unwrap_or_default(),
        name,
    })
}

/// One route of a gateway's virtual host: a rule of a VirtualService and the match
/// block it was built from (none for a rule without `match`). Istio builds an Envoy
/// route per match block.
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    /// The gateway whose server built it.
    gateway: &'a str,
    vs: usize,
    route: usize,
    block: Option<usize>,
    catch_all: bool,
}

/// A virtual host of a gateway's route configuration (Istio's `vHostDedupMap` entry).
#[derive(Debug)]
struct VirtualHost<'a> {
    domain: &'a str,
    score: usize,
    entries: Vec<Entry<'a>>,
    require_tls: bool,
}

/// Where a TLS connection goes, by the filter chain its SNI selects.
#[derive(Debug, Clone, Copy)]
enum Chain<'a> {
    /// A `tls` rule of a VirtualService.
    Rule { vs: usize, rule: usize },
    /// An AUTO_PASSTHROUGH server: the cluster the SNI names.
    Auto,
    /// A TLS-terminating TCP/TLS server: its `tcp` rules.
    Terminate(&'a GatewayServer),
}

/// Istio's `IsCatchAllRoute` on the route a match block builds: the path matches
/// everything (no uri condition, prefix `/`, regex `.*`) and nothing is checked on
/// headers (method, scheme and authority are header conditions) or the query.
fn is_catch_all(m: &CompiledMatch) -> bool {
    use super::table::Matcher;
    let path_any = match &m.uri {
        None | Some(Matcher::Present) => true,
        Some(Matcher::Prefix(p)) => p == "/",
        Some(_) => false,
    };
    path_any
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.method.is_none()
        && m.scheme.is_none()
        && m.authority.is_none()
}

/// Istio's `TranslateRoute` and `sourceMatchHTTP` for a gateway: a block for another
/// port is dropped; a block naming gateways applies to those only (source labels and
/// namespace are then not looked at); else the gateway workload's labels and namespace
/// must match.
fn gateway_block_ok(m: &CompiledMatch, req: &RouteRequest, gateway: &str) -> bool {
    if m.port.is_some_and(|p| p != u32::from(req.port)) {
        return false;
    }
    if !m.gateways.is_empty() {
        return m.gateways.iter().any(|g| g == gateway);
    }
    m.source_labels
        .iter()
        .all(|(k, v)| req.source_labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == req.source_namespace)
}

/// Istio's `l4SingleMatch` on a gateway: the server's port and the gateway.
fn l4_gateway_ok(m: &L4Match, server: &GatewayServer) -> bool {
    m.port.is_none_or(|p| p == u32::from(server.port))
        && (m.gateways.is_empty() || m.gateways.contains(&server.gateway))
}

/// Istio's `matchTLS` for a sidecar: port, client labels and namespace, `mesh`.
fn l4_sidecar_ok(m: &L4Match, req: &RouteRequest) -> bool {
    m.port.is_none_or(|p| p == u32::from(req.port))
        && m.source_labels
            .iter()
            .all(|(k, v)| req.source_labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == req.source_namespace)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
}

/// The most specific of `patterns` covering `sni`; no pattern is a filter chain without
/// server names, which takes any SNI last.
fn sni_score(patterns: &[String], sni: &str) -> Option<usize> {
    if patterns.is_empty() {
        return Some(0);
    }
    patterns
        .iter()
        .filter_map(|p| host_score(&p.to_ascii_lowercase(), sni))
        .max()
}

/// The cluster an AUTO_PASSTHROUGH SNI names: `outbound_.PORT_.SUBSET_.HOST` (subset
/// empty for none).
fn parse_auto_sni(sni: &str) -> Option<(u32, Option<String>, String)> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (port, rest) = rest.split_once("_.")?;
    let (subset, host) = rest.split_once("_.")?;
    let port = port.parse().ok()?;
    if host.is_empty() {
        return None;
    }
    Some((
        port,
        (!subset.is_empty()).then(|| subset.to_string()),
        host.to_string(),
    ))
}

impl RouteTable {
    /// Servers of every Gateway whose `selector` matches `labels` (Istio matches gateway
    /// workloads in any namespace by default), ordered as Istio orders gateways
    /// (creationTimestamp, then name, then namespace). Gateway specs that do not compile
    /// are build errors of [`RouteTable::build`].
    pub fn gateway_servers(&self, labels: &BTreeMap<String, String>) -> Vec<GatewayServer> {
        self.gateways
            .iter()
            .filter(|g| g.selects(labels))
            .flat_map(|g| g.servers.iter().cloned())
            .collect()
    }

    /// The Gateway named `ns/name`.
    pub fn gateway(&self, name: &str) -> Option<&GatewayConfig> {
        self.gateway_index
            .get(name)
            .and_then(|&i| self.gateways.get(i))
    }

    /// Whether the config has any Gateway.
    pub fn has_gateways(&self) -> bool {
        !self.gateways.is_empty()
    }

    /// VirtualServices bound to `gateway` that a gateway workload in `client_ns` sees, in
    /// Istio's order (`VirtualServicesForGateway`): private to its namespace, exported
    /// to it by name, public; each oldest first.
    fn gateway_virtual_services(&self, gateway: &str, client_ns: &str) -> Vec<usize> {
        let list = self.gateway_vs.get(gateway).map(Vec::as_slice);
        self.in_gateway_order(list.unwrap_or_default().iter().copied(), client_ns)
    }

    /// The same, only those with a host covering `host`.
    fn gateway_virtual_services_for(
        &self,
        gateway: &str,
        client_ns: &str,
        host: &str,
    ) -> Vec<usize> {
        let Some(index) = self.gateway_vs_hosts.get(gateway) else {
            return Vec::new();
        };
        let mut found: Vec<usize> = index.lookup(host).into_iter().map(|(_, i)| i).collect();
        found.sort_unstable();
        found.dedup();
        self.in_gateway_order(found.into_iter(), client_ns)
    }

    /// `list` (ascending) visible from `client_ns`, private first, then exported, then
    /// public.
    fn in_gateway_order(&self, list: impl Iterator<Item = usize>, client_ns: &str) -> Vec<usize> {
        let mut out: Vec<(u8, usize)> = list
            .filter_map(|i| {
                let vs = &self.virtual_services[i];
                export_group(&vs.export_to, &vs.namespace, client_ns).map(|g| (g, i))
            })
            .collect();
        out.sort_unstable();
        out.into_iter().map(|(_, i)| i).collect()
    }

    /// The decision for a request a server of `req.gateways` accepted on `req.port`.
    pub(super) fn decide_gateway(
        &self,
        req: &RouteRequest,
        say: &mut impl FnMut(&dyn Fn() -> String),
        explaining: bool,
    ) -> Decision {
        let servers: Vec<&GatewayServer> = self
            .gateways
            .iter()
            .filter(|g| req.gateways.contains(&g.gateway))
            .flat_map(|g| g.servers.iter())
            .filter(|s| s.port == req.port)
            .collect();
        say(&|| {
            if servers.is_empty() {
                format!(
                    "no server of {} listens on port {}",
                    req.gateways.join(", "),
                    req.port
                )
            } else {
                format!(
                    "servers on port {}: {}",
                    req.port,
                    servers
                        .iter()
                        .map(|s| s.describe())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        });
        if req.http {
            self.gateway_http(req, &servers, say, explaining)
        } else if let Some(sni) = &req.sni {
            self.gateway_tls(req, &sni.to_ascii_lowercase(), &servers, say)
        } else {
            // A plain TCP server, or a TCP/TLS one terminating TLS (the proxy decided
            // which): Istio lets only one such server have the port.
            let server = servers
                .iter()
                .copied()
                .find(|s| !s.is_http() && !s.is_passthrough());
            self.gateway_tcp(req, server, say)
        }
    }

    /// Istio's `buildGatewayHTTPRouteConfig`, for the virtual host that serves the
    /// request's host, then Envoy's first matching route.
    fn gateway_http(
        &self,
        req: &RouteRequest,
        servers: &[&GatewayServer],
        say: &mut impl FnMut(&dyn Fn() -> String),
        explaining: bool,
    ) -> Decision {
        let host = bare_host(&req.host);
        let mut servers: Vec<&GatewayServer> =
            servers.iter().copied().filter(|s| s.is_http()).collect();
        // A TLS-terminating HTTPS server has a route configuration of its own
        // (`https.PORT.NAME.GATEWAY.NS`): the one whose hosts the SNI selects.
        if servers.iter().any(|s| s.protocol == ServerProtocol::Https) {
            let name = req
                .sni
                .as_deref()
                .map_or_else(|| host.clone(), str::to_ascii_lowercase);
            let mut best: Option<(usize, &GatewayServer)> = None;
            for &s in &servers {
                if let Some(score) = s.host_score(&name)
                    && best.is_none_or(|(b, _)| score > b)
                {
                    best = Some((score, s));
                }
            }
            servers = best.map(|(_, s)| vec![s]).unwrap_or_default();
        }
        let mut vhosts: Vec<VirtualHost> = Vec::new();
        fn vhost<'v, 'a>(
            vhosts: &'v mut Vec<VirtualHost<'a>>,
            domain: &'a str,
            score: usize,
        ) -> &'v mut VirtualHost<'a> {
            let i = match vhosts.iter().position(|v| v.domain == domain) {
                Some(i) => i,
                None => {
                    vhosts.push(VirtualHost {
                        domain,
                        score,
                        entries: Vec::new(),
                        require_tls: false,
                    });
                    vhosts.len() - 1
                }
            };
            &mut vhosts[i]
        }
        for server in &servers {
            let redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect);
            for vi in
                self.gateway_virtual_services_for(&server.gateway, &req.source_namespace, &host)
            {
                let vs = &self.virtual_services[vi];
                let domains: Vec<(&str, usize)> =
                    intersection(server.hosts_for(&vs.namespace), &vs.hosts)
                        .into_iter()
                        .filter_map(|d| host_score(d, &host).map(|s| (d, s)))
                        .collect();
                if domains.is_empty() {
                    continue;
                }
                let entries = gateway_entries(vi, vs, req, &server.gateway);
                if entries.is_empty() {
                    say(&|| {
                        format!(
                            "{}/{} is bound to {} for {host} but no http rule applies to port {} and this gateway: it adds no routes",
                            vs.namespace, vs.name, server.gateway, req.port
                        )
                    });
                    continue;
                }
                for (d, score) in domains {
                    say(&|| {
                        format!(
                            "{}/{} adds {} route(s) to virtual host {d} ({})",
                            vs.namespace,
                            vs.name,
                            entries.len(),
                            server.gateway
                        )
                    });
                    let v = vhost(&mut vhosts, d, score);
                    v.entries.extend_from_slice(&entries);
                    v.require_tls |= redirect;
                }
            }
            if redirect {
                for h in server.bare_hosts() {
                    if let Some(score) = host_score(h, &host) {
                        vhost(&mut vhosts, h, score).require_tls = true;
                    }
                }
            }
        }
        let gateways = req.gateways.join(", ");
        if servers.is_empty() {
            return Decision {
                action: "no_route",
                status: Some(404),
                note: Some(format!(
                    "gateway {gateways} has no HTTP server on port {} for host {host}: no route (404, response flag NR)",
                    req.port
                )),
                ..Default::default()
            };
        }
        let Some(best) = vhosts.into_iter().max_by_key(|v| v.score) else {
            say(&|| {
                format!(
                    "no virtual host of {gateways} on port {} serves {host}",
                    req.port
                )
            });
            return Decision {
                action: "no_route",
                status: Some(404),
                note: Some(format!(
                    "no VirtualService bound to gateway {gateways} serves host {host} on port {}: the gateway answers 404 (response flag NR)",
                    req.port
                )),
                ..Default::default()
            };
        };
        say(&|| format!("virtual host {} serves {host}", best.domain));
        if best.require_tls && req.scheme != "https" {
            let authority = req.host.trim();
            return Decision {
                action: "redirect",
                redirect: Some(json!({
                    "uri": req.path,
                    "authority": authority,
                    "scheme": "https",
                    "port": null,
                    "status": 301,
                    "location": format!("https://{authority}{}", req.path),
                })),
                status: Some(301),
                note: Some(
                    "the gateway server sets tls.httpsRedirect: a plain-text request is redirected to https"
                        .into(),
                ),
                ..Default::default()
            };
        }
        // Istio's `SortVHostRoutes`: catch-all routes last, the others in order.
        let mut entries = best.entries;
        entries.sort_by_key(|e| e.catch_all);
        for e in &entries {
            let vs = &self.virtual_services[e.vs];
            let key = format!("{}/{}", vs.namespace, vs.name);
            let route = &vs.http[e.route];
            let block = match e.block {
                None => None,
                Some(k) => {
                    let m = &route.matches[k];
                    if let Err(why) = request_matches(m, req, explaining) {
                        say(&|| {
                            format!(
                                "{key} http[{}]{} match[{k}]: no match: {why}",
                                e.route,
                                name_of(route)
                            )
                        });
                        continue;
                    }
                    Some(m)
                }
            };
            say(&|| {
                format!(
                    "{key} http[{}]{}{}: matches",
                    e.route,
                    name_of(route),
                    e.block.map(|k| format!(" match[{k}]")).unwrap_or_default()
                )
            });
            let Some(delegate) = &route.spec.delegate else {
                return self.act(vs, &key, e.route, route, block, req);
            };
            // A delegate's rules stand in for the root rule (Istio merges them into it).
            let ns = delegate
                .namespace
                .clone()
                .unwrap_or_else(|| vs.namespace.clone());
            let Some(&di) = self.by_name.get(&(ns.clone(), delegate.name.clone())) else {
                say(&|| format!("delegate {ns}/{} does not exist", delegate.name));
                continue;
            };
            let dvs = &self.virtual_services[di];
            let dkey = format!("{}/{}", dvs.namespace, dvs.name);
            for (j, droute) in dvs.http.iter().enumerate() {
                let mut whys = Vec::new();
                let hit = if droute.matches.is_empty() {
                    Some(None)
                } else {
                    let mut found = None;
                    for (k, m) in droute.matches.iter().enumerate() {
                        if !gateway_block_ok(m, req, e.gateway) {
                            continue;
                        }
                        match request_matches(m, req, explaining) {
                            Ok(()) => {
                                found = Some(Some(m));
                                break;
                            }
                            Err(why) if explaining => whys.push(format!("match[{k}]: {why}")),
                            Err(_) => {}
                        }
                    }
                    found
                };
                match hit {
                    Some(dm) => {
                        say(&|| format!("{dkey} http[{j}]{}: matches", name_of(droute)));
                        let mut d = self.act(dvs, &dkey, j, droute, dm.or(block), req);
                        inherit(&mut d, route);
                        return d;
                    }
                    None => say(&|| {
                        format!(
                            "{dkey} http[{j}]{}: no match: {}",
                            name_of(droute),
                            whys.join("; ")
                        )
                    }),
                }
            }
        }
        let owner = entries.first().map(|e| {
            let vs = &self.virtual_services[e.vs];
            format!("{}/{}", vs.namespace, vs.name)
        });
        say(&|| format!("no route of virtual host {} matches: 404", best.domain));
        Decision {
            action: "no_route",
            virtual_service: owner,
            status: Some(404),
            note: Some(format!(
                "virtual host {} of gateway {gateways} has no route matching the request: 404 (response flag NR)",
                best.domain
            )),
            ..Default::default()
        }
    }

    /// A plain TCP server (or one terminating TLS): the first VirtualService bound to its
    /// gateway, with a host in common with the server, whose `tcp` rule matches
    /// (`buildGatewayNetworkFiltersFromTCPRoutes`).
    fn gateway_tcp(
        &self,
        req: &RouteRequest,
        server: Option<&GatewayServer>,
        say: &mut impl FnMut(&dyn Fn() -> String),
    ) -> Decision {
        let Some(server) = server else {
            return Decision {
                action: "no_route",
                note: Some(format!(
                    "gateway {} has no TCP server on port {}: the connection is refused",
                    req.gateways.join(", "),
                    req.port
                )),
                ..Default::default()
            };
        };
        for vi in self.gateway_virtual_services(&server.gateway, &req.source_namespace) {
            let vs = &self.virtual_services[vi];
            if !binds(server, vs) {
                continue;
            }
            let key = format!("{}/{}", vs.namespace, vs.name);
            for (i, rule) in vs.tcp.iter().enumerate() {
                let hit = !rule.route.is_empty()
                    && (rule.matches.is_empty()
                        || rule.matches.iter().any(|m| l4_gateway_ok(m, server)));
                if hit {
                    say(&|| format!("{key} tcp[{i}]: matches"));
                    return self.l4_decision(vs, &key, i, &rule.route, req);
                }
                say(&|| format!("{key} tcp[{i}]: no match"));
            }
        }
        Decision {
            action: "no_route",
            note: Some(format!(
                "no VirtualService bound to gateway {} has a tcp rule for port {}: the connection is closed",
                server.gateway, server.port
            )),
            ..Default::default()
        }
    }

    /// A TLS connection by its SNI: Envoy's filter chain with the most specific server
    /// name among the `tls` rules of passthrough servers
    /// (`buildGatewayNetworkFiltersFromTLSRoutes`), the hosts of AUTO_PASSTHROUGH
    /// servers, and the hosts of TLS-terminating TCP/TLS servers.
    fn gateway_tls(
        &self,
        req: &RouteRequest,
        sni: &str,
        servers: &[&GatewayServer],
        say: &mut impl FnMut(&dyn Fn() -> String),
    ) -> Decision {
        let mut best: Option<(usize, Chain)> = None;
        let mut consider = |score: Option<usize>, chain| {
            if let Some(s) = score
                && best.as_ref().is_none_or(|(b, _)| s > *b)
            {
                best = Some((s, chain));
            }
        };
        // SNI names already taken by a filter chain: a later rule naming one is skipped.
        let mut taken: HashSet<String> = HashSet::new();
        for server in servers.iter().copied().filter(|s| !s.is_http()) {
            let Some(tls) = &server.tls else {
                continue;
            };
            let hosts: Vec<String> = server.bare_hosts().map(str::to_string).collect();
            match tls.mode {
                TlsMode::Passthrough => {
                    for vi in self.gateway_virtual_services(&server.gateway, &req.source_namespace)
                    {
                        let vs = &self.virtual_services[vi];
                        if !binds(server, vs) {
                            continue;
                        }
                        for (i, rule) in vs.tls.iter().enumerate() {
                            if rule.route.is_empty() {
                                continue;
                            }
                            for m in rule.matches.iter().filter(|m| l4_gateway_ok(m, server)) {
                                if m.sni_hosts.iter().any(|h| taken.contains(h)) {
                                    say(&|| {
                                        format!(
                                            "{}/{} tls[{i}]: skipped, its SNI hosts are already routed",
                                            vs.namespace, vs.name
                                        )
                                    });
                                    continue;
                                }
                                taken.extend(m.sni_hosts.iter().cloned());
                                consider(
                                    sni_score(&m.sni_hosts, sni),
                                    Chain::Rule { vs: vi, rule: i },
                                );
                            }
                        }
                    }
                }
                TlsMode::AutoPassthrough => consider(sni_score(&hosts, sni), Chain::Auto),
                _ => consider(sni_score(&hosts, sni), Chain::Terminate(server)),
            }
        }
        match best {
            None => Decision {
                action: "no_route",
                note: Some(format!(
                    "no server or tls rule of gateway {} on port {} takes SNI {sni}: the connection is closed",
                    req.gateways.join(", "),
                    req.port
                )),
                ..Default::default()
            },
            Some((_, Chain::Rule { vs, rule })) => {
                let vs = &self.virtual_services[vs];
                let key = format!("{}/{}", vs.namespace, vs.name);
                say(&|| format!("{key} tls[{rule}]: SNI {sni} matches"));
                self.l4_decision(vs, &key, rule, &vs.tls[rule].route, req)
            }
            Some((_, Chain::Auto)) => match parse_auto_sni(sni) {
                Some((port, subset, host)) => {
                    say(&|| format!("AUTO_PASSTHROUGH: SNI {sni} names {host}"));
                    let mut d = Decision {
                        action: "route",
                        destinations: vec![DestinationOut {
                            host,
                            subset,
                            port: Some(port),
                            weight: 100,
                        }],
                        ..Default::default()
                    };
                    self.fill_policy(&mut d, req);
                    d
                }
                None => Decision {
                    action: "no_route",
                    note: Some(format!(
                        "AUTO_PASSTHROUGH: SNI {sni} does not name a cluster (outbound_.PORT_.SUBSET_.HOST): the connection is closed"
                    )),
                    ..Default::default()
                },
            },
            Some((_, Chain::Terminate(server))) => {
                say(&|| format!("{} terminates TLS for SNI {sni}", server.describe()));
                self.gateway_tcp(req, Some(server), say)
            }
        }
    }

    /// A sidecar's `tls` rules for a TLS connection to a host `vs` owns
    /// (`buildSidecarOutboundTLSFilterChainOpts`): `None` when no rule applies to this
    /// client and port (the connection is then decided as TCP).
    pub(super) fn sidecar_tls(
        &self,
        vs: &CompiledVs,
        key: &str,
        req: &RouteRequest,
        sni: &str,
        say: &mut impl FnMut(&dyn Fn() -> String),
    ) -> Option<Decision> {
        let sni = sni.to_ascii_lowercase();
        let mut seen: HashSet<(Vec<String>, Vec<String>)> = HashSet::new();
        let mut best: Option<(usize, usize)> = None;
        for (i, rule) in vs.tls.iter().enumerate() {
            if rule.route.is_empty() {
                continue;
            }
            for m in rule.matches.iter().filter(|m| l4_sidecar_ok(m, req)) {
                // A later block with the same SNI hosts and subnets is never reached.
                if !seen.insert((m.sni_hosts.clone(), m.destination_subnets.clone())) {
                    continue;
                }
                if let Some(s) = sni_score(&m.sni_hosts, &sni)
                    && best.is_none_or(|(b, _)| s > b)
                {
                    best = Some((s, i));
                }
            }
        }
        if seen.is_empty() {
            return None;
        }
        Some(match best {
            Some((_, i)) => {
                say(&|| format!("{key} tls[{i}]: SNI {sni} matches"));
                self.l4_decision(vs, key, i, &vs.tls[i].route, req)
            }
            None => {
                say(&|| format!("no tls rule of {key} matches SNI {sni}"));
                Decision {
                    action: "no_route",
                    virtual_service: Some(key.to_string()),
                    note: Some(format!(
                        "a VirtualService owns the host and no tls rule matches SNI {sni}: the connection is closed"
                    )),
                    ..Default::default()
                }
            }
        })
    }

    /// The decision of a `tcp` or `tls` rule: its weighted destinations (hosts in the
    /// VirtualService's namespace) and their policy.
    pub(super) fn l4_decision(
        &self,
        vs: &CompiledVs,
        key: &str,
        index: usize,
        route: &[RouteDestination],
        req: &RouteRequest,
    ) -> Decision {
        let mut d = Decision {
            action: "route",
            virtual_service: Some(key.to_string()),
            route_index: Some(index),
            destinations: weighted(
                route.iter().map(|r| (&r.destination, r.weight)).collect(),
                &vs.namespace,
                &self.options.domain,
            ),
            ..Default::default()
        };
        self.fill_policy(&mut d, req);
        d
    }
}

/// Istio's `pickMatchingGatewayHosts` is not empty: a host of the server (for `ns/host`,
/// only in that namespace) overlaps a host of the VirtualService.
fn binds(server: &GatewayServer, vs: &CompiledVs) -> bool {
    server
        .hosts_for(&vs.namespace)
        .any(|s| vs.hosts.iter().any(|v| overlaps(s, v)))
}

/// The routes a VirtualService gives a gateway's virtual host (Istio's
/// `BuildHTTPRoutesForVirtualService` with the gateway's name and port): one per match
/// block that applies, none after a catch-all.
fn gateway_entries<'a>(
    vi: usize,
    vs: &CompiledVs,
    req: &RouteRequest,
    gateway: &'a str,
) -> Vec<Entry<'a>> {
    let mut out = Vec::new();
    for (i, route) in vs.http.iter().enumerate() {
        if route.matches.is_empty() {
            out.push(Entry {
                gateway,
                vs: vi,
                route: i,
                block: None,
                catch_all: true,
            });
            break;
        }
        let mut catch_all = false;
        for (k, m) in route.matches.iter().enumerate() {
            if gateway_block_ok(m, req, gateway) {
                catch_all = is_catch_all(m);
                out.push(Entry {
                    gateway,
                    vs: vi,
                    route: i,
                    block: Some(k),
                    catch_all,
                });
                if catch_all {
                    break;
                }
            }
        }
        if catch_all {
            break;
        }
    }
    out
}
