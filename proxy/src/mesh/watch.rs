//! Watching the mesh config directory: each change is loaded whole
//! ([`super::config::load`]) and, when it compiles, published on a
//! `tokio::sync::watch` channel, so a change applies to new connections and requests
//! without touching live ones; a bad change is logged and the last good config stays.
//!
//! The directory is polled every [`POLL_INTERVAL`] (no inotify: polling sees editors'
//! atomic renames, Kubernetes ConfigMap `..data` symlink swaps and network file systems
//! alike). A change is noticed from the files' (path, size, mtime, inode) and confirmed
//! by a SHA-256 of their contents, so a `touch` or an identical rewrite changes nothing,
//! and the same broken content is reported once. JWKS files that RequestAuthentications
//! name by `jwksUri` are watched too, wherever they are.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ring::digest;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::config::*;

/// How often the directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Contents are hashed at least this often (in polls) even when no file's metadata
/// changed: file systems with coarse mtimes can hide a same-size rewrite.
const HASH_EVERY: u32 = 20;
/// How deep directories are followed (symlinks to directories are followed).
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
        let started = std::time::Instant::now();
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
            load_ms = started.elapsed().as_millis() as u64,
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
        let started = std::time::Instant::now();
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
                    load_ms = started.elapsed().as_millis() as u64,
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
    use crate::mesh::config::tests::{POLICY, SERVICE, WORKLOAD, mesh_dir, opts};

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
}
