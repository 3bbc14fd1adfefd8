//! The CA's public-key infrastructure: its keys ([`keys`]), its signing chain and trust
//! bundle ([`authority`]), the checks every CSR passes ([`csr`]), the X.509-SVIDs it
//! builds, and its JWT-SVID signer ([`jwt_svid`]).

pub mod authority;
pub mod csr;
pub mod handle;
pub mod hsm;
pub mod jwt_svid;
pub mod keys;
pub mod rotation;

use std::time::Duration;

pub use authority::{Authority, IssuedCert, PkiError, PluggedPem};
pub use handle::AuthorityHandle;
pub use jwt_svid::JwtSigner;
pub use keys::KeyType;
pub use warden_common::files::{pem_encode, write_atomic};

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// The lifetime a request asks for in seconds: the default when 0 or less, refused
/// (as istiod refuses) when above the maximum. `kind` prefixes "TTL" in the message.
pub fn requested_ttl(
    secs: i64,
    default: Duration,
    max: Duration,
    kind: &str,
) -> Result<Duration, String> {
    if secs <= 0 {
        return Ok(default);
    }
    let ttl = Duration::from_secs(secs.unsigned_abs());
    if ttl > max {
        return Err(format!(
            "requested TTL {secs}s is greater than the max allowed {kind}TTL {}s",
            max.as_secs()
        ));
    }
    Ok(ttl)
}
