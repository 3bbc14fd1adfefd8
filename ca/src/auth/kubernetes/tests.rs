//! Node authorization and node attestation: each condition allowed and refused, with the
//! refusal naming it. Pods are given as the Kubernetes API reference shapes them.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use warden_common::testing::kube_api::FakeApiServer;

use super::*;
use crate::kube::token_review::BoundPod;

const TD: &str = "cluster.local";

fn pod(ns: &str, name: &str, uid: &str, node: &str, sa: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": []},
        "status": {"phase": "Running"}
    }))
    .unwrap()
}

fn kube_auth(pods: PodIndex) -> KubeAuth {
    KubeAuth {
        reviewer: TokenReviewer::new(FakeApiServer::new().client(), vec!["istio-ca".into()]),
        pods,
        cluster_id: "Kubernetes".into(),
        agent_accounts: vec![ServiceAccount {
            namespace: "istio-system".into(),
            name: "warden-agent".into(),
        }],
    }
}

fn cluster() -> PodIndex {
    PodIndex::fixed([
        pod("istio-system", "ztunnel-a", "uid-za", "node-a", "ztunnel"),
        pod(
            "istio-system",
            "agent-a",
            "uid-aa",
            "node-a",
            "warden-agent",
        ),
        pod("shop", "web-1", "uid-w1", "node-a", "web"),
        pod("shop", "db-1", "uid-d1", "node-b", "db"),
    ])
}

fn sa_caller(ns: &str, sa: &str, pod: Option<(&str, &str)>) -> Caller {
    Caller {
        id: SpiffeId::for_service_account(TD, ns, sa).unwrap(),
        method: AuthMethod::KubernetesToken,
        join_token_hash: None,
        pod: pod.map(|(name, uid)| BoundPod {
            name: name.into(),
            uid: uid.into(),
            node: None,
        }),
    }
}

fn node_caller(node: &str) -> Caller {
    Caller {
        id: SpiffeId::for_node(TD, node).unwrap(),
        method: AuthMethod::ClientCert,
        join_token_hash: None,
        pod: None,
    }
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::for_service_account(TD, ns, sa).unwrap()
}

fn refusal(r: Result<(), ImpersonationError>) -> String {
    match r {
        Err(ImpersonationError::Kubernetes(m)) => m,
        other => panic!("expected a Kubernetes refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn ztunnel_gets_identities_of_pods_on_its_node_only() {
    let k = kube_auth(cluster());
    let ztunnel = sa_caller("istio-system", "ztunnel", Some(("ztunnel-a", "uid-za")));
    k.authorize_on_node(&ztunnel, &id("shop", "web")).unwrap();
    let m = refusal(k.authorize_on_node(&ztunnel, &id("shop", "db")));
    assert_eq!(
        m,
        "no running pod with service account shop/db is on node node-a"
    );
}

#[tokio::test]
async fn a_node_svid_is_on_its_own_node() {
    let k = kube_auth(cluster());
    k.authorize_on_node(&node_caller("node-b"), &id("shop", "db"))
        .unwrap();
    let m = refusal(k.authorize_on_node(&node_caller("node-b"), &id("shop", "web")));
    assert!(m.contains("shop/web is on node node-b"), "{m}");
    let m = refusal(k.authorize_on_node(
        &node_caller("node-b"),
        &SpiffeId::parse("spiffe://cluster.local/custom/path").unwrap(),
    ));
    assert!(m.contains("is not a Kubernetes identity"), "{m}");
}

#[tokio::test]
async fn each_bound_pod_condition_is_named() {
    let k = kube_auth(cluster());
    let target = id("shop", "web");
    let unbound =
        refusal(k.authorize_on_node(&sa_caller("istio-system", "ztunnel", None), &target));
    assert!(unbound.contains("not bound to a pod"), "{unbound}");
    let unknown = refusal(k.authorize_on_node(
        &sa_caller("istio-system", "ztunnel", Some(("ztunnel-gone", "uid-x"))),
        &target,
    ));
    assert!(
        unknown.contains("ztunnel-gone, which the CA does not know"),
        "{unknown}"
    );
    let recreated = refusal(k.authorize_on_node(
        &sa_caller("istio-system", "ztunnel", Some(("ztunnel-a", "uid-old"))),
        &target,
    ));
    assert!(
        recreated.contains("now has UID uid-za (it was re-created)"),
        "{recreated}"
    );
    let other_sa = refusal(k.authorize_on_node(
        &sa_caller("istio-system", "ztunnel", Some(("agent-a", "uid-aa"))),
        &target,
    ));
    assert!(
        other_sa.contains("runs as service account warden-agent, not ztunnel"),
        "{other_sa}"
    );
    let mut lying = sa_caller("istio-system", "ztunnel", Some(("ztunnel-a", "uid-za")));
    if let Some(p) = lying.pod.as_mut() {
        p.node = Some("node-b".into());
    }
    let m = refusal(k.authorize_on_node(&lying, &target));
    assert!(
        m.contains("names node node-b, but pod istio-system/ztunnel-a runs on node-a"),
        "{m}"
    );
}

#[tokio::test]
async fn node_attestation_needs_an_agent_token_bound_to_a_pod_on_that_node() {
    let k = kube_auth(cluster());
    let agent = sa_caller("istio-system", "warden-agent", Some(("agent-a", "uid-aa")));
    k.attest_node(&agent, "node-a").unwrap();
    let m = refusal(k.attest_node(&agent, "node-b"));
    assert_eq!(
        m,
        "the agent's pod istio-system/agent-a runs on node node-a, not node-b"
    );
    let ztunnel = sa_caller("istio-system", "ztunnel", Some(("ztunnel-a", "uid-za")));
    let m = refusal(k.attest_node(&ztunnel, "node-a"));
    assert!(
        m.contains(
            "is not a node agent account (--agent-service-accounts: istio-system/warden-agent)"
        ),
        "{m}"
    );
    let m = refusal(k.attest_node(&node_caller("node-a"), "node-a"));
    assert!(m.contains("authenticated with x509"), "{m}");
}

#[tokio::test]
async fn an_unsynced_index_decides_nothing() {
    let api = FakeApiServer::new();
    api.fail_next("GET", "/pods", 500, 1000);
    let (pods, _task) = PodIndex::start(api.client());
    let k = kube_auth(pods);
    let r = k.authorize_on_node(&node_caller("node-a"), &id("shop", "web"));
    assert!(
        matches!(r, Err(ImpersonationError::Unavailable(_))),
        "{r:?}"
    );
}
