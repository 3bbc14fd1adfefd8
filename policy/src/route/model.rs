//! Typed models of `VirtualService`, `DestinationRule` and `Gateway` specs
//! (`networking/v1alpha3/virtual_service.proto`, `destination_rule.proto`,
//! `gateway.proto`), with the proto JSON field names. Unknown fields are refused, as
//! Istio's CRD schema does. Traffic policies stay JSON: they are merged and printed with the proto's field names,
//! not interpreted here.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::gateway::TlsMode;

/// `VirtualService.spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts the rules apply to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways and sidecars (`mesh`) the rules apply to; empty means `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP rules, in order.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TLS rules (by SNI), in order.
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// TCP rules, in order.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces that see it (`*`, `.`, or names); empty means every namespace.
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// `HTTPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// For logs and `route_name`.
    pub name: Option<String>,
    /// Match conditions: OR between blocks; none matches everything.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly.
    pub direct_response: Option<DirectResponse>,
    /// Hand the decision to another VirtualService.
    pub delegate: Option<Delegate>,
    /// Path and authority rewrite.
    pub rewrite: Option<Rewrite>,
    /// Request timeout (`0s`/absent: none).
    pub timeout: Option<String>,
    /// Retry policy.
    pub retries: Option<Retries>,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Mirror destination (single).
    pub mirror: Option<Destination>,
    /// Share of requests mirrored.
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    pub mirror_percent: Option<u32>,
    /// Several mirrors.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// CORS, applied by the client's proxy (or the gateway) as Envoy's CORS filter.
    pub cors_policy: Option<CorsPolicy>,
    /// Header operations.
    pub headers: Option<Headers>,
}

/// `CorsPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated: exact origins, used when `allowOrigins` is empty.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// Origins allowed (any matcher matching).
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// `Access-Control-Allow-Methods`.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age` (a duration, whole seconds).
    pub max_age: Option<String>,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credentials: Option<bool>,
    /// What happens to a preflight from an origin not allowed (Istio 1.22 on).
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// `CorsPolicy.UnmatchedPreflights`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UnmatchedPreflights {
    /// Unset: forwarded.
    Unspecified,
    /// Forwarded to the app (Envoy's default).
    #[default]
    Forward,
    /// Answered by the proxy, without `Access-Control-Allow-Origin`.
    Ignore,
}

/// `HTTPMatchRequest`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// Name, prefixed to the route's in logs.
    pub name: Option<String>,
    /// The path.
    pub uri: Option<StringMatch>,
    /// The URI scheme.
    pub scheme: Option<StringMatch>,
    /// The method.
    pub method: Option<StringMatch>,
    /// The authority (Host).
    pub authority: Option<StringMatch>,
    /// Header conditions (names lowercase).
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// The destination port.
    pub port: Option<u32>,
    /// Client workload labels.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive `uri` exact and prefix matches.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Client namespace.
    pub source_namespace: Option<String>,
    /// Stats prefix (carried).
    pub stat_prefix: Option<String>,
}

/// `StringMatch`: one of `exact`, `prefix`, `regex` (RE2, whole value); none set is a
/// presence match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Exact value.
    pub exact: Option<String>,
    /// Prefix.
    pub prefix: Option<String>,
    /// RE2 regular expression, matched against the whole value.
    pub regex: Option<String>,
}

/// `Destination`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host (short names resolve in the VirtualService's namespace).
    pub host: String,
    /// DestinationRule subset.
    pub subset: Option<String>,
    /// Port.
    pub port: Option<PortSelector>,
}

/// `PortSelector`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    pub number: u32,
}

/// `HTTPRouteDestination`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where.
    pub destination: Destination,
    /// Share of traffic, relative to the route's other destinations.
    pub weight: Option<i64>,
    /// Header operations for this destination.
    pub headers: Option<Headers>,
}

/// `Headers`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// On the request.
    pub request: Option<HeaderOperations>,
    /// On the response.
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `HTTPRedirect`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// The new path (replaces the matched prefix for a prefix match, else the path).
    pub uri: Option<String>,
    /// The new authority.
    pub authority: Option<String>,
    /// The new port.
    pub port: Option<u32>,
    /// `FROM_PROTOCOL_DEFAULT` or `FROM_REQUEST_PORT`.
    pub derive_port: Option<String>,
    /// The new scheme.
    pub scheme: Option<String>,
    /// Status (default 301).
    pub redirect_code: Option<u32>,
    /// Replaces the matched prefix (instead of `uri`, which replaces the whole path).
    pub prefix_rewrite: Option<String>,
}

/// `HTTPDirectResponse`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// Status.
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
}

/// `HTTPBody`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBody {
    /// Text.
    pub string: Option<String>,
    /// Base64.
    pub bytes: Option<String>,
}

/// `Delegate`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegate {
    /// The delegate VirtualService's name.
    pub name: String,
    /// Its namespace (default: the root's).
    pub namespace: Option<String>,
}

/// `HTTPRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// New path, or new prefix for a prefix match.
    pub uri: Option<String>,
    /// New authority.
    pub authority: Option<String>,
    /// Regex rewrite of the path.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Replacement (`\1` groups).
    pub rewrite: String,
}

/// `HTTPRetry`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries allowed (0: none).
    pub attempts: Option<i64>,
    /// Timeout per try.
    pub per_try_timeout: Option<String>,
    /// Conditions, comma separated.
    pub retry_on: Option<String>,
    /// Retry in other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts tried before.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base backoff interval.
    pub backoff: Option<String>,
}

/// `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay.
    pub delay: Option<FaultDelay>,
    /// Abort.
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    pub fixed_delay: Option<String>,
    /// Exponential delay (unsupported by Istio; refused).
    pub exponential_delay: Option<String>,
    /// Share of requests.
    pub percentage: Option<Percent>,
    /// Deprecated integer share.
    pub percent: Option<i64>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status.
    pub http_status: Option<u32>,
    /// gRPC status name, e.g. `UNAVAILABLE`.
    pub grpc_status: Option<String>,
    /// HTTP/2 error (unsupported by Istio).
    pub http2_error: Option<String>,
    /// Share of requests.
    pub percentage: Option<Percent>,
}

/// `Percent`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// 0.0 to 100.0.
    #[serde(default)]
    pub value: f64,
}

/// `HTTPMirrorPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where.
    pub destination: Destination,
    /// Share of requests (absent: all).
    pub percentage: Option<Percent>,
}

/// `TLSRoute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRoute {
    /// Conditions.
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    /// Destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `TCPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions.
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    /// Destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `L4MatchAttributes` and `TLSMatchAttributes` together.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Match {
    /// TLS only: SNI values.
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDRs.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    pub port: Option<u32>,
    /// Client workload labels.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Client namespace.
    pub source_namespace: Option<String>,
    /// Deprecated.
    pub source_subnet: Option<String>,
}

/// `RouteDestination`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Share.
    pub weight: Option<i64>,
}

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service.
    #[serde(default)]
    pub host: String,
    /// Policy for every subset and port.
    pub traffic_policy: Option<serde_json::Value>,
    /// Named subsets.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Namespaces that see it.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Workloads it applies to (client side).
    pub workload_selector: Option<serde_json::Value>,
}

/// `Subset`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name, referenced by routes.
    pub name: String,
    /// Endpoint labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides of the DestinationRule's policy.
    pub traffic_policy: Option<serde_json::Value>,
}

/// `Gateway.spec` (`networking/v1alpha3/gateway.proto`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Gateway workloads it applies to (labels); absent: every gateway workload.
    pub selector: Option<BTreeMap<String, String>>,
    /// What it listens on.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// `Server`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port (required).
    pub port: ServerPort,
    /// Address or `unix://` socket to bind.
    pub bind: Option<String>,
    /// Hosts served: `host`, `ns/host`, `./host`, `*/host`, wildcards.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS settings.
    pub tls: Option<ServerTlsSettings>,
    /// Name, for stats.
    pub name: Option<String>,
    /// Loopback endpoint for sidecar ingress (carried).
    pub default_endpoint: Option<String>,
}

/// `Port` of a server.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`.
    #[serde(default)]
    pub protocol: String,
    /// Label of the port (unique within the Gateway).
    #[serde(default)]
    pub name: String,
    /// Deprecated, without effect on gateways.
    pub target_port: Option<u32>,
}

/// `ServerTLSSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect plain-text HTTP to HTTPS (301).
    #[serde(default)]
    pub https_redirect: bool,
    /// How TLS is handled (default `PASSTHROUGH`).
    #[serde(default)]
    pub mode: TlsMode,
    /// Server certificate file.
    pub server_certificate: Option<String>,
    /// Its private key file.
    pub private_key: Option<String>,
    /// CA bundle verifying client certificates.
    pub ca_certificates: Option<String>,
    /// Certificate revocation list.
    pub ca_crl: Option<String>,
    /// Secret with the certificate, key and CAs.
    pub credential_name: Option<String>,
    /// Up to two such secrets.
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// ConfigMap or secret with the client CAs.
    pub ca_cert_credential_name: Option<String>,
    /// Up to two certificate/key pairs.
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Client certificate SANs accepted.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Client certificate SPKI hashes accepted.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// Client certificate hashes accepted.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    pub min_protocol_version: Option<String>,
    /// Maximum TLS version.
    pub max_protocol_version: Option<String>,
    /// Cipher suites.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// ECDH curves.
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    /// Accept any client certificate.
    pub insecure_skip_verify: Option<bool>,
}

/// `ServerTLSSettings.TLSCertificate`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Certificate file.
    pub server_certificate: Option<String>,
    /// Key file.
    pub private_key: Option<String>,
    /// CA bundle.
    pub ca_certificates: Option<String>,
}
