//! Who is asking: caller authentication for CreateCertificate, and whether a caller
//! may obtain an identity other than its own (node impersonation).
//!
//! Authenticators run in istiod's order and the first that applies decides:
//! 1. a TLS client certificate that chains to our roots (rustls verified the chain during
//!    the handshake): its SPIFFE ID;
//! 2. `authorization: Bearer <JWT>`: a Kubernetes service-account token ([`jwt`]);
//! 3. `authorization: Bearer <join token>`: a one-time node token, giving
//!    `spiffe://<td>/warden/node/<name>`.
//!
//! [`request`] applies them to a gRPC request on the certificate port and audits refusals.

pub mod jwt;
pub mod request;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use warden_proto::SpiffeId;

use crate::config::ServiceAccount;
use crate::store::{Store, StoreError};

pub use jwt::{JwtError, JwtValidator};

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
}

impl AuthMethod {
    /// Name used in audit details.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCert => "x509",
            Self::Jwt => "jwt",
            Self::JoinToken => "join_token",
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
    /// The store could not be asked.
    #[error("cannot check registration entries: {0}")]
    Store(#[from] StoreError),
}

/// Authenticates callers and authorizes impersonation.
#[derive(Debug)]
pub struct Authenticator {
    trust_domain: String,
    jwt: Option<JwtValidator>,
    trusted_node_accounts: Vec<ServiceAccount>,
    store: Store,
}

/// SHA-256 of a join token, hex: the only form the CA stores.
pub fn join_token_hash(token: &str) -> String {
    crate::pki::sha256_hex(token.as_bytes())
}

impl Authenticator {
    /// Builds the authenticator.
    pub fn new(
        trust_domain: String,
        jwt: Option<JwtValidator>,
        trusted_node_accounts: Vec<ServiceAccount>,
        store: Store,
    ) -> Self {
        Self {
            trust_domain,
            jwt,
            trusted_node_accounts,
            store,
        }
    }

    /// Authenticates a caller from its verified TLS chain and `authorization` header.
    pub async fn authenticate(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        authorization: Option<&str>,
        now: i64,
    ) -> Result<Caller, AuthError> {
        if let Some(leaf) = peer_certs.and_then(|c| c.first()) {
            let id = spiffe_id_of(leaf).map_err(AuthError::ClientCert)?;
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
            });
        }
        let Some(header) = authorization else {
            return Err(AuthError::NoCredentials);
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::BadHeader)?;
        if token.starts_with(JOIN_TOKEN_PREFIX) {
            let hash = join_token_hash(token);
            let node = self
                .store
                .join_token_node(&hash, now)
                .await?
                .ok_or(AuthError::JoinToken)?;
            let id =
                SpiffeId::for_node(&self.trust_domain, &node).map_err(|_| AuthError::JoinToken)?;
            return Ok(Caller {
                id,
                method: AuthMethod::JoinToken,
                join_token_hash: Some(hash),
            });
        }
        let validator = self.jwt.as_ref().ok_or(JwtError::NotConfigured)?;
        let id = validator.validate(token, now)?;
        Ok(Caller {
            id,
            method: AuthMethod::Jwt,
            join_token_hash: None,
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
        if !self.is_node(&caller.id) {
            return Err(ImpersonationError::NotANode {
                caller: caller.id.to_string(),
            });
        }
        if !self
            .store
            .entry_exists(caller.id.as_str(), target.as_str())
            .await?
        {
            return Err(ImpersonationError::NoEntry {
                caller: caller.id.to_string(),
                requested: target.to_string(),
            });
        }
        Ok(target)
    }
}

/// The single SPIFFE ID URI SAN of a certificate.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
    warden_common::x509::spiffe_id_of(&parsed)
}
