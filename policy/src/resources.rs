//! Istio resources as serde types, field for field from istio/api (`camelCase`
//! names). Unknown fields are refused, as the Kubernetes API server refuses them for
//! these CRDs. Lists that validation must tell apart from "absent" (`from: []`) are
//! `Option<Vec<_>>`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `metadata` of a resource. The fields `kubectl get -o yaml` prints are accepted;
/// Warden uses name, namespace, labels, annotations and the creation time.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name; required.
    #[serde(default)]
    pub name: String,
    /// Namespace; `default` when absent (as `kubectl apply` without `-n`).
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (`istio.io/dry-run`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; decides between PeerAuthentications of one level (oldest wins).
    pub creation_timestamp: Option<String>,
    /// Accepted and ignored.
    pub uid: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub resource_version: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub generation: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub generate_name: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub managed_fields: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub finalizers: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub owner_references: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub deletion_timestamp: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub deletion_grace_period_seconds: Option<serde_json::Value>,
    /// Accepted and ignored.
    pub self_link: Option<serde_json::Value>,
}

/// A resource: `apiVersion`, `kind`, `metadata`, `spec` (`status` is ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource<S> {
    /// e.g. `security.istio.io/v1`.
    pub api_version: String,
    /// e.g. `AuthorizationPolicy`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The spec; `spec: {}` and an absent spec are the same.
    #[serde(default)]
    pub spec: S,
    /// Ignored (present in `kubectl get -o yaml`).
    pub status: Option<serde_json::Value>,
}

impl<S> Resource<S> {
    /// The namespace, `default` when unset.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

/// `selector` of workload-scoped resources.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `targetRef` / `targetRefs[]` (Gateway API attachment; sidecars ignore such policies).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    pub namespace: Option<String>,
}

/// Whether a policy is attached by `targetRef`/`targetRefs` (to a gateway, waypoint or
/// service): sidecars ignore such policies (istio/istio
/// `pilot/pkg/model/policyattachment.go` `ShouldAttachPolicy`).
pub fn has_target_refs(
    target_ref: Option<&PolicyTargetReference>,
    target_refs: Option<&Vec<PolicyTargetReference>>,
) -> bool {
    target_ref.is_some() || target_refs.is_some_and(|t| !t.is_empty())
}

/// `AuthorizationPolicy.action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Action {
    /// Allow matching requests (the default).
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// Deny matching requests.
    #[serde(rename = "DENY")]
    Deny,
    /// Mark matching requests for audit logging; never changes the decision.
    #[serde(rename = "AUDIT")]
    Audit,
    /// Ask an external authorizer (`provider`) about matching requests.
    #[serde(rename = "CUSTOM")]
    Custom,
}

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workloads it applies to; none = the whole namespace (mesh in the root namespace).
    pub selector: Option<WorkloadSelector>,
    /// Gateway API attachment.
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway API attachments.
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// Rules, OR-ed; absent = matches nothing.
    pub rules: Option<Vec<Rule>>,
    /// Action.
    #[serde(default)]
    pub action: Action,
    /// The external authorizer of a CUSTOM policy.
    pub provider: Option<Provider>,
}

/// `provider` of a CUSTOM policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Provider {
    /// A MeshConfig extension provider's name.
    #[serde(default)]
    pub name: String,
}

/// One rule: (any `from`) AND (any `to`) AND (every `when`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Sources.
    pub from: Option<Vec<RuleFrom>>,
    /// Operations.
    pub to: Option<Vec<RuleTo>>,
    /// Conditions.
    pub when: Option<Vec<Condition>>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    /// The source.
    pub source: Option<Source>,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    /// The operation.
    pub operation: Option<Operation>,
}

/// Who sends the request; set fields AND-ed, values OR-ed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Peer identities `<td>/ns/<ns>/sa/<sa>`.
    pub principals: Option<Vec<String>>,
    /// Negated principals.
    pub not_principals: Option<Vec<String>>,
    /// JWT principals `<iss>/<sub>`.
    pub request_principals: Option<Vec<String>>,
    /// Negated request principals.
    pub not_request_principals: Option<Vec<String>>,
    /// Peer namespaces (from the peer identity).
    pub namespaces: Option<Vec<String>>,
    /// Negated namespaces.
    pub not_namespaces: Option<Vec<String>>,
    /// `ns/sa` or `sa` (the policy's namespace).
    pub service_accounts: Option<Vec<String>>,
    /// Negated service accounts.
    pub not_service_accounts: Option<Vec<String>>,
    /// Peer address, IP or CIDR.
    pub ip_blocks: Option<Vec<String>>,
    /// Negated IP blocks.
    pub not_ip_blocks: Option<Vec<String>>,
    /// Original client address (X-Forwarded-For / PROXY protocol).
    pub remote_ip_blocks: Option<Vec<String>>,
    /// Negated remote IP blocks.
    pub not_remote_ip_blocks: Option<Vec<String>>,
    /// Peer trust domains.
    pub trust_domains: Option<Vec<String>>,
    /// Negated trust domains.
    pub not_trust_domains: Option<Vec<String>>,
}

/// What the request does; set fields AND-ed, values OR-ed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// `:authority`, case-insensitive.
    pub hosts: Option<Vec<String>>,
    /// Negated hosts.
    pub not_hosts: Option<Vec<String>>,
    /// Destination (workload) ports, as strings in the API.
    pub ports: Option<Vec<String>>,
    /// Negated ports.
    pub not_ports: Option<Vec<String>>,
    /// HTTP methods, case-sensitive.
    pub methods: Option<Vec<String>>,
    /// Negated methods.
    pub not_methods: Option<Vec<String>>,
    /// Normalized paths without query, case-sensitive.
    pub paths: Option<Vec<String>>,
    /// Negated paths.
    pub not_paths: Option<Vec<String>>,
}

/// `when[]`: `key` with `values` (OR) and/or `notValues`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// e.g. `request.headers[x-token]`, `source.ip`.
    #[serde(default)]
    pub key: String,
    /// Values, OR-ed.
    pub values: Option<Vec<String>>,
    /// Negated values.
    pub not_values: Option<Vec<String>>,
}

/// `PeerAuthentication` mTLS mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MtlsMode {
    /// Inherit from the parent scope (PERMISSIVE at the top).
    #[default]
    #[serde(rename = "UNSET")]
    Unset,
    /// Plaintext only.
    #[serde(rename = "DISABLE")]
    Disable,
    /// mTLS and plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// mTLS with a client certificate only.
    #[serde(rename = "STRICT")]
    Strict,
}

/// `mtls` / `portLevelMtls` values.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mtls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads; none = namespace-wide (mesh-wide in the root namespace).
    pub selector: Option<WorkloadSelector>,
    /// The workload-level mode.
    pub mtls: Option<Mtls>,
    /// Per workload port; needs a selector.
    pub port_level_mtls: Option<BTreeMap<u32, Mtls>>,
}

/// `jwtRules[].fromHeaders[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    /// Header name.
    #[serde(default)]
    pub name: String,
    /// Prefix before the token, e.g. `Bearer `.
    #[serde(default)]
    pub prefix: String,
}

/// `jwtRules[].outputClaimToHeaders[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Header to set.
    #[serde(default)]
    pub header: String,
    /// Claim to copy.
    #[serde(default)]
    pub claim: String,
}

/// `RequestAuthentication.spec.jwtRules[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    /// Required `iss`.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the JWKS is (a local file or `file://` here).
    pub jwks_uri: Option<String>,
    /// The JWKS inline.
    pub jwks: Option<String>,
    /// Token locations in headers.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Token locations in query parameters.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Token locations in cookies.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Header to put the verified payload in (base64url).
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the forwarded request.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied to headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout.
    pub timeout: Option<String>,
    /// Claims split on spaces.
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
}

impl JwtRule {
    /// The inline JWKS, if set and not blank: it wins over `jwksUri` (jwt.proto: "jwks_uri
    /// will be ignored").
    pub fn inline_jwks(&self) -> Option<&str> {
        self.jwks.as_deref().filter(|s| !s.trim().is_empty())
    }
}

/// `RequestAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// Workloads.
    pub selector: Option<WorkloadSelector>,
    /// Gateway API attachment.
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway API attachments.
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// JWT rules.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// `ServiceEntry.spec.ports[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// Service port.
    #[serde(default)]
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`.
    #[serde(default)]
    pub protocol: String,
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints.
    pub target_port: Option<u32>,
}

/// `ServiceEntry.spec.workloadSelector`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySelector {
    /// Labels of the WorkloadEntries (or pods) behind the service.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Host names.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// VIPs / CIDRs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` (default) or `MESH_INTERNAL`.
    pub location: Option<String>,
    /// `NONE` (default), `STATIC`, `DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`.
    pub resolution: Option<String>,
    /// Inline endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Endpoints by label.
    pub workload_selector: Option<ServiceEntrySelector>,
    /// Visibility.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Accepted server identities.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `WorkloadEntry.spec` (also `ServiceEntry.spec.endpoints[]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// IP or host name.
    #[serde(default)]
    pub address: String,
    /// Port name → port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network.
    pub network: Option<String>,
    /// Locality.
    pub locality: Option<String>,
    /// Load-balancing weight.
    pub weight: Option<u32>,
    /// Service account (in the entry's namespace).
    pub service_account: Option<String>,
}
