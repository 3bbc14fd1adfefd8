//! The validating admission webhook for `security.istio.io` resources.
//!
//! The API server sends an `admission.k8s.io/v1` AdmissionReview for every CREATE and
//! UPDATE of an AuthorizationPolicy, PeerAuthentication or RequestAuthentication (the
//! ValidatingWebhookConfiguration in `deploy/` routes them here); the answer comes from
//! the same checks as `warden validate` ([`warden_policy::validate`]), so a policy is
//! refused in the cluster with the `Kind ns/name: field: problem` text a user sees
//! locally, and Warden's warnings come back as the response's `warnings` (kubectl prints
//! them).
//!
//! - Served over TLS on its own port (`--webhook-addr`, default 15017) at [`PATH`], with a
//!   serving certificate the CA issues itself for the webhook Service's DNS names
//!   ([`ServingCert`], swapped when the authority changes).
//! - The leader keeps the `caBundle` of every webhook in the ValidatingWebhookConfiguration
//!   (`--webhook-config-name`) equal to the CA's trust bundle ([`keep_ca_bundle`]), as
//!   istiod's webhook controller does for its own; an edit is put back.
//! - Types this webhook does not know are refused, as Istio's webhook refuses an
//!   unrecognized type (fail closed: a misrouted rule is visible at once). DELETE and
//!   CONNECT are allowed: there is nothing to check.
//! - A body that is not an AdmissionReview is answered `400` with the reason; a body over
//!   [`MAX_BODY_BYTES`] `413`; a body slower than [`BODY_TIMEOUT`] `408`. The API server
//!   then applies the webhook's `failurePolicy` (`Fail` in `deploy/`).
//! - Objects come from the network: nothing in them is read from this host's disk (a
//!   `jwksUri` naming a local file is reported, never opened).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

use warden_common::backoff::{Backoff, random_unit};
use warden_policy::loader::{self, LoadError};
use warden_policy::validate::{self, Options};
use warden_policy::yaml_lines::SourceLines;

/// The path the API server posts AdmissionReviews to.
pub const PATH: &str = "/validate";
/// Largest request body accepted: an AdmissionReview carries the object (etcd stores at
/// most 1.5 MiB) and, on UPDATE, the old object beside it.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest wait for a request's head or body (the API server's default webhook timeout
/// is 10 s, so a slower request has already failed on its side).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds this webhook validates, all in `security.istio.io`.
const KINDS: [&str; 3] = [
    "AuthorizationPolicy",
    "PeerAuthentication",
    "RequestAuthentication",
];
const GROUP: &str = "security.istio.io";
const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// Decides AdmissionReviews with `warden validate`'s checks.
#[derive(Debug, Clone, Default)]
pub struct Validator {
    options: Options,
}

impl Validator {
    /// With the mesh's root namespace (policies there apply mesh-wide).
    pub fn new(root_namespace: &str) -> Self {
        Self {
            options: Options {
                root_namespace: root_namespace.to_string(),
            },
        }
    }

    /// Answers one AdmissionReview body with the response AdmissionReview, or says why
    /// the body is not one (answered `400`).
    pub fn review(&self, body: &[u8]) -> Result<Value, String> {
        let review: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let api_version = review.get("apiVersion").and_then(Value::as_str);
        let kind = review.get("kind").and_then(Value::as_str);
        if api_version != Some("admission.k8s.io/v1") || kind != Some("AdmissionReview") {
            return Err(format!(
                "expected an admission.k8s.io/v1 AdmissionReview, got apiVersion {} kind {}",
                api_version.unwrap_or("(none)"),
                kind.unwrap_or("(none)")
            ));
        }
        let request = review
            .get("request")
            .filter(|r| r.is_object())
            .ok_or("request: is required")?;
        let uid = request
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or("request.uid: is required")?;
        let mut response = match self.decide(request) {
            Ok(warnings) => json!({ "uid": uid, "allowed": true, "warnings": warnings }),
            Err(denial) => json!({
                "uid": uid,
                "allowed": false,
                "status": { "code": 400, "reason": "BadRequest", "message": denial.message },
                "warnings": denial.warnings,
            }),
        };
        if response["warnings"]
            .as_array()
            .is_some_and(std::vec::Vec::is_empty)
            && let Some(r) = response.as_object_mut()
        {
            r.remove("warnings");
        }
        Ok(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }))
    }

    /// The warnings of an allowed request, or why it is refused.
    fn decide(&self, request: &Value) -> Result<Vec<String>, Denial> {
        let operation = request.get("operation").and_then(Value::as_str);
        match operation {
            Some("CREATE" | "UPDATE") => {}
            Some("DELETE" | "CONNECT") => return Ok(Vec::new()),
            other => {
                return Err(Denial::new(format!(
                    "request.operation: expected CREATE, UPDATE, DELETE or CONNECT, got {}",
                    other.unwrap_or("(none)")
                )));
            }
        }
        let gvk = request.get("kind");
        let field = |k: &str| {
            gvk.and_then(|g| g.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let (group, version, kind) = (field("group"), field("version"), field("kind"));
        if group != GROUP || !VERSIONS.contains(&version) || !KINDS.contains(&kind) {
            return Err(Denial::new(format!(
                "unrecognized type {group}/{version} {kind}: this webhook validates \
                 {GROUP} (v1, v1beta1) AuthorizationPolicy, PeerAuthentication and \
                 RequestAuthentication; check the rules of the ValidatingWebhookConfiguration"
            )));
        }
        let mut object = request
            .get("object")
            .filter(|o| o.is_object())
            .cloned()
            .ok_or_else(|| Denial::new("request.object: is required for CREATE and UPDATE"))?;
        if object.get("kind").and_then(Value::as_str) != Some(kind) {
            return Err(Denial::new(format!(
                "request.object.kind: expected {kind} (request.kind), got {}",
                object["kind"].as_str().unwrap_or("(none)")
            )));
        }
        // On CREATE the object may carry no namespace: the request names it.
        if let Some(ns) = request.get("namespace").and_then(Value::as_str)
            && !ns.is_empty()
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
            && meta.get("namespace").and_then(Value::as_str).is_none()
        {
            meta.insert("namespace".into(), Value::String(ns.to_string()));
        }
        let set = loader::load_object(Path::new("admission request"), object)
            .map_err(|errors| Denial::new(errors.0.iter().map(load_error).collect::<Vec<_>>()))?;
        let lines = SourceLines::new(&set);
        let (errors, warnings): (Vec<_>, Vec<_>) = validate::validate(&set, &lines, &self.options)
            .into_iter()
            .partition(validate::Problem::is_error);
        let warnings: Vec<String> = warnings.iter().map(problem).collect();
        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(Denial {
                message: errors.iter().map(problem).collect::<Vec<_>>().join("; "),
                warnings,
            })
        }
    }
}

/// A refusal: the message (every error, `; `-separated) and the warnings beside it.
#[derive(Debug)]
struct Denial {
    message: String,
    warnings: Vec<String>,
}

impl Denial {
    fn new(message: impl Into<Messages>) -> Self {
        Self {
            message: message.into().0,
            warnings: Vec::new(),
        }
    }
}

struct Messages(String);

impl From<String> for Messages {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Messages {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<Vec<String>> for Messages {
    fn from(v: Vec<String>) -> Self {
        Self(v.join("; "))
    }
}

/// `Kind ns/name: field: problem`, as `warden validate` prints it without the file and
/// line (the object has no file).
fn problem(p: &validate::Problem) -> String {
    let warning = if p.is_error() { "" } else { "warning: " };
    format!("{} {}: {}: {warning}{}", p.kind, p.name, p.path, p.message)
}

fn load_error(e: &LoadError) -> String {
    match e {
        LoadError::Resource {
            kind,
            name,
            path,
            message,
            ..
        } if path.is_empty() => format!("{kind} {name}: {message}"),
        LoadError::Resource {
            kind,
            name,
            path,
            message,
            ..
        } => format!("{kind} {name}: {path}: {message}"),
        other => other.to_string(),
    }
}

/// The webhook's serving certificate, swappable while serving (a new authority means a
/// new certificate; handshakes in progress keep the one they started with).
#[derive(Debug)]
pub struct ServingCert(ArcSwap<CertifiedKey>);

impl ServingCert {
    /// From a chain (leaf first) and its key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self(ArcSwap::from_pointee(certified(
            chain, key,
        )?))))
    }

    /// Serves `chain` from the next handshake on.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), String> {
        self.0.store(Arc::new(certified(chain, key)?));
        Ok(())
    }

    /// A server config presenting this certificate (no client certificates: the API
    /// server presents none; HTTP/2 and HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("webhook serving key: {e}"))?;
    Ok(CertifiedKey::new(chain, key))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The DNS names the API server uses for the webhook Service `service` in `namespace`.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Serves AdmissionReviews on `listener` over TLS until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    validator: Arc<Validator>,
    shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<TlsStream<TcpStream>>(64);
    // The config is fixed; its certificate resolver ([`ServingCert`]) is what changes.
    let (_, config) = watch::channel(tls);
    let accept = tokio::spawn(crate::tls::accept_loop(
        listener,
        config,
        tx,
        shutdown.clone(),
    ));
    while let Some(stream) = rx.recv().await {
        let validator = validator.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let validator = validator.clone();
                async move { Ok::<_, Infallible>(handle(&validator, req).await) }
            });
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(BODY_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(64);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(BODY_TIMEOUT, conn).await;
                }
            }
        });
    }
    let _ = accept.await;
}

async fn handle(validator: &Validator, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // The body is read (bounded) before any answer: an HTTP/2 client whose request is
    // answered before its body was read sees a reset stream, not the answer.
    let body = Limited::new(body, MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            );
        }
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {BODY_TIMEOUT:?}"),
            );
        }
    };
    if parts.uri.path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found: the webhook is at {PATH}"),
        );
    }
    if parts.method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {}: expected POST", parts.method),
        );
    }
    let json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type: expected application/json".into(),
        );
    }
    match validator.review(&bytes) {
        Ok(review) => {
            if let Some(r) = review.get("response") {
                tracing::debug!(
                    uid = %r["uid"],
                    allowed = %r["allowed"],
                    "admission review answered"
                );
            }
            let mut resp = Response::new(Full::new(Bytes::from(review.to_string())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(reason) => text(StatusCode::BAD_REQUEST, reason),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Keeps `caBundle` of every webhook of the ValidatingWebhookConfiguration `name` equal
/// to the current trust bundle while this replica leads: on leadership, on every change
/// of the object (an edit is put back) and of the bundle. An absent configuration is
/// waited for (the chart creates it). Conflicts are retried on the fresh object; API
/// errors back off.
pub async fn keep_ca_bundle(
    api: Api<ValidatingWebhookConfiguration>,
    name: String,
    mut bundle: watch::Receiver<String>,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A sender that is gone means the value never changes again (a fixed bundle, a
    // single replica that always leads).
    let mut bundle_fixed = false;
    let mut leader_fixed = false;
    loop {
        // Wait to lead.
        while !*leader.borrow_and_update() {
            tokio::select! {
                r = leader.changed(), if !leader_fixed => leader_fixed = r.is_err(),
                _ = shutdown.changed() => return,
            }
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let events = watcher(api.clone(), config)
            .default_backoff()
            .applied_objects();
        tokio::pin!(events);
        let backoff = Backoff::ENVOY;
        let mut failures = 0u32;
        loop {
            let changed = tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(_)) => true,
                    Some(Err(e)) => {
                        tracing::warn!(config = %name, error = %e, "watching the webhook configuration");
                        false
                    }
                    None => break,
                },
                r = bundle.changed(), if !bundle_fixed => {
                    bundle_fixed = r.is_err();
                    !bundle_fixed
                }
                r = leader.changed(), if !leader_fixed => {
                    leader_fixed = r.is_err();
                    if !*leader.borrow() { break }
                    !leader_fixed
                }
                _ = shutdown.changed() => return,
            };
            if !changed {
                continue;
            }
            let current = bundle.borrow().clone();
            match reconcile(&api, &name, &current).await {
                Ok(Some(n)) => {
                    failures = 0;
                    tracing::info!(config = %name, webhooks = n, "webhook caBundle updated");
                }
                Ok(None) => failures = 0,
                Err(e) => {
                    let wait = backoff.delay(failures, random_unit());
                    failures = failures.saturating_add(1);
                    tracing::warn!(config = %name, error = %e, retry_in = ?wait, "updating the webhook caBundle");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                    // Try again with what is current then.
                    bundle.mark_changed();
                }
            }
        }
    }
}

/// Sets every webhook's `caBundle` to `bundle` if any differs: the number of webhooks
/// updated, `None` when there was nothing to do (or no such configuration yet).
pub async fn reconcile(
    api: &Api<ValidatingWebhookConfiguration>,
    name: &str,
    bundle: &str,
) -> Result<Option<usize>, kube::Error> {
    let want = ByteString(bundle.as_bytes().to_vec());
    let mut attempts = 0;
    loop {
        let Some(mut config) = api.get_opt(name).await? else {
            tracing::warn!(config = %name, "the ValidatingWebhookConfiguration does not exist yet; its caBundle will be set when it is created");
            return Ok(None);
        };
        let webhooks = config.webhooks.get_or_insert_default();
        if webhooks
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref() == Some(&want))
        {
            return Ok(None);
        }
        let n = webhooks.len();
        for w in webhooks.iter_mut() {
            w.client_config.ca_bundle = Some(want.clone());
        }
        match api.replace(name, &PostParams::default(), &config).await {
            Ok(_) => return Ok(Some(n)),
            // Changed between our read and write: read again.
            Err(kube::Error::Api(s)) if s.is_conflict() && attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
