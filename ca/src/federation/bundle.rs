//! The SPIFFE bundle document (SPIFFE Trust Domain and Bundle, section 4): a JWK Set
//! whose keys are the trust domain's X.509 roots (`use: x509-svid`, the certificate in
//! `x5c`, the public key beside it) and JWT-SVID keys (`use: jwt-svid`, with `kid`),
//! plus `spiffe_sequence` and `spiffe_refresh_hint` (seconds).
//!
//! [`SpiffeBundle::to_json`] writes this trust domain's document for the bundle
//! endpoint; [`SpiffeBundle::parse`] reads a foreign one, strictly: every X.509 key must
//! carry exactly one certificate usable as a trust anchor, every JWT key a `kid` and a
//! key jsonwebtoken can use, and a document with no X.509 root is refused (nothing could
//! be verified with it). Keys of another `use` are skipped, as the spec asks.

use std::time::Duration;

use base64::Engine;
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// Largest bundle document accepted (SPIRE's bundles are a few KiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Most keys a document may hold.
const MAX_KEYS: usize = 1000;

/// A trust domain's bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct SpiffeBundle {
    /// The trust domain it is for (not in the document: the relationship names it).
    pub trust_domain: String,
    /// X.509 roots, DER.
    pub x509_roots: Vec<CertificateDer<'static>>,
    /// JWT-SVID keys, as JWK objects (`use: jwt-svid`, `kid`, key parameters).
    pub jwt_keys: Vec<Value>,
    /// `spiffe_sequence`, when the document has one.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, when the document has one.
    pub refresh_hint: Option<Duration>,
}

impl std::fmt::Debug for SpiffeBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeBundle")
            .field("trust_domain", &self.trust_domain)
            .field("x509_roots", &self.x509_roots.len())
            .field("jwt_keys", &self.jwt_keys.len())
            .field("sequence", &self.sequence)
            .field("refresh_hint", &self.refresh_hint)
            .finish()
    }
}

/// Why a bundle document was refused. Each names the key (by index) and what was
/// expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the bundle document is {0} bytes; at most {MAX_DOCUMENT_BYTES} are accepted")]
    TooLarge(usize),
    /// Not a JSON object with a `keys` array.
    #[error("the bundle document is not a JWK Set (a JSON object with a \"keys\" array): {0}")]
    NotJwks(String),
    /// Too many keys.
    #[error("the bundle document has {0} keys; at most {MAX_KEYS} are accepted")]
    TooManyKeys(usize),
    /// A key is unusable.
    #[error("keys[{index}] (use {usage:?}): {reason}")]
    Key {
        /// Its index in `keys`.
        index: usize,
        /// Its `use`.
        usage: String,
        /// What is wrong.
        reason: String,
    },
    /// `spiffe_sequence` or `spiffe_refresh_hint` is not a non-negative integer.
    #[error("{0} must be a non-negative integer")]
    BadNumber(&'static str),
    /// No X.509 root at all.
    #[error("the bundle has no X.509 root (no key with \"use\": \"x509-svid\")")]
    NoRoots,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK public key parameters of a certificate's key (EC P-256/P-384, RSA).
fn public_jwk(der: &[u8]) -> Result<Map<String, Value>, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let spki = cert.public_key();
    let parsed = spki
        .parsed()
        .map_err(|e| format!("unreadable public key: {e}"))?;
    let mut jwk = Map::new();
    match parsed {
        PublicKey::EC(point) => {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let (crv, len) = match curve_oid.as_str() {
                "1.2.840.10045.3.1.7" => ("P-256", 32),
                "1.2.840.10045.3.1.34" | "1.3.132.0.34" => ("P-384", 48),
                other => return Err(format!("EC curve {other} is not P-256 or P-384")),
            };
            let data = point.data();
            if data.len() != 1 + 2 * len || data[0] != 4 {
                return Err("EC point is not uncompressed".into());
            }
            jwk.insert("kty".into(), json!("EC"));
            jwk.insert("crv".into(), json!(crv));
            jwk.insert("x".into(), json!(b64url(&data[1..=len])));
            jwk.insert("y".into(), json!(b64url(&data[1 + len..])));
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| -> Vec<u8> {
                let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            };
            jwk.insert("kty".into(), json!("RSA"));
            jwk.insert("n".into(), json!(b64url(&strip(rsa.modulus))));
            jwk.insert("e".into(), json!(b64url(&strip(rsa.exponent))));
        }
        _ => return Err("the key is neither EC nor RSA".into()),
    }
    Ok(jwk)
}

impl SpiffeBundle {
    /// The document, as the bundle endpoint serves it.
    pub fn to_json(&self) -> Result<String, String> {
        let mut keys = Vec::with_capacity(self.x509_roots.len() + self.jwt_keys.len());
        for (i, root) in self.x509_roots.iter().enumerate() {
            let mut jwk = public_jwk(root).map_err(|e| format!("root {i}: {e}"))?;
            jwk.insert("use".into(), json!("x509-svid"));
            jwk.insert(
                "x5c".into(),
                json!([base64::engine::general_purpose::STANDARD.encode(root)]),
            );
            keys.push(Value::Object(jwk));
        }
        keys.extend(self.jwt_keys.iter().cloned());
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        if let Some(seq) = self.sequence {
            doc.insert("spiffe_sequence".into(), json!(seq));
        }
        if let Some(hint) = self.refresh_hint {
            doc.insert("spiffe_refresh_hint".into(), json!(hint.as_secs()));
        }
        serde_json::to_string_pretty(&Value::Object(doc)).map_err(|e| e.to_string())
    }

    /// Reads a document for `trust_domain`.
    pub fn parse(trust_domain: &str, bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(BundleError::TooLarge(bytes.len()));
        }
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| BundleError::NotJwks(e.to_string()))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| BundleError::NotJwks("not an object".into()))?;
        let keys = obj
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| BundleError::NotJwks("no \"keys\" array".into()))?;
        if keys.len() > MAX_KEYS {
            return Err(BundleError::TooManyKeys(keys.len()));
        }
        let number = |name: &'static str| -> Result<Option<u64>, BundleError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(BundleError::BadNumber(name)),
            }
        };
        let sequence = number("spiffe_sequence")?;
        let refresh_hint = number("spiffe_refresh_hint")?.map(Duration::from_secs);
        let mut x509_roots = Vec::new();
        let mut jwt_keys = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            let usage = key.get("use").and_then(Value::as_str).unwrap_or_default();
            let err = |reason: String| BundleError::Key {
                index,
                usage: usage.to_string(),
                reason,
            };
            match usage {
                "x509-svid" => {
                    let x5c = key
                        .get("x5c")
                        .and_then(Value::as_array)
                        .ok_or_else(|| err("no \"x5c\" array".into()))?;
                    let [cert] = x5c.as_slice() else {
                        return Err(err(format!(
                            "\"x5c\" must hold exactly one certificate, not {}",
                            x5c.len()
                        )));
                    };
                    let der = cert
                        .as_str()
                        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                        .ok_or_else(|| err("\"x5c\"[0] is not standard base64".into()))?;
                    let der = CertificateDer::from(der);
                    webpki::anchor_from_trusted_cert(&der)
                        .map_err(|e| err(format!("not usable as a trust anchor: {e:?}")))?;
                    // The JWK's own key parameters, when present, must be the
                    // certificate's (RFC 7517 section 4.7).
                    let cert_jwk = public_jwk(&der).map_err(err)?;
                    for (name, value) in &cert_jwk {
                        if let Some(given) = key.get(name)
                            && given != value
                        {
                            return Err(err(format!(
                                "\"{name}\" does not match the certificate's public key"
                            )));
                        }
                    }
                    x509_roots.push(der);
                }
                "jwt-svid" => {
                    let kid = key.get("kid").and_then(Value::as_str).unwrap_or_default();
                    if kid.is_empty() {
                        return Err(err("no \"kid\"".into()));
                    }
                    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone())
                        .map_err(|e| err(format!("not a usable JWK: {e}")))?;
                    jsonwebtoken::DecodingKey::from_jwk(&jwk)
                        .map_err(|e| err(format!("not a usable key: {e}")))?;
                    jwt_keys.push(key.clone());
                }
                _ => {
                    tracing::debug!(
                        trust_domain,
                        index,
                        usage,
                        "skipping a bundle key of another use"
                    );
                }
            }
        }
        if x509_roots.is_empty() {
            return Err(BundleError::NoRoots);
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            x509_roots,
            jwt_keys,
            sequence,
            refresh_hint,
        })
    }

    /// The X.509 roots as concatenated PEM.
    pub fn roots_pem(&self) -> String {
        self.x509_roots
            .iter()
            .map(|d| warden_common::files::pem_encode("CERTIFICATE", d))
            .collect()
    }

    /// The JWT keys as a JWKS document (what the agent's Workload API serves).
    pub fn jwks_json(&self) -> String {
        json!({ "keys": self.jwt_keys }).to_string()
    }

    /// Whether two bundles hold the same keys (sequence and hint aside).
    pub fn same_keys(&self, other: &Self) -> bool {
        self.x509_roots == other.x509_roots && self.jwt_keys == other.jwt_keys
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn root(alg: &'static rcgen::SignatureAlgorithm) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().clone()
    }

    fn jwt_key() -> Value {
        json!({"kty": "EC", "crv": "P-256", "use": "jwt-svid", "kid": "k1", "alg": "ES256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
    }

    #[test]
    fn round_trips_ec_and_rsa_roots_and_jwt_keys() {
        let bundle = SpiffeBundle {
            trust_domain: "partner.example".into(),
            x509_roots: vec![
                root(&rcgen::PKCS_ECDSA_P256_SHA256),
                root(&rcgen::PKCS_ECDSA_P384_SHA384),
            ],
            jwt_keys: vec![jwt_key()],
            sequence: Some(7),
            refresh_hint: Some(Duration::from_secs(300)),
        };
        let doc = bundle.to_json().unwrap();
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["spiffe_sequence"], 7);
        assert_eq!(v["spiffe_refresh_hint"], 300);
        assert_eq!(v["keys"][0]["use"], "x509-svid");
        assert_eq!(v["keys"][0]["crv"], "P-256");
        assert_eq!(v["keys"][1]["crv"], "P-384");
        // jsonwebtoken reads every key of it as a JWK (x5c beside the EC parameters).
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&doc).unwrap();
        assert_eq!(set.keys.len(), 3);
        let back = SpiffeBundle::parse("partner.example", doc.as_bytes()).unwrap();
        assert_eq!(back, bundle);
    }

    #[test]
    fn refuses_what_cannot_be_trusted_naming_the_key() {
        let ok_root =
            base64::engine::general_purpose::STANDARD.encode(root(&rcgen::PKCS_ECDSA_P256_SHA256));
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "not a JWK Set"),
            (json!({"keys": []}), "no X.509 root"),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC"}]}),
                "keys[0] (use \"x509-svid\"): no \"x5c\"",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": [ok_root, ok_root]}]}),
                "exactly one certificate, not 2",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": ["not base64!"]}]}),
                "not standard base64",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": ["AAAA"]}]}),
                "not usable as a trust anchor",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "AAAA", "x5c": [ok_root]}]}),
                "\"x\" does not match",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": [ok_root]}, {"use": "jwt-svid", "kty": "EC"}]}),
                "keys[1] (use \"jwt-svid\"): no \"kid\"",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": [ok_root]}], "spiffe_sequence": -1}),
                "spiffe_sequence must be a non-negative integer",
            ),
        ];
        for (doc, want) in cases {
            let err = SpiffeBundle::parse("p.example", doc.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{doc}: {err} (wanted {want})");
        }
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            SpiffeBundle::parse("p.example", &big),
            Err(BundleError::TooLarge(_))
        ));
    }

    #[test]
    fn skips_keys_of_another_use() {
        let ok_root =
            base64::engine::general_purpose::STANDARD.encode(root(&rcgen::PKCS_ECDSA_P256_SHA256));
        let doc = json!({"keys": [{"use": "x509-svid", "x5c": [ok_root]}, {"use": "enc", "kty": "oct"}, jwt_key()]});
        let b = SpiffeBundle::parse("p.example", doc.to_string().as_bytes()).unwrap();
        assert_eq!((b.x509_roots.len(), b.jwt_keys.len()), (1, 1));
        assert_eq!(b.sequence, None);
    }
}
