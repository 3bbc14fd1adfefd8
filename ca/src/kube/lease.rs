//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: one replica holds the Lease and renews it; the others take it over only
//! after it has gone unrenewed for the lease duration, judged by their own clock (the
//! time they last saw the record change), so clock skew between nodes does not matter.
//! Every write carries the `resourceVersion` it read, so two replicas racing for an
//! expired Lease cannot both win: one gets `409 Conflict` and stays a follower.
//!
//! The leader alone creates `istio-ca-secret`, keeps the `istio-ca-root-cert`
//! ConfigMaps and the webhook's `caBundle`. A leader that cannot renew within
//! [`LeaseTimings::renew_deadline`] steps down before anyone may take over (deadline <
//! duration), so two replicas never both believe they lead. On shutdown the leader
//! releases the Lease so a successor takes over at once (a rolling update).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Lease the CA's replicas elect their leader with.
pub const LEASE_NAME: &str = "warden-ca-leader";

/// How long a Lease lasts, how often it is renewed, and when an unrenewed leader gives
/// up; client-go's defaults for kube-controller-manager are 15 s, 10 s and 2 s (retry).
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimings {
    /// A Lease unrenewed for this long may be taken over.
    pub duration: Duration,
    /// The leader steps down when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// How often the leader renews and followers try.
    pub retry: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// Runs the election for `identity` (the pod name) until `shutdown` flips; the
/// receiver says whether this replica leads now.
pub fn start(
    api: Api<Lease>,
    identity: String,
    timings: LeaseTimings,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut elector = Elector {
            api,
            identity,
            timings,
            observed: None,
        };
        let mut last_renew: Option<Instant> = None;
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renew = Some(Instant::now());
                    if !*tx.borrow() {
                        tracing::info!(lease = LEASE_NAME, identity = %elector.identity, "became the leader");
                        tx.send_replace(true);
                    }
                }
                Ok(false) => {
                    last_renew = None;
                    if *tx.borrow() {
                        tracing::warn!(lease = LEASE_NAME, "lost the lease to another replica");
                        tx.send_replace(false);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = LEASE_NAME, error = %e, "cannot read or renew the lease");
                    if *tx.borrow()
                        && last_renew.is_none_or(|t| t.elapsed() >= timings.renew_deadline)
                    {
                        tracing::warn!(lease = LEASE_NAME, deadline = ?timings.renew_deadline, "not renewed within the deadline; stepping down");
                        tx.send_replace(false);
                        last_renew = None;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(timings.retry) => {}
                _ = shutdown.changed() => break,
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            if let Err(e) = elector.release().await {
                tracing::warn!(lease = LEASE_NAME, error = %e, "could not release the lease; it expires by itself");
            }
        }
    });
    (rx, task)
}

struct Elector {
    api: Api<Lease>,
    identity: String,
    timings: LeaseTimings,
    /// The holder and renew time last seen, and when (our clock) it was first seen.
    observed: Option<((String, String), Instant)>,
}

fn lease_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX).max(1)
}

impl Elector {
    /// One round: `Ok(true)` when this replica holds the Lease after it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(lease_secs(self.timings.duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (
            holder.clone(),
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        );
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.timings.duration);
        let held_by_other = !holder.is_empty() && holder != self.identity;
        if held_by_other && seen_at.elapsed() < duration {
            return Ok(false);
        }
        if holder != self.identity {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            if held_by_other {
                tracing::info!(lease = LEASE_NAME, previous = %holder, "taking over an expired lease");
            }
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(lease_secs(self.timings.duration));
        // `lease` still carries the resourceVersion read above: a concurrent writer
        // makes this a conflict.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (empty holder, 1 s duration), if still ours.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
            .map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use warden_common::testing::kube_api::FakeApiServer;

    fn fast() -> LeaseTimings {
        LeaseTimings {
            duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry: Duration::from_millis(100),
        }
    }

    async fn wait_for(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v == want))
            .await
            .expect("leadership did not change in time")
            .unwrap();
    }

    #[tokio::test]
    async fn one_of_two_replicas_leads_and_the_other_takes_over_when_it_stops() {
        let fake = FakeApiServer::new();
        let api = || Api::<Lease>::namespaced(fake.client(), "istio-system");
        let (stop_a, rx_a) = watch::channel(false);
        let (_stop_b, rx_b) = watch::channel(false);
        let (mut a, task_a) = start(api(), "ca-a".into(), fast(), rx_a);
        wait_for(&mut a, true).await;
        let (mut b, _task_b) = start(api(), "ca-b".into(), fast(), rx_b);
        // B sees a fresh lease held by A: it stays a follower through several rounds.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!*b.borrow());
        assert!(*a.borrow());

        // A stops (releases): B leads right after.
        stop_a.send_replace(true);
        task_a.await.unwrap();
        assert!(!*a.borrow());
        wait_for(&mut b, true).await;
        let lease: Lease = api().get(LEASE_NAME).await.unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("ca-b"));
        assert_eq!(spec.lease_transitions, Some(1));
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_and_a_dead_leaders_lease_is_taken_over() {
        let fake = FakeApiServer::new();
        let api = || Api::<Lease>::namespaced(fake.client(), "istio-system");
        let (_stop, rx) = watch::channel(false);
        let (mut a, task_a) = start(api(), "ca-a".into(), fast(), rx);
        wait_for(&mut a, true).await;
        // The API server fails every lease request: A gives up within the deadline.
        fake.fail_next("GET", "leases", 500, 1000);
        fake.fail_next("PUT", "leases", 500, 1000);
        wait_for(&mut a, false).await;
        // A dies without releasing; the API server is back.
        task_a.abort();
        fake.clear_failures();
        let (_stop_b, rx_b) = watch::channel(false);
        let started = Instant::now();
        let (mut b, _task_b) = start(api(), "ca-b".into(), fast(), rx_b);
        wait_for(&mut b, true).await;
        // Not before the lease duration had passed on B's clock.
        assert!(started.elapsed() >= Duration::from_secs(2));
    }
}
