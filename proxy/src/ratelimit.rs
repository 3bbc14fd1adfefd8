//! Local rate limiting in the data path ([`warden_policy::ratelimit`] compiles the
//! limits): token buckets kept per limit and key, checked on every inbound (and
//! gateway) request before authentication and authorization, as Istio's
//! `INSERT_BEFORE` patch puts Envoy's `local_ratelimit` filter first. A request over
//! a limit gets the limit's status (429 unless set), Envoy's body
//! `local_rate_limited`, the limit's `response_headers_to_add`, and the response flag
//! `RL`; `x-ratelimit-limit`, `-remaining` and `-reset` (draft 03) go on every answer
//! of a limit that asks for them.
//!
//! Buckets live in the proxy, keyed by the limit's stable key (its resource, rule and
//! numbers), so a config change that leaves a limit alone keeps its state. Keys per
//! principal, address or header are bounded: past [`MAX_KEYS`] buckets, those back to
//! full are dropped first (a full bucket is what a new one would be).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use warden_common::backoff::random_unit;
use warden_policy::ratelimit::{Limit, Request, TokenBucket};

use crate::http as h;
use crate::pipeline::{Exchange, Reply};

/// Buckets kept at most, all limits together.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct State {
    tokens: u32,
    /// When the last whole interval was added.
    filled: Instant,
}

impl State {
    fn full(bucket: &TokenBucket, now: Instant) -> Self {
        Self {
            tokens: bucket.max_tokens,
            filled: now,
        }
    }

    /// Adds the intervals that passed since the last fill.
    fn refill(&mut self, bucket: &TokenBucket, now: Instant) {
        let interval = bucket.fill_interval.as_nanos().max(1);
        let passed = now.saturating_duration_since(self.filled).as_nanos() / interval;
        if passed == 0 {
            return;
        }
        let added = u64::try_from(passed)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(bucket.tokens_per_fill));
        self.tokens = u32::try_from(u64::from(self.tokens).saturating_add(added))
            .unwrap_or(u32::MAX)
            .min(bucket.max_tokens);
        let step = u32::try_from(passed).unwrap_or(u32::MAX);
        self.filled += bucket.fill_interval.saturating_mul(step);
        if self.tokens == bucket.max_tokens {
            self.filled = now;
        }
    }

    /// Time to the next fill.
    fn reset(&self, bucket: &TokenBucket, now: Instant) -> Duration {
        (self.filled + bucket.fill_interval).saturating_duration_since(now)
    }
}

/// The buckets of every limit.
#[derive(Debug, Default)]
pub struct Buckets {
    inner: Mutex<HashMap<(String, String), (TokenBucket, State)>>,
}

/// A limit's headers for an answer.
type Headers = Vec<(HeaderName, HeaderValue)>;

fn x_ratelimit(bucket: &TokenBucket, remaining: u32, reset: Duration) -> Headers {
    let window = bucket.fill_interval.as_secs().max(1);
    let value = |s: String| HeaderValue::from_str(&s).ok();
    [
        (
            "x-ratelimit-limit",
            value(format!(
                "{}, {};w={window}",
                bucket.max_tokens, bucket.max_tokens
            )),
        ),
        ("x-ratelimit-remaining", value(remaining.to_string())),
        (
            "x-ratelimit-reset",
            value(reset.as_secs_f64().ceil().to_string()),
        ),
    ]
    .into_iter()
    .filter_map(|(n, v)| Some((HeaderName::from_static(n), v?)))
    .collect()
}

impl Buckets {
    /// Takes a token of every limit that matches `r` (and does not exempt it). `Ok`
    /// with the headers to add to the answer, or the refusal of the first limit with
    /// no token left (when that limit enforces; otherwise it is only counted).
    pub fn check(
        &self,
        metrics: &crate::metrics::Metrics,
        limits: &[Arc<Limit>],
        r: &Request<'_>,
        grpc: bool,
    ) -> Result<Headers, Reply> {
        let mut headers = Vec::new();
        let now = Instant::now();
        for limit in limits {
            if !limit.matches(r) || limit.exempt(r) {
                continue;
            }
            if limit.enabled_percent < 100.0 && random_unit() * 100.0 >= limit.enabled_percent {
                continue;
            }
            let key = (limit.key.clone(), limit.bucket_key(r));
            let (taken, remaining, reset) = {
                let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
                if inner.len() >= MAX_KEYS && !inner.contains_key(&key) {
                    // Drop the buckets that are full again: a new one starts full.
                    inner.retain(|_, (bucket, s)| {
                        s.refill(bucket, now);
                        s.tokens < bucket.max_tokens
                    });
                }
                if inner.len() >= MAX_KEYS && !inner.contains_key(&key) {
                    // Still full of busy buckets: the request is limited with its key
                    // untracked, as if its bucket were empty (fail closed).
                    (false, 0, limit.bucket.fill_interval)
                } else {
                    let (_, state) = inner
                        .entry(key)
                        .or_insert_with(|| (limit.bucket, State::full(&limit.bucket, now)));
                    state.refill(&limit.bucket, now);
                    let taken = state.tokens > 0;
                    if taken {
                        state.tokens -= 1;
                    }
                    (taken, state.tokens, state.reset(&limit.bucket, now))
                }
            };
            let x = if limit.x_ratelimit_headers {
                x_ratelimit(&limit.bucket, remaining, reset)
            } else {
                Vec::new()
            };
            if taken {
                headers.extend(x);
                continue;
            }
            let enforce =
                limit.enforced_percent >= 100.0 || random_unit() * 100.0 < limit.enforced_percent;
            metrics.rate_limited(enforce);
            if !enforce {
                tracing::debug!(limit = %limit.id, "local rate limit exceeded (not enforced)");
                headers.extend(x);
                continue;
            }
            tracing::info!(
                limit = %limit.id,
                principal = r.principal.unwrap_or_default(),
                path = r.path,
                method = r.method,
                "local rate limit exceeded: request refused"
            );
            let status =
                StatusCode::from_u16(limit.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            let mut resp = h::error_reply(grpc, status, "local_rate_limited");
            let out = resp.headers_mut();
            for (n, v) in x {
                out.insert(n, v);
            }
            for (n, v) in &limit.refusal_headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    out.insert(n, v);
                }
            }
            return Err(Reply {
                resp: Box::new(resp),
                flags: "RL",
            });
        }
        Ok(headers)
    }
}

/// Checks `ex` against the workload's limits: the path (normalized, no query),
/// method, destination port, and the source the connection proved.
pub fn check_exchange<B>(
    ctx: &crate::context::Context,
    limits: &[Arc<Limit>],
    ex: &Exchange<B>,
    port: u16,
    principal: Option<&str>,
    source_ip: Option<std::net::IpAddr>,
) -> Result<Headers, Reply> {
    if limits.is_empty() {
        return Ok(Vec::new());
    }
    let headers: &HeaderMap = ex.req.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let r = Request {
        path: ex.req.uri().path(),
        method: ex.req.method().as_str(),
        port,
        principal: principal.map(|p| p.strip_prefix("spiffe://").unwrap_or(p)),
        source_ip,
        header: &header,
    };
    ctx.ratelimits.check(&ctx.metrics, limits, &r, ex.grpc)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use warden_policy::ratelimit::Per;

    fn limit(max: u32, per_fill: u32, interval_ms: u64, per: Per) -> Arc<Limit> {
        Arc::new(Limit {
            id: "test".into(),
            key: format!("test {max} {per_fill} {interval_ms} {per:?}"),
            bucket: TokenBucket {
                max_tokens: max,
                tokens_per_fill: per_fill,
                fill_interval: Duration::from_millis(interval_ms),
            },
            per,
            paths: Vec::new(),
            methods: Vec::new(),
            ports: Vec::new(),
            exempt_principals: Vec::new(),
            exempt_headers: Vec::new(),
            enabled_percent: 100.0,
            enforced_percent: 100.0,
            status: 429,
            refusal_headers: vec![("x-local-rate-limit".into(), "true".into())],
            x_ratelimit_headers: true,
        })
    }

    fn req(principal: &str) -> Request<'_> {
        Request {
            path: "/",
            method: "GET",
            port: 80,
            principal: Some(principal),
            source_ip: None,
            header: &|_| None,
        }
    }

    #[test]
    fn a_bucket_empties_then_refills_by_whole_intervals() {
        let b = TokenBucket {
            max_tokens: 4,
            tokens_per_fill: 2,
            fill_interval: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut s = State::full(&b, t0);
        s.tokens = 0;
        s.refill(&b, t0 + Duration::from_secs(9));
        assert_eq!(s.tokens, 0);
        s.refill(&b, t0 + Duration::from_secs(10));
        assert_eq!(s.tokens, 2);
        assert_eq!(
            s.reset(&b, t0 + Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        s.refill(&b, t0 + Duration::from_secs(100));
        assert_eq!(s.tokens, 4, "never above max_tokens");
    }

    #[test]
    fn over_the_limit_is_429_with_the_limits_headers() {
        let buckets = Buckets::default();
        let metrics = crate::metrics::Metrics::new();
        let l = [limit(2, 1, 60_000, Per::Shared)];
        let ok = buckets.check(&metrics, &l, &req("a"), false).unwrap();
        let remaining = ok
            .iter()
            .find(|(n, _)| n == "x-ratelimit-remaining")
            .unwrap();
        assert_eq!(remaining.1, "1");
        buckets.check(&metrics, &l, &req("b"), false).unwrap();
        let refused = buckets.check(&metrics, &l, &req("c"), false).unwrap_err();
        assert_eq!(refused.resp.status(), 429);
        assert_eq!(refused.flags, "RL");
        assert_eq!(refused.resp.headers()["x-local-rate-limit"], "true");
        assert_eq!(refused.resp.headers()["x-ratelimit-remaining"], "0");
        assert!(
            metrics
                .encode()
                .contains("warden_local_rate_limited_total{outcome=\"enforced\"} 1")
        );
    }

    #[test]
    fn per_principal_buckets_are_separate_and_exemptions_pass() {
        let buckets = Buckets::default();
        let metrics = crate::metrics::Metrics::new();
        let mut l = (*limit(1, 1, 60_000, Per::SourcePrincipal)).clone();
        l.exempt_principals = vec![warden_policy::matcher::StringMatch::new("ops/*")];
        let l = [Arc::new(l)];
        buckets.check(&metrics, &l, &req("a"), false).unwrap();
        buckets.check(&metrics, &l, &req("b"), false).unwrap();
        assert!(buckets.check(&metrics, &l, &req("a"), false).is_err());
        for _ in 0..5 {
            buckets.check(&metrics, &l, &req("ops/x"), false).unwrap();
        }
    }

    #[test]
    fn shadow_limits_count_and_pass() {
        let buckets = Buckets::default();
        let metrics = crate::metrics::Metrics::new();
        let mut l = (*limit(1, 1, 60_000, Per::Shared)).clone();
        l.enforced_percent = 0.0;
        let l = [Arc::new(l)];
        for _ in 0..3 {
            buckets.check(&metrics, &l, &req("a"), false).unwrap();
        }
        assert!(
            metrics
                .encode()
                .contains("warden_local_rate_limited_total{outcome=\"shadow\"} 2")
        );
    }
}
