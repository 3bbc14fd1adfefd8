//! Warden's node agent (`warden-agent`): node and workload attestation, key generation,
//! certificate rotation, and Envoy SDS / SPIFFE Workload API servers on unix sockets.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout; the agent
//! is the subject of the next issue. Nothing here is usable.
