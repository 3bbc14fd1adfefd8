//! `warden-proxy run`'s flags (environment variables where noted), as the CA's and the
//! agent's `config` modules hold theirs. Durations use Warden's one syntax
//! ([`warden_proto::duration`]: `500ms`, `10s`, `1h30m`).

use std::path::PathBuf;
use std::time::Duration;

use warden_common::config::LogFormat;

use crate::listener::Limits;

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
    #[arg(long, default_value = "5s", value_parser = warden_proto::duration::parse_flag)]
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
    #[arg(long, default_value = "10s", value_parser = warden_proto::duration::parse_flag)]
    pub handshake_timeout: Duration,
    /// Time an HTTP/1.1 request head has from its first byte to its end.
    #[arg(long, default_value = "10s", value_parser = warden_proto::duration::parse_flag)]
    pub request_headers_timeout: Duration,
    /// A downstream connection with no request in flight (HTTP) or no bytes moving
    /// (TCP, WebSocket) this long is closed (Envoy's idle_timeout).
    #[arg(long, default_value = "1h", value_parser = warden_proto::duration::parse_flag)]
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
