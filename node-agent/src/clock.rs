//! Wall-clock time, where the agent compares it with certificates (`notBefore`,
//! `notAfter`, when an SVID was received). Timers use tokio's clock, which tests pause
//! and advance; certificate maths needs `SystemTime`, which they cannot, so the node and
//! the manager read it through [`Clock`]. Production uses [`SystemClock`]; tests use a
//! clock that follows tokio's paused time, so one `tokio::time::sleep` moves both.
//! [`Timing`] bundles the clock with the retry backoff and its random source, the
//! things a test changes to make rotation deterministic.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::rotation::Backoff;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// How the node and the manager keep time: the clock they compare certificates with,
/// and the backoff between failed calls to the CA.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Wall-clock time.
    pub clock: Arc<dyn Clock>,
    /// Retry delays after failures.
    pub backoff: Backoff,
    /// The backoff's random number in [0, 1) ([`crate::random_unit`]); a test returns
    /// 1.0 so every delay is its ceiling.
    pub jitter: fn() -> f64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            backoff: Backoff::CA_REQUEST,
            jitter: crate::random_unit,
        }
    }
}

impl Timing {
    /// The current wall-clock time.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The delay before retry `attempt` (1 for the first) of a certificate refresh
    /// whose current certificate expires in `left` (zero: none, or expired).
    pub fn retry_delay(&self, attempt: u32, left: std::time::Duration) -> std::time::Duration {
        self.backoff
            .delay_before(attempt.saturating_sub(1), (self.jitter)(), left)
    }

    /// [`Timing::retry_delay`], but never sooner than the CA's pushback when it sent
    /// one: the hint plus up to half of it again at random, so clients refused together
    /// do not come back together.
    pub fn retry_delay_after(
        &self,
        attempt: u32,
        left: std::time::Duration,
        pushback: Option<std::time::Duration>,
    ) -> std::time::Duration {
        with_pushback(self.retry_delay(attempt, left), pushback, (self.jitter)())
    }
}

/// `backoff`, or the CA's pushback `hint` plus up to half of it again (`unit` in [0, 1)
/// picks how much) when that is longer.
pub fn with_pushback(
    backoff: std::time::Duration,
    hint: Option<std::time::Duration>,
    unit: f64,
) -> std::time::Duration {
    match hint {
        Some(hint) => backoff.max(hint + hint.mul_f64(unit.clamp(0.0, 1.0) / 2.0)),
        None => backoff,
    }
}

/// Test support: wall-clock time that moves with tokio's (paused) clock.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// `start` plus the tokio time elapsed since the clock was made. Under
    /// `tokio::time::pause` it moves only when the test's timers do.
    #[derive(Debug)]
    pub struct TokioClock {
        start: SystemTime,
        origin: tokio::time::Instant,
    }

    impl TokioClock {
        /// A clock reading `start` now. Whole seconds keep certificate validity (which
        /// X.509 holds to the second) exact.
        pub fn starting_at(start: SystemTime) -> Self {
            Self {
                start,
                origin: tokio::time::Instant::now(),
            }
        }
    }

    impl Clock for TokioClock {
        fn now(&self) -> SystemTime {
            self.start + self.origin.elapsed()
        }
    }
}
