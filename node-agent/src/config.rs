//! The agent's configuration: flags, optionally a YAML file (same names, kebab-case,
//! unknown keys refused), parsed once into [`Config`]. Flags win over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::rotation::RotationPolicy;

pub use warden_common::config::{ConfigError, KubernetesMode, LogFormat};
use warden_common::config::{de, invalid, load_layers};

warden_common::run_args! {
/// Flags of `warden-agent run`. All optional here so a config file can fill them in.
pub struct RunArgs {
    /// YAML file with any of the settings below (same names as the flags).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The CA's certificate API, e.g. https://127.0.0.1:15012. Required.
    #[arg(long)]
    pub ca_addr: Option<String>,
    /// PEM bundle that authenticates the CA's serving certificate. Required.
    #[arg(long)]
    pub ca_root: Option<PathBuf>,
    /// Name to verify in the CA's serving certificate [default: the host of --ca-addr].
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Trust domain [default: cluster.local].
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Directory for the node SVID (node mode) and state. Required.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Directory of the sockets: `socket` (shared, Istio's name) and `NAME.sock` for
    /// `socket:NAME` entries [default: <data-dir>/sockets].
    #[arg(long)]
    pub socket_dir: Option<PathBuf>,
    /// This node's name; a join token must be for it, and in Kubernetes mode it is
    /// the pod's `spec.nodeName` (downward API) [default: the hostname].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// `node` (serve registration entries to attested callers) or `workload` (serve the
    /// identity of --token-file to whoever reaches the sockets) [default: node].
    #[arg(long)]
    pub mode: Option<Mode>,
    /// One-time join token for the first start; afterwards the node SVID kept in
    /// --data-dir renews over mTLS.
    #[arg(long, conflicts_with = "token_file")]
    pub join_token: Option<String>,
    /// Service-account JWT file, re-read on every use (projected tokens rotate).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Kubernetes mode (node mode only): the node attests with its projected
    /// service-account token (`k8s_psat`), callers are tied to the pods of this node, and
    /// a pod gets `spiffe://TD/ns/NS/sa/SA` without a registration entry. `auto` is on
    /// when running in a pod or with --kubeconfig [default: auto].
    #[arg(long)]
    pub kubernetes: Option<KubernetesMode>,
    /// Kubeconfig for the pod watch when running outside a cluster [default: the pod's
    /// in-cluster service account].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the projected service-account token with audience istio-ca,
    /// re-read on every node attestation (kubelet rotates it)
    /// [default: /var/run/secrets/tokens/istio-ca].
    #[arg(long)]
    pub kube_token_file: Option<PathBuf>,
    /// Fraction of a certificate's lifetime after which it is refreshed [default: 0.5].
    #[arg(long)]
    pub rotation_ratio: Option<f64>,
    /// Lifetime to ask the CA for, e.g. 24h or 10s [default: 24h].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub svid_ttl: Option<Duration>,
    /// How often to fetch this node's registration entries and the JWT bundle
    /// [default: 5s].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub sync_interval: Option<Duration>,
    /// Also write each SVID (cert-chain.pem, key.pem 0600, root-cert.pem) under this
    /// directory, atomically: directly in workload mode, in `DIR/<SPIFFE ID path>/` in
    /// node mode.
    #[arg(long)]
    pub write_dir: Option<PathBuf>,
    /// Address of /metrics and /ready [default: 127.0.0.1:15020].
    #[arg(long)]
    pub monitoring_addr: Option<SocketAddr>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<LogFormat>,
}
}

/// How the agent decides whom to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// SPIRE-style DaemonSet: registration entries, attested callers.
    #[default]
    Node,
    /// Istio sidecar-style: the token's own identity, for the pod's private sockets.
    Workload,
}

/// How the node proves itself to the CA.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeCredential {
    /// A one-time join token (only used when no valid node SVID is on disk).
    JoinToken(String),
    /// A service-account JWT file, read on every use.
    TokenFile(PathBuf),
    /// Kubernetes mode (`k8s_psat`): the projected service-account token, re-read on
    /// every node attestation, buys the node SVID (impersonating the node's ID).
    KubeToken(PathBuf),
    /// Neither: a node SVID must already be in the data dir.
    None,
}

impl std::fmt::Debug for NodeCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(redacted)"),
            Self::TokenFile(p) => write!(f, "TokenFile({})", p.display()),
            Self::KubeToken(p) => write!(f, "KubeToken({})", p.display()),
            Self::None => f.write_str("None"),
        }
    }
}

/// The agent's effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// CA URL.
    pub ca_addr: String,
    /// CA trust bundle file.
    pub ca_root: PathBuf,
    /// Name verified in the CA's certificate.
    pub tls_server_name: String,
    /// Trust domain.
    pub trust_domain: String,
    /// State directory.
    pub data_dir: PathBuf,
    /// Socket directory.
    pub socket_dir: PathBuf,
    /// Node name.
    pub node_name: String,
    /// Node or workload mode.
    pub mode: Mode,
    /// Node credential.
    pub credential: NodeCredential,
    /// Kubernetes mode, when on.
    pub kubernetes: Option<KubeSettings>,
    /// Refresh schedule.
    pub rotation: RotationPolicy,
    /// Requested SVID lifetime.
    pub svid_ttl: Duration,
    /// Entry and JWT-bundle sync period.
    pub sync_interval: Duration,
    /// File output directory.
    pub write_dir: Option<PathBuf>,
    /// Monitoring address.
    pub monitoring_addr: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
}

/// Where the DaemonSet mounts the projected token with audience istio-ca.
pub const DEFAULT_KUBE_TOKEN_FILE: &str = "/var/run/secrets/tokens/istio-ca";

/// Kubernetes mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// `--kubeconfig`; `None`: the in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-token-file`.
    pub token_file: PathBuf,
}

/// Whether Kubernetes mode is on: only in node mode (a workload-mode agent serves its
/// own token's identity, in a pod or not). `auto` is on with `--kubeconfig`, or in a pod
/// unless a node credential (`--join-token`, `--token-file`) is given: an agent started
/// with one in a pod (say, tests on a CI runner that is a pod) keeps its old behaviour.
/// `in_pod` is [`warden_common::config::in_pod`], a parameter for tests.
fn kubernetes_enabled(
    requested: KubernetesMode,
    mode: Mode,
    kubeconfig: Option<&std::path::Path>,
    in_pod: bool,
    has_credential: bool,
) -> Result<bool, ConfigError> {
    match (mode, requested) {
        (Mode::Workload, KubernetesMode::On) => Err(invalid(
            "--kubernetes",
            "on is for node mode (the DaemonSet); workload mode serves the identity of --token-file",
        )),
        (Mode::Workload, _) | (_, KubernetesMode::Off) => Ok(false),
        (Mode::Node, KubernetesMode::On) => Ok(true),
        (Mode::Node, KubernetesMode::Auto) => {
            Ok(kubeconfig.is_some() || (in_pod && !has_credential))
        }
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl warden_common::process::ServerConfig for Config {
    fn log_format(&self) -> LogFormat {
        self.log_format
    }
}

impl Config {
    /// Merges flags over the optional config file and applies defaults and checks.
    pub fn load(flags: RunArgs) -> Result<Self, ConfigError> {
        let args = load_layers(flags.clone(), flags.config.as_deref())?;
        let ca_addr = args
            .ca_addr
            .ok_or_else(|| invalid("--ca-addr", "is required, e.g. https://127.0.0.1:15012"))?;
        let uri: http::Uri = ca_addr
            .parse()
            .map_err(|e| invalid("--ca-addr", format!("{ca_addr:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(invalid(
                "--ca-addr",
                format!("{ca_addr:?}: expected https://HOST:PORT (the CA only speaks TLS)"),
            ));
        }
        let tls_server_name = args
            .tls_server_name
            .unwrap_or_else(|| uri.host().unwrap_or_default().to_string());
        let ca_root = args.ca_root.ok_or_else(|| {
            invalid(
                "--ca-root",
                "is required: the PEM bundle that authenticates the CA",
            )
        })?;
        let data_dir = args
            .data_dir
            .ok_or_else(|| invalid("--data-dir", "is required"))?;
        let trust_domain = args
            .trust_domain
            .unwrap_or_else(|| "cluster.local".to_string());
        warden_proto::SpiffeId::parse(&format!("spiffe://{trust_domain}"))
            .map_err(|e| invalid("--trust-domain", e.to_string()))?;
        let node_name = match args.node_name.or_else(hostname) {
            Some(n) => n,
            None => {
                return Err(invalid(
                    "--node-name",
                    "is required (the hostname is unknown)",
                ));
            }
        };
        let node_id = warden_proto::SpiffeId::for_node(&trust_domain, &node_name)
            .map_err(|e| invalid("--node-name", e.to_string()))?;
        if node_id.node_name() != Some(node_name.as_str()) {
            return Err(invalid(
                "--node-name",
                format!(
                    "{node_name:?} must be one SPIFFE path segment: letters, digits, '.', '-', '_'"
                ),
            ));
        }
        let mode = args.mode.unwrap_or_default();
        let join_token = args.join_token;
        let token_file = args.token_file;
        let kubernetes = kubernetes_enabled(
            args.kubernetes.unwrap_or_default(),
            mode,
            args.kubeconfig.as_deref(),
            warden_common::config::in_pod(),
            join_token.is_some() || token_file.is_some(),
        )?
        .then(|| KubeSettings {
            kubeconfig: args.kubeconfig.clone(),
            token_file: args
                .kube_token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBE_TOKEN_FILE)),
        });
        if let Some(kube) = &kubernetes {
            if join_token.is_some() {
                return Err(invalid(
                    "--join-token",
                    format!(
                        "is not used in Kubernetes mode: the node attests with its service-account token (--kube-token-file {}); drop --join-token, or pass --kubernetes off",
                        kube.token_file.display()
                    ),
                ));
            }
            if token_file.is_some() {
                return Err(invalid(
                    "--token-file",
                    format!(
                        "is not used in Kubernetes node mode: the node attests with --kube-token-file ({}); drop --token-file, or pass --kubernetes off",
                        kube.token_file.display()
                    ),
                ));
            }
        }
        let credential = match (join_token, token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "--join-token",
                    "give --join-token or --token-file, not both",
                ));
            }
            (Some(t), None) => NodeCredential::JoinToken(t.trim().to_string()),
            (None, Some(f)) => NodeCredential::TokenFile(f),
            (None, None) => match &kubernetes {
                Some(kube) => NodeCredential::KubeToken(kube.token_file.clone()),
                None => NodeCredential::None,
            },
        };
        if mode == Mode::Workload && !matches!(credential, NodeCredential::TokenFile(_)) {
            return Err(invalid(
                "--token-file",
                "is required in workload mode: the workload's own service-account token",
            ));
        }
        let ratio = args.rotation_ratio.unwrap_or(0.5);
        let rotation = RotationPolicy::new(ratio, 0.01)
            .map_err(|e| invalid("--rotation-ratio", e.to_string()))?;
        let svid_ttl = args.svid_ttl.unwrap_or(Duration::from_secs(24 * 3600));
        if svid_ttl < Duration::from_secs(2) {
            return Err(invalid("--svid-ttl", "must be at least 2s"));
        }
        let sync_interval = args.sync_interval.unwrap_or(Duration::from_secs(5));
        if sync_interval < Duration::from_millis(100) {
            return Err(invalid("--sync-interval", "must be at least 100ms"));
        }
        Ok(Self {
            socket_dir: args.socket_dir.unwrap_or_else(|| data_dir.join("sockets")),
            ca_addr,
            ca_root,
            tls_server_name,
            trust_domain,
            data_dir,
            node_name,
            mode,
            credential,
            kubernetes,
            rotation,
            svid_ttl,
            sync_interval,
            write_dir: args.write_dir,
            monitoring_addr: args
                .monitoring_addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 15020))),
            log_format: args.log_format.unwrap_or_default(),
        })
    }

    /// The shared socket (Istio's file name, so an injected Envoy bootstrap finds it).
    pub fn shared_socket(&self) -> PathBuf {
        self.socket_dir.join("socket")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args() -> RunArgs {
        RunArgs {
            ca_addr: Some("https://127.0.0.1:15012".into()),
            ca_root: Some("/tmp/root.pem".into()),
            data_dir: Some("/tmp/agent".into()),
            node_name: Some("node-a".into()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn defaults() {
        let c = Config::load(args()).unwrap();
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.tls_server_name, "127.0.0.1");
        assert_eq!(c.socket_dir, PathBuf::from("/tmp/agent/sockets"));
        assert_eq!(
            c.shared_socket(),
            PathBuf::from("/tmp/agent/sockets/socket")
        );
        assert_eq!(c.mode, Mode::Node);
        assert_eq!(c.rotation, RotationPolicy::default());
        assert_eq!(c.svid_ttl, Duration::from_secs(86_400));
        assert_eq!(c.monitoring_addr.to_string(), "127.0.0.1:15020");
        assert_eq!(c.credential, NodeCredential::None);
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: Vec<(RunArgs, &str)> = vec![
            (
                RunArgs {
                    ca_addr: None,
                    ..args()
                },
                "--ca-addr: is required",
            ),
            (
                RunArgs {
                    ca_addr: Some("http://x:1".into()),
                    ..args()
                },
                "--ca-addr",
            ),
            (
                RunArgs {
                    ca_root: None,
                    ..args()
                },
                "--ca-root: is required",
            ),
            (
                RunArgs {
                    rotation_ratio: Some(1.5),
                    ..args()
                },
                "--rotation-ratio",
            ),
            (
                RunArgs {
                    svid_ttl: Some(Duration::from_secs(1)),
                    ..args()
                },
                "--svid-ttl",
            ),
            (
                RunArgs {
                    mode: Some(Mode::Workload),
                    ..args()
                },
                "--token-file: is required in workload mode",
            ),
            (
                RunArgs {
                    trust_domain: Some("Bad Domain".into()),
                    ..args()
                },
                "--trust-domain",
            ),
            (
                RunArgs {
                    node_name: Some("a/b".into()),
                    ..args()
                },
                "--node-name",
            ),
        ];
        for (a, want) in cases {
            let err = Config::load(a).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn file_fills_in_and_flags_win_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(
            &path,
            "ca-addr: https://ca.example:15012\nca-root: /r.pem\ndata-dir: /d\nnode-name: n1\nsvid-ttl: 1h\nrotation-ratio: 0.7\n",
        )
        .unwrap();
        let c = Config::load(RunArgs {
            config: Some(path.clone()),
            node_name: Some("n2".into()),
            ..RunArgs::default()
        })
        .unwrap();
        assert_eq!(c.tls_server_name, "ca.example");
        assert_eq!(c.node_name, "n2");
        assert_eq!(c.svid_ttl, Duration::from_secs(3600));
        assert!((c.rotation.ratio - 0.7).abs() < 1e-9);
        std::fs::write(&path, "ca-adr: https://x:1\n").unwrap();
        let err = Config::load(RunArgs {
            config: Some(path.clone()),
            ..RunArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("agent.yaml") && err.contains("ca-adr"),
            "{err}"
        );
    }

    #[test]
    fn join_token_is_not_printed() {
        let c = Config::load(RunArgs {
            join_token: Some("wjt_secret".into()),
            ..args()
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("wjt_secret"));
    }

    #[test]
    fn local_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/agent.yaml");
        let c = Config::load(RunArgs {
            config: Some(path),
            ..RunArgs::default()
        })
        .unwrap();
        assert_eq!(c.node_name, "local-node");
        assert_eq!(c.tls_server_name, "localhost");
        assert_eq!(c.mode, Mode::Node);
    }

    #[test]
    fn kubernetes_configmap_config_loads() {
        #[derive(Deserialize)]
        struct ConfigMap {
            data: std::collections::BTreeMap<String, String>,
        }
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/agent/configmap.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let cm: ConfigMap = serde_saphyr::from_str(&text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, &cm.data["agent.yaml"]).unwrap();
        let c = Config::load(RunArgs {
            config: Some(file),
            node_name: Some("node-1".into()),
            ..RunArgs::default()
        })
        .unwrap();
        // The chart's default: Kubernetes mode, the projected token buys the node SVID.
        assert_eq!(
            c.credential,
            NodeCredential::KubeToken("/var/run/secrets/tokens/warden-token".into())
        );
        assert_eq!(c.tls_server_name, "warden-ca.istio-system.svc");
        assert_eq!(c.socket_dir, PathBuf::from("/run/warden/sockets"));
    }

    #[test]
    fn kubernetes_mode_is_node_mode_with_the_projected_token() {
        let c = Config::load(RunArgs {
            kubernetes: Some(KubernetesMode::On),
            ..args()
        })
        .unwrap();
        let token = PathBuf::from(DEFAULT_KUBE_TOKEN_FILE);
        assert_eq!(c.credential, NodeCredential::KubeToken(token.clone()));
        assert_eq!(
            c.kubernetes,
            Some(KubeSettings {
                kubeconfig: None,
                token_file: token
            })
        );
        let c = Config::load(RunArgs {
            kubeconfig: Some("/k".into()),
            kube_token_file: Some("/t".into()),
            ..args()
        })
        .unwrap();
        assert_eq!(c.credential, NodeCredential::KubeToken("/t".into()));
        // Off, and auto outside a pod without --kubeconfig: as before.
        for k in [Some(KubernetesMode::Off), None] {
            let c = Config::load(RunArgs {
                kubernetes: k,
                ..args()
            })
            .unwrap();
            assert_eq!(c.kubernetes, None);
            assert_eq!(c.credential, NodeCredential::None);
        }
        let auto = |mode, kubeconfig: Option<&Path>, in_pod, credential| {
            kubernetes_enabled(KubernetesMode::Auto, mode, kubeconfig, in_pod, credential).unwrap()
        };
        assert!(auto(Mode::Node, None, true, false));
        assert!(!auto(Mode::Node, None, false, false));
        assert!(!auto(Mode::Workload, None, true, false));
        // In a pod, an explicit join token or token file keeps Kubernetes mode off...
        assert!(!auto(Mode::Node, None, true, true));
        // ...but not with --kubeconfig, where the credential is then refused.
        assert!(auto(Mode::Node, Some(Path::new("/k")), true, true));
    }

    #[test]
    fn kubernetes_mode_refuses_other_node_credentials() {
        let on = || RunArgs {
            kubernetes: Some(KubernetesMode::On),
            ..args()
        };
        let cases: Vec<(RunArgs, &str)> = vec![
            (
                RunArgs {
                    join_token: Some("wjt_x".into()),
                    ..on()
                },
                "--join-token: is not used in Kubernetes mode",
            ),
            (
                RunArgs {
                    token_file: Some("/t".into()),
                    ..on()
                },
                "--token-file: is not used in Kubernetes node mode",
            ),
            (
                RunArgs {
                    kubernetes: None,
                    kubeconfig: Some("/k".into()),
                    join_token: Some("wjt_x".into()),
                    ..args()
                },
                "--join-token: is not used in Kubernetes mode",
            ),
            (
                RunArgs {
                    mode: Some(Mode::Workload),
                    token_file: Some("/t".into()),
                    ..on()
                },
                "--kubernetes: on is for node mode",
            ),
        ];
        for (a, want) in cases {
            let err = Config::load(a).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(!err.contains("wjt_x"), "{err}");
        }
    }
}
