//! `warden route check` on real files: Istio's bookinfo traffic-management samples
//! (`samples/bookinfo/networking/`, as the request-routing and fault-injection tasks
//! apply them), the decision JSON, `--explain`, and bad input refused with exit code 2;
//! and decided as a Gateway's proxy (`"gateway": "ns/name"`): `bookinfo-gateway.yaml`,
//! the SNI-passthrough task's Gateway, a request no server takes.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use warden_tests::{fails, ok, warden};

/// `destination-rule-all.yaml` (reviews and ratings parts).
const DESTINATION_RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

/// `virtual-service-reviews-test-v2.yaml` and `virtual-service-ratings-test-delay.yaml`.
const VIRTUAL_SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

fn request(host: &str, user: &str) -> String {
    format!(
        r#"{{"source": {{"namespace": "default", "labels": {{"app": "productpage"}}, "principal": "cluster.local/ns/default/sa/bookinfo-productpage"}},
            "request": {{"protocol": "http", "host": "{host}", "port": 9080, "method": "GET", "path": "/reviews/0", "headers": {{"end-user": "{user}"}}}}}}"#
    )
}

fn run(dir: &std::path::Path, req: &str, extra: &[&str]) -> std::process::Output {
    let file = dir.join("req.json");
    std::fs::write(&file, req).unwrap();
    let config = dir.join("config");
    let mut args = vec![
        "route",
        "check",
        "--config",
        config.to_str().unwrap(),
        "--request",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    warden(&args)
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/destination-rule-all.yaml"),
        DESTINATION_RULES,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config/virtual-services.yaml"),
        VIRTUAL_SERVICES,
    )
    .unwrap();
    dir
}

#[test]
fn bookinfo_request_routing_and_fault_injection() {
    let dir = setup();
    let check = |req: &str, extra: &[&str]| -> serde_json::Value {
        serde_json::from_str(&ok(run(dir.path(), req, extra))).unwrap()
    };
    let v = check(&request("reviews", "jason"), &[]);
    assert_eq!(v["action"], "route");
    assert_eq!(v["virtual_service"], "default/reviews");
    assert_eq!(v["route_index"], 0);
    assert_eq!(
        v["destinations"],
        serde_json::json!([{"host": "reviews.default.svc.cluster.local", "subset": "v2", "port": null, "weight": 100}])
    );
    assert_eq!(v["subset_labels"], serde_json::json!({"version": "v2"}));
    assert_eq!(v["destination_rule"], "default/reviews");
    let v = check(&request("reviews:9080", "mary"), &[]);
    assert_eq!(v["route_index"], 1);
    assert_eq!(v["subset_labels"], serde_json::json!({"version": "v1"}));

    // The delay for jason, none for others; retries are Istio's defaults.
    let v = check(&request("ratings", "jason"), &["--explain"]);
    assert_eq!(
        v["fault"]["delay"],
        serde_json::json!({"fixed_delay": "7s", "percent": 100.0})
    );
    assert_eq!(v["retries"]["attempts"], 2);
    let explain: Vec<&str> = v["explain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        explain[0].contains("default/ratings owns ratings.default.svc.cluster.local"),
        "{explain:?}"
    );
    assert!(explain[1].contains("http[0]: matches"), "{explain:?}");
    let v = check(&request("ratings", "mary"), &["--explain"]);
    assert_eq!(v["fault"], serde_json::Value::Null);
    let explain = v["explain"].to_string();
    assert!(
        explain.contains(r#"header end-user is Some(\"mary\"), not exact \"jason\""#),
        "{explain}"
    );

    // A host no one serves.
    let v = check(&request("example.com", "x"), &[]);
    assert_eq!(v["action"], "no_route");
    assert!(v["note"].as_str().unwrap().contains("ALLOW_ANY"), "{v}");

    // Istio's samples pass `warden validate` as they pass the webhook.
    let summary = ok(warden(&[
        "validate",
        dir.path().join("config").to_str().unwrap(),
    ]));
    assert!(
        summary.contains("ok: 4 resources in 2 files (2 VirtualService, 2 DestinationRule)"),
        "{summary}"
    );
}

#[test]
fn bad_input_exits_2_naming_it() {
    let dir = setup();
    let bad_req = |req: &str, want: &str| {
        let out = run(dir.path(), req, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = fails(out);
        assert!(err.contains(want), "{err}");
    };
    bad_req("{", "--request");
    bad_req(
        r#"{"source": {"namespace": "default"}, "request": {"protocol": "grpc", "host": "a", "port": 1}}"#,
        "request.protocol",
    );
    bad_req(
        r#"{"source": {"namespace": "default"}, "request": {"protocol": "http", "host": "a", "port": 1, "verb": "GET"}}"#,
        "verb",
    );
    // A config with a bad regex: the file, the resource and the field.
    std::fs::write(
        dir.path().join("config/broken.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken, namespace: default}\nspec:\n  hosts: [details]\n  http:\n  - match:\n    - uri: {regex: '/v[1-'}\n    route:\n    - destination: {host: details}\n",
    )
    .unwrap();
    let out = run(dir.path(), &request("reviews", "jason"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = fails(out);
    assert!(
        err.contains("broken.yaml")
            && err.contains("VirtualService default/broken")
            && err.contains("spec.http[0].match[0].uri.regex"),
        "{err}"
    );
}

/// `samples/bookinfo/networking/bookinfo-gateway.yaml` (in `default`) and the
/// ingress-sni-passthrough task's Gateway and VirtualService.
const GATEWAYS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  # The selector matches the ingress gateway pod labels.
  selector:
    istio: ingressgateway # use istio default controller
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: PASSTHROUGH
    hosts:
    - nginx.example.com
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: nginx
spec:
  hosts:
  - nginx.example.com
  gateways:
  - mygateway
  tls:
  - match:
    - port: 443
      sniHosts:
      - nginx.example.com
    route:
    - destination:
        host: my-nginx
        port:
          number: 443
"#;

#[test]
fn decided_as_a_gateway_proxy() {
    let dir = setup();
    std::fs::write(dir.path().join("config/gateways.yaml"), GATEWAYS).unwrap();
    let check = |req: &str, extra: &[&str]| -> serde_json::Value {
        serde_json::from_str(&ok(run(dir.path(), req, extra))).unwrap()
    };
    let http = |path: &str| {
        format!(
            r#"{{"gateway": "default/bookinfo-gateway", "request": {{"protocol": "http", "host": "bookinfo.example.com:8080", "port": 8080, "path": "{path}"}}}}"#
        )
    };
    let v = check(&http("/api/v1/products/0"), &["--explain"]);
    assert_eq!(v["action"], "route", "{v}");
    assert_eq!(v["virtual_service"], "default/bookinfo");
    assert_eq!(
        v["destinations"],
        serde_json::json!([{"host": "productpage.default.svc.cluster.local", "subset": null, "port": 9080, "weight": 100}])
    );
    assert_eq!(
        v["gateway_server"],
        "default/bookinfo-gateway servers[0] (port 8080, hosts *)"
    );
    assert!(
        v["explain"].to_string().contains("match[4]: matches"),
        "{v}"
    );
    let v = check(&http("/reviews/0"), &[]);
    assert_eq!(
        (&v["action"], &v["status"]),
        (&"no_route".into(), &404.into()),
        "{v}"
    );

    // TLS passthrough by SNI.
    let v = check(
        r#"{"gateway": "default/mygateway", "request": {"protocol": "tcp", "host": "nginx.example.com", "port": 443, "sni": "nginx.example.com"}}"#,
        &[],
    );
    assert_eq!(v["virtual_service"], "default/nginx", "{v}");
    assert_eq!(
        v["destinations"][0]["host"],
        "my-nginx.default.svc.cluster.local"
    );

    // No server of the Gateway takes the request: exit 2 naming gateway, port and host.
    let out = run(
        dir.path(),
        r#"{"gateway": "default/mygateway", "request": {"protocol": "tcp", "host": "x", "port": 443, "sni": "other.example.com"}}"#,
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = fails(out);
    assert!(
        err.contains("default/mygateway")
            && err.contains("443")
            && err.contains("other.example.com"),
        "{err}"
    );
    let out = run(dir.path(), &http("/x").replace("8080", "80"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = fails(out);
    assert!(
        err.contains("port 80") && err.contains("bookinfo.example.com"),
        "{err}"
    );

    // The samples pass `warden validate`.
    let summary = ok(warden(&[
        "validate",
        dir.path().join("config").to_str().unwrap(),
    ]));
    assert!(summary.contains("2 Gateway"), "{summary}");
}
