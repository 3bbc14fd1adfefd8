//! AuthorizationPolicy resources into the compiled form ([`super::compiled`]): values
//! parsed once (CIDRs, ports, path templates, condition keys), principals resolved
//! against the trust domain, and every bad value a [`CompileError`] naming the file,
//! the policy and the field.

use std::collections::HashMap;
use std::sync::Arc;

use super::compiled::{Clause, NamespacePolicies, Policy, Rule, Test};
use super::{CompileError, Engine};
use crate::loader::{ConfigSet, Loaded, Origin};
use crate::matcher::{IpBlock, StringMatch};
use crate::resources::{
    Action, AuthorizationPolicySpec, Condition, Operation, Source, has_target_refs,
};

impl Engine {
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
}

/// A list field as Istio reads it: `[]` is the same as absent (proto3 has no
/// empty-but-set list, and istiod skips a field with neither values nor notValues:
/// `pilot/pkg/security/authz/model/model.go` `insertFront`, and `from`/`to` with no
/// entries match any source or operation). Matching nothing instead would make
/// `principals: []` or `from: []` in a DENY rule deny nothing.
fn set<T>(list: &Option<Vec<T>>) -> Option<&Vec<T>> {
    list.as_ref().filter(|l| !l.is_empty())
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
        if let Some(v) = values.filter(|v| !v.is_empty()) {
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
            if let Some(v) = set(values) {
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
            if let Some(v) = set(values) {
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
            if let Some(v) = set(values) {
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
        if let Some(v) = set(&c.values)
            && let Some(clause) = make(self, "values", v)
        {
            out.push(Test {
                clause,
                negated: false,
            });
        }
        if let Some(v) = set(&c.not_values)
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
        let from = set(&r.from).map(|from| {
            from.iter()
                .enumerate()
                .map(|(i, f)| match &f.source {
                    Some(s) => self.source(&format!("{path}.from[{i}].source"), s),
                    None => Vec::new(),
                })
                .collect::<Vec<_>>()
        });
        let to = set(&r.to).map(|to| {
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
