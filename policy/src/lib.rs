//! Istio's configuration as Warden reads it, with no network I/O.
//!
//! - [`resources`]: typed serde models of the kinds Warden enforces or serves
//!   (`AuthorizationPolicy`, `PeerAuthentication`, `RequestAuthentication`,
//!   `ServiceEntry`, `WorkloadEntry`); `VirtualService`, `DestinationRule` and `Gateway`
//!   are carried as parsed JSON for the routing work that follows.
//! - [`loader`]: directories and files of multi-document YAML (and Kubernetes `List`s)
//!   into a [`loader::ConfigSet`], all or nothing, with errors that name the file, the
//!   document, the kind, `namespace/name` and the field path. It is the only module that
//!   reads files: it keeps each file's text (for field lines) and reads the JWKS files
//!   `jwksUri` names, so the engines below compile a loaded set without I/O.
//!
//! - [`authz`]: AuthorizationPolicy decisions, compiled once per config version and
//!   indexed by namespace and selector label; [`matcher`] holds the value, path
//!   template and CIDR rules it uses. It decides on the path as given: callers
//!   normalize it first with [`normalize`] (Istio's `pathNormalization` modes), and
//!   the proxy forwards that same path.
//! - [`peer_authn`]: the mTLS mode for a workload and port.
//! - [`request_authn`]: RequestAuthentication JWT validation as Envoy's `jwt_authn`.
//! - [`route`]: VirtualServices, DestinationRules and Gateways as the route table.
//! - [`ratelimit`]: local rate limits (Istio's `EnvoyFilter` for Envoy's
//!   `local_ratelimit`, and Warden's `LocalRateLimit`).
//! - [`validate`]: Istio's validation webhook rules, reported at the field's line
//!   ([`yaml_lines`]).
//!
//! `warden authz check` and `warden validate` are thin commands over these; the proxy
//! uses the same engine in its data path.

pub mod authz;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod loader;
pub mod matcher;
pub mod normalize;
pub mod peer_authn;
pub mod ratelimit;
/// An independent AuthorizationPolicy evaluator written from Istio's documentation, for
/// the differential test of [`authz`] (tests only).
#[cfg(test)]
mod reference;
pub mod request_authn;
pub mod resources;
pub mod route;
pub mod validate;
pub mod yaml_lines;
