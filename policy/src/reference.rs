//! A reference evaluator for Istio AuthorizationPolicy, for tests only (issue 17): the
//! differential test in `reference/tests.rs` decides random policy sets and requests with
//! it and with the real loader and [`crate::authz::Engine`], and requires the same answers.
//!
//! It shares no code with the engine: it reads the policies as parsed YAML
//! (`serde_json::Value` documents), compiles nothing, and implements each rule the plainest
//! way, straight from Istio's documentation. Only the request type is borrowed, as data.
//! The sources, quoted at the code that implements them:
//! - [ref]: <https://istio.io/latest/docs/reference/config/security/authorization-policy/>
//!   (generated from istio/api `security/v1beta1/authorization_policy.proto`)
//! - [conditions]: <https://istio.io/latest/docs/reference/config/security/conditions/>
//! - [authz-jwt]: <https://istio.io/latest/docs/tasks/security/authorization/authz-jwt/>
//!
//! Where the pages are silent, Istio's own translation decides (istio/istio
//! `pilot/pkg/security/authz/model`: `model.go`, `generator.go`), and the comment says so.

use std::net::IpAddr;

use serde_json::Value;

use crate::authz::{Protocol, Request, Workload};

/// What Istio does with a request, as far as the policies say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Allowed by the CUSTOM/DENY/ALLOW layers (a CUSTOM provider may still deny).
    pub(crate) allowed: bool,
    /// Some CUSTOM policy matched: its provider is asked.
    pub(crate) custom: bool,
    /// The AUDIT policies (`ns/name`) that matched, sorted.
    pub(crate) audit: Vec<String>,
    /// The dry-run policies that apply, with whether a rule matched, sorted.
    pub(crate) dry_run: Vec<(String, bool)>,
}

/// Decides `r` for workload `w` under the AuthorizationPolicies among `docs`.
///
/// [ref] "the CUSTOM action is evaluated first, then the DENY action, and finally the ALLOW
/// action": "1. If there are any CUSTOM policies that match the request, evaluate and deny
/// the request if the evaluation result is deny. 2. If there are any DENY policies that
/// match the request, deny the request. 3. If there are no ALLOW policies for the workload,
/// allow the request. 4. If any of the ALLOW policies match the request, allow the request.
/// 5. Deny the request." "AUDIT policies do not affect whether requests are allowed or
/// denied". The CUSTOM provider's answer is not modelled: that a CUSTOM policy matched is
/// reported, as the engine reports it.
pub(crate) fn decide(docs: &[Value], root_namespace: &str, w: &Workload, r: &Request) -> Outcome {
    let mut out = Outcome::default();
    let (mut denied, mut allow_policies, mut allow_matched) = (false, false, false);
    for doc in docs {
        if doc["kind"] != "AuthorizationPolicy" || !applies(doc, root_namespace, w) {
            continue;
        }
        let ns = namespace(doc);
        let name = format!(
            "{ns}/{}",
            doc["metadata"]["name"].as_str().unwrap_or_default()
        );
        let spec = &doc["spec"];
        let action = spec["action"].as_str().unwrap_or("ALLOW"); // [ref] "Default is ALLOW"
        let matched = policy_matches(spec, ns, action, r);
        // [ref] "annotation `istio.io/dry-run` to dry-run the policy without actually
        // enforcing it"; Istio reads it with Go's strconv.ParseBool, for ALLOW and DENY
        // policies (the engine's reading: an annotated AUDIT or CUSTOM acts as usual).
        let dry = doc["metadata"]["annotations"]["istio.io/dry-run"]
            .as_str()
            .is_some_and(|v| ["1", "t", "T", "true", "TRUE", "True"].contains(&v));
        if dry && (action == "ALLOW" || action == "DENY") {
            out.dry_run.push((name, matched));
            continue;
        }
        match action {
            "DENY" => denied |= matched,
            "ALLOW" => {
                allow_policies = true;
                allow_matched |= matched;
            }
            "AUDIT" if matched => out.audit.push(name),
            "CUSTOM" => out.custom |= matched,
            _ => {}
        }
    }
    out.allowed = !denied && (!allow_policies || allow_matched);
    out.audit.sort();
    out.dry_run.sort();
    out
}

fn namespace(doc: &Value) -> &str {
    // Kubernetes: a resource without a namespace is created in `default`.
    doc["metadata"]["namespace"].as_str().unwrap_or("default")
}

/// A repeated field: absent and `[]` are the same (proto3 has no empty-but-set list, and
/// istiod skips a field with no values: `model.go` `insertFront`/`appendLast`).
fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// [ref] "\"metadata/namespace\" tells which namespace the policy applies. If set to root
/// namespace, the policy applies to all namespaces in a mesh." selector: "The selector will
/// match with workloads in the same namespace as the authorization policy ... If not set,
/// the selector will match all workloads" (a workload matches when it carries every
/// `matchLabels` label). targetRef(s) attach a policy to a Gateway, Service or waypoint;
/// sidecars ignore such policies (istio `pilot/pkg/model/policyattachment.go`).
fn applies(doc: &Value, root_namespace: &str, w: &Workload) -> bool {
    let ns = namespace(doc);
    let spec = &doc["spec"];
    let attached = !spec["targetRef"].is_null() || !list(&spec["targetRefs"]).is_empty();
    let selected = match spec["selector"]["matchLabels"].as_object() {
        None => true,
        Some(labels) => labels
            .iter()
            .all(|(k, v)| v.as_str() == w.labels.get(k).map(String::as_str)),
    };
    (ns == w.namespace || ns == root_namespace) && !attached && selected
}

/// [ref] rules: "A match occurs when at least one rule matches the request. If not set,
/// the match will never occur. This is equivalent to setting a default of deny for the
/// target workloads if the action is ALLOW."
fn policy_matches(spec: &Value, ns: &str, action: &str, r: &Request) -> bool {
    list(&spec["rules"])
        .iter()
        .any(|rule| rule_matches(rule, ns, action, r))
}

/// [ref] Rule: "A match occurs when at least one source, one operation and all conditions
/// matches the request. An empty rule is always matched." from: "If not set, any source is
/// allowed"; to: "If not set, any operation is allowed".
///
/// TCP: [ref] "When this rule is applied to TCP traffic, the `method` field (as will all HTTP
/// based attributes) cannot be processed. For a `DENY` rule, missing attributes are treated
/// as matches." An ALLOW rule that uses one is dropped whole: "a smaller allow policy"
/// (`model.go` `checkError`); AUDIT and CUSTOM rules are treated as DENY rules.
fn rule_matches(rule: &Value, ns: &str, action: &str, r: &Request) -> bool {
    let tcp = r.protocol == Protocol::Tcp;
    if tcp && action == "ALLOW" && uses_http_only(rule) {
        return false;
    }
    let any_or_unset = |entries: &[Value], one: &dyn Fn(&Value) -> bool| {
        entries.is_empty() || entries.iter().any(one)
    };
    let sources = list(&rule["from"]);
    let operations = list(&rule["to"]);
    any_or_unset(sources, &|f| fields_match(&f["source"], ns, r))
        && any_or_unset(operations, &|t| fields_match(&t["operation"], ns, r))
        && list(&rule["when"])
            .iter()
            .all(|c| condition_matches(c, ns, r))
}

/// Whether a rule sets a field or condition that only HTTP has.
fn uses_http_only(rule: &Value) -> bool {
    let fields = list(&rule["from"])
        .iter()
        .map(|f| &f["source"])
        .chain(list(&rule["to"]).iter().map(|t| &t["operation"]))
        .filter_map(Value::as_object)
        .flatten()
        .any(|(field, values)| {
            !list(values).is_empty() && attribute(field).is_some_and(|(a, _)| a.http_only())
        });
    fields
        || list(&rule["when"]).iter().any(|c| {
            let set = !list(&c["values"]).is_empty() || !list(&c["notValues"]).is_empty();
            set && condition_attribute(c["key"].as_str().unwrap_or_default())
                .is_some_and(|a| a.http_only())
        })
}

/// A request attribute a field or condition key names.
#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Principal,
    RequestPrincipal,
    Namespace,
    ServiceAccount,
    TrustDomain,
    SourceIp,
    RemoteIp,
    Host,
    Port,
    Method,
    Path,
    DestinationIp,
    Sni,
    Header(String),
    Claim(Vec<String>),
}

impl Attr {
    /// [conditions] "Supported Protocols: HTTP only"; [ref] hosts, methods, paths: "Must be
    /// used only with HTTP"; requestPrincipals: "requires request authentication".
    fn http_only(&self) -> bool {
        use Attr::*;
        matches!(
            self,
            RequestPrincipal | Host | Method | Path | Header(_) | Claim(_)
        )
    }
}

/// A `source`/`operation` field: the attribute, and whether it is the `notX` form.
/// [ref] "notPrincipals: A list of negative match of peer identities", and alike.
fn attribute(field: &str) -> Option<(Attr, bool)> {
    use Attr::*;
    let attr = |name: &str| match name {
        "principals" => Some(Principal),
        "requestPrincipals" => Some(RequestPrincipal),
        "namespaces" => Some(Namespace),
        "serviceAccounts" => Some(ServiceAccount),
        "trustDomains" => Some(TrustDomain),
        "ipBlocks" => Some(SourceIp),
        "remoteIpBlocks" => Some(RemoteIp),
        "hosts" => Some(Host),
        "ports" => Some(Port),
        "methods" => Some(Method),
        "paths" => Some(Path),
        _ => None,
    };
    // `notIpBlocks` → `ipBlocks`, negated
    let mut rest = field.strip_prefix("not").unwrap_or_default().chars();
    match rest.next() {
        Some(first) if first.is_ascii_uppercase() => {
            attr(&format!("{}{}", first.to_ascii_lowercase(), rest.as_str())).map(|a| (a, true))
        }
        _ => attr(field).map(|a| (a, false)),
    }
}

/// [conditions] the `when` keys.
fn condition_attribute(key: &str) -> Option<Attr> {
    use Attr::*;
    // `[a][b]` → ["a", "b"]
    let brackets = |s: &str| -> Option<Vec<String>> {
        let inner = s.strip_prefix('[')?.strip_suffix(']')?;
        Some(inner.split("][").map(String::from).collect())
    };
    Some(match key {
        "source.ip" => SourceIp,
        "remote.ip" => RemoteIp,
        "source.namespace" => Namespace,
        "source.principal" => Principal,
        "source.serviceAccount" => ServiceAccount,
        "source.trustDomain" => TrustDomain,
        "destination.ip" => DestinationIp,
        "destination.port" => Port,
        "connection.sni" => Sni,
        "request.auth.principal" => RequestPrincipal,
        "request.auth.audiences" => Claim(vec!["aud".into()]),
        "request.auth.presenter" => Claim(vec!["azp".into()]),
        _ => {
            if let Some(rest) = key.strip_prefix("request.headers") {
                // header names are case-insensitive; the request's are lower case
                Header(brackets(rest)?.concat().to_ascii_lowercase())
            } else {
                Claim(brackets(key.strip_prefix("request.auth.claims")?)?)
            }
        }
    })
}

/// [ref] "Fields in the source are ANDed together", "Fields in the operation are ANDed
/// together"; a field matches when one of its values does ("the principal is \"admin\" or
/// \"dev\""), a `notX` field when none does. On TCP the HTTP-only fields are dropped here
/// (ALLOW rules using them never get this far).
fn fields_match(fields: &Value, ns: &str, r: &Request) -> bool {
    let Some(fields) = fields.as_object() else {
        return true; // `from: [{}]`: no constraint
    };
    fields.iter().all(|(field, values)| {
        let values = list(values);
        match attribute(field) {
            _ if values.is_empty() => true,
            Some((attr, _)) if r.protocol == Protocol::Tcp && attr.http_only() => true,
            Some((attr, negated)) => {
                values.iter().any(|v| value_matches(&attr, v, ns, r)) != negated
            }
            None => false, // the loader refuses unknown fields
        }
    })
}

/// [ref] Condition: "values: A list of allowed values for the attribute", "notValues: A
/// list of negative match of values for the attribute"; both set: both must hold.
fn condition_matches(c: &Value, ns: &str, r: &Request) -> bool {
    let Some(attr) = condition_attribute(c["key"].as_str().unwrap_or_default()) else {
        return false;
    };
    if r.protocol == Protocol::Tcp && attr.http_only() {
        return true;
    }
    let (values, not_values) = (list(&c["values"]), list(&c["notValues"]));
    let hit = |vs: &[Value]| vs.iter().any(|v| value_matches(&attr, v, ns, r));
    (values.is_empty() || hit(values)) && !hit(not_values)
}

/// [ref] Rule: "Any string field in the rule supports Exact, Prefix, Suffix and Presence
/// match: Exact match: \"abc\" will match on value \"abc\". Prefix match: \"abc*\" will match on
/// value \"abc\" and \"abcd\". Suffix match: \"*abc\" will match on value \"abc\" and \"xabc\".
/// Presence match: `*` will match when value is not empty."
fn string_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}

/// `<td>/ns/<ns>/sa/<sa>` → (td, ns, sa).
fn identity(principal: &str) -> Option<(&str, &str, &str)> {
    match principal.split('/').collect::<Vec<_>>()[..] {
        [td, "ns", ns, "sa", sa] => Some((td, ns, sa)),
        _ => None,
    }
}

fn value_matches(attr: &Attr, v: &Value, policy_ns: &str, r: &Request) -> bool {
    let v = v.as_str().unwrap_or_default();
    // [ref] principals, namespaces, serviceAccounts: "This field requires mTLS enabled": a
    // plaintext peer has no identity, so it matches no value (and every `notX` field).
    let peer = r.source_principal.as_deref();
    let http = r.http.as_ref();
    match attr {
        // [ref] principals: "<TRUST_DOMAIN>/ns/<NAMESPACE>/sa/<SERVICE_ACCOUNT>"
        Attr::Principal => peer.is_some_and(|p| string_matches(v, p)),
        // [ref] namespaces: "A list of namespaces derived from the peer certificate"
        Attr::Namespace => peer
            .and_then(identity)
            .is_some_and(|(_, ns, _)| string_matches(v, ns)),
        // [ref] serviceAccounts: "This takes the format `<namespace>/<serviceaccount>`.
        // `<serviceaccount>` may also be used to use the same namespace as the
        // `AuthorizationPolicy`." "No form of wildcard (`*`) is allowed."
        Attr::ServiceAccount => {
            let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
            peer.and_then(identity)
                .is_some_and(|(_, peer_ns, peer_sa)| (peer_ns, peer_sa) == (ns, sa))
        }
        // [ref] trustDomains: "derived from the peer certificate": a SPIFFE ID's trust
        // domain is its authority, whatever the path
        Attr::TrustDomain => peer
            .and_then(|p| p.split('/').next())
            .is_some_and(|td| string_matches(v, td)),
        // [ref] ipBlocks: "populated from the source address of the IP packet";
        // remoteIpBlocks: "populated from `X-Forwarded-For` header or proxy protocol"
        // (without either, Envoy's remote address is the peer's)
        Attr::SourceIp => r.source_ip.is_some_and(|ip| in_block(v, ip)),
        Attr::RemoteIp => r
            .remote_ip
            .or(r.source_ip)
            .is_some_and(|ip| in_block(v, ip)),
        Attr::DestinationIp => r.destination_ip.is_some_and(|ip| in_block(v, ip)),
        // [ref] ports: "A list of ports as specified in the connection" (numbers: exact)
        Attr::Port => v.parse::<u16>() == Ok(r.destination_port),
        Attr::Sni => r.sni.as_deref().is_some_and(|s| string_matches(v, s)),
        // [ref] hosts: "A list of hosts as specified in the HTTP request. The match is
        // case-insensitive."
        Attr::Host => http
            .is_some_and(|h| string_matches(&v.to_ascii_lowercase(), &h.host.to_ascii_lowercase())),
        Attr::Method => http.is_some_and(|h| string_matches(v, &h.method)),
        // [ref] paths: "as specified in the HTTP request", normalized (the caller's step,
        // as the proxy's) and without the query (Envoy's `url_path`); templates below
        Attr::Path => http.is_some_and(|h| {
            let path = h.path.split('?').next().unwrap_or_default();
            if v.contains("{*}") || v.contains("{**}") {
                template_matches(v, path)
            } else {
                string_matches(v, path)
            }
        }),
        Attr::Header(name) => http
            .and_then(|h| h.headers.get(name))
            .is_some_and(|value| string_matches(v, value)),
        Attr::RequestPrincipal => r
            .jwt
            .as_ref()
            .is_some_and(|claims| request_principal_matches(v, claims)),
        // [authz-jwt] "An Istio authorization policy supports both string typed and
        // list-of-string typed JWT claims": other types match nothing
        Attr::Claim(path) => {
            let claim = r
                .jwt
                .as_ref()
                .map_or(&Value::Null, |c| path.iter().fold(c, |c, k| &c[k.as_str()]));
            match claim {
                Value::String(s) => string_matches(v, s),
                Value::Array(items) => items
                    .iter()
                    .any(|i| i.as_str().is_some_and(|s| string_matches(v, s))),
                _ => false,
            }
        }
    }
}

/// [ref] requestPrincipals: "<ISS>/<SUB>". Istio splits a value at its last `/` ("since
/// issuer may be an URL") and matches the issuer and subject apart, a `*` part matching
/// any non-empty one (`generator.go` `requestPrincipalGenerator`).
fn request_principal_matches(v: &str, claims: &Value) -> bool {
    let (Some(iss), Some(sub)) = (claims["iss"].as_str(), claims["sub"].as_str()) else {
        return false;
    };
    let present = |s: &str| !s.is_empty();
    let (v_iss, v_sub) = match v.rfind('/') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let any_or = |pattern: &str, s: &str, m: bool| if pattern == "*" { present(s) } else { m };
    match v_sub {
        _ if v == "*" => present(iss) && present(sub),
        // `*x/sub`: issuer suffix (`*`: any), subject exact
        Some(v_sub) if v.starts_with('*') => {
            any_or(v_iss, iss, iss.ends_with(&v_iss[1..])) && sub == v_sub
        }
        // `iss/x*`: issuer exact, subject prefix (`*`: any)
        Some(v_sub) if v.ends_with('*') => {
            iss == v_iss && any_or(v_sub, sub, sub.starts_with(&v_sub[..v_sub.len() - 1]))
        }
        Some(v_sub) => iss == v_iss && sub == v_sub,
        // no `/`: `*x` is any issuer and a subject suffix, `x*` an issuer prefix and any
        // subject, `x` the issuer with an empty subject
        None if v.starts_with('*') => present(iss) && sub.ends_with(&v[1..]),
        None if v.ends_with('*') => iss.starts_with(&v[..v.len() - 1]) && present(sub),
        None => iss == v && sub.is_empty(),
    }
}

/// [ref] paths: "`{*}` matches a single glob that cannot extend beyond a path segment",
/// "`{**}` matches zero or more globs"; Envoy's `uri_template` (which Istio configures)
/// reads `*` as one or more pchars and `**` as any run of pchars and `/`
/// (`uri_template_internal.cc`), and the whole path must match.
fn template_matches(template: &str, path: &str) -> bool {
    const PCHAR: &str = r"[A-Za-z0-9\-._~%!$&'()+,;:@]";
    let re = template
        .split("{**}")
        .map(|part| {
            let one: Vec<String> = part.split("{*}").map(regex::escape).collect();
            one.join(&format!("{PCHAR}+"))
        })
        .collect::<Vec<_>>()
        .join(&format!("(?:{PCHAR}|/)*"));
    regex::Regex::new(&format!("^{re}$")).is_ok_and(|re| re.is_match(path))
}

/// [ref] ipBlocks: "Single IP (e.g. `203.0.113.4`) and CIDR (e.g. `203.0.113.0/24`) are
/// supported": the first `len` bits equal, bit by bit; IPv4 never matches IPv6.
fn in_block(block: &str, ip: IpAddr) -> bool {
    let (net, len) = block.split_once('/').unwrap_or((block, ""));
    let bytes = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    let (a, b) = (bytes(net), bytes(ip));
    let len = if len.is_empty() {
        a.len() * 8
    } else {
        len.parse().unwrap_or(usize::MAX)
    };
    let bit = |bytes: &[u8], i: usize| (bytes[i / 8] >> (7 - i % 8)) & 1;
    a.len() == b.len() && len <= a.len() * 8 && (0..len).all(|i| bit(&a, i) == bit(&b, i))
}

#[cfg(test)]
mod tests;
