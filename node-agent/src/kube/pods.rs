//! The pods of this node, by UID: a kube-runtime watcher with the field selector
//! `spec.nodeName=<node>` (what kubelet and SPIRE's agent ask for), reduced to what
//! workload attestation needs: namespace, name, service account, labels, the containers
//! by ID, and whether the pod has finished.
//!
//! The first list is swapped in whole when complete; until then the view is not synced
//! and nothing is found. Every change bumps a version on a watch channel, so a lookup
//! that misses (a pod newer than the last watch event) waits for the next change, up to
//! a deadline, and the manager learns which service accounts run here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// What the agent keeps of a pod of its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Service account (`default` when the spec names none).
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Container name by container ID (the ID without its `runtime://` prefix), from
    /// the statuses of the containers, init containers and ephemeral containers.
    pub containers: BTreeMap<String, String>,
    /// Succeeded or Failed.
    pub finished: bool,
}

/// `containerd://<id>` (or `cri-o://`, `docker://`) to `<id>`.
pub fn strip_runtime(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

impl PodMeta {
    /// Reduces a pod; `None` without a UID, name or namespace.
    pub fn of(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let statuses: Vec<&ContainerStatus> = status
            .into_iter()
            .flat_map(|s| {
                [
                    s.container_statuses.as_ref(),
                    s.init_container_statuses.as_ref(),
                    s.ephemeral_container_statuses.as_ref(),
                ]
            })
            .flatten()
            .flatten()
            .collect();
        let containers = statuses
            .iter()
            .filter_map(|c| {
                let id = strip_runtime(c.container_id.as_deref()?);
                (!id.is_empty()).then(|| (id.to_ascii_lowercase(), c.name.clone()))
            })
            .collect();
        Some(Self {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            labels: meta.labels.clone().unwrap_or_default(),
            containers,
            finished: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
        })
    }
}

type Index = HashMap<String, Arc<PodMeta>>;

/// The pods of this node; clones share the view.
#[derive(Debug, Clone)]
pub struct NodePods {
    node: String,
    index: Arc<RwLock<Index>>,
    synced: watch::Receiver<bool>,
    version: watch::Receiver<u64>,
}

/// Why a lookup found no pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodLookupError {
    /// The first list has not completed.
    #[error(
        "the agent's view of the pods of node {node} has not synced with the Kubernetes API server yet (waited {waited:?})"
    )]
    NotSynced {
        /// This node.
        node: String,
        /// How long the lookup waited.
        waited: Duration,
    },
    /// No pod of this node has the UID.
    #[error("no pod with UID {uid} is on node {node} (waited {waited:?} for the pod watch)")]
    Unknown {
        /// The pod UID of the caller's cgroup.
        uid: String,
        /// This node.
        node: String,
        /// How long the lookup waited.
        waited: Duration,
    },
}

impl NodePods {
    /// Starts watching the pods of `node`; the view syncs in the background (list,
    /// then watch, with kube's default backoff on errors).
    pub fn start(client: kube::Client, node: &str) -> (Self, tokio::task::JoinHandle<()>) {
        let index = Arc::new(RwLock::new(Index::new()));
        let (synced_tx, synced) = watch::channel(false);
        let (version_tx, version) = watch::channel(0u64);
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let task = {
            let index = index.clone();
            let node = node.to_string();
            tokio::spawn(async move {
                let mut events = watcher(api, config).default_backoff().boxed();
                let mut fresh: Option<Index> = None;
                loop {
                    match events.try_next().await {
                        Ok(Some(event)) => {
                            if apply_event(&index, &mut fresh, event, &synced_tx) {
                                version_tx.send_modify(|v| *v += 1);
                            }
                        }
                        Ok(None) => return,
                        // The backoff retries; a failure here is only reported.
                        Err(e) => {
                            tracing::warn!(node = %node, error = %e, "watch of this node's pods failed; retrying");
                        }
                    }
                }
            })
        };
        let pods = Self {
            node: node.to_string(),
            index,
            synced,
            version,
        };
        (pods, task)
    }

    /// Waits until the first list is in.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        // The sender lives as long as the watcher task; if it is gone, so is the wait.
        let _ = synced.wait_for(|s| *s).await;
    }

    /// A receiver that wakes on every change of the view.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The pod with `uid`, if the view is synced and has it.
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        if !*self.synced.borrow() {
            return None;
        }
        self.read().get(uid).cloned()
    }

    /// The (namespace, service account) of every pod on the node that has not finished.
    pub fn service_accounts(&self) -> BTreeSet<(String, String)> {
        if !*self.synced.borrow() {
            return BTreeSet::new();
        }
        self.read()
            .values()
            .filter(|p| !p.finished)
            .map(|p| (p.namespace.clone(), p.service_account.clone()))
            .collect()
    }

    /// The pod with `uid` and the name of container `container_id` in it. A pod not in
    /// the view yet (newer than the last watch event) is waited for up to `wait`; so is
    /// a container not yet in the pod's status, after which the pod is returned without
    /// a container name.
    pub async fn lookup(
        &self,
        uid: &str,
        container_id: Option<&str>,
        wait: Duration,
    ) -> Result<(Arc<PodMeta>, Option<String>), PodLookupError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut version = self.version.clone();
        loop {
            version.borrow_and_update();
            let pod = self.get(uid);
            let container = |p: &PodMeta| container_id.and_then(|id| p.containers.get(id).cloned());
            if let Some(p) = &pod
                && (container_id.is_none() || container(p).is_some())
            {
                return Ok((p.clone(), container(p)));
            }
            let changed = tokio::time::timeout_at(deadline, version.changed()).await;
            if matches!(changed, Err(_) | Ok(Err(_))) {
                // Deadline (or the watcher is gone): decide on what is known.
                return match self.get(uid) {
                    Some(p) => {
                        tracing::debug!(pod = %p.name, container_id = ?container_id, "container not in the pod's status; no container name");
                        let name = container(&p);
                        Ok((p, name))
                    }
                    None if !*self.synced.borrow() => Err(PodLookupError::NotSynced {
                        node: self.node.clone(),
                        waited: wait,
                    }),
                    None => Err(PodLookupError::Unknown {
                        uid: uid.to_string(),
                        node: self.node.clone(),
                        waited: wait,
                    }),
                };
            }
        }
    }
}

/// Applies one watcher event; true when the view changed.
fn apply_event(
    index: &RwLock<Index>,
    fresh: &mut Option<Index>,
    event: watcher::Event<Pod>,
    synced: &watch::Sender<bool>,
) -> bool {
    let write = || index.write().unwrap_or_else(|e| e.into_inner());
    match event {
        // A (re)list starts: build a new view beside the live one, swap at the end.
        watcher::Event::Init => {
            *fresh = Some(Index::new());
            false
        }
        watcher::Event::InitApply(pod) => {
            if let (Some(f), Some(meta)) = (fresh.as_mut(), PodMeta::of(&pod)) {
                f.insert(meta.uid.clone(), Arc::new(meta));
            }
            false
        }
        watcher::Event::InitDone => {
            if let Some(f) = fresh.take() {
                *write() = f;
            }
            synced.send_replace(true);
            true
        }
        watcher::Event::Apply(pod) => match PodMeta::of(&pod) {
            Some(meta) => {
                write().insert(meta.uid.clone(), Arc::new(meta));
                true
            }
            None => false,
        },
        watcher::Event::Delete(pod) => match pod.metadata.uid.as_deref() {
            Some(uid) => write().remove(uid).is_some(),
            None => false,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Against the fake API server (kube's `tower_test`; no API server runs here). Pod
    //! bodies follow the Kubernetes API reference for `v1` Pod (`spec.nodeName`,
    //! `spec.serviceAccountName`, `status.containerStatuses[].containerID` as
    //! `containerd://<id>`).

    use serde_json::{Value, json};
    use warden_common::testing::kube_api::FakeApiServer;

    use super::*;

    pub(crate) fn pod(ns: &str, name: &str, node: &str, sa: &str, cid: Option<&str>) -> Value {
        let statuses: Vec<Value> = cid
            .map(|c| {
                vec![
                    json!({"name": "app", "image": "nginx", "imageID": "", "ready": true,
                            "restartCount": 0, "containerID": format!("containerd://{c}")}),
                ]
            })
            .unwrap_or_default();
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
               "spec": {"nodeName": node, "serviceAccountName": sa,
                        "containers": [{"name": "app", "image": "nginx"}]},
               "status": {"phase": "Running", "containerStatuses": statuses}})
    }

    fn uid_of(v: &Value) -> String {
        v["metadata"]["uid"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn watches_only_this_nodes_pods_by_uid_with_their_containers() {
        let api = FakeApiServer::new();
        let cid = "ab".repeat(32);
        let web = uid_of(&api.insert(pod("shop", "web-0", "n1", "web", Some(&cid))));
        let other = uid_of(&api.insert(pod("shop", "db-0", "n2", "db", None)));
        let (pods, _task) = NodePods::start(api.client(), "n1");
        tokio::time::timeout(Duration::from_secs(5), pods.wait_synced())
            .await
            .unwrap();
        let (p, container) = pods
            .lookup(&web, Some(&cid), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("shop", "web-0"));
        assert_eq!(p.service_account, "web");
        assert_eq!(p.labels["app"], "web-0");
        assert_eq!(container.as_deref(), Some("app"));
        assert!(pods.get(&other).is_none(), "a pod of another node");
        assert!(
            api.requests()
                .iter()
                .all(|r| r.contains("fieldSelector=spec.nodeName%3Dn1")),
            "{:?}",
            api.requests()
        );
        assert_eq!(
            pods.service_accounts(),
            [("shop".to_string(), "web".to_string())].into()
        );
    }

    #[tokio::test]
    async fn a_pod_newer_than_the_view_is_waited_for_then_refused() {
        let api = FakeApiServer::new();
        let (pods, _task) = NodePods::start(api.client(), "n1");
        pods.wait_synced().await;
        // The pod arrives while the lookup waits.
        let late = {
            let api = api.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                uid_of(&api.insert(pod("shop", "web-1", "n1", "web", None)))
            })
        };
        let uid = "00000000-0000-4000-8000-000000000001";
        let (p, container) = pods
            .lookup(uid, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(late.await.unwrap(), uid);
        assert_eq!((p.name.as_str(), container), ("web-1", None));
        // A UID that never comes: refused after the wait, with the reason.
        let err = pods
            .lookup("nope", None, Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no pod with UID nope is on node n1"), "{err}");
        // A container missing from the status: the pod, without a container name.
        let (p, container) = pods
            .lookup(uid, Some("ff"), Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!((p.name.as_str(), container), ("web-1", None));
        // Deleted: gone from the view and from the service accounts.
        api.remove("v1", "pods", Some("shop"), "web-1");
        let mut v = pods.subscribe();
        while pods.get(uid).is_some() {
            v.changed().await.unwrap();
        }
        assert!(pods.service_accounts().is_empty());
    }

    #[tokio::test]
    async fn an_unsynced_view_refuses_with_that_reason() {
        let api = FakeApiServer::new();
        api.fail_next("GET", "/api/v1/pods", 500, 100);
        let (pods, _task) = NodePods::start(api.client(), "n1");
        let err = pods
            .lookup("u", None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, PodLookupError::NotSynced { .. }), "{err}");
        assert!(err.to_string().contains("has not synced"), "{err}");
    }

    #[test]
    fn container_ids_lose_their_runtime_prefix() {
        assert_eq!(strip_runtime("containerd://abc"), "abc");
        assert_eq!(strip_runtime("cri-o://abc"), "abc");
        assert_eq!(strip_runtime("abc"), "abc");
    }
}
