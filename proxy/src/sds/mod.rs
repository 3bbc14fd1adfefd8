//! The proxy's certificate source: an SDS client of the node agent, as Envoy is one.
//!
//! One `StreamSecrets` stream over the agent's unix socket asks for the certificate
//! (`default`) and the trust bundle (`ROOTCA`) with a node identity in the first request
//! only (Istio configures Envoy with `set_node_on_first_message_only`). Every response is
//! answered: an ACK (its `version_info` and `nonce`) when all of its secrets are usable,
//! otherwise a NACK (the nonce, the last accepted version, and `error_detail` saying what
//! was wrong, code `INTERNAL` as Envoy's `GrpcMuxImpl` sends), and nothing of a NACKed
//! response is applied: the last good material stays in force. When the stream ends or
//! the agent cannot be reached, it reconnects with Envoy's xDS backoff
//! ([`Backoff::ENVOY`]: full-jitter exponential from 500 ms up to 30 s, reset once a
//! response arrives), re-sending the last accepted version. Unlike Envoy, the wait is
//! also capped at half of the held certificate's remaining life
//! ([`Backoff::delay_before`], as the node agent's own CA refreshes): an agent back
//! after a restart is reached before the certificate the proxy holds expires, where a
//! doubled 30 s ceiling could leave a short-lived SVID to lapse first.
//!
//! The result is published as an [`IdentityWatch`]: `None` until both resources have
//! arrived, then the latest [`Identity`], replaced whenever either half changes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, TypedExtensionConfig, node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use warden_common::backoff::{Backoff, random_unit};

use crate::identity::{Identity, IdentityError, IdentityWatch, Svid, TrustBundle};

/// Type URL of SDS resources.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The workload certificate resource (istio-agent's and SPIRE's name).
pub const DEFAULT: &str = "default";
/// The trust bundle resource.
pub const ROOTCA: &str = "ROOTCA";
/// `google.rpc.Code.INTERNAL`, the code of Envoy's NACKs.
const NACK_CODE: i32 = 13;
/// Envoy truncates NACK messages to this many bytes (`truncateGrpcStatusMessage`).
const MAX_NACK_MESSAGE: usize = 4096;

/// Who the proxy says it is to the agent: Envoy's `Node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node.id`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
}

impl NodeInfo {
    /// Istio's sidecar form: id `sidecar~IP~NAME.NS~NS.svc.cluster.local`, cluster
    /// `NAME.NS`.
    pub fn sidecar(ip: IpAddr, workload: &str, namespace: &str) -> Self {
        Self {
            id: format!("sidecar~{ip}~{workload}.{namespace}~{namespace}.svc.cluster.local"),
            cluster: format!("{workload}.{namespace}"),
        }
    }

    fn to_proto(&self) -> Node {
        Node {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            user_agent_name: "warden-proxy".to_string(),
            user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_string(),
            )),
            ..Default::default()
        }
    }
}

/// Where and how to fetch the identity.
#[derive(Debug, Clone)]
pub struct SdsConfig {
    /// The agent's SDS socket.
    pub socket: PathBuf,
    /// The node identity sent on each new stream.
    pub node: NodeInfo,
    /// The certificate resource: [`DEFAULT`], or one of the caller's SPIFFE IDs (the
    /// agent serves those by name, as SPIRE does).
    pub certificate: String,
    /// The trust bundle resource: [`ROOTCA`].
    pub trust_bundle: String,
    /// Reconnection delays.
    pub backoff: Backoff,
}

impl SdsConfig {
    /// `default` and `ROOTCA` from the agent at `socket`, with Envoy's backoff.
    pub fn new(socket: impl Into<PathBuf>, node: NodeInfo) -> Self {
        Self {
            socket: socket.into(),
            node,
            certificate: DEFAULT.to_string(),
            trust_bundle: ROOTCA.to_string(),
            backoff: Backoff::ENVOY,
        }
    }
}

/// Counters of the SDS client (for `/stats` and tests).
#[derive(Debug, Default)]
pub struct SdsStats {
    /// Streams attempted (the first connection and every reconnection).
    pub streams: AtomicU64,
    /// Responses received.
    pub responses: AtomicU64,
    /// Responses accepted.
    pub acks: AtomicU64,
    /// Responses rejected.
    pub nacks: AtomicU64,
}

impl SdsStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a response was NACKed.
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    /// The response is for another resource type.
    #[error("response type_url {0:?} is not {SECRET_TYPE_URL}")]
    TypeUrl(String),
    /// A resource is of another type.
    #[error("resource #{index} has type_url {got:?}, not {SECRET_TYPE_URL}")]
    ResourceTypeUrl {
        /// Position in the response.
        index: usize,
        /// Its type URL.
        got: String,
    },
    /// A resource does not decode.
    #[error("resource #{index} does not decode as a Secret: {reason}")]
    Decode {
        /// Position in the response.
        index: usize,
        /// The protobuf error.
        reason: String,
    },
    /// The same secret twice in one response.
    #[error("secret {0:?} appears more than once in the response")]
    Duplicate(String),
    /// The secret is not of the kind its name calls for.
    #[error("secret {name:?} is not a {expected}")]
    WrongType {
        /// The secret.
        name: String,
        /// `tls_certificate` or `validation_context`.
        expected: &'static str,
    },
    /// A required field is empty.
    #[error("secret {name:?} has no {field}")]
    Missing {
        /// The secret.
        name: String,
        /// The field.
        field: &'static str,
    },
    /// A field refers to a file or an environment variable.
    #[error("secret {name:?}: {field} is a {kind}; only inline bytes or strings are accepted")]
    NotInline {
        /// The secret.
        name: String,
        /// The field.
        field: &'static str,
        /// What it is instead.
        kind: &'static str,
    },
    /// The validation context asks for a validator this proxy does not run.
    #[error("secret {name:?}: {why}")]
    Validator {
        /// The secret.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The material is unusable.
    #[error("secret {name:?}: {error}")]
    Unusable {
        /// The secret.
        name: String,
        /// What is wrong with it.
        error: IdentityError,
    },
}

/// What one accepted response changes.
#[derive(Debug, Default)]
struct Update {
    svid: Option<Arc<Svid>>,
    bundle: Option<Arc<TrustBundle>>,
}

fn inline<'a>(
    name: &str,
    field: &'static str,
    source: Option<&'a DataSource>,
) -> Result<&'a [u8], SdsError> {
    let missing = || SdsError::Missing {
        name: name.to_string(),
        field,
    };
    let not_inline = |kind| SdsError::NotInline {
        name: name.to_string(),
        field,
        kind,
    };
    match source
        .and_then(|s| s.specifier.as_ref())
        .ok_or_else(missing)?
    {
        Specifier::InlineBytes(b) => Ok(b),
        Specifier::InlineString(s) => Ok(s.as_bytes()),
        Specifier::Filename(_) => Err(not_inline("file name")),
        Specifier::EnvironmentVariable(_) => Err(not_inline("environment variable")),
    }
}

/// Decodes a response into what it changes, or says why it must be NACKed. Secrets of
/// other names are ignored; an empty response changes nothing.
fn decode(
    resp: &DiscoveryResponse,
    certificate: &str,
    trust_bundle: &str,
) -> Result<Update, SdsError> {
    if resp.type_url != SECRET_TYPE_URL {
        return Err(SdsError::TypeUrl(resp.type_url.clone()));
    }
    let mut update = Update::default();
    for (index, any) in resp.resources.iter().enumerate() {
        if any.type_url != SECRET_TYPE_URL {
            return Err(SdsError::ResourceTypeUrl {
                index,
                got: any.type_url.clone(),
            });
        }
        let secret = Secret::decode(any.value.as_slice()).map_err(|e| SdsError::Decode {
            index,
            reason: e.to_string(),
        })?;
        let name = secret.name.as_str();
        if name == certificate {
            if update.svid.is_some() {
                return Err(SdsError::Duplicate(name.to_string()));
            }
            let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
                return Err(SdsError::WrongType {
                    name: name.to_string(),
                    expected: "tls_certificate",
                });
            };
            let chain = inline(name, "certificate_chain", tls.certificate_chain.as_ref())?;
            let key = inline(name, "private_key", tls.private_key.as_ref())?;
            let svid = Svid::from_pem(chain, key).map_err(|error| SdsError::Unusable {
                name: name.to_string(),
                error,
            })?;
            update.svid = Some(Arc::new(svid));
        } else if name == trust_bundle {
            if update.bundle.is_some() {
                return Err(SdsError::Duplicate(name.to_string()));
            }
            let Some(secret::Type::ValidationContext(vc)) = &secret.r#type else {
                return Err(SdsError::WrongType {
                    name: name.to_string(),
                    expected: "validation_context",
                });
            };
            let pem = inline(name, "trusted_ca", vc.trusted_ca.as_ref())?;
            let mut bundle = TrustBundle::from_pem(pem).map_err(|error| SdsError::Unusable {
                name: name.to_string(),
                error,
            })?;
            // Federation: Envoy's SPIFFE validator, roots per trust domain. Any other
            // validator is refused: this proxy could not honour it (fail closed).
            if let Some(custom) = &vc.custom_validator_config {
                let domains = spiffe_validator(name, custom)?;
                bundle =
                    bundle
                        .with_trust_domains(domains)
                        .map_err(|error| SdsError::Unusable {
                            name: name.to_string(),
                            error,
                        })?;
            }
            // The CA's CRLs ride with the roots, as Envoy takes them.
            if vc.crl.is_some() {
                let crl = inline(name, "crl", vc.crl.as_ref())?;
                bundle = bundle
                    .with_crls_pem(crl)
                    .map_err(|error| SdsError::Unusable {
                        name: name.to_string(),
                        error,
                    })?;
            }
            update.bundle = Some(Arc::new(bundle));
        } else {
            tracing::debug!(
                secret = name,
                "SDS: ignoring a secret that was not asked for"
            );
        }
    }
    Ok(update)
}

/// Type URL of Envoy's SPIFFE validator configuration.
const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/// The trust domains and their roots (PEM) of a `custom_validator_config`, which must
/// be Envoy's SPIFFE validator with inline `trust_domains`.
fn spiffe_validator(
    name: &str,
    custom: &TypedExtensionConfig,
) -> Result<Vec<(String, Vec<u8>)>, SdsError> {
    let unsupported = |why: String| SdsError::Validator {
        name: name.to_string(),
        why,
    };
    let any = custom
        .typed_config
        .as_ref()
        .ok_or_else(|| unsupported("custom_validator_config has no typed_config".into()))?;
    if custom.name != "envoy.tls.cert_validator.spiffe" || any.type_url != SPIFFE_VALIDATOR_TYPE_URL
    {
        return Err(unsupported(format!(
            "custom_validator_config {:?} ({}) is not Envoy's SPIFFE validator, the only one this proxy supports",
            custom.name, any.type_url
        )));
    }
    let config = SpiffeCertValidatorConfig::decode(any.value.as_slice())
        .map_err(|e| unsupported(format!("SPIFFECertValidatorConfig does not decode: {e}")))?;
    if config.trust_bundles.is_some() {
        return Err(unsupported(
            "SPIFFECertValidatorConfig.trust_bundles (a bundle map) is not supported; list trust_domains".into(),
        ));
    }
    config
        .trust_domains
        .iter()
        .map(|td| {
            if !td.workload_trust_domain.is_empty() {
                return Err(unsupported(format!(
                    "trust domain {:?} sets workload_trust_domain, which this proxy does not support",
                    td.name
                )));
            }
            let pem = inline(name, "SPIFFE validator trust_bundle", td.trust_bundle.as_ref())?;
            Ok((td.name.clone(), pem.to_vec()))
        })
        .collect()
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_NACK_MESSAGE {
        let mut end = MAX_NACK_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A running SDS client. Dropping it stops the client; the identity watch then keeps
/// its last value.
#[derive(Debug)]
pub struct Sds {
    identity: IdentityWatch,
    stats: Arc<SdsStats>,
    task: JoinHandle<()>,
}

impl Drop for Sds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sds {
    /// Starts the client on the current tokio runtime.
    pub fn start(config: SdsConfig) -> Self {
        let (tx, identity) = watch::channel(None);
        let stats = Arc::new(SdsStats::default());
        tracing::info!(socket = %config.socket.display(), node = %config.node.id, certificate = %config.certificate, trust_bundle = %config.trust_bundle, "SDS client starting");
        let client = Client {
            config,
            tx,
            stats: stats.clone(),
            svid: None,
            bundle: None,
            version: String::new(),
        };
        Self {
            identity,
            stats,
            task: tokio::spawn(client.run()),
        }
    }

    /// The identity watch (`None` until both resources have arrived).
    pub fn identity(&self) -> IdentityWatch {
        self.identity.clone()
    }

    /// The client's counters.
    pub fn stats(&self) -> &SdsStats {
        &self.stats
    }

    /// Waits for the first identity. `None` only if the client has stopped.
    pub async fn ready(&self) -> Option<Arc<Identity>> {
        let mut rx = self.identity.clone();
        let v = rx.wait_for(Option::is_some).await.ok()?;
        v.clone()
    }
}

/// How a stream ended.
enum StreamEnd {
    /// Nobody watches the identity any more: stop.
    Unwatched,
    /// The stream failed or closed; `responded` if it carried at least one response.
    Ended { responded: bool },
}

/// The task behind [`Sds`]: owns the stream, the last good material and the watch.
struct Client {
    config: SdsConfig,
    tx: watch::Sender<Option<Arc<Identity>>>,
    stats: Arc<SdsStats>,
    svid: Option<Arc<Svid>>,
    bundle: Option<Arc<TrustBundle>>,
    /// The last accepted `version_info`.
    version: String,
}

impl Client {
    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            match self.stream_once().await {
                StreamEnd::Unwatched => return,
                StreamEnd::Ended { responded } => {
                    if responded {
                        attempt = 0;
                    }
                }
            }
            let until_expiry = self.svid.as_ref().map_or(Duration::ZERO, |svid| {
                svid.not_after()
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
            });
            let delay = self
                .config
                .backoff
                .delay_before(attempt, random_unit(), until_expiry);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.tx.closed() => return,
            }
        }
    }

    fn request(&self, node: bool, nonce: &str, nack: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.version.clone(),
            node: node.then(|| self.config.node.to_proto()),
            resource_names: vec![
                self.config.certificate.clone(),
                self.config.trust_bundle.clone(),
            ],
            type_url: SECRET_TYPE_URL.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: nack.map(|message| RpcStatus {
                code: NACK_CODE,
                message: truncate(message),
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    async fn stream_once(&mut self) -> StreamEnd {
        SdsStats::bump(&self.stats.streams);
        let socket = self.config.socket.display().to_string();
        let channel = match warden_common::uds::channel(&self.config.socket).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(socket, error = %e, "SDS: cannot connect to the node agent; retrying with backoff");
                return StreamEnd::Ended { responded: false };
            }
        };
        let (requests, rx) = mpsc::channel(4);
        // The receiver is alive (it is right here), so this cannot fail.
        let _ = requests.send(self.request(true, "", None)).await;
        let mut client = SecretDiscoveryServiceClient::new(channel);
        let mut inbound = match client.stream_secrets(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::warn!(socket, code = ?status.code(), message = status.message(), "SDS: the node agent refused the stream; retrying with backoff");
                return StreamEnd::Ended { responded: false };
            }
        };
        let mut responded = false;
        loop {
            let message = tokio::select! {
                m = inbound.message() => m,
                () = self.tx.closed() => return StreamEnd::Unwatched,
            };
            match message {
                Ok(Some(resp)) => {
                    responded = true;
                    let answer = self.on_response(&resp);
                    if requests.send(answer).await.is_err() {
                        return StreamEnd::Ended { responded };
                    }
                }
                Ok(None) => {
                    tracing::info!(
                        socket,
                        "SDS: the node agent closed the stream; reconnecting"
                    );
                    return StreamEnd::Ended { responded };
                }
                Err(status) => {
                    tracing::warn!(socket, code = ?status.code(), message = status.message(), "SDS: the stream failed; reconnecting with backoff");
                    return StreamEnd::Ended { responded };
                }
            }
        }
    }

    /// Applies a response if it is usable; returns its ACK or NACK.
    fn on_response(&mut self, resp: &DiscoveryResponse) -> DiscoveryRequest {
        SdsStats::bump(&self.stats.responses);
        match decode(resp, &self.config.certificate, &self.config.trust_bundle) {
            Ok(update) => {
                self.apply(update);
                self.version = resp.version_info.clone();
                SdsStats::bump(&self.stats.acks);
                self.request(false, &resp.nonce, None)
            }
            Err(e) => {
                SdsStats::bump(&self.stats.nacks);
                tracing::warn!(nonce = %resp.nonce, version = %resp.version_info, error = %e, "SDS: rejected (NACKed) a response; keeping the last good certificate and trust bundle");
                self.request(false, &resp.nonce, Some(e.to_string()))
            }
        }
    }

    fn apply(&mut self, update: Update) {
        let mut changed = false;
        if let Some(svid) = update.svid
            && self.svid.as_ref().is_none_or(|s| s.chain() != svid.chain())
        {
            tracing::info!(spiffe_id = %svid.spiffe_id(), serial = svid.serial(), not_after = unix_secs(svid.not_after()), "SDS: new certificate");
            self.svid = Some(svid);
            changed = true;
        }
        if let Some(bundle) = update.bundle
            && self.bundle.as_deref() != Some(&*bundle)
        {
            tracing::info!(
                roots = bundle.roots().len(),
                crls = bundle.crls().len(),
                "SDS: new trust bundle"
            );
            self.bundle = Some(bundle);
            changed = true;
        }
        if changed && let (Some(svid), Some(bundle)) = (&self.svid, &self.bundle) {
            let identity = Identity::new(svid.clone(), bundle.clone());
            self.tx.send_replace(Some(Arc::new(identity)));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
