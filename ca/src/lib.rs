//! Warden's certificate authority.
//!
//! It issues X.509-SVIDs (`spiffe://<td>/ns/<ns>/sa/<sa>`) over Istio's certificate API,
//! so istio-agent and ztunnel can use it in place of istiod's CA. The parts, by folder:
//! [`config`] (flags and YAML), [`pki`] (roots, CSR checks, signing), [`auth`] (who is
//! asking, node impersonation), [`store`] (SQLite/PostgreSQL, hash-chained audit log with
//! group commit), [`certificate`] (CreateCertificate), [`jwt_svid`] (JWT-SVIDs), [`node_api`] (a node's entries for its agent), [`admin`] (the CLI's unix-socket API), [`checkpoint`] (signed audit checkpoints), [`federation`] (the bundle endpoint and foreign trust domains' bundles), [`kube`] (Kubernetes mode),
//! [`monitoring`] (istiod-named metrics, health) and [`app`] (wiring; `build` returns the
//! bound addresses).

pub mod admin;
pub mod app;
pub mod auth;
pub mod certificate;
pub mod checkpoint;
pub mod config;
pub mod federation;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod jwt_svid;
pub mod kube;
pub mod limits;
pub mod monitoring;
pub mod node_api;
pub mod pki;
pub mod plugged;
pub mod revocation;
pub mod rotation;
pub mod store;
pub mod tls;
