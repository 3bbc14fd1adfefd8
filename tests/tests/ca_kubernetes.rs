//! The real `warden-ca` in Kubernetes mode against a fake API server process
//! (`warden-fake-kube-api`: no API server can run here; its responses follow the
//! Kubernetes API reference), judged by clients Warden did not write: Python's grpcio
//! presenting service-account tokens the fake reviews (`tests/interop/istio_ca_client.py`,
//! as istio-agent and ztunnel call CreateCertificate), and curl posting AdmissionReviews
//! to the webhook and reading objects back from the API server.
//! `./test.sh` installs grpcio into `.venv`; without it this test is skipped loudly, or
//! fails under CI=true.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{Value, json};
use warden_tests::{CaProcess, bin, eventually, ok, run_json, spawn_logged, wait_message};

const API_TOKEN: &str = "warden-ca-service-account-token";

struct FakeApi {
    child: Child,
    addr: String,
    kubeconfig: PathBuf,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeApi {
    fn start(dir: &Path, state: &Value) -> Self {
        let state_path = dir.join("api-state.json");
        std::fs::write(&state_path, state.to_string()).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        let mut cmd = Command::new(bin("warden-fake-kube-api"));
        cmd.arg("--state")
            .arg(&state_path)
            .arg("--kubeconfig")
            .arg(&kubeconfig);
        let (child, log) = spawn_logged(cmd);
        let v = wait_message(&log, "fake API server serving", Duration::from_secs(20));
        Self {
            child,
            addr: v["addr"].as_str().unwrap().to_string(),
            kubeconfig,
        }
    }

    /// GET of an API path with curl, as a client with the CA's bearer token; `None` on 404.
    fn get(&self, path: &str) -> Option<Value> {
        let out = Command::new("curl")
            .args(["-sS", "-k", "--max-time", "10", "-H"])
            .arg(format!("Authorization: Bearer {API_TOKEN}"))
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{}{path}", self.addr))
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let (body, code) = stdout.rsplit_once('\n').unwrap();
        match code {
            "200" => Some(serde_json::from_str(body).unwrap()),
            "404" => None,
            other => panic!("GET {path}: HTTP {other}: {body}"),
        }
    }
}

impl FakeApi {
    /// POST of an object with curl; panics unless created.
    fn post(&self, path: &str, object: &Value) {
        let out = Command::new("curl")
            .args(["-sS", "-k", "--max-time", "10", "-H"])
            .arg(format!("Authorization: Bearer {API_TOKEN}"))
            .args([
                "-H",
                "Content-Type: application/json",
                "-w",
                "\n%{http_code}",
                "-d",
            ])
            .arg(object.to_string())
            .arg(format!("https://{}{path}", self.addr))
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.ends_with("201"), "POST {path}: {stdout}");
    }
}

fn pod(ns: &str, name: &str, sa: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
           "spec": {"nodeName": node, "serviceAccountName": sa,
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
           "status": {"phase": "Running"}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
           "status": {"phase": "Active"}})
}

/// The fake numbers object UIDs in insertion order (`00000000-0000-4000-8000-<n>`).
fn uid_of(objects: &[Value], name: &str) -> String {
    let i = objects
        .iter()
        .position(|o| o["metadata"]["name"] == name)
        .unwrap();
    format!("00000000-0000-4000-8000-{:012x}", i + 1)
}

#[test]
fn kubernetes_mode_reviews_tokens_authorizes_nodes_and_validates_policies() {
    let Some(py) = warden_tests::grpcio_python("the Kubernetes-mode end-to-end test") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut objects = vec![
        namespace("istio-system"),
        namespace("foo"),
        namespace("bar"),
        pod("foo", "sleep-1", "sleep", "node-a"),
        pod("bar", "web-1", "web", "node-b"),
        pod("istio-system", "ztunnel-a", "ztunnel", "node-a"),
    ];
    objects.push(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "warden-validator"},
        "webhooks": [{"name": "validation.security.warden.dev",
            "clientConfig": {"service": {"name": "warden-ca", "namespace": "istio-system", "path": "/validate", "port": 443}},
            "rules": [{"apiGroups": ["security.istio.io"], "apiVersions": ["v1", "v1beta1"],
                       "operations": ["CREATE", "UPDATE"],
                       "resources": ["authorizationpolicies", "peerauthentications", "requestauthentications"]}],
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail"}]
    }));
    let ztunnel_uid = uid_of(&objects, "ztunnel-a");
    let state = json!({
        "client_token": API_TOKEN,
        "objects": objects,
        "tokens": {
            "t-sleep": {"user": "system:serviceaccount:foo:sleep", "audiences": ["istio-ca"]},
            "t-other-audience": {"user": "system:serviceaccount:foo:sleep", "audiences": ["vault"]},
            "t-broken": {"api_error": 500},
            "t-ztunnel": {"user": "system:serviceaccount:istio-system:ztunnel", "audiences": ["istio-ca"],
                          "extra": {"authentication.kubernetes.io/pod-name": ["ztunnel-a"],
                                    "authentication.kubernetes.io/pod-uid": [ztunnel_uid],
                                    "authentication.kubernetes.io/node-name": ["node-a"]}}
        }
    });
    let api = FakeApi::start(tmp.path(), &state);
    let data = tmp.path().join("data");
    // A CA replica in Kubernetes mode against the fake API server.
    let replica = |data: &Path, pod: &str| {
        CaProcess::start(
            data,
            &[
                "--kubernetes",
                "on",
                "--kubeconfig",
                api.kubeconfig.to_str().unwrap(),
                "--ca-namespace",
                "istio-system",
                "--pod-name",
                pod,
                "--webhook-addr",
                "127.0.0.1:0",
                "--trusted-node-accounts",
                "istio-system/ztunnel",
            ],
        )
    };
    let ca = replica(&data, "warden-ca-0");
    // Ready once the pod index has its first list.
    eventually("the CA is ready", Duration::from_secs(30), || {
        warden_tests::try_http_get(&ca.monitoring_addr, "/ready").is_ok_and(|(code, _)| code == 200)
    });

    let root = data.join("root-cert.pem");
    let script = warden_tests::interop_script("istio_ca_client.py");
    let addr = format!("localhost:{}", ca.grpc_addr.rsplit(':').next().unwrap());
    let client_at = |addr: &str, name: &str, token: &str, extra: &[&str]| {
        let token_file = tmp.path().join(format!("{name}.token"));
        std::fs::write(&token_file, token).unwrap();
        let out = tmp.path().join(name);
        let (ok, r) = run_json(
            Command::new(&py)
                .arg(&script)
                .args(["--addr", addr, "--root", root.to_str().unwrap()])
                .arg("--token-file")
                .arg(&token_file)
                .arg("--out")
                .arg(&out)
                .args(extra),
        );
        assert!(ok, "{name}: {r}");
        (r, out)
    };
    let client = |name: &str, token: &str, extra: &[&str]| client_at(&addr, name, token, extra);
    let san = |dir: &Path| {
        let pem = std::fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName"])
            .stdin_pem(&pem);
        out.lines().nth(1).unwrap_or_default().trim().to_string()
    };

    // A reviewed token is the identity of its service account.
    let (r, out) = client("sleep", "t-sleep", &["--cluster-id", "Kubernetes"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(san(&out), "URI:spiffe://cluster.local/ns/foo/sa/sleep");

    // Each refusal, with istiod's codes.
    let refused = [
        (
            "other-cluster",
            "t-sleep",
            vec!["--cluster-id", "east"],
            "UNAUTHENTICATED",
            "is not this cluster",
        ),
        (
            "audience",
            "t-other-audience",
            vec![],
            "UNAUTHENTICATED",
            "audience",
        ),
        ("unknown", "t-unknown", vec![], "UNAUTHENTICATED", ""),
        ("broken", "t-broken", vec![], "UNAVAILABLE", ""),
        (
            "ztunnel-other-node",
            "t-ztunnel",
            vec!["--impersonate", "spiffe://cluster.local/ns/bar/sa/web"],
            "PERMISSION_DENIED",
            "node-a",
        ),
    ];
    for (name, token, mut extra, code, text) in refused {
        extra.extend(["--expect-code", code]);
        let (r, _) = client(name, token, &extra);
        assert_eq!(r["code"], code, "{name}: {r}");
        assert!(r["details"].as_str().unwrap().contains(text), "{name}: {r}");
    }

    // ztunnel obtains the identity of a pod on its own node.
    let (r, out) = client(
        "ztunnel",
        "t-ztunnel",
        &["--impersonate", "spiffe://cluster.local/ns/foo/sa/sleep"],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(san(&out), "URI:spiffe://cluster.local/ns/foo/sa/sleep");

    // Refusals are audited, naming the failed condition.
    let audit = ok(ca.warden(&["audit", "list", "--outcome", "denied", "--json"]));
    assert!(audit.contains("east"), "{audit}");
    assert!(audit.contains("node-a"), "{audit}");

    // The webhook's configuration carries the CA's bundle.
    let bundle = std::fs::read_to_string(&root).unwrap();
    eventually("the webhook caBundle", Duration::from_secs(20), || {
        let config = api
            .get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/warden-validator")
            .unwrap();
        config["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .map(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).unwrap())
            == Some(bundle.as_bytes().to_vec())
    });

    // The root lives in the cluster: the leader made istio-ca-secret, and publishes the
    // bundle as istio-ca-root-cert in every namespace.
    let secret = api
        .get("/api/v1/namespaces/istio-system/secrets/istio-ca-secret")
        .expect("istio-ca-secret was created");
    assert_eq!(secret["type"], "istio.io/ca-root");
    assert_eq!(b64(&secret["data"]["ca-cert.pem"]), bundle);
    for ns in ["istio-system", "foo", "bar"] {
        eventually("istio-ca-root-cert", Duration::from_secs(20), || {
            api.get(&format!(
                "/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert"
            ))
            .is_some_and(|cm| cm["data"]["root-cert.pem"] == bundle.as_str())
        });
    }
    // The JWT-SVID and audit keys are shared through a Secret, not kept per replica.
    let keys = api
        .get("/api/v1/namespaces/istio-system/secrets/warden-ca-keys")
        .expect("warden-ca-keys was created");
    assert!(keys["data"]["jwt-key.pem"].is_string() && keys["data"]["audit-key.pem"].is_string());
    assert!(!data.join("jwt-key.pem").exists() && !data.join("audit-key.pem").exists());
    let lease = api
        .get("/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/warden-ca-leader")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "warden-ca-0");

    // The webhook refuses a bad policy over TLS, verified against the CA's root.
    let webhook = ca
        .webhook_addr
        .clone()
        .expect("the CA logged no webhook_addr");
    let port = webhook.rsplit(':').next().unwrap().to_string();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "b7f4a2c0-1111-4222-8333-444455556666",
            "kind": {"group": "security.istio.io", "version": "v1", "kind": "PeerAuthentication"},
            "resource": {"group": "security.istio.io", "version": "v1", "resource": "peerauthentications"},
            "name": "default", "namespace": "foo", "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                       "metadata": {"name": "default", "namespace": "foo"},
                       "spec": {"portLevelMtls": {"8080": {"mode": "DISABLE"}}}}}
    });
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&root)
        .args([
            "--resolve",
            &format!("warden-ca.istio-system.svc:{port}:127.0.0.1"),
        ])
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(review.to_string())
        .arg(format!(
            "https://warden-ca.istio-system.svc:{port}/validate"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["response"]["uid"],
        "b7f4a2c0-1111-4222-8333-444455556666"
    );
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert_eq!(
        answer["response"]["status"]["message"],
        "PeerAuthentication foo/default: spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"
    );

    // A second replica loads the same root; when the first stops, it takes the lead.
    let data2 = tmp.path().join("data-2");
    let ca2 = replica(&data2, "warden-ca-1");
    assert_eq!(
        std::fs::read_to_string(data2.join("root-cert.pem")).unwrap(),
        bundle
    );

    // Warden as the shared root: an intermediate for this cluster, plugged in as
    // cacerts while the CA runs. The bundle stays the same root; leaves now come with
    // the intermediate.
    let inter = tmp.path().join("cacerts");
    ok(ca.warden(&[
        "ca",
        "intermediate",
        "--cluster",
        "Kubernetes",
        "--out",
        inter.to_str().unwrap(),
    ]));
    let (code, _) = ca.terminate();
    assert_eq!(code, Some(0));
    eventually("the second replica leads", Duration::from_secs(30), || {
        api.get("/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/warden-ca-leader")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "warden-ca-1")
    });
    let file = |n: &str| {
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            std::fs::read(inter.join(n)).unwrap(),
        )
    };
    api.post(
        "/api/v1/namespaces/istio-system/secrets",
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "cacerts", "namespace": "istio-system"},
                "data": {"ca-cert.pem": file("ca-cert.pem"), "ca-key.pem": file("ca-key.pem"),
                         "cert-chain.pem": file("cert-chain.pem"), "root-cert.pem": file("root-cert.pem")}}),
    );
    let addr2 = format!("localhost:{}", ca2.grpc_addr.rsplit(':').next().unwrap());
    let intermediate_pem = std::fs::read_to_string(inter.join("ca-cert.pem")).unwrap();
    eventually(
        "leaves signed by the plugged-in intermediate",
        Duration::from_secs(30),
        || {
            let (r, out) = client_at(&addr2, "after-cacerts", "t-sleep", &[]);
            r["ok"] == true
                && std::fs::read_to_string(out.join("cert-chain.pem"))
                    .unwrap()
                    .contains(intermediate_pem.trim())
        },
    );
    let out = tmp.path().join("after-cacerts");
    let chain = out.join("cert-chain.pem");
    let verify = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&chain)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(data2.join("root-cert.pem")).unwrap(),
        bundle
    );
    let audit = ok(ca2.warden(&["audit", "list", "--json"]));
    assert!(
        audit.contains("ca.authority") && audit.contains("cacerts"),
        "{audit}"
    );

    let (code, _) = ca2.terminate();
    assert_eq!(code, Some(0));
}

/// A base64 JSON string, decoded to text.
fn b64(v: &Value) -> String {
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        v.as_str().unwrap(),
    )
    .unwrap();
    String::from_utf8(bytes).unwrap()
}

trait PemStdin {
    fn stdin_pem(&mut self, pem: &str) -> String;
}

impl PemStdin for Command {
    /// Runs with `pem` on stdin; stdout, or a panic with stderr.
    fn stdin_pem(&mut self, pem: &str) -> String {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pem.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
