//! Deciding a request: the policies that apply to the workload (root namespace first,
//! then load order, through the label index), each rule's tests on the request, and the
//! order CUSTOM, DENY, ALLOW; and, for `warden authz check`, why each policy did or did
//! not match.

use std::sync::Arc;

use super::compiled::{Clause, NamespacePolicies, Policy, Rule, Test};
use super::{
    Decision, DryRun, Engine, Explanation, Match, Protocol, Request, Workload, root_and_own,
};
use crate::matcher::StringMatch;
use crate::normalize::path_only;
use crate::resources::Action;

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
/// Booleans and numbers never match, as in Istio ("supports both string typed and
/// list-of-string typed JWT claims"; Envoy's string matcher only sees string values).
fn claim_matches(v: Option<&serde_json::Value>, ms: &[StringMatch]) -> bool {
    match v {
        Some(serde_json::Value::String(s)) => ms.iter().any(|m| m.matches(s)),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(serde_json::Value::as_str)
            .any(|s| ms.iter().any(|m| m.matches(s))),
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
            // The whole `:authority`, port included, as Envoy's header matcher sees it:
            // `hosts: [a]` does not match `a:8080` (istio/istio#44080: write `a:*` too).
            Self::Host(ms) => {
                http.is_some_and(|h| ms.iter().any(|m| m.matches_ignore_case(&h.host)))
            }
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

impl Policy {
    /// The first matching rule.
    fn matching_rule(&self, r: &Request, path: &str) -> Option<usize> {
        self.rules
            .as_ref()?
            .iter()
            .position(|rule| rule.matches(r, path, self.action))
    }
}
