//! Warden's node agent (`warden-agent`): node and workload attestation, key generation,
//! certificate rotation, and Envoy SDS / SPIFFE Workload API servers on unix sockets.
//!
//! Work in progress. What exists are the agent's pure decision parts, each unit-tested:
//! [`rotation`] (when to refresh a certificate, retry backoff), [`sds_state`] (what an
//! SDS stream does with each request: respond, ACK, NACK, stale), and [`attestation`]
//! (which registration entries apply to a local caller). There is no agent binary and
//! no server yet; the CA side it will call (CreateCertificate with impersonation,
//! JWT-SVID minting, the JWT bundle) is done.

pub mod attestation;
pub mod rotation;
pub mod sds_state;
