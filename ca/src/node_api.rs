//! `warden.ca.v1.NodeService`: the registration entries a node agent acts on. Only
//! nodes may ask (a node SVID, or a service account in `--trusted-node-accounts`), and
//! each sees only the entries whose parent is its own identity. Agents poll it, so a
//! successful listing is not audited; refusals are (`node.denied`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use warden_proto::warden_ca::node_service_server::NodeService;
use warden_proto::warden_ca::{ListNodeEntriesRequest, ListNodeEntriesResponse, NodeEntry};

use crate::auth::Authenticator;
use crate::auth::request::{audit_denial, authenticate};
use crate::monitoring::Metrics;
use crate::store::Store;

/// The node service.
#[derive(Debug)]
pub struct NodeApi {
    auth: Arc<Authenticator>,
    store: Store,
    metrics: Arc<Metrics>,
}

impl NodeApi {
    /// Builds the service.
    pub fn new(auth: Arc<Authenticator>, store: Store, metrics: Arc<Metrics>) -> Self {
        Self {
            auth,
            store,
            metrics,
        }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_node_entries(
        &self,
        request: Request<ListNodeEntriesRequest>,
    ) -> Result<Response<ListNodeEntriesResponse>, Status> {
        let (caller, peer) = authenticate(
            &self.auth,
            &self.store,
            &self.metrics,
            &request,
            "node.denied",
        )
        .await?;
        let refusal = if caller.method == crate::auth::AuthMethod::JoinToken {
            // A join token is spent on the node's first certificate; listing must not
            // be a way to use it without spending it.
            Some(
                "a join token only buys the node certificate; list entries with the node SVID"
                    .to_string(),
            )
        } else if !self.auth.is_node(&caller.id) {
            Some(format!(
                "{} is not a node: only node SVIDs (spiffe://<td>/warden/node/...) and service accounts in --trusted-node-accounts may list entries",
                caller.id
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            tracing::warn!(peer, caller = %caller.id, reason, "entry listing denied");
            audit_denial(
                &self.store,
                &self.metrics,
                "node.denied",
                caller.id.to_string(),
                caller.id.to_string(),
                &peer,
                &reason,
            )
            .await;
            return Err(Status::permission_denied(reason));
        }
        let entries = self
            .store
            .list_entries(Some(caller.id.as_str()), None)
            .await
            .map_err(|e| Status::unavailable(format!("cannot read registration entries: {e}")))?;
        Ok(Response::new(ListNodeEntriesResponse {
            node_id: caller.id.to_string(),
            entries: entries
                .into_iter()
                .map(|e| NodeEntry {
                    id: e.id,
                    spiffe_id: e.spiffe_id,
                    selectors: e.selectors,
                    created_at: e.created_at,
                })
                .collect(),
        }))
    }
}
