//! The compiled form of an AuthorizationPolicy: each rule as lists of [`Test`]s on
//! request attributes ([`Clause`]), and the policies of one namespace indexed by selector
//! label ([`NamespacePolicies`]) so a lookup only meets policies that can apply.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::Workload;
use crate::matcher::{IpBlock, StringMatch};
use crate::resources::Action;

/// One compiled test of a request.
#[derive(Debug, Clone)]
pub(super) enum Clause {
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
    pub(super) fn http_only(&self) -> bool {
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
pub(super) struct Test {
    pub(super) clause: Clause,
    pub(super) negated: bool,
}

/// A compiled rule: (any of `from`) AND (any of `to`) AND (all of `when`).
#[derive(Debug, Clone, Default)]
pub(super) struct Rule {
    pub(super) from: Option<Vec<Vec<Test>>>,
    pub(super) to: Option<Vec<Vec<Test>>>,
    pub(super) when: Vec<Test>,
    pub(super) has_http_only: bool,
}

#[derive(Debug)]
pub(super) struct Policy {
    /// Position in the config set (root-namespace policies are reported first).
    pub(super) seq: usize,
    pub(super) name: String,
    pub(super) action: Action,
    pub(super) selector: Option<BTreeMap<String, String>>,
    pub(super) provider: String,
    pub(super) dry_run: bool,
    /// `None`: no rules (matches nothing).
    pub(super) rules: Option<Vec<Rule>>,
}

/// The policies of one namespace, indexed for the lookup by workload labels.
#[derive(Debug, Default)]
pub(super) struct NamespacePolicies {
    /// All of them, in load order (for explanations).
    pub(super) all: Vec<Arc<Policy>>,
    /// No selector, or an empty one: they apply to every workload.
    pub(super) unselected: Vec<Arc<Policy>>,
    /// Selector policies under one of their labels: key → value → policies. A
    /// workload only meets the policies filed under one of its own labels.
    pub(super) by_label: HashMap<String, HashMap<String, Vec<Arc<Policy>>>>,
}

impl NamespacePolicies {
    pub(super) fn add(&mut self, p: Arc<Policy>) {
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
    pub(super) fn applicable<'a>(&'a self, w: &Workload, out: &mut Vec<&'a Policy>) {
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

impl Policy {
    pub(super) fn selects(&self, w: &Workload) -> bool {
        w.selected_by(self.selector.as_ref())
    }
}
