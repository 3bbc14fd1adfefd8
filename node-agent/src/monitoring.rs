//! The monitoring server on `--monitoring-addr`: `/metrics` (also
//! `/stats/prometheus`) in the Prometheus text format, `/ready` and `/healthz`. It
//! reads the counters of [`crate::metrics`] and the manager's state (entries,
//! identities, expiry), so the metrics module stays a leaf.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::manager::Manager;
use crate::metrics::{BUCKETS, Metrics};

/// Serves the monitoring endpoints until `shutdown` flips.
pub async fn serve(listener: TcpListener, manager: Arc<Manager>, shutdown: watch::Receiver<bool>) {
    use warden_common::monitoring::PROMETHEUS;
    let handler = move |path: &str| {
        let metrics = manager.metrics();
        match path {
            "/metrics" | "/stats/prometheus" => {
                (StatusCode::OK, PROMETHEUS, render(metrics, &manager))
            }
            "/ready" if metrics.ready.load(Ordering::SeqCst) => {
                (StatusCode::OK, "text/plain", "ready\n".into())
            }
            "/ready" => (
                StatusCode::SERVICE_UNAVAILABLE,
                PROMETHEUS,
                "not ready\n".into(),
            ),
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    };
    warden_common::monitoring::serve(listener, handler, shutdown).await;
}

/// Renders the metrics, with the entry and identity counts and the per-identity expiry
/// from the manager's state.
pub fn render(metrics: &Metrics, manager: &Manager) -> String {
    let mut out = String::new();
    let c = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    let g = |out: &mut String, name: &str, help: &str, v: i64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    c(
        &mut out,
        "warden_agent_svid_refreshes_total",
        "X.509-SVIDs received from the CA.",
        l(&metrics.svid_refreshes),
    );
    c(
        &mut out,
        "warden_agent_svid_refresh_failures_total",
        "Failed X.509-SVID requests to the CA.",
        l(&metrics.svid_refresh_failures),
    );
    c(
        &mut out,
        "warden_agent_sds_pushes_total",
        "SDS responses sent.",
        l(&metrics.sds_pushes),
    );
    c(
        &mut out,
        "warden_agent_sds_nacks_total",
        "SDS NACKs received.",
        l(&metrics.sds_nacks),
    );
    c(
        &mut out,
        "warden_agent_attestation_denied_total",
        "Callers refused because no registration entry matched them.",
        l(&metrics.attestation_denied),
    );
    c(
        &mut out,
        "warden_agent_entry_sync_failures_total",
        "Failed registration-entry syncs.",
        l(&metrics.entry_sync_failures),
    );
    c(
        &mut out,
        "warden_agent_jwt_svids_minted_total",
        "JWT-SVIDs minted at the CA for callers.",
        l(&metrics.jwt_svids_minted),
    );
    g(
        &mut out,
        "warden_agent_sds_streams",
        "Open SDS streams.",
        metrics.sds_streams.load(Ordering::Relaxed),
    );
    g(
        &mut out,
        "warden_agent_workload_api_streams",
        "Open Workload API streams.",
        metrics.workload_api_streams.load(Ordering::Relaxed),
    );
    let state = manager.state();
    g(
        &mut out,
        "warden_agent_entries",
        "Registration entries for this node.",
        i64::try_from(state.entries.len()).unwrap_or(i64::MAX),
    );
    g(
        &mut out,
        "warden_agent_identities",
        "Identities with a current X.509-SVID.",
        i64::try_from(state.svids.len()).unwrap_or(i64::MAX),
    );
    let name = "warden_agent_cert_expiry_timestamp_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} notAfter of the current X.509-SVID, per identity.\n# TYPE {name} gauge"
    );
    let mut ids: Vec<_> = state.svids.values().collect();
    ids.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    for svid in ids {
        let _ = writeln!(
            out,
            "{name}{{spiffe_id=\"{}\"}} {}",
            svid.id,
            svid.not_after_unix()
        );
    }
    if let Some(node) = manager.node_svid() {
        let name = "warden_agent_node_cert_expiry_timestamp_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} notAfter of the node SVID.\n# TYPE {name} gauge\n{name} {}",
            node.not_after_unix()
        );
    }
    let name = "warden_agent_sds_push_ack_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From receiving a rotated X.509-SVID to the SDS client ACKing it.\n# TYPE {name} histogram"
    );
    let ack = metrics.push_ack();
    let mut cumulative = 0;
    for (b, n) in BUCKETS.iter().zip(ack.buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let count = ack.count;
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}",
        ack.sum_micros as f64 / 1e6
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use warden_common::testing::TestCa;

    use super::*;
    use crate::ca_client::CaClient;
    use crate::config::{Mode, NodeCredential};
    use crate::manager::Settings;
    use crate::node::Node;
    use crate::rotation::RotationPolicy;

    /// The series names and the histogram's text, as the e2e tests and dashboards
    /// scrape them.
    #[tokio::test]
    async fn the_text_format_stays_as_scraped() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let client = CaClient::new("https://127.0.0.1:9", "localhost", ca.pem()).unwrap();
        let client = Arc::new(client);
        let ttl = Duration::from_secs(60);
        let node = Node::new(
            client.clone(),
            NodeCredential::None,
            dir.path(),
            "cluster.local",
            "n1",
            ttl,
            RotationPolicy::default(),
        )
        .unwrap();
        let settings = Settings {
            mode: Mode::Node,
            ttl,
            rotation: RotationPolicy::default(),
            sync_interval: ttl,
            write_dir: None,
        };
        let manager = Manager::new(client, Arc::new(node), settings, Arc::default());
        let metrics = manager.metrics();
        metrics.svid_refreshes.fetch_add(3, Ordering::Relaxed);
        metrics.observe_push_ack(Duration::from_millis(3));
        metrics.observe_push_ack(Duration::from_secs(10));
        let text = render(metrics, &manager);
        for series in [
            "warden_agent_svid_refreshes_total 3\n",
            "warden_agent_svid_refresh_failures_total 0\n",
            "warden_agent_sds_pushes_total 0\n",
            "warden_agent_sds_nacks_total 0\n",
            "warden_agent_attestation_denied_total 0\n",
            "warden_agent_entry_sync_failures_total 0\n",
            "warden_agent_jwt_svids_minted_total 0\n",
            "warden_agent_sds_streams 0\n",
            "warden_agent_workload_api_streams 0\n",
            "warden_agent_entries 0\n",
            "warden_agent_identities 0\n",
            "# TYPE warden_agent_cert_expiry_timestamp_seconds gauge\n",
        ] {
            assert!(text.contains(series), "{series:?} missing from\n{text}");
        }
        let histogram = "# TYPE warden_agent_sds_push_ack_seconds histogram
warden_agent_sds_push_ack_seconds_bucket{le=\"0.0005\"} 0
warden_agent_sds_push_ack_seconds_bucket{le=\"0.001\"} 0
warden_agent_sds_push_ack_seconds_bucket{le=\"0.002\"} 0
warden_agent_sds_push_ack_seconds_bucket{le=\"0.005\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"0.01\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"0.025\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"0.05\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"0.1\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"0.25\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"0.5\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"1\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"5\"} 1
warden_agent_sds_push_ack_seconds_bucket{le=\"+Inf\"} 2
warden_agent_sds_push_ack_seconds_sum 10.003
warden_agent_sds_push_ack_seconds_count 2
";
        assert!(text.ends_with(histogram), "{text}");
    }
}
