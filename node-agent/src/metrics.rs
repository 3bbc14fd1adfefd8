//! The agent's counters and gauges, updated by the manager and the endpoints. A leaf:
//! it knows nothing of the manager; [`crate::monitoring`] renders them with the
//! manager's state in the Prometheus text format.

use std::sync::atomic::{AtomicI64, AtomicU64};

use warden_common::prometheus::Histogram;

/// Bounds of the push-to-ACK histogram, seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters and gauges.
#[derive(Debug)]
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
    /// From receiving an SVID from the CA to the SDS client ACKing its push.
    pub push_ack: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            svid_refreshes: AtomicU64::default(),
            svid_refresh_failures: AtomicU64::default(),
            sds_pushes: AtomicU64::default(),
            sds_nacks: AtomicU64::default(),
            sds_streams: AtomicI64::default(),
            workload_api_streams: AtomicI64::default(),
            attestation_denied: AtomicU64::default(),
            entry_sync_failures: AtomicU64::default(),
            jwt_svids_minted: AtomicU64::default(),
            push_ack: Histogram::new(&BUCKETS),
        }
    }
}
