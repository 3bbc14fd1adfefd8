//! SPIFFE mutual TLS between proxies: rustls configs (ring only) built once from the
//! identity watch, which present the latest SVID and verify peers against the latest
//! trust bundle at every handshake. Rotation therefore needs no new config, and live
//! connections are never touched.
//!
//! - [`TlsServer`]: the inbound side. Requires a client SVID (`STRICT`) or accepts a
//!   client without one (`PERMISSIVE`), verifies it with [`verify`], and answers ALPN.
//! - [`TlsClient`]: the outbound side. Presents the SVID and checks the server's SPIFFE
//!   ID against the destination's [`AllowedIds`] (secure naming).
//! - [`peer_spiffe_id`]: who is on the other end of an established connection.
//!
//! Session resumption is off on both sides: a resumed session skips certificate
//! verification, which would bypass a rotated trust bundle and the per-connection
//! secure-naming check.
//!
//! ALPN, following Istio's sidecars (`pilot/pkg/networking/util/util.go`,
//! `pilot/pkg/security/authn/utils/utils.go` `BuildInboundTLS`):
//! - inbound offers [`INBOUND_ALPN`] = `h2`, `http/1.1` (Istio's `ALPNHttp`, the
//!   `DownstreamTlsContext` of HTTP filter chains). Never `istio`: Istio notes it would
//!   interfere with negotiating HTTP/2.
//! - outbound offers [`OUTBOUND_ALPN`] = `istio`, `h2`, `http/1.1`. `istio` marks in-mesh
//!   traffic (Envoy sidecars in PERMISSIVE pick their mTLS filter chain by it, Istio's
//!   `ALPNInMesh`); `h2`, `http/1.1` let the server choose the protocol, which Istio's
//!   comment on `ALPNInMeshH2` names as the goal. `istio-peer-exchange` is not offered:
//!   it announces Istio's TCP metadata exchange, which Warden does not speak, and an
//!   Envoy server that selects it expects that exchange on the connection.
//! - A client whose ALPN list shares nothing with ours is served without ALPN, as
//!   Envoy (BoringSSL) does, instead of rustls's `no_application_protocol` alert, so an
//!   Envoy client offering only `istio-peer-exchange`, `istio` (Istio's in-mesh
//!   HTTP/1.1 clusters) still connects.

pub mod resolver;
pub mod verify;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::{Acceptor, ClientHello, NoServerSessionStorage};
use rustls::{ClientConfig, CommonState, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector, client, server};

use warden_proto::SpiffeId;

pub use resolver::CertResolver;
pub use verify::{AllowedIds, VerifyError, verify_svid};

use crate::identity::{IdentityWatch, PROVIDER, check_leaf};
use verify::{ClientSvidVerifier, ServerSvidVerifier};

/// ALPN an inbound listener offers by default: Istio's `ALPNHttp`.
pub const INBOUND_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// ALPN an outbound connection offers by default: Istio's in-mesh marker, then the HTTP
/// versions for the server to choose from.
pub const OUTBOUND_ALPN: [&[u8]; 3] = [b"istio", b"h2", b"http/1.1"];

/// An owned ALPN list from constants.
pub fn alpn(protocols: &[&[u8]]) -> Vec<Vec<u8>> {
    protocols.iter().map(|p| p.to_vec()).collect()
}

/// Whether an inbound listener requires a client certificate (PeerAuthentication mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `STRICT`: no handshake without a valid client SVID.
    Required,
    /// `PERMISSIVE` (for TLS clients): a client SVID is verified if sent; a client
    /// without one still connects, and [`peer_spiffe_id`] gives `None`.
    Optional,
}

/// How an inbound listener terminates TLS.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Client certificate requirement.
    pub client_auth: ClientAuth,
    /// ALPN protocols in preference order.
    pub alpn: Vec<Vec<u8>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            client_auth: ClientAuth::Required,
            alpn: alpn(&INBOUND_ALPN),
        }
    }
}

/// The inbound side of SPIFFE mTLS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsServer {
    with_alpn: Arc<ServerConfig>,
    /// The same config without ALPN, for clients whose list shares nothing with ours.
    without_alpn: Arc<ServerConfig>,
}

impl TlsServer {
    /// A server presenting the SVID of `identity` and verifying clients against its
    /// trust bundle, both read at every handshake.
    pub fn new(identity: IdentityWatch, options: ServerOptions) -> Self {
        let verifier = Arc::new(ClientSvidVerifier::new(
            identity.clone(),
            options.client_auth == ClientAuth::Required,
        ));
        let mut config = ServerConfig::builder_with_provider(PROVIDER.clone())
            .with_safe_default_protocol_versions()
            // Invariant: ring's default provider supports rustls's default versions.
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CertResolver::new(identity)));
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let without_alpn = Arc::new(config.clone());
        config.alpn_protocols = options.alpn;
        Self {
            with_alpn: Arc::new(config),
            without_alpn,
        }
    }

    /// The config with the configured ALPN list.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.with_alpn
    }

    /// The config for a client hello: without ALPN when the client offered protocols
    /// of which none is ours (see the module docs).
    pub fn config_for(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let ours = &self.with_alpn.alpn_protocols;
        match hello.alpn() {
            Some(mut theirs) if !ours.is_empty() => {
                if theirs.any(|p| ours.iter().any(|o| o.as_slice() == p)) {
                    self.with_alpn.clone()
                } else {
                    self.without_alpn.clone()
                }
            }
            _ => self.with_alpn.clone(),
        }
    }

    /// Runs the server handshake on `io`. Errors are I/O errors wrapping the rustls
    /// error; [`VerifyError::from_io`] tells why a client certificate was refused.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        let config = self.config_for(&start.client_hello());
        start.into_stream(config).await
    }
}

/// The outbound side of SPIFFE mTLS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsClient {
    identity: IdentityWatch,
    base: Arc<ClientConfig>,
}

/// The name rustls is given for every server: the SPIFFE verifier ignores it, and an IP
/// address makes rustls send no SNI, so no made-up host name goes on the wire.
pub fn synthetic_server_name() -> ServerName<'static> {
    ServerName::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

impl TlsClient {
    /// A client presenting the SVID of `identity`, offering `alpn` by default.
    pub fn new(identity: IdentityWatch, alpn: Vec<Vec<u8>>) -> Self {
        // Placeholder verifier: every connection's config replaces it with one that
        // carries that connection's allowed identities.
        let verifier = Arc::new(ServerSvidVerifier::new(identity.clone(), AllowedIds::Any));
        let mut config = ClientConfig::builder_with_provider(PROVIDER.clone())
            .with_safe_default_protocol_versions()
            // Invariant: ring's default provider supports rustls's default versions.
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CertResolver::new(identity.clone())));
        config.resumption = Resumption::disabled();
        config.alpn_protocols = alpn;
        Self {
            identity,
            base: Arc::new(config),
        }
    }

    /// The config for a connection whose server must be one of `allowed`. Callers may
    /// keep it per destination: it reads the identity watch at every handshake.
    pub fn config(&self, allowed: AllowedIds) -> Arc<ClientConfig> {
        self.config_with_alpn(allowed, None)
    }

    /// Like [`TlsClient::config`], offering `alpn` instead of the default list.
    pub fn config_with_alpn(
        &self,
        allowed: AllowedIds,
        alpn: Option<Vec<Vec<u8>>>,
    ) -> Arc<ClientConfig> {
        let mut config = (*self.base).clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(ServerSvidVerifier::new(
                self.identity.clone(),
                allowed,
            )));
        if let Some(alpn) = alpn {
            config.alpn_protocols = alpn;
        }
        Arc::new(config)
    }

    /// Runs the client handshake on `io`, refusing a server outside `allowed`. Errors
    /// are I/O errors wrapping the rustls error; [`VerifyError::from_io`] tells why the
    /// server's certificate was refused. This builds a config for the one connection;
    /// for many connections to one destination, keep [`TlsClient::config`] and use
    /// [`TlsClient::connect_with`].
    pub async fn connect<IO>(
        &self,
        io: IO,
        allowed: AllowedIds,
    ) -> io::Result<client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        Self::connect_with(self.config(allowed), io).await
    }

    /// Runs the client handshake on `io` with a config from [`TlsClient::config`]
    /// (kept per destination, so nothing is built per connection).
    pub async fn connect_with<IO>(
        config: Arc<ClientConfig>,
        io: IO,
    ) -> io::Result<client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        Self::connect_named(config, synthetic_server_name(), io).await
    }

    /// Like [`TlsClient::connect_with`], sending `name` as SNI (Istio's sidecars send
    /// the destination's cluster name, `outbound_.<port>_._.<host>`, which tells the
    /// server's proxy the service port). The SPIFFE verifier still ignores the name.
    pub async fn connect_named<IO>(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        io: IO,
    ) -> io::Result<client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        TlsConnector::from(config).connect(name, io).await
    }
}

/// The SPIFFE ID of the peer of an established connection (pass a `ServerConnection`
/// or a `ClientConnection`): the single URI SAN of its verified leaf. `None` when the
/// peer sent no certificate (a PERMISSIVE client without one).
pub fn peer_spiffe_id(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    check_leaf(leaf).ok().map(|l| l.spiffe_id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
    use tokio::sync::watch;

    use super::*;
    use crate::identity::Identity;
    use crate::test_support::{IdentityOf, TestCa};

    const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";
    const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    type Watch = (
        watch::Sender<Option<Arc<Identity>>>,
        watch::Receiver<Option<Arc<Identity>>>,
    );

    fn watch_of(identity: Arc<Identity>) -> Watch {
        watch::channel(Some(identity))
    }

    /// One handshake over an in-memory pipe; the server's and the client's results.
    async fn handshake(
        server: &TlsServer,
        client: &TlsClient,
        allowed: AllowedIds,
    ) -> (
        io::Result<server::TlsStream<tokio::io::DuplexStream>>,
        io::Result<client::TlsStream<tokio::io::DuplexStream>>,
    ) {
        let (a, b) = duplex(64 * 1024);
        tokio::join!(server.accept(a), client.connect(b, allowed))
    }

    fn serial_of(conn: &CommonState) -> String {
        let leaf = conn.peer_certificates().unwrap().first().unwrap();
        check_leaf(leaf).unwrap().serial
    }

    /// `result` is a handshake refused for `why`.
    fn assert_refused<T: std::fmt::Debug>(result: io::Result<T>, why: &VerifyError) {
        let err = result.unwrap_err();
        assert_eq!(VerifyError::from_io(&err), Some(why), "{err}");
    }

    #[tokio::test]
    async fn mutual_tls_shows_each_side_the_other_spiffe_id() {
        let ca = TestCa::new();
        let (_s, server_id) = watch_of(ca.identity(SERVER));
        let (_c, client_id) = watch_of(ca.identity(CLIENT));
        let server = TlsServer::new(server_id, ServerOptions::default());
        let client = TlsClient::new(client_id, alpn(&OUTBOUND_ALPN));
        let (s, c) = handshake(&server, &client, AllowedIds::one_of([id(SERVER)])).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(peer_spiffe_id(s.get_ref().1), Some(id(CLIENT)));
        assert_eq!(peer_spiffe_id(c.get_ref().1), Some(id(SERVER)));
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn secure_naming_refuses_another_server_identity() {
        let ca = TestCa::new();
        let (_s, server_id) = watch_of(ca.identity(SERVER));
        let (_c, client_id) = watch_of(ca.identity(CLIENT));
        let server = TlsServer::new(server_id, ServerOptions::default());
        let client = TlsClient::new(client_id, alpn(&OUTBOUND_ALPN));
        let want = id("spiffe://cluster.local/ns/default/sa/db");
        let (s, c) = handshake(&server, &client, AllowedIds::one_of([want.clone()])).await;
        let err = c.unwrap_err();
        let verify = VerifyError::from_io(&err).unwrap();
        assert_eq!(
            verify,
            &VerifyError::UnexpectedServer {
                expected: Arc::from([want]),
                presented: id(SERVER),
            }
        );
        let msg = err.to_string();
        assert!(msg.contains(SERVER) && msg.contains("sa/db"), "{msg}");
        assert!(s.is_err(), "the server sees the client's alert");
    }

    #[tokio::test]
    async fn strict_refuses_a_client_without_a_certificate_and_permissive_accepts_it() {
        let ca = TestCa::new();
        let (_s, server_id) = watch_of(ca.identity(SERVER));
        // A client with the trust bundle but no SVID yet cannot present one.
        let (_c, client_id) = watch_of(ca.identity(CLIENT));
        let strict = TlsServer::new(server_id.clone(), ServerOptions::default());
        let permissive = TlsServer::new(
            server_id,
            ServerOptions {
                client_auth: ClientAuth::Optional,
                ..ServerOptions::default()
            },
        );
        // A plain rustls client that verifies the server but has no client cert.
        let no_cert = {
            let verifier = Arc::new(ServerSvidVerifier::new(client_id, AllowedIds::Any));
            let mut cfg = ClientConfig::builder_with_provider(PROVIDER.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            cfg.alpn_protocols = alpn(&OUTBOUND_ALPN);
            TlsConnector::from(Arc::new(cfg))
        };
        let (a, b) = duplex(64 * 1024);
        let (s, c) = tokio::join!(
            strict.accept(a),
            no_cert.connect(synthetic_server_name(), b)
        );
        let err = s.unwrap_err();
        assert!(err.to_string().contains("no certificates"), "{err}");
        // TLS 1.3: the client learns of the refusal on its first read.
        let mut c = c.unwrap();
        let mut buf = [0u8; 1];
        assert!(c.read(&mut buf).await.is_err());

        let (a, b) = duplex(64 * 1024);
        let (s, c) = tokio::join!(
            permissive.accept(a),
            no_cert.connect(synthetic_server_name(), b)
        );
        let s = s.unwrap();
        c.unwrap();
        assert_eq!(peer_spiffe_id(s.get_ref().1), None);
    }

    #[tokio::test]
    async fn strict_refuses_a_client_from_another_ca() {
        let ours = TestCa::new();
        let theirs = TestCa::new();
        let (_s, server_id) = watch_of(ours.identity(SERVER));
        // The client trusts our CA (so it accepts the server) but its SVID is theirs.
        let foreign = Arc::new(Identity::new(
            theirs.identity(CLIENT).svid().clone(),
            ours.identity(CLIENT).bundle().clone(),
        ));
        let (_c, client_id) = watch_of(foreign);
        let server = TlsServer::new(server_id, ServerOptions::default());
        let client = TlsClient::new(client_id, alpn(&OUTBOUND_ALPN));
        let (s, _c) = handshake(&server, &client, AllowedIds::Any).await;
        assert_refused(s, &VerifyError::UnknownIssuer);
    }

    #[tokio::test]
    async fn a_client_refuses_a_server_from_another_ca() {
        let ours = TestCa::new();
        let theirs = TestCa::new();
        let (_s, server_id) = watch_of(theirs.identity(SERVER));
        let (_c, client_id) = watch_of(ours.identity(CLIENT));
        let server = TlsServer::new(server_id, ServerOptions::default());
        let client = TlsClient::new(client_id, alpn(&OUTBOUND_ALPN));
        let (_s, c) = handshake(&server, &client, AllowedIds::Any).await;
        let err = c.unwrap_err();
        assert_eq!(
            VerifyError::from_io(&err),
            Some(&VerifyError::UnknownIssuer)
        );
    }

    #[tokio::test]
    async fn rotation_applies_to_new_handshakes_and_spares_live_connections() {
        let ca = TestCa::new();
        let (server_tx, server_id) = watch_of(ca.identity(SERVER));
        let (_c, client_id) = watch_of(ca.identity(CLIENT));
        let server = TlsServer::new(server_id, ServerOptions::default());
        let client = TlsClient::new(client_id, alpn(&OUTBOUND_ALPN));
        let allowed = AllowedIds::one_of([id(SERVER)]);

        let (s1, c1) = handshake(&server, &client, allowed.clone()).await;
        let (mut s1, mut c1) = (s1.unwrap(), c1.unwrap());
        let first = serial_of(c1.get_ref().1);

        let rotated = ca.identity(SERVER);
        let second = rotated.serial().to_string();
        assert_ne!(first, second);
        server_tx.send_replace(Some(rotated));

        let (s2, c2) = handshake(&server, &client, allowed).await;
        let (_s2, c2) = (s2.unwrap(), c2.unwrap());
        assert_eq!(serial_of(c2.get_ref().1), second, "new handshake, new SVID");

        // The first connection still carries data both ways.
        c1.write_all(b"old").await.unwrap();
        c1.flush().await.unwrap();
        let mut buf = [0u8; 3];
        s1.read_exact(&mut buf).await.unwrap();
        s1.write_all(b"ok!").await.unwrap();
        s1.flush().await.unwrap();
        c1.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok!");
        assert_eq!(serial_of(c1.get_ref().1), first);
    }

    #[tokio::test]
    async fn a_new_trust_bundle_applies_to_new_handshakes() {
        let old_ca = TestCa::new();
        let new_ca = TestCa::new();
        let (server_tx, server_id) = watch_of(old_ca.identity(SERVER));
        let (_c, client_id) = watch_of(old_ca.identity(CLIENT));
        let server = TlsServer::new(server_id, ServerOptions::default());
        let client = TlsClient::new(client_id, alpn(&OUTBOUND_ALPN));
        let (s, _c) = handshake(&server, &client, AllowedIds::Any).await;
        s.unwrap();
        // The server's ROOTCA moves to the new CA (its SVID stays): the client's SVID,
        // from the old CA, no longer verifies.
        let current = server_tx.borrow().clone().unwrap();
        server_tx.send_replace(Some(Arc::new(Identity::new(
            current.svid().clone(),
            new_ca.identity(SERVER).bundle().clone(),
        ))));
        let (s, _c) = handshake(&server, &client, AllowedIds::Any).await;
        assert_refused(s, &VerifyError::UnknownIssuer);
    }

    #[tokio::test]
    async fn no_identity_yet_means_no_handshake() {
        let ca = TestCa::new();
        let (_s, server_id) = watch::channel(None);
        let (_c, client_id) = watch_of(ca.identity(CLIENT));
        let server = TlsServer::new(server_id, ServerOptions::default());
        let client = TlsClient::new(client_id, alpn(&OUTBOUND_ALPN));
        let (s, c) = handshake(&server, &client, AllowedIds::Any).await;
        assert!(s.is_err());
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn alpn_without_overlap_is_answered_without_alpn() {
        let ca = TestCa::new();
        let (_s, server_id) = watch_of(ca.identity(SERVER));
        let (_c, client_id) = watch_of(ca.identity(CLIENT));
        let server = TlsServer::new(server_id, ServerOptions::default());
        // Istio's in-mesh HTTP/1.1 cluster offers only these.
        let client = TlsClient::new(client_id, alpn(&[b"istio-peer-exchange", b"istio"]));
        let (s, c) = handshake(&server, &client, AllowedIds::Any).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.get_ref().1.alpn_protocol(), None);
        assert_eq!(c.get_ref().1.alpn_protocol(), None);
        // With overlap, the server's preference wins.
        let cfg = client.config_with_alpn(AllowedIds::Any, Some(alpn(&[b"http/1.1", b"h2"])));
        let (a, b) = duplex(64 * 1024);
        let (s, c) = tokio::join!(
            server.accept(a),
            TlsConnector::from(cfg).connect(synthetic_server_name(), b)
        );
        c.unwrap();
        assert_eq!(s.unwrap().get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    }
}
