//! When to refresh a certificate, and how long to wait after a failure: pure functions
//! of the certificate's validity, so the schedule is tested without clocks.
//!
//! The lifetime is measured from when the certificate was *received* (or its
//! `notBefore`, if later), not from `notBefore` alone: the CA backdates `notBefore` for
//! clock skew (two minutes), which would make a certificate of a few seconds look half
//! spent the moment it arrives. istio-agent's secret cache measures from fetch time too.

use std::time::{Duration, SystemTime};

/// Refresh policy: refresh once `ratio` of the lifetime has passed, ± `jitter` of the
/// lifetime, so many workloads don't refresh at the same instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotationPolicy {
    /// Fraction of the lifetime after which to refresh (istio-agent and ztunnel: 0.5).
    pub ratio: f64,
    /// Jitter, a fraction of the lifetime (istio-agent: 0.01).
    pub jitter: f64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            ratio: 0.5,
            jitter: 0.01,
        }
    }
}

/// A policy that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// `ratio` outside (0, 1).
    #[error("rotation ratio {0} must be greater than 0 and less than 1")]
    Ratio(f64),
    /// `jitter` negative, or so large that the refresh could fall outside the lifetime.
    #[error(
        "rotation jitter {jitter} must be at least 0 and smaller than both the ratio {ratio} and 1 - ratio"
    )]
    Jitter {
        /// The jitter.
        jitter: f64,
        /// The ratio.
        ratio: f64,
    },
}

impl RotationPolicy {
    /// Checks the policy's numbers.
    pub fn new(ratio: f64, jitter: f64) -> Result<Self, PolicyError> {
        if !(ratio > 0.0 && ratio < 1.0) {
            return Err(PolicyError::Ratio(ratio));
        }
        if !(jitter >= 0.0 && jitter < ratio && jitter < 1.0 - ratio) {
            return Err(PolicyError::Jitter { jitter, ratio });
        }
        Ok(Self { ratio, jitter })
    }

    /// When to refresh a certificate valid until `not_after`, received at `received`
    /// with `not_before`. `sample` is a uniform random number in [-1, 1] choosing the
    /// jitter. A certificate already past its refresh point is refreshed at once
    /// (the result is then `received` or earlier).
    pub fn refresh_at(
        &self,
        not_before: SystemTime,
        not_after: SystemTime,
        received: SystemTime,
        sample: f64,
    ) -> SystemTime {
        let start = not_before.max(received);
        let Ok(lifetime) = not_after.duration_since(start) else {
            // Already expired (or received after expiry): refresh now.
            return start;
        };
        let fraction = (self.ratio + self.jitter * sample.clamp(-1.0, 1.0)).clamp(0.0, 1.0);
        start + lifetime.mul_f64(fraction)
    }
}

/// Retry backoff after failures: exponential from `initial`, doubling up to `max`,
/// ± `jitter` of the delay (ztunnel: 500 ms, x2, 150 s, ±20%).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Upper bound on the delay.
    pub max: Duration,
    /// Fraction of the delay to jitter by.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(150),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1 = after the first failure); `sample` in
    /// [-1, 1] chooses the jitter.
    pub fn delay(&self, attempt: u32, sample: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        base.mul_f64((1.0 + self.jitter * sample.clamp(-1.0, 1.0)).max(0.0))
    }

    /// The delay, but never past `deadline - now` when a still-valid certificate must
    /// be refreshed before it expires (retry sooner rather than serve an expired one).
    pub fn delay_before(&self, attempt: u32, sample: f64, until_expiry: Duration) -> Duration {
        let d = self.delay(attempt, sample);
        if until_expiry.is_zero() {
            return d;
        }
        d.min(until_expiry / 2)
            .max(Duration::from_millis(100).min(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn refreshes_at_half_life_from_receipt() {
        let p = RotationPolicy::default();
        // 24h certificate, received at issue time.
        assert_eq!(p.refresh_at(t(0), t(86_400), t(0), 0.0), t(43_200));
        // Jitter moves it by at most 1% of the lifetime either way.
        assert_eq!(p.refresh_at(t(0), t(86_400), t(0), 1.0), t(43_200 + 864));
        assert_eq!(p.refresh_at(t(0), t(86_400), t(0), -1.0), t(43_200 - 864));
        // Samples outside [-1, 1] are clamped.
        assert_eq!(p.refresh_at(t(0), t(86_400), t(0), 7.0), t(43_200 + 864));
    }

    #[test]
    fn backdated_not_before_does_not_shorten_short_lifetimes() {
        let p = RotationPolicy::default();
        // A 10 s certificate backdated 120 s: refresh 5 s after receipt, not at once.
        let received = t(120);
        let at = p.refresh_at(t(0), t(130), received, 0.0);
        assert_eq!(at, t(125));
    }

    #[test]
    fn expired_or_late_certificates_refresh_now() {
        let p = RotationPolicy::default();
        assert_eq!(p.refresh_at(t(0), t(10), t(20), 0.0), t(20));
        assert_eq!(p.refresh_at(t(0), t(10), t(10), 0.0), t(10));
    }

    #[test]
    fn other_ratios() {
        let p = RotationPolicy::new(0.8, 0.0).unwrap();
        assert_eq!(p.refresh_at(t(0), t(1000), t(0), 0.5), t(800));
        assert!(RotationPolicy::new(0.0, 0.0).is_err());
        assert!(RotationPolicy::new(1.0, 0.0).is_err());
        assert!(RotationPolicy::new(0.5, 0.6).is_err());
        assert!(RotationPolicy::new(0.5, -0.1).is_err());
        assert!(RotationPolicy::new(f64::NAN, 0.0).is_err());
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(2, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(5, 0.0), Duration::from_secs(8));
        assert_eq!(b.delay(20, 0.0), Duration::from_secs(150));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(150));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(600));
        assert_eq!(b.delay(1, -1.0), Duration::from_millis(400));
    }

    #[test]
    fn backoff_retries_sooner_when_the_certificate_is_about_to_expire() {
        let b = Backoff::default();
        // 150 s backoff, but the certificate expires in 20 s: retry within 10 s.
        assert_eq!(
            b.delay_before(20, 0.0, Duration::from_secs(20)),
            Duration::from_secs(10)
        );
        assert_eq!(
            b.delay_before(1, 0.0, Duration::from_secs(3600)),
            Duration::from_millis(500)
        );
        // Expired already: plain backoff.
        assert_eq!(
            b.delay_before(3, 0.0, Duration::ZERO),
            Duration::from_secs(2)
        );
    }
}
