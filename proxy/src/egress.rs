//! Egress: requests and connections to `MESH_EXTERNAL` services, as an Istio sidecar
//! sends them. The outbound side routes to them as to any service (route table, load
//! balancing, circuit breaker, outlier detection, retries); only the connection differs,
//! and [`Plan`] says how it is made:
//!
//! - **Where** ([`Target`]), from the ServiceEntry's `resolution` (see
//!   [`crate::mesh::model::Dial`]): `STATIC`, the endpoint's address at its port (its
//!   `ports` entry for the service port's name, else `targetPort`, else the number);
//!   `DNS` and `DNS_ROUND_ROBIN`, the endpoint's name (or the host itself without
//!   endpoints) resolved by the system resolver for every new connection, as tokio's
//!   `lookup_host` gives no TTL to cache by (`DNS` takes turns among the addresses and
//!   falls back to the next on failure, as Envoy's `STRICT_DNS` spreads over them;
//!   `DNS_ROUND_ROBIN`, Envoy's `LOGICAL_DNS`, uses the first); `NONE` and `DYNAMIC_DNS`,
//!   the host the client asked for, resolved the same way, at the port asked for.
//! - **What**, from the DestinationRule's `trafficPolicy.tls` for the destination (its
//!   subset and port merged as the route table merges them), as istiod builds the
//!   cluster's `UpstreamTlsContext` (`buildUpstreamClusterTLSContext` and
//!   `constructUpstreamTLS` in `pilot/pkg/networking/core/cluster_tls.go`): no `tls` or
//!   `DISABLE`, plaintext; `SIMPLE`, TLS originated with rustls (ring); `MUTUAL`, the
//!   same presenting `clientCertificate` with `privateKey`; `ISTIO_MUTUAL`, the mesh's
//!   SPIFFE mutual TLS to the endpoint's proxy (its inbound port), with Istio's SNI and
//!   secure naming, as to a `MESH_INTERNAL` service.
//!
//! TLS origination ([`Origination`]) follows Istio's defaults: the server is verified
//! against `caCertificates`, or, without it, against the system's CA bundle, the first
//! of [`SYSTEM_CA_BUNDLES`] that exists (Istio's `GetOSRootFilePath` list; Warden has no
//! compiled-in root store); `caCrl` adds revocation; `insecureSkipVerify` verifies
//! nothing. The SNI is `sni`, else the host the request named (Envoy's `auto_sni`), or
//! for a TCP connection the service's host. The certificate must be valid for one of
//! `subjectAltNames` (DNS and IP names as a hostname check, wildcards in the certificate
//! allowed; other names exactly, as URI SANs), else for the SNI (`auto_san_validation`).
//! ALPN is `h2` toward an HTTP/2 destination and none otherwise, as istiod sets it.
//! `credentialName` is refused: it names a Kubernetes secret, and the sidecar reads files.
//! Files are read when a connection first needs them and again when they change (their
//! modification time or size), as Istio's agent serves them over SDS.
//!
//! Problems in the settings or the files, and certificate failures, fail the connection
//! with a message naming the field, the file and what was expected; a request gets it
//! in its 503 body.
//!
//! Connections are made from the workload's address, like mesh connections, unless
//! that is a loopback address and the destination is not (a laptop's mesh reaching the
//! internet). Pooled HTTP connections are keyed by the config generation, the service,
//! port, target, TLS settings, name and protocol ([`Egress`]), apart from the mesh pool.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use std::time::SystemTime;

use http::{Request, Response};
use hyper::body::Incoming;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::sock::Coalesced;
use tokio_rustls::{TlsConnector, client};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::context::{CONNECT_TIMEOUT, Context, Snapshot};
use crate::identity::PROVIDER;
use crate::mesh::model::{Dial, Endpoint, Resolution, Service, ServiceId, ServicePortInfo};
use crate::outbound::{Route, sni_for};
use crate::pool::{Pool, UpBody, UpstreamError, UpstreamProtocol};
use crate::tls::TlsClient;

/// The system CA bundles looked for when `caCertificates` is unset, in Istio's order
/// (`GetOSRootFilePath` in `pkg/security/security.go`); the first that exists is used.
pub const SYSTEM_CA_BUNDLES: [&str; 8] = [
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Gentoo
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",             // OpenSUSE
    "/etc/pki/tls/cacert.pem",            // OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
    "/etc/ssl/cert.pem",                  // Alpine
    "/usr/local/etc/ssl/cert.pem",        // FreeBSD
    "/etc/ssl/certs/ca-certificates",     // Talos
];

/// Why a DestinationRule's `trafficPolicy.tls` cannot be used toward a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SettingsError {
    /// `mode` is not one of Istio's.
    #[error("tls.mode {0:?} is not a mode: expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL")]
    Mode(String),
    /// A field has the wrong JSON type.
    #[error("tls.{field} is not {expected}")]
    Type {
        /// The field.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// `credentialName`: a Kubernetes secret, which the sidecar cannot read.
    #[error(
        "tls.credentialName {0:?} names a Kubernetes secret, which Warden's sidecar cannot read: give the files instead (caCertificates, and clientCertificate with privateKey for MUTUAL)"
    )]
    CredentialName(String),
    /// `MUTUAL` without its client certificate or key.
    #[error("tls.mode MUTUAL needs tls.{0}: the client certificate and its key are files")]
    MutualWithout(&'static str),
    /// A file cannot be read or holds nothing usable.
    #[error("tls.{field} {path}: {reason}")]
    File {
        /// The field naming the file (`caCertificates`, `clientCertificate`...).
        field: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No `caCertificates` and none of [`SYSTEM_CA_BUNDLES`] exists.
    #[error(
        "tls.caCertificates is not set and no system CA bundle was found (looked for {}): set caCertificates to the CA file that signs the server's certificate",
        SYSTEM_CA_BUNDLES.join(", ")
    )]
    NoSystemRoots,
    /// The client certificate and key do not go together.
    #[error(
        "tls.clientCertificate {cert} and tls.privateKey {key} cannot be used together: {reason}"
    )]
    ClientKey {
        /// `clientCertificate`.
        cert: String,
        /// `privateKey`.
        key: String,
        /// rustls's reason.
        reason: String,
    },
    /// No usable server name for SNI and verification.
    #[error("{0:?} cannot be sent as SNI (not a DNS name or an IP address): set tls.sni")]
    Sni(String),
}

/// Why the proxy refused an external server's certificate. Carried inside rustls's
/// `CertificateError::Other`, so it reaches the 503 body whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The leaf does not parse.
    #[error("the server's certificate does not parse: {0}")]
    Unparsable(String),
    /// The chain does not lead to a trusted root.
    #[error("the server's certificate chain does not lead to a root of {roots}")]
    UnknownIssuer {
        /// Where the roots came from.
        roots: Arc<str>,
    },
    /// The chain has expired.
    #[error(
        "the server's certificate chain has expired: not valid after {not_after} (unix seconds), now is {now}"
    )]
    Expired {
        /// `notAfter`, unix seconds.
        not_after: u64,
        /// Now, unix seconds.
        now: u64,
    },
    /// The chain is not valid yet.
    #[error(
        "the server's certificate chain is not valid yet: not valid before {not_before} (unix seconds), now is {now}"
    )]
    NotYetValid {
        /// `notBefore`, unix seconds.
        not_before: u64,
        /// Now, unix seconds.
        now: u64,
    },
    /// `caCrl` lists the certificate.
    #[error("the server's certificate is revoked (listed in tls.caCrl)")]
    Revoked,
    /// Another path validation failure, as webpki names it.
    #[error("the server's certificate chain is invalid: {0}")]
    Chain(String),
    /// Hostname verification of the SNI failed.
    #[error(
        "the server's certificate is not valid for {name} (it names {presented}); set tls.subjectAltNames, or tls.sni, to the name it has"
    )]
    NameMismatch {
        /// The SNI.
        name: String,
        /// The names in the certificate.
        presented: String,
    },
    /// None of `subjectAltNames` is in the certificate.
    #[error("the server's certificate names {presented}, none of tls.subjectAltNames [{expected}]")]
    NoSanMatch {
        /// `subjectAltNames`.
        expected: String,
        /// The names in the certificate.
        presented: String,
    },
}

impl From<CertError> for rustls::Error {
    fn from(e: CertError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

impl CertError {
    /// The [`CertError`] inside an I/O error from a tokio-rustls handshake.
    pub fn from_io(e: &io::Error) -> Option<&CertError> {
        match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<CertError>()
            }
            _ => None,
        }
    }
}

/// `SIMPLE` or `MUTUAL` TLS origination: the DestinationRule's `tls` fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Origination {
    /// `MUTUAL`: present a client certificate.
    pub mutual: bool,
    /// `caCertificates`: the CA file; `None`, the system bundle.
    pub ca_certificates: Option<String>,
    /// `caCrl`.
    pub ca_crl: Option<String>,
    /// `clientCertificate`.
    pub client_certificate: Option<String>,
    /// `privateKey`.
    pub private_key: Option<String>,
    /// `sni`.
    pub sni: Option<String>,
    /// `subjectAltNames`.
    pub subject_alt_names: Vec<String>,
    /// `insecureSkipVerify`.
    pub insecure_skip_verify: bool,
}

/// What a destination's `trafficPolicy.tls` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tls {
    /// No `tls`, or `mode: DISABLE`: plaintext.
    Disable,
    /// `ISTIO_MUTUAL`: the mesh's mutual TLS, sending `sni` when set.
    IstioMutual {
        /// `sni`.
        sni: Option<String>,
    },
    /// `SIMPLE` or `MUTUAL`.
    Originate(Arc<Origination>),
    /// Settings that cannot be used: every connection fails with this.
    Invalid(SettingsError),
}

fn string(tls: &Value, field: &'static str) -> Result<Option<String>, SettingsError> {
    match tls.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(SettingsError::Type {
            field,
            expected: "a string",
        }),
    }
}

impl Tls {
    /// From a traffic policy (the proto's field names), `None` without one.
    pub fn from_policy(policy: Option<&Value>) -> Self {
        match policy.and_then(|p| p.get("tls")) {
            None | Some(Value::Null) => Self::Disable,
            Some(tls) => Self::parse(tls).unwrap_or_else(Self::Invalid),
        }
    }

    fn parse(tls: &Value) -> Result<Self, SettingsError> {
        let mode = string(tls, "mode")?;
        let sni = string(tls, "sni")?;
        match mode.as_deref().unwrap_or("DISABLE") {
            "DISABLE" => return Ok(Self::Disable),
            "ISTIO_MUTUAL" => return Ok(Self::IstioMutual { sni }),
            "SIMPLE" | "MUTUAL" => {}
            other => return Err(SettingsError::Mode(other.to_string())),
        }
        if let Some(name) = string(tls, "credentialName")? {
            return Err(SettingsError::CredentialName(name));
        }
        let subject_alt_names = match tls.get("subjectAltNames") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(SettingsError::Type {
                    field: "subjectAltNames",
                    expected: "a list of strings",
                })?,
            Some(_) => {
                return Err(SettingsError::Type {
                    field: "subjectAltNames",
                    expected: "a list of strings",
                });
            }
        };
        let insecure_skip_verify = match tls.get("insecureSkipVerify") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(SettingsError::Type {
                    field: "insecureSkipVerify",
                    expected: "true or false",
                });
            }
        };
        let o = Origination {
            mutual: mode.as_deref() == Some("MUTUAL"),
            ca_certificates: string(tls, "caCertificates")?,
            ca_crl: string(tls, "caCrl")?,
            client_certificate: string(tls, "clientCertificate")?,
            private_key: string(tls, "privateKey")?,
            sni,
            subject_alt_names,
            insecure_skip_verify,
        };
        if o.mutual {
            if o.client_certificate.is_none() {
                return Err(SettingsError::MutualWithout("clientCertificate"));
            }
            if o.private_key.is_none() {
                return Err(SettingsError::MutualWithout("privateKey"));
            }
        }
        Ok(Self::Originate(Arc::new(o)))
    }
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An address known from the config.
    Addr(SocketAddr),
    /// A name resolved for each new connection, and the port.
    Name {
        /// The DNS name.
        host: Arc<str>,
        /// The port.
        port: u16,
        /// Use the first address only (`DNS_ROUND_ROBIN`), else take turns.
        first_only: bool,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Name { host, port, .. } => write!(f, "{host}:{port} (resolved by DNS)"),
        }
    }
}

/// How a connection to one endpoint of a `MESH_EXTERNAL` service is made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Plan {
    /// Where.
    pub target: Target,
    /// What TLS.
    pub tls: Tls,
    /// The host the request named (the service's host for TCP): the SNI and the name
    /// verified when `tls.sni` is unset, and what `NONE` resolution connects to.
    pub host: Arc<str>,
}

impl Plan {
    /// The plan for `endpoint` of `service` on `port`, asked for as `host`, under the
    /// destination's traffic `policy`.
    pub fn new(
        service: &Service,
        port: &ServicePortInfo,
        endpoint: &Endpoint,
        host: &str,
        policy: Option<&Value>,
    ) -> Self {
        let tls = Tls::from_policy(policy);
        let host: Arc<str> = Arc::from(host);
        let first_only = service.resolution == Resolution::DnsRoundRobin;
        // Mesh mutual TLS goes to the endpoint's proxy; anything else to the app.
        let mesh = matches!(tls, Tls::IstioMutual { .. });
        let app_port = if mesh {
            endpoint.inbound.port()
        } else {
            endpoint.app_port(port)
        };
        let name = |host: Arc<str>, port: u16| Target::Name {
            host,
            port,
            first_only,
        };
        let target = match &endpoint.dial {
            Dial::Address if mesh => Target::Addr(endpoint.inbound),
            Dial::Address => Target::Addr(SocketAddr::new(endpoint.address, app_port)),
            Dial::Name(n) => name(Arc::from(n.as_str()), app_port),
            Dial::AsRequested => {
                let port = match service.resolution {
                    // Original destination: the port the client asked for.
                    Resolution::None | Resolution::DynamicDns if !mesh => port.number,
                    _ => app_port,
                };
                name(host.clone(), port)
            }
        };
        Self { target, tls, host }
    }

    /// The name sent as SNI and verified: `tls.sni`, else the host.
    fn server_name(&self, sni: Option<&str>) -> Result<ServerName<'static>, SettingsError> {
        let name = sni.unwrap_or(&self.host);
        ServerName::try_from(name.to_string()).map_err(|_| SettingsError::Sni(name.to_string()))
    }
}

/// A connection to an external endpoint: plaintext or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plaintext.
    Plain(Coalesced<TcpStream>),
    /// TLS (originated, or the mesh's for `ISTIO_MUTUAL`).
    Tls(Box<client::TlsStream<Coalesced<TcpStream>>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The pool key of an HTTP connection to an external endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    generation: u64,
    service: ServiceId,
    port: u16,
    plan: Plan,
    protocol: UpstreamProtocol,
}

/// A file's modification time and size, to notice that it changed.
type FileStamp = Option<(SystemTime, u64)>;

fn stamp(path: &str) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A client config and the state of the files it was made from.
type Made = (Vec<(String, FileStamp)>, Arc<ClientConfig>);

/// What a client config is made for: the settings and the ALPN's protocol.
type ConfigKey = (Arc<Origination>, Option<UpstreamProtocol>);

/// Egress state the listeners share: pooled connections and the TLS configs made
/// from the DestinationRules' files.
#[derive(Debug, Default)]
pub struct Egress {
    pool: Pool<Key, UpBody>,
    configs: Mutex<HashMap<ConfigKey, Made>>,
}

impl Egress {
    /// Drops pooled connections and configs (a new config generation).
    pub fn clear(&self) {
        self.pool.clear();
        self.configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The client config for `o` offering the ALPN of `protocol`, made again when one
    /// of its files changed.
    pub fn client_config(
        &self,
        o: &Arc<Origination>,
        protocol: Option<UpstreamProtocol>,
    ) -> Result<Arc<ClientConfig>, SettingsError> {
        let key = (o.clone(), protocol);
        {
            let configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((files, config)) = configs.get(&key)
                && files.iter().all(|(path, seen)| stamp(path) == *seen)
            {
                return Ok(config.clone());
            }
        }
        let (files, config) = client_config(o, protocol)?;
        let config = Arc::new(config);
        let stamps = files.into_iter().map(|f| (f.clone(), stamp(&f))).collect();
        self.configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (stamps, config.clone()));
        Ok(config)
    }
}

/// The first of `candidates` that exists.
fn first_existing<'a>(candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .copied()
        .find(|p| std::path::Path::new(p).is_file())
}

fn file_error(field: &'static str, path: &str, reason: impl ToString) -> SettingsError {
    SettingsError::File {
        field,
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// The trust anchors in a PEM file; `strict`: every certificate must be one (a file
/// the DestinationRule names), else the unusable ones are skipped (a system bundle).
fn load_anchors(
    field: &'static str,
    path: &str,
    strict: bool,
) -> Result<Vec<TrustAnchor<'static>>, SettingsError> {
    let mut anchors = Vec::new();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| file_error(field, path, e))?;
    for (i, cert) in certs.enumerate() {
        let cert = cert.map_err(|e| file_error(field, path, e))?;
        match webpki::anchor_from_trusted_cert(&cert) {
            Ok(a) => anchors.push(a.to_owned()),
            Err(e) if strict => {
                return Err(file_error(
                    field,
                    path,
                    format!("certificate {i} is not a usable CA certificate: {e:?}"),
                ));
            }
            Err(_) => {}
        }
    }
    if anchors.is_empty() {
        return Err(file_error(field, path, "no CA certificate in the file"));
    }
    Ok(anchors)
}

fn load_crls(path: &str) -> Result<Vec<webpki::CertRevocationList<'static>>, SettingsError> {
    let mut crls = Vec::new();
    let ders = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| file_error("caCrl", path, e))?;
    for der in ders {
        let der = der.map_err(|e| file_error("caCrl", path, e))?;
        let crl = webpki::OwnedCertRevocationList::from_der(&der)
            .map_err(|e| file_error("caCrl", path, format!("not a CRL: {e:?}")))?;
        crls.push(crl.into());
    }
    if crls.is_empty() {
        return Err(file_error("caCrl", path, "no CRL in the file"));
    }
    Ok(crls)
}

/// The rustls config for `o` offering the ALPN of `protocol` (`h2` for HTTP/2, none
/// otherwise, as istiod), and the files it was made from. Errors name the field and
/// the file.
pub fn client_config(
    o: &Origination,
    protocol: Option<UpstreamProtocol>,
) -> Result<(Vec<String>, ClientConfig), SettingsError> {
    let mut files = Vec::new();
    let verifier = if o.insecure_skip_verify {
        OriginVerifier {
            roots: None,
            crls: Vec::new(),
            subject_alt_names: Vec::new(),
        }
    } else {
        let (anchors, roots, path) = match &o.ca_certificates {
            Some(path) => (
                load_anchors("caCertificates", path, true)?,
                format!("tls.caCertificates {path}"),
                path.as_str(),
            ),
            None => {
                let path =
                    first_existing(&SYSTEM_CA_BUNDLES).ok_or(SettingsError::NoSystemRoots)?;
                (
                    load_anchors("caCertificates", path, false)?,
                    format!("the system CA bundle {path} (tls.caCertificates is not set)"),
                    path,
                )
            }
        };
        files.push(path.to_string());
        let crls = match &o.ca_crl {
            Some(path) => {
                files.push(path.clone());
                load_crls(path)?
            }
            None => Vec::new(),
        };
        OriginVerifier {
            roots: Some((anchors, Arc::from(roots))),
            crls,
            subject_alt_names: o.subject_alt_names.clone(),
        }
    };
    let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        // Invariant: ring's default provider supports rustls's default versions.
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = if o.mutual {
        let cert_path = o
            .client_certificate
            .as_deref()
            .ok_or(SettingsError::MutualWithout("clientCertificate"))?;
        let key_path = o
            .private_key
            .as_deref()
            .ok_or(SettingsError::MutualWithout("privateKey"))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| file_error("clientCertificate", cert_path, e))?;
        if chain.is_empty() {
            return Err(file_error(
                "clientCertificate",
                cert_path,
                "no certificate in the file",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| file_error("privateKey", key_path, e))?;
        files.push(cert_path.to_string());
        files.push(key_path.to_string());
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| SettingsError::ClientKey {
                cert: cert_path.to_string(),
                key: key_path.to_string(),
                reason: e.to_string(),
            })?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = match protocol {
        Some(UpstreamProtocol::Http2) => vec![b"h2".to_vec()],
        _ => Vec::new(),
    };
    Ok((files, config))
}

/// Verifies an external server: the chain to the roots (and the CRLs), then one of the
/// `subjectAltNames`, or the SNI without them. No roots: `insecureSkipVerify`.
#[derive(Debug)]
struct OriginVerifier {
    /// The trust anchors and where they came from.
    roots: Option<(Vec<TrustAnchor<'static>>, Arc<str>)>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    subject_alt_names: Vec<String>,
}

fn from_webpki(e: webpki::Error, roots: &Arc<str>) -> CertError {
    match e {
        webpki::Error::UnknownIssuer => CertError::UnknownIssuer {
            roots: roots.clone(),
        },
        webpki::Error::CertExpired { time, not_after } => CertError::Expired {
            not_after: not_after.as_secs(),
            now: time.as_secs(),
        },
        webpki::Error::CertNotValidYet { time, not_before } => CertError::NotYetValid {
            not_before: not_before.as_secs(),
            now: time.as_secs(),
        },
        webpki::Error::CertRevoked => CertError::Revoked,
        other => CertError::Chain(format!("{other:?}")),
    }
}

/// The subject alternative names of a certificate, as `DNS:a, IP:1.2.3.4, URI:u`.
fn presented_names(der: &CertificateDer<'_>) -> String {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return "nothing readable".to_string();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(format!("DNS:{d}")),
                GeneralName::URI(u) => names.push(format!("URI:{u}")),
                GeneralName::RFC822Name(m) => names.push(format!("email:{m}")),
                GeneralName::IPAddress(ip) => {
                    let addr = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .map(|b| std::net::IpAddr::from(b).to_string())
                            .ok(),
                        16 => <[u8; 16]>::try_from(*ip)
                            .map(|b| std::net::IpAddr::from(b).to_string())
                            .ok(),
                        _ => None,
                    };
                    names.push(format!("IP:{}", addr.unwrap_or_else(|| "?".into())));
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        return format!("no subjectAltName (subject {})", cert.subject());
    }
    names.join(", ")
}

/// The URI SANs of a certificate.
fn uri_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_string()),
            _ => None,
        })
        .collect()
}

impl ServerCertVerifier for OriginVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((anchors, roots)) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| CertError::Unparsable(format!("{e:?}")))?;
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
            .ok()
            .map(|b| {
                b.with_depth(webpki::RevocationCheckDepth::EndEntity)
                    .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                    .build()
            });
        ee.verify_for_usage(
            PROVIDER.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            revocation,
            None,
        )
        .map_err(|e| from_webpki(e, roots))?;
        if self.subject_alt_names.is_empty() {
            return match ee.verify_is_valid_for_subject_name(server_name) {
                Ok(()) => Ok(ServerCertVerified::assertion()),
                Err(_) => Err(CertError::NameMismatch {
                    name: server_name.to_str().into_owned(),
                    presented: presented_names(end_entity),
                }
                .into()),
            };
        }
        let uris = uri_names(end_entity);
        let matched =
            self.subject_alt_names
                .iter()
                .any(|want| match ServerName::try_from(want.as_str()) {
                    Ok(name) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
                    Err(_) => uris.iter().any(|u| u == want),
                });
        if matched {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(CertError::NoSanMatch {
                expected: self.subject_alt_names.join(", "),
                presented: presented_names(end_entity),
            }
            .into())
        }
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
            &PROVIDER.signature_verification_algorithms,
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
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn settings_failure(e: SettingsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// A TCP connection to `addr`: from the workload's address (as mesh connections), unless
/// that is loopback and `addr` is not, where the system picks the source.
async fn dial_addr(ctx: &Context, addr: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    if !ctx.local_ip.is_loopback() || addr.ip().is_loopback() {
        return ctx.connect_from_local_within(addr, limit).await;
    }
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out after {limit:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A TCP connection to `target`, resolving a name first (see the module docs).
async fn dial(ctx: &Context, target: &Target, limit: Duration) -> io::Result<TcpStream> {
    let (host, port, first_only) = match target {
        Target::Addr(a) => return dial_addr(ctx, *a, limit).await,
        Target::Name {
            host,
            port,
            first_only,
        } => (host, *port, *first_only),
    };
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((&**host, port)))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("resolving {host} timed out after {CONNECT_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| io::Error::new(e.kind(), format!("resolving {host}: {e}")))?
            .collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("resolving {host}: no address"),
        ));
    }
    let start = if first_only { 0 } else { ctx.pick(addrs.len()) };
    let tries = if first_only { 1 } else { addrs.len() };
    let mut last = None;
    for i in 0..tries {
        match dial_addr(ctx, addrs[(start + i) % addrs.len()], limit).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other(format!("{host}: no address"))))
}

/// Opens a connection to `route`'s endpoint as `plan` says, offering the ALPN of
/// `protocol` (`None`: opaque TCP) on TLS.
pub(crate) async fn connect(
    ctx: &Context,
    snap: &Snapshot,
    route: &Route<'_>,
    plan: &Plan,
    protocol: Option<UpstreamProtocol>,
) -> io::Result<Stream> {
    match &plan.tls {
        Tls::Disable => Ok(Stream::Plain(Coalesced::new(
            dial(ctx, &plan.target, route.connect_timeout).await?,
        ))),
        Tls::Invalid(e) => Err(settings_failure(e.clone())),
        Tls::IstioMutual { sni } => {
            let config = snap
                .tls
                .get(&route.service.id)
                .map(|t| t.for_protocol(protocol))
                .ok_or_else(|| io::Error::other("no TLS config for the service"))?;
            let sni = sni
                .clone()
                .unwrap_or_else(|| sni_for(route.host, route.port.number));
            let name = ServerName::try_from(sni.clone())
                .map_err(|_| settings_failure(SettingsError::Sni(sni)))?;
            let tcp = dial(ctx, &plan.target, route.connect_timeout).await?;
            let tls = TlsClient::connect_named(config, name, Coalesced::new(tcp)).await?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        Tls::Originate(o) => {
            let config = ctx
                .egress
                .client_config(o, protocol)
                .map_err(settings_failure)?;
            let name = plan
                .server_name(o.sni.as_deref())
                .map_err(settings_failure)?;
            let tcp = dial(ctx, &plan.target, route.connect_timeout).await?;
            let tls = TlsConnector::from(config)
                .connect(name, Coalesced::new(tcp))
                .await?;
            Ok(Stream::Tls(Box::new(tls)))
        }
    }
}

/// Sends `req` to `route`'s external endpoint over a pooled connection (reused as the
/// destination's `connectionPool.http` allows).
pub(crate) async fn send(
    ctx: &Context,
    snap: &Snapshot,
    route: &Route<'_>,
    plan: &Plan,
    protocol: UpstreamProtocol,
    req: Request<UpBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let key = Key {
        generation: snap.mesh.generation,
        service: route.service.id,
        port: route.port.number,
        plan: plan.clone(),
        protocol,
    };
    ctx.egress
        .pool
        .send_limited(key, protocol, req, route.reuse, || {
            connect(ctx, snap, route, plan, Some(protocol))
        })
        .await
}

/// Explains a failed connection to an external endpoint in Envoy's words, with the
/// destination, the target, the SNI and why.
pub(crate) fn connect_error(route: &Route<'_>, plan: &Plan, e: &io::Error) -> String {
    let sni = match &plan.tls {
        Tls::Originate(o) => format!(", SNI {}", o.sni.as_deref().unwrap_or(&plan.host)),
        _ => String::new(),
    };
    let who = format!(
        "{}:{} (MESH_EXTERNAL ServiceEntry {}/{}, endpoint {}{sni})",
        plan.host, route.port.number, route.service.namespace, route.service.name, plan.target
    );
    if let Some(why) = CertError::from_io(e) {
        return format!(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error: {who}: {why}"
        );
    }
    if let Some(why) = crate::tls::VerifyError::from_io(e) {
        return format!(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error: {who}: {why}"
        );
    }
    if let Some(why) = e.get_ref().and_then(|i| i.downcast_ref::<SettingsError>()) {
        return format!(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: the DestinationRule's TLS settings for {who}: {why}"
        );
    }
    format!(
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure: {who}: {e}"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use rcgen::SanType;
    use rustls::ServerConfig;
    use rustls::server::WebPkiClientVerifier;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
    use tokio_rustls::{TlsAcceptor, server};
    use warden_policy::loader::load_str;

    use super::*;
    use crate::mesh::registry::Registry;
    use crate::test_support::TestCa;

    /// PEM files in a temporary directory.
    struct Files(tempfile::TempDir);

    impl Files {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn write(&self, name: &str, contents: &str) -> String {
            let path = self.0.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path.display().to_string()
        }

        fn missing(&self, name: &str) -> String {
            self.0.path().join(name).display().to_string()
        }
    }

    /// A leaf of `ca` naming `dns` (DNS SANs): its chain and key, PEM.
    fn leaf(ca: &TestCa, dns: &[&str]) -> (String, String) {
        ca.leaf_pem_with("spiffe://cluster.local/ns/x/sa/unused", |p| {
            p.subject_alt_names = dns
                .iter()
                .map(|d| SanType::DnsName((*d).try_into().unwrap()))
                .collect();
        })
    }

    fn server(chain_pem: &str, key_pem: &str, client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let builder = ServerConfig::builder_with_provider(PROVIDER.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.root_der()).unwrap();
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), PROVIDER.clone())
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// One handshake over an in-memory pipe, the client sending `sni`, then a byte
    /// each way (a TLS 1.3 server refusing the client's certificate says so only then).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        sni: &str,
    ) -> (
        io::Result<server::TlsStream<tokio::io::DuplexStream>>,
        io::Result<client::TlsStream<tokio::io::DuplexStream>>,
    ) {
        let (a, b) = duplex(64 * 1024);
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let (s, c) = tokio::join!(
            async {
                let mut s = TlsAcceptor::from(server).accept(a).await?;
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).await?;
                s.write_all(b"!").await?;
                s.flush().await?;
                Ok(s)
            },
            async {
                let mut c = TlsConnector::from(client).connect(name, b).await?;
                c.write_all(b"?").await?;
                c.flush().await?;
                let mut byte = [0u8; 1];
                c.read_exact(&mut byte).await?;
                Ok(c)
            }
        );
        (s, c)
    }

    fn simple(ca: Option<String>) -> Origination {
        Origination {
            ca_certificates: ca,
            ..Origination::default()
        }
    }

    fn config(o: &Origination, protocol: Option<UpstreamProtocol>) -> Arc<ClientConfig> {
        Arc::new(client_config(o, protocol).unwrap().1)
    }

    #[test]
    fn settings_follow_the_mode() {
        let tls = |v: Value| Tls::from_policy(Some(&json!({ "tls": v })));
        assert_eq!(Tls::from_policy(None), Tls::Disable);
        assert_eq!(Tls::from_policy(Some(&json!({}))), Tls::Disable);
        assert_eq!(tls(json!({"mode": "DISABLE"})), Tls::Disable);
        assert_eq!(
            tls(json!({"mode": "ISTIO_MUTUAL", "sni": "x.example.com"})),
            Tls::IstioMutual {
                sni: Some("x.example.com".into())
            }
        );
        assert_eq!(
            tls(
                json!({"mode": "SIMPLE", "caCertificates": "/ca.pem", "sni": "api.example.com",
                "subjectAltNames": ["api.example.com"], "insecureSkipVerify": false})
            ),
            Tls::Originate(Arc::new(Origination {
                ca_certificates: Some("/ca.pem".into()),
                sni: Some("api.example.com".into()),
                subject_alt_names: vec!["api.example.com".into()],
                ..Origination::default()
            }))
        );
        assert_eq!(
            tls(json!({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem"})),
            Tls::Originate(Arc::new(Origination {
                mutual: true,
                client_certificate: Some("/c.pem".into()),
                private_key: Some("/k.pem".into()),
                ..Origination::default()
            }))
        );
        // What cannot be used fails every connection with the reason.
        for (v, want) in [
            (
                json!({"mode": "MUTUAL", "privateKey": "/k.pem"}),
                SettingsError::MutualWithout("clientCertificate"),
            ),
            (
                json!({"mode": "MUTUAL", "clientCertificate": "/c.pem"}),
                SettingsError::MutualWithout("privateKey"),
            ),
            (
                json!({"mode": "SIMPLE", "credentialName": "api-credential"}),
                SettingsError::CredentialName("api-credential".into()),
            ),
            (
                json!({"mode": "STRICT"}),
                SettingsError::Mode("STRICT".into()),
            ),
            (
                json!({"mode": "SIMPLE", "subjectAltNames": "api.example.com"}),
                SettingsError::Type {
                    field: "subjectAltNames",
                    expected: "a list of strings",
                },
            ),
        ] {
            assert_eq!(tls(v.clone()), Tls::Invalid(want), "{v}");
        }
        let msg = SettingsError::CredentialName("api-credential".into()).to_string();
        assert!(
            msg.contains("Kubernetes secret") && msg.contains("clientCertificate"),
            "{msg}"
        );
    }

    #[test]
    fn plans_follow_the_resolution() {
        let set = load_str(
            Path::new("egress.yaml"),
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn, namespace: default}
spec:
  hosts: [edition.cnn.com]
  resolution: DNS
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8443}]
  endpoints:
  - {address: 127.0.0.1}
  - {address: 127.0.0.2, ports: {http: 9443}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wiki, namespace: default}
spec:
  hosts: ["*.wikipedia.org"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS, targetPort: 8443}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: lb, namespace: default}
spec:
  hosts: [lb.example.com]
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: backend.example.net}]
"#,
        )
        .unwrap();
        let r = Registry::build(&set, "cluster.local").unwrap();
        let plan = |host: &str, port: u16, i: usize, policy: Option<Value>| {
            let (s, p) = r.resolve(host, port, "default").unwrap();
            Plan::new(s, p, &s.endpoints[i], host, policy.as_ref())
        };
        let name = |host: &str, port: u16, first_only: bool| Target::Name {
            host: Arc::from(host),
            port,
            first_only,
        };
        // Istio's TLS origination task: port 80 goes to 443 of the resolved host.
        let origination = json!({"tls": {"mode": "SIMPLE"}});
        let p = plan("edition.cnn.com", 80, 0, Some(origination.clone()));
        assert_eq!(p.target, name("edition.cnn.com", 443, false));
        assert!(matches!(p.tls, Tls::Originate(_)));
        assert_eq!(&*p.host, "edition.cnn.com");
        assert_eq!(
            plan("edition.cnn.com", 443, 0, None).target,
            name("edition.cnn.com", 443, false)
        );
        // STATIC: the address, at targetPort or the endpoint's own port.
        let p = plan("api.example.com", 80, 0, None);
        assert_eq!(p.target, Target::Addr("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(p.tls, Tls::Disable);
        assert_eq!(
            plan("api.example.com", 80, 1, None).target,
            Target::Addr("127.0.0.2:9443".parse().unwrap())
        );
        // ISTIO_MUTUAL: the endpoint's proxy.
        let p = plan(
            "api.example.com",
            80,
            0,
            Some(json!({"tls": {"mode": "ISTIO_MUTUAL"}})),
        );
        assert_eq!(p.target, Target::Addr("127.0.0.1:15006".parse().unwrap()));
        // NONE: the host asked for, at the port asked for.
        let p = plan("en.wikipedia.org", 443, 0, None);
        assert_eq!(p.target, name("en.wikipedia.org", 443, false));
        // DNS_ROUND_ROBIN: the endpoint's name, first address only.
        assert_eq!(
            plan("lb.example.com", 80, 0, None).target,
            name("backend.example.net", 80, true)
        );
    }

    #[test]
    fn bad_files_are_named_with_their_field() {
        let files = Files::new();
        let ca = TestCa::new();
        let (chain, key) = leaf(&ca, &["client.example.com"]);
        let (_, other_key) = leaf(&ca, &["other.example.com"]);
        let ca_pem = files.write("ca.pem", &ca.pem());
        let empty = files.write("empty.pem", "");
        let chain = files.write("client.pem", &chain);
        let key = files.write("client-key.pem", &key);
        let other_key = files.write("other-key.pem", &other_key);
        let missing = files.missing("nope.pem");
        let mutual = |cert: &str, key: &str| Origination {
            mutual: true,
            ca_certificates: Some(ca_pem.clone()),
            client_certificate: Some(cert.to_string()),
            private_key: Some(key.to_string()),
            ..Origination::default()
        };
        let err = |o: &Origination| client_config(o, None).unwrap_err().to_string();
        let e = err(&simple(Some(missing.clone())));
        assert!(
            e.starts_with(&format!("tls.caCertificates {missing}: ")),
            "{e}"
        );
        let e = err(&simple(Some(empty.clone())));
        assert_eq!(
            e,
            format!("tls.caCertificates {empty}: no CA certificate in the file")
        );
        let e = err(&mutual(&missing, &key));
        assert!(
            e.starts_with(&format!("tls.clientCertificate {missing}: ")),
            "{e}"
        );
        let e = err(&mutual(&empty, &key));
        assert_eq!(
            e,
            format!("tls.clientCertificate {empty}: no certificate in the file")
        );
        let e = err(&mutual(&chain, &empty));
        assert!(e.starts_with(&format!("tls.privateKey {empty}: ")), "{e}");
        let e = err(&mutual(&chain, &other_key));
        assert!(
            e.starts_with(&format!(
                "tls.clientCertificate {chain} and tls.privateKey {other_key} cannot be used together"
            )),
            "{e}"
        );
        let e = err(&Origination {
            ca_crl: Some(empty.clone()),
            ..simple(Some(ca_pem.clone()))
        });
        assert!(e.starts_with(&format!("tls.caCrl {empty}: ")), "{e}");
        // The good ones build, and name the files they came from.
        let (made_from, _) = client_config(&mutual(&chain, &key), None).unwrap();
        assert_eq!(made_from, [ca_pem, chain, key]);
        // ALPN as istiod sets it: h2 for HTTP/2 only.
        let o = simple(Some(files.write("ca2.pem", &ca.pem())));
        assert_eq!(
            config(&o, Some(UpstreamProtocol::Http2)).alpn_protocols,
            [b"h2".to_vec()]
        );
        assert!(
            config(&o, Some(UpstreamProtocol::Http1))
                .alpn_protocols
                .is_empty()
        );
        assert!(config(&o, None).alpn_protocols.is_empty());
    }

    #[test]
    fn without_ca_certificates_the_system_bundle_is_used() {
        let files = Files::new();
        let missing = files.missing("nope.pem");
        let present = files.write("bundle.pem", &TestCa::new().pem());
        assert_eq!(
            first_existing(&[missing.as_str(), present.as_str()]),
            Some(present.as_str())
        );
        assert_eq!(first_existing(&[missing.as_str()]), None);
        let msg = SettingsError::NoSystemRoots.to_string();
        assert!(
            msg.contains("/etc/ssl/certs/ca-certificates.crt")
                && msg.contains("set caCertificates"),
            "{msg}"
        );
        // Where the machine has a bundle, it is what an unset caCertificates means.
        if let Some(path) = first_existing(&SYSTEM_CA_BUNDLES) {
            let (made_from, _) = client_config(&simple(None), None).unwrap();
            assert_eq!(made_from, [path.to_string()]);
        }
    }

    #[tokio::test]
    async fn simple_verifies_the_sni_against_the_ca() {
        let files = Files::new();
        let ca = TestCa::new();
        let (chain, key) = leaf(&ca, &["api.example.com"]);
        let srv = server(&chain, &key, None);
        let o = simple(Some(files.write("ca.pem", &ca.pem())));
        let (s, c) = handshake(srv.clone(), config(&o, None), "api.example.com").await;
        s.unwrap();
        c.unwrap();
        // Another name: the hostname check fails, naming what the certificate has.
        let (_, c) = handshake(srv.clone(), config(&o, None), "other.example.com").await;
        let err = c.unwrap_err();
        assert_eq!(
            CertError::from_io(&err),
            Some(&CertError::NameMismatch {
                name: "other.example.com".into(),
                presented: "DNS:api.example.com".into(),
            })
        );
        // Another CA: the chain fails, naming the roots.
        let stranger = simple(Some(files.write("other-ca.pem", &TestCa::new().pem())));
        let (_, c) = handshake(srv.clone(), config(&stranger, None), "api.example.com").await;
        let err = c.unwrap_err();
        match CertError::from_io(&err) {
            Some(CertError::UnknownIssuer { roots }) => {
                assert!(roots.contains("tls.caCertificates") && roots.contains("other-ca.pem"))
            }
            other => panic!("{other:?}: {err}"),
        }
        // insecureSkipVerify: anything goes.
        let skip = Origination {
            insecure_skip_verify: true,
            ..stranger
        };
        let (s, c) = handshake(srv, config(&skip, None), "other.example.com").await;
        s.unwrap();
        c.unwrap();
    }

    #[tokio::test]
    async fn subject_alt_names_replace_the_hostname_check() {
        let files = Files::new();
        let ca = TestCa::new();
        let (chain, key) = leaf(&ca, &["*.example.com", "api.example.net"]);
        let srv = server(&chain, &key, None);
        let ca_pem = files.write("ca.pem", &ca.pem());
        let with = |sans: &[&str]| Origination {
            subject_alt_names: sans.iter().map(|s| (*s).to_string()).collect(),
            ..simple(Some(ca_pem.clone()))
        };
        // A name the wildcard covers, whatever the SNI.
        let o = with(&["wrong.example.org", "api.example.com"]);
        let (_, c) = handshake(srv.clone(), config(&o, None), "sni.example.org").await;
        c.unwrap();
        let o = with(&["api.example.net"]);
        let (_, c) = handshake(srv.clone(), config(&o, None), "sni.example.org").await;
        c.unwrap();
        // None of them: refused, naming both sides.
        let o = with(&["wrong.example.org", "spiffe://cluster.local/ns/a/sa/b"]);
        let (_, c) = handshake(srv, config(&o, None), "api.example.com").await;
        let err = c.unwrap_err();
        let why = CertError::from_io(&err).unwrap();
        assert_eq!(
            why,
            &CertError::NoSanMatch {
                expected: "wrong.example.org, spiffe://cluster.local/ns/a/sa/b".into(),
                presented: "DNS:*.example.com, DNS:api.example.net".into(),
            }
        );
        assert_eq!(
            why.to_string(),
            "the server's certificate names DNS:*.example.com, DNS:api.example.net, none of tls.subjectAltNames [wrong.example.org, spiffe://cluster.local/ns/a/sa/b]"
        );
    }

    #[tokio::test]
    async fn a_uri_subject_alt_name_matches_exactly() {
        let files = Files::new();
        let ca = TestCa::new();
        let id = "spiffe://partner.example/ns/x/sa/api";
        let (chain, key) = ca.leaf_pem(id);
        let srv = server(&chain, &key, None);
        let o = Origination {
            subject_alt_names: vec![id.to_string()],
            ..simple(Some(files.write("ca.pem", &ca.pem())))
        };
        let (_, c) = handshake(srv, config(&o, None), "api.partner.example").await;
        c.unwrap();
    }

    #[tokio::test]
    async fn mutual_presents_the_client_certificate() {
        let files = Files::new();
        let ca = TestCa::new();
        let (chain, key) = leaf(&ca, &["api.example.com"]);
        let srv = server(&chain, &key, Some(&ca));
        let ca_pem = files.write("ca.pem", &ca.pem());
        // SIMPLE has no certificate to give: the server refuses it.
        let (s, _) = handshake(
            srv.clone(),
            config(&simple(Some(ca_pem.clone())), None),
            "api.example.com",
        )
        .await;
        assert!(s.is_err());
        let (client_chain, client_key) = leaf(&ca, &["client.example.com"]);
        let o = Origination {
            mutual: true,
            client_certificate: Some(files.write("client.pem", &client_chain)),
            private_key: Some(files.write("client-key.pem", &client_key)),
            ..simple(Some(ca_pem))
        };
        let (s, c) = handshake(srv, config(&o, None), "api.example.com").await;
        c.unwrap();
        let s = s.unwrap();
        let presented = s.get_ref().1.peer_certificates().unwrap();
        assert_eq!(presented_names(&presented[0]), "DNS:client.example.com");
    }

    #[tokio::test]
    async fn ca_crl_revokes_the_server() {
        let files = Files::new();
        let ca = TestCa::new();
        let (chain, key) = leaf(&ca, &["api.example.com"]);
        let leaf_der = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, parsed) = X509Certificate::from_der(&leaf_der).unwrap();
        let serial = parsed.raw_serial().to_vec();
        let srv = server(&chain, &key, None);
        let o = Origination {
            ca_crl: Some(files.write("crl.pem", &ca.crl_pem(&[serial]))),
            ..simple(Some(files.write("ca.pem", &ca.pem())))
        };
        let (_, c) = handshake(srv, config(&o, None), "api.example.com").await;
        let err = c.unwrap_err();
        assert_eq!(CertError::from_io(&err), Some(&CertError::Revoked));
    }

    #[test]
    fn configs_are_kept_until_a_file_changes() {
        let files = Files::new();
        let ca = files.write("ca.pem", &TestCa::new().pem());
        let egress = Egress::default();
        let o = Arc::new(simple(Some(ca.clone())));
        let first = egress.client_config(&o, None).unwrap();
        assert!(Arc::ptr_eq(
            &first,
            &egress.client_config(&o, None).unwrap()
        ));
        // Another ALPN is another config.
        let h2 = egress
            .client_config(&o, Some(UpstreamProtocol::Http2))
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &h2));
        // A rotated CA file (another size) is read again.
        let two = format!("{}{}", TestCa::new().pem(), TestCa::new().pem());
        std::fs::write(&ca, two).unwrap();
        let again = egress.client_config(&o, None).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        // A file gone: the error, not the old config.
        std::fs::remove_file(&ca).unwrap();
        let err = egress.client_config(&o, None).unwrap_err();
        assert!(err.to_string().starts_with("tls.caCertificates"), "{err}");
    }
}
