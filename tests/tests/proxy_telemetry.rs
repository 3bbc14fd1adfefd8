//! Telemetry end to end: curl (a client no one here wrote) calls Python's
//! `http.server` through two `warden-proxy`s; each proxy writes Istio's JSON access
//! log to its stderr, counts Istio's metrics (body sizes included) and serves the
//! admin port. `promtool` (Prometheus's own checker) reads the metrics when it is
//! installed (`./test.sh` installs it; under CI=true it must be there).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::process::Command;
use std::time::Duration;

use warden_tests::mesh::{Mesh, ServiceSpec, WorkloadSpec, metric_sum};
use warden_tests::{curl, eventually, grpcio_python, http_get, interop_script};

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to:
    - operation: {methods: [DELETE]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: client-only, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/client]}
"#;

/// The access-log lines (JSON objects with `start_time`) proxy `name` wrote so far.
fn access_lines(mesh: &Mesh, name: &str) -> Vec<serde_json::Value> {
    mesh.proxy_json(name)
        .into_iter()
        .filter(|v| v.get("start_time").is_some() && v.get("response_code").is_some())
        .collect()
}

fn line_where(
    mesh: &Mesh,
    name: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(what, Duration::from_secs(10), || {
        access_lines(mesh, name).into_iter().find(|v| f(v))
    })
}

/// An HTTP request to the admin port: (status, body).
fn admin(addr: &str, method: &str, path: &str) -> (u16, String) {
    let r = curl(&["-X", method, &format!("http://{addr}{path}")]);
    if r.status == 0 {
        return (0, r.stderr);
    }
    (r.status, r.body)
}

#[test]
fn access_logs_metrics_and_the_admin_port_tell_what_happened() {
    let Some(py) = grpcio_python("access logs in front of Python's http.server") else {
        return;
    };
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload_spec(WorkloadSpec::new("web", "default", "web").without_apps())
        .service(ServiceSpec::new("web", "default").http(8080))
        .config("policy.yaml", POLICY)
        .proxy_args(&[
            "--access-log-file",
            "/dev/stderr",
            "--access-log-encoding",
            "JSON",
        ])
        .start();
    let w = mesh.workload("web");
    let mut app = Command::new(&py);
    app.arg(interop_script("http_echo.py"))
        .arg(w.addr(w.ports["http"]).to_string())
        .arg("web");
    mesh.spawn_app(app);
    let proxy = format!("http://{}", mesh.workload("client").outbound());
    let url = mesh.url("web", "http", "/items?x=1");

    // A GET, a POST with a 1000-byte body, a DELETE the policy denies.
    let get = eventually("the app answers", Duration::from_secs(15), || {
        let r = curl(&["--proxy", &proxy, "-H", "user-agent: telemetry-test", &url]);
        (r.status == 200).then_some(r)
    });
    assert!(
        get.body.contains("\"method\": \"GET\"") || get.body.contains("GET"),
        "{}",
        get.body
    );
    let body = "x".repeat(1000);
    let post = curl(&[
        "--proxy",
        &proxy,
        "-X",
        "POST",
        "--data-binary",
        &body,
        &url,
    ]);
    assert_eq!(post.status, 200, "{}", post.body);
    let delete = curl(&["--proxy", &proxy, "-X", "DELETE", &url]);
    assert_eq!(delete.status, 403, "{}", delete.body);
    assert_eq!(delete.body, "RBAC: access denied");
    // A caller's header that tries to forge the line's fields: quotes and backslashes
    // past the first 16 bytes, a JSON fragment claiming the request was denied.
    let forged = r#"curl/8 (forged) pad-pad-pad "},"authz_decision":"deny","x":{"\"#;
    let forged_ua = format!("user-agent: {forged}");
    let hostile = curl(&["--proxy", &proxy, "-H", &forged_ua, &url]);
    assert_eq!(hostile.status, 200, "{}", hostile.body);

    let client_id = mesh.workload("client").spiffe_id();
    let web_id = mesh.workload("web").spiffe_id();

    // The server's line for the GET: Istio's fields, Warden's decision.
    let inbound_get = line_where(&mesh, "web", "web's line for the GET", |v| {
        v["method"] == "GET" && v["user_agent"] == "telemetry-test"
    });
    assert_eq!(inbound_get["direction"], "inbound");
    assert_eq!(inbound_get["path"], "/items?x=1");
    assert_eq!(inbound_get["protocol"], "HTTP/1.1");
    assert_eq!(inbound_get["response_code"], 200);
    assert_eq!(inbound_get["response_flags"], "-");
    assert_eq!(inbound_get["response_code_details"], "via_upstream");
    assert_eq!(inbound_get["source_principal"], client_id.as_str());
    assert_eq!(inbound_get["destination_principal"], web_id.as_str());
    assert_eq!(inbound_get["destination_workload"], "web");
    assert_eq!(
        inbound_get["destination_service"],
        "web.default.svc.cluster.local"
    );
    // Inbound, the port is the app's (targetPort), as Istio's policies see it.
    let app_port = w.ports["http"];
    assert_eq!(inbound_get["destination_port"], app_port);
    assert_eq!(inbound_get["authz_decision"], "allow");
    assert_eq!(inbound_get["authz_policy"], "default/client-only");
    assert_eq!(inbound_get["authz_rule"], 0);
    assert_eq!(inbound_get["authz_workload"], "default/web");
    assert_eq!(
        inbound_get["upstream_cluster"],
        format!("inbound|{app_port}||").as_str()
    );
    assert_eq!(
        inbound_get["upstream_host"],
        w.addr(w.ports["http"]).to_string().as_str()
    );
    assert!(
        inbound_get["bytes_sent"].as_u64().unwrap() > 100,
        "{inbound_get}"
    );
    assert!(inbound_get["duration"].is_u64(), "{inbound_get}");
    assert!(
        inbound_get["requested_server_name"]
            .as_str()
            .unwrap()
            .starts_with("outbound_.8080_._.web"),
        "{inbound_get}"
    );
    let start = inbound_get["start_time"].as_str().unwrap();
    assert!(start.ends_with('Z') && start.len() == 24, "{start}");

    // The client's line for the same request: the same request id (the client's
    // proxy made it), the cluster and endpoint it chose, no decision.
    let id = inbound_get["request_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");
    let outbound_get = line_where(&mesh, "client", "client's line for the GET", |v| {
        v["request_id"] == id.as_str()
    });
    assert_eq!(outbound_get["direction"], "outbound");
    assert_eq!(
        outbound_get["upstream_cluster"],
        "outbound|8080||web.default.svc.cluster.local"
    );
    assert_eq!(
        outbound_get["upstream_host"],
        w.inbound().to_string().as_str()
    );
    assert_eq!(outbound_get["route_name"], "default");
    assert_eq!(outbound_get["authz_decision"], serde_json::Value::Null);
    assert_eq!(outbound_get["destination_principal"], web_id.as_str());

    // Body bytes, as they went through.
    let post_line = line_where(&mesh, "web", "web's line for the POST", |v| {
        v["method"] == "POST"
    });
    assert_eq!(post_line["bytes_received"], 1000);

    // The denial names the policy and rule, as Envoy's RBAC detail does.
    let denied = line_where(&mesh, "web", "web's line for the DELETE", |v| {
        v["method"] == "DELETE"
    });
    assert_eq!(denied["response_code"], 403);
    assert_eq!(denied["authz_decision"], "deny");
    // The forged header is a string in a line that still parses, and changed nothing.
    let forged_line = line_where(&mesh, "web", "web's line for the forged header", |v| {
        v["user_agent"] == forged
    });
    assert_eq!(forged_line["authz_decision"], "allow", "{forged_line}");
    assert_eq!(forged_line["method"], "GET", "{forged_line}");
    assert_eq!(forged_line.get("x"), None, "{forged_line}");
    assert_eq!(denied["authz_policy"], "default/no-delete");
    assert_eq!(
        denied["response_code_details"],
        "rbac_access_denied_matched_policy[ns[default]-policy[no-delete]-rule[0]]"
    );
    assert_eq!(denied["bytes_sent"], 19);

    // Metrics: sizes and the denial, on the server's proxy.
    let metrics = mesh.metrics("web");
    let sizes = [
        ("reporter", "destination"),
        ("source_principal", client_id.as_str()),
    ];
    assert!(
        metric_sum(&metrics, "istio_request_bytes_sum", &sizes) >= 1000.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "istio_response_bytes_count", &sizes) >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_code", "403")]
        ),
        1.0
    );
    assert!(
        metrics.contains("warden_access_log_written_total"),
        "{metrics}"
    );
    promtool_accepts(&metrics);

    // The admin port.
    let admin_addr = format!("{}:15000", w.ip);
    let (code, dump) = admin(&admin_addr, "GET", "/config_dump");
    assert_eq!(code, 200, "{dump}");
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["workload"]["name"], "web");
    assert_eq!(
        v["certificates"]["certificates"][0]["spiffe_id"],
        web_id.as_str()
    );
    assert!(
        v["config"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "AuthorizationPolicy" && r["name"] == "default/no-delete"),
        "{dump}"
    );
    assert!(
        v["registry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["host"] == "web.default.svc.cluster.local")
    );
    assert!(
        !dump.contains("PRIVATE KEY") && !dump.contains("BEGIN"),
        "keys never shown"
    );
    let (code, stats) = admin(&admin_addr, "GET", "/stats");
    assert_eq!(code, 200);
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.contains("}: ")),
        "{stats}"
    );
    assert_eq!(admin(&admin_addr, "GET", "/ready").0, 200);
    let (code, body) = admin(&admin_addr, "POST", "/logging?level=debug");
    assert_eq!(code, 200, "{body}");
    let (_, level) = admin(&admin_addr, "GET", "/logging");
    assert!(level.contains("\"debug\""), "{level}");
    let (code, body) = admin(&admin_addr, "POST", "/logging?level=warden%3D%3Dnope");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("is not a log filter"), "{body}");
    // Found by the admin_api fuzz target: `%+1` decoded as a byte, and bytes that were
    // not UTF-8 applied as U+FFFD. Both are refused.
    for bad in ["/logging?level=%+1", "/logging?level=warden%3D%FF"] {
        let (code, body) = admin(&admin_addr, "POST", bad);
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (_, level) = admin(&admin_addr, "GET", "/logging");
    assert!(
        level.contains("\"debug\""),
        "a bad filter changes nothing: {level}"
    );
    assert_eq!(admin(&admin_addr, "DELETE", "/config_dump").0, 405);
    assert_eq!(admin(&admin_addr, "GET", "/nope").0, 404);
    let (_, ready) = http_get(&admin_addr, "/ready");
    assert!(ready.contains("ready"), "{ready}");
}

/// `promtool check metrics` on `text`: Prometheus's own reading of the exposition.
fn promtool_accepts(text: &str) {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("promtool is required under CI=true (./test.sh installs Debian's prometheus)");
        }
        eprintln!("SKIPPED: promtool not installed (apt install prometheus)");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every problem promtool names must be Istio's own naming: its duration histogram
    // is in milliseconds by name (`istio_request_duration_milliseconds`), which the
    // base-unit lint flags for Istio and Envoy as well.
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !(l.starts_with("istio_request_duration_milliseconds ")
                && l.contains("use base unit \"seconds\" instead of \"milliseconds\""))
        })
        .collect();
    assert!(problems.is_empty(), "promtool check metrics: {said}");
}
