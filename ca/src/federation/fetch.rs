//! Fetching a foreign trust domain's bundle from its bundle endpoint: one HTTPS GET
//! (HTTP/1.1), authenticated by the relationship's profile.
//!
//! - `https_spiffe`: the endpoint's certificate chain must lead to a root of the bundle
//!   held for *that* trust domain (the bundle it serves updates itself), and its leaf
//!   must carry exactly the configured endpoint SPIFFE ID. No host name check: SVIDs
//!   name workloads, not hosts.
//! - `https_web`: ordinary Web PKI server authentication for the URL's host name, with
//!   the relationship's `ca-file` roots or the system's.
//!
//! Connect, handshake and answer are each bounded in time, and the document in size.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::bundle::{MAX_DOCUMENT_BYTES, SpiffeBundle};
use super::{Profile, Relationship};
use warden_proto::SpiffeId;

/// Connecting and the TLS handshake, together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole answer, once connected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a fetch did not give a bundle.
#[derive(Debug)]
pub enum FetchError {
    /// The endpoint could not be reached or did not answer 200: try again later.
    Unreachable(String),
    /// It answered, but with something that cannot be taken (audited).
    Refused(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies an https_spiffe endpoint: chain to the trust domain's roots, the exact ID.
#[derive(Debug)]
pub(crate) struct SpiffeEndpointVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    endpoint_id: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl SpiffeEndpointVerifier {
    pub(crate) fn new(roots: &[CertificateDer<'static>], endpoint_id: SpiffeId) -> Self {
        let anchors = roots
            .iter()
            .filter_map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        Self {
            anchors,
            endpoint_id,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for SpiffeEndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let other = |m: String| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(std::io::Error::other(m)),
            )))
        };
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| other(format!("the endpoint's certificate does not parse: {e:?}")))?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            other(format!(
                "the endpoint's certificate does not chain to the bundle held for {}: {e:?}",
                self.endpoint_id.trust_domain()
            ))
        })?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| other(format!("the endpoint's certificate does not parse: {e}")))?;
        let id = warden_common::x509::spiffe_id_of(&cert)
            .map_err(|e| other(format!("the endpoint's certificate is not an SVID: {e}")))?;
        if id != self.endpoint_id {
            return Err(other(format!(
                "the endpoint presented {id}, not the configured endpoint-spiffe-id {}",
                self.endpoint_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(
    rel: &Relationship,
    current: Option<&SpiffeBundle>,
) -> Result<rustls::ClientConfig, FetchError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Unreachable(format!("TLS: {e}")))?;
    let mut config = match &rel.profile {
        Profile::HttpsSpiffe { endpoint_id } => {
            let Some(bundle) = current else {
                return Err(FetchError::Unreachable(format!(
                    "no bundle of {} is held to authenticate its https_spiffe endpoint with: give bundle-file in --federates-with",
                    rel.trust_domain
                )));
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SpiffeEndpointVerifier::new(
                    &bundle.x509_roots,
                    endpoint_id.clone(),
                )))
                .with_no_client_auth()
        }
        Profile::HttpsWeb { roots } => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Fetches the relationship's bundle once. `current` is the bundle held for it (which
/// authenticates an https_spiffe endpoint).
pub async fn fetch(
    rel: &Relationship,
    current: Option<&SpiffeBundle>,
) -> Result<SpiffeBundle, FetchError> {
    let unreachable = |m: String| FetchError::Unreachable(format!("{}: {m}", rel.url));
    let config = client_config(rel, current)?;
    let host = rel.url.host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    let port = rel.url.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| unreachable(format!("{host:?} is not a server name: {e}")))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(format!("connect: {e}")))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))??;
    let answer = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP: {e}")))?;
        let conn = tokio::spawn(conn);
        let path = rel
            .url
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let authority = rel.url.authority().map(|a| a.as_str()).unwrap_or_default();
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "warden-ca")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| unreachable(format!("request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(format!("HTTP: {e}")))?;
        if resp.status() != http::StatusCode::OK {
            conn.abort();
            return Err(unreachable(format!("answered HTTP {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| {
                FetchError::Refused(format!(
                    "{}: the bundle document is unreadable or larger than {MAX_DOCUMENT_BYTES} bytes: {e}",
                    rel.url
                ))
            })?
            .to_bytes();
        conn.abort();
        Ok(body)
    };
    let body = tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .map_err(|_| unreachable(format!("no whole answer within {ANSWER_TIMEOUT:?}")))??;
    SpiffeBundle::parse(&rel.trust_domain, &body)
        .map_err(|e| FetchError::Refused(format!("{}: {e}", rel.url)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warden_common::testing::TestCa;

    use super::*;

    const TD: &str = "partner.example";
    const ENDPOINT: &str = "spiffe://partner.example/warden/ca";

    /// A one-connection HTTPS server presenting `id`'s leaf from `ca`, answering any
    /// request with `status` and `body`; its address.
    async fn server(ca: &TestCa, id: &str, status: u16, body: Vec<u8>) -> std::net::SocketAddr {
        serve_leaf(ca.leaf_der(id), status, body).await
    }

    async fn serve_leaf(
        (chain, key): (
            Vec<CertificateDer<'static>>,
            rustls_pki_types::PrivateKeyDer<'static>,
        ),
        status: u16,
        body: Vec<u8>,
    ) -> std::net::SocketAddr {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(Arc::new(config))
                .accept(tcp)
                .await
            else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tls.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n",
                body.len()
            );
            let _ = tls.write_all(head.as_bytes()).await;
            let _ = tls.write_all(&body).await;
            let _ = tls.shutdown().await;
        });
        addr
    }

    fn relationship(addr: std::net::SocketAddr) -> Relationship {
        Relationship {
            trust_domain: TD.into(),
            url: format!("https://{addr}/").parse().unwrap(),
            profile: Profile::HttpsSpiffe {
                endpoint_id: SpiffeId::parse(ENDPOINT).unwrap(),
            },
            initial: None,
        }
    }

    fn held(ca: &TestCa) -> SpiffeBundle {
        SpiffeBundle {
            trust_domain: TD.into(),
            x509_roots: vec![ca.root_der()],
            jwt_keys: vec![],
            sequence: Some(1),
            refresh_hint: None,
        }
    }

    fn document(ca: &TestCa) -> Vec<u8> {
        let mut b = held(ca);
        b.sequence = Some(2);
        b.to_json().unwrap().into_bytes()
    }

    fn unreachable(r: Result<SpiffeBundle, FetchError>) -> String {
        match r {
            Err(FetchError::Unreachable(m)) => m,
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn https_spiffe_takes_the_endpoint_of_the_held_bundle_with_the_exact_id() {
        let partner = TestCa::new();
        let addr = server(&partner, ENDPOINT, 200, document(&partner)).await;
        let got = fetch(&relationship(addr), Some(&held(&partner)))
            .await
            .unwrap();
        assert_eq!(got.sequence, Some(2));
        assert_eq!(got.x509_roots, vec![partner.root_der()]);
    }

    #[tokio::test]
    async fn https_spiffe_refuses_an_impostor() {
        let partner = TestCa::new();
        // Any workload of the partner trust domain: right CA, wrong SPIFFE ID.
        let workload = "spiffe://partner.example/ns/default/sa/web";
        let addr = server(&partner, workload, 200, document(&partner)).await;
        let m = unreachable(fetch(&relationship(addr), Some(&held(&partner))).await);
        assert!(
            m.contains(&format!(
                "presented {workload}, not the configured endpoint-spiffe-id"
            )),
            "{m}"
        );
        // Another CA naming the endpoint ID.
        let other = TestCa::new();
        let addr = server(&other, ENDPOINT, 200, document(&other)).await;
        let m = unreachable(fetch(&relationship(addr), Some(&held(&partner))).await);
        assert!(
            m.contains("does not chain to the bundle held for partner.example"),
            "{m}"
        );
        // With no bundle held there is nothing to authenticate with.
        let m = unreachable(fetch(&relationship(addr), None).await);
        assert!(m.contains("give bundle-file"), "{m}");
    }

    #[tokio::test]
    async fn errors_answers_and_oversized_documents_are_not_taken() {
        let partner = TestCa::new();
        let addr = server(&partner, ENDPOINT, 503, b"busy".to_vec()).await;
        let m = unreachable(fetch(&relationship(addr), Some(&held(&partner))).await);
        assert!(m.contains("answered HTTP 503"), "{m}");

        let huge = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        let addr = server(&partner, ENDPOINT, 200, huge).await;
        match fetch(&relationship(addr), Some(&held(&partner))).await {
            Err(FetchError::Refused(m)) => assert!(m.contains("larger than"), "{m}"),
            other => panic!("expected Refused, got {other:?}"),
        }

        // A document for another trust domain's keys is refused, not taken.
        let addr = server(&partner, ENDPOINT, 200, b"{\"keys\": []}".to_vec()).await;
        assert!(matches!(
            fetch(&relationship(addr), Some(&held(&partner))).await,
            Err(FetchError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn https_web_checks_the_host_name() {
        let web = TestCa::new();
        // The leaf names no DNS host and no IP: Web PKI refuses it for 127.0.0.1.
        let addr = server(&web, ENDPOINT, 200, document(&web)).await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(web.root_der()).unwrap();
        let rel = Relationship {
            profile: Profile::HttpsWeb {
                roots: Arc::new(roots),
            },
            ..relationship(addr)
        };
        let m = unreachable(fetch(&rel, None).await);
        assert!(m.contains("TLS"), "{m}");
        // A certificate for the address is taken; no bundle needs to be held.
        let leaf = web.leaf_der_with(ENDPOINT, |p| {
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        });
        let addr = serve_leaf(leaf, 200, document(&web)).await;
        let rel = Relationship {
            url: format!("https://{addr}/").parse().unwrap(),
            ..rel
        };
        assert_eq!(fetch(&rel, None).await.unwrap().sequence, Some(2));
    }
}
