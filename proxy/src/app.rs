//! The proxy's wiring, in the CA's and the agent's shape: [`build`] loads the config,
//! starts the SDS client, binds every listener (port 0 binds an ephemeral port) and
//! returns a [`Bound`] with the addresses it really got; [`Bound::shutdown`] drains.
//! [`run`] is `warden-proxy run`: build, wait for SIGTERM/SIGINT, shut down.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use warden_common::monitoring::{self, Answer, PROMETHEUS};
use warden_common::readiness::Ready;

use crate::config::Config;
use crate::conn::Drain;
use crate::context::Context;
use crate::mesh::config::{ConfigOptions, MeshConfig, MeshSettings};
use crate::mesh::watch::{ConfigStats, ConfigWatch};
use crate::metrics::{Gauges, Metrics};
use crate::outbound::TcpListeners;
use crate::sds::{NodeInfo, Sds, SdsConfig};
use crate::telemetry::{AccessLog, Telemetry, TelemetrySettings};

/// A running proxy.
#[derive(Debug)]
pub struct Bound {
    /// The inbound (mutual TLS) listener (sidecar mode).
    pub inbound_addr: Option<SocketAddr>,
    /// The outbound HTTP proxy listener (sidecar mode).
    pub outbound_addr: Option<SocketAddr>,
    /// The Gateway server ports bound at start (gateway mode; more follow the config).
    pub gateway_ports: Vec<u16>,
    /// `/ready` (and `/stats/prometheus` when the ports are the same).
    pub health_addr: SocketAddr,
    /// `/stats/prometheus`, when it has a port of its own.
    pub stats_addr: Option<SocketAddr>,
    /// The admin port, when on.
    pub admin_addr: Option<SocketAddr>,
    /// The state the listeners share.
    pub context: Arc<Context>,
    /// `/ready`'s guards: `sds-certificate` until the first SVID and bundle arrive,
    /// `draining` from shutdown on.
    ready: Ready,
    drain: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    /// Follows config changes; owns the outbound TCP listeners.
    config_task: JoinHandle<()>,
    identity_task: JoinHandle<()>,
    watch: ConfigWatch,
    sds: Sds,
    drain_grace: Duration,
}

impl Bound {
    /// What `/ready` reports.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Drains: stops accepting, lets open connections finish for up to `--drain-grace`,
    /// then stops everything.
    pub async fn shutdown(self) {
        tracing::info!(grace = ?self.drain_grace, open = self.context.drain.open(), "draining");
        let _draining = self.ready.block("draining");
        let _ = self.drain.send(true);
        for task in self.listeners {
            let _ = task.await;
        }
        // Dropping the config loop drops the outbound TCP listeners.
        self.config_task.abort();
        let _ = self.config_task.await;
        let left = self.context.drain.wait_idle(self.drain_grace).await;
        if left > 0 {
            tracing::warn!(
                open = left,
                "drain grace period over; closing the connections still open"
            );
        }
        if let Some(t) = &self.context.telemetry.tracer {
            // The spans of the last requests, within a bound.
            t.flush(Duration::from_secs(2)).await;
        }
        if let Some(log) = &self.context.telemetry.access_log {
            log.close();
        }
        let _ = self.admin_stop.send(true);
        self.identity_task.abort();
        drop(self.watch);
        drop(self.sds);
        tracing::info!("warden-proxy stopped");
    }
}

/// The readiness guard held until the first SVID and trust bundle arrive over SDS
/// (`/ready` says `not ready: waiting for: sds-certificate`).
const SDS_CERTIFICATE: &str = "sds-certificate";

fn bind(ip: IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    crate::listener::bind(addr)
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
    ready: Ready,
) -> impl Fn(&str) -> Answer + Clone + Send + Sync + 'static {
    move |path: &str| match path {
        "/ready" | "/healthz/ready" => ready.answer(),
        "/stats/prometheus" | "/metrics" => {
            sync_config_stats(&ctx.metrics.gauges, &stats);
            (StatusCode::OK, PROMETHEUS, ctx.metrics.encode())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

impl warden_common::process::Serving for Bound {
    async fn shutdown(self) {
        Bound::shutdown(self).await
    }
}

/// The telemetry settings: MeshConfig's, then the flags over them.
fn telemetry_settings(args: &Config) -> anyhow::Result<TelemetrySettings> {
    let from_mesh = match &args.mesh_config {
        None => TelemetrySettings::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the mesh config", path.display()))?;
            let value: serde_json::Value = if text.trim().is_empty() {
                serde_json::Value::Object(serde_json::Map::new())
            } else {
                serde_saphyr::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: not YAML: {e}", path.display()))?
            };
            TelemetrySettings::from_mesh(&value)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    from_mesh
        .with_flags(&args.telemetry)
        .map_err(|e| anyhow::anyhow!(e))
}

/// Who this proxy is on its spans: the workload's canonical service and revision
/// (Istio's label rules), namespace and Envoy-style node id.
fn span_identity(
    local: &crate::mesh::model::LocalWorkload,
    args: &Config,
) -> crate::telemetry::spans::SpanIdentity {
    let peer = crate::metrics::Peer::workload(
        &local.name,
        &local.namespace,
        Some(local.spiffe_id.as_str()),
        &local.labels,
    );
    let kind = if args.mode == crate::config::Mode::Gateway {
        "router"
    } else {
        "sidecar"
    };
    crate::telemetry::spans::SpanIdentity {
        canonical_service: peer.canonical_service.to_string(),
        canonical_revision: peer.canonical_revision.to_string(),
        namespace: local.namespace.clone(),
        node_id: format!(
            "{kind}~{}~{}.{}~{}.svc.cluster.local",
            local.address, local.name, local.namespace, local.namespace
        ),
        mesh_id: args.trust_domain.clone(),
    }
}

/// The metrics, and the access log and tracer when they are on, with their own
/// counters registered.
fn start_telemetry(
    settings: &TelemetrySettings,
    identity: crate::telemetry::spans::SpanIdentity,
) -> anyhow::Result<Telemetry> {
    let mut metrics = Metrics::new();
    let access_log = match settings.access_log().map_err(|e| anyhow::anyhow!(e))? {
        None => None,
        Some((format, sink)) => {
            let log = AccessLog::start(format, sink).map_err(|e| anyhow::anyhow!(e))?;
            let (dropped, written) = (log.dropped.clone(), log.written.clone());
            metrics.register_counter(
                "warden_access_log_dropped",
                "Access log lines dropped: the writer fell behind or could not write",
                move || dropped.load(Ordering::Relaxed),
            );
            metrics.register_counter(
                "warden_access_log_written",
                "Access log lines written",
                move || written.load(Ordering::Relaxed),
            );
            Some(log)
        }
    };
    let tracer = crate::telemetry::spans::Tracer::start(settings, identity, &mut metrics)
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(Telemetry {
        metrics: Arc::new(metrics),
        access_log,
        tracer,
    })
}

/// Loads the config, starts the SDS client and binds and serves every listener.
pub async fn build(args: Config) -> anyhow::Result<Bound> {
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
    let telemetry_settings = telemetry_settings(&args)?;
    tracing::info!(
        path_normalization = %settings.path_normalization,
        h2_upgrade_policy = ?settings.h2_upgrade_policy,
        "mesh settings"
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
    let ready = Ready::new();
    // Released by the identity task below when the SVID and ROOTCA have arrived.
    let sds_certificate = ready.block(SDS_CERTIFICATE);
    let sds = Sds::start(sds_config);

    let (drain_tx, drain) = Drain::new();
    let identity = span_identity(&local, &args);
    let telemetry = Arc::new(start_telemetry(&telemetry_settings, identity)?);
    let mut context = Context::new(first, sds.identity(), drain, ip, args.limits, telemetry);
    context.accept_http10 = args.accept_http10;
    context.num_trusted_proxies = args.num_trusted_proxies;
    let ctx = Arc::new(context);
    let stats = watch_handle.stats();

    let gateway = args.mode == crate::config::Mode::Gateway;
    let (inbound, outbound) = if gateway {
        (None, None)
    } else {
        let inbound_port = args.inbound_port.unwrap_or(local.inbound_port);
        if inbound_port != local.inbound_port {
            tracing::warn!(
                flag = inbound_port,
                registry = local.inbound_port,
                "--inbound-port differs from the port peers find in the registry; set the warden.io/inbound-port annotation on the WorkloadEntry instead"
            );
        }
        (
            Some(bind(ip, inbound_port, "inbound")?),
            Some(bind(ip, args.outbound_port, "outbound")?),
        )
    };
    let health = bind(ip, args.health_port, "health")?;
    let stats_listener = if args.stats_port == args.health_port {
        None
    } else {
        Some(bind(ip, args.stats_port, "stats")?)
    };
    let inbound_addr = inbound.as_ref().map(TcpListener::local_addr).transpose()?;
    let outbound_addr = outbound.as_ref().map(TcpListener::local_addr).transpose()?;
    let health_addr = health.local_addr()?;
    let stats_addr = stats_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let mut tcp = TcpListeners::default();
    let mut gateway_listeners = crate::gateway::GatewayListeners::default();
    if gateway {
        gateway_listeners.reconcile(&ctx).await;
    } else {
        tcp.reconcile(&ctx).await;
    }
    let gateway_ports = gateway_listeners.ports();

    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let admin_addr = if args.admin_port == 0 {
        None
    } else {
        let l = bind(ip, args.admin_port, "admin")?;
        let addr = l.local_addr()?;
        tokio::spawn(crate::admin::serve(
            l,
            crate::admin::Admin {
                ctx: ctx.clone(),
                stats: stats.clone(),
                ready: ready.clone(),
                telemetry: telemetry_settings.clone(),
                mode: if gateway { "gateway" } else { "sidecar" },
            },
            admin_stop.clone(),
        ));
        Some(addr)
    };
    tokio::spawn(monitoring::serve(
        health,
        admin_handler(ctx.clone(), stats.clone(), ready.clone()),
        admin_stop.clone(),
    ));
    if let Some(l) = stats_listener {
        tokio::spawn(monitoring::serve(
            l,
            admin_handler(ctx.clone(), stats.clone(), ready.clone()),
            admin_stop,
        ));
    }
    let mut listeners = Vec::new();
    if let Some(l) = inbound {
        listeners.push(tokio::spawn(crate::inbound::serve(ctx.clone(), l)));
    }
    if let Some(l) = outbound {
        listeners.push(tokio::spawn(crate::outbound::serve_http(ctx.clone(), l)));
    }
    tracing::info!(
        workload = %local.name,
        namespace = %local.namespace,
        spiffe_id = %local.spiffe_id,
        address = %ip,
        mode = if gateway { "gateway" } else { "sidecar" },
        inbound = inbound_addr.map(|a| a.port()),
        outbound = outbound_addr.map(|a| a.port()),
        gateway_ports = ?gateway_ports,
        health = health_addr.port(),
        stats = stats_addr.map_or(health_addr.port(), |a| a.port()),
        admin = admin_addr.map(|a| a.port()),
        access_log = telemetry_settings.access_log_file.as_deref(),
        tracing = telemetry_settings.otlp_endpoint.as_deref(),
        "serving"
    );

    // Identity: log when ready, export the expiry.
    let identity_task = {
        let ctx = ctx.clone();
        let mut identity = sds.identity();
        let mut waiting = Some(sds_certificate);
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
                        // Before the log line: who sees "ready" logged finds /ready 200.
                        drop(waiting.take());
                        tracing::info!(spiffe_id = %id.spiffe_id(), serial = %id.serial(), "ready");
                    } else {
                        tracing::info!(spiffe_id = %id.spiffe_id(), serial = %id.serial(), "identity rotated");
                    }
                }
                if identity.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    let config_task = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                if configs.changed().await.is_err() {
                    // The watch ended (it only does on shutdown); the TCP listeners stay
                    // until shutdown aborts this task.
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
                if gateway {
                    gateway_listeners.reconcile(&ctx).await;
                } else {
                    tcp.reconcile(&ctx).await;
                }
            }
        })
    };
    Ok(Bound {
        inbound_addr,
        outbound_addr,
        gateway_ports,
        health_addr,
        stats_addr,
        admin_addr,
        context: ctx,
        ready,
        drain: drain_tx,
        admin_stop: admin_stop_tx,
        listeners,
        config_task,
        identity_task,
        watch: watch_handle,
        sds,
        drain_grace: args.drain_grace,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The README's example mesh loads for both of its workloads.
    #[test]
    fn the_example_mesh_in_deploy_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/mesh");
        for (workload, namespace) in [
            ("sleep", "demo"),
            ("httpbin", "demo"),
            ("ingressgateway", "istio-system"),
        ] {
            let opts = ConfigOptions {
                dir: dir.clone(),
                root_namespace: "istio-system".into(),
                trust_domain: "cluster.local".into(),
                workload: workload.into(),
                namespace: namespace.into(),
                settings: crate::mesh::config::MeshSettings::default(),
            };
            let mesh = crate::mesh::config::load(&opts, 1).unwrap();
            let sa = if workload == "ingressgateway" {
                "istio-ingressgateway"
            } else {
                workload
            };
            assert_eq!(
                mesh.local.spiffe_id.as_str(),
                format!("spiffe://cluster.local/ns/{namespace}/sa/{sa}")
            );
        }
    }

    // --- the data path in process, every listener on port 0 -------------------------

    use std::path::Path;

    use clap::Parser;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use crate::sds::ROOTCA;
    use crate::sds::tests::{cert_secret, next_stream, response, roots_secret, serve};
    use crate::test_support::TestCa;

    const CLIENT_IP: &str = "127.0.31.2";
    const SERVER_IP: &str = "127.0.31.3";

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: crate::config::RunArgs,
    }

    /// An SDS server on `socket` that answers every stream with `id`'s SVID under the
    /// name asked for, and `ROOTCA`.
    fn sds_for(socket: &Path, ca: &TestCa, id: &str) {
        let mut streams = serve(socket);
        let (chain, key) = ca.leaf_pem(id);
        let roots = ca.pem();
        tokio::spawn(async move {
            loop {
                let mut s = next_stream(&mut streams).await;
                let (chain, key, roots) = (chain.clone(), key.clone(), roots.clone());
                tokio::spawn(async move {
                    let first = s.request().await;
                    let secrets = first
                        .resource_names
                        .iter()
                        .map(|n| {
                            if n == ROOTCA {
                                roots_secret(n, &roots)
                            } else {
                                cert_secret(n, &chain, &key)
                            }
                        })
                        .collect();
                    s.respond(response("v1", "n1", secrets)).await;
                    // Keep the stream open (reading the ACK) for the test's life.
                    let _ = s.request().await;
                    std::future::pending::<()>().await;
                });
            }
        });
    }

    /// The mesh: `client` and `server` workloads, the `app` service on the server (its
    /// proxy's inbound port as `inbound_port` says), GET from the client allowed.
    fn mesh_yaml(app_port: u16, inbound_port: u16) -> String {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: demo}}
spec: {{address: {CLIENT_IP}, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: server
  namespace: demo
  annotations: {{warden.io/inbound-port: "{inbound_port}"}}
spec: {{address: {SERVER_IP}, labels: {{app: server}}, serviceAccount: server, ports: {{http: {app_port}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: demo}}
spec:
  hosts: [app.demo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: app-from-client, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/demo/sa/client]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
"#
        )
    }

    fn args(dir: &Path, workload: &str, socket: &Path) -> Config {
        let (dir, socket) = (dir.display().to_string(), socket.display().to_string());
        Cli::try_parse_from([
            "warden-proxy",
            "--config-dir",
            &dir,
            "--workload",
            workload,
            "--namespace",
            "demo",
            "--sds-socket",
            &socket,
            "--inbound-port",
            "0",
            "--outbound-port",
            "0",
            "--health-port",
            "0",
            "--stats-port",
            "0",
            "--drain-grace",
            "1s",
        ])
        .map(|cli| Config::load(cli.args))
        .unwrap()
        .unwrap()
    }

    /// A one-response HTTP/1.1 app that reports each request head it reads.
    async fn app(ip: &str) -> (u16, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .unwrap();
                        }
                    }
                });
            }
        });
        (port, rx)
    }

    /// Sends `request` to `addr` on a fresh connection and returns the whole answer.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn ready(b: &Bound) {
        for _ in 0..500 {
            if b.context.has_identity() && b.ready().is_ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no identity from the fake SDS");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_proxies_in_process_enforce_policy_and_forward_what_was_decided() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (client_sock, server_sock) = (tmp.path().join("c.sock"), tmp.path().join("s.sock"));
        sds_for(
            &client_sock,
            &ca,
            "spiffe://cluster.local/ns/demo/sa/client",
        );
        sds_for(
            &server_sock,
            &ca,
            "spiffe://cluster.local/ns/demo/sa/server",
        );
        let (app_port, mut heads) = app(SERVER_IP).await;

        // The server first: its inbound port goes into the client's registry.
        let server_dir = tmp.path().join("server");
        std::fs::create_dir(&server_dir).unwrap();
        std::fs::write(server_dir.join("mesh.yaml"), mesh_yaml(app_port, 15006)).unwrap();
        let server = build(args(&server_dir, "server", &server_sock))
            .await
            .unwrap();
        let server_inbound = server.inbound_addr.unwrap();
        assert_ne!(server_inbound.port(), 0, "the real port is reported");
        assert_eq!(server_inbound.ip().to_string(), SERVER_IP);
        let client_dir = tmp.path().join("client");
        std::fs::create_dir(&client_dir).unwrap();
        std::fs::write(
            client_dir.join("mesh.yaml"),
            mesh_yaml(app_port, server_inbound.port()),
        )
        .unwrap();
        let client = build(args(&client_dir, "client", &client_sock))
            .await
            .unwrap();
        ready(&server).await;
        ready(&client).await;

        // Allowed, and the app gets the path that was decided on.
        let answer = exchange(
            client.outbound_addr.unwrap(),
            "GET /public/../admin/%7Eme HTTP/1.1\r\nHost: app.demo.svc.cluster.local\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /admin/~me HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-forwarded-client-cert: by=spiffe://cluster.local/ns/demo/sa/server"),
            "{head}"
        );

        // Denied by the policy: nothing reaches the app.
        let answer = exchange(
            client.outbound_addr.unwrap(),
            "POST /x HTTP/1.1\r\nHost: app.demo.svc.cluster.local\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(answer.contains("RBAC: access denied"), "{answer}");

        // The admin endpoints answer on their real ports.
        let answer = exchange(
            server.health_addr,
            "GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let stats = server.stats_addr.unwrap_or(server.health_addr);
        let answer = exchange(
            stats,
            "GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.contains("istio_requests_total{"), "{answer}");

        client.shutdown().await;
        server.shutdown().await;
        assert!(
            heads.try_recv().is_err(),
            "the denied request reached the app"
        );
    }
}
