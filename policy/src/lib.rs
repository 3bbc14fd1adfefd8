//! Istio's configuration as Warden reads it, with no network I/O.
//!
//! - [`resources`]: typed serde models of the kinds Warden enforces or serves
//!   (`AuthorizationPolicy`, `PeerAuthentication`, `RequestAuthentication`,
//!   `ServiceEntry`, `WorkloadEntry`); `VirtualService`, `DestinationRule` and `Gateway`
//!   are carried as parsed JSON for the routing work that follows.
//! - [`loader`]: directories and files of multi-document YAML (and Kubernetes `List`s)
//!   into a [`loader::ConfigSet`], all or nothing, with errors that name the file, the
//!   document, the kind, `namespace/name` and the field path.
//!
//! The policy engine (evaluation, `warden authz check`, `warden validate`) is the rest
//! of issue 4 and builds on these types.

pub mod authz;
pub mod loader;
pub mod matcher;
pub mod peer_authn;
pub mod request_authn;
pub mod resources;
pub mod validate;
pub mod yaml_lines;
