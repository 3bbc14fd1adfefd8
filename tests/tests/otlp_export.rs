//! The proxy's span export against an OTLP/gRPC receiver Warden did not write: the
//! TraceService stubs from PyPI `opentelemetry-proto` served by Python's grpcio
//! (`tests/interop/otlp_receiver.py`). A server span continuing the caller's W3C context
//! and its client child are exported through `warden_proxy::otlp::Exporter`; the
//! receiver's decoding of them must show the names, kinds, parent links, attributes and
//! resource sent. Needs `opentelemetry-proto` in `.venv` (or `$WARDEN_TEST_PYTHON`):
//! skipped loudly without it, a failure under CI=true.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking; env read here

use std::process::Command;
use std::time::Duration;

use http::HeaderMap;
use warden_proxy::otlp::{Exporter, ExporterConfig};
use warden_proxy::trace::{
    self, IstioAttributes, Sampler, Span, SpanKind, hex, operation_name, service_name,
};
use warden_tests::eventually::eventually;

use warden_tests::otlp::{python as otlp_python, receiver};

#[tokio::test]
async fn spans_reach_an_opentelemetry_receiver() {
    let Some(py) = otlp_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_receiver, port, out) = receiver(&py, tmp.path());

    let mut config = ExporterConfig::new(
        format!("http://127.0.0.1:{port}").parse().unwrap(),
        service_name("reviews", "bookinfo"),
    );
    config
        .resource
        .push(("k8s.namespace.name".into(), "bookinfo".into()));
    let (exporter, stats) = Exporter::start(config).unwrap();

    // The caller's W3C context (the spec's example), sampled, with vendor state.
    let mut incoming = HeaderMap::new();
    incoming.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    incoming.insert("tracestate", "rojo=00f067aa0ba902b7".parse().unwrap());
    let ctx = trace::extract(&incoming);
    let sampler = Sampler::new(1.0);
    let mut server = Span::start(
        SpanKind::Server,
        operation_name("reviews.bookinfo.svc.cluster.local", 9080),
        ctx.as_ref(),
        &sampler,
    );
    let mut client = server.child(
        SpanKind::Client,
        operation_name("ratings.bookinfo.svc.cluster.local", 9080),
    );
    let base = IstioAttributes {
        canonical_service: "reviews",
        canonical_revision: "v2",
        mesh_id: "cluster.local",
        namespace: "bookinfo",
        node_id: "sidecar~10.0.0.7~reviews-v2-abc.bookinfo~bookinfo.svc.cluster.local",
        request_id: Some("6d4e2c1a-0000-4000-8000-000000000001"),
        method: "GET",
        protocol: "HTTP/1.1",
        user_agent: Some("curl/8"),
        ..Default::default()
    };
    client.set_istio(&IstioAttributes {
        url: "http://ratings:9080/ratings/0",
        status_code: Some(503),
        peer_address: "10.0.0.7:51000",
        response_flags: "UF",
        upstream_cluster: Some("outbound|9080||ratings.bookinfo.svc.cluster.local"),
        source_principal: Some("spiffe://cluster.local/ns/bookinfo/sa/reviews"),
        destination_principal: Some("spiffe://cluster.local/ns/bookinfo/sa/ratings"),
        ..base.clone()
    });
    client.finish();
    server.set_istio(&IstioAttributes {
        url: "http://reviews:9080/reviews/0",
        status_code: Some(200),
        peer_address: "10.0.0.3:41234",
        response_size: 295,
        upstream_cluster: Some("inbound|9080||"),
        source_principal: Some("spiffe://cluster.local/ns/bookinfo/sa/productpage"),
        destination_principal: Some("spiffe://cluster.local/ns/bookinfo/sa/reviews"),
        ..base
    });
    server.finish();
    exporter.record(client.clone());
    exporter.record(server.clone());
    exporter.shutdown(Duration::from_secs(10)).await;
    assert_eq!(stats.snapshot(), (2, 0, 0, 1));

    let spans: Vec<serde_json::Value> =
        eventually("two spans at the receiver", Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let spans: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (spans.len() == 2).then_some(spans)
        });
    let by_kind = |kind: &str| {
        spans
            .iter()
            .find(|s| s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} span in {spans:?}"))
    };
    let (s, c) = (by_kind("SPAN_KIND_SERVER"), by_kind("SPAN_KIND_CLIENT"));

    // Names and the trace: the server span continues the caller's trace under the
    // caller's span; the client span is its child.
    assert_eq!(s["name"], "reviews.bookinfo.svc.cluster.local:9080/*");
    assert_eq!(c["name"], "ratings.bookinfo.svc.cluster.local:9080/*");
    assert_eq!(s["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(c["trace_id"], s["trace_id"]);
    assert_eq!(s["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(s["span_id"], hex(&server.span_id));
    assert_eq!(c["parent_span_id"], s["span_id"]);
    assert_eq!(c["span_id"], hex(&client.span_id));
    assert_eq!(s["trace_state"], "rojo=00f067aa0ba902b7");
    assert_eq!(s["flags"], 1);
    assert!(s["end_time_unix_nano"].as_u64() >= s["start_time_unix_nano"].as_u64());
    assert!(s["start_time_unix_nano"].as_u64().unwrap() > 1_600_000_000_000_000_000);

    // Istio's tags and the peers' identities.
    let (sa, ca) = (&s["attributes"], &c["attributes"]);
    assert_eq!(sa["istio.canonical_service"], "reviews");
    assert_eq!(sa["istio.canonical_revision"], "v2");
    assert_eq!(sa["istio.mesh_id"], "cluster.local");
    assert_eq!(sa["istio.namespace"], "bookinfo");
    assert_eq!(sa["component"], "proxy");
    assert_eq!(sa["http.method"], "GET");
    assert_eq!(sa["http.url"], "http://reviews:9080/reviews/0");
    assert_eq!(sa["http.status_code"], "200");
    assert_eq!(sa["response_size"], "295");
    assert_eq!(sa["response_flags"], "-");
    assert_eq!(sa["downstream_cluster"], "-");
    assert_eq!(sa["user_agent"], "curl/8");
    assert_eq!(
        sa["guid:x-request-id"],
        "6d4e2c1a-0000-4000-8000-000000000001"
    );
    assert_eq!(sa["upstream_cluster"], "inbound|9080||");
    assert_eq!(
        sa["warden.source_principal"],
        "spiffe://cluster.local/ns/bookinfo/sa/productpage"
    );
    assert_eq!(
        sa["warden.destination_principal"],
        "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    );
    assert!(sa.get("error").is_none(), "{sa}");
    assert_eq!(s["status"], "STATUS_CODE_UNSET");
    assert_eq!(ca["http.status_code"], "503");
    assert_eq!(ca["error"], "true");
    assert_eq!(ca["response_flags"], "UF");
    assert_eq!(
        ca["upstream_cluster.name"],
        "outbound|9080||ratings.bookinfo.svc.cluster.local"
    );
    assert_eq!(
        ca["warden.destination_principal"],
        "spiffe://cluster.local/ns/bookinfo/sa/ratings"
    );
    assert_eq!(c["status"], "STATUS_CODE_ERROR");

    // The resource and the instrumentation scope.
    for span in [s, c] {
        assert_eq!(span["resource"]["service.name"], "reviews.bookinfo");
        assert_eq!(span["resource"]["k8s.namespace.name"], "bookinfo");
        assert_eq!(span["scope"]["name"], "warden-proxy");
    }
}

/// Spans from the proxies themselves: curl (with the W3C example context) calls
/// Python's http.server through a client and a server `warden-proxy`, both exporting
/// to the receiver at 100% sampling. The client's span continues curl's trace, the
/// server's is the client's child, and the app sees the server span as its parent;
/// the access log carries the trace id. An unsampled request is passed on, not
/// exported.
#[test]
fn proxies_export_a_client_and_a_server_span_per_request() {
    use warden_tests::mesh::{Mesh, ServiceSpec, WorkloadSpec};
    let Some(py) = otlp_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_receiver, port, out) = receiver(&py, tmp.path());
    let endpoint = format!("http://127.0.0.1:{port}");
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload_spec(
            WorkloadSpec::new("web", "default", "web")
                .label("version", "v2")
                .without_apps(),
        )
        .service(ServiceSpec::new("web", "default").http(8080))
        .proxy_args(&[
            "--tracing-otlp-endpoint",
            &endpoint,
            "--tracing-sampling",
            "100",
            "--access-log-file",
            "/dev/stderr",
            "--access-log-encoding",
            "JSON",
        ])
        .start();
    let w = mesh.workload("web");
    let mut app = Command::new(&py);
    app.arg(warden_tests::interop_script("http_echo.py"))
        .arg(w.addr(w.ports["http"]).to_string())
        .arg("web");
    mesh.spawn_app(app);
    let proxy = format!("http://{}", mesh.workload("client").outbound());
    let url = mesh.url("web", "http", "/traced");
    let r = eventually("the app answers", Duration::from_secs(15), || {
        let r = warden_tests::curl(&[
            "--proxy",
            &proxy,
            "-H",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &url,
        ]);
        (r.status == 200).then_some(r)
    });
    let seen = r.json();
    let app_parent = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "traceparent")
        .map(|h| h[1].as_str().unwrap().to_string())
        .expect("the app got a traceparent");
    assert!(
        app_parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && app_parent.ends_with("-01"),
        "{app_parent}"
    );
    // An unsampled request: propagated with its decision, never exported.
    let r = warden_tests::curl(&[
        "--proxy",
        &proxy,
        "-H",
        "traceparent: 00-11111111111111111111111111111111-2222222222222222-00",
        &url,
    ]);
    assert_eq!(r.status, 200);
    // A malformed traceparent (a 31-digit trace id) starts a new trace: the app gets a
    // well-formed context of the proxies' making, not the client's bytes.
    let malformed = "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01";
    let r = warden_tests::curl(&[
        "--proxy",
        &proxy,
        "-H",
        &format!("traceparent: {malformed}"),
        &url,
    ]);
    assert_eq!(r.status, 200);
    let fresh = r.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "traceparent")
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    let parts: Vec<&str> = fresh[0].split('-').collect();
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[1..3].iter().all(|p| p
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            && parts[1] != "0".repeat(32)
            && !parts[1].starts_with("4bf92f3577b34da6a3ce929d0e0e473"),
        "{fresh:?}"
    );

    let spans = eventually("the proxies' spans", Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let spans: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|s: &serde_json::Value| s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
            .collect();
        (spans.len() >= 2).then_some(spans)
    });
    let client = spans
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .expect("a client span");
    let server = spans
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .expect("a server span");
    assert_eq!(client["parent_span_id"], "00f067aa0ba902b7", "{client}");
    assert_eq!(server["parent_span_id"], client["span_id"], "{server}");
    assert_eq!(
        app_parent.split('-').nth(2).unwrap(),
        server["span_id"].as_str().unwrap(),
        "the app's parent is the server span"
    );
    assert_eq!(client["name"], "web.default.svc.cluster.local:8080/*");
    assert_eq!(server["name"], "web.default.svc.cluster.local:8080/*");
    let (ca, sa) = (&client["attributes"], &server["attributes"]);
    assert_eq!(ca["istio.canonical_service"], "client");
    assert_eq!(sa["istio.canonical_service"], "web");
    assert_eq!(sa["istio.canonical_revision"], "v2");
    assert_eq!(sa["http.status_code"], "200");
    assert_eq!(sa["http.method"], "GET");
    assert_eq!(
        ca["upstream_cluster"],
        "outbound|8080||web.default.svc.cluster.local"
    );
    assert_eq!(
        sa["warden.source_principal"],
        mesh.workload("client").spiffe_id().as_str()
    );
    assert_eq!(
        ca["warden.destination_principal"],
        mesh.workload("web").spiffe_id().as_str()
    );
    assert_eq!(sa["warden.authz_decision"], "allow");
    assert_eq!(server["resource"]["service.name"], "web.default");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        !text.contains("11111111111111111111111111111111"),
        "an unsampled trace is not exported"
    );
    // The access log line names the trace.
    let line = eventually("web's access log line", Duration::from_secs(10), || {
        mesh.proxy_json("web")
            .into_iter()
            .find(|v| v["path"] == "/traced" && v["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
    });
    assert_eq!(line["direction"], "inbound");
}
