//! Wiring: node attestation, the identity manager, the sockets, monitoring. [`build`]
//! returns once the node is attested and the sockets are open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca_client::CaClient;
use crate::config::{Config, Mode};
use crate::endpoints::Sockets;
use crate::manager::{Manager, Settings};
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};
use crate::rotation::Backoff;

/// A running agent.
#[derive(Debug)]
pub struct Bound {
    /// The shared socket.
    pub shared_socket: PathBuf,
    /// Where /metrics and /ready are served.
    pub monitoring_addr: SocketAddr,
    /// The identity cache.
    pub manager: Arc<Manager>,
    shutdown: watch::Sender<bool>,
    sockets_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Bound {
    /// Stops serving and removes the sockets.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // The socket task closes and removes the named sockets.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.sockets_task).await;
        self.manager.stop();
        for t in self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.shared_socket);
    }
}

/// Attests the node, retrying while the CA is unreachable (a restarted node comes back
/// by itself) or at its limits (`RESOURCE_EXHAUSTED`: waiting at least as long as it
/// asks); a refusal (bad, used or expired token) ends the agent with the CA's reason.
async fn attest(node: &Node) -> anyhow::Result<()> {
    let backoff = Backoff::CA_REQUEST;
    let mut attempt = 0;
    loop {
        match node.attest().await {
            Ok(()) => return Ok(()),
            Err(NodeError::Ca(e))
                if matches!(
                    e.code,
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Unknown
                        | tonic::Code::ResourceExhausted
                ) =>
            {
                attempt += 1;
                if attempt == 1 {
                    tracing::warn!(error = %e, "node attestation: the CA is unreachable or busy; retrying with backoff");
                }
                tokio::time::sleep(crate::clock::with_pushback(
                    backoff.delay(attempt - 1, crate::random_unit()),
                    e.retry_after,
                    crate::random_unit(),
                ))
                .await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("node attestation failed")),
        }
    }
}

impl warden_common::process::Serving for Bound {
    async fn shutdown(self) {
        Bound::shutdown(self).await
    }
}

/// Starts the agent.
pub async fn build(config: Config) -> anyhow::Result<Bound> {
    crate::files::private_dir(&config.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", config.data_dir.display()))?;
    let roots = std::fs::read_to_string(&config.ca_root)
        .with_context(|| format!("cannot read --ca-root {}", config.ca_root.display()))?;
    let ca = Arc::new(
        CaClient::new(&config.ca_addr, &config.tls_server_name, roots)
            .map_err(anyhow::Error::msg)?,
    );
    let node = Arc::new(
        Node::new(
            ca.clone(),
            config.credential.clone(),
            &config.data_dir,
            &config.trust_domain,
            &config.node_name,
            config.svid_ttl,
            config.rotation,
        )
        .map_err(anyhow::Error::new)?,
    );
    if config.mode == Mode::Node {
        attest(&node).await?;
    }
    let metrics = Arc::new(Metrics::default());
    let mut kube_tasks = Vec::new();
    let attestor = match &config.kubernetes {
        Some(kube) => {
            let client = crate::kube::client(kube.kubeconfig.as_deref()).await?;
            let (pods, task) = crate::kube::pods::NodePods::start(client, &config.node_name);
            kube_tasks.push(task);
            Some(crate::kube::PodAttestor {
                pods,
                proc_root: PathBuf::from("/proc"),
                wait: crate::kube::POD_WAIT,
                trust_domain: config.trust_domain.clone(),
            })
        }
        None => None,
    };
    let manager = Manager::new(
        ca,
        node.clone(),
        Settings {
            mode: config.mode,
            ttl: config.svid_ttl,
            rotation: config.rotation,
            sync_interval: config.sync_interval,
            write_dir: config.write_dir.clone(),
        },
        metrics,
    );
    let manager = Arc::new(match attestor {
        Some(a) => manager.with_pod_attestor(a),
        None => manager,
    });
    if let Some(attestor) = manager.pod_attestor() {
        // Not ready until the pods of this node are known.
        let guard = manager.ready().block("pod-watch");
        let pods = attestor.pods.clone();
        kube_tasks.push(tokio::spawn(async move {
            pods.wait_synced().await;
            tracing::info!("the pods of this node are known");
            drop(guard);
        }));
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = manager.start();
    tasks.extend(kube_tasks);
    if node.svid().is_some() {
        tasks.push(tokio::spawn(node.clone().renew_loop(manager.tainted())));
    }
    let shared_socket = config.shared_socket();
    let (sockets, shared_task) = Sockets::start(
        &config.socket_dir,
        &shared_socket,
        manager.clone(),
        shutdown_rx.clone(),
    )
    .with_context(|| format!("cannot open the socket {}", shared_socket.display()))?;
    tasks.push(shared_task);
    let sockets_task = tokio::spawn(sockets.run(shutdown_rx.clone()));
    let listener = TcpListener::bind(config.monitoring_addr)
        .await
        .with_context(|| format!("binding --monitoring-addr {}", config.monitoring_addr))?;
    let monitoring_addr = listener.local_addr()?;
    tasks.push(tokio::spawn(crate::monitoring::serve(
        listener,
        manager.clone(),
        shutdown_rx,
    )));
    tracing::info!(
        socket = %shared_socket.display(),
        monitoring_addr = %monitoring_addr,
        mode = ?config.mode,
        kubernetes = config.kubernetes.is_some(),
        node = %node.expected_id(),
        "warden-agent serving"
    );
    Ok(Bound {
        shared_socket,
        monitoring_addr,
        manager,
        shutdown,
        sockets_task,
        tasks,
    })
}
