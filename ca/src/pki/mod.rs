//! The CA's public-key infrastructure: its keys ([`keys`]), its signing chain and trust
//! bundle ([`authority`]), the checks every CSR passes ([`csr`]), the X.509-SVIDs it
//! builds, and its JWT-SVID signer ([`jwt_svid`]).

pub mod authority;
pub mod csr;
pub mod jwt_svid;
pub mod keys;

pub use authority::{Authority, IssuedCert, PkiError};
pub use jwt_svid::JwtSigner;
pub use keys::KeyType;
pub use warden_common::files::{pem_encode, write_atomic};

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}
