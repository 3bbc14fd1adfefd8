//! Authentication failures in the audit log, bounded: a flood of unauthenticated
//! requests is counted in full but cannot grow the log without bound.
//!
//! In each minute the first [`INDIVIDUAL_PER_WINDOW`] failures get a row each, as any
//! denial does. Later ones in the same minute are folded into one aggregate row per
//! (event, reason), written when the minute ends (or at shutdown), with the count, the
//! window and a sample of the peers: `outcome: denied`, `detail.aggregated: true`. At
//! most [`MAX_AGGREGATES`] reasons are kept apart; the rest share one row. So the log
//! grows by at most 100 + 65 rows a minute however hard it is hit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{AuditEvent, Store};

/// Failures audited one by one per window.
pub const INDIVIDUAL_PER_WINDOW: u32 = 100;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Reasons kept apart in the aggregates.
pub const MAX_AGGREGATES: usize = 64;
/// Peers sampled per aggregate.
const SAMPLE_PEERS: usize = 10;

#[derive(Debug, Default)]
struct Aggregate {
    count: u64,
    peers: BTreeSet<String>,
}

#[derive(Debug)]
struct State {
    started: Instant,
    started_wall: time::OffsetDateTime,
    individual: u32,
    aggregates: BTreeMap<(&'static str, String), Aggregate>,
}

impl State {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            started_wall: time::OffsetDateTime::now_utc(),
            individual: 0,
            aggregates: BTreeMap::new(),
        }
    }
}

/// The bound on authentication-failure rows.
#[derive(Debug)]
pub struct FloodGuard {
    state: Mutex<State>,
}

impl Default for FloodGuard {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::new()),
        }
    }
}

impl FloodGuard {
    /// Whether this failure gets a row of its own now; if not, it is counted for the
    /// window's aggregate.
    pub fn admit(&self, event: &'static str, reason: &str, peer: &str) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        if s.individual < INDIVIDUAL_PER_WINDOW {
            s.individual += 1;
            return true;
        }
        let key = if s.aggregates.len() < MAX_AGGREGATES
            || s.aggregates.contains_key(&(event, reason.to_string()))
        {
            (event, reason.to_string())
        } else {
            (event, "other reasons".to_string())
        };
        let agg = s.aggregates.entry(key).or_default();
        agg.count += 1;
        // Addresses without the port: one client is one sample.
        let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h).to_string();
        if agg.peers.len() < SAMPLE_PEERS {
            agg.peers.insert(host);
        }
        false
    }

    /// Ends the window if it is over (or `force`): the aggregate rows to write.
    pub fn take(&self, force: bool) -> Vec<AuditEvent> {
        let Ok(mut s) = self.state.lock() else {
            return Vec::new();
        };
        if !force && s.started.elapsed() < WINDOW {
            return Vec::new();
        }
        let ended = std::mem::replace(&mut *s, State::new());
        let from = ended.started_wall.unix_timestamp();
        let to = time::OffsetDateTime::now_utc().unix_timestamp();
        ended
            .aggregates
            .into_iter()
            .map(|((event, reason), agg)| AuditEvent {
                event,
                outcome: "denied",
                identity: String::new(),
                requester: "unauthenticated".into(),
                peer_addr: format!("{} peers", agg.peers.len()),
                detail: serde_json::json!({
                    "aggregated": true,
                    "count": agg.count,
                    "reason": reason,
                    "from": from,
                    "to": to,
                    "sample_peers": agg.peers,
                }),
            })
            .collect()
    }

    /// Writes the aggregates every window and at shutdown.
    pub async fn run(
        self: std::sync::Arc<Self>,
        store: Store,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let force = tokio::select! {
                _ = tokio::time::sleep(WINDOW / 4) => false,
                _ = shutdown.changed() => true,
            };
            for event in self.take(force) {
                if let Err(e) = store.audit(event).await {
                    tracing::error!(error = %e, "cannot record aggregated denials in the audit log");
                }
            }
            if force {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_counted_in_a_bounded_number_of_rows() {
        let g = FloodGuard::default();
        let mut individual = 0;
        for i in 0..1000 {
            let reason = if i % 2 == 0 {
                "bad token"
            } else {
                "no credentials"
            };
            if g.admit(
                "cert.denied",
                reason,
                &format!("10.0.0.{}:{}", i % 20, 40000 + i),
            ) {
                individual += 1;
            }
        }
        assert_eq!(individual, INDIVIDUAL_PER_WINDOW);
        // Not yet: the minute is not over.
        assert!(g.take(false).is_empty());
        tokio::time::advance(WINDOW).await;
        let rows = g.take(false);
        assert_eq!(rows.len(), 2);
        let total: u64 = rows
            .iter()
            .map(|r| r.detail["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 900);
        assert!(rows.iter().all(|r| r.detail["aggregated"] == true));
        assert!(rows[0].detail["sample_peers"].as_array().unwrap().len() <= SAMPLE_PEERS);
        // A new window starts with individual rows again.
        assert!(g.admit("cert.denied", "bad token", "10.0.0.1:1"));
    }

    #[tokio::test(start_paused = true)]
    async fn many_reasons_share_one_row_beyond_the_bound() {
        let g = FloodGuard::default();
        for i in 0..(INDIVIDUAL_PER_WINDOW as usize + 500) {
            g.admit("cert.denied", &format!("reason {i}"), "10.0.0.1:1");
        }
        let rows = g.take(true);
        assert_eq!(rows.len(), MAX_AGGREGATES + 1);
        assert!(rows.iter().any(|r| r.detail["reason"] == "other reasons"));
    }
}
