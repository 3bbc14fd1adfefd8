//! `warden.ca.v1.JwtSvidService`: JWT-SVIDs for authenticated callers, with the same
//! authentication and node authorization as CreateCertificate, audited the same way
//! (`jwt.issued`, `jwt.denied`), and the JWT bundle that verifies them.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use warden_proto::SpiffeId;
use warden_proto::warden_ca::jwt_svid_service_server::JwtSvidService;
use warden_proto::warden_ca::{
    FederatedBundle, GetJwtBundleRequest, GetJwtBundleResponse, MintJwtSvidRequest,
    MintJwtSvidResponse,
};

use crate::auth::request::{audit_denial, authenticate};
use crate::auth::{AuthMethod, Authenticator};
use crate::monitoring::Metrics;
use crate::pki::JwtSigner;
use crate::pki::requested_ttl;
use crate::store::{AuditEvent, Store};

/// Most audiences one token may carry.
const MAX_AUDIENCES: usize = 16;
/// Longest audience value.
const MAX_AUDIENCE_LEN: usize = 256;

/// The JWT-SVID service.
#[derive(Debug)]
pub struct JwtService {
    signer: Arc<JwtSigner>,
    auth: Arc<Authenticator>,
    store: Store,
    metrics: Arc<Metrics>,
    trust_domain: String,
    default_ttl: Duration,
    max_ttl: Duration,
    /// The X.509 authority, whose bundle and tainted authorities go with the JWT bundle.
    authority: Option<crate::pki::AuthorityHandle>,
    /// The CRLs, which go with it too.
    revocations: Option<Arc<crate::revocation::Revocations>>,
    /// The federated trust domains' bundles, which go with it too.
    federation: Option<Arc<crate::federation::Federation>>,
    /// Bounds the open WatchJwtBundle streams.
    watchers: Arc<tokio::sync::Semaphore>,
}

/// Most WatchJwtBundle streams open at once (one per agent).
const MAX_WATCHERS: usize = 16_384;

/// The parts of the bundle answer, for a watch task.
struct BundleSource {
    signer: Arc<JwtSigner>,
    trust_domain: String,
    authority: Option<crate::pki::AuthorityHandle>,
    revocations: Option<Arc<crate::revocation::Revocations>>,
    federation: Option<Arc<crate::federation::Federation>>,
}

impl BundleSource {
    fn bundle_response(&self) -> GetJwtBundleResponse {
        let (x509_roots_pem, tainted_authorities) = match &self.authority {
            Some(handle) => {
                let a = handle.current();
                (a.roots_pem().to_string(), a.tainted().to_vec())
            }
            None => (String::new(), Vec::new()),
        };
        GetJwtBundleResponse {
            trust_domain: self.trust_domain.clone(),
            jwks_json: self.signer.jwks_json().to_string(),
            x509_roots_pem,
            tainted_authorities,
            crl_pem: self
                .revocations
                .as_ref()
                .map(|r| r.crl_pem().to_string())
                .unwrap_or_default(),
            federated_bundles: self
                .federation
                .as_ref()
                .map(|f| {
                    f.bundles()
                        .values()
                        .map(|b| FederatedBundle {
                            trust_domain: b.trust_domain.clone(),
                            x509_roots_pem: b.roots_pem(),
                            jwks_json: b.jwks_json(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Waits for a change of an optional watch; pending forever without one.
async fn changed<T>(rx: &mut Option<tokio::sync::watch::Receiver<T>>) -> Result<(), ()> {
    match rx {
        Some(rx) => rx.changed().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

impl JwtService {
    /// Builds the service.
    pub fn new(
        signer: Arc<JwtSigner>,
        auth: Arc<Authenticator>,
        store: Store,
        metrics: Arc<Metrics>,
        trust_domain: String,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> Self {
        Self {
            signer,
            auth,
            store,
            metrics,
            trust_domain,
            default_ttl,
            max_ttl,
            authority: None,
            revocations: None,
            federation: None,
            watchers: Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS)),
        }
    }

    /// The GetJwtBundle answer now.
    fn bundle_response(&self) -> GetJwtBundleResponse {
        self.clone_for_watch().bundle_response()
    }

    /// What a watch task needs of the service.
    fn clone_for_watch(&self) -> BundleSource {
        BundleSource {
            signer: self.signer.clone(),
            trust_domain: self.trust_domain.clone(),
            authority: self.authority.clone(),
            revocations: self.revocations.clone(),
            federation: self.federation.clone(),
        }
    }

    /// Answers GetJwtBundle with the federated trust domains' bundles too.
    #[must_use]
    pub fn with_federation(
        mut self,
        federation: Option<Arc<crate::federation::Federation>>,
    ) -> Self {
        self.federation = federation;
        self
    }

    /// Answers GetJwtBundle with `revocations`' CRLs too.
    #[must_use]
    pub fn with_revocations(mut self, revocations: Arc<crate::revocation::Revocations>) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Answers GetJwtBundle with `authority`'s X.509 bundle and tainted authorities too.
    #[must_use]
    pub fn with_authority(mut self, authority: crate::pki::AuthorityHandle) -> Self {
        self.authority = Some(authority);
        self
    }

    /// Audits and logs a refusal, then returns it.
    async fn deny<T>(
        &self,
        caller: &SpiffeId,
        peer: &str,
        status: Status,
        identity: String,
    ) -> Result<T, Status> {
        tracing::warn!(peer, %caller, identity, reason = status.message(), "JWT-SVID request denied");
        audit_denial(
            &self.store,
            &self.metrics,
            "jwt.denied",
            identity,
            caller.to_string(),
            peer,
            status.message(),
        )
        .await;
        Err(status)
    }

    fn check_request(&self, r: &MintJwtSvidRequest) -> Result<Duration, Status> {
        if r.audience.is_empty() {
            return Err(Status::invalid_argument(
                "at least one audience is required",
            ));
        }
        if r.audience.len() > MAX_AUDIENCES {
            return Err(Status::invalid_argument(format!(
                "{} audiences requested; at most {MAX_AUDIENCES} are allowed",
                r.audience.len()
            )));
        }
        if let Some(bad) = r
            .audience
            .iter()
            .find(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
        {
            return Err(Status::invalid_argument(format!(
                "audience {bad:?} is invalid: expected 1 to {MAX_AUDIENCE_LEN} characters"
            )));
        }
        requested_ttl(r.ttl_seconds, self.default_ttl, self.max_ttl, "JWT-SVID ")
            .map_err(Status::invalid_argument)
    }
}

#[tonic::async_trait]
impl JwtSvidService for JwtService {
    async fn mint_jwt_svid(
        &self,
        request: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let (caller, peer) = authenticate(
            &self.auth,
            &self.store,
            &self.metrics,
            &request,
            "jwt.denied",
        )
        .await?;
        let r = request.get_ref();
        let identity: SpiffeId = if r.spiffe_id.is_empty() || r.spiffe_id == caller.id.as_str() {
            caller.id.clone()
        } else {
            match self
                .auth
                .authorize_impersonation(&caller, &r.spiffe_id)
                .await
            {
                Ok(id) => id,
                Err(e) if e.is_unavailable() => {
                    return Err(Status::unavailable(e.to_string()));
                }
                Err(e) => {
                    return self
                        .deny(
                            &caller.id,
                            &peer,
                            Status::permission_denied(e.to_string()),
                            r.spiffe_id.clone(),
                        )
                        .await;
                }
            }
        };
        if caller.method == AuthMethod::JoinToken {
            return self.deny(
                &caller.id,
                &peer,
                Status::permission_denied(
                    "a join token obtains only the node's X.509-SVID; mint JWT-SVIDs over mTLS with it",
                ),
                identity.to_string(),
            )
            .await;
        }
        let ttl = match self.check_request(r) {
            Ok(t) => t,
            Err(status) => {
                return self
                    .deny(&caller.id, &peer, status, identity.to_string())
                    .await;
            }
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (token, expires_at) = self
            .signer
            .mint(&identity, &r.audience, ttl, now)
            .map_err(|e| Status::internal(e.to_string()))?;
        let event = AuditEvent {
            event: "jwt.issued",
            outcome: "issued",
            identity: identity.to_string(),
            requester: caller.id.to_string(),
            peer_addr: peer.clone(),
            detail: serde_json::json!({
                "audience": r.audience,
                "expires_at": expires_at,
                "kid": self.signer.kid(),
                "auth": caller.method.as_str(),
                "impersonated": identity != caller.id,
            }),
        };
        // Recorded before the token is handed out; no record, no token.
        if let Err(e) = self.store.audit(event).await {
            self.metrics
                .store_failure_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Status::unavailable(format!(
                "the CA could not record the issuance durably, so no JWT-SVID was issued: {e}"
            )));
        }
        self.metrics
            .jwt_svid_issuance_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%identity, requester = %caller.id, audience = ?r.audience, expires_at, peer, "JWT-SVID issued");
        Ok(Response::new(MintJwtSvidResponse {
            token,
            spiffe_id: identity.to_string(),
            expires_at,
        }))
    }

    async fn get_jwt_bundle(
        &self,
        _request: Request<GetJwtBundleRequest>,
    ) -> Result<Response<GetJwtBundleResponse>, Status> {
        // The bundle is public: anyone who can reach the CA may read it.
        Ok(Response::new(self.bundle_response()))
    }

    type WatchJwtBundleStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<GetJwtBundleResponse, Status>> + Send + 'static>,
    >;

    async fn watch_jwt_bundle(
        &self,
        request: Request<GetJwtBundleRequest>,
    ) -> Result<Response<Self::WatchJwtBundleStream>, Status> {
        // A stream holds a task: only authenticated callers (agents), and a bounded
        // number of them.
        let (caller, peer) = authenticate(
            &self.auth,
            &self.store,
            &self.metrics,
            &request,
            "bundle.denied",
        )
        .await?;
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_WATCHERS} bundle watches are open; poll GetJwtBundle instead"
            ))
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut authority = self.authority.as_ref().map(|a| a.subscribe());
        let mut crls = self.revocations.as_ref().map(|r| r.subscribe());
        let mut federated = self.federation.as_ref().map(|f| f.subscribe());
        let this = self.clone_for_watch();
        tokio::spawn(async move {
            let _permit = permit;
            let mut last: Option<GetJwtBundleResponse> = None;
            loop {
                let now = this.bundle_response();
                if last.as_ref() != Some(&now) {
                    if tx.send(Ok(now.clone())).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    r = changed(&mut authority) => if r.is_err() { return },
                    r = changed(&mut crls) => if r.is_err() { return },
                    r = changed(&mut federated) => if r.is_err() { return },
                    () = tx.closed() => {
                        tracing::debug!(caller = %caller.id, %peer, "bundle watch closed");
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
