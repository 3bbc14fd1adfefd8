//! Signed audit checkpoints: the CA's statement "row `seq` of my audit log has hash
//! `hash`", signed with a key of its own (Ed25519, `<data-dir>/audit-key.pem`).
//!
//! The audit log is a hash chain, so whoever holds a checkpoint can later prove that
//! rows 1..=`seq` are unaltered: recompute the chain and compare. That holds even
//! against someone who can rewrite the whole database, head row included, because the
//! checkpoint is kept elsewhere (a file an auditor holds). The signature proves the
//! checkpoint came from the CA; pin its key with `key_id`.
//!
//! The signed message is fixed text, not JSON, so no canonicalization is needed:
//!
//! ```text
//! warden-audit-checkpoint/v1
//! trust_domain=<td>
//! seq=<n>
//! hash=<64 hex>
//! time_nanos=<n>
//! ```

use base64::Engine;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The format tag; also the first line of the signed message.
pub const VERSION: &str = "warden-audit-checkpoint/v1";

/// A signed checkpoint, as written to a file (JSON) and stored by the CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// [`VERSION`].
    pub version: String,
    /// The CA's trust domain.
    pub trust_domain: String,
    /// The audit row the checkpoint covers (all rows up to it).
    pub seq: i64,
    /// That row's hash, lowercase hex.
    pub hash: String,
    /// When the checkpoint was made, nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// SHA-256 of the public key, lowercase hex: what to pin.
    pub key_id: String,
    /// The Ed25519 public key, base64.
    pub public_key: String,
    /// The Ed25519 signature over [`Checkpoint::message`], base64.
    pub signature: String,
}

/// Why a checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Unknown version.
    #[error("version {0:?} is not known: expected {VERSION:?}")]
    Version(String),
    /// A field is malformed.
    #[error("{0}")]
    Malformed(String),
    /// `key_id` is not the hash of `public_key`.
    #[error("key_id does not match public_key")]
    KeyId,
    /// The key is not the pinned one.
    #[error("signed by key {found}, not the expected key {expected}")]
    WrongKey {
        /// The checkpoint's key.
        found: String,
        /// The pinned key.
        expected: String,
    },
    /// The signature does not verify.
    #[error("the signature does not verify: the checkpoint was altered or not made by this key")]
    Signature,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// SHA-256 of a public key, lowercase hex.
pub fn key_id(public_key: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, public_key)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Checkpoint {
    /// The bytes the signature covers.
    pub fn message(trust_domain: &str, seq: i64, hash: &str, time_nanos: i64) -> Vec<u8> {
        format!(
            "{VERSION}\ntrust_domain={trust_domain}\nseq={seq}\nhash={hash}\ntime_nanos={time_nanos}\n"
        )
        .into_bytes()
    }

    /// Signs a checkpoint with `key`.
    pub fn sign(
        key: &Ed25519KeyPair,
        trust_domain: &str,
        seq: i64,
        hash: &str,
        time_nanos: i64,
    ) -> Self {
        let public = key.public_key().as_ref();
        let signature = key.sign(&Self::message(trust_domain, seq, hash, time_nanos));
        Self {
            version: VERSION.to_string(),
            trust_domain: trust_domain.to_string(),
            seq,
            hash: hash.to_string(),
            time_nanos,
            key_id: key_id(public),
            public_key: b64().encode(public),
            signature: b64().encode(signature.as_ref()),
        }
    }

    /// Checks the signature with the embedded key, and that the key is `pinned` (a
    /// `key_id`) when given.
    pub fn verify(&self, pinned: Option<&str>) -> Result<(), CheckpointError> {
        if self.version != VERSION {
            return Err(CheckpointError::Version(self.version.clone()));
        }
        if self.seq < 0 {
            return Err(CheckpointError::Malformed(format!(
                "seq {} is negative",
                self.seq
            )));
        }
        if self.hash.len() != 64 || !self.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CheckpointError::Malformed(
                "hash: expected 64 lowercase hex digits".into(),
            ));
        }
        let public = b64()
            .decode(&self.public_key)
            .map_err(|e| CheckpointError::Malformed(format!("public_key: not base64: {e}")))?;
        let signature = b64()
            .decode(&self.signature)
            .map_err(|e| CheckpointError::Malformed(format!("signature: not base64: {e}")))?;
        if key_id(&public) != self.key_id {
            return Err(CheckpointError::KeyId);
        }
        if let Some(expected) = pinned
            && !expected.eq_ignore_ascii_case(&self.key_id)
        {
            return Err(CheckpointError::WrongKey {
                found: self.key_id.clone(),
                expected: expected.to_string(),
            });
        }
        UnparsedPublicKey::new(&ED25519, &public)
            .verify(
                &Self::message(&self.trust_domain, self.seq, &self.hash, self.time_nanos),
                &signature,
            )
            .map_err(|_| CheckpointError::Signature)
    }
}

impl From<warden_proto::admin::AuditCheckpoint> for Checkpoint {
    fn from(c: warden_proto::admin::AuditCheckpoint) -> Self {
        Self {
            version: c.version,
            trust_domain: c.trust_domain,
            seq: c.seq,
            hash: c.hash,
            time_nanos: c.time_nanos,
            key_id: c.key_id,
            public_key: c.public_key,
            signature: c.signature,
        }
    }
}

impl From<Checkpoint> for warden_proto::admin::AuditCheckpoint {
    fn from(c: Checkpoint) -> Self {
        Self {
            version: c.version,
            trust_domain: c.trust_domain,
            seq: c.seq,
            hash: c.hash,
            time_nanos: c.time_nanos,
            key_id: c.key_id,
            public_key: c.public_key,
            signature: c.signature,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    const HASH: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_breaks_it() {
        let k = key();
        let c = Checkpoint::sign(&k, "cluster.local", 42, HASH, 1_700_000_000_000_000_000);
        c.verify(None).unwrap();
        c.verify(Some(&c.key_id.to_uppercase())).unwrap();
        assert!(matches!(
            c.verify(Some("00")),
            Err(CheckpointError::WrongKey { .. })
        ));
        for change in [
            (|c: &mut Checkpoint| c.seq = 41) as fn(&mut Checkpoint),
            |c| c.hash = HASH.replace('5', "6"),
            |c| c.trust_domain = "other.td".into(),
            |c| c.time_nanos += 1,
        ] {
            let mut altered = c.clone();
            change(&mut altered);
            assert_eq!(altered.verify(None), Err(CheckpointError::Signature));
        }
        // Another key cannot pass as this one.
        let other = Checkpoint::sign(&key(), "cluster.local", 42, HASH, c.time_nanos);
        let mut forged = other.clone();
        forged.key_id = c.key_id.clone();
        assert_eq!(forged.verify(None), Err(CheckpointError::KeyId));
        let mut swapped = c.clone();
        swapped.signature = other.signature;
        assert_eq!(swapped.verify(None), Err(CheckpointError::Signature));
        let mut bad = c.clone();
        bad.hash = "zz".into();
        assert!(matches!(
            bad.verify(None),
            Err(CheckpointError::Malformed(_))
        ));
        bad = c;
        bad.version = "v0".into();
        assert!(matches!(bad.verify(None), Err(CheckpointError::Version(_))));
    }
}
