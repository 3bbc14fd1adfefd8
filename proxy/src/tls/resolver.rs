//! The certificate the proxy presents, chosen per handshake from the identity watch: a
//! rotated SVID is used by the next handshake, while connections already established
//! keep the keys they negotiated (TLS never re-reads the certificate after the
//! handshake), so rotation cuts nothing.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::identity::IdentityWatch;

/// Presents the latest SVID, as server and as client.
#[derive(Debug, Clone)]
pub struct CertResolver {
    identity: IdentityWatch,
}

impl CertResolver {
    /// Reads `identity` at every handshake.
    pub fn new(identity: IdentityWatch) -> Self {
        Self { identity }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.identity
            .borrow()
            .as_ref()
            .map(|i| i.svid().certified_key().clone())
    }
}

impl ResolvesServerCert for CertResolver {
    /// `None` (no SVID yet) aborts the handshake: a proxy without an identity must not
    /// serve mTLS.
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.current();
        if key.is_none() {
            tracing::warn!("TLS handshake refused: no SVID yet (SDS default not received)");
        }
        key
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.identity.borrow().is_some()
    }
}
