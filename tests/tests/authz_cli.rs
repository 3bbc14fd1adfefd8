//! `warden authz check` on real files: the decision JSON, `--explain`, and refusals of
//! bad input with exit code 2.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use warden_tests::{fails, ok, warden};

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep-get, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/info*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"#;

fn request(principal: &str, method: &str, path: &str) -> String {
    format!(
        r#"{{"workload": {{"namespace": "foo", "labels": {{"app": "httpbin"}}}},
           "request": {{"protocol": "http", "source": {{"principal": {principal}, "ip": "10.1.0.5"}},
                       "destination": {{"ip": "10.0.0.10", "port": 8080}},
                       "http": {{"method": "{method}", "path": "{path}", "host": "httpbin.foo", "headers": {{}}}},
                       "jwt_claims": null}}}}"#
    )
}

fn check(dir: &std::path::Path, req: &str, extra: &[&str]) -> serde_json::Value {
    let file = dir.join("req.json");
    std::fs::write(&file, req).unwrap();
    let policies = dir.join("policies");
    let mut args = vec![
        "authz",
        "check",
        "--config",
        policies.to_str().unwrap(),
        "--request",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(warden(&args))).unwrap()
}

#[test]
fn decisions_and_explanations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), POLICIES).unwrap();
    let sleep = "\"spiffe://cluster.local/ns/foo/sa/sleep\"";
    let v = check(dir.path(), &request(sleep, "GET", "/info?x=1"), &[]);
    assert_eq!(v["decision"], "ALLOW");
    assert_eq!(v["policy"], "foo/allow-sleep-get");
    assert_eq!(v["rule"], 0);
    let v = check(dir.path(), &request(sleep, "GET", "/info/../admin"), &[]);
    assert_eq!(v["decision"], "DENY");
    assert_eq!(v["policy"], "istio-system/deny-admin");
    let v = check(dir.path(), &request("null", "GET", "/info"), &["--explain"]);
    assert_eq!(v["decision"], "DENY");
    assert!(v["policy"].is_null());
    let why = v["explain"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["policy"] == "foo/allow-sleep-get")
        .unwrap()["why"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("source principal"), "{why}");
}

#[test]
fn bad_input_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        POLICIES.replace("methods:", "method:"),
    )
    .unwrap();
    let req = dir.path().join("req.json");
    std::fs::write(&req, request("null", "GET", "/")).unwrap();
    let policies = dir.path().join("policies");
    let out = warden(&[
        "authz",
        "check",
        "--config",
        policies.to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = fails(out);
    assert!(
        err.contains("p.yaml")
            && err.contains("foo/allow-sleep-get")
            && err.contains("spec.rules[0].to[0].operation.method: unknown field"),
        "{err}"
    );
    std::fs::write(dir.path().join("policies/p.yaml"), POLICIES).unwrap();
    std::fs::write(&req, "{\"workload\": {}}").unwrap();
    let out = warden(&[
        "authz",
        "check",
        "--config",
        policies.to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = fails(out);
    assert!(
        err.contains("workload.namespace") || err.contains("missing field"),
        "{err}"
    );
}
