//! The monitoring server on `--monitoring-addr`: `/metrics` (also
//! `/stats/prometheus`) in the Prometheus text format (written with
//! `warden_common::prometheus`), `/ready` and `/healthz`. It reads the counters of
//! [`crate::metrics`] and the manager's state (entries, identities, expiry), so the
//! metrics module stays a leaf. `/ready` answers with the manager's readiness guards
//! (`warden_common::readiness`): 503 `not ready: waiting for: entry-sync` (node mode)
//! or `first-svid` (workload mode) until the first entry sync or SVID.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warden_common::prometheus::{Kind, Text};

use crate::manager::Manager;
use crate::metrics::Metrics;

/// Serves the monitoring endpoints until `shutdown` flips.
pub async fn serve(listener: TcpListener, manager: Arc<Manager>, shutdown: watch::Receiver<bool>) {
    use warden_common::monitoring::PROMETHEUS;
    let handler = move |path: &str| match path {
        "/metrics" | "/stats/prometheus" => (
            StatusCode::OK,
            PROMETHEUS,
            render(manager.metrics(), &manager),
        ),
        "/ready" => manager.ready().answer(),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    warden_common::monitoring::serve(listener, handler, shutdown).await;
}

/// Renders the metrics, with the entry and identity counts and the per-identity expiry
/// from the manager's state.
pub fn render(metrics: &Metrics, manager: &Manager) -> String {
    let mut out = Text::new();
    for (name, help, v) in [
        (
            "warden_agent_svid_refreshes_total",
            "X.509-SVIDs received from the CA.",
            &metrics.svid_refreshes,
        ),
        (
            "warden_agent_svid_refresh_failures_total",
            "Failed X.509-SVID requests to the CA.",
            &metrics.svid_refresh_failures,
        ),
        (
            "warden_agent_sds_pushes_total",
            "SDS responses sent.",
            &metrics.sds_pushes,
        ),
        (
            "warden_agent_sds_nacks_total",
            "SDS NACKs received.",
            &metrics.sds_nacks,
        ),
        (
            "warden_agent_attestation_denied_total",
            "Callers refused because no registration entry matched them.",
            &metrics.attestation_denied,
        ),
        (
            "warden_agent_entry_sync_failures_total",
            "Failed registration-entry syncs.",
            &metrics.entry_sync_failures,
        ),
        (
            "warden_agent_jwt_svids_minted_total",
            "JWT-SVIDs minted at the CA for callers.",
            &metrics.jwt_svids_minted,
        ),
    ] {
        out.counter(name, help, v.load(Ordering::Relaxed));
    }
    let state = manager.state();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    for (name, help, v) in [
        (
            "warden_agent_sds_streams",
            "Open SDS streams.",
            metrics.sds_streams.load(Ordering::Relaxed),
        ),
        (
            "warden_agent_workload_api_streams",
            "Open Workload API streams.",
            metrics.workload_api_streams.load(Ordering::Relaxed),
        ),
        (
            "warden_agent_entries",
            "Registration entries for this node.",
            count(state.entries.len()),
        ),
        (
            "warden_agent_identities",
            "Identities with a current X.509-SVID.",
            count(state.svids.len()),
        ),
    ] {
        out.gauge(name, help, v);
    }
    let name = "warden_agent_cert_expiry_timestamp_seconds";
    out.header(
        name,
        "notAfter of the current X.509-SVID, per identity.",
        Kind::Gauge,
    );
    let mut ids: Vec<_> = state.svids.values().collect();
    ids.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    for svid in ids {
        out.sample(
            name,
            &[("spiffe_id", svid.id.as_str())],
            svid.not_after_unix(),
        );
    }
    if let Some(node) = manager.node_svid() {
        out.gauge(
            "warden_agent_node_cert_expiry_timestamp_seconds",
            "notAfter of the node SVID.",
            node.not_after_unix(),
        );
    }
    out.histogram(
        "warden_agent_sds_push_ack_seconds",
        "From receiving a rotated X.509-SVID to the SDS client ACKing it.",
        &metrics.push_ack,
    );
    out.finish()
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
        metrics.push_ack.observe(Duration::from_millis(3));
        metrics.push_ack.observe(Duration::from_secs(10));
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
