//! The route table: VirtualServices, DestinationRules and Gateways compiled once per
//! config version, and the client sidecar's decision for one request (a gateway's is in
//! `gateway`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;
use serde::Serialize;
use serde_json::{Value, json};

use super::cors::{self, Cors};
use super::duration;
use super::gateway::{GatewayConfig, compile_gateway, resolve_gateway_name};
use super::model::{
    Destination, DestinationRuleSpec, HeaderOperations, Headers, HttpMatch, HttpRoute, StringMatch,
    TcpRoute, TlsRoute, VirtualServiceSpec,
};
use crate::loader::{ConfigSet, Loaded};

/// Istio's default HTTP retry policy for routes without `retries`
/// (`meshConfig.defaultHttpRetryPolicy` unset).
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Retries of that policy.
pub const DEFAULT_RETRY_ATTEMPTS: i64 = 2;

/// A resource that does not compile, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {kind} {namespace}/{name}: {field}: {message}")]
pub struct RouteError {
    /// Where it was loaded from.
    pub origin: String,
    /// `VirtualService`, `DestinationRule` or `Gateway`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The field path, e.g. `spec.http[0].match[1].uri.regex`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Settings the table needs beside the resources.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// The cluster's DNS domain (`cluster.local`).
    pub domain: String,
    /// The namespace whose DestinationRules apply mesh-wide (`istio-system`).
    pub root_namespace: String,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
        }
    }
}

/// A string condition, compiled.
#[derive(Debug, Clone)]
pub(super) enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    /// Presence (no match type, `prefix: ""`, `regex: "*"` or `.*`).
    Present,
}

impl Matcher {
    fn compile(m: &StringMatch, field: &str) -> Result<Self, (String, String)> {
        let set = [&m.exact, &m.prefix, &m.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            return Err((
                field.to_string(),
                "only one of exact, prefix and regex may be set".into(),
            ));
        }
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) => Self::Exact(e.clone()),
            (_, Some(p), _) if p.is_empty() => Self::Present,
            (_, Some(p), _) => Self::Prefix(p.clone()),
            (_, _, Some(r)) if r == "*" || r == ".*" => Self::Present,
            (_, _, Some(r)) => {
                Self::Regex(full_regex(r).map_err(|e| (format!("{field}.regex"), e))?)
            }
            _ => Self::Present,
        })
    }

    fn matches(&self, value: Option<&str>, ignore_case: bool) -> bool {
        let Some(v) = value else {
            return false;
        };
        match self {
            Self::Exact(e) if ignore_case => v.eq_ignore_ascii_case(e),
            Self::Exact(e) => v == e,
            Self::Prefix(p) if ignore_case => {
                v.len() >= p.len()
                    && v.is_char_boundary(p.len())
                    && v[..p.len()].eq_ignore_ascii_case(p)
            }
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(v),
            Self::Present => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Exact(e) => format!("exact {e:?}"),
            Self::Prefix(p) => format!("prefix {p:?}"),
            Self::Regex(r) => format!(
                "regex {:?}",
                r.as_str().trim_start_matches("^(?:").trim_end_matches(")$")
            ),
            Self::Present => "present".into(),
        }
    }
}

/// RE2 syntax, matched against the whole value (Envoy's `safe_regex`).
pub(super) fn full_regex(r: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{r})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{r:?} is not an RE2 regular expression: {e}"))
}

#[derive(Debug, Clone)]
pub(super) struct CompiledMatch {
    pub(super) name: Option<String>,
    pub(super) uri: Option<Matcher>,
    pub(super) scheme: Option<Matcher>,
    pub(super) method: Option<Matcher>,
    pub(super) authority: Option<Matcher>,
    pub(super) headers: Vec<(String, Matcher)>,
    pub(super) without_headers: Vec<(String, Matcher)>,
    pub(super) query_params: Vec<(String, Matcher)>,
    pub(super) port: Option<u32>,
    pub(super) source_labels: BTreeMap<String, String>,
    pub(super) source_namespace: Option<String>,
    /// `ns/name` (qualified in the VirtualService's namespace) or `mesh`.
    pub(super) gateways: Vec<String>,
    pub(super) ignore_uri_case: bool,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledRoute {
    pub(super) spec: HttpRoute,
    pub(super) matches: Vec<CompiledMatch>,
    pub(super) regex_rewrite: Option<(Regex, String)>,
    /// The compiled `corsPolicy`, shared by every decision of the route.
    pub(super) cors: Option<Arc<Cors>>,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledVs {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) created: String,
    /// Fully qualified hosts (`*.x` wildcards, `*`).
    pub(super) hosts: Vec<String>,
    pub(super) export_to: Vec<String>,
    /// Applies to sidecars (`gateways` empty or naming `mesh`).
    pub(super) mesh: bool,
    /// The Gateways it is bound to, `ns/name` (`mesh` left out).
    pub(super) gateways: Vec<String>,
    pub(super) http: Vec<CompiledRoute>,
    pub(super) has_tcp: bool,
    /// Match `gateways` qualified like `gateways`.
    pub(super) tcp: Vec<TcpRoute>,
    /// Likewise.
    pub(super) tls: Vec<TlsRoute>,
}

#[derive(Debug, Clone)]
struct CompiledDr {
    namespace: String,
    name: String,
    created: String,
    host: String,
    export_to: Vec<String>,
    spec: DestinationRuleSpec,
}

/// The compiled route table.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub(super) options: TableOptions,
    /// Oldest first (creation time, then name, then namespace): Istio's precedence.
    pub(super) virtual_services: Vec<CompiledVs>,
    pub(super) by_name: HashMap<(String, String), usize>,
    destination_rules: Vec<CompiledDr>,
    /// VirtualService hosts to indexes in `virtual_services` (sidecar ones only).
    vs_hosts: HostIndex,
    /// DestinationRule hosts, per namespace, to indexes in `destination_rules`.
    dr_hosts: HashMap<String, HostIndex>,
    /// Hosts ServiceEntries declare.
    se_hosts: HostIndex,
    /// Namespaces any resource lives in (`reviews.foo` names a service only when `foo`
    /// is a namespace).
    namespaces: std::collections::BTreeSet<String>,
    /// Gateways, oldest first (creation time, then name, then namespace).
    pub(super) gateways: Vec<GatewayConfig>,
    /// `ns/name` to its index in `gateways`.
    pub(super) gateway_index: HashMap<String, usize>,
    /// `ns/name` of a Gateway to the VirtualServices bound to it (indexes in
    /// `virtual_services`, ascending); apart from `vs_hosts`, so sidecars never look.
    pub(super) gateway_vs: HashMap<String, Vec<usize>>,
    /// The same by host, for HTTP: a VirtualService can serve a Host only if one of
    /// its hosts covers it.
    pub(super) gateway_vs_hosts: HashMap<String, HostIndex>,
}

/// The client and its request.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    /// Client namespace.
    pub source_namespace: String,
    /// Client workload labels.
    pub source_labels: BTreeMap<String, String>,
    /// HTTP (true) or TCP.
    pub http: bool,
    /// The Host header (or the name a TCP client resolved), maybe with `:port`.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Request headers (names matched lowercase).
    pub headers: BTreeMap<String, String>,
    /// `http` or `https` (the `:scheme`).
    pub scheme: String,
    /// Leave `subset_labels`, `traffic_policy` and `destination_rule` out of the
    /// decision (the proxy looks the policy up for the destination it draws).
    pub skip_policy: bool,
    /// "ns/name" of the Gateways whose server accepted the request (the server on this
    /// port whose hosts serve the request's host); empty: decide as a client sidecar.
    /// The source fields are then the gateway workload's.
    pub gateways: Vec<String>,
    /// The TLS SNI of a TLS connection (`tls` rules match `sniHosts` against it); None
    /// otherwise. On a gateway, a connection a TCP/TLS server terminated TLS for may come
    /// with or without it: that server's `tcp` rules decide.
    pub sni: Option<String>,
}

/// One destination of the decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationOut {
    /// Fully qualified host.
    pub host: String,
    /// Subset, if any.
    pub subset: Option<String>,
    /// Port, if the route names one (else the request's).
    pub port: Option<u32>,
    /// Configured weight (100 for a lone destination without one).
    pub weight: i64,
}

/// What the client sidecar does with the request.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Decision {
    /// `route`, `redirect`, `direct_response` or `no_route`.
    pub action: &'static str,
    /// `ns/name` of the deciding VirtualService.
    pub virtual_service: Option<String>,
    /// Index of the rule in its `http` (or `tcp`) list.
    pub route_index: Option<usize>,
    /// The rule's name.
    pub route_name: Option<String>,
    /// Weighted destinations.
    pub destinations: Vec<DestinationOut>,
    /// `{uri, authority}` after rewriting.
    pub rewrite: Option<Value>,
    /// `{uri (the Location path), authority, scheme, port, status}`.
    pub redirect: Option<Value>,
    /// `{status, body}`.
    pub direct_response: Option<Value>,
    /// `{delay: {fixed_delay, percent}, abort: {http_status|grpc_status, percent}}`.
    pub fault: Option<Value>,
    /// Request timeout (none: no timeout).
    pub timeout: Option<String>,
    /// `{attempts, per_try_timeout, retry_on}`.
    pub retries: Option<Value>,
    /// `{host, subset, percent}`.
    pub mirror: Option<Value>,
    /// Request header operations (route and lone destination merged).
    pub request_headers: Option<HeaderOperations>,
    /// Response header operations.
    pub response_headers: Option<HeaderOperations>,
    /// The route's CORS policy, as Envoy's CORS filter applies it (`route` only: the
    /// filter passes redirects and direct responses by).
    #[serde(serialize_with = "cors::serialize_shared")]
    pub cors: Option<Arc<Cors>>,
    /// Labels of the chosen destination's subset.
    pub subset_labels: Option<BTreeMap<String, String>>,
    /// The effective DestinationRule traffic policy for the chosen destination.
    pub traffic_policy: Option<Value>,
    /// `ns/name` of that DestinationRule.
    pub destination_rule: Option<String>,
    /// Status the sidecar answers with itself (404 when no route matches).
    pub status: Option<u32>,
    /// What the outbound traffic policy does, for `no_route`.
    pub note: Option<String>,
}

/// Which of Istio's groups a VirtualService falls in for a client in `client_ns`: 0
/// private to the client's namespace, 1 exported to it by name, 2 public; `None` when
/// it is not visible.
pub(super) fn export_group(export_to: &[String], own_ns: &str, client_ns: &str) -> Option<u8> {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return Some(2);
    }
    let private = export_to.iter().all(|e| e == "." || e == own_ns);
    if own_ns == client_ns && private {
        return Some(0);
    }
    visible(export_to, own_ns, client_ns).then_some(1)
}

fn visible(export_to: &[String], own_ns: &str, client_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == client_ns || (e == "." && own_ns == client_ns))
            && !export_to.iter().any(|e| e == "~")
}

/// `name` qualified in `namespace` (Istio's short-name resolution: a name without a
/// dot is `<name>.<namespace>.svc.<domain>`; anything else is taken as written).
fn fqdn(name: &str, namespace: &str, domain: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.contains('.') || name.starts_with('*') {
        name
    } else {
        format!("{name}.{namespace}.svc.{domain}")
    }
}

/// Hosts (exact, `*.suffix` wildcards, `*`) to the items that name them, so a lookup
/// costs the labels of the host, not the number of items.
#[derive(Debug, Clone, Default)]
pub(super) struct HostIndex {
    exact: HashMap<String, Vec<usize>>,
    /// By the suffix after `*` (`.example.com`).
    suffix: HashMap<String, Vec<usize>>,
    any: Vec<usize>,
}

impl HostIndex {
    fn insert(&mut self, pattern: &str, item: usize) {
        let list = if pattern == "*" {
            &mut self.any
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            self.suffix.entry(suffix.to_string()).or_default()
        } else {
            self.exact.entry(pattern.to_string()).or_default()
        };
        if list.last() != Some(&item) {
            list.push(item);
        }
    }

    /// Items whose pattern covers `host`, with how specifically: exact beats every
    /// wildcard, a longer wildcard suffix beats a shorter one, `*` comes last.
    pub(super) fn lookup(&self, host: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        if let Some(items) = self.exact.get(host) {
            out.extend(items.iter().map(|&i| (usize::MAX, i)));
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            let suffix = &rest[dot..];
            if let Some(items) = self.suffix.get(suffix) {
                out.extend(items.iter().map(|&i| (suffix.len(), i)));
            }
            rest = &rest[dot + 1..];
        }
        out.extend(self.any.iter().map(|&i| (0, i)));
        out
    }

    fn has_exact(&self, host: &str) -> bool {
        self.exact.contains_key(host)
    }
}

/// `host` without `:port`, lowercase.
pub(super) fn bare_host(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    if let Some((name, port)) = h.rsplit_once(':')
        && !name.contains(':')
        && port.chars().all(|c| c.is_ascii_digit())
    {
        return name.to_string();
    }
    h
}

impl RouteTable {
    /// Compiles the VirtualServices and DestinationRules of `set`; every error is
    /// reported, and nothing is built unless all compile.
    pub fn build(set: &ConfigSet, options: TableOptions) -> Result<Self, Vec<RouteError>> {
        let mut errors = Vec::new();
        let mut vss = Vec::new();
        for vs in &set.virtual_services {
            match compile_vs(vs, &options) {
                Ok(c) => vss.push(c),
                Err(e) => errors.extend(e),
            }
        }
        let mut drs = Vec::new();
        for dr in &set.destination_rules {
            match compile_dr(dr, &options) {
                Ok(c) => drs.push(c),
                Err(e) => errors.push(*e),
            }
        }
        let mut gateways = Vec::new();
        for gw in &set.gateways {
            match compile_gateway(gw) {
                Ok(c) => gateways.push(c),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Istio's order: creation time, then name, then namespace.
        vss.sort_by(|a, b| {
            (&a.created, &a.name, &a.namespace).cmp(&(&b.created, &b.name, &b.namespace))
        });
        drs.sort_by(|a, b| {
            (&a.created, &a.name, &a.namespace).cmp(&(&b.created, &b.name, &b.namespace))
        });
        gateways.sort_by(|a, b| {
            (&a.created, &a.name, &a.namespace).cmp(&(&b.created, &b.name, &b.namespace))
        });
        let gateway_index = gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (g.gateway.clone(), i))
            .collect();
        let by_name = vss
            .iter()
            .enumerate()
            .map(|(i, v)| ((v.namespace.clone(), v.name.clone()), i))
            .collect();
        let mut vs_hosts = HostIndex::default();
        let mut gateway_vs: HashMap<String, Vec<usize>> = HashMap::new();
        let mut gateway_vs_hosts: HashMap<String, HostIndex> = HashMap::new();
        for (i, vs) in vss.iter().enumerate() {
            if vs.mesh {
                for h in &vs.hosts {
                    vs_hosts.insert(h, i);
                }
            }
            for g in &vs.gateways {
                let list = gateway_vs.entry(g.clone()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
                let index = gateway_vs_hosts.entry(g.clone()).or_default();
                for h in &vs.hosts {
                    index.insert(h, i);
                }
            }
        }
        let mut dr_hosts: HashMap<String, HostIndex> = HashMap::new();
        for (i, dr) in drs.iter().enumerate() {
            dr_hosts
                .entry(dr.namespace.clone())
                .or_default()
                .insert(&dr.host, i);
        }
        let mut se_hosts = HostIndex::default();
        for (i, se) in set.service_entries.iter().enumerate() {
            let ns = se.resource.namespace();
            for h in &se.resource.spec.hosts {
                se_hosts.insert(&fqdn(h, ns, &options.domain), i);
            }
        }
        let mut namespaces: std::collections::BTreeSet<String> = vss
            .iter()
            .map(|v| v.namespace.clone())
            .chain(drs.iter().map(|d| d.namespace.clone()))
            .collect();
        fn namespaces_of<S>(list: &[Loaded<S>]) -> impl Iterator<Item = String> + '_ {
            list.iter().map(|r| r.resource.namespace().to_string())
        }
        namespaces.extend(namespaces_of(&set.service_entries));
        namespaces.extend(namespaces_of(&set.authorization_policies));
        namespaces.extend(namespaces_of(&set.peer_authentications));
        namespaces.extend(namespaces_of(&set.workload_entries));
        namespaces.extend(namespaces_of(&set.gateways));
        Ok(Self {
            options,
            namespaces,
            virtual_services: vss,
            by_name,
            destination_rules: drs,
            vs_hosts,
            dr_hosts,
            se_hosts,
            gateways,
            gateway_index,
            gateway_vs,
            gateway_vs_hosts,
        })
    }

    /// The host the client means: its Host qualified as the sidecar's virtual hosts
    /// accept it (`reviews` in the client's namespace, `reviews.ns`, `reviews.ns.svc`).
    fn resolve_host(&self, host: &str, client_ns: &str) -> String {
        let h = bare_host(host);
        let h = h.strip_suffix('.').map(str::to_string).unwrap_or(h);
        let domain = &self.options.domain;
        let dots = h.matches('.').count();
        if h.parse::<std::net::IpAddr>().is_ok() {
            return h;
        }
        let known = |c: &str| !self.se_hosts.lookup(c).is_empty() || self.vs_hosts.has_exact(c);
        if known(&h) {
            return h;
        }
        let namespace_known = |ns: &str| ns == client_ns || self.namespaces.contains(ns);
        match dots {
            0 => format!("{h}.{client_ns}.svc.{domain}"),
            1 if h
                .rsplit_once('.')
                .is_some_and(|(_, ns)| namespace_known(ns)) =>
            {
                format!("{h}.svc.{domain}")
            }
            _ if h.ends_with(".svc") => format!("{h}.{domain}"),
            _ => h,
        }
    }

    /// Whether the registry knows `fqdn`: a Kubernetes service name of this cluster
    /// (assumed to exist: the registry is not visible offline), a ServiceEntry host,
    /// or a VirtualService host.
    fn is_known(&self, fqdn: &str) -> bool {
        fqdn.ends_with(&format!(".svc.{}", self.options.domain))
            || !self.se_hosts.lookup(fqdn).is_empty()
    }

    /// The VirtualService a client sidecar in `client_ns` uses for `host`, as Istio's
    /// `SelectVirtualServices` and `BuildSidecarOutboundVirtualHosts` pick it: the
    /// most specific host match (exact, then the longest wildcard); among equals, those
    /// private to the client's namespace first, then those exported to it by name, then
    /// public ones, each group oldest first. Only one VirtualService is used per host.
    fn virtual_service_for(&self, host: &str, client_ns: &str) -> Option<&CompiledVs> {
        use std::cmp::Reverse;
        let mut best: Option<(usize, Reverse<u8>, Reverse<usize>)> = None;
        for (score, i) in self.vs_hosts.lookup(host) {
            let vs = &self.virtual_services[i];
            let Some(group) = export_group(&vs.export_to, &vs.namespace, client_ns) else {
                continue;
            };
            let key = (score, Reverse(group), Reverse(i));
            if best.is_none_or(|b| key > b) {
                best = Some(key);
            }
        }
        best.map(|(_, _, Reverse(i))| &self.virtual_services[i])
    }

    /// The DestinationRule for `host` seen from `client_ns`: the client's namespace
    /// first, then the service's, then the root namespace; the most specific host.
    fn destination_rule_for(
        &self,
        host: &str,
        client_ns: &str,
    ) -> Option<std::borrow::Cow<'_, CompiledDr>> {
        let service_ns = host
            .strip_suffix(&format!(".svc.{}", self.options.domain))
            .and_then(|r| r.rsplit_once('.'))
            .map(|(_, ns)| ns.to_string());
        let mut order = vec![client_ns.to_string()];
        if let Some(ns) = service_ns {
            order.push(ns);
        }
        order.push(self.options.root_namespace.clone());
        for ns in order {
            let mut best: Option<(usize, &CompiledDr)> = None;
            let Some(index) = self.dr_hosts.get(&ns) else {
                continue;
            };
            let mut found = index.lookup(host);
            found.sort_by_key(|&(_, i)| i);
            for (score, i) in found {
                let dr = &self.destination_rules[i];
                if visible(&dr.export_to, &dr.namespace, client_ns)
                    && best.is_none_or(|(s, _)| score > s)
                {
                    best = Some((score, dr));
                }
            }
            if let Some((_, first)) = best {
                // Rules of one namespace for the same host merge: subsets in order,
                // the first traffic policy.
                let same_host = index.exact.get(&first.host).or_else(|| {
                    first
                        .host
                        .strip_prefix('*')
                        .and_then(|sfx| index.suffix.get(sfx))
                });
                let others: Vec<&CompiledDr> = same_host
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|&i| &self.destination_rules[i])
                    .filter(|d| {
                        d.host == first.host
                            && d.name != first.name
                            && visible(&d.export_to, &d.namespace, client_ns)
                    })
                    .collect();
                if others.is_empty() {
                    return Some(std::borrow::Cow::Borrowed(first));
                }
                let mut merged = first.clone();
                for other in others {
                    merged
                        .spec
                        .subsets
                        .extend(other.spec.subsets.iter().cloned());
                    if merged.spec.traffic_policy.is_none() {
                        merged.spec.traffic_policy = other.spec.traffic_policy.clone();
                    }
                }
                return Some(std::borrow::Cow::Owned(merged));
            }
        }
        None
    }

    /// Whether any VirtualService applies to sidecars (else every decision is the
    /// default route, and callers may skip asking).
    pub fn has_virtual_services(&self) -> bool {
        !self.vs_hosts.exact.is_empty()
            || !self.vs_hosts.suffix.is_empty()
            || !self.vs_hosts.any.is_empty()
    }

    /// The labels of `subset` of `host` (fully qualified) as a client in `client_ns`
    /// sees the DestinationRules; `None` when no rule defines it.
    pub fn subset_labels(
        &self,
        host: &str,
        subset: &str,
        client_ns: &str,
    ) -> Option<BTreeMap<String, String>> {
        let dr = self.destination_rule_for(host, client_ns)?;
        dr.spec
            .subsets
            .iter()
            .find(|s| s.name == subset)
            .map(|s| s.labels.clone())
    }

    /// The effective DestinationRule traffic policy (proto field names) for a client in
    /// `client_ns` calling `host` (fully qualified), `subset`, `port`; `None` without a
    /// DestinationRule for the host.
    pub fn traffic_policy(
        &self,
        host: &str,
        subset: Option<&str>,
        port: u16,
        client_ns: &str,
    ) -> Option<Value> {
        let dr = self.destination_rule_for(host, client_ns)?;
        let subset = subset.and_then(|s| dr.spec.subsets.iter().find(|x| x.name == s));
        merge_policy(
            dr.spec.traffic_policy.as_ref(),
            subset.and_then(|s| s.traffic_policy.as_ref()),
            u32::from(port),
        )
    }

    /// Whether any DestinationRule exists (else no destination has a traffic policy).
    pub fn has_destination_rules(&self) -> bool {
        !self.destination_rules.is_empty()
    }

    /// Decides `req`; `explain` collects why each rule did or did not match.
    pub fn decide(&self, req: &RouteRequest, mut explain: Option<&mut Vec<String>>) -> Decision {
        // Lines are formatted only when someone asked (the proxy does not).
        let explaining = explain.is_some();
        let mut say = |line: &dyn Fn() -> String| {
            if let Some(e) = explain.as_deref_mut() {
                e.push(line());
            }
        };
        if !req.gateways.is_empty() {
            return self.decide_gateway(req, &mut say, explaining);
        }
        let host = self.resolve_host(&req.host, &req.source_namespace);
        // Match blocks for another port, client or gateway are dropped when Istio
        // builds this sidecar's routes; a VirtualService left with no HTTP rule builds
        // no virtual host, and the service gets the default route.
        let vs = self
            .virtual_service_for(&host, &req.source_namespace)
            .filter(|vs| {
                !req.http
                    || vs.http.iter().any(|r| {
                        r.matches.is_empty() || r.matches.iter().any(|m| static_ok(m, req))
                    })
            });
        let Some(vs) = vs else {
            say(&|| {
                format!(
                    "no VirtualService visible from namespace {} names {host}",
                    req.source_namespace
                )
            });
            if !self.is_known(&host) {
                return Decision {
                    action: "no_route",
                    note: Some(format!(
                        "{host} is not in the service registry: under outboundTrafficPolicy ALLOW_ANY (the default) the sidecar passes the connection through to the original destination; under REGISTRY_ONLY it answers 502"
                    )),
                    ..Default::default()
                };
            }
            let mut d = Decision {
                action: "route",
                destinations: vec![DestinationOut {
                    host: host.clone(),
                    subset: None,
                    port: Some(u32::from(req.port)),
                    weight: 100,
                }],
                ..Default::default()
            };
            if req.http {
                d.retries = Some(default_retries());
            }
            self.fill_policy(&mut d, req);
            return d;
        };
        let vs_key = format!("{}/{}", vs.namespace, vs.name);
        say(&|| format!("VirtualService {vs_key} owns {host}"));
        if !req.http {
            if let Some(sni) = &req.sni
                && let Some(d) = self.sidecar_tls(vs, &vs_key, req, sni, &mut say)
            {
                return d;
            }
            return self.decide_tcp(vs, &vs_key, req, &mut say);
        }
        let mut decision = None;
        for (i, route) in vs.http.iter().enumerate() {
            match route_matches(route, req, &req.source_namespace, explaining) {
                Err(why) => {
                    say(&|| format!("{vs_key} http[{i}]{}: no match: {why}", name_of(route)))
                }
                Ok(m) => {
                    say(&|| format!("{vs_key} http[{i}]{}: matches", name_of(route)));
                    if let Some(delegate) = &route.spec.delegate {
                        let ns = delegate
                            .namespace
                            .clone()
                            .unwrap_or_else(|| vs.namespace.clone());
                        let Some(&di) = self.by_name.get(&(ns.clone(), delegate.name.clone()))
                        else {
                            say(&|| format!("delegate {ns}/{} does not exist", delegate.name));
                            break;
                        };
                        let dvs = &self.virtual_services[di];
                        let dkey = format!("{}/{}", dvs.namespace, dvs.name);
                        for (j, droute) in dvs.http.iter().enumerate() {
                            match route_matches(droute, req, &req.source_namespace, explaining) {
                                Err(why) => say(&|| {
                                    format!("{dkey} http[{j}]{}: no match: {why}", name_of(droute))
                                }),
                                Ok(dm) => {
                                    say(&|| {
                                        format!("{dkey} http[{j}]{}: matches", name_of(droute))
                                    });
                                    let mut d = self.act(dvs, &dkey, j, droute, dm.or(m), req);
                                    inherit(&mut d, route);
                                    decision = Some(d);
                                    break;
                                }
                            }
                        }
                        break;
                    }
                    decision = Some(self.act(vs, &vs_key, i, route, m, req));
                    break;
                }
            }
        }
        decision.unwrap_or_else(|| {
            say(&|| format!("no rule of {vs_key} matches: the sidecar answers 404"));
            Decision {
                action: "no_route",
                virtual_service: Some(vs_key),
                status: Some(404),
                note: Some(
                    "a VirtualService owns the host and no rule matches: 404 (response flag NR)"
                        .into(),
                ),
                ..Default::default()
            }
        })
    }

    fn decide_tcp(
        &self,
        vs: &CompiledVs,
        vs_key: &str,
        req: &RouteRequest,
        say: &mut impl FnMut(&dyn Fn() -> String),
    ) -> Decision {
        for (i, route) in vs.tcp.iter().enumerate() {
            let hit = route.matches.is_empty()
                || route.matches.iter().any(|m| {
                    m.port.is_none_or(|p| p == u32::from(req.port))
                        && m.source_namespace
                            .as_ref()
                            .is_none_or(|n| *n == req.source_namespace)
                        && m.source_labels
                            .iter()
                            .all(|(k, v)| req.source_labels.get(k) == Some(v))
                        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
                });
            if !hit {
                say(&|| format!("{vs_key} tcp[{i}]: no match"));
                continue;
            }
            say(&|| format!("{vs_key} tcp[{i}]: matches"));
            return self.l4_decision(vs, vs_key, i, &route.route, req);
        }
        if vs.has_tcp {
            say(&|| format!("no tcp rule of {vs_key} matches"));
        }
        Decision {
            action: "no_route",
            virtual_service: Some(vs_key.to_string()),
            note: Some(
                "a VirtualService owns the host and no tcp rule matches: the connection is closed"
                    .into(),
            ),
            ..Default::default()
        }
    }

    pub(super) fn act(
        &self,
        vs: &CompiledVs,
        vs_key: &str,
        index: usize,
        route: &CompiledRoute,
        matched: Option<&CompiledMatch>,
        req: &RouteRequest,
    ) -> Decision {
        let spec = &route.spec;
        let mut d = Decision {
            action: "route",
            virtual_service: Some(vs_key.to_string()),
            route_index: Some(index),
            route_name: spec.name.clone(),
            ..Default::default()
        };
        // Envoy's `prefix_rewrite` replaces what the route matched: the prefix of a
        // prefix match, the whole path of an exact or regex match, and `/` for a route
        // without a uri match (it matches prefix `/`).
        let matched_len = |path: &str| match matched.and_then(|m| m.uri.as_ref()) {
            Some(Matcher::Prefix(p)) => p.len().min(path.len()),
            Some(Matcher::Exact(_) | Matcher::Regex(_)) => path.len(),
            Some(Matcher::Present) | None => usize::from(path.starts_with('/')),
        };
        let (path, query) = match req.path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (req.path.clone(), None),
        };
        let with_query = |p: String| match &query {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        let replace_path = |new: &str| {
            let n = matched_len(&path);
            let n = if path.is_char_boundary(n) {
                n
            } else {
                path.len()
            };
            format!("{new}{}", &path[n..])
        };
        if let Some(r) = &spec.redirect {
            let status = match r.redirect_code {
                None | Some(0) => 301,
                Some(c) => c,
            };
            // `uri` replaces the whole path (Envoy `path_redirect`), keeping the query
            // unless it has its own; `prefixRewrite` replaces the matched prefix.
            let uri = match (&r.uri, &r.prefix_rewrite) {
                (Some(u), _) if !u.is_empty() => {
                    if u.contains('?') {
                        u.clone()
                    } else {
                        with_query(u.clone())
                    }
                }
                (_, Some(p)) => with_query(replace_path(p)),
                _ => req.path.clone(),
            };
            let scheme = r.scheme.clone().unwrap_or_else(|| req.scheme.clone());
            let port = match (r.port, r.derive_port.as_deref()) {
                (Some(p), _) => Some(p),
                (None, Some("FROM_REQUEST_PORT")) => Some(u32::from(req.port)),
                _ => None,
            }
            .filter(|p| !((*p == 80 && scheme == "http") || (*p == 443 && scheme == "https")));
            let authority = r.authority.clone().unwrap_or_else(|| match port {
                Some(_) => bare_host(&req.host),
                None => req.host.trim().to_string(),
            });
            let location = match port {
                Some(p) => format!("{scheme}://{}:{p}{uri}", bare_host(&authority)),
                None => format!("{scheme}://{authority}{uri}"),
            };
            d.action = "redirect";
            d.redirect = Some(json!({
                "uri": uri,
                "authority": authority,
                "scheme": scheme,
                "port": port,
                "status": status,
                "location": location,
            }));
            d.status = Some(status);
            self.fill_headers(&mut d, spec, &[]);
            return d;
        }
        if let Some(dr) = &spec.direct_response {
            d.action = "direct_response";
            let body = dr.body.as_ref().map(|b| {
                b.string
                    .clone()
                    .unwrap_or_else(|| b.bytes.clone().unwrap_or_default())
            });
            d.direct_response = Some(json!({"status": dr.status, "body": body}));
            d.status = Some(dr.status);
            self.fill_headers(&mut d, spec, &[]);
            return d;
        }
        d.destinations = weighted(
            spec.route
                .iter()
                .map(|r| (&r.destination, r.weight))
                .collect(),
            &vs.namespace,
            &self.options.domain,
        );
        if let Some(rw) = &spec.rewrite {
            let mut out = serde_json::Map::new();
            if let Some((re, with)) = &route.regex_rewrite {
                let envoy_style = with.replace("\\", "$");
                out.insert(
                    "uri".into(),
                    with_query(re.replace_all(&path, envoy_style.as_str()).into_owned()).into(),
                );
            } else if let Some(uri) = &rw.uri {
                out.insert("uri".into(), with_query(replace_path(uri)).into());
            }
            if let Some(a) = &rw.authority {
                out.insert("authority".into(), a.clone().into());
            }
            d.rewrite = Some(Value::Object(out));
        }
        d.timeout = spec
            .timeout
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
            .filter(|t| !t.is_zero())
            .map(duration::format);
        d.retries = Some(match &spec.retries {
            None => default_retries(),
            Some(r) => {
                let attempts = r.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS);
                if attempts <= 0 {
                    json!({"attempts": 0, "per_try_timeout": null, "retry_on": null})
                } else {
                    json!({
                        "attempts": attempts,
                        "per_try_timeout": r.per_try_timeout.as_deref().and_then(|t| duration::parse(t).ok()).map(duration::format),
                        "retry_on": r.retry_on.clone().unwrap_or_else(|| DEFAULT_RETRY_ON.to_string()),
                    })
                }
            }
        });
        if let Some(f) = &spec.fault {
            let mut out = serde_json::Map::new();
            if let Some(delay) = &f.delay {
                let percent = delay
                    .percentage
                    .as_ref()
                    .map(|p| p.value)
                    .or(delay.percent.map(|p| p as f64))
                    .unwrap_or(0.0);
                out.insert(
                    "delay".into(),
                    json!({
                        "fixed_delay": delay.fixed_delay.as_deref().and_then(|t| duration::parse(t).ok()).map(duration::format),
                        "percent": percent,
                    }),
                );
            }
            if let Some(abort) = &f.abort {
                let percent = abort.percentage.as_ref().map_or(0.0, |p| p.value);
                let mut a = serde_json::Map::new();
                if let Some(s) = abort.http_status {
                    a.insert("http_status".into(), s.into());
                }
                if let Some(s) = &abort.grpc_status {
                    a.insert("grpc_status".into(), s.clone().into());
                }
                a.insert("percent".into(), percent.into());
                out.insert("abort".into(), Value::Object(a));
            }
            d.fault = Some(Value::Object(out));
        }
        let mirror = spec
            .mirror
            .as_ref()
            .map(|m| {
                let percent = spec
                    .mirror_percentage
                    .as_ref()
                    .map(|p| p.value)
                    .or(spec.mirror_percent.map(f64::from))
                    .unwrap_or(100.0);
                (m, percent)
            })
            .or_else(|| {
                spec.mirrors.first().map(|m| {
                    (
                        &m.destination,
                        m.percentage.as_ref().map_or(100.0, |p| p.value),
                    )
                })
            });
        if let Some((m, percent)) = mirror {
            d.mirror = Some(json!({
                "host": fqdn(&m.host, &vs.namespace, &self.options.domain),
                "subset": m.subset,
                "percent": percent,
            }));
        }
        d.cors = route.cors.clone();
        let lone: Vec<&Headers> = if spec.route.len() == 1 {
            spec.route[0].headers.iter().collect()
        } else {
            Vec::new()
        };
        self.fill_headers(&mut d, spec, &lone);
        self.fill_policy(&mut d, req);
        d
    }

    fn fill_headers(&self, d: &mut Decision, spec: &HttpRoute, lone: &[&Headers]) {
        let mut all: Vec<&Headers> = spec.headers.iter().collect();
        all.extend_from_slice(lone);
        let merge = |pick: fn(&Headers) -> Option<&HeaderOperations>| {
            let mut out: Option<HeaderOperations> = None;
            for h in &all {
                if let Some(ops) = pick(h) {
                    let o = out.get_or_insert_with(HeaderOperations::default);
                    o.set.extend(ops.set.clone());
                    o.add.extend(ops.add.clone());
                    o.remove.extend(ops.remove.iter().cloned());
                }
            }
            out
        };
        d.request_headers = merge(|h| h.request.as_ref());
        d.response_headers = merge(|h| h.response.as_ref());
    }

    /// Subset labels and the effective traffic policy of the chosen destination (the
    /// one with the largest weight, the first among equals).
    pub(super) fn fill_policy(&self, d: &mut Decision, req: &RouteRequest) {
        if req.skip_policy {
            return;
        }
        let Some(dest) = d
            .destinations
            .iter()
            .rev()
            .max_by_key(|x| x.weight)
            .cloned()
        else {
            return;
        };
        let Some(dr) = self.destination_rule_for(&dest.host, &req.source_namespace) else {
            return;
        };
        d.destination_rule = Some(format!("{}/{}", dr.namespace, dr.name));
        let port = dest.port.unwrap_or(u32::from(req.port));
        let subset = dest
            .subset
            .as_ref()
            .and_then(|s| dr.spec.subsets.iter().find(|x| &x.name == s));
        if let Some(s) = subset {
            d.subset_labels = Some(s.labels.clone());
        }
        d.traffic_policy = merge_policy(
            dr.spec.traffic_policy.as_ref(),
            subset.and_then(|s| s.traffic_policy.as_ref()),
            port,
        );
    }
}

/// The traffic policy fields a subset overrides where it sets them.
const POLICY_FIELDS: [&str; 7] = [
    "connectionPool",
    "loadBalancer",
    "outlierDetection",
    "tls",
    "tunnel",
    "proxyProtocol",
    "retryBudget",
];
/// The fields a port-level setting carries.
const PORT_FIELDS: [&str; 4] = ["connectionPool", "loadBalancer", "outlierDetection", "tls"];

/// A policy for `port`: a matching `portLevelSettings` entry replaces it wholesale (its
/// four fields only; Istio's `GetPortLevelTrafficPolicy`). Whether one matched.
fn at_port(policy: &Value, port: u32) -> (serde_json::Map<String, Value>, bool) {
    let mut out = serde_json::Map::new();
    if let Some(p) = policy["portLevelSettings"].as_array().and_then(|ps| {
        ps.iter()
            .find(|p| p["port"]["number"].as_u64() == Some(u64::from(port)))
    }) {
        for f in PORT_FIELDS {
            if let Some(v) = p.get(f) {
                out.insert(f.into(), v.clone());
            }
        }
        return (out, true);
    }
    for f in POLICY_FIELDS {
        if let Some(v) = policy.get(f) {
            out.insert(f.into(), v.clone());
        }
    }
    (out, false)
}

/// Istio's `MergeTrafficPolicy` for `port`: the DestinationRule's policy at that port,
/// then the subset's (at that port) over it field by field; a subset port-level entry
/// replaces the four port fields even where it leaves them unset.
fn merge_policy(top: Option<&Value>, subset: Option<&Value>, port: u32) -> Option<Value> {
    let base = top.map(|t| at_port(t, port).0);
    let Some(subset) = subset else {
        return base.map(Value::Object);
    };
    let (over, port_level) = at_port(subset, port);
    let mut out = base.unwrap_or_default();
    for f in POLICY_FIELDS {
        if let Some(v) = over.get(f) {
            out.insert(f.into(), v.clone());
        } else if port_level && PORT_FIELDS.contains(&f) {
            out.remove(f);
        }
    }
    Some(Value::Object(out))
}

fn default_retries() -> Value {
    json!({
        "attempts": DEFAULT_RETRY_ATTEMPTS,
        "per_try_timeout": null,
        "retry_on": DEFAULT_RETRY_ON,
    })
}

/// What a delegate's rule takes from the root rule that delegated to it when it does
/// not set it (Istio's `mergeHTTPRoute`): here, the CORS policy.
pub(super) fn inherit(d: &mut Decision, root: &CompiledRoute) {
    if d.action == "route" && d.cors.is_none() {
        d.cors = root.cors.clone();
    }
}

pub(super) fn name_of(route: &CompiledRoute) -> String {
    route
        .spec
        .name
        .as_ref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default()
}

pub(super) fn weighted(
    dests: Vec<(&Destination, Option<i64>)>,
    namespace: &str,
    domain: &str,
) -> Vec<DestinationOut> {
    let lone = dests.len() == 1;
    dests
        .into_iter()
        // With several destinations, one without weight (or weight 0) gets nothing.
        .filter(|(_, w)| lone || w.is_some_and(|w| w > 0))
        .map(|(d, w)| DestinationOut {
            host: fqdn(&d.host, namespace, domain),
            subset: d.subset.clone(),
            port: d.port.as_ref().map(|p| p.number),
            weight: w.unwrap_or(if lone { 100 } else { 0 }),
        })
        .collect()
}

/// Whether `route` matches; `Ok(Some(block))` names the match block that did.
fn route_matches<'a>(
    route: &'a CompiledRoute,
    req: &RouteRequest,
    client_ns: &str,
    explain: bool,
) -> Result<Option<&'a CompiledMatch>, String> {
    if route.matches.is_empty() {
        return Ok(None);
    }
    let mut whys = Vec::new();
    for (k, m) in route.matches.iter().enumerate() {
        match block_matches(m, req, client_ns, explain) {
            Ok(()) => return Ok(Some(m)),
            Err(_) if !explain => {}
            Err(why) => whys.push(format!(
                "match[{k}]{}: {why}",
                m.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )),
        }
    }
    Err(whys.join("; "))
}

/// The conditions Istio applies when it builds a sidecar's routes, not per request.
fn static_ok(m: &CompiledMatch, req: &RouteRequest) -> bool {
    m.port.is_none_or(|p| p == u32::from(req.port))
        && m.source_labels
            .iter()
            .all(|(k, v)| req.source_labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == req.source_namespace)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
}

/// Why a block does not match, written only when explaining.
macro_rules! miss {
    ($explain:expr, $($t:tt)*) => {
        return Err(if $explain { format!($($t)*) } else { String::new() })
    };
}

fn block_matches(
    m: &CompiledMatch,
    req: &RouteRequest,
    client_ns: &str,
    explain: bool,
) -> Result<(), String> {
    request_matches(m, req, explain)?;
    if let Some(p) = m.port
        && p != u32::from(req.port)
    {
        miss!(explain, "port {} is not {p}", req.port);
    }
    for (k, v) in &m.source_labels {
        if req.source_labels.get(k) != Some(v) {
            miss!(explain, "source label {k}={v} is not on the client");
        }
    }
    if let Some(ns) = &m.source_namespace
        && ns != client_ns
    {
        miss!(explain, "source namespace {client_ns} is not {ns}");
    }
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        miss!(explain, "the match is for gateways, not sidecars (mesh)");
    }
    Ok(())
}

/// The conditions of a match block on the request itself (path, scheme, method,
/// authority, headers, query), not on who sends it or where.
pub(super) fn request_matches(
    m: &CompiledMatch,
    req: &RouteRequest,
    explain: bool,
) -> Result<(), String> {
    let path = req.path.split('?').next().unwrap_or_default();
    if let Some(u) = &m.uri
        && !u.matches(Some(path), m.ignore_uri_case)
    {
        miss!(explain, "uri {path:?} is not {}", u.describe());
    }
    if let Some(s) = &m.scheme
        && !s.matches(Some(&req.scheme), false)
    {
        miss!(explain, "scheme {:?} is not {}", req.scheme, s.describe());
    }
    if let Some(x) = &m.method
        && !x.matches(Some(&req.method), false)
    {
        miss!(explain, "method {:?} is not {}", req.method, x.describe());
    }
    if let Some(a) = &m.authority
        && !a.matches(Some(&req.host), false)
    {
        miss!(explain, "authority {:?} is not {}", req.host, a.describe());
    }
    let header = |name: &str| -> Option<String> {
        match name {
            // `host` in `headers` does not match the Host header (istio/istio#23083).
            ":authority" => Some(req.host.clone()),
            ":method" => Some(req.method.clone()),
            ":path" => Some(req.path.clone()),
            ":scheme" => Some(req.scheme.clone()),
            _ => req
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone()),
        }
    };
    for (name, h) in &m.headers {
        if !h.matches(header(name).as_deref(), false) {
            miss!(
                explain,
                "header {name} is {:?}, not {}",
                header(name),
                h.describe()
            );
        }
    }
    for (name, h) in &m.without_headers {
        // A missing header counts as empty (Envoy's inverted header match).
        if h.matches(Some(header(name).as_deref().unwrap_or("")), false) {
            miss!(explain, "withoutHeaders: header {name} is {}", h.describe());
        }
    }
    let query: Vec<(String, String)> = req
        .path
        .split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.to_string(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default();
    for (name, q) in &m.query_params {
        let value = query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        if !q.matches(value, false) {
            miss!(
                explain,
                "query parameter {name} is {value:?}, not {}",
                q.describe()
            );
        }
    }
    Ok(())
}

pub(super) fn err_at(
    vs: &Loaded<Value>,
    kind: &'static str,
    field: String,
    message: String,
) -> RouteError {
    RouteError {
        origin: vs.origin.to_string(),
        kind,
        namespace: vs.resource.namespace().to_string(),
        name: vs.resource.metadata.name.clone(),
        field,
        message,
    }
}

pub(super) fn typed<T: serde::de::DeserializeOwned>(
    res: &Loaded<Value>,
    kind: &'static str,
) -> Result<T, Box<RouteError>> {
    let spec = res.resource.spec.clone();
    serde_path_to_error::deserialize::<_, T>(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        Box::new(err_at(res, kind, field, e.inner().to_string()))
    })
}

fn compile_vs(res: &Loaded<Value>, options: &TableOptions) -> Result<CompiledVs, Vec<RouteError>> {
    const KIND: &str = "VirtualService";
    let spec: VirtualServiceSpec = typed(res, KIND).map_err(|e| vec![*e])?;
    let namespace = res.resource.namespace().to_string();
    let mut errors = Vec::new();
    let mut http = Vec::new();
    for (i, route) in spec.http.iter().enumerate() {
        let at = |f: String| format!("spec.http[{i}].{f}");
        let mut matches = Vec::new();
        for (k, m) in route.matches.iter().enumerate() {
            match compile_match(m, &namespace) {
                Ok(c) => matches.push(c),
                Err((f, msg)) => errors.push(err_at(res, KIND, at(format!("match[{k}].{f}")), msg)),
            }
        }
        let actions = [
            !route.route.is_empty(),
            route.redirect.is_some(),
            route.direct_response.is_some(),
            route.delegate.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if actions != 1 {
            errors.push(err_at(
                res,
                KIND,
                format!("spec.http[{i}]"),
                "exactly one of route, redirect, directResponse and delegate is required".into(),
            ));
        }
        if route.route.iter().any(|d| d.weight.is_some_and(|w| w < 0)) {
            errors.push(err_at(
                res,
                KIND,
                at("route".into()),
                "a weight is negative".into(),
            ));
        }
        if route.route.len() > 1 && route.route.iter().filter_map(|d| d.weight).sum::<i64>() == 0 {
            errors.push(err_at(
                res,
                KIND,
                at("route".into()),
                "with several destinations the weights must not all be 0 or absent".into(),
            ));
        }
        for (j, d) in route.route.iter().enumerate() {
            if d.destination.host.is_empty() {
                errors.push(err_at(
                    res,
                    KIND,
                    at(format!("route[{j}].destination.host")),
                    "required".into(),
                ));
            }
        }
        for (f, d) in [("timeout", &route.timeout)]
            .into_iter()
            .chain(
                route
                    .retries
                    .iter()
                    .map(|r| ("retries.perTryTimeout", &r.per_try_timeout)),
            )
            .chain(
                route
                    .fault
                    .iter()
                    .filter_map(|f| f.delay.as_ref())
                    .map(|d| ("fault.delay.fixedDelay", &d.fixed_delay)),
            )
        {
            if let Some(t) = d
                && let Err(e) = duration::parse(t)
            {
                errors.push(err_at(res, KIND, at(f.to_string()), e));
            }
        }
        let regex_rewrite = match route
            .rewrite
            .as_ref()
            .and_then(|r| r.uri_regex_rewrite.as_ref())
        {
            Some(rr) => match regex::RegexBuilder::new(&rr.pattern)
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => Some((re, rr.rewrite.clone())),
                Err(e) => {
                    errors.push(err_at(
                        res,
                        KIND,
                        at("rewrite.uriRegexRewrite.match".into()),
                        format!("{:?} is not an RE2 regular expression: {e}", rr.pattern),
                    ));
                    None
                }
            },
            None => None,
        };
        let cors = match &route.cors_policy {
            Some(c) => match Cors::compile(c, &at("corsPolicy".into())) {
                Ok(c) => Some(Arc::new(c)),
                Err((f, msg)) => {
                    errors.push(err_at(res, KIND, f, msg));
                    None
                }
            },
            None => None,
        };
        http.push(CompiledRoute {
            spec: route.clone(),
            matches,
            regex_rewrite,
            cors,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let hosts = spec
        .hosts
        .iter()
        .map(|h| fqdn(h, &namespace, &options.domain))
        .collect();
    let resolve = |names: &mut Vec<String>| {
        for g in names.iter_mut() {
            *g = resolve_gateway_name(g, &namespace);
        }
    };
    let mut gateways: Vec<String> = spec.gateways.clone();
    resolve(&mut gateways);
    gateways.retain(|g| g != "mesh");
    let mut tcp = spec.tcp;
    let mut tls = spec.tls;
    for m in tcp
        .iter_mut()
        .flat_map(|r| r.matches.iter_mut())
        .chain(tls.iter_mut().flat_map(|r| r.matches.iter_mut()))
    {
        resolve(&mut m.gateways);
        for h in m.sni_hosts.iter_mut() {
            *h = h.to_ascii_lowercase();
        }
    }
    Ok(CompiledVs {
        created: res
            .resource
            .metadata
            .creation_timestamp
            .clone()
            .unwrap_or_default(),
        name: res.resource.metadata.name.clone(),
        namespace,
        hosts,
        export_to: spec.export_to.clone(),
        mesh: spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh"),
        gateways,
        http,
        has_tcp: !tcp.is_empty(),
        tcp,
        tls,
    })
}

fn compile_match(m: &HttpMatch, namespace: &str) -> Result<CompiledMatch, (String, String)> {
    let one =
        |m: &Option<StringMatch>, f: &str| m.as_ref().map(|x| Matcher::compile(x, f)).transpose();
    let many = |map: &BTreeMap<String, StringMatch>, f: &str| {
        map.iter()
            .map(|(k, v)| {
                Ok((
                    k.to_ascii_lowercase(),
                    Matcher::compile(v, &format!("{f}.{k}"))?,
                ))
            })
            .collect::<Result<Vec<_>, (String, String)>>()
    };
    Ok(CompiledMatch {
        name: m.name.clone(),
        uri: one(&m.uri, "uri")?,
        scheme: one(&m.scheme, "scheme")?,
        method: one(&m.method, "method")?,
        authority: one(&m.authority, "authority")?,
        headers: many(&m.headers, "headers")?,
        without_headers: many(&m.without_headers, "withoutHeaders")?,
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| Ok((k.clone(), Matcher::compile(v, &format!("queryParams.{k}"))?)))
            .collect::<Result<Vec<_>, (String, String)>>()?,
        port: m.port,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
        gateways: m
            .gateways
            .iter()
            .map(|g| resolve_gateway_name(g, namespace))
            .collect(),
        ignore_uri_case: m.ignore_uri_case,
    })
}

fn compile_dr(res: &Loaded<Value>, options: &TableOptions) -> Result<CompiledDr, Box<RouteError>> {
    const KIND: &str = "DestinationRule";
    let spec: DestinationRuleSpec = typed(res, KIND)?;
    if spec.host.is_empty() {
        return Err(Box::new(err_at(
            res,
            KIND,
            "spec.host".into(),
            "required".into(),
        )));
    }
    let namespace = res.resource.namespace().to_string();
    Ok(CompiledDr {
        created: res
            .resource
            .metadata
            .creation_timestamp
            .clone()
            .unwrap_or_default(),
        name: res.resource.metadata.name.clone(),
        host: fqdn(&spec.host, &namespace, &options.domain),
        namespace,
        export_to: spec.export_to.clone(),
        spec,
    })
}
