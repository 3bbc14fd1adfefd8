//! `warden authz replay` and `warden authz suggest` on a bookinfo-shaped access log
//! (tests/fixtures/replay: the registry, the policies the log was recorded under, a
//! proposed change): the log replays unchanged under its own policies; the proposed
//! change breaks, opens, and leaves uncertain exactly what it should; the suggested
//! policies pass `warden validate` and replay the log with nothing allowed denied; bad
//! lines stop with exit 2 naming the file and line unless skipped.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

use warden_tests::{fails, ok, warden};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/replay")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// `warden authz replay --output json` against `config` (+ the registry); the JSON
/// and the exit code.
fn replay(config: &str, log: &str, extra: &[&str]) -> (serde_json::Value, Option<i32>) {
    let registry = fixture("registry");
    let mut args = vec![
        "authz",
        "replay",
        "--config",
        config,
        "--workloads",
        &registry,
        "--log",
        log,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = warden(&args);
    let code = out.status.code();
    assert_ne!(code, Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_slice(&out.stdout).unwrap(), code)
}

fn groups(v: &serde_json::Value, section: &str) -> Vec<serde_json::Value> {
    v[section]["groups"].as_array().unwrap().clone()
}

#[test]
fn the_log_replays_unchanged_under_its_own_policies() {
    let (v, code) = replay(&fixture("current"), &fixture("access.log"), &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["lines"], 35);
    assert_eq!(v["decisions"], 24);
    assert_eq!(v["skipped"]["outbound"], 10);
    assert_eq!(v["skipped"]["no_decision"], 1);
    assert_eq!(v["unchanged"]["allowed"], 20);
    assert_eq!(v["unchanged"]["denied"], 3);
    for s in ["allow_to_deny", "deny_to_allow", "uncertain"] {
        assert_eq!(v[s]["requests"], 0, "{s}: {v:#}");
    }
    // reviews-v4 is in no registry: reported, never counted as allowed.
    let u = groups(&v, "undecidable");
    assert_eq!(u.len(), 1);
    assert_eq!(u[0]["destination"], "bookinfo/reviews-v4");
    assert!(
        u[0]["now"][0]
            .as_str()
            .unwrap()
            .contains("WorkloadEntry bookinfo/reviews-v4"),
        "{u:?}"
    );
    // ... which --fail-on-uncertain makes a failure.
    let (_, code) = replay(
        &fixture("current"),
        &fixture("access.log"),
        &["--fail-on-uncertain"],
    );
    assert_eq!(code, Some(1));
}

#[test]
fn a_proposed_change_reports_what_breaks_opens_and_is_uncertain() {
    let (v, code) = replay(&fixture("proposed"), &fixture("access.log"), &[]);
    assert_eq!(code, Some(1), "{v:#}");
    let broken = groups(&v, "allow_to_deny");
    assert_eq!(broken.len(), 1, "{v:#}");
    let g = &broken[0];
    assert_eq!(g["source"], "cluster.local/ns/bookinfo/sa/productpage");
    assert_eq!(g["destination"], "bookinfo/reviews-v2");
    assert_eq!(
        (g["method"].as_str(), g["path"].as_str()),
        (Some("GET"), Some("/health"))
    );
    assert_eq!(g["count"], 1);
    assert_eq!(g["examples"][0]["request_id"], "req-0028");
    let opened = groups(&v, "deny_to_allow");
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0]["path"], "/ratings/*");
    assert_eq!(opened[0]["count"], 2);
    assert_eq!(opened[0]["examples"].as_array().unwrap().len(), 2);
    // details -> ratings is allowed only with a header the log does not record.
    let uncertain = groups(&v, "uncertain");
    assert_eq!(uncertain.len(), 1);
    assert_eq!(
        uncertain[0]["source"],
        "cluster.local/ns/bookinfo/sa/details"
    );
    assert!(
        uncertain[0]["now"][0]
            .as_str()
            .unwrap()
            .contains("bookinfo/ratings rule 1 reads request.headers[x-debug]"),
        "{uncertain:?}"
    );
    let (_, code) = replay(&fixture("proposed"), &fixture("access.log"), &["--accept"]);
    assert_eq!(code, Some(0));
    // The human report says the same.
    let registry = fixture("registry");
    let out = warden(&[
        "authz",
        "replay",
        "--config",
        &fixture("proposed"),
        "--workloads",
        &registry,
        "--log",
        &fixture("access.log"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("ALLOWED -> DENIED (would break): 1 request in 1 group"),
        "{text}"
    );
    assert!(
        text.contains(
            "cluster.local/ns/bookinfo/sa/productpage -> bookinfo/reviews-v2:9080  GET /health"
        ),
        "{text}"
    );
    assert!(text.contains("note: 10 outbound lines skipped"), "{text}");
}

#[test]
fn suggested_policies_validate_and_replay_with_nothing_denied() {
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("suggested.yaml");
    let registry = fixture("registry");
    let run = warden(&[
        "authz",
        "suggest",
        "--log",
        &fixture("access.log"),
        "--workloads",
        &registry,
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("20 allowed requests stay allowed"),
        "{stderr}"
    );
    let yaml = std::fs::read_to_string(&out).unwrap();
    // One policy per app, one rule per principal; IDs generalized one segment at a time.
    assert!(yaml.contains("name: \"reviews-observed\""), "{yaml}");
    assert!(yaml.contains("- \"/reviews/{*}\""), "{yaml}");
    assert!(yaml.contains("- \"/ratings/0\""), "{yaml}");
    assert!(yaml.contains("- \"/health\""), "{yaml}");
    assert!(yaml.contains("ports: [\"27017\"]"), "{yaml}");
    assert!(
        yaml.contains("#   cluster.local/ns/bookinfo/sa/details GET /ratings/* (1 request)"),
        "{yaml}"
    );
    // The gateway only saw plaintext clients: no policy that would lock them out.
    assert!(
        yaml.contains("No policy written: no request with a peer identity"),
        "{yaml}"
    );
    assert!(!yaml.contains("namespace: \"istio-system\""), "{yaml}");
    let v = ok(warden(&["validate", out.to_str().unwrap()]));
    assert!(v.contains("ok: 5 resources"), "{v}");
    let (v, code) = replay(out.to_str().unwrap(), &fixture("access.log"), &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["allow_to_deny"]["requests"], 0, "{v:#}");
    assert_eq!(v["uncertain"]["requests"], 0, "{v:#}");
    assert_eq!(v["unchanged"]["allowed"], 20);
    // Least privilege: what was denied stays denied.
    assert_eq!(v["deny_to_allow"]["requests"], 0, "{v:#}");
    // --namespace keeps only that namespace's destinations.
    let only = ok(warden(&[
        "authz",
        "suggest",
        "--log",
        &fixture("access.log"),
        "--workloads",
        &registry,
        "--namespace",
        "istio-system",
    ]));
    assert!(!only.contains("kind: AuthorizationPolicy"), "{only}");
}

#[test]
fn bad_lines_stop_with_the_file_and_line_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bad.log");
    let good = std::fs::read_to_string(fixture("access.log")).unwrap();
    let mut lines: Vec<&str> = good.lines().take(3).collect();
    lines.insert(
        1,
        "{\"direction\": \"inbound\", \"destination_port\": \"http\"}",
    );
    lines.insert(2, "not json");
    std::fs::write(&log, lines.join("\n")).unwrap();
    let current = fixture("current");
    let registry = fixture("registry");
    let args = [
        "authz",
        "replay",
        "--config",
        &current,
        "--workloads",
        &registry,
        "--log",
        log.to_str().unwrap(),
    ];
    let out = warden(&args);
    assert_eq!(out.status.code(), Some(2));
    let err = fails(out);
    assert!(
        err.contains(&format!("{}:2: destination_port", log.display())),
        "{err}"
    );
    let mut skip = args.to_vec();
    skip.extend(["--skip-bad-lines", "--output", "json"]);
    let out = warden(&skip);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["skipped"]["bad_lines"], 2);
    assert_eq!(v["decisions"], 2);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(":3: not a JSON object"), "{err}");
    // suggest reads the same way.
    let out = warden(&[
        "authz",
        "suggest",
        "--log",
        log.to_str().unwrap(),
        "--workloads",
        &registry,
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A missing file is an input error too.
    let out = warden(&[
        "authz",
        "replay",
        "--config",
        &current,
        "--log",
        "/nonexistent/access.log",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(fails(out).contains("/nonexistent/access.log"));
}
