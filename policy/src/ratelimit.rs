//! Local rate limiting, with no I/O: what Envoy's `local_ratelimit` filter does in an
//! Istio sidecar, from the two shapes users write it in, compiled into per-workload
//! [`Limit`]s that the proxy enforces with token buckets.
//!
//! - Istio's `EnvoyFilter` for `envoy.filters.http.local_ratelimit`, as Istio's
//!   "Enabling Rate Limits using Envoy" task writes it: an `HTTP_FILTER` patch whose
//!   `token_bucket` limits every inbound HTTP request of the selected workloads, and
//!   `HTTP_ROUTE` patches (`typed_per_filter_config`) on a virtual host
//!   `inbound|http|<port>` that limit one port; `filter_enabled`/`filter_enforced`
//!   percentages, `response_headers_to_add`, `status` and
//!   `enable_x_ratelimit_headers: DRAFT_VERSION_03` are honoured. Descriptors are
//!   refused by name (use `LocalRateLimit`'s `per`). EnvoyFilters for anything else
//!   are skipped with a note, as before.
//! - Warden's own `LocalRateLimit` (`warden.io/v1alpha1`): limits matched by path,
//!   method and port (AuthorizationPolicy's value syntax), one bucket shared or one per
//!   source principal, source address or header value, and exemptions by principal or
//!   header: what Mixer's quota adapter gave users, without an external service.
//!
//! Selection follows Istio's for EnvoyFilters and policies: `workloadSelector`
//! (`selector` for `LocalRateLimit`) labels within the resource's namespace; without
//! one, every workload of the namespace; in the root namespace, every workload of the
//! mesh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::loader::{ConfigSet, Loaded};
use crate::matcher::StringMatch;
use crate::resources::WorkloadSelector;

/// A resource that does not compile, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {kind} {namespace}/{name}: {field}: {message}")]
pub struct RateLimitError {
    /// Where it was loaded from.
    pub origin: String,
    /// `EnvoyFilter` or `LocalRateLimit`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Field path.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Envoy's token bucket: starts full, `tokens_per_fill` added every `fill_interval`
/// up to `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenBucket {
    /// Capacity.
    pub max_tokens: u32,
    /// Added per interval.
    pub tokens_per_fill: u32,
    /// The interval.
    pub fill_interval: Duration,
}

/// What one bucket is kept per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Per {
    /// One bucket for every request the limit matches.
    Shared,
    /// One per source principal (plaintext callers share one).
    SourcePrincipal,
    /// One per source address.
    SourceIp,
    /// One per value of this header (lowercase name; absent shares one).
    Header(String),
}

/// One compiled limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// `Kind ns/name` and the rule, for logs and metrics.
    pub id: String,
    /// A stable identity of the bucket (the resource, the rule and its numbers): a
    /// config change that leaves them alone keeps the bucket's state.
    pub key: String,
    /// The bucket.
    pub bucket: TokenBucket,
    /// What the bucket is kept per.
    pub per: Per,
    /// Paths (normalized, query excluded), any when empty.
    pub paths: Vec<StringMatch>,
    /// Methods, any when empty.
    pub methods: Vec<String>,
    /// Destination (app) ports, any when empty.
    pub ports: Vec<u16>,
    /// Principals (without `spiffe://`) never limited.
    pub exempt_principals: Vec<StringMatch>,
    /// Headers (lowercase name, value match) whose presence exempts a request.
    pub exempt_headers: Vec<(String, StringMatch)>,
    /// Percent of requests checked (`filter_enabled`).
    pub enabled_percent: f64,
    /// Percent of limited requests refused (`filter_enforced`); the rest pass, counted.
    pub enforced_percent: f64,
    /// Status of the refusal (429 unless `status` says otherwise).
    pub status: u16,
    /// Headers added to refusals (`response_headers_to_add`).
    pub refusal_headers: Vec<(String, String)>,
    /// `x-ratelimit-limit`, `-remaining`, `-reset` on every answer it checked.
    pub x_ratelimit_headers: bool,
}

/// One request as a limit sees it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// Normalized path without the query.
    pub path: &'a str,
    /// Method.
    pub method: &'a str,
    /// Destination (app) port.
    pub port: u16,
    /// Source principal without `spiffe://`.
    pub principal: Option<&'a str>,
    /// Source address.
    pub source_ip: Option<std::net::IpAddr>,
    /// A request header by lowercase name (the first value).
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("path", &self.path)
            .field("method", &self.method)
            .field("port", &self.port)
            .field("principal", &self.principal)
            .field("source_ip", &self.source_ip)
            .finish_non_exhaustive()
    }
}

impl Limit {
    /// Whether the limit applies to `r` (its match, not its exemptions).
    pub fn matches(&self, r: &Request<'_>) -> bool {
        (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(r.path)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == r.method))
            && (self.ports.is_empty() || self.ports.contains(&r.port))
    }

    /// Whether `r` is exempt.
    pub fn exempt(&self, r: &Request<'_>) -> bool {
        r.principal
            .is_some_and(|p| self.exempt_principals.iter().any(|m| m.matches(p)))
            || self
                .exempt_headers
                .iter()
                .any(|(name, m)| (r.header)(name).is_some_and(|v| m.matches(v)))
    }

    /// The bucket's key for `r` within this limit.
    pub fn bucket_key(&self, r: &Request<'_>) -> String {
        match &self.per {
            Per::Shared => String::new(),
            Per::SourcePrincipal => r.principal.unwrap_or_default().to_string(),
            Per::SourceIp => r.source_ip.map(|i| i.to_string()).unwrap_or_default(),
            Per::Header(h) => (r.header)(h).unwrap_or_default().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Scoped {
    namespace: String,
    selector: Option<BTreeMap<String, String>>,
    limit: Arc<Limit>,
}

/// Every limit of a config, by the workloads they select.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    limits: Vec<Scoped>,
    root_namespace: String,
}

/// `warden.io/v1alpha1` `LocalRateLimit` spec.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalRateLimitSpec {
    /// Workloads it applies to (none: all in the namespace).
    pub selector: Option<WorkloadSelector>,
    /// The limits, each with its own bucket.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
}

/// One limit of a `LocalRateLimit`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitSpec {
    /// A name for logs (default `limits[i]`).
    pub name: Option<String>,
    /// Which requests (all when absent).
    #[serde(rename = "match")]
    pub match_: Option<LimitMatch>,
    /// The bucket.
    pub token_bucket: Option<BucketSpec>,
    /// `sourcePrincipal`, `sourceIp` or `header:<name>` (default: one shared bucket).
    pub per: Option<String>,
    /// Never limited.
    pub exempt: Option<Exempt>,
    /// `x-ratelimit-*` headers on answers (default true).
    pub response_headers: Option<bool>,
}

/// Which requests a limit takes tokens from.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitMatch {
    /// Paths, AuthorizationPolicy's syntax (`/api/*`, `*.png`, exact).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// Exemptions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exempt {
    /// Source principals (`cluster.local/ns/x/sa/y`, `prefix*`, `*suffix`).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Header name → value (`*` any value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `tokenBucket`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BucketSpec {
    /// Capacity (at least 1).
    pub max_tokens: Option<i64>,
    /// Added per interval (default 1).
    pub tokens_per_fill: Option<i64>,
    /// The interval (Istio duration; at least 50 ms, as Envoy requires).
    pub fill_interval: Option<String>,
}

type Fail = (String, String);

fn fail(field: impl Into<String>, message: impl Into<String>) -> Fail {
    (field.into(), message.into())
}

/// Envoy's minimum `fill_interval`.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

fn bucket(
    max: Option<i64>,
    per_fill: Option<i64>,
    interval: Option<&str>,
    field: &str,
    names: [&str; 3],
) -> Result<TokenBucket, Fail> {
    let max = max.ok_or_else(|| fail(format!("{field}.{}", names[0]), "is required"))?;
    let max_tokens = u32::try_from(max).ok().filter(|m| *m >= 1).ok_or_else(|| {
        fail(
            format!("{field}.{}", names[0]),
            format!("{max} is not a token count of at least 1"),
        )
    })?;
    let per_fill = per_fill.unwrap_or(1);
    let tokens_per_fill = u32::try_from(per_fill)
        .ok()
        .filter(|m| *m >= 1)
        .ok_or_else(|| {
            fail(
                format!("{field}.{}", names[1]),
                format!("{per_fill} is not a token count of at least 1"),
            )
        })?;
    let interval = interval.ok_or_else(|| fail(format!("{field}.{}", names[2]), "is required"))?;
    let fill_interval = crate::route::duration::parse(interval)
        .map_err(|e| fail(format!("{field}.{}", names[2]), e))?;
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(fail(
            format!("{field}.{}", names[2]),
            format!("{interval:?} is shorter than Envoy's minimum of 50ms"),
        ));
    }
    Ok(TokenBucket {
        max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

fn per(value: Option<&str>, field: &str) -> Result<Per, Fail> {
    Ok(match value {
        None => Per::Shared,
        Some("sourcePrincipal") => Per::SourcePrincipal,
        Some("sourceIp") => Per::SourceIp,
        Some(h) if h.starts_with("header:") && h.len() > "header:".len() => {
            Per::Header(h["header:".len()..].trim().to_ascii_lowercase())
        }
        Some(other) => {
            return Err(fail(
                field,
                format!("{other:?} is not sourcePrincipal, sourceIp or header:<name>"),
            ));
        }
    })
}

fn compile_local(r: &Loaded<LocalRateLimitSpec>) -> Result<Vec<Arc<Limit>>, Fail> {
    let res = &r.resource;
    let spec = &res.spec;
    let id = format!("LocalRateLimit {}/{}", res.namespace(), res.metadata.name);
    if spec.limits.is_empty() {
        return Err(fail("spec.limits", "must list at least one limit"));
    }
    let mut out = Vec::new();
    for (i, l) in spec.limits.iter().enumerate() {
        let field = format!("spec.limits[{i}]");
        let b = l
            .token_bucket
            .as_ref()
            .ok_or_else(|| fail(format!("{field}.tokenBucket"), "is required"))?;
        let bucket = bucket(
            b.max_tokens,
            b.tokens_per_fill,
            b.fill_interval.as_deref(),
            &format!("{field}.tokenBucket"),
            ["maxTokens", "tokensPerFill", "fillInterval"],
        )?;
        let per = per(l.per.as_deref(), &format!("{field}.per"))?;
        let m = l.match_.clone().unwrap_or_default();
        let mut paths = Vec::new();
        for (j, p) in m.paths.iter().enumerate() {
            if !p.starts_with('/') && !p.starts_with('*') {
                return Err(fail(
                    format!("{field}.match.paths[{j}]"),
                    format!("{p:?} is not a path (it must start with / or *)"),
                ));
            }
            paths.push(
                StringMatch::path(p).map_err(|e| fail(format!("{field}.match.paths[{j}]"), e))?,
            );
        }
        for (j, m) in m.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(fail(
                    format!("{field}.match.methods[{j}]"),
                    format!("{m:?} is not an HTTP method in upper case"),
                ));
            }
        }
        let exempt = l.exempt.clone().unwrap_or_default();
        let name = l.name.clone().unwrap_or_else(|| format!("limits[{i}]"));
        out.push(Arc::new(Limit {
            id: format!("{id} {name}"),
            key: format!("{id} {name} {bucket:?} {per:?}"),
            bucket,
            per,
            paths,
            methods: m.methods,
            ports: m.ports,
            exempt_principals: exempt
                .principals
                .iter()
                .map(|p| StringMatch::new(p))
                .collect(),
            exempt_headers: exempt
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), StringMatch::new(v)))
                .collect(),
            enabled_percent: 100.0,
            enforced_percent: 100.0,
            status: 429,
            refusal_headers: Vec::new(),
            x_ratelimit_headers: l.response_headers.unwrap_or(true),
        }));
    }
    Ok(out)
}

const LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// The LocalRateLimit config inside a `typed_config`: a `TypedStruct`'s `value`, or the
/// message itself with its `@type`.
fn typed_value<'a>(typed: &'a Value, field: &str) -> Result<&'a Value, Fail> {
    let ty = typed["@type"].as_str().unwrap_or_default();
    if ty.ends_with("udpa.type.v1.TypedStruct") || ty.ends_with("xds.type.v3.TypedStruct") {
        if typed["type_url"].as_str() != Some(LOCAL_RATELIMIT_TYPE) {
            return Err(fail(
                format!("{field}.type_url"),
                format!("expected {LOCAL_RATELIMIT_TYPE}"),
            ));
        }
        return Ok(&typed["value"]);
    }
    if ty == LOCAL_RATELIMIT_TYPE {
        return Ok(typed);
    }
    Err(fail(
        format!("{field}.@type"),
        format!("{ty:?} is neither a TypedStruct nor {LOCAL_RATELIMIT_TYPE}"),
    ))
}

/// Envoy's `FractionalPercent` as a percentage (100 when absent).
fn percent(v: &Value, field: &str) -> Result<f64, Fail> {
    if v.is_null() {
        return Ok(100.0);
    }
    let d = &v["default_value"];
    let n = d["numerator"].as_f64().unwrap_or(0.0);
    let denominator = match d["denominator"].as_str().unwrap_or("HUNDRED") {
        "HUNDRED" => 100.0,
        "TEN_THOUSAND" => 10_000.0,
        "MILLION" => 1_000_000.0,
        other => {
            return Err(fail(
                format!("{field}.default_value.denominator"),
                format!("{other:?} is not HUNDRED, TEN_THOUSAND or MILLION"),
            ));
        }
    };
    Ok((n / denominator * 100.0).clamp(0.0, 100.0))
}

/// A LocalRateLimit message (Envoy's field names) as a limit; `None` without a
/// `token_bucket` (the filter then limits nothing by itself).
fn envoy_limit(v: &Value, field: &str, id: &str, ports: Vec<u16>) -> Result<Option<Limit>, Fail> {
    const KNOWN: &[&str] = &[
        "stat_prefix",
        "token_bucket",
        "filter_enabled",
        "filter_enforced",
        "response_headers_to_add",
        "enable_x_ratelimit_headers",
        "status",
        "always_consume_default_token_bucket",
        "local_rate_limit_per_downstream_connection",
    ];
    let Some(obj) = v.as_object() else {
        return Err(fail(field, "expected the LocalRateLimit fields"));
    };
    for k in obj.keys() {
        if k == "descriptors" {
            return Err(fail(
                format!("{field}.descriptors"),
                "descriptors are not supported; Warden's LocalRateLimit keeps a bucket per principal, address or header (`per`)",
            ));
        }
        if k != "@type" && !KNOWN.contains(&k.as_str()) {
            return Err(fail(
                format!("{field}.{k}"),
                format!(
                    "not a field Warden reads; expected one of {}",
                    KNOWN.join(", ")
                ),
            ));
        }
    }
    let tb = &v["token_bucket"];
    if tb.is_null() {
        return Ok(None);
    }
    let num = |k: &str| tb[k].as_i64().or_else(|| tb[k].as_str()?.parse().ok());
    let bucket = bucket(
        num("max_tokens"),
        num("tokens_per_fill"),
        tb["fill_interval"].as_str(),
        &format!("{field}.token_bucket"),
        ["max_tokens", "tokens_per_fill", "fill_interval"],
    )?;
    let enabled_percent = percent(&v["filter_enabled"], &format!("{field}.filter_enabled"))?;
    // Envoy: without filter_enforced, nothing is refused (only counted); the task's
    // filters set it to 100%.
    let enforced_percent = if v["filter_enforced"].is_null() {
        0.0
    } else {
        percent(&v["filter_enforced"], &format!("{field}.filter_enforced"))?
    };
    let mut refusal_headers = Vec::new();
    if let Some(list) = v["response_headers_to_add"].as_array() {
        for (i, h) in list.iter().enumerate() {
            let (k, val) = (h["header"]["key"].as_str(), h["header"]["value"].as_str());
            match (k, val) {
                (Some(k), Some(val)) if http_token(k) => {
                    refusal_headers.push((k.to_ascii_lowercase(), val.to_string()))
                }
                _ => {
                    return Err(fail(
                        format!("{field}.response_headers_to_add[{i}].header"),
                        "expected {key, value} with a valid header name",
                    ));
                }
            }
        }
    }
    let x_ratelimit_headers = match v["enable_x_ratelimit_headers"].as_str() {
        None | Some("OFF") => false,
        Some("DRAFT_VERSION_03") => true,
        Some(other) => {
            return Err(fail(
                format!("{field}.enable_x_ratelimit_headers"),
                format!("{other:?} is not OFF or DRAFT_VERSION_03"),
            ));
        }
    };
    let status = match &v["status"]["code"] {
        Value::Null => 429,
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
        Value::String(s) => status_name(s).unwrap_or(0),
        _ => 0,
    };
    if !(400..=599).contains(&status) {
        return Err(fail(
            format!("{field}.status.code"),
            "expected an HTTP error status (a number, or a name such as TooManyRequests)",
        ));
    }
    Ok(Some(Limit {
        id: id.to_string(),
        key: format!("{id} {bucket:?} {ports:?}"),
        bucket,
        per: Per::Shared,
        paths: Vec::new(),
        methods: Vec::new(),
        ports,
        exempt_principals: Vec::new(),
        exempt_headers: Vec::new(),
        enabled_percent,
        enforced_percent,
        status,
        refusal_headers,
        x_ratelimit_headers,
    }))
}

fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Envoy's `StatusCode` enum names for the common refusals.
fn status_name(s: &str) -> Option<u16> {
    Some(match s {
        "TooManyRequests" => 429,
        "ServiceUnavailable" => 503,
        "Forbidden" => 403,
        "BadRequest" => 400,
        "Unauthorized" => 401,
        "InternalServerError" => 500,
        _ => s.parse().ok()?,
    })
}

/// The port of an Istio inbound virtual host name (`inbound|http|9080`).
fn vhost_port(name: &str) -> Option<u16> {
    let mut parts = name.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("inbound"), Some(_), Some(port), None) => port.parse().ok(),
        _ => None,
    }
}

/// An EnvoyFilter's `workloadSelector` labels and its limits.
type Selected = (Option<BTreeMap<String, String>>, Vec<Arc<Limit>>);

/// The limits of one EnvoyFilter; `Ok(None)` when it is not about local rate limits.
fn compile_envoy_filter(r: &Loaded<Value>) -> Result<Option<Selected>, Fail> {
    let spec = &r.resource.spec;
    let patches = spec["configPatches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mentions = |p: &Value| p.to_string().contains(LOCAL_RATELIMIT);
    if !patches.iter().any(mentions) {
        return Ok(None);
    }
    let id = format!(
        "EnvoyFilter {}/{}",
        r.resource.namespace(),
        r.resource.metadata.name
    );
    if !spec["targetRefs"].is_null() {
        return Err(fail(
            "spec.targetRefs",
            "Warden selects workloads by workloadSelector only",
        ));
    }
    let selector = match &spec["workloadSelector"] {
        Value::Null => None,
        s => Some(
            s["labels"]
                .as_object()
                .ok_or_else(|| fail("spec.workloadSelector.labels", "expected a map of labels"))?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
        ),
    };
    let mut out = Vec::new();
    for (i, p) in patches.iter().enumerate() {
        if !mentions(p) {
            continue;
        }
        let field = format!("spec.configPatches[{i}]");
        let context = p["match"]["context"].as_str().unwrap_or("ANY");
        if !matches!(context, "SIDECAR_INBOUND" | "GATEWAY" | "ANY") {
            return Err(fail(
                format!("{field}.match.context"),
                format!(
                    "{context:?}: Warden limits inbound requests (SIDECAR_INBOUND) and gateways (GATEWAY)"
                ),
            ));
        }
        match p["applyTo"].as_str().unwrap_or_default() {
            "HTTP_FILTER" => {
                let value = &p["patch"]["value"];
                if value["name"].as_str() != Some(LOCAL_RATELIMIT) {
                    continue;
                }
                let typed = typed_value(
                    &value["typed_config"],
                    &format!("{field}.patch.value.typed_config"),
                )?;
                if let Some(l) = envoy_limit(
                    typed,
                    &format!("{field}.patch.value.typed_config"),
                    &format!("{id} configPatches[{i}]"),
                    Vec::new(),
                )? {
                    out.push(Arc::new(l));
                }
            }
            "HTTP_ROUTE" | "VIRTUAL_HOST" => {
                let vhost = p["match"]["routeConfiguration"]["vhost"]["name"].as_str();
                let ports = match vhost {
                    None => Vec::new(),
                    Some(name) => vec![vhost_port(name).ok_or_else(|| {
                        fail(
                            format!("{field}.match.routeConfiguration.vhost.name"),
                            format!("{name:?} is not an inbound virtual host inbound|http|<port>"),
                        )
                    })?],
                };
                let per_filter = &p["patch"]["value"]["typed_per_filter_config"][LOCAL_RATELIMIT];
                if per_filter.is_null() {
                    continue;
                }
                let typed = typed_value(
                    per_filter,
                    &format!("{field}.patch.value.typed_per_filter_config"),
                )?;
                if let Some(l) = envoy_limit(
                    typed,
                    &format!("{field}.patch.value.typed_per_filter_config"),
                    &format!("{id} configPatches[{i}]"),
                    ports,
                )? {
                    out.push(Arc::new(l));
                }
            }
            other => {
                return Err(fail(
                    format!("{field}.applyTo"),
                    format!(
                        "{other:?}: local rate limits are patched as HTTP_FILTER or HTTP_ROUTE"
                    ),
                ));
            }
        }
    }
    Ok(Some((selector, out)))
}

/// Why a LocalRateLimit does not compile: `(field, message)` (for `warden validate`).
pub fn check_local_rate_limit(r: &Loaded<LocalRateLimitSpec>) -> Option<(String, String)> {
    compile_local(r).err()
}

/// Why an EnvoyFilter's local rate limit does not compile: `(field, message)`; `None`
/// for one that compiles or is about something else.
pub fn check_envoy_filter(r: &Loaded<Value>) -> Option<(String, String)> {
    compile_envoy_filter(r).err()
}

impl RateLimits {
    /// Compiles the EnvoyFilters and LocalRateLimits of `set`; every error is reported
    /// and nothing is built unless all compile. EnvoyFilters about anything else are
    /// returned as notes.
    pub fn build(
        set: &ConfigSet,
        root_namespace: &str,
    ) -> Result<(Self, Vec<String>), Vec<RateLimitError>> {
        let mut errors = Vec::new();
        let mut limits = Vec::new();
        let mut notes = Vec::new();
        for r in &set.local_rate_limits {
            let res = &r.resource;
            match compile_local(r) {
                Ok(ls) => limits.extend(ls.into_iter().map(|limit| Scoped {
                    namespace: res.namespace().to_string(),
                    selector: res.spec.selector.as_ref().map(|s| s.match_labels.clone()),
                    limit,
                })),
                Err((field, message)) => errors.push(RateLimitError {
                    origin: r.origin.to_string(),
                    kind: "LocalRateLimit",
                    namespace: res.namespace().to_string(),
                    name: res.metadata.name.clone(),
                    field,
                    message,
                }),
            }
        }
        for r in &set.envoy_filters {
            let res = &r.resource;
            match compile_envoy_filter(r) {
                Ok(Some((selector, ls))) => limits.extend(ls.into_iter().map(|limit| Scoped {
                    namespace: res.namespace().to_string(),
                    selector: selector.clone(),
                    limit,
                })),
                Ok(None) => notes.push(format!(
                    "{}: EnvoyFilter {}/{} is not a local rate limit; Warden does not apply it",
                    r.origin,
                    res.namespace(),
                    res.metadata.name
                )),
                Err((field, message)) => errors.push(RateLimitError {
                    origin: r.origin.to_string(),
                    kind: "EnvoyFilter",
                    namespace: res.namespace().to_string(),
                    name: res.metadata.name.clone(),
                    field,
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok((
            Self {
                limits,
                root_namespace: root_namespace.to_string(),
            },
            notes,
        ))
    }

    /// The limits for a workload in `namespace` with `labels`: the root namespace's
    /// first, then its own namespace's, each in load order.
    pub fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<Arc<Limit>> {
        let selected = |s: &Scoped| {
            s.selector
                .as_ref()
                .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        let root = self
            .limits
            .iter()
            .filter(|s| s.namespace == self.root_namespace && selected(s));
        let own = self.limits.iter().filter(|s| {
            s.namespace == namespace && namespace != self.root_namespace && selected(s)
        });
        root.chain(own).map(|s| s.limit.clone()).collect()
    }

    /// Whether any limit exists.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn build(yaml: &str) -> Result<RateLimits, Vec<RateLimitError>> {
        let set = crate::loader::load_str(Path::new("limits.yaml"), yaml).unwrap();
        RateLimits::build(&set, "istio-system").map(|(r, _)| r)
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), app.to_string())])
    }

    /// Istio's "Enabling Rate Limits using Envoy" task, local rate limit at the
    /// listener (istio.io/latest/docs/tasks/policy-enforcement/rate-limit/).
    const ISTIO_TASK_FILTER: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket:
                max_tokens: 4
                tokens_per_fill: 4
                fill_interval: 60s
              filter_enabled:
                runtime_key: local_rate_limit_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              filter_enforced:
                runtime_key: local_rate_limit_enforced
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              response_headers_to_add:
                - append: false
                  header:
                    key: x-local-rate-limit
                    value: 'true'
"#;

    /// The same task's per-route variant: the filter without a bucket, the bucket on
    /// the inbound virtual host of port 9080.
    const ISTIO_TASK_ROUTE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
    - applyTo: HTTP_ROUTE
      match:
        context: SIDECAR_INBOUND
        routeConfiguration:
          vhost:
            name: "inbound|http|9080"
            route:
              action: ANY
      patch:
        operation: MERGE
        value:
          typed_per_filter_config:
            envoy.filters.http.local_ratelimit:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              value:
                stat_prefix: http_local_rate_limiter
                token_bucket:
                  max_tokens: 4
                  tokens_per_fill: 4
                  fill_interval: 60s
                filter_enabled:
                  runtime_key: local_rate_limit_enabled
                  default_value:
                    numerator: 100
                    denominator: HUNDRED
                filter_enforced:
                  runtime_key: local_rate_limit_enforced
                  default_value:
                    numerator: 100
                    denominator: HUNDRED
                response_headers_to_add:
                  - append: false
                    header:
                      key: x-local-rate-limit
                      value: 'true'
"#;

    #[test]
    fn istios_task_filters_compile_as_istio_applies_them() {
        let r = build(ISTIO_TASK_FILTER).unwrap();
        let l = r.for_workload("default", &labels("productpage"));
        assert_eq!(l.len(), 1);
        assert_eq!(
            l[0].bucket,
            TokenBucket {
                max_tokens: 4,
                tokens_per_fill: 4,
                fill_interval: Duration::from_secs(60)
            }
        );
        assert_eq!(l[0].enforced_percent, 100.0);
        assert_eq!(
            l[0].refusal_headers,
            vec![("x-local-rate-limit".to_string(), "true".to_string())]
        );
        assert!(l[0].ports.is_empty());
        // Root namespace: every namespace's productpage; not other apps.
        assert_eq!(r.for_workload("other", &labels("productpage")).len(), 1);
        assert!(r.for_workload("default", &labels("reviews")).is_empty());

        let r = build(ISTIO_TASK_ROUTE).unwrap();
        let l = r.for_workload("default", &labels("productpage"));
        assert_eq!(l.len(), 1, "the filter alone limits nothing");
        assert_eq!(l[0].ports, vec![9080]);
    }

    #[test]
    fn local_rate_limit_resource() {
        let r = build(
            r#"
apiVersion: warden.io/v1alpha1
kind: LocalRateLimit
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  limits:
  - name: writes
    match: {paths: ["/orders/*"], methods: [POST]}
    tokenBucket: {maxTokens: 2, tokensPerFill: 1, fillInterval: 1s}
    per: sourcePrincipal
    exempt:
      principals: ["cluster.local/ns/ops/sa/*"]
      headers: {x-load-test: allowed}
"#,
        )
        .unwrap();
        assert!(r.for_workload("other", &labels("api")).is_empty());
        let l = &r.for_workload("shop", &labels("api"))[0];
        assert_eq!(l.per, Per::SourcePrincipal);
        let headers = |n: &str| (n == "x-load-test").then_some("allowed");
        let req = Request {
            path: "/orders/1",
            method: "POST",
            port: 8080,
            principal: Some("cluster.local/ns/web/sa/front"),
            source_ip: None,
            header: &|_| None,
        };
        assert!(l.matches(&req) && !l.exempt(&req));
        assert_eq!(l.bucket_key(&req), "cluster.local/ns/web/sa/front");
        assert!(!l.matches(&Request {
            method: "GET",
            ..req
        }));
        assert!(!l.matches(&Request {
            path: "/cart",
            ..req
        }));
        assert!(l.exempt(&Request {
            principal: Some("cluster.local/ns/ops/sa/x"),
            ..req
        }));
        assert!(l.exempt(&Request {
            header: &headers,
            ..req
        }));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                "apiVersion: warden.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: a}\nspec:\n  limits:\n  - tokenBucket: {maxTokens: 0, fillInterval: 1s}\n",
                "spec.limits[0].tokenBucket.maxTokens",
            ),
            (
                "apiVersion: warden.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: a}\nspec:\n  limits:\n  - tokenBucket: {maxTokens: 1, fillInterval: 10ms}\n",
                "spec.limits[0].tokenBucket.fillInterval",
            ),
            (
                "apiVersion: warden.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: a}\nspec:\n  limits:\n  - tokenBucket: {maxTokens: 1, fillInterval: 1s}\n    per: user\n",
                "spec.limits[0].per",
            ),
            (
                "apiVersion: warden.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: a}\nspec:\n  limits:\n  - tokenBucket: {maxTokens: 1, fillInterval: 1s}\n    match: {paths: [orders]}\n",
                "spec.limits[0].match.paths[0]",
            ),
            (
                "apiVersion: warden.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: a}\nspec: {limits: []}\n",
                "spec.limits",
            ),
            (
                &ISTIO_TASK_FILTER.replace("max_tokens: 4", "max_tokens: -4"),
                "spec.configPatches[0].patch.value.typed_config.token_bucket.max_tokens",
            ),
            (
                &ISTIO_TASK_FILTER.replace(
                    "stat_prefix:",
                    "descriptors: []\n              stat_prefix:",
                ),
                "spec.configPatches[0].patch.value.typed_config.descriptors",
            ),
            (
                &ISTIO_TASK_ROUTE.replace("inbound|http|9080", "outbound|9080||x"),
                "spec.configPatches[1].match.routeConfiguration.vhost.name",
            ),
            (
                &ISTIO_TASK_FILTER.replace("SIDECAR_INBOUND", "SIDECAR_OUTBOUND"),
                "spec.configPatches[0].match.context",
            ),
        ];
        for (yaml, field) in cases {
            let errs = build(yaml).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].field, field, "{}", errs[0]);
        }
    }

    #[test]
    fn other_envoy_filters_are_noted_not_applied() {
        let set = crate::loader::load_str(
            Path::new("f.yaml"),
            "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: lua}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch: {operation: INSERT_BEFORE, value: {name: envoy.filters.http.lua}}\n",
        )
        .unwrap();
        let (r, notes) = RateLimits::build(&set, "istio-system").unwrap();
        assert!(r.is_empty());
        assert!(
            notes[0].contains("EnvoyFilter default/lua is not a local rate limit"),
            "{notes:?}"
        );
    }
}
