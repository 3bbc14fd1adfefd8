//! `warden-proxy run`: wires the config watch, the SDS client, the listeners and the
//! admin endpoints together, and drains on SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use warden_common::config::LogFormat;
use warden_common::monitoring::{self, Answer, PROMETHEUS};
use warden_common::process::ShutdownSignals;

use crate::context::Context;
use crate::listener::{Drain, Limits};
use crate::mesh::config::{ConfigOptions, MeshConfig, MeshSettings};
use crate::mesh::watch::{ConfigStats, ConfigWatch};
use crate::metrics::Gauges;
use crate::outbound::TcpListeners;
use crate::sds::{NodeInfo, Sds, SdsConfig};

/// Flags of `warden-proxy run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Directory of Istio YAML (ServiceEntry, WorkloadEntry, AuthorizationPolicy,
    /// PeerAuthentication, RequestAuthentication), watched for changes.
    #[arg(long, env = "WARDEN_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// The WorkloadEntry this proxy runs for (its address, labels and service account).
    #[arg(long, env = "WARDEN_WORKLOAD")]
    pub workload: String,
    /// The WorkloadEntry's namespace.
    #[arg(long, env = "WARDEN_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The node agent's SDS socket.
    #[arg(long, env = "WARDEN_SDS_SOCKET")]
    pub sds_socket: PathBuf,
    /// Trust domain of the mesh (`cluster.local` in policies stands for it).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    /// Inbound listener port (on the workload's address); by default the WorkloadEntry's
    /// `warden.io/inbound-port` annotation, else 15006. Peers find it the same way.
    #[arg(long)]
    pub inbound_port: Option<u16>,
    /// Outbound HTTP proxy port (on the workload's address).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Health port: `/ready` (also `/healthz/ready`).
    #[arg(long, default_value_t = 15021)]
    pub health_port: u16,
    /// Prometheus port: `/stats/prometheus` (also `/metrics`).
    #[arg(long, default_value_t = 15020)]
    pub stats_port: u16,
    /// Worker threads (Envoy's `--concurrency`); 1 runs everything on one thread.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// How long SIGTERM waits for open connections before exiting.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Istio MeshConfig YAML (the `mesh` key of the `istio` ConfigMap); Warden applies
    /// `pathNormalization` and `h2UpgradePolicy` from it. Read at start.
    #[arg(long, env = "WARDEN_MESH_CONFIG")]
    pub mesh_config: Option<PathBuf>,
    /// Open downstream connections, all listeners together; more are closed at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Bytes of request headers allowed (Envoy's max_request_headers_kb, 60 KiB);
    /// more get 431.
    #[arg(long, default_value_t = Limits::default().max_request_headers_bytes)]
    pub max_request_headers_bytes: usize,
    /// Request headers allowed (Envoy's max_headers_count); more get 431.
    #[arg(long, default_value_t = Limits::default().max_request_headers)]
    pub max_request_headers: usize,
    /// Time a new connection has for its first byte and its TLS handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Time an HTTP/1.1 request head has from its first byte to its end.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_headers_timeout: Duration,
    /// A downstream connection with no request in flight (HTTP) or no bytes moving
    /// (TCP, WebSocket) this long is closed (Envoy's idle_timeout).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Accept HTTP/1.0 requests (Istio's HTTP10 proxy metadata); 426 otherwise.
    #[arg(long)]
    pub accept_http10: bool,
}

impl RunArgs {
    /// The downstream limits the flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            handshake_timeout: self.handshake_timeout,
            request_headers_timeout: self.request_headers_timeout,
            idle_timeout: self.idle_timeout,
            max_request_headers_bytes: self.max_request_headers_bytes,
            max_request_headers: self.max_request_headers,
        }
    }
}

/// `5s`, `500ms`, `1m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: expected e.g. 5s, 500ms, 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "{s:?} is not a duration: the unit must be ms, s, m or h"
        )),
    }
}

/// Builds the runtime `concurrency` asks for.
pub fn runtime(concurrency: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(concurrency)
            .enable_all()
            .build()
    }
}

async fn bind(ip: IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} listener on {addr}"))
}

/// Copies the config watch's counters into the metrics' scrape-time sources.
fn sync_config_stats(gauges: &Gauges, stats: &ConfigStats) {
    for (to, from) in [
        (&gauges.config_generation, &stats.generation),
        (&gauges.config_applied, &stats.applied),
        (&gauges.config_rejected, &stats.rejected),
    ] {
        to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

fn admin_handler(
    ctx: Arc<Context>,
    stats: Arc<ConfigStats>,
) -> impl Fn(&str) -> Answer + Clone + Send + Sync + 'static {
    move |path: &str| match path {
        "/ready" | "/healthz/ready" => {
            if ctx.drain.draining() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else if ctx.has_identity() {
                (StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: waiting for the SVID and ROOTCA from the node agent over SDS\n"
                        .into(),
                )
            }
        }
        "/stats/prometheus" | "/metrics" => {
            sync_config_stats(&ctx.metrics.gauges, &stats);
            (StatusCode::OK, PROMETHEUS, ctx.metrics.encode())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Runs the proxy until SIGTERM/SIGINT, then drains.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let signals = ShutdownSignals::install().context("cannot catch SIGTERM/SIGINT")?;
    let settings = match &args.mesh_config {
        Some(path) => {
            let (settings, unused) = MeshSettings::load(path).map_err(|e| anyhow::anyhow!(e))?;
            if !unused.is_empty() {
                tracing::warn!(file = %path.display(), fields = ?unused, "mesh config fields Warden does not use are ignored");
            }
            settings
        }
        None => MeshSettings::default(),
    };
    tracing::info!(
        path_normalization = %settings.path_normalization,
        h2_upgrade_policy = ?settings.h2_upgrade_policy,
        limits = ?args.limits(),
        accept_http10 = args.accept_http10,
        "mesh settings and downstream limits"
    );
    let opts = ConfigOptions {
        dir: args.config_dir.clone(),
        root_namespace: args.root_namespace.clone(),
        trust_domain: args.trust_domain.clone(),
        workload: args.workload.clone(),
        namespace: args.namespace.clone(),
        settings,
    };
    let (watch_handle, mut configs) = ConfigWatch::start(opts)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot load the config in {}", args.config_dir.display()))?;
    let first: Arc<MeshConfig> = configs.borrow_and_update().clone();
    let local = first.local.clone();
    let ip = local.address;

    let mut node = NodeInfo::sidecar(ip, &local.name, &local.namespace);
    node.cluster = format!("{}.{}", local.name, local.namespace);
    let mut sds_config = SdsConfig::new(&args.sds_socket, node);
    // Ask for this workload's own identity by name: one process may be entitled to
    // several (all proxies of a node run as one user locally).
    sds_config.certificate = local.spiffe_id.as_str().to_string();
    let sds = Sds::start(sds_config);

    let (drain_tx, drain) = Drain::new();
    let mut context = Context::new(first, sds.identity(), drain, ip, args.limits());
    context.accept_http10 = args.accept_http10;
    let ctx = Arc::new(context);
    let stats = watch_handle.stats();

    let inbound_port = args.inbound_port.unwrap_or(local.inbound_port);
    if inbound_port != local.inbound_port {
        tracing::warn!(
            flag = inbound_port,
            registry = local.inbound_port,
            "--inbound-port differs from the port peers find in the registry; set the warden.io/inbound-port annotation on the WorkloadEntry instead"
        );
    }
    let inbound = bind(ip, inbound_port, "inbound").await?;
    let outbound = bind(ip, args.outbound_port, "outbound").await?;
    let health = bind(ip, args.health_port, "health").await?;
    let stats_listener = if args.stats_port == args.health_port {
        None
    } else {
        Some(bind(ip, args.stats_port, "stats").await?)
    };
    let mut tcp = TcpListeners::default();
    tcp.reconcile(&ctx).await;

    let (admin_stop_tx, admin_stop) = watch::channel(false);
    tokio::spawn(monitoring::serve(
        health,
        admin_handler(ctx.clone(), stats.clone()),
        admin_stop.clone(),
    ));
    if let Some(l) = stats_listener {
        tokio::spawn(monitoring::serve(
            l,
            admin_handler(ctx.clone(), stats.clone()),
            admin_stop,
        ));
    }
    let inbound_task = tokio::spawn(crate::inbound::serve(ctx.clone(), inbound));
    let outbound_task = tokio::spawn(crate::outbound::serve_http(ctx.clone(), outbound));
    tracing::info!(
        workload = %local.name,
        namespace = %local.namespace,
        spiffe_id = %local.spiffe_id,
        address = %ip,
        inbound = inbound_port,
        outbound = args.outbound_port,
        health = args.health_port,
        stats = args.stats_port,
        "serving"
    );

    // Identity: log when ready, export the expiry.
    {
        let ctx = ctx.clone();
        let mut identity = sds.identity();
        tokio::spawn(async move {
            let mut announced = false;
            loop {
                let current = identity.borrow_and_update().clone();
                if let Some(id) = current {
                    let expiry = id
                        .not_after()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    ctx.metrics
                        .gauges
                        .svid_expiry
                        .store(expiry, Ordering::Relaxed);
                    if !announced {
                        announced = true;
                        tracing::info!(spiffe_id = %id.spiffe_id(), serial = %id.serial(), "ready");
                    } else {
                        tracing::info!(spiffe_id = %id.spiffe_id(), serial = %id.serial(), "identity rotated");
                    }
                }
                if identity.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    let config_loop = async {
        loop {
            if configs.changed().await.is_err() {
                // The watch ended (it only does on shutdown).
                std::future::pending::<()>().await;
            }
            let next = configs.borrow_and_update().clone();
            if next.local.address != ip {
                tracing::warn!(
                    old = %ip,
                    new = %next.local.address,
                    "the WorkloadEntry's address changed; the listeners stay on the old one until the proxy restarts"
                );
            }
            ctx.apply(next);
            tcp.reconcile(&ctx).await;
        }
    };
    tokio::select! {
        () = config_loop => {}
        () = signals.wait("warden-proxy") => {}
    }

    // Drain: stop accepting, let connections finish, then stop.
    tracing::info!(grace = ?args.drain_grace, open = ctx.drain.open(), "draining");
    let _ = drain_tx.send(true);
    let _ = inbound_task.await;
    let _ = outbound_task.await;
    drop(tcp);
    let left = ctx.drain.wait_idle(args.drain_grace).await;
    if left > 0 {
        tracing::warn!(
            open = left,
            "drain grace period over; closing the connections still open"
        );
    }
    let _ = admin_stop_tx.send(true);
    drop(watch_handle);
    tracing::info!("warden-proxy stopped");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The README's example mesh loads for both of its workloads.
    #[test]
    fn the_example_mesh_in_deploy_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/mesh");
        for workload in ["sleep", "httpbin"] {
            let opts = ConfigOptions {
                dir: dir.clone(),
                root_namespace: "istio-system".into(),
                trust_domain: "cluster.local".into(),
                workload: workload.into(),
                namespace: "demo".into(),
                settings: crate::mesh::config::MeshSettings::default(),
            };
            let mesh = crate::mesh::config::load(&opts, 1).unwrap();
            assert_eq!(
                mesh.local.spiffe_id.as_str(),
                format!("spiffe://cluster.local/ns/demo/sa/{workload}")
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
        assert!(parse_duration("x").is_err());
    }
}
