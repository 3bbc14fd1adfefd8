//! The certificate service, `istio.v1.auth.IstioCertificateService/CreateCertificate`:
//! authenticate, authorize,
//! check the CSR, sign, record durably, answer. Every refusal is audited with its reason
//! and answered with a gRPC status naming what was wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost_types::value::Kind;
use tonic::{Request, Response, Status};

use warden_proto::istio_ca::istio_certificate_service_server::IstioCertificateService;
use warden_proto::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};
use warden_proto::{IMPERSONATED_IDENTITY, SpiffeId};

use crate::auth::request::{audit_denial, authenticate};
use crate::auth::{AuthMethod, Authenticator, Caller};
use crate::monitoring::Metrics;
use crate::pki::requested_ttl;
use crate::pki::{AuthorityHandle, csr};
use crate::store::{AuditEvent, CertRecord, Op, Outcome, Store};

/// The certificate service's shared state.
#[derive(Debug)]
pub struct CertificateService {
    authority: AuthorityHandle,
    auth: Arc<Authenticator>,
    store: Store,
    metrics: Arc<Metrics>,
    default_ttl: Duration,
    max_ttl: Duration,
    limits: Arc<crate::limits::Limits>,
    revoked: Option<Arc<crate::revocation::RevokedSet>>,
}

/// A refusal: the status for the caller and the audit details.
pub(crate) struct Denial {
    pub(crate) status: Status,
    /// `error` label for `citadel_server_csr_sign_err_count`.
    pub(crate) label: &'static str,
    /// The identity the request concerned, when known.
    identity: String,
    /// Whether the refusal still needs an audit row (the store writes its own for
    /// join-token races, and cannot write one when it is the thing that failed).
    audit: bool,
}

impl Denial {
    fn new(status: Status, label: &'static str, identity: impl Into<String>) -> Self {
        Self {
            status,
            label,
            identity: identity.into(),
            audit: true,
        }
    }

    fn unaudited(self) -> Self {
        Self {
            audit: false,
            ..self
        }
    }
}

impl CertificateService {
    /// Builds the service.
    pub fn new(
        authority: AuthorityHandle,
        auth: Arc<Authenticator>,
        store: Store,
        metrics: Arc<Metrics>,
        default_ttl: Duration,
        max_ttl: Duration,
        limits: Arc<crate::limits::Limits>,
    ) -> Self {
        Self {
            authority,
            auth,
            store,
            metrics,
            default_ttl,
            max_ttl,
            limits,
            revoked: None,
        }
    }

    /// Refuses to issue for identities revoked in `revoked`.
    #[must_use]
    pub fn with_revoked(mut self, revoked: Arc<crate::revocation::RevokedSet>) -> Self {
        self.revoked = Some(revoked);
        self
    }

    async fn handle(
        &self,
        caller: &Caller,
        req: &IstioCertificateRequest,
        peer: &str,
    ) -> Result<Vec<String>, Denial> {
        let impersonated = impersonated(req, &caller.id)?;
        if caller.method == AuthMethod::JoinToken && impersonated.is_some() {
            return Err(Denial::new(
                Status::permission_denied(format!(
                    "a join token proves only the node's own identity {}; obtain the node SVID first and impersonate over mTLS",
                    caller.id
                )),
                "impersonation",
                caller.id.as_str(),
            ));
        }
        // The node's and the identity's rate, before any costlier check. The node is the
        // one the caller proves; a caller without one is its own key.
        let node = caller
            .id
            .node_name()
            .map(str::to_string)
            .or_else(|| caller.pod.as_ref().and_then(|p| p.node.clone()))
            .unwrap_or_else(|| caller.id.to_string());
        let wanted = impersonated.unwrap_or(caller.id.as_str());
        self.limits.charge(&node, wanted).map_err(|r| {
            self.metrics.rate_limited(r.limit);
            // Counted, not audited: a flood must not grow the audit log.
            Denial::new(r.status(), "rate_limited", wanted).unaudited()
        })?;
        let identity: SpiffeId = match impersonated {
            None => caller.id.clone(),
            Some(s) => self
                .auth
                .authorize_impersonation(caller, s)
                .await
                .map_err(|e| {
                    let status = if e.is_unavailable() {
                        Status::unavailable(e.to_string())
                    } else {
                        Status::permission_denied(e.to_string())
                    };
                    Denial::new(status, "impersonation", s)
                })?,
        };
        let sign_start = Instant::now();
        let (ttl, checked) = check_request(
            req,
            &identity,
            self.revoked.as_deref(),
            &self.metrics,
            self.default_ttl,
            self.max_ttl,
        )?;
        // One authority for the whole request: the leaf and its chain agree even when
        // the authority is replaced meanwhile.
        let authority = self.authority.current();
        let cert = authority
            .sign_svid(&checked.spki_der, checked.key, &identity, ttl)
            .map_err(|e| {
                tracing::error!(error = %e, %identity, "signing failed");
                Denial::new(Status::internal(e.to_string()), "sign", identity.as_str())
            })?;
        self.metrics.sign_duration.observe(sign_start.elapsed());

        let event = AuditEvent {
            event: "cert.issued",
            outcome: "issued",
            identity: identity.to_string(),
            requester: caller.id.to_string(),
            peer_addr: peer.to_string(),
            detail: serde_json::json!({
                "serial": cert.serial_hex,
                "not_before": cert.not_before.unix_timestamp(),
                "not_after": cert.not_after.unix_timestamp(),
                "fingerprint_sha256": cert.fingerprint_hex,
                "auth": caller.method.as_str(),
                "impersonated": identity != caller.id,
            }),
        };
        let record = CertRecord {
            serial: cert.serial_hex.clone(),
            spiffe_id: identity.to_string(),
            not_before: cert.not_before.unix_timestamp(),
            not_after: cert.not_after.unix_timestamp(),
            fingerprint: cert.fingerprint_hex.clone(),
            requester: caller.id.to_string(),
            node: caller.id.node_name().map(str::to_string),
            peer_addr: peer.to_string(),
            authority: authority.key_id().to_string(),
        };
        let op = Op::Issue {
            cert: record,
            event,
            consume_token: caller.join_token_hash.clone(),
        };
        match self.store.apply(op).await {
            Ok(Outcome::Done) => {}
            Ok(_) => {
                // The join token was spent by a concurrent request; the store recorded
                // the denial in the same transaction. The certificate is discarded.
                return Err(Denial::new(
                    Status::unauthenticated("the join token is unknown, already used, or expired"),
                    "join_token",
                    identity.as_str(),
                )
                .unaudited());
            }
            Err(e) => {
                self.metrics
                    .store_failure_count
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, %identity, "cannot record issuance; refusing");
                return Err(Denial::new(
                    Status::unavailable(format!(
                        "the CA could not record the issuance durably, so no certificate was issued: {e}"
                    )),
                    "store",
                    identity.as_str(),
                )
                .unaudited());
            }
        }
        tracing::info!(
            %identity,
            requester = %caller.id,
            serial = %cert.serial_hex,
            not_after = cert.not_after.unix_timestamp(),
            peer,
            "certificate issued"
        );
        Ok(authority.response_chain(cert.pem))
    }
}

/// The identity a request asks for other than the caller's own: metadata
/// `ImpersonatedIdentity`, unless it is empty or the caller's own ID. Reads the request
/// alone (the `create_certificate` fuzz target runs it).
pub(crate) fn impersonated<'a>(
    req: &'a IstioCertificateRequest,
    caller: &SpiffeId,
) -> Result<Option<&'a str>, Denial> {
    match req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
        .map(|v| &v.kind)
    {
        None => Ok(None),
        Some(Some(Kind::StringValue(s))) if s.is_empty() || s == caller.as_str() => Ok(None),
        Some(Some(Kind::StringValue(s))) => Ok(Some(s.as_str())),
        Some(_) => Err(Denial::new(
            Status::invalid_argument("metadata ImpersonatedIdentity must be a string SPIFFE ID"),
            "impersonation",
            "",
        )),
    }
}

/// The checks of a request's own content once the identity it gets is settled, in
/// order: metadata `CertSigner`, revocation, the requested lifetime, the CSR (decoded,
/// then checked against `identity`). No store, no network (the `create_certificate`
/// fuzz target runs them). Returns the lifetime to sign for and the checked CSR.
pub(crate) fn check_request(
    req: &IstioCertificateRequest,
    identity: &SpiffeId,
    revoked: Option<&crate::revocation::RevokedSet>,
    metrics: &Metrics,
    default_ttl: Duration,
    max_ttl: Duration,
) -> Result<(Duration, csr::CheckedCsr), Denial> {
    if let Some(signer) = req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("CertSigner"))
    {
        let name = match &signer.kind {
            Some(Kind::StringValue(s)) => s.clone(),
            _ => String::new(),
        };
        if !name.is_empty() {
            return Err(Denial::new(
                Status::invalid_argument(format!(
                    "metadata CertSigner {name:?} is not supported: this CA signs with its own chain only"
                )),
                "cert_signer",
                identity.as_str(),
            ));
        }
    }
    if let Some(revoked) = revoked
        && revoked.identity(identity.as_str())
    {
        return Err(Denial::new(
            Status::permission_denied(format!(
                "{identity} is revoked; `warden cert unrevoke --spiffe-id {identity}` lifts it"
            )),
            "revoked",
            identity.as_str(),
        ));
    }
    let ttl = requested_ttl(req.validity_duration, default_ttl, max_ttl, "")
        .map_err(|msg| Denial::new(Status::invalid_argument(msg), "ttl", identity.as_str()))?;
    let der = csr::decode_pem(&req.csr).map_err(|e| {
        metrics
            .csr_parsing_err_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Denial::new(
            Status::invalid_argument(e.to_string()),
            e.metric_label(),
            identity.as_str(),
        )
    })?;
    let checked = csr::check(&der, identity).map_err(|e| {
        Denial::new(
            Status::invalid_argument(e.to_string()),
            e.metric_label(),
            identity.as_str(),
        )
    })?;
    Ok((ttl, checked))
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let start = Instant::now();
        self.metrics.csr_count.fetch_add(1, Relaxed);
        // A slot among the requests worked on at once, or RESOURCE_EXHAUSTED with a
        // retry hint: a burst waits in a bounded queue, never without bound.
        let _slot = self.limits.slot().await.map_err(|r| {
            self.metrics.rate_limited(r.limit);
            r.status()
        })?;
        let (caller, peer) = authenticate(
            &self.auth,
            &self.store,
            &self.metrics,
            &request,
            "cert.denied",
        )
        .await?;
        let result = self.handle(&caller, request.get_ref(), &peer).await;
        self.metrics.request_duration.observe(start.elapsed());
        match result {
            Ok(chain) => {
                self.metrics
                    .success_cert_issuance_count
                    .fetch_add(1, Relaxed);
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: chain,
                }))
            }
            Err(denial) => {
                let reason = denial.status.message().to_string();
                tracing::warn!(
                    peer,
                    caller = %caller.id,
                    identity = %denial.identity,
                    reason,
                    "request denied"
                );
                self.metrics.sign_error(denial.label);
                if denial.audit {
                    audit_denial(
                        &self.store,
                        &self.metrics,
                        "cert.denied",
                        denial.identity,
                        caller.id.to_string(),
                        &peer,
                        &reason,
                    )
                    .await;
                }
                Err(denial.status)
            }
        }
    }
}
