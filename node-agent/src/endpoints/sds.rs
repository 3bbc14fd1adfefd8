//! Envoy's Secret Discovery Service on the agent's sockets, as istio-agent serves it:
//! `default` is the attested caller's X.509-SVID (chain and key, inline), `ROOTCA` the
//! trust bundle; a resource named by one of the caller's SPIFFE IDs is that SVID (as
//! SPIRE serves it). [`super::sds_state`] decides ACK, NACK, stale nonce and new
//! watches; this module does the I/O and pushes rotations and bundle changes to every
//! stream that watches them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config::TrustDomain,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use warden_proto::SpiffeId;

use super::caller::{CallerIds, any_changed, attest, identities_or_denied};
use super::sds_state::{Decision, RequestView, StreamState};
use crate::attestation::Caller;
use crate::manager::{Manager, State};
use crate::svid::{Bundle, Crls, FederatedBundles, Svid};

/// Type URL of SDS resources.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The workload certificate resource.
pub const DEFAULT: &str = "default";
/// The trust bundle resource.
pub const ROOTCA: &str = "ROOTCA";

/// Version counter shared by all streams (`<RFC 3339 time>/<n>`, istio-agent's form).
static VERSION: AtomicU64 = AtomicU64::new(0);

fn version() -> String {
    format!(
        "{}/{}",
        crate::rfc3339(SystemTime::now()),
        VERSION.fetch_add(1, Ordering::Relaxed) + 1
    )
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

/// What a resource is now, to tell whether it changed since it was sent. Holding the
/// `Arc`s keeps the pointers unique, so pointer equality is exact.
#[derive(Debug, Clone)]
pub(crate) enum Fingerprint {
    Svid(Arc<Svid>),
    Bundle(Arc<Bundle>, Option<Arc<Crls>>, Arc<FederatedBundles>),
}

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Svid(a), Self::Svid(b)) => Arc::ptr_eq(a, b),
            (Self::Bundle(a, ca, fa), Self::Bundle(b, cb, fb)) => {
                (Arc::ptr_eq(a, b) || a == b) && ca == cb && (Arc::ptr_eq(fa, fb) || fa == fb)
            }
            _ => false,
        }
    }
}

/// The current version of resource `name` for a caller with `ids`; `None` when it
/// cannot be served yet (no SVID fetched yet) or is unknown. Cheap: no encoding.
fn fingerprint(state: &State, ids: &[SpiffeId], name: &str) -> Option<Fingerprint> {
    if name == ROOTCA {
        return state
            .bundle
            .clone()
            .map(|b| Fingerprint::Bundle(b, state.crls.clone(), state.federated.clone()));
    }
    let id = if name == DEFAULT {
        ids.first()?
    } else {
        ids.iter().find(|id| id.as_str() == name)?
    };
    state.svids.get(id).cloned().map(Fingerprint::Svid)
}

/// Builds resource `name`.
pub(crate) fn resource(
    state: &State,
    ids: &[SpiffeId],
    name: &str,
) -> Option<(Secret, Fingerprint)> {
    let fp = fingerprint(state, ids, name)?;
    let r#type = match &fp {
        Fingerprint::Bundle(b, crls, federated) => {
            secret::Type::ValidationContext(CertificateValidationContext {
                custom_validator_config: spiffe_validator(b, crls.as_deref(), federated),
                trusted_ca: inline(b.pem.clone().into_bytes()),
                // The CA's CRLs, one per authority. Only the leaf's issuer is checked:
                // with a plugged-in intermediate the CA has no CRL from the root above
                // it, and Envoy would otherwise fail every chain for want of one.
                crl: crls
                    .as_ref()
                    .filter(|c| !c.der.is_empty())
                    .and_then(|c| inline(c.pem.clone().into_bytes())),
                only_verify_leaf_cert_crl: crls.as_ref().is_some_and(|c| !c.der.is_empty()),
                ..Default::default()
            })
        }
        Fingerprint::Svid(svid) => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(svid.chain_pem.clone().into_bytes()),
            private_key: inline(svid.key.pem().into_bytes()),
            ..Default::default()
        }),
    };
    let secret = Secret {
        name: name.to_string(),
        r#type: Some(r#type),
    };
    Some((secret, fp))
}

/// Name of Envoy's SPIFFE certificate validator.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// With federated trust domains, Envoy's SPIFFE validator: it verifies a peer only
/// against the roots of the trust domain in the peer's SPIFFE ID, so a federated root
/// cannot vouch for an identity in this trust domain (concatenated roots in
/// `trusted_ca`, Istio's way, would let it). `trusted_ca` stays for Envoys that do not
/// take the validator; the validator wins where it is taken. The validator ignores
/// `crl`; it checks CRLs found in a trust bundle, on every certificate of the chain,
/// so the CA's CRLs go into this trust domain's bundle only when they cover every root
/// (with a plugged-in intermediate they do not, and would fail every chain).
fn spiffe_validator(
    own: &Bundle,
    crls: Option<&Crls>,
    federated: &FederatedBundles,
) -> Option<TypedExtensionConfig> {
    if federated.is_empty() {
        return None;
    }
    let mut own_pem = own.pem.clone();
    if let Some(crls) = crls.filter(|c| c.cover(own)) {
        if !own_pem.ends_with('\n') {
            own_pem.push('\n');
        }
        own_pem.push_str(&crls.pem);
    }
    let mut trust_domains = vec![TrustDomain {
        name: own.trust_domain.clone(),
        trust_bundle: inline(own_pem.into_bytes()),
        ..Default::default()
    }];
    trust_domains.extend(
        federated
            .iter()
            .filter(|(td, _)| **td != own.trust_domain)
            .map(|(td, b)| TrustDomain {
                name: td.clone(),
                trust_bundle: inline(b.x509.pem.clone().into_bytes()),
                ..Default::default()
            }),
    );
    let config = SpiffeCertValidatorConfig {
        trust_domains,
        ..Default::default()
    };
    Some(TypedExtensionConfig {
        name: SPIFFE_VALIDATOR.to_string(),
        typed_config: Some(Any {
            type_url: format!(
                "type.googleapis.com/{}",
                <SpiffeCertValidatorConfig as prost::Name>::full_name()
            ),
            value: config.encode_to_vec(),
        }),
    })
}

/// A request's `type_url`: empty or the `Secret` type; anything else ends the stream.
pub(crate) fn check_type_url(type_url: &str) -> Result<(), Status> {
    if !type_url.is_empty() && type_url != SECRET_TYPE_URL {
        return Err(Status::invalid_argument(format!(
            "type_url {type_url:?} is not served here; expected {SECRET_TYPE_URL}"
        )));
    }
    Ok(())
}

/// The names a stream serves: `default`, `ROOTCA` and SPIFFE IDs (others are logged
/// and skipped).
pub(crate) fn is_known_name(name: &str) -> bool {
    name == DEFAULT || name == ROOTCA || name.starts_with("spiffe://")
}

fn response(secrets: Vec<Secret>) -> (DiscoveryResponse, String) {
    let nonce = crate::random_hex(16);
    let resp = DiscoveryResponse {
        version_info: version(),
        resources: secrets
            .into_iter()
            .map(|s| Any {
                type_url: SECRET_TYPE_URL.to_string(),
                value: s.encode_to_vec(),
            })
            .collect(),
        type_url: SECRET_TYPE_URL.to_string(),
        nonce: nonce.clone(),
        ..Default::default()
    };
    (resp, nonce)
}

/// The SDS service for one socket.
#[derive(Debug, Clone)]
pub struct Sds {
    manager: Arc<Manager>,
    socket: Option<String>,
}

impl Sds {
    /// SDS for the socket named `socket` (`None`: the shared socket).
    pub fn new(manager: Arc<Manager>, socket: Option<String>) -> Self {
        Self { manager, socket }
    }
}

/// Per-stream bookkeeping beyond [`StreamState`].
struct Stream {
    manager: Arc<Manager>,
    caller: Caller,
    ids: CallerIds,
    state: StreamState,
    /// What was last sent per name.
    sent: BTreeMap<String, Fingerprint>,
    /// Names requested but not yet servable (the SVID is still being fetched).
    pending: Vec<String>,
    /// The last push of a rotated `default`: its nonce and when the SVID arrived.
    awaiting_ack: Option<(String, SystemTime)>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl Stream {
    /// Sends `names` as they are in `state`; unservable names wait in `pending`.
    async fn send(
        &mut self,
        state: &State,
        ids: &[SpiffeId],
        names: &[String],
        push: bool,
    ) -> bool {
        let mut secrets = Vec::new();
        let mut rotated_at = None;
        for name in names {
            match resource(state, ids, name) {
                Some((secret, fp)) => {
                    if let Fingerprint::Svid(..) = fp
                        && push
                    {
                        rotated_at = ids
                            .first()
                            .and_then(|id| state.svids.get(id))
                            .map(|s| s.received);
                    }
                    self.sent.insert(name.clone(), fp);
                    self.pending.retain(|p| p != name);
                    secrets.push(secret);
                }
                None => {
                    if !self.pending.contains(name) {
                        self.pending.push(name.clone());
                    }
                }
            }
        }
        if secrets.is_empty() {
            return true;
        }
        let (resp, nonce) = response(secrets);
        self.state.on_sent(nonce.clone());
        if let Some(t) = rotated_at {
            self.awaiting_ack = Some((nonce, t));
        }
        self.manager
            .metrics()
            .sds_pushes
            .fetch_add(1, Ordering::Relaxed);
        self.tx.send(Ok(resp)).await.is_ok()
    }

    /// Names whose resource changed since it was sent (or became servable).
    fn changed(&self, state: &State, ids: &[SpiffeId]) -> Vec<String> {
        let mut names: Vec<String> = self
            .state
            .watched()
            .filter(|n| {
                let now = fingerprint(state, ids, n);
                now.is_some() && now.as_ref() != self.sent.get(*n)
            })
            .map(String::from)
            .collect();
        names.sort();
        names
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<bool, Status> {
        check_type_url(&req.type_url)?;
        let view = RequestView {
            response_nonce: &req.response_nonce,
            resource_names: &req.resource_names,
            error_detail: req.error_detail.as_ref().map(|e| e.message.as_str()),
        };
        match self.state.on_request(view) {
            Decision::Respond(names) => {
                let (known, unknown): (Vec<String>, Vec<String>) =
                    names.into_iter().partition(|n| is_known_name(n));
                if !unknown.is_empty() {
                    tracing::warn!(caller = %self.caller, names = ?unknown, "SDS: unknown resource names requested; serving only default, ROOTCA and the caller's SPIFFE IDs");
                }
                let (state, ids) = self.ids.get(&self.manager, &self.caller)?;
                Ok(self.send(&state, &ids, &known, false).await)
            }
            Decision::Ack => {
                if let Some((nonce, received)) = &self.awaiting_ack
                    && *nonce == req.response_nonce
                {
                    let d = SystemTime::now()
                        .duration_since(*received)
                        .unwrap_or_default();
                    self.manager.metrics().push_ack.observe(d);
                    tracing::debug!(caller = %self.caller, ms = d.as_secs_f64() * 1e3, "SDS: rotated certificate ACKed");
                    self.awaiting_ack = None;
                }
                Ok(true)
            }
            Decision::Nack(detail) => {
                self.manager
                    .metrics()
                    .sds_nacks
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(caller = %self.caller, nonce = %req.response_nonce, error = %detail, "SDS: the client rejected (NACKed) a response");
                Ok(true)
            }
            Decision::Stale => Ok(true),
        }
    }

    async fn on_state(&mut self) -> Result<bool, Status> {
        let (state, ids) = self.ids.get(&self.manager, &self.caller)?;
        let mut names = self.changed(&state, &ids);
        for p in &self.pending {
            if !names.contains(p) && fingerprint(&state, &ids, p).is_some() {
                names.push(p.clone());
            }
        }
        if names.is_empty() {
            return Ok(true);
        }
        Ok(self.send(&state, &ids, &names, true).await)
    }

    async fn run(mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let mut updates = self.manager.subscribe();
        let metrics_guard = StreamGauge::new(self.manager.clone());
        loop {
            let result = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.on_request(req).await,
                    Ok(None) => break,
                    Err(e) => {
                        // A request tonic could not decode (too large, say) ends the
                        // stream with its status; a reset by the client goes nowhere.
                        tracing::debug!(caller = %self.caller, error = %e, "SDS stream ended");
                        let _ = self.tx.send(Err(e)).await;
                        break;
                    }
                },
                changed = updates.changed() => match changed {
                    Ok(()) => self.on_state().await,
                    Err(_) => break,
                },
                () = any_changed(&mut self.ids.svid_events) => self.on_state().await,
            };
            match result {
                Ok(true) => {}
                Ok(false) => break,
                Err(status) => {
                    let _ = self.tx.send(Err(status)).await;
                    break;
                }
            }
        }
        drop(metrics_guard);
    }
}

/// Counts an open stream for as long as it lives.
struct StreamGauge(Arc<Manager>);

impl StreamGauge {
    fn new(m: Arc<Manager>) -> Self {
        m.metrics().sds_streams.fetch_add(1, Ordering::Relaxed);
        Self(m)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.metrics().sds_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "DeltaSecrets is not served (as istio-agent and SPIRE); use StreamSecrets",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let caller = attest(&request, self.socket.as_deref(), &self.manager).await;
        // Refuse at once a caller no entry matches, rather than after its first request.
        let state = self.manager.state();
        identities_or_denied(&self.manager, &state, &caller)?;
        let (tx, rx) = mpsc::channel(16);
        let stream = Stream {
            manager: self.manager.clone(),
            caller,
            ids: CallerIds::default(),
            state: StreamState::default(),
            sent: BTreeMap::new(),
            pending: Vec::new(),
            awaiting_ack: None,
            tx,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let caller = attest(&request, self.socket.as_deref(), &self.manager).await;
        let state = self.manager.state();
        let ids = identities_or_denied(&self.manager, &state, &caller)?;
        let req = request.into_inner();
        let mut secrets = Vec::new();
        for name in &req.resource_names {
            match resource(&state, &ids, name) {
                Some((s, _)) => secrets.push(s),
                None => {
                    return Err(Status::unavailable(format!(
                        "resource {name:?} is not available yet (or unknown): try again"
                    )));
                }
            }
        }
        self.manager
            .metrics()
            .sds_pushes
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(response(secrets).0))
    }
}

#[cfg(test)]
mod tests {
    use warden_common::testing::TestCa;

    use super::*;
    use crate::svid::test_support::AgentCa;

    const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

    fn state(ca: &TestCa) -> State {
        let mut s = State::default();
        for id in [WEB, DB] {
            let svid = ca.svid(id);
            s.bundle = Some(Arc::new(svid.bundle.clone()));
            s.svids.insert(svid.id.clone(), Arc::new(svid));
        }
        s
    }

    #[test]
    fn resources_are_istio_shaped() {
        let ca = TestCa::new();
        let s = state(&ca);
        let ids = [SpiffeId::parse(WEB).unwrap(), SpiffeId::parse(DB).unwrap()];
        let (default, _) = resource(&s, &ids, DEFAULT).unwrap();
        let Some(secret::Type::TlsCertificate(tls)) = default.r#type else {
            panic!("default is not a tls_certificate")
        };
        let inline_of = |d: Option<DataSource>| match d.and_then(|d| d.specifier) {
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b).unwrap(),
            other => panic!("not inline bytes: {other:?}"),
        };
        assert_eq!(inline_of(tls.certificate_chain), s.svids[&ids[0]].chain_pem);
        assert!(inline_of(tls.private_key).contains("BEGIN PRIVATE KEY"));
        let (root, _) = resource(&s, &ids, ROOTCA).unwrap();
        let Some(secret::Type::ValidationContext(v)) = root.r#type.clone() else {
            panic!("ROOTCA is not a validation_context")
        };
        assert_eq!(inline_of(v.trusted_ca), ca.pem());
        // A SPIFFE ID the caller has names that SVID; others are not served.
        assert_eq!(resource(&s, &ids, DB).unwrap().0.name, DB);
        assert!(resource(&s, &ids[..1], DB).is_none());
        assert!(resource(&s, &ids, "file-cert:/a~/b").is_none());
        assert!(resource(&s, &[], DEFAULT).is_none());
        let (resp, nonce) = response(vec![root]);
        assert_eq!(resp.type_url, SECRET_TYPE_URL);
        assert_eq!(resp.resources[0].type_url, SECRET_TYPE_URL);
        assert_eq!(resp.nonce, nonce);
        assert_eq!(nonce.len(), 32);
        let (_, n2) = response(vec![]);
        assert_ne!(nonce, n2);
    }

    #[test]
    fn fingerprints_change_with_rotation_and_roots_only() {
        let ca = TestCa::new();
        let s1 = state(&ca);
        let ids = [SpiffeId::parse(WEB).unwrap()];
        let f_default = fingerprint(&s1, &ids, DEFAULT);
        let f_root = fingerprint(&s1, &ids, ROOTCA);
        // Another identity rotating changes neither.
        let mut s2 = s1.clone();
        let db = ca.svid(DB);
        s2.svids.insert(db.id.clone(), Arc::new(db));
        assert_eq!(fingerprint(&s2, &ids, DEFAULT), f_default);
        assert_eq!(fingerprint(&s2, &ids, ROOTCA), f_root);
        // Our identity rotating changes `default`; an equal bundle in a new Arc does not
        // change ROOTCA; a new root does.
        let web = ca.svid(WEB);
        s2.bundle = Some(Arc::new(web.bundle.clone()));
        s2.svids.insert(web.id.clone(), Arc::new(web));
        assert_ne!(fingerprint(&s2, &ids, DEFAULT), f_default);
        assert_eq!(fingerprint(&s2, &ids, ROOTCA), f_root);
        let other = TestCa::new();
        s2.bundle = Some(Arc::new(other.svid(WEB).bundle.clone()));
        assert_ne!(fingerprint(&s2, &ids, ROOTCA), f_root);
    }

    #[test]
    fn federated_bundles_add_the_spiffe_validator() {
        let ca = TestCa::new();
        let mut s = state(&ca);
        let ids = [SpiffeId::parse(WEB).unwrap()];
        let f_before = fingerprint(&s, &ids, ROOTCA);
        let (root, _) = resource(&s, &ids, ROOTCA).unwrap();
        let Some(secret::Type::ValidationContext(v)) = root.r#type else {
            panic!("ROOTCA is not a validation_context")
        };
        assert!(
            v.custom_validator_config.is_none(),
            "no federation, no validator"
        );

        let partner = TestCa::new();
        let mut x509 = partner.svid("spiffe://partner.example/ns/x/sa/y").bundle;
        x509.trust_domain = "partner.example".into();
        let mut fed = FederatedBundles::new();
        fed.insert(
            "partner.example".into(),
            Arc::new(crate::svid::FederatedBundle {
                x509,
                jwks_json: r#"{"keys":[]}"#.into(),
            }),
        );
        s.federated = Arc::new(fed);
        assert_ne!(
            fingerprint(&s, &ids, ROOTCA),
            f_before,
            "federation changes ROOTCA"
        );
        let (root, _) = resource(&s, &ids, ROOTCA).unwrap();
        let Some(secret::Type::ValidationContext(v)) = root.r#type else {
            panic!("ROOTCA is not a validation_context")
        };
        let custom = v.custom_validator_config.expect("SPIFFE validator");
        assert_eq!(custom.name, SPIFFE_VALIDATOR);
        let any = custom.typed_config.unwrap();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
        );
        let config = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
        let names: Vec<_> = config
            .trust_domains
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["cluster.local", "partner.example"]);
        let pem_of = |t: &TrustDomain| match t.trust_bundle.clone().and_then(|d| d.specifier) {
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b).unwrap(),
            other => panic!("not inline bytes: {other:?}"),
        };
        assert_eq!(pem_of(&config.trust_domains[0]), ca.pem());
        assert_eq!(pem_of(&config.trust_domains[1]), partner.pem());
    }
}
