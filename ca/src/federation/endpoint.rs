//! The bundle endpoint: this trust domain's SPIFFE bundle (every root of the authority
//! set and the JWT-SVID key) served over HTTPS at `/`, for the trust domains that
//! federate with this one (`--bundle-endpoint-addr`).
//!
//! Profiles: `https_spiffe` (the default) presents an X.509-SVID of
//! `spiffe://TD/warden/ca` from the active authority, re-issued when the authority
//! changes, so a partner authenticates it with the bundle it already holds of this
//! trust domain; `https_web` presents `--bundle-endpoint-cert`/`--bundle-endpoint-key`
//! (a Web PKI certificate for the host name partners use).
//!
//! `spiffe_sequence` grows by one each time the served keys change (a root prepared,
//! activated or removed) and is kept in `<data-dir>/federation/own-sequence.json`, so
//! it never goes back across restarts; `spiffe_refresh_hint` is
//! `--bundle-refresh-hint` (5 minutes by default; SPIRE's is the same).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::ProfileName;
use super::bundle::SpiffeBundle;
use crate::pki::{Authority, AuthorityHandle, JwtSigner};
use warden_proto::SpiffeId;

/// A handshake or request head that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 1024;

/// The bundle endpoint's settings.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How it authenticates.
    pub profile: ProfileName,
    /// https_web: certificate chain and key files.
    pub web_cert: Option<(PathBuf, PathBuf)>,
    /// `spiffe_refresh_hint`.
    pub refresh_hint: Duration,
}

/// The SPIFFE ID the endpoint presents under https_spiffe.
pub fn endpoint_id(trust_domain: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(&format!("spiffe://{trust_domain}/warden/ca")).map_err(|e| e.to_string())
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct SequenceState {
    sequence: u64,
    /// Hex SHA-256 of the served keys at that sequence.
    digest: String,
}

/// Numbers this trust domain's bundle: the stored sequence while the keys are the
/// same, one more (stored first) when they changed.
#[derive(Debug)]
pub struct OwnSequence {
    path: PathBuf,
}

impl OwnSequence {
    /// Under `<data_dir>/federation/`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("federation").join("own-sequence.json"),
        }
    }

    /// The sequence for a bundle of these keys.
    pub fn sequence_for(&self, bundle: &SpiffeBundle) -> Result<u64, String> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for r in &bundle.x509_roots {
            ctx.update(&(r.len() as u64).to_be_bytes());
            ctx.update(r);
        }
        for k in &bundle.jwt_keys {
            let s = k.to_string();
            ctx.update(&(s.len() as u64).to_be_bytes());
            ctx.update(s.as_bytes());
        }
        let digest = hex::encode(ctx.finish().as_ref());
        let stored: SequenceState = match std::fs::read(&self.path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", self.path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SequenceState::default(),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        if stored.digest == digest {
            return Ok(stored.sequence);
        }
        let next = SequenceState {
            sequence: stored.sequence + 1,
            digest,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_vec(&serde_json::json!({
            "sequence": next.sequence,
            "digest": next.digest,
        }))
        .map_err(|e| e.to_string())?;
        warden_common::files::write_atomic(&self.path, &text, 0o644)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(next.sequence)
    }
}

/// This trust domain's bundle as served now.
pub fn own_bundle(
    authority: &Authority,
    signer: &JwtSigner,
    trust_domain: &str,
    sequence: &OwnSequence,
    refresh_hint: Duration,
) -> Result<String, String> {
    let jwks: serde_json::Value =
        serde_json::from_str(signer.jwks_json()).map_err(|e| e.to_string())?;
    let jwt_keys = jwks["keys"].as_array().cloned().unwrap_or_default();
    let mut bundle = SpiffeBundle {
        trust_domain: trust_domain.to_string(),
        x509_roots: authority.roots_der().to_vec(),
        jwt_keys,
        sequence: None,
        refresh_hint: Some(refresh_hint),
    };
    bundle.sequence = Some(sequence.sequence_for(&bundle)?);
    bundle.to_json()
}

fn web_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--bundle-endpoint-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--bundle-endpoint-cert {}: holds no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--bundle-endpoint-key {}: {e}", key.display()))?;
    server_config(chain, key)
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("bundle endpoint certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Everything the endpoint serves, following the authority.
#[derive(Debug)]
pub struct Endpoint {
    /// The TLS config now.
    pub tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    /// The document now.
    pub document: watch::Receiver<Arc<String>>,
}

/// Builds the endpoint's TLS config and document, and a task that re-makes both when
/// the authority changes. A failure at start stops the CA (named); a failure later
/// keeps what is served and is logged.
#[allow(clippy::too_many_arguments)]
pub fn follow(
    settings: &EndpointSettings,
    authority: AuthorityHandle,
    signer: Arc<JwtSigner>,
    trust_domain: String,
    data_dir: &Path,
    dns_names: Vec<String>,
    ips: Vec<std::net::IpAddr>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(Endpoint, tokio::task::JoinHandle<()>), String> {
    let sequence = OwnSequence::new(data_dir);
    let id = endpoint_id(&trust_domain)?;
    let web = match (&settings.profile, &settings.web_cert) {
        (ProfileName::HttpsWeb, Some((cert, key))) => Some(Arc::new(web_config(cert, key)?)),
        (ProfileName::HttpsWeb, None) => {
            return Err(
                "--bundle-endpoint-profile https_web needs --bundle-endpoint-cert and --bundle-endpoint-key"
                    .into(),
            );
        }
        (ProfileName::HttpsSpiffe, Some(_)) => {
            return Err(
                "--bundle-endpoint-cert is for https_web; https_spiffe serves an SVID from the CA's own authority"
                    .into(),
            );
        }
        (ProfileName::HttpsSpiffe, None) => None,
    };
    let hint = settings.refresh_hint;
    let make = move |a: &Authority| -> Result<(Arc<rustls::ServerConfig>, Arc<String>), String> {
        let doc = own_bundle(a, &signer, &trust_domain, &sequence, hint)?;
        let tls = match &web {
            Some(c) => c.clone(),
            None => {
                let (chain, key) = a
                    .endpoint_svid(&id, &dns_names, &ips)
                    .map_err(|e| format!("the bundle endpoint's SVID: {e}"))?;
                Arc::new(server_config(chain, key)?)
            }
        };
        Ok((tls, Arc::new(doc)))
    };
    let mut changes = authority.subscribe();
    let (tls, doc) = make(&changes.borrow_and_update())?;
    let (tls_tx, tls_rx) = watch::channel(tls);
    let (doc_tx, doc_rx) = watch::channel(doc);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let current = changes.borrow_and_update().clone();
            match make(&current) {
                Ok((tls, doc)) => {
                    tls_tx.send_replace(tls);
                    if *doc_tx.borrow() != doc {
                        tracing::info!("this trust domain's federation bundle changed");
                        doc_tx.send_replace(doc);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "keeping the bundle endpoint's current bundle and certificate")
                }
            }
        }
    });
    Ok((
        Endpoint {
            tls: tls_rx,
            document: doc_rx,
        },
        task,
    ))
}

fn answer(method: &Method, path: &str, doc: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/") => {
            (StatusCode::OK, "application/json", doc.to_string())
        }
        (_, "/") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "the bundle endpoint answers GET only\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "the bundle is served at /\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(if method == Method::HEAD {
        String::new()
    } else {
        body
    })));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
    }
    resp
}

/// Serves the endpoint on `listener` until `shutdown` flips.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "bundle endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = TlsAcceptor::from(endpoint.tls.borrow().clone());
        let doc = endpoint.document.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "bundle endpoint TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = doc.borrow().clone();
                let resp = answer(req.method(), req.uri().path(), &body);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tls), svc);
            // A connection lives at most a minute: the document is small.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bundle(n: u8) -> SpiffeBundle {
        SpiffeBundle {
            trust_domain: "td".into(),
            x509_roots: vec![CertificateDer::from(vec![n; 4])],
            jwt_keys: vec![],
            sequence: None,
            refresh_hint: None,
        }
    }

    #[test]
    fn the_sequence_grows_only_when_the_keys_change_and_survives_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let seq = OwnSequence::new(dir.path());
        assert_eq!(seq.sequence_for(&bundle(1)).unwrap(), 1);
        assert_eq!(seq.sequence_for(&bundle(1)).unwrap(), 1);
        assert_eq!(seq.sequence_for(&bundle(2)).unwrap(), 2);
        let again = OwnSequence::new(dir.path());
        assert_eq!(again.sequence_for(&bundle(2)).unwrap(), 2);
        assert_eq!(again.sequence_for(&bundle(1)).unwrap(), 3);
    }

    #[test]
    fn only_get_and_head_of_the_root_path() {
        assert_eq!(answer(&Method::GET, "/", "{}").status(), StatusCode::OK);
        assert_eq!(answer(&Method::HEAD, "/", "{}").status(), StatusCode::OK);
        let post = answer(&Method::POST, "/", "{}");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[http::header::ALLOW], "GET, HEAD");
        assert_eq!(
            answer(&Method::GET, "/x", "{}").status(),
            StatusCode::NOT_FOUND
        );
    }
}
