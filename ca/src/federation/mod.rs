//! SPIFFE federation (SPIFFE Federation spec): this trust domain's bundle served on a
//! bundle endpoint ([`endpoint`]), and the bundles of the trust domains it federates
//! with fetched from theirs ([`fetch`]), kept, and handed to agents beside our own
//! bundle, so a workload here can verify (and policy can name) a workload there.
//!
//! Relationships come from `--federates-with FILE`:
//!
//! ```yaml
//! - trust-domain: partner.example
//!   bundle-endpoint-url: https://ca.partner.example:8443
//!   bundle-endpoint-profile: https_spiffe      # or https_web
//!   endpoint-spiffe-id: spiffe://partner.example/warden/ca   # https_spiffe
//!   bundle-file: partner-bundle.json   # https_spiffe: the first bundle (SPIFFE JSON or PEM)
//!   ca-file: web-roots.pem             # https_web: roots for the endpoint (default: the system's)
//! ```
//!
//! Each foreign bundle is refreshed at its `spiffe_refresh_hint` (5 minutes without one,
//! bounded to 1 s..1 day), kept when a fetch fails (retried with backoff), written to
//! `<data-dir>/federation/<trust-domain>.json` so a restart starts from the last one,
//! and audited (`federation.bundle`: `updated`, `refused`) when it changes or is refused.
//! A bundle whose `spiffe_sequence` is lower than the one held is refused as a rollback.
//!
//! The file is followed while the CA runs (read every 2 s): a relationship added,
//! changed or removed takes effect without a restart and is audited
//! (`federation.relationship`); a file that does not check is refused whole, audited,
//! and the relationships in use stay. A removed trust domain's bundle leaves every
//! agent's bundles at once.

pub mod bundle;
pub mod endpoint;
pub mod fetch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use tokio::sync::watch;

use warden_proto::SpiffeId;

use crate::store::{AuditEvent, Store};
pub use bundle::{BundleError, SpiffeBundle};

/// Refresh interval when a bundle has no hint.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Shortest refresh interval honoured.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest refresh interval honoured.
const MAX_REFRESH: Duration = Duration::from_secs(86_400);

/// The bundle endpoint's authentication profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ProfileName {
    /// The endpoint presents an X.509-SVID of its own trust domain.
    #[serde(rename = "https_spiffe")]
    HttpsSpiffe,
    /// The endpoint presents a Web PKI certificate for its host name.
    #[serde(rename = "https_web")]
    HttpsWeb,
}

impl std::str::FromStr for ProfileName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "https_spiffe" => Ok(Self::HttpsSpiffe),
            "https_web" => Ok(Self::HttpsWeb),
            other => Err(format!(
                "{other:?} is not a bundle endpoint profile (https_spiffe or https_web)"
            )),
        }
    }
}

/// One relationship as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RelationshipSpec {
    /// The foreign trust domain.
    pub trust_domain: String,
    /// Where its bundle is served (`https://...`).
    pub bundle_endpoint_url: String,
    /// How that endpoint authenticates.
    pub bundle_endpoint_profile: ProfileName,
    /// https_spiffe: the SPIFFE ID the endpoint must present.
    #[serde(default)]
    pub endpoint_spiffe_id: Option<String>,
    /// https_spiffe: the first bundle of the trust domain (SPIFFE bundle JSON or PEM),
    /// used until one has been fetched.
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
    /// https_web: PEM roots for the endpoint's certificate (default: the system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How a relationship's endpoint is authenticated.
#[derive(Debug, Clone)]
pub enum Profile {
    /// By its SVID, verified with the foreign trust domain's own current bundle.
    HttpsSpiffe {
        /// The ID it must present.
        endpoint_id: SpiffeId,
    },
    /// By a Web PKI certificate for the URL's host.
    HttpsWeb {
        /// The roots it must chain to.
        roots: Arc<rustls::RootCertStore>,
    },
}

/// A checked relationship.
#[derive(Debug, Clone)]
pub struct Relationship {
    /// The foreign trust domain.
    pub trust_domain: String,
    /// The endpoint URL.
    pub url: http::Uri,
    /// Its authentication.
    pub profile: Profile,
    /// The bundle to start from, when nothing was fetched before.
    pub initial: Option<SpiffeBundle>,
}

impl Relationship {
    /// Whether `other` fetches the same way (the first bundle aside: it only matters
    /// until something was fetched).
    fn fetches_like(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain
            && self.url == other.url
            && match (&self.profile, &other.profile) {
                (
                    Profile::HttpsSpiffe { endpoint_id: a },
                    Profile::HttpsSpiffe { endpoint_id: b },
                ) => a == b,
                (Profile::HttpsWeb { roots: a }, Profile::HttpsWeb { roots: b }) => {
                    a.roots == b.roots
                }
                _ => false,
            }
    }
}

fn invalid(file: &Path, index: usize, message: impl std::fmt::Display) -> String {
    format!("{}: federates-with[{index}]: {message}", file.display())
}

/// Reads a bundle file: a SPIFFE bundle document, or PEM roots.
pub fn read_bundle_file(trust_domain: &str, path: &Path) -> Result<SpiffeBundle, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let looks_pem = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'-');
    if looks_pem {
        let roots = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
        for (i, r) in roots.iter().enumerate() {
            webpki::anchor_from_trusted_cert(r).map_err(|e| {
                format!(
                    "{}: certificate {i} is not usable as a root: {e:?}",
                    path.display()
                )
            })?;
        }
        if roots.is_empty() {
            return Err(format!("{}: holds no certificate", path.display()));
        }
        return Ok(SpiffeBundle {
            trust_domain: trust_domain.to_string(),
            x509_roots: roots,
            jwt_keys: Vec::new(),
            sequence: None,
            refresh_hint: None,
        });
    }
    SpiffeBundle::parse(trust_domain, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads and checks `--federates-with FILE`: every refusal names the file, the entry
/// and the field.
pub fn load_relationships(file: &Path, own_td: &str) -> Result<Vec<Relationship>, String> {
    let specs: Vec<RelationshipSpec> =
        warden_common::config::read_yaml(file).map_err(|e| format!("--federates-with: {e}"))?;
    let base = file.parent().unwrap_or_else(|| Path::new("."));
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let td = spec.trust_domain.trim().to_ascii_lowercase();
        SpiffeId::parse(&format!("spiffe://{td}"))
            .map_err(|e| invalid(file, i, format!("trust-domain: {e}")))?;
        if td == own_td {
            return Err(invalid(
                file,
                i,
                format!("trust-domain: {td} is this CA's own trust domain"),
            ));
        }
        if !seen.insert(td.clone()) {
            return Err(invalid(
                file,
                i,
                format!("trust-domain: {td} appears twice"),
            ));
        }
        let url: http::Uri = spec.bundle_endpoint_url.parse().map_err(|e| {
            invalid(
                file,
                i,
                format!("bundle-endpoint-url: {:?}: {e}", spec.bundle_endpoint_url),
            )
        })?;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err(invalid(
                file,
                i,
                format!(
                    "bundle-endpoint-url: {:?} must be an https:// URL with a host",
                    spec.bundle_endpoint_url
                ),
            ));
        }
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let (profile, initial) = match spec.bundle_endpoint_profile {
            ProfileName::HttpsSpiffe => {
                let id = spec.endpoint_spiffe_id.as_deref().ok_or_else(|| {
                    invalid(
                        file,
                        i,
                        "endpoint-spiffe-id is required with https_spiffe (the ID the endpoint presents)",
                    )
                })?;
                let endpoint_id = SpiffeId::parse_workload(id)
                    .map_err(|e| invalid(file, i, format!("endpoint-spiffe-id: {e}")))?;
                if spec.ca_file.is_some() {
                    return Err(invalid(
                        file,
                        i,
                        "ca-file is for https_web; https_spiffe verifies the endpoint with the trust domain's bundle",
                    ));
                }
                let initial = match &spec.bundle_file {
                    Some(p) => Some(
                        read_bundle_file(&td, &resolve(p))
                            .map_err(|e| invalid(file, i, format!("bundle-file: {e}")))?,
                    ),
                    None => None,
                };
                (Profile::HttpsSpiffe { endpoint_id }, initial)
            }
            ProfileName::HttpsWeb => {
                if spec.endpoint_spiffe_id.is_some() {
                    return Err(invalid(
                        file,
                        i,
                        "endpoint-spiffe-id is for https_spiffe; https_web checks the URL's host name",
                    ));
                }
                let mut store = rustls::RootCertStore::empty();
                match &spec.ca_file {
                    Some(p) => {
                        let p = resolve(p);
                        let pem = std::fs::read(&p).map_err(|e| {
                            invalid(file, i, format!("ca-file: {}: {e}", p.display()))
                        })?;
                        for cert in CertificateDer::pem_slice_iter(&pem) {
                            let cert = cert.map_err(|e| {
                                invalid(file, i, format!("ca-file: {}: {e}", p.display()))
                            })?;
                            store.add(cert).map_err(|e| {
                                invalid(file, i, format!("ca-file: {}: {e}", p.display()))
                            })?;
                        }
                    }
                    None => {
                        let native = rustls_native_certs::load_native_certs();
                        for cert in native.certs {
                            let _ = store.add(cert);
                        }
                    }
                }
                if store.is_empty() {
                    return Err(invalid(
                        file,
                        i,
                        "ca-file: no root to verify the endpoint with (give ca-file, or install the system's CA certificates)",
                    ));
                }
                let initial = match &spec.bundle_file {
                    Some(p) => Some(
                        read_bundle_file(&td, &resolve(p))
                            .map_err(|e| invalid(file, i, format!("bundle-file: {e}")))?,
                    ),
                    None => None,
                };
                (
                    Profile::HttpsWeb {
                        roots: Arc::new(store),
                    },
                    initial,
                )
            }
        };
        out.push(Relationship {
            trust_domain: td,
            url,
            profile,
            initial,
        });
    }
    Ok(out)
}

/// The foreign bundles held now, by trust domain.
pub type Bundles = Arc<BTreeMap<String, Arc<SpiffeBundle>>>;

/// What an operator sees of a relationship (`/federation` on the monitoring port).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RelationshipStatus {
    /// The endpoint.
    pub url: String,
    /// Unix seconds of the last successful fetch.
    pub last_success: Option<i64>,
    /// The last fetch's error, while it is failing.
    pub last_error: Option<String>,
    /// Sequence of the bundle held.
    pub sequence: Option<u64>,
    /// Roots in the bundle held.
    pub x509_roots: usize,
    /// JWT keys in the bundle held.
    pub jwt_keys: usize,
}

/// The foreign bundles, shared by the fetch tasks and the services that hand them out.
#[derive(Debug)]
pub struct Federation {
    dir: PathBuf,
    bundles: watch::Sender<Bundles>,
    status: Mutex<BTreeMap<String, RelationshipStatus>>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Federation {
    /// Starts from what `<data_dir>/federation/` holds, else each relationship's
    /// initial bundle. A stored bundle that no longer parses is refused by name.
    pub fn load(data_dir: &Path, relationships: &[Relationship]) -> Result<Arc<Self>, String> {
        let dir = data_dir.join("federation");
        let mut bundles = BTreeMap::new();
        let mut status = BTreeMap::new();
        for rel in relationships {
            let held = held_bundle(&dir, rel)?;
            status.insert(rel.trust_domain.clone(), status_of(rel, held.as_ref()));
            if let Some(b) = held {
                bundles.insert(rel.trust_domain.clone(), Arc::new(b));
            }
        }
        let (bundles, _) = watch::channel(Arc::new(bundles));
        Ok(Arc::new(Self {
            dir,
            bundles,
            status: Mutex::new(status),
        }))
    }

    /// Starts holding `rel` (a relationship added while running): its stored bundle,
    /// else its first one. Checked before anything changes.
    fn held_for(&self, rel: &Relationship) -> Result<Option<SpiffeBundle>, String> {
        held_bundle(&self.dir, rel)
    }

    /// Holds `rel` from now on, starting from `held` unless a bundle is already held.
    fn add(&self, rel: &Relationship, held: Option<SpiffeBundle>) {
        let current = self.bundle(&rel.trust_domain);
        if let Ok(mut s) = self.status.lock() {
            let mut st = status_of(rel, current.as_deref().or(held.as_ref()));
            if let Some(old) = s.get(&rel.trust_domain) {
                st.last_success = old.last_success;
            }
            s.insert(rel.trust_domain.clone(), st);
        }
        if current.is_none()
            && let Some(b) = held
        {
            let b = Arc::new(b);
            self.bundles.send_modify(|m| {
                Arc::make_mut(m).insert(rel.trust_domain.clone(), b.clone());
            });
        }
    }

    /// Stops trusting `trust_domain`: its bundle leaves the set (and agents), its
    /// stored copy is deleted.
    fn remove(&self, trust_domain: &str) {
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            s.remove(trust_domain);
            self.bundles
                .send_if_modified(|m| Arc::make_mut(m).remove(trust_domain).is_some());
        }
        let path = self.dir.join(format!("{trust_domain}.json"));
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a removed trust domain's stored bundle");
        }
    }

    /// The bundles now.
    pub fn bundles(&self) -> Bundles {
        self.bundles.borrow().clone()
    }

    /// Follows the bundles.
    pub fn subscribe(&self) -> watch::Receiver<Bundles> {
        self.bundles.subscribe()
    }

    /// One trust domain's bundle now.
    pub fn bundle(&self, trust_domain: &str) -> Option<Arc<SpiffeBundle>> {
        self.bundles.borrow().get(trust_domain).cloned()
    }

    /// Each relationship's state, for operators.
    pub fn status(&self) -> BTreeMap<String, RelationshipStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set_status(&self, td: &str, f: impl FnOnce(&mut RelationshipStatus)) {
        if let Ok(mut s) = self.status.lock()
            && let Some(st) = s.get_mut(td)
        {
            f(st);
        }
    }

    /// Takes a fetched bundle: refused when it would roll the sequence back; otherwise
    /// stored and published when its keys changed. Returns whether they changed.
    fn accept(&self, fetched: SpiffeBundle) -> Result<bool, String> {
        let td = fetched.trust_domain.clone();
        // All under the status lock, so a relationship removed meanwhile stays removed
        // (nothing published, nothing stored).
        let mut status = self
            .status
            .lock()
            .map_err(|_| "the federation state is poisoned".to_string())?;
        let Some(st) = status.get_mut(&td) else {
            return Ok(false);
        };
        let current = self.bundle(&td);
        if let (Some(cur), Some(new)) =
            (current.as_ref().and_then(|c| c.sequence), fetched.sequence)
            && new < cur
        {
            return Err(format!(
                "spiffe_sequence {new} is lower than the {cur} held: refused as a rollback"
            ));
        }
        let changed = current.as_ref().is_none_or(|c| !c.same_keys(&fetched));
        if current.as_deref() != Some(&fetched) {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| format!("{}: {e}", self.dir.display()))?;
            let path = self.dir.join(format!("{td}.json"));
            let doc = fetched.to_json()?;
            warden_common::files::write_atomic(&path, doc.as_bytes(), 0o644)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            st.sequence = fetched.sequence;
            st.x509_roots = fetched.x509_roots.len();
            st.jwt_keys = fetched.jwt_keys.len();
            let fetched = Arc::new(fetched);
            self.bundles.send_modify(|b| {
                Arc::make_mut(b).insert(td.clone(), fetched);
            });
        }
        Ok(changed)
    }
}

/// The bundle to hold for `rel`: the one stored under `dir`, else its first one.
fn held_bundle(dir: &Path, rel: &Relationship) -> Result<Option<SpiffeBundle>, String> {
    let path = dir.join(format!("{}.json", rel.trust_domain));
    let stored = match std::fs::read(&path) {
        Ok(bytes) => Some(SpiffeBundle::parse(&rel.trust_domain, &bytes).map_err(|e| {
            format!(
                "{}: {e} (delete it to start from bundle-file)",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    Ok(stored.or_else(|| rel.initial.clone()))
}

fn status_of(rel: &Relationship, held: Option<&SpiffeBundle>) -> RelationshipStatus {
    RelationshipStatus {
        url: rel.url.to_string(),
        sequence: held.and_then(|b| b.sequence),
        x509_roots: held.map_or(0, |b| b.x509_roots.len()),
        jwt_keys: held.map_or(0, |b| b.jwt_keys.len()),
        ..Default::default()
    }
}

/// How often `--federates-with` is read for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the relationships of `file` (starting with `initial`, read at start): one
/// [`follow`] task each, re-read every [`RELOAD_INTERVAL`]; changes are applied whole
/// or not at all, and audited.
pub async fn run(
    federation: Arc<Federation>,
    file: PathBuf,
    initial: Vec<Relationship>,
    store: Store,
    own_trust_domain: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let child_shutdown = shutdown.clone();
    let spawn = |rel: Relationship| {
        tokio::spawn(follow(
            federation.clone(),
            rel,
            store.clone(),
            own_trust_domain.clone(),
            child_shutdown.clone(),
        ))
    };
    let mut running: BTreeMap<String, (Relationship, tokio::task::JoinHandle<()>)> = initial
        .into_iter()
        .map(|rel| (rel.trust_domain.clone(), (rel.clone(), spawn(rel))))
        .collect();
    let mut last_bytes = std::fs::read(&file).ok();
    let mut last_refusal: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(RELOAD_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
        let bytes = std::fs::read(&file).ok();
        if bytes == last_bytes {
            continue;
        }
        let checked = load_relationships(&file, &own_trust_domain).and_then(|rels| {
            // Everything an added relationship needs is read before anything changes.
            rels.into_iter()
                .map(|rel| {
                    let held = if running.contains_key(&rel.trust_domain) {
                        None
                    } else {
                        federation.held_for(&rel)?
                    };
                    Ok((rel, held))
                })
                .collect::<Result<Vec<_>, String>>()
        });
        let rels = match checked {
            Ok(rels) => rels,
            Err(e) => {
                // Not taken: a half-written file may be finished by the next read.
                if last_refusal.as_deref() != Some(e.as_str()) {
                    tracing::warn!(file = %file.display(), error = %e, "--federates-with changed but does not check; keeping the relationships in use");
                    audit_relationship(
                        &store,
                        &own_trust_domain,
                        "",
                        "refused",
                        serde_json::json!({"error": e, "file": file.display().to_string()}),
                    )
                    .await;
                    last_refusal = Some(e);
                }
                continue;
            }
        };
        last_bytes = bytes;
        last_refusal = None;
        let wanted: std::collections::BTreeSet<String> =
            rels.iter().map(|(r, _)| r.trust_domain.clone()).collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|td| !wanted.contains(*td))
            .cloned()
            .collect();
        for td in gone {
            if let Some((rel, task)) = running.remove(&td) {
                task.abort();
                federation.remove(&td);
                tracing::info!(trust_domain = %td, "federation with this trust domain removed");
                audit_relationship(
                    &store,
                    &own_trust_domain,
                    &td,
                    "removed",
                    serde_json::json!({"url": rel.url.to_string()}),
                )
                .await;
            }
        }
        for (rel, held) in rels {
            let td = rel.trust_domain.clone();
            let outcome = match running.get(&td) {
                Some((old, _)) if old.fetches_like(&rel) => continue,
                Some(_) => "changed",
                None => "added",
            };
            if let Some((_, task)) = running.remove(&td) {
                task.abort();
            }
            federation.add(&rel, held);
            tracing::info!(trust_domain = %td, url = %rel.url, outcome, "federation relationship");
            audit_relationship(
                &store,
                &own_trust_domain,
                &td,
                outcome,
                serde_json::json!({"url": rel.url.to_string()}),
            )
            .await;
            running.insert(td, (rel.clone(), spawn(rel)));
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}

async fn audit_relationship(
    store: &Store,
    own_td: &str,
    trust_domain: &str,
    outcome: &'static str,
    detail: serde_json::Value,
) {
    let event = AuditEvent {
        event: "federation.relationship",
        outcome,
        identity: if trust_domain.is_empty() {
            String::new()
        } else {
            format!("spiffe://{trust_domain}")
        },
        requester: format!("spiffe://{own_td}"),
        peer_addr: String::new(),
        detail,
    };
    if let Err(e) = store.audit(event).await {
        tracing::error!(error = %e, "cannot audit the federation relationship change");
    }
}

/// How long until the next fetch after a success.
fn refresh_after(hint: Option<Duration>) -> Duration {
    hint.unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Keeps one relationship's bundle fresh until `shutdown` flips.
pub async fn follow(
    federation: Arc<Federation>,
    rel: Relationship,
    store: Store,
    own_trust_domain: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let td = rel.trust_domain.clone();
    let mut failures = 0u32;
    let mut last_refusal: Option<String> = None;
    loop {
        // A bundle the endpoint served but that cannot be taken (a rollback) is
        // refused like one that does not parse.
        let result = fetch::fetch(&rel, federation.bundle(&td).as_deref())
            .await
            .and_then(|fetched| {
                let seen = (
                    fetched.refresh_hint,
                    fetched.x509_roots.len(),
                    fetched.jwt_keys.len(),
                    fetched.sequence,
                );
                federation
                    .accept(fetched)
                    .map(|changed| (changed, seen))
                    .map_err(fetch::FetchError::Refused)
            });
        let wait = match result {
            Ok((changed, (hint, roots, keys, seq))) => {
                if failures > 0 {
                    tracing::info!(trust_domain = %td, "the federated bundle endpoint answers again");
                }
                failures = 0;
                last_refusal = None;
                federation.set_status(&td, |st| {
                    st.last_success = Some(unix_now());
                    st.last_error = None;
                });
                if changed {
                    tracing::info!(trust_domain = %td, roots, jwt_keys = keys, sequence = ?seq, "federated bundle updated");
                    audit(
                        &store,
                        &own_trust_domain,
                        &rel,
                        "updated",
                        serde_json::json!({
                            "x509_roots": roots,
                            "jwt_keys": keys,
                            "sequence": seq,
                        }),
                    )
                    .await;
                }
                refresh_after(hint)
            }
            Err(fetch::FetchError::Refused(e)) => {
                failures += 1;
                refused(
                    &federation,
                    &store,
                    &own_trust_domain,
                    &rel,
                    &mut last_refusal,
                    e,
                )
                .await;
                retry_after(failures)
            }
            Err(fetch::FetchError::Unreachable(e)) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(trust_domain = %td, url = %rel.url, error = %e, "cannot fetch the federated bundle; keeping the one held and retrying");
                } else {
                    tracing::debug!(trust_domain = %td, error = %e, "federated bundle fetch failed again");
                }
                federation.set_status(&td, |st| st.last_error = Some(e));
                retry_after(failures)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A bundle the endpoint served but that cannot be taken: logged, and audited once per
/// distinct reason.
async fn refused(
    federation: &Federation,
    store: &Store,
    own_td: &str,
    rel: &Relationship,
    last: &mut Option<String>,
    reason: String,
) {
    federation.set_status(&rel.trust_domain, |st| st.last_error = Some(reason.clone()));
    if last.as_deref() == Some(reason.as_str()) {
        return;
    }
    tracing::warn!(trust_domain = %rel.trust_domain, url = %rel.url, error = %reason, "refused the federated bundle; keeping the one held");
    audit(
        store,
        own_td,
        rel,
        "refused",
        serde_json::json!({ "error": reason }),
    )
    .await;
    *last = Some(reason);
}

/// Backoff after a failed fetch: 1 s doubling to 5 minutes.
fn retry_after(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(9))
        .min(Duration::from_secs(300))
}

async fn audit(
    store: &Store,
    own_td: &str,
    rel: &Relationship,
    outcome: &'static str,
    mut detail: serde_json::Value,
) {
    if let Some(d) = detail.as_object_mut() {
        d.insert("url".into(), rel.url.to_string().into());
    }
    let event = AuditEvent {
        event: "federation.bundle",
        outcome,
        identity: format!("spiffe://{}", rel.trust_domain),
        requester: format!("spiffe://{own_td}"),
        peer_addr: rel
            .url
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        detail,
    };
    if let Err(e) = store.audit(event).await {
        tracing::error!(error = %e, "cannot audit the federated bundle change");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn root_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn relationships_are_checked_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.pem"), root_pem()).unwrap();
        let file = dir.path().join("fed.yaml");
        let cases = [
            (
                "- trust-domain: a.example\n  bundle-endpoint-url: https://h:1\n  bundle-endpoint-profile: https_spiffe\n  endpoint-spiffe-id: spiffe://a.example/warden/ca\n  bundle-file: p.pem\n",
                "",
            ),
            (
                "- trust-domain: own.example\n  bundle-endpoint-url: https://h:1\n  bundle-endpoint-profile: https_spiffe\n  endpoint-spiffe-id: spiffe://own.example/x\n",
                "federates-with[0]: trust-domain: own.example is this CA's own trust domain",
            ),
            (
                "- trust-domain: a.example\n  bundle-endpoint-url: http://h:1\n  bundle-endpoint-profile: https_spiffe\n  endpoint-spiffe-id: spiffe://a.example/x\n",
                "must be an https:// URL",
            ),
            (
                "- trust-domain: a.example\n  bundle-endpoint-url: https://h:1\n  bundle-endpoint-profile: https_spiffe\n",
                "endpoint-spiffe-id is required with https_spiffe",
            ),
            (
                "- trust-domain: a.example\n  bundle-endpoint-url: https://h:1\n  bundle-endpoint-profile: https_spiffe\n  endpoint-spiffe-id: spiffe://a.example/x\n  bundle-file: missing.pem\n",
                "bundle-file:",
            ),
            (
                "- trust-domain: a.example\n  bundle-endpoint-url: https://h:1\n  bundle-endpoint-profile: https_web\n  ca-file: p.pem\n- trust-domain: a.example\n  bundle-endpoint-url: https://h:1\n  bundle-endpoint-profile: https_web\n  ca-file: p.pem\n",
                "federates-with[1]: trust-domain: a.example appears twice",
            ),
            (
                "- trust-domain: a.example\n  bundle-endpoint-url: https://h:1\n  bundle-endpoint-profile: https_other\n",
                "unknown variant",
            ),
            (
                "- trust-domain: a.example\n  bundle-endpoint-url: https://h:1\n  bundle-endpoint-profile: https_web\n  typo: 1\n",
                "typo",
            ),
        ];
        for (yaml, want) in cases {
            std::fs::write(&file, yaml).unwrap();
            match load_relationships(&file, "own.example") {
                Ok(rels) => assert!(want.is_empty(), "{yaml}: accepted, wanted {want}: {rels:?}"),
                Err(e) => {
                    assert!(
                        !want.is_empty() && e.contains(want),
                        "{yaml}: {e} (wanted {want})"
                    );
                    assert!(e.contains("fed.yaml"), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_rollback_is_refused_and_a_new_bundle_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let fed = Federation::load(dir.path(), &[]).unwrap();
        let mk = |seq| {
            let pem = root_pem();
            let mut b = read_bundle_file_from_pem("a.example", &pem);
            b.sequence = Some(seq);
            b
        };
        let rel = Relationship {
            trust_domain: "a.example".into(),
            url: "https://h:1/".parse().unwrap(),
            profile: Profile::HttpsSpiffe {
                endpoint_id: SpiffeId::parse("spiffe://a.example/warden/ca").unwrap(),
            },
            initial: None,
        };
        // A trust domain no relationship names takes nothing.
        assert!(!fed.accept(mk(5)).unwrap());
        assert!(fed.bundle("a.example").is_none());
        fed.add(&rel, None);
        assert!(fed.accept(mk(5)).unwrap());
        let err = fed.accept(mk(4)).unwrap_err();
        assert!(err.contains("lower than the 5 held"), "{err}");
        let held = fed.bundle("a.example").unwrap();
        let mut same = (*held).clone();
        same.sequence = Some(6);
        assert!(
            !fed.accept(same).unwrap(),
            "same keys, new sequence: not a change"
        );
        assert_eq!(fed.bundle("a.example").unwrap().sequence, Some(6));
        let stored = std::fs::read(dir.path().join("federation/a.example.json")).unwrap();
        assert_eq!(
            SpiffeBundle::parse("a.example", &stored).unwrap().sequence,
            Some(6)
        );
        // Removed: out of the set, the stored copy gone, a late fetch dropped.
        fed.remove("a.example");
        assert!(fed.bundle("a.example").is_none());
        assert!(!dir.path().join("federation/a.example.json").exists());
        assert!(!fed.accept(mk(7)).unwrap());
        assert!(fed.bundle("a.example").is_none());
        assert!(fed.status().is_empty());
    }

    fn read_bundle_file_from_pem(td: &str, pem: &str) -> SpiffeBundle {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.pem");
        std::fs::write(&p, pem).unwrap();
        read_bundle_file(td, &p).unwrap()
    }

    #[test]
    fn refresh_and_retry_are_bounded() {
        assert_eq!(refresh_after(None), DEFAULT_REFRESH);
        assert_eq!(refresh_after(Some(Duration::ZERO)), MIN_REFRESH);
        assert_eq!(
            refresh_after(Some(Duration::from_secs(1 << 30))),
            MAX_REFRESH
        );
        assert_eq!(retry_after(1), Duration::from_secs(1));
        assert_eq!(retry_after(3), Duration::from_secs(4));
        assert_eq!(retry_after(100), Duration::from_secs(300));
    }
}
