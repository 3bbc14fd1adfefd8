//! The agent's SDS server against a raw SDS client (envoy-types' generated client over
//! the unix socket), for the protocol cases Envoy does not show on its own: ACK and
//! NACK send nothing, stale nonces are ignored, rotations are pushed with a new nonce,
//! unknown type URLs and unattested callers are refused.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use warden_tests::{AgentProcess, CaProcess, eventually_async, my_uid};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

async fn channel(path: PathBuf) -> Channel {
    warden_common::uds::channel(&path).await.unwrap()
}

fn req(names: &[&str], nonce: &str, version: &str, nack: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        type_url: TYPE_URL.into(),
        response_nonce: nonce.into(),
        error_detail: nack.map(|m| RpcStatus {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

fn secrets(r: &DiscoveryResponse) -> Vec<Secret> {
    r.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, TYPE_URL);
            Secret::decode(a.value.as_slice()).unwrap()
        })
        .collect()
}

/// The leaf serial of a `default` secret's chain.
fn serial(s: &Secret) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Some(secret::Type::TlsCertificate(tls)) = &s.r#type else {
        panic!("{} is not a tls_certificate", s.name)
    };
    let Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(pem)) =
        tls.certificate_chain.as_ref().unwrap().specifier.clone()
    else {
        panic!("chain not inline bytes")
    };
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    hex::encode(c.raw_serial())
}

async fn next(
    inbound: &mut Streaming<DiscoveryResponse>,
    within: Duration,
) -> Option<DiscoveryResponse> {
    tokio::time::timeout(within, inbound.message())
        .await
        .ok()
        .map(|r| r.unwrap().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn sds_stream_protocol() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = CaProcess::start(&dir.path().join("ca"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry("node-a", "spiffe://cluster.local/ns/default/sa/me", &[&uid]);
    let agent = AgentProcess::start_node(
        &ca,
        &dir.path().join("agent"),
        "node-a",
        &["--svid-ttl", "6s", "--sync-interval", "500ms"],
    );
    agent.wait_ready();

    let mut client = SecretDiscoveryServiceClient::new(channel(agent.socket.clone()).await);
    let (tx, rx) = mpsc::channel(8);
    tx.send(req(&["default", "ROOTCA"], "", "", None))
        .await
        .unwrap();
    let mut inbound = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // The first answer has both resources (the SVID may still be in flight at the
    // very start, in which case ROOTCA and default can come in two responses).
    let mut got = std::collections::BTreeMap::new();
    let mut last = None;
    while got.len() < 2 {
        let r = next(&mut inbound, Duration::from_secs(10))
            .await
            .expect("no SDS response");
        assert_eq!(r.type_url, TYPE_URL);
        assert!(r.version_info.contains('/'), "version {:?}", r.version_info);
        assert!(!r.nonce.is_empty());
        for s in secrets(&r) {
            got.insert(s.name.clone(), s);
        }
        last = Some(r);
    }
    let last = last.unwrap();
    let first_serial = serial(&got["default"]);
    assert!(matches!(
        got["ROOTCA"].r#type,
        Some(secret::Type::ValidationContext(_))
    ));

    // ACK: nothing comes back (until the rotation, ~3 s later at the earliest).
    tx.send(req(
        &["default", "ROOTCA"],
        &last.nonce,
        &last.version_info,
        None,
    ))
    .await
    .unwrap();
    assert!(
        next(&mut inbound, Duration::from_millis(500))
            .await
            .is_none(),
        "an ACK was answered"
    );
    // NACK: nothing comes back; it is counted.
    tx.send(req(
        &["default", "ROOTCA"],
        &last.nonce,
        &last.version_info,
        Some("bad cert"),
    ))
    .await
    .unwrap();
    assert!(
        next(&mut inbound, Duration::from_millis(500))
            .await
            .is_none(),
        "a NACK was answered"
    );
    assert_eq!(agent.metric("warden_agent_sds_nacks_total"), 1.0);
    // A stale nonce is ignored, even with a new name.
    tx.send(req(
        &[
            "default",
            "ROOTCA",
            "spiffe://cluster.local/ns/default/sa/me",
        ],
        "stale",
        "",
        None,
    ))
    .await
    .unwrap();
    assert!(
        next(&mut inbound, Duration::from_millis(500))
            .await
            .is_none(),
        "a stale request was answered"
    );

    // The rotation is pushed: a new serial under a new nonce, for `default` only.
    let pushed = next(&mut inbound, Duration::from_secs(10))
        .await
        .expect("no rotation push");
    let s = secrets(&pushed);
    assert_eq!(s.len(), 1, "only the rotated resource is pushed");
    assert_eq!(s[0].name, "default");
    assert_ne!(serial(&s[0]), first_serial);
    assert_ne!(pushed.nonce, last.nonce);
    tx.send(req(
        &["default", "ROOTCA"],
        &pushed.nonce,
        &pushed.version_info,
        None,
    ))
    .await
    .unwrap();
    // The ACK of a pushed rotation is timed.
    // (Polled between async sleeps: the ACK goes out on this runtime.)
    eventually_async(
        "warden_agent_sds_push_ack_seconds_count >= 1",
        Duration::from_secs(5),
        || async { agent.metric("warden_agent_sds_push_ack_seconds_count") >= 1.0 },
    )
    .await;

    // Adding a name on the current nonce is answered with that name alone.
    tx.send(req(
        &[
            "default",
            "ROOTCA",
            "spiffe://cluster.local/ns/default/sa/me",
        ],
        &pushed.nonce,
        &pushed.version_info,
        None,
    ))
    .await
    .unwrap();
    let added = next(&mut inbound, Duration::from_secs(5))
        .await
        .expect("added name not answered");
    let s = secrets(&added);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].name, "spiffe://cluster.local/ns/default/sa/me");

    // FetchSecrets (unary) answers the same resources.
    let fetched = client
        .fetch_secrets(req(&["default"], "", "", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(secrets(&fetched)[0].name, "default");

    // A wrong type URL ends the stream with InvalidArgument naming the expected one.
    let (tx2, rx2) = mpsc::channel(1);
    let mut bad = req(&["default"], "", "", None);
    bad.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    tx2.send(bad).await.unwrap();
    let mut s2 = client
        .stream_secrets(ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    let err = s2.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains(TYPE_URL), "{}", err.message());
    assert!(agent.metric("warden_agent_sds_streams") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sds_refuses_callers_without_an_entry() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = CaProcess::start(&dir.path().join("ca"), &[]);
    let other = format!("unix:uid:{}", my_uid() + 4242);
    ca.entry(
        "node-a",
        "spiffe://cluster.local/ns/default/sa/other",
        &[&other],
    );
    let agent = AgentProcess::start_node(
        &ca,
        &dir.path().join("agent"),
        "node-a",
        &["--sync-interval", "500ms"],
    );
    agent.wait_ready();
    let mut client = SecretDiscoveryServiceClient::new(channel(agent.socket.clone()).await);
    let (tx, rx) = mpsc::channel(1);
    tx.send(req(&["default"], "", "", None)).await.unwrap();
    let err = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains(&format!("uid={}", my_uid())),
        "{}",
        err.message()
    );
    let err = client
        .fetch_secrets(req(&["default"], "", "", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(agent.metric("warden_agent_attestation_denied_total") >= 2.0);
}

/// Requests over the agent's 1 MiB message limit are answered RESOURCE_EXHAUSTED (not
/// tonic's OUT_OF_RANGE): FetchSecrets at once, and on StreamSecrets, where the error
/// surfaces in the request stream, as the status that ends the response stream.
#[tokio::test(flavor = "multi_thread")]
async fn sds_oversized_requests_are_resource_exhausted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = CaProcess::start(&dir.path().join("ca"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry("node-a", "spiffe://cluster.local/ns/default/sa/me", &[&uid]);
    let agent = AgentProcess::start_node(&ca, &dir.path().join("agent"), "node-a", &[]);
    agent.wait_ready();
    let mut client = SecretDiscoveryServiceClient::new(channel(agent.socket.clone()).await);
    let huge = "x".repeat(2 << 20);

    let err = client
        .fetch_secrets(req(&[&huge], "", "", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");

    let (tx, rx) = mpsc::channel(8);
    tx.send(req(&["ROOTCA"], "", "", None)).await.unwrap();
    let mut inbound = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut inbound, Duration::from_secs(10))
        .await
        .expect("ROOTCA");
    assert_eq!(secrets(&first)[0].name, "ROOTCA");
    tx.send(req(&[&huge], &first.nonce, &first.version_info, None))
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("the stream ends");
    let err = end.expect_err("the stream ends with an error status");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
}
