//! The pod index against a fake API server (kube's `tower_test` at the HTTP level; no
//! API server can run here). Pod bodies follow the Kubernetes API reference for `v1` Pod.

use std::time::Duration;

use serde_json::{Value, json};
use warden_common::testing::kube_api::FakeApiServer;

use super::*;

fn pod(ns: &str, name: &str, node: &str, sa: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app", "image": "nginx"}]},
           "status": {"phase": phase}})
}

async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2 s");
}

#[tokio::test]
async fn indexes_pods_by_node_and_service_account() {
    let api = FakeApiServer::new();
    api.insert(pod("shop", "web-1", "node-a", "web", "Running"));
    api.insert(pod("shop", "done-1", "node-a", "batch", "Succeeded"));
    let (index, _task) = PodIndex::start(api.client());
    assert_eq!(index.runs_on("node-a", "shop", "web"), Err(NotSynced));
    tokio::time::timeout(Duration::from_secs(5), index.wait_synced())
        .await
        .unwrap();
    assert_eq!(index.runs_on("node-a", "shop", "web"), Ok(true));
    assert_eq!(index.runs_on("node-b", "shop", "web"), Ok(false));
    assert_eq!(
        index.runs_on("node-a", "shop", "batch"),
        Ok(false),
        "finished pods do not count"
    );
    let web = index.pod("shop", "web-1").unwrap().unwrap();
    assert_eq!(web.node, "node-a");
    assert!(!web.uid.is_empty());

    // Live changes: a pod moves in, another is deleted.
    api.insert(pod("shop", "web-2", "node-b", "web", "Running"));
    eventually(|| index.runs_on("node-b", "shop", "web") == Ok(true)).await;
    api.remove("v1", "pods", Some("shop"), "web-1");
    eventually(|| index.runs_on("node-a", "shop", "web") == Ok(false)).await;
    assert_eq!(index.pod("shop", "web-1"), Ok(None));
    // Two pods of one account on a node: deleting one keeps the other counted.
    api.insert(pod("shop", "web-3", "node-b", "web", "Running"));
    eventually(|| index.pod("shop", "web-3").is_ok_and(|p| p.is_some())).await;
    api.remove("v1", "pods", Some("shop"), "web-2");
    eventually(|| index.pod("shop", "web-2") == Ok(None)).await;
    assert_eq!(index.runs_on("node-b", "shop", "web"), Ok(true));
}

#[tokio::test]
async fn a_failed_list_is_retried_and_nothing_is_decided_meanwhile() {
    let api = FakeApiServer::new();
    api.insert(pod("shop", "web-1", "node-a", "web", "Running"));
    api.fail_next("GET", "/api/v1/pods", 500, 1);
    let (index, _task) = PodIndex::start(api.client());
    assert_eq!(index.pod("shop", "web-1"), Err(NotSynced));
    tokio::time::timeout(Duration::from_secs(10), index.wait_synced())
        .await
        .expect("the watcher retries after the API error");
    assert_eq!(index.runs_on("node-a", "shop", "web"), Ok(true));
}

#[test]
fn a_pod_without_service_account_runs_as_default() {
    let p: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": []}}),
    )
    .unwrap();
    let (_, info) = PodInfo::of(&p).unwrap();
    assert_eq!(info.service_account, "default");
    assert_eq!(info.node, "");
}
