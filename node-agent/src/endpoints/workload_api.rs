//! The SPIFFE Workload API (`/SpiffeWorkloadAPI/...`) on the agent's sockets:
//! X.509-SVIDs and bundles as streams that push on rotation, JWT-SVIDs minted by the
//! CA, JWT bundles, and JWT-SVID validation. Every request must carry the metadata
//! `workload.spiffe.io: true` (the SSRF guard of the spec), else `InvalidArgument`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use warden_proto::SpiffeId;
use warden_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use warden_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};

use super::caller::{CallerIds, any_changed, attest, identities_or_denied};
use crate::attestation::Caller;
use crate::manager::{Manager, State};

/// The Workload API service for one socket.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    manager: Arc<Manager>,
    socket: Option<String>,
}

/// Checks the `workload.spiffe.io: true` header: exactly one value, `true`.
pub(crate) fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    let values: Vec<_> = request
        .metadata()
        .get_all(warden_proto::WORKLOAD_API_HEADER)
        .iter()
        .collect();
    match values.as_slice() {
        [v] if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: every Workload API call must carry metadata workload.spiffe.io: true",
        )),
    }
}

impl WorkloadApi {
    /// The Workload API for the socket named `socket` (`None`: the shared socket).
    pub fn new(manager: Arc<Manager>, socket: Option<String>) -> Self {
        Self { manager, socket }
    }

    /// Checks the header and attests the caller.
    async fn admit<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        check_header(request)?;
        Ok(attest(request, self.socket.as_deref(), &self.manager).await)
    }

    /// Runs a stream that sends `build(state, ids)` now and again whenever it changes,
    /// ending with `PermissionDenied` when the caller loses every identity.
    fn stream<R, F>(
        &self,
        caller: Caller,
        build: F,
    ) -> Result<ReceiverStream<Result<R, Status>>, Status>
    where
        R: PartialEq + Clone + Send + 'static,
        F: Fn(&State, &[SpiffeId]) -> Option<R> + Send + 'static,
    {
        let manager = self.manager.clone();
        identities_or_denied(&manager, &manager.state(), &caller)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            manager
                .metrics()
                .workload_api_streams
                .fetch_add(1, Ordering::Relaxed);
            let mut updates = manager.subscribe();
            let mut last: Option<R> = None;
            let mut cached = CallerIds::default();
            loop {
                match cached.get(&manager, &caller) {
                    Ok((state, ids)) => {
                        if let Some(msg) = build(&state, &ids)
                            && last.as_ref() != Some(&msg)
                        {
                            if tx.send(Ok(msg.clone())).await.is_err() {
                                break;
                            }
                            last = Some(msg);
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
                tokio::select! {
                    r = updates.changed() => if r.is_err() { break },
                    () = any_changed(&mut cached.svid_events) => {}
                    _ = tx.closed() => break,
                }
            }
            manager
                .metrics()
                .workload_api_streams
                .fetch_sub(1, Ordering::Relaxed);
        });
        Ok(ReceiverStream::new(rx))
    }
}

fn x509_response(state: &State, ids: &[SpiffeId]) -> Option<X509svidResponse> {
    let bundle = state.bundle.as_ref()?;
    let svids: Vec<X509svid> = ids
        .iter()
        .filter_map(|id| state.svids.get(id))
        .map(|s| X509svid {
            spiffe_id: s.id.to_string(),
            x509_svid: s.chain_der.concat(),
            x509_svid_key: s.key.pkcs8_der(),
            bundle: bundle.der_concat(),
            hint: String::new(),
        })
        .collect();
    if svids.is_empty() {
        return None;
    }
    Some(X509svidResponse {
        svids,
        crl: crls_der(state),
        federated_bundles: federated_x509(state),
    })
}

/// The CA's CRLs, DER each, for the Workload API's `crl` fields.
fn crls_der(state: &State) -> Vec<Vec<u8>> {
    state
        .crls
        .as_ref()
        .map(|c| c.der.clone())
        .unwrap_or_default()
}

/// The federated trust domains' X.509 roots, keyed `spiffe://TD` as the Workload API
/// says (DER, concatenated).
fn federated_x509(state: &State) -> HashMap<String, Vec<u8>> {
    state
        .federated
        .values()
        .map(|f| {
            (
                format!("spiffe://{}", f.x509.trust_domain),
                f.x509.der_concat(),
            )
        })
        .collect()
}

fn x509_bundles(state: &State, _ids: &[SpiffeId]) -> Option<X509BundlesResponse> {
    let b = state.bundle.as_ref()?;
    let mut bundles = federated_x509(state);
    bundles.insert(format!("spiffe://{}", b.trust_domain), b.der_concat());
    Some(X509BundlesResponse {
        crl: crls_der(state),
        bundles,
    })
}

fn jwt_bundles(state: &State, _ids: &[SpiffeId]) -> Option<JwtBundlesResponse> {
    let b = state.jwt_bundle.as_ref()?;
    let mut bundles: HashMap<String, Vec<u8>> = state
        .federated
        .values()
        .map(|f| {
            (
                format!("spiffe://{}", f.x509.trust_domain),
                f.jwks_json.clone().into_bytes(),
            )
        })
        .collect();
    bundles.insert(format!("spiffe://{}", b.0), b.1.clone().into_bytes());
    Some(JwtBundlesResponse { bundles })
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ReceiverStream<Result<X509svidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<JwtBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.admit(&request).await?;
        Ok(Response::new(self.stream(caller, x509_response)?))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.admit(&request).await?;
        Ok(Response::new(self.stream(caller, x509_bundles)?))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.admit(&request).await?;
        Ok(Response::new(self.stream(caller, jwt_bundles)?))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let caller = self.admit(&request).await?;
        let req = request.into_inner();
        check_audience(&req.audience)?;
        let state = self.manager.state();
        let ids = identities_or_denied(&self.manager, &state, &caller)?;
        let wanted = wanted_ids(&req.spiffe_id, ids, &caller)?;
        let mut svids = Vec::with_capacity(wanted.len());
        for id in wanted {
            let token = self
                .manager
                .jwt_svid(&id, &req.audience)
                .await
                .map_err(|e| {
                    Status::unavailable(format!("cannot mint a JWT-SVID for {id}: {e}"))
                })?;
            svids.push(Jwtsvid {
                spiffe_id: id.to_string(),
                svid: token,
                hint: String::new(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let _caller = self.admit(&request).await?;
        validate_request(&request.into_inner(), &self.manager.state()).map(Response::new)
    }
}

/// A JWT-SVID request's audience: at least one, none empty.
pub(crate) fn check_audience(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    Ok(())
}

/// The identities a JWT-SVID request is for, among the caller's `ids`: all of them
/// when `spiffe_id` is empty, else that one, which the caller must have.
pub(crate) fn wanted_ids(
    spiffe_id: &str,
    ids: Vec<SpiffeId>,
    caller: &Caller,
) -> Result<Vec<SpiffeId>, Status> {
    if spiffe_id.is_empty() {
        return Ok(ids);
    }
    let id = SpiffeId::parse(spiffe_id)
        .map_err(|e| Status::invalid_argument(format!("spiffe_id {spiffe_id:?}: {e}")))?;
    if !ids.contains(&id) {
        tracing::warn!(caller = %caller, requested = %id, "JWT-SVID for an identity the caller does not have; refused");
        return Err(Status::permission_denied(format!(
            "no identity issued for {id} to this caller"
        )));
    }
    Ok(vec![id])
}

/// `ValidateJWTSVID` once the header is checked: the token against the JWT bundle of
/// the trust domain its `sub` names (ours when it names no federated one).
pub(crate) fn validate_request(
    req: &ValidateJwtsvidRequest,
    state: &State,
) -> Result<ValidateJwtsvidResponse, Status> {
    if req.audience.is_empty() {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if req.svid.is_empty() {
        return Err(Status::invalid_argument("svid must be specified"));
    }
    let Some(bundle) = state.jwt_bundle.as_ref() else {
        return Err(Status::unavailable(
            "the JWT bundle has not been fetched from the CA yet",
        ));
    };
    // A token of a federated trust domain is checked with that trust domain's keys
    // (its `sub` only chooses the bundle; the signature decides), as SPIRE does.
    let (td, jwks) = match crate::jwt::claimed_trust_domain(&req.svid)
        .and_then(|td| state.federated.get(&td).cloned())
    {
        Some(f) => (f.x509.trust_domain.clone(), f.jwks_json.clone()),
        None => (bundle.0.clone(), bundle.1.clone()),
    };
    let (id, claims) = crate::jwt::validate(&req.svid, &req.audience, &td, &jwks)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(ValidateJwtsvidResponse {
        spiffe_id: id.to_string(),
        claims: Some(crate::jwt::to_struct(claims)),
    })
}
