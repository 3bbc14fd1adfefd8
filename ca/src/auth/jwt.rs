//! Bearer-token (JWT) validation against a JWKS file: the path istio-agent and ztunnel
//! use when they present a Kubernetes service-account token.
//!
//! Signature (RS256 or ES256), issuer, audience, expiry and not-before are checked;
//! a Kubernetes token's `sub` and `kubernetes.io` claim must agree and give the
//! identity `spiffe://<td>/ns/<ns>/sa/<sa>`. Verified tokens are cached by their
//! SHA-256 until they expire, so a client that renews with the same projected token
//! pays for the signature check once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use warden_proto::SpiffeId;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// Entries kept in the verified-token cache before it is cleared.
const CACHE_CAPACITY: usize = 16_384;

/// Why a bearer token is refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No JWKS was configured, so no token can be trusted.
    #[error("bearer tokens are not accepted: the CA has no --jwks configured")]
    NotConfigured,
    /// The token is not a well-formed JWS.
    #[error("the bearer token is not a valid JWT: {0}")]
    Malformed(String),
    /// `alg` other than RS256 or ES256.
    #[error("the bearer token is signed with {0}; only RS256 and ES256 are accepted")]
    Algorithm(String),
    /// No key in the JWKS matches the token's `kid` and algorithm.
    #[error("no key in the JWKS matches the token (kid {0:?})")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the bearer token's signature does not verify")]
    Signature,
    /// Expired.
    #[error("the bearer token has expired")]
    Expired,
    /// `nbf` in the future.
    #[error("the bearer token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// Wrong issuer.
    #[error("the bearer token's issuer is not {0:?}")]
    Issuer(String),
    /// Wrong audience.
    #[error("the bearer token's audience is none of {0:?}")]
    Audience(Vec<String>),
    /// A required claim is missing or malformed.
    #[error("the bearer token's {0} claim is missing or malformed")]
    Claim(String),
    /// Not a Kubernetes service-account token.
    #[error(
        "the bearer token is not a Kubernetes service-account token: {0} (expected sub system:serviceaccount:NS:SA and a matching kubernetes.io claim)"
    )]
    NotServiceAccount(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubeClaim>,
}

#[derive(Debug, Deserialize)]
struct KubeClaim {
    namespace: String,
    serviceaccount: NamedRef,
}

#[derive(Debug, Deserialize)]
struct NamedRef {
    name: String,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Validates bearer tokens for one trust domain.
pub struct JwtValidator {
    keys: Vec<Key>,
    issuer: String,
    audiences: Vec<String>,
    trust_domain: String,
    cache: Mutex<HashMap<[u8; 32], (SpiffeId, i64)>>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl JwtValidator {
    /// Loads a JWKS file. Keys that are neither RSA nor EC P-256 are skipped with a note.
    pub fn from_file(
        path: &Path,
        issuer: &str,
        audiences: &[String],
        trust_domain: &str,
    ) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_jwks_json(&text, issuer, audiences, trust_domain)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Builds a validator from JWKS JSON.
    pub fn from_jwks_json(
        jwks: &str,
        issuer: &str,
        audiences: &[String],
        trust_domain: &str,
    ) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            use jsonwebtoken::jwk::AlgorithmParameters as P;
            let alg = match &jwk.algorithm {
                P::RSA(_) => Algorithm::RS256,
                P::EllipticCurve(ec) if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => {
                    tracing::warn!(
                        index = i,
                        "JWKS key skipped: only RSA and EC P-256 keys are used"
                    );
                    continue;
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS has no usable RSA or EC P-256 key".into());
        }
        Ok(Self {
            keys,
            issuer: issuer.to_string(),
            audiences: audiences.to_vec(),
            trust_domain: trust_domain.to_string(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Validates a token and returns the service account identity it proves.
    pub fn validate(&self, token: &str, now: i64) -> Result<SpiffeId, JwtError> {
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| JwtError::Malformed("digest".into()))?;
        if let Ok(cache) = self.cache.lock()
            && let Some((id, exp)) = cache.get(&digest)
            && now < exp + LEEWAY_SECS as i64
        {
            return Ok(id.clone());
        }
        let (id, exp) = self.validate_uncached(token)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, (_, exp)| now < *exp);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(digest, (id.clone(), exp));
        }
        Ok(id)
    }

    fn validate_uncached(&self, token: &str) -> Result<(SpiffeId, i64), JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey(header.kid.clone().unwrap_or_default()));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut last = JwtError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    last = self.map_error(e.kind());
                    // Only a bad signature is worth trying the next key for.
                    if last != JwtError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn map_error(&self, kind: &ErrorKind) -> JwtError {
        match kind {
            ErrorKind::InvalidSignature => JwtError::Signature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidIssuer => JwtError::Issuer(self.issuer.clone()),
            ErrorKind::InvalidAudience => JwtError::Audience(self.audiences.clone()),
            ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
                JwtError::Claim(c.clone())
            }
            ErrorKind::InvalidAlgorithm => JwtError::UnknownKey(String::new()),
            other => JwtError::Malformed(format!("{other:?}")),
        }
    }

    fn identity(&self, claims: Claims) -> Result<(SpiffeId, i64), JwtError> {
        let rest = claims
            .sub
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(|| JwtError::NotServiceAccount(format!("sub is {:?}", claims.sub)))?;
        let (ns, sa) = rest
            .split_once(':')
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
            .ok_or_else(|| JwtError::NotServiceAccount(format!("sub is {:?}", claims.sub)))?;
        let kube = claims
            .kubernetes
            .ok_or_else(|| JwtError::NotServiceAccount("no kubernetes.io claim".into()))?;
        if kube.namespace != ns || kube.serviceaccount.name != sa {
            return Err(JwtError::NotServiceAccount(format!(
                "sub names {ns}/{sa} but kubernetes.io names {}/{}",
                kube.namespace, kube.serviceaccount.name
            )));
        }
        let id = SpiffeId::for_service_account(&self.trust_domain, ns, sa)
            .map_err(|e| JwtError::NotServiceAccount(e.to_string()))?;
        Ok((id, claims.exp))
    }
}
