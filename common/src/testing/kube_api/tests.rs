//! The fake answers kube-rs as the Kubernetes API reference says a real API server does:
//! typed get/list/create/replace/patch/delete, selectors, watches through kube-runtime's
//! watcher, TokenReviews, injected failures, and the TLS endpoint with its kubeconfig.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::FakeApiServer;

fn pod(ns: &str, name: &str, node: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
           "spec": {"nodeName": node, "serviceAccountName": "default", "containers": []}})
}

#[tokio::test]
async fn typed_crud_with_conflicts() {
    let api = FakeApiServer::new();
    let secrets: Api<Secret> = Api::namespaced(api.client(), "istio-system");
    let mut s = Secret::default();
    s.metadata.name = Some("cacerts".into());
    s.string_data = None;
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert!(created.metadata.uid.is_some());
    let again = secrets
        .create(&PostParams::default(), &s)
        .await
        .unwrap_err();
    assert!(
        matches!(&again, kube::Error::Api(e) if e.code == 409 && e.reason == "AlreadyExists"),
        "{again}"
    );

    // A replace with the current resourceVersion wins; a stale one is a Conflict.
    let mut current = secrets.get("cacerts").await.unwrap();
    current.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
    let stale = current.clone();
    secrets
        .replace("cacerts", &PostParams::default(), &current)
        .await
        .unwrap();
    let conflict = secrets
        .replace("cacerts", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, kube::Error::Api(e) if e.code == 409 && e.reason == "Conflict"),
        "{conflict}"
    );

    let patched = secrets
        .patch(
            "cacerts",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"c": "d"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap().len(), 2);
    secrets
        .delete("cacerts", &Default::default())
        .await
        .unwrap();
    let gone = secrets.get("cacerts").await.unwrap_err();
    assert!(
        matches!(&gone, kube::Error::Api(e) if e.code == 404),
        "{gone}"
    );
    assert!(
        api.get("v1", "secrets", Some("istio-system"), "cacerts")
            .is_none()
    );
}

#[tokio::test]
async fn server_side_apply_creates() {
    let api = FakeApiServer::new();
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "app");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio-ca-root-cert"},
                    "data": {"root-cert.pem": "PEM"}});
    cms.patch(
        "istio-ca-root-cert",
        &PatchParams::apply("warden").force(),
        &Patch::Apply(cm),
    )
    .await
    .unwrap();
    let stored = api
        .get("v1", "configmaps", Some("app"), "istio-ca-root-cert")
        .unwrap();
    assert_eq!(stored["data"]["root-cert.pem"], "PEM");
}

#[tokio::test]
async fn lists_select_by_field_and_label() {
    let api = FakeApiServer::new();
    api.insert(pod("a", "p1", "n1"));
    api.insert(pod("b", "p2", "n2"));
    api.insert(pod("b", "p3", "n1"));
    let pods: Api<Pod> = Api::all(api.client());
    let on_n1 = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    let names: Vec<_> = on_n1
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["p1", "p3"]);
    let labelled = pods
        .list(&ListParams::default().labels("app=p2"))
        .await
        .unwrap();
    assert_eq!(labelled.items.len(), 1);
    let in_b: Api<Pod> = Api::namespaced(api.client(), "b");
    assert_eq!(
        in_b.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
}

#[tokio::test]
async fn watcher_sees_initial_list_then_changes() {
    let api = FakeApiServer::new();
    api.insert(pod("a", "p1", "n1"));
    let pods: Api<Pod> = Api::all(api.client());
    let mut stream = watcher(pods, watcher::Config::default().fields("spec.nodeName=n1")).boxed();
    let mut seen = Vec::new();
    let fake = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.insert(pod("a", "p2", "n2")); // another node: filtered out
        fake.insert(pod("a", "p3", "n1"));
        fake.remove("v1", "pods", Some("a"), "p1");
    });
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .expect("watch event")
            .unwrap()
            .unwrap();
        match event {
            watcher::Event::InitApply(p) => seen.push(format!("init {}", p.metadata.name.unwrap())),
            watcher::Event::InitDone => seen.push("init-done".into()),
            watcher::Event::Apply(p) => seen.push(format!("apply {}", p.metadata.name.unwrap())),
            watcher::Event::Delete(p) => seen.push(format!("delete {}", p.metadata.name.unwrap())),
            watcher::Event::Init => {}
        }
    }
    assert_eq!(seen, ["init p1", "init-done", "apply p3", "delete p1"]);
}

#[tokio::test]
async fn token_reviews_and_injected_failures() {
    let api = FakeApiServer::new();
    api.on_token_review(|spec| match spec["token"].as_str() {
        Some("good") => Ok(json!({"authenticated": true,
            "user": {"username": "system:serviceaccount:ns:sa"}, "audiences": spec["audiences"]})),
        Some("down") => Err((500, "etcd is down".into())),
        _ => Ok(json!({"authenticated": false, "error": "invalid bearer token"})),
    });
    let reviews: Api<TokenReview> = Api::all(api.client());
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(vec!["istio-ca".into()]),
        },
        ..Default::default()
    };
    let ok = reviews
        .create(&PostParams::default(), &review("good"))
        .await
        .unwrap();
    let status = ok.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(status.audiences.unwrap(), ["istio-ca"]);
    let bad = reviews
        .create(&PostParams::default(), &review("nope"))
        .await
        .unwrap();
    assert_eq!(bad.status.unwrap().authenticated, Some(false));
    let down = reviews
        .create(&PostParams::default(), &review("down"))
        .await
        .unwrap_err();
    assert!(
        matches!(&down, kube::Error::Api(e) if e.code == 500),
        "{down}"
    );

    api.fail_next("GET", "/pods", 503, 1);
    let pods: Api<Pod> = Api::all(api.client());
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 503),
        "{err}"
    );
    pods.list(&ListParams::default()).await.unwrap();
    assert!(
        api.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods"))
            .count()
            == 2
    );
}

#[tokio::test]
async fn serves_over_tls_with_a_kubeconfig() {
    let api = FakeApiServer::new();
    api.insert(pod("a", "p1", "n1"));
    let (_addr, kubeconfig) = api.serve_tls("t0ken").await.unwrap();
    let config = kube::config::Kubeconfig::from_yaml(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "a");
    assert_eq!(
        pods.get("p1")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .unwrap(),
        "n1"
    );
}

#[test]
fn timestamps_are_rfc3339() {
    let t = super::now_rfc3339();
    assert_eq!(t.len(), 20, "{t}");
    assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
}
