//! Traffic management in the proxy's data path: a client's `warden-proxy` routes by
//! Istio's VirtualService and DestinationRule (the route table `warden route check`
//! prints) to the subsets of a service with two versions, each its own workload behind
//! its own proxy. curl (a client no one here wrote) and the tests' own client send the
//! requests; the apps report which version answered and what they received.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use warden_tests::curl;
use warden_tests::mesh::{Mesh, Req, ServiceSpec, WorkloadSpec, echo};

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: all, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
  - name: slow
    match:
    - uri: {prefix: /delay/}
    timeout: 0.5s
    route:
    - destination: {host: reviews, subset: v1}
  - name: flaky
    match:
    - uri: {prefix: /flaky}
    fault:
      abort: {httpStatus: 503, percentage: {value: 50}}
    route:
    - destination: {host: reviews, subset: v1}
  - name: moved
    match:
    - uri: {prefix: /old}
    redirect: {uri: /new, redirectCode: 302}
  - name: bad-rewrite
    match:
    - uri: {prefix: /broken}
    rewrite: {uri: "/a b"}
    route:
    - destination: {host: reviews, subset: v1}
  - name: api
    match:
    - uri: {prefix: /api/}
    rewrite: {uri: /v1/}
    headers:
      request:
        set: {x-routed-by: warden}
      response:
        add: {x-route: api}
    route:
    - destination: {host: reviews, subset: v2}
  - name: mirrored
    match:
    - uri: {prefix: /mirrored}
    route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100.0}
  - name: no-retries
    match:
    - uri: {prefix: /all/once}
    retries: {attempts: 0}
    route:
    - destination: {host: reviews, subset: all}
  - name: retried
    match:
    - uri: {prefix: /all/}
    retries: {attempts: 3, retryOn: 5xx}
    route:
    - destination: {host: reviews, subset: all}
  - name: split
    route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
"#;

fn mesh() -> Mesh {
    Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload_spec(
            WorkloadSpec::new("reviews-v1", "default", "reviews")
                .label("app", "reviews")
                .label("version", "v1"),
        )
        .workload_spec(
            WorkloadSpec::new("reviews-v2", "default", "reviews")
                .label("app", "reviews")
                .label("version", "v2"),
        )
        // A third endpoint whose app is down: its proxy answers 503.
        .workload_spec(
            WorkloadSpec::new("reviews-down", "default", "reviews")
                .label("app", "reviews")
                .label("version", "v3")
                .without_apps(),
        )
        .service(ServiceSpec::new("reviews", "default").http(9080))
        .config("routes.yaml", ROUTES)
        .start()
}

#[test]
fn virtual_services_route_in_the_data_path() {
    let mesh = mesh();
    let url = |path: &str| mesh.url("reviews", "http", path);
    let name = |r: &warden_tests::mesh::Resp| r.json()["name"].as_str().unwrap().to_string();

    // Header routing, with curl through the client's proxy.
    let proxy = format!("http://{}", mesh.workload("client").outbound());
    let r = curl(&["--proxy", &proxy, "-H", "end-user: jason", &url("/x")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["name"], "reviews-v2", "{r:?}");

    // The weighted split: 80/20 within a tight margin (binomial: 400 draws at 0.2 have
    // a standard deviation of 8; 5 of them either side).
    let n = 400;
    let v2 = (0..n)
        .filter(|_| name(&mesh.get("client", &url("/split"))) == "reviews-v2")
        .count();
    eprintln!("80/20 split: {v2} of {n} requests went to v2");
    assert!(
        (40..=120).contains(&v2),
        "{v2} of {n} to v2, expected about 80"
    );

    // A 2 s answer against a 0.5 s timeout: 504 from the client's proxy, in time.
    let started = std::time::Instant::now();
    let r = mesh.get("client", &url("/delay/2000"));
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text(), "upstream request timeout");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
    // Within the timeout the answer passes.
    let r = mesh.get("client", &url("/delay/100"));
    assert_eq!(r.status, 200, "{}", r.text());

    // 50% aborts.
    let aborted = (0..200)
        .filter(|_| mesh.get("client", &url("/flaky")).status == 503)
        .count();
    eprintln!("50% abort: {aborted} of 200 aborted");
    assert!((60..=140).contains(&aborted), "{aborted} of 200 aborted");

    // One endpoint of three down: without retries a third of the requests fail; with
    // `retries: {attempts: 3, retryOn: 5xx}` every one succeeds on another endpoint.
    let failed_once = (0..60)
        .filter(|_| mesh.get("client", &url("/all/once")).status == 503)
        .count();
    let failed_retried = (0..60)
        .filter(|_| mesh.get("client", &url("/all/x")).status != 200)
        .count();
    eprintln!(
        "one endpoint down: {failed_once} of 60 failed without retries, {failed_retried} of 60 with"
    );
    assert!(
        (10..=30).contains(&failed_once),
        "{failed_once} of 60 failed without retries"
    );
    assert_eq!(failed_retried, 0);
    // A request with a body of declared length is read in full and retried the same
    // way, each try carrying the whole body (curl sends it).
    let body = "b".repeat(20_000);
    let failed_with_body = (0..30)
        .filter(|_| {
            let r = curl(&["--proxy", &proxy, "--data-binary", &body, &url("/all/post")]);
            r.status != 200 || r.json()["body"].as_str().map(str::len) != Some(20_000)
        })
        .count();
    assert_eq!(
        failed_with_body, 0,
        "POSTs with a body were not retried whole"
    );

    // Mirroring: every answer is v1's; v2 receives the copies (as its proxy counts
    // them, reporter=destination).
    let at_v2 = || {
        mesh.metric(
            "reviews-v2",
            "istio_requests_total",
            &[("reporter", "destination")],
        )
    };
    let before = at_v2();
    for _ in 0..10 {
        let r = mesh.get("client", &url("/mirrored"));
        assert_eq!(name(&r), "reviews-v1");
    }
    let after = warden_tests::eventually(
        "the mirror copies to reach v2",
        std::time::Duration::from_secs(10),
        || {
            let n = at_v2();
            (n >= before + 10.0).then_some(n)
        },
    );
    assert_eq!(after, before + 10.0);

    // A rewrite to something that is not a request target is refused by the client's
    // proxy, naming the VirtualService, and never sent as another path.
    let r = mesh.get("client", &url("/broken/x"));
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("VirtualService default/reviews") && r.text().contains("/a b"),
        "{}",
        r.text()
    );

    // A redirect answered by the client's proxy; curl reads Location.
    let r = curl(&["--proxy", &proxy, "-i", &url("/old/page?q=1")]);
    assert_eq!(r.status, 302, "{r:?}");
    let location = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no Location: {r:?}"));
    assert_eq!(
        location.trim(),
        "http://reviews.default.svc.cluster.local:9080/new?q=1"
    );

    // The rewrite and header operations: the app sees /v1/items and the set header;
    // the client sees the added response header.
    let r = mesh
        .send("client", &Req::get(&url("/api/items?x=1")))
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["name"], "reviews-v2");
    assert_eq!(seen["path"], "/v1/items");
    assert!(
        seen["uri"].as_str().unwrap().ends_with("/v1/items?x=1"),
        "{seen}"
    );
    assert!(
        seen["headers"].to_string().contains("x-routed-by"),
        "{seen}"
    );
    assert_eq!(r.headers.get("x-route").unwrap(), "api");
}

/// TCP: a VirtualService's `tcp` rule sends every connection to the `v2` subset (by
/// the DestinationRule's labels); the echo answers through both proxies, and only
/// v2's proxy counts the connections.
#[test]
fn tcp_rules_route_connections_to_a_subset() {
    let routes = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  tcp:
  - match:
    - port: 9000
    route:
    - destination: {host: echo, subset: v2}
"#;
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload_spec(
            WorkloadSpec::new("echo-v1", "default", "echo")
                .label("app", "echo")
                .label("version", "v1"),
        )
        .workload_spec(
            WorkloadSpec::new("echo-v2", "default", "echo")
                .label("app", "echo")
                .label("version", "v2"),
        )
        .service(ServiceSpec::new("echo", "default").tcp(9000))
        .config("routes.yaml", routes)
        .start();
    let opened = |w: &str| {
        mesh.metric(
            w,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination")],
        )
    };
    let (v1_before, v2_before) = (opened("echo-v1"), opened("echo-v2"));
    for i in 0..6 {
        let mut s = mesh.tcp_connect("client", 9000).unwrap();
        let msg = format!("connection {i}");
        let back = echo(&mut s, msg.as_bytes()).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    warden_tests::eventually(
        "v2's proxy to count the six connections",
        std::time::Duration::from_secs(10),
        || opened("echo-v2") >= v2_before + 6.0,
    );
    assert_eq!(opened("echo-v1"), v1_before, "no connection reached v1");
}

/// Istio's circuit-breaking task: a DestinationRule with `maxConnections: 1` and
/// `http1MaxPendingRequests: 1`; six requests at once (each answered after 500 ms):
/// one on the wire, one waiting, the rest refused by the client's proxy with 503 and
/// response flag UO.
#[test]
fn connection_pool_limits_trip_the_circuit_breaker() {
    let rule = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
"#;
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload("httpbin", "httpbin")
        .service(ServiceSpec::new("httpbin", "default").http(8000))
        .config("circuit.yaml", rule)
        .start();
    let url = mesh.url("httpbin", "http", "/delay/500");
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let r = mesh.get("client", &url);
                    (r.status, r.text())
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let overflow = statuses
        .iter()
        .filter(|(s, body)| *s == 503 && body.contains("reset reason: overflow"))
        .count();
    eprintln!("circuit breaker: {ok} answered, {overflow} refused with UO, of 6 at once");
    assert!(ok >= 2, "{statuses:?}");
    assert!(overflow >= 1, "{statuses:?}");
    assert_eq!(ok + overflow, 6, "{statuses:?}");
    // Each refusal is a circuit-breaker trip on the client's health metrics.
    let trips = warden_tests::mesh::metric_sum(
        &mesh.metrics("client"),
        "warden_upstream_events_total",
        &[("event", "overflow")],
    );
    assert_eq!(trips, overflow as f64);
    // Once the burst is over, requests pass again.
    assert_eq!(
        mesh.get("client", &mesh.url("httpbin", "http", "/x"))
            .status,
        200
    );
}

/// Outlier detection: one of two endpoints has no app (its proxy answers 503). With
/// `consecutive5xxErrors: 1` it is ejected after its first failure and every request
/// then succeeds; after `baseEjectionTime` it is tried again (one more failure), and
/// ejected again, for twice as long.
#[test]
fn outlier_detection_ejects_and_restores_an_endpoint() {
    let rule = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3s
      maxEjectionPercent: 100
"#;
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload_spec(
            WorkloadSpec::new("ratings-v1", "default", "ratings").label("app", "ratings"),
        )
        .workload_spec(
            WorkloadSpec::new("ratings-down", "default", "ratings")
                .label("app", "ratings")
                .without_apps(),
        )
        .service(ServiceSpec::new("ratings", "default").http(9080))
        .config("outlier.yaml", rule)
        .start();
    let url = mesh.url("ratings", "http", "/x");
    let failures = |n: usize| {
        (0..n)
            .filter(|_| mesh.get("client", &url).status != 200)
            .count()
    };
    let first = failures(20);
    eprintln!("outlier detection: {first} of 20 failed (one endpoint of two down)");
    assert_eq!(first, 1, "the down endpoint fails once, then sits out");
    assert_eq!(
        warden_tests::mesh::metric_sum(
            &mesh.metrics("client"),
            "warden_upstream_events_total",
            &[("event", "ejection")],
        ),
        1.0,
        "the ejection is counted"
    );
    // After the 3 s ejection it is tried again, fails once, and is ejected for 6 s.
    std::thread::sleep(std::time::Duration::from_millis(3300));
    let again = failures(10);
    assert_eq!(
        again, 1,
        "tried again after baseEjectionTime, ejected again"
    );
    assert_eq!(failures(10), 0);
}

/// istio/istio `samples/bookinfo/networking/destination-rule-all.yaml`, unchanged.
const BOOKINFO_DESTINATION_RULES: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: productpage\nspec:\n  host: productpage\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ratings\nspec:\n  host: ratings\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v2-mysql\n    labels:\n      version: v2-mysql\n  - name: v2-mysql-vm\n    labels:\n      version: v2-mysql-vm\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: details\nspec:\n  host: details\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n---\n";

/// `virtual-service-reviews-test-v2.yaml`, unchanged.
const BOOKINFO_REVIEWS_TEST_V2: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts:\n    - reviews\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: jason\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";

/// `virtual-service-ratings-test-abort.yaml` as Istio ships it today (`percentage`;
/// its older form's `abort.percent` is a reserved field of the proto, which Warden
/// refuses by name and a Kubernetes API server prunes, leaving an abort of 0%).
const BOOKINFO_RATINGS_TEST_ABORT: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts:\n  - ratings\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: jason\n    fault:\n      abort:\n        percentage:\n          value: 100.0\n        httpStatus: 500\n    route:\n    - destination:\n        host: ratings\n        subset: v1\n  - route:\n    - destination:\n        host: ratings\n        subset: v1\n";

/// `virtual-service-reviews-90-10.yaml`, unchanged.
const BOOKINFO_REVIEWS_90_10: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts:\n    - reviews\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n      weight: 90\n    - destination:\n        host: reviews\n        subset: v2\n      weight: 10\n";

/// Istio's bookinfo traffic-management samples, as the request-routing, fault-injection
/// and traffic-shifting tasks apply them, in the data path: `productpage` (the client)
/// calls `reviews` (v1, v2, v3) and `ratings`.
#[test]
fn bookinfo_samples_applied_unchanged() {
    let reviews = |v: &str| {
        WorkloadSpec::new(&format!("reviews-{v}"), "default", "bookinfo-reviews")
            .label("app", "reviews")
            .label("version", v)
    };
    let mesh = Mesh::builder()
        .workload_spec(
            WorkloadSpec::new("productpage-v1", "default", "bookinfo-productpage")
                .label("app", "productpage")
                .label("version", "v1")
                .without_apps(),
        )
        .workload_spec(reviews("v1"))
        .workload_spec(reviews("v2"))
        .workload_spec(reviews("v3"))
        .workload_spec(
            WorkloadSpec::new("ratings-v1", "default", "bookinfo-ratings")
                .label("app", "ratings")
                .label("version", "v1"),
        )
        .service(ServiceSpec::new("reviews", "default").http(9080))
        .service(ServiceSpec::new("ratings", "default").http(9080))
        .config("destination-rule-all.yaml", BOOKINFO_DESTINATION_RULES)
        .config(
            "virtual-service-reviews-test-v2.yaml",
            BOOKINFO_REVIEWS_TEST_V2,
        )
        .config(
            "virtual-service-ratings-test-abort.yaml",
            BOOKINFO_RATINGS_TEST_ABORT,
        )
        .start();
    let get = |service: &str, user: Option<&str>| {
        let mut req = Req::get(&mesh.url(service, "http", "/"));
        if let Some(u) = user {
            req = req.header("end-user", u);
        }
        mesh.send("productpage-v1", &req).unwrap()
    };
    // Request routing: jason sees v2, everyone else v1.
    for _ in 0..10 {
        assert_eq!(get("reviews", Some("jason")).json()["name"], "reviews-v2");
        assert_eq!(get("reviews", Some("other")).json()["name"], "reviews-v1");
        assert_eq!(get("reviews", None).json()["name"], "reviews-v1");
    }
    // Fault injection: jason's ratings calls abort with 500; others reach ratings.
    let r = get("ratings", Some("jason"));
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.text(), "fault filter abort");
    assert_eq!(get("ratings", None).json()["name"], "ratings-v1");

    // Traffic shifting, 90/10 (binomial, 600 draws at 0.1: sd 7.3; 4 sd either side).
    mesh.apply_config(
        "virtual-service-reviews-test-v2.yaml",
        BOOKINFO_REVIEWS_90_10,
    );
    let n = 600;
    let v2 = (0..n)
        .filter(|_| get("reviews", None).json()["name"] == "reviews-v2")
        .count();
    eprintln!("90/10: {v2} of {n} to v2");
    assert!(
        (31..=89).contains(&v2),
        "{v2} of {n} to v2, expected about 60"
    );

    // 99/1 over 3,000 requests (expected 30, sd 5.4; 4 sd either side), and v3 gets
    // nothing it was not given.
    mesh.apply_config(
        "virtual-service-reviews-test-v2.yaml",
        &BOOKINFO_REVIEWS_90_10
            .replace("weight: 90", "weight: 99")
            .replace("weight: 10", "weight: 1"),
    );
    let n = 3000;
    let names: Vec<String> = (0..n)
        .map(|_| {
            get("reviews", None).json()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let v2 = names.iter().filter(|n| *n == "reviews-v2").count();
    eprintln!("99/1: {v2} of {n} to v2");
    assert!(
        (9..=52).contains(&v2),
        "{v2} of {n} to v2, expected about 30"
    );
    assert!(!names.iter().any(|n| n == "reviews-v3"));
}
