//! Outlier detection by a DestinationRule's `outlierDetection`, as Envoy's does it for
//! a sidecar: an endpoint that answers `consecutive5xxErrors` 5xx in a row (or
//! `consecutiveGatewayErrors` 502/503/504; a failed connection counts as both) is
//! ejected from its destination's load balancing for `baseEjectionTime` times the
//! number of times it has been ejected, unless that would eject more than
//! `maxEjectionPercent` of the endpoints. When every endpoint is ejected, all are used
//! (Envoy's panic routing at the default `minHealthPercent` of 0).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mesh::model::ServiceId;

/// The policy of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// 5xx in a row that eject (0: off).
    pub consecutive_5xx: u32,
    /// 502/503/504 in a row that eject (0: off).
    pub consecutive_gateway: u32,
    /// Ejection time, times the ejections so far.
    pub base_ejection: Duration,
    /// Share of endpoints that may be ejected at once.
    pub max_ejection_percent: u32,
}

impl Policy {
    /// The `outlierDetection` of a traffic policy, with Istio's defaults (5, off, 30 s,
    /// 10%); `None` without one.
    pub fn from_policy(policy: &Value) -> Option<Self> {
        let od = policy.get("outlierDetection")?;
        let n = |k: &str, d: u32| {
            od.get(k)
                .and_then(Value::as_u64)
                .map_or(d, |v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        let base = od
            .get("baseEjectionTime")
            .and_then(Value::as_str)
            .and_then(|t| warden_policy::route::duration::parse(t).ok())
            .unwrap_or(Duration::from_secs(30));
        Some(Self {
            consecutive_5xx: n("consecutive5xxErrors", 5),
            consecutive_gateway: n("consecutiveGatewayErrors", 0),
            base_ejection: base,
            max_ejection_percent: n("maxEjectionPercent", 10).min(100),
        })
    }
}

/// Key of an endpoint: config generation, service, endpoint address.
type Key = (u64, ServiceId, SocketAddr);

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times: u32,
}

/// Every endpoint's health, as seen from this proxy.
#[derive(Debug, Default)]
pub struct Outliers {
    hosts: Mutex<HashMap<Key, Health>>,
    /// Set once anything was ejected: until then lookups skip the map.
    any: AtomicBool,
}

impl Outliers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Health>> {
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self, key: Key) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        self.lock()
            .get(&key)
            .and_then(|h| h.ejected_until)
            .is_some_and(|t| t > now)
    }

    /// Records an answer of the endpoint (`status`: the HTTP status, or 503 for a
    /// connection that failed) among `endpoints` of its destination.
    pub fn observe(&self, key: Key, status: u16, endpoints: usize, policy: Policy) -> bool {
        let now = Instant::now();
        let mut hosts = self.lock();
        let h = hosts.entry(key).or_default();
        if status >= 500 {
            h.consecutive_5xx += 1;
        } else {
            h.consecutive_5xx = 0;
        }
        if matches!(status, 502..=504) {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let tripped = (policy.consecutive_5xx > 0 && h.consecutive_5xx >= policy.consecutive_5xx)
            || (policy.consecutive_gateway > 0
                && h.consecutive_gateway >= policy.consecutive_gateway);
        if !tripped || h.ejected_until.is_some_and(|t| t > now) {
            return false;
        }
        let ejected = hosts
            .iter()
            .filter(|((g, s, _), x)| {
                (*g, *s) == (key.0, key.1) && x.ejected_until.is_some_and(|t| t > now)
            })
            .count();
        if endpoints == 0 || ejected * 100 / endpoints >= policy.max_ejection_percent as usize {
            return false;
        }
        let h = hosts.entry(key).or_default();
        h.times += 1;
        h.ejected_until = Some(now + policy.base_ejection * h.times);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        self.any.store(true, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn policies_with_istio_defaults() {
        let p = Policy::from_policy(
            &json!({"outlierDetection": {"consecutive5xxErrors": 1, "baseEjectionTime": "3m"}}),
        )
        .unwrap();
        assert_eq!(p.consecutive_5xx, 1);
        assert_eq!(p.consecutive_gateway, 0);
        assert_eq!(p.base_ejection, Duration::from_secs(180));
        assert_eq!(p.max_ejection_percent, 10);
        let d = Policy::from_policy(&json!({"outlierDetection": {}})).unwrap();
        assert_eq!(
            (d.consecutive_5xx, d.base_ejection),
            (5, Duration::from_secs(30))
        );
        assert!(Policy::from_policy(&json!({"connectionPool": {}})).is_none());
    }

    #[test]
    fn consecutive_errors_eject_within_the_percentage() {
        let o = Outliers::default();
        let policy = Policy {
            consecutive_5xx: 2,
            consecutive_gateway: 0,
            base_ejection: Duration::from_secs(60),
            max_ejection_percent: 30,
        };
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let key = |addr| (1, ServiceId(0), addr);
        assert!(!o.observe(key(a), 500, 3, policy));
        assert!(
            !o.observe(key(a), 200, 3, policy),
            "a success resets the count"
        );
        assert!(!o.observe(key(a), 503, 3, policy));
        assert!(o.observe(key(a), 503, 3, policy), "two in a row eject");
        assert!(o.is_ejected(key(a)));
        assert!(!o.is_ejected(key(b)));
        // Envoy ejects while fewer than the percentage are out: one of three (33%) is
        // already at or above 30%.
        assert!(!o.observe(key(b), 500, 3, policy));
        assert!(!o.observe(key(b), 500, 3, policy));
        assert!(!o.is_ejected(key(b)));
    }
}
