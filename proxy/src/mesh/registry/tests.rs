//! The registry against Istio's documented behaviour: host resolution, endpoints and
//! app ports, secure naming, SNI, outbound TCP ports, and the errors of bad entries.

use std::path::Path;

use warden_policy::loader::{CompileError, load_str};
use warden_proto::SpiffeId;

use super::*;
use crate::tls::AllowedIds;

const TD: &str = "cluster.local";

fn registry(yaml: &str) -> Registry {
    let set = load_str(Path::new("mesh.yaml"), yaml).unwrap();
    match Registry::build(&set, TD) {
        Ok(r) => r,
        Err(e) => panic!("{}", messages(&e).join("\n")),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    let set = load_str(Path::new("mesh.yaml"), yaml).unwrap();
    messages(&Registry::build(&set, TD).unwrap_err())
}

fn messages(e: &[CompileError]) -> Vec<String> {
    e.iter().map(ToString::to_string).collect()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// reviews (HTTP, two versions by label), ratings (inline endpoint), mongo (TCP),
/// an external wildcard, a namespace-private service, and the workloads.
const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec:
  address: 127.0.0.2
  labels: {app: reviews, version: v1}
  serviceAccount: bookinfo-reviews
  ports: {http: 19080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v2
  namespace: default
  annotations: {warden.io/inbound-port: "16006"}
spec:
  address: 127.0.0.3
  labels: {app: reviews, version: v2}
  serviceAccount: bookinfo-reviews
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: productpage, namespace: front}
spec:
  address: 127.0.0.4
  labels: {app: productpage}
  ports: {http: 9080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-other-ns, namespace: front}
spec:
  address: 127.0.0.5
  labels: {app: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [Reviews.default.svc.cluster.local.]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9443, name: admin, protocol: grpc, targetPort: 19443}
  - {number: 9090, protocol: TCP}
  workloadSelector:
    labels: {app: reviews}
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/reviews-canary"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: http, protocol: HTTP2}
  endpoints:
  - address: 127.0.0.3
    ports: {http: 29080}
  - address: 10.0.0.9
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mongo, namespace: db}
spec:
  hosts: [mongo.db.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 27017, name: mongo, protocol: MONGO}
  - {number: 9080, name: clash, protocol: TCP}
  endpoints:
  - {address: 127.0.0.9, serviceAccount: mongo}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example, namespace: egress}
spec:
  hosts: ["*.example.com", "api.example.com"]
  ports:
  - {number: 443, name: https, protocol: TLS}
  - {number: 80, name: http, protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: deep, namespace: egress}
spec:
  hosts: ["*.eu.example.com"]
  ports:
  - {number: 443, name: https, protocol: TLS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: secret}
spec:
  hosts: [vault.secret.svc.cluster.local]
  location: MESH_INTERNAL
  exportTo: ["."]
  ports:
  - {number: 8200, name: tcp, protocol: TCP}
  endpoints:
  - address: 127.0.0.10
"#;

#[test]
fn protocol_mapping() {
    use PortProtocol::*;
    for (input, want) in [
        ("HTTP", Ok(Http)),
        ("http", Ok(Http)),
        ("Http2", Ok(Http2)),
        ("GRPC", Ok(Grpc)),
        ("grpc-web", Ok(Grpc)),
        ("HTTPS", Ok(Tcp)),
        ("TCP", Ok(Tcp)),
        ("TLS", Ok(Tcp)),
        ("MONGO", Ok(Tcp)),
        ("MySQL", Ok(Tcp)),
        ("REDIS", Ok(Tcp)),
        ("", Ok(Tcp)),
        (
            "HTTPX",
            Err("unknown protocol \"HTTPX\", expected HTTP, HTTPS, HTTP2"),
        ),
        ("UDP", Err("\"UDP\" is not supported")),
    ] {
        match (PortProtocol::parse(input), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
            (Err(got), Err(want)) => assert!(got.starts_with(want), "{input}: {got}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }
    assert!(Http.is_http() && Http2.is_http() && Grpc.is_http());
    assert!(!Tcp.is_http());
}

#[test]
fn resolves_hosts_as_istio() {
    let r = registry(MESH);
    // (host, port, from namespace, the service it resolves to or "-")
    let cases: &[(&str, u16, &str, &str)] = &[
        // FQDN, from anywhere, case-insensitive, trailing dot.
        (
            "reviews.default.svc.cluster.local",
            9080,
            "front",
            "reviews",
        ),
        (
            "REVIEWS.Default.svc.cluster.local",
            9443,
            "front",
            "reviews",
        ),
        (
            "reviews.default.svc.cluster.local.",
            9090,
            "default",
            "reviews",
        ),
        // Short names: `name` only from the same namespace.
        ("reviews", 9080, "default", "reviews"),
        ("reviews", 9080, "front", "-"),
        ("reviews.default", 9080, "front", "reviews"),
        ("reviews.default.svc", 9080, "front", "reviews"),
        ("Ratings.Default", 9080, "front", "ratings"),
        ("reviews.default.svc.cluster", 9080, "default", "-"),
        // The port must be one of the service's.
        ("reviews", 8080, "default", "-"),
        // Wildcards: exact first, then the longest suffix that has the port.
        ("api.example.com", 443, "default", "example"),
        ("www.example.com", 80, "default", "example"),
        ("a.b.example.com", 443, "default", "example"),
        ("x.eu.example.com", 443, "default", "deep"),
        ("x.eu.example.com", 80, "default", "example"),
        ("example.com", 443, "default", "-"),
        // exportTo ".": only its own namespace sees it.
        ("vault.secret.svc.cluster.local", 8200, "secret", "private"),
        ("vault", 8200, "secret", "private"),
        ("vault.secret.svc.cluster.local", 8200, "default", "-"),
        // Unknown.
        ("details", 9080, "default", "-"),
        ("", 9080, "default", "-"),
    ];
    for &(host, port, from, want) in cases {
        let got = r.resolve(host, port, from).map(|(s, p)| {
            assert_eq!(p.number, port);
            s.name.as_str()
        });
        assert_eq!(
            got.unwrap_or("-"),
            want,
            "resolve({host:?}, {port}, from {from:?})"
        );
    }
    let (s, _) = r.resolve("reviews", 9080, "default").unwrap();
    assert!(s.mesh_internal);
    assert_eq!(s.hosts, ["reviews.default.svc.cluster.local"]);
    let (s, _) = r.resolve("api.example.com", 443, "default").unwrap();
    assert!(!s.mesh_internal, "MESH_EXTERNAL resolves, flagged");
}

#[test]
fn services_get_their_place_as_id() {
    let r = registry(MESH);
    assert!(r.services().len() > 1);
    for (i, s) in r.services().iter().enumerate() {
        assert_eq!(s.id, ServiceId(i), "{}", s.host());
    }
    // What resolution returns carries the id that keys per-service state.
    let (reviews, _) = r.resolve("reviews", 9080, "default").unwrap();
    assert_eq!(r.services()[reviews.id.0].host(), reviews.host());
}

#[test]
fn endpoints_and_app_ports() {
    let r = registry(MESH);
    let (reviews, _) = r.resolve("reviews", 9080, "default").unwrap();
    // Selected by label in the ServiceEntry's namespace only.
    let names: Vec<_> = reviews
        .endpoints
        .iter()
        .map(|e| e.workload.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["reviews-v1", "reviews-v2"]);
    let (v1, v2) = (&reviews.endpoints[0], &reviews.endpoints[1]);
    assert_eq!(v1.inbound, "127.0.0.2:15006".parse().unwrap());
    assert_eq!(v2.inbound, "127.0.0.3:16006".parse().unwrap());
    let http = reviews.port(9080).unwrap();
    let admin = reviews.port(9443).unwrap();
    let tcp = reviews.port(9090).unwrap();
    // ports[name], else targetPort, else the number.
    for (ep, port, want) in [
        (v1, http, 19080),
        (v2, http, 9080),
        (v1, admin, 19443),
        (v1, tcp, 9090),
    ] {
        assert_eq!(ep.app_port(port), want, "{:?} {}", ep.workload, port.number);
    }
    // Inline endpoints: no workload name, the inbound port of the WorkloadEntry at
    // that address if there is one.
    let (ratings, _) = r.resolve("ratings.default", 9080, "x").unwrap();
    assert_eq!(ratings.endpoints[0].workload, None);
    assert_eq!(
        ratings.endpoints[0].inbound,
        "127.0.0.3:16006".parse().unwrap()
    );
    assert_eq!(
        ratings.endpoints[1].inbound,
        "10.0.0.9:15006".parse().unwrap()
    );
    assert_eq!(
        ratings.endpoints[0].spiffe_id,
        id("spiffe://cluster.local/ns/default/sa/default")
    );
}

#[test]
fn secure_naming_ids() {
    let r = registry(MESH);
    let allowed = |host: &str, port| {
        r.resolve(host, port, "default")
            .unwrap()
            .0
            .allowed_ids
            .clone()
    };
    assert_eq!(
        allowed("reviews", 9080),
        AllowedIds::one_of([
            id("spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
            id("spiffe://cluster.local/ns/default/sa/reviews-canary"),
        ])
    );
    assert_eq!(
        allowed("ratings", 9080),
        AllowedIds::one_of([id("spiffe://cluster.local/ns/default/sa/default")])
    );
    assert_eq!(
        allowed("mongo.db", 27017),
        AllowedIds::one_of([id("spiffe://cluster.local/ns/db/sa/mongo")])
    );
    // No endpoints, no SANs: nobody (fails closed).
    assert_eq!(allowed("api.example.com", 443), AllowedIds::one_of([]));

    let w = r.workload("front", "productpage").unwrap();
    assert_eq!(w.service_account, "default");
    assert_eq!(
        w.spiffe_id,
        id("spiffe://cluster.local/ns/front/sa/default")
    );
    let other =
        Registry::build(&load_str(Path::new("m.yaml"), MESH).unwrap(), "example.org").unwrap();
    assert_eq!(
        other.workload("default", "reviews-v1").unwrap().spiffe_id,
        id("spiffe://example.org/ns/default/sa/bookinfo-reviews")
    );
}

#[test]
fn workloads_by_name_and_address() {
    let r = registry(MESH);
    let w = r.workload("default", "reviews-v2").unwrap();
    assert_eq!(w.address, "127.0.0.3".parse::<IpAddr>().unwrap());
    assert_eq!(w.inbound_port, 16006);
    assert_eq!(w.inbound(), "127.0.0.3:16006".parse().unwrap());
    assert_eq!(w.policy.namespace, "default");
    assert_eq!(w.policy.labels["version"], "v2");
    assert!(r.workload("front", "reviews-v2").is_none());
    let by_ip = r.workload_by_address("127.0.0.4".parse().unwrap()).unwrap();
    assert_eq!(by_ip.name, "productpage");
    assert!(
        r.workload_by_address("127.0.0.99".parse().unwrap())
            .is_none()
    );
    assert_eq!(r.workloads().len(), 4);
    assert_eq!(r.services().len(), 6);
}

#[test]
fn sni_parsing() {
    for (sni, want) in [
        (
            "outbound_.9080_._.reviews.default.svc.cluster.local",
            Some((9080, "reviews.default.svc.cluster.local")),
        ),
        (
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
            Some((9080, "reviews.default.svc.cluster.local")),
        ),
        (
            "outbound_.443_._.api.example.com",
            Some((443, "api.example.com")),
        ),
        ("reviews.default.svc.cluster.local", None),
        ("inbound_.9080_._.reviews", None),
        ("outbound_.0_._.reviews", None),
        ("outbound_.70000_._.reviews", None),
        ("outbound_.+80_._.reviews", None),
        ("outbound_._._.reviews", None),
        ("outbound_.9080_._.", None),
        ("outbound_.9080_.reviews", None),
        ("outbound_.9080", None),
        ("", None),
    ] {
        assert_eq!(parse_sni(sni), want, "{sni:?}");
    }
    let r = registry(MESH);
    let (s, p) = r
        .resolve_sni(
            "outbound_.9443_.v2_.reviews.default.svc.cluster.local",
            "front",
        )
        .unwrap();
    assert_eq!(
        (s.name.as_str(), p.protocol),
        ("reviews", PortProtocol::Grpc)
    );
}

#[test]
fn inbound_targets_of_the_local_workload() {
    let r = registry(MESH);
    let v1 = r.workload("default", "reviews-v1").unwrap();
    let v2 = r.workload("default", "reviews-v2").unwrap();
    let t = r
        .inbound_target(v1, "reviews.default.svc.cluster.local", 9080)
        .unwrap();
    assert_eq!(
        (t.app_port, t.protocol, t.service_port),
        (19080, PortProtocol::Http, 9080)
    );
    assert_eq!(t.service.name, "reviews");
    // Short name as seen from the workload's own namespace.
    assert_eq!(
        r.inbound_target(v2, "reviews", 9443).unwrap().app_port,
        19443
    );
    // v2 also backs ratings by an inline endpoint; v1 does not.
    let t = r
        .inbound_target_sni(v2, "outbound_.9080_._.ratings.default.svc.cluster.local")
        .unwrap();
    assert_eq!((t.app_port, t.protocol), (29080, PortProtocol::Http2));
    assert!(r.inbound_target(v1, "ratings", 9080).is_none());
    assert!(r.inbound_target(v1, "mongo.db", 27017).is_none());
    assert!(r.inbound_target(v1, "reviews", 1).is_none());

    let all = |w| {
        r.inbound_targets(w)
            .iter()
            .map(|t| (t.app_port, t.protocol, t.service.name.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        all(v1),
        [
            (9090, PortProtocol::Tcp, "reviews".to_string()),
            (19080, PortProtocol::Http, "reviews".to_string()),
            (19443, PortProtocol::Grpc, "reviews".to_string()),
        ]
    );
    assert_eq!(
        all(v2),
        [
            (9080, PortProtocol::Http, "reviews".to_string()),
            (9090, PortProtocol::Tcp, "reviews".to_string()),
            (19443, PortProtocol::Grpc, "reviews".to_string()),
            (29080, PortProtocol::Http2, "ratings".to_string()),
        ]
    );
    let services: Vec<_> = r
        .services_of(v2)
        .iter()
        .map(|(s, _)| s.name.as_str())
        .collect();
    assert_eq!(services, ["reviews", "ratings"]);
    let pp = r.workload("front", "productpage").unwrap();
    assert!(r.inbound_targets(pp).is_empty());
}

#[test]
fn outbound_tcp_ports_skip_conflicts() {
    let r = registry(MESH);
    let plan = |w: &LocalWorkload| {
        let p = r.outbound_tcp_ports(w);
        let listen: Vec<_> = p
            .listen
            .iter()
            .map(|l| (l.port, l.service.name.clone()))
            .collect();
        let skipped: Vec<_> = p
            .skipped
            .iter()
            .map(|s| (s.port, s.service.name.clone(), s.conflict.to_string()))
            .collect();
        (listen, skipped)
    };
    // productpage (front) uses 9080 itself; the private vault is not exported to it;
    // the external `example` gets one on 443 (its host api.example.com is dialled);
    // `deep`, only a wildcard with resolution NONE, has no host to dial: none.
    let (listen, skipped) = plan(r.workload("front", "productpage").unwrap());
    assert_eq!(
        listen,
        [
            (443, "example".into()),
            (9090, "reviews".into()),
            (27017, "mongo".into())
        ]
    );
    assert_eq!(skipped.len(), 1);
    assert_eq!((skipped[0].0, skipped[0].1.as_str()), (9080, "mongo"));
    assert!(skipped[0].2.contains("application"), "{}", skipped[0].2);
    // reviews-v1: 9090 is its own (it backs reviews:9090), 9080 goes to mongo.
    let (listen, skipped) = plan(r.workload("default", "reviews-v1").unwrap());
    assert_eq!(
        listen,
        [
            (443, "example".into()),
            (9080, "mongo".into()),
            (27017, "mongo".into())
        ]
    );
    assert_eq!(skipped[0].0, 9090);
}

#[test]
fn shared_tcp_port_goes_to_the_first_service() {
    let r = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: app, namespace: a, annotations: {warden.io/inbound-port: "15106"}}
spec: {address: 127.0.0.2, ports: {http: 15006}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: one, namespace: a}
spec:
  hosts: [one.a.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: pg, protocol: TCP}, {number: 15106, name: x}]
  endpoints: [{address: 127.0.0.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: two, namespace: a}
spec:
  hosts: [two.a.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: pg, protocol: TCP}]
  endpoints: [{address: 127.0.0.8}]
"#,
    );
    let w = r.workload("a", "app").unwrap();
    let p = r.outbound_tcp_ports(w);
    let listen: Vec<_> = p
        .listen
        .iter()
        .map(|l| (l.port, l.service.name.as_str()))
        .collect();
    assert_eq!(listen, [(5432, "one")]);
    let skipped: Vec<_> = p
        .skipped
        .iter()
        .map(|s| (s.port, s.service.name.as_str(), s.conflict.to_string()))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].2.contains("inbound listener"), "{skipped:?}");
    assert!(
        skipped[1].2.contains("one.a.svc.cluster.local (a/one)"),
        "{skipped:?}"
    );
}

#[test]
fn build_errors_name_resource_and_field() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: foo}
spec:
  hosts: [reviews.foo.svc.cluster.local]
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9081, name: bad, protocol: HTTPX}
"#,
            &[
                "mesh.yaml:2: document 1: ServiceEntry foo/reviews: spec.ports[1].protocol: unknown protocol \"HTTPX\", expected HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, MYSQL, REDIS",
            ],
        ),
        (
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: foo}
spec:
  hosts: ["*", "a/b", "x.*.com", ""]
  location: MESH_SOMEWHERE
  resolution: MAGIC
  exportTo: ["~", "bar"]
  ports:
  - {number: 0, name: a}
  - {number: 70000, name: b}
  - {number: 80, name: c, targetPort: 65536}
  - {number: 81, name: d}
  - {number: 81, name: e}
  - {number: 82, name: d}
  subjectAltNames: ["reviews.foo.svc", "spiffe://cluster.local"]
  workloadSelector: {labels: {app: x}}
  endpoints: [{address: 1.2.3.4}]
"#,
            &[
                "spec.hosts[0]: \"*\" is not allowed",
                "spec.hosts[1]: \"a/b\" is not a host name",
                "spec.hosts[2]: \"x.*.com\": a wildcard is only allowed as the first label",
                "spec.hosts[3]: is empty",
                "spec.ports[0].number: 0 is not a port: expected 1-65535",
                "spec.ports[1].number: 70000 is not a port",
                "spec.ports[2].targetPort: 65536 is not a port",
                "spec.ports[4].number: port 81 is declared twice (also spec.ports[3])",
                "spec.ports[5].name: name \"d\" is used twice (also spec.ports[3])",
                "spec.location: \"MESH_SOMEWHERE\" is not a location: expected MESH_EXTERNAL or MESH_INTERNAL",
                "spec.resolution: \"MAGIC\" is not a resolution",
                "spec.exportTo: \"~\" (exported nowhere) cannot be combined",
                "spec.workloadSelector: cannot be combined with spec.endpoints",
                "spec.subjectAltNames[0]: \"reviews.foo.svc\" is not a SPIFFE ID",
                "spec.subjectAltNames[1]: \"spiffe://cluster.local\" names a trust domain, not a workload",
            ],
        ),
        (
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: foo}
spec:
  hosts: []
  ports: []
"#,
            &[
                "ServiceEntry foo/s: spec.hosts: at least one host is required",
                "ServiceEntry foo/s: spec.ports: at least one port is required",
            ],
        ),
        (
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: foo}
spec:
  hosts: [s.example.com]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http}]
  resolution: DNS
  endpoints:
  - {address: backend.example.com}
  - {address: 10.0.0.1, ports: {http: 0}, serviceAccount: "bad/sa"}
"#,
            &[
                "ServiceEntry foo/s: spec.endpoints[0].address: \"backend.example.com\" is not an IP address: Warden resolves no host names for mesh workloads",
                "ServiceEntry foo/s: spec.endpoints[1].ports.http: 0 is not a port",
                "ServiceEntry foo/s: spec.endpoints[1].serviceAccount: service account \"bad/sa\" in namespace \"foo\" makes no valid SPIFFE ID",
            ],
        ),
        (
            r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: foo, annotations: {warden.io/inbound-port: "99999"}}
spec: {address: a.example.com}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: foo}
spec: {address: 127.0.0.2, serviceAccount: "..", ports: {web: 15006}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: c, namespace: foo}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: d, namespace: foo}
spec: {address: "127.0.0.3", ports: {web: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: e, namespace: bar}
spec: {address: "127.0.0.3"}
"#,
            &[
                "mesh.yaml:2: document 1: WorkloadEntry foo/a: spec.address: \"a.example.com\" is not an IP address",
                "WorkloadEntry foo/a: metadata.annotations[warden.io/inbound-port]: \"99999\" is not a port: expected 1-65535",
                "WorkloadEntry foo/b: spec.serviceAccount: service account \"..\" in namespace \"foo\" makes no valid SPIFFE ID",
                "WorkloadEntry foo/c: spec.address: is required",
                "mesh.yaml:22: document 5: WorkloadEntry bar/e: spec.address: 127.0.0.3 is also the address of WorkloadEntry foo/d (mesh.yaml:17: document 4): two workloads cannot share an address",
            ],
        ),
        (
            r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: foo}
spec: {address: 127.0.0.2, ports: {web: 15006}}
"#,
            &["WorkloadEntry foo/b: spec.ports.web: 15006 is also the proxy's inbound port"],
        ),
        (
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: foo}
spec:
  hosts: [x.example.com, "*.example.com"]
  ports: [{number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: bar}
spec:
  hosts: [X.example.com, "*.Example.com", y.example.com]
  ports: [{number: 80, name: http}]
"#,
            &[
                "mesh.yaml:9: document 2: ServiceEntry bar/b: spec.hosts[0]: \"x.example.com\" is also a host of ServiceEntry foo/a (mesh.yaml:2: document 1): Warden needs one ServiceEntry per host",
                "ServiceEntry bar/b: spec.hosts[1]: \"*.example.com\" is also a host of ServiceEntry foo/a",
            ],
        ),
    ];
    for (yaml, want) in cases {
        let got = errors(yaml);
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(g.contains(w), "got:\n{g}\nwant it to contain:\n{w}");
        }
    }
}

#[test]
fn a_rejected_service_entry_claims_no_host() {
    let set = load_str(
        Path::new("m.yaml"),
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: foo}
spec:
  hosts: [x.example.com]
  ports: [{number: 80, name: http, protocol: BAD}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: foo}
spec:
  hosts: [x.example.com]
  ports: [{number: 80, name: http}]
"#,
    )
    .unwrap();
    let e = Registry::build(&set, TD).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].policy, "foo/a");
}

#[test]
fn empty_selector_selects_the_whole_namespace() {
    let r = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: foo}
spec: {address: 127.0.0.2}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: bar}
spec: {address: 127.0.0.3}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: all, namespace: foo}
spec:
  hosts: [all.foo.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {}
"#,
    );
    let (s, _) = r.resolve("all", 80, "foo").unwrap();
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!(s.endpoints[0].workload.as_deref(), Some("a"));
}

#[test]
fn lookup_key_borrows_lower_case_hosts() {
    assert!(matches!(
        lookup_key("reviews.default"),
        Cow::Borrowed("reviews.default")
    ));
    assert!(matches!(lookup_key("reviews."), Cow::Borrowed("reviews")));
    assert_eq!(lookup_key("Reviews"), "reviews");
}

#[test]
fn external_services_follow_istio_resolution_rules() {
    let r = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: by-name, namespace: egress}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
  endpoints:
  - {address: backend.example.net}
  - {address: 192.0.2.7, ports: {https: 8443}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: the-host, namespace: egress}
spec:
  hosts: [edition.cnn.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: egress}
spec:
  hosts: ["*.wikipedia.org"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static, namespace: egress}
spec:
  hosts: [db.example.com]
  resolution: STATIC
  ports: [{number: 5432, name: pg, protocol: TCP}]
  endpoints: [{address: 192.0.2.9}]
"#,
    );
    let dials = |host: &str, port: u16| {
        let (s, _) = r.resolve(host, port, "default").unwrap();
        assert!(!s.mesh_internal, "{host}");
        s.endpoints
            .iter()
            .map(|e| (e.dial.clone(), e.address.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        dials("api.example.com", 443),
        [
            (Dial::Name("backend.example.net".into()), "0.0.0.0".into()),
            (Dial::Address, "192.0.2.7".into()),
        ]
    );
    // DNS without endpoints, and NONE: the host the client names, one endpoint.
    assert_eq!(
        dials("edition.cnn.com", 80),
        [(Dial::AsRequested, "0.0.0.0".into())]
    );
    assert_eq!(
        dials("en.wikipedia.org", 443),
        [(Dial::AsRequested, "0.0.0.0".into())]
    );
    assert_eq!(
        dials("db.example.com", 5432),
        [(Dial::Address, "192.0.2.9".into())]
    );
    // Endpoints without an address are nobody's inbound target.
    let unspecified = LocalWorkload {
        key: "egress/x".into(),
        name: "x".into(),
        namespace: "egress".into(),
        address: "0.0.0.0".parse().unwrap(),
        inbound_port: DEFAULT_INBOUND_PORT,
        labels: Default::default(),
        service_account: DEFAULT_SERVICE_ACCOUNT.into(),
        spiffe_id: id("spiffe://cluster.local/ns/egress/sa/default"),
        ports: Default::default(),
        policy: warden_policy::authz::Workload {
            namespace: "egress".into(),
            labels: Default::default(),
        },
    };
    assert!(r.services_of(&unspecified).is_empty());

    let got = errors(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none-with-endpoints, namespace: egress}
spec:
  hosts: [a.example.com]
  resolution: NONE
  ports: [{number: 80, name: http}]
  endpoints: [{address: 192.0.2.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-wildcard, namespace: egress}
spec:
  hosts: [b.example.com, "*.example.org"]
  resolution: DNS
  ports: [{number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static-name, namespace: egress}
spec:
  hosts: [c.example.com]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: c.internal.example}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-bad-name, namespace: egress}
spec:
  hosts: [d.example.com]
  resolution: DNS
  ports: [{number: 80, name: http}]
  endpoints: [{address: "*.example.net"}]
"#,
    );
    let want = [
        "ServiceEntry egress/none-with-endpoints: spec.endpoints: no endpoints should be provided for resolution NONE",
        "ServiceEntry egress/dns-wildcard: spec.hosts[1]: \"*.example.org\": hosts must be FQDNs when resolution DNS has no endpoints",
        "ServiceEntry egress/static-name: spec.endpoints[0].address: \"c.internal.example\" is not an IP address: resolution STATIC takes IP literals",
        "ServiceEntry egress/dns-bad-name: spec.endpoints[0].address: \"*.example.net\" is neither an IP address nor a DNS name",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(g.contains(w), "got:\n{g}\nwant it to contain:\n{w}");
    }
}
