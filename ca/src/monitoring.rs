//! Prometheus metrics with istiod's names, and the `/metrics`, `/ready`, `/healthz`
//! HTTP endpoints on the monitoring port.
//!
//! The metrics are plain atomics rendered in the Prometheus text format, so counter
//! names stay exactly istiod's (`citadel_server_csr_count`, no `_total` suffix added).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The CA's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// CreateCertificate requests received.
    pub csr_count: AtomicU64,
    /// Certificates issued.
    pub success_cert_issuance_count: AtomicU64,
    /// Requests whose caller could not be authenticated.
    pub authentication_failure_count: AtomicU64,
    /// CSRs that did not parse.
    pub csr_parsing_err_count: AtomicU64,
    /// Refusals and failures after authentication, by error label.
    sign_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Earliest root expiry, unix seconds.
    pub root_cert_expiry_timestamp: AtomicI64,
    /// Earliest expiry along the signing chain, unix seconds.
    pub cert_chain_expiry_timestamp: AtomicI64,
    /// Time to check and sign a CSR.
    pub sign_duration: Histogram,
    /// Whole CreateCertificate handling, including the durable audit write.
    pub request_duration: Histogram,
    /// Audit/storage write failures.
    pub store_failure_count: AtomicU64,
    /// JWT-SVIDs issued.
    pub jwt_svid_issuance_count: AtomicU64,
}

impl Metrics {
    /// Counts a refusal or failure with an `error` label.
    pub fn sign_error(&self, label: &'static str) {
        if let Ok(mut m) = self.sign_errors.lock() {
            *m.entry(label).or_default() += 1;
        }
    }

    /// Renders all metrics in the Prometheus text format, with the store's commit
    /// counters when given.
    pub fn render(&self, commits: Option<&crate::store::CommitStats>) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "citadel_server_csr_count",
            "The number of CSRs received by the CA server.",
            &self.csr_count,
        );
        counter(
            &mut out,
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issuance that have succeeded.",
            &self.success_cert_issuance_count,
        );
        counter(
            &mut out,
            "citadel_server_authentication_failure_count",
            "The number of authentication failures.",
            &self.authentication_failure_count,
        );
        counter(
            &mut out,
            "citadel_server_csr_parsing_err_count",
            "The number of errors occurred when parsing the CSR.",
            &self.csr_parsing_err_count,
        );
        let _ = writeln!(
            out,
            "# HELP citadel_server_csr_sign_err_count The number of errors occurred when signing the CSR.\n\
             # TYPE citadel_server_csr_sign_err_count counter"
        );
        if let Ok(m) = self.sign_errors.lock() {
            for (label, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "citadel_server_csr_sign_err_count{{error=\"{label}\"}} {n}"
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: &AtomicI64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        gauge(
            &mut out,
            "citadel_server_root_cert_expiry_timestamp",
            "The unix timestamp, in seconds, when the root cert will expire.",
            &self.root_cert_expiry_timestamp,
        );
        gauge(
            &mut out,
            "citadel_server_cert_chain_expiry_timestamp",
            "The unix timestamp, in seconds, when the CA cert chain will expire.",
            &self.cert_chain_expiry_timestamp,
        );
        counter(
            &mut out,
            "warden_ca_jwt_svid_issuance_count",
            "The number of JWT-SVIDs issued.",
            &self.jwt_svid_issuance_count,
        );
        counter(
            &mut out,
            "warden_ca_store_failure_count",
            "Audit/storage writes that failed; the callers got errors and no certificate.",
            &self.store_failure_count,
        );
        if let Some(c) = commits {
            counter(
                &mut out,
                "warden_ca_store_commit_count",
                "Database transactions committed by the group-commit writer.",
                &c.commits,
            );
            counter(
                &mut out,
                "warden_ca_store_committed_ops_count",
                "Writes committed; divided by commits, the mean group-commit batch size.",
                &c.ops,
            );
        }
        self.sign_duration.render(
            &mut out,
            "warden_ca_sign_duration_seconds",
            "Time to check a CSR and sign the certificate.",
        );
        self.request_duration.render(
            &mut out,
            "warden_ca_create_certificate_duration_seconds",
            "Time to handle CreateCertificate, including the durable audit write.",
        );
        out
    }
}

/// Readiness: true while serving, false before start and while draining.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    /// Reads readiness.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves the monitoring endpoints until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    store: crate::store::Store,
    ready: std::sync::Arc<Readiness>,
    shutdown: watch::Receiver<bool>,
) {
    use warden_common::monitoring::PROMETHEUS;
    let handler = move |path: &str| match path {
        "/metrics" | "/stats/prometheus" => (
            StatusCode::OK,
            PROMETHEUS,
            metrics.render(Some(store.commit_stats())),
        ),
        "/ready" if ready.get() => (StatusCode::OK, "text/plain", "ready\n".into()),
        "/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    warden_common::monitoring::serve(listener, handler, shutdown).await;
}
