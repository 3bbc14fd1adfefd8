//! The bodies of the fuzz targets in `fuzz/` that exercise this crate, shared with the
//! replay test below so a crash the fuzzer finds (kept in `fuzz/regressions/<target>/`)
//! is replayed by a plain `cargo test`. Each function takes the fuzzer's bytes, calls
//! the public entry point that meets untrusted input and panics if an invariant the
//! code documents does not hold.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message as _;
use prost_types::value::Kind;
use tonic::Code;

use warden_proto::istio_ca::IstioCertificateRequest;
use warden_proto::{IMPERSONATED_IDENTITY, SpiffeId};

use crate::auth::jwt::JwtValidator;
use crate::auth::{AuthError, Bearer, JOIN_TOKEN_PREFIX, bearer, join_token_hash};
use crate::certificate::{check_request, impersonated};
use crate::monitoring::Metrics;
use crate::pki::csr::{CsrKey, MAX_CSR_PEM_BYTES, check, check_key_and_signature, decode_pem};

/// `csr`: the bytes as a DER CSR and, when they are text, as the PEM a
/// CreateCertificate request carries, through the checks the CA runs before signing.
pub fn check_csr(data: &[u8]) {
    let Ok(authorized) = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/httpbin") else {
        panic!("the fuzz SPIFFE ID does not parse");
    };
    let full = check(data, &authorized);
    let key_only = check_key_and_signature(data);
    if let Ok(c) = &full {
        // Everything `check` accepts passed the key and signature checks.
        let Ok(k) = &key_only else {
            panic!("check accepted what check_key_and_signature refused");
        };
        assert_eq!(c.spki_der, k.spki_der);
        if let CsrKey::Rsa(bits) = c.key {
            assert!((2048..=8192).contains(&bits), "RSA-{bits} accepted");
        }
    }
    if let Ok(pem) = std::str::from_utf8(data)
        && let Ok(der) = decode_pem(pem)
    {
        assert!(
            pem.len() <= MAX_CSR_PEM_BYTES,
            "{} PEM bytes accepted",
            pem.len()
        );
        let _ = check(&der, &authorized);
    }
}

/// The public key of `policy/tests/data/jwt/rsa-2048.pem` (`kid: fuzz-rsa`), which
/// signed the seed tokens (`fuzz/make_jwt_seeds.py`).
const FUZZ_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"fuzz-rsa","alg":"RS256","use":"sig","n":"mT1NBt6I23uIpcQr7IJxTtTBJs6uK3mbs5-ZyT7aDLJgFHHxjAthxkb2IlqmeRLgpYG8DW7Qnc1gYqgqzJ7Zo2YAx9dytQopc9kMBppgexp7FsAFgEYSGaw2nnX8IR-RwlCnmHLliC9YLQ4HzsFF_UtpQODBaiG0ngoswkoVqKsmIxVvk6Xir7oE5F2zHMo0Y3dzEHUcUHTtcVWpk-fRsTANRQgItSdP0jzrDBdQe-rwr4KtKbhcpOoHvKFhlhSE4A7y-yW6OpiDjj-BRav9KlHBQRqAyG7ln8jc416MNkFvj_vYviCgapuYk8J7FJatj8yriDPYMCaXVONq-xpy9w","e":"AQAB"}]}"#;

fn validator() -> Option<&'static JwtValidator> {
    static V: OnceLock<Option<JwtValidator>> = OnceLock::new();
    V.get_or_init(|| {
        JwtValidator::from_jwks_json(
            FUZZ_JWKS,
            "https://issuer.example",
            &["warden-ca".to_string()],
            "cluster.local",
        )
        .ok()
    })
    .as_ref()
}

/// `jwt` (CA side): a bearer token as an agent presents it to the CA, validated by
/// [`JwtValidator::validate`] (header decoded before any signature check).
pub fn check_jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Some(v) = validator() else {
        panic!("the fuzz JWKS does not load");
    };
    if let Ok(id) = v.validate(token, 1_700_000_000) {
        assert!(
            id.to_string().starts_with("spiffe://cluster.local/ns/"),
            "{id}"
        );
    }
}

/// `join_token`: the bytes as the `authorization` metadata of a request on the
/// certificate port, as `auth::request` reads it (text values only), through [`bearer`],
/// which decides before any lookup. A token with the join-token prefix is only ever
/// hashed (it never reaches the JWT validator or the Kubernetes token reviewer), the
/// hash is that of exactly the token the caller sent (scheme and surrounding blanks
/// off), and any other token goes on as a JWT, whole.
pub fn check_join_token(data: &[u8]) {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let Ok(header) = value.to_str() else {
        return;
    };
    // What follows `Bearer ` or `bearer `, if the header starts so.
    let rest = ["Bearer ", "bearer "]
        .iter()
        .find(|s| header.starts_with(*s))
        .map(|s| &header[s.len()..]);
    match bearer(header) {
        Ok(Bearer::JoinToken { hash }) => {
            let Some(rest) = rest else {
                panic!("{header:?}: a join token without the Bearer scheme");
            };
            let token = rest.trim();
            assert!(token.starts_with(JOIN_TOKEN_PREFIX), "{header:?}");
            assert_eq!(hash, join_token_hash(token), "{header:?}: another hash");
            assert_eq!(hash, crate::pki::sha256_hex(token.as_bytes()));
            assert!(
                hash.len() == 64
                    && hash
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{hash:?} is not lower-case SHA-256 hex"
            );
        }
        Ok(Bearer::Jwt(token)) => {
            let Some(rest) = rest else {
                panic!("{header:?}: a JWT without the Bearer scheme");
            };
            assert_eq!(token, rest.trim(), "{header:?}: the token is not whole");
            assert!(!token.is_empty(), "{header:?}: empty token accepted");
            assert!(
                !token.starts_with(JOIN_TOKEN_PREFIX),
                "{header:?}: a join token would reach the JWT validator or the token reviewer"
            );
        }
        Err(AuthError::BadHeader) => {
            assert!(
                rest.is_none_or(|r| r.trim().is_empty()),
                "{header:?} refused as not \"Bearer <token>\""
            );
        }
        Err(e) => panic!("{header:?}: unexpected refusal {e:?}"),
    }
}

/// The caller of the `create_certificate` target, and its CSR seeds' identity.
const FUZZ_CALLER: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
/// The CA's default and maximum lifetimes in the `create_certificate` target.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// `create_certificate`: the bytes as the protobuf body of a CreateCertificate request
/// (`IstioCertificateRequest`, as tonic decodes it), through the checks that read the
/// request alone: metadata `ImpersonatedIdentity` ([`impersonated`]), then, with the
/// identity settled (the store's and node authorization's decision is taken to grant
/// any workload ID of the trust domain), `CertSigner`, the validity and the CSR
/// ([`check_request`]). A request passes only with no `CertSigner`, a lifetime within
/// the maximum (the default for 0 or less) and a CSR `csr::check` accepts for exactly
/// that identity; each refusal is `InvalidArgument` with the label of the check that
/// failed, and the CSR parse counter moves only when the PEM did not decode.
pub fn check_create_certificate(data: &[u8]) {
    let Ok(req) = IstioCertificateRequest::decode(data) else {
        return;
    };
    let Ok(caller) = SpiffeId::parse(FUZZ_CALLER) else {
        panic!("the fuzz caller does not parse");
    };
    let field = |key: &str| {
        req.metadata
            .as_ref()
            .and_then(|m| m.fields.get(key))
            .map(|v| v.kind.as_ref())
    };
    let identity = match impersonated(&req, &caller) {
        Err(d) => {
            assert_eq!(d.status.code(), Code::InvalidArgument);
            assert!(
                !matches!(
                    field(IMPERSONATED_IDENTITY),
                    None | Some(Some(Kind::StringValue(_)))
                ),
                "a string ImpersonatedIdentity refused"
            );
            return;
        }
        Ok(None) => {
            match field(IMPERSONATED_IDENTITY) {
                None => {}
                Some(Some(Kind::StringValue(s))) => {
                    assert!(
                        s.is_empty() || *s == FUZZ_CALLER,
                        "{s:?} is not impersonation"
                    );
                }
                Some(other) => panic!("ImpersonatedIdentity {other:?} taken for none"),
            }
            caller
        }
        Ok(Some(s)) => {
            assert!(
                matches!(field(IMPERSONATED_IDENTITY), Some(Some(Kind::StringValue(v))) if v == s),
                "{s:?} is not the metadata's"
            );
            assert!(!s.is_empty() && s != FUZZ_CALLER);
            match SpiffeId::parse_workload(s) {
                Ok(id) if id.trust_domain() == "cluster.local" => id,
                // `authorize_impersonation` refuses it before any check below.
                _ => return,
            }
        }
    };
    let metrics = Metrics::default();
    let result = check_request(&req, &identity, None, &metrics, DEFAULT_TTL, MAX_TTL);
    let signer = match field("CertSigner") {
        Some(Some(Kind::StringValue(s))) if !s.is_empty() => Some(s),
        _ => None,
    };
    let too_long =
        req.validity_duration > 0 && req.validity_duration.unsigned_abs() > MAX_TTL.as_secs();
    let pem = decode_pem(&req.csr);
    let parse_errors = metrics.csr_parsing_err_count.load(Ordering::Relaxed);
    match result {
        Ok((ttl, checked)) => {
            assert!(signer.is_none(), "CertSigner {signer:?} accepted");
            assert!(!too_long, "{}s accepted", req.validity_duration);
            if req.validity_duration <= 0 {
                assert_eq!(ttl, DEFAULT_TTL);
            } else {
                assert_eq!(ttl.as_secs(), req.validity_duration.unsigned_abs());
            }
            assert_eq!(parse_errors, 0);
            let Ok(der) = pem else {
                panic!("a CSR that does not decode accepted");
            };
            let Ok(again) = check(&der, &identity) else {
                panic!("a CSR accepted that csr::check refuses for {identity}");
            };
            assert_eq!(again.spki_der, checked.spki_der);
        }
        Err(d) => {
            assert_eq!(
                d.status.code(),
                Code::InvalidArgument,
                "{}",
                d.status.message()
            );
            match d.label {
                "cert_signer" => assert!(signer.is_some()),
                "ttl" => assert!(signer.is_none() && too_long),
                label => {
                    assert!(signer.is_none() && !too_long, "{label}");
                    assert!(label.starts_with("csr_"), "{label}");
                    assert_eq!(parse_errors, u64::from(pem.is_err()), "{label}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Feeds every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
    fn replay(target: &str, check: fn(&[u8])) {
        let workspace = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        warden_common::testing::replay_fuzz_corpus(workspace, target, check);
    }

    #[test]
    fn csr_corpus() {
        replay("csr", super::check_csr);
    }

    #[test]
    fn jwt_corpus() {
        replay("jwt", super::check_jwt);
    }

    #[test]
    fn join_token_corpus() {
        replay("join_token", super::check_join_token);
    }

    #[test]
    fn create_certificate_corpus() {
        replay("create_certificate", super::check_create_certificate);
    }
}
