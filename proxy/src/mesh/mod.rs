//! The Istio YAML side of the proxy: what the watched directory says the mesh is.
//!
//! - [`config`]: loading the directory (all or nothing) into a [`config::MeshConfig`];
//!   [`watch`]: the watcher that reloads it when a file changes.
//! - [`model`]: services, endpoints and workloads as the listeners use them.
//! - [`registry`]: the model built from `ServiceEntry`/`WorkloadEntry` resources, and
//!   the lookups that resolve a Host or SNI to a service port.
//! - [`traffic_policy`]: DestinationRule connection-pool settings and the HTTP version
//!   toward each destination.

pub mod config;
pub(crate) mod errors;
pub mod model;
pub mod registry;
pub mod traffic_policy;
pub mod watch;
