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
//! response arrives), re-sending the last accepted version.
//!
//! The result is published as an [`IdentityWatch`]: `None` until both resources have
//! arrived, then the latest [`Identity`], replaced whenever either half changes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
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
            let bundle = TrustBundle::from_pem(pem).map_err(|error| SdsError::Unusable {
                name: name.to_string(),
                error,
            })?;
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
            let delay = self.config.backoff.delay(attempt, random_unit());
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
            tracing::info!(roots = bundle.roots().len(), "SDS: new trust bundle");
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
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::time::Duration;

    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, TlsCertificate,
    };
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
        SecretDiscoveryService, SecretDiscoveryServiceServer,
    };
    use envoy_types::pb::google::protobuf::Any;
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::test_support::TestCa;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/web";
    const WAIT: Duration = Duration::from_secs(10);

    // --- a scripted SDS server on a unix socket -----------------------------------

    /// One stream as the test sees it: the requests the client sent, and a handle
    /// to send responses (dropping it ends the stream).
    pub(crate) struct FakeStream {
        requests: UnboundedReceiver<DiscoveryRequest>,
        responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    }

    impl FakeStream {
        pub(crate) async fn request(&mut self) -> DiscoveryRequest {
            tokio::time::timeout(WAIT, self.requests.recv())
                .await
                .expect("no request from the SDS client")
                .unwrap()
        }

        pub(crate) async fn respond(&self, resp: DiscoveryResponse) {
            self.responses.send(Ok(resp)).await.unwrap();
        }
    }

    struct FakeSds {
        streams: UnboundedSender<FakeStream>,
    }

    #[tonic::async_trait]
    impl SecretDiscoveryService for FakeSds {
        type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
        type DeltaSecretsStream = ReceiverStream<
            Result<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse, Status>,
        >;

        async fn stream_secrets(
            &self,
            request: Request<Streaming<DiscoveryRequest>>,
        ) -> Result<Response<Self::StreamSecretsStream>, Status> {
            let mut inbound = request.into_inner();
            let (req_tx, req_rx) = unbounded_channel();
            let (resp_tx, resp_rx) = mpsc::channel(8);
            tokio::spawn(async move {
                while let Ok(Some(r)) = inbound.message().await {
                    if req_tx.send(r).is_err() {
                        break;
                    }
                }
            });
            let _ = self.streams.send(FakeStream {
                requests: req_rx,
                responses: resp_tx,
            });
            Ok(Response::new(ReceiverStream::new(resp_rx)))
        }

        async fn delta_secrets(
            &self,
            _request: Request<
                Streaming<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest>,
            >,
        ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
            Err(Status::unimplemented("delta"))
        }

        async fn fetch_secrets(
            &self,
            _request: Request<DiscoveryRequest>,
        ) -> Result<Response<DiscoveryResponse>, Status> {
            Err(Status::unimplemented("fetch"))
        }
    }

    /// Serves the fake on `socket`; new streams arrive on the returned receiver.
    pub(crate) fn serve(socket: &Path) -> UnboundedReceiver<FakeStream> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let (streams, rx) = unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SecretDiscoveryServiceServer::new(FakeSds { streams }))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        rx
    }

    pub(crate) async fn next_stream(streams: &mut UnboundedReceiver<FakeStream>) -> FakeStream {
        tokio::time::timeout(WAIT, streams.recv())
            .await
            .expect("the SDS client did not open a stream")
            .unwrap()
    }

    fn inline_bytes(b: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(b.as_bytes().to_vec())),
            ..Default::default()
        })
    }

    pub(crate) fn cert_secret(name: &str, chain: &str, key: &str) -> Secret {
        Secret {
            name: name.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline_bytes(chain),
                private_key: inline_bytes(key),
                ..Default::default()
            })),
        }
    }

    pub(crate) fn roots_secret(name: &str, pem: &str) -> Secret {
        Secret {
            name: name.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline_bytes(pem),
                    ..Default::default()
                },
            )),
        }
    }

    /// A response with `default` (`chain`, `key`) and `ROOTCA` (`ca`'s root).
    fn identity_response(
        version: &str,
        nonce: &str,
        chain: &str,
        key: &str,
        ca: &TestCa,
    ) -> DiscoveryResponse {
        response(
            version,
            nonce,
            vec![
                cert_secret(DEFAULT, chain, key),
                roots_secret(ROOTCA, &ca.pem()),
            ],
        )
    }

    pub(crate) fn response(version: &str, nonce: &str, secrets: Vec<Secret>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            resources: secrets
                .into_iter()
                .map(|s| Any {
                    type_url: SECRET_TYPE_URL.into(),
                    value: s.encode_to_vec(),
                })
                .collect(),
            type_url: SECRET_TYPE_URL.into(),
            nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn config(socket: &Path) -> SdsConfig {
        let mut c = SdsConfig::new(
            socket,
            NodeInfo::sidecar(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), "web", "default"),
        );
        c.backoff = Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        };
        c
    }

    async fn changed(rx: &mut IdentityWatch) -> Arc<Identity> {
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("no identity change")
            .unwrap();
        rx.borrow_and_update().clone().unwrap()
    }

    fn assert_ack(req: &DiscoveryRequest, version: &str, nonce: &str) {
        assert_eq!(req.version_info, version);
        assert_eq!(req.response_nonce, nonce);
        assert!(req.error_detail.is_none(), "{:?}", req.error_detail);
        assert!(
            req.node.is_none(),
            "the node goes on the first request only"
        );
    }

    fn assert_nack(req: &DiscoveryRequest, version: &str, nonce: &str, says: &str) -> String {
        assert_eq!(
            req.version_info, version,
            "a NACK carries the last good version"
        );
        assert_eq!(req.response_nonce, nonce);
        let detail = req.error_detail.as_ref().expect("a NACK has error_detail");
        assert_eq!(detail.code, NACK_CODE);
        assert!(detail.message.contains(says), "{}", detail.message);
        detail.message.clone()
    }

    // --- the protocol -------------------------------------------------------------

    #[tokio::test]
    async fn fetches_default_and_rootca_and_acks_them() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sds.sock");
        let mut streams = serve(&socket);
        let sds = Sds::start(config(&socket));
        let mut identity = sds.identity();
        let mut s = next_stream(&mut streams).await;

        let first = s.request().await;
        let node = first.node.as_ref().unwrap();
        assert_eq!(
            node.id,
            "sidecar~127.0.0.2~web.default~default.svc.cluster.local"
        );
        assert_eq!(node.cluster, "web.default");
        assert_eq!(first.resource_names, vec![DEFAULT, ROOTCA]);
        assert_eq!(first.type_url, SECRET_TYPE_URL);
        assert!(first.response_nonce.is_empty() && first.version_info.is_empty());

        let ca = TestCa::new();
        let (chain, key) = ca.leaf_pem(ID);
        // `default` alone is not an identity yet.
        s.respond(response(
            "v1",
            "n1",
            vec![cert_secret(DEFAULT, &chain, &key)],
        ))
        .await;
        assert_ack(&s.request().await, "v1", "n1");
        assert!(identity.borrow().is_none());
        s.respond(response("v2", "n2", vec![roots_secret(ROOTCA, &ca.pem())]))
            .await;
        let got = changed(&mut identity).await;
        assert_ack(&s.request().await, "v2", "n2");
        assert_eq!(got.spiffe_id().as_str(), ID);
        assert_eq!(got.roots().len(), 1);
        assert_eq!(sds.ready().await.unwrap().serial(), got.serial());
        assert_eq!(sds.stats().acks.load(Ordering::Relaxed), 2);
        assert_eq!(sds.stats().nacks.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn nacks_unusable_material_and_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sds.sock");
        let mut streams = serve(&socket);
        let sds = Sds::start(config(&socket));
        let mut identity = sds.identity();
        let mut s = next_stream(&mut streams).await;
        s.request().await;

        let ca = TestCa::new();
        let (chain, key) = ca.leaf_pem(ID);
        s.respond(identity_response("v1", "n1", &chain, &key, &ca))
            .await;
        let good = changed(&mut identity).await;
        assert_ack(&s.request().await, "v1", "n1");

        // A key that is not the certificate's.
        let (chain2, _) = ca.leaf_pem(ID);
        s.respond(response(
            "v2",
            "n2",
            vec![cert_secret(DEFAULT, &chain2, &key)],
        ))
        .await;
        assert_nack(&s.request().await, "v1", "n2", "does not match");
        // Bad PEM.
        let broken = chain2.replace('M', "*");
        s.respond(response(
            "v3",
            "n3",
            vec![cert_secret(DEFAULT, &broken, &key)],
        ))
        .await;
        assert_nack(&s.request().await, "v1", "n3", "not valid PEM");
        // No SPIFFE ID.
        let (no_id, no_id_key) = ca.leaf_pem_with(ID, |p| p.subject_alt_names.clear());
        s.respond(response(
            "v4",
            "n4",
            vec![cert_secret(DEFAULT, &no_id, &no_id_key)],
        ))
        .await;
        let msg = assert_nack(&s.request().await, "v1", "n4", "SPIFFE ID");
        assert!(
            msg.contains("\"default\""),
            "the message names the secret: {msg}"
        );
        // A good certificate with a broken bundle in the same response: nothing of it
        // is applied.
        let (chain5, key5) = ca.leaf_pem(ID);
        s.respond(response(
            "v5",
            "n5",
            vec![
                cert_secret(DEFAULT, &chain5, &key5),
                roots_secret(ROOTCA, "garbage"),
            ],
        ))
        .await;
        assert_nack(&s.request().await, "v1", "n5", "trust bundle");
        // The wrong kind of secret under a name.
        s.respond(response("v6", "n6", vec![roots_secret(DEFAULT, &ca.pem())]))
            .await;
        assert_nack(&s.request().await, "v1", "n6", "not a tls_certificate");

        assert!(
            !identity.has_changed().unwrap(),
            "nothing NACKed was published"
        );
        assert_eq!(identity.borrow().as_ref().unwrap().serial(), good.serial());
        assert_eq!(sds.stats().nacks.load(Ordering::Relaxed), 5);

        // A good rotation is taken and ACKed.
        let (chain7, key7) = ca.leaf_pem(ID);
        s.respond(response(
            "v7",
            "n7",
            vec![cert_secret(DEFAULT, &chain7, &key7)],
        ))
        .await;
        let rotated = changed(&mut identity).await;
        assert_ack(&s.request().await, "v7", "n7");
        assert_ne!(rotated.serial(), good.serial());
        assert_eq!(rotated.roots(), good.roots(), "the bundle is kept");
    }

    #[tokio::test]
    async fn reconnects_when_the_stream_ends_and_keeps_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sds.sock");
        let mut streams = serve(&socket);
        let sds = Sds::start(config(&socket));
        let mut identity = sds.identity();
        let mut s = next_stream(&mut streams).await;
        s.request().await;
        let ca = TestCa::new();
        let (chain, key) = ca.leaf_pem(ID);
        s.respond(identity_response("v1", "n1", &chain, &key, &ca))
            .await;
        let got = changed(&mut identity).await;
        s.request().await;

        // The agent ends the stream (restart, error): the client opens a new one,
        // with its node and the last accepted version.
        drop(s);
        let mut s = next_stream(&mut streams).await;
        let again = s.request().await;
        assert!(again.node.is_some());
        assert_eq!(again.version_info, "v1");
        assert!(again.response_nonce.is_empty());
        assert_eq!(identity.borrow().as_ref().unwrap().serial(), got.serial());
        // The same material again publishes nothing new.
        s.respond(identity_response("v2", "n2", &chain, &key, &ca))
            .await;
        assert_ack(&s.request().await, "v2", "n2");
        assert!(!identity.has_changed().unwrap());
        assert!(sds.stats().streams.load(Ordering::Relaxed) >= 2);
    }

    #[tokio::test]
    async fn retries_until_the_agent_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sds.sock");
        let sds = Sds::start(config(&socket));
        // A few failed attempts with no socket.
        let deadline = tokio::time::Instant::now() + WAIT;
        while sds.stats().streams.load(Ordering::Relaxed) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "no retries");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut streams = serve(&socket);
        let mut s = next_stream(&mut streams).await;
        assert!(s.request().await.node.is_some());
    }

    // --- pure parts -----------------------------------------------------------------

    #[test]
    fn refuses_file_and_env_data_sources_and_other_types() {
        let mut secret = roots_secret(ROOTCA, "");
        if let Some(secret::Type::ValidationContext(vc)) = &mut secret.r#type {
            vc.trusted_ca = Some(DataSource {
                specifier: Some(Specifier::Filename("/etc/ssl/ca.pem".into())),
                ..Default::default()
            });
        }
        let err = decode(&response("v", "n", vec![secret]), DEFAULT, ROOTCA).unwrap_err();
        assert!(
            err.to_string().contains("trusted_ca is a file name"),
            "{err}"
        );

        let mut resp = response("v", "n", vec![]);
        resp.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        let err = decode(&resp, DEFAULT, ROOTCA).unwrap_err();
        assert!(matches!(err, SdsError::TypeUrl(_)), "{err}");

        let mut resp = response("v", "n", vec![roots_secret(ROOTCA, "")]);
        resp.resources[0].value = vec![0xff, 0xff];
        let err = decode(&resp, DEFAULT, ROOTCA).unwrap_err();
        assert!(matches!(err, SdsError::Decode { .. }), "{err}");

        // Unknown names are ignored; an empty response is fine.
        let ok = decode(
            &response("v", "n", vec![roots_secret("other", "")]),
            DEFAULT,
            ROOTCA,
        )
        .unwrap();
        assert!(ok.svid.is_none() && ok.bundle.is_none());
    }

    #[test]
    fn nack_messages_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(MAX_NACK_MESSAGE);
        let t = truncate(long);
        assert!(t.len() <= MAX_NACK_MESSAGE);
        assert!(t.chars().all(|c| c == 'é'));
    }
}
