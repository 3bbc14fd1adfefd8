//! Signed audit checkpoints (the format: [`warden_common::checkpoint`]): the CA's audit
//! key, checkpoints on demand (`warden audit checkpoint`) and at an interval.
//!
//! The key is Ed25519, made on first start in `<data-dir>/audit-key.pem` (0600), used
//! for nothing else. Replicas with their own data directories have their own keys;
//! each checkpoint names its key (`key_id`), and `warden audit verify --key-id` pins
//! one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::signature::Ed25519KeyPair;
use tokio::sync::watch;

use crate::pki::PkiError;
use crate::store::{Checkpoint, Store, StoreError};

/// The CA's audit signing key.
pub struct AuditSigner {
    key: Ed25519KeyPair,
    trust_domain: String,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("AuditSigner").finish_non_exhaustive()
    }
}

/// Why no checkpoint was made.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    /// Nothing to sign yet.
    #[error("the audit log is empty: there is nothing to checkpoint yet")]
    Empty,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuditSigner {
    /// Loads `<data_dir>/audit-key.pem`, making it on first start.
    pub fn load_or_create(data_dir: &Path, trust_domain: &str) -> Result<Self, PkiError> {
        let path: PathBuf = data_dir.join("audit-key.pem");
        let io = |source| PkiError::Io {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let pem = Self::generate_pem()?;
            crate::pki::write_atomic(&path, pem.as_bytes(), 0o600).map_err(io)?;
            tracing::info!(path = %path.display(), "created the audit checkpoint key");
        }
        let pem = std::fs::read_to_string(&path).map_err(io)?;
        Self::from_pem(&pem, &path, trust_domain)
    }

    /// A new Ed25519 key, PKCS#8 PEM (kept in memory; the caller stores it).
    pub fn generate_pem() -> Result<String, PkiError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| PkiError::Sign("cannot generate the audit signing key".into()))?;
        Ok(crate::pki::pem_encode("PRIVATE KEY", pkcs8.as_ref()))
    }

    /// The signer of a PKCS#8 PEM key; `label` names where it came from in errors.
    pub fn from_pem(pem: &str, label: &Path, trust_domain: &str) -> Result<Self, PkiError> {
        let invalid = |message: String| PkiError::Invalid {
            path: label.to_path_buf(),
            message,
        };
        let der = crate::pki::keys::pkcs8_der(pem, label)?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| invalid(format!("not an Ed25519 key: {e}")))?;
        Ok(Self {
            key,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Signs the chain head as it is now and records the checkpoint (an existing one
    /// at that row is returned instead).
    pub async fn checkpoint(&self, store: &Store) -> Result<Checkpoint, CheckpointFailure> {
        let (seq, hash) = store.audit_head().await?;
        if seq == 0 {
            return Err(CheckpointFailure::Empty);
        }
        let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos())
            .unwrap_or(i64::MAX);
        let c = Checkpoint::sign(&self.key, &self.trust_domain, seq, &hash, now);
        Ok(store.put_checkpoint(&c).await?)
    }

    /// Checkpoints every `interval` while the log grows, until `shutdown` flips.
    pub async fn run_periodic(
        self: std::sync::Arc<Self>,
        store: Store,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut last = 0i64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            match store.audit_head().await {
                Ok((seq, _)) if seq == last || seq == 0 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the audit head for a checkpoint");
                    continue;
                }
            }
            match self.checkpoint(&store).await {
                Ok(c) => {
                    last = c.seq;
                    tracing::info!(seq = c.seq, key_id = %c.key_id, "audit checkpoint");
                }
                Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
            }
        }
    }
}
