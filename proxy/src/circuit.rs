//! Circuit breaking by a DestinationRule's `connectionPool`, as Envoy's cluster
//! circuit breakers do it for a sidecar: toward one destination (host, subset, port),
//! HTTP/1.1 has at most `tcp.maxConnections` requests on the wire (one a connection)
//! and at most `http.http1MaxPendingRequests` waiting for one; HTTP/2 at most
//! `http.http2MaxRequests` at once. Beyond that the request is answered at once with
//! 503 and response flag `UO` (upstream overflow), and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Requests at once on the wire.
    pub active: usize,
    /// Requests that may wait for one of those slots.
    pub pending: usize,
}

impl Limits {
    /// The limits a traffic policy sets for HTTP/1.1 (`h2` false) or HTTP/2; `None`
    /// when it sets none (Envoy's defaults are effectively unlimited).
    pub fn from_policy(policy: &Value, h2: bool) -> Option<Self> {
        let n = |ptr: &str| {
            policy
                .pointer(ptr)
                .and_then(Value::as_u64)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        if h2 {
            let max = n("/connectionPool/http/http2MaxRequests")?;
            return Some(Self {
                active: max.max(1),
                pending: 0,
            });
        }
        let conns = n("/connectionPool/tcp/maxConnections");
        let pending = n("/connectionPool/http/http1MaxPendingRequests");
        if conns.is_none() && pending.is_none() {
            return None;
        }
        Some(Self {
            active: conns.unwrap_or(usize::MAX >> 4).max(1),
            pending: pending.unwrap_or(usize::MAX >> 4),
        })
    }
}

#[derive(Debug)]
struct Breaker {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    pending: usize,
}

/// The breakers of every destination, by key.
#[derive(Debug, Default)]
pub struct Circuits {
    breakers: Mutex<HashMap<(String, Limits), Arc<Breaker>>>,
    /// Requests refused with `UO`.
    pub overflows: AtomicU64,
    /// Retries in flight by destination (`connectionPool.http.maxRetries`).
    retries: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Retries not made because the destination's retry budget was spent (Envoy's
    /// `upstream_rq_retry_overflow`).
    pub retry_overflows: AtomicU64,
}

/// One retry in flight toward a destination; the budget is given back on drop.
#[derive(Debug)]
pub struct RetryGuard(Arc<AtomicUsize>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A traffic policy's `connectionPool.http.maxRetries`: retries in flight toward the
/// destination at once; `None` (unset or 0) is Istio's default, unlimited.
pub fn max_retries(policy: &Value) -> Option<usize> {
    policy
        .pointer("/connectionPool/http/maxRetries")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

impl Circuits {
    /// A retry toward `destination` if fewer than `max` are in flight; `None`: the
    /// retry budget is spent (counted), and the last answer stands.
    pub fn retry(&self, destination: &str, max: usize) -> Option<RetryGuard> {
        let count = {
            let mut map = self
                .retries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(destination.to_string()).or_default().clone()
        };
        let ok = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if ok {
            Some(RetryGuard(count))
        } else {
            self.retry_overflows.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// A slot toward `destination` under `limits`, waiting as a pending request when
    /// the slots are taken and the queue is not full; `None`: overflow.
    pub async fn admit(&self, destination: &str, limits: Limits) -> Option<OwnedSemaphorePermit> {
        let breaker = {
            let mut map = self
                .breakers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry((destination.to_string(), limits))
                .or_insert_with(|| {
                    Arc::new(Breaker {
                        slots: Arc::new(Semaphore::new(limits.active.min(Semaphore::MAX_PERMITS))),
                        waiting: AtomicUsize::new(0),
                        pending: limits.pending,
                    })
                })
                .clone()
        };
        if let Ok(p) = breaker.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let queued = breaker
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < breaker.pending).then_some(w + 1)
            })
            .is_ok();
        if !queued {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let permit = breaker.slots.clone().acquire_owned().await.ok();
        breaker.waiting.fetch_sub(1, Ordering::AcqRel);
        permit
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn limits_from_policies() {
        let p = json!({"connectionPool": {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 5}}});
        assert_eq!(
            Limits::from_policy(&p, false),
            Some(Limits {
                active: 1,
                pending: 1
            })
        );
        assert_eq!(
            Limits::from_policy(&p, true),
            Some(Limits {
                active: 5,
                pending: 0
            })
        );
        assert_eq!(
            Limits::from_policy(&json!({"loadBalancer": {}}), false),
            None
        );
        assert_eq!(Limits::from_policy(&json!({}), true), None);
    }

    #[test]
    fn the_retry_budget_bounds_retries_in_flight() {
        assert_eq!(
            max_retries(&json!({"connectionPool": {"http": {"maxRetries": 2}}})),
            Some(2)
        );
        assert_eq!(
            max_retries(&json!({"connectionPool": {"http": {"maxRetries": 0}}})),
            None
        );
        let c = Circuits::default();
        let a = c.retry("d", 2).unwrap();
        let _b = c.retry("d", 2).unwrap();
        assert!(c.retry("d", 2).is_none(), "two in flight: spent");
        assert_eq!(c.retry_overflows.load(Ordering::Relaxed), 1);
        assert!(
            c.retry("e", 2).is_some(),
            "another destination has its own budget"
        );
        drop(a);
        assert!(c.retry("d", 2).is_some(), "given back on drop");
    }

    #[tokio::test]
    async fn one_slot_one_waiting_then_overflow() {
        let c = Circuits::default();
        let limits = Limits {
            active: 1,
            pending: 1,
        };
        let first = c.admit("d", limits).await.unwrap();
        // The second waits for the first's slot; the third overflows meanwhile.
        let c = Arc::new(c);
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.admit("d", limits).await.is_some() });
        tokio::task::yield_now().await;
        while c
            .breakers
            .lock()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .waiting
            .load(Ordering::Acquire)
            == 0
        {
            tokio::task::yield_now().await;
        }
        assert!(c.admit("d", limits).await.is_none());
        assert_eq!(c.overflows.load(Ordering::Relaxed), 1);
        drop(first);
        assert!(waiter.await.unwrap());
        // Another destination has its own slots.
        assert!(c.admit("e", limits).await.is_some());
    }
}
