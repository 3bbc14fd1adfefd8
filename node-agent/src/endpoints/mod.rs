//! The agent's endpoints, as SPIRE's `pkg/agent/endpoints`: the unix sockets and what
//! they serve. The shared socket `<socket-dir>/socket` (callers attested by
//! `SO_PEERCRED`) and one `<socket-dir>/NAME.sock` per `socket:NAME` entry each serve
//! SDS and the SPIFFE Workload API; named sockets come and go with the entries.
//!
//! The parts: this module (binding, serving, the named sockets), [`caller`] (who is
//! calling and which identities it gets), [`sds`] with its pure decisions in
//! [`sds_state`], and [`workload_api`]. Imports go one way: this module uses `sds` and
//! `workload_api`, they use `caller`, and none of them points back.

pub mod caller;
pub mod sds;
pub mod sds_state;
pub mod workload_api;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use warden_common::grpc_status::ResourceExhaustedLayer;
use warden_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;

use crate::manager::{Entry, Manager};
use sds::Sds;
use workload_api::WorkloadApi;

/// Largest request accepted on the sockets; a larger one is answered
/// `RESOURCE_EXHAUSTED` ([`ResourceExhaustedLayer`]).
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Binds a socket, replacing a stale file, world-connectable: on the shared socket the
/// caller's credentials decide; a named socket is for whoever can reach the file.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves SDS and the Workload API on `listener` until `stop` fires. Connections go
/// through `uds::incoming`, so clients on grpc-core (py-spiffe, grpcio), which send the
/// socket path as `:authority`, are served too.
fn serve(
    listener: UnixListener,
    manager: Arc<Manager>,
    socket: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let sds = SecretDiscoveryServiceServer::new(Sds::new(manager.clone(), socket.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let wl = SpiffeWorkloadApiServer::new(WorkloadApi::new(manager, socket.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let result = tonic::transport::Server::builder()
            .layer(ResourceExhaustedLayer)
            .add_service(sds)
            .add_service(wl)
            .serve_with_incoming_shutdown(warden_common::uds::incoming(listener), stop)
            .await;
        if let Err(e) = result {
            tracing::error!(socket = socket.as_deref().unwrap_or("shared"), error = %e, "socket server failed");
        }
    })
}

/// The running sockets.
#[derive(Debug)]
pub struct Sockets {
    dir: PathBuf,
    manager: Arc<Manager>,
    named: HashMap<String, (oneshot::Sender<()>, JoinHandle<()>)>,
}

/// Socket names must be plain file names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "socket"
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Sockets {
    /// Binds the shared socket and starts serving it.
    pub fn start(
        dir: &Path,
        shared: &Path,
        manager: Arc<Manager>,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        std::fs::create_dir_all(dir)?;
        let listener = bind(shared)?;
        let handle = serve(listener, manager.clone(), None, async move {
            let _ = shutdown.changed().await;
        });
        Ok((
            Self {
                dir: dir.to_path_buf(),
                manager,
                named: HashMap::new(),
            },
            handle,
        ))
    }

    /// Opens sockets for new `socket:NAME` entries and closes those of removed ones.
    pub fn reconcile(&mut self, names: &[String]) {
        let stale: Vec<String> = self
            .named
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in stale {
            if let Some((stop, _)) = self.named.remove(&name) {
                let _ = stop.send(());
            }
            let _ = std::fs::remove_file(self.dir.join(format!("{name}.sock")));
            tracing::info!(socket = %name, "named socket closed: no entry uses it any more");
        }
        for name in names {
            if self.named.contains_key(name) {
                continue;
            }
            if !valid_name(name) {
                tracing::warn!(socket = %name, "not opening a socket for an entry: the name must be [A-Za-z0-9._-], not \"socket\"");
                continue;
            }
            let path = self.dir.join(format!("{name}.sock"));
            match bind(&path) {
                Ok(listener) => {
                    let (tx, rx) = oneshot::channel::<()>();
                    let handle = serve(
                        listener,
                        self.manager.clone(),
                        Some(name.clone()),
                        async move {
                            let _ = rx.await;
                        },
                    );
                    tracing::info!(socket = %path.display(), "named socket open");
                    self.named.insert(name.clone(), (tx, handle));
                }
                Err(e) => {
                    tracing::error!(socket = %path.display(), error = %e, "cannot open a named socket")
                }
            }
        }
    }

    /// Keeps the named sockets in line with the entries until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut updates = self.manager.subscribe();
        let mut seen: Option<Arc<Vec<Entry>>> = None;
        loop {
            // Not holding the state across the wait: a held `Arc<State>` makes every
            // update copy the whole state.
            let entries = self.manager.state().entries.clone();
            if !seen.as_ref().is_some_and(|e| Arc::ptr_eq(e, &entries)) {
                let names = self.manager.state().socket_names();
                self.reconcile(&names);
                seen = Some(entries);
            }
            tokio::select! {
                r = updates.changed() => if r.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        for (name, (stop, _)) in self.named.drain() {
            let _ = stop.send(());
            let _ = std::fs::remove_file(self.dir.join(format!("{name}.sock")));
        }
    }
}
