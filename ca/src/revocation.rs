//! Revocation: `warden cert revoke` (a serial, or an identity with every unexpired
//! certificate it holds), `warden cert unrevoke`, and `warden entry delete` (what the
//! node was issued under the entry) recorded in the store, and the CRLs that publish
//! them.
//!
//! One CRL per authority the CA holds a key for (the active one; in own-root mode every
//! member of the set), each listing the unexpired revoked certificates that authority
//! signed, X.509 v2, signed by it, numbered by time (monotonic across restarts and
//! replicas). Every CRL is published even when empty: Envoy, given CRLs, wants one for
//! each issuer it verifies. They are re-signed when a revocation is recorded, when the
//! authority changes, and each minute (which also picks up another replica's
//! revocations); each is valid for a day, so a CA that stops re-signing is noticed.
//!
//! Published at `GET /crl.pem` on the monitoring port (all CRLs, PEM) and in the bundle
//! agents poll (`GetJwtBundle.crl_pem`), from which they feed Envoy's
//! `validation_context.crl`, the Workload API's `crl` and the proxies' verifiers.
//!
//! A revoked identity gets no new certificate until unrevoked, and a revoked client
//! certificate no longer authenticates at the CA; both checks are in memory on the
//! request path ([`RevokedSet`]), refreshed with the CRLs.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::pki::AuthorityHandle;
use crate::rotation::Rotation;
use crate::store::{Store, StoreError};

/// How long a CRL is valid (`nextUpdate - thisUpdate`).
const CRL_VALIDITY: Duration = Duration::from_secs(86_400);
/// How often the CRLs are re-signed and the revoked identities re-read.
const REFRESH: Duration = Duration::from_secs(60);

/// What is revoked, in memory for the request path: identities (no new certificate)
/// and serials (a client certificate that no longer authenticates). Shared by the
/// authenticator and the certificate service; filled by [`Revocations`].
#[derive(Debug, Default)]
pub struct RevokedSet {
    identities: RwLock<HashSet<String>>,
    serials: RwLock<HashSet<String>>,
}

impl RevokedSet {
    /// Whether `spiffe_id` is revoked as a whole.
    pub fn identity(&self, spiffe_id: &str) -> bool {
        match self.identities.read() {
            Ok(set) => set.contains(spiffe_id),
            // Fail closed.
            Err(_) => true,
        }
    }

    /// Whether the certificate with `serial` (hex) is revoked.
    pub fn serial(&self, serial: &str) -> bool {
        match self.serials.read() {
            Ok(set) => set.contains(serial),
            Err(_) => true,
        }
    }

    /// Whether the client certificate `leaf` of `id` is revoked, by identity or by
    /// serial. The certificate is parsed for its serial only while some serial is
    /// revoked: the request path pays nothing when none is.
    pub fn client_cert(&self, leaf: &[u8], id: &str) -> Option<String> {
        if self.identity(id) {
            return Some(String::new());
        }
        let any = self.serials.read().map(|s| !s.is_empty()).unwrap_or(true);
        if !any {
            return None;
        }
        use x509_parser::prelude::{FromDer, X509Certificate};
        let serial = X509Certificate::from_der(leaf)
            .map(|(_, c)| hex::encode(c.raw_serial()))
            .unwrap_or_default();
        self.serial(&serial).then_some(serial)
    }

    fn replace(&self, identities: HashSet<String>, serials: HashSet<String>) {
        if let Ok(mut s) = self.identities.write() {
            *s = identities;
        }
        if let Ok(mut s) = self.serials.write() {
            *s = serials;
        }
    }
}

/// The CA's revocation state.
#[derive(Debug)]
pub struct Revocations {
    store: Store,
    authority: AuthorityHandle,
    rotation: Option<Arc<Rotation>>,
    revoked: Arc<RevokedSet>,
    crl: watch::Sender<Arc<String>>,
    /// Serializes rebuilds, so CRL numbers go up in publication order.
    rebuild: tokio::sync::Mutex<u64>,
}

impl Revocations {
    /// Loads the revoked identities and signs the first CRLs.
    pub async fn start(
        store: Store,
        authority: AuthorityHandle,
        rotation: Option<Arc<Rotation>>,
        revoked: Arc<RevokedSet>,
    ) -> Result<Arc<Self>, String> {
        let r = Arc::new(Self {
            store,
            authority,
            rotation,
            revoked,
            crl: watch::Sender::new(Arc::new(String::new())),
            rebuild: tokio::sync::Mutex::new(0),
        });
        r.refresh().await?;
        Ok(r)
    }

    /// The CRLs, PEM, concatenated.
    pub fn crl_pem(&self) -> Arc<String> {
        self.crl.borrow().clone()
    }

    /// Wakes when the CRLs change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<String>> {
        self.crl.subscribe()
    }

    /// Re-reads the revoked identities and re-signs the CRLs.
    pub async fn refresh(&self) -> Result<(), String> {
        let mut last = self.rebuild.lock().await;
        let ids = self
            .store
            .revoked_identities()
            .await
            .map_err(|e: StoreError| e.to_string())?;
        let now = OffsetDateTime::now_utc();
        let revoked = self
            .store
            .revocations(now.unix_timestamp())
            .await
            .map_err(|e| e.to_string())?;
        self.revoked.replace(
            ids.into_iter().collect(),
            revoked.iter().map(|r| r.serial.clone()).collect(),
        );
        let active = self.authority.current();
        let mut signers = vec![];
        if let Some(rotation) = &self.rotation {
            signers = rotation.signers().await.map_err(|e| e.to_string())?;
        }
        let mut out = String::new();
        if signers.iter().any(|a| a.key_id() == active.key_id()) {
            for signer in &signers {
                out.push_str(&sign(signer, &revoked, &mut last)?);
            }
        } else {
            // Plugged-in or Secret authorities: only the active one's key is here.
            out.push_str(&sign(&active, &revoked, &mut last)?);
        }
        self.publish(out)
    }

    fn publish(&self, pem: String) -> Result<(), String> {
        self.crl.send_replace(Arc::new(pem));
        Ok(())
    }

    /// Re-signs every [`REFRESH`] and when the authority changes, until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut authority = self.authority.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                r = authority.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.refresh().await {
                tracing::error!(error = %e, "cannot re-sign the CRLs; keeping the current ones");
            }
        }
    }
}

/// `signer`'s CRL of what it signed among `revoked`, numbered after `last`.
fn sign(
    signer: &crate::pki::Authority,
    revoked: &[crate::store::Revocation],
    last: &mut u64,
) -> Result<String, String> {
    let entries: Vec<(String, OffsetDateTime, String)> = revoked
        .iter()
        .filter(|r| r.authority == signer.key_id())
        .map(|r| {
            (
                r.serial.clone(),
                OffsetDateTime::from_unix_timestamp(r.revoked_at)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                r.reason.clone(),
            )
        })
        .collect();
    // Milliseconds since the epoch, and never the same number twice from this CA.
    let now_ms =
        u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    *last = now_ms.max(*last + 1);
    signer
        .sign_crl(&entries, *last, CRL_VALIDITY)
        .map_err(|e| format!("signing the CRL of authority {}: {e}", signer.key_id()))
}
