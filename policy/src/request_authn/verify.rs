//! One token against one provider (Envoy `authenticator.cc`, jwt_verify_lib `jwt.cc`,
//! `verify.cc`, `check_audience.cc`): the token parsed as jwt_verify_lib reads it, then
//! issuer, `nbf`/`exp` with the clock skew, audiences and the signature with the keys
//! whose `kid` and `alg` match. Values taken from the token are shortened in reasons.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::jwks::B64URL;
use super::{CLOCK_SKEW_SECONDS, Failure, Provider};

/// The `alg` values Envoy implements (jwt_verify_lib `jwt.cc` `isImplemented`).
const IMPLEMENTED_ALGS: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

/// Longest token-supplied value (`iss`, `aud`, `kid`) quoted in a reason.
pub(super) const SHOWN_MAX: usize = 128;

impl Provider {
    /// authenticator.cc `startVerify` and `verifyKey`, for one token.
    pub(super) fn verify(&self, token: &str, now: u64) -> Result<Verified, Failure> {
        let jwt = Jwt::parse(token)?;
        if !self.issuer.is_empty() && jwt.iss != self.issuer {
            return Err(Failure::UnknownIssuer {
                issuer: shown(&jwt.iss),
                expected: self.issuer.clone(),
            });
        }
        if now.saturating_add(CLOCK_SKEW_SECONDS) < jwt.nbf {
            return Err(Failure::NotYetValid { nbf: jwt.nbf, now });
        }
        if jwt.exp != 0 && now > jwt.exp.saturating_add(CLOCK_SKEW_SECONDS) {
            return Err(Failure::Expired { exp: jwt.exp, now });
        }
        if !self.audience_set.is_empty()
            && !jwt
                .aud
                .iter()
                .any(|a| self.audience_set.contains(&sanitize_audience(a)))
        {
            return Err(Failure::AudienceNotAllowed {
                audiences: jwt.aud.iter().map(|a| shown(a)).collect(),
                allowed: self.audiences.clone(),
            });
        }
        self.check_signature(&jwt)?;
        Ok(Verified {
            payload_b64: jwt.payload_b64.to_string(),
            claims: jwt.claims,
        })
    }

    /// jwt_verify_lib `verify.cc` `verifyJwtWithoutTimeChecking`: a key is tried when its
    /// `kid` and `alg` match the token's (a side without one matches any).
    fn check_signature(&self, jwt: &Jwt<'_>) -> Result<(), Failure> {
        let alg: Option<Algorithm> = jwt.alg.parse().ok();
        let signature = URL_SAFE_NO_PAD.encode(&jwt.signature);
        let mut matched: Vec<&str> = Vec::new();
        let mut fitting = false;
        for key in self.keys.iter() {
            if !jwt.kid.is_empty() && !key.kid.is_empty() && key.kid != jwt.kid {
                continue;
            }
            if !key.alg.is_empty() && key.alg != jwt.alg {
                continue;
            }
            matched.push(key.kind.name());
            let Some(alg) = alg.filter(|a| key.kind.verifies(*a)) else {
                continue;
            };
            fitting = true;
            if jsonwebtoken::crypto::verify(&signature, jwt.signed.as_bytes(), &key.key, alg)
                .unwrap_or(false)
            {
                return Ok(());
            }
        }
        if matched.is_empty() {
            Err(Failure::UnknownKid {
                kid: shown(&jwt.kid),
                alg: jwt.alg.clone(),
            })
        } else if !fitting {
            Err(Failure::AlgorithmNotAllowed {
                alg: jwt.alg.clone(),
                why: match alg {
                    None => "Warden does not implement it".into(),
                    Some(_) => format!(
                        "the JWKS keys matching the token's kid cannot verify it (key types: {matched:?})"
                    ),
                },
            })
        } else {
            Err(Failure::Signature)
        }
    }
}

/// A token that passed every check.
#[derive(Debug)]
pub(super) struct Verified {
    pub(super) payload_b64: String,
    pub(super) claims: Map<String, Value>,
}

/// jwt_verify_lib `check_audience.cc` `sanitizeAudience`: no `http://`/`https://`, no
/// trailing `/`.
pub(super) fn sanitize_audience(aud: &str) -> String {
    let a = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a).to_string()
}

/// A token as jwt_verify_lib `Jwt::parseFromString` reads it (no `Debug`).
struct Jwt<'t> {
    /// `header.payload`, the signed text.
    signed: &'t str,
    payload_b64: &'t str,
    signature: Vec<u8>,
    alg: String,
    kid: String,
    iss: String,
    aud: Vec<String>,
    nbf: u64,
    exp: u64,
    claims: Map<String, Value>,
}

impl<'t> Jwt<'t> {
    fn parse(token: &'t str) -> Result<Self, Failure> {
        let malformed = |m: &str| Failure::Malformed(m.to_string());
        let bad_format = || malformed("expected three base64url sections separated by two dots");
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(bad_format());
        }
        let (signed, sig_b64) = token.rsplit_once('.').ok_or_else(bad_format)?;
        let (header_b64, payload_b64) = signed.split_once('.').ok_or_else(bad_format)?;
        if header_b64.is_empty() || payload_b64.is_empty() || sig_b64.is_empty() {
            return Err(bad_format());
        }
        let header = B64URL
            .decode(header_b64)
            .map_err(|_| malformed("the header is not base64url"))?;
        let header =
            json_object(&header).ok_or_else(|| malformed("the header is not a JSON object"))?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(malformed("the header has no \"alg\" string")),
        };
        if !IMPLEMENTED_ALGS.contains(&alg.as_str()) {
            return Err(Failure::AlgorithmNotAllowed {
                alg: shown(&alg),
                why: format!("Envoy accepts only {}", IMPLEMENTED_ALGS.join(", ")),
            });
        }
        let kid = match header.get("kid") {
            None => String::new(),
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err(malformed("the header's \"kid\" is not a string")),
        };
        let payload = B64URL
            .decode(payload_b64)
            .map_err(|_| malformed("the payload is not base64url"))?;
        let claims =
            json_object(&payload).ok_or_else(|| malformed("the payload is not a JSON object"))?;
        let string = |name: &str| match claims.get(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(Failure::Malformed(format!(
                "claim \"{name}\" is not a string"
            ))),
        };
        let seconds = |name: &str| match claims.get(name) {
            None => Ok(0),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(u) => Ok(u),
                None => match n.as_f64() {
                    // jwt_verify_lib `GetUInt64`: truncated, 0 <= v < 2^64.
                    Some(f) if f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
                    _ => Err(Failure::Malformed(format!(
                        "claim \"{name}\" is not a positive integer"
                    ))),
                },
            },
            Some(_) => Err(Failure::Malformed(format!(
                "claim \"{name}\" is not an integer"
            ))),
        };
        let iss = string("iss")?;
        string("sub")?;
        seconds("iat")?;
        let nbf = seconds("nbf")?;
        let exp = seconds("exp")?;
        string("jti")?;
        let aud = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| malformed("claim \"aud\" is not a string or a list of strings"))?,
            Some(_) => {
                return Err(malformed(
                    "claim \"aud\" is not a string or a list of strings",
                ));
            }
        };
        let signature = B64URL
            .decode(sig_b64)
            .map_err(|_| malformed("the signature is not base64url"))?;
        Ok(Self {
            signed,
            payload_b64,
            signature,
            alg,
            kid,
            iss,
            aud,
            nbf,
            exp,
            claims,
        })
    }
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A token-supplied value, shortened for a reason.
pub(super) fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
