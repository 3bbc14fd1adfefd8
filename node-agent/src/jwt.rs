//! JWT-SVID validation for `ValidateJWTSVID`: the token's `kid` picks a key from the
//! trust domain's JWT bundle (a JWKS), the signature, `exp`/`nbf` and the audience are
//! checked, and `sub` must be a SPIFFE ID of the trust domain.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use warden_proto::SpiffeId;

/// Why a JWT-SVID is refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not a JWS, or a header we cannot use.
    #[error("the JWT-SVID is malformed: {0}")]
    Malformed(String),
    /// No key in the bundle has the token's `kid`.
    #[error("no key with kid {0:?} in the JWT bundle of {1}")]
    UnknownKey(String, String),
    /// Signature, expiry or audience check failed.
    #[error("the JWT-SVID is invalid: {0}")]
    Invalid(String),
    /// `sub` is not a SPIFFE ID of the trust domain.
    #[error("the JWT-SVID subject {0:?} is not a SPIFFE ID of trust domain {1}")]
    Subject(String, String),
}

/// Validates `token` for `audience` against `jwks_json` of `trust_domain`; returns the
/// SPIFFE ID and all claims.
pub fn validate(
    token: &str,
    audience: &str,
    trust_domain: &str,
    jwks_json: &str,
) -> Result<(SpiffeId, serde_json::Value), JwtError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
    if !matches!(
        header.alg,
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::PS256
    ) {
        return Err(JwtError::Malformed(format!(
            "algorithm {:?} is not allowed for JWT-SVIDs",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| JwtError::Malformed("the header has no kid".into()))?;
    let set: JwkSet = serde_json::from_str(jwks_json)
        .map_err(|e| JwtError::Malformed(format!("the JWT bundle is unusable: {e}")))?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| JwtError::UnknownKey(kid.clone(), trust_domain.to_string()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Invalid(e.to_string()))?;
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    v.leeway = 0;
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map_err(|e| JwtError::Invalid(e.to_string()))?;
    let sub = data
        .claims
        .get("sub")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    let id = SpiffeId::parse_workload(&sub)
        .ok()
        .filter(|id| id.trust_domain() == trust_domain)
        .ok_or_else(|| JwtError::Subject(sub, trust_domain.to_string()))?;
    Ok((id, data.claims))
}

/// The trust domain a token's `sub` claims, unverified: it only chooses which bundle
/// [`validate`] checks the token with (which then requires the same trust domain).
pub fn claimed_trust_domain(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    if payload.len() > 64 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let id = SpiffeId::parse_workload(claims.get("sub")?.as_str()?).ok()?;
    Some(id.trust_domain().to_string())
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// JSON claims as a `google.protobuf.Struct`.
pub fn to_struct(claims: serde_json::Value) -> prost_types::Struct {
    match to_value(claims).kind {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        _ => prost_types::Struct::default(),
    }
}
