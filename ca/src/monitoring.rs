//! Prometheus metrics with istiod's names, and the `/metrics`, `/ready`, `/healthz`
//! HTTP endpoints on the monitoring port.
//!
//! The metrics are plain atomics rendered with `warden_common::prometheus`, so counter
//! names stay exactly istiod's (`citadel_server_csr_count`, no `_total` suffix added).
//! `/ready` names the readiness guards still held (`warden_common::readiness`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warden_common::prometheus::{Histogram, Kind, Text};
use warden_common::readiness::Ready;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The CA's metrics.
#[derive(Debug)]
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
    /// Requests refused by the node, identity and global limits.
    pub rate_limited: [AtomicU64; 3],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            csr_count: AtomicU64::default(),
            success_cert_issuance_count: AtomicU64::default(),
            authentication_failure_count: AtomicU64::default(),
            csr_parsing_err_count: AtomicU64::default(),
            sign_errors: Mutex::default(),
            root_cert_expiry_timestamp: AtomicI64::default(),
            cert_chain_expiry_timestamp: AtomicI64::default(),
            sign_duration: Histogram::new(&BUCKETS),
            request_duration: Histogram::new(&BUCKETS),
            store_failure_count: AtomicU64::default(),
            jwt_svid_issuance_count: AtomicU64::default(),
            rate_limited: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts a request refused by a limit.
    pub fn rate_limited(&self, limit: crate::limits::Limit) {
        let i = match limit {
            crate::limits::Limit::Node => 0,
            crate::limits::Limit::Identity => 1,
            crate::limits::Limit::Global => 2,
        };
        self.rate_limited[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal or failure with an `error` label.
    pub fn sign_error(&self, label: &'static str) {
        if let Ok(mut m) = self.sign_errors.lock() {
            *m.entry(label).or_default() += 1;
        }
    }

    /// Renders all metrics in the Prometheus text format, with the store's commit
    /// counters when given.
    pub fn render(&self, commits: Option<&crate::store::CommitStats>) -> String {
        let mut out = Text::new();
        let counters = |out: &mut Text, list: &[(&str, &str, &AtomicU64)]| {
            for (name, help, v) in list {
                out.counter(name, help, v.load(Ordering::Relaxed));
            }
        };
        counters(
            &mut out,
            &[
                (
                    "citadel_server_csr_count",
                    "The number of CSRs received by the CA server.",
                    &self.csr_count,
                ),
                (
                    "citadel_server_success_cert_issuance_count",
                    "The number of certificates issuance that have succeeded.",
                    &self.success_cert_issuance_count,
                ),
                (
                    "citadel_server_authentication_failure_count",
                    "The number of authentication failures.",
                    &self.authentication_failure_count,
                ),
                (
                    "citadel_server_csr_parsing_err_count",
                    "The number of errors occurred when parsing the CSR.",
                    &self.csr_parsing_err_count,
                ),
            ],
        );
        let name = "citadel_server_csr_sign_err_count";
        out.header(
            name,
            "The number of errors occurred when signing the CSR.",
            Kind::Counter,
        );
        if let Ok(m) = self.sign_errors.lock() {
            for (label, n) in m.iter() {
                out.sample(name, &[("error", label)], n);
            }
        }
        for (name, help, v) in [
            (
                "citadel_server_root_cert_expiry_timestamp",
                "The unix timestamp, in seconds, when the root cert will expire.",
                &self.root_cert_expiry_timestamp,
            ),
            (
                "citadel_server_cert_chain_expiry_timestamp",
                "The unix timestamp, in seconds, when the CA cert chain will expire.",
                &self.cert_chain_expiry_timestamp,
            ),
        ] {
            out.gauge(name, help, v.load(Ordering::Relaxed));
        }
        counters(
            &mut out,
            &[
                (
                    "warden_ca_jwt_svid_issuance_count",
                    "The number of JWT-SVIDs issued.",
                    &self.jwt_svid_issuance_count,
                ),
                (
                    "warden_ca_store_failure_count",
                    "Audit/storage writes that failed; the callers got errors and no certificate.",
                    &self.store_failure_count,
                ),
            ],
        );
        let name = "warden_ca_rate_limited_count";
        out.header(
            name,
            "Certificate requests refused with RESOURCE_EXHAUSTED, by limit.",
            Kind::Counter,
        );
        for (i, limit) in ["node", "identity", "global"].into_iter().enumerate() {
            out.sample(
                name,
                &[("limit", limit)],
                self.rate_limited[i].load(Ordering::Relaxed),
            );
        }
        if let Some(c) = commits {
            counters(
                &mut out,
                &[
                    (
                        "warden_ca_store_commit_count",
                        "Database transactions committed by the group-commit writer.",
                        &c.commits,
                    ),
                    (
                        "warden_ca_store_committed_ops_count",
                        "Writes committed; divided by commits, the mean group-commit batch size.",
                        &c.ops,
                    ),
                ],
            );
        }
        out.histogram(
            "warden_ca_sign_duration_seconds",
            "Time to check a CSR and sign the certificate.",
            &self.sign_duration,
        );
        out.histogram(
            "warden_ca_create_certificate_duration_seconds",
            "Time to handle CreateCertificate, including the durable audit write.",
            &self.request_duration,
        );
        out.finish()
    }
}

/// Serves the monitoring endpoints until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    store: crate::store::Store,
    ready: Ready,
    crl: Option<watch::Receiver<std::sync::Arc<String>>>,
    federation: Option<std::sync::Arc<crate::federation::Federation>>,
    shutdown: watch::Receiver<bool>,
) {
    use warden_common::monitoring::PROMETHEUS;
    let handler = move |path: &str| match path {
        "/metrics" | "/stats/prometheus" => (
            StatusCode::OK,
            PROMETHEUS,
            metrics.render(Some(store.commit_stats())),
        ),
        "/ready" => ready.answer(),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        // The CRLs (X.509 v2, PEM): public, like the bundle; signed, so plain HTTP is
        // as good as the CRL distribution points of public CAs.
        "/crl.pem" => match &crl {
            Some(rx) => (
                StatusCode::OK,
                "application/x-pem-file",
                rx.borrow().as_str().to_string(),
            ),
            None => (StatusCode::NOT_FOUND, "text/plain", "no CRLs\n".into()),
        },
        // Each federated trust domain: endpoint, last success, last error, what is held.
        "/federation" => match &federation {
            Some(f) => (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&f.status()).unwrap_or_default() + "\n",
            ),
            None => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "no federation (--federates-with)\n".into(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    warden_common::monitoring::serve(listener, handler, shutdown).await;
}
