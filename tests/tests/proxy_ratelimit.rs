//! Local rate limiting in the proxy: Istio's own `EnvoyFilter` from the "Enabling Rate
//! Limits using Envoy" task applied unchanged, then Warden's `LocalRateLimit` with a
//! bucket per caller and an exemption; curl (through the client's sidecar) is the
//! client, the test app behind the limited sidecar.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Duration;

use warden_tests::curl;
use warden_tests::mesh::{Mesh, ServiceSpec, WorkloadSpec};

/// istio.io/latest/docs/tasks/policy-enforcement/rate-limit/ ("local rate limit"),
/// as published.
const ISTIO_LOCAL_RATELIMIT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket:
                max_tokens: 4
                tokens_per_fill: 4
                fill_interval: 60s
              filter_enabled:
                runtime_key: local_rate_limit_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              filter_enforced:
                runtime_key: local_rate_limit_enforced
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              response_headers_to_add:
                - append: false
                  header:
                    key: x-local-rate-limit
                    value: 'true'
"#;

/// Two writes a minute per caller on `/orders`, the ops team exempt.
const PER_CALLER: &str = r#"
apiVersion: warden.io/v1alpha1
kind: LocalRateLimit
metadata: {name: orders, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  limits:
  - name: orders-per-caller
    match: {paths: ["/orders*"]}
    tokenBucket: {maxTokens: 2, tokensPerFill: 2, fillInterval: 60s}
    per: sourcePrincipal
    exempt:
      principals: ["cluster.local/ns/default/sa/ops"]
"#;

fn get(mesh: &Mesh, client: &str, path: &str) -> warden_tests::Curl {
    let proxy = format!("http://{}", mesh.workload(client).outbound());
    curl(&[
        "-i",
        "--proxy",
        &proxy,
        &mesh.url("productpage", "http", path),
    ])
}

#[test]
fn local_rate_limits_from_istios_envoy_filter_and_warden_s_resource() {
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client-a", "default", "client-a").without_apps())
        .workload_spec(WorkloadSpec::new("client-b", "default", "client-b").without_apps())
        .workload_spec(WorkloadSpec::new("ops", "default", "ops").without_apps())
        .workload_spec(
            WorkloadSpec::new("productpage-v1", "default", "productpage")
                .label("app", "productpage"),
        )
        .service(ServiceSpec::new("productpage", "default").http(9080))
        .config("ratelimit.yaml", ISTIO_LOCAL_RATELIMIT)
        .start();

    // Istio's task: four requests a minute, then 429 with the filter's header.
    for i in 0..4 {
        let r = get(&mesh, "client-a", "/productpage");
        assert!(r.body.starts_with("HTTP/1.1 200"), "request {i}: {r:?}");
    }
    let r = get(&mesh, "client-b", "/productpage");
    assert_eq!(r.status, 429, "{r:?}");
    assert!(
        r.body
            .to_ascii_lowercase()
            .contains("x-local-rate-limit: true"),
        "{r:?}"
    );
    assert!(r.body.ends_with("local_rate_limited"), "{r:?}");
    let limited = mesh.metric(
        "productpage-v1",
        "warden_local_rate_limited_total",
        &[("outcome", "enforced")],
    );
    assert_eq!(limited, 1.0);
    // The refusal is counted as the sidecar's answer, with Envoy's flag.
    let flagged = mesh.metric(
        "productpage-v1",
        "istio_requests_total",
        &[("response_code", "429"), ("response_flags", "RL")],
    );
    assert_eq!(flagged, 1.0);

    // Warden's resource: a bucket per caller on /orders, ops exempt.
    mesh.unapply_config("ratelimit.yaml");
    mesh.apply_config("orders.yaml", PER_CALLER);
    for client in ["client-a", "client-b"] {
        for i in 0..2 {
            let r = get(&mesh, client, "/orders/1");
            assert_eq!(r.status, 200, "{client} request {i}: {r:?}");
            let remaining = format!("x-ratelimit-remaining: {}", 1 - i);
            assert!(r.body.to_ascii_lowercase().contains(&remaining), "{r:?}");
        }
        let r = get(&mesh, client, "/orders/1");
        assert_eq!(r.status, 429, "{client}: {r:?}");
        assert!(
            r.body
                .to_ascii_lowercase()
                .contains("x-ratelimit-limit: 2, 2;w=60"),
            "{r:?}"
        );
    }
    for _ in 0..5 {
        assert_eq!(get(&mesh, "ops", "/orders/1").status, 200);
    }
    // Other paths are not limited.
    assert_eq!(get(&mesh, "client-a", "/productpage").status, 200);

    // A broken limit is refused whole; the one in force stays.
    let rejected = || mesh.metric("productpage-v1", "warden_config_rejected_total", &[]);
    let before = rejected();
    mesh.write_config(
        "orders.yaml",
        &PER_CALLER.replace("fillInterval: 60s", "fillInterval: 1ms"),
    );
    warden_tests::eventually(
        "the broken limit to be rejected",
        Duration::from_secs(10),
        || (rejected() > before).then_some(()),
    );
    assert_eq!(get(&mesh, "client-a", "/orders/1").status, 429);
    let log = mesh.proxy_log("productpage-v1").join("\n");
    assert!(
        log.contains("spec.limits[0].tokenBucket.fillInterval"),
        "the refusal names the field"
    );
}
