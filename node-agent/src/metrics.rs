//! The agent's counters and gauges, updated by the manager and the endpoints. A leaf:
//! it knows nothing of the manager; [`crate::monitoring`] renders them with the
//! manager's state in the Prometheus text format.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Bounds of the push-to-ACK histogram, seconds.
pub const BUCKETS: [f64; 12] = [
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

    /// The push-to-ACK histogram as it is now: per-bucket counts (not cumulative) in
    /// the order of [`BUCKETS`], the count, and the sum in microseconds.
    pub fn push_ack(&self) -> PushAck {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PushAck {
            buckets: std::array::from_fn(|i| l(&self.ack_buckets[i])),
            count: l(&self.ack_count),
            sum_micros: l(&self.ack_sum_micros),
        }
    }
}

/// A reading of the push-to-ACK histogram ([`Metrics::push_ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushAck {
    /// Observations per bucket of [`BUCKETS`] (not cumulative).
    pub buckets: [u64; BUCKETS.len()],
    /// All observations.
    pub count: u64,
    /// Their sum, microseconds.
    pub sum_micros: u64,
}
