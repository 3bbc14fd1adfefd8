//! The agent's client of the CA: Istio's CreateCertificate, and Warden's JWT-SVID and
//! node-entry services, over TLS verified against `--ca-root`. The node SVID, when the
//! node has one, is the TLS client certificate; the channel is rebuilt when it rotates.
//! A call that carries a bearer token goes on a second channel without a client
//! certificate: the CA authenticates a client certificate before a token, so a token
//! (Kubernetes node attestation with a node SVID already held) must travel alone.
//!
//! The node and the manager see the CA as [`CertificateAuthority`] (ztunnel's
//! `CaClientTrait`), so their rotation and retry logic runs in unit tests against an
//! in-process fake.

use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use warden_proto::istio_ca::IstioCertificateRequest;
use warden_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use warden_proto::warden_ca::jwt_svid_service_client::JwtSvidServiceClient;
use warden_proto::warden_ca::node_service_client::NodeServiceClient;
use warden_proto::warden_ca::{
    GetJwtBundleRequest, GetJwtBundleResponse, ListNodeEntriesRequest, ListNodeEntriesResponse,
    MintJwtSvidRequest, MintJwtSvidResponse,
};
use warden_proto::{IMPERSONATED_IDENTITY, SpiffeId};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::svid::Svid;

/// Deadline of one call to the CA.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed call, with whether retrying can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CaError {
    /// gRPC code (Unavailable for transport failures).
    pub code: Code,
    /// What happened, for logs.
    pub message: String,
    /// How long the CA asked us to wait (gRPC's `grpc-retry-pushback-ms`, sent with
    /// `RESOURCE_EXHAUSTED` when the CA is at its limits).
    pub retry_after: Option<Duration>,
}

/// gRPC's retry pushback header.
const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";
/// Longest pushback honoured (a larger value is taken as this).
const MAX_PUSHBACK: Duration = Duration::from_secs(300);

impl From<Status> for CaError {
    fn from(s: Status) -> Self {
        let message = if s.code() == Code::Unavailable || s.code() == Code::Unknown {
            format!("the CA is unreachable: {}", s.message())
        } else {
            format!("the CA refused ({:?}): {}", s.code(), s.message())
        };
        let retry_after = s
            .metadata()
            .get(RETRY_PUSHBACK)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|ms| Duration::from_millis(ms).min(MAX_PUSHBACK));
        Self {
            code: s.code(),
            message,
            retry_after,
        }
    }
}

impl CaError {
    fn local(message: impl Into<String>) -> Self {
        Self {
            code: Code::Internal,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What the agent asks of the CA.
#[tonic::async_trait]
pub trait CertificateAuthority: Send + Sync + fmt::Debug {
    /// CreateCertificate: signs `csr` for `ttl`, for `impersonate` when the node asks on
    /// a workload's behalf; returns the PEM chain, root bundle last.
    async fn create_certificate(
        &self,
        csr: String,
        ttl: Duration,
        impersonate: Option<&SpiffeId>,
        bearer: Option<&str>,
    ) -> Result<Vec<String>, CaError>;

    /// The registration entries whose parent is this node.
    async fn list_entries(&self, bearer: Option<&str>) -> Result<ListNodeEntriesResponse, CaError>;

    /// Mints a JWT-SVID for `id` (impersonated when it is not the caller's own).
    async fn mint_jwt(
        &self,
        id: Option<&SpiffeId>,
        audience: Vec<String>,
        bearer: Option<&str>,
    ) -> Result<MintJwtSvidResponse, CaError>;

    /// The trust domain's JWT bundle (JWKS).
    async fn jwt_bundle(&self, bearer: Option<&str>) -> Result<GetJwtBundleResponse, CaError>;

    /// Opens WatchJwtBundle: the bundle now and at every change. A CA without it
    /// answers `Unimplemented` (the agent then only polls).
    async fn watch_bundle(
        &self,
        _bearer: Option<&str>,
    ) -> Result<tonic::Streaming<GetJwtBundleResponse>, CaError> {
        Err(CaError {
            retry_after: None,
            code: Code::Unimplemented,
            message: "this CA does not stream its bundle".into(),
        })
    }

    /// Presents `svid` as the node's client certificate from now on (new connections).
    fn set_identity(&self, svid: &Svid) -> Result<(), String>;

    /// Trusts `bundle_pem` (the CA's published roots) beside `--ca-root` for the CA's
    /// serving certificate, from the next connection on.
    fn set_trust(&self, _bundle_pem: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Client of the CA.
#[derive(Debug)]
pub struct CaClient {
    addr: String,
    server_name: String,
    /// `--ca-root`, always trusted.
    configured_roots: String,
    /// What the channels trust now: `--ca-root` and the CA's published roots.
    roots_pem: RwLock<String>,
    /// The node's client certificate and key, once it has one.
    identity: RwLock<Option<Identity>>,
    channel: RwLock<Channel>,
    /// Without a client certificate, for calls that carry a bearer token.
    anonymous: RwLock<Channel>,
}

impl CaClient {
    /// A client with no client certificate yet. Connects lazily, so the agent starts
    /// (and serves what it has) while the CA is down.
    pub fn new(addr: &str, server_name: &str, roots_pem: String) -> Result<Self, String> {
        let channel = Self::channel(addr, server_name, &roots_pem, None)?;
        Ok(Self {
            addr: addr.to_string(),
            server_name: server_name.to_string(),
            configured_roots: roots_pem.clone(),
            roots_pem: RwLock::new(roots_pem),
            identity: RwLock::new(None),
            anonymous: RwLock::new(channel.clone()),
            channel: RwLock::new(channel),
        })
    }

    fn read<T: Clone>(lock: &RwLock<T>) -> T {
        match lock.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn write<T>(lock: &RwLock<T>, value: T) {
        match lock.write() {
            Ok(mut v) => *v = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }

    fn channel(
        addr: &str,
        server_name: &str,
        roots_pem: &str,
        identity: Option<&Identity>,
    ) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots_pem))
            .domain_name(server_name);
        if let Some(identity) = identity {
            tls = tls.identity(identity.clone());
        }
        Ok(Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("--ca-addr {addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .tls_config(tls)
            .map_err(|e| format!("TLS settings for the CA: {e}"))?
            .connect_lazy())
    }

    /// The channel for a call: with the node's client certificate, or without one when
    /// the call carries a bearer token.
    fn current_for(&self, bearer: Option<&str>) -> Channel {
        if bearer.is_some() {
            return Self::read(&self.anonymous);
        }
        self.current()
    }

    fn current(&self) -> Channel {
        Self::read(&self.channel)
    }

    fn request<T>(msg: T, bearer: Option<&str>) -> Result<tonic::Request<T>, CaError> {
        let mut req = tonic::Request::new(msg);
        if let Some(token) = bearer {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| CaError::local("the token has characters not allowed in a header"))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

#[tonic::async_trait]
impl CertificateAuthority for CaClient {
    async fn create_certificate(
        &self,
        csr: String,
        ttl: Duration,
        impersonate: Option<&SpiffeId>,
        bearer: Option<&str>,
    ) -> Result<Vec<String>, CaError> {
        let metadata = impersonate.map(|id| prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        });
        let req = Self::request(
            IstioCertificateRequest {
                csr,
                validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                metadata,
            },
            bearer,
        )?;
        let resp = IstioCertificateServiceClient::new(self.current_for(bearer))
            .create_certificate(req)
            .await?;
        Ok(resp.into_inner().cert_chain)
    }

    async fn list_entries(&self, bearer: Option<&str>) -> Result<ListNodeEntriesResponse, CaError> {
        let req = Self::request(ListNodeEntriesRequest {}, bearer)?;
        Ok(NodeServiceClient::new(self.current_for(bearer))
            .list_node_entries(req)
            .await?
            .into_inner())
    }

    async fn mint_jwt(
        &self,
        id: Option<&SpiffeId>,
        audience: Vec<String>,
        bearer: Option<&str>,
    ) -> Result<MintJwtSvidResponse, CaError> {
        let req = Self::request(
            MintJwtSvidRequest {
                spiffe_id: id.map(ToString::to_string).unwrap_or_default(),
                audience,
                ttl_seconds: 0,
            },
            bearer,
        )?;
        Ok(JwtSvidServiceClient::new(self.current_for(bearer))
            .mint_jwt_svid(req)
            .await?
            .into_inner())
    }

    async fn watch_bundle(
        &self,
        bearer: Option<&str>,
    ) -> Result<tonic::Streaming<GetJwtBundleResponse>, CaError> {
        let req = Self::request(GetJwtBundleRequest {}, bearer)?;
        Ok(JwtSvidServiceClient::new(self.current_for(bearer))
            .watch_jwt_bundle(req)
            .await?
            .into_inner())
    }

    async fn jwt_bundle(&self, bearer: Option<&str>) -> Result<GetJwtBundleResponse, CaError> {
        let req = Self::request(GetJwtBundleRequest {}, bearer)?;
        Ok(JwtSvidServiceClient::new(self.current_for(bearer))
            .get_jwt_bundle(req)
            .await?
            .into_inner())
    }

    fn set_identity(&self, svid: &Svid) -> Result<(), String> {
        let identity = Identity::from_pem(&svid.chain_pem, svid.key.pem());
        let roots = Self::read(&self.roots_pem);
        let channel = Self::channel(&self.addr, &self.server_name, &roots, Some(&identity))?;
        Self::write(&self.identity, Some(identity));
        Self::write(&self.channel, channel);
        Ok(())
    }

    fn set_trust(&self, bundle_pem: &str) -> Result<(), String> {
        // --ca-root first, then the published roots it does not already hold.
        let mut roots = self.configured_roots.clone();
        let configured: Vec<_> = CertificateDer::pem_slice_iter(self.configured_roots.as_bytes())
            .filter_map(Result::ok)
            .collect();
        for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("the CA's bundle: {e}"))?;
            if !configured.contains(&cert) {
                if !roots.ends_with('\n') {
                    roots.push('\n');
                }
                roots.push_str(&warden_common::files::pem_encode("CERTIFICATE", &cert));
            }
        }
        if roots == Self::read(&self.roots_pem) {
            return Ok(());
        }
        let identity = Self::read(&self.identity);
        let channel = Self::channel(&self.addr, &self.server_name, &roots, identity.as_ref())?;
        let anonymous = Self::channel(&self.addr, &self.server_name, &roots, None)?;
        Self::write(&self.channel, channel);
        Self::write(&self.anonymous, anonymous);
        Self::write(&self.roots_pem, roots);
        tracing::info!("connections to the CA trust its published roots from now on");
        Ok(())
    }
}

/// Test support: an in-process CA for the node's and the manager's unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod fake {
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use warden_common::testing::TestCa;
    use warden_proto::warden_ca::NodeEntry;

    use super::*;
    use crate::clock::test_support::TokioClock;
    use crate::clock::{Clock, Timing};
    use crate::rotation::Backoff;
    use crate::svid::test_support::AgentCa;

    /// How far the real CA backdates `notBefore` for clock skew.
    const BACKDATE: Duration = Duration::from_secs(120);

    /// When the fake CA's clock starts: a whole second, as certificates keep seconds.
    pub fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// `secs` seconds after [`t0`].
    pub fn at(secs: u64) -> SystemTime {
        t0() + Duration::from_secs(secs)
    }

    /// One CreateCertificate call as the fake CA saw it.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Call {
        /// When, on the test clock.
        pub at: SystemTime,
        /// The identity issued; `None` when the call failed.
        pub issued: Option<SpiffeId>,
        /// The ImpersonatedIdentity asked for.
        pub impersonate: Option<SpiffeId>,
        /// The bearer token sent.
        pub bearer: Option<String>,
    }

    #[derive(Debug, Default)]
    struct Inner {
        down: bool,
        /// Answer RESOURCE_EXHAUSTED with this retry pushback.
        busy: Option<Duration>,
        entries: Vec<NodeEntry>,
        /// The client certificate presented ([`CertificateAuthority::set_identity`]):
        /// its identity and `notAfter`.
        client: Option<(SpiffeId, SystemTime)>,
        calls: Vec<Call>,
    }

    /// A CA that signs CSRs with a [`TestCa`] for `ttl` from the test clock (with
    /// `notBefore` backdated as the real CA does), answers Unavailable while
    /// [`FakeCa::set_down`], and, like a TLS handshake, refuses a node whose client
    /// certificate has expired.
    #[derive(Debug)]
    pub struct FakeCa {
        ca: TestCa,
        clock: Arc<dyn Clock>,
        inner: Mutex<Inner>,
    }

    impl FakeCa {
        /// A CA that is up, with no entries, on a clock that reads [`t0`] now and
        /// moves with tokio's (paused) clock.
        pub fn new() -> Self {
            Self {
                ca: TestCa::new(),
                clock: Arc::new(TokioClock::starting_at(t0())),
                inner: Mutex::new(Inner::default()),
            }
        }

        /// Timing for the node and the manager under test: the CA's clock, and
        /// backoff without jitter (every delay is its ceiling).
        pub fn timing(&self) -> Timing {
            Timing {
                clock: self.clock.clone(),
                backoff: Backoff::CA_REQUEST,
                jitter: || 1.0,
            }
        }

        /// Takes the CA down (every call fails Unavailable) or brings it back.
        pub fn set_down(&self, down: bool) {
            self.inner.lock().unwrap().down = down;
        }

        /// Makes every call fail RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms` (as
        /// the CA at its limits), or stops that.
        pub fn set_busy(&self, pushback: Option<Duration>) {
            self.inner.lock().unwrap().busy = pushback;
        }

        /// Registers an entry for the node.
        pub fn add_entry(&self, id: &str, spiffe_id: &str, selectors: &[&str]) {
            self.inner.lock().unwrap().entries.push(NodeEntry {
                id: id.into(),
                spiffe_id: spiffe_id.into(),
                selectors: selectors.iter().map(|s| s.to_string()).collect(),
                created_at: 0,
            });
        }

        /// Every CreateCertificate call so far.
        pub fn calls(&self) -> Vec<Call> {
            self.inner.lock().unwrap().calls.clone()
        }

        /// When the CreateCertificate calls that issued (`true`) or failed (`false`)
        /// came, in milliseconds after [`t0`].
        pub fn call_times(&self, issued: bool) -> Vec<u64> {
            let ms = |t: SystemTime| t.duration_since(t0()).unwrap().as_millis();
            self.calls()
                .iter()
                .filter(|c| c.issued.is_some() == issued)
                .map(|c| u64::try_from(ms(c.at)).unwrap())
                .collect()
        }

        /// The client certificate presented last: identity and `notAfter`.
        pub fn client(&self) -> Option<(SpiffeId, SystemTime)> {
            self.inner.lock().unwrap().client.clone()
        }

        /// Unavailable while down, or when the client certificate has expired (a
        /// handshake failure, as the real channel reports it).
        fn reachable(&self, inner: &Inner) -> Result<(), CaError> {
            if inner.down {
                return Err(Status::unavailable("connection refused (fake CA down)").into());
            }
            if let Some(pushback) = inner.busy {
                let mut s = Status::resource_exhausted("the CA is at its concurrent request limit");
                s.metadata_mut().insert(
                    RETRY_PUSHBACK,
                    pushback.as_millis().to_string().parse().unwrap(),
                );
                return Err(s.into());
            }
            if let Some((_, not_after)) = &inner.client
                && self.clock.now() >= *not_after
            {
                return Err(Status::unavailable("tls: the client certificate has expired").into());
            }
            Ok(())
        }
    }

    #[tonic::async_trait]
    impl CertificateAuthority for FakeCa {
        async fn create_certificate(
            &self,
            csr: String,
            ttl: Duration,
            impersonate: Option<&SpiffeId>,
            bearer: Option<&str>,
        ) -> Result<Vec<String>, CaError> {
            let now = self.clock.now();
            let mut inner = self.inner.lock().unwrap();
            let csr_id = rcgen::CertificateSigningRequestParams::from_pem(&csr)
                .unwrap()
                .params
                .subject_alt_names
                .iter()
                .find_map(|san| match san {
                    rcgen::SanType::URI(uri) => SpiffeId::parse(uri.as_str()).ok(),
                    _ => None,
                });
            let id = impersonate
                .cloned()
                .or(csr_id)
                .or_else(|| inner.client.as_ref().map(|(id, _)| id.clone()));
            // A call with a token goes without the client certificate (CaClient).
            let reachable = match bearer {
                Some(_) if inner.down => {
                    Err(Status::unavailable("connection refused (fake CA down)").into())
                }
                Some(_) => Ok(()),
                None => self.reachable(&inner),
            };
            let answer = reachable.and_then(|()| {
                let id = id.ok_or_else(|| {
                    CaError::from(Status::invalid_argument("no identity to issue"))
                })?;
                let pem = self.ca.sign_csr(&csr, &id, now - BACKDATE, now + ttl);
                Ok((id, pem))
            });
            inner.calls.push(Call {
                at: now,
                issued: answer.as_ref().ok().map(|(id, _)| id.clone()),
                impersonate: impersonate.cloned(),
                bearer: bearer.map(String::from),
            });
            answer.map(|(_, pem)| pem)
        }

        async fn list_entries(
            &self,
            _bearer: Option<&str>,
        ) -> Result<ListNodeEntriesResponse, CaError> {
            let inner = self.inner.lock().unwrap();
            self.reachable(&inner)?;
            Ok(ListNodeEntriesResponse {
                node_id: String::new(),
                entries: inner.entries.clone(),
            })
        }

        async fn mint_jwt(
            &self,
            _id: Option<&SpiffeId>,
            _audience: Vec<String>,
            _bearer: Option<&str>,
        ) -> Result<MintJwtSvidResponse, CaError> {
            Err(Status::unimplemented("the fake CA mints no JWT-SVIDs").into())
        }

        async fn jwt_bundle(&self, _bearer: Option<&str>) -> Result<GetJwtBundleResponse, CaError> {
            let inner = self.inner.lock().unwrap();
            self.reachable(&inner)?;
            Ok(GetJwtBundleResponse {
                trust_domain: "cluster.local".into(),
                jwks_json: r#"{"keys":[]}"#.into(),
                ..Default::default()
            })
        }

        fn set_identity(&self, svid: &Svid) -> Result<(), String> {
            self.inner.lock().unwrap().client = Some((svid.id.clone(), svid.not_after));
            Ok(())
        }
    }
}
