//! When to refresh a certificate, and how long to wait after a failure: pure functions
//! of the certificate's validity, so the schedule is tested without clocks (the backoff
//! is `warden_common::backoff`, tested there).
//!
//! The lifetime is measured from when the certificate was *received* (or its
//! `notBefore`, if later), not from `notBefore` alone: the CA backdates `notBefore` for
//! clock skew (two minutes), which would make a certificate of a few seconds look half
//! spent the moment it arrives. istio-agent's secret cache measures from fetch time too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// What the CA wants re-issued at once, as it last said: SVIDs signed by a tainted
/// authority (key identifiers, hex) and SVIDs it revoked (serials, hex).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reissue {
    /// Key identifiers of tainted authorities.
    pub authorities: BTreeSet<String>,
    /// Serials the CRLs list.
    pub serials: BTreeSet<String>,
}

impl Reissue {
    fn wants(&self, authority_key_id: Option<&str>, serial: &str) -> bool {
        authority_key_id.is_some_and(|a| self.authorities.contains(a))
            || self.serials.contains(serial)
    }
}

/// The [`Reissue`] watch an identity task waits on.
pub type Tainted = watch::Receiver<Arc<Reissue>>;

/// Sleeps for `wait`, or less if the certificate (`authority_key_id`, `serial`) is or
/// becomes tainted or revoked: returns `true` then, for an immediate re-issue. A
/// certificate already wanted when the wait starts (one signed just before the taint)
/// waits at most a second, so a CA that kept signing with a tainted authority could not
/// make the caller spin.
pub async fn sleep_unless_tainted(
    wait: Duration,
    tainted: &mut Tainted,
    authority_key_id: Option<&str>,
    serial: &str,
) -> bool {
    if tainted.borrow_and_update().wants(authority_key_id, serial) {
        tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
        return true;
    }
    let sleep = tokio::time::sleep(wait);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return false,
            changed = tainted.changed() => {
                if changed.is_err() {
                    sleep.await;
                    return false;
                }
                if tainted.borrow_and_update().wants(authority_key_id, serial) {
                    return true;
                }
            }
        }
    }
}

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

/// Retry backoff after failures: Warden's one backoff (full jitter; see its module).
pub use warden_common::backoff::Backoff;

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[tokio::test(start_paused = true)]
    async fn a_taint_or_revocation_cuts_the_wait_short_only_for_its_certificate() {
        use super::{Reissue, sleep_unless_tainted};
        use std::sync::Arc;
        use std::time::Duration;
        let reissue = |authorities: &[&str], serials: &[&str]| {
            Arc::new(Reissue {
                authorities: authorities.iter().map(|s| s.to_string()).collect(),
                serials: serials.iter().map(|s| s.to_string()).collect(),
            })
        };
        let (tx, mut rx) = tokio::sync::watch::channel(reissue(&[], &[]));
        let start = tokio::time::Instant::now();
        let waiting = tokio::spawn(async move {
            let r =
                sleep_unless_tainted(Duration::from_secs(3600), &mut rx, Some("aa"), "01").await;
            (r, rx)
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Another authority tainted, another serial revoked: still waiting.
        tx.send_replace(reissue(&["bb"], &["02"]));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished());
        tx.send_replace(reissue(&["aa", "bb"], &["02"]));
        let (tainted, mut rx) = waiting.await.unwrap();
        assert!(tainted);
        assert!(start.elapsed() < Duration::from_secs(21));
        // Already tainted when the wait starts: a second at most, not a spin.
        let t = tokio::time::Instant::now();
        assert!(sleep_unless_tainted(Duration::from_secs(3600), &mut rx, Some("aa"), "03").await);
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        // Its serial revoked.
        let t = tokio::time::Instant::now();
        assert!(sleep_unless_tainted(Duration::from_secs(3600), &mut rx, None, "02").await);
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        // Neither: the full wait.
        let t = tokio::time::Instant::now();
        assert!(!sleep_unless_tainted(Duration::from_secs(60), &mut rx, None, "04").await);
        assert_eq!(t.elapsed(), Duration::from_secs(60));
    }
}
