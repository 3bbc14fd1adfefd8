//! The proxy's mesh config: a directory of Istio YAML, compiled into one immutable
//! [`MeshConfig`] (the registry, the proxy's own workload, and the AuthorizationPolicy,
//! PeerAuthentication and RequestAuthentication engines), and watched for changes.
//!
//! Loading is all or nothing: a problem anywhere (a file, a resource, a policy, the
//! registry, the proxy's own `WorkloadEntry` missing) rejects the whole snapshot, and
//! [`ConfigWatch`] keeps the last good one in force. The data path reads snapshots from
//! a `tokio::sync::watch` channel, so a change applies to new connections and requests
//! without touching live ones.
//!
//! The directory is polled every [`POLL_INTERVAL`] (no inotify: polling sees editors'
//! atomic renames, Kubernetes ConfigMap `..data` symlink swaps and network file systems
//! alike). A change is noticed from the files' (path, size, mtime, inode) and confirmed
//! by a SHA-256 of their contents, so a `touch` or an identical rewrite changes nothing,
//! and the same broken content is reported once. Files and directories whose names start
//! with `.` are skipped (ConfigMap's `..data` and `..<timestamp>` directories, editors'
//! swap and lock files); `*.yaml`, `*.yml` and `*.json` are read, recursively, in name
//! order. JWKS files that RequestAuthentications name by `jwksUri` are watched too,
//! wherever they are.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ring::digest;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use warden_policy::authz;
use warden_policy::loader::{self, ConfigSet};
use warden_policy::peer_authn::PeerAuthn;
use warden_policy::request_authn::RequestAuthn;
use warden_proto::SpiffeId;

use crate::registry::{LocalWorkload, Registry};
use crate::traffic_policy::{DestinationRules, H2UpgradePolicy};
use warden_policy::normalize::PathNormalization;

/// How often the directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Contents are hashed at least this often (in polls) even when no file's metadata
/// changed: file systems with coarse mtimes can hide a same-size rewrite.
const HASH_EVERY: u32 = 20;
/// How deep directories are followed (symlinks to directories are followed).
const MAX_DEPTH: usize = 16;

/// Where the config is and whom it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOptions {
    /// The directory of Istio YAML.
    pub dir: PathBuf,
    /// Istio's root namespace (mesh-wide policies), `istio-system` by default.
    pub root_namespace: String,
    /// The mesh trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The name of this proxy's `WorkloadEntry`.
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// The mesh-wide settings (`--mesh-config`).
    pub settings: MeshSettings,
}

/// The parts of Istio's MeshConfig (the `mesh` key of the `istio` ConfigMap) the
/// proxy applies, read once at start from `--mesh-config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshSettings {
    /// `pathNormalization.normalization` (`BASE` by default).
    pub path_normalization: PathNormalization,
    /// `h2UpgradePolicy` (`DO_NOT_UPGRADE` by default).
    pub h2_upgrade_policy: H2UpgradePolicy,
}

impl MeshSettings {
    /// Reads a MeshConfig YAML file. Fields Warden does not use are returned by name,
    /// for a warning; a field it uses with a wrong value is an error naming the file
    /// and the field.
    pub fn load(path: &Path) -> Result<(Self, Vec<String>), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the mesh config: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// [`MeshSettings::load`] on YAML text.
    pub fn parse(text: &str) -> Result<(Self, Vec<String>), String> {
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_saphyr::from_str(text).map_err(|e| format!("not YAML: {e}"))?
        };
        let serde_json::Value::Object(map) = value else {
            return Err(
                "expected a MeshConfig mapping (pathNormalization, h2UpgradePolicy, ...)".into(),
            );
        };
        let mut settings = Self::default();
        let mut unused = Vec::new();
        for (key, v) in &map {
            match key.as_str() {
                "pathNormalization" => {
                    let n = v.get("normalization").unwrap_or(&serde_json::Value::Null);
                    match n {
                        serde_json::Value::Null => {}
                        serde_json::Value::String(s) => {
                            settings.path_normalization = PathNormalization::parse(s)
                                .map_err(|e| format!("pathNormalization.normalization: {e}"))?;
                        }
                        _ => return Err("pathNormalization.normalization: expected NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES".into()),
                    }
                    if let Some(obj) = v.as_object() {
                        unused.extend(
                            obj.keys()
                                .filter(|k| *k != "normalization")
                                .map(|k| format!("pathNormalization.{k}")),
                        );
                    }
                }
                "h2UpgradePolicy" => {
                    settings.h2_upgrade_policy = match v.as_str() {
                        _ if v.is_null() => H2UpgradePolicy::Default,
                        Some("DO_NOT_UPGRADE") => H2UpgradePolicy::DoNotUpgrade,
                        Some("UPGRADE") => H2UpgradePolicy::Upgrade,
                        _ => {
                            return Err(format!(
                                "h2UpgradePolicy: {v} is not DO_NOT_UPGRADE or UPGRADE"
                            ));
                        }
                    };
                }
                other => unused.push(other.to_string()),
            }
        }
        Ok((settings, unused))
    }
}

/// One compiled, immutable snapshot of the mesh config.
#[derive(Debug)]
pub struct MeshConfig {
    /// 1 for the first snapshot, +1 for each applied change.
    pub generation: u64,
    /// Services and workloads.
    pub registry: Registry,
    /// This proxy's own workload.
    pub local: LocalWorkload,
    /// AuthorizationPolicies.
    pub authz: authz::Engine,
    /// PeerAuthentications.
    pub peer_authn: PeerAuthn,
    /// RequestAuthentications.
    pub request_authn: RequestAuthn,
    /// DestinationRules (the HTTP version toward each destination).
    pub destination_rules: DestinationRules,
    /// The mesh-wide settings.
    pub settings: MeshSettings,
    /// How many YAML/JSON files were read.
    pub files: usize,
    /// How many resources of the kinds Warden reads they held.
    pub resources: usize,
}

/// What was being done when a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Checking [`ConfigOptions`].
    Options,
    /// Reading and parsing the files.
    Load,
    /// Compiling AuthorizationPolicies.
    Authz,
    /// Compiling RequestAuthentications.
    RequestAuthn,
    /// Building the registry from ServiceEntries and WorkloadEntries.
    Registry,
    /// Reading DestinationRules.
    DestinationRules,
    /// Finding the proxy's own WorkloadEntry.
    LocalWorkload,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Options => "checking the options",
            Self::Load => "loading",
            Self::Authz => "compiling AuthorizationPolicies",
            Self::RequestAuthn => "compiling RequestAuthentications",
            Self::Registry => "building the service registry",
            Self::DestinationRules => "reading DestinationRules",
            Self::LocalWorkload => "finding the proxy's own WorkloadEntry",
        })
    }
}

/// One problem with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What was being done.
    pub stage: Stage,
    /// The problem, as the loader or compiler words it (`file:line: document N: ...`).
    pub message: String,
}

/// Why a config was rejected: every problem found, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config directory.
    pub dir: PathBuf,
    /// The problems, in the order found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", p.stage, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads and compiles the config in `opts.dir` as snapshot `generation`, all or nothing.
pub fn load(opts: &ConfigOptions, generation: u64) -> Result<MeshConfig, ConfigError> {
    load_with_refs(opts, generation).0
}

/// [`load`], and the JWKS files the RequestAuthentications name (`None` when the files
/// did not parse, so they are unknown).
fn load_with_refs(
    opts: &ConfigOptions,
    generation: u64,
) -> (Result<MeshConfig, ConfigError>, Option<Vec<PathBuf>>) {
    let mut problems = Vec::new();
    let mut problem = |stage, message: String| problems.push(Problem { stage, message });
    let err = |problems| ConfigError {
        dir: opts.dir.clone(),
        problems,
    };

    match SpiffeId::parse(&format!("spiffe://{}", opts.trust_domain)) {
        Ok(id) if id.path().is_empty() => {}
        _ => problem(
            Stage::Options,
            format!(
                "trust domain {:?} is not valid: expected 1-255 characters of [a-z0-9._-]",
                opts.trust_domain
            ),
        ),
    }
    let files = match config_files(&opts.dir) {
        Ok(files) => files,
        Err(e) => {
            problem(Stage::Load, e);
            return (Err(err(problems)), None);
        }
    };
    let set = match loader::load(&files) {
        Ok(set) => set,
        Err(e) => {
            for e in e.0 {
                problem(Stage::Load, e.to_string());
            }
            return (Err(err(problems)), None);
        }
    };
    let refs = jwks_files(&set);

    let authz = authz::Engine::compile_for(&set, &opts.root_namespace, &opts.trust_domain)
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::Authz, e.to_string()))
        })
        .ok();
    let peer_authn = PeerAuthn::new(&set, &opts.root_namespace);
    let request_authn = RequestAuthn::compile(&set, &opts.root_namespace)
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::RequestAuthn, e.to_string()))
        })
        .ok();
    let registry = Registry::build(&set, &opts.trust_domain)
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::Registry, e.to_string()))
        })
        .ok();
    let destination_rules = DestinationRules::compile(&set, &opts.root_namespace)
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::DestinationRules, e.to_string()))
        })
        .ok();
    let local = registry.as_ref().and_then(|r| {
        let local = r.workload(&opts.namespace, &opts.workload).cloned();
        if local.is_none() {
            problem(
                Stage::LocalWorkload,
                format!(
                    "no WorkloadEntry {}/{} in {}: the proxy's own workload (its address, labels and service account) must be declared there",
                    opts.namespace,
                    opts.workload,
                    opts.dir.display()
                ),
            );
        }
        local
    });
    let result = match (authz, request_authn, registry, local, destination_rules) {
        (
            Some(authz),
            Some(request_authn),
            Some(registry),
            Some(local),
            Some(destination_rules),
        ) if problems.is_empty() => Ok(MeshConfig {
            generation,
            registry,
            local,
            authz,
            peer_authn,
            request_authn,
            destination_rules,
            settings: opts.settings,
            files: files.len(),
            resources: resources(&set),
        }),
        _ => Err(err(problems)),
    };
    (result, Some(refs))
}

fn resources(set: &ConfigSet) -> usize {
    set.authorization_policies.len()
        + set.peer_authentications.len()
        + set.request_authentications.len()
        + set.service_entries.len()
        + set.workload_entries.len()
        + set.virtual_services.len()
        + set.destination_rules.len()
        + set.gateways.len()
}

/// The YAML/JSON files under `dir`, recursively, sorted; names starting with `.` are
/// skipped. The error names the path.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let at = |e: io::Error| format!("{}: {e}", dir.display());
        let mut entries = std::fs::read_dir(dir)
            .map_err(at)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        entries.sort();
        for path in entries {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
            if hidden {
                continue;
            }
            let is_config = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            // Follows symlinks: ConfigMap files are links into `..data`.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => {
                    if depth >= MAX_DEPTH {
                        return Err(format!(
                            "{}: directories nested more than {MAX_DEPTH} deep (a symlink loop?)",
                            path.display()
                        ));
                    }
                    walk(&path, depth + 1, out)?;
                }
                Ok(m) if m.is_file() && is_config => out.push(path),
                Ok(_) => {}
                // A config file that cannot be read must not silently drop out of the set.
                Err(e) if is_config => return Err(format!("{}: {e}", path.display())),
                Err(_) => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, 0, &mut out)?;
    Ok(out)
}

/// The JWKS files RequestAuthentications read (`jwksUri` paths and `file://` URLs,
/// relative to the YAML file's directory, when no inline `jwks` is set), as
/// `request_authn` resolves them.
fn jwks_files(set: &ConfigSet) -> Vec<PathBuf> {
    let mut out = BTreeSet::new();
    for ra in &set.request_authentications {
        let dir = ra.origin.file.parent().unwrap_or(Path::new(""));
        for rule in &ra.resource.spec.jwt_rules {
            if rule.jwks.as_deref().is_some_and(|s| !s.trim().is_empty()) {
                continue;
            }
            let uri = rule.jwks_uri.as_deref().unwrap_or_default();
            let path = match uri.strip_prefix("file://") {
                Some(p) => p,
                None if uri.is_empty() || uri.contains("://") => continue,
                None => uri,
            };
            out.insert(dir.join(path));
        }
    }
    out.into_iter().collect()
}

/// What a poll sees of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    /// Size, mtime, inode; `None` if it cannot be read.
    meta: Option<(u64, Option<SystemTime>, u64)>,
}

impl Stamp {
    fn of(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            meta: std::fs::metadata(path)
                .ok()
                .map(|m| (m.len(), m.modified().ok(), inode(&m))),
        }
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// The files a config is made of, as of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scan {
    /// The config files, or why the directory cannot be walked.
    files: Result<Vec<Stamp>, String>,
    /// The JWKS files of the last config that parsed.
    refs: Vec<Stamp>,
}

/// What one poll did.
#[derive(Debug)]
enum Outcome {
    /// Nothing changed (or a change is still being written).
    Unchanged,
    /// A new snapshot.
    Applied(Arc<MeshConfig>),
    /// A change was rejected; the last good snapshot stays.
    Rejected(ConfigError),
}

/// The change detector: synchronous, run on a blocking thread.
#[derive(Debug)]
struct Poller {
    opts: ConfigOptions,
    /// The generation in force.
    generation: u64,
    /// The last scan whose contents were hashed.
    scan: Option<Scan>,
    /// The hash of the last contents loaded (good or bad).
    hash: Option<[u8; 32]>,
    /// The JWKS files to watch.
    refs: Vec<PathBuf>,
    /// Polls since the contents were last hashed.
    unhashed: u32,
}

impl Poller {
    fn new(opts: ConfigOptions) -> Self {
        Self {
            opts,
            generation: 0,
            scan: None,
            hash: None,
            refs: Vec::new(),
            unhashed: 0,
        }
    }

    fn scan(&self) -> Scan {
        Scan {
            files: config_files(&self.opts.dir)
                .map(|files| files.iter().map(|p| Stamp::of(p)).collect()),
            refs: self.refs.iter().map(|p| Stamp::of(p)).collect(),
        }
    }

    /// SHA-256 over the sorted (path, contents) of the scanned files; `None` when a
    /// file vanished since the scan (a change in progress: look again next poll).
    fn hash(scan: &Scan) -> Option<[u8; 32]> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut paths = BTreeSet::new();
        match &scan.files {
            Ok(files) => paths.extend(files.iter().map(|s| s.path.as_path())),
            Err(e) => {
                ctx.update(b"walk error\0");
                ctx.update(e.as_bytes());
            }
        }
        let walked = paths.clone();
        paths.extend(scan.refs.iter().map(|s| s.path.as_path()));
        for path in paths {
            ctx.update(path.as_os_str().as_encoded_bytes());
            ctx.update(b"\0");
            match std::fs::read(path) {
                Ok(bytes) => {
                    ctx.update(&(bytes.len() as u64).to_le_bytes());
                    ctx.update(&bytes);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && walked.contains(path) => {
                    return None;
                }
                Err(e) => {
                    ctx.update(b"error\0");
                    ctx.update(e.to_string().as_bytes());
                }
            }
        }
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Some(out)
    }

    /// Looks at the files, and loads them if their contents changed.
    fn poll(&mut self) -> Outcome {
        let scan = self.scan();
        self.unhashed += 1;
        if self.scan.as_ref() == Some(&scan) && self.unhashed < HASH_EVERY {
            return Outcome::Unchanged;
        }
        self.unhashed = 0;
        let Some(hash) = Self::hash(&scan) else {
            return Outcome::Unchanged;
        };
        self.scan = Some(scan);
        if self.hash == Some(hash) {
            return Outcome::Unchanged;
        }
        self.hash = Some(hash);
        let (result, refs) = load_with_refs(&self.opts, self.generation + 1);
        if let Some(refs) = refs
            && refs != self.refs
        {
            // Watch the new JWKS set from now on, hashed as the load just read it (a
            // write in the few milliseconds since then is seen at its next change).
            self.refs = refs;
            let scan = self.scan();
            if let Some(hash) = Self::hash(&scan) {
                self.scan = Some(scan);
                self.hash = Some(hash);
            }
        }
        match result {
            Ok(config) => {
                self.generation = config.generation;
                Outcome::Applied(Arc::new(config))
            }
            Err(e) => Outcome::Rejected(e),
        }
    }
}

/// Counters of the config watch, exported as metrics.
#[derive(Debug, Default)]
pub struct ConfigStats {
    /// Snapshots applied, the first one included.
    pub applied: AtomicU64,
    /// Changes rejected.
    pub rejected: AtomicU64,
    /// The generation in force.
    pub generation: AtomicU64,
}

/// Watches the config directory and publishes each valid change; see the module docs.
/// Dropping it stops the watch (the last snapshot stays with the receivers).
#[derive(Debug)]
#[must_use = "dropping the ConfigWatch stops watching the config directory"]
pub struct ConfigWatch {
    task: JoinHandle<()>,
    stats: Arc<ConfigStats>,
}

impl ConfigWatch {
    /// Loads the config once (an error means the proxy must not start), then watches
    /// `opts.dir` in a task: a valid change is published within about a second; an
    /// invalid one is logged and counted, and the last good snapshot stays. The watch
    /// ends when every receiver is gone or this is dropped. Must be called within a
    /// Tokio runtime; the first load reads files on the calling thread.
    pub fn start(
        opts: ConfigOptions,
    ) -> Result<(ConfigWatch, watch::Receiver<Arc<MeshConfig>>), ConfigError> {
        let mut poller = Poller::new(opts);
        let first = match poller.poll() {
            Outcome::Applied(config) => config,
            Outcome::Rejected(e) => return Err(e),
            // Only if a file vanished while being read: read it again, as one load.
            Outcome::Unchanged => Arc::new(load(&poller.opts, 1)?),
        };
        poller.generation = first.generation;
        tracing::info!(
            dir = %poller.opts.dir.display(),
            generation = first.generation,
            files = first.files,
            resources = first.resources,
            workload = %format_args!("{}/{}", first.local.namespace, first.local.name),
            spiffe_id = %first.local.spiffe_id,
            "config applied"
        );
        let stats = Arc::new(ConfigStats::default());
        stats.applied.store(1, Ordering::Relaxed);
        stats.generation.store(first.generation, Ordering::Relaxed);
        let (tx, rx) = watch::channel(first);
        let task = tokio::spawn(run(poller, tx, stats.clone()));
        Ok((ConfigWatch { task, stats }, rx))
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ConfigStats> {
        self.stats.clone()
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watch task: one poll per tick, each on a blocking thread.
async fn run(mut poller: Poller, tx: watch::Sender<Arc<MeshConfig>>, stats: Arc<ConfigStats>) {
    let dir = poller.opts.dir.display().to_string();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => break,
        }
        let polled = tokio::task::spawn_blocking(move || {
            let outcome = poller.poll();
            (poller, outcome)
        })
        .await;
        let outcome;
        (poller, outcome) = match polled {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(dir, error = %e, "config watch failed; no further config changes will be applied");
                return;
            }
        };
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Applied(config) => {
                let generation = config.generation;
                stats.applied.fetch_add(1, Ordering::Relaxed);
                stats.generation.store(generation, Ordering::Relaxed);
                tracing::info!(
                    dir,
                    generation,
                    files = config.files,
                    resources = config.resources,
                    "config applied"
                );
                if tx.send(config).is_err() {
                    break;
                }
            }
            Outcome::Rejected(e) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                let generation = poller.generation;
                tracing::error!(
                    dir,
                    generation,
                    problems = e.problems.len(),
                    error = %e,
                    "config rejected"
                );
            }
        }
    }
    tracing::debug!(dir, "config watch stopped: no receivers");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;
    use std::time::Instant;

    use super::*;

    const WORKLOAD: &str = r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec:
  address: 127.0.0.2
  labels: {app: web}
  serviceAccount: web
  ports: {http: 8080}
"#;

    const SERVICE: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: web}}
"#;

    const POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

    fn opts(dir: &Path) -> ConfigOptions {
        ConfigOptions {
            dir: dir.to_path_buf(),
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            workload: "web".into(),
            namespace: "shop".into(),
            settings: MeshSettings::default(),
        }
    }

    /// A temp dir holding `mesh.yaml` = workload + service.
    fn mesh_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("mesh.yaml"),
            format!("{WORKLOAD}---\n{SERVICE}"),
        )
        .unwrap();
        dir
    }

    /// Sets a file's mtime ahead, as a `touch` does, without changing its contents.
    fn touch(path: &Path, secs: u64) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(secs))
            .unwrap();
    }

    fn applied(o: Outcome) -> Arc<MeshConfig> {
        match o {
            Outcome::Applied(c) => c,
            other => panic!("expected Applied, got {other:?}"),
        }
    }

    fn rejected(o: Outcome) -> ConfigError {
        match o {
            Outcome::Rejected(e) => e,
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn load_compiles_everything() {
        let dir = mesh_dir();
        fs::write(dir.path().join("policy.yml"), POLICY).unwrap();
        fs::write(dir.path().join("README.md"), "not config").unwrap();
        let c = load(&opts(dir.path()), 7).unwrap();
        assert_eq!((c.generation, c.files, c.resources), (7, 2, 3));
        assert_eq!(c.local.name, "web");
        assert_eq!(
            c.local.spiffe_id.as_str(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        let t = c.registry.inbound_target(&c.local, "web", 80).unwrap();
        assert_eq!(t.app_port, 8080);
    }

    #[test]
    fn load_errors_name_stage_file_and_line() {
        let dir = mesh_dir();
        fs::write(dir.path().join("bad.yaml"), "kind: [\n").unwrap();
        let e = load(&opts(dir.path()), 1).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.problems.len(), 1, "{text}");
        assert_eq!(e.problems[0].stage, Stage::Load);
        assert!(text.starts_with("loading: "), "{text}");
        assert!(
            text.contains("bad.yaml:1: document 1: not valid YAML"),
            "{text}"
        );

        // Problems of several stages are all reported, one per line.
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("a.yaml"),
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules: [{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: shop}
spec:
  hosts: [s.example.com]
  ports: [{number: 80, name: http, protocol: HTTPX}]
"#,
        )
        .unwrap();
        let e = load(&opts(dir.path()), 1).unwrap_err();
        let stages: Vec<_> = e.problems.iter().map(|p| p.stage).collect();
        assert_eq!(
            stages,
            // (The proxy's own WorkloadEntry is looked for only in a registry that built.)
            [Stage::Authz, Stage::Registry],
            "{e}"
        );
        let text = e.to_string();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("compiling AuthorizationPolicies: "),
            "{text}"
        );
        assert!(
            lines[0].contains("a.yaml:1: document 1: AuthorizationPolicy shop/p"),
            "{text}"
        );
        assert!(
            lines[1].contains("a.yaml:7: document 2: ServiceEntry shop/s: spec.ports[0].protocol: unknown protocol \"HTTPX\""),
            "{text}"
        );

        let mut o = opts(dir.path());
        o.dir = dir.path().join("missing");
        let e = load(&o, 1).unwrap_err();
        assert!(e.to_string().contains("missing: "), "{e}");
        let mut o = opts(dir.path());
        o.trust_domain = "Bad/TD".into();
        let e = load(&o, 1).unwrap_err();
        assert_eq!(e.problems[0].stage, Stage::Options, "{e}");
    }

    #[test]
    fn hidden_entries_and_other_extensions_are_skipped() {
        let dir = mesh_dir();
        // A broken file in a hidden directory, an editor's swap file, a lock symlink.
        fs::create_dir(dir.path().join(".git")).unwrap();
        fs::write(dir.path().join(".git/x.yaml"), "kind: [").unwrap();
        fs::write(dir.path().join(".mesh.yaml.swp"), "kind: [").unwrap();
        fs::write(dir.path().join("mesh.yaml~"), "kind: [").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("nowhere", dir.path().join(".#mesh.yaml")).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(
            dir.path().join("sub/policy.json"),
            serde_json::json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "shop"}, "spec": {}
            })
            .to_string(),
        )
        .unwrap();
        let c = load(&opts(dir.path()), 1).unwrap();
        assert_eq!((c.files, c.resources), (2, 3));
    }

    #[test]
    fn poller_applies_changes_and_ignores_touches() {
        let dir = mesh_dir();
        let mesh = dir.path().join("mesh.yaml");
        let mut p = Poller::new(opts(dir.path()));
        assert_eq!(applied(p.poll()).generation, 1);
        assert!(matches!(p.poll(), Outcome::Unchanged));

        // A touch, and an identical rewrite: no new generation.
        touch(&mesh, 10);
        assert!(matches!(p.poll(), Outcome::Unchanged));
        fs::write(&mesh, format!("{WORKLOAD}---\n{SERVICE}")).unwrap();
        touch(&mesh, 20);
        assert!(matches!(p.poll(), Outcome::Unchanged));

        // A new file.
        fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
        let c = applied(p.poll());
        assert_eq!((c.generation, c.resources), (2, 3));

        // Broken: rejected once, not again for the same content.
        fs::write(dir.path().join("policy.yaml"), &POLICY[..POLICY.len() - 20]).unwrap();
        let e = rejected(p.poll());
        assert!(e.to_string().contains("policy.yaml:"), "{e}");
        touch(&dir.path().join("policy.yaml"), 30);
        assert!(matches!(p.poll(), Outcome::Unchanged));
        assert_eq!(p.generation, 2);

        // Fixed: the next generation.
        fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
        touch(&dir.path().join("policy.yaml"), 40);
        assert_eq!(applied(p.poll()).generation, 3);

        // The proxy's own WorkloadEntry removed: rejected.
        fs::write(&mesh, SERVICE).unwrap();
        let e = rejected(p.poll());
        assert_eq!(e.problems[0].stage, Stage::LocalWorkload, "{e}");
        assert_eq!(p.generation, 3);
    }

    #[test]
    fn poller_rehashes_periodically() {
        let dir = mesh_dir();
        let mesh = dir.path().join("mesh.yaml");
        let mut p = Poller::new(opts(dir.path()));
        applied(p.poll());
        let before = fs::metadata(&mesh).unwrap().modified().unwrap();
        // Same size, same mtime, same inode: only the content hash can see it.
        let same_size = format!("{WORKLOAD}---\n{SERVICE}").replace("app: web}", "app: wex}");
        fs::write(&mesh, same_size).unwrap();
        fs::File::options()
            .write(true)
            .open(&mesh)
            .unwrap()
            .set_modified(before)
            .unwrap();
        let mut outcome = Outcome::Unchanged;
        for _ in 0..HASH_EVERY {
            outcome = p.poll();
            if !matches!(outcome, Outcome::Unchanged) {
                break;
            }
        }
        assert_eq!(applied(outcome).generation, 2);
    }

    #[cfg(unix)]
    #[test]
    fn poller_follows_configmap_symlink_swaps() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let version = |name: &str, service: &str| {
            fs::create_dir(d.join(name)).unwrap();
            fs::write(
                d.join(name).join("mesh.yaml"),
                format!("{WORKLOAD}---\n{service}"),
            )
            .unwrap();
        };
        version("..2024_01", SERVICE);
        symlink("..2024_01", d.join("..data")).unwrap();
        symlink("..data/mesh.yaml", d.join("mesh.yaml")).unwrap();
        let mut p = Poller::new(opts(d));
        let c = applied(p.poll());
        assert_eq!(c.files, 1);
        assert!(c.registry.resolve("web", 80, "shop").is_some());

        // The kubelet's atomic update: a new directory, `..data` renamed over.
        version("..2024_02", &SERVICE.replace("number: 80", "number: 81"));
        symlink("..2024_02", d.join("..data_tmp")).unwrap();
        fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        fs::remove_dir_all(d.join("..2024_01")).unwrap();
        let c = applied(p.poll());
        assert_eq!(c.generation, 2);
        assert!(c.registry.resolve("web", 81, "shop").is_some());
        assert!(matches!(p.poll(), Outcome::Unchanged));
    }

    #[test]
    fn poller_watches_jwks_files_outside_the_directory() {
        let dir = mesh_dir();
        let keys = tempfile::tempdir().unwrap();
        let jwks = keys.path().join("jwks.json");
        fs::write(&jwks, r#"{"keys": []}"#).unwrap();
        fs::write(
            dir.path().join("jwt.yaml"),
            format!(
                r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules: [{{issuer: "https://issuer", jwksUri: "file://{}"}}]
"#,
                jwks.display()
            ),
        )
        .unwrap();
        let mut p = Poller::new(opts(dir.path()));
        let e = rejected(p.poll());
        assert_eq!(e.problems[0].stage, Stage::RequestAuthn, "{e}");
        assert!(matches!(p.poll(), Outcome::Unchanged));
        fs::write(
            &jwks,
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0"}]}"#,
        )
        .unwrap();
        assert_eq!(applied(p.poll()).generation, 1);
        assert!(matches!(p.poll(), Outcome::Unchanged));
    }

    /// Waits (up to a few seconds) until `f` holds.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn next(rx: &mut watch::Receiver<Arc<MeshConfig>>) -> Arc<MeshConfig> {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a new config within 5 s")
            .unwrap();
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn watch_applies_valid_changes_and_keeps_the_last_good() {
        let dir = mesh_dir();
        let (watch, mut rx) = ConfigWatch::start(opts(dir.path())).unwrap();
        let stats = watch.stats();
        assert_eq!(rx.borrow_and_update().generation, 1);
        assert_eq!(stats.applied.load(Ordering::Relaxed), 1);

        fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
        let c = next(&mut rx).await;
        assert_eq!((c.generation, c.resources), (2, 3));
        assert_eq!(stats.generation.load(Ordering::Relaxed), 2);

        fs::write(dir.path().join("policy.yaml"), "apiVersion: [").unwrap();
        eventually("the rejection", || {
            stats.rejected.load(Ordering::Relaxed) == 1
        })
        .await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().generation, 2);

        fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
        assert_eq!(next(&mut rx).await.generation, 3);
        assert_eq!(stats.applied.load(Ordering::Relaxed), 3);
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);

        // Dropping the watch stops the task, which drops the sender.
        drop(watch);
        eventually("the task to stop", || rx.has_changed().is_err()).await;
        assert_eq!(rx.borrow().generation, 3, "the last snapshot stays");
    }

    #[tokio::test]
    async fn watch_refuses_to_start_without_the_local_workload() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("mesh.yaml"), SERVICE).unwrap();
        let e = ConfigWatch::start(opts(dir.path())).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].stage, Stage::LocalWorkload);
        let text = e.to_string();
        assert!(
            text.starts_with(
                "finding the proxy's own WorkloadEntry: no WorkloadEntry shop/web in "
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn watch_ends_when_receivers_are_gone() {
        let dir = mesh_dir();
        let (watch, rx) = ConfigWatch::start(opts(dir.path())).unwrap();
        drop(rx);
        eventually("the task to end", || watch.task.is_finished()).await;
    }

    #[test]
    fn mesh_settings_read_istios_mesh_config() {
        let (s, unused) = MeshSettings::parse(
            "pathNormalization:\n  normalization: DECODE_AND_MERGE_SLASHES\nh2UpgradePolicy: UPGRADE\naccessLogFile: /dev/stdout\n",
        )
        .unwrap();
        assert_eq!(
            s.path_normalization,
            PathNormalization::DecodeAndMergeSlashes
        );
        assert_eq!(s.h2_upgrade_policy, H2UpgradePolicy::Upgrade);
        assert_eq!(unused, ["accessLogFile"]);
        assert_eq!(MeshSettings::parse("").unwrap().0, MeshSettings::default());
        let e = MeshSettings::parse("pathNormalization: {normalization: base}").unwrap_err();
        assert!(
            e.contains("pathNormalization.normalization: \"base\" is not a path normalization"),
            "{e}"
        );
        let e = MeshSettings::parse("h2UpgradePolicy: ALWAYS").unwrap_err();
        assert!(e.contains("h2UpgradePolicy"), "{e}");
        assert!(
            MeshSettings::parse("[1, 2]")
                .unwrap_err()
                .contains("expected a MeshConfig mapping")
        );
    }
}
