//! Wall-clock time, where the agent compares it with certificates (`notBefore`,
//! `notAfter`, when an SVID was received). Timers use tokio's clock, which tests pause
//! and advance; certificate maths needs `SystemTime`, which they cannot, so the node and
//! the manager read it through [`Clock`]. Production uses [`SystemClock`]; tests use a
//! clock that follows tokio's paused time, so one `tokio::time::sleep` moves both.
//! [`Timing`] bundles the clock with the retry backoff, the two things a test changes
//! to make rotation deterministic.

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
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            backoff: Backoff::default(),
        }
    }
}

impl Timing {
    /// The current wall-clock time.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }
}
