//! Route decision time per request with 1, 100 and 1,000 VirtualServices in the mesh
//! (each its own host, three rules: a header match, a prefix match with a rewrite and
//! retries, a weighted default; each with a DestinationRule of two subsets), and the
//! time to build the table. The decision must stay flat in the number of
//! VirtualServices: hosts are indexed.
//!
//! `cargo bench -p warden-policy --bench route`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use warden_policy::loader::load_str;
use warden_policy::route::{RouteRequest, RouteTable, TableOptions};

fn config(total: usize) -> String {
    let mut out = String::new();
    for i in 0..total {
        let ns = format!("ns{}", i % 10);
        let _ = write!(
            out,
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  hosts: [svc{i}]
  http:
  - match:
    - headers: {{end-user: {{exact: jason}}}}
    route:
    - destination: {{host: svc{i}, subset: v2}}
  - match:
    - uri: {{prefix: /api/}}
    rewrite: {{uri: /v1/}}
    retries: {{attempts: 3, perTryTimeout: 2s}}
    route:
    - destination: {{host: svc{i}, subset: v1}}
  - route:
    - destination: {{host: svc{i}, subset: v1}}
      weight: 90
    - destination: {{host: svc{i}, subset: v2}}
      weight: 10
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc{i}, namespace: {ns}}}
spec:
  host: svc{i}
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 100}}}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}, trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}}}
---
"#
        );
    }
    out
}

fn request(total: usize, path: &str) -> RouteRequest {
    let i = total / 2;
    RouteRequest {
        source_namespace: "ns0".into(),
        source_labels: BTreeMap::from([("app".into(), "productpage".into())]),
        http: true,
        host: format!("svc{i}.ns{}", i % 10),
        port: 9080,
        method: "GET".into(),
        path: path.into(),
        headers: BTreeMap::from([("end-user".into(), "mary".into())]),
        scheme: "http".into(),
        skip_policy: false,
        gateways: Vec::new(),
        sni: None,
    }
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for total in [1usize, 100, 1000] {
        let set = load_str(Path::new("bench.yaml"), &config(total)).expect("bench config loads");
        let table =
            RouteTable::build(&set, TableOptions::default()).expect("bench config compiles");
        let rewrite = request(total, "/api/items?x=1");
        let default = request(total, "/other");
        assert_eq!(table.decide(&rewrite, None).route_index, Some(1));
        assert_eq!(table.decide(&default, None).route_index, Some(2));
        group.bench_with_input(BenchmarkId::new("rewrite", total), &total, |b, _| {
            b.iter(|| black_box(table.decide(black_box(&rewrite), None)));
        });
        group.bench_with_input(BenchmarkId::new("weighted", total), &total, |b, _| {
            b.iter(|| black_box(table.decide(black_box(&default), None)));
        });
        group.bench_with_input(BenchmarkId::new("build", total), &total, |b, _| {
            b.iter(|| {
                black_box(
                    RouteTable::build(black_box(&set), TableOptions::default()).expect("compiles"),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
