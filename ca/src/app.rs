//! Wiring: builds every part of the CA from a [`Config`], binds the listeners and
//! returns a [`Bound`] handle with the real addresses, so tests can bind port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use warden_common::grpc_status::ResourceExhaustedLayer;
use warden_common::readiness::Ready;
use warden_proto::admin::admin_server::AdminServer;
use warden_proto::istio_ca::istio_certificate_service_server::IstioCertificateServiceServer;
use warden_proto::warden_ca::jwt_svid_service_server::JwtSvidServiceServer;

use crate::admin::AdminService;
use crate::auth::{Authenticator, JwtValidator, KubeAuth};
use crate::certificate::CertificateService;
use crate::config::Config;
use crate::kube::token_review::TokenReviewer;
use crate::monitoring::{self, Metrics};
use crate::pki::{Authority, AuthorityHandle};
use crate::store::Store;

/// Largest gRPC message accepted (a CSR request is a few KiB); a larger one is answered
/// `RESOURCE_EXHAUSTED` ([`ResourceExhaustedLayer`]).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A running CA.
#[derive(Debug)]
pub struct Bound {
    /// Address of the gRPC/TLS certificate API.
    pub grpc_addr: SocketAddr,
    /// Address of the monitoring endpoints.
    pub monitoring_addr: SocketAddr,
    /// Address of the admission webhook (Kubernetes mode only).
    pub webhook_addr: Option<SocketAddr>,
    /// Address of the federation bundle endpoint (`--bundle-endpoint-addr`).
    pub bundle_endpoint_addr: Option<SocketAddr>,
    /// The bundles of the trust domains federated with (`--federates-with`).
    pub federation: Option<Arc<crate::federation::Federation>>,
    /// Path of the admin socket.
    pub admin_socket: PathBuf,
    /// Path of the trust bundle clients should use.
    pub root_cert_path: PathBuf,
    /// Metrics, shared with the servers.
    pub metrics: Arc<Metrics>,
    /// The storage handle.
    pub store: Store,
    /// The signing authority in use.
    pub authority: AuthorityHandle,
    /// Whether this replica leads (always, outside Kubernetes).
    pub leader: watch::Receiver<bool>,
    /// `/ready`'s guards; shutdown takes one (`draining`).
    ready: Ready,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Watchers with nothing to drain: aborted at shutdown.
    background: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
}

impl warden_common::process::Serving for Bound {
    async fn shutdown(self) {
        Bound::shutdown(self).await
    }
}

/// Builds and starts the CA.
pub async fn build(config: Config) -> anyhow::Result<Bound> {
    create_data_dir(&config.data_dir)?;
    let store = Store::open(&config.database_url)
        .await
        .with_context(|| format!("opening the database {}", config.database_url_redacted()))?;
    let metrics = Arc::new(Metrics::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Watchers that only end when aborted (at shutdown).
    let mut background = Vec::new();

    // Kubernetes mode: one client; the replicas elect a leader over a Lease (it creates
    // the root Secret, keeps the root ConfigMaps and the webhook's caBundle). Outside
    // Kubernetes the single CA always leads.
    let kube_client = match &config.kubernetes {
        Some(settings) => Some(crate::kube::client(settings).await?),
        None => None,
    };
    let leader = match (&config.kubernetes, &kube_client) {
        (Some(settings), Some(client)) => {
            let (leader, task) = crate::kube::lease::start(
                ::kube::Api::namespaced(client.clone(), &settings.namespace),
                settings.pod_name.clone(),
                crate::kube::lease::LeaseTimings::default(),
                shutdown_rx.clone(),
            );
            tasks.push(task);
            leader
        }
        _ => watch::channel(true).1,
    };

    // The CA's Secrets (Kubernetes mode): the root (cacerts, else istio-ca-secret) unless
    // --plugin-certs files win, and the keys every replica shares.
    let cluster_secrets = match (&config.kubernetes, &kube_client) {
        (Some(settings), Some(client)) => Some(crate::kube::root::RootSecrets::new(
            client.clone(),
            &settings.namespace,
            &config.trust_domain,
            config.key_type,
        )),
        _ => None,
    };
    let root_secrets = cluster_secrets
        .as_ref()
        .filter(|_| config.plugin_certs.is_none());
    // An own root (no plugged-in CA, no Secret) is a set of authorities that
    // `warden ca authority` and the automatic schedule rotate.
    let own_root = root_secrets.is_none() && config.plugin_certs.is_none();
    let authority_set = if own_root {
        Some(
            crate::pki::rotation::AuthoritySet::load(
                &config.data_dir,
                &config.trust_domain,
                config.key_type,
                config.root_ttl,
            )
            .context("loading the CA's authorities")?,
        )
    } else {
        None
    };
    // What the plugged-in files were when read, to notice when they change.
    let plugged_fingerprint = config
        .plugin_certs
        .as_deref()
        .and_then(crate::plugged::fingerprint);
    let loaded = match (&root_secrets, &authority_set) {
        (Some(secrets), _) => secrets.initial(&store, &mut leader.clone()).await?,
        (None, Some(set)) => set
            .authority()
            .context("loading the CA's active authority")?,
        (None, None) => match (&config.plugin_certs, &config.ca_key_uri) {
            // AuthorityHandle::new below writes root-cert.pem.
            (Some(dir), Some(uri)) => Authority::load_plugged_hsm(dir, uri)
                .context("loading the plugged-in CA with its key in the token")?,
            _ => Authority::load(
                &config.data_dir,
                config.plugin_certs.as_deref(),
                &config.trust_domain,
                config.key_type,
            )
            .context("loading the CA's keys and certificates")?,
        },
    };
    tracing::info!(source = loaded.source(), root_not_after = %loaded.root_not_after(), "authority loaded");
    let root_cert_path = config.data_dir.join("root-cert.pem");
    let authority = AuthorityHandle::new(loaded, root_cert_path.clone(), metrics.clone())
        .context("publishing the trust bundle")?;
    if let Some(dir) = &config.plugin_certs {
        let uri = config.ca_key_uri.clone();
        let load = move |dir: &std::path::Path| match &uri {
            Some(uri) => Authority::load_plugged_hsm(dir, uri),
            None => Authority::load_plugged(dir),
        };
        background.push(tokio::spawn(crate::plugged::follow(
            dir.clone(),
            load,
            plugged_fingerprint,
            authority.clone(),
            store.clone(),
            config.trust_domain.clone(),
            shutdown_rx.clone(),
        )));
    }
    let rotation = authority_set.map(|set| {
        crate::rotation::Rotation::new(
            set,
            authority.clone(),
            store.clone(),
            config.trust_domain.clone(),
        )
    });
    if let (Some(rotation), Some(auto)) = (&rotation, config.auto_rotation) {
        // Checked often enough to act within 1/200 of a root's life, at most each minute.
        let every = (config.root_ttl / 200).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tasks.push(tokio::spawn(rotation.clone().run_auto(
            auto,
            every,
            shutdown_rx.clone(),
        )));
    }
    if let Some(secrets) = root_secrets {
        background.push(tokio::spawn(secrets.clone().watch(
            authority.clone(),
            store.clone(),
            shutdown_rx.clone(),
        )));
    }
    // The JWT-SVID and audit keys: in Kubernetes mode shared by every replica through
    // a Secret (one JWT bundle whichever replica answers), else in the data directory.
    let (jwt_signer, audit_signer) = match &cluster_secrets {
        Some(secrets) => {
            let keys = secrets.shared_keys(&mut leader.clone()).await?;
            (
                crate::pki::JwtSigner::from_pem(&keys.jwt_key, &secrets.key_label("jwt-key.pem"))
                    .context("the JWT-SVID signing key")?,
                crate::checkpoint::AuditSigner::from_pem(
                    &keys.audit_key,
                    &secrets.key_label("audit-key.pem"),
                    &config.trust_domain,
                )
                .context("the audit checkpoint key")?,
            )
        }
        None => (
            crate::pki::JwtSigner::load_or_create(&config.data_dir)
                .context("loading the JWT-SVID signing key")?,
            crate::checkpoint::AuditSigner::load_or_create(&config.data_dir, &config.trust_domain)
                .context("loading the audit checkpoint key")?,
        ),
    };
    let (jwt_signer, audit_signer) = (Arc::new(jwt_signer), Arc::new(audit_signer));
    if let Some(interval) = config.audit_checkpoint_interval {
        tasks.push(tokio::spawn(audit_signer.clone().run_periodic(
            store.clone(),
            interval,
            shutdown_rx.clone(),
        )));
    }
    let jwt = match &config.jwks {
        Some(path) => Some(
            JwtValidator::from_file(
                path,
                config.token_issuer.as_deref().unwrap_or_default(),
                &config.token_audiences,
                &config.trust_domain,
            )
            .map_err(anyhow::Error::msg)
            .context("--jwks")?,
        ),
        None => None,
    };
    let ready = Ready::new();
    // Kubernetes mode: tokens reviewed by the API server; pods indexed for node
    // authorization (`/ready` waits for the first pod list); the root ConfigMaps.
    let kube_auth = match (&config.kubernetes, &kube_client) {
        (Some(settings), Some(client)) => {
            let client = client.clone();
            let (pods, pod_task) = crate::kube::pods::PodIndex::start(client.clone());
            background.push(pod_task);
            background.push(tokio::spawn(crate::kube::root_configmap::run(
                client.clone(),
                authority.bundle(),
                leader.clone(),
                shutdown_rx.clone(),
            )));
            let synced = ready.block("pod-index");
            let waiting = pods.clone();
            tasks.push(tokio::spawn(async move {
                waiting.wait_synced().await;
                drop(synced);
            }));
            tracing::info!(cluster_id = %settings.cluster_id, namespace = %settings.namespace, "Kubernetes mode");
            Some(KubeAuth {
                reviewer: TokenReviewer::new(client, config.token_audiences.clone()),
                pods,
                cluster_id: settings.cluster_id.clone(),
                agent_accounts: settings.agent_service_accounts.clone(),
            })
        }
        _ => None,
    };
    // Revoked identities and serials, for the request path; filled below.
    let revoked = Arc::new(crate::revocation::RevokedSet::default());
    let auth = Arc::new(
        Authenticator::new(
            config.trust_domain.clone(),
            jwt,
            config.trusted_node_accounts.clone(),
            store.clone(),
            kube_auth,
        )
        .with_revoked(revoked.clone()),
    );
    // Aggregated authentication-failure rows, each minute and at shutdown.
    tasks.push(tokio::spawn(
        auth.flood_guard().run(store.clone(), shutdown_rx.clone()),
    ));
    // Released once every listener is bound and served.
    let listeners = ready.block("listeners");

    // Certificate API over TLS, its serving certificate re-issued when the authority
    // changes.
    let (tls, tls_task) = crate::tls::follow_authority(
        authority.clone(),
        config.serving_dns_names.clone(),
        config.serving_ip_addrs.clone(),
        shutdown_rx.clone(),
    )?;
    tasks.push(tls_task);
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding --grpc-addr {}", config.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let (conn_tx, conn_rx) = mpsc::channel(256);
    tasks.push(tokio::spawn(crate::tls::accept_loop(
        grpc_listener,
        tls,
        conn_tx,
        shutdown_rx.clone(),
    )));
    let service = CertificateService::new(
        authority.clone(),
        auth.clone(),
        store.clone(),
        metrics.clone(),
        config.workload_cert_ttl,
        config.max_workload_cert_ttl,
        Arc::new(crate::limits::Limits::new(config.limits)),
    )
    .with_revoked(revoked.clone());
    let revocations = crate::revocation::Revocations::start(
        store.clone(),
        authority.clone(),
        rotation.clone(),
        revoked,
    )
    .await
    .map_err(anyhow::Error::msg)
    .context("signing the CRLs")?;
    tasks.push(tokio::spawn(revocations.clone().run(shutdown_rx.clone())));
    // Federation: the bundles of the trust domains this one federates with, each kept
    // fresh from its bundle endpoint, handed to agents beside this trust domain's own.
    let federation = match &config.federates_with_file {
        None => None,
        Some(file) => {
            let fed = crate::federation::Federation::load(&config.data_dir, &config.federates_with)
                .map_err(anyhow::Error::msg)
                .context("--federates-with")?;
            background.push(tokio::spawn(crate::federation::run(
                fed.clone(),
                file.clone(),
                config.federates_with.clone(),
                store.clone(),
                config.trust_domain.clone(),
                shutdown_rx.clone(),
            )));
            Some(fed)
        }
    };
    let mut bundle_endpoint_addr = None;
    if let Some(settings) = &config.bundle_endpoint {
        let (endpoint, task) = crate::federation::endpoint::follow(
            settings,
            authority.clone(),
            jwt_signer.clone(),
            config.trust_domain.clone(),
            &config.data_dir,
            config.serving_dns_names.clone(),
            config.serving_ip_addrs.clone(),
            shutdown_rx.clone(),
        )
        .map_err(anyhow::Error::msg)
        .context("the bundle endpoint")?;
        tasks.push(task);
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding --bundle-endpoint-addr {}", settings.addr))?;
        bundle_endpoint_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(crate::federation::endpoint::serve(
            listener,
            endpoint,
            shutdown_rx.clone(),
        )));
    }
    let jwt_service = crate::jwt_svid::JwtService::new(
        jwt_signer,
        auth.clone(),
        store.clone(),
        metrics.clone(),
        config.trust_domain.clone(),
        config.jwt_svid_ttl,
        config.max_workload_cert_ttl,
    )
    .with_authority(authority.clone())
    .with_revocations(revocations.clone())
    .with_federation(federation.clone());
    let grpc = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .layer(ResourceExhaustedLayer)
        .add_service(
            IstioCertificateServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            JwtSvidServiceServer::new(jwt_service).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            warden_proto::warden_ca::node_service_server::NodeServiceServer::new(
                crate::node_api::NodeApi::new(auth.clone(), store.clone(), metrics.clone()),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    let incoming = ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>);
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let signal = async move {
            let _ = rx.changed().await;
        };
        if let Err(e) = grpc.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(error = %e, "certificate API server failed");
        }
    }));

    // Admin API on a unix socket only the CA's user can open (grpc-core clients too).
    let admin_socket = config.admin_socket();
    let admin_listener = bind_admin_socket(&admin_socket).await?;
    let admin = AdminService::new(
        store.clone(),
        config.trust_domain.clone(),
        config.join_token_ttl,
        authority.clone(),
        audit_signer,
    );
    let admin = match &rotation {
        Some(r) => admin.with_rotation(r.clone()),
        None => admin,
    };
    let admin = admin.with_revocations(revocations.clone());
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let signal = async move {
            let _ = rx.changed().await;
        };
        let result = tonic::transport::Server::builder()
            .layer(ResourceExhaustedLayer)
            .add_service(AdminServer::new(admin).max_decoding_message_size(MAX_MESSAGE_BYTES))
            .serve_with_incoming_shutdown(warden_common::uds::incoming(admin_listener), signal)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin API server failed");
        }
    }));

    // Kubernetes mode: the validating admission webhook on its own TLS port, with a
    // serving certificate this CA issues for the webhook Service, and the caBundle of
    // its configuration kept equal to the trust bundle.
    let mut webhook_addr = None;
    if let (Some(settings), Some(client)) = (&config.kubernetes, &kube_client) {
        use crate::kube::webhook;
        let names = webhook::dns_names(&settings.webhook_service_name, &settings.namespace);
        let mut changes = authority.subscribe();
        let (chain, key) = changes
            .borrow_and_update()
            .serving_cert(&names, &[])
            .context("making the webhook's serving certificate")?;
        let cert = webhook::ServingCert::new(chain, key).map_err(anyhow::Error::msg)?;
        // A new authority: a new serving certificate from it.
        {
            let cert = cert.clone();
            let mut shutdown = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = changes.changed() => if r.is_err() { return },
                        _ = shutdown.changed() => return,
                    }
                    let current = changes.borrow_and_update().clone();
                    let made = current
                        .serving_cert(&names, &[])
                        .map_err(|e| e.to_string())
                        .and_then(|(chain, key)| cert.set(chain, key));
                    if let Err(e) = made {
                        tracing::error!(error = %e, "keeping the webhook's previous serving certificate");
                    }
                }
            }));
        }
        let listener = TcpListener::bind(settings.webhook_addr)
            .await
            .with_context(|| format!("binding --webhook-addr {}", settings.webhook_addr))?;
        webhook_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(webhook::serve(
            listener,
            Arc::new(cert.server_config()),
            // Istio's rootNamespace defaults to istiod's own namespace.
            Arc::new(webhook::Validator::new(&settings.namespace)),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(webhook::keep_ca_bundle(
            ::kube::Api::all(client.clone()),
            settings.webhook_config_name.clone(),
            authority.bundle(),
            leader.clone(),
            shutdown_rx.clone(),
        )));
    }

    // Monitoring.
    let monitoring_listener = TcpListener::bind(config.monitoring_addr)
        .await
        .with_context(|| format!("binding --monitoring-addr {}", config.monitoring_addr))?;
    let monitoring_addr = monitoring_listener.local_addr()?;
    tasks.push(tokio::spawn(monitoring::serve(
        monitoring_listener,
        metrics.clone(),
        store.clone(),
        ready.clone(),
        Some(revocations.subscribe()),
        federation.clone(),
        shutdown_rx,
    )));

    drop(listeners);
    tracing::info!(
        grpc_addr = %grpc_addr,
        monitoring_addr = %monitoring_addr,
        webhook_addr = webhook_addr.map(tracing::field::display),
        bundle_endpoint_addr = bundle_endpoint_addr.map(tracing::field::display),
        admin_socket = %admin_socket.display(),
        root_cert = %root_cert_path.display(),
        trust_domain = %config.trust_domain,
        "warden-ca serving"
    );
    Ok(Bound {
        grpc_addr,
        monitoring_addr,
        webhook_addr,
        bundle_endpoint_addr,
        federation,
        admin_socket,
        root_cert_path,
        metrics,
        store,
        authority,
        leader,
        ready,
        shutdown,
        tasks,
        background,
        drain_timeout: config.drain_timeout,
    })
}

impl Bound {
    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), flushes
    /// the audit writer and closes the database.
    pub async fn shutdown(self) {
        let _draining = self.ready.block("draining");
        let _ = self.shutdown.send(true);
        for task in &self.background {
            task.abort();
        }
        let drain = futures::future::join_all(self.tasks);
        if tokio::time::timeout(self.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.drain_timeout, "drain timed out; exiting with requests in flight");
        }
        let _ = std::fs::remove_file(&self.admin_socket);
        self.store.close().await;
        tracing::info!("warden-ca stopped");
    }
}

fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating --data-dir {}", dir.display()))?;
    }
    if !dir.is_dir() {
        bail!("--data-dir {} is not a directory", dir.display());
    }
    Ok(())
}

async fn bind_admin_socket(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "{} is in use: another warden-ca is running with this --data-dir",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}
