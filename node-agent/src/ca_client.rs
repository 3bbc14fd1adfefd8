//! The agent's client of the CA: Istio's CreateCertificate, and Warden's JWT-SVID and
//! node-entry services, over TLS verified against `--ca-root`. The node SVID, when the
//! node has one, is the TLS client certificate; the channel is rebuilt when it rotates.
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
}

impl From<Status> for CaError {
    fn from(s: Status) -> Self {
        let message = if s.code() == Code::Unavailable || s.code() == Code::Unknown {
            format!("the CA is unreachable: {}", s.message())
        } else {
            format!("the CA refused ({:?}): {}", s.code(), s.message())
        };
        Self {
            code: s.code(),
            message,
        }
    }
}

impl CaError {
    fn local(message: impl Into<String>) -> Self {
        Self {
            code: Code::Internal,
            message: message.into(),
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

    /// Presents `svid` as the node's client certificate from now on (new connections).
    fn set_identity(&self, svid: &Svid) -> Result<(), String>;
}

/// Client of the CA.
#[derive(Debug)]
pub struct CaClient {
    addr: String,
    server_name: String,
    roots_pem: String,
    channel: RwLock<Channel>,
}

impl CaClient {
    /// A client with no client certificate yet. Connects lazily, so the agent starts
    /// (and serves what it has) while the CA is down.
    pub fn new(addr: &str, server_name: &str, roots_pem: String) -> Result<Self, String> {
        let channel = Self::channel(addr, server_name, &roots_pem, None)?;
        Ok(Self {
            addr: addr.to_string(),
            server_name: server_name.to_string(),
            roots_pem,
            channel: RwLock::new(channel),
        })
    }

    fn channel(
        addr: &str,
        server_name: &str,
        roots_pem: &str,
        identity: Option<&Svid>,
    ) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots_pem))
            .domain_name(server_name);
        if let Some(svid) = identity {
            tls = tls.identity(Identity::from_pem(&svid.chain_pem, svid.key.pem()));
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

    fn current(&self) -> Channel {
        match self.channel.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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
        let resp = IstioCertificateServiceClient::new(self.current())
            .create_certificate(req)
            .await?;
        Ok(resp.into_inner().cert_chain)
    }

    async fn list_entries(&self, bearer: Option<&str>) -> Result<ListNodeEntriesResponse, CaError> {
        let req = Self::request(ListNodeEntriesRequest {}, bearer)?;
        Ok(NodeServiceClient::new(self.current())
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
        Ok(JwtSvidServiceClient::new(self.current())
            .mint_jwt_svid(req)
            .await?
            .into_inner())
    }

    async fn jwt_bundle(&self, bearer: Option<&str>) -> Result<GetJwtBundleResponse, CaError> {
        let req = Self::request(GetJwtBundleRequest {}, bearer)?;
        Ok(JwtSvidServiceClient::new(self.current())
            .get_jwt_bundle(req)
            .await?
            .into_inner())
    }

    fn set_identity(&self, svid: &Svid) -> Result<(), String> {
        let channel = Self::channel(&self.addr, &self.server_name, &self.roots_pem, Some(svid))?;
        if let Ok(mut c) = self.channel.write() {
            *c = channel;
        }
        Ok(())
    }
}
