//! VirtualService, DestinationRule and Gateway (`ValidateVirtualService`,
//! `ValidateDestinationRule`, `ValidateGateway` in istio/istio
//! `pkg/config/validation/validation.go` and the helpers they call): the fields the
//! route table reads, with the webhook's messages; and, as Istio's analyzer does
//! (IST0101), a warning for a subset no DestinationRule defines.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Findings;
use crate::loader::{ConfigSet, Loaded};
use crate::route::duration;
use crate::route::model::{
    CorsPolicy, Destination, DestinationRuleSpec, GatewaySpec, HttpMatch, Server,
    ServerTlsSettings, StringMatch, VirtualServiceSpec,
};
use crate::route::{ServerProtocol, TlsMode};

/// Envoy's `retry_on` conditions Istio accepts (`pkg/config/validation/agent`
/// `supportedRetryOnPolicies`); HTTP status codes are accepted too.
const RETRY_ON: [&str; 14] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
];
/// gRPC conditions (also accepted).
const RETRY_ON_GRPC: [&str; 1] = ["unavailable"];
/// `redirectCode` values Envoy takes.
const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];
/// `loadBalancer.simple`.
const SIMPLE_LB: [&str; 6] = [
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
];
/// Methods `corsPolicy.allowMethods` may name (`supportedCORSMethods`: Go's
/// `net/http` method constants, and `*`).
const CORS_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];
/// `tls.mode`.
const TLS_MODES: [&str; 4] = ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"];

/// Subsets each host's DestinationRules define (hosts as written, lowercase, and
/// qualified in the rule's namespace).
pub(super) fn subsets_by_host(set: &ConfigSet) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for dr in &set.destination_rules {
        let Ok(spec) = serde_json::from_value::<DestinationRuleSpec>(dr.resource.spec.clone())
        else {
            continue;
        };
        let host = qualify(&spec.host, dr.resource.namespace());
        out.entry(host)
            .or_default()
            .extend(spec.subsets.iter().map(|s| s.name.clone()));
    }
    out
}

fn qualify(host: &str, namespace: &str) -> String {
    let h = host.to_ascii_lowercase();
    if h.contains('.') || h.starts_with('*') {
        h
    } else {
        format!("{h}.{namespace}.svc.cluster.local")
    }
}

fn parse<T: serde::de::DeserializeOwned>(spec: &Value, f: &mut Findings) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(spec.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            f.error(field, e.inner().to_string());
            None
        }
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A host of a VirtualService: a (wildcard) DNS name, or `*`.
fn host_problem(host: &str) -> Option<String> {
    if host == "*" {
        return None;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    (!ok).then(|| format!("{host:?} is not a valid host (a DNS name, *.suffix or *)"))
}

fn percent(f: &mut Findings, path: String, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        f.error(path, format!("percentage {value} is not in range 0..100"));
    }
}

fn duration_at(f: &mut Findings, path: String, value: Option<&String>) {
    if let Some(v) = value
        && let Err(e) = duration::parse(v)
    {
        f.error(path, e);
    }
}

fn string_match(f: &mut Findings, path: String, m: &StringMatch) {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        f.error(
            path.clone(),
            "only one of exact, prefix and regex may be set",
        );
    }
    if let Some(r) = &m.regex
        && r != "*"
        && let Err(e) = regex::Regex::new(r)
    {
        f.error(
            format!("{path}.regex"),
            format!("{r:?} is not an RE2 regular expression: {e}"),
        );
    }
}

/// `validateCORSPolicy`: origins with a non-empty match (a valid RE2 regex), known
/// methods, header names of RFC 7230 `tchar`s (or `*`), a `maxAge` of whole seconds.
fn cors_policy(f: &mut Findings, path: &str, c: &CorsPolicy) {
    for (i, m) in c.allow_origins.iter().enumerate() {
        let p = format!("{path}.allowOrigins[{i}]");
        let value = m.exact.as_ref().or(m.prefix.as_ref()).or(m.regex.as_ref());
        if value.is_none_or(String::is_empty) {
            f.error(
                p.clone(),
                "'' is not a valid match type for CORS allow origins",
            );
        }
        if [&m.exact, &m.prefix, &m.regex]
            .iter()
            .filter(|v| v.is_some())
            .count()
            > 1
        {
            f.error(p.clone(), "only one of exact, prefix and regex may be set");
        }
        // No `*` shorthand here: istiod hands the regex to Envoy as written.
        if let Some(r) = m.regex.as_ref().filter(|r| !r.is_empty()) {
            if r.len() > 1024 {
                f.error(
                    format!("{p}.regex"),
                    "regex is too large, max length allowed is 1024",
                );
            } else if let Err(e) = regex::Regex::new(r) {
                f.error(
                    format!("{p}.regex"),
                    format!("{r:?} is not an RE2 regular expression: {e}"),
                );
            }
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            f.error(
                format!("{path}.allowMethods[{i}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (list, names) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            let problem = if name.is_empty() {
                Some("header name cannot be empty".to_string())
            } else if name != "*" && !name.bytes().all(tchar) {
                Some(format!("header name {name} is not a valid header name"))
            } else {
                None
            };
            if let Some(message) = problem {
                f.error(format!("{path}.{list}[{i}]"), message);
            }
        }
    }
    if let Some(t) = &c.max_age {
        let p = format!("{path}.maxAge");
        match (
            duration::parse(t),
            super::request_authentication::go_duration(t),
        ) {
            (Err(e), _) => f.error(p, e),
            (Ok(_), None) => f.error(p, format!("{t:?} is not a duration")),
            (Ok(_), Some(nanos)) => {
                if nanos < 1_000_000 {
                    f.error(p.clone(), "duration must be greater than 1ms");
                } else if nanos % 1_000_000 != 0 {
                    f.error(p.clone(), "only durations to ms precision are supported");
                }
                if nanos % 1_000_000_000 != 0 {
                    f.error(p, "max_age duration is accurate only to seconds precision");
                }
            }
        }
    }
}

fn http_match(f: &mut Findings, path: &str, m: &HttpMatch) {
    for (name, v) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(v) = v {
            string_match(f, format!("{path}.{name}"), v);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
        ("queryParams", &m.query_params),
    ] {
        for (k, v) in map {
            if k.is_empty() {
                f.error(
                    format!("{path}.{field}"),
                    "header match key cannot be empty",
                );
            }
            string_match(f, format!("{path}.{field}.{k}"), v);
        }
    }
    if let Some(p) = m.port
        && !(1..=65535).contains(&p)
    {
        f.error(
            format!("{path}.port"),
            format!("port number {p} must be in the range 1..65535"),
        );
    }
}

fn destination(
    f: &mut Findings,
    path: &str,
    d: &Destination,
    namespace: &str,
    subsets: &BTreeMap<String, BTreeSet<String>>,
) {
    if d.host.is_empty() {
        f.error(format!("{path}.host"), "destination must have a host");
    } else if let Some(e) = host_problem(&d.host.to_ascii_lowercase()) {
        f.error(format!("{path}.host"), e);
    }
    if let Some(p) = &d.port
        && !(1..=65535).contains(&p.number)
    {
        f.error(
            format!("{path}.port.number"),
            format!("port number {} must be in the range 1..65535", p.number),
        );
    }
    if let Some(s) = &d.subset {
        if !dns_label(s) {
            f.error(
                format!("{path}.subset"),
                format!("subset name {s:?} is not a valid DNS label"),
            );
        } else {
            let host = qualify(&d.host, namespace);
            let defined = subsets.iter().any(|(h, names)| {
                let covers =
                    h == &host || h.strip_prefix('*').is_some_and(|sfx| host.ends_with(sfx));
                covers && names.contains(s)
            });
            if !defined {
                f.warning(
                    format!("{path}.subset"),
                    format!(
                        "subset {s:?} of {host} is defined by no DestinationRule here: requests routed to it fail with 503 (Istio's analyzer: IST0101)"
                    ),
                );
            }
        }
    }
}

pub(super) fn virtual_service(
    r: &Loaded<Value>,
    subsets: &BTreeMap<String, BTreeSet<String>>,
) -> Findings {
    let mut f = Findings::default();
    let Some(spec) = parse::<VirtualServiceSpec>(&r.resource.spec, &mut f) else {
        return f;
    };
    let ns = r.resource.namespace();
    let delegate = spec.hosts.is_empty();
    if delegate && !spec.gateways.is_empty() {
        f.error(
            "spec.gateways",
            "delegate virtual service must have no gateways specified",
        );
    }
    let mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    for (i, h) in spec.hosts.iter().enumerate() {
        if let Some(e) = host_problem(&h.to_ascii_lowercase()) {
            f.error(format!("spec.hosts[{i}]"), e);
        } else if h == "*" && mesh {
            f.error(
                format!("spec.hosts[{i}]"),
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        f.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, route) in spec.http.iter().enumerate() {
        let at = |x: &str| format!("spec.http[{i}]{x}");
        for (k, m) in route.matches.iter().enumerate() {
            http_match(&mut f, &at(&format!(".match[{k}]")), m);
        }
        let has_route = !route.route.is_empty();
        match (
            has_route,
            route.redirect.is_some(),
            route.direct_response.is_some(),
            route.delegate.is_some(),
        ) {
            (false, false, false, false) => f.error(
                at(""),
                "HTTP route, redirect, direct response or delegate is required",
            ),
            (true, true, _, _) => {
                f.error(at(""), "HTTP route cannot contain both route and redirect")
            }
            (true, _, true, _) => f.error(
                at(""),
                "HTTP route cannot contain both route and direct response",
            ),
            (_, true, true, _) => f.error(
                at(""),
                "HTTP route cannot contain both redirect and direct response",
            ),
            (_, _, _, true) if has_route || route.redirect.is_some() => f.error(
                at(""),
                "HTTP route cannot contain both delegate and route or redirect",
            ),
            _ => {}
        }
        if delegate && route.delegate.is_some() {
            f.error(
                at(".delegate"),
                "delegate virtual service cannot have delegate",
            );
        }
        for (j, d) in route.route.iter().enumerate() {
            let p = at(&format!(".route[{j}]"));
            destination(
                &mut f,
                &format!("{p}.destination"),
                &d.destination,
                ns,
                subsets,
            );
            if let Some(w) = d.weight
                && w < 0
            {
                f.error(format!("{p}.weight"), format!("weight {w} < 0"));
            }
        }
        if route.route.len() > 1 && route.route.iter().filter_map(|d| d.weight).sum::<i64>() == 0 {
            f.error(at(".route"), "total destination weight = 0");
        }
        if let Some(r) = &route.redirect {
            if let Some(c) = r.redirect_code
                && !REDIRECT_CODES.contains(&c)
            {
                f.error(
                    at(".redirect.redirectCode"),
                    format!("{c} is not a valid redirect code, must be 301, 302, 303, 307, or 308"),
                );
            }
            if r.port.is_some() && r.derive_port.is_some() {
                f.error(
                    at(".redirect"),
                    "only one of port and derivePort may be set",
                );
            }
            if r.uri.is_some() && r.prefix_rewrite.is_some() {
                f.error(
                    at(".redirect"),
                    "only one of uri and prefixRewrite may be set",
                );
            }
        }
        if let Some(d) = &route.direct_response
            && !(200..=599).contains(&d.status)
        {
            f.error(
                at(".directResponse.status"),
                format!("invalid HTTP status {}: must be in 200..599", d.status),
            );
        }
        if let Some(rw) = &route.rewrite {
            if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                f.error(
                    at(".rewrite"),
                    "rewrite may only contain one of uri or uriRegexRewrite",
                );
            }
            if let Some(rr) = &rw.uri_regex_rewrite
                && let Err(e) = regex::Regex::new(&rr.pattern)
            {
                f.error(
                    at(".rewrite.uriRegexRewrite.match"),
                    format!("{:?} is not an RE2 regular expression: {e}", rr.pattern),
                );
            }
        }
        duration_at(&mut f, at(".timeout"), route.timeout.as_ref());
        if let Some(c) = &route.cors_policy {
            cors_policy(&mut f, &at(".corsPolicy"), c);
        }
        if let Some(r) = &route.retries {
            if let Some(a) = r.attempts
                && a < 0
            {
                f.error(at(".retries.attempts"), "attempts cannot be negative");
            }
            duration_at(
                &mut f,
                at(".retries.perTryTimeout"),
                r.per_try_timeout.as_ref(),
            );
            if let Some(on) = &r.retry_on {
                for cond in on.split(',').map(str::trim) {
                    let known = RETRY_ON.contains(&cond)
                        || RETRY_ON_GRPC.contains(&cond)
                        || cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                    if !known {
                        f.error(
                            at(".retries.retryOn"),
                            format!("{cond:?} is not a valid retryOn value"),
                        );
                    }
                }
            }
        }
        if let Some(fault) = &route.fault {
            if fault.delay.is_none() && fault.abort.is_none() {
                f.error(
                    at(".fault"),
                    "HTTP fault injection must have an abort and/or a delay",
                );
            }
            if let Some(d) = &fault.delay {
                if d.exponential_delay.is_some() {
                    f.error(
                        at(".fault.delay.exponentialDelay"),
                        "exponentialDelay not supported yet",
                    );
                }
                if d.fixed_delay.is_none() && d.exponential_delay.is_none() {
                    f.error(at(".fault.delay"), "delay must have fixedDelay");
                }
                duration_at(
                    &mut f,
                    at(".fault.delay.fixedDelay"),
                    d.fixed_delay.as_ref(),
                );
                if let Some(p) = &d.percentage {
                    percent(&mut f, at(".fault.delay.percentage.value"), p.value);
                }
            }
            if let Some(a) = &fault.abort {
                if a.http2_error.is_some() {
                    f.error(
                        at(".fault.abort.http2Error"),
                        "HTTP/2 abort fault injection not supported yet",
                    );
                }
                if let Some(s) = a.http_status
                    && !(200..=599).contains(&s)
                {
                    f.error(
                        at(".fault.abort.httpStatus"),
                        format!("invalid abort http status {s}"),
                    );
                }
                if a.http_status.is_none() && a.grpc_status.is_none() && a.http2_error.is_none() {
                    f.error(
                        at(".fault.abort"),
                        "abort must have httpStatus or grpcStatus",
                    );
                }
                if let Some(p) = &a.percentage {
                    percent(&mut f, at(".fault.abort.percentage.value"), p.value);
                }
            }
        }
        if let Some(m) = &route.mirror {
            destination(&mut f, &at(".mirror"), m, ns, subsets);
        }
        if route.mirror.is_some() && !route.mirrors.is_empty() {
            f.error(at(".mirrors"), "mirror and mirrors cannot both be set");
        }
        if let Some(p) = &route.mirror_percentage {
            percent(&mut f, at(".mirrorPercentage.value"), p.value);
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            destination(
                &mut f,
                &at(&format!(".mirrors[{j}].destination")),
                &m.destination,
                ns,
                subsets,
            );
            if let Some(p) = &m.percentage {
                percent(
                    &mut f,
                    at(&format!(".mirrors[{j}].percentage.value")),
                    p.value,
                );
            }
        }
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        for (j, d) in route.route.iter().enumerate() {
            destination(
                &mut f,
                &format!("spec.tcp[{i}].route[{j}].destination"),
                &d.destination,
                ns,
                subsets,
            );
        }
    }
    for (i, route) in spec.tls.iter().enumerate() {
        for (k, m) in route.matches.iter().enumerate() {
            if m.sni_hosts.is_empty() {
                f.error(
                    format!("spec.tls[{i}].match[{k}].sniHosts"),
                    "TLS match must have at least one SNI host",
                );
            }
        }
        for (j, d) in route.route.iter().enumerate() {
            destination(
                &mut f,
                &format!("spec.tls[{i}].route[{j}].destination"),
                &d.destination,
                ns,
                subsets,
            );
        }
    }
    f
}

fn traffic_policy(f: &mut Findings, path: &str, p: &Value) {
    let Some(obj) = p.as_object() else {
        f.error(path, "trafficPolicy must be an object");
        return;
    };
    const FIELDS: [&str; 8] = [
        "loadBalancer",
        "connectionPool",
        "outlierDetection",
        "tls",
        "portLevelSettings",
        "tunnel",
        "proxyProtocol",
        "retryBudget",
    ];
    for k in obj.keys() {
        if !FIELDS.contains(&k.as_str()) {
            f.error(
                format!("{path}.{k}"),
                format!("unknown field `{k}`, expected one of {}", FIELDS.join(", ")),
            );
        }
    }
    if let Some(lb) = obj.get("loadBalancer")
        && let Some(s) = lb.get("simple")
    {
        if !s.as_str().is_some_and(|s| SIMPLE_LB.contains(&s)) {
            f.error(
                format!("{path}.loadBalancer.simple"),
                format!(
                    "{s} is not a load balancer (ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH)"
                ),
            );
        }
        if lb.get("consistentHash").is_some() {
            f.error(
                format!("{path}.loadBalancer"),
                "only one of simple and consistentHash may be set",
            );
        }
    }
    if let Some(od) = obj.get("outlierDetection")
        && let Some(m) = od.get("maxEjectionPercent").and_then(Value::as_i64)
        && !(0..=100).contains(&m)
    {
        f.error(
            format!("{path}.outlierDetection.maxEjectionPercent"),
            "max ejection percent must be between 0 and 100",
        );
    }
    for (k, d) in [
        (
            "outlierDetection.interval",
            p.pointer("/outlierDetection/interval"),
        ),
        (
            "outlierDetection.baseEjectionTime",
            p.pointer("/outlierDetection/baseEjectionTime"),
        ),
        (
            "connectionPool.tcp.connectTimeout",
            p.pointer("/connectionPool/tcp/connectTimeout"),
        ),
        (
            "connectionPool.http.idleTimeout",
            p.pointer("/connectionPool/http/idleTimeout"),
        ),
    ] {
        if let Some(d) = d {
            match d.as_str() {
                Some(s) => duration_at(f, format!("{path}.{k}"), Some(&s.to_string())),
                None => f.error(format!("{path}.{k}"), "a duration is a string, e.g. 10s"),
            }
        }
    }
    for k in [
        "/connectionPool/tcp/maxConnections",
        "/connectionPool/http/http1MaxPendingRequests",
        "/connectionPool/http/http2MaxRequests",
        "/connectionPool/http/maxRetries",
        "/connectionPool/http/maxRequestsPerConnection",
    ] {
        if let Some(v) = p.pointer(k)
            && v.as_i64().is_none_or(|n| n < 0)
        {
            f.error(
                format!("{path}{}", k.replace('/', ".")),
                format!("{v} must be a non-negative integer"),
            );
        }
    }
    if let Some(tls) = obj.get("tls") {
        let mode = tls.get("mode").and_then(Value::as_str).unwrap_or("DISABLE");
        if !TLS_MODES.contains(&mode) {
            f.error(
                format!("{path}.tls.mode"),
                format!("{mode:?} is not a TLS mode (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL)"),
            );
        }
        if mode == "ISTIO_MUTUAL" {
            for k in [
                "clientCertificate",
                "privateKey",
                "caCertificates",
                "credentialName",
            ] {
                if tls.get(k).is_some() {
                    f.error(format!("{path}.tls.{k}"), "ISTIO_MUTUAL TLS cannot have associated client certificates, private key or CA certificates");
                }
            }
        }
        if mode == "MUTUAL"
            && tls.get("credentialName").is_none()
            && (tls.get("clientCertificate").is_none() || tls.get("privateKey").is_none())
        {
            f.error(
                format!("{path}.tls"),
                "client certificate and private key required for MUTUAL TLS (or credentialName)",
            );
        }
    }
    if let Some(ports) = obj.get("portLevelSettings") {
        for (i, pl) in ports.as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}.portLevelSettings[{i}]");
            match pl.pointer("/port/number").and_then(Value::as_u64) {
                Some(n) if (1..=65535).contains(&n) => {}
                Some(n) => f.error(
                    format!("{at}.port.number"),
                    format!("port number {n} must be in the range 1..65535"),
                ),
                None => f.error(format!("{at}.port"), "port must be specified"),
            }
            let mut inner = pl.clone();
            if let Some(o) = inner.as_object_mut() {
                o.remove("port");
            }
            traffic_policy(f, &at, &inner);
        }
    }
}

pub(super) fn destination_rule(r: &Loaded<Value>) -> Findings {
    let mut f = Findings::default();
    let Some(spec) = parse::<DestinationRuleSpec>(&r.resource.spec, &mut f) else {
        return f;
    };
    if spec.host.is_empty() {
        f.error("spec.host", "host must be specified");
    } else if let Some(e) = host_problem(&spec.host.to_ascii_lowercase()) {
        f.error("spec.host", e);
    }
    if let Some(p) = &spec.traffic_policy {
        traffic_policy(&mut f, "spec.trafficPolicy", p);
    }
    let mut seen = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if !dns_label(&s.name) {
            f.error(
                format!("spec.subsets[{i}].name"),
                format!("subset name {:?} is not a valid DNS label", s.name),
            );
        }
        if !seen.insert(&s.name) {
            f.error(
                format!("spec.subsets[{i}].name"),
                format!("duplicate subset names: {}", s.name),
            );
        }
        if let Some(p) = &s.traffic_policy {
            traffic_policy(&mut f, &format!("spec.subsets[{i}].trafficPolicy"), p);
        }
    }
    f
}

/// Istio's `labels.IsDNS1123Label`.
fn dns1123_label(s: &str) -> bool {
    dns_label(s)
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The DNS part of a gateway server host (`validateSidecarOrGatewayHostnamePart` with
/// `isGateway`): a FQDN whose first label may be `*`, `*`, or an IP address; no short
/// names, no partial wildcards.
fn gateway_host_name_problems(host: &str) -> Vec<String> {
    let mut out = Vec::new();
    if host != "*" && !host.contains('.') {
        out.push("short names (non FQDN) are not allowed".to_string());
    }
    let domain_ok = || {
        if host.is_empty() || host.len() > 255 {
            return false;
        }
        let (first, rest) = match host.split_once('.') {
            Some((f, r)) => (f, Some(r)),
            None => (host, None),
        };
        (first == "*" || dns1123_label(first))
            && rest.is_none_or(|r| r.split('.').all(dns1123_label))
    };
    if !domain_ok() && host.parse::<std::net::IpAddr>().is_err() {
        out.push(if host.is_empty() {
            "empty domain name not allowed".to_string()
        } else {
            format!("domain name {host:?} invalid")
        });
    }
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        out.push(format!("partial wildcard {host:?} not allowed"));
    }
    out
}

/// `ValidateNamespaceSlashWildcardHostname` for a gateway: `host`, or `ns/host` with
/// `ns` one of `*`, `.` or a DNS label.
fn gateway_host(f: &mut Findings, path: String, host: &str) {
    let name = match host.split_once('/') {
        None => host,
        Some((ns, name)) => {
            if ns.is_empty() || name.is_empty() {
                f.error(
                    path.clone(),
                    "config namespace and dnsName in host entry cannot be empty",
                );
            }
            if ns != "*" && ns != "." && !dns1123_label(ns) {
                f.error(
                    path.clone(),
                    format!("invalid namespace value {ns:?} in gateway"),
                );
            }
            name
        }
    };
    for problem in gateway_host_name_problems(name) {
        f.error(path.clone(), problem);
    }
}

/// `validateServerPort` and `validateServerBind`.
fn server_port(f: &mut Findings, at: &dyn Fn(&str) -> String, s: &Server) {
    let p = &s.port;
    let known =
        ServerProtocol::parse(&p.protocol).is_some() || p.protocol.eq_ignore_ascii_case("udp");
    if !known {
        f.error(
            at("port.protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                p.protocol
            ),
        );
    }
    let unix = s.bind.as_deref().and_then(|b| b.strip_prefix("unix://"));
    if (p.number > 0 || unix.is_none()) && !(1..=65535).contains(&p.number) {
        f.error(
            at("port.number"),
            format!("port number {} must be in the range 1..65535", p.number),
        );
    }
    if p.target_port.is_some_and(|t| t > 0) {
        f.error(
            at("port.targetPort"),
            "targetPort has no impact on Gateways",
        );
    }
    if p.name.is_empty() {
        f.error(at("port.name"), "port name must be set");
    }
    match (unix, s.bind.as_deref()) {
        (Some(path), _) => {
            if path.is_empty() {
                f.error(at("bind"), "unix address must not be empty");
            } else if !path.starts_with('@') && (!path.starts_with('/') || path.ends_with('/')) {
                f.error(
                    at("bind"),
                    format!("{path} is not an absolute path to a file"),
                );
            }
            if p.number != 0 {
                f.error(
                    at("port.number"),
                    "port number must be 0 for unix domain socket",
                );
            }
        }
        (None, Some(bind)) if !bind.is_empty() && bind.parse::<std::net::IpAddr>().is_err() => {
            f.error(at("bind"), format!("{bind} is not a valid IP"));
        }
        _ => {}
    }
}

/// `validateTLSOptions`.
fn server_tls(f: &mut Findings, at: &dyn Fn(&str) -> String, tls: &ServerTlsSettings) {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    if matches!(
        tls.min_protocol_version.as_deref(),
        Some("TLSV1_0" | "TLSV1_1")
    ) && tls.cipher_suites.is_empty()
    {
        f.warning(
            at("tls.minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    for (field, v) in [
        ("tls.minProtocolVersion", &tls.min_protocol_version),
        ("tls.maxProtocolVersion", &tls.max_protocol_version),
    ] {
        if let Some(v) = v
            && !["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"].contains(&v.as_str())
        {
            f.error(
                at(field),
                format!(
                    "{v:?} is not a TLS version (TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2, TLSV1_3)"
                ),
            );
        }
    }
    if tls.mode == TlsMode::IstioMutual {
        for (field, present, what) in [
            (
                "tls.serverCertificate",
                set(&tls.server_certificate),
                "server certificate",
            ),
            ("tls.privateKey", set(&tls.private_key), "private key"),
            ("tls.caCertificates", set(&tls.ca_certificates), "CA bundle"),
            (
                "tls.tlsCertificates",
                !tls.tls_certificates.is_empty(),
                "tlsCertificates",
            ),
            (
                "tls.credentialName",
                set(&tls.credential_name),
                "credentialName",
            ),
            (
                "tls.credentialNames",
                !tls.credential_names.is_empty(),
                "credentialNames",
            ),
        ] {
            if present {
                f.error(
                    at(field),
                    format!("ISTIO_MUTUAL TLS cannot have associated {what}"),
                );
            }
        }
        return;
    }
    let passthrough = tls.mode.is_passthrough();
    let has_certs = set(&tls.ca_crl)
        || set(&tls.server_certificate)
        || set(&tls.private_key)
        || set(&tls.ca_certificates)
        || !tls.tls_certificates.is_empty()
        || set(&tls.credential_name)
        || !tls.credential_names.is_empty();
    if passthrough && has_certs {
        let mode = if tls.mode == TlsMode::Passthrough {
            "PASSTHROUGH"
        } else {
            "AUTO_PASSTHROUGH"
        };
        f.warning(
            at("tls"),
            format!("{mode} mode does not use certificates, they will be ignored"),
        );
    }
    let sources = [
        set(&tls.server_certificate) && set(&tls.private_key),
        set(&tls.credential_name),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources > 1 {
        f.error(
            at("tls"),
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    let terminating = matches!(
        tls.mode,
        TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual
    );
    // Certificates from a secret are not looked at further (nor the CRL, as Istio).
    if terminating && (set(&tls.credential_name) || !tls.credential_names.is_empty()) {
        return;
    }
    if terminating {
        let prefix = if tls.mode == TlsMode::Simple {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if tls.mode != TlsMode::Simple && !set(&tls.ca_certificates) {
            f.error(
                at("tls.caCertificates"),
                format!("{prefix} requires a client CA bundle"),
            );
        }
        if tls.tls_certificates.len() > 2 {
            f.warning(
                at("tls.tlsCertificates"),
                format!("{prefix} can support up to 2 server certificates"),
            );
        }
        if tls.tls_certificates.is_empty() {
            if !set(&tls.server_certificate) {
                f.error(
                    at("tls.serverCertificate"),
                    format!("{prefix} requires a server certificate"),
                );
            }
            if !set(&tls.private_key) {
                f.error(
                    at("tls.privateKey"),
                    format!("{prefix} requires a private key"),
                );
            }
        }
        for (j, c) in tls.tls_certificates.iter().enumerate() {
            if !set(&c.server_certificate) {
                f.error(
                    at(&format!("tls.tlsCertificates[{j}].serverCertificate")),
                    format!("{prefix} requires a server certificate"),
                );
            }
            if !set(&c.private_key) {
                f.error(
                    at(&format!("tls.tlsCertificates[{j}].privateKey")),
                    format!("{prefix} requires a private key"),
                );
            }
        }
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            f.error(
                at("tls.caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if tls.mode == TlsMode::Simple {
            f.error(at("tls.caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
}

/// `ValidateGateway`, `validateServer`, `validateServerPort`, `validateServerBind`,
/// `validateTLSOptions`; and a warning for a Gateway without a selector (accepted by
/// the webhook, it then applies to every gateway workload of the mesh).
pub(super) fn gateway(r: &Loaded<Value>) -> Findings {
    let mut f = Findings::default();
    let name = &r.resource.metadata.name;
    if !dns1123_label(name) {
        f.error("metadata.name", format!("invalid gateway name: {name:?}"));
    }
    let Some(spec) = parse::<GatewaySpec>(&r.resource.spec, &mut f) else {
        return f;
    };
    if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
        f.warning(
            "spec.selector",
            "no selector: the Gateway applies to every gateway workload of the mesh, in every namespace",
        );
    }
    if spec.servers.is_empty() {
        f.error("spec.servers", "gateway must have at least one server");
    }
    let mut port_names = BTreeSet::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let at = |x: &str| format!("spec.servers[{i}].{x}");
        if s.hosts.is_empty() {
            f.error(at("hosts"), "server config must contain at least one host");
        }
        for (k, h) in s.hosts.iter().enumerate() {
            gateway_host(&mut f, at(&format!("hosts[{k}]")), h);
        }
        server_port(&mut f, &at, s);
        if let Some(tls) = &s.tls {
            server_tls(&mut f, &at, tls);
        }
        if let Some(p) = ServerProtocol::parse(&s.port.protocol) {
            let is_tls = matches!(p, ServerProtocol::Https | ServerProtocol::Tls);
            match &s.tls {
                None if is_tls => f.error(
                    at("tls"),
                    "server must have TLS settings for HTTPS/TLS protocols",
                ),
                Some(t) if !is_tls && p.is_http() => {
                    let certs = [&t.ca_certificates, &t.private_key, &t.server_certificate]
                        .iter()
                        .any(|v| v.as_deref().is_some_and(|v| !v.is_empty()));
                    if !t.mode.is_passthrough() || certs {
                        f.error(
                            at("tls"),
                            "server cannot have TLS settings for plain text HTTP ports",
                        );
                    }
                }
                Some(_) if !is_tls => f.error(
                    at("tls"),
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                ),
                _ => {}
            }
            if !p.is_http() && s.tls.as_ref().is_some_and(|t| t.https_redirect) {
                f.warning(
                    at("tls.httpsRedirect"),
                    "tls.httpsRedirect should only be used with http servers",
                );
            }
        }
        if !port_names.insert(s.port.name.as_str()) {
            f.error(
                at("port.name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    s.port.name
                ),
            );
        }
    }
    f
}
