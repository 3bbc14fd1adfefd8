//! Backpressure for certificate requests: a token bucket per node and per identity, and
//! a bound on the requests the CA works on at once with a bounded queue in front.
//!
//! A refusal is `RESOURCE_EXHAUSTED` with gRPC's retry pushback header
//! (`grpc-retry-pushback-ms`, gRPC proposal A6) saying when a retry can succeed; the node
//! agent waits at least that long, jittered. Nothing waits without bound: a request
//! either gets a slot within [`LimitSettings::queue_timeout`] or is refused with a hint.
//! A mass restart is therefore served at the CA's own rate, and one node flooding
//! requests empties its own bucket, not the others'.
//!
//! The "node" of a request is the node the caller proves (a node SVID or join token, the
//! node of a Kubernetes token's bound pod); a caller with no node (an istio-agent with
//! its service-account token and no bound node) is its own key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;

/// gRPC's retry pushback header: milliseconds the client should wait.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";
/// Keys kept per bucket map before idle (full) buckets are dropped.
const MAX_KEYS: usize = 100_000;

/// A rate: `per_second` tokens refilled, at most `burst` stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per second; 0 turns the limit off.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

/// The limits' settings (flags `--csr-node-rate`, `--csr-identity-rate`,
/// `--max-concurrent-csrs`, `--max-queued-csrs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSettings {
    /// Per node (or caller without a node).
    pub per_node: Rate,
    /// Per identity issued.
    pub per_identity: Rate,
    /// Requests worked on at once.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; more are refused at once.
    pub max_queued: usize,
    /// Longest wait for a slot before a refusal.
    pub queue_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_node: Rate {
                per_second: 200.0,
                burst: 1000.0,
            },
            per_identity: Rate {
                per_second: 100.0,
                burst: 1000.0,
            },
            max_concurrent: 256,
            max_queued: 4096,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

/// Which limit refused a request (the metric's `limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The caller's node bucket.
    Node,
    /// The identity's bucket.
    Identity,
    /// The concurrency bound and its queue.
    Global,
}

impl Limit {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Identity => "identity",
            Self::Global => "global",
        }
    }
}

/// A refusal: which limit, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The limit.
    pub limit: Limit,
    /// The key it applied to (node or identity; empty for the global bound).
    pub key: String,
    /// When a retry can succeed.
    pub retry_after: Duration,
}

impl Refused {
    /// `RESOURCE_EXHAUSTED` with the retry pushback header and a message naming the
    /// limit.
    pub fn status(&self) -> Status {
        let ms = self.retry_after.as_millis().max(1);
        let what = match self.limit {
            Limit::Node => format!("node {} is over its certificate request rate", self.key),
            Limit::Identity => {
                format!("identity {} is over its certificate request rate", self.key)
            }
            Limit::Global => "the CA is at its concurrent request limit".to_string(),
        };
        let mut status = Status::resource_exhausted(format!("{what}; retry after {ms} ms"));
        if let Ok(v) = ms.to_string().parse() {
            status.metadata_mut().insert(RETRY_PUSHBACK, v);
        }
        status
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct Buckets {
    rate: Rate,
    map: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    /// Buckets of `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        if self.rate.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut map) = self.map.lock() else {
            // A panicked holder: fail open for rate (the global bound still holds).
            return Ok(());
        };
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            // Drop the buckets that have refilled: they are as good as absent.
            let rate = self.rate;
            map.retain(|_, b| refill(rate, b, now) < rate.burst);
        }
        // Look up before inserting: no key is allocated for a caller already known.
        if !map.contains_key(key) {
            map.insert(
                key.to_string(),
                Bucket {
                    tokens: self.rate.burst,
                    at: now,
                },
            );
        }
        let Some(bucket) = map.get_mut(key) else {
            return Ok(());
        };
        let tokens = refill(self.rate, bucket, now);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64(
                (1.0 - tokens) / self.rate.per_second,
            ))
        }
    }
}

/// Refills `b` up to now; returns its tokens.
fn refill(rate: Rate, b: &mut Bucket, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rate.per_second).min(rate.burst);
    b.at = now;
    b.tokens
}

/// The CA's limits.
#[derive(Debug)]
pub struct Limits {
    settings: LimitSettings,
    nodes: Buckets,
    identities: Buckets,
    slots: std::sync::Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// A slot among the concurrent requests; released when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Limits {
    /// Limits with `settings`.
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            nodes: Buckets::new(settings.per_node),
            identities: Buckets::new(settings.per_identity),
            slots: std::sync::Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            settings,
        }
    }

    /// Charges one request of `node` for `identity` to their buckets.
    pub fn charge(&self, node: &str, identity: &str) -> Result<(), Refused> {
        self.nodes.take(node).map_err(|retry_after| Refused {
            limit: Limit::Node,
            key: node.to_string(),
            retry_after,
        })?;
        self.identities
            .take(identity)
            .map_err(|retry_after| Refused {
                limit: Limit::Identity,
                key: identity.to_string(),
                retry_after,
            })
    }

    /// Waits for a slot: at once when one is free, in the queue while it has room and
    /// for at most the queue timeout; otherwise refused with a hint that grows with the
    /// queue.
    pub async fn slot(&self) -> Result<Slot, Refused> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot(p));
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&self.waiting);
        let refused = || Refused {
            limit: Limit::Global,
            key: String::new(),
            // Roughly how long the queue ahead takes to drain: a tenth of a second per
            // round of the concurrency bound, at least 100 ms, at most 10 s.
            retry_after: Duration::from_millis(
                100u64.saturating_mul(
                    1 + u64::try_from(waiting / self.settings.max_concurrent.max(1))
                        .unwrap_or(u64::MAX),
                ),
            )
            .min(Duration::from_secs(10)),
        };
        if waiting >= self.settings.max_queued {
            return Err(refused());
        }
        match tokio::time::timeout(
            self.settings.queue_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => Ok(Slot(p)),
            _ => Err(refused()),
        }
    }
}

struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate_and_says_when() {
        let b = Buckets::new(rate(2.0, 3.0));
        for _ in 0..3 {
            b.take("node-a").unwrap();
        }
        let wait = b.take("node-a").unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another key has its own bucket.
        b.take("node-b").unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        b.take("node-a").unwrap();
        assert!(b.take("node-a").is_err());
        // A rate of 0 is no limit.
        let off = Buckets::new(rate(0.0, 0.0));
        for _ in 0..1000 {
            off.take("x").unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_carry_the_pushback_header_and_name_the_limit() {
        let limits = Limits::new(LimitSettings {
            per_node: rate(1.0, 1.0),
            per_identity: rate(1.0, 2.0),
            ..LimitSettings::default()
        });
        limits.charge("node-a", "spiffe://td/ns/a/sa/x").unwrap();
        let r = limits
            .charge("node-a", "spiffe://td/ns/a/sa/x")
            .unwrap_err();
        assert_eq!(r.limit, Limit::Node);
        let s = r.status();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_PUSHBACK).unwrap(), "1000");
        assert!(s.message().contains("node node-a"), "{}", s.message());
        limits.charge("node-b", "spiffe://td/ns/a/sa/x").unwrap();
        let r = limits
            .charge("node-c", "spiffe://td/ns/a/sa/x")
            .unwrap_err();
        assert_eq!(r.limit, Limit::Identity);
        assert!(
            r.status()
                .message()
                .contains("identity spiffe://td/ns/a/sa/x")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_and_waits_are_bounded() {
        let limits = std::sync::Arc::new(Limits::new(LimitSettings {
            max_concurrent: 1,
            max_queued: 1,
            queue_timeout: Duration::from_secs(2),
            ..LimitSettings::default()
        }));
        let held = limits.slot().await.unwrap();
        // One may wait...
        let waiter = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.slot().await.map(drop) })
        };
        tokio::task::yield_now().await;
        // ...a second is refused at once, with a hint.
        let r = limits.slot().await.unwrap_err();
        assert_eq!(r.limit, Limit::Global);
        assert!(r.retry_after >= Duration::from_millis(100));
        // The waiter gets the slot when it is freed.
        drop(held);
        waiter.await.unwrap().unwrap();
        // A wait longer than the timeout is refused, not left hanging.
        let _held = limits.slot().await.unwrap();
        let started = Instant::now();
        assert!(limits.slot().await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_buckets_are_dropped_when_the_map_is_full() {
        let b = Buckets::new(rate(1000.0, 1.0));
        for i in 0..MAX_KEYS {
            b.take(&format!("k{i}")).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        b.take("new").unwrap();
        assert_eq!(b.map.lock().unwrap().len(), 1);
    }
}
