//! Polling until something holds, with one shape for every end-to-end test: what is
//! awaited is named, the wait is bounded, and a timeout says what was awaited, for how
//! long and what the last attempt saw.
//!
//! The condition is a closure returning a [`Poll`]: `bool` (holds or not), `Option<T>`
//! (`Some` is the value) or `Result<T, E>` (`Err` is why not yet, shown on timeout).
//!
//! ```ignore
//! let addr = eventually("the admin address file", Duration::from_secs(30), || {
//!     std::fs::read_to_string(&path).ok().filter(|a| !a.trim().is_empty())
//! });
//! ```

use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked unless the caller says otherwise.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What one check of a condition gives: the value once it holds, or why not yet.
pub trait Poll {
    /// The value a satisfied condition yields.
    type Value;
    /// `Ok` when the condition holds, `Err` saying what was seen instead.
    fn check(self) -> Result<Self::Value, String>;
}

impl Poll for bool {
    type Value = ();
    fn check(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Poll for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Debug> Poll for Result<T, E> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// The timeout message: what was awaited, for how long, and what the last check saw.
fn timed_out(what: &dyn Display, limit: Duration, last: &str) -> String {
    format!("timed out after {limit:?} waiting for {what}; last check: {last}")
}

/// Checks `f` every [`POLL_INTERVAL`] until it holds (returning its value) or `limit`
/// passes (panicking with [`try_eventually`]'s message). `f` runs at least once.
pub fn eventually<P: Poll>(what: impl Display, limit: Duration, f: impl FnMut() -> P) -> P::Value {
    try_eventually(what, limit, POLL_INTERVAL, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`eventually`], checking every `every`; `Err` with the timeout message instead
/// of a panic, for callers that add their own context (a process's log) to it.
pub fn try_eventually<P: Poll>(
    what: impl Display,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> P,
) -> Result<P::Value, String> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match f().check() {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(timed_out(&what, limit, &last));
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// How long one attempt of [`eventually_async`] may take before it counts as failed.
pub const ASYNC_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often [`eventually_async`] tries (its attempts are gRPC calls and the like).
pub const ASYNC_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// [`eventually`] for async conditions (a gRPC call, ...): each attempt is cut off
/// after [`ASYNC_ATTEMPT_TIMEOUT`], attempts are [`ASYNC_POLL_INTERVAL`] apart, and the
/// wait panics after `limit` with what was awaited and the last attempt's outcome.
pub async fn eventually_async<P, F, Fut>(what: impl Display, limit: Duration, mut f: F) -> P::Value
where
    P: Poll,
    F: FnMut() -> Fut,
    Fut: Future<Output = P>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match tokio::time::timeout(ASYNC_ATTEMPT_TIMEOUT, f()).await {
            Ok(p) => match p.check() {
                Ok(v) => return v,
                Err(last) => last,
            },
            Err(_) => format!("no answer within {ASYNC_ATTEMPT_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            panic!("{}", timed_out(&what, limit, &last));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(ASYNC_POLL_INTERVAL.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_it_holds() {
        let mut n = 0;
        let v = eventually("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn names_what_was_awaited_on_timeout() {
        let e = try_eventually(
            "the moon",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Err::<(), _>("still dark"),
        )
        .unwrap_err();
        assert!(e.contains("waiting for the moon"), "{e}");
        assert!(e.contains("still dark"), "{e}");
        assert!(e.contains("30ms"), "{e}");
    }
}
