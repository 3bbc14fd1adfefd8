//! Who is asking: caller authentication for CreateCertificate, and whether a caller
//! may obtain an identity other than its own (node impersonation).
//!
//! Authenticators run in istiod's order and the first that applies decides:
//! 1. a TLS client certificate that chains to our roots (rustls verified the chain during
//!    the handshake): its SPIFFE ID;
//! 2. `authorization: Bearer <JWT>`: a Kubernetes service-account token, reviewed by the
//!    API server in Kubernetes mode ([`crate::kube::token_review`]) or checked against
//!    `--jwks` otherwise ([`jwt`]); in Kubernetes mode a `clusterid` metadata value must
//!    name this cluster;
//! 3. `authorization: Bearer <join token>`: a one-time node token, giving
//!    `spiffe://<td>/warden/node/<name>`.
//!
//! [`request`] applies them to a gRPC request on the certificate port and audits refusals.

pub mod flood;
pub mod jwt;
pub mod kubernetes;
pub mod request;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use warden_proto::SpiffeId;

use crate::config::ServiceAccount;
use crate::store::{Store, StoreError};

pub use jwt::{JwtError, JwtValidator};
pub use kubernetes::KubeAuth;

use crate::kube::token_review::{BoundPod, ReviewError};

/// Prefix of Warden join tokens, so they are never mistaken for JWTs.
pub const JOIN_TOKEN_PREFIX: &str = "wjt_";

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// TLS client certificate.
    ClientCert,
    /// Bearer JWT.
    Jwt,
    /// One-time join token.
    JoinToken,
    /// A service-account token the Kubernetes API server reviewed.
    KubernetesToken,
}

impl AuthMethod {
    /// Name used in audit details.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCert => "x509",
            Self::Jwt => "jwt",
            Self::JoinToken => "join_token",
            Self::KubernetesToken => "k8s_token_review",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's own identity.
    pub id: SpiffeId,
    /// How it was proven.
    pub method: AuthMethod,
    /// For join tokens: the token's hash, spent when the certificate is recorded.
    pub join_token_hash: Option<String>,
    /// For reviewed Kubernetes tokens: the pod the token is bound to.
    pub pod: Option<BoundPod>,
}

/// Why a caller is not authenticated. Never contains a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Nothing to authenticate with.
    #[error(
        "no credentials: present a client certificate from this CA, or an authorization: Bearer token"
    )]
    NoCredentials,
    /// The authorization header is not `Bearer <token>`.
    #[error("the authorization header is not \"Bearer <token>\"")]
    BadHeader,
    /// The client certificate carries no usable SPIFFE ID.
    #[error("the client certificate has no usable SPIFFE ID: {0}")]
    ClientCert(String),
    /// The bearer JWT is refused.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The join token is unknown, used or expired.
    #[error("the join token is unknown, already used, or expired")]
    JoinToken,
    /// The store could not be asked.
    #[error("cannot check the join token: {0}")]
    Store(#[from] StoreError),
    /// The Kubernetes API server refused the token, or could not be asked.
    #[error(transparent)]
    Kubernetes(#[from] ReviewError),
    /// The request names another cluster.
    #[error(
        "metadata clusterid {got:?} is not this cluster ({expected:?}); send this cluster's ID or none"
    )]
    ClusterId {
        /// What the request said.
        got: String,
        /// `--cluster-id`.
        expected: String,
    },
}

impl AuthError {
    /// Whether the refusal is the CA's inability to decide (answered `Unavailable`, so
    /// clients retry) rather than a verdict on the caller (`Unauthenticated`).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Store(_) | Self::Kubernetes(ReviewError::Unavailable(_))
        )
    }
}

/// Why an impersonation request is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImpersonationError {
    /// The requested ID is not a workload SPIFFE ID of this trust domain.
    #[error(
        "ImpersonatedIdentity {requested:?} is not a workload SPIFFE ID in trust domain {td:?}: {reason}"
    )]
    BadId {
        /// What was asked for.
        requested: String,
        /// Our trust domain.
        td: String,
        /// Why.
        reason: String,
    },
    /// The caller is neither a node SVID nor a trusted node account.
    #[error(
        "{caller} may not impersonate: only node SVIDs (spiffe://<td>/warden/node/...) and service accounts in --trusted-node-accounts may"
    )]
    NotANode {
        /// The caller.
        caller: String,
    },
    /// No registration entry lets this node obtain the identity.
    #[error(
        "{caller} may not obtain {requested}: no registration entry has parent {caller} and SPIFFE ID {requested}"
    )]
    NoEntry {
        /// The caller.
        caller: String,
        /// What was asked for.
        requested: String,
    },
    /// Node authorization in Kubernetes refused it; the text names the failed condition.
    #[error("{0}")]
    Kubernetes(String),
    /// The store could not be asked.
    #[error("cannot check registration entries: {0}")]
    Store(#[from] StoreError),
    /// The CA's view of the cluster is not ready (pod index not synced).
    #[error("{0}")]
    Unavailable(String),
}

impl ImpersonationError {
    /// Whether the refusal is the CA's inability to decide (`Unavailable`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Unavailable(_))
    }
}

/// Authenticates callers and authorizes impersonation.
#[derive(Debug)]
pub struct Authenticator {
    trust_domain: String,
    jwt: Option<JwtValidator>,
    trusted_node_accounts: Vec<ServiceAccount>,
    store: Store,
    kube: Option<KubeAuth>,
    /// The bound on authentication-failure audit rows.
    flood: std::sync::Arc<flood::FloodGuard>,
    /// Revoked identities and serials: a revoked client certificate does not
    /// authenticate.
    revoked: Option<std::sync::Arc<crate::revocation::RevokedSet>>,
}

/// SHA-256 of a join token, hex: the only form the CA stores.
pub fn join_token_hash(token: &str) -> String {
    crate::pki::sha256_hex(token.as_bytes())
}

/// The credential an `authorization` header carries, read before anything is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// A join token (`wjt_...`): only its hash is looked up, never the token.
    JoinToken {
        /// [`join_token_hash`] of the token.
        hash: String,
    },
    /// Any other token: a JWT, for the token reviewer or the JWKS.
    Jwt(&'a str),
}

/// Reads `Bearer <token>` (or `bearer`), the token trimmed and not empty, and tells a
/// join token from a JWT by its prefix ([`JOIN_TOKEN_PREFIX`]).
pub fn bearer(header: &str) -> Result<Bearer<'_>, AuthError> {
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::BadHeader)?;
    if token.starts_with(JOIN_TOKEN_PREFIX) {
        return Ok(Bearer::JoinToken {
            hash: join_token_hash(token),
        });
    }
    Ok(Bearer::Jwt(token))
}

impl Authenticator {
    /// Builds the authenticator.
    pub fn new(
        trust_domain: String,
        jwt: Option<JwtValidator>,
        trusted_node_accounts: Vec<ServiceAccount>,
        store: Store,
        kube: Option<KubeAuth>,
    ) -> Self {
        Self {
            trust_domain,
            jwt,
            trusted_node_accounts,
            store,
            kube,
            flood: Default::default(),
            revoked: None,
        }
    }

    /// Refuses client certificates (and whole identities) revoked in `revoked`.
    #[must_use]
    pub fn with_revoked(mut self, revoked: std::sync::Arc<crate::revocation::RevokedSet>) -> Self {
        self.revoked = Some(revoked);
        self
    }

    /// The bound on authentication-failure audit rows ([`flood`]); its task writes the
    /// aggregates.
    pub fn flood_guard(&self) -> std::sync::Arc<flood::FloodGuard> {
        self.flood.clone()
    }

    /// Authenticates a caller from its verified TLS chain, `authorization` header and
    /// `clusterid` metadata.
    pub async fn authenticate(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        authorization: Option<&str>,
        cluster_id: Option<&str>,
        now: i64,
    ) -> Result<Caller, AuthError> {
        if let Some(leaf) = peer_certs.and_then(|c| c.first()) {
            let id = spiffe_id_of(leaf).map_err(AuthError::ClientCert)?;
            if let Some(serial) = self
                .revoked
                .as_ref()
                .and_then(|r| r.client_cert(leaf, id.as_str()))
            {
                return Err(AuthError::ClientCert(format!(
                    "the client certificate of {id} (serial {serial}) is revoked"
                )));
            }
            if id.trust_domain() != self.trust_domain {
                return Err(AuthError::ClientCert(format!(
                    "{id} is not in trust domain {:?}",
                    self.trust_domain
                )));
            }
            return Ok(Caller {
                id,
                method: AuthMethod::ClientCert,
                join_token_hash: None,
                pod: None,
            });
        }
        let Some(header) = authorization else {
            return Err(AuthError::NoCredentials);
        };
        let token = match bearer(header)? {
            Bearer::Jwt(token) => token,
            Bearer::JoinToken { hash } => {
                let node = self
                    .store
                    .join_token_node(&hash, now)
                    .await?
                    .ok_or(AuthError::JoinToken)?;
                let id = SpiffeId::for_node(&self.trust_domain, &node)
                    .map_err(|_| AuthError::JoinToken)?;
                return Ok(Caller {
                    id,
                    method: AuthMethod::JoinToken,
                    join_token_hash: Some(hash),
                    pod: None,
                });
            }
        };
        if let Some(kube) = &self.kube {
            if let Some(got) = cluster_id.filter(|c| !c.is_empty() && *c != kube.cluster_id) {
                return Err(AuthError::ClusterId {
                    got: got.to_string(),
                    expected: kube.cluster_id.clone(),
                });
            }
            let reviewed = kube.reviewer.review(token, now).await?;
            let id = SpiffeId::for_service_account(
                &self.trust_domain,
                &reviewed.namespace,
                &reviewed.service_account,
            )
            .map_err(|e| {
                ReviewError::Denied(format!("the reviewed account is not a SPIFFE path: {e}"))
            })?;
            return Ok(Caller {
                id,
                method: AuthMethod::KubernetesToken,
                join_token_hash: None,
                pod: reviewed.pod,
            });
        }
        let validator = self.jwt.as_ref().ok_or(JwtError::NotConfigured)?;
        let id = validator.validate(token, now)?;
        Ok(Caller {
            id,
            method: AuthMethod::Jwt,
            join_token_hash: None,
            pod: None,
        })
    }

    /// Whether `caller` may act as a node: a node SVID, or a trusted node account.
    pub fn is_node(&self, caller: &SpiffeId) -> bool {
        if caller.trust_domain() != self.trust_domain {
            return false;
        }
        if caller.node_name().is_some() {
            return true;
        }
        caller.service_account().is_some_and(|(ns, sa)| {
            self.trusted_node_accounts
                .iter()
                .any(|t| t.namespace == ns && t.name == sa)
        })
    }

    /// Authorizes `caller` to obtain `requested` on a workload's behalf: the caller must
    /// be a node and the parent of a registration entry for that SPIFFE ID.
    pub async fn authorize_impersonation(
        &self,
        caller: &Caller,
        requested: &str,
    ) -> Result<SpiffeId, ImpersonationError> {
        let bad = |reason: String| ImpersonationError::BadId {
            requested: requested.to_string(),
            td: self.trust_domain.clone(),
            reason,
        };
        let target = SpiffeId::parse_workload(requested).map_err(|e| bad(e.to_string()))?;
        if target.trust_domain() != self.trust_domain {
            return Err(bad("foreign trust domain".into()));
        }
        // Kubernetes node attestation: an agent's reviewed token buys its node SVID.
        if let (Some(kube), Some(node)) = (&self.kube, target.node_name()) {
            kube.attest_node(caller, node)?;
            return Ok(target);
        }
        if !self.is_node(&caller.id) {
            return Err(ImpersonationError::NotANode {
                caller: caller.id.to_string(),
            });
        }
        // Kubernetes node authorization first; registration entries may still allow
        // what it does not.
        let on_node = match &self.kube {
            Some(kube) => match kube.authorize_on_node(caller, &target) {
                Ok(()) => return Ok(target),
                Err(e) => Some(e),
            },
            None => None,
        };
        if self
            .store
            .entry_exists(caller.id.as_str(), target.as_str())
            .await?
        {
            return Ok(target);
        }
        Err(match on_node {
            Some(ImpersonationError::Kubernetes(reason)) => {
                ImpersonationError::Kubernetes(format!(
                    "{} may not obtain {target}: {reason}, and no registration entry has parent {} and SPIFFE ID {target}",
                    caller.id, caller.id
                ))
            }
            Some(other) => other,
            None => ImpersonationError::NoEntry {
                caller: caller.id.to_string(),
                requested: target.to_string(),
            },
        })
    }
}

/// The single SPIFFE ID URI SAN of a certificate.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
    warden_common::x509::spiffe_id_of(&parsed)
}
