//! Decision time per request with 10, 1,000 and 10,000 AuthorizationPolicies in the
//! mesh, of which the same five apply to the workload. Half of the others sit in the
//! workload's own namespace with selectors for other apps (the case a per-namespace
//! list alone would scan), half in other namespaces. The time must stay flat.
//!
//! `cargo bench -p warden-policy --bench decision`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use warden_policy::authz::{Engine, HttpRequest, Protocol, Request, Workload};
use warden_policy::loader::load_str;

/// The five policies that apply to `foo/productpage`.
const APPLYING: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"], ports: ["9080"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-allow, namespace: foo}
spec:
  rules:
  - from: [{source: {namespaces: [bar]}}]
    to: [{operation: {methods: [POST]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer, namespace: foo}
spec:
  selector: {matchLabels: {app: productpage}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/foo/sa/sleep, "*/sa/frontend"]}}]
    to: [{operation: {methods: [GET, HEAD], paths: ["/api/{*}/items", "/static/*"]}}]
    when: [{key: "request.headers[x-tenant]", values: [acme, "beta-*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: foo}
spec:
  selector: {matchLabels: {app: productpage, version: v1}}
  action: AUDIT
  rules:
  - to: [{operation: {methods: [POST, PUT, DELETE]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: shadow-deny
  namespace: foo
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - from: [{source: {notIpBlocks: [10.0.0.0/8]}}]
"#;

fn config(total: usize) -> String {
    let mut y = APPLYING.to_string();
    for i in 0..total.saturating_sub(5) {
        let (ns, selector) = if i % 2 == 0 {
            ("foo".to_string(), format!("app: svc-{i}"))
        } else {
            (format!("ns-{}", i % 97), format!("app: productpage-{i}"))
        };
        let _ = write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p-{i}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{{selector}}}}}\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/x/sa/s-{i}]}}}}]\n    to: [{{operation: {{methods: [GET], paths: [/p-{i}/*]}}}}]\n"
        );
    }
    y
}

fn request(path: &str) -> Request {
    Request {
        protocol: Protocol::Http,
        source_principal: Some("cluster.local/ns/foo/sa/sleep".into()),
        source_ip: "10.1.0.5".parse().ok(),
        destination_ip: "10.0.0.10".parse().ok(),
        destination_port: 9080,
        http: Some(HttpRequest {
            method: "GET".into(),
            path: path.into(),
            host: "productpage.foo.svc.cluster.local".into(),
            headers: BTreeMap::from([("x-tenant".to_string(), "acme".to_string())]),
        }),
        ..Request::default()
    }
}

fn decisions(c: &mut Criterion) {
    let workload = Workload {
        namespace: "foo".into(),
        labels: BTreeMap::from([
            ("app".to_string(), "productpage".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]),
    };
    let allowed = request("/api/v1/items?page=2");
    let denied = request("/admin/users");
    let mut group = c.benchmark_group("decision");
    for total in [10, 1_000, 10_000] {
        let set = load_str(Path::new("bench.yaml"), &config(total)).expect("bench config loads");
        let engine = Engine::compile(&set, "istio-system").expect("bench config compiles");
        let d = engine.evaluate(&workload, &allowed);
        assert!(d.allowed && d.audit.is_empty(), "{d:?}");
        assert!(!engine.evaluate(&workload, &denied).allowed);
        group.bench_with_input(BenchmarkId::new("allowed", total), &total, |b, _| {
            b.iter(|| black_box(engine.evaluate(black_box(&workload), black_box(&allowed))));
        });
        group.bench_with_input(BenchmarkId::new("denied", total), &total, |b, _| {
            b.iter(|| black_box(engine.evaluate(black_box(&workload), black_box(&denied))));
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
