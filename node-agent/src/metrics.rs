//! The agent's metrics, hand-rendered in the Prometheus text format, and the
//! `/metrics`, `/ready`, `/healthz` endpoints on `--monitoring-addr`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::manager::Manager;

/// Bounds of the push-to-ACK histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// SVIDs received from the CA (first issue and refreshes).
    pub svid_refreshes: AtomicU64,
    /// Failed SVID requests.
    pub svid_refresh_failures: AtomicU64,
    /// SDS responses sent (replies and pushes).
    pub sds_pushes: AtomicU64,
    /// SDS NACKs received.
    pub sds_nacks: AtomicU64,
    /// Open SDS streams.
    pub sds_streams: AtomicI64,
    /// Open Workload API streams.
    pub workload_api_streams: AtomicI64,
    /// Callers refused because no entry matched them.
    pub attestation_denied: AtomicU64,
    /// Entry syncs that failed.
    pub entry_sync_failures: AtomicU64,
    /// JWT-SVIDs minted at the CA for callers.
    pub jwt_svids_minted: AtomicU64,
    ack_buckets: [AtomicU64; BUCKETS.len()],
    ack_count: AtomicU64,
    ack_sum_micros: AtomicU64,
    /// Ready: node attested and first entry sync done (workload mode: first SVID).
    pub ready: AtomicBool,
}

impl Metrics {
    /// Records the time from receiving an SVID from the CA to Envoy ACKing the push.
    pub fn observe_push_ack(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.ack_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.ack_count.fetch_add(1, Ordering::Relaxed);
        self.ack_sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Renders everything, including per-identity expiry from the manager's state.
    pub fn render(&self, manager: &Manager) -> String {
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
            l(&self.svid_refreshes),
        );
        c(
            &mut out,
            "warden_agent_svid_refresh_failures_total",
            "Failed X.509-SVID requests to the CA.",
            l(&self.svid_refresh_failures),
        );
        c(
            &mut out,
            "warden_agent_sds_pushes_total",
            "SDS responses sent.",
            l(&self.sds_pushes),
        );
        c(
            &mut out,
            "warden_agent_sds_nacks_total",
            "SDS NACKs received.",
            l(&self.sds_nacks),
        );
        c(
            &mut out,
            "warden_agent_attestation_denied_total",
            "Callers refused because no registration entry matched them.",
            l(&self.attestation_denied),
        );
        c(
            &mut out,
            "warden_agent_entry_sync_failures_total",
            "Failed registration-entry syncs.",
            l(&self.entry_sync_failures),
        );
        c(
            &mut out,
            "warden_agent_jwt_svids_minted_total",
            "JWT-SVIDs minted at the CA for callers.",
            l(&self.jwt_svids_minted),
        );
        g(
            &mut out,
            "warden_agent_sds_streams",
            "Open SDS streams.",
            self.sds_streams.load(Ordering::Relaxed),
        );
        g(
            &mut out,
            "warden_agent_workload_api_streams",
            "Open Workload API streams.",
            self.workload_api_streams.load(Ordering::Relaxed),
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
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += l(&self.ack_buckets[i]);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = l(&self.ack_count);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}",
            l(&self.ack_sum_micros) as f64 / 1e6
        );
        out
    }
}

/// Serves the monitoring endpoints until `shutdown` flips.
pub async fn serve(listener: TcpListener, manager: Arc<Manager>, shutdown: watch::Receiver<bool>) {
    use warden_common::monitoring::PROMETHEUS;
    let handler = move |path: &str| {
        let metrics = manager.metrics();
        match path {
            "/metrics" | "/stats/prometheus" => {
                (StatusCode::OK, PROMETHEUS, metrics.render(&manager))
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
