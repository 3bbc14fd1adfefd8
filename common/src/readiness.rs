//! Named readiness guards: a process is ready when no [`BlockReady`] is held.
//!
//! Each thing start-up waits for (the first SVID, the first config, the listeners)
//! takes a guard from the process's [`Ready`] under a name and drops it when done, as
//! ztunnel's `readiness` does; shutdown takes one (`draining`) to turn `/ready` off
//! again. `/ready` answers with [`Ready::answer`]: 200 `ready`, or 503 naming what it
//! still waits for (`not ready: waiting for: config, sds-certificate`), so an operator
//! sees why a process is not ready without reading its logs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::StatusCode;

use crate::monitoring::Answer;

/// The set of guards still held, by name (a name may be held more than once).
#[derive(Debug, Clone, Default)]
pub struct Ready(Arc<Mutex<BTreeMap<String, usize>>>);

impl Ready {
    /// An empty set: ready until a guard is taken.
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks readiness under `name` until the returned guard is dropped.
    pub fn block(&self, name: &str) -> BlockReady {
        *self.pending_map().entry(name.to_string()).or_default() += 1;
        BlockReady {
            ready: self.clone(),
            name: name.to_string(),
        }
    }

    /// True when no guard is held.
    pub fn is_ready(&self) -> bool {
        self.pending_map().is_empty()
    }

    /// The names still held, sorted, each once.
    pub fn pending(&self) -> Vec<String> {
        self.pending_map().keys().cloned().collect()
    }

    /// The `/ready` answer: 200 `ready`, or 503 `not ready: waiting for: a, b`.
    pub fn answer(&self) -> Answer {
        let pending = self.pending();
        if pending.is_empty() {
            (StatusCode::OK, "text/plain", "ready\n".into())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: waiting for: {}\n", pending.join(", ")),
            )
        }
    }

    fn pending_map(&self) -> MutexGuard<'_, BTreeMap<String, usize>> {
        // The map is consistent after every statement, so a panic while it was locked
        // leaves nothing half done: take it back from the poison.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Holds readiness back under a name until dropped.
#[derive(Debug)]
#[must_use = "readiness is released as soon as the guard is dropped"]
pub struct BlockReady {
    ready: Ready,
    name: String,
}

impl BlockReady {
    /// The name this guard holds.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another guard on the same set, for a part of this task that finishes on its own.
    pub fn subtask(&self, name: &str) -> BlockReady {
        self.ready.block(name)
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        let mut pending = self.ready.pending_map();
        if let Some(n) = pending.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.name);
            }
        }
        let left = pending.len();
        drop(pending);
        if left == 0 {
            tracing::debug!(task = %self.name, "readiness: nothing left to wait for");
        } else {
            tracing::debug!(task = %self.name, still_waiting = left, "readiness task done");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_every_guard_is_dropped() {
        let ready = Ready::new();
        assert!(ready.is_ready());
        assert_eq!(ready.answer().0, StatusCode::OK);
        let sds = ready.block("sds-certificate");
        let config = ready.block("config");
        let (status, _, body) = ready.answer();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: waiting for: config, sds-certificate\n");
        drop(config);
        assert_eq!(ready.pending(), ["sds-certificate"]);
        let sub = sds.subtask("listeners");
        drop(sds);
        assert_eq!(ready.pending(), ["listeners"]);
        drop(sub);
        assert!(ready.is_ready());
        assert_eq!(
            ready.answer(),
            (StatusCode::OK, "text/plain", "ready\n".into())
        );
    }

    #[test]
    fn a_name_held_twice_is_released_by_the_last_guard() {
        let ready = Ready::new();
        let a = ready.block("svid");
        let b = ready.block("svid");
        assert_eq!(a.name(), "svid");
        assert_eq!(ready.pending(), ["svid"]);
        drop(a);
        assert!(!ready.is_ready());
        drop(b);
        assert!(ready.is_ready());
    }
}
