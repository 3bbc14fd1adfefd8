//! Warden's node agent (`warden-agent`): node attestation, workload attestation of local
//! callers, key generation, certificate rotation, and Envoy SDS / SPIFFE Workload API
//! servers on unix sockets.
//!
//! The parts: [`config`] (flags and YAML), [`node`] (node attestation and the node
//! SVID), [`ca_client`] (the CA's APIs over TLS, behind the
//! [`ca_client::CertificateAuthority`] trait), [`clock`] (wall-clock time, swapped in
//! tests), [`manager`] (entries, one SVID per identity, bundles, rotation tasks),
//! [`endpoints`] (the sockets, caller attestation, SDS and the Workload API),
//! [`kube`] (Kubernetes mode: a caller's pod from its cgroup and this node's pods),
//! [`metrics`] (counters and gauges), [`monitoring`] (`/metrics`, `/ready`,
//! `/healthz`), [`files`] (atomic file output), [`app`] (wiring) and [`client`]
//! (`warden-agent api fetch`). The pure decision parts are unit-tested on their own:
//! [`rotation`], [`endpoints::sds_state`], [`attestation`]; the manager and the node
//! against a fake CA under tokio's paused clock.

pub mod app;
pub mod attestation;
pub mod ca_client;
pub mod client;
pub mod clock;
pub mod config;
pub mod endpoints;
pub mod files;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod jwt;
pub mod kube;
pub mod manager;
pub mod metrics;
pub mod monitoring;
pub mod node;
pub mod rotation;
pub mod svid;

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
