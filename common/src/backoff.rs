//! Retry delays: exponential backoff with full jitter, Warden's one backoff.
//!
//! The delay before retry `n` is uniformly random in `[0, min(max, initial * 2^n))`:
//! the ceiling doubles per failure and the delay is drawn below it ("full jitter", AWS's
//! "Exponential Backoff and Jitter"; Envoy's `JitteredExponentialBackOffStrategy`, which
//! its xDS and SDS streams reconnect with). It was chosen over the agent's former
//! "the ceiling ± 20%" on purpose: when a CA or node agent restarts, every client that
//! lost it fails at the same instant, and full jitter spreads their retries over the
//! whole window instead of a 40% band around each doubling, so the restarted server
//! sees no synchronised waves; the mean wait is half the ceiling, which the ceilings
//! below allow for. The delay is a pure function of the attempt and a random number, so
//! the schedule is unit-tested without clocks; [`random_unit`] draws the number.
//!
//! [`Backoff::delay_before`] adds the certificate case: a refresh that keeps failing
//! while the current certificate is still valid retries within half of the validity
//! left, rather than sleeping past its expiry.

use std::time::Duration;

/// The shortest ceiling [`Backoff::delay_before`] shrinks to, so a certificate about to
/// expire is not retried in a hot loop.
const MIN_CEILING_BEFORE_EXPIRY: Duration = Duration::from_millis(100);

/// Exponential backoff with full jitter: retry `attempt` waits a uniformly random time
/// below `min(max, initial * 2^attempt)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub initial: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// Envoy's xDS stream retry: 500 ms, doubling, at most 30 s
    /// (`source/common/config/grpc_stream.h`). The proxy's SDS client uses it.
    pub const ENVOY: Self = Self {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };

    /// Requests to the CA (node attestation, SVID and node-SVID refresh): 500 ms,
    /// doubling, at most 150 s, ztunnel's certificate-fetch ceiling.
    pub const CA_REQUEST: Self = Self {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(150),
    };

    /// The ceiling of retry `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max)
    }

    /// The delay before retry `attempt` (0 for the first retry), given `unit` uniformly
    /// random in [0, 1) (see [`random_unit`]); outside that range it is clamped, NaN
    /// counts as 0.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        jittered(self.ceiling(attempt), unit)
    }

    /// The delay before retry `attempt` of a certificate refresh when the current
    /// certificate expires in `until_expiry`: the ceiling is at most half of that (but
    /// not below 100 ms), so the retries come before the expiry. Zero (expired, or no
    /// certificate yet) means plain [`Backoff::delay`].
    pub fn delay_before(&self, attempt: u32, unit: f64, until_expiry: Duration) -> Duration {
        let ceiling = self.ceiling(attempt);
        if until_expiry.is_zero() {
            return jittered(ceiling, unit);
        }
        let capped = ceiling
            .min(until_expiry / 2)
            .max(MIN_CEILING_BEFORE_EXPIRY.min(ceiling));
        jittered(capped, unit)
    }
}

fn jittered(ceiling: Duration, unit: f64) -> Duration {
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit).unwrap_or(ceiling)
}

/// A uniform random number in [0, 1) from the operating system's generator, for
/// [`Backoff::delay`].
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    // SystemRandom fails only without OS randomness; the jitter then degrades to 0.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_full_jitter() {
        let b = Backoff::ENVOY;
        assert_eq!(b.delay(0, 0.0), Duration::ZERO);
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(250));
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(500));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(2));
        assert_eq!(b.delay(10, 0.5), Duration::from_secs(15));
        assert_eq!(
            b.delay(u32::MAX, 0.999),
            Duration::from_secs(30).mul_f64(0.999)
        );
        assert_eq!(b.delay(2, f64::NAN), Duration::ZERO);
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert!(
            huge.delay(3, 1.0) > Duration::from_secs(1 << 60),
            "no overflow panic"
        );
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn ca_requests_back_off_to_150_seconds() {
        let b = Backoff::CA_REQUEST;
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(4), Duration::from_secs(8));
        assert_eq!(b.ceiling(20), Duration::from_secs(150));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(150));
    }

    #[test]
    fn backoff_retries_sooner_when_the_certificate_is_about_to_expire() {
        let b = Backoff::CA_REQUEST;
        let ms = Duration::from_millis;
        // (attempt, unit, until expiry, delay)
        let cases = [
            // A 150 s ceiling, but the certificate expires in 20 s: retry within 10 s.
            (19, 1.0, ms(20_000), ms(10_000)),
            (19, 0.5, ms(20_000), ms(5_000)),
            (0, 0.5, ms(3_600_000), ms(250)),
            // Nearly expired: the ceiling stays at 100 ms, no hot loop.
            (19, 1.0, ms(10), ms(100)),
            // Expired already: plain backoff.
            (2, 0.5, Duration::ZERO, ms(1_000)),
        ];
        for (attempt, unit, left, want) in cases {
            assert_eq!(
                b.delay_before(attempt, unit, left),
                want,
                "attempt {attempt}, unit {unit}, {left:?} left"
            );
        }
    }
}
