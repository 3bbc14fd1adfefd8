//! The `istio-ca-root-cert` ConfigMap (key `root-cert.pem`) in every namespace, where
//! istio-agent, ztunnel and proxyless gRPC look for the mesh's trust bundle; kept as
//! istiod's namespace controller keeps it (`pkg/kube/namespace`): created in every
//! namespace and in new ones, restored when edited or deleted, rewritten when the bundle
//! changes, labelled `istio.io/config: "true"`. Namespaces being deleted and the system
//! namespaces istiod skips (`kube-public`, `kube-node-lease`, `local-path-storage`) get
//! none. Only the leader writes; every replica keeps the two caches warm so a new
//! leader starts at once.
//!
//! Namespaces and these ConfigMaps (selected by name across namespaces) are mirrored by
//! kube-runtime reflectors; a pass compares the caches with the bundle and writes only
//! the differences, so a quiet cluster costs no API calls. Writes carry the
//! `resourceVersion` they were computed from; a conflict or error schedules another pass
//! with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::{Notify, watch};

use warden_common::backoff::{Backoff, random_unit};

/// The ConfigMap's name.
pub const NAME: &str = "istio-ca-root-cert";
/// Its key.
pub const KEY: &str = "root-cert.pem";
/// The label istiod puts on it.
const LABEL: (&str, &str) = ("istio.io/config", "true");
/// Namespaces that get no ConfigMap (istiod's list).
const SKIPPED: [&str; 3] = ["kube-public", "kube-node-lease", "local-path-storage"];
/// A full pass even without events.
const RESYNC: Duration = Duration::from_secs(300);

/// Runs the controller until `shutdown` flips.
pub async fn run(
    client: kube::Client,
    mut bundle: watch::Receiver<String>,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let wake = Arc::new(Notify::new());
    let (namespaces, ns_task) = mirror(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
    );
    let (maps, cm_task) = mirror(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={NAME}")),
        wake.clone(),
    );
    let _stop = AbortOnDrop(vec![ns_task, cm_task]);
    tokio::select! {
        r = async { tokio::try_join!(namespaces.wait_until_ready(), maps.wait_until_ready()) } => {
            if r.is_err() { return }
        }
        _ = shutdown.changed() => return,
    }
    let backoff = Backoff::ENVOY;
    let mut failures = 0u32;
    let mut leader_fixed = false;
    let mut bundle_fixed = false;
    loop {
        if *leader.borrow_and_update() {
            let want = bundle.borrow_and_update().clone();
            match pass(&client, &namespaces, &maps, &want).await {
                Ok(written) => {
                    failures = 0;
                    if written > 0 {
                        tracing::info!(
                            configmap = NAME,
                            written,
                            "root certificate ConfigMaps updated"
                        );
                    }
                }
                Err(e) => {
                    let wait = backoff.delay(failures, random_unit());
                    failures = failures.saturating_add(1);
                    tracing::warn!(configmap = NAME, error = %e, retry_in = ?wait, "keeping the root certificate ConfigMaps");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            r = bundle.changed(), if !bundle_fixed => bundle_fixed = r.is_err(),
            r = leader.changed(), if !leader_fixed => leader_fixed = r.is_err(),
            _ = tokio::time::sleep(RESYNC) => {}
            _ = shutdown.changed() => return,
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A reflector of `api` that notifies `wake` on every event.
fn mirror<K>(
    api: Api<K>,
    config: watcher::Config,
    wake: Arc<Notify>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let task = tokio::spawn(async move {
        let mut events = reflector(writer, watcher(api, config).default_backoff()).boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(_) => wake.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watching for {NAME}"),
            }
        }
    });
    (reader, task)
}

/// Whether `ns` should have the ConfigMap.
fn wanted_in(ns: &Namespace) -> bool {
    let name = ns.name_any();
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Terminating");
    !terminating && !SKIPPED.contains(&name.as_str())
}

/// One comparison of the caches with `bundle`; writes what differs. The number of
/// ConfigMaps written.
async fn pass(
    client: &kube::Client,
    namespaces: &Store<Namespace>,
    maps: &Store<ConfigMap>,
    bundle: &str,
) -> Result<usize, kube::Error> {
    let mut written = 0;
    let mut first_error = None;
    for ns in namespaces.state() {
        if !wanted_in(&ns) {
            continue;
        }
        let ns_name = ns.name_any();
        let key = reflector::ObjectRef::new(NAME).within(&ns_name);
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns_name);
        let result = match maps.get(&key) {
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(NAME.into()),
                        namespace: Some(ns_name.clone()),
                        labels: Some(BTreeMap::from([(LABEL.0.into(), LABEL.1.into())])),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(KEY.into(), bundle.to_string())])),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &cm).await {
                    // Created meanwhile (the cache lags): the next pass compares it.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    r => r.map(|_| true),
                }
            }
            Some(current) if up_to_date(&current, bundle) => Ok(false),
            Some(current) => {
                let mut cm = (*current).clone();
                cm.data
                    .get_or_insert_default()
                    .insert(KEY.into(), bundle.to_string());
                cm.labels_mut().insert(LABEL.0.into(), LABEL.1.into());
                api.replace(NAME, &PostParams::default(), &cm)
                    .await
                    .map(|_| true)
            }
        };
        match result {
            Ok(true) => written += 1,
            Ok(false) => {}
            Err(kube::Error::Api(s))
                if s.code == 404 && ns.metadata.deletion_timestamp.is_none() =>
            {
                // The namespace went away between the cache and the write.
            }
            Err(e) => {
                tracing::warn!(namespace = %ns_name, error = %e, "writing {NAME}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(written),
    }
}

fn up_to_date(cm: &ConfigMap, bundle: &str) -> bool {
    cm.data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .is_some_and(|v| v == bundle)
        && cm.labels().get(LABEL.0).is_some_and(|v| v == LABEL.1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use warden_common::testing::kube_api::FakeApiServer;

    fn cm_data(fake: &FakeApiServer, ns: &str) -> Option<String> {
        fake.get("v1", "configmaps", Some(ns), NAME).and_then(|v| {
            v.pointer("/data/root-cert.pem")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..100 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn the_leader_keeps_the_configmap_in_every_namespace() {
        let fake = FakeApiServer::new();
        for ns in ["foo", "bar", "kube-public"] {
            fake.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
        fake.insert(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "going", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Terminating"}}));
        let (bundle_tx, bundle) = watch::channel("ROOT-1\n".to_string());
        let (leader_tx, leader) = watch::channel(false);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(run(fake.client(), bundle, leader, shutdown));

        // A follower writes nothing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cm_data(&fake, "foo"), None);

        leader_tx.send_replace(true);
        eventually("created in foo and bar", || {
            cm_data(&fake, "foo").as_deref() == Some("ROOT-1\n")
                && cm_data(&fake, "bar").as_deref() == Some("ROOT-1\n")
        })
        .await;
        assert_eq!(cm_data(&fake, "kube-public"), None);
        assert_eq!(cm_data(&fake, "going"), None);
        let cm = fake.get("v1", "configmaps", Some("foo"), NAME).unwrap();
        assert_eq!(
            cm.pointer("/metadata/labels/istio.io~1config"),
            Some(&json!("true"))
        );

        // A new namespace gets one.
        fake.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "new"}}));
        eventually("created in a new namespace", || {
            cm_data(&fake, "new").is_some()
        })
        .await;

        // An edit is put back; a deletion is restored.
        let mut edited = fake.get("v1", "configmaps", Some("foo"), NAME).unwrap();
        edited["data"]["root-cert.pem"] = json!("EVIL");
        fake.insert(edited);
        fake.remove("v1", "configmaps", Some("bar"), NAME);
        eventually("restored", || {
            cm_data(&fake, "foo").as_deref() == Some("ROOT-1\n")
                && cm_data(&fake, "bar").as_deref() == Some("ROOT-1\n")
        })
        .await;

        // A new bundle reaches every namespace.
        bundle_tx.send_replace("ROOT-1\nROOT-2\n".into());
        eventually("updated", || {
            ["foo", "bar", "new"]
                .iter()
                .all(|ns| cm_data(&fake, ns).as_deref() == Some("ROOT-1\nROOT-2\n"))
        })
        .await;
    }

    #[tokio::test]
    async fn api_errors_are_retried() {
        let fake = FakeApiServer::new();
        fake.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo"}}));
        fake.fail_next("POST", "configmaps", 500, 2);
        let (_b, bundle) = watch::channel("ROOT\n".to_string());
        let (_l, leader) = watch::channel(true);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(run(fake.client(), bundle, leader, shutdown));
        tokio::time::timeout(Duration::from_secs(20), async {
            while cm_data(&fake, "foo").is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("created after the injected failures");
    }
}
