//! `warden authz check` on real files: the decision JSON, `--explain`,
//! RequestAuthentication with real ES256 tokens before authorization, and refusals of bad
//! input with exit code 2.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use warden_tests::{Es256Issuer, fails, ok, warden};

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

/// `warden authz check` with the policies in `dir/policies` and `req` written to
/// `dir/req.json`, plus `extra` flags.
fn run_check(dir: &std::path::Path, req: &str, extra: &[&str]) -> std::process::Output {
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
    warden(&args)
}

/// [`run_check`]'s JSON answer (it must succeed).
fn check(dir: &std::path::Path, req: &str, extra: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(run_check(dir, req, extra))).unwrap()
}

/// [`run_check`]'s stderr when it must exit 2 (bad input).
fn check_exits_2(dir: &std::path::Path, req: &str, extra: &[&str]) -> String {
    let out = run_check(dir, req, extra);
    assert_eq!(out.status.code(), Some(2));
    fails(out)
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
    assert_eq!(v["peer_authentication"]["mode"], "PERMISSIVE");
}

#[test]
fn strict_peer_authentication_refuses_plaintext_first() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let strict = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: foo}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {9000: {mode: PERMISSIVE}}\n";
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        format!("{POLICIES}{strict}"),
    )
    .unwrap();
    let v = check(dir.path(), &request("null", "GET", "/info"), &["--explain"]);
    assert_eq!(v["decision"], "DENY");
    assert!(v["status"].is_null(), "{v}");
    assert_eq!(v["peer_authentication"]["mode"], "STRICT");
    assert_eq!(v["peer_authentication"]["policy"], "foo/strict");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("PeerAuthentication foo/strict requires mutual TLS on port 8080"),
        "{reason}"
    );
    // A peer with an identity goes on to authorization.
    let sleep = "\"spiffe://cluster.local/ns/foo/sa/sleep\"";
    let v = check(dir.path(), &request(sleep, "GET", "/info"), &[]);
    assert_eq!(v["decision"], "ALLOW");
    assert_eq!(v["peer_authentication"]["mode"], "STRICT");
    // portLevelMtls: plaintext on 9000 is accepted and authorization decides.
    let on_9000 = request("null", "GET", "/info").replace("\"port\": 8080", "\"port\": 9000");
    let v = check(dir.path(), &on_9000, &[]);
    assert_eq!(v["peer_authentication"]["mode"], "PERMISSIVE");
    assert_eq!(v["peer_authentication"]["port_level"], true);
    assert_eq!(v["status"], 403);
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
    let err = check_exits_2(dir.path(), &request("null", "GET", "/"), &[]);
    assert!(
        err.contains("p.yaml")
            && err.contains("foo/allow-sleep-get")
            && err.contains("spec.rules[0].to[0].operation.method: unknown field"),
        "{err}"
    );
    std::fs::write(dir.path().join("policies/p.yaml"), POLICIES).unwrap();
    let err = check_exits_2(dir.path(), "{\"workload\": {}}", &[]);
    assert!(
        err.contains("workload.namespace") || err.contains("missing field"),
        "{err}"
    );
}

/// RequestAuthentication in front of authorization: a JWT rule reading its JWKS from a
/// file next to the policies, and policies that need a request principal.
const JWT_POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: https://issuer.test
    jwksUri: ../keys/jwks.json
    audiences: [httpbin]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: elsewhere, namespace: bar}
spec:
  jwtRules:
  - issuer: https://remote.test
    jwksUri: https://remote.test/jwks.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.test/*"]}}]
    when: [{key: "request.auth.claims[scope]", values: [read]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-raw-tokens, namespace: foo}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[authorization]", values: ["*"]}]
"#;

/// A request to foo/httpbin with `authorization` (if any), `now` and `jwt_claims`.
fn jwt_request(authorization: Option<&str>, now: Option<u64>, claims: &str) -> String {
    let headers = match authorization {
        Some(a) => serde_json::json!({"Authorization": a}),
        None => serde_json::json!({}),
    };
    let now = now.map(|n| format!(r#", "now": {n}"#)).unwrap_or_default();
    format!(
        r#"{{"workload": {{"namespace": "foo", "labels": {{"app": "httpbin"}}}},
           "request": {{"protocol": "http", "source": {{"principal": null, "ip": "10.1.0.5"}},
                       "destination": {{"ip": "10.0.0.10", "port": 8080}},
                       "http": {{"method": "GET", "path": "/get", "host": "httpbin.foo", "headers": {headers}}},
                       "jwt_claims": {claims}{now}}}}}"#
    )
}

#[test]
fn request_authentication_runs_before_authorization() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), JWT_POLICIES).unwrap();
    let issuer = Es256Issuer::new();
    std::fs::write(dir.path().join("keys/jwks.json"), issuer.jwks()).unwrap();
    const NOW: u64 = 1_700_000_000;
    let token = |aud: &str, exp: u64| {
        issuer.token(
            &serde_json::json!({"iss": "https://issuer.test", "sub": "alice",
            "aud": aud, "exp": exp, "scope": "read write"}),
        )
    };
    let bearer = |t: &str| format!("Bearer {t}");

    // A valid token: its claims reach authorization, and the token is stripped first
    // (the DENY on a raw Authorization header does not fire).
    let good = bearer(&token("httpbin", NOW + 600));
    let v = check(
        dir.path(),
        &jwt_request(Some(&good), Some(NOW), "null"),
        &[],
    );
    assert_eq!(v["decision"], "ALLOW", "{v}");
    assert_eq!(v["status"], 200);
    assert_eq!(v["policy"], "foo/require-jwt");
    let ra = &v["request_authentication"];
    assert_eq!(ra["result"], "authenticated");
    assert_eq!(ra["principal"], "https://issuer.test/alice");
    assert_eq!(ra["policy"], "foo/jwt");
    assert_eq!(ra["claims"]["scope"], serde_json::json!(["read", "write"]));

    // The current time when the file has no `now`.
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fresh = bearer(&token("httpbin", unix + 600));
    let v = check(dir.path(), &jwt_request(Some(&fresh), None, "null"), &[]);
    assert_eq!(v["decision"], "ALLOW", "{v}");

    // No token: passes authentication with no identity, then authorization denies.
    let v = check(dir.path(), &jwt_request(None, Some(NOW), "null"), &[]);
    assert_eq!(
        (v["decision"].as_str(), v["status"].as_u64()),
        (Some("DENY"), Some(403)),
        "{v}"
    );
    assert_eq!(v["request_authentication"]["result"], "no_token");

    // Expired (past the 60 s skew): 401 from RequestAuthentication, authorization is
    // not reached.
    let expired = bearer(&token("httpbin", NOW - 61));
    let v = check(
        dir.path(),
        &jwt_request(Some(&expired), Some(NOW), "null"),
        &["--explain"],
    );
    assert_eq!(v["decision"], "DENY", "{v}");
    assert_eq!(v["status"], 401);
    assert_eq!(v["policy"], "foo/jwt");
    assert_eq!(v["rule"], 0);
    assert_eq!(v["request_authentication"]["result"], "rejected");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("expired") && !reason.contains(&expired[7..]),
        "{reason}"
    );
    assert_eq!(v["explain"], serde_json::json!([]));

    // Audience not allowed: Envoy answers 403.
    let other = bearer(&token("other", NOW + 600));
    let v = check(
        dir.path(),
        &jwt_request(Some(&other), Some(NOW), "null"),
        &[],
    );
    assert_eq!(
        (v["status"].as_u64(), v["decision"].as_str()),
        (Some(403), Some("DENY"))
    );
    assert!(v["reason"].as_str().unwrap().contains("audience"), "{v}");

    // Garbage in the Authorization header: 401, malformed.
    let v = check(
        dir.path(),
        &jwt_request(Some("Bearer not-a-jwt"), Some(NOW), "null"),
        &[],
    );
    assert_eq!(v["status"], 401, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("malformed"), "{v}");

    // Claims given in the file are taken as already validated: no JWT filter.
    let claims = r#"{"iss": "https://issuer.test", "sub": "bob", "scope": ["read"]}"#;
    let v = check(dir.path(), &jwt_request(None, None, claims), &[]);
    assert_eq!(v["decision"], "ALLOW", "{v}");
    assert!(v.get("request_authentication").is_none(), "{v}");
}

#[test]
fn unusable_request_authentication_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    // The JWKS file is missing, and the rule of foo/jwt is remote.
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        JWT_POLICIES.replace(
            "jwksUri: ../keys/jwks.json",
            "jwksUri: ../keys/jwks.json\n  - issuer: https://b.test\n    jwksUri: https://b.test/keys",
        ),
    )
    .unwrap();
    let err = check_exits_2(dir.path(), &jwt_request(None, Some(1), "null"), &[]);
    assert!(
        err.contains("p.yaml")
            && err.contains("RequestAuthentication foo/jwt: spec.jwtRules[0].jwksUri: cannot read the JWKS file")
            && err.contains("spec.jwtRules[1].jwksUri: \"https://b.test/keys\": remote JWKS is not supported yet; use jwks or a file")
            && !err.contains("bar/elsewhere"),
        "{err}"
    );
}

#[test]
fn the_path_is_normalized_as_the_proxy_does_in_each_mode() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), POLICIES).unwrap();
    let sleep = "\"spiffe://cluster.local/ns/foo/sa/sleep\"";
    let v = check(dir.path(), &request(sleep, "GET", "/info/x/../y"), &[]);
    assert_eq!(
        (v["decision"].as_str(), v["path"].as_str()),
        (Some("ALLOW"), Some("/info/y"))
    );
    // `%2F` stays escaped in BASE, is a slash in DECODE_AND_MERGE_SLASHES.
    let r = request(sleep, "GET", "/info%2F..%2F..%2Fadmin");
    let v = check(dir.path(), &r, &[]);
    assert_eq!(v["decision"], "ALLOW", "{v}");
    let v = check(
        dir.path(),
        &r,
        &["--path-normalization", "DECODE_AND_MERGE_SLASHES"],
    );
    assert_eq!(
        (v["decision"].as_str(), v["path"].as_str()),
        (Some("DENY"), Some("/admin")),
        "{v}"
    );
    // NONE matches the raw path: the dot segments stay.
    let v = check(
        dir.path(),
        &request(sleep, "GET", "/info/../admin"),
        &["--path-normalization", "NONE"],
    );
    assert_eq!(v["decision"], "ALLOW", "{v}");
    // A NUL is a 400 before any policy, in every mode.
    let v = check(
        dir.path(),
        &request(sleep, "GET", "/info%00"),
        &["--path-normalization", "NONE"],
    );
    assert_eq!(
        (v["decision"].as_str(), v["status"].as_u64()),
        (Some("DENY"), Some(400)),
        "{v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("NUL"), "{v}");
    // A mode Istio does not have is a usage error.
    let out = run_check(
        dir.path(),
        &request(sleep, "GET", "/info%00"),
        &["--path-normalization", "base"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected NONE, BASE"),
        "{out:?}"
    );
}
