//! JWT-SVIDs: the CA's ES256 signing key, the JWT bundle (JWKS) that verifies its
//! tokens, and minting.
//!
//! The key is made on first start in `<data-dir>/jwt-key.pem` (PKCS#8, 0600) and loaded
//! afterwards. Its `kid` is the RFC 7638 thumbprint of the public key, so every replica
//! given the same key file publishes the same bundle. Tokens carry `sub` (the SPIFFE
//! ID), `aud`, `exp` and `iat` (SPIFFE JWT-SVID), header `alg: ES256`, `kid`, `typ: JWT`.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

use warden_proto::SpiffeId;

use super::PkiError;

/// Seconds after which relying parties should refetch the bundle.
const REFRESH_HINT_SECS: u64 = 300;

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The CA's JWT-SVID signer.
pub struct JwtSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    jwks_json: String,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// Loads `<data_dir>/jwt-key.pem`, making it on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, PkiError> {
        let path = data_dir.join("jwt-key.pem");
        let io = |source| PkiError::Io {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let pem = Self::generate_pem()?;
            super::write_atomic(&path, pem.as_bytes(), 0o600).map_err(io)?;
            tracing::info!(path = %path.display(), "created the JWT-SVID signing key");
        }
        let pem = std::fs::read_to_string(&path).map_err(io)?;
        Self::from_pem(&pem, &path)
    }

    /// A new signing key, PKCS#8 PEM (kept in memory; the caller stores it).
    pub fn generate_pem() -> Result<String, PkiError> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| PkiError::Sign("cannot generate the JWT-SVID signing key".into()))?;
        Ok(super::pem_encode("PRIVATE KEY", pkcs8.as_ref()))
    }

    /// The signer of a PKCS#8 PEM key; `label` names where it came from in errors.
    pub fn from_pem(pem: &str, label: &Path) -> Result<Self, PkiError> {
        let rng = SystemRandom::new();
        let invalid = |message: String| PkiError::Invalid {
            path: label.to_path_buf(),
            message,
        };
        let der = crate::pki::keys::pkcs8_der(pem, label)?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| invalid(format!("not an EC P-256 key: {e}")))?;
        let public = key.public_key().as_ref();
        let (x, y) = (b64url(&public[1..33]), b64url(&public[33..65]));
        // RFC 7638: SHA-256 over the required members in lexicographic order.
        let thumbprint_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64url(
            ring::digest::digest(&ring::digest::SHA256, thumbprint_input.as_bytes()).as_ref(),
        );
        let jwks_json = serde_json::json!({
            "keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "jwt-svid", "alg": "ES256"}],
            "spiffe_sequence": 1,
            "spiffe_refresh_hint": REFRESH_HINT_SECS,
        })
        .to_string();
        Ok(Self {
            key,
            rng,
            kid,
            jwks_json,
        })
    }

    /// The key ID tokens are signed under.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWT bundle: a JWKS with the signing key.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    /// Mints a JWT-SVID for `id` and `audiences`, valid from `now` for `ttl`.
    /// Returns the token and its expiry (unix seconds).
    pub fn mint(
        &self,
        id: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        now: i64,
    ) -> Result<(String, i64), PkiError> {
        let exp = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let claims =
            serde_json::json!({"sub": id.as_str(), "aud": audiences, "exp": exp, "iat": now});
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| PkiError::Sign("JWT-SVID signing failed".into()))?;
        Ok((format!("{signing_input}.{}", b64url(sig.as_ref())), exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_with_the_published_bundle_and_the_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let signer = JwtSigner::load_or_create(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("jwt-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (token, exp) = signer
            .mint(&id, &["db".into()], Duration::from_secs(300), now)
            .unwrap();
        assert_eq!(exp, now + 300);

        // Verified by an independent implementation (jsonwebtoken on RustCrypto).
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(signer.jwks_json()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
        let jwk = jwks.find(signer.kid()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["db"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], id.as_str());

        let again = JwtSigner::load_or_create(dir.path()).unwrap();
        assert_eq!(again.kid(), signer.kid(), "the key survives restarts");
        assert_eq!(again.jwks_json(), signer.jwks_json());

        std::fs::write(dir.path().join("jwt-key.pem"), "garbage").unwrap();
        let err = JwtSigner::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("jwt-key.pem"), "{err}");
    }
}
