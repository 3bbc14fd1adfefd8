//! Unit tests of `sds`.

#![allow(clippy::unwrap_used)]

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

/// A client started against a fake agent that has sent it `ID`'s SVID and `ROOTCA`
/// (version `v1`, nonce `n1`) on its first stream; the client's ACK is still unread.
struct Started {
    _dir: tempfile::TempDir,
    streams: UnboundedReceiver<FakeStream>,
    sds: Sds,
    identity: IdentityWatch,
    stream: FakeStream,
    ca: TestCa,
    chain: String,
    key: String,
    first: Arc<Identity>,
}

async fn started_with_identity() -> Started {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let mut streams = serve(&socket);
    let sds = Sds::start(config(&socket));
    let mut identity = sds.identity();
    let mut stream = next_stream(&mut streams).await;
    stream.request().await;
    let ca = TestCa::new();
    let (chain, key) = ca.leaf_pem(ID);
    stream
        .respond(identity_response("v1", "n1", &chain, &key, &ca))
        .await;
    let first = changed(&mut identity).await;
    Started {
        _dir: dir,
        streams,
        sds,
        identity,
        stream,
        ca,
        chain,
        key,
        first,
    }
}

#[tokio::test]
async fn nacks_unusable_material_and_keeps_the_last_good() {
    let Started {
        _dir,
        sds,
        mut identity,
        stream: mut s,
        ca,
        key,
        first: good,
        ..
    } = started_with_identity().await;
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
    let Started {
        _dir,
        mut streams,
        sds,
        identity,
        stream: mut s,
        ca,
        chain,
        key,
        first: got,
        ..
    } = started_with_identity().await;
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
async fn reconnects_before_the_held_certificate_expires_whatever_the_backoff() {
    // Envoy's ceiling would let a short-lived SVID lapse while the proxy waits to
    // reconnect (a 30 s wait against a 12 s SVID after an agent restart). Here the
    // backoff is an hour, the certificate has 4 s left: the reconnect comes within 2 s.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let mut streams = serve(&socket);
    let mut c = config(&socket);
    c.backoff = Backoff {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    };
    let sds = Sds::start(c);
    let mut identity = sds.identity();
    let mut s = next_stream(&mut streams).await;
    s.request().await;
    let ca = TestCa::new();
    let now = SystemTime::now();
    let (chain, key) = ca.leaf_pem_with(ID, |p| {
        p.not_before = (now - Duration::from_secs(60)).into();
        p.not_after = (now + Duration::from_secs(4)).into();
    });
    s.respond(identity_response("v1", "n1", &chain, &key, &ca))
        .await;
    changed(&mut identity).await;
    s.request().await;

    drop(s);
    let ended = tokio::time::Instant::now();
    let mut s = tokio::time::timeout(Duration::from_secs(3), streams.recv())
        .await
        .expect("no reconnect before the certificate's expiry")
        .unwrap();
    assert!(ended.elapsed() < Duration::from_secs(3));
    assert_eq!(s.request().await.version_info, "v1");
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
