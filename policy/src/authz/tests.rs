//! Unit tests of the engine: decisions naming policy, rule, audit, custom and dry-run;
//! explanations; compile errors; policies that cannot apply. Istio's documented cases
//! are in `policy/tests/cases/*.yaml` (run by `tests/istio_cases.rs`).

use super::*;
use crate::loader::load_str;

fn engine(yaml: &str) -> Engine {
    let set = load_str(std::path::Path::new("t.yaml"), yaml).unwrap();
    Engine::compile(&set, "istio-system").unwrap()
}

fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}\n",
        spec.lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn wl(ns: &str, app: &str) -> Workload {
    Workload {
        namespace: ns.into(),
        labels: [("app".to_string(), app.to_string())].into(),
    }
}

/// An HTTP request from `principal` (None = plaintext).
/// An HTTP request whose path is normalized as the proxy does (`BASE`).
fn http(principal: Option<&str>, method: &str, path: &str) -> Request {
    let path = crate::normalize::normalize(path, crate::normalize::PathNormalization::Base)
        .unwrap()
        .into_owned();
    Request {
        protocol: Protocol::Http,
        source_principal: principal.map(String::from),
        source_ip: Some("10.1.0.5".parse().unwrap()),
        destination_ip: Some("10.0.0.10".parse().unwrap()),
        destination_port: 8080,
        http: Some(HttpRequest {
            method: method.into(),
            path,
            host: "svc.foo".into(),
            headers: BTreeMap::new(),
        }),
        ..Request::default()
    }
}

fn tcp(principal: Option<&str>, port: u16) -> Request {
    Request {
        protocol: Protocol::Tcp,
        source_principal: principal.map(String::from),
        source_ip: Some("10.1.0.5".parse().unwrap()),
        destination_port: port,
        ..Request::default()
    }
}

const SLEEP: Option<&str> = Some("cluster.local/ns/foo/sa/sleep");
const OTHER: Option<&str> = Some("cluster.local/ns/bar/sa/other");

#[test]
fn decisions_name_the_policy_rule_audit_custom_and_dry_run() {
    let yaml = [
        ap("foo", "allow-get", "rules: [{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {methods: [GET]}}]}]"),
        ap("foo", "audit-all", "action: AUDIT\nrules: [{}]"),
        ap("foo", "ext", "action: CUSTOM\nprovider: {name: opa}\nrules: [{to: [{operation: {paths: ['/ext*']}}]}]"),
        ap("foo", "shadow", "action: DENY\nrules: [{}]").replace("namespace: foo}", "namespace: foo, annotations: {istio.io/dry-run: 'true'}}"),
    ]
    .concat();
    let e = engine(&yaml);
    let d = e.evaluate(&wl("foo", "x"), &http(None, "GET", "/ext/1"));
    assert!(d.allowed);
    assert_eq!(
        d.deciding,
        Some(Match {
            policy: "foo/allow-get".into(),
            rule: 1
        })
    );
    assert_eq!(
        d.audit,
        vec![Match {
            policy: "foo/audit-all".into(),
            rule: 0
        }]
    );
    assert_eq!(
        d.custom,
        Some((
            "opa".into(),
            Match {
                policy: "foo/ext".into(),
                rule: 0
            }
        ))
    );
    assert_eq!(
        d.dry_run,
        vec![DryRun {
            policy: "foo/shadow".into(),
            action: Action::Deny,
            rule: Some(0)
        }]
    );
    let d = e.evaluate(&wl("foo", "x"), &http(None, "DELETE", "/"));
    assert!(!d.allowed && d.deciding.is_none());
    assert!(d.reason.contains("none matched"), "{}", d.reason);
}

#[test]
fn explanations_say_why() {
    let yaml = [
        ap(
            "foo",
            "get-only",
            "rules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {methods: [GET]}}]}]",
        ),
        ap(
            "foo",
            "other-app",
            "selector: {matchLabels: {app: other}}\nrules: [{}]",
        ),
        ap(
            "foo",
            "tcp-http",
            "rules: [{to: [{operation: {paths: [/x]}}]}]",
        ),
    ]
    .concat();
    let e = engine(&yaml);
    let ex = e.explain(&wl("foo", "httpbin"), &http(SLEEP, "GET", "/"));
    assert_eq!(ex.len(), 3);
    assert!(
        ex[0]
            .why
            .contains("from[0]: source namespace in [\"bar\"] is false"),
        "{}",
        ex[0].why
    );
    assert!(
        !ex[1].applies && ex[1].why.contains("selector"),
        "{}",
        ex[1].why
    );
    let ex = e.explain(&wl("foo", "httpbin"), &tcp(SLEEP, 80));
    assert!(ex[2].why.contains("dropped for TCP"), "{}", ex[2].why);
}

#[test]
fn bad_values_are_compile_errors_naming_the_field() {
    let set = load_str(
        std::path::Path::new("t.yaml"),
        &ap("foo", "bad", "rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 300.1.1.1]}}], to: [{operation: {ports: ['http']}}], when: [{key: request.bogus, values: [x]}]}]"),
    )
    .unwrap();
    let errs: Vec<String> = Engine::compile(&set, "istio-system")
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].contains(
            "foo/bad: spec.rules[0].from[0].source.ipBlocks[1]: \"300.1.1.1\" is not an IP address"
        ),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port"),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].contains(
            "spec.rules[0].when[0].key: \"request.bogus\" is not a supported condition key"
        ),
        "{}",
        errs[2]
    );
}

#[test]
fn policies_that_cannot_apply_never_change_a_decision() {
    // Property: adding policies in other namespaces, or with selectors the
    // workload does not match, leaves every decision as it was; adding ALLOW
    // policies never turns a DENY-policy denial into an allow.
    let base = ap(
        "foo",
        "d",
        "action: DENY\nrules: [{to: [{operation: {methods: [DELETE]}}]}]",
    );
    let requests = [
        http(SLEEP, "GET", "/"),
        http(None, "DELETE", "/x"),
        http(OTHER, "POST", "/admin"),
        tcp(SLEEP, 9000),
    ];
    let w = wl("foo", "httpbin");
    let before: Vec<bool> = requests
        .iter()
        .map(|r| engine(&base).evaluate(&w, r).allowed)
        .collect();
    let mut noise = base.clone();
    for i in 0..50 {
        noise.push_str(&ap(
            &format!("ns{i}"),
            &format!("p{i}"),
            "action: DENY\nrules: [{}]",
        ));
        noise.push_str(&ap(
            "foo",
            &format!("s{i}"),
            &format!("selector: {{matchLabels: {{app: other{i}}}}}\naction: DENY\nrules: [{{}}]"),
        ));
    }
    let after: Vec<bool> = requests
        .iter()
        .map(|r| engine(&noise).evaluate(&w, r).allowed)
        .collect();
    assert_eq!(before, after);
    let with_allow = format!("{base}{}", ap("foo", "allow-all", "rules: [{}]"));
    let denied = engine(&with_allow).evaluate(&w, &http(None, "DELETE", "/x"));
    assert!(!denied.allowed, "an ALLOW policy weakened a DENY");
}
