//! The agent's cache of identities: the registration entries of this node, one X.509-SVID
//! per identity (shared by every caller that has it), the trust bundle and the JWT
//! bundle, published as one immutable [`State`] on a watch channel. SDS and Workload
//! API streams subscribe to it and push what changed for them.
//!
//! One task per identity fetches its SVID (key made here, CSR, CreateCertificate
//! impersonating the workload under the node identity), sleeps until the refresh point
//! of the rotation schedule, and fetches again; on failure it backs off and keeps
//! serving the old SVID while it is valid, logging the first failure and the recovery,
//! not every retry. A sync task polls the CA for this node's entries and the JWT bundle,
//! starting and stopping identity tasks as entries come and go.
//!
//! In Kubernetes mode the identities also include `spiffe://TD/ns/NS/sa/SA` of every
//! service account with a pod on this node (from the pod watch), so a pod's default
//! identity is ready before it asks, as Istio serves it without any entry.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use warden_common::readiness::{BlockReady, Ready};
use warden_proto::warden_ca::GetJwtBundleResponse;
use warden_proto::{Selector, SpiffeId};

use crate::attestation::{self, Caller};
use crate::ca_client::{CaError, CertificateAuthority};
use crate::clock::Timing;
use crate::config::Mode;
use crate::kube::PodAttestor;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::rotation::RotationPolicy;
use crate::svid::{Bundle, Crls, FederatedBundle, FederatedBundles, NodeKey, Svid};

/// Most JWT-SVIDs kept; past it, expired ones are dropped, then the cache is cleared
/// (workloads choose audiences, so the key space is theirs).
const MAX_CACHED_JWTS: usize = 10_000;

/// Most CA requests in flight at once (ztunnel uses 8).
const MAX_CONCURRENT_FETCHES: usize = 8;

/// The readiness guard of node mode, held until the first entry sync is done
/// (`/ready` says `not ready: waiting for: entry-sync`).
const ENTRY_SYNC: &str = "entry-sync";

/// The readiness guard of workload mode, held until the first SVID is received.
const FIRST_SVID: &str = "first-svid";

/// A registration entry for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Entry ID.
    pub id: String,
    /// The identity it grants.
    pub spiffe_id: SpiffeId,
    /// Its selectors.
    pub selectors: Vec<Selector>,
}

/// What workloads can be served, as of one moment.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// This node's entries (node mode).
    pub entries: Arc<Vec<Entry>>,
    /// Current SVID per identity.
    pub svids: HashMap<SpiffeId, Arc<Svid>>,
    /// The trust bundle.
    pub bundle: Option<Arc<Bundle>>,
    /// The JWT bundle: trust domain and JWKS JSON.
    pub jwt_bundle: Option<Arc<(String, String)>>,
    /// The CA's CRLs, once it has published any.
    pub crls: Option<Arc<Crls>>,
    /// The bundles of the trust domains the CA federates with.
    pub federated: Arc<FederatedBundles>,
    /// Workload mode: the identity the token proves, once known.
    pub own_id: Option<SpiffeId>,
}

impl State {
    /// The identities `caller` is entitled to, in entry order, without repeats. In
    /// Kubernetes mode a caller tied to a pod also has its pod's identity (after the
    /// entries', so an entry made for it, e.g. by container name, is its default SVID),
    /// and a caller that is not tied to a pod has none.
    pub fn identities_for(&self, mode: Mode, caller: &Caller) -> Vec<SpiffeId> {
        match mode {
            Mode::Workload => self.own_id.iter().cloned().collect(),
            Mode::Node => {
                if let Some(Err(_)) = &caller.kubernetes {
                    return Vec::new();
                }
                let mut out: Vec<SpiffeId> = Vec::new();
                for e in attestation::select(&self.entries, |e| &e.selectors, caller) {
                    if !out.contains(&e.spiffe_id) {
                        out.push(e.spiffe_id.clone());
                    }
                }
                if let Some(Ok(pod)) = &caller.kubernetes
                    && !out.contains(&pod.identity)
                {
                    out.push(pod.identity.clone());
                }
                out
            }
        }
    }

    /// Socket names that `socket:NAME` entries ask for.
    pub fn socket_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .entries
            .iter()
            .flat_map(|e| e.selectors.iter())
            .filter_map(|s| match s {
                Selector::Socket(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// A JWT-SVID kept until half its life is spent.
#[derive(Debug, Clone)]
struct CachedJwt {
    token: String,
    refresh_at: SystemTime,
}

/// The identity cache and its tasks.
#[derive(Debug)]
pub struct Manager {
    ca: Arc<dyn CertificateAuthority>,
    timing: Timing,
    node: Arc<Node>,
    mode: Mode,
    ttl: Duration,
    rotation: RotationPolicy,
    sync_interval: Duration,
    write_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    ready: Ready,
    /// Held until the first entry sync (node mode) or the first SVID (workload mode).
    starting: Mutex<Option<BlockReady>>,
    state: watch::Sender<Arc<State>>,
    /// Per-identity "new SVID" notifications: a rotation wakes only the streams of
    /// that identity, not every stream on the node. Kept for every identity ever
    /// watched (one small channel each).
    svid_events: Mutex<HashMap<SpiffeId, watch::Sender<()>>>,
    tasks: Mutex<HashMap<SpiffeId, JoinHandle<()>>>,
    jwt_cache: Mutex<HashMap<(SpiffeId, Vec<String>), CachedJwt>>,
    limiter: Semaphore,
    /// Kubernetes mode: ties callers to pods.
    pod_attestor: Option<PodAttestor>,
    /// Kubernetes mode: the identities of the service accounts with pods on this node.
    pod_ids: Mutex<BTreeSet<SpiffeId>>,
    /// What the CA wants re-issued now: SVIDs of tainted authorities, revoked serials.
    tainted: watch::Sender<Arc<crate::rotation::Reissue>>,
}

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Node or workload mode.
    pub mode: Mode,
    /// Requested SVID lifetime.
    pub ttl: Duration,
    /// Refresh schedule.
    pub rotation: RotationPolicy,
    /// Entry / JWT bundle polling period.
    pub sync_interval: Duration,
    /// File output.
    pub write_dir: Option<PathBuf>,
}

impl Manager {
    /// A manager with an empty state.
    pub fn new(
        ca: Arc<dyn CertificateAuthority>,
        node: Arc<Node>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ready = Ready::new();
        let starting = ready.block(match settings.mode {
            Mode::Node => ENTRY_SYNC,
            Mode::Workload => FIRST_SVID,
        });
        Self {
            ca,
            timing: Timing::default(),
            node,
            mode: settings.mode,
            ttl: settings.ttl,
            rotation: settings.rotation,
            sync_interval: settings.sync_interval,
            write_dir: settings.write_dir,
            metrics,
            ready,
            starting: Mutex::new(Some(starting)),
            state: watch::channel(Arc::new(State::default())).0,
            svid_events: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            jwt_cache: Mutex::new(HashMap::new()),
            limiter: Semaphore::new(MAX_CONCURRENT_FETCHES),
            pod_attestor: None,
            pod_ids: Mutex::new(BTreeSet::new()),
            tainted: watch::Sender::new(Arc::new(crate::rotation::Reissue::default())),
        }
    }

    /// The CA's tainted authorities, as last synced (wakes on change).
    pub fn tainted(&self) -> crate::rotation::Tainted {
        self.tainted.subscribe()
    }

    /// Kubernetes mode: callers are tied to the pods of this node, and every service
    /// account with a pod here has its identity.
    pub fn with_pod_attestor(mut self, attestor: PodAttestor) -> Self {
        self.pod_attestor = Some(attestor);
        self
    }

    /// Kubernetes mode's pod attestor.
    pub fn pod_attestor(&self) -> Option<&PodAttestor> {
        self.pod_attestor.as_ref()
    }

    /// Keeps time with `timing` (tests: a clock that follows tokio's paused one,
    /// backoff without jitter).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Node or workload mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Readiness: held until the first entry sync (node mode) or the first SVID
    /// (workload mode).
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Releases the start-up readiness guard; true the first time.
    fn started(&self) -> bool {
        let guard = self.starting.lock().ok().and_then(|mut g| g.take());
        guard.is_some()
    }

    /// The current state.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver that wakes when entries, bundles or the workload-mode identity
    /// change. SVID rotations do not wake it: see [`Manager::watch_svids`].
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.subscribe()
    }

    /// Receivers that wake when a new SVID of one of `ids` is published. Subscribe
    /// before reading the state, so no rotation can fall in between.
    pub fn watch_svids(&self, ids: &[SpiffeId]) -> Vec<watch::Receiver<()>> {
        let Ok(mut events) = self.svid_events.lock() else {
            return Vec::new();
        };
        ids.iter()
            .map(|id| {
                events
                    .entry(id.clone())
                    .or_insert_with(|| watch::channel(()).0)
                    .subscribe()
            })
            .collect()
    }

    /// The node SVID, when the node has one.
    pub fn node_svid(&self) -> Option<Arc<Svid>> {
        self.node.svid()
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        self.state.send_modify(|s| f(Arc::make_mut(s)));
    }

    /// Starts the background work: in node mode the entry sync (which starts identity
    /// tasks), in workload mode the one identity task; the JWT bundle sync in both.
    pub fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut handles = vec![
            tokio::spawn(self.clone().sync_loop()),
            tokio::spawn(self.clone().watch_loop()),
        ];
        if self.mode == Mode::Workload {
            handles.push(tokio::spawn(self.clone().identity_loop(None)));
        }
        if self.mode == Mode::Node && self.pod_attestor.is_some() {
            handles.push(tokio::spawn(self.clone().pod_identities_loop()));
        }
        handles
    }

    /// Kubernetes mode: keeps an identity task for every service account with a pod on
    /// this node.
    async fn pod_identities_loop(self: Arc<Self>) {
        let Some(attestor) = self.pod_attestor.clone() else {
            return;
        };
        let mut changes = attestor.pods.subscribe();
        loop {
            let mut ids = BTreeSet::new();
            for (ns, sa) in attestor.pods.service_accounts() {
                match attestor.identity(&ns, &sa) {
                    Ok(id) => {
                        ids.insert(id);
                    }
                    Err(e) => tracing::warn!(error = %e, "skipping a pod's service account"),
                }
            }
            self.apply_pod_identities(ids);
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Kubernetes mode: the identities of the service accounts with pods here.
    fn apply_pod_identities(self: &Arc<Self>, ids: BTreeSet<SpiffeId>) {
        let changed = match self.pod_ids.lock() {
            Ok(mut current) if *current != ids => {
                tracing::info!(
                    identities = ids.len(),
                    "service accounts with pods on this node changed"
                );
                *current = ids;
                true
            }
            _ => false,
        };
        if changed {
            self.reconcile();
        }
    }

    /// Stops every identity task.
    pub fn stop(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, t) in tasks.drain() {
                t.abort();
            }
        }
    }

    async fn fetch(&self, id: Option<&SpiffeId>) -> Result<Svid, CaError> {
        let _permit = self.limiter.acquire().await;
        let local = |e: String| CaError {
            retry_after: None,
            code: tonic::Code::Internal,
            message: e,
        };
        let key = NodeKey::generate().map_err(|e| local(e.to_string()))?;
        let csr = key.csr_pem(id).map_err(|e| local(e.to_string()))?;
        let bearer = self.node.bearer().map_err(|e| local(e.to_string()))?;
        let impersonate = match self.mode {
            Mode::Node => id,
            Mode::Workload => None,
        };
        let answer = self
            .ca
            .create_certificate(csr, self.ttl, impersonate, bearer.as_deref())
            .await?;
        Svid::from_ca_answer(key, &answer, id, self.timing.now()).map_err(|e| local(e.to_string()))
    }

    fn publish(&self, svid: Svid) -> Arc<Svid> {
        let svid = Arc::new(svid);
        if let Some(dir) = &self.write_dir {
            let dir = match self.mode {
                Mode::Workload => dir.clone(),
                Mode::Node => crate::files::dir_for(dir, &svid.id),
            };
            if let Err(e) = crate::files::write_svid(&dir, &svid) {
                tracing::error!(id = %svid.id, dir = %dir.display(), error = %e, "cannot write the SVID files");
            }
        }
        let published = svid.clone();
        let id = svid.id.clone();
        // The SVID goes into the state without waking everyone; only a new bundle (or,
        // in workload mode, a new own identity) is news for all streams.
        self.state.send_if_modified(|s| {
            let s = Arc::make_mut(s);
            let mut news = false;
            let new_bundle = Arc::new(svid.bundle.clone());
            match &s.bundle {
                Some(b) if **b == *new_bundle => {}
                Some(_) => {
                    tracing::info!(trust_domain = %new_bundle.trust_domain, "trust bundle changed; pushing it");
                    s.bundle = Some(new_bundle);
                    news = true;
                }
                None => {
                    s.bundle = Some(new_bundle);
                    news = true;
                }
            }
            if self.mode == Mode::Workload && s.own_id.as_ref() != Some(&svid.id) {
                s.own_id = Some(svid.id.clone());
                news = true;
            }
            s.svids.insert(svid.id.clone(), svid);
            news
        });
        if let Ok(events) = self.svid_events.lock()
            && let Some(tx) = events.get(&id)
        {
            tx.send_replace(());
        }
        published
    }

    /// Fetches and refreshes one identity's SVID forever (until aborted). `None` in
    /// workload mode: the CA decides the identity from the token.
    async fn identity_loop(self: Arc<Self>, id: Option<SpiffeId>) {
        let mut attempt = 0u32;
        let mut tainted = self.tainted.subscribe();
        let label = id
            .as_ref()
            .map_or_else(|| "(token identity)".to_string(), ToString::to_string);
        loop {
            match self.fetch(id.as_ref()).await {
                Ok(svid) => {
                    if attempt > 0 {
                        tracing::info!(id = %svid.id, attempts = attempt + 1, "SVID fetch recovered");
                    }
                    attempt = 0;
                    self.metrics.svid_refreshes.fetch_add(1, Ordering::Relaxed);
                    let refresh = self.rotation.refresh_at(
                        svid.not_before,
                        svid.not_after,
                        svid.received,
                        crate::random_sample(),
                    );
                    tracing::info!(
                        id = %svid.id,
                        serial = %svid.serial,
                        not_after = %crate::rfc3339(svid.not_after),
                        refresh_at = %crate::rfc3339(refresh),
                        "SVID received"
                    );
                    let published = self.publish(svid);
                    if self.mode == Mode::Workload {
                        self.started();
                    }
                    let aki = published.authority_key_id.clone();
                    let svid_id = published.id.clone();
                    let serial = published.serial.clone();
                    drop(published);
                    let wait = refresh
                        .duration_since(self.timing.now())
                        .unwrap_or_default();
                    if crate::rotation::sleep_unless_tainted(
                        wait,
                        &mut tainted,
                        aki.as_deref(),
                        &serial,
                    )
                    .await
                    {
                        tracing::info!(id = %svid_id, %serial, authority = aki.as_deref().unwrap_or_default(), "SVID revoked or signed by a tainted authority; re-issuing it now");
                    }
                }
                Err(e) => {
                    attempt += 1;
                    self.metrics
                        .svid_refresh_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let current = self.current_svid(id.as_ref());
                    let left = current
                        .as_ref()
                        .and_then(|s| s.not_after.duration_since(self.timing.now()).ok())
                        .unwrap_or_default();
                    if attempt == 1 {
                        tracing::warn!(
                            id = %label,
                            error = %e,
                            serving_old_until = %current.as_ref().map(|s| crate::rfc3339(s.not_after)).unwrap_or_else(|| "-".into()),
                            "SVID fetch failed; keeping the current SVID and retrying with backoff"
                        );
                    } else {
                        tracing::debug!(id = %label, error = %e, attempt, "SVID fetch failed again");
                    }
                    if e.code == tonic::Code::PermissionDenied && attempt == 1 {
                        tracing::warn!(id = %label, "the CA denies this identity to this node; check the registration entry");
                    }
                    tokio::time::sleep(self.timing.retry_delay_after(attempt, left, e.retry_after))
                        .await;
                }
            }
        }
    }

    fn current_svid(&self, id: Option<&SpiffeId>) -> Option<Arc<Svid>> {
        let state = self.state.borrow();
        match id {
            Some(id) => state.svids.get(id).cloned(),
            None => state
                .own_id
                .as_ref()
                .and_then(|o| state.svids.get(o).cloned()),
        }
    }

    /// Applies a new set of entries: starts tasks for new identities, stops tasks and
    /// drops SVIDs of identities no entry (and, in Kubernetes mode, no pod) grants.
    fn apply_entries(self: &Arc<Self>, entries: Vec<Entry>) {
        let changed = *self.state.borrow().entries != entries;
        if changed {
            let ids: BTreeSet<&SpiffeId> = entries.iter().map(|e| &e.spiffe_id).collect();
            tracing::info!(
                entries = entries.len(),
                identities = ids.len(),
                "registration entries changed"
            );
            let entries = Arc::new(entries);
            self.update(|s| s.entries = entries);
        }
        self.reconcile();
    }

    /// Starts and stops identity tasks for the identities of the entries and pods.
    fn reconcile(self: &Arc<Self>) {
        let mut wanted: BTreeSet<SpiffeId> = self
            .state
            .borrow()
            .entries
            .iter()
            .map(|e| e.spiffe_id.clone())
            .collect();
        if let Ok(pod_ids) = self.pod_ids.lock() {
            wanted.extend(pod_ids.iter().cloned());
        }
        // Dropping an SVID nobody may have is no news for the streams.
        self.state.send_if_modified(|s| {
            if s.svids.keys().all(|id| wanted.contains(id)) {
                return false;
            }
            Arc::make_mut(s).svids.retain(|id, _| wanted.contains(id));
            false
        });
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        tasks.retain(|id, handle| {
            let keep = wanted.contains(id);
            if !keep {
                tracing::info!(id = %id, "identity no longer registered for this node; dropped");
                handle.abort();
            }
            keep
        });
        for id in &wanted {
            if !tasks.contains_key(id) {
                tasks.insert(
                    id.clone(),
                    tokio::spawn(self.clone().identity_loop(Some(id.clone()))),
                );
            }
        }
        if let Ok(mut cache) = self.jwt_cache.lock() {
            cache.retain(|(id, _), _| wanted.contains(id));
        }
    }

    async fn sync_entries(self: &Arc<Self>) -> Result<(), String> {
        let bearer = self.node.bearer().map_err(|e| e.to_string())?;
        let resp = self
            .ca
            .list_entries(bearer.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::with_capacity(resp.entries.len());
        for e in resp.entries {
            let spiffe_id = match SpiffeId::parse_workload(&e.spiffe_id) {
                Ok(id) => id,
                Err(err) => {
                    tracing::warn!(entry = %e.id, spiffe_id = %e.spiffe_id, error = %err, "skipping an entry with an unusable SPIFFE ID");
                    continue;
                }
            };
            let selectors: Result<Vec<Selector>, _> =
                e.selectors.iter().map(|s| s.parse()).collect();
            match selectors {
                Ok(selectors) => entries.push(Entry {
                    id: e.id,
                    spiffe_id,
                    selectors,
                }),
                Err(err) => {
                    tracing::warn!(entry = %e.id, error = %err, "skipping an entry with a selector this agent does not understand");
                }
            }
        }
        self.apply_entries(entries);
        Ok(())
    }

    async fn sync_jwt_bundle(&self) -> Result<(), String> {
        let bearer = self.node.bearer().map_err(|e| e.to_string())?;
        let resp = self
            .ca
            .jwt_bundle(bearer.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        self.apply_bundle(resp);
        Ok(())
    }

    /// Keeps WatchJwtBundle open: the CA sends the bundle, tainted authorities and
    /// CRLs the moment they change, so a rotation step or a revocation reaches this
    /// node's workloads and proxies at once, not at the next poll. Reopened with
    /// backoff when it breaks; the poll in [`Manager::sync_loop`] stays as the fallback.
    async fn watch_loop(self: Arc<Self>) {
        let mut attempt = 0u32;
        loop {
            let bearer = match self.node.bearer() {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(error = %e, "no credential for the bundle watch yet");
                    None
                }
            };
            match self.ca.watch_bundle(bearer.as_deref()).await {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            attempt = 0;
                            self.apply_bundle(resp);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "the bundle watch broke; reopening");
                            break;
                        }
                    }
                },
                Err(e) if e.code == tonic::Code::Unimplemented => {
                    tracing::info!(
                        "the CA does not stream its bundle; polling it every sync interval"
                    );
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "cannot open the bundle watch"),
            }
            attempt = attempt.saturating_add(1);
            let backoff = Duration::from_millis(500)
                .saturating_mul(1u32 << attempt.min(6))
                .min(Duration::from_secs(30));
            tokio::time::sleep(backoff).await;
        }
    }

    /// Applies the CA's bundle answer: X.509 roots, tainted authorities, CRLs, JWKS.
    fn apply_bundle(&self, resp: GetJwtBundleResponse) {
        self.apply_x509_bundle(&resp.trust_domain, &resp.x509_roots_pem);
        self.apply_federated(&resp.trust_domain, &resp.federated_bundles);
        let authorities: BTreeSet<String> = resp
            .tainted_authorities
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect();
        let serials = self.apply_crls(&resp.crl_pem);
        self.tainted.send_if_modified(|t| {
            let serials = serials.clone().unwrap_or_else(|| t.serials.clone());
            if t.authorities == authorities && t.serials == serials {
                return false;
            }
            if t.authorities != authorities {
                tracing::info!(tainted = ?authorities, "the CA's tainted authorities changed");
            }
            *t = Arc::new(crate::rotation::Reissue {
                authorities: authorities.clone(),
                serials,
            });
            true
        });
        let new = (resp.trust_domain, resp.jwks_json);
        let same = self
            .state
            .borrow()
            .jwt_bundle
            .as_ref()
            .is_some_and(|b| **b == new);
        if !same {
            tracing::info!(trust_domain = %new.0, "JWT bundle updated");
            self.update(|s| s.jwt_bundle = Some(Arc::new(new)));
        }
    }

    /// The CA's CRLs (empty from a CA that does not send them): pushed with `ROOTCA`
    /// and on the Workload API, and every SVID they revoke is dropped at once (its
    /// identity task fetches a new one, which the CA refuses while the identity itself
    /// is revoked). Returns the revoked serials, `None` when the CRLs did not parse
    /// (the current ones stay).
    fn apply_crls(&self, pem: &str) -> Option<BTreeSet<String>> {
        let crls = match Crls::from_pem(pem) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the CA's CRLs do not parse; keeping the current ones");
                return None;
            }
        };
        let serials = crls.serials.clone();
        let mut dropped: Vec<SpiffeId> = Vec::new();
        self.state.send_if_modified(|s| {
            if s.crls.as_deref() == Some(&crls) || (s.crls.is_none() && crls.der.is_empty()) {
                return false;
            }
            let s = Arc::make_mut(s);
            dropped = s
                .svids
                .iter()
                .filter(|(_, svid)| crls.serials.contains(&svid.serial))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &dropped {
                tracing::warn!(id = %id, "the CA revoked this SVID; no longer serving it");
                s.svids.remove(id);
            }
            tracing::info!(
                crls = crls.der.len(),
                revoked = crls.serials.len(),
                "CRLs changed; pushing them"
            );
            s.crls = Some(Arc::new(crls));
            true
        });
        // File output: a revoked SVID's files go too, so nothing keeps presenting it.
        if let Some(dir) = &self.write_dir {
            for id in &dropped {
                let dir = match self.mode {
                    Mode::Workload => dir.clone(),
                    Mode::Node => crate::files::dir_for(dir, id),
                };
                for f in [crate::files::CHAIN_FILE, crate::files::KEY_FILE] {
                    let _ = std::fs::remove_file(dir.join(f));
                }
            }
        }
        Some(serials)
    }

    /// The federated trust domains' bundles: pushed on the Workload API
    /// (`federated_bundles`, the bundle streams) and in SDS `ROOTCA`. A bundle that does
    /// not parse keeps the one held for its trust domain; a trust domain the CA no
    /// longer sends is dropped.
    fn apply_federated(&self, own_td: &str, sent: &[warden_proto::warden_ca::FederatedBundle]) {
        let held = self.state.borrow().federated.clone();
        let mut next = FederatedBundles::new();
        for f in sent {
            let td = f.trust_domain.to_ascii_lowercase();
            if td == own_td || SpiffeId::parse(&format!("spiffe://{td}")).is_err() {
                tracing::warn!(trust_domain = %f.trust_domain, "ignoring a federated bundle for an unusable trust domain name");
                continue;
            }
            let parsed = Bundle::from_pem(&td, &f.x509_roots_pem).and_then(|x509| {
                serde_json::from_str::<serde_json::Value>(&f.jwks_json)
                    .map_err(|e| format!("its JWKS: {e}"))?;
                Ok(FederatedBundle {
                    x509,
                    jwks_json: f.jwks_json.clone(),
                })
            });
            match parsed {
                Ok(b) => {
                    let b = match held.get(&td) {
                        Some(h) if **h == b => h.clone(),
                        _ => Arc::new(b),
                    };
                    next.insert(td, b);
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %td, error = %e, "a federated bundle does not parse; keeping the one held");
                    if let Some(h) = held.get(&td) {
                        next.insert(td, h.clone());
                    }
                }
            }
        }
        if *held != next {
            tracing::info!(trust_domains = ?next.keys().collect::<Vec<_>>(), "federated bundles changed; pushing them");
            self.update(|s| s.federated = Arc::new(next));
        }
    }

    /// The X.509 trust bundle the CA published (empty from a CA that does not send
    /// it): pushed to SDS and Workload API streams when it changed, and trusted for
    /// the CA's own serving certificate, which a newly activated root signs.
    fn apply_x509_bundle(&self, trust_domain: &str, pem: &str) {
        if pem.trim().is_empty() {
            return;
        }
        let bundle = match Bundle::from_pem(trust_domain, pem) {
            Ok(b) if !b.der.is_empty() => b,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the CA's trust bundle does not parse; keeping the current one");
                return;
            }
        };
        if let Err(e) = self.ca.set_trust(&bundle.pem) {
            tracing::warn!(error = %e, "cannot trust the CA's new bundle for connections to the CA");
        }
        self.state.send_if_modified(|s| {
            if s.bundle.as_deref() == Some(&bundle) {
                return false;
            }
            let s = Arc::make_mut(s);
            tracing::info!(trust_domain = %bundle.trust_domain, roots = bundle.der.len(), "trust bundle changed; pushing it");
            s.bundle = Some(Arc::new(bundle.clone()));
            true
        });
        // File output: each SVID's root-cert.pem follows the bundle too.
        if let Some(dir) = &self.write_dir {
            let ids: Vec<SpiffeId> = self.state.borrow().svids.keys().cloned().collect();
            for id in ids {
                let dir = match self.mode {
                    Mode::Workload => dir.clone(),
                    Mode::Node => crate::files::dir_for(dir, &id),
                };
                let path = dir.join(crate::files::ROOT_FILE);
                let current = std::fs::read_to_string(&path).unwrap_or_default();
                if current != bundle.pem
                    && let Err(e) = crate::files::write_atomic(&path, bundle.pem.as_bytes(), 0o644)
                {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the trust bundle file");
                }
            }
        }
    }

    /// Polls the CA for this node's entries (node mode) and the JWT bundle.
    async fn sync_loop(self: Arc<Self>) {
        let mut failing = false;
        loop {
            let mut result = Ok(());
            if self.mode == Mode::Node {
                result = self.sync_entries().await;
                if result.is_ok() && self.started() {
                    tracing::info!("first entry sync done; ready");
                }
            }
            if result.is_ok() {
                result = self.sync_jwt_bundle().await;
            }
            match result {
                Ok(()) if failing => {
                    tracing::info!("sync with the CA recovered");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    self.metrics
                        .entry_sync_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(error = %e, "sync with the CA failed; serving cached entries and SVIDs, retrying");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(self.sync_interval).await;
        }
    }

    /// A JWT-SVID for `id` with `audience`, minted at the CA (impersonating `id` under
    /// the node identity) and cached until half its life is spent.
    pub async fn jwt_svid(&self, id: &SpiffeId, audience: &[String]) -> Result<String, CaError> {
        let mut key_aud = audience.to_vec();
        key_aud.sort();
        key_aud.dedup();
        let key = (id.clone(), key_aud.clone());
        let now = self.timing.now();
        if let Ok(cache) = self.jwt_cache.lock()
            && let Some(c) = cache.get(&key)
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let bearer = self.node.bearer().map_err(|e| CaError {
            retry_after: None,
            code: tonic::Code::Internal,
            message: e.to_string(),
        })?;
        let impersonate = match self.mode {
            Mode::Node => Some(id),
            Mode::Workload => None,
        };
        let resp = self
            .ca
            .mint_jwt(impersonate, key_aud, bearer.as_deref())
            .await?;
        self.metrics
            .jwt_svids_minted
            .fetch_add(1, Ordering::Relaxed);
        let exp =
            SystemTime::UNIX_EPOCH + Duration::from_secs(resp.expires_at.max(0).unsigned_abs());
        let life = exp.duration_since(now).unwrap_or_default();
        if let Ok(mut cache) = self.jwt_cache.lock() {
            if cache.len() >= MAX_CACHED_JWTS {
                cache.retain(|_, c| now < c.refresh_at);
                if cache.len() >= MAX_CACHED_JWTS {
                    cache.clear();
                }
            }
            cache.insert(
                key,
                CachedJwt {
                    token: resp.token.clone(),
                    refresh_at: now + life / 2,
                },
            );
        }
        Ok(resp.token)
    }
}

#[cfg(test)]
mod tests;
