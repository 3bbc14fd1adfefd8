//! Kubernetes mode: the CA as istiod's CA in a cluster.
//!
//! One kube client (in-cluster config, or `--kubeconfig` to run outside) is shared by:
//! - [`token_review`]: service-account tokens reviewed by the API server (TokenReview),
//!   cached by token hash;
//! - [`pods`]: a reflector of every pod, indexed by node and service account, for node
//!   authorization (a ztunnel or a Warden node agent may obtain only identities of pods on
//!   its own node) and node attestation (`k8s_psat`);
//! - [`lease`]: leader election among the CA's replicas (a `coordination.k8s.io` Lease);
//! - [`root`]: the signing authority from the `cacerts` or `istio-ca-secret` Secret (the
//!   leader creates the latter once), reloaded when they change;
//! - [`root_configmap`]: the leader keeps `istio-ca-root-cert` in every namespace;
//! - [`webhook`]: the validating admission webhook for `security.istio.io` resources,
//!   and the leader's upkeep of its configuration's `caBundle`.
//!
//! Everything here fails closed: an API-server error refuses the request (`Unavailable`)
//! and is audited by the caller; nothing is allowed on a stale or unsynced view.

pub mod lease;
pub mod pods;
pub mod root;
pub mod root_configmap;
pub mod token_review;
pub mod webhook;

use anyhow::Context;

use crate::config::KubeSettings;

/// Builds the one kube client from the settings: `--kubeconfig`, or the pod's in-cluster
/// service account.
pub async fn client(settings: &KubeSettings) -> anyhow::Result<kube::Client> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("Kubernetes mode is on but the in-cluster config cannot be read (no service-account token or KUBERNETES_SERVICE_HOST); pass --kubeconfig or --kubernetes off")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}
