//! `warden validate`: the checks Istio's validation webhook applies to the security
//! resources, so a file that passes here is one `kubectl apply` would accept (and one
//! that fails names the file, line, resource, field and reason).
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

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::authz::Engine;
use crate::loader::{ConfigSet, Loaded};
use crate::resources::{
    Action, AuthorizationPolicySpec, Condition, JwtRule, ObjectMeta, Operation,
    PeerAuthenticationSpec, PolicyTargetReference, RequestAuthenticationSpec, Resource, Rule,
    Source, WorkloadSelector,
};
use crate::yaml_lines::SourceLines;

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
    /// `AuthorizationPolicy`, `PeerAuthentication` or `RequestAuthentication`.
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

/// Checks every AuthorizationPolicy, PeerAuthentication and RequestAuthentication of
/// `set`; `lines` locates fields in the files. Problems are sorted by file and line.
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

// ---------------------------------------------------------------------------------
// Metadata, selectors and target references (shared by the three kinds)
// ---------------------------------------------------------------------------------

const DRY_RUN: &str = "istio.io/dry-run";

/// `validateMetadata` / `checkDryRunAnnotation`: only ALLOW and DENY AuthorizationPolicies
/// may carry `istio.io/dry-run`, and its value must be a Go boolean. `action` is `None`
/// for the other kinds.
fn dry_run_annotation(meta: &ObjectMeta, action: Option<Action>, f: &mut Findings) {
    let Some(value) = meta.annotations.get(DRY_RUN) else {
        return;
    };
    let path = format!("metadata.annotations.{DRY_RUN}");
    match action {
        None => f.error(
            path,
            format!("unsupported annotation {DRY_RUN}, please remove the annotation"),
        ),
        Some(Action::Allow | Action::Deny) => match go_bool(value) {
            None => f.error(
                path,
                format!("annotation {DRY_RUN} with invalid value ({value}): expected a boolean"),
            ),
            Some(b) => {
                // Istio's strconv.ParseBool also reads "1", "t", "T"...; Warden's engine
                // takes only "true" (any case) as dry-run.
                let word = if b { "true" } else { "false" };
                if !value.eq_ignore_ascii_case(word) {
                    f.warning(
                        path,
                        format!(
                            "Istio reads {value:?} as {b}, Warden only \"true\"; write {word:?}"
                        ),
                    );
                }
            }
        },
        Some(a) => f.error(
            path,
            format!(
                "the annotation {DRY_RUN} currently only supports action ALLOW/DENY, \
                 found action {}",
                action_name(a)
            ),
        ),
    }
}

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

/// `validateOneOfSelectorType`: at most one of `selector`, `targetRef`, `targetRefs`.
fn one_of_selector_type(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: Option<&Vec<PolicyTargetReference>>,
    f: &mut Findings,
) {
    let refs = target_refs.is_some_and(|t| !t.is_empty());
    let set =
        usize::from(selector.is_some()) + usize::from(target_ref.is_some()) + usize::from(refs);
    if set > 1 {
        let path = if refs {
            "spec.targetRefs"
        } else {
            "spec.targetRef"
        };
        f.error(
            path,
            "only one of targetRefs or workloadSelector can be set",
        );
    }
}

/// `validateWorkloadSelector`: no empty keys, no `*` in keys or values; a selector
/// without labels is a warning.
fn workload_selector(selector: Option<&WorkloadSelector>, f: &mut Findings) {
    let Some(selector) = selector else {
        return;
    };
    for (k, v) in &selector.match_labels {
        let path = format!("spec.selector.matchLabels.{k}");
        if k.is_empty() {
            f.error(
                &path,
                format!("empty key is not supported in selector: \"{k}={v}\""),
            );
        }
        if k.contains('*') || v.contains('*') {
            f.error(
                &path,
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
    if selector.match_labels.is_empty() {
        f.warning(
            "spec.selector",
            "workload selector specified without labels",
        );
    }
}

/// `allowedTargetRefs`: (canonical group, kind).
const TARGET_KINDS: [(&str, &str); 4] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// `validatePolicyTargetReference`: a name, no namespace, an allowed group and kind.
fn target_ref(path: &str, r: &PolicyTargetReference, f: &mut Findings) {
    if r.name.is_empty() {
        f.error(format!("{path}.name"), "targetRef name must be set");
    }
    if r.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        f.error(
            format!("{path}.namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = if r.group.is_empty() { "core" } else { &r.group };
    if !TARGET_KINDS.contains(&(group, r.kind.as_str())) {
        let allowed: Vec<String> = TARGET_KINDS
            .iter()
            .map(|(g, k)| format!("{g}/{k}"))
            .collect();
        f.error(
            format!("{path}.kind"),
            format!(
                "targetRef must be to one of [{}] but was {}/{}",
                allowed.join(" "),
                r.group,
                r.kind
            ),
        );
    }
}

/// The selector and target checks every policy kind starts with.
fn selection(
    selector: Option<&WorkloadSelector>,
    one: Option<&PolicyTargetReference>,
    many: Option<&Vec<PolicyTargetReference>>,
    f: &mut Findings,
) {
    one_of_selector_type(selector, one, many, f);
    workload_selector(selector, f);
    if let Some(r) = one {
        target_ref("spec.targetRef", r, f);
    }
    for (i, r) in many.into_iter().flatten().enumerate() {
        target_ref(&format!("spec.targetRefs[{i}]"), r, f);
    }
}

// ---------------------------------------------------------------------------------
// AuthorizationPolicy (ValidateAuthorizationPolicy)
// ---------------------------------------------------------------------------------

/// After "DENY " or "CUSTOM ".
const WITHOUT_RULES: &str = "action without `rules` is meaningless as it will never be triggered, \
    add an empty rule `{}` if you want it be triggered for every request";

/// Rules per policy: the CRD schema's limit (istio/api `authorization_policy.proto`,
/// "max 512"); the API server, not the webhook, enforces it.
const MAX_RULES: usize = 512;

fn authorization_policy(r: &Resource<AuthorizationPolicySpec>) -> Findings {
    let mut f = Findings::default();
    let spec = &r.spec;
    dry_run_annotation(&r.metadata, Some(spec.action), &mut f);
    let refs = spec.target_refs.as_ref();
    selection(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        refs,
        &mut f,
    );
    if spec.target_ref.is_some() || refs.is_some_and(|t| !t.is_empty()) {
        f.warning(
            if spec.target_ref.is_some() {
                "spec.targetRef"
            } else {
                "spec.targetRefs"
            },
            "policies attached with targetRef(s) apply to gateways and waypoints; \
             Warden, like a sidecar, ignores them",
        );
    }
    // Istio decodes `rules: []` as no rules.
    let rules = spec.rules.as_deref().filter(|r| !r.is_empty());
    match spec.action {
        Action::Custom => custom(spec, rules, &mut f),
        Action::Deny if rules.is_none() => f.error("spec.rules", format!("DENY {WITHOUT_RULES}")),
        _ => {}
    }
    if spec.provider.is_some() && spec.action != Action::Custom {
        f.error(
            "spec.provider",
            format!(
                "`provider` must not be with non CUSTOM action, found {}",
                action_name(spec.action)
            ),
        );
    }
    let rules = rules.unwrap_or_default();
    if rules.len() > MAX_RULES {
        f.error(
            "spec.rules",
            format!("must have at most {MAX_RULES} items, found {}", rules.len()),
        );
    }
    for (i, rule) in rules.iter().enumerate() {
        authz_rule(&format!("spec.rules[{i}]"), rule, spec.action, &mut f);
    }
    f
}

/// The CUSTOM action: rules and a provider name are required, and identity fields and
/// keys are "currently not supported".
fn custom(spec: &AuthorizationPolicySpec, rules: Option<&[Rule]>, f: &mut Findings) {
    let Some(rules) = rules else {
        f.error("spec.rules", format!("CUSTOM {WITHOUT_RULES}"));
        return;
    };
    match &spec.provider {
        None => f.error("spec.provider", "`provider.name` must not be empty"),
        Some(p) if p.name.is_empty() => {
            f.error("spec.provider.name", "`provider.name` must not be empty")
        }
        Some(_) => {}
    }
    for (i, rule) in rules.iter().enumerate() {
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let Some(s) = &from.source else { continue };
            let fields = [
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
            ];
            for (field, _) in fields.into_iter().filter(|(_, v)| len(v) > 0) {
                // Istio names the field after the Go struct: `From.NotNamespaces`.
                let go_name: String = field[..1].to_ascii_uppercase() + &field[1..];
                f.error(
                    format!("spec.rules[{i}].from[{j}].source.{field}"),
                    format!("From.{go_name} is currently not supported with CUSTOM action"),
                );
            }
        }
        for (k, c) in rule.when.iter().flatten().enumerate() {
            let key = c.key.as_str();
            if matches!(
                key,
                "source.namespace" | "source.serviceAccount" | "source.principal"
            ) || key.starts_with("request.auth.")
            {
                f.error(
                    format!("spec.rules[{i}].when[{k}].key"),
                    format!("{key} is currently not supported with CUSTOM action"),
                );
            }
        }
    }
}

fn len(values: &Option<Vec<String>>) -> usize {
    values.as_ref().map_or(0, Vec::len)
}

/// One rule: non-empty `from`/`to` lists, each with a non-empty source/operation, valid
/// values and conditions; and Istio's warning for DENY rules with only HTTP attributes.
fn authz_rule(path: &str, rule: &Rule, action: Action, f: &mut Findings) {
    if rule.from.as_ref().is_some_and(Vec::is_empty) {
        f.error(format!("{path}.from"), "`from` must not be empty");
    }
    let (mut from_exists, mut tcp_from) = (false, false);
    for (j, from) in rule.from.iter().flatten().enumerate() {
        let p = format!("{path}.from[{j}]");
        match &from.source {
            None => f.error(p, "`from.source` must not be nil"),
            Some(s) => {
                from_exists = true;
                tcp_from |= source(&format!("{p}.source"), s, f);
            }
        }
    }
    if rule.to.as_ref().is_some_and(Vec::is_empty) {
        f.error(format!("{path}.to"), "`to` must not be empty");
    }
    let (mut to_exists, mut tcp_to) = (false, false);
    for (j, to) in rule.to.iter().flatten().enumerate() {
        let p = format!("{path}.to[{j}]");
        match &to.operation {
            None => f.error(p, "`to.operation` must not be nil"),
            Some(o) => {
                to_exists = true;
                tcp_to |= operation(&format!("{p}.operation"), o, f);
            }
        }
    }
    for (k, c) in rule.when.iter().flatten().enumerate() {
        condition(&format!("{path}.when[{k}]"), c, f);
    }
    if action == Action::Deny
        && ((from_exists && !to_exists && !tcp_from) || (to_exists && !tcp_to))
    {
        f.warning(
            path,
            "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope \
             due to the use of only HTTP attributes in a DENY rule; \
             it is recommended to explicitly specify the port",
        );
    }
}

/// `rules[].from[].source`; returns whether it has a field that also applies to TCP.
fn source(path: &str, s: &Source, f: &mut Findings) -> bool {
    let identity =
        len(&s.principals) + len(&s.not_principals) + len(&s.namespaces) + len(&s.not_namespaces);
    let accounts = len(&s.service_accounts) + len(&s.not_service_accounts);
    if identity > 0 && accounts > 0 {
        let field = if len(&s.service_accounts) > 0 {
            "serviceAccounts"
        } else {
            "notServiceAccounts"
        };
        f.error(
            format!("{path}.{field}"),
            "cannot set serviceAccounts with namespaces or principals",
        );
    }
    let tcp = identity
        + accounts
        + len(&s.ip_blocks)
        + len(&s.not_ip_blocks)
        + len(&s.remote_ip_blocks)
        + len(&s.not_remote_ip_blocks)
        + len(&s.trust_domains)
        + len(&s.not_trust_domains);
    if tcp + len(&s.request_principals) + len(&s.not_request_principals) == 0 {
        f.error(path, "`from.source` must not be empty");
    }
    for (field, values) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (p, v) in non_empty(&format!("{path}.{field}"), values, f) {
            if let Err(e) = ip_or_cidr(v) {
                f.error(p, e);
            }
        }
    }
    for (field, values) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        non_empty(&format!("{path}.{field}"), values, f);
    }
    for (field, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        let list = format!("{path}.{field}");
        if let Err(e) = account_count(len(values)) {
            f.error(&list, e);
        }
        for (p, v) in non_empty(&list, values, f) {
            if let Err(e) = service_account(v) {
                f.error(p, e);
            }
        }
    }
    tcp > 0
}

/// `rules[].to[].operation`; returns whether it has ports (the TCP attributes).
fn operation(path: &str, o: &Operation, f: &mut Findings) -> bool {
    let ports = len(&o.ports) + len(&o.not_ports);
    let http = len(&o.hosts)
        + len(&o.not_hosts)
        + len(&o.methods)
        + len(&o.not_methods)
        + len(&o.paths)
        + len(&o.not_paths);
    if ports + http == 0 {
        f.error(path, "`to.operation` must not be empty");
    }
    for (field, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
        for (p, v) in non_empty(&format!("{path}.{field}"), values, f) {
            if let Err(e) = port(v) {
                f.error(p, e);
            }
        }
    }
    for (field, values) in [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
    ] {
        non_empty(&format!("{path}.{field}"), values, f);
    }
    for (field, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
        for (p, v) in non_empty(&format!("{path}.{field}"), values, f) {
            if let Err(e) = path_template(v) {
                f.error(p, e);
            }
        }
    }
    ports > 0
}

/// `rules[].when[]`: a key Istio knows with well-formed values.
fn condition(path: &str, c: &Condition, f: &mut Findings) {
    let key = c.key.as_str();
    if key.is_empty() {
        f.error(format!("{path}.key"), "`key` must not be empty");
        return;
    }
    if len(&c.values) + len(&c.not_values) == 0 {
        f.error(
            path,
            format!("at least one of `values` or `notValues` must be set for key {key}"),
        );
        return;
    }
    let kind = match attribute(key) {
        Ok(kind) => kind,
        Err(e) => {
            f.error(format!("{path}.key"), e);
            return;
        }
    };
    for (field, word, values) in [
        ("values", "value", &c.values),
        ("notValues", "notValue", &c.not_values),
    ] {
        let items = non_empty(&format!("{path}.{field}"), values, f);
        let mut check = |p: String, r: Result<(), String>| {
            if let Err(e) = r {
                f.error(p, format!("invalid `{word}` for `key` {key}: {e}"));
            }
        };
        match kind {
            Values::Any => {}
            Values::Ips => items.into_iter().for_each(|(p, v)| check(p, ip_or_cidr(v))),
            Values::Ports => items.into_iter().for_each(|(p, v)| check(p, port(v))),
            Values::ServiceAccounts => {
                check(format!("{path}.{field}"), account_count(len(values)));
                items
                    .into_iter()
                    .for_each(|(p, v)| check(p, service_account(v)));
            }
        }
    }
}

/// What the values of a condition key must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Values {
    Any,
    Ips,
    Ports,
    ServiceAccounts,
}

/// `security.ValidateAttribute`, key part: the kind of values the key takes.
fn attribute(key: &str) -> Result<Values, String> {
    const BRACKETED: [&str; 4] = [
        "request.headers",
        "request.experimental.inline.headers",
        "request.auth.claims",
        "experimental.envoy.filters.",
    ];
    if BRACKETED.iter().any(|p| key.starts_with(p)) {
        return map_key(key).map(|()| Values::Any);
    }
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => Ok(Values::Ips),
        "destination.port" => Ok(Values::Ports),
        "source.serviceAccount" => Ok(Values::ServiceAccounts),
        // source.trustDomain: a Warden extension.
        "source.namespace"
        | "source.principal"
        | "source.trustDomain"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(Values::Any),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the metadata.namespace"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        _ if key.starts_with("destination.labels") => Err(format!(
            "attribute {key} is replaced by the workload selector"
        )),
        _ => Err(format!("unknown attribute: {key}")),
    }
}

/// `validateMapKey`: `a[b]`.
fn map_key(key: &str) -> Result<(), String> {
    match key.find('[') {
        Some(open) if key.ends_with(']') && open > 0 && open + 2 < key.len() => Ok(()),
        _ => Err(format!("bad key ({key}): should have format a[b]")),
    }
}

// ---------------------------------------------------------------------------------
// Values (pkg/config/security/security.go)
// ---------------------------------------------------------------------------------

/// `CheckEmptyValues`: reports empty strings; returns the other values with their paths.
fn non_empty<'a>(
    path: &str,
    values: &'a Option<Vec<String>>,
    f: &mut Findings,
) -> Vec<(String, &'a str)> {
    let mut out = Vec::new();
    for (i, v) in values.iter().flatten().enumerate() {
        let p = format!("{path}[{i}]");
        if v.is_empty() {
            f.error(p, "empty value not allowed");
        } else {
            out.push((p, v.as_str()));
        }
    }
    out
}

/// `ValidateIPs`: an address (`netip.ParseAddr`) or, with a `/`, a CIDR
/// (`netip.ParsePrefix`).
fn ip_or_cidr(v: &str) -> Result<(), String> {
    let Some((addr, bits)) = v.split_once('/') else {
        return address(v).map_err(|()| format!("bad IP address ({v})"));
    };
    let bad = |why: &str| Err(format!("bad CIDR range ({v}): {why}"));
    if addr.contains('%') {
        return bad("IPv6 zones cannot be present in a prefix");
    }
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return bad(&format!("ParseAddr({addr:?}): not an IP address"));
    };
    let digits = !bits.is_empty() && bits.len() <= 3 && bits.bytes().all(|b| b.is_ascii_digit());
    if !digits || (bits.len() > 1 && bits.starts_with('0')) {
        return bad(&format!("bad bits after slash: {bits:?}"));
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits.parse::<u32>() {
        Ok(n) if n <= max => Ok(()),
        _ => bad("prefix length out of range"),
    }
}

/// `netip.ParseAddr`: IPv4, IPv6, IPv6 with a zone (`fe80::1%eth0`).
fn address(v: &str) -> Result<(), ()> {
    match v.split_once('%') {
        Some((ip, zone)) if !zone.is_empty() => {
            ip.parse::<std::net::Ipv6Addr>().map(drop).map_err(drop)
        }
        Some(_) => Err(()),
        None => v.parse::<IpAddr>().map(drop).map_err(drop),
    }
}

/// `ValidatePorts`: a decimal number 0-65535 (`strconv.ParseUint`: no sign, no spaces).
fn port(v: &str) -> Result<(), String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port ({v}): not a number"));
    }
    match v.parse::<u64>() {
        Ok(p) if p <= 65535 => Ok(()),
        _ => Err(format!("bad port ({v}): out of range 0-65535")),
    }
}

/// `CheckServiceAccount`, on the list: at most 16 values.
fn account_count(n: usize) -> Result<(), String> {
    if n > 16 {
        Err("may not have more than 16 values".into())
    } else {
        Ok(())
    }
}

/// `CheckServiceAccount`, on one non-empty value: `sa` or `ns/sa`, no `*`, at most 320
/// characters.
fn service_account(v: &str) -> Result<(), String> {
    const FORMAT: &str = "expected format 'serviceAccount' or 'namespace/serviceAccount'";
    if v.contains('*') {
        return Err("wildcard not allowed".into());
    }
    if v.matches('/').count() > 1 {
        return Err(format!("{FORMAT}, found {v:?}"));
    }
    if v.len() > 320 {
        return Err(format!("value cannot exceed 320 characters, found {v:?}"));
    }
    match v.split_once('/') {
        Some(("", _)) => Err(format!("{FORMAT}, found empty namespace {v:?}")),
        Some((_, "")) => Err(format!("{FORMAT}, found empty serviceAccount {v:?}")),
        _ => Ok(()),
    }
}

/// `CheckValidPathTemplate`: `{*}` and `{**}` only as whole segments, `{**}` last, no
/// other `{`/`}`; with a template, every other segment a valid literal (RFC 3986 pchar).
/// The message shows the path without its outer slashes, as Istio's does.
fn path_template(value: &str) -> Result<(), String> {
    let template = value.contains("{*}") || value.contains("{**}");
    let trimmed = value.trim_matches('/');
    let bad = |why: String| Err(format!("invalid or unsupported path {trimmed}: {why}"));
    let mut any_seen = false;
    for segment in trimmed.split('/') {
        match segment {
            "{*}" | "{**}" if any_seen => return bad("{**} is not the last operator".into()),
            "{*}" => continue,
            "{**}" => {
                any_seen = true;
                continue;
            }
            _ => {}
        }
        if segment.contains(['{', '}']) {
            return bad("contains '{' or '}' beyond a supported path template".into());
        }
        let literal = !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b));
        if template && !literal {
            return bad(format!(
                "contains segment {segment} with invalid string literal"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// PeerAuthentication (ValidatePeerAuthentication)
// ---------------------------------------------------------------------------------

fn peer_authentication(r: &Resource<PeerAuthenticationSpec>, options: &Options) -> Findings {
    let mut f = Findings::default();
    let spec = &r.spec;
    dry_run_annotation(&r.metadata, None, &mut f);
    let labelled = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if let Some(ports) = &spec.port_level_mtls {
        if ports.is_empty() {
            f.error(
                "spec.portLevelMtls",
                "port level mTLS, if defined, must have at least one element",
            );
        } else if !labelled {
            f.error(
                "spec.portLevelMtls",
                "mesh/namespace peer authentication cannot have port level mTLS",
            );
        }
        for port in ports.keys().filter(|p| **p == 0 || **p > 65535) {
            f.error(
                format!("spec.portLevelMtls.{port}"),
                "port must be in range 1..65535",
            );
        }
    }
    workload_selector(spec.selector.as_ref(), &mut f);
    if labelled && r.namespace() == options.root_namespace {
        f.warning(
            "spec.selector",
            format!(
                "a selector in the root namespace ({}) is ignored: \
                 the policy applies to no workload",
                options.root_namespace
            ),
        );
    }
    f
}

// ---------------------------------------------------------------------------------
// RequestAuthentication (ValidateRequestAuthentication, validateJwtRule)
// ---------------------------------------------------------------------------------

fn request_authentication(r: &Resource<RequestAuthenticationSpec>) -> Findings {
    let mut f = Findings::default();
    let spec = &r.spec;
    dry_run_annotation(&r.metadata, None, &mut f);
    selection(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        spec.target_refs.as_ref(),
        &mut f,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        jwt_rule(&format!("spec.jwtRules[{i}]"), rule, &mut f);
    }
    f
}

/// The webhook's errors for one `jwtRules` entry at `path` (no warnings): what
/// [`crate::request_authn`] refuses before it reads any keys, so the runtime and
/// `warden validate` cannot disagree. `(field path, message)` pairs.
pub(crate) fn jwt_rule_errors(path: &str, rule: &JwtRule) -> Vec<(String, String)> {
    let mut f = Findings::default();
    jwt_rule(path, rule, &mut f);
    f.0.into_iter()
        .filter(|x| x.severity == Severity::Error)
        .map(|x| (x.path, x.message))
        .collect()
}

/// `validateJwtRule`.
fn jwt_rule(path: &str, rule: &JwtRule, f: &mut Findings) {
    for (i, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            f.error(
                format!("{path}.audiences[{i}]"),
                "audience must be non-empty string",
            );
        }
    }
    let uri = rule.jwks_uri.as_deref().unwrap_or_default();
    if rule.issuer.is_empty() && uri.is_empty() {
        f.error(
            format!("{path}.issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    if !uri.is_empty() {
        jwks_uri(&format!("{path}.jwksUri"), uri, f);
    }
    if let Some(jwks) = rule.jwks.as_deref().filter(|j| !j.is_empty())
        && let Err(e) = jwks_document(jwks)
    {
        f.error(format!("{path}.jwks"), format!("jwks parse error: {e}"));
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            f.error(
                format!("{path}.fromHeaders[{i}].name"),
                "location header name must be non-empty string",
            );
        }
    }
    for (i, q) in rule.from_params.iter().enumerate() {
        if q.is_empty() {
            f.error(
                format!("{path}.fromParams[{i}]"),
                "location query must be non-empty string",
            );
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            f.error(
                format!("{path}.fromCookies[{i}]"),
                "cookie name must be non-empty string",
            );
        }
    }
    for (i, o) in rule.output_claim_to_headers.iter().enumerate() {
        let p = format!("{path}.outputClaimToHeaders[{i}]");
        if o.claim.is_empty() || o.header.is_empty() {
            f.error(
                p,
                "outputClaimToHeaders header and claim value must be non-empty string",
            );
        } else if !strict_header_name(&o.header) {
            f.error(
                format!("{p}.header"),
                format!("header name {} is not a valid header name", o.header),
            );
        }
    }
    if let Some(t) = &rule.timeout
        && let Err(e) = duration(t)
    {
        f.error(format!("{path}.timeout"), e);
    }
}

/// `ValidateStrictHTTPHeaderName`: `^[-A-Za-z0-9]+$`.
fn strict_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `security.ParseJwksURI`: Istio fetches `http`/`https` URIs only. Warden also reads
/// `file://` URIs and local paths; those are accepted with a warning that Istio would
/// refuse them.
fn jwks_uri(path: &str, uri: &str, f: &mut Findings) {
    let scheme = uri
        .split_once(':')
        .map(|(s, _)| s)
        .filter(|s| {
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
        .map(str::to_ascii_lowercase);
    match scheme.as_deref() {
        Some("http" | "https") => {
            if let Err(e) = authority_port(uri) {
                f.error(path, e);
            }
        }
        Some("file") | None => f.warning(
            path,
            format!(
                "URI scheme {:?} is not supported by Istio (http and https only); \
                 Warden reads the local file",
                scheme.as_deref().unwrap_or_default()
            ),
        ),
        Some(other) => f.error(path, format!("URI scheme {other:?} is not supported")),
    }
}

/// Go's `url.Parse` on `scheme://host:port/...`: the port, if any, is decimal.
fn authority_port(uri: &str) -> Result<(), String> {
    let Some((_, rest)) = uri.split_once("://") else {
        return Ok(());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = if let Some(v6) = host.strip_prefix('[') {
        match v6.split_once(']') {
            Some((_, after)) => after.strip_prefix(':').unwrap_or(after),
            None => return Err(format!("parse {uri:?}: missing ']' in host")),
        }
    } else {
        host.rsplit_once(':').map_or("", |(_, p)| p)
    };
    if port.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "parse {uri:?}: invalid port \":{port}\" after host"
        ))
    }
}

/// `jwk.Parse`: a JSON Web Key, or a set (`{"keys": [...]}`) of them, each with `kty`.
fn jwks_document(text: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let has_kty = |k: &serde_json::Value| k.get("kty").is_some_and(serde_json::Value::is_string);
    match v.get("keys") {
        Some(serde_json::Value::Array(keys)) => match keys.iter().position(|k| !has_kty(k)) {
            Some(i) => Err(format!("keys[{i}]: a key needs a string \"kty\"")),
            None => Ok(()),
        },
        Some(_) => Err("\"keys\" must be a list".into()),
        None if has_kty(&v) => Ok(()),
        None => Err("expected a JSON Web Key or a set {\"keys\": [...]}".into()),
    }
}

/// `agent.ValidateDuration` on a Go duration (`5s`, `1m30s`, `250ms`): at least 1ms,
/// whole milliseconds.
fn duration(text: &str) -> Result<(), String> {
    let nanos = go_duration(text).ok_or_else(|| format!("invalid duration {text:?}"))?;
    if nanos < 1_000_000 {
        Err("duration must be greater than 1ms".into())
    } else if nanos % 1_000_000 != 0 {
        Err("only durations to ms precision are supported".into())
    } else {
        Ok(())
    }
}

/// Go's `time.ParseDuration`, in nanoseconds.
fn go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let n = digits(rest);
        let whole = &rest[..n];
        rest = &rest[n..];
        let mut fraction = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = digits(r);
            fraction = &r[..n];
            rest = &r[n..];
        }
        if (whole.is_empty() && fraction.is_empty()) || whole.len() > 20 {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: i128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += whole.parse::<i128>().unwrap_or(0) * unit;
        let fraction = &fraction[..fraction.len().min(20)];
        if !fraction.is_empty() {
            let scale = 10i128.pow(u32::try_from(fraction.len()).ok()?);
            total += fraction.parse::<i128>().ok()? * unit / scale;
        }
    }
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Problems of the policies in `text` as if loaded from `file` (for tests).
    fn validate_text(file: &Path, text: &str, options: &Options) -> Vec<Problem> {
        let set = crate::loader::load_str(file, text).unwrap_or_else(|e| panic!("{e}"));
        let mut lines = SourceLines::default();
        lines.insert(file, text);
        validate(&set, &lines, options)
    }

    fn run(text: &str) -> Vec<Problem> {
        validate_text(Path::new("p.yaml"), text, &Options::default())
    }

    /// The rows of a table: one case a line, columns separated by ` | `.
    fn rows<const N: usize>(table: &str) -> impl Iterator<Item = [&str; N]> {
        table.lines().filter(|l| !l.is_empty()).map(|l| {
            let cols: Vec<&str> = l.split(" | ").collect();
            cols.try_into()
                .unwrap_or_else(|c| panic!("{N} columns expected: {c:?}"))
        })
    }

    /// A resource named `foo/p` with `spec`, which may start with `@NS ` (another
    /// namespace) or `@DRYRUN=V ` (an `istio.io/dry-run` annotation), or be
    /// `@513RULES`.
    fn text_of(kind: &str, spec: &str) -> String {
        if spec == "@513RULES" {
            return text_of(
                kind,
                &format!("{{rules: [{}]}}", vec!["{}"; 513].join(", ")),
            );
        }
        let (mut ns, mut meta, mut spec) = ("foo", String::new(), spec);
        while let Some((word, rest)) = spec.strip_prefix('@').and_then(|s| s.split_once(' ')) {
            match word.strip_prefix("DRYRUN=") {
                Some(v) => meta = format!(", annotations: {{istio.io/dry-run: '{v}'}}"),
                None => ns = word,
            }
            spec = rest;
        }
        format!(
            "apiVersion: security.istio.io/v1\nkind: {kind}\n\
             metadata: {{name: p, namespace: {ns}{meta}}}\nspec: {spec}\n"
        )
    }

    /// (case, kind, spec, path, message substring): each spec must be refused at
    /// `path` with a message containing the substring.
    const REFUSED: &str = r#"
selector and targetRef | AuthorizationPolicy | {selector: {matchLabels: {app: a}}, targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}, rules: [{}]} | spec.targetRef | only one of targetRefs or workloadSelector
selector and targetRefs | AuthorizationPolicy | {selector: {matchLabels: {app: a}}, targetRefs: [{kind: Service, name: s}], rules: [{}]} | spec.targetRefs | only one of targetRefs or workloadSelector
targetRef without name | AuthorizationPolicy | {targetRef: {kind: Service}, rules: [{}]} | spec.targetRef.name | targetRef name must be set
targetRef cross namespace | AuthorizationPolicy | {targetRef: {kind: Service, name: s, namespace: bar}, rules: [{}]} | spec.targetRef.namespace | cross namespace referencing is not supported
targetRef bad kind | AuthorizationPolicy | {targetRefs: [{kind: Deployment, group: apps, name: d}], rules: [{}]} | spec.targetRefs[0].kind | but was apps/Deployment
selector empty key | AuthorizationPolicy | {selector: {matchLabels: {'': x}}} | spec.selector.matchLabels. | empty key is not supported in selector: "=x"
selector wildcard | AuthorizationPolicy | {selector: {matchLabels: {app: 'web*'}}} | spec.selector.matchLabels.app | wildcard is not supported in selector: "app=web*"
provider without CUSTOM | AuthorizationPolicy | {provider: {name: ext}, rules: [{}]} | spec.provider | `provider` must not be with non CUSTOM action, found ALLOW
CUSTOM without rules | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}} | spec.rules | CUSTOM action without `rules` is meaningless
CUSTOM without provider | AuthorizationPolicy | {action: CUSTOM, rules: [{}]} | spec.provider | `provider.name` must not be empty
CUSTOM with empty provider name | AuthorizationPolicy | {action: CUSTOM, provider: {name: ''}, rules: [{}]} | spec.provider.name | `provider.name` must not be empty
CUSTOM with principals | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{from: [{source: {principals: [a]}}]}]} | spec.rules[0].from[0].source.principals | From.Principals is currently not supported with CUSTOM action
CUSTOM with notNamespaces | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{from: [{source: {notNamespaces: [a]}}]}]} | spec.rules[0].from[0].source.notNamespaces | From.NotNamespaces
CUSTOM with serviceAccounts | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{from: [{source: {serviceAccounts: [a]}}]}]} | spec.rules[0].from[0].source.serviceAccounts | From.ServiceAccounts
CUSTOM with requestPrincipals | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{from: [{source: {requestPrincipals: ['*']}}]}]} | spec.rules[0].from[0].source.requestPrincipals | From.RequestPrincipals
CUSTOM with request.auth key | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]} | spec.rules[0].when[0].key | request.auth.claims[iss] is currently not supported with CUSTOM action
CUSTOM with source.principal key | AuthorizationPolicy | {action: CUSTOM, provider: {name: ext}, rules: [{when: [{key: source.principal, values: [x]}]}]} | spec.rules[0].when[0].key | source.principal is currently not supported
DENY without rules | AuthorizationPolicy | {action: DENY} | spec.rules | DENY action without `rules` is meaningless
DENY with rules: [] | AuthorizationPolicy | {action: DENY, rules: []} | spec.rules | DENY action without `rules`
from: [] | AuthorizationPolicy | {rules: [{from: []}]} | spec.rules[0].from | `from` must not be empty
to: [] | AuthorizationPolicy | {rules: [{to: []}]} | spec.rules[0].to | `to` must not be empty
from without source | AuthorizationPolicy | {rules: [{from: [{}]}]} | spec.rules[0].from[0] | `from.source` must not be nil
to without operation | AuthorizationPolicy | {rules: [{to: [{}]}]} | spec.rules[0].to[0] | `to.operation` must not be nil
empty source | AuthorizationPolicy | {rules: [{from: [{source: {}}]}]} | spec.rules[0].from[0].source | `from.source` must not be empty
source with only empty lists | AuthorizationPolicy | {rules: [{from: [{source: {principals: []}}]}]} | spec.rules[0].from[0].source | `from.source` must not be empty
empty operation | AuthorizationPolicy | {rules: [{to: [{operation: {}}]}]} | spec.rules[0].to[0].operation | `to.operation` must not be empty
empty principal | AuthorizationPolicy | {rules: [{from: [{source: {principals: [a, '']}}]}]} | spec.rules[0].from[0].source.principals[1] | empty value not allowed
empty requestPrincipal | AuthorizationPolicy | {rules: [{from: [{source: {requestPrincipals: ['']}}]}]} | spec.rules[0].from[0].source.requestPrincipals[0] | empty value not allowed
empty notNamespace | AuthorizationPolicy | {rules: [{from: [{source: {notNamespaces: ['']}}]}]} | spec.rules[0].from[0].source.notNamespaces[0] | empty value not allowed
empty method | AuthorizationPolicy | {rules: [{to: [{operation: {methods: ['']}}]}]} | spec.rules[0].to[0].operation.methods[0] | empty value not allowed
empty host | AuthorizationPolicy | {rules: [{to: [{operation: {notHosts: ['']}}]}]} | spec.rules[0].to[0].operation.notHosts[0] | empty value not allowed
empty path | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['']}}]}]} | spec.rules[0].to[0].operation.paths[0] | empty value not allowed
empty port | AuthorizationPolicy | {rules: [{to: [{operation: {ports: ['']}}]}]} | spec.rules[0].to[0].operation.ports[0] | empty value not allowed
bad ipBlock | AuthorizationPolicy | {rules: [{from: [{source: {ipBlocks: [10.0.0.1, 10.0.0.300]}}]}]} | spec.rules[0].from[0].source.ipBlocks[1] | bad IP address (10.0.0.300)
wildcard ipBlock | AuthorizationPolicy | {rules: [{from: [{source: {ipBlocks: ['*']}}]}]} | spec.rules[0].from[0].source.ipBlocks[0] | bad IP address (*)
bad notIpBlock CIDR | AuthorizationPolicy | {rules: [{from: [{source: {notIpBlocks: [10.0.0.0/33]}}]}]} | spec.rules[0].from[0].source.notIpBlocks[0] | bad CIDR range (10.0.0.0/33): prefix length out of range
bad remoteIpBlock | AuthorizationPolicy | {rules: [{from: [{source: {remoteIpBlocks: [example.com]}}]}]} | spec.rules[0].from[0].source.remoteIpBlocks[0] | bad IP address
bad notRemoteIpBlock bits | AuthorizationPolicy | {rules: [{from: [{source: {notRemoteIpBlocks: [10.0.0.0/08]}}]}]} | spec.rules[0].from[0].source.notRemoteIpBlocks[0] | bad bits after slash
port out of range | AuthorizationPolicy | {rules: [{to: [{operation: {ports: ['65536']}}]}]} | spec.rules[0].to[0].operation.ports[0] | bad port (65536)
wildcard notPort | AuthorizationPolicy | {rules: [{to: [{operation: {notPorts: ['*']}}]}]} | spec.rules[0].to[0].operation.notPorts[0] | bad port (*)
signed port | AuthorizationPolicy | {rules: [{to: [{operation: {ports: ['+80']}}]}]} | spec.rules[0].to[0].operation.ports[0] | bad port (+80)
serviceAccounts with principals | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [sa], principals: [p]}}]}]} | spec.rules[0].from[0].source.serviceAccounts | cannot set serviceAccounts with namespaces or principals
notServiceAccounts with namespaces | AuthorizationPolicy | {rules: [{from: [{source: {notServiceAccounts: [sa], namespaces: [ns1]}}]}]} | spec.rules[0].from[0].source.notServiceAccounts | cannot set serviceAccounts
wildcard serviceAccount | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]} | spec.rules[0].from[0].source.serviceAccounts[0] | wildcard not allowed
serviceAccount with two slashes | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [a/b/c]}}]}]} | spec.rules[0].from[0].source.serviceAccounts[0] | expected format 'serviceAccount' or 'namespace/serviceAccount'
serviceAccount empty namespace | AuthorizationPolicy | {rules: [{from: [{source: {notServiceAccounts: [/sa]}}]}]} | spec.rules[0].from[0].source.notServiceAccounts[0] | found empty namespace
serviceAccount empty name | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [ns/]}}]}]} | spec.rules[0].from[0].source.serviceAccounts[0] | found empty serviceAccount
17 serviceAccounts | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17]}}]}]} | spec.rules[0].from[0].source.serviceAccounts | may not have more than 16 values
path template after {**} | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]} | spec.rules[0].to[0].operation.paths[0] | invalid or unsupported path a/{**}/{*}: {**} is not the last operator
path template with named variable | AuthorizationPolicy | {rules: [{to: [{operation: {notPaths: ['/a/{id}']}}]}]} | spec.rules[0].to[0].operation.notPaths[0] | contains '{' or '}' beyond a supported path template
path template in a segment | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/{**}.mpd']}}]}]} | spec.rules[0].to[0].operation.paths[0] | beyond a supported path template
path template with glob | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/a/*/{*}']}}]}]} | spec.rules[0].to[0].operation.paths[0] | contains segment * with invalid string literal
path template with empty segment | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/a//{*}']}}]}]} | spec.rules[0].to[0].operation.paths[0] | with invalid string literal
when without key | AuthorizationPolicy | {rules: [{when: [{values: [a]}]}]} | spec.rules[0].when[0].key | `key` must not be empty
when without values | AuthorizationPolicy | {rules: [{when: [{key: source.ip}]}]} | spec.rules[0].when[0] | at least one of `values` or `notValues` must be set for key source.ip
when with empty values | AuthorizationPolicy | {rules: [{when: [{key: source.ip, values: [], notValues: []}]}]} | spec.rules[0].when[0] | at least one of `values` or `notValues`
when unknown key | AuthorizationPolicy | {rules: [{when: [{key: request.method, values: [GET]}]}]} | spec.rules[0].when[0].key | unknown attribute: request.method
when destination.namespace | AuthorizationPolicy | {rules: [{when: [{key: destination.namespace, values: [a]}]}]} | spec.rules[0].when[0].key | is replaced by the metadata.namespace
when destination.labels | AuthorizationPolicy | {rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]} | spec.rules[0].when[0].key | is replaced by the workload selector
when destination.user | AuthorizationPolicy | {rules: [{when: [{key: destination.user, values: [a]}]}]} | spec.rules[0].when[0].key | deprecated attribute destination.user
when header without name | AuthorizationPolicy | {rules: [{when: [{key: request.headers, values: [a]}]}]} | spec.rules[0].when[0].key | bad key (request.headers): should have format a[b]
when header with empty name | AuthorizationPolicy | {rules: [{when: [{key: 'request.headers[]', values: [a]}]}]} | spec.rules[0].when[0].key | should have format a[b]
when claim without name | AuthorizationPolicy | {rules: [{when: [{key: request.auth.claims, notValues: [a]}]}]} | spec.rules[0].when[0].key | bad key (request.auth.claims)
when empty value | AuthorizationPolicy | {rules: [{when: [{key: connection.sni, values: [a, '']}]}]} | spec.rules[0].when[0].values[1] | empty value not allowed
when bad source.ip | AuthorizationPolicy | {rules: [{when: [{key: source.ip, values: [1.2.3.4/99]}]}]} | spec.rules[0].when[0].values[0] | invalid `value` for `key` source.ip: bad CIDR range (1.2.3.4/99)
when bad remote.ip notValue | AuthorizationPolicy | {rules: [{when: [{key: remote.ip, notValues: [nope]}]}]} | spec.rules[0].when[0].notValues[0] | invalid `notValue` for `key` remote.ip: bad IP address (nope)
when bad destination.ip | AuthorizationPolicy | {rules: [{when: [{key: destination.ip, values: ['*']}]}]} | spec.rules[0].when[0].values[0] | bad IP address (*)
when bad destination.port | AuthorizationPolicy | {rules: [{when: [{key: destination.port, values: ['99999']}]}]} | spec.rules[0].when[0].values[0] | invalid `value` for `key` destination.port: bad port (99999)
when wildcard source.serviceAccount | AuthorizationPolicy | {rules: [{when: [{key: source.serviceAccount, values: ['ns/*']}]}]} | spec.rules[0].when[0].values[0] | invalid `value` for `key` source.serviceAccount: wildcard not allowed
too many rules | AuthorizationPolicy | @513RULES | spec.rules | must have at most 512 items, found 513
dry-run not a boolean | AuthorizationPolicy | @DRYRUN=yes {} | metadata.annotations.istio.io/dry-run | annotation istio.io/dry-run with invalid value (yes)
dry-run on AUDIT | AuthorizationPolicy | @DRYRUN=true {action: AUDIT, rules: [{}]} | metadata.annotations.istio.io/dry-run | currently only supports action ALLOW/DENY, found action AUDIT
dry-run on PeerAuthentication | PeerAuthentication | @DRYRUN=yes {} | metadata.annotations.istio.io/dry-run | unsupported annotation istio.io/dry-run
engine: experimental metadata | AuthorizationPolicy | {rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]}]} | spec.rules[0].when[0].key | Envoy dynamic metadata
portLevelMtls without selector | PeerAuthentication | {portLevelMtls: {8080: {mode: DISABLE}}} | spec.portLevelMtls | mesh/namespace peer authentication cannot have port level mTLS
portLevelMtls with an empty selector | PeerAuthentication | {selector: {matchLabels: {}}, portLevelMtls: {8080: {mode: DISABLE}}} | spec.portLevelMtls | cannot have port level mTLS
portLevelMtls empty | PeerAuthentication | {selector: {matchLabels: {app: a}}, portLevelMtls: {}} | spec.portLevelMtls | port level mTLS, if defined, must have at least one element
portLevelMtls port 0 | PeerAuthentication | {selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: STRICT}}} | spec.portLevelMtls.0 | port must be in range 1..65535
portLevelMtls port 65536 | PeerAuthentication | {selector: {matchLabels: {app: a}}, portLevelMtls: {65536: {mode: STRICT}}} | spec.portLevelMtls.65536 | port must be in range 1..65535
PeerAuthentication selector wildcard | PeerAuthentication | {selector: {matchLabels: {'app*': a}}} | spec.selector.matchLabels.app* | wildcard is not supported in selector
jwt without issuer or jwksUri | RequestAuthentication | {jwtRules: [{jwks: '{"keys": []}'}]} | spec.jwtRules[0].issuer | issuer or jwksUri must be non-empty string
jwksUri scheme | RequestAuthentication | {jwtRules: [{issuer: i, jwksUri: 'ftp://x/jwks'}]} | spec.jwtRules[0].jwksUri | URI scheme "ftp" is not supported
jwksUri port | RequestAuthentication | {jwtRules: [{issuer: i, jwksUri: 'https://x:port/jwks'}]} | spec.jwtRules[0].jwksUri | invalid port ":port" after host
jwks not JSON | RequestAuthentication | {jwtRules: [{issuer: i, jwks: 'nope'}]} | spec.jwtRules[0].jwks | jwks parse error
jwks without kty | RequestAuthentication | {jwtRules: [{issuer: i, jwks: '{"keys": [{"n": "x"}]}'}]} | spec.jwtRules[0].jwks | jwks parse error: keys[0]
empty audience | RequestAuthentication | {jwtRules: [{issuer: i, audiences: [a, '']}]} | spec.jwtRules[0].audiences[1] | audience must be non-empty string
fromHeaders without name | RequestAuthentication | {jwtRules: [{issuer: i, fromHeaders: [{prefix: 'Bearer '}]}]} | spec.jwtRules[0].fromHeaders[0].name | location header name must be non-empty string
empty fromParams | RequestAuthentication | {jwtRules: [{issuer: i, fromParams: ['']}]} | spec.jwtRules[0].fromParams[0] | location query must be non-empty string
empty fromCookies | RequestAuthentication | {jwtRules: [{issuer: i, fromCookies: ['']}]} | spec.jwtRules[0].fromCookies[0] | cookie name must be non-empty string
outputClaimToHeaders without claim | RequestAuthentication | {jwtRules: [{issuer: i, outputClaimToHeaders: [{header: x-sub}]}]} | spec.jwtRules[0].outputClaimToHeaders[0] | header and claim value must be non-empty string
outputClaimToHeaders bad header | RequestAuthentication | {jwtRules: [{issuer: i, outputClaimToHeaders: [{header: 'x_sub', claim: sub}]}]} | spec.jwtRules[0].outputClaimToHeaders[0].header | header name x_sub is not a valid header name
timeout too short | RequestAuthentication | {jwtRules: [{issuer: i, timeout: 500us}]} | spec.jwtRules[0].timeout | duration must be greater than 1ms
timeout not whole ms | RequestAuthentication | {jwtRules: [{issuer: i, timeout: 1.0005s}]} | spec.jwtRules[0].timeout | only durations to ms precision are supported
timeout not a duration | RequestAuthentication | {jwtRules: [{issuer: i, timeout: soon}]} | spec.jwtRules[0].timeout | invalid duration "soon"
RequestAuthentication selector and targetRef | RequestAuthentication | {selector: {matchLabels: {app: a}}, targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}} | spec.targetRef | only one of targetRefs or workloadSelector
"#;

    #[test]
    fn each_webhook_rule_refuses_its_case() {
        for [case, kind, spec, path, message] in rows(REFUSED) {
            let problems = run(&text_of(kind, spec));
            assert!(
                problems
                    .iter()
                    .any(|p| p.is_error() && p.path == path && p.message.contains(message)),
                "{case}: expected {path}: {message}; got {problems:#?}"
            );
        }
    }

    /// Valid shapes, most from Istio's documentation: no errors, no warnings.
    const ACCEPTED: &str = r#"
allow-nothing | AuthorizationPolicy | {}
allow-all | AuthorizationPolicy | {rules: [{}]}
deny-all | AuthorizationPolicy | {action: DENY, rules: [{}]}
AUDIT without rules | AuthorizationPolicy | {action: AUDIT}
custom with provider | AuthorizationPolicy | {selector: {matchLabels: {app: istio-ingressgateway}}, action: CUSTOM, provider: {name: my-custom-authz}, rules: [{to: [{operation: {paths: ['/admin/*']}}]}]}
httpbin example | AuthorizationPolicy | {selector: {matchLabels: {app: httpbin, version: v1}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}, {source: {namespaces: [dev]}}], to: [{operation: {methods: [GET], paths: ['/info*']}}], when: [{key: 'request.auth.claims[iss]', values: ['https://accounts.google.com']}]}]}
deny with ports | AuthorizationPolicy | {action: DENY, rules: [{from: [{source: {notNamespaces: [foo]}}], to: [{operation: {methods: [POST], ports: ['8080']}}]}]}
ip blocks | AuthorizationPolicy | {rules: [{from: [{source: {ipBlocks: [203.0.113.4, 203.0.113.0/24, '2001:db8::/32'], notRemoteIpBlocks: [10.0.0.1/8]}}]}]}
service accounts | AuthorizationPolicy | {rules: [{from: [{source: {serviceAccounts: [sleep, foo/sleep], notServiceAccounts: [bar/x]}}]}]}
path templates | AuthorizationPolicy | {rules: [{to: [{operation: {paths: ['/foo/{*}', '/foo/{**}', '/{*}/foo/{**}/bar.tmp', '/api/{*}/items/', '/*', '*.html', '/a*']}}]}]}
every condition key | AuthorizationPolicy | {rules: [{when: [{key: 'request.headers[User-Agent]', values: ['curl*']}, {key: source.ip, values: [10.0.0.0/8]}, {key: remote.ip, notValues: [1.2.3.4]}, {key: source.namespace, values: [a]}, {key: source.principal, values: ['*']}, {key: source.serviceAccount, values: [ns/sa]}, {key: request.auth.principal, values: [iss/sub]}, {key: request.auth.audiences, values: [a]}, {key: request.auth.presenter, values: [p]}, {key: 'request.auth.claims[groups][admin]', values: [x]}, {key: destination.ip, values: ['::1']}, {key: destination.port, values: ['0', '65535']}, {key: connection.sni, values: ['*.example.com']}, {key: source.trustDomain, values: [td]}]}]}
dry-run deny | AuthorizationPolicy | @DRYRUN=true {action: DENY, rules: [{to: [{operation: {ports: ['80']}}]}]}
mesh strict | PeerAuthentication | {mtls: {mode: STRICT}}
port level | PeerAuthentication | {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}
jwt | RequestAuthentication | {selector: {matchLabels: {app: httpbin}}, jwtRules: [{issuer: 'issuer-foo', jwksUri: 'https://example.com/.well-known/jwks.json', audiences: [a], fromHeaders: [{name: x-jwt-assertion, prefix: 'Bearer '}], fromParams: [my_token], fromCookies: [session], outputPayloadToHeader: x-jwt-payload, outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}], timeout: 1.5s}]}
inline jwks | RequestAuthentication | {jwtRules: [{issuer: i, jwks: '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "x"}]}', timeout: 1m30s}]}
jwksUri without issuer | RequestAuthentication | {jwtRules: [{jwksUri: 'http://jwks.local:8080/keys'}]}
"#;

    #[test]
    fn valid_policies_pass_without_warnings() {
        for [case, kind, spec] in rows(ACCEPTED) {
            let problems = run(&text_of(kind, spec));
            assert!(problems.is_empty(), "{case}: {problems:#?}");
        }
    }

    /// (case, kind, spec, path, message substring): accepted with a warning.
    const WARNED: &str = r#"
DENY with only HTTP attributes | AuthorizationPolicy | {action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]} | spec.rules[0] | will deny all traffic to TCP ports
DENY with only request principals | AuthorizationPolicy | {action: DENY, rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]} | spec.rules[0] | it is recommended to explicitly specify the port
selector without labels | AuthorizationPolicy | {selector: {}} | spec.selector | workload selector specified without labels
targetRef ignored | AuthorizationPolicy | {targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}, rules: [{}]} | spec.targetRef | Warden, like a sidecar, ignores them
jwksUri file | RequestAuthentication | {jwtRules: [{issuer: i, jwksUri: 'file:///etc/jwks.json'}]} | spec.jwtRules[0].jwksUri | URI scheme "file" is not supported by Istio
jwksUri path | RequestAuthentication | {jwtRules: [{issuer: i, jwksUri: jwks.json}]} | spec.jwtRules[0].jwksUri | Warden reads the local file
root namespace selector | PeerAuthentication | @istio-system {selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}} | spec.selector | a selector in the root namespace (istio-system) is ignored
dry-run 1 | AuthorizationPolicy | @DRYRUN=1 {rules: [{}]} | metadata.annotations.istio.io/dry-run | Istio reads "1" as true
"#;

    #[test]
    fn warnings_do_not_refuse() {
        for [case, kind, spec, path, message] in rows(WARNED) {
            let problems = run(&text_of(kind, spec));
            assert!(
                problems.iter().all(|p| !p.is_error()),
                "{case}: {problems:#?}"
            );
            assert!(
                problems
                    .iter()
                    .any(|p| p.path == path && p.message.contains(message)),
                "{case}: expected {path}: {message}; got {problems:#?}"
            );
        }
    }

    const FILE: &str = r#"# two documents, then a List
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web
  namespace: shop
spec:
  rules:
  - to:
    - operation:
        ports: ["8080"]
  - from:
    - source:
        ipBlocks:
        - 10.0.0.0/8
        - 10.0.0.0/99
    when:
    - key: request.method
      values: [GET]
---
apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: RequestAuthentication
  metadata: {name: jwt, namespace: shop}
  spec:
    jwtRules:
    - issuer: i
    - issuer: ""
"#;

    #[test]
    fn problems_point_at_the_line_of_the_field() {
        let got: Vec<String> = validate_text(Path::new("dir/p.yaml"), FILE, &Options::default())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "dir/p.yaml:22: AuthorizationPolicy shop/web: spec.rules[1].from[0].source.ipBlocks[1]: bad CIDR range (10.0.0.0/99): prefix length out of range",
                "dir/p.yaml:24: AuthorizationPolicy shop/web: spec.rules[1].when[0].key: unknown attribute: request.method",
                "dir/p.yaml:36: RequestAuthentication shop/jwt: spec.jwtRules[1].issuer: issuer or jwksUri must be non-empty string",
            ]
        );
    }

    #[test]
    fn unknown_lines_fall_back_to_the_document() {
        let text = text_of("AuthorizationPolicy", "{action: DENY}");
        let set = crate::loader::load_str(Path::new("p.yaml"), &text).unwrap();
        // No source text: the document's line.
        let problems = validate(&set, &SourceLines::default(), &Options::default());
        assert_eq!(problems[0].line, 1);
        // An absent field: its nearest written ancestor (`spec`).
        let problems = run(&format!("# c\n{text}"));
        assert_eq!(
            problems[0].to_string(),
            "p.yaml:5: AuthorizationPolicy foo/p: spec.rules: DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request"
        );
    }

    #[test]
    fn engine_errors_already_reported_are_not_repeated() {
        let text = text_of(
            "AuthorizationPolicy",
            "{rules: [{from: [{source: {ipBlocks: [bad]}}], to: [{operation: {ports: [x]}}], when: [{key: source.ip, notValues: [nope]}]}]}",
        );
        let problems = run(&text);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.rules[0].from[0].source.ipBlocks[0]",
                "spec.rules[0].to[0].operation.ports[0]",
                "spec.rules[0].when[0].notValues[0]",
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn summary_counts_kinds_files_and_skips() {
        let text = format!(
            "{}---\n{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n",
            text_of("AuthorizationPolicy", "{}"),
            text_of("PeerAuthentication", "{selector: {}}").replace("name: p", "name: q")
        );
        let set = crate::loader::load_str(Path::new("p.yaml"), &text).unwrap();
        let mut lines = SourceLines::default();
        lines.insert(Path::new("p.yaml"), &text);
        let problems = validate(&set, &lines, &Options::default());
        assert_eq!(
            Summary::new(&set, &problems).to_string(),
            "ok: 2 resources in 1 file (1 AuthorizationPolicy, 1 PeerAuthentication); 1 unknown kind skipped; 1 warning"
        );
    }

    #[test]
    fn addresses_as_go_parses_them() {
        for ok in [
            "10.0.0.1",
            "::1",
            "fe80::1%eth0",
            "10.0.0.1/8",
            "0.0.0.0/0",
            "2001:db8::/128",
        ] {
            assert_eq!(ip_or_cidr(ok), Ok(()), "{ok}");
        }
        for bad in [
            "010.0.0.1",
            "10.0.0",
            "fe80::1%",
            "fe80::1%eth0/64",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
            "10.0.0.0/8/8",
        ] {
            assert!(ip_or_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations() {
        for (text, nanos) in [
            ("0", Some(0)),
            ("1.5s", Some(1_500_000_000)),
            ("1m30s", Some(90_000_000_000)),
            ("250ms", Some(250_000_000)),
            ("1h", Some(3_600_000_000_000)),
            (".5s", Some(500_000_000)),
            ("-2s", Some(-2_000_000_000)),
            ("5", None),
            ("s", None),
            ("", None),
            ("1d", None),
        ] {
            assert_eq!(go_duration(text), nanos, "{text}");
        }
    }
}
