//! The CA's configuration: flags, optionally a YAML file, parsed once into [`Config`].
//!
//! Every flag can also be set in the `--config` YAML file under the same name
//! (`trust-domain: example.org`); flags given on the command line win over the file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::pki::KeyType;

pub use warden_common::config::{ConfigError, KubernetesMode, LogFormat};
use warden_common::config::{de, invalid, load_layers};

warden_common::run_args! {
/// Flags of `warden-ca run`. All optional here so a config file can fill them in.
pub struct RunArgs {
    /// YAML file with any of the settings below (same names as the flags).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory for the CA's keys, its SQLite database and the admin socket. Required.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Trust domain of issued SPIFFE IDs [default: cluster.local].
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Address of the gRPC/TLS certificate API [default: 0.0.0.0:15012].
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// Address of /metrics, /ready and /healthz [default: 0.0.0.0:15014].
    #[arg(long)]
    pub monitoring_addr: Option<SocketAddr>,
    /// `sqlite://PATH` or `postgres://...` [default: SQLite file `<data-dir>/warden.db`].
    #[arg(long)]
    pub database_url: Option<String>,
    /// A file holding the database URL (e.g. a mounted Secret), so a password in it is
    /// not in the process's arguments; instead of --database-url.
    #[arg(long)]
    pub database_url_file: Option<PathBuf>,
    /// Istio `cacerts` directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem):
    /// sign as that intermediate instead of a self-signed root.
    #[arg(long)]
    pub plugin_certs: Option<PathBuf>,
    /// The --plugin-certs key in a PKCS#11 token instead of ca-key.pem (RFC 7512 URI:
    /// pkcs11:token=T;object=K?module-path=LIB&pin-source=file:PIN); it never leaves the
    /// token.
    #[arg(long)]
    pub ca_key_uri: Option<String>,
    /// Lifetime of a workload certificate when the request names none [default: 24h].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub workload_cert_ttl: Option<Duration>,
    /// Longest lifetime a request may ask for; longer requests are refused [default: 90d].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub max_workload_cert_ttl: Option<Duration>,
    /// Key type of a newly created root: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096
    /// [default: ec-p256].
    #[arg(long)]
    #[serde(deserialize_with = "de::from_str")]
    pub key_type: Option<KeyType>,
    /// JWKS file with the keys that sign service-account tokens (RS256, ES256).
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// Required `iss` of bearer tokens; required when --jwks is set.
    #[arg(long)]
    pub token_issuer: Option<String>,
    /// Accepted `aud` of bearer tokens; repeat for several [default: istio-ca].
    #[arg(long)]
    pub token_audience: Vec<String>,
    /// Service accounts trusted as nodes for impersonation, `ns/sa`, comma-separated or
    /// repeated (Istio's CA_TRUSTED_NODE_ACCOUNTS), e.g. istio-system/ztunnel.
    #[arg(long, value_delimiter = ',')]
    pub trusted_node_accounts: Vec<String>,
    /// DNS SANs of the serving certificate [default: istiod.istio-system.svc,
    /// warden-ca.istio-system.svc, localhost].
    #[arg(long, value_delimiter = ',')]
    pub serving_dns_names: Vec<String>,
    /// IP SANs of the serving certificate [default: 127.0.0.1].
    #[arg(long, value_delimiter = ',')]
    pub serving_ip_addrs: Vec<IpAddr>,
    /// Lifetime of a JWT-SVID when the request names none [default: 5m].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub jwt_svid_ttl: Option<Duration>,
    /// Default lifetime of join tokens made by `warden token create` [default: 1h].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub join_token_ttl: Option<Duration>,
    /// How long SIGTERM waits for in-flight requests [default: 10s].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub drain_timeout: Option<Duration>,
    /// Certificate requests per second a node may make (a caller without a node counts
    /// as its own); 0 turns the limit off [default: 200].
    #[arg(long)]
    pub csr_node_rate: Option<f64>,
    /// Burst a node may make above its rate [default: 1000].
    #[arg(long)]
    pub csr_node_burst: Option<u32>,
    /// Certificate requests per second for one identity; 0 turns the limit off
    /// [default: 100].
    #[arg(long)]
    pub csr_identity_rate: Option<f64>,
    /// Burst for one identity above its rate [default: 1000].
    #[arg(long)]
    pub csr_identity_burst: Option<u32>,
    /// Certificate requests worked on at once [default: 256].
    #[arg(long)]
    pub max_concurrent_csrs: Option<usize>,
    /// Certificate requests waiting for a slot (5 s at most); more are refused at once
    /// with RESOURCE_EXHAUSTED and a retry hint [default: 4096].
    #[arg(long)]
    pub max_queued_csrs: Option<usize>,
    /// How often the audit chain head is signed into a checkpoint while the log grows;
    /// 0s turns it off (`warden audit checkpoint` still works) [default: 1h].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub audit_checkpoint_interval: Option<Duration>,
    /// Lifetime of a root the CA makes for itself, on first start and by
    /// `warden ca authority prepare` [default: 87600h, istiod's 10 years].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub root_ttl: Option<Duration>,
    /// Own-root CAs: the fraction of the active root's life at which a successor root is
    /// prepared (added to every trust bundle); 0 turns automatic rotation off
    /// [default: 0.5, SPIRE's].
    #[arg(long)]
    pub authority_prepare_at: Option<f64>,
    /// Own-root CAs: the fraction of the active root's life at which the prepared root
    /// is activated (signs from then on) [default: 0.8333, SPIRE's 5/6].
    #[arg(long)]
    pub authority_activate_at: Option<f64>,
    /// Serve this trust domain's SPIFFE bundle for federation on this address (HTTPS,
    /// at `/`) [default: off].
    #[arg(long)]
    pub bundle_endpoint_addr: Option<SocketAddr>,
    /// How the bundle endpoint authenticates: https_spiffe (an SVID of
    /// spiffe://TD/warden/ca from this CA) or https_web (--bundle-endpoint-cert)
    /// [default: https_spiffe].
    #[arg(long)]
    pub bundle_endpoint_profile: Option<String>,
    /// https_web: the bundle endpoint's certificate chain (PEM).
    #[arg(long)]
    pub bundle_endpoint_cert: Option<PathBuf>,
    /// https_web: the bundle endpoint's private key (PEM).
    #[arg(long)]
    pub bundle_endpoint_key: Option<PathBuf>,
    /// `spiffe_refresh_hint` of the bundle served [default: 5m].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    #[serde(deserialize_with = "de::duration")]
    pub bundle_refresh_hint: Option<Duration>,
    /// YAML list of the trust domains to federate with and their bundle endpoints
    /// (see the README's federation section).
    #[arg(long)]
    pub federates_with: Option<PathBuf>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// Kubernetes mode: auto (on in a pod or with --kubeconfig), on, off [default: auto].
    /// Service-account tokens are then reviewed by the API server (TokenReview), the root
    /// lives in Secrets, and the root ConfigMap is published in every namespace.
    #[arg(long)]
    pub kubernetes: Option<KubernetesMode>,
    /// kubeconfig of the cluster, to run outside it [default: the pod's in-cluster config].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This cluster's ID; a request's `clusterid` metadata must name it or be absent
    /// [default: Kubernetes, Istio's].
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Namespace of the CA's Secrets (`cacerts`, `istio-ca-secret`) and leader Lease
    /// [env POD_NAMESPACE; default: istio-system].
    #[arg(long, env = "POD_NAMESPACE")]
    pub ca_namespace: Option<String>,
    /// This replica's name, its identity in the leader Lease [env POD_NAME; default: the
    /// host name].
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Service accounts whose projected tokens attest nodes (`ns/sa`, comma-separated or
    /// repeated) [default: istio-system/warden-agent].
    #[arg(long, value_delimiter = ',')]
    pub agent_service_accounts: Vec<String>,
    /// Address of the validating admission webhook (HTTPS) [default: 0.0.0.0:15017].
    #[arg(long)]
    pub webhook_addr: Option<SocketAddr>,
    /// Name of the ValidatingWebhookConfiguration whose caBundle the leader keeps
    /// [default: warden-validator].
    #[arg(long)]
    pub webhook_config_name: Option<String>,
    /// Name of the Service in front of the webhook, for its serving certificate
    /// [default: warden-ca].
    #[arg(long)]
    pub webhook_service_name: Option<String>,
}
}

/// A Kubernetes service account, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub name: String,
}

/// The CA's effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keys, database and admin socket live here.
    pub data_dir: PathBuf,
    /// Trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// gRPC/TLS listen address.
    pub grpc_addr: SocketAddr,
    /// Monitoring HTTP listen address.
    pub monitoring_addr: SocketAddr,
    /// Database URL (`sqlite://...` or `postgres://...`).
    pub database_url: String,
    /// Istio `cacerts` directory, when signing as a plugged-in intermediate.
    pub plugin_certs: Option<PathBuf>,
    /// Default workload certificate lifetime.
    pub workload_cert_ttl: Duration,
    /// Longest lifetime a request may ask for.
    pub max_workload_cert_ttl: Duration,
    /// Key type used when a new root is made.
    pub key_type: KeyType,
    /// JWKS for bearer-token validation; `None` disables JWT authentication.
    pub jwks: Option<PathBuf>,
    /// Required token issuer.
    pub token_issuer: Option<String>,
    /// Accepted token audiences.
    pub token_audiences: Vec<String>,
    /// Service accounts allowed to impersonate the workloads registered under them.
    pub trusted_node_accounts: Vec<ServiceAccount>,
    /// DNS SANs of the serving certificate.
    pub serving_dns_names: Vec<String>,
    /// IP SANs of the serving certificate.
    pub serving_ip_addrs: Vec<IpAddr>,
    /// Default JWT-SVID lifetime.
    pub jwt_svid_ttl: Duration,
    /// Default join-token lifetime.
    pub join_token_ttl: Duration,
    /// Grace period for in-flight requests on SIGTERM.
    pub drain_timeout: Duration,
    /// Interval of automatic audit checkpoints; `None` when off.
    pub audit_checkpoint_interval: Option<Duration>,
    /// Rate limits and the concurrency bound of certificate requests.
    pub limits: crate::limits::LimitSettings,
    /// Lifetime of roots the CA makes.
    pub root_ttl: Duration,
    /// The plugged-in CA's key in a PKCS#11 token.
    pub ca_key_uri: Option<crate::pki::hsm::Pkcs11Uri>,
    /// Automatic root rotation; `None` when off.
    pub auto_rotation: Option<crate::rotation::AutoRotation>,
    /// The bundle endpoint; `None` when off.
    pub bundle_endpoint: Option<crate::federation::endpoint::EndpointSettings>,
    /// The trust domains federated with.
    pub federates_with: Vec<crate::federation::Relationship>,
    /// `--federates-with`, followed while the CA runs.
    pub federates_with_file: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// Kubernetes mode's settings; `None` when it is off.
    pub kubernetes: Option<KubeSettings>,
}

/// The CA's settings in Kubernetes mode.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// kubeconfig file; `None` for the in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// This cluster's ID.
    pub cluster_id: String,
    /// Namespace of the CA's Secrets and Lease.
    pub namespace: String,
    /// This replica's Lease identity.
    pub pod_name: String,
    /// Accounts whose tokens attest nodes.
    pub agent_service_accounts: Vec<ServiceAccount>,
    /// Webhook listen address.
    pub webhook_addr: SocketAddr,
    /// ValidatingWebhookConfiguration name.
    pub webhook_config_name: String,
    /// Service name of the webhook.
    pub webhook_service_name: String,
}

/// The limits from flags over the defaults; rates must be finite and not negative,
/// bursts and bounds at least 1.
fn limit_settings(args: &RunArgs) -> Result<crate::limits::LimitSettings, ConfigError> {
    use crate::limits::{LimitSettings, Rate};
    let d = LimitSettings::default();
    let rate = |flag: &'static str,
                v: Option<f64>,
                burst_flag: &'static str,
                burst: Option<u32>,
                d: Rate| {
        let per_second = v.unwrap_or(d.per_second);
        if !per_second.is_finite() || per_second < 0.0 {
            return Err(invalid(
                flag,
                format!("{per_second} is not a rate: expected 0 (off) or more requests per second"),
            ));
        }
        let burst = burst.map_or(d.burst, f64::from);
        if burst < 1.0 {
            return Err(invalid(burst_flag, "must be at least 1"));
        }
        Ok(Rate { per_second, burst })
    };
    let at_least_one = |flag: &'static str, v: Option<usize>, d: usize| match v {
        Some(0) => Err(invalid(flag, "must be at least 1")),
        v => Ok(v.unwrap_or(d)),
    };
    Ok(LimitSettings {
        per_node: rate(
            "--csr-node-rate",
            args.csr_node_rate,
            "--csr-node-burst",
            args.csr_node_burst,
            d.per_node,
        )?,
        per_identity: rate(
            "--csr-identity-rate",
            args.csr_identity_rate,
            "--csr-identity-burst",
            args.csr_identity_burst,
            d.per_identity,
        )?,
        max_concurrent: at_least_one(
            "--max-concurrent-csrs",
            args.max_concurrent_csrs,
            d.max_concurrent,
        )?,
        max_queued: args.max_queued_csrs.unwrap_or(d.max_queued),
        queue_timeout: d.queue_timeout,
    })
}

impl Config {
    /// Merges flags over the optional config file and applies defaults and checks.
    pub fn load(flags: RunArgs) -> Result<Self, ConfigError> {
        let args = load_layers(flags.clone(), flags.config.as_deref())?;
        let limits = limit_settings(&args)?;
        let data_dir = args
            .data_dir
            .ok_or_else(|| invalid("--data-dir", "is required"))?;
        let trust_domain = args
            .trust_domain
            .unwrap_or_else(|| "cluster.local".to_string());
        warden_proto::SpiffeId::parse(&format!("spiffe://{trust_domain}"))
            .map_err(|e| invalid("--trust-domain", e.to_string()))?;
        let workload_cert_ttl = args
            .workload_cert_ttl
            .unwrap_or(Duration::from_secs(24 * 3600));
        let max_workload_cert_ttl = args
            .max_workload_cert_ttl
            .unwrap_or(Duration::from_secs(90 * 86_400));
        if workload_cert_ttl.is_zero() || workload_cert_ttl > max_workload_cert_ttl {
            return Err(invalid(
                "--workload-cert-ttl",
                format!(
                    "must be more than 0 and at most --max-workload-cert-ttl ({})",
                    warden_proto::duration::format(max_workload_cert_ttl)
                ),
            ));
        }
        if args.jwks.is_some() && args.token_issuer.is_none() {
            return Err(invalid(
                "--token-issuer",
                "is required with --jwks: tokens are only accepted from a named issuer",
            ));
        }
        let mut token_audiences = args.token_audience;
        if token_audiences.is_empty() {
            token_audiences.push("istio-ca".to_string());
        }
        let trusted_node_accounts = args
            .trusted_node_accounts
            .iter()
            .map(|s| parse_service_account("--trusted-node-accounts", s))
            .collect::<Result<Vec<_>, _>>()?;
        let kube_on = args
            .kubernetes
            .unwrap_or_default()
            .enabled(args.kubeconfig.as_deref());
        if !kube_on && args.kubeconfig.is_some() {
            return Err(invalid("--kubeconfig", "is set but --kubernetes is off"));
        }
        if kube_on && args.jwks.is_some() {
            return Err(invalid(
                "--jwks",
                "Kubernetes mode reviews tokens with the API server (TokenReview); remove --jwks, or set --kubernetes off",
            ));
        }
        let kubernetes = if kube_on {
            let mut agent_service_accounts = args
                .agent_service_accounts
                .iter()
                .map(|s| parse_service_account("--agent-service-accounts", s))
                .collect::<Result<Vec<_>, _>>()?;
            if agent_service_accounts.is_empty() {
                agent_service_accounts.push(ServiceAccount {
                    namespace: "istio-system".into(),
                    name: "warden-agent".into(),
                });
            }
            let name = |flag: &'static str, v: Option<String>, default: String| {
                let v = v.unwrap_or(default);
                if is_dns_label(&v) {
                    Ok(v)
                } else {
                    Err(invalid(
                        flag,
                        format!(
                            "{v:?} is not a Kubernetes name (lowercase letters, digits and '-', at most 63)"
                        ),
                    ))
                }
            };
            Some(KubeSettings {
                kubeconfig: args.kubeconfig,
                cluster_id: args.cluster_id.unwrap_or_else(|| "Kubernetes".into()),
                namespace: name("--ca-namespace", args.ca_namespace, "istio-system".into())?,
                pod_name: args.pod_name.unwrap_or_else(host_name),
                agent_service_accounts,
                webhook_addr: args
                    .webhook_addr
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 15017))),
                webhook_config_name: args
                    .webhook_config_name
                    .unwrap_or_else(|| "warden-validator".into()),
                webhook_service_name: name(
                    "--webhook-service-name",
                    args.webhook_service_name,
                    "warden-ca".into(),
                )?,
            })
        } else {
            None
        };

        let mut serving_dns_names = args.serving_dns_names;
        if serving_dns_names.is_empty() {
            serving_dns_names = [
                "istiod.istio-system.svc",
                "warden-ca.istio-system.svc",
                "localhost",
            ]
            .map(String::from)
            .to_vec();
        }
        let mut serving_ip_addrs = args.serving_ip_addrs;
        if serving_ip_addrs.is_empty() {
            serving_ip_addrs.push(IpAddr::from([127, 0, 0, 1]));
        }
        let database_url = match (args.database_url, &args.database_url_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "--database-url-file",
                    "give the database URL once: --database-url or --database-url-file",
                ));
            }
            (Some(url), None) => url,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    invalid(
                        "--database-url-file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?,
            (None, None) => format!("sqlite://{}", data_dir.join("warden.db").display()),
        };
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "--database-url",
                "expected sqlite://PATH, postgres://... or postgresql://...",
            ));
        }
        let root_ttl = args
            .root_ttl
            .unwrap_or(crate::pki::authority::ROOT_LIFETIME);
        if root_ttl < Duration::from_secs(60) {
            return Err(invalid("--root-ttl", "expected at least 1m"));
        }
        let defaults = crate::rotation::AutoRotation::default();
        let prepare_at = args.authority_prepare_at.unwrap_or(defaults.prepare_at);
        let activate_at = args.authority_activate_at.unwrap_or(defaults.activate_at);
        let auto_rotation = if prepare_at == 0.0 {
            None
        } else if !(0.0 < prepare_at && prepare_at < activate_at && activate_at < 1.0) {
            return Err(invalid(
                "--authority-prepare-at",
                format!(
                    "expected 0 (off) or 0 < prepare-at < activate-at < 1, got prepare-at {prepare_at} and activate-at {activate_at}"
                ),
            ));
        } else {
            Some(crate::rotation::AutoRotation {
                prepare_at,
                activate_at,
            })
        };
        let ca_key_uri = match args.ca_key_uri.as_deref() {
            None => None,
            Some(_) if args.plugin_certs.is_none() => {
                return Err(invalid(
                    "--ca-key-uri",
                    "needs --plugin-certs: the token holds the key of its ca-cert.pem",
                ));
            }
            Some(uri) => Some(
                crate::pki::hsm::Pkcs11Uri::parse(uri).map_err(|e| invalid("--ca-key-uri", e))?,
            ),
        };
        let bundle_endpoint = match args.bundle_endpoint_addr {
            None => {
                for (set, flag) in [
                    (
                        args.bundle_endpoint_profile.is_some(),
                        "--bundle-endpoint-profile",
                    ),
                    (
                        args.bundle_endpoint_cert.is_some(),
                        "--bundle-endpoint-cert",
                    ),
                    (args.bundle_endpoint_key.is_some(), "--bundle-endpoint-key"),
                ] {
                    if set {
                        return Err(invalid(flag, "needs --bundle-endpoint-addr"));
                    }
                }
                None
            }
            Some(addr) => {
                let profile = match args.bundle_endpoint_profile.as_deref() {
                    None => crate::federation::ProfileName::HttpsSpiffe,
                    Some(p) => p
                        .parse()
                        .map_err(|e| invalid("--bundle-endpoint-profile", e))?,
                };
                let web_cert = match (args.bundle_endpoint_cert, args.bundle_endpoint_key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(invalid(
                            "--bundle-endpoint-key",
                            "required with --bundle-endpoint-cert",
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(invalid(
                            "--bundle-endpoint-cert",
                            "required with --bundle-endpoint-key",
                        ));
                    }
                };
                let refresh_hint = args
                    .bundle_refresh_hint
                    .unwrap_or(crate::federation::DEFAULT_REFRESH);
                if refresh_hint < Duration::from_secs(1) {
                    return Err(invalid("--bundle-refresh-hint", "expected at least 1s"));
                }
                Some(crate::federation::endpoint::EndpointSettings {
                    addr,
                    profile,
                    web_cert,
                    refresh_hint,
                })
            }
        };
        let federates_with = match &args.federates_with {
            Some(file) => crate::federation::load_relationships(file, &trust_domain)
                .map_err(|e| invalid("--federates-with", e))?,
            None => Vec::new(),
        };
        Ok(Config {
            bundle_endpoint,
            federates_with,
            federates_with_file: args.federates_with.clone(),
            ca_key_uri,
            root_ttl,
            auto_rotation,
            trust_domain,
            grpc_addr: args
                .grpc_addr
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 15012))),
            monitoring_addr: args
                .monitoring_addr
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 15014))),
            database_url,
            plugin_certs: args.plugin_certs,
            workload_cert_ttl,
            max_workload_cert_ttl,
            key_type: args.key_type.unwrap_or(KeyType::EcP256),
            jwks: args.jwks,
            token_issuer: args.token_issuer,
            token_audiences,
            trusted_node_accounts,
            serving_dns_names,
            serving_ip_addrs,
            jwt_svid_ttl: args.jwt_svid_ttl.unwrap_or(Duration::from_secs(300)),
            join_token_ttl: args.join_token_ttl.unwrap_or(Duration::from_secs(3600)),
            drain_timeout: args.drain_timeout.unwrap_or(Duration::from_secs(10)),
            limits,
            audit_checkpoint_interval: Some(
                args.audit_checkpoint_interval
                    .unwrap_or(Duration::from_secs(3600)),
            )
            .filter(|d| !d.is_zero()),
            log_format: args.log_format.unwrap_or_default(),
            data_dir,
            kubernetes,
        })
    }

    /// Path of the admin API socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }

    /// This configuration with the database password replaced, for the start-up log.
    pub fn redacted(&self) -> Self {
        Self {
            database_url: self.database_url_redacted(),
            ..self.clone()
        }
    }

    /// The database URL with any password replaced, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact_url_password(&self.database_url)
    }
}

impl warden_common::process::ServerConfig for Config {
    fn log_format(&self) -> LogFormat {
        self.log_format
    }

    fn log_effective(&self) {
        tracing::info!(config = ?self.redacted(), "effective configuration");
    }
}

/// A DNS-1123 label, as Kubernetes names namespaces and Services.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The host name (a pod's name in Kubernetes), or `warden-ca` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "warden-ca".into())
}

fn parse_service_account(flag: &'static str, s: &str) -> Result<ServiceAccount, ConfigError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ServiceAccount {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(invalid(
            flag,
            format!("{s:?} is not a service account: expected namespace/name"),
        )),
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &str) -> RunArgs {
        RunArgs {
            data_dir: Some(dir.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_match_istiod() {
        let c = Config::load(args("/tmp/x")).unwrap();
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.grpc_addr.port(), 15012);
        assert_eq!(c.monitoring_addr.port(), 15014);
        assert_eq!(c.workload_cert_ttl, Duration::from_secs(86_400));
        assert_eq!(c.max_workload_cert_ttl, Duration::from_secs(90 * 86_400));
        assert_eq!(c.token_audiences, vec!["istio-ca"]);
        assert_eq!(c.database_url, "sqlite:///tmp/x/warden.db");
        assert_eq!(c.key_type, KeyType::EcP256);
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.yaml");
        std::fs::write(
            &path,
            "data-dir: /var/lib/warden\ntrust-domain: example.org\nworkload-cert-ttl: 1h\n\
             key-type: rsa-2048\ntrusted-node-accounts: [istio-system/ztunnel]\n",
        )
        .unwrap();
        let c = Config::load(RunArgs {
            config: Some(path),
            trust_domain: Some("flag.example".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/warden"));
        assert_eq!(c.trust_domain, "flag.example");
        assert_eq!(c.workload_cert_ttl, Duration::from_secs(3600));
        assert_eq!(c.key_type, KeyType::Rsa(2048));
        assert_eq!(c.trusted_node_accounts[0].name, "ztunnel");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.yaml");
        std::fs::write(&path, "data-dir: /x\ntrust-domian: typo\n").unwrap();
        let err = Config::load(RunArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("trust-domian") && err.contains("ca.yaml"),
            "{err}"
        );

        let err = Config::load(RunArgs::default()).unwrap_err().to_string();
        assert_eq!(err, "--data-dir: is required");

        let mut a = args("/x");
        a.jwks = Some("/jwks.json".into());
        assert!(
            Config::load(a)
                .unwrap_err()
                .to_string()
                .contains("--token-issuer")
        );

        let mut a = args("/x");
        a.trusted_node_accounts = vec!["ztunnel".into()];
        assert!(
            Config::load(a)
                .unwrap_err()
                .to_string()
                .contains("namespace/name")
        );

        let mut a = args("/x");
        a.workload_cert_ttl = Some(Duration::from_secs(100 * 86_400));
        assert!(
            Config::load(a)
                .unwrap_err()
                .to_string()
                .contains("--workload-cert-ttl")
        );

        let mut a = args("/x");
        a.trust_domain = Some("Bad Domain".into());
        assert!(
            Config::load(a)
                .unwrap_err()
                .to_string()
                .contains("--trust-domain")
        );
    }

    #[test]
    fn the_database_url_can_come_from_a_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://warden:s3cret@db:5432/warden\n").unwrap();
        let c = Config::load(RunArgs {
            database_url_file: Some(file.clone()),
            ..args("/tmp/x")
        })
        .unwrap();
        assert_eq!(c.database_url, "postgres://warden:s3cret@db:5432/warden");
        assert_eq!(
            c.database_url_redacted(),
            "postgres://warden:***@db:5432/warden"
        );
        let both = Config::load(RunArgs {
            database_url: Some("sqlite:///tmp/x.db".into()),
            database_url_file: Some(file),
            ..args("/tmp/x")
        })
        .unwrap_err()
        .to_string();
        assert!(both.contains("--database-url-file"), "{both}");
        let missing = Config::load(RunArgs {
            database_url_file: Some(dir.path().join("nope")),
            ..args("/tmp/x")
        })
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("cannot read") && missing.contains("nope"),
            "{missing}"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url_password("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url_password("postgres://u@h/db"),
            "postgres://u@h/db"
        );
    }
}

/// The configs shipped in `deploy/` must load with this parser.
#[cfg(test)]
mod shipped_configs {
    use super::*;
    use serde::Deserialize;
    use std::path::Path;

    fn load_file(path: &Path) -> Config {
        Config::load(RunArgs {
            config: Some(path.to_path_buf()),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn local_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/ca.yaml");
        let c = load_file(&path);
        assert_eq!(c.grpc_addr.port(), 15012);
    }

    #[test]
    fn kubernetes_configmap_config_loads() {
        #[derive(Deserialize)]
        struct ConfigMap {
            data: std::collections::BTreeMap<String, String>,
        }
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/ca/configmap.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let cm: serde_json::Value = serde_saphyr::from_str(&text)
            .map(|c: ConfigMap| serde_json::json!(c.data))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.yaml");
        std::fs::write(&file, cm["ca.yaml"].as_str().unwrap()).unwrap();
        let c = load_file(&file);
        assert_eq!(c.trusted_node_accounts[0].name, "ztunnel");
        assert!(c.jwks.is_none() && c.token_issuer.is_none());
        let k = c.kubernetes.as_ref().expect("kubernetes: on");
        assert_eq!(k.agent_service_accounts[0].name, "warden-agent");
        assert_eq!(k.webhook_config_name, "warden-validator");
    }
}
