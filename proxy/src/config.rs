//! `warden-proxy run`'s settings, declared once as the CA's and the agent's are
//! ([`warden_common::run_args!`]): each is a flag (environment variables where noted)
//! and a key of the optional `--config` YAML file, flags winning; [`Config::load`]
//! applies the defaults and checks. Durations use Warden's one syntax
//! ([`warden_proto::duration`]: `500ms`, `10s`, `1h30m`).

use std::path::PathBuf;
use std::time::Duration;

use warden_common::config::{ConfigError, LogFormat, de, invalid, load_layers};

use crate::conn::Limits;

warden_common::run_args! {
/// Flags of `warden-proxy run`, all optional here so a config file can fill them in.
pub struct RunArgs {
    /// YAML file with any of the settings below (same names as the flags).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory of Istio YAML (ServiceEntry, WorkloadEntry, AuthorizationPolicy,
    /// PeerAuthentication, RequestAuthentication), watched for changes. Required.
    #[arg(long, env = "WARDEN_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// The WorkloadEntry this proxy runs for (its address, labels and service account).
    /// Required.
    #[arg(long, env = "WARDEN_WORKLOAD")]
    pub workload: Option<String>,
    /// The WorkloadEntry's namespace [default: default].
    #[arg(long, env = "WARDEN_NAMESPACE")]
    pub namespace: Option<String>,
    /// The node agent's SDS socket. Required.
    #[arg(long, env = "WARDEN_SDS_SOCKET")]
    pub sds_socket: Option<PathBuf>,
    /// Trust domain of the mesh (`cluster.local` in policies stands for it)
    /// [default: cluster.local].
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Namespace whose policies apply mesh-wide [default: istio-system].
    #[arg(long)]
    pub root_namespace: Option<String>,
    /// Inbound listener port (on the workload's address); by default the WorkloadEntry's
    /// `warden.io/inbound-port` annotation, else 15006. Peers find it the same way.
    #[arg(long)]
    pub inbound_port: Option<u16>,
    /// Outbound HTTP proxy port (on the workload's address) [default: 15001].
    #[arg(long)]
    pub outbound_port: Option<u16>,
    /// Health port: `/ready` (also `/healthz/ready`) [default: 15021].
    #[arg(long)]
    pub health_port: Option<u16>,
    /// Prometheus port: `/stats/prometheus` (also `/metrics`) [default: 15020].
    #[arg(long)]
    pub stats_port: Option<u16>,
    /// Worker threads (Envoy's `--concurrency`); 1 runs everything on one thread
    /// [default: 2].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long SIGTERM waits for open connections before exiting [default: 5s].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub drain_grace: Option<Duration>,
    /// Log format: text or json [default: json].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Istio MeshConfig YAML (the `mesh` key of the `istio` ConfigMap); Warden applies
    /// `pathNormalization` and `h2UpgradePolicy` from it. Read at start.
    #[arg(long, env = "WARDEN_MESH_CONFIG")]
    pub mesh_config: Option<PathBuf>,
    /// Open downstream connections, all listeners together; more are closed at once
    /// [default: 16384].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Bytes of request headers allowed (Envoy's max_request_headers_kb, 60 KiB);
    /// more get 431 [default: 61440].
    #[arg(long)]
    pub max_request_headers_bytes: Option<usize>,
    /// Request headers allowed (Envoy's max_headers_count); more get 431 [default: 100].
    #[arg(long)]
    pub max_request_headers: Option<usize>,
    /// Time a new connection has for its first byte and its TLS handshake [default: 10s].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub handshake_timeout: Option<Duration>,
    /// Time an HTTP/1.1 request head has from its first byte to its end [default: 10s].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub request_headers_timeout: Option<Duration>,
    /// A downstream connection with no request in flight (HTTP) or no bytes moving
    /// (TCP, WebSocket) this long is closed (Envoy's idle_timeout) [default: 1h].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub idle_timeout: Option<Duration>,
    /// Accept HTTP/1.0 requests (Istio's HTTP10 proxy metadata); 426 otherwise.
    #[arg(long)]
    pub accept_http10: bool,
    /// `sidecar` (inbound and outbound listeners for one workload) or `gateway` (an
    /// ingress gateway: listeners for the servers of the Gateways that select the
    /// workload, routed by the VirtualServices bound to them) [default: sidecar].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Gateway mode: proxies in front of the gateway whose `X-Forwarded-For` entries
    /// are trusted for the client address (Istio's `numTrustedProxies`) [default: 0].
    #[arg(long)]
    pub num_trusted_proxies: Option<usize>,
    /// Admin port (Envoy's 15000): `/config_dump`, `/certs`, `/stats`, `/ready`,
    /// `/logging`; 0 turns it off [default: 15000].
    #[arg(long)]
    pub admin_port: Option<u16>,
    /// Access log: a file, `/dev/stdout`, or empty for none (MeshConfig's
    /// `accessLogFile`, which this overrides) [default: none].
    #[arg(long, env = "WARDEN_ACCESS_LOG_FILE")]
    pub access_log_file: Option<String>,
    /// Access log encoding: TEXT or JSON (MeshConfig's `accessLogEncoding`)
    /// [default: TEXT].
    #[arg(long)]
    pub access_log_encoding: Option<String>,
    /// Access log format with Envoy's command operators (MeshConfig's
    /// `accessLogFormat`; for JSON, an object of field names to format strings)
    /// [default: Istio's].
    #[arg(long)]
    pub access_log_format: Option<String>,
    /// A file access log is rotated past this many bytes; 0 never [default: 104857600].
    #[arg(long)]
    pub access_log_max_bytes: Option<u64>,
    /// Rotated access log files kept (`<file>.1` ...) [default: 5].
    #[arg(long)]
    pub access_log_keep: Option<usize>,
    /// OTLP/gRPC collector for trace spans, `http://host:port`; empty for none
    /// (MeshConfig's opentelemetry `extensionProviders` entry) [default: none].
    #[arg(long, env = "WARDEN_TRACING_OTLP_ENDPOINT")]
    pub tracing_otlp_endpoint: Option<String>,
    /// Percentage of new traces sampled, 0 to 100 (MeshConfig's
    /// `defaultConfig.tracing.sampling`) [default: 1].
    #[arg(long)]
    pub tracing_sampling: Option<f64>,
}
}

/// What the proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A workload's sidecar.
    #[default]
    Sidecar,
    /// An ingress gateway.
    Gateway,
}

/// The proxy's effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of Istio YAML.
    pub config_dir: PathBuf,
    /// The WorkloadEntry's name.
    pub workload: String,
    /// The WorkloadEntry's namespace.
    pub namespace: String,
    /// The node agent's SDS socket.
    pub sds_socket: PathBuf,
    /// Trust domain.
    pub trust_domain: String,
    /// Mesh-wide policy namespace.
    pub root_namespace: String,
    /// Inbound port, when the flag overrides the WorkloadEntry.
    pub inbound_port: Option<u16>,
    /// Outbound port.
    pub outbound_port: u16,
    /// Health port.
    pub health_port: u16,
    /// Prometheus port.
    pub stats_port: u16,
    /// Worker threads.
    pub concurrency: usize,
    /// Grace period for open connections on SIGTERM.
    pub drain_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Istio MeshConfig file.
    pub mesh_config: Option<PathBuf>,
    /// Downstream limits and timeouts.
    pub limits: Limits,
    /// Whether HTTP/1.0 requests are accepted.
    pub accept_http10: bool,
    /// Sidecar or gateway.
    pub mode: Mode,
    /// Trusted `X-Forwarded-For` hops in front of a gateway.
    pub num_trusted_proxies: usize,
    /// Admin port (0: off).
    pub admin_port: u16,
    /// Telemetry flags, applied over MeshConfig's.
    pub telemetry: crate::telemetry::settings::TelemetryFlags,
}

impl Config {
    /// Merges flags over the optional config file and applies defaults and checks.
    pub fn load(flags: RunArgs) -> Result<Self, ConfigError> {
        let args = load_layers(flags.clone(), flags.config.as_deref())?;
        let defaults = Limits::default();
        let concurrency = args.concurrency.unwrap_or(2);
        if concurrency == 0 {
            return Err(invalid("--concurrency", "must be at least 1"));
        }
        Ok(Self {
            config_dir: args.config_dir.ok_or_else(|| {
                invalid("--config-dir", "is required: the directory of Istio YAML")
            })?,
            workload: args.workload.ok_or_else(|| {
                invalid(
                    "--workload",
                    "is required: the WorkloadEntry this proxy runs for",
                )
            })?,
            namespace: args.namespace.unwrap_or_else(|| "default".into()),
            sds_socket: args.sds_socket.ok_or_else(|| {
                invalid("--sds-socket", "is required: the node agent's SDS socket")
            })?,
            trust_domain: args.trust_domain.unwrap_or_else(|| "cluster.local".into()),
            root_namespace: args.root_namespace.unwrap_or_else(|| "istio-system".into()),
            inbound_port: args.inbound_port,
            outbound_port: args.outbound_port.unwrap_or(15001),
            health_port: args.health_port.unwrap_or(15021),
            stats_port: args.stats_port.unwrap_or(15020),
            concurrency,
            drain_grace: args.drain_grace.unwrap_or(Duration::from_secs(5)),
            log_format: args.log_format.unwrap_or(LogFormat::Json),
            mesh_config: args.mesh_config,
            limits: Limits {
                max_connections: args
                    .max_connections
                    .unwrap_or(defaults.max_connections)
                    .max(1),
                handshake_timeout: args.handshake_timeout.unwrap_or(defaults.handshake_timeout),
                request_headers_timeout: args
                    .request_headers_timeout
                    .unwrap_or(defaults.request_headers_timeout),
                idle_timeout: args.idle_timeout.unwrap_or(defaults.idle_timeout),
                max_request_headers_bytes: args
                    .max_request_headers_bytes
                    .unwrap_or(defaults.max_request_headers_bytes),
                max_request_headers: args
                    .max_request_headers
                    .unwrap_or(defaults.max_request_headers),
            },
            accept_http10: args.accept_http10,
            mode: args.mode.unwrap_or_default(),
            num_trusted_proxies: args.num_trusted_proxies.unwrap_or(0),
            admin_port: args.admin_port.unwrap_or(15000),
            telemetry: crate::telemetry::settings::TelemetryFlags {
                access_log_file: args.access_log_file,
                access_log_encoding: args.access_log_encoding,
                access_log_format: args.access_log_format,
                access_log_max_bytes: args.access_log_max_bytes,
                access_log_keep: args.access_log_keep,
                otlp_endpoint: args.tracing_otlp_endpoint,
                sampling: args.tracing_sampling,
            },
        })
    }
}

impl warden_common::process::ServerConfig for Config {
    fn log_format(&self) -> LogFormat {
        self.log_format
    }

    fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.concurrency <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.concurrency)
                .enable_all()
                .build()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunArgs,
    }

    fn flags(args: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("warden-proxy").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn defaults_are_envoy_and_istio_ones() {
        let c = Config::load(flags(&[
            "--config-dir",
            "/cfg",
            "--workload",
            "w",
            "--sds-socket",
            "/s",
        ]))
        .unwrap();
        assert_eq!(c.namespace, "default");
        assert_eq!(
            (c.outbound_port, c.health_port, c.stats_port),
            (15001, 15021, 15020)
        );
        assert_eq!(c.inbound_port, None);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.drain_grace, Duration::from_secs(5));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(!c.accept_http10);
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(
            &path,
            "config-dir: /etc/istio\nworkload: from-file\nsds-socket: /run/sds\n\
             drain-grace: 30s\nidle-timeout: 2m\nmax-connections: 10\naccept-http10: true\n",
        )
        .unwrap();
        let path_flag = path.display().to_string();
        let c = Config::load(flags(&[
            "--config",
            &path_flag,
            "--workload",
            "from-flag",
            "--idle-timeout",
            "5s",
        ]))
        .unwrap();
        assert_eq!(c.config_dir, PathBuf::from("/etc/istio"));
        assert_eq!(c.workload, "from-flag");
        assert_eq!(c.drain_grace, Duration::from_secs(30));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_connections, 10);
        assert!(c.accept_http10);
    }

    #[test]
    fn refusals_name_the_key_or_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, "config-dir: /x\ndrain-grase: 1s\n").unwrap();
        let path_flag = path.display().to_string();
        let err = Config::load(flags(&["--config", &path_flag]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("drain-grase") && err.contains("proxy.yaml"),
            "{err}"
        );

        std::fs::write(&path, "drain-grace: 10\n").unwrap();
        let err = Config::load(flags(&["--config", &path_flag]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("drain-grace") || err.contains("10"), "{err}");

        let err = Config::load(flags(&["--workload", "w", "--sds-socket", "/s"]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--config-dir: is required"), "{err}");
        assert!(
            Cli::try_parse_from(["warden-proxy", "--drain-grace", "5"]).is_err(),
            "a bare number is not a duration"
        );
    }
}

/// The config shipped in `deploy/` must load with this parser.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod shipped_configs {
    use super::*;

    #[test]
    fn local_config_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/proxy.yaml");
        let c = Config::load(RunArgs {
            config: Some(path),
            workload: Some("sleep".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.namespace, "demo");
        assert_eq!(c.log_format, LogFormat::Text);
    }
}
