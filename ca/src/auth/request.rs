//! Authentication of a gRPC request on the certificate port, shared by every service
//! there (CreateCertificate, JWT-SVIDs, the node API): the caller from its client
//! certificate or bearer token, and refusals counted and audited.

use tonic::{Request, Status};

use crate::auth::{Authenticator, Caller};
use crate::monitoring::Metrics;
use crate::store::{AuditEvent, Store};

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Appends a refusal to the audit log; a failure to do so is logged and counted (the
/// request is refused either way).
pub(crate) async fn audit_denial(
    store: &Store,
    metrics: &Metrics,
    event: &'static str,
    identity: String,
    requester: String,
    peer: &str,
    reason: &str,
) {
    let event = AuditEvent {
        event,
        outcome: "denied",
        identity,
        requester,
        peer_addr: peer.to_string(),
        detail: serde_json::json!({ "reason": reason }),
    };
    if let Err(e) = store.audit(event).await {
        metrics
            .store_failure_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(error = %e, "cannot record a denial in the audit log");
    }
}

/// Authenticates the caller of a request on the certificate port (client certificate,
/// then `authorization: Bearer`), counting and auditing failures as `denied_event`.
/// Returns the caller and its address.
pub(crate) async fn authenticate<T>(
    auth: &Authenticator,
    store: &Store,
    metrics: &Metrics,
    request: &Request<T>,
    denied_event: &'static str,
) -> Result<(Caller, String), Status> {
    let peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let peer_certs = request.peer_certs();
    let authorization = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    // istiod reads the cluster from `clusterid` metadata; a value that is not text names
    // no cluster this CA serves.
    let cluster_id = request
        .metadata()
        .get("clusterid")
        .map(|v| v.to_str().unwrap_or("<not text>"));
    match auth
        .authenticate(
            peer_certs.as_deref().map(Vec::as_slice),
            authorization,
            cluster_id,
            now_unix(),
        )
        .await
    {
        Ok(caller) => Ok((caller, peer)),
        Err(e) => {
            metrics
                .authentication_failure_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reason = e.to_string();
            // Within the minute's budget a row of its own; beyond it, counted into the
            // minute's aggregate row (a flood cannot grow the log without bound).
            if auth.flood_guard().admit(denied_event, &reason, &peer) {
                tracing::warn!(peer, reason, "request denied: authentication failed");
                audit_denial(
                    store,
                    metrics,
                    denied_event,
                    String::new(),
                    "unauthenticated".into(),
                    &peer,
                    &reason,
                )
                .await;
            } else {
                tracing::debug!(
                    peer,
                    reason,
                    "request denied: authentication failed (aggregated)"
                );
            }
            Err(if e.is_unavailable() {
                Status::unavailable(reason)
            } else {
                Status::unauthenticated(reason)
            })
        }
    }
}
