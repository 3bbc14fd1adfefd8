//! The CA's signing authority, kept in the cluster as istiod keeps it.
//!
//! - `cacerts` (Istio's plug-in layout: `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
//!   `root-cert.pem`; or the `kubernetes.io/tls`-style `tls.crt`, `tls.key`, `ca.crt`)
//!   wins when present: an operator-provided intermediate.
//! - Otherwise the self-signed root in `istio-ca-secret` (type `istio.io/ca-root`), which
//!   the first leader creates exactly once: only the Lease holder creates it, and the
//!   create is a `POST` that the API server refuses (`409`) if a racing replica got there
//!   first, after which everyone loads the one that exists. Followers wait for it.
//!
//! While running, both Secrets are watched (by name, so the CA's RBAC needs no list of
//! every Secret) and the authority is reloaded on change, without restart: a new or
//! edited `cacerts` is checked in full (key matches, chain verifies to the roots, not
//! expired) before it replaces the authority; a broken one is refused, audited, and the
//! authority in use is kept. Deleting `cacerts` falls back to `istio-ca-secret`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use warden_common::backoff::{Backoff, random_unit};

use crate::pki::{Authority, AuthorityHandle, KeyType, PkiError, PluggedPem};
use crate::store::{AuditEvent, Store};

/// Istio's plug-in CA Secret.
pub const CACERTS: &str = "cacerts";
/// Istio's self-signed root Secret.
pub const SELF_SIGNED: &str = "istio-ca-secret";
/// The keys every replica must share besides the root: the JWT-SVID signing key (one
/// JWT bundle whichever replica answers) and the audit checkpoint key.
pub const SHARED_KEYS: &str = "warden-ca-keys";

/// The shared keys, PKCS#8 PEM.
pub struct SharedKeys {
    /// `jwt-key.pem`.
    pub jwt_key: String,
    /// `audit-key.pem`.
    pub audit_key: String,
}

impl std::fmt::Debug for SharedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys.
        f.debug_struct("SharedKeys").finish_non_exhaustive()
    }
}
/// How often both Secrets are read again even without a watch event.
const RESYNC: Duration = Duration::from_secs(300);

/// Where the authority comes from.
#[derive(Debug, Clone)]
pub struct RootSecrets {
    api: Api<Secret>,
    namespace: String,
    trust_domain: String,
    key_type: KeyType,
}

/// What the Secrets hold now.
enum Found {
    Authority(Box<Authority>, &'static str),
    Neither,
}

fn label(namespace: &str, secret: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("Secret {namespace}/{secret} key {key}"))
}

fn data_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

impl RootSecrets {
    /// The Secrets in `namespace` (the CA's own).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        trust_domain: &str,
        key_type: KeyType,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            trust_domain: trust_domain.to_string(),
            key_type,
        }
    }

    fn missing(&self, secret: &str, key: &str) -> PkiError {
        PkiError::Invalid {
            path: label(&self.namespace, secret, key),
            message: "is missing".into(),
        }
    }

    /// Parses `cacerts`, in either layout.
    fn plugged(&self, secret: &Secret) -> Result<Authority, PkiError> {
        let ns = &self.namespace;
        let istio_layout = data_text(secret, "ca-cert.pem").is_some();
        let (pem, keys): (PluggedPem, [&str; 4]) = if istio_layout {
            let keys = [
                "ca-cert.pem",
                "ca-key.pem",
                "cert-chain.pem",
                "root-cert.pem",
            ];
            (
                PluggedPem {
                    ca_cert: data_text(secret, keys[0]).unwrap_or_default(),
                    ca_key: data_text(secret, keys[1])
                        .ok_or_else(|| self.missing(CACERTS, keys[1]))?,
                    cert_chain: data_text(secret, keys[2]),
                    root_cert: data_text(secret, keys[3])
                        .ok_or_else(|| self.missing(CACERTS, keys[3]))?,
                },
                keys,
            )
        } else if let Some(tls_crt) = data_text(secret, "tls.crt") {
            // tls.crt: the signing certificate, then its chain; ca.crt: the roots.
            let keys = ["tls.crt", "tls.key", "tls.crt", "ca.crt"];
            (
                PluggedPem {
                    ca_cert: tls_crt.clone(),
                    ca_key: data_text(secret, keys[1])
                        .ok_or_else(|| self.missing(CACERTS, keys[1]))?,
                    cert_chain: Some(tls_crt),
                    root_cert: data_text(secret, keys[3])
                        .ok_or_else(|| self.missing(CACERTS, keys[3]))?,
                },
                keys,
            )
        } else {
            return Err(PkiError::Invalid {
                path: PathBuf::from(format!("Secret {ns}/{CACERTS}")),
                message: "holds neither ca-cert.pem (Istio's plug-in layout) nor tls.crt".into(),
            });
        };
        let names = [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ];
        let label_of = |name: &str| {
            let i = names.iter().position(|n| *n == name).unwrap_or(0);
            label(ns, CACERTS, keys[i])
        };
        Authority::from_plugged_pem(&pem, &label_of, format!("Secret {ns}/{CACERTS}"))
    }

    /// Parses `istio-ca-secret`.
    fn self_signed(&self, secret: &Secret) -> Result<Authority, PkiError> {
        let ns = &self.namespace;
        let cert = data_text(secret, "ca-cert.pem")
            .ok_or_else(|| self.missing(SELF_SIGNED, "ca-cert.pem"))?;
        let key = data_text(secret, "ca-key.pem")
            .ok_or_else(|| self.missing(SELF_SIGNED, "ca-key.pem"))?;
        Authority::from_root_pem(
            &cert,
            &key,
            &label(ns, SELF_SIGNED, "ca-cert.pem"),
            &label(ns, SELF_SIGNED, "ca-key.pem"),
            format!("Secret {ns}/{SELF_SIGNED}"),
        )
    }

    /// Reads both Secrets: the authority they hold (cacerts first), or neither.
    /// A Secret that exists but does not parse is an error naming the Secret and key.
    async fn read(&self) -> anyhow::Result<Found> {
        if let Some(secret) = self.api.get_opt(CACERTS).await? {
            return Ok(Found::Authority(Box::new(self.plugged(&secret)?), CACERTS));
        }
        if let Some(secret) = self.api.get_opt(SELF_SIGNED).await? {
            return Ok(Found::Authority(
                Box::new(self.self_signed(&secret)?),
                SELF_SIGNED,
            ));
        }
        Ok(Found::Neither)
    }

    /// Creates `istio-ca-secret` with a new root; `false` when another replica did first.
    async fn create_self_signed(&self) -> anyhow::Result<bool> {
        let (cert, key) = Authority::new_root_pem(&self.trust_domain, self.key_type)?;
        let data = BTreeMap::from([
            ("ca-cert.pem".to_string(), ByteString(cert.into_bytes())),
            ("ca-key.pem".to_string(), ByteString(key.into_bytes())),
            // istiod's layout: empty for a self-signed root.
            ("cert-chain.pem".to_string(), ByteString(Vec::new())),
            ("root-cert.pem".to_string(), ByteString(Vec::new())),
        ]);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(SELF_SIGNED.into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "warden-ca".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("istio.io/ca-root".into()),
            data: Some(data),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The authority to start with. Waits (logging) while neither Secret exists and
    /// this replica does not lead; the leader creates `istio-ca-secret`. API errors are
    /// retried with backoff; a Secret that does not parse is fatal (the CA will not
    /// start on a broken root).
    pub async fn initial(
        &self,
        store: &Store,
        leader: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Authority> {
        let backoff = Backoff::ENVOY;
        let mut failures = 0u32;
        let mut last_wait_log: Option<tokio::time::Instant> = None;
        loop {
            let found = match self.read().await {
                Ok(f) => f,
                Err(e) if e.downcast_ref::<kube::Error>().is_some() => {
                    let wait = backoff.delay(failures, random_unit());
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, retry_in = ?wait, "reading the CA's Secrets");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => {
                    audit(
                        store,
                        &self.trust_domain,
                        "refused",
                        "start",
                        &e.to_string(),
                    )
                    .await;
                    return Err(e.context("the CA's root in the cluster is unusable"));
                }
            };
            match found {
                Found::Authority(authority, which) => {
                    audit(
                        store,
                        &self.trust_domain,
                        "loaded",
                        which,
                        authority.source(),
                    )
                    .await;
                    return Ok(*authority);
                }
                Found::Neither if *leader.borrow_and_update() => {
                    match self.create_self_signed().await {
                        Ok(true) => {
                            tracing::info!(namespace = %self.namespace, secret = SELF_SIGNED, "created a self-signed root");
                            audit(
                                store,
                                &self.trust_domain,
                                "created",
                                SELF_SIGNED,
                                "self-signed root",
                            )
                            .await;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            let wait = backoff.delay(failures, random_unit());
                            failures = failures.saturating_add(1);
                            tracing::warn!(error = %e, retry_in = ?wait, "creating {SELF_SIGNED}");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                Found::Neither => {
                    if last_wait_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::info!(namespace = %self.namespace, "waiting for the leader to create {SELF_SIGNED} (or for {CACERTS})");
                        last_wait_log = Some(tokio::time::Instant::now());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = leader.changed() => {}
                    }
                }
            }
        }
    }

    /// Where a shared key came from, for errors.
    pub fn key_label(&self, key: &str) -> PathBuf {
        label(&self.namespace, SHARED_KEYS, key)
    }

    /// The keys all replicas share, from the `warden-ca-keys` Secret; the leader makes
    /// it once (a racing create loses with `409` and loads the winner's), followers wait
    /// for it. A Secret missing a key is an error naming it.
    pub async fn shared_keys(
        &self,
        leader: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<SharedKeys> {
        let backoff = Backoff::ENVOY;
        let mut failures = 0u32;
        loop {
            match self.api.get_opt(SHARED_KEYS).await {
                Ok(Some(secret)) => {
                    let get = |key: &str| {
                        data_text(&secret, key).ok_or_else(|| self.missing(SHARED_KEYS, key))
                    };
                    return Ok(SharedKeys {
                        jwt_key: get("jwt-key.pem")?,
                        audit_key: get("audit-key.pem")?,
                    });
                }
                Ok(None) if *leader.borrow_and_update() => {
                    let data = BTreeMap::from([
                        (
                            "jwt-key.pem".to_string(),
                            ByteString(crate::pki::JwtSigner::generate_pem()?.into_bytes()),
                        ),
                        (
                            "audit-key.pem".to_string(),
                            ByteString(
                                crate::checkpoint::AuditSigner::generate_pem()?.into_bytes(),
                            ),
                        ),
                    ]);
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(SHARED_KEYS.into()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_string(),
                                "warden-ca".to_string(),
                            )])),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some(data),
                        ..Default::default()
                    };
                    match self.api.create(&PostParams::default(), &secret).await {
                        Ok(_) => {
                            tracing::info!(namespace = %self.namespace, secret = SHARED_KEYS, "created the shared JWT-SVID and audit keys");
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => {
                            let wait = backoff.delay(failures, random_unit());
                            failures = failures.saturating_add(1);
                            tracing::warn!(error = %e, retry_in = ?wait, "creating {SHARED_KEYS}");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = leader.changed() => {}
                    }
                }
                Err(e) => {
                    let wait = backoff.delay(failures, random_unit());
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, retry_in = ?wait, "reading {SHARED_KEYS}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Watches both Secrets and replaces the authority in `handle` when what they hold
    /// changes, until `shutdown` flips.
    pub async fn watch(
        self,
        handle: AuthorityHandle,
        store: Store,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let by_name = |name: &str| {
            watcher(
                self.api.clone(),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            )
            .default_backoff()
            .boxed()
        };
        let mut events = futures::stream::select(by_name(CACERTS), by_name(SELF_SIGNED));
        // What was last refused, so a broken Secret is reported once, not per event.
        let mut last_refusal = String::new();
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching the CA's Secrets");
                        continue;
                    }
                    None => return,
                },
                _ = tokio::time::sleep(RESYNC) => {}
                _ = shutdown.changed() => return,
            }
            match self.read().await {
                Ok(Found::Authority(authority, which)) => {
                    last_refusal.clear();
                    let current = handle.current();
                    if current.signing_cert() == authority.signing_cert()
                        && current.roots_pem() == authority.roots_pem()
                    {
                        continue;
                    }
                    let source = authority.source().to_string();
                    match handle.replace(*authority) {
                        Ok(bundle_changed) => {
                            tracing::info!(%source, bundle_changed, "the CA's authority changed; signing with it from now on");
                            audit(&store, &self.trust_domain, "loaded", which, &source).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot publish the new authority; keeping the one in use");
                        }
                    }
                }
                Ok(Found::Neither) => {
                    // Both deleted: keep signing with what is loaded (the leader will
                    // not silently make a new root under running workloads).
                    if last_refusal != "neither" {
                        tracing::error!(namespace = %self.namespace, "neither {CACERTS} nor {SELF_SIGNED} exists any more; keeping the authority in use");
                        last_refusal = "neither".into();
                    }
                }
                Err(e) if e.downcast_ref::<kube::Error>().is_some() => {
                    tracing::warn!(error = %e, "reading the CA's Secrets; keeping the authority in use");
                }
                Err(e) => {
                    let message = e.to_string();
                    if message != last_refusal {
                        tracing::error!(error = %message, "refusing the changed CA Secret; keeping the authority in use");
                        audit(&store, &self.trust_domain, "refused", CACERTS, &message).await;
                        last_refusal = message;
                    }
                }
            }
        }
    }
}

/// Appends a `ca.authority` audit row; a store failure is logged (the authority
/// change itself has happened or not regardless).
async fn audit(
    store: &Store,
    trust_domain: &str,
    outcome: &'static str,
    secret: &str,
    detail: &str,
) {
    let event = AuditEvent {
        event: "ca.authority",
        outcome,
        identity: format!("spiffe://{trust_domain}"),
        requester: "kubernetes".into(),
        peer_addr: format!("secret/{secret}"),
        detail: serde_json::json!({ "secret": secret, "detail": detail }),
    };
    if let Err(e) = store.audit(event).await {
        tracing::error!(error = %e, "cannot audit the authority change");
    }
}

#[cfg(test)]
mod tests;
