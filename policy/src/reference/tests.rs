//! The engine against the reference evaluator: hand-written rows for the cases Istio's
//! pages spell out, then many random policy sets and requests drawn from small pools of
//! values that collide often (a seeded xorshift, so every run is the same run). Each set
//! goes through the loader as YAML text and through [`Engine::compile`], exactly as
//! files are loaded. A disagreement is shrunk to the fewest policy parts that still
//! disagree and printed as YAML with the workload and request, ready to become a row.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use super::{Outcome, decide};
use crate::authz::{Decision, Engine, HttpRequest, Protocol, Request, Workload};
use crate::loader::load_str;
use crate::normalize::{PathNormalization, normalize};

const ROOT: &str = "istio-system";

/// The engine for a YAML text, or `None` if it does not load or compile.
fn engine(yaml: &str) -> Option<Engine> {
    let set = load_str(Path::new("differential.yaml"), yaml).ok()?;
    Engine::compile(&set, ROOT).ok()
}

/// The engine's decision in the reference's terms.
fn outcome(d: &Decision) -> Outcome {
    let mut audit: Vec<String> = d.audit.iter().map(|m| m.policy.clone()).collect();
    let mut dry_run: Vec<(String, bool)> = d
        .dry_run
        .iter()
        .map(|x| (x.policy.clone(), x.rule.is_some()))
        .collect();
    audit.sort();
    dry_run.sort();
    Outcome {
        allowed: d.allowed,
        custom: d.custom.is_some(),
        audit,
        dry_run,
    }
}

/// Both evaluators on one case: `None` when they agree, else (engine, reference).
fn disagree(docs: &[Value], w: &Workload, r: &Request) -> Option<(Outcome, Outcome)> {
    let yaml = to_yaml(docs);
    let got = outcome(&engine(&yaml)?.evaluate(w, r));
    let want = decide(docs, ROOT, w, r);
    (got != want).then_some((got, want))
}

/// Block YAML as people write it (strings quoted, short lists in flow style).
fn to_yaml(docs: &[Value]) -> String {
    fn nested(v: &Value) -> bool {
        match v {
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => a.iter().any(|x| x.is_object() || x.is_array()),
            _ => false,
        }
    }
    fn block(v: &Value, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if nested(x) {
                        out.push_str(&format!("{pad}{k}:\n"));
                        block(x, indent + 2, out);
                    } else {
                        out.push_str(&format!("{pad}{k}: {x}\n"));
                    }
                }
            }
            Value::Array(a) => {
                for x in a {
                    if nested(x) {
                        // the item's first line goes after the dash
                        let mut item = String::new();
                        block(x, indent + 2, &mut item);
                        out.push_str(&format!("{pad}- {}", &item[indent + 2..]));
                    } else {
                        out.push_str(&format!("{pad}- {x}\n"));
                    }
                }
            }
            _ => out.push_str(&format!("{pad}{v}\n")),
        }
    }
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        block(d, 0, &mut out);
    }
    out
}

fn workload(ns: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// The hand-written rows: every case of `tests/cases/*.yaml` (Istio's documented cases,
/// which `tests/istio_cases.rs` runs through the engine; `differential.yaml` holds those
/// this test found) decided by the reference, with the defaults `istio_cases.rs` uses.
/// Cases with a `trust_domain` are skipped: the reference does not model aliases.
#[test]
fn reference_decides_the_documented_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let (mut checked, mut failures) = (0, Vec::new());
    for file in std::fs::read_dir(&dir).unwrap() {
        let file = file.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        let cases: Vec<Value> = serde_saphyr::from_str(&text).unwrap();
        for case in cases.iter().filter(|c| c["trust_domain"].is_null()) {
            let docs: Vec<Value> = case["policies"]
                .as_str()
                .unwrap_or_default()
                .split("\n---")
                .filter(|d| !d.trim().is_empty())
                .map(|d| serde_saphyr::from_str(d).unwrap())
                .collect();
            let w = match case["workload"].as_object() {
                Some(w) => Workload {
                    namespace: w["namespace"].as_str().unwrap().into(),
                    labels: serde_json::from_value(w["labels"].clone()).unwrap_or_default(),
                },
                None => workload("foo", &[("app", "httpbin")]),
            };
            let q = &case["request"];
            let text = |k: &str, default: &str| q[k].as_str().unwrap_or(default).to_string();
            let ip = |k: &str, default: &str| text(k, default).parse().ok();
            let mut r = Request {
                protocol: Protocol::Http,
                source_principal: q["principal"].as_str().map(String::from),
                source_ip: ip("ip", "10.1.0.5"),
                remote_ip: ip("remote_ip", &text("ip", "10.1.0.5")),
                destination_ip: ip("destination_ip", "10.0.0.10"),
                destination_port: q["port"].as_u64().map_or(8080, |p| p as u16),
                sni: q["sni"].as_str().map(String::from),
                http: None,
                jwt: Some(q["jwt"].clone()).filter(|j| !j.is_null()),
            };
            if q["tcp"] == true {
                r.protocol = Protocol::Tcp;
            } else {
                // The proxy normalizes the path first; a path it refuses is a DENY.
                let mode = PathNormalization::parse(&text("normalization", "BASE")).unwrap();
                let Ok(path) = normalize(&text("path", "/"), mode).map(|p| p.into_owned()) else {
                    assert_eq!(case["expect"], "DENY", "{}", case["name"]);
                    continue;
                };
                let headers = q["headers"].as_object().into_iter().flatten();
                r.http = Some(HttpRequest {
                    method: text("method", "GET"),
                    path,
                    host: text("host", "httpbin.foo"),
                    headers: headers
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap().into()))
                        .collect(),
                });
            }
            let got = decide(&docs, ROOT, &w, &r);
            let mut want_audit: Vec<String> =
                serde_json::from_value(case["audit"].clone()).unwrap_or(got.audit.clone());
            want_audit.sort();
            let got_dry: Vec<&str> = got
                .dry_run
                .iter()
                .filter(|d| d.1)
                .map(|d| d.0.as_str())
                .collect();
            let want_dry: Vec<&str> = match case["dry_run"].as_array() {
                Some(d) => d.iter().filter_map(Value::as_str).collect(),
                None => got_dry.clone(),
            };
            let ok = (if got.allowed { "ALLOW" } else { "DENY" }) == case["expect"]
                && got.audit == want_audit
                && got_dry == want_dry
                && (case["custom"].is_null() || got.custom);
            if !ok {
                failures.push(format!("{}: {}: {got:?}", file.display(), case["name"]));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "the reference fails {} of {checked} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 150, "only {checked} cases");
}

/// xorshift64* (Vigna): small, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, pool: &[T]) -> T {
        pool[self.below(pool.len())]
    }
    /// One to three values from `pool`; now and then none (`[]`, the same as unset).
    fn values(&mut self, pool: &[&str]) -> Value {
        let n = if self.chance(4) { 0 } else { 1 + self.below(3) };
        (0..n).map(|_| Value::from(self.pick(pool))).collect()
    }
}

// The pools: few values, chosen to collide (exact, prefix, suffix and presence forms of
// the same names, CIDRs holding the addresses and not, hosts with and without a port).
const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/foo/sa/a",
    "cluster.local/ns/bar/sa/a",
    "other.td/ns/foo/sa/a",
    "cluster.local/ns/foo/*",
    "cluster.local/*",
    "*/sa/a",
    "*/ns/bar/sa/a",
    "*",
];
const NAMESPACES: &[&str] = &["foo", "bar", "istio-system", "*", "f*", "*ar"];
const ACCOUNTS: &[&str] = &["a", "b", "foo/a", "bar/a"];
const TRUST_DOMAINS: &[&str] = &["cluster.local", "other.td", "*.td", "cluster*", "*"];
const REQUEST_PRINCIPALS: &[&str] = &[
    "*",
    "https://a.example/alice",
    "https://a.example/*",
    "*/alice",
    "https://a.example/realm/bob",
    "*.example/alice",
    "*bob",
    "https://a*",
];
const IPS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.0/24",
    "10.0.0.0/8",
    "10.0.0.0/31",
    "192.168.1.0/24",
    "0.0.0.0/0",
    "fd00::/8",
];
const REMOTE_IPS: &[&str] = &["203.0.113.0/24", "203.0.113.5", "10.0.0.1"];
const DESTINATION_IPS: &[&str] = &["10.0.0.10", "10.0.0.0/16", "10.9.9.9"];
const HOSTS: &[&str] = &[
    "svc.foo",
    "SVC.FOO",
    "*.foo",
    "svc.*",
    "*",
    "svc.foo:8080",
    "svc.foo:*",
    "*:8080",
];
const PORTS: &[&str] = &["80", "8080", "9000"];
const METHODS: &[&str] = &["GET", "POST", "G*", "*T", "*", "get"];
const PATHS: &[&str] = &[
    "/a", "/a/b", "/admin", "/a*", "*/b", "/admin/*", "*", "/", "/a/{*}", "/a/{**}", "/{*}/b",
    "/{**}",
];
const HEADERS: &[&str] = &["1", "1*", "*2", "*", "12"];
const CLAIMS: &[&str] = &["dev", "ops", "d*", "*", "web", "x", "true"];
const SNIS: &[&str] = &["svc.foo", "*.foo", "*"];

const SOURCE: &[(&str, &[&str])] = &[
    ("principals", PRINCIPALS),
    ("notPrincipals", PRINCIPALS),
    ("namespaces", NAMESPACES),
    ("notNamespaces", NAMESPACES),
    ("serviceAccounts", ACCOUNTS),
    ("notServiceAccounts", ACCOUNTS),
    ("trustDomains", TRUST_DOMAINS),
    ("notTrustDomains", TRUST_DOMAINS),
    ("requestPrincipals", REQUEST_PRINCIPALS),
    ("notRequestPrincipals", REQUEST_PRINCIPALS),
    ("ipBlocks", IPS),
    ("notIpBlocks", IPS),
    ("remoteIpBlocks", REMOTE_IPS),
    ("notRemoteIpBlocks", REMOTE_IPS),
];
const OPERATION: &[(&str, &[&str])] = &[
    ("hosts", HOSTS),
    ("notHosts", HOSTS),
    ("ports", PORTS),
    ("notPorts", PORTS),
    ("methods", METHODS),
    ("notMethods", METHODS),
    ("paths", PATHS),
    ("notPaths", PATHS),
];
const CONDITIONS: &[(&str, &[&str])] = &[
    ("request.headers[x-a]", HEADERS),
    ("request.headers[X-B]", HEADERS),
    ("source.namespace", NAMESPACES),
    ("source.principal", PRINCIPALS),
    ("source.serviceAccount", ACCOUNTS),
    ("source.trustDomain", TRUST_DOMAINS),
    ("source.ip", IPS),
    ("remote.ip", REMOTE_IPS),
    ("destination.ip", DESTINATION_IPS),
    ("destination.port", PORTS),
    ("connection.sni", SNIS),
    ("request.auth.principal", REQUEST_PRINCIPALS),
    ("request.auth.audiences", CLAIMS),
    ("request.auth.presenter", CLAIMS),
    ("request.auth.claims[groups]", CLAIMS),
    ("request.auth.claims[nested][role]", CLAIMS),
    ("request.auth.claims[admin]", CLAIMS),
];

/// A `source` or `operation`: one to three of `fields`, rarely none.
fn fields(rng: &mut Rng, fields: &[(&str, &[&str])]) -> Value {
    let n = if rng.chance(3) { 0 } else { 1 + rng.below(3) };
    let mut m = serde_json::Map::new();
    for _ in 0..n {
        let (name, pool) = rng.pick(fields);
        m.insert(name.into(), rng.values(pool));
    }
    Value::Object(m)
}

/// `from`, `to` or `when`: mostly absent or one or two entries, sometimes `[]`.
fn entries(rng: &mut Rng, absent: u64, make: &mut dyn FnMut(&mut Rng) -> Value) -> Option<Value> {
    if rng.chance(absent) {
        return None;
    }
    let n = if rng.chance(5) { 0 } else { 1 + rng.below(2) };
    Some((0..n).map(|_| make(rng)).collect())
}

fn rule(rng: &mut Rng) -> Value {
    let mut r = serde_json::Map::new();
    // `from: [{}]` (no source) now and then: it constrains nothing
    let from = entries(rng, 40, &mut |rng| {
        if rng.chance(3) {
            json!({})
        } else {
            json!({"source": fields(rng, SOURCE)})
        }
    });
    let to = entries(rng, 40, &mut |rng| {
        if rng.chance(3) {
            json!({})
        } else {
            json!({"operation": fields(rng, OPERATION)})
        }
    });
    let when = entries(rng, 60, &mut |rng| {
        let (key, pool) = rng.pick(CONDITIONS);
        let mut c = json!({"key": key});
        match rng.below(4) {
            0 => c["notValues"] = rng.values(pool),
            1 => {
                c["values"] = rng.values(pool);
                c["notValues"] = rng.values(pool);
            }
            _ => c["values"] = rng.values(pool),
        }
        c
    });
    for (k, v) in [("from", from), ("to", to), ("when", when)] {
        if let Some(v) = v {
            r.insert(k.into(), v);
        }
    }
    Value::Object(r)
}

fn policy(rng: &mut Rng, i: usize) -> Value {
    let ns = rng.pick(&["foo", "foo", "bar", ROOT]);
    let mut p = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": format!("p{i}"), "namespace": ns},
        "spec": {},
    });
    let action = rng.pick(&["", "ALLOW", "ALLOW", "DENY", "DENY", "AUDIT", "CUSTOM"]);
    if !action.is_empty() {
        p["spec"]["action"] = action.into();
    }
    if action == "CUSTOM" {
        p["spec"]["provider"] = json!({"name": "ext"});
    }
    if rng.chance(25) {
        let labels = [
            json!({}),
            json!({"app": "a"}),
            json!({"app": "b"}),
            json!({"app": "a", "version": "v1"}),
            json!({"version": "v1"}),
        ];
        p["spec"]["selector"] = json!({ "matchLabels": labels[rng.below(labels.len())] });
    }
    if rng.chance(4) {
        p["spec"]["targetRefs"] =
            json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]);
    }
    if matches!(action, "" | "ALLOW" | "DENY") && rng.chance(10) {
        let v = rng.pick(&["true", "false", "True", "1"]);
        p["metadata"]["annotations"] = json!({ "istio.io/dry-run": v });
    }
    if !rng.chance(6) {
        let n = if rng.chance(4) { 0 } else { 1 + rng.below(3) };
        p["spec"]["rules"] = (0..n).map(|_| rule(rng)).collect();
    }
    p
}

fn random_request(rng: &mut Rng) -> Request {
    let principals = [
        None,
        Some("cluster.local/ns/foo/sa/a"),
        Some("cluster.local/ns/foo/sa/b"),
        Some("cluster.local/ns/bar/sa/a"),
        Some("other.td/ns/foo/sa/a"),
        Some("example.org/workload/x"),
    ];
    let jwts = [
        json!(null),
        json!({"iss": "https://a.example", "sub": "alice", "aud": ["x", "web"], "azp": "web",
               "groups": ["dev"], "nested": {"role": "ops"}}),
        json!({"iss": "https://a.example/realm", "sub": "bob", "aud": "x", "groups": "ops"}),
        json!({"iss": "https://b.example", "sub": "alice", "groups": [], "admin": true}),
    ];
    let ip = |s: &str| s.parse::<std::net::IpAddr>().ok();
    let mut r = Request {
        protocol: Protocol::Http,
        source_principal: rng.pick(&principals).map(String::from),
        source_ip: ip(rng.pick(&["10.0.0.1", "10.0.1.5", "192.168.1.7", "fd00::1"])),
        remote_ip: rng
            .pick(&[
                None,
                None,
                Some("203.0.113.5"),
                Some("10.0.0.1"),
                Some("198.51.100.1"),
            ])
            .and_then(ip),
        destination_ip: ip(rng.pick(&["10.0.0.10", "10.9.9.9"])),
        destination_port: rng.pick(&[80, 8080, 9000]),
        sni: rng
            .pick(&[None, Some("svc.foo"), Some("x.bar")])
            .map(String::from),
        http: None,
        jwt: None,
    };
    if rng.chance(20) {
        r.protocol = Protocol::Tcp;
        return r;
    }
    let mut headers = BTreeMap::new();
    for (name, values) in [
        ("x-a", &["1", "12", "2", ""][..]),
        ("x-b", &["1", "x2"][..]),
    ] {
        if rng.chance(60) {
            headers.insert(name.to_string(), rng.pick(values).to_string());
        }
    }
    let path = rng.pick(&[
        "/a", "/a/b", "/a/b?x=1", "/admin", "/admin/x", "/ab", "/", "/A", "/a//b", "/c/b",
    ]);
    r.http = Some(HttpRequest {
        method: rng.pick(&["GET", "POST", "DELETE"]).into(),
        path: path.into(),
        host: rng
            .pick(&[
                "svc.foo",
                "svc.foo:8080",
                "Svc.Foo",
                "other.bar",
                "x.foo:80",
            ])
            .into(),
        headers,
    });
    r.jwt = Some(jwts[rng.below(jwts.len())].clone()).filter(|j| !j.is_null());
    r
}

/// Removes policies, and array items and object members under their `spec`, while the
/// two evaluators still disagree on `w`, `r`.
fn shrink(mut docs: Vec<Value>, w: &Workload, r: &Request) -> Vec<Value> {
    fn removals(v: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        match v {
            Value::Array(a) => {
                for i in 0..a.len() {
                    let mut c = a.clone();
                    c.remove(i);
                    out.push(Value::Array(c));
                    for sub in removals(&a[i]) {
                        let mut c = a.clone();
                        c[i] = sub;
                        out.push(Value::Array(c));
                    }
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    let mut c = m.clone();
                    c.remove(k);
                    out.push(Value::Object(c));
                    for sub in removals(x) {
                        let mut c = m.clone();
                        c.insert(k.clone(), sub);
                        out.push(Value::Object(c));
                    }
                }
            }
            _ => {}
        }
        out
    }
    'smaller: loop {
        for i in 0..docs.len() {
            let mut fewer = docs.clone();
            fewer.remove(i);
            let specs = removals(&docs[i]["spec"]).into_iter().map(|spec| {
                let mut d = docs.clone();
                d[i]["spec"] = spec;
                d
            });
            for candidate in std::iter::once(fewer).chain(specs) {
                if disagree(&candidate, w, r).is_some() {
                    docs = candidate;
                    continue 'smaller;
                }
            }
        }
        return docs;
    }
}

/// 3,000 policy sets of one to four policies, each asked 8 random requests for every
/// workload: 96,000 decisions.
#[test]
fn engine_agrees_with_the_reference() {
    let started = Instant::now();
    let workloads = [
        workload("foo", &[("app", "a")]),
        workload("foo", &[("app", "b"), ("version", "v1")]),
        workload("bar", &[("app", "a"), ("version", "v1")]),
        workload(ROOT, &[("app", "a")]),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut cases, mut allowed) = (0usize, 0usize);
    for _ in 0..3_000 {
        let docs: Vec<Value> = (0..1 + rng.below(4)).map(|i| policy(&mut rng, i)).collect();
        let yaml = to_yaml(&docs);
        let engine = engine(&yaml).unwrap_or_else(|| panic!("generated policies refused:\n{yaml}"));
        for _ in 0..8 {
            let r = random_request(&mut rng);
            for w in &workloads {
                let want = decide(&docs, ROOT, w, &r);
                if outcome(&engine.evaluate(w, &r)) != want {
                    let docs = shrink(docs.clone(), w, &r);
                    let (got, want) = disagree(&docs, w, &r).unwrap_or_default();
                    panic!(
                        "the engine and the reference disagree after {cases} cases\n\
                         policies:\n{}\nworkload: {w:?}\nrequest: {r:#?}\n\
                         engine:    {got:?}\nreference: {want:?}",
                        to_yaml(&docs)
                    );
                }
                cases += 1;
                allowed += usize::from(want.allowed);
            }
        }
    }
    eprintln!(
        "{cases} cases, {allowed} allowed, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Both answers must be common, or the pools have drifted and the test proves little.
    assert!(
        allowed * 5 > cases && (cases - allowed) * 5 > cases,
        "{allowed} of {cases} allowed"
    );
}
