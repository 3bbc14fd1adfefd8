//! Node attestation: how the agent proves which node it is, and the node SVID it keeps.
//!
//! - A node SVID in `<data-dir>/node/` that is still valid and names this node is used
//!   as the TLS client certificate, and renewed over mTLS before it expires.
//! - Otherwise a `--join-token` buys the first node SVID (the CA spends the token).
//! - With `--token-file`, every call carries the service-account JWT, re-read each
//!   time because projected tokens rotate; the CA must trust that account as a node.
//! - In Kubernetes mode (SPIRE's `k8s_psat`), the projected service-account token
//!   (`--kube-token-file`, re-read on every request because kubelet rotates it) buys the
//!   node SVID: CreateCertificate with ImpersonatedIdentity `spiffe://TD/warden/node/N`.
//!   The CA gives it only to an `--agent-service-accounts` token whose pod runs on N.
//!   Renewal asks the same way, so an expired node SVID never strands the agent.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use warden_proto::SpiffeId;

use crate::ca_client::{CaError, CertificateAuthority};
use crate::clock::Timing;
use crate::config::NodeCredential;
use crate::files;
use crate::rotation::RotationPolicy;
use crate::svid::{NodeKey, Svid};

/// The node's identity and how to present it.
#[derive(Debug)]
pub struct Node {
    ca: Arc<dyn CertificateAuthority>,
    timing: Timing,
    credential: NodeCredential,
    dir: PathBuf,
    expected: SpiffeId,
    ttl: std::time::Duration,
    rotation: RotationPolicy,
    svid: watch::Sender<Option<Arc<Svid>>>,
}

/// Why the node cannot attest.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The CA refused or could not be reached.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The token file cannot be read.
    #[error("cannot read {flag} {path}: {reason}")]
    TokenFile {
        /// The flag that names it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Anything else, with the reason.
    #[error("{0}")]
    Other(String),
}

impl Node {
    /// Sets up node attestation; nothing is sent yet.
    pub fn new(
        ca: Arc<dyn CertificateAuthority>,
        credential: NodeCredential,
        data_dir: &std::path::Path,
        trust_domain: &str,
        node_name: &str,
        ttl: std::time::Duration,
        rotation: RotationPolicy,
    ) -> Result<Self, NodeError> {
        let expected = SpiffeId::for_node(trust_domain, node_name)
            .map_err(|e| NodeError::Other(format!("--node-name {node_name:?}: {e}")))?;
        Ok(Self {
            ca,
            timing: Timing::default(),
            credential,
            dir: data_dir.join("node"),
            expected,
            ttl,
            rotation,
            svid: watch::channel(None).0,
        })
    }

    /// Keeps time with `timing` (tests: a clock that follows tokio's paused one,
    /// backoff without jitter).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The bearer token to send, if the node authenticates with a token file.
    pub fn bearer(&self) -> Result<Option<String>, NodeError> {
        match &self.credential {
            NodeCredential::TokenFile(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| NodeError::TokenFile {
                    flag: "--token-file",
                    path: path.clone(),
                    reason: e.to_string(),
                }),
            _ => Ok(None),
        }
    }

    /// Kubernetes mode: the projected token, read now (kubelet rotates it).
    fn kube_token(path: &std::path::Path) -> Result<String, NodeError> {
        let token = std::fs::read_to_string(path).map_err(|e| NodeError::TokenFile {
            flag: "--kube-token-file",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(NodeError::TokenFile {
                flag: "--kube-token-file",
                path: path.to_path_buf(),
                reason: "the file is empty".into(),
            });
        }
        Ok(token.to_string())
    }

    /// Kubernetes mode: a node SVID for the projected token, impersonating the node's
    /// own ID (`k8s_psat`), saved and presented from now on.
    async fn attest_with_kube_token(&self, path: &std::path::Path) -> Result<(), NodeError> {
        let token = Self::kube_token(path)?;
        let key = NodeKey::generate().map_err(|e| NodeError::Other(e.to_string()))?;
        let csr = key
            .csr_pem(Some(&self.expected))
            .map_err(|e| NodeError::Other(e.to_string()))?;
        let answer = self
            .ca
            .create_certificate(csr, self.ttl, Some(&self.expected), Some(&token))
            .await
            .map_err(|e| match e.code {
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                    NodeError::Other(format!(
                        "{e} (Kubernetes node attestation: the token in --kube-token-file {} must be the agent's projected service-account token with audience istio-ca, of an account in the CA's --agent-service-accounts, from a pod on node {})",
                        path.display(),
                        self.expected.node_name().unwrap_or_default()
                    ))
                }
                _ => NodeError::Ca(e),
            })?;
        let svid = Svid::from_ca_answer(key, &answer, Some(&self.expected), self.timing.now())
            .map_err(|e| NodeError::Other(e.to_string()))?;
        self.save(&svid)?;
        tracing::info!(id = %svid.id, serial = %svid.serial, "node attested with its Kubernetes service-account token");
        self.install(svid)
    }

    /// Whether the node authenticates with a service-account token (no node SVID).
    pub fn uses_token_file(&self) -> bool {
        matches!(self.credential, NodeCredential::TokenFile(_))
    }

    /// The current node SVID, if the node has one.
    pub fn svid(&self) -> Option<Arc<Svid>> {
        self.svid.borrow().clone()
    }

    /// The node's expected SPIFFE ID.
    pub fn expected_id(&self) -> &SpiffeId {
        &self.expected
    }

    fn load_saved(&self) -> Result<Option<Svid>, NodeError> {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name));
        let (chain, key, root) = match (
            read(files::CHAIN_FILE),
            read(files::KEY_FILE),
            read(files::ROOT_FILE),
        ) {
            (Ok(c), Ok(k), Ok(r)) => (c, k, r),
            _ => return Ok(None),
        };
        let svid = Svid::from_files(&chain, &key, &root, self.timing.now()).map_err(|e| {
            NodeError::Other(format!(
                "the node SVID in {} is unusable: {e}; remove it and start with a new --join-token",
                self.dir.display()
            ))
        })?;
        if svid.id != self.expected {
            return Err(NodeError::Other(format!(
                "the node SVID in {} is for {}, but this agent is {} (--node-name, --trust-domain)",
                self.dir.display(),
                svid.id,
                self.expected
            )));
        }
        Ok(Some(svid))
    }

    fn save(&self, svid: &Svid) -> Result<(), NodeError> {
        files::private_dir(&self.dir)
            .and_then(|()| files::write_svid(&self.dir, svid))
            .map_err(|e| {
                NodeError::Other(format!(
                    "cannot keep the node SVID in {}: {e}",
                    self.dir.display()
                ))
            })
    }

    fn install(&self, svid: Svid) -> Result<(), NodeError> {
        self.ca.set_identity(&svid).map_err(NodeError::Other)?;
        self.svid.send_replace(Some(Arc::new(svid)));
        Ok(())
    }

    /// Proves the node to the CA once: a saved node SVID, else the join token. With a
    /// token file there is nothing to do up front.
    pub async fn attest(&self) -> Result<(), NodeError> {
        if self.uses_token_file() {
            return Ok(());
        }
        if let NodeCredential::KubeToken(path) = &self.credential {
            return self.attest_with_kube_token(path).await;
        }
        if let Some(saved) = self.load_saved()? {
            if saved.valid_at(self.timing.now()) {
                tracing::info!(id = %saved.id, serial = %saved.serial, "using the node SVID kept in the data dir");
                return self.install(saved);
            }
            tracing::warn!(id = %saved.id, "the node SVID kept in the data dir has expired");
        }
        let NodeCredential::JoinToken(token) = &self.credential else {
            return Err(NodeError::Other(format!(
                "no valid node SVID in {} and no --join-token: create one with `warden token create --node {}` and start with --join-token",
                self.dir.display(),
                self.expected.node_name().unwrap_or_default()
            )));
        };
        let key = NodeKey::generate().map_err(|e| NodeError::Other(e.to_string()))?;
        // The CSR names the node this agent is, so the CA refuses a token made for
        // another node before spending it (a --node-name typo must not burn the token).
        let csr = key
            .csr_pem(Some(&self.expected))
            .map_err(|e| NodeError::Other(e.to_string()))?;
        let answer = self
            .ca
            .create_certificate(csr, self.ttl, None, Some(token))
            .await
            .map_err(|e| match e.code {
                tonic::Code::InvalidArgument => NodeError::Other(format!(
                    "{e} (a join token is for one node: check --node-name {})",
                    self.expected.node_name().unwrap_or_default()
                )),
                _ => NodeError::Ca(e),
            })?;
        let svid = Svid::from_ca_answer(key, &answer, None, self.timing.now())
            .map_err(|e| NodeError::Other(e.to_string()))?;
        if svid.id != self.expected {
            return Err(NodeError::Other(format!(
                "the join token is for {}, but this agent is {} (check --node-name)",
                svid.id, self.expected
            )));
        }
        self.save(&svid)?;
        tracing::info!(id = %svid.id, serial = %svid.serial, "node attested with the join token");
        self.install(svid)
    }

    async fn renew_once(&self) -> Result<(), NodeError> {
        if let NodeCredential::KubeToken(path) = &self.credential {
            return self.attest_with_kube_token(path).await;
        }
        let key = NodeKey::generate().map_err(|e| NodeError::Other(e.to_string()))?;
        let csr = key
            .csr_pem(None)
            .map_err(|e| NodeError::Other(e.to_string()))?;
        let answer = self
            .ca
            .create_certificate(csr, self.ttl, None, None)
            .await?;
        let svid = Svid::from_ca_answer(key, &answer, Some(&self.expected), self.timing.now())
            .map_err(|e| NodeError::Other(e.to_string()))?;
        self.save(&svid)?;
        tracing::info!(id = %svid.id, serial = %svid.serial, "node SVID renewed");
        self.install(svid)
    }

    /// Renews the node SVID over mTLS for as long as the agent runs: at its refresh
    /// time, or at once when the CA taints the authority that signed it.
    pub async fn renew_loop(self: Arc<Self>, mut tainted: crate::rotation::Tainted) {
        let mut attempt = 0;
        let mut expired_logged = false;
        loop {
            let Some(current) = self.svid() else {
                return;
            };
            let at = self.rotation.refresh_at(
                current.not_before,
                current.not_after,
                current.received,
                crate::random_unit(),
            );
            let wait = at.duration_since(self.timing.now()).unwrap_or_default();
            let aki = current.authority_key_id.as_deref();
            if crate::rotation::sleep_unless_tainted(wait, &mut tainted, aki, &current.serial).await
            {
                tracing::info!(id = %current.id, serial = %current.serial, authority = aki.unwrap_or_default(), "the node SVID was revoked or signed by a tainted authority; renewing it now");
            }
            loop {
                match self.renew_once().await {
                    Ok(()) => {
                        if attempt > 0 {
                            tracing::info!("node SVID renewal recovered");
                        }
                        attempt = 0;
                        expired_logged = false;
                        break;
                    }
                    Err(e) => {
                        attempt += 1;
                        if attempt == 1 {
                            tracing::warn!(error = %e, "node SVID renewal failed; retrying with backoff");
                        } else {
                            tracing::debug!(error = %e, attempt, "node SVID renewal failed again");
                        }
                        let left = current
                            .not_after
                            .duration_since(self.timing.now())
                            .unwrap_or_default();
                        let kube = matches!(self.credential, NodeCredential::KubeToken(_));
                        if left.is_zero() && !expired_logged && !kube {
                            expired_logged = true;
                            tracing::error!(
                                id = %current.id,
                                "the node SVID has expired; mTLS renewal cannot succeed. Restart the agent with a new --join-token (warden token create --node {})",
                                self.expected.node_name().unwrap_or_default()
                            );
                        }
                        let pushback = match &e {
                            NodeError::Ca(ca) => ca.retry_after,
                            _ => None,
                        };
                        tokio::time::sleep(self.timing.retry_delay_after(attempt, left, pushback))
                            .await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca_client::fake::{FakeCa, at};

    /// Node `n1` with `credential` on `ca` under tokio's paused clock: 100 s node SVIDs
    /// renewed at half life, backoff without jitter.
    fn node_n1(ca: &Arc<FakeCa>, dir: &std::path::Path, credential: NodeCredential) -> Arc<Node> {
        let node = Node::new(
            ca.clone(),
            credential,
            dir,
            "cluster.local",
            "n1",
            Duration::from_secs(100),
            RotationPolicy::new(0.5, 0.0).unwrap(),
        )
        .unwrap()
        .with_timing(ca.timing());
        Arc::new(node)
    }

    /// A node attested with a join token at 0 s, its renewal loop running.
    struct Renewing {
        dir: tempfile::TempDir,
        ca: Arc<FakeCa>,
        node: Arc<Node>,
        first: Arc<Svid>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Renewing {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn renewing() -> Renewing {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(FakeCa::new());
        let node = node_n1(&ca, dir.path(), NodeCredential::JoinToken("token".into()));
        node.attest().await.unwrap();
        let first = node.svid().unwrap();
        let task = tokio::spawn(
            node.clone()
                .renew_loop(tokio::sync::watch::channel(Default::default()).1),
        );
        Renewing {
            dir,
            ca,
            node,
            first,
            task,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_node_svid_is_renewed_at_half_life_and_presented_to_the_ca() {
        let Renewing {
            ca, node, first, ..
        } = &renewing().await;
        assert_eq!(&first.id, node.expected_id());
        assert_eq!(ca.client(), Some((first.id.clone(), at(100))));
        tokio::time::sleep(Duration::from_millis(49_900)).await;
        assert!(Arc::ptr_eq(&node.svid().unwrap(), first), "renewed early");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = node.svid().unwrap();
        assert_ne!(second.serial, first.serial, "not renewed at 50 s");
        assert_eq!(&second.id, node.expected_id());
        // The renewed SVID is the client certificate from now on, and kept on disk.
        assert_eq!(ca.client(), Some((second.id.clone(), at(150))));
        let saved = std::fs::read_to_string(node.dir.join(files::CHAIN_FILE));
        assert_eq!(saved.unwrap(), second.chain_pem);
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert_eq!(ca.call_times(true), [0, 50_000, 100_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_backs_off_and_recovers_while_the_node_svid_is_valid() {
        let Renewing {
            ca, node, first, ..
        } = &renewing().await;
        ca.set_down(true);
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(
            ca.call_times(false),
            [50_000, 50_500, 51_500, 53_500, 57_500, 65_500]
        );
        assert!(Arc::ptr_eq(&node.svid().unwrap(), first));
        ca.set_down(false);
        tokio::time::sleep(Duration::from_secs(20)).await; // t = 90 s
        assert_eq!(ca.call_times(true), [0, 81_500]);
        let second = node.svid().unwrap();
        assert_ne!(second.serial, first.serial);
        assert_eq!(ca.client(), Some((second.id.clone(), second.not_after)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_node_svid_cannot_renew_and_a_restart_needs_a_join_token() {
        let Renewing {
            dir,
            ca,
            node,
            first,
            ..
        } = &renewing().await;
        ca.set_down(true);
        tokio::time::sleep(Duration::from_secs(120)).await;
        // Back after the node SVID expired at 100 s: the CA refuses the expired client
        // certificate, so renewal keeps failing and the old SVID stays.
        ca.set_down(false);
        let before = ca.calls().len();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(ca.calls().len() > before, "no retry after the CA came back");
        assert_eq!(ca.call_times(true), [0]);
        assert!(Arc::ptr_eq(&node.svid().unwrap(), first));
        // A restart without a join token finds only the expired SVID and says what to do.
        let restarted = node_n1(ca, dir.path(), NodeCredential::None);
        let err = restarted.attest().await.unwrap_err().to_string();
        assert!(err.contains("no valid node SVID"), "{err}");
        assert!(err.contains("--join-token"), "{err}");
        assert!(restarted.svid().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_reuses_the_kept_node_svid_without_the_ca() {
        let Renewing { dir, ca, first, .. } = &renewing().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let restarted = node_n1(ca, dir.path(), NodeCredential::None);
        restarted.attest().await.unwrap();
        let reused = restarted.svid().unwrap();
        assert_eq!(reused.serial, first.serial);
        assert_eq!(reused.received, at(30), "its life counts from the restart");
        assert_eq!(ca.calls().len(), 1, "no CA call on the restart");
        assert_eq!(ca.client(), Some((first.id.clone(), at(100))));
    }

    /// Kubernetes mode: node `n1` whose projected token is `dir/token`.
    fn kube_node(ca: &Arc<FakeCa>, dir: &std::path::Path, token: &str) -> Arc<Node> {
        let path = dir.join("token");
        std::fs::write(&path, format!("{token}\n")).unwrap();
        node_n1(ca, dir, NodeCredential::KubeToken(path))
    }

    #[tokio::test(start_paused = true)]
    async fn kubernetes_mode_attests_with_the_projected_token_re_read_on_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(FakeCa::new());
        let node = kube_node(&ca, dir.path(), "jwt-1");
        node.attest().await.unwrap();
        let first = node.svid().unwrap();
        assert_eq!(&first.id, node.expected_id());
        let calls = ca.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].bearer.as_deref(), Some("jwt-1"));
        assert_eq!(calls[0].impersonate.as_ref(), Some(node.expected_id()));
        // The workloads' calls go over mTLS with the node SVID; no token for them.
        assert_eq!(ca.client(), Some((first.id.clone(), at(100))));
        assert_eq!(node.bearer().unwrap(), None);
        // kubelet rotates the token: the renewal at half life sends the new one.
        std::fs::write(dir.path().join("token"), "jwt-2").unwrap();
        let task = tokio::spawn(
            node.clone()
                .renew_loop(tokio::sync::watch::channel(Default::default()).1),
        );
        tokio::time::sleep(Duration::from_millis(50_100)).await;
        let second = node.svid().unwrap();
        assert_ne!(second.serial, first.serial);
        let calls = ca.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].bearer.as_deref(), Some("jwt-2"));
        assert_eq!(calls[1].impersonate.as_ref(), Some(node.expected_id()));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn kubernetes_mode_recovers_after_the_node_svid_expired() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(FakeCa::new());
        let node = kube_node(&ca, dir.path(), "jwt");
        node.attest().await.unwrap();
        let first = node.svid().unwrap();
        let task = tokio::spawn(
            node.clone()
                .renew_loop(tokio::sync::watch::channel(Default::default()).1),
        );
        ca.set_down(true);
        tokio::time::sleep(Duration::from_secs(120)).await;
        ca.set_down(false);
        // No join token needed: the token buys a new node SVID once the CA is back.
        tokio::time::sleep(Duration::from_secs(300)).await;
        let renewed = node.svid().unwrap();
        assert_ne!(renewed.serial, first.serial);
        assert!(renewed.valid_at(ca.timing().now()));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn kubernetes_mode_names_a_missing_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(FakeCa::new());
        let node = node_n1(
            &ca,
            dir.path(),
            NodeCredential::KubeToken(dir.path().join("absent")),
        );
        let err = node.attest().await.unwrap_err().to_string();
        assert!(
            err.contains("--kube-token-file") && err.contains("absent"),
            "{err}"
        );
        assert!(ca.calls().is_empty());
    }
}
