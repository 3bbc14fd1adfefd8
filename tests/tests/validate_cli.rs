//! `warden validate` on real files: the summary of a clean directory, `file:line:`
//! problems with exit 1, loader errors with exit 1, warnings with exit 0, and usage
//! errors with exit 2.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::path::Path;
use std::process::Output;

use warden_tests::warden;

const GOOD: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/info*", "/api/{*}/items"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
"#;

const JWT: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks.json
"#;

const BAD: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["10.0.0.0/8", "10.0.0.0/33"]
    to:
    - operation:
        ports: ["70000"]
    when:
    - key: request.method
      values: ["GET"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  portLevelMtls:
    8080: {mode: DISABLE}
"#;

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn validate(paths: &[&Path]) -> Output {
    let mut args = vec!["validate"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    warden(&args)
}

#[test]
fn a_clean_directory_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("policies.yaml"), GOOD).unwrap();
    std::fs::write(dir.path().join("sub/jwt.yml"), JWT).unwrap();
    let out = validate(&[dir.path()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout(&out),
        "ok: 3 resources in 2 files (1 AuthorizationPolicy, 1 PeerAuthentication, \
         1 RequestAuthentication); 1 unknown kind skipped\n"
    );
}

#[test]
fn problems_name_file_line_resource_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&good, GOOD).unwrap();
    std::fs::write(&bad, BAD).unwrap();
    let out = validate(&[&good, &bad]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let b = bad.display();
    let expected = [
        format!(
            "{b}:9: AuthorizationPolicy foo/deny-admin: spec.rules[0].from[0].source.ipBlocks[1]: \
             bad CIDR range (10.0.0.0/33): prefix length out of range"
        ),
        format!(
            "{b}:12: AuthorizationPolicy foo/deny-admin: spec.rules[0].to[0].operation.ports[0]: \
             bad port (70000): out of range 0-65535"
        ),
        format!(
            "{b}:14: AuthorizationPolicy foo/deny-admin: spec.rules[0].when[0].key: \
             unknown attribute: request.method"
        ),
        format!(
            "{b}:21: PeerAuthentication foo/default: spec.portLevelMtls: \
             mesh/namespace peer authentication cannot have port level mTLS"
        ),
    ];
    assert_eq!(stdout(&out), expected.join("\n") + "\n");
}

#[test]
fn warnings_alone_pass() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deny.yaml");
    std::fs::write(
        &file,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: no-delete, namespace: foo}\n\
         spec:\n  action: DENY\n  rules:\n  - to: [{operation: {methods: [DELETE]}}]\n",
    )
    .unwrap();
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!(
            "{}:7: AuthorizationPolicy foo/no-delete: spec.rules[0]: warning: configured \
             AuthorizationPolicy will deny all traffic to TCP ports",
            file.display()
        )),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "ok: 1 resource in 1 file (1 AuthorizationPolicy); 1 warning"
    );
}

#[test]
fn broken_yaml_prints_the_loader_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, format!("{GOOD}---\napiVersion: [unclosed\n")).unwrap();
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "{}:21: document 4: not valid YAML",
            file.display()
        )),
        "{text}"
    );
    let missing = dir.path().join("missing.yaml");
    let out = validate(&[&missing]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("missing.yaml"), "{out:?}");
}

#[test]
fn no_paths_is_a_usage_error() {
    let out = warden(&["validate"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("PATH"), "{err}");
}
