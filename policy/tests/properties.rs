//! Properties of the engine over random policies and requests, and fuzzing of the
//! loader and the matchers (proptest; no panics on any input).
//!
//! Random policies are drawn from small pools of Istio values so that they often
//! match the random requests; each is emitted as a JSON document (JSON is YAML) and
//! goes through the real loader.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};
use warden_policy::authz::{Decision, Engine, HttpRequest, Protocol, Request, Workload};
use warden_policy::loader::load_str;
use warden_policy::matcher::{IpBlock, PathTemplate, StringMatch};
use warden_policy::normalize::{PathNormalization, normalize};

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/foo/sa/sleep",
    "cluster.local/ns/bar/sa/client",
    "*/sa/sleep",
    "cluster.local/ns/foo/*",
    "*",
];
const NAMESPACES: &[&str] = &["foo", "bar", "team-*", "*"];
const METHODS: &[&str] = &["GET", "POST", "DELETE"];
const PATHS: &[&str] = &[
    "/admin*",
    "/api/{*}/items",
    "/public/{**}",
    "*.png",
    "/",
    "*",
];
const PORTS: &[&str] = &["8080", "9000"];
const IPS: &[&str] = &["10.0.0.0/8", "10.1.0.5", "192.168.0.0/16", "fd00::/8"];
const HEADERS: &[&str] = &["acme", "beta-*", "*"];

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(pool, 1..=2)
}

/// One `source`: one or two fields, each maybe negated.
fn source() -> impl Strategy<Value = Value> {
    (
        prop::option::of((any::<bool>(), pick(PRINCIPALS))),
        prop::option::of((any::<bool>(), pick(NAMESPACES))),
        prop::option::of((any::<bool>(), pick(IPS))),
    )
        .prop_filter("a source needs a field", |(a, b, c)| {
            a.is_some() || b.is_some() || c.is_some()
        })
        .prop_map(|(p, n, i)| {
            let mut s = serde_json::Map::new();
            let mut put = |field: &str, v: Option<(bool, Vec<&str>)>| {
                if let Some((neg, values)) = v {
                    let key = if neg {
                        format!("not{}{}", field[..1].to_uppercase(), &field[1..])
                    } else {
                        field.to_string()
                    };
                    s.insert(key, json!(values));
                }
            };
            put("principals", p);
            put("namespaces", n);
            put("ipBlocks", i);
            Value::Object(s)
        })
}

/// One `operation`.
fn operation() -> impl Strategy<Value = Value> {
    (
        prop::option::of((any::<bool>(), pick(METHODS))),
        prop::option::of((any::<bool>(), pick(PATHS))),
        prop::option::of((any::<bool>(), pick(PORTS))),
    )
        .prop_filter("an operation needs a field", |(a, b, c)| {
            a.is_some() || b.is_some() || c.is_some()
        })
        .prop_map(|(m, p, o)| {
            let mut s = serde_json::Map::new();
            for (field, neg_field, v) in [
                ("methods", "notMethods", m),
                ("paths", "notPaths", p),
                ("ports", "notPorts", o),
            ] {
                if let Some((neg, values)) = v {
                    s.insert(if neg { neg_field } else { field }.into(), json!(values));
                }
            }
            Value::Object(s)
        })
}

fn rule() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(source(), 1..=2)),
        prop::option::of(prop::collection::vec(operation(), 1..=2)),
        prop::option::of(pick(HEADERS)),
    )
        .prop_map(|(from, to, header)| {
            let mut r = serde_json::Map::new();
            if let Some(from) = from {
                r.insert(
                    "from".into(),
                    from.into_iter().map(|s| json!({"source": s})).collect(),
                );
            }
            if let Some(to) = to {
                r.insert(
                    "to".into(),
                    to.into_iter().map(|o| json!({"operation": o})).collect(),
                );
            }
            if let Some(values) = header {
                r.insert(
                    "when".into(),
                    json!([{"key": "request.headers[x-tenant]", "values": values}]),
                );
            }
            Value::Object(r)
        })
}

/// (namespace, selector app, action, dry-run, rules) of one policy.
type PolicyParts = (
    &'static str,
    Option<&'static str>,
    &'static str,
    bool,
    Option<Vec<Value>>,
);

fn policy_parts(actions: &'static [&'static str]) -> impl Strategy<Value = PolicyParts> {
    (
        prop::sample::select(&["foo", "istio-system"][..]),
        prop::option::of(prop::sample::select(&["httpbin", "other"][..])),
        prop::sample::select(actions),
        prop::bool::weighted(0.15),
        prop::option::weighted(0.9, prop::collection::vec(rule(), 1..=3)),
    )
}

fn document(name: &str, (ns, app, action, dry_run, rules): &PolicyParts) -> String {
    let mut spec = serde_json::Map::new();
    spec.insert("action".into(), json!(action));
    if let Some(app) = app {
        spec.insert("selector".into(), json!({"matchLabels": {"app": app}}));
    }
    if let Some(rules) = rules {
        spec.insert("rules".into(), json!(rules));
    }
    if *action == "CUSTOM" {
        spec.insert("provider".into(), json!({"name": "ext"}));
    }
    let mut meta = json!({"name": name, "namespace": ns});
    if *dry_run {
        meta["annotations"] = json!({"istio.io/dry-run": "true"});
    }
    let doc = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": spec,
    });
    format!("---\n{doc}\n")
}

fn config(policies: &[PolicyParts], prefix: &str) -> String {
    policies
        .iter()
        .enumerate()
        .map(|(i, p)| document(&format!("{prefix}-{i}"), p))
        .collect()
}

fn engine(yaml: &str) -> Engine {
    let set = load_str(Path::new("prop.yaml"), yaml).expect("generated policies load");
    Engine::compile(&set, "istio-system").expect("generated policies compile")
}

fn request() -> impl Strategy<Value = Request> {
    (
        any::<bool>(),
        prop::option::of(prop::sample::select(
            &[
                "cluster.local/ns/foo/sa/sleep",
                "cluster.local/ns/bar/sa/client",
                "cluster.local/ns/team-a/sa/x",
            ][..],
        )),
        prop::sample::select(&["10.1.0.5", "192.168.3.4", "fd00::1"][..]),
        prop::sample::select(&[8080u16, 9000, 22][..]),
        prop::sample::select(METHODS),
        prop::sample::select(
            &[
                "/admin/x",
                "/api/v1/items",
                "/public/a/b",
                "/logo.png",
                "/",
                "/a/../admin",
            ][..],
        ),
        prop::option::of(prop::sample::select(&["acme", "beta-1", ""][..])),
    )
        .prop_map(|(tcp, principal, ip, port, method, path, tenant)| Request {
            protocol: if tcp { Protocol::Tcp } else { Protocol::Http },
            source_principal: principal.map(String::from),
            source_ip: ip.parse().ok(),
            destination_port: port,
            http: (!tcp).then(|| HttpRequest {
                method: method.into(),
                path: path.into(),
                host: "httpbin.foo".into(),
                headers: tenant
                    .map(|t| BTreeMap::from([("x-tenant".to_string(), t.to_string())]))
                    .unwrap_or_default(),
            }),
            ..Request::default()
        })
}

fn workload() -> Workload {
    Workload {
        namespace: "foo".into(),
        labels: BTreeMap::from([("app".to_string(), "httpbin".to_string())]),
    }
}

/// The parts of a decision that policies which cannot apply must not change.
fn outcome(d: &Decision) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?}",
        d.allowed, d.deciding, d.audit, d.dry_run, d.custom
    )
}

const ALL: &[&str] = &["ALLOW", "DENY", "AUDIT", "CUSTOM"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A request denied by a DENY policy stays denied, by the same policy, whatever
    /// ALLOW policies are added.
    #[test]
    fn deny_is_never_weakened_by_allow(
        base in prop::collection::vec(policy_parts(ALL), 0..6),
        allows in prop::collection::vec(policy_parts(&["ALLOW"]), 1..6),
        r in request(),
    ) {
        let w = workload();
        let before = engine(&config(&base, "base")).evaluate(&w, &r);
        let after = engine(&(config(&base, "base") + &config(&allows, "extra"))).evaluate(&w, &r);
        if before.reason.starts_with("denied by DENY") {
            prop_assert!(!after.allowed);
            prop_assert_eq!(before.deciding, after.deciding);
        }
        // And no allowed request becomes denied by a DENY that was not there.
        if before.allowed {
            prop_assert!(!after.reason.starts_with("denied by DENY"));
        }
    }

    /// Policies in another namespace, or selecting labels the workload lacks, never
    /// change its decisions.
    #[test]
    fn policies_that_cannot_apply_change_nothing(
        base in prop::collection::vec(policy_parts(ALL), 0..6),
        others in prop::collection::vec(policy_parts(ALL), 1..6),
        r in request(),
    ) {
        let w = workload();
        let unrelated: Vec<PolicyParts> = others
            .into_iter()
            .enumerate()
            .map(|(i, (_, app, action, dry, rules))| {
                if i % 2 == 0 {
                    ("bar", app, action, dry, rules)
                } else {
                    ("foo", Some("other"), action, dry, rules)
                }
            })
            .collect();
        let before = engine(&config(&base, "base")).evaluate(&w, &r);
        let after = engine(&(config(&base, "base") + &config(&unrelated, "x"))).evaluate(&w, &r);
        prop_assert_eq!(outcome(&before), outcome(&after));
    }

    /// AUDIT and dry-run policies never change whether a request is allowed.
    #[test]
    fn audit_and_dry_run_never_decide(
        base in prop::collection::vec(policy_parts(&["ALLOW", "DENY"]), 0..5),
        shadow in prop::collection::vec(policy_parts(ALL), 1..5),
        r in request(),
    ) {
        let w = workload();
        let shadow: Vec<PolicyParts> = shadow
            .into_iter()
            .map(|(ns, app, action, _, rules)| {
                if action == "AUDIT" {
                    (ns, app, action, false, rules)
                } else {
                    (ns, app, "DENY", true, rules)
                }
            })
            .collect();
        let base: Vec<PolicyParts> = base.into_iter().map(|(n, a, ac, _, r)| (n, a, ac, false, r)).collect();
        let before = engine(&config(&base, "base")).evaluate(&w, &r);
        let after = engine(&(config(&base, "base") + &config(&shadow, "shadow"))).evaluate(&w, &r);
        prop_assert_eq!(before.allowed, after.allowed);
        prop_assert_eq!(before.deciding, after.deciding);
    }

    /// Without any ALLOW policy, only DENY (and CUSTOM is not a denial here) can deny.
    #[test]
    fn no_allow_policy_means_allow_unless_denied(
        base in prop::collection::vec(policy_parts(&["DENY", "AUDIT"]), 0..6),
        r in request(),
    ) {
        let d = engine(&config(&base, "base")).evaluate(&workload(), &r);
        prop_assert!(d.allowed || d.reason.starts_with("denied by DENY") || d.reason.contains("refused"));
    }

    /// Normalized absolute paths keep their leading slash and carry no dot segments,
    /// so `..` can never walk around a path rule.
    #[test]
    fn normalized_paths_have_no_dot_segments(p in "/[a-z./\\\\%0-9A-F]{0,24}") {
        if let Ok(n) = normalize(&p, PathNormalization::Base) {
            prop_assert!(n.starts_with('/'), "{:?} -> {:?}", p, n);
            prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{:?} -> {:?}", p, n);
        }
    }

    /// The matchers take any input without panicking.
    #[test]
    fn matchers_never_panic(value in any::<String>(), input in any::<String>()) {
        let m = StringMatch::new(&value);
        let _ = m.matches(&input);
        let _ = m.matches_ignore_case(&input);
        let _ = m.to_string();
        if let Ok(m) = StringMatch::path(&value) {
            let _ = m.matches(&input);
        }
        if let Ok(t) = PathTemplate::parse(&format!("/{value}/{{*}}")) {
            let _ = t.matches(&input);
        }
        if let Ok(b) = IpBlock::parse(&value) {
            let _ = b.to_string();
        }
        for mode in [PathNormalization::None, PathNormalization::Base, PathNormalization::MergeSlashes, PathNormalization::DecodeAndMergeSlashes] {
            if let Ok(once) = normalize(&input, mode) {
                // Idempotent: a second pass (the app's own reading) sees the same path.
                let twice = normalize(&once, mode).map(|p| p.into_owned());
                prop_assert_eq!(twice.as_deref(), Ok(&*once));
            }
        }
    }

    /// Path templates built from valid pieces always parse and match what they
    /// describe.
    #[test]
    fn path_templates_match_their_instances(
        segs in prop::collection::vec(("[a-z0-9]{1,6}", 0..3u8), 1..5),
        filler in "[a-z0-9]{1,5}",
    ) {
        let mut template = String::new();
        let mut path = String::new();
        let mut any_used = false;
        for (lit, kind) in &segs {
            match kind {
                1 if !any_used => { template.push_str("/{*}"); path.push('/'); path.push_str(&filler); }
                2 if !any_used => { any_used = true; template.push_str("/{**}"); path.push('/'); path.push_str(&filler); path.push('/'); path.push_str(&filler); }
                _ => { template.push('/'); template.push_str(lit); path.push('/'); path.push_str(lit); }
            }
        }
        let t = PathTemplate::parse(&template).map_err(TestCaseError::fail)?;
        prop_assert!(t.matches(&path), "{} should match {}", template, path);
    }

    /// The loader refuses or accepts any text without panicking.
    #[test]
    fn loader_never_panics(text in any::<String>()) {
        let _ = load_str(Path::new("fuzz.yaml"), &text);
    }

    /// Byte-level mutations of a valid policy file never panic the loader or the
    /// compiler.
    #[test]
    fn mutated_policies_never_panic(
        base in prop::collection::vec(policy_parts(ALL), 1..3),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = config(&base, "m").into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(set) = load_str(Path::new("fuzz.yaml"), &text)
            && let Ok(e) = Engine::compile(&set, "istio-system")
        {
            let _ = e.evaluate(&workload(), &Request::default());
        }
    }
}
