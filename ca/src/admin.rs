//! The admin API on `<data-dir>/admin.sock` (mode 0600): registration entries, join
//! tokens and the audit log, for the `warden` CLI. Access is by file permission on the
//! socket; each call is attributed to the caller's uid in the audit log.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use ring::rand::SecureRandom;
use tonic::{Request, Response, Status};

use warden_proto::SpiffeId;
use warden_proto::admin::admin_server::Admin;
use warden_proto::admin::{
    ActivateAuthorityRequest, AuthorityInfo, AuthorityStepResponse, ListAuthoritiesRequest,
    ListAuthoritiesResponse, PrepareAuthorityRequest, RevokeAuthorityRequest,
    TaintAuthorityRequest,
};
use warden_proto::admin::{
    AuditCheckpoint, CreateCheckpointRequest, PruneAuditRequest, PruneAuditResponse,
};
use warden_proto::admin::{
    AuditRecord, CreateEntryRequest, CreateJoinTokenRequest, CreateJoinTokenResponse,
    DeleteEntryRequest, DeleteEntryResponse, Entry, ListAuditRequest, ListEntriesRequest,
    ListEntriesResponse, Selector, SignIntermediateRequest, SignIntermediateResponse,
    VerifyAuditRequest, VerifyAuditResponse,
};
use warden_proto::admin::{
    RevokeCertificateRequest, RevokeCertificateResponse, UnrevokeIdentityRequest,
    UnrevokeIdentityResponse,
};

use crate::auth::{JOIN_TOKEN_PREFIX, join_token_hash};
use crate::checkpoint::{AuditSigner, CheckpointFailure};
use crate::pki::{AuthorityHandle, csr};
use crate::store::{AuditEvent, AuditFilter, EntryRecord, Op, Outcome, Store, TokenRecord};

/// Default lifetime of an intermediate CA certificate.
const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Longest intermediate lifetime accepted (istiod's self-signed root lives 10 years).
const MAX_INTERMEDIATE_TTL: Duration = Duration::from_secs(3650 * 86_400);

/// Longest join-token lifetime accepted.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    store: Store,
    trust_domain: String,
    default_token_ttl: Duration,
    authority: AuthorityHandle,
    signer: std::sync::Arc<AuditSigner>,
    /// Own-root CAs: the authority set `warden ca authority` changes.
    rotation: Option<std::sync::Arc<crate::rotation::Rotation>>,
    /// The CRLs, re-signed after a revocation.
    revocations: Option<std::sync::Arc<crate::revocation::Revocations>>,
}

impl AdminService {
    /// Builds the service.
    pub fn new(
        store: Store,
        trust_domain: String,
        default_token_ttl: Duration,
        authority: AuthorityHandle,
        signer: std::sync::Arc<AuditSigner>,
    ) -> Self {
        Self {
            store,
            trust_domain,
            default_token_ttl,
            authority,
            signer,
            rotation: None,
            revocations: None,
        }
    }

    /// Re-signs `revocations`' CRLs after each revocation (and entry deletion).
    #[must_use]
    pub fn with_revocations(
        mut self,
        revocations: std::sync::Arc<crate::revocation::Revocations>,
    ) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Publishes a recorded revocation now. The store has it: a failure here is
    /// logged, and the next periodic refresh publishes it.
    async fn republish(&self) {
        if let Some(r) = &self.revocations
            && let Err(e) = r.refresh().await
        {
            tracing::error!(error = %e, "cannot re-sign the CRLs now; the next refresh will");
        }
    }

    /// Enables `warden ca authority` over `rotation`.
    #[must_use]
    pub fn with_rotation(mut self, rotation: std::sync::Arc<crate::rotation::Rotation>) -> Self {
        self.rotation = Some(rotation);
        self
    }

    fn rotation(&self) -> Result<&crate::rotation::Rotation, Status> {
        self.rotation.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this CA's authority is plugged in (--plugin-certs or the cacerts / istio-ca-secret Secret); rotate it by replacing those files or that Secret, not with `warden ca authority`",
            )
        })
    }

    async fn authorities(&self) -> Result<Vec<AuthorityInfo>, Status> {
        Ok(self
            .rotation()?
            .list()
            .await
            .map_err(step_status)?
            .into_iter()
            .map(authority_info)
            .collect())
    }

    async fn step_response(
        &self,
        member: crate::pki::rotation::Member,
    ) -> Result<Response<AuthorityStepResponse>, Status> {
        let authorities = self.authorities().await?;
        let authority = authorities.iter().find(|a| a.id == member.id).cloned();
        Ok(Response::new(AuthorityStepResponse {
            authority: authority.or_else(|| {
                Some(AuthorityInfo {
                    id: member.id,
                    state: "revoked".into(),
                    tainted: member.tainted,
                    ..Default::default()
                })
            }),
            authorities,
        }))
    }
}

fn step_status(e: crate::rotation::StepError) -> Status {
    use crate::pki::rotation::RotationError;
    use crate::rotation::StepError;
    match e {
        StepError::Rotation(RotationError::Refused(m)) => Status::failed_precondition(m),
        StepError::Rotation(e @ RotationError::NotFound(_)) => Status::not_found(e.to_string()),
        StepError::Rotation(RotationError::Pki(e)) => Status::internal(e.to_string()),
        StepError::Store(e) => store_status(e),
    }
}

fn authority_info(s: crate::rotation::Status) -> AuthorityInfo {
    let m = s.info.member;
    AuthorityInfo {
        id: m.id,
        state: m.state.as_str().into(),
        tainted: m.tainted,
        not_before: s.info.not_before,
        not_after: s.info.not_after,
        created_at: m.created_at,
        activated_at: m.activated_at.unwrap_or(0),
        in_use: s.in_use as u64,
        certificate: s.info.cert_pem,
    }
}

/// A cluster name as Istio's cluster IDs are written: 1 to 63 of `[A-Za-z0-9._-]`.
fn valid_cluster(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn requester<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| format!("admin:uid={}", c.uid()))
        .unwrap_or_else(|| "admin".into())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Status> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Status::internal("the system random generator failed"))?;
    Ok(b)
}

/// A random UUID (version 4), as SPIRE names entries.
fn new_uuid() -> Result<String, Status> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Checks one selector and returns its canonical `type:value` form.
pub fn validate_selector(s: &Selector) -> Result<String, String> {
    if !matches!(s.r#type.as_str(), "unix" | "socket" | "k8s") {
        return Err(format!(
            "selector type {:?} is not known: expected unix, socket or k8s",
            s.r#type
        ));
    }
    format!("{}:{}", s.r#type, s.value)
        .parse::<warden_proto::Selector>()
        .map(|sel| sel.to_string())
        .map_err(|e| e.to_string())
}

fn to_proto(e: EntryRecord) -> Entry {
    Entry {
        id: e.id,
        parent_id: e.parent_id,
        spiffe_id: e.spiffe_id,
        selectors: e
            .selectors
            .iter()
            .map(|s| {
                let (t, v) = s.split_once(':').unwrap_or((s.as_str(), ""));
                Selector {
                    r#type: t.to_string(),
                    value: v.to_string(),
                }
            })
            .collect(),
        created_at: e.created_at,
    }
}

fn store_status(e: crate::store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

fn parse_td_id(what: &str, s: &str, td: &str) -> Result<SpiffeId, Status> {
    let id = SpiffeId::parse_workload(s)
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))?;
    if id.trust_domain() != td {
        return Err(Status::invalid_argument(format!(
            "{what}: {id} is not in trust domain {td:?}"
        )));
    }
    Ok(id)
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_entry(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let who = requester(&req);
        let r = req.into_inner();
        let parent = parse_td_id("parent-id", &r.parent_id, &self.trust_domain)?;
        let spiffe_id = parse_td_id("spiffe-id", &r.spiffe_id, &self.trust_domain)?;
        // `/warden/...` names nodes and the CA itself (its bundle endpoint): an entry
        // for one would hand a workload a node's powers, or let it answer for the CA to
        // a federated trust domain (SPIRE reserves `/spire/` the same way).
        if spiffe_id.path() == "/warden" || spiffe_id.path().starts_with("/warden/") {
            return Err(Status::invalid_argument(format!(
                "spiffe-id: {spiffe_id} is under /warden/, which is reserved for nodes and the CA; choose another path"
            )));
        }
        if r.selectors.is_empty() {
            return Err(Status::invalid_argument(
                "an entry needs at least one selector (e.g. unix:uid:1000, socket:web)",
            ));
        }
        let mut selectors = r
            .selectors
            .iter()
            .map(validate_selector)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        selectors.sort();
        selectors.dedup();
        let entry = EntryRecord {
            id: new_uuid()?,
            parent_id: parent.to_string(),
            spiffe_id: spiffe_id.to_string(),
            selectors,
            created_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        let event = AuditEvent {
            event: "entry.created",
            outcome: "created",
            identity: entry.spiffe_id.clone(),
            requester: who,
            peer_addr: "admin.sock".into(),
            detail: serde_json::json!({
                "entry_id": entry.id,
                "parent_id": entry.parent_id,
                "selectors": entry.selectors,
            }),
        };
        match self
            .store
            .apply(Op::CreateEntry {
                entry: entry.clone(),
                event,
            })
            .await
            .map_err(store_status)?
        {
            Outcome::EntryExists(id) => Err(Status::already_exists(format!(
                "entry {id} already grants {} to {} with the same selectors",
                entry.spiffe_id, entry.parent_id
            ))),
            _ => {
                tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, parent_id = %entry.parent_id, "entry created");
                Ok(Response::new(to_proto(entry)))
            }
        }
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let r = req.into_inner();
        let entries = self
            .store
            .list_entries(
                Some(r.parent_id.as_str()).filter(|s| !s.is_empty()),
                Some(r.spiffe_id.as_str()).filter(|s| !s.is_empty()),
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.into_iter().map(to_proto).collect(),
        }))
    }

    async fn delete_entry(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let who = requester(&req);
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("an entry ID is required"));
        }
        let existing = self.store.get_entry(&id).await.map_err(store_status)?;
        let event = AuditEvent {
            event: "entry.deleted",
            outcome: "deleted",
            identity: existing
                .as_ref()
                .map(|e| e.spiffe_id.clone())
                .unwrap_or_default(),
            requester: who,
            peer_addr: "admin.sock".into(),
            detail: serde_json::json!({
                "entry_id": id,
                "parent_id": existing.as_ref().map(|e| e.parent_id.clone()),
            }),
        };
        match self
            .store
            .apply(Op::DeleteEntry {
                id: id.clone(),
                event,
            })
            .await
            .map_err(store_status)?
        {
            Outcome::EntryNotFound => Err(Status::not_found(format!("no entry has ID {id:?}"))),
            _ => {
                tracing::info!(entry_id = %id, "entry deleted");
                self.republish().await;
                Ok(Response::new(DeleteEntryResponse {}))
            }
        }
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let who = requester(&req);
        let r = req.into_inner();
        let node_id = SpiffeId::for_node(&self.trust_domain, &r.node_name).map_err(|_| {
            Status::invalid_argument(format!(
                "node name {:?} is invalid: expected a non-empty name of [A-Za-z0-9._-]",
                r.node_name
            ))
        })?;
        if r.node_name.contains('/') {
            return Err(Status::invalid_argument("node name must not contain '/'"));
        }
        let ttl = match r.ttl_seconds {
            t if t <= 0 => self.default_token_ttl,
            t => Duration::from_secs(t.unsigned_abs()),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "token TTL {}s is longer than the maximum {}s",
                ttl.as_secs(),
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        let token = format!("{JOIN_TOKEN_PREFIX}{}", hex::encode(random_bytes::<32>()?));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expires_at = now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let hash = join_token_hash(&token);
        let event = AuditEvent {
            event: "token.created",
            outcome: "created",
            identity: node_id.to_string(),
            requester: who,
            peer_addr: "admin.sock".into(),
            // The hash prefix lets an operator match a token's later use; never the token.
            detail: serde_json::json!({ "token_sha256_prefix": &hash[..12], "expires_at": expires_at }),
        };
        self.store
            .apply(Op::CreateToken {
                token: TokenRecord {
                    hash,
                    node_name: r.node_name.clone(),
                    created_at: now,
                    expires_at,
                },
                event,
            })
            .await
            .map_err(store_status)?;
        tracing::info!(node = %r.node_name, expires_at, "join token created");
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            spiffe_id: node_id.to_string(),
            expires_at,
        }))
    }

    type ListAuditStream = AuditStream;

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<Self::ListAuditStream>, Status> {
        let r = req.into_inner();
        let since_nanos = if r.since.is_empty() {
            None
        } else {
            let t = time::OffsetDateTime::parse(
                &r.since,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "since {:?} is not an RFC 3339 time (e.g. 2026-11-21T10:00:00Z): {e}",
                    r.since
                ))
            })?;
            Some(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
        };
        let filter = AuditFilter {
            identity: Some(r.identity).filter(|s| !s.is_empty()),
            outcome: Some(r.outcome).filter(|s| !s.is_empty()),
            since_nanos,
            limit: Some(r.limit).filter(|l| *l > 0),
        };
        let rows = self.store.list_audit(&filter).await.map_err(store_status)?;
        let stream = futures::stream::iter(rows.into_iter().map(|row| {
            let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(row.ts_nanos))
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            Ok(AuditRecord {
                seq: row.seq,
                time,
                event: row.event,
                outcome: row.outcome,
                identity: row.identity,
                requester: row.requester,
                peer_addr: row.peer_addr,
                detail_json: row.detail,
                prev_hash: row.prev_hash,
                hash: row.hash,
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_audit(
        &self,
        req: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        let req = req.into_inner();
        let expect = match (req.checkpoint_seq, req.checkpoint_hash.as_str()) {
            (0, "") => None,
            (seq, hash) if seq > 0 && hash.len() == 64 => Some((seq, hash)),
            _ => {
                return Err(Status::invalid_argument(
                    "checkpoint: expected a row number above 0 and a 64-digit hex hash",
                ));
            }
        };
        let report = self
            .store
            .verify_audit(expect)
            .await
            .map_err(store_status)?;
        let (first_bad_seq, reason) = report.first_bad.unwrap_or((0, String::new()));
        Ok(Response::new(VerifyAuditResponse {
            ok: reason.is_empty(),
            rows_checked: report.rows,
            first_bad_seq,
            reason,
            head_hash: report.head_hash,
            anchor_seq: report.anchor_seq,
            anchor_key_id: report.anchor_key_id,
        }))
    }

    async fn create_checkpoint(
        &self,
        _req: Request<CreateCheckpointRequest>,
    ) -> Result<Response<AuditCheckpoint>, Status> {
        let c = self
            .signer
            .checkpoint(&self.store)
            .await
            .map_err(|e| match e {
                CheckpointFailure::Empty => Status::failed_precondition(e.to_string()),
                CheckpointFailure::Store(e) => store_status(e),
            })?;
        Ok(Response::new(AuditCheckpoint::from(c)))
    }

    async fn prune_audit(
        &self,
        req: Request<PruneAuditRequest>,
    ) -> Result<Response<PruneAuditResponse>, Status> {
        let who = requester(&req);
        let req = req.into_inner();
        match self
            .store
            .checkpoint_at(req.through_seq)
            .await
            .map_err(store_status)?
        {
            Some(c) if c.hash == req.hash => {}
            Some(_) => {
                return Err(Status::failed_precondition(format!(
                    "the checkpoint recorded at row {} has a different hash than the one given; nothing was pruned",
                    req.through_seq
                )));
            }
            None => {
                return Err(Status::failed_precondition(format!(
                    "no checkpoint is recorded at row {}; nothing was pruned",
                    req.through_seq
                )));
            }
        }
        let removed = self
            .store
            .prune_audit(req.through_seq)
            .await
            .map_err(store_status)?
            .map_err(Status::failed_precondition)?;
        let event = AuditEvent {
            event: "audit.pruned",
            outcome: "deleted",
            identity: format!("spiffe://{}", self.trust_domain),
            requester: who,
            peer_addr: "admin.sock".into(),
            detail: serde_json::json!({
                "through_seq": req.through_seq,
                "rows_removed": removed,
                "anchor_hash": req.hash,
            }),
        };
        self.store.audit(event).await.map_err(store_status)?;
        Ok(Response::new(PruneAuditResponse {
            rows_removed: i64::try_from(removed).unwrap_or(i64::MAX),
        }))
    }

    async fn sign_intermediate(
        &self,
        req: Request<SignIntermediateRequest>,
    ) -> Result<Response<SignIntermediateResponse>, Status> {
        let who = requester(&req);
        let req = req.into_inner();
        if !valid_cluster(&req.cluster) {
            return Err(Status::invalid_argument(format!(
                "cluster {:?}: expected 1 to 63 letters, digits, '.', '_' or '-'",
                req.cluster
            )));
        }
        let ttl = crate::pki::requested_ttl(
            req.ttl_seconds,
            DEFAULT_INTERMEDIATE_TTL,
            MAX_INTERMEDIATE_TTL,
            "intermediate ",
        )
        .map_err(Status::invalid_argument)?;
        let checked = csr::decode_pem(&req.csr)
            .and_then(|der| csr::check_key_and_signature(&der))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // One authority snapshot: the certificate and the chain it is sent with agree.
        let authority = self.authority.current();
        let cert = authority
            .sign_intermediate(&checked.spki_der, &req.cluster, &self.trust_domain, ttl)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let event = AuditEvent {
            event: "ca.intermediate",
            outcome: "issued",
            identity: format!("spiffe://{}", self.trust_domain),
            requester: who,
            peer_addr: "admin.sock".into(),
            detail: serde_json::json!({
                "cluster": req.cluster,
                "serial": cert.serial_hex,
                "not_before": cert.not_before.unix_timestamp(),
                "not_after": cert.not_after.unix_timestamp(),
                "fingerprint_sha256": cert.fingerprint_hex,
                "issuer": authority.source(),
            }),
        };
        // Recorded before the certificate leaves the CA.
        self.store.audit(event).await.map_err(store_status)?;
        tracing::info!(cluster = %req.cluster, serial = %cert.serial_hex, not_after = cert.not_after.unix_timestamp(), "intermediate CA issued");
        let mut cert_chain = cert.pem.clone();
        for c in authority.chain_pem() {
            cert_chain.push_str(c);
        }
        Ok(Response::new(SignIntermediateResponse {
            certificate: cert.pem,
            cert_chain,
            root_cert: authority.roots_pem().to_string(),
            serial: cert.serial_hex,
            not_after: cert.not_after.unix_timestamp(),
        }))
    }

    async fn revoke_certificate(
        &self,
        req: Request<RevokeCertificateRequest>,
    ) -> Result<Response<RevokeCertificateResponse>, Status> {
        let who = requester(&req);
        let r = req.into_inner();
        let reason = if r.reason.is_empty() {
            "unspecified".to_string()
        } else {
            r.reason.clone()
        };
        if !crate::pki::authority::REVOCATION_REASONS.contains(&reason.as_str()) {
            return Err(Status::invalid_argument(format!(
                "reason {reason:?}: expected one of {}",
                crate::pki::authority::REVOCATION_REASONS.join(", ")
            )));
        }
        let (serial, spiffe_id, identity) = match (r.serial.trim(), r.spiffe_id.trim()) {
            ("", "") => {
                return Err(Status::invalid_argument(
                    "give a serial or a SPIFFE ID to revoke",
                ));
            }
            (serial, "") => {
                let serial = serial
                    .to_ascii_lowercase()
                    .trim_start_matches("0x")
                    .replace(':', "");
                if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Status::invalid_argument(format!(
                        "serial {:?}: expected hexadecimal digits",
                        r.serial
                    )));
                }
                (Some(serial), None, String::new())
            }
            ("", id) => {
                let id = parse_td_id("spiffe_id", id, &self.trust_domain)?;
                (None, Some(id.to_string()), id.to_string())
            }
            _ => {
                return Err(Status::invalid_argument(
                    "give a serial or a SPIFFE ID, not both",
                ));
            }
        };
        let event = AuditEvent {
            event: "cert.revoked",
            outcome: "revoked",
            identity,
            requester: who,
            peer_addr: "admin.sock".into(),
            detail: serde_json::json!({
                "serial": serial,
                "whole_identity": spiffe_id.is_some(),
                "reason": reason,
            }),
        };
        let outcome = self
            .store
            .apply(Op::Revoke {
                serial: serial.clone(),
                spiffe_id: spiffe_id.clone(),
                reason: reason.clone(),
                event,
            })
            .await
            .map_err(store_status)?;
        match outcome {
            Outcome::CertNotFound => Err(Status::not_found(format!(
                "no certificate with serial {} was issued by this CA",
                serial.unwrap_or_default()
            ))),
            Outcome::Revoked(serials) => {
                tracing::info!(serials = ?serials, spiffe_id = spiffe_id.as_deref().unwrap_or_default(), %reason, "revoked");
                self.republish().await;
                Ok(Response::new(RevokeCertificateResponse { serials }))
            }
            other => Err(Status::internal(format!(
                "unexpected store outcome {other:?}"
            ))),
        }
    }

    async fn unrevoke_identity(
        &self,
        req: Request<UnrevokeIdentityRequest>,
    ) -> Result<Response<UnrevokeIdentityResponse>, Status> {
        let who = requester(&req);
        let id = parse_td_id("spiffe_id", &req.into_inner().spiffe_id, &self.trust_domain)?;
        let event = AuditEvent {
            event: "identity.unrevoked",
            outcome: "unrevoked",
            identity: id.to_string(),
            requester: who,
            peer_addr: "admin.sock".into(),
            detail: serde_json::json!({}),
        };
        match self
            .store
            .apply(Op::Unrevoke {
                spiffe_id: id.to_string(),
                event,
            })
            .await
            .map_err(store_status)?
        {
            Outcome::NotRevoked => Err(Status::not_found(format!("{id} is not revoked"))),
            _ => {
                tracing::info!(%id, "identity unrevoked");
                self.republish().await;
                Ok(Response::new(UnrevokeIdentityResponse {}))
            }
        }
    }

    async fn list_authorities(
        &self,
        _req: Request<ListAuthoritiesRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        Ok(Response::new(ListAuthoritiesResponse {
            authorities: self.authorities().await?,
        }))
    }

    async fn prepare_authority(
        &self,
        req: Request<PrepareAuthorityRequest>,
    ) -> Result<Response<AuthorityStepResponse>, Status> {
        let who = requester(&req);
        let m = self
            .rotation()?
            .prepare(&who, "admin.sock")
            .await
            .map_err(step_status)?;
        self.step_response(m).await
    }

    async fn activate_authority(
        &self,
        req: Request<ActivateAuthorityRequest>,
    ) -> Result<Response<AuthorityStepResponse>, Status> {
        let who = requester(&req);
        let id = req.into_inner().id;
        let id = (!id.is_empty()).then_some(id.as_str());
        let m = self
            .rotation()?
            .activate(id, &who, "admin.sock")
            .await
            .map_err(step_status)?;
        self.step_response(m).await
    }

    async fn taint_authority(
        &self,
        req: Request<TaintAuthorityRequest>,
    ) -> Result<Response<AuthorityStepResponse>, Status> {
        let who = requester(&req);
        let id = req.into_inner().id;
        let m = self
            .rotation()?
            .taint(&id, &who, "admin.sock")
            .await
            .map_err(step_status)?;
        self.step_response(m).await
    }

    async fn revoke_authority(
        &self,
        req: Request<RevokeAuthorityRequest>,
    ) -> Result<Response<AuthorityStepResponse>, Status> {
        let who = requester(&req);
        let req = req.into_inner();
        let m = self
            .rotation()?
            .revoke(&req.id, req.force, &who, "admin.sock")
            .await
            .map_err(step_status)?;
        self.step_response(m).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(t: &str, v: &str) -> Selector {
        Selector {
            r#type: t.into(),
            value: v.into(),
        }
    }

    #[test]
    fn selectors_are_validated() {
        assert_eq!(
            validate_selector(&sel("unix", "uid:1000")).unwrap(),
            "unix:uid:1000"
        );
        assert!(validate_selector(&sel("unix", "gid:0")).is_ok());
        assert!(validate_selector(&sel("unix", "path:/usr/bin/app")).is_ok());
        assert!(validate_selector(&sel("socket", "web")).is_ok());
        assert_eq!(
            validate_selector(&sel("k8s", "ns:default")).unwrap(),
            "k8s:ns:default"
        );
        assert!(validate_selector(&sel("k8s", "pod-label:app:web")).is_ok());
        for (t, v) in [
            ("unix", "uid:-1"),
            ("unix", "uid:abc"),
            ("unix", "path:relative"),
            ("unix", "pid:1"),
            ("socket", "a/b"),
            ("socket", ""),
            ("k8s", "ns:"),
            ("k8s", "node:n1"),
            ("spiffe", "x"),
        ] {
            assert!(validate_selector(&sel(t, v)).is_err(), "{t}:{v}");
        }
    }

    #[test]
    fn uuids_look_like_uuids() {
        let u = new_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
