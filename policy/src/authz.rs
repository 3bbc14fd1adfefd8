//! AuthorizationPolicy evaluation, as Istio decides it.
//!
//! Policies are compiled once per config version into an [`Engine`] indexed by
//! namespace and by selector label; a request is checked against the policies of the
//! root namespace and of the workload's namespace whose selector the workload matches
//! (policies with `targetRef(s)` do not apply to sidecars), so the cost of a decision
//! does not grow with policies that cannot apply. The order is CUSTOM, DENY, then
//! ALLOW (no enforced ALLOW policy → allow; any match → allow; else deny); AUDIT and
//! dry-run policies are evaluated and reported, never enforced.
//!
//! Callers supply `remote.ip` (from X-Forwarded-For or PROXY protocol) and validated
//! JWT claims ([`crate::request_authn`]). `experimental.envoy.filters.*` keys read
//! Envoy dynamic metadata, which Warden does not have: they are refused at compile
//! time rather than silently never matching.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::loader::{ConfigSet, Loaded, Origin};
use crate::matcher::{IpBlock, StringMatch};
use crate::normalize::path_only;
use crate::resources::{
    Action, AuthorizationPolicySpec, Condition, Operation, Source, has_target_refs,
};

/// The workload a request is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// Whether a policy with `selector` (its `matchLabels`) applies: no selector, or
    /// every selector label is one of the workload's (policyattachment.go `isSelected`).
    pub fn selected_by(&self, selector: Option<&BTreeMap<String, String>>) -> bool {
        selector.is_none_or(|sel| sel.iter().all(|(k, v)| self.labels.get(k) == Some(v)))
    }
}

/// The entries of `by_namespace` that can hold policies for a workload in `namespace`:
/// the root namespace's, then (unless it is the root) the workload's own.
pub(crate) fn root_and_own<'a, T>(
    by_namespace: &'a HashMap<String, T>,
    root_namespace: &str,
    namespace: &str,
) -> impl Iterator<Item = &'a T> {
    let root = by_namespace.get(root_namespace);
    let own = (namespace != root_namespace)
        .then(|| by_namespace.get(namespace))
        .flatten();
    root.into_iter().chain(own)
}

/// TCP or HTTP (gRPC is HTTP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, HTTP/2, gRPC.
    #[default]
    Http,
    /// Opaque TCP.
    Tcp,
}

/// The HTTP part of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    /// `:method`.
    pub method: String,
    /// `:path` with its query, already normalized ([`crate::normalize`]): the engine
    /// decides on exactly this path (the query is ignored by path rules).
    pub path: String,
    /// `:authority` / Host.
    pub host: String,
    /// Headers, names lowercase.
    pub headers: BTreeMap<String, String>,
}

/// A request as the engine sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// TCP or HTTP.
    pub protocol: Protocol,
    /// Peer identity without `spiffe://` (`td/ns/x/sa/y`); `None` for plaintext.
    pub source_principal: Option<String>,
    /// Peer address.
    pub source_ip: Option<IpAddr>,
    /// Original client address (defaults to `source_ip`).
    pub remote_ip: Option<IpAddr>,
    /// Destination address.
    pub destination_ip: Option<IpAddr>,
    /// Destination (workload) port.
    pub destination_port: u16,
    /// TLS SNI.
    pub sni: Option<String>,
    /// HTTP details; `None` on TCP.
    pub http: Option<HttpRequest>,
    /// Claims of a validated JWT, if any.
    pub jwt: Option<serde_json::Value>,
}

/// A policy/rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// `ns/name`.
    pub policy: String,
    /// Rule index.
    pub rule: usize,
}

/// A dry-run policy's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// `ns/name`.
    pub policy: String,
    /// ALLOW or DENY.
    pub action: Action,
    /// The rule that matched, if any.
    pub rule: Option<usize>,
}

impl DryRun {
    /// Whether enforcing this policy alone would deny the request, as Envoy's shadow
    /// engine judges it: a DENY policy whose rule matched, or an ALLOW policy with none
    /// that matched.
    pub fn would_deny(&self) -> bool {
        match self.action {
            Action::Deny => self.rule.is_some(),
            _ => self.rule.is_none(),
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed (subject to `custom`).
    pub allowed: bool,
    /// The deciding policy and rule (`None` when no policy decided).
    pub deciding: Option<Match>,
    /// Why, in words.
    pub reason: String,
    /// A CUSTOM policy matched: its provider must be asked, and may still deny.
    pub custom: Option<(String, Match)>,
    /// AUDIT policies that matched.
    pub audit: Vec<Match>,
    /// Dry-run policies that apply, with what they would have done.
    pub dry_run: Vec<DryRun>,
}

pub use crate::loader::CompileError;

/// One compiled test of a request.
#[derive(Debug, Clone)]
enum Clause {
    Principal(Vec<StringMatch>),
    Namespace(Vec<StringMatch>),
    ServiceAccount(Vec<String>),
    TrustDomain(Vec<StringMatch>),
    SourceIp(Vec<IpBlock>),
    RemoteIp(Vec<IpBlock>),
    RequestPrincipal(Vec<String>),
    Host(Vec<StringMatch>),
    Port(Vec<u16>),
    Method(Vec<StringMatch>),
    Path(Vec<StringMatch>),
    Header(String, Vec<StringMatch>),
    Claim(Vec<String>, Vec<StringMatch>),
    DestinationIp(Vec<IpBlock>),
    Sni(Vec<StringMatch>),
}

impl Clause {
    /// HTTP-only attributes (dropped on TCP, see [`Rule`]).
    fn http_only(&self) -> bool {
        matches!(
            self,
            Self::RequestPrincipal(_)
                | Self::Host(_)
                | Self::Method(_)
                | Self::Path(_)
                | Self::Header(..)
                | Self::Claim(..)
        )
    }
}

/// A clause or its negation.
#[derive(Debug, Clone)]
struct Test {
    clause: Clause,
    negated: bool,
}

/// A compiled rule: (any of `from`) AND (any of `to`) AND (all of `when`).
#[derive(Debug, Clone, Default)]
struct Rule {
    from: Option<Vec<Vec<Test>>>,
    to: Option<Vec<Vec<Test>>>,
    when: Vec<Test>,
    has_http_only: bool,
}

#[derive(Debug)]
struct Policy {
    /// Position in the config set (root-namespace policies are reported first).
    seq: usize,
    name: String,
    action: Action,
    selector: Option<BTreeMap<String, String>>,
    provider: String,
    dry_run: bool,
    /// `None`: no rules (matches nothing).
    rules: Option<Vec<Rule>>,
}

/// The policies of one namespace, indexed for the lookup by workload labels.
#[derive(Debug, Default)]
struct NamespacePolicies {
    /// All of them, in load order (for explanations).
    all: Vec<Arc<Policy>>,
    /// No selector, or an empty one: they apply to every workload.
    unselected: Vec<Arc<Policy>>,
    /// Selector policies under one of their labels: key → value → policies. A
    /// workload only meets the policies filed under one of its own labels.
    by_label: HashMap<String, HashMap<String, Vec<Arc<Policy>>>>,
}

impl NamespacePolicies {
    fn add(&mut self, p: Arc<Policy>) {
        self.all.push(p.clone());
        match p.selector.as_ref().and_then(|s| s.iter().next()) {
            Some((k, v)) => self
                .by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .push(p),
            None => self.unselected.push(p),
        }
    }

    /// Appends the policies that select `w`, in load order.
    fn applicable<'a>(&'a self, w: &Workload, out: &mut Vec<&'a Policy>) {
        let start = out.len();
        out.extend(self.unselected.iter().map(|p| &**p));
        for (k, v) in &w.labels {
            if let Some(ps) = self.by_label.get(k).and_then(|m| m.get(v)) {
                out.extend(ps.iter().map(|p| &**p).filter(|p| p.selects(w)));
            }
        }
        if out.len() - start > 1 {
            out[start..].sort_unstable_by_key(|p| p.seq);
        }
    }
}

/// Compiled policies of one config version.
#[derive(Debug, Default)]
pub struct Engine {
    root_namespace: String,
    by_namespace: HashMap<String, NamespacePolicies>,
    /// Every header name a `request.headers[...]` condition reads (lower case).
    header_names: std::collections::BTreeSet<String>,
}

fn principal_parts(p: &str) -> (&str, Option<&str>, Option<&str>) {
    // td/ns/<ns>/sa/<sa>, without allocating: this runs for every identity clause.
    let mut it = p.split('/');
    let td = it.next().unwrap_or_default();
    match (it.next(), it.next(), it.next(), it.next(), it.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => (td, Some(ns), Some(sa)),
        _ => (td, None, None),
    }
}

fn claim<'a>(claims: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(claims, |v, k| v.get(k))
}

/// A claim matches when it is a string that matches, or a list with a matching string.
fn claim_matches(v: Option<&serde_json::Value>, ms: &[StringMatch]) -> bool {
    match v {
        Some(serde_json::Value::String(s)) => ms.iter().any(|m| m.matches(s)),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(serde_json::Value::as_str)
            .any(|s| ms.iter().any(|m| m.matches(s))),
        Some(serde_json::Value::Bool(b)) => ms.iter().any(|m| m.matches(&b.to_string())),
        Some(serde_json::Value::Number(n)) => ms.iter().any(|m| m.matches(&n.to_string())),
        _ => false,
    }
}

/// `iss/sub` against a requestPrincipals value, split at the last `/`.
fn request_principal_matches(pattern: &str, iss: &str, sub: &str) -> bool {
    if pattern == "*" {
        return !iss.is_empty() && !sub.is_empty();
    }
    match pattern.rsplit_once('/') {
        Some((pi, ps)) => StringMatch::new(pi).matches(iss) && StringMatch::new(ps).matches(sub),
        None => StringMatch::new(pattern).matches(&format!("{iss}/{sub}")),
    }
}

impl Clause {
    fn eval(&self, r: &Request, path: &str) -> bool {
        let principal = r.source_principal.as_deref().unwrap_or_default();
        let (td, ns, sa) = principal_parts(principal);
        let any = |ms: &[StringMatch], v: &str| ms.iter().any(|m| m.matches(v));
        let http = r.http.as_ref();
        match self {
            Self::Principal(ms) => any(ms, principal),
            Self::Namespace(ms) => any(ms, ns.unwrap_or_default()),
            Self::TrustDomain(ms) => any(ms, td),
            Self::ServiceAccount(v) => match (ns, sa) {
                (Some(ns), Some(sa)) => v.iter().any(|x| x.split_once('/') == Some((ns, sa))),
                _ => false,
            },
            Self::SourceIp(bs) => r
                .source_ip
                .is_some_and(|ip| bs.iter().any(|b| b.contains(ip))),
            Self::RemoteIp(bs) => r
                .remote_ip
                .or(r.source_ip)
                .is_some_and(|ip| bs.iter().any(|b| b.contains(ip))),
            Self::DestinationIp(bs) => r
                .destination_ip
                .is_some_and(|ip| bs.iter().any(|b| b.contains(ip))),
            Self::Port(ps) => ps.contains(&r.destination_port),
            Self::Sni(ms) => any(ms, r.sni.as_deref().unwrap_or_default()),
            Self::RequestPrincipal(ps) => {
                let Some(c) = &r.jwt else { return false };
                let iss = c.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
                let sub = c.get("sub").and_then(|v| v.as_str()).unwrap_or_default();
                ps.iter().any(|p| request_principal_matches(p, iss, sub))
            }
            Self::Claim(path, ms) => r
                .jwt
                .as_ref()
                .is_some_and(|c| claim_matches(claim(c, path), ms)),
            Self::Host(ms) => http.is_some_and(|h| {
                let host = h.host.as_str();
                let bare = host
                    .rsplit_once(':')
                    .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                    .map_or(host, |(h, _)| h);
                ms.iter()
                    .any(|m| m.matches_ignore_case(host) || m.matches_ignore_case(bare))
            }),
            Self::Method(ms) => http.is_some_and(|h| any(ms, &h.method)),
            Self::Path(ms) => http.is_some() && any(ms, path),
            Self::Header(name, ms) => http
                .and_then(|h| h.headers.get(name))
                .is_some_and(|v| any(ms, v)),
        }
    }
}

impl Clause {
    /// The attribute, in Istio's words.
    fn describe(&self) -> String {
        fn list<T: std::fmt::Display>(v: &[T]) -> String {
            let items: Vec<String> = v.iter().map(ToString::to_string).collect();
            format!("[{}]", items.join(", "))
        }
        match self {
            Self::Principal(m) => format!("source principal in {}", list(m)),
            Self::Namespace(m) => format!("source namespace in {}", list(m)),
            Self::ServiceAccount(v) => format!("source service account in {v:?}"),
            Self::TrustDomain(m) => format!("source trust domain in {}", list(m)),
            Self::SourceIp(b) => format!("source IP in {}", list(b)),
            Self::RemoteIp(b) => format!("remote IP in {}", list(b)),
            Self::RequestPrincipal(v) => format!("request principal (JWT iss/sub) in {v:?}"),
            Self::Host(m) => format!("host in {}", list(m)),
            Self::Port(p) => format!("destination port in {}", list(p)),
            Self::Method(m) => format!("method in {}", list(m)),
            Self::Path(m) => format!("path in {}", list(m)),
            Self::Header(n, m) => format!("header {n} in {}", list(m)),
            Self::Claim(p, m) => format!("JWT claim {} in {}", p.join("."), list(m)),
            Self::DestinationIp(b) => format!("destination IP in {}", list(b)),
            Self::Sni(m) => format!("SNI in {}", list(m)),
        }
    }
}

/// The first test of `tests` that fails, described.
fn first_failure(tests: &[Test], r: &Request, path: &str, tcp: bool) -> Option<String> {
    tests.iter().find_map(|t| {
        if tcp && t.clause.http_only() {
            return None;
        }
        (t.clause.eval(r, path) == t.negated).then(|| {
            if t.negated {
                format!("NOT ({}) is false", t.clause.describe())
            } else {
                format!("{} is false", t.clause.describe())
            }
        })
    })
}

fn eval_tests(tests: &[Test], r: &Request, path: &str, tcp_drop_http: bool) -> bool {
    tests.iter().all(|t| {
        if tcp_drop_http && t.clause.http_only() {
            return true;
        }
        t.clause.eval(r, path) != t.negated
    })
}

impl Rule {
    /// Whether the rule matches. On TCP, HTTP-only attributes are dropped: an ALLOW
    /// rule that has any never matches; in DENY/AUDIT/CUSTOM rules only those
    /// attributes are removed (so the rule matches more), as Istio's TCP filter does.
    fn matches(&self, r: &Request, path: &str, action: Action) -> bool {
        let tcp = r.protocol == Protocol::Tcp;
        if tcp && action == Action::Allow && self.has_http_only {
            return false;
        }
        let list = |l: &Option<Vec<Vec<Test>>>| match l {
            None => true,
            Some(entries) => entries.iter().any(|t| eval_tests(t, r, path, tcp)),
        };
        list(&self.from) && list(&self.to) && eval_tests(&self.when, r, path, tcp)
    }
}

impl Rule {
    /// Why the rule does not match (`None` if it does).
    fn why_not(&self, r: &Request, path: &str, action: Action) -> Option<String> {
        let tcp = r.protocol == Protocol::Tcp;
        if tcp && action == Action::Allow && self.has_http_only {
            return Some("it uses HTTP-only attributes, so it is dropped for TCP traffic".into());
        }
        let list = |l: &Option<Vec<Vec<Test>>>, what: &str| -> Option<String> {
            let entries = l.as_ref()?;
            if entries.iter().any(|t| eval_tests(t, r, path, tcp)) {
                return None;
            }
            let reasons: Vec<String> = entries
                .iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    first_failure(t, r, path, tcp).map(|f| format!("{what}[{i}]: {f}"))
                })
                .collect();
            Some(if reasons.is_empty() {
                format!("no {what} entry matched")
            } else {
                reasons.join("; ")
            })
        };
        list(&self.from, "from")
            .or_else(|| list(&self.to, "to"))
            .or_else(|| first_failure(&self.when, r, path, tcp).map(|f| format!("when: {f}")))
    }
}

struct Compiler<'a> {
    policy: &'a str,
    origin: &'a Origin,
    namespace: &'a str,
    trust_domain: &'a str,
    errors: Vec<CompileError>,
}

impl Compiler<'_> {
    fn err(&mut self, path: String, message: impl Into<String>) {
        self.errors.push(CompileError {
            kind: "AuthorizationPolicy",
            policy: self.policy.to_string(),
            origin: self.origin.clone(),
            path,
            message: message.into(),
        });
    }

    fn strings(values: &[String]) -> Vec<StringMatch> {
        values.iter().map(|v| StringMatch::new(v)).collect()
    }

    /// Principal values: `cluster.local` stands for the mesh's trust domain.
    fn principals(&self, values: &[String]) -> Vec<StringMatch> {
        values
            .iter()
            .map(|v| match v.strip_prefix("cluster.local/") {
                Some(rest) if self.trust_domain != "cluster.local" => {
                    StringMatch::new(&format!("{}/{rest}", self.trust_domain))
                }
                _ => StringMatch::new(v),
            })
            .collect()
    }

    fn ips(&mut self, path: &str, values: &[String]) -> Vec<IpBlock> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match IpBlock::parse(v) {
                Ok(b) => out.push(b),
                Err(e) => self.err(format!("{path}[{i}]"), e),
            }
        }
        out
    }

    fn ports(&mut self, path: &str, values: &[String]) -> Vec<u16> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match v.parse::<u16>() {
                Ok(p) => out.push(p),
                Err(_) => self.err(
                    format!("{path}[{i}]"),
                    format!("{v:?} is not a port (0-65535)"),
                ),
            }
        }
        out
    }

    /// Paths: plain Istio values, or `{*}`/`{**}` templates.
    fn paths(&mut self, path: &str, values: &[String]) -> Vec<StringMatch> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match StringMatch::path(v) {
                Ok(m) => out.push(m),
                Err(e) => self.err(format!("{path}[{i}]"), e),
            }
        }
        out
    }

    fn accounts(&self, values: &[String]) -> Vec<String> {
        values
            .iter()
            .map(|v| {
                if v.contains('/') {
                    v.clone()
                } else {
                    format!("{}/{v}", self.namespace)
                }
            })
            .collect()
    }

    fn push(
        tests: &mut Vec<Test>,
        values: Option<&Vec<String>>,
        negated: bool,
        make: impl FnOnce(&[String]) -> Clause,
    ) {
        if let Some(v) = values {
            tests.push(Test {
                clause: make(v),
                negated,
            });
        }
    }

    fn source(&mut self, path: &str, s: &Source) -> Vec<Test> {
        let mut t = Vec::new();
        let p = |f: &str| format!("{path}.{f}");
        Self::push(&mut t, s.principals.as_ref(), false, |v| {
            Clause::Principal(self.principals(v))
        });
        Self::push(&mut t, s.not_principals.as_ref(), true, |v| {
            Clause::Principal(self.principals(v))
        });
        Self::push(&mut t, s.request_principals.as_ref(), false, |v| {
            Clause::RequestPrincipal(v.to_vec())
        });
        Self::push(&mut t, s.not_request_principals.as_ref(), true, |v| {
            Clause::RequestPrincipal(v.to_vec())
        });
        Self::push(&mut t, s.namespaces.as_ref(), false, |v| {
            Clause::Namespace(Self::strings(v))
        });
        Self::push(&mut t, s.not_namespaces.as_ref(), true, |v| {
            Clause::Namespace(Self::strings(v))
        });
        let sa = s.service_accounts.as_ref().map(|v| self.accounts(v));
        Self::push(&mut t, sa.as_ref(), false, |v| {
            Clause::ServiceAccount(v.to_vec())
        });
        let nsa = s.not_service_accounts.as_ref().map(|v| self.accounts(v));
        Self::push(&mut t, nsa.as_ref(), true, |v| {
            Clause::ServiceAccount(v.to_vec())
        });
        Self::push(&mut t, s.trust_domains.as_ref(), false, |v| {
            Clause::TrustDomain(Self::strings(v))
        });
        Self::push(&mut t, s.not_trust_domains.as_ref(), true, |v| {
            Clause::TrustDomain(Self::strings(v))
        });
        for (field, values, negated, remote) in [
            ("ipBlocks", &s.ip_blocks, false, false),
            ("notIpBlocks", &s.not_ip_blocks, true, false),
            ("remoteIpBlocks", &s.remote_ip_blocks, false, true),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks, true, true),
        ] {
            if let Some(v) = values {
                let blocks = self.ips(&p(field), v);
                t.push(Test {
                    clause: if remote {
                        Clause::RemoteIp(blocks)
                    } else {
                        Clause::SourceIp(blocks)
                    },
                    negated,
                });
            }
        }
        t
    }

    fn operation(&mut self, path: &str, o: &Operation) -> Vec<Test> {
        let mut t = Vec::new();
        Self::push(&mut t, o.hosts.as_ref(), false, |v| {
            Clause::Host(Self::strings(v))
        });
        Self::push(&mut t, o.not_hosts.as_ref(), true, |v| {
            Clause::Host(Self::strings(v))
        });
        for (field, values, negated) in
            [("ports", &o.ports, false), ("notPorts", &o.not_ports, true)]
        {
            if let Some(v) = values {
                let ports = self.ports(&format!("{path}.{field}"), v);
                t.push(Test {
                    clause: Clause::Port(ports),
                    negated,
                });
            }
        }
        Self::push(&mut t, o.methods.as_ref(), false, |v| {
            Clause::Method(Self::strings(v))
        });
        Self::push(&mut t, o.not_methods.as_ref(), true, |v| {
            Clause::Method(Self::strings(v))
        });
        for (field, values, negated) in
            [("paths", &o.paths, false), ("notPaths", &o.not_paths, true)]
        {
            if let Some(v) = values {
                let paths = self.paths(&format!("{path}.{field}"), v);
                t.push(Test {
                    clause: Clause::Path(paths),
                    negated,
                });
            }
        }
        t
    }

    /// `request.headers[x]`, `request.auth.claims[a][b]`: the bracketed names.
    fn brackets(rest: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut s = rest;
        while !s.is_empty() {
            let inner = s.strip_prefix('[')?;
            let end = inner.find(']')?;
            if end == 0 {
                return None;
            }
            out.push(inner[..end].to_string());
            s = &inner[end + 1..];
        }
        (!out.is_empty()).then_some(out)
    }

    fn condition(&mut self, path: &str, c: &Condition) -> Vec<Test> {
        let mut out = Vec::new();
        let key = c.key.as_str();
        let make = |this: &mut Self, field: &str, v: &[String]| -> Option<Clause> {
            let vpath = format!("{path}.{field}");
            Some(match key {
                "source.ip" => Clause::SourceIp(this.ips(&vpath, v)),
                "remote.ip" => Clause::RemoteIp(this.ips(&vpath, v)),
                "destination.ip" => Clause::DestinationIp(this.ips(&vpath, v)),
                "destination.port" => Clause::Port(this.ports(&vpath, v)),
                "source.namespace" => Clause::Namespace(Self::strings(v)),
                "source.principal" => Clause::Principal(this.principals(v)),
                "source.serviceAccount" => Clause::ServiceAccount(this.accounts(v)),
                "source.trustDomain" => Clause::TrustDomain(Self::strings(v)),
                "connection.sni" => Clause::Sni(Self::strings(v)),
                "request.auth.principal" => Clause::RequestPrincipal(v.to_vec()),
                "request.auth.audiences" => Clause::Claim(vec!["aud".into()], Self::strings(v)),
                "request.auth.presenter" => Clause::Claim(vec!["azp".into()], Self::strings(v)),
                _ => {
                    if let Some(rest) = key.strip_prefix("request.headers") {
                        match Self::brackets(rest) {
                            Some(names) if names.len() == 1 => {
                                Clause::Header(names[0].to_ascii_lowercase(), Self::strings(v))
                            }
                            _ => {
                                this.err(
                                    format!("{path}.key"),
                                    format!("{key:?}: expected request.headers[<name>]"),
                                );
                                return None;
                            }
                        }
                    } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
                        match Self::brackets(rest) {
                            Some(names) => Clause::Claim(names, Self::strings(v)),
                            None => {
                                this.err(format!("{path}.key"), format!("{key:?}: expected request.auth.claims[<claim>] or [<a>][<b>]"));
                                return None;
                            }
                        }
                    } else if key.starts_with("experimental.envoy.filters.") {
                        this.err(
                            format!("{path}.key"),
                            format!("{key:?} reads Envoy dynamic metadata, which Warden does not have; remove the condition or use request.headers[...]"),
                        );
                        return None;
                    } else {
                        this.err(
                            format!("{path}.key"),
                            format!("{key:?} is not a supported condition key"),
                        );
                        return None;
                    }
                }
            })
        };
        if let Some(v) = &c.values
            && let Some(clause) = make(self, "values", v)
        {
            out.push(Test {
                clause,
                negated: false,
            });
        }
        if let Some(v) = &c.not_values
            && let Some(clause) = make(self, "notValues", v)
        {
            out.push(Test {
                clause,
                negated: true,
            });
        }
        out
    }

    fn rule(&mut self, path: &str, r: &crate::resources::Rule) -> Rule {
        let from = r.from.as_ref().map(|from| {
            from.iter()
                .enumerate()
                .map(|(i, f)| match &f.source {
                    Some(s) => self.source(&format!("{path}.from[{i}].source"), s),
                    None => Vec::new(),
                })
                .collect::<Vec<_>>()
        });
        let to = r.to.as_ref().map(|to| {
            to.iter()
                .enumerate()
                .map(|(i, t)| match &t.operation {
                    Some(o) => self.operation(&format!("{path}.to[{i}].operation"), o),
                    None => Vec::new(),
                })
                .collect::<Vec<_>>()
        });
        let mut when = Vec::new();
        for (i, c) in r.when.iter().flatten().enumerate() {
            when.extend(self.condition(&format!("{path}.when[{i}]"), c));
        }
        let has_http_only = from
            .iter()
            .chain(to.iter())
            .flatten()
            .flatten()
            .chain(when.iter())
            .any(|t| t.clause.http_only());
        Rule {
            from,
            to,
            when,
            has_http_only,
        }
    }
}

fn compile(
    p: &Loaded<AuthorizationPolicySpec>,
    trust_domain: &str,
    seq: usize,
) -> Result<Option<Policy>, Vec<CompileError>> {
    let meta = &p.resource.metadata;
    let spec = &p.resource.spec;
    if has_target_refs(spec.target_ref.as_ref(), spec.target_refs.as_ref()) {
        return Ok(None);
    }
    let name = format!("{}/{}", p.resource.namespace(), meta.name);
    let mut c = Compiler {
        policy: &name,
        origin: &p.origin,
        namespace: p.resource.namespace(),
        trust_domain,
        errors: Vec::new(),
    };
    let rules = spec.rules.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| c.rule(&format!("spec.rules[{i}]"), r))
            .collect::<Vec<_>>()
    });
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let dry_run = meta
        .annotations
        .get("istio.io/dry-run")
        // Istio reads it with Go's strconv.ParseBool.
        .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
        && matches!(spec.action, Action::Allow | Action::Deny);
    Ok(Some(Policy {
        seq,
        name,
        action: spec.action,
        selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
        provider: spec
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        dry_run,
        rules,
    }))
}

impl Policy {
    fn selects(&self, w: &Workload) -> bool {
        w.selected_by(self.selector.as_ref())
    }

    /// The first matching rule.
    fn matching_rule(&self, r: &Request, path: &str) -> Option<usize> {
        self.rules
            .as_ref()?
            .iter()
            .position(|rule| rule.matches(r, path, self.action))
    }
}

/// Why one policy did or did not match a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// `ns/name`.
    pub policy: String,
    /// Its action.
    pub action: Action,
    /// Dry-run (reported, not enforced).
    pub dry_run: bool,
    /// Whether it applies to the workload.
    pub applies: bool,
    /// The matching rule.
    pub matched_rule: Option<usize>,
    /// In words.
    pub why: String,
}

impl Engine {
    /// For every policy in the root and the workload's namespace: whether it applies
    /// and matched, and if not, why — in words a person can act on.
    pub fn explain(&self, w: &Workload, r: &Request) -> Vec<Explanation> {
        let path = r.http.as_ref().map_or("", |h| path_only(&h.path));
        self.candidates(w)
            .map(|p| {
                let mut e = Explanation {
                    policy: p.name.clone(),
                    action: p.action,
                    dry_run: p.dry_run,
                    applies: p.selects(w),
                    matched_rule: None,
                    why: String::new(),
                };
                if !e.applies {
                    e.why = format!(
                        "does not apply: its selector {:?} is not a subset of the workload's labels {:?}",
                        p.selector.clone().unwrap_or_default(),
                        w.labels
                    );
                    return e;
                }
                let Some(rules) = &p.rules else {
                    e.why = "has no rules: it matches nothing (for ALLOW, this denies every request to the workload unless another ALLOW policy matches)".into();
                    return e;
                };
                e.matched_rule = p.matching_rule(r, path);
                e.why = match e.matched_rule {
                    Some(i) => format!("rule {i} matched"),
                    None => rules
                        .iter()
                        .enumerate()
                        .map(|(i, rule)| {
                            format!(
                                "rule {i}: {}",
                                rule.why_not(r, path, p.action).unwrap_or_else(|| "matched".into())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                e
            })
            .collect()
    }

    /// Compiles the AuthorizationPolicies of `set` for trust domain `cluster.local`;
    /// `root_namespace` holds mesh-wide policies (`istio-system` by default).
    pub fn compile(set: &ConfigSet, root_namespace: &str) -> Result<Self, Vec<CompileError>> {
        Self::compile_for(set, root_namespace, "cluster.local")
    }

    /// Compiles for the mesh trust domain `trust_domain` (`cluster.local` in policy
    /// principals stands for it, as in Istio).
    pub fn compile_for(
        set: &ConfigSet,
        root_namespace: &str,
        trust_domain: &str,
    ) -> Result<Self, Vec<CompileError>> {
        let mut by_namespace: HashMap<String, NamespacePolicies> = HashMap::new();
        let mut errors = Vec::new();
        for (seq, p) in set.authorization_policies.iter().enumerate() {
            match compile(p, trust_domain, seq) {
                Ok(Some(policy)) => by_namespace
                    .entry(p.resource.namespace().to_string())
                    .or_default()
                    .add(Arc::new(policy)),
                Ok(None) => {}
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut header_names = std::collections::BTreeSet::new();
        for p in by_namespace.values().flat_map(|n| &n.all) {
            for rule in p.rules.iter().flatten() {
                let tests = rule.from.iter().flatten().flatten();
                let tests = tests.chain(rule.to.iter().flatten().flatten());
                for t in tests.chain(&rule.when) {
                    if let Clause::Header(name, _) = &t.clause {
                        header_names.insert(name.clone());
                    }
                }
            }
        }
        Ok(Self {
            root_namespace: root_namespace.to_string(),
            by_namespace,
            header_names,
        })
    }

    /// The root namespace's policies and, unless it is the root, `w`'s namespace's.
    fn namespaces<'a>(&'a self, w: &Workload) -> impl Iterator<Item = &'a NamespacePolicies> {
        root_and_own(&self.by_namespace, &self.root_namespace, &w.namespace)
    }

    /// Every policy of the root and the workload's namespace, applying or not.
    fn candidates<'a>(&'a self, w: &Workload) -> impl Iterator<Item = &'a Arc<Policy>> {
        self.namespaces(w).flat_map(|n| n.all.iter())
    }

    /// The policies that apply to `w` (root namespace first, then load order), found
    /// through the label index: policies filed under labels `w` lacks are never seen.
    fn applicable<'a>(&'a self, w: &Workload) -> Vec<&'a Policy> {
        let mut out = Vec::new();
        for n in self.namespaces(w) {
            n.applicable(w, &mut out);
        }
        out
    }

    /// The header names (lower case) any policy reads: a request's view needs no
    /// other header.
    pub fn header_names(&self) -> &std::collections::BTreeSet<String> {
        &self.header_names
    }

    /// Decides `r` for workload `w`.
    pub fn evaluate(&self, w: &Workload, r: &Request) -> Decision {
        let path = r.http.as_ref().map_or("", |h| path_only(&h.path));
        let mut custom = None;
        let mut deny = None;
        let mut allow = None;
        let mut any_allow = false;
        let mut audit = Vec::new();
        let mut dry_run = Vec::new();
        for p in self.applicable(w) {
            let hit = |p: &Policy| {
                p.matching_rule(r, path).map(|rule| Match {
                    policy: p.name.clone(),
                    rule,
                })
            };
            if p.dry_run {
                dry_run.push(DryRun {
                    policy: p.name.clone(),
                    action: p.action,
                    rule: p.matching_rule(r, path),
                });
                continue;
            }
            match p.action {
                Action::Custom => {
                    if custom.is_none()
                        && let Some(m) = hit(p)
                    {
                        custom = Some((p.provider.clone(), m));
                    }
                }
                Action::Deny => {
                    if deny.is_none() {
                        deny = hit(p);
                    }
                }
                Action::Allow => {
                    any_allow = true;
                    if allow.is_none() {
                        allow = hit(p);
                    }
                }
                Action::Audit => audit.extend(hit(p)),
            }
        }
        let (allowed, deciding, reason) = if let Some(m) = deny {
            (
                false,
                Some(m.clone()),
                format!("denied by DENY policy {} rule {}", m.policy, m.rule),
            )
        } else if !any_allow {
            (
                true,
                None,
                "allowed: no ALLOW policy applies to the workload".to_string(),
            )
        } else if let Some(m) = allow {
            (
                true,
                Some(m.clone()),
                format!("allowed by ALLOW policy {} rule {}", m.policy, m.rule),
            )
        } else {
            (
                false,
                None,
                "denied: ALLOW policies apply to the workload and none matched".to_string(),
            )
        };
        Decision {
            allowed,
            deciding,
            reason,
            custom,
            audit,
            dry_run,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load_str;

    fn engine(yaml: &str) -> Engine {
        let set = load_str(std::path::Path::new("t.yaml"), yaml).unwrap();
        Engine::compile(&set, "istio-system").unwrap()
    }

    fn ap(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}\n",
            spec.lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    fn wl(ns: &str, app: &str) -> Workload {
        Workload {
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into(),
        }
    }

    /// An HTTP request from `principal` (None = plaintext).
    /// An HTTP request whose path is normalized as the proxy does (`BASE`).
    fn http(principal: Option<&str>, method: &str, path: &str) -> Request {
        let path = crate::normalize::normalize(path, crate::normalize::PathNormalization::Base)
            .unwrap()
            .into_owned();
        Request {
            protocol: Protocol::Http,
            source_principal: principal.map(String::from),
            source_ip: Some("10.1.0.5".parse().unwrap()),
            destination_ip: Some("10.0.0.10".parse().unwrap()),
            destination_port: 8080,
            http: Some(HttpRequest {
                method: method.into(),
                path,
                host: "svc.foo".into(),
                headers: BTreeMap::new(),
            }),
            ..Request::default()
        }
    }

    fn tcp(principal: Option<&str>, port: u16) -> Request {
        Request {
            protocol: Protocol::Tcp,
            source_principal: principal.map(String::from),
            source_ip: Some("10.1.0.5".parse().unwrap()),
            destination_port: port,
            ..Request::default()
        }
    }

    const SLEEP: Option<&str> = Some("cluster.local/ns/foo/sa/sleep");
    const OTHER: Option<&str> = Some("cluster.local/ns/bar/sa/other");

    /// (name, policies, workload, request, allowed)
    fn check(cases: Vec<(&str, String, Workload, Request, bool)>) {
        let mut failed = Vec::new();
        for (name, yaml, w, r, want) in cases {
            let d = engine(&yaml).evaluate(&w, &r);
            if d.allowed != want {
                failed.push(format!("{name}: want allowed={want}, got {d:?}"));
            }
        }
        assert!(
            failed.is_empty(),
            "{} case(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }

    #[test]
    fn istio_reference_cases() {
        let w = wl("foo", "httpbin");
        let mut with_header = http(SLEEP, "GET", "/x");
        if let Some(h) = with_header.http.as_mut() {
            h.headers.insert("x-token".into(), "admin".into());
        }
        let mut jwt = http(None, "GET", "/x");
        jwt.jwt = Some(
            serde_json::json!({"iss": "https://issuer", "sub": "alice", "aud": ["a", "b"], "groups": ["dev", "ops"], "nested": {"k": "v"}}),
        );
        let cases: Vec<(&str, String, Workload, Request, bool)> = vec![
            (
                "no policy allows",
                String::new(),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "spec {} allows nothing",
                ap("foo", "deny-all", "{}"),
                w.clone(),
                http(SLEEP, "GET", "/"),
                false,
            ),
            (
                "rules [{}] allows everything",
                ap("foo", "allow-all", "rules: [{}]"),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "DENY rules [{}] denies everything",
                ap("foo", "d", "action: DENY\nrules: [{}]"),
                w.clone(),
                http(SLEEP, "GET", "/"),
                false,
            ),
            (
                "ALLOW principal matches",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                true,
            ),
            (
                "ALLOW principal does not match others",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]",
                ),
                w.clone(),
                http(OTHER, "GET", "/"),
                false,
            ),
            (
                "principal prefix",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {principals: [cluster.local/ns/foo/*]}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                true,
            ),
            (
                "principal suffix",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {principals: ['*/sa/sleep']}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                true,
            ),
            (
                "principals * rejects plaintext",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {principals: ['*']}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "principals * admits any mTLS peer",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {principals: ['*']}}]}]",
                ),
                w.clone(),
                http(OTHER, "GET", "/"),
                true,
            ),
            (
                "notNamespaces admits plaintext",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {notNamespaces: [foo]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "DENY namespaces does not block plaintext",
                ap(
                    "foo",
                    "d",
                    "action: DENY\nrules: [{from: [{source: {namespaces: [foo]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "DENY namespaces blocks the namespace",
                ap(
                    "foo",
                    "d",
                    "action: DENY\nrules: [{from: [{source: {namespaces: [foo]}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                false,
            ),
            (
                "DENY notNamespaces * forces mTLS",
                ap(
                    "foo",
                    "d",
                    "action: DENY\nrules: [{from: [{source: {notNamespaces: ['*']}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "serviceAccounts bare name is the policy namespace",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {serviceAccounts: [sleep]}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                true,
            ),
            (
                "serviceAccounts ns/sa",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {serviceAccounts: [bar/other]}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                false,
            ),
            (
                "ipBlocks CIDR",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {ipBlocks: [10.1.0.0/16]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "notIpBlocks",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {notIpBlocks: [10.1.0.0/16]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "methods exact",
                ap("foo", "a", "rules: [{to: [{operation: {methods: [GET]}}]}]"),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "methods are case-sensitive",
                ap("foo", "a", "rules: [{to: [{operation: {methods: [get]}}]}]"),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "paths prefix",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {paths: [/info*]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/info/x"),
                true,
            ),
            (
                "paths ignore the query",
                ap("foo", "a", "rules: [{to: [{operation: {paths: [/info]}}]}]"),
                w.clone(),
                http(None, "GET", "/info?x=1"),
                true,
            ),
            (
                "paths are normalized before DENY",
                ap(
                    "foo",
                    "d",
                    "action: DENY\nrules: [{to: [{operation: {paths: [/admin*]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/public/../admin/x"),
                false,
            ),
            (
                "encoded dot segments are normalized",
                ap(
                    "foo",
                    "d",
                    "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/x/%2e%2e/admin"),
                false,
            ),
            (
                "paths are case-sensitive",
                ap(
                    "foo",
                    "d",
                    "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/ADMIN"),
                true,
            ),
            (
                "hosts are case-insensitive",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {hosts: [SVC.FOO]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "notHosts",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {notHosts: ['*.foo']}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "ports",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {ports: ['8080']}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "notPorts",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {notPorts: ['8080']}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "from AND to",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}], to: [{operation: {methods: [POST]}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                false,
            ),
            (
                "rules OR",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {methods: [GET]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "from entries OR",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {namespaces: [bar]}}, {source: {namespaces: [foo]}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                true,
            ),
            (
                "fields within a source AND",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {namespaces: [foo], ipBlocks: [192.168.0.0/16]}}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                false,
            ),
            (
                "when header",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: 'request.headers[X-Token]', values: [admin]}]}]",
                ),
                w.clone(),
                with_header.clone(),
                true,
            ),
            (
                "when header notValues",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: 'request.headers[x-token]', notValues: [admin]}]}]",
                ),
                w.clone(),
                with_header.clone(),
                false,
            ),
            (
                "when source.namespace",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: source.namespace, values: [foo]}]}]",
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                true,
            ),
            (
                "when source.ip",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: source.ip, values: [10.1.0.5]}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "when destination.port",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: destination.port, values: ['9090']}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "when destination.ip",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: destination.ip, values: [10.0.0.0/24]}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "requestPrincipals exact",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {requestPrincipals: [https://issuer/alice]}}]}]",
                ),
                w.clone(),
                jwt.clone(),
                true,
            ),
            (
                "requestPrincipals iss/*",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {requestPrincipals: ['https://issuer/*']}}]}]",
                ),
                w.clone(),
                jwt.clone(),
                true,
            ),
            (
                "requestPrincipals */sub",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {requestPrincipals: ['*/bob']}}]}]",
                ),
                w.clone(),
                jwt.clone(),
                false,
            ),
            (
                "requestPrincipals * needs a token",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "claims list value",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: 'request.auth.claims[groups]', values: [ops]}]}]",
                ),
                w.clone(),
                jwt.clone(),
                true,
            ),
            (
                "nested claims",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: 'request.auth.claims[nested][k]', values: [v]}]}]",
                ),
                w.clone(),
                jwt.clone(),
                true,
            ),
            (
                "audiences",
                ap(
                    "foo",
                    "a",
                    "rules: [{when: [{key: request.auth.audiences, values: [b]}]}]",
                ),
                w.clone(),
                jwt.clone(),
                true,
            ),
            (
                "DENY wins over ALLOW",
                format!(
                    "{}{}",
                    ap("foo", "a", "rules: [{}]"),
                    ap(
                        "foo",
                        "d",
                        "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]"
                    )
                ),
                w.clone(),
                http(SLEEP, "GET", "/"),
                false,
            ),
            (
                "AUDIT does not change the decision",
                ap("foo", "au", "action: AUDIT\nrules: [{}]"),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "selector limits the policy",
                ap(
                    "foo",
                    "a",
                    "selector: {matchLabels: {app: other}}\nrules: [{to: [{operation: {methods: [POST]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "selector matches",
                ap(
                    "foo",
                    "a",
                    "selector: {matchLabels: {app: httpbin}}\nrules: [{to: [{operation: {methods: [POST]}}]}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "other namespaces do not apply",
                ap("bar", "d", "action: DENY\nrules: [{}]"),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "root namespace applies mesh-wide",
                ap("istio-system", "d", "action: DENY\nrules: [{}]"),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "root namespace selector applies in every namespace",
                ap(
                    "istio-system",
                    "d",
                    "selector: {matchLabels: {app: httpbin}}\naction: DENY\nrules: [{}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                false,
            ),
            (
                "targetRef policies do not apply to sidecars",
                ap(
                    "foo",
                    "d",
                    "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\naction: DENY\nrules: [{}]",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "dry-run DENY is not enforced",
                ap("foo", "d", "action: DENY\nrules: [{}]").replace(
                    "namespace: foo}",
                    "namespace: foo, annotations: {istio.io/dry-run: 'true'}}",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "dry-run-only ALLOW does not deny by default",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {methods: [POST]}}]}]",
                )
                .replace(
                    "namespace: foo}",
                    "namespace: foo, annotations: {istio.io/dry-run: 'true'}}",
                ),
                w.clone(),
                http(None, "GET", "/"),
                true,
            ),
            (
                "TCP: ALLOW rule with an HTTP field is dropped",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {methods: [GET], ports: ['9000']}}]}]",
                ),
                w.clone(),
                tcp(SLEEP, 9000),
                false,
            ),
            (
                "TCP: ALLOW without HTTP fields applies",
                ap(
                    "foo",
                    "a",
                    "rules: [{to: [{operation: {ports: ['9000']}}]}]",
                ),
                w.clone(),
                tcp(SLEEP, 9000),
                true,
            ),
            (
                "TCP: DENY drops only the HTTP field",
                ap(
                    "foo",
                    "d",
                    "action: DENY\nrules: [{to: [{operation: {methods: [GET], ports: ['9000']}}]}]",
                ),
                w.clone(),
                tcp(SLEEP, 9000),
                false,
            ),
            (
                "TCP: DENY scoped by port leaves other ports",
                ap(
                    "foo",
                    "d",
                    "action: DENY\nrules: [{to: [{operation: {methods: [GET], ports: ['9000']}}]}]",
                ),
                w.clone(),
                tcp(SLEEP, 9001),
                true,
            ),
            (
                "TCP: principals apply",
                ap(
                    "foo",
                    "a",
                    "rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]",
                ),
                w.clone(),
                tcp(SLEEP, 9000),
                true,
            ),
        ];
        assert!(cases.len() >= 60, "{} cases", cases.len());
        check(cases);
    }

    #[test]
    fn decisions_name_the_policy_rule_audit_custom_and_dry_run() {
        let yaml = [
            ap("foo", "allow-get", "rules: [{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {methods: [GET]}}]}]"),
            ap("foo", "audit-all", "action: AUDIT\nrules: [{}]"),
            ap("foo", "ext", "action: CUSTOM\nprovider: {name: opa}\nrules: [{to: [{operation: {paths: ['/ext*']}}]}]"),
            ap("foo", "shadow", "action: DENY\nrules: [{}]").replace("namespace: foo}", "namespace: foo, annotations: {istio.io/dry-run: 'true'}}"),
        ]
        .concat();
        let e = engine(&yaml);
        let d = e.evaluate(&wl("foo", "x"), &http(None, "GET", "/ext/1"));
        assert!(d.allowed);
        assert_eq!(
            d.deciding,
            Some(Match {
                policy: "foo/allow-get".into(),
                rule: 1
            })
        );
        assert_eq!(
            d.audit,
            vec![Match {
                policy: "foo/audit-all".into(),
                rule: 0
            }]
        );
        assert_eq!(
            d.custom,
            Some((
                "opa".into(),
                Match {
                    policy: "foo/ext".into(),
                    rule: 0
                }
            ))
        );
        assert_eq!(
            d.dry_run,
            vec![DryRun {
                policy: "foo/shadow".into(),
                action: Action::Deny,
                rule: Some(0)
            }]
        );
        let d = e.evaluate(&wl("foo", "x"), &http(None, "DELETE", "/"));
        assert!(!d.allowed && d.deciding.is_none());
        assert!(d.reason.contains("none matched"), "{}", d.reason);
    }

    #[test]
    fn explanations_say_why() {
        let yaml = [
            ap("foo", "get-only", "rules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {methods: [GET]}}]}]"),
            ap("foo", "other-app", "selector: {matchLabels: {app: other}}\nrules: [{}]"),
            ap("foo", "tcp-http", "rules: [{to: [{operation: {paths: [/x]}}]}]"),
        ]
        .concat();
        let e = engine(&yaml);
        let ex = e.explain(&wl("foo", "httpbin"), &http(SLEEP, "GET", "/"));
        assert_eq!(ex.len(), 3);
        assert!(
            ex[0]
                .why
                .contains("from[0]: source namespace in [\"bar\"] is false"),
            "{}",
            ex[0].why
        );
        assert!(
            !ex[1].applies && ex[1].why.contains("selector"),
            "{}",
            ex[1].why
        );
        let ex = e.explain(&wl("foo", "httpbin"), &tcp(SLEEP, 80));
        assert!(ex[2].why.contains("dropped for TCP"), "{}", ex[2].why);
    }

    #[test]
    fn bad_values_are_compile_errors_naming_the_field() {
        let set = load_str(
            std::path::Path::new("t.yaml"),
            &ap("foo", "bad", "rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 300.1.1.1]}}], to: [{operation: {ports: ['http']}}], when: [{key: request.bogus, values: [x]}]}]"),
        )
        .unwrap();
        let errs: Vec<String> = Engine::compile(&set, "istio-system")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("foo/bad: spec.rules[0].from[0].source.ipBlocks[1]: \"300.1.1.1\" is not an IP address"), "{}", errs[0]);
        assert!(
            errs[1].contains("spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port"),
            "{}",
            errs[1]
        );
        assert!(
            errs[2].contains(
                "spec.rules[0].when[0].key: \"request.bogus\" is not a supported condition key"
            ),
            "{}",
            errs[2]
        );
    }

    #[test]
    fn policies_that_cannot_apply_never_change_a_decision() {
        // Property: adding policies in other namespaces, or with selectors the
        // workload does not match, leaves every decision as it was; adding ALLOW
        // policies never turns a DENY-policy denial into an allow.
        let base = ap(
            "foo",
            "d",
            "action: DENY\nrules: [{to: [{operation: {methods: [DELETE]}}]}]",
        );
        let requests = [
            http(SLEEP, "GET", "/"),
            http(None, "DELETE", "/x"),
            http(OTHER, "POST", "/admin"),
            tcp(SLEEP, 9000),
        ];
        let w = wl("foo", "httpbin");
        let before: Vec<bool> = requests
            .iter()
            .map(|r| engine(&base).evaluate(&w, r).allowed)
            .collect();
        let mut noise = base.clone();
        for i in 0..50 {
            noise.push_str(&ap(
                &format!("ns{i}"),
                &format!("p{i}"),
                "action: DENY\nrules: [{}]",
            ));
            noise.push_str(&ap(
                "foo",
                &format!("s{i}"),
                &format!(
                    "selector: {{matchLabels: {{app: other{i}}}}}\naction: DENY\nrules: [{{}}]"
                ),
            ));
        }
        let after: Vec<bool> = requests
            .iter()
            .map(|r| engine(&noise).evaluate(&w, r).allowed)
            .collect();
        assert_eq!(before, after);
        let with_allow = format!("{base}{}", ap("foo", "allow-all", "rules: [{}]"));
        let denied = engine(&with_allow).evaluate(&w, &http(None, "DELETE", "/x"));
        assert!(!denied.allowed, "an ALLOW policy weakened a DENY");
    }
}
