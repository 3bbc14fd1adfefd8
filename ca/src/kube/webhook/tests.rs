//! The webhook's decisions on AdmissionReview bodies shaped as the Kubernetes docs show
//! them ("Dynamic Admission Control": request and response), its HTTPS server judged by
//! curl (a client no one here wrote), and the `caBundle` keeper against the fake API
//! server (kube's `tower_test` at the HTTP level; no API server can run here; the
//! ValidatingWebhookConfiguration body follows the `admissionregistration.k8s.io/v1`
//! API reference).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use warden_common::testing::TestCa;
use warden_common::testing::kube_api::FakeApiServer;

use super::*;

/// An AdmissionReview as the API server sends it (the docs' example, with its fields).
fn review(operation: &str, kind: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "security.istio.io", "version": "v1", "kind": kind},
            "resource": {"group": "security.istio.io", "version": "v1", "resource": "authorizationpolicies"},
            "requestKind": {"group": "security.istio.io", "version": "v1", "kind": kind},
            "requestResource": {"group": "security.istio.io", "version": "v1", "resource": "authorizationpolicies"},
            "name": "httpbin",
            "namespace": "foo",
            "operation": operation,
            "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            "dryRun": false
        }
    })
}

fn policy(spec: Value) -> Value {
    // As kubectl sends it on CREATE: no namespace in the object, the request names it.
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "httpbin"}, "spec": spec})
}

fn decide(body: &Value) -> Value {
    Validator::new("istio-system")
        .review(body.to_string().as_bytes())
        .unwrap()["response"]
        .clone()
}

#[test]
fn a_valid_policy_is_allowed_with_the_request_uid() {
    let r = decide(&review(
        "CREATE",
        "AuthorizationPolicy",
        policy(json!({"selector": {"matchLabels": {"app": "httpbin"}},
                      "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}]})),
    ));
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("warnings").is_none(), "{r}");
    assert!(r.get("status").is_none(), "{r}");
}

#[test]
fn a_bad_policy_is_refused_with_warden_validates_text() {
    let r = decide(&review(
        "UPDATE",
        "AuthorizationPolicy",
        policy(
            json!({"rules": [{"when": [{"key": "source.ip", "values": ["1.2.3.4/99"]}]},
                                 {"from": [{"source": {"serviceAccounts": ["ns/*"]}}]}]}),
        ),
    ));
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 400);
    let message = r["status"]["message"].as_str().unwrap();
    // Every error, each as `Kind ns/name: field: problem`; the namespace from the request.
    assert!(
        message.contains(
            "AuthorizationPolicy foo/httpbin: spec.rules[0].when[0].values[0]: invalid `value` for `key` source.ip: bad CIDR range (1.2.3.4/99)"
        ),
        "{message}"
    );
    assert!(
        message.contains("spec.rules[1].from[0].source.serviceAccounts[0]: wildcard not allowed"),
        "{message}"
    );
}

#[test]
fn a_resource_that_does_not_load_names_the_field() {
    let r = decide(&review(
        "CREATE",
        "AuthorizationPolicy",
        policy(json!({"action": "PERMIT"})),
    ));
    assert_eq!(r["allowed"], false, "{r}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("AuthorizationPolicy foo/httpbin: spec.action: "),
        "{message}"
    );
}

#[test]
fn warnings_come_back_beside_an_allowed_request() {
    let r = decide(&review(
        "CREATE",
        "AuthorizationPolicy",
        policy(json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})),
    ));
    assert_eq!(r["allowed"], true, "{r}");
    let warnings = r["warnings"].as_array().unwrap();
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("spec.rules[0]: warning: ")
            && warnings[0]
                .as_str()
                .unwrap()
                .contains("will deny all traffic to TCP ports"),
        "{warnings:?}"
    );
}

#[test]
fn a_local_jwks_path_is_reported_and_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.json");
    std::fs::write(&secret, "not a jwks at all").unwrap();
    let object = json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "foo"},
        "spec": {"jwtRules": [{"issuer": "i", "jwksUri": format!("file://{}", secret.display())}]}});
    let r = decide(&review("CREATE", "RequestAuthentication", object));
    assert_eq!(r["allowed"], true, "{r}");
    let text = r.to_string();
    assert!(text.contains("is not supported by Istio"), "{text}");
    assert!(!text.contains("not a jwks"), "the file was read: {text}");
}

#[test]
fn delete_is_allowed_and_unknown_types_are_refused() {
    let mut body = review("DELETE", "AuthorizationPolicy", Value::Null);
    assert_eq!(decide(&body)["allowed"], true);

    body = review(
        "CREATE",
        "VirtualService",
        json!({"kind": "VirtualService"}),
    );
    body["request"]["kind"] =
        json!({"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"});
    let r = decide(&body);
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unrecognized type networking.istio.io/v1 VirtualService"),
        "{r}"
    );

    let r = decide(&review("CREATE", "PeerAuthentication", policy(json!({}))));
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("request.object.kind: expected PeerAuthentication"),
        "{r}"
    );
}

#[test]
fn bodies_that_are_not_reviews_are_errors() {
    let v = Validator::new("istio-system");
    assert!(
        v.review(b"{")
            .unwrap_err()
            .starts_with("the body is not JSON")
    );
    let e = v
        .review(
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
    assert!(
        e.contains("expected an admission.k8s.io/v1 AdmissionReview"),
        "{e}"
    );
    let mut body = review("CREATE", "AuthorizationPolicy", policy(json!({})));
    body["request"]["uid"] = json!("");
    assert_eq!(
        v.review(body.to_string().as_bytes()).unwrap_err(),
        "request.uid: is required"
    );
}

/// The HTTPS server, with curl as the API server's stand-in: HTTP/2 and HTTP/1.1, the
/// serving certificate verified against the CA's root for the Service's DNS name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_posts_a_review_over_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let names = dns_names("warden-ca", "istio-system");
    let (chain, key) =
        ca.leaf_der_with("spiffe://cluster.local/ns/istio-system/sa/warden-ca", |p| {
            p.subject_alt_names = names
                .iter()
                .map(|n| rcgen::SanType::DnsName(n.as_str().try_into().unwrap()))
                .collect();
        });
    let cert = ServingCert::new(chain, key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        listener,
        Arc::new(cert.server_config()),
        Arc::new(Validator::new("istio-system")),
        stop_rx,
    ));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, ca.pem()).unwrap();
    let body = dir.path().join("review.json");
    std::fs::write(
        &body,
        review(
            "CREATE",
            "AuthorizationPolicy",
            policy(json!({"rules": [{"when": [{"key": "source.ip", "values": ["nope"]}]}]})),
        )
        .to_string(),
    )
    .unwrap();
    let curl = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&root)
            .args([
                "--resolve",
                &format!("warden-ca.istio-system.svc:{}:127.0.0.1", addr.port()),
                "-o",
                "-",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .args(extra);
        cmd
    };
    let url = format!("https://warden-ca.istio-system.svc:{}{PATH}", addr.port());
    for version in ["--http2", "--http1.1"] {
        let out = tokio::task::spawn_blocking({
            let mut cmd = curl(&[
                version,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
            ]);
            cmd.arg(format!("@{}", body.display())).arg(&url);
            move || cmd.output().unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{version}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (json_text, status) = stdout.rsplit_once('\n').unwrap();
        let expected_version = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(status, expected_version, "{stdout}");
        let answer: Value = serde_json::from_str(json_text).unwrap();
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["allowed"], false);
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("spec.rules[0].when[0].values[0]: invalid `value` for `key` source.ip: bad IP address (nope)"),
            "{answer}"
        );
    }
    // Wrong method, path, content type and a body over the limit: refused by status.
    let checks: [(&[&str], &str, &str); 4] = [
        (&["-X", "GET"], PATH, "405"),
        (
            &["-H", "Content-Type: application/json", "-d", "{}"],
            "/mutate",
            "404",
        ),
        (&["-H", "Content-Type: text/plain", "-d", "{}"], PATH, "415"),
        (
            &["-H", "Content-Type: application/json", "-d", "{}"],
            PATH,
            "400",
        ),
    ];
    for (args, path, code) in checks {
        let url = format!("https://warden-ca.istio-system.svc:{}{path}", addr.port());
        let mut cmd = curl(args);
        cmd.arg(&url);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            stdout.ends_with(&format!("\n{code} 2")),
            "{args:?} {path}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; MAX_BODY_BYTES + 1]).unwrap();
    // Over HTTP/1.1: the answer comes before the body is all sent, which curl reads as
    // an answer there (HTTP/2 has it reset the stream).
    let mut cmd = curl(&[
        "--http1.1",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
    ]);
    cmd.arg(format!("@{}", big.display())).arg(&url);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.ends_with("\n413 1.1"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap();
}

fn webhook_config(bundle: Option<&str>) -> Value {
    let client_config = |path: &str| {
        let mut c = json!({"service": {"name": "warden-ca", "namespace": "istio-system", "path": path, "port": 443}});
        if let Some(b) = bundle {
            c["caBundle"] = json!(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                b
            ));
        }
        c
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "warden-validator"},
        "webhooks": [
            {"name": "validation.security.warden.dev", "clientConfig": client_config(PATH),
             "rules": [{"apiGroups": ["security.istio.io"], "apiVersions": ["v1", "v1beta1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["authorizationpolicies", "peerauthentications", "requestauthentications"]}],
             "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail"},
            {"name": "second.security.warden.dev", "clientConfig": client_config(PATH),
             "admissionReviewVersions": ["v1"], "sideEffects": "None"}
        ]
    })
}

fn bundles(api: &FakeApiServer) -> Vec<Option<String>> {
    let Some(config) = api.get(
        "admissionregistration.k8s.io/v1",
        "validatingwebhookconfigurations",
        None,
        "warden-validator",
    ) else {
        return Vec::new();
    };
    config["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["clientConfig"]["caBundle"].as_str().map(|b| {
                String::from_utf8(
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).unwrap(),
                )
                .unwrap()
            })
        })
        .collect()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not reached in 10 s");
}

#[tokio::test]
async fn the_leader_keeps_every_ca_bundle_current() {
    let api = FakeApiServer::new();
    let (bundle_tx, bundle_rx) = watch::channel("ROOT-1".to_string());
    let (leader_tx, leader_rx) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(keep_ca_bundle(
        Api::all(api.client()),
        "warden-validator".into(),
        bundle_rx,
        leader_rx,
        stop_rx,
    ));
    // Not leading: nothing is read or written, even once the configuration exists.
    api.insert(webhook_config(None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(api.requests().is_empty(), "{:?}", api.requests());

    // Leading: every webhook gets the bundle.
    leader_tx.send(true).unwrap();
    let both = |b: &str| vec![Some(b.to_string()), Some(b.to_string())];
    eventually("caBundle set", || bundles(&api) == both("ROOT-1")).await;

    // An edit is put back.
    api.insert(webhook_config(Some("EDITED")));
    eventually("caBundle restored", || bundles(&api) == both("ROOT-1")).await;

    // A new bundle reaches every webhook.
    bundle_tx.send("ROOT-1\nROOT-2".into()).unwrap();
    eventually("caBundle updated", || {
        bundles(&api) == both("ROOT-1\nROOT-2")
    })
    .await;

    // Deleted and re-created (a chart upgrade): set again.
    api.remove(
        "admissionregistration.k8s.io/v1",
        "validatingwebhookconfigurations",
        None,
        "warden-validator",
    );
    api.insert(webhook_config(None));
    eventually("caBundle set after re-creation", || {
        bundles(&api) == both("ROOT-1\nROOT-2")
    })
    .await;

    // Stepping down: edits stay.
    leader_tx.send(false).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.insert(webhook_config(Some("EDITED")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bundles(&api), both("EDITED"));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_conflict_is_retried_and_an_api_error_backs_off() {
    let api = FakeApiServer::new();
    api.insert(webhook_config(Some("OLD")));
    let client = Api::all(api.client());
    // A write that loses a race is answered 409 and retried on a fresh read.
    api.fail_next("PUT", "warden-validator", 409, 1);
    assert_eq!(
        reconcile(&client, "warden-validator", "NEW").await.unwrap(),
        Some(2)
    );
    assert_eq!(bundles(&api), vec![Some("NEW".into()), Some("NEW".into())]);
    // Nothing to do: no write.
    let before = api.requests().len();
    assert_eq!(
        reconcile(&client, "warden-validator", "NEW").await.unwrap(),
        None
    );
    assert!(
        api.requests()[before..]
            .iter()
            .all(|r| r.starts_with("GET"))
    );
    // Forbidden (RBAC) is an error for the caller to log and retry.
    api.fail_next("PUT", "warden-validator", 403, 1);
    let e = reconcile(&client, "warden-validator", "NEWER")
        .await
        .unwrap_err();
    assert!(matches!(e, kube::Error::Api(ref s) if s.code == 403), "{e}");
    // No configuration yet: nothing to do.
    let empty = FakeApiServer::new();
    assert_eq!(
        reconcile(&Api::all(empty.client()), "warden-validator", "NEW")
            .await
            .unwrap(),
        None
    );
}
