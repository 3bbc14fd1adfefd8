//! Kubernetes mode's workload attestation, as SPIRE's `k8s` workload attestor and
//! Istio's node agents do it: the caller's `SO_PEERCRED` pid, its `/proc/PID/cgroup`
//! ([`cgroup`]: pod UID and container ID), and the pods of this node from the API server
//! ([`pods`]: namespace, service account, labels, container names). The result is a
//! [`PodCaller`] with its default identity `spiffe://TD/ns/NS/sa/SA`, or the reason the
//! caller cannot be tied to a pod.

pub mod cgroup;
pub mod pods;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use warden_proto::SpiffeId;

use crate::attestation::PodCaller;
use pods::NodePods;

/// How long a caller's pod is waited for when the pod watch has not seen it yet.
pub const POD_WAIT: Duration = Duration::from_secs(5);

/// Builds the kube client: `--kubeconfig`, or the pod's in-cluster service account.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context(
            "Kubernetes mode is on but the in-cluster config cannot be read (no service-account token or KUBERNETES_SERVICE_HOST); pass --kubeconfig or --kubernetes off",
        )?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Ties callers to the pods of this node.
#[derive(Debug, Clone)]
pub struct PodAttestor {
    /// The pods of this node.
    pub pods: NodePods,
    /// Where `/proc` is (tests: a temp dir).
    pub proc_root: PathBuf,
    /// How long a pod missing from the view is waited for.
    pub wait: Duration,
    /// The trust domain of default identities.
    pub trust_domain: String,
}

impl PodAttestor {
    /// The default identity of a pod's service account.
    pub fn identity(&self, namespace: &str, sa: &str) -> Result<SpiffeId, String> {
        SpiffeId::for_service_account(&self.trust_domain, namespace, sa)
            .map_err(|e| format!("pod service account {namespace}/{sa} makes no SPIFFE ID: {e}"))
    }

    /// The pod of the process `pid` (`SO_PEERCRED`), or why there is none.
    pub async fn attest(&self, pid: Option<i32>) -> Result<PodCaller, String> {
        let pid = pid.filter(|p| *p > 0).ok_or_else(|| {
            "the connection has no process ID (SO_PEERCRED): the caller is in another PID namespace; the agent must run with hostPID".to_string()
        })?;
        let proc = cgroup::pod_of_process(&self.proc_root, pid)?;
        let (pod, container_name) = self
            .pods
            .lookup(&proc.pod_uid, proc.container_id.as_deref(), self.wait)
            .await
            .map_err(|e| format!("process {pid} is in pod UID {}, but {e}", proc.pod_uid))?;
        if pod.finished {
            return Err(format!(
                "process {pid} is in pod {}/{}, which has finished",
                pod.namespace, pod.name
            ));
        }
        Ok(PodCaller {
            identity: self.identity(&pod.namespace, &pod.service_account)?,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            service_account: pod.service_account.clone(),
            labels: pod.labels.clone(),
            container_name,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use warden_common::testing::kube_api::FakeApiServer;

    use super::*;
    use crate::kube::pods::tests::pod;

    /// Writes `<root>/<pid>/cgroup` for a containerd container of pod `uid` (systemd
    /// driver, cgroup v2).
    pub(crate) fn proc_of(root: &Path, pid: i32, uid: &str, cid: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let slice = uid.replace('-', "_");
        std::fs::write(
            dir.join("cgroup"),
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slice}.slice/cri-containerd-{cid}.scope\n"),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_process_is_tied_to_its_pod_and_container() {
        let api = FakeApiServer::new();
        let cid = "cd".repeat(32);
        let stored = api.insert(pod("shop", "web-0", "n1", "web", Some(&cid)));
        let uid = stored["metadata"]["uid"].as_str().unwrap();
        let (pods, _task) = NodePods::start(api.client(), "n1");
        pods.wait_synced().await;
        let proc = tempfile::tempdir().unwrap();
        proc_of(proc.path(), 100, uid, &cid);
        std::fs::create_dir_all(proc.path().join("200")).unwrap();
        std::fs::write(
            proc.path().join("200/cgroup"),
            "0::/system.slice/sshd.service\n",
        )
        .unwrap();
        let attestor = PodAttestor {
            pods,
            proc_root: proc.path().to_path_buf(),
            wait: Duration::from_millis(200),
            trust_domain: "cluster.local".into(),
        };
        let p = attestor.attest(Some(100)).await.unwrap();
        assert_eq!(p.identity.as_str(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(p.container_name.as_deref(), Some("app"));
        assert_eq!(p.uid, uid);
        let err = attestor.attest(Some(200)).await.unwrap_err();
        assert!(err.contains("no Kubernetes pod"), "{err}");
        let err = attestor.attest(None).await.unwrap_err();
        assert!(err.contains("hostPID"), "{err}");
        // A pod of another node (or not yet seen): refused after the wait.
        proc_of(
            proc.path(),
            300,
            "11111111-2222-3333-4444-555555555555",
            &cid,
        );
        let err = attestor.attest(Some(300)).await.unwrap_err();
        assert!(
            err.contains("no pod with UID 11111111-2222-3333-4444-555555555555 is on node n1"),
            "{err}"
        );
    }
}
