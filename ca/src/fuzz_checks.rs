//! The bodies of the fuzz targets in `fuzz/` that exercise this crate, shared with the
//! replay test below so a crash the fuzzer finds (kept in `fuzz/regressions/<target>/`)
//! is replayed by a plain `cargo test`. Each function takes the fuzzer's bytes, calls
//! the public entry point that meets untrusted input and panics if an invariant the
//! code documents does not hold.

use std::sync::OnceLock;

use warden_proto::SpiffeId;

use crate::auth::jwt::JwtValidator;
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Feeds every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
    fn replay(target: &str, check: fn(&[u8])) {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                eprintln!("replaying {}", path.display());
                check(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no corpus for {target}");
    }

    #[test]
    fn csr_corpus() {
        replay("csr", super::check_csr);
    }

    #[test]
    fn jwt_corpus() {
        replay("jwt", super::check_jwt);
    }
}
