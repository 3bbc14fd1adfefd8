//! `warden validate`: the checks Istio's validation webhook applies to the security
//! resources (and to VirtualServices, DestinationRules and Gateways, in `networking`),
//! so a file that passes here is one `kubectl apply` would accept (and one that fails
//! names the file, line, resource, field and reason).
//!
//! The rules are those of istio/istio `pkg/config/validation/validation.go`
//! (`ValidateAuthorizationPolicy`, `ValidatePeerAuthentication`,
//! `ValidateRequestAuthentication`, `validateMetadata`, `validateWorkloadSelector`,
//! `validatePolicyTargetReference`), of the helpers they call in
//! `pkg/config/security/security.go` and `pkg/config/validation/agent/validation.go`,
//! and the `rules` size limit of the AuthorizationPolicy CRD schema (enforced by the API
//! server). Each check's doc comment names its source. Where Istio's message names a
//! location ("found at rule 2", "found in IpBlocks") the field path says it instead, and
//! where Istio stops at the first bad value of a list every bad value is reported.
//!
//! Beyond the webhook, [`validate`] reports what Warden's own engine refuses (for
//! example `experimental.envoy.filters.*` conditions, which need Envoy metadata), and
//! warnings for what is accepted but probably not meant: Istio's own warnings (a DENY
//! rule with only HTTP attributes denies all TCP traffic; a selector without labels) and
//! Warden's (policies Warden ignores, values Istio reads differently).
//!
//! Deliberate differences from the webhook: `rules: []` counts as no rules (as Istio's
//! JSON decoding makes it); `from: []` and `to: []` are refused (as the webhook means
//! to, see `ValidateAuthorizationPolicy`); `trustDomains`, `notTrustDomains` and the
//! `source.trustDomain` key are Warden extensions and accepted; `jwksUri` may also be a
//! `file://` URI or a local path, which Warden reads and Istio refuses (reported as a
//! warning).
//!
//! One file per kind, as Istio's webhook has one function per kind:
//! `authorization_policy`, `peer_authentication`, `request_authentication`; the checks
//! the three share (the dry-run annotation, selectors, target references) are in
//! `metadata`, the value checks of `pkg/config/security/security.go` in `values`. This
//! file places each finding at its file and line and adds what Warden's engine refuses.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::authz::Engine;
use crate::loader::{ConfigSet, Loaded};
use crate::resources::AuthorizationPolicySpec;
use crate::yaml_lines::SourceLines;

mod authorization_policy;
mod metadata;
mod networking;
mod peer_authentication;
mod request_authentication;
#[cfg(test)]
mod tests;
mod values;

use authorization_policy::authorization_policy;
use peer_authentication::peer_authentication;
pub(crate) use request_authentication::jwt_rule_errors;
use request_authentication::request_authentication;

/// Whether a problem makes Istio (or Warden) refuse the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Refused: `kubectl apply` would fail, or Warden's engine cannot load it.
    Error,
    /// Accepted, but probably not what was meant.
    Warning,
}

/// One problem of one resource, at the line of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line of the field (of the document when the field is not written).
    pub line: usize,
    /// The resource's kind, e.g. `AuthorizationPolicy` or `Gateway`.
    pub kind: String,
    /// `namespace/name`.
    pub name: String,
    /// Field path relative to the resource, e.g. `spec.rules[0].from[1].source.ipBlocks[2]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl Problem {
    /// Whether it is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} {}: {}: ",
            self.file.display(),
            self.line,
            self.kind,
            self.name,
            self.path
        )?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Settings that change what is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The mesh's root namespace (MeshConfig `rootNamespace`).
    pub root_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".into(),
        }
    }
}

/// Checks every AuthorizationPolicy, PeerAuthentication, RequestAuthentication,
/// VirtualService, DestinationRule and Gateway of `set`; `lines` locates fields in the
/// files. Problems are sorted by file and line.
pub fn validate(set: &ConfigSet, lines: &SourceLines, options: &Options) -> Vec<Problem> {
    let mut out = Vec::new();
    for p in &set.authorization_policies {
        out.extend(problems(p, authorization_policy(&p.resource), lines));
    }
    out.extend(engine_problems(set, options, lines, &out));
    for p in &set.peer_authentications {
        out.extend(problems(
            p,
            peer_authentication(&p.resource, options),
            lines,
        ));
    }
    for p in &set.request_authentications {
        out.extend(problems(p, request_authentication(&p.resource), lines));
    }
    let subsets = networking::subsets_by_host(set);
    for v in &set.virtual_services {
        out.extend(problems(v, networking::virtual_service(v, &subsets), lines));
    }
    for d in &set.destination_rules {
        out.extend(problems(d, networking::destination_rule(d), lines));
    }
    for g in &set.gateways {
        out.extend(problems(g, networking::gateway(g), lines));
    }
    // Local rate limits: what the proxy's compiler refuses.
    for r in &set.local_rate_limits {
        let mut f = Findings::default();
        if let Some((path, message)) = crate::ratelimit::check_local_rate_limit(r) {
            f.error(path, message);
        }
        out.extend(problems(r, f, lines));
    }
    for r in &set.envoy_filters {
        let mut f = Findings::default();
        if let Some((path, message)) = crate::ratelimit::check_envoy_filter(r) {
            f.error(path, message);
        }
        out.extend(problems(r, f, lines));
    }
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

/// What was checked, for the line printed when nothing is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Resources loaded (all kinds Warden reads).
    pub resources: usize,
    /// Files they came from.
    pub files: usize,
    /// Count per kind, kinds without resources left out.
    pub kinds: Vec<(&'static str, usize)>,
    /// Documents of kinds Warden does not read.
    pub skipped: usize,
    /// Warnings reported.
    pub warnings: usize,
}

impl Summary {
    /// Counts `set` and the warnings among `problems`.
    pub fn new(set: &ConfigSet, problems: &[Problem]) -> Self {
        let kinds = [
            ("AuthorizationPolicy", set.authorization_policies.len()),
            ("PeerAuthentication", set.peer_authentications.len()),
            ("RequestAuthentication", set.request_authentications.len()),
            ("ServiceEntry", set.service_entries.len()),
            ("WorkloadEntry", set.workload_entries.len()),
            ("VirtualService", set.virtual_services.len()),
            ("DestinationRule", set.destination_rules.len()),
            ("Gateway", set.gateways.len()),
            ("EnvoyFilter", set.envoy_filters.len()),
            ("LocalRateLimit", set.local_rate_limits.len()),
        ];
        let files: std::collections::BTreeSet<&Path> = set
            .authorization_policies
            .iter()
            .map(|l| l.origin.file.as_path())
            .chain(
                set.peer_authentications
                    .iter()
                    .map(|l| l.origin.file.as_path()),
            )
            .chain(
                set.request_authentications
                    .iter()
                    .map(|l| l.origin.file.as_path()),
            )
            .chain(set.service_entries.iter().map(|l| l.origin.file.as_path()))
            .chain(set.workload_entries.iter().map(|l| l.origin.file.as_path()))
            .chain(set.virtual_services.iter().map(|l| l.origin.file.as_path()))
            .chain(
                set.destination_rules
                    .iter()
                    .map(|l| l.origin.file.as_path()),
            )
            .chain(set.gateways.iter().map(|l| l.origin.file.as_path()))
            .chain(set.envoy_filters.iter().map(|l| l.origin.file.as_path()))
            .chain(
                set.local_rate_limits
                    .iter()
                    .map(|l| l.origin.file.as_path()),
            )
            .collect();
        Self {
            resources: kinds.iter().map(|(_, n)| n).sum(),
            files: files.len(),
            kinds: kinds.into_iter().filter(|(_, n)| *n > 0).collect(),
            skipped: set.notes.len(),
            warnings: problems.iter().filter(|p| !p.is_error()).count(),
        }
    }
}

impl fmt::Display for Summary {
    /// `ok: 12 resources in 3 files (7 AuthorizationPolicy, 5 PeerAuthentication);
    /// 1 unknown kind skipped`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "ok: {} resource{} in {} file{}",
            self.resources,
            s(self.resources),
            self.files,
            s(self.files)
        )?;
        if !self.kinds.is_empty() {
            let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        if self.skipped > 0 {
            write!(
                f,
                "; {} unknown kind{} skipped",
                self.skipped,
                s(self.skipped)
            )?;
        }
        if self.warnings > 0 {
            write!(f, "; {} warning{}", self.warnings, s(self.warnings))?;
        }
        Ok(())
    }
}

/// A problem before it is placed in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    path: String,
    message: String,
    severity: Severity,
}

/// The findings of one resource.
#[derive(Debug, Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), message.into(), Severity::Error);
    }

    fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), message.into(), Severity::Warning);
    }

    fn push(&mut self, path: String, message: String, severity: Severity) {
        self.0.push(Finding {
            path,
            message,
            severity,
        });
    }
}

/// Places `findings` of the resource `loaded` in its file.
fn problems<'a, S>(
    loaded: &'a Loaded<S>,
    findings: Findings,
    lines: &'a SourceLines,
) -> impl Iterator<Item = Problem> + 'a {
    let r = &loaded.resource;
    findings.0.into_iter().map(move |f| Problem {
        file: loaded.origin.file.clone(),
        line: lines.line(&loaded.origin, &f.path),
        kind: r.kind.clone(),
        name: format!("{}/{}", r.namespace(), r.metadata.name),
        path: f.path,
        message: f.message,
        severity: f.severity,
    })
}

/// What Warden's AuthorizationPolicy compiler refuses that the webhook checks above did
/// not already report at the same field (or, for conditions, the same `when[i]`).
fn engine_problems(
    set: &ConfigSet,
    options: &Options,
    lines: &SourceLines,
    reported: &[Problem],
) -> Vec<Problem> {
    let Err(errors) = Engine::compile(set, &options.root_namespace) else {
        return Vec::new();
    };
    let by_name: HashMap<String, &Loaded<AuthorizationPolicySpec>> = set
        .authorization_policies
        .iter()
        .map(|p| {
            let r = &p.resource;
            (format!("{}/{}", r.namespace(), r.metadata.name), p)
        })
        .collect();
    let mut out = Vec::new();
    for e in errors {
        let Some(loaded) = by_name.get(&e.policy) else {
            continue;
        };
        let covered = reported.iter().any(|p| {
            p.is_error()
                && p.kind == "AuthorizationPolicy"
                && p.name == e.policy
                && same_field(&p.path, &e.path)
        });
        if !covered {
            let mut f = Findings::default();
            f.error(e.path, e.message);
            out.extend(problems(loaded, f, lines));
        }
    }
    out
}

/// The same field, or two fields of one condition (`when[i]`).
fn same_field(a: &str, b: &str) -> bool {
    fn condition(path: &str) -> Option<&str> {
        let start = path.find(".when[")?;
        let end = start + path[start..].find(']')?;
        Some(&path[..=end])
    }
    a == b || condition(a).is_some_and(|c| condition(b) == Some(c))
}
