//! JSON Web Key Sets as jwt_verify_lib reads them (`jwks.cc`): the keys of a set that
//! Warden can verify with (RSA, EC P-256/P-384, oct, Ed25519), each checked once so an
//! unusable key is refused at compile time; keys that cannot be used are skipped, and a
//! set without a usable key is an error listing why each was skipped.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

/// Base64url, padded or not (absl `WebSafeBase64Unescape` accepts both).
pub(super) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A usable key of a JWKS. `DecodingKey`'s `Debug` redacts the key material.
#[derive(Debug)]
pub(super) struct Key {
    pub(super) kid: String,
    pub(super) alg: String,
    pub(super) kind: KeyKind,
    pub(super) key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    Rsa,
    P256,
    P384,
    Hmac,
    Ed25519,
}

impl KeyKind {
    pub(super) fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Hmac => matches!(alg, HS256 | HS384 | HS512),
            Self::Ed25519 => alg == EdDSA,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::P256 => "EC P-256",
            Self::P384 => "EC P-384",
            Self::Hmac => "oct",
            Self::Ed25519 => "OKP Ed25519",
        }
    }
}

/// jwt_verify_lib `Jwks::createFromJwksCore`: `{"keys": [...]}`; keys that cannot be used
/// are skipped; no usable key is an error that lists why each was skipped.
pub(super) fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    const EXPECTED: &str = "expected a JSON Web Key Set {\"keys\": [...]}";
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("is not JSON ({e}); {EXPECTED}"))?;
    let keys = match v.get("keys") {
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(format!("\"keys\" is not an array; {EXPECTED}")),
        None => return Err(format!("has no \"keys\" array; {EXPECTED}")),
    };
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let Some(k) = k.as_object() else {
            skipped.push(format!("keys[{i}] is not an object"));
            continue;
        };
        match parse_jwk(k) {
            Ok(key) => out.push(key),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    if out.is_empty() {
        return Err(if skipped.is_empty() {
            "has no usable key: \"keys\" is empty".into()
        } else {
            format!("has no usable key: {}", skipped.join("; "))
        });
    }
    Ok(out)
}

/// jwt_verify_lib `extractJwk` and its per-`kty` helpers.
fn parse_jwk(k: &Map<String, Value>) -> Result<Key, String> {
    let text = |name: &str| match k.get(name) {
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        None => Ok(None),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    };
    let required = |name: &str| text(name)?.ok_or_else(|| format!("\"{name}\" is missing"));
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        B64URL
            .decode(required(name)?)
            .map_err(|_| format!("\"{name}\" is not base64url"))
    };
    let kty = required("kty")?;
    // jwt_verify_lib ignores a `kid`/`alg` that is not a string.
    let kid = text("kid").ok().flatten().unwrap_or_default().to_string();
    let alg = text("alg").ok().flatten().unwrap_or_default().to_string();
    let (kind, key) = match kty {
        "RSA" => {
            if !(alg.is_empty() || alg.starts_with("RS") || alg.starts_with("PS")) {
                return Err(format!(
                    "alg {alg:?} does not start with RS or PS for an RSA key"
                ));
            }
            let n = bytes("n")?;
            let e = bytes("e")?;
            let trim = |b: &[u8]| {
                b.iter()
                    .skip_while(|x| **x == 0)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            let (n, e) = (trim(&n), trim(&e));
            if e != [3] && e != [1, 0, 1] {
                return Err("the RSA exponent is neither 3 nor 65537".into());
            }
            if n.len() < 64 || n.len() > 512 {
                return Err(format!(
                    "the RSA modulus has {} bits; expected 512 to 4096",
                    n.len() * 8
                ));
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            if !alg.is_empty() && !alg.starts_with("ES") {
                return Err(format!("alg {alg:?} does not start with ES for an EC key"));
            }
            let crv = text("crv")?.unwrap_or_default();
            let kind = match (alg.as_str(), crv) {
                ("ES256" | "", "P-256") | ("ES256", "") | ("", "") => KeyKind::P256,
                ("ES384" | "", "P-384") | ("ES384", "") => KeyKind::P384,
                ("ES512" | "", "P-521") | ("ES512", "") => {
                    return Err("P-521 (ES512) keys are not supported by Warden".into());
                }
                ("ES256" | "ES384" | "ES512", _) if !crv.is_empty() && crv.starts_with("P-") => {
                    return Err(format!("crv {crv:?} does not fit alg {alg:?}"));
                }
                _ => return Err(format!("unsupported curve {crv:?} / alg {alg:?}")),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            let len = if kind == KeyKind::P256 { 32 } else { 48 };
            if x.len() != len || y.len() != len {
                return Err(format!("x and y must be {len} bytes for {}", kind.name()));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = DecodingKey::from_ec_der(&point);
            let alg = if kind == KeyKind::P256 {
                Algorithm::ES256
            } else {
                Algorithm::ES384
            };
            usable(&key, alg).map_err(|_| "x, y is not a point on the curve".to_string())?;
            (kind, key)
        }
        "oct" => {
            if !alg.is_empty() && !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
                return Err(format!(
                    "alg {alg:?} is not HS256, HS384 or HS512 for an oct key"
                ));
            }
            let k = bytes("k")?;
            if k.is_empty() {
                return Err("\"k\" is empty".into());
            }
            (KeyKind::Hmac, DecodingKey::from_secret(&k))
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" {
                return Err(format!("alg {alg:?} is not EdDSA for an OKP key"));
            }
            let crv = required("crv")?;
            if crv != "Ed25519" {
                return Err(format!(
                    "curve {crv:?} is not supported for an OKP key (Ed25519 is)"
                ));
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("\"x\" must be 32 bytes for Ed25519".into());
            }
            let key = DecodingKey::from_ed_der(&x);
            usable(&key, Algorithm::EdDSA)
                .map_err(|_| "\"x\" is not an Ed25519 key".to_string())?;
            (KeyKind::Ed25519, key)
        }
        other => return Err(format!("kty {other:?} is not supported")),
    };
    Ok(Key {
        kid,
        alg,
        kind,
        key,
    })
}

/// Builds the verifier for `key` once, so a key that cannot verify anything is refused at
/// compile time: only a bad key makes `crypto::verify` fail (a bad signature is `false`).
fn usable(key: &DecodingKey, alg: Algorithm) -> Result<(), jsonwebtoken::errors::Error> {
    jsonwebtoken::crypto::verify("AA", b"", key, alg).map(|_| ())
}
