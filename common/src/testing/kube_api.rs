//! A fake Kubernetes API server for tests.
//!
//! No Kubernetes API server can run on the machines Warden is tested on, so tests talk
//! to this one instead: in process through kube's `tower_test` mock service
//! ([`FakeApiServer::client`]), or over real TLS on a loopback port for process-level
//! tests ([`FakeApiServer::serve_tls`]). It keeps objects as JSON and answers the REST
//! calls kube-rs makes the way the Kubernetes API reference describes them:
//!
//! - `GET` of an object, a list (`labelSelector`/`fieldSelector` with `=`, `==`, `!=`,
//!   `key`, `!key`), or a watch (`watch=true`: the events after `resourceVersion`, then
//!   live ones, as JSON lines; the stream ends after `timeoutSeconds`);
//! - `POST` creates (`409 AlreadyExists`), `PUT` replaces (`409 Conflict` when
//!   `metadata.resourceVersion` is stale, `404 NotFound`), `PATCH` applies merge,
//!   strategic-merge and server-side-apply bodies as a JSON merge patch (RFC 7386; apply
//!   creates a missing object), `DELETE` removes;
//! - `POST .../tokenreviews` answers from [`FakeApiServer::on_token_review`];
//! - errors are `Status` objects with `reason` and `code`.
//!
//! Core paths (`/api/v1/...`) and group paths (`/apis/GROUP/VERSION/...`), namespaced
//! and cluster-scoped, for the kinds in [`KINDS`]. Every request is logged
//! ([`FakeApiServer::requests`]), and failures can be injected ([`FakeApiServer::fail_next`]).
//! Watches keep their whole history, so no `410 Gone` is ever sent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// The response body type: whole JSON documents, or a watch's endless stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What a token-review handler answers: the review's `status`, or an HTTP error.
pub type Reply = Result<Value, (u16, String)>;

type TokenReviewFn = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// The kinds the fake knows: (apiVersion, plural, Kind, namespaced).
pub const KINDS: &[(&str, &str, &str, bool)] = &[
    ("v1", "namespaces", "Namespace", false),
    ("v1", "nodes", "Node", false),
    ("v1", "pods", "Pod", true),
    ("v1", "secrets", "Secret", true),
    ("v1", "configmaps", "ConfigMap", true),
    ("v1", "serviceaccounts", "ServiceAccount", true),
    ("coordination.k8s.io/v1", "leases", "Lease", true),
    (
        "admissionregistration.k8s.io/v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
    ),
    (
        "authentication.k8s.io/v1",
        "tokenreviews",
        "TokenReview",
        false,
    ),
];

/// Where an object lives: apiVersion, plural, namespace ("" when cluster-scoped), name.
type Key = (String, String, String, String);

fn key(api_version: &str, plural: &str, namespace: Option<&str>, name: &str) -> Key {
    (
        api_version.to_string(),
        plural.to_string(),
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    key: Key,
    kind: &'static str,
    object: Value,
}

struct Failure {
    method: Method,
    path_contains: String,
    code: u16,
    remaining: usize,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    token_review: Option<TokenReviewFn>,
    failures: Vec<Failure>,
    requests: Vec<String>,
}

/// The fake API server; clones share the same objects.
#[derive(Clone)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").finish_non_exhaustive()
    }
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

fn kind_of(api_version: &str, plural: &str) -> Option<(&'static str, bool)> {
    KINDS
        .iter()
        .find(|(av, p, _, _)| *av == api_version && *p == plural)
        .map(|(_, _, k, ns)| (*k, *ns))
}

fn plural_of(api_version: &str, kind: &str) -> Option<(&'static str, bool)> {
    KINDS
        .iter()
        .find(|(av, _, k, _)| *av == api_version && *k == kind)
        .map(|(_, p, _, ns)| (*p, *ns))
}

/// A Kubernetes `Status` failure.
fn status(code: u16, reason: &str, message: impl Into<String>) -> Response<Body> {
    let message = message.into();
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A request path, parsed.
struct Target {
    api_version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] => (Some(ns.to_string()), {
            let mut r = vec![*plural];
            r.extend_from_slice(rest);
            r
        }),
        other => (None, other.to_vec()),
    };
    let plural = rest.first()?.to_string();
    // `/status` and other subresources act on the object itself.
    let name = rest.get(1).map(|s| s.to_string());
    Some(Target {
        api_version,
        plural,
        namespace,
        name,
    })
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn field<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(object, |v, part| v.get(part))
}

fn as_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// One `a=b` / `a!=b` / `a` / `!a` requirement.
fn requirement_holds(req: &str, lookup: impl Fn(&str) -> Option<String>) -> bool {
    if let Some((k, v)) = req.split_once("!=") {
        return lookup(k.trim()).as_deref() != Some(v.trim());
    }
    if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return lookup(k.trim()).as_deref() == Some(v.trim());
    }
    match req.trim().strip_prefix('!') {
        Some(k) => lookup(k).is_none(),
        None => lookup(req.trim()).is_some(),
    }
}

fn selected(object: &Value, params: &BTreeMap<String, String>) -> bool {
    let fields_ok = params.get("fieldSelector").is_none_or(|sel| {
        sel.split(',')
            .filter(|r| !r.is_empty())
            .all(|r| requirement_holds(r, |path| Some(as_text(field(object, path)))))
    });
    let labels_ok = params.get("labelSelector").is_none_or(|sel| {
        sel.split(',').filter(|r| !r.is_empty()).all(|r| {
            requirement_holds(r, |k| {
                object
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(k))
                    .map(|v| as_text(Some(v)))
            })
        })
    });
    fields_ok && labels_ok
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl FakeApiServer {
    /// An empty API server.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            state: Arc::new(Mutex::new(State::default())),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread poisons nothing worth refusing here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `object` (its `apiVersion`, `kind` and `metadata.name` say where, and
    /// `metadata.namespace` for namespaced kinds) as a create or a replace, and returns
    /// it as stored (with `uid`, `resourceVersion` and `creationTimestamp`).
    ///
    /// # Panics
    /// When the kind is not in [`KINDS`] or the name is missing: a broken test.
    pub fn insert(&self, object: Value) -> Value {
        let api_version = as_text(object.get("apiVersion"));
        let kind = as_text(object.get("kind"));
        let (plural, namespaced) = plural_of(&api_version, &kind)
            .unwrap_or_else(|| panic!("the fake API server does not know {api_version} {kind}"));
        let name = as_text(object.pointer("/metadata/name"));
        assert!(!name.is_empty(), "insert: metadata.name is missing");
        let namespace = if namespaced {
            let ns = as_text(object.pointer("/metadata/namespace"));
            if ns.is_empty() {
                "default".to_string()
            } else {
                ns
            }
        } else {
            String::new()
        };
        let key = (api_version, plural.to_string(), namespace, name);
        self.store(key, object)
    }

    /// Writes an object and emits its event; the caller has checked preconditions.
    fn store(&self, key: Key, mut object: Value) -> Value {
        let mut state = self.lock();
        state.rv += 1;
        let rv = state.rv;
        let previous = state.objects.get(&key).cloned();
        let (kind, namespaced) = kind_of(&key.0, &key.1).unwrap_or(("Unknown", true));
        if !object.is_object() {
            object = json!({});
        }
        object["apiVersion"] = json!(key.0);
        object["kind"] = json!(kind);
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.3);
        if namespaced {
            meta["namespace"] = json!(key.2);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        match previous.as_ref() {
            Some(prev) => {
                meta["uid"] = prev["metadata"]["uid"].clone();
                meta["creationTimestamp"] = prev["metadata"]["creationTimestamp"].clone();
            }
            None => {
                state.uid += 1;
                meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", state.uid));
                meta["creationTimestamp"] = json!(now_rfc3339());
            }
        }
        state.objects.insert(key.clone(), object.clone());
        let event = Event {
            rv,
            key,
            kind: if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        };
        state.history.push(event.clone());
        // No receiver is fine: nobody watches yet.
        let _ = self.events.send(event);
        object
    }

    /// The object at apiVersion/plural/namespace/name, if any.
    pub fn get(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.lock()
            .objects
            .get(&key(api_version, plural, namespace, name))
            .cloned()
    }

    /// Every object of a kind, in every namespace, ordered by namespace and name.
    pub fn list(&self, api_version: &str, plural: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == api_version && k.1 == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Removes an object (emitting `DELETED`) and returns it.
    pub fn remove(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.delete_key(&key(api_version, plural, namespace, name))
    }

    fn delete_key(&self, key: &Key) -> Option<Value> {
        let mut state = self.lock();
        let mut object = state.objects.remove(key)?;
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = Event {
            rv,
            key: key.clone(),
            kind: "DELETED",
            object: object.clone(),
        };
        state.history.push(event.clone());
        let _ = self.events.send(event);
        Some(object)
    }

    /// Answers TokenReviews with `f(spec)`: `Ok(status)` (`authenticated`, `user`,
    /// `audiences`, `error`) or `Err((http code, message))` for an API error.
    pub fn on_token_review(&self, f: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.lock().token_review = Some(Arc::new(f));
    }

    /// Fails the next `times` requests whose method is `method` and whose path and
    /// query contain `path_contains`, with HTTP `code` and a `Status` body.
    pub fn fail_next(&self, method: &str, path_contains: &str, code: u16, times: usize) {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        self.lock().failures.push(Failure {
            method,
            path_contains: path_contains.to_string(),
            code,
            remaining: times,
        });
    }

    /// Drops every injected failure not yet used.
    pub fn clear_failures(&self) {
        self.lock().failures.clear();
    }

    /// Every request so far, as `"METHOD /path?query"`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// A kube client whose requests this fake answers, through kube's `tower_test`
    /// mock service. Needs a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect_bytes().await.unwrap_or_default();
                    let response = this.handle(Request::from_parts(parts, body)).await;
                    send.send_response(response);
                });
            }
        });
        kube::Client::new(service, "default")
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request<Bytes>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().map(str::to_string);
        let line = match &query {
            Some(q) => format!("{method} {path}?{q}"),
            None => format!("{method} {path}"),
        };
        {
            let mut state = self.lock();
            state.requests.push(line.clone());
            if let Some(f) = state
                .failures
                .iter_mut()
                .find(|f| f.remaining > 0 && f.method == method && line.contains(&f.path_contains))
            {
                f.remaining -= 1;
                let code = f.code;
                return status(
                    code,
                    reason_for(code),
                    format!("injected failure for {line}"),
                );
            }
        }
        let Some(target) = parse_path(&path) else {
            return status(404, "NotFound", format!("the server could not find {path}"));
        };
        let Some((kind, namespaced)) = kind_of(&target.api_version, &target.plural) else {
            return status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            );
        };
        let params = query_params(query.as_deref());
        let body: Option<Value> = if request.body().is_empty() {
            None
        } else {
            match serde_json::from_slice(request.body()) {
                Ok(v) => Some(v),
                Err(e) => return status(400, "BadRequest", format!("invalid JSON body: {e}")),
            }
        };
        if kind == "TokenReview" {
            return self.token_review(method, body);
        }
        let namespace = if namespaced {
            target.namespace.clone()
        } else {
            None
        };
        let key = |name: &str| {
            key(
                &target.api_version,
                &target.plural,
                namespace.as_deref(),
                name,
            )
        };
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        match (method, target.name.as_deref()) {
            (Method::GET, None) if params.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(&target, namespace.as_deref(), params)
            }
            (Method::GET, None) => {
                let state = self.lock();
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        k.0 == target.api_version
                            && k.1 == target.plural
                            && namespace.as_ref().is_none_or(|ns| &k.2 == ns)
                    })
                    .map(|(_, v)| v)
                    .filter(|v| selected(v, &params))
                    .cloned()
                    .collect();
                json_response(
                    200,
                    &json!({
                        "apiVersion": target.api_version,
                        "kind": format!("{kind}List"),
                        "metadata": {"resourceVersion": state.rv.to_string()},
                        "items": items,
                    }),
                )
            }
            (Method::GET, Some(name)) => match self.lock().objects.get(&key(name)) {
                Some(v) => json_response(200, v),
                None => not_found(&target.plural, name),
            },
            (Method::POST, None) => {
                let Some(object) = body else {
                    return status(400, "BadRequest", "a create needs a body");
                };
                let name = as_text(object.pointer("/metadata/name"));
                if name.is_empty() {
                    return status(422, "Invalid", "metadata.name: Required value");
                }
                if self.lock().objects.contains_key(&key(&name)) {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", target.plural),
                    );
                }
                json_response(201, &self.store(key(&name), object))
            }
            (Method::PUT, Some(name)) => {
                let Some(object) = body else {
                    return status(400, "BadRequest", "a replace needs a body");
                };
                let current = self.lock().objects.get(&key(name)).cloned();
                let Some(current) = current else {
                    return not_found(&target.plural, name);
                };
                let sent = as_text(object.pointer("/metadata/resourceVersion"));
                let have = as_text(current.pointer("/metadata/resourceVersion"));
                if !sent.is_empty() && sent != have {
                    return status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                            target.plural
                        ),
                    );
                }
                json_response(200, &self.store(key(name), object))
            }
            (Method::PATCH, Some(name)) => {
                let Some(patch) = body else {
                    return status(400, "BadRequest", "a patch needs a body");
                };
                if content_type.starts_with("application/json-patch+json") {
                    return status(
                        415,
                        "UnsupportedMediaType",
                        "the fake API server does not apply JSON patches",
                    );
                }
                let apply = content_type.starts_with("application/apply-patch");
                let current = self.lock().objects.get(&key(name)).cloned();
                let mut object = match current {
                    Some(c) => c,
                    None if apply => json!({}),
                    None => return not_found(&target.plural, name),
                };
                merge_patch(&mut object, &patch);
                json_response(200, &self.store(key(name), object))
            }
            (Method::DELETE, Some(name)) => match self.delete_key(&key(name)) {
                Some(v) => json_response(200, &v),
                None => not_found(&target.plural, name),
            },
            (method, _) => status(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on {path}"),
            ),
        }
    }

    fn token_review(&self, method: Method, body: Option<Value>) -> Response<Body> {
        if method != Method::POST {
            return status(405, "MethodNotAllowed", "tokenreviews are only created");
        }
        let Some(review) = body else {
            return status(400, "BadRequest", "a TokenReview needs a body");
        };
        let spec = review.get("spec").cloned().unwrap_or(json!({}));
        let handler = self.lock().token_review.clone();
        let reply = match handler {
            Some(f) => f(&spec),
            None => Ok(json!({"authenticated": false, "error": "no token review handler"})),
        };
        match reply {
            Ok(review_status) => json_response(
                201,
                &json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "metadata": {"creationTimestamp": null},
                    "spec": spec,
                    "status": review_status,
                }),
            ),
            Err((code, message)) => status(code, reason_for(code), message),
        }
    }

    fn watch(
        &self,
        target: &Target,
        namespace: Option<&str>,
        params: BTreeMap<String, String>,
    ) -> Response<Body> {
        let from: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(3600), Duration::from_secs);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let wanted = {
            let api_version = target.api_version.clone();
            let plural = target.plural.clone();
            let namespace = namespace.map(str::to_string);
            move |e: &Event| {
                e.rv > from
                    && e.key.0 == api_version
                    && e.key.1 == plural
                    && namespace.as_ref().is_none_or(|ns| &e.key.2 == ns)
                    && selected(&e.object, &params)
            }
        };
        // Subscribe before reading history so nothing falls in between.
        let (mut live, past) = {
            let state = self.lock();
            let live = self.events.subscribe();
            let past: Vec<Event> = state
                .history
                .iter()
                .filter(|e| wanted(e))
                .cloned()
                .collect();
            (live, past)
        };
        tokio::spawn(async move {
            let line = |e: &Event| {
                Ok(Frame::data(Bytes::from(format!(
                    "{}\n",
                    json!({"type": e.kind, "object": e.object})
                ))))
            };
            let mut last = from;
            for e in &past {
                last = e.rv;
                if tx.send(line(e)).await.is_err() {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => return,
                    () = tx.closed() => return,
                    event = live.recv() => match event {
                        Ok(e) if e.rv > last && wanted(&e) => {
                            last = e.rv;
                            if tx.send(line(&e)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // A lagging watcher ends its stream; kube re-watches.
                        Err(_) => return,
                    },
                }
            }
        });
        let body = StreamBody::new(ReceiverStream::new(rx)).boxed_unsync();
        let mut response = Response::new(body);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }

    /// Serves this fake over TLS on a loopback port (any port), for processes under
    /// test. Returns the address and a kubeconfig (YAML) that points at it, trusts its
    /// certificate and sends `token` as the bearer token. A request without that bearer
    /// token is answered `401 Unauthorized`, as the API server answers it.
    pub async fn serve_tls(&self, token: &str) -> std::io::Result<(SocketAddr, String)> {
        use base64::Engine as _;
        let ca = super::TestCa::new();
        let (chain, key) = ca.leaf_der_with("spiffe://fake-apiserver/apiserver", |p| {
            p.subject_alt_names = vec![
                rcgen::SanType::DnsName("localhost".try_into().unwrap_or_else(|_| unreachable!())),
                rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            ];
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(std::io::Error::other)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let bearer = Arc::<str>::from(format!("Bearer {token}"));
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let this = this.clone();
                let bearer = bearer.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let this = this.clone();
                            let bearer = bearer.clone();
                            async move {
                                // As the API server: no valid bearer token, 401.
                                let authorized = req
                                    .headers()
                                    .get(http::header::AUTHORIZATION)
                                    .is_some_and(|v| v.as_bytes() == bearer.as_bytes());
                                if !authorized {
                                    return Ok(status(401, "Unauthorized", "Unauthorized"));
                                }
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                Ok::<_, Infallible>(
                                    this.handle(Request::from_parts(parts, body)).await,
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let ca_data = base64::engine::general_purpose::STANDARD.encode(ca.pem());
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca_data}\nusers:\n- name: fake\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
            port = addr.port()
        );
        Ok((addr, kubeconfig))
    }
}

fn not_found(plural: &str, name: &str) -> Response<Body> {
    status(404, "NotFound", format!("{plural} \"{name}\" not found"))
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
