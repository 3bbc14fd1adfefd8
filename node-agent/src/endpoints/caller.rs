//! Caller attestation, in one place for both protocols: who is on the other end of a
//! socket connection (`SO_PEERCRED` and the socket it came in on), which identities it
//! gets from the manager's state, and the per-stream cache of those identities with the
//! rotation notifications of each. Which entries match a [`Caller`] is
//! [`crate::attestation`]'s pure decision; this module feeds it and turns "none" into
//! `PermissionDenied`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use warden_proto::SpiffeId;

use crate::attestation::Caller;
use crate::manager::{Entry, Manager, State};

/// Who is calling: the socket and the `SO_PEERCRED` credentials of the connection,
/// with the executable read from `/proc/PID/exe`. A connection without credentials
/// gets uid/gid `u32::MAX`, which no entry names. In Kubernetes mode the caller is also
/// tied to its pod (which may wait briefly for the pod watch). The future holds nothing
/// of the request.
pub fn attest<T>(
    request: &Request<T>,
    socket: Option<&str>,
    manager: &Manager,
) -> impl Future<Output = Caller> + Send + use<T> {
    let cred = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred);
    let pid = cred.and_then(|c| c.pid());
    let exe = pid.and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
    let mut caller = Caller {
        socket: socket.map(String::from),
        uid: cred.map_or(u32::MAX, |c| c.uid()),
        gid: cred.map_or(u32::MAX, |c| c.gid()),
        exe,
        kubernetes: None,
    };
    let attestor = manager.pod_attestor().cloned();
    async move {
        if let Some(attestor) = attestor {
            let pod = attestor.attest(pid).await;
            if let Err(reason) = &pod {
                tracing::debug!(caller = %caller, reason = %reason, "caller not tied to a pod");
            }
            caller.kubernetes = Some(pod);
        }
        caller
    }
}

/// The caller's identities, or `PermissionDenied` (counted and logged) when it has none.
pub fn identities_or_denied(
    manager: &Manager,
    state: &State,
    caller: &Caller,
) -> Result<Vec<SpiffeId>, Status> {
    let ids = state.identities_for(manager.mode(), caller);
    if ids.is_empty() {
        manager
            .metrics()
            .attestation_denied
            .fetch_add(1, Ordering::Relaxed);
        if let Some(Err(reason)) = &caller.kubernetes {
            tracing::warn!(caller = %caller, reason = %reason, "workload attestation: the caller cannot be tied to a pod of this node; refused");
            return Err(Status::permission_denied(format!(
                "no identity issued: the caller ({caller}) cannot be tied to a Kubernetes pod of this node: {reason}"
            )));
        }
        tracing::warn!(caller = %caller, "workload attestation: no registration entry matches this caller; refused");
        return Err(Status::permission_denied(format!(
            "no identity issued: no registration entry on this node matches the caller ({caller})"
        )));
    }
    Ok(ids)
}

/// Waits until one of `rxs` fires; forever when there are none. A closed channel
/// counts as firing (the caller re-subscribes with its next identity check).
pub async fn any_changed(rxs: &mut [watch::Receiver<()>]) {
    if rxs.is_empty() {
        return std::future::pending().await;
    }
    let futures: Vec<_> = rxs.iter_mut().map(|r| Box::pin(r.changed())).collect();
    let _ = futures::future::select_all(futures).await;
}

/// A stream's identities, recomputed only when the entries (or, in workload mode, the
/// token's identity) change, not on every rotation of anyone's SVID.
#[derive(Debug, Default)]
pub struct CallerIds {
    entries: Option<Arc<Vec<Entry>>>,
    own: Option<SpiffeId>,
    ids: Vec<SpiffeId>,
    /// Rotation notifications of `watched`.
    pub svid_events: Vec<watch::Receiver<()>>,
    watched: Vec<SpiffeId>,
}

impl CallerIds {
    /// The caller's identities in the current state, or `PermissionDenied`, with the
    /// state they were read from. Keeps [`CallerIds::svid_events`] subscribed to them,
    /// subscribing before the state is (re-)read so no rotation is missed.
    pub fn get(
        &mut self,
        manager: &Manager,
        caller: &Caller,
    ) -> Result<(Arc<State>, Vec<SpiffeId>), Status> {
        let mut state = manager.state();
        let fresh = self
            .entries
            .as_ref()
            .is_some_and(|e| Arc::ptr_eq(e, &state.entries))
            && self.own == state.own_id;
        if !fresh {
            self.ids = identities_or_denied(manager, &state, caller)?;
            self.entries = Some(state.entries.clone());
            self.own = state.own_id.clone();
        }
        if self.watched != self.ids {
            self.svid_events = manager.watch_svids(&self.ids);
            self.watched = self.ids.clone();
            state = manager.state();
        }
        Ok((state, self.ids.clone()))
    }
}
