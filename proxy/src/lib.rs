//! Warden's sidecar and gateway proxy (`warden-proxy`): mutual TLS with SVIDs from the
//! node agent, Istio AuthorizationPolicy / PeerAuthentication / RequestAuthentication
//! enforcement, routing and telemetry.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout. Nothing
//! here is usable.
