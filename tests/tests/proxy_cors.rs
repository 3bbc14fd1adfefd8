//! A VirtualService's `corsPolicy` in the data path, as Envoy's CORS filter applies
//! it under Istio: curl (a client no one here wrote) sends preflights and simple
//! requests through a client's `warden-proxy` and through an ingress gateway
//! (`--mode gateway`); the app's own proxy counts what reaches the app, so a preflight
//! the client's proxy answers is seen never to arrive.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::TcpStream;
use std::time::Duration;

use warden_tests::mesh::{Mesh, ServiceSpec, WorkloadSpec};
use warden_tests::{Curl, curl};

/// Sidecar routes: `/strict` ignores unmatched preflights; everything else forwards
/// them (the default). A Gateway with the same policy for the ingress.
const CORS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - name: down
    match:
    - uri: {prefix: /down}
    route:
    - destination: {host: empty, port: {number: 8000}}
    corsPolicy:
      allowOrigins:
      - exact: https://app.example
  - name: strict
    match:
    - uri: {prefix: /strict}
    route:
    - destination: {host: web}
    corsPolicy:
      allowOrigins:
      - exact: https://app.example
      allowMethods: [GET]
      maxAge: 10m
      unmatchedPreflights: IGNORE
  - name: open
    route:
    - destination: {host: web}
    corsPolicy:
      allowOrigins:
      - exact: https://app.example
      - regex: 'https://[a-z]+\.trusted\.example'
      allowMethods: [GET, POST, PUT]
      allowHeaders: [x-token, content-type]
      exposeHeaders: [x-served-by]
      maxAge: 24h
      allowCredentials: true
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: empty, namespace: default}
spec:
  hosts: [empty.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: nothing}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [web.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-edge, namespace: default}
spec:
  hosts: [web.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: web, port: {number: 8000}}
    corsPolicy:
      allowOrigins: [{prefix: 'https://'}]
      allowMethods: ['*']
      allowHeaders: ['*']
"#;

/// A curl answer's headers (`-D /dev/stderr` puts them on stderr), names lowercase.
fn header(r: &Curl, name: &str) -> Option<String> {
    r.stderr.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// curl through `proxy` with the headers `-H` gives, `method` on `url`.
fn send(proxy: &str, method: &str, url: &str, headers: &[&str]) -> Curl {
    let mut args = vec!["-D", "/dev/stderr", "-X", method, "--proxy", proxy];
    for h in headers {
        args.extend(["-H", *h]);
    }
    args.push(url);
    curl(&args)
}

#[test]
fn cors_policies_are_applied_by_the_client_proxy_and_the_gateway() {
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload_spec(WorkloadSpec::new("web", "default", "web"))
        .workload_spec(
            WorkloadSpec::new("ingressgateway", "istio-system", "istio-ingressgateway")
                .label("istio", "ingressgateway")
                .without_apps()
                .without_proxy(),
        )
        .service(ServiceSpec::new("web", "default").http(8000))
        .config("cors.yaml", CORS)
        .start();
    let proxy = format!("http://{}", mesh.workload("client").outbound());
    let url = |path: &str| mesh.url("web", "http", path);
    let at_app = || {
        mesh.metric(
            "web",
            "istio_requests_total",
            &[("reporter", "destination")],
        )
    };
    let before = at_app();

    // A preflight from an allowed origin: answered by the client's proxy with 200,
    // the request's origin and the policy's headers.
    let preflight = |path: &str, origin: &str| {
        send(
            &proxy,
            "OPTIONS",
            &url(path),
            &[
                &format!("Origin: {origin}"),
                "Access-Control-Request-Method: PUT",
                "Access-Control-Request-Headers: x-token",
            ],
        )
    };
    let r = preflight("/items", "https://app.example");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "", "{r:?}");
    let h = |name: &str| header(&r, name);
    assert_eq!(
        h("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        h("access-control-allow-methods").as_deref(),
        Some("GET,POST,PUT")
    );
    assert_eq!(
        h("access-control-allow-headers").as_deref(),
        Some("x-token,content-type")
    );
    assert_eq!(h("access-control-max-age").as_deref(), Some("86400"));
    assert_eq!(
        h("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    // The regex origin, matched whole.
    let r = preflight("/items", "https://api.trusted.example");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://api.trusted.example"),
        "{r:?}"
    );
    // `IGNORE`: a preflight from another origin is answered too, without
    // `access-control-allow-origin` (the browser then refuses the request).
    let r = preflight("/strict/x", "https://evil.example");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "access-control-allow-origin"), None, "{r:?}");
    assert_eq!(
        header(&r, "access-control-allow-methods").as_deref(),
        Some("GET")
    );
    assert_eq!(header(&r, "access-control-max-age").as_deref(), Some("600"));

    // None of those three reached the app: the next request that does is counted
    // alone. A preflight from another origin under `FORWARD` (the default) is that
    // request: the app answers it, and no CORS header is added.
    let r = preflight("/items", "https://evil.example");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["method"], "OPTIONS", "{r:?}");
    assert_eq!(header(&r, "access-control-allow-origin"), None, "{r:?}");
    assert_eq!(header(&r, "access-control-allow-methods"), None, "{r:?}");
    let counted = warden_tests::eventually(
        "the app's proxy to count the forwarded preflight",
        Duration::from_secs(10),
        || {
            let n = at_app();
            (n > before).then_some(n)
        },
    );
    assert_eq!(
        counted,
        before + 1.0,
        "only the forwarded preflight reached the app"
    );

    // A simple request from an allowed origin goes to the app; its answer names the
    // origin, allows credentials and exposes the header.
    let r = send(
        &proxy,
        "GET",
        &url("/items"),
        &["Origin: https://app.example"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["name"], "web", "{r:?}");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        header(&r, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&r, "access-control-expose-headers").as_deref(),
        Some("x-served-by")
    );
    assert_eq!(header(&r, "access-control-max-age"), None);
    // From another origin, or without one: the answer carries no CORS header.
    for origin in [&["Origin: https://app.example.evil"][..], &[]] {
        let r = send(&proxy, "GET", &url("/items"), origin);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{r:?}");
        assert_eq!(header(&r, "access-control-expose-headers"), None, "{r:?}");
    }

    // The ingress gateway, through the same routing: `*` echoes what the preflight
    // asked for.
    mesh.spawn_proxy("ingressgateway", &["--mode", "gateway"]);
    mesh.wait_proxy_ready("ingressgateway");
    let ip = mesh.workload("ingressgateway").ip.to_string();
    warden_tests::eventually("the gateway's port", Duration::from_secs(10), || {
        TcpStream::connect((ip.as_str(), 8080)).map(drop)
    });
    let resolve = format!("web.example.com:8080:{ip}");
    let edge = |method: &str, headers: &[&str]| {
        let mut args = vec!["-D", "/dev/stderr", "-X", method, "--resolve", &resolve];
        for h in headers {
            args.extend(["-H", *h]);
        }
        args.push("http://web.example.com:8080/items");
        curl(&args)
    };
    let r = edge(
        "OPTIONS",
        &[
            "Origin: https://site.example",
            "Access-Control-Request-Method: DELETE",
            "Access-Control-Request-Headers: x-a,x-b",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "", "{r:?}");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://site.example")
    );
    assert_eq!(
        header(&r, "access-control-allow-methods").as_deref(),
        Some("DELETE")
    );
    assert_eq!(
        header(&r, "access-control-allow-headers").as_deref(),
        Some("x-a,x-b")
    );
    let r = edge("GET", &["Origin: https://site.example"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["name"], "web", "{r:?}");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://site.example")
    );
    let r = edge("GET", &["Origin: http://plain.example"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "access-control-allow-origin"), None, "{r:?}");

    // The proxy's own error reply for a route with no endpoint carries the route's
    // CORS headers too, as Envoy's does, so a browser can read the 503.
    let r = send(
        &proxy,
        "GET",
        &url("/down/x"),
        &["Origin: https://app.example"],
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example"),
        "{r:?}"
    );
}
