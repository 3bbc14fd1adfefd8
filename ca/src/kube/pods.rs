//! Every pod in the cluster, reduced to what node authorization needs (UID, node,
//! service account, phase) and indexed by (node, namespace, service account), as
//! istiod's `NodeAuthorizer` indexes its pod informer.
//!
//! A kube-runtime watcher feeds it (list, then watch, with kube's default backoff on
//! errors). Until the first list is complete the index is not synced, and questions are
//! answered "not synced", which callers turn into `Unavailable`: a fresh replica never
//! refuses or allows on a partial view. Pods that have finished (`Succeeded`, `Failed`)
//! do not count as running on their node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// What the index keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// UID.
    pub uid: String,
    /// Node it is scheduled on; empty while pending.
    pub node: String,
    /// Its service account (`default` when the spec names none).
    pub service_account: String,
    /// Whether it has finished (Succeeded or Failed).
    pub finished: bool,
}

impl PodInfo {
    /// Reduces a pod; `None` without a name or namespace.
    pub fn of(pod: &Pod) -> Option<((String, String), Self)> {
        let ns = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let spec = pod.spec.as_ref();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        Some((
            (ns, name),
            Self {
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                service_account: spec
                    .and_then(|s| s.service_account_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".into()),
                finished: matches!(phase, Some("Succeeded" | "Failed")),
            },
        ))
    }
}

/// (node, namespace, service account).
type NodeSa = (String, String, String);

#[derive(Debug, Default)]
struct Index {
    pods: HashMap<(String, String), PodInfo>,
    by_node_sa: HashMap<NodeSa, HashSet<(String, String)>>,
}

impl Index {
    fn key_of(ns: &str, info: &PodInfo) -> Option<NodeSa> {
        (!info.node.is_empty() && !info.finished).then(|| {
            (
                info.node.clone(),
                ns.to_string(),
                info.service_account.clone(),
            )
        })
    }

    fn apply(&mut self, key: (String, String), info: PodInfo) {
        self.delete(&key);
        if let Some(k) = Self::key_of(&key.0, &info) {
            self.by_node_sa.entry(k).or_default().insert(key.clone());
        }
        self.pods.insert(key, info);
    }

    fn delete(&mut self, key: &(String, String)) {
        if let Some(old) = self.pods.remove(key)
            && let Some(k) = Self::key_of(&key.0, &old)
            && let Some(set) = self.by_node_sa.get_mut(&k)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_node_sa.remove(&k);
            }
        }
    }
}

/// The pod index; clones share it.
#[derive(Debug, Clone)]
pub struct PodIndex {
    index: Arc<RwLock<Index>>,
    synced: watch::Receiver<bool>,
}

/// The index has not completed its first list yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the CA's pod index has not synced with the Kubernetes API server yet")]
pub struct NotSynced;

impl PodIndex {
    /// Starts the watcher on every pod; the index syncs in the background.
    pub fn start(client: kube::Client) -> (Self, tokio::task::JoinHandle<()>) {
        let index = Arc::new(RwLock::new(Index::default()));
        let (synced_tx, synced) = watch::channel(false);
        let api: Api<Pod> = Api::all(client);
        let task = {
            let index = index.clone();
            tokio::spawn(async move {
                let mut events = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                let mut fresh: Option<Index> = None;
                loop {
                    match events.try_next().await {
                        Ok(Some(event)) => {
                            apply_event(&index, &mut fresh, event, &synced_tx);
                        }
                        Ok(None) => return,
                        // The backoff retries; a failure here is only reported.
                        Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                    }
                }
            })
        };
        (Self { index, synced }, task)
    }

    /// An index fed by hand (tests of code that uses it).
    pub fn fixed(pods: impl IntoIterator<Item = Pod>) -> Self {
        let mut index = Index::default();
        for pod in pods {
            if let Some((key, info)) = PodInfo::of(&pod) {
                index.apply(key, info);
            }
        }
        let (_tx, synced) = watch::channel(true);
        Self {
            index: Arc::new(RwLock::new(index)),
            synced,
        }
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Index>, NotSynced> {
        if !*self.synced.borrow() {
            return Err(NotSynced);
        }
        Ok(self.index.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until the first list is in.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        // The sender lives as long as the watcher task; if it is gone, so is the wait.
        let _ = synced.wait_for(|s| *s).await;
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>, NotSynced> {
        Ok(self
            .read()?
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }

    /// Whether a running pod with service account `namespace/sa` is on `node`.
    pub fn runs_on(&self, node: &str, namespace: &str, sa: &str) -> Result<bool, NotSynced> {
        Ok(self.read()?.by_node_sa.contains_key(&(
            node.to_string(),
            namespace.to_string(),
            sa.to_string(),
        )))
    }
}

fn apply_event(
    index: &RwLock<Index>,
    fresh: &mut Option<Index>,
    event: watcher::Event<Pod>,
    synced: &watch::Sender<bool>,
) {
    match event {
        // A (re)list starts: build a new index beside the live one, swap at the end.
        watcher::Event::Init => *fresh = Some(Index::default()),
        watcher::Event::InitApply(pod) => {
            if let (Some(f), Some((key, info))) = (fresh.as_mut(), PodInfo::of(&pod)) {
                f.apply(key, info);
            }
        }
        watcher::Event::InitDone => {
            if let Some(f) = fresh.take() {
                *index.write().unwrap_or_else(|e| e.into_inner()) = f;
            }
            synced.send_replace(true);
        }
        watcher::Event::Apply(pod) => {
            if let Some((key, info)) = PodInfo::of(&pod) {
                index
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(key, info);
            }
        }
        watcher::Event::Delete(pod) => {
            if let Some((key, _)) = PodInfo::of(&pod) {
                index
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .delete(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
