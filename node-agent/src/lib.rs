//! Warden's node agent (`warden-agent`): node attestation, workload attestation of local
//! callers, key generation, certificate rotation, and Envoy SDS / SPIFFE Workload API
//! servers on unix sockets.
//!
//! The parts: [`config`] (flags and YAML), [`node`] (node attestation and the node
//! SVID), [`ca_client`] (the CA's APIs over TLS), [`manager`] (entries, one SVID per
//! identity, bundles, rotation tasks), [`server`] (sockets and caller attestation),
//! [`sds`] and [`workload_api`] (the two protocols), [`metrics`], [`files`] (atomic
//! file output), [`app`] (wiring) and [`client`] (`warden-agent api fetch`). The pure
//! decision parts are unit-tested on their own: [`rotation`], [`sds_state`],
//! [`attestation`].

pub mod app;
pub mod attestation;
pub mod ca_client;
pub mod client;
pub mod config;
pub mod files;
pub mod jwt;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod rotation;
pub mod sds;
pub mod sds_state;
pub mod server;
pub mod svid;
pub mod workload_api;

use std::time::SystemTime;

pub use warden_common::x509::spiffe_id_of;

/// A uniform random number in [0, 1).
pub use warden_common::backoff::random_unit;

/// A uniform random number in [-1, 1) (jitter samples).
pub fn random_sample() -> f64 {
    random_unit() * 2.0 - 1.0
}

/// `n` random bytes, hex (nonces).
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

/// RFC 3339, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| dt.unix_timestamp().to_string())
}
