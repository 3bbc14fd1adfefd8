//! Node authorization and node attestation in Kubernetes mode, as istiod's
//! `NodeAuthorizer` decides for ztunnel and SPIRE's `k8s_psat` attests nodes.
//!
//! - **Which node a caller is on.** A node SVID (`spiffe://TD/warden/node/N`) is on N. A
//!   trusted node account (`--trusted-node-accounts`, e.g. ztunnel) is on the node of
//!   the pod its token is bound to: the reviewed token names the pod and its UID, and the
//!   pod index must hold that pod with that UID and that service account.
//! - **Impersonation.** A node may obtain `spiffe://TD/ns/NS/sa/SA` only if a running pod
//!   with service account NS/SA is on its node.
//! - **Node attestation.** A reviewed token of an account in `--agent-service-accounts`,
//!   bound to a pod on node N, may obtain the node SVID of N and no other.
//!
//! Every refusal says which of these conditions failed. An unsynced pod index answers
//! [`ImpersonationError::Unavailable`]: nothing is decided on a partial view.

use warden_proto::SpiffeId;

use super::{AuthMethod, Caller, ImpersonationError};
use crate::config::ServiceAccount;
use crate::kube::pods::{NotSynced, PodIndex};
use crate::kube::token_review::TokenReviewer;

/// Kubernetes mode's part of authentication and authorization.
#[derive(Debug)]
pub struct KubeAuth {
    /// Reviews bearer tokens.
    pub reviewer: TokenReviewer,
    /// Every pod, by node and service account.
    pub pods: PodIndex,
    /// `--cluster-id`.
    pub cluster_id: String,
    /// `--agent-service-accounts`.
    pub agent_accounts: Vec<ServiceAccount>,
}

fn refuse(reason: String) -> ImpersonationError {
    ImpersonationError::Kubernetes(reason)
}

fn unsynced(e: NotSynced) -> ImpersonationError {
    ImpersonationError::Unavailable(e.to_string())
}

impl KubeAuth {
    /// The pod a reviewed token is bound to, checked against the index: `(namespace,
    /// name, node)`.
    fn bound_pod(&self, caller: &Caller) -> Result<(String, String, String), ImpersonationError> {
        let Some((ns, sa)) = caller.id.service_account() else {
            return Err(refuse(format!(
                "{} is not a Kubernetes service account",
                caller.id
            )));
        };
        let Some(bound) = &caller.pod else {
            return Err(refuse(format!(
                "the token of {ns}/{sa} is not bound to a pod (use a projected service-account token), so its node is unknown"
            )));
        };
        let pod = self
            .pods
            .pod(ns, &bound.name)
            .map_err(unsynced)?
            .ok_or_else(|| {
                refuse(format!(
                    "the token of {ns}/{sa} is bound to pod {ns}/{}, which the CA does not know",
                    bound.name
                ))
            })?;
        if pod.uid != bound.uid {
            return Err(refuse(format!(
                "the token of {ns}/{sa} is bound to pod {ns}/{} with UID {}, but that pod now has UID {} (it was re-created)",
                bound.name, bound.uid, pod.uid
            )));
        }
        if pod.service_account != sa {
            return Err(refuse(format!(
                "pod {ns}/{} runs as service account {}, not {sa}",
                bound.name, pod.service_account
            )));
        }
        if pod.node.is_empty() {
            return Err(refuse(format!(
                "pod {ns}/{} is not scheduled on a node",
                bound.name
            )));
        }
        if let Some(node) = bound.node.as_deref().filter(|n| *n != pod.node) {
            return Err(refuse(format!(
                "the token of {ns}/{sa} names node {node}, but pod {ns}/{} runs on {}",
                bound.name, pod.node
            )));
        }
        Ok((ns.to_string(), bound.name.clone(), pod.node))
    }

    /// The node the caller runs on.
    fn caller_node(&self, caller: &Caller) -> Result<String, ImpersonationError> {
        match caller.id.node_name() {
            Some(node) => Ok(node.to_string()),
            None => self.bound_pod(caller).map(|(_, _, node)| node),
        }
    }

    /// Whether the node `caller` may obtain `target` for a pod on its node.
    pub fn authorize_on_node(
        &self,
        caller: &Caller,
        target: &SpiffeId,
    ) -> Result<(), ImpersonationError> {
        let Some((ns, sa)) = target.service_account() else {
            return Err(refuse(format!(
                "{target} is not a Kubernetes identity (spiffe://TD/ns/NS/sa/SA)"
            )));
        };
        let node = self.caller_node(caller)?;
        if self.pods.runs_on(&node, ns, sa).map_err(unsynced)? {
            Ok(())
        } else {
            Err(refuse(format!(
                "no running pod with service account {ns}/{sa} is on node {node}"
            )))
        }
    }

    /// Whether `caller` may obtain the node SVID of `node` (`k8s_psat`).
    pub fn attest_node(&self, caller: &Caller, node: &str) -> Result<(), ImpersonationError> {
        if caller.method != AuthMethod::KubernetesToken {
            return Err(refuse(format!(
                "a node SVID is issued only for a reviewed service-account token of --agent-service-accounts; {} authenticated with {}",
                caller.id,
                caller.method.as_str()
            )));
        }
        let allowed = caller.id.service_account().is_some_and(|(ns, sa)| {
            self.agent_accounts
                .iter()
                .any(|a| a.namespace == ns && a.name == sa)
        });
        if !allowed {
            let accounts: Vec<String> = self
                .agent_accounts
                .iter()
                .map(|a| format!("{}/{}", a.namespace, a.name))
                .collect();
            return Err(refuse(format!(
                "{} is not a node agent account (--agent-service-accounts: {})",
                caller.id,
                accounts.join(", ")
            )));
        }
        let (ns, pod, on) = self.bound_pod(caller)?;
        if on != node {
            return Err(refuse(format!(
                "the agent's pod {ns}/{pod} runs on node {on}, not {node}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
