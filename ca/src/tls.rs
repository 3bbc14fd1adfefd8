//! TLS for the certificate API: the CA's serving certificate, client certificates
//! requested (not required) and verified against the CA's own roots, and an accept loop
//! that hands finished handshakes to tonic.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::pki::{Authority, AuthorityHandle};

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; more connections wait in the kernel backlog.
const MAX_HANDSHAKES: usize = 1024;

/// Builds the server config: our chain and key, client certs optional but verified.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: &[CertificateDer<'static>],
) -> Result<rustls::ServerConfig, String> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| format!("a trust root is unusable: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(store))
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("serving certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The certificate API's TLS config, following the authority: a new authority means a
/// new serving certificate and new client-certificate roots from the next handshake on
/// (handshakes in progress finish with the config they started with). A config that
/// cannot be built for a new authority keeps the previous one and is logged.
pub fn follow_authority(
    authority: AuthorityHandle,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(watch::Receiver<Arc<rustls::ServerConfig>>, JoinHandle<()>)> {
    let build = move |a: &Authority| -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let (chain, key) = a
            .serving_cert(&dns_names, &ips)
            .map_err(|e| anyhow::anyhow!("making the serving certificate: {e}"))?;
        Ok(Arc::new(
            server_config(chain, key, a.roots_der()).map_err(anyhow::Error::msg)?,
        ))
    };
    let mut changes = authority.subscribe();
    let first = build(&changes.borrow_and_update())?;
    let (tx, rx) = watch::channel(first);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let current = changes.borrow_and_update().clone();
            match build(&current) {
                Ok(config) => {
                    tx.send_replace(config);
                    tracing::info!(
                        source = current.source(),
                        "serving certificate re-issued by the new authority"
                    );
                }
                Err(e) => tracing::error!(error = %e, "keeping the previous serving certificate"),
            }
        }
    });
    Ok((rx, task))
}

/// Accepts TCP connections, completes TLS handshakes concurrently (each with the
/// config current when it arrived), and sends the finished streams to `tx` until
/// `shutdown` flips.
pub async fn accept_loop(
    listener: TcpListener,
    config: watch::Receiver<Arc<rustls::ServerConfig>>,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.borrow().clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(stream).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio_rustls::TlsConnector;
    use warden_common::testing::TestCa;

    use super::*;

    const NODE: &str = "spiffe://cluster.local/warden/node/node-1";

    type Leaf = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

    /// One handshake against `server_config` with `ca`'s roots, the client presenting
    /// `client` if given; the client certificate the server accepted, or its error.
    async fn handshake(
        ca: &TestCa,
        client: Option<Leaf>,
    ) -> std::io::Result<Option<CertificateDer<'static>>> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (chain, key) =
            ca.leaf_der_with("spiffe://cluster.local/ns/istio-system/sa/istiod", |p| {
                p.subject_alt_names
                    .push(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
            });
        let server = server_config(chain, key, &[ca.root_der()]).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.root_der()).unwrap();
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let (accepted, _connected) = tokio::join!(
            TlsAcceptor::from(Arc::new(server)).accept(server_io),
            TlsConnector::from(Arc::new(config)).connect(name, client_io),
        );
        let accepted = accepted?;
        let peer = accepted.get_ref().1.peer_certificates();
        Ok(peer.and_then(|c| c.first()).map(|c| c.clone().into_owned()))
    }

    #[tokio::test]
    async fn client_certificates_are_optional_but_must_chain_to_the_roots() {
        let ca = TestCa::new();
        // Anonymous (JWT callers): accepted without a client certificate.
        assert_eq!(handshake(&ca, None).await.unwrap(), None);
        // An SVID of this CA, directly or through an intermediate: the server sees it.
        let intermediate = ca.intermediate();
        for issuer in [&ca, &intermediate] {
            let leaf = issuer.leaf_der(NODE);
            let presented = leaf.0[0].clone();
            assert_eq!(handshake(&ca, Some(leaf)).await.unwrap(), Some(presented));
        }
        // The same SPIFFE ID from another CA: the handshake fails.
        let other = TestCa::new();
        assert!(handshake(&ca, Some(other.leaf_der(NODE))).await.is_err());
    }
}
