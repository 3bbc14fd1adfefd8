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
//!
//! The module is split by what each part holds: this file the request, decision and
//! [`Engine`] types; `compiled` the compiled form of a policy and the per-namespace
//! label index; `compile` AuthorizationPolicy YAML into that form (errors name the
//! field); `evaluate` the decision and its explanation. Istio's documented cases are
//! in `policy/tests/cases/*.yaml`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::resources::Action;

mod compile;
mod compiled;
mod evaluate;
#[cfg(test)]
mod tests;

use compiled::NamespacePolicies;

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

/// Compiled policies of one config version.
#[derive(Debug, Default)]
pub struct Engine {
    root_namespace: String,
    by_namespace: HashMap<String, NamespacePolicies>,
    /// Every header name a `request.headers[...]` condition reads (lower case).
    header_names: std::collections::BTreeSet<String>,
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
    /// The header names (lower case) any policy reads: a request's view needs no
    /// other header.
    pub fn header_names(&self) -> &std::collections::BTreeSet<String> {
        &self.header_names
    }
}
