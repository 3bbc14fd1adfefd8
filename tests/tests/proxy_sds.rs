//! The proxy's identity layer against the real `warden-ca` and `warden-agent`: the
//! proxy's SDS client gets `default` and `ROOTCA` from the agent's socket; TLS servers
//! and clients built from what it delivers complete SPIFFE mutual TLS over real TCP and
//! each sees the other's SPIFFE ID; secure naming refuses a server with another
//! identity; with short SVID lifetimes a rotation arrives over SDS, new handshakes use
//! the new certificate and a connection opened before keeps working, even past the old
//! certificate's expiry.
//!
//! The test process is the workload: entries with its `unix:uid:` selector give it two
//! identities, and each SDS client asks for one by name (as SPIRE's SDS serves them).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use x509_parser::prelude::{FromDer, X509Certificate};

use warden_proto::SpiffeId;
use warden_proxy::identity::Identity;
use warden_proxy::sds::{NodeInfo, Sds, SdsConfig};
use warden_proxy::tls::{
    AllowedIds, OUTBOUND_ALPN, ServerOptions, TlsClient, TlsServer, VerifyError, alpn,
    peer_spiffe_id,
};
use warden_tests::{AgentProcess, CaProcess, my_uid};

const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const WAIT: Duration = Duration::from_secs(20);

/// A CA and an agent for node-a (agent first: dropped, i.e. killed, first), with
/// entries giving this process the SERVER and CLIENT identities.
struct Env {
    agent: AgentProcess,
    ca: CaProcess,
    _tmp: tempfile::TempDir,
}

fn start(svid_ttl: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CaProcess::start(&tmp.path().join("ca"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry("node-a", SERVER, &[&uid]);
    ca.entry("node-a", CLIENT, &[&uid]);
    let agent = AgentProcess::start_node(
        &ca,
        &tmp.path().join("agent"),
        "node-a",
        &["--svid-ttl", svid_ttl, "--sync-interval", "500ms"],
    );
    agent.wait_ready();
    Env {
        agent,
        ca,
        _tmp: tmp,
    }
}

/// The proxy's SDS client for `certificate` (`default` or a SPIFFE ID) and `ROOTCA`.
fn sds(socket: &Path, workload: &str, certificate: &str) -> Sds {
    let mut config = SdsConfig::new(
        socket,
        NodeInfo::sidecar(IpAddr::V4(Ipv4Addr::LOCALHOST), workload, "default"),
    );
    config.certificate = certificate.to_string();
    Sds::start(config)
}

async fn ready(sds: &Sds) -> Arc<Identity> {
    tokio::time::timeout(WAIT, sds.ready())
        .await
        .expect("no identity over SDS")
        .unwrap()
}

/// What the test server saw of each connection: the client's SPIFFE ID and the serial
/// of the client's leaf, or the handshake error.
type Seen = Result<(Option<SpiffeId>, String), String>;

/// A TLS server on 127.0.0.1:0 that reports each handshake and echoes what it reads.
async fn serve(tls: TlsServer) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let mut s = match tls.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let conn = s.get_ref().1;
                let _ = tx.send(Ok((peer_spiffe_id(conn), peer_serial(conn))));
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the server saw no handshake")
        .unwrap()
}

/// The serial of the peer's leaf, lowercase hex (the form `Identity::serial` uses).
fn peer_serial(conn: &rustls::CommonState) -> String {
    let leaf = conn.peer_certificates().unwrap().first().unwrap();
    let (_, cert) = X509Certificate::from_der(leaf).unwrap();
    hex::encode(cert.raw_serial())
}

/// Writes `msg` and reads it back.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    s.flush().await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(back, msg);
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_identity_gives_mutual_tls_with_secure_naming() {
    let env = start("1h");

    // `default` and `ROOTCA`, as Envoy asks for them.
    let default = sds(&env.agent.socket, "web", "default");
    let mine = ready(&default).await;
    assert!(
        [SERVER, CLIENT].contains(&mine.spiffe_id().as_str()),
        "default is one of this caller's identities: {}",
        mine.spiffe_id()
    );
    let ca_roots: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(env.ca.data_dir.join("root-cert.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(mine.roots(), ca_roots.as_slice(), "ROOTCA is the CA's root");
    assert!(mine.not_after() > SystemTime::now());
    assert!(!format!("{mine:?}").contains("PRIVATE"));

    // Two sidecars, each with its own identity by name.
    let server_sds = sds(&env.agent.socket, "server", SERVER);
    let client_sds = sds(&env.agent.socket, "client", CLIENT);
    let server_id = ready(&server_sds).await;
    let client_id = ready(&client_sds).await;
    assert_eq!(server_id.spiffe_id().as_str(), SERVER);
    assert_eq!(client_id.spiffe_id().as_str(), CLIENT);

    let (addr, mut handshakes) = serve(TlsServer::new(
        server_sds.identity(),
        ServerOptions::default(),
    ))
    .await;
    let client = TlsClient::new(client_sds.identity(), alpn(&OUTBOUND_ALPN));

    // Mutual TLS over TCP: each side sees the other's SPIFFE ID.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut conn = client
        .connect(tcp, AllowedIds::one_of([id(SERVER)]))
        .await
        .unwrap();
    assert_eq!(peer_spiffe_id(conn.get_ref().1), Some(id(SERVER)));
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(peer_serial(conn.get_ref().1), server_id.serial());
    let (peer, serial) = seen(&mut handshakes).await.unwrap();
    assert_eq!(peer, Some(id(CLIENT)));
    assert_eq!(serial, client_id.serial());
    echo(&mut conn, b"hello over SPIFFE mTLS").await;

    // Secure naming: a client that expects another identity refuses this server.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let db = id("spiffe://cluster.local/ns/default/sa/db");
    let err = client
        .connect(tcp, AllowedIds::one_of([db.clone()]))
        .await
        .unwrap_err();
    assert_eq!(
        VerifyError::from_io(&err),
        Some(&VerifyError::UnexpectedServer {
            expected: Arc::from([db]),
            presented: id(SERVER),
        })
    );
    let msg = err.to_string();
    assert!(
        msg.contains(SERVER) && msg.contains("spiffe://cluster.local/ns/default/sa/db"),
        "the error names both identities: {msg}"
    );
    let refused = seen(&mut handshakes).await.unwrap_err();
    assert!(refused.contains("alert"), "{refused}");

    // The agent counted no NACK: every ACK was well-formed and nothing was refused.
    for s in [&default, &server_sds, &client_sds] {
        assert_eq!(s.stats().nacks.load(Ordering::Relaxed), 0);
        assert!(s.stats().acks.load(Ordering::Relaxed) >= 1);
    }
    assert_eq!(env.agent.metric("warden_agent_sds_nacks_total"), 0.0);
    assert!(env.agent.metric("warden_agent_sds_streams") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_over_sds_reaches_new_handshakes_and_spares_open_connections() {
    // A 6 s lifetime: the agent rotates at about half of it.
    let env = start("6s");
    let server_sds = sds(&env.agent.socket, "server", SERVER);
    let client_sds = sds(&env.agent.socket, "client", CLIENT);
    ready(&server_sds).await;
    ready(&client_sds).await;

    let (addr, mut handshakes) = serve(TlsServer::new(
        server_sds.identity(),
        ServerOptions::default(),
    ))
    .await;
    let client = TlsClient::new(client_sds.identity(), alpn(&OUTBOUND_ALPN));
    // One config for the destination, kept across the rotation (as the data path will).
    let config = client.config(AllowedIds::one_of([id(SERVER)]));

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut old = TlsClient::connect_with(config.clone(), tcp).await.unwrap();
    let first_serial = peer_serial(old.get_ref().1);
    seen(&mut handshakes).await.unwrap();
    echo(&mut old, b"before rotation").await;
    // When the certificate this connection was made with expires.
    let first_not_after = {
        let leaf = old.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().try_into().unwrap())
    };

    // The agent pushes a new certificate over SDS.
    let mut watch = server_sds.identity();
    let rotated = tokio::time::timeout(
        WAIT,
        watch.wait_for(|i| i.as_ref().is_some_and(|i| i.serial() != first_serial)),
    )
    .await
    .expect("no rotation over SDS")
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(rotated.spiffe_id().as_str(), SERVER);

    // A new handshake presents the new certificate (or a later one, if the agent
    // rotated again meanwhile; never the first).
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut new = TlsClient::connect_with(config, tcp).await.unwrap();
    let new_serial = peer_serial(new.get_ref().1);
    assert_ne!(
        new_serial, first_serial,
        "the new handshake used the old SVID"
    );
    let current = server_sds.identity().borrow().clone().unwrap();
    assert!(
        new_serial == rotated.serial() || new_serial == current.serial(),
        "new handshake serial {new_serial}, rotated {}, current {}",
        rotated.serial(),
        current.serial()
    );
    seen(&mut handshakes).await.unwrap();
    echo(&mut new, b"after rotation").await;

    // The connection opened before the rotation still works, even once the
    // certificate it was made with has expired.
    echo(&mut old, b"still here").await;
    let wait = first_not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    assert!(SystemTime::now() > first_not_after);
    echo(&mut old, b"past the old certificate's expiry").await;
    assert_eq!(peer_serial(old.get_ref().1), first_serial);

    assert!(server_sds.stats().acks.load(Ordering::Relaxed) >= 2);
    assert_eq!(server_sds.stats().nacks.load(Ordering::Relaxed), 0);
    assert_eq!(env.agent.metric("warden_agent_sds_nacks_total"), 0.0);
}
