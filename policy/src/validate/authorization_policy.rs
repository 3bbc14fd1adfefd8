//! AuthorizationPolicy (`ValidateAuthorizationPolicy`): actions, the CUSTOM provider,
//! rules, sources, operations and `when` conditions with the keys Istio knows.

use super::Findings;
use super::metadata::{action_name, dry_run_annotation, selection};
use super::values::{account_count, ip_or_cidr, non_empty, path_template, port, service_account};
use crate::resources::{
    Action, AuthorizationPolicySpec, Condition, Operation, Resource, Rule, Source,
};

/// After "DENY " or "CUSTOM ".
const WITHOUT_RULES: &str = "action without `rules` is meaningless as it will never be triggered, \
    add an empty rule `{}` if you want it be triggered for every request";

/// Rules per policy: the CRD schema's limit (istio/api `authorization_policy.proto`,
/// "max 512"); the API server, not the webhook, enforces it.
const MAX_RULES: usize = 512;

pub(super) fn authorization_policy(r: &Resource<AuthorizationPolicySpec>) -> Findings {
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
