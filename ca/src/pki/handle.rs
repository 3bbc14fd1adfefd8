//! The authority in use, replaceable while the CA runs.
//!
//! In Kubernetes mode the signing authority lives in a Secret (`cacerts` or
//! `istio-ca-secret`) that can change under a running CA; everything that signs or
//! serves reads the [`AuthorityHandle`] at the moment it needs it, so one request is
//! always answered from one authority (its leaf and the chain it is sent with agree).
//!
//! A replacement writes the trust bundle to `root-cert.pem` (atomically: a reader never
//! sees half a file), updates the expiry gauges, and wakes subscribers: the TLS
//! listeners re-issue their serving certificates, the webhook keeper and the root
//! ConfigMap controller publish the new bundle.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::{Authority, PkiError};
use crate::monitoring::Metrics;

/// A shared, replaceable [`Authority`]; clones share it.
#[derive(Clone, Debug)]
pub struct AuthorityHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    authority: watch::Sender<Arc<Authority>>,
    bundle: watch::Sender<String>,
    root_cert_path: PathBuf,
    metrics: Arc<Metrics>,
}

impl AuthorityHandle {
    /// Starts with `authority`, writing its bundle to `root_cert_path`.
    pub fn new(
        authority: Authority,
        root_cert_path: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PkiError> {
        let bundle = authority.roots_pem().to_string();
        let handle = Self {
            inner: Arc::new(Inner {
                authority: watch::Sender::new(Arc::new(authority)),
                bundle: watch::Sender::new(bundle),
                root_cert_path,
                metrics,
            }),
        };
        handle.publish(&handle.current())?;
        Ok(handle)
    }

    /// The authority now. Take it once per request and use that snapshot throughout.
    pub fn current(&self) -> Arc<Authority> {
        self.inner.authority.borrow().clone()
    }

    /// Replaces the authority: writes the bundle file first (a failure changes nothing),
    /// then swaps it in and wakes subscribers. Returns whether the trust bundle changed.
    pub fn replace(&self, authority: Authority) -> Result<bool, PkiError> {
        let authority = Arc::new(authority);
        self.publish(&authority)?;
        self.inner.authority.send_replace(authority.clone());
        let bundle = authority.roots_pem().to_string();
        Ok(self.inner.bundle.send_if_modified(|b| {
            if *b == bundle {
                false
            } else {
                *b = bundle;
                true
            }
        }))
    }

    /// Wakes on every replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Authority>> {
        self.inner.authority.subscribe()
    }

    /// The trust bundle (PEM); wakes only when it changes.
    pub fn bundle(&self) -> watch::Receiver<String> {
        self.inner.bundle.subscribe()
    }

    fn publish(&self, authority: &Authority) -> Result<(), PkiError> {
        let path = &self.inner.root_cert_path;
        super::write_atomic(path, authority.roots_pem().as_bytes(), 0o644).map_err(|source| {
            PkiError::Io {
                path: path.clone(),
                source,
            }
        })?;
        let m = &self.inner.metrics;
        m.root_cert_expiry_timestamp.store(
            authority.root_not_after().unix_timestamp(),
            Ordering::Relaxed,
        );
        m.cert_chain_expiry_timestamp.store(
            authority.chain_not_after().unix_timestamp(),
            Ordering::Relaxed,
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki::KeyType;

    fn root(td: &str) -> Authority {
        let (cert, key) = Authority::new_root_pem(td, KeyType::EcP256).unwrap();
        Authority::from_root_pem(&cert, &key, "cert".as_ref(), "key".as_ref(), "test".into())
            .unwrap()
    }

    #[tokio::test]
    async fn replace_writes_the_bundle_and_wakes_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-cert.pem");
        let metrics = Arc::new(Metrics::default());
        let first = root("cluster.local");
        let first_pem = first.roots_pem().to_string();
        let handle = AuthorityHandle::new(first, path.clone(), metrics.clone()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first_pem);
        assert!(metrics.root_cert_expiry_timestamp.load(Ordering::Relaxed) > 0);
        let mut bundle = handle.bundle();
        let mut authorities = handle.subscribe();
        bundle.borrow_and_update();
        authorities.borrow_and_update();

        let second = root("cluster.local");
        let second_pem = second.roots_pem().to_string();
        assert!(handle.replace(second).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), second_pem);
        assert!(bundle.has_changed().unwrap());
        assert_eq!(*bundle.borrow_and_update(), second_pem);
        assert!(authorities.has_changed().unwrap());
        assert_eq!(handle.current().roots_pem(), second_pem);
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-cert.pem");
        let handle =
            AuthorityHandle::new(root("cluster.local"), path, Arc::new(Metrics::default()))
                .unwrap();
        let before = handle.current().roots_pem().to_string();
        // The directory goes away: the bundle cannot be written.
        drop(dir);
        assert!(handle.replace(root("cluster.local")).is_err());
        assert_eq!(handle.current().roots_pem(), before);
    }
}
