//! Distributed tracing on the request path: the incoming trace context (W3C
//! `traceparent`/`tracestate`, B3 single `b3` and B3 multi `x-b3-*`), the sampling
//! decision, and one [`Span`] per request and side with the tags Istio's sidecars put
//! on theirs. Spans are exported by [`crate::otlp`].
//!
//! Per request: [`extract`] the caller's context (malformed headers are no context: a
//! new trace starts), [`Span::start`] a span continuing it (the caller's sampling
//! decision is kept, as Envoy keeps it; a new trace asks the [`Sampler`]),
//! [`Span::inject`] the span into the forwarded request, then at the end
//! [`Span::set_istio`] and [`Span::finish`] and hand it to the exporter when
//! [`Span::sampled`].
//!
//! # Istio's span tags
//!
//! Envoy (`source/common/tracing`) tags every sidecar span with, all string-valued:
//! `node_id` (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`), `guid:x-request-id`,
//! `http.url`, `http.method`, `http.protocol` (`HTTP/1.1`, `HTTP/2`), `http.status_code`
//! (`0` when there was no response), `downstream_cluster` (from
//! `x-envoy-downstream-service-cluster`, `-` when absent), `user_agent` (`-` when
//! absent), `peer.address`, `request_size`, `response_size`, `response_flags` (`-` when
//! none), `upstream_cluster` and `upstream_cluster.name` (Istio's cluster name,
//! `outbound|9080||reviews.bookinfo.svc.cluster.local`), `upstream_address`, `component`
//! = `proxy`, and `error` = `true` when there was no response or it was a 5xx. Istio's
//! tracing config adds `istio.canonical_service`, `istio.canonical_revision`,
//! `istio.mesh_id` and `istio.namespace`. The span's name is the route decorator's
//! operation, `<host>:<port>/*` ([`operation_name`]), inbound and outbound alike.
//! Warden adds the peers' SPIFFE IDs: `warden.source_principal` and
//! `warden.destination_principal`. [`IstioAttributes`] carries all of them.
//!
//! # Ids
//!
//! Span and trace ids need not be secret, only distinct. They come from a per-thread
//! SplitMix64 generator seeded once from `ring`'s `SystemRandom`: a Weyl sequence
//! (odd increment, period 2^64) through a bijective mixer, so one thread never repeats
//! an id within 2^64 draws, and two threads collide only if their random starting
//! points land within a few million steps of each other on the 2^64 cycle. It costs a
//! few nanoseconds where a `getrandom` system call per id would cost a context switch.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use ring::rand::{SecureRandom, SystemRandom};

/// W3C Trace Context: `00-{trace-id}-{parent-id}-{flags}`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C vendor state, passed through unchanged.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 single header: `{trace}-{span}[-{sampling}[-{parent}]]` or a bare decision.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// B3 multi: the trace id (16 or 32 hex digits).
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 multi: the caller's span id.
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 multi: the caller's parent span id.
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 multi: the sampling decision, `1` or `0`.
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 multi: `1` is debug, which implies sampled.
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Longest `traceparent` read: version 00 is 55 bytes; later versions may append.
const MAX_TRACEPARENT: usize = 256;
/// Longest `b3` single header: 32 + 16 + 1 + 16 hex digits and three dashes.
const MAX_B3: usize = 68;
/// Longest `tracestate` kept: W3C asks for at least 512 bytes to be propagated.
const MAX_TRACESTATE: usize = 512;
/// Longest `tracestate` read before trimming; longer is dropped whole.
const MAX_TRACESTATE_RAW: usize = 8192;
/// W3C: at most 32 list members; more and the whole `tracestate` is dropped.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// W3C: members longer than this are the first dropped when trimming.
const MAX_TRACESTATE_MEMBER: usize = 128;

/// The B3 encoding a request came in with, which [`Span::inject`] writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum B3Form {
    /// No B3 headers: `traceparent` alone is written, as Envoy's OpenTelemetry tracer
    /// propagates (bookinfo's apps forward it, beside the B3 headers).
    #[default]
    None,
    /// The `b3` header.
    Single,
    /// The `x-b3-*` headers.
    Multi,
}

/// A trace and span id pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
}

/// The trace context a request came in with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceContext {
    /// The caller's trace and span (the parent of ours); `None` for a bare B3
    /// sampling decision (`b3: 0`, `x-b3-sampled: 0` alone), which starts a new trace.
    pub parent: Option<SpanIds>,
    /// The caller's sampling decision, if it made one (B3 may defer).
    pub sampled: Option<bool>,
    /// W3C `tracestate`, only with a valid `traceparent`.
    pub tracestate: Option<String>,
    /// The B3 encoding present, whichever of W3C or B3 the ids came from.
    pub b3: B3Form,
}

/// Reads the caller's trace context: W3C `traceparent` first, then B3 single, then
/// B3 multi. Malformed or oversized headers are no context, never an error.
pub fn extract(headers: &HeaderMap) -> Option<TraceContext> {
    let b3 = if headers.contains_key(B3) {
        B3Form::Single
    } else if [&X_B3_TRACEID, &X_B3_SPANID, &X_B3_SAMPLED, &X_B3_FLAGS]
        .iter()
        .any(|h| headers.contains_key(*h))
    {
        B3Form::Multi
    } else {
        B3Form::None
    };
    if let Some((ids, sampled)) =
        one_value(headers, &TRACEPARENT, MAX_TRACEPARENT).and_then(parse_traceparent)
    {
        return Some(TraceContext {
            parent: Some(ids),
            sampled: Some(sampled),
            tracestate: tracestate(headers),
            b3,
        });
    }
    let from_b3 = match b3 {
        B3Form::Single => one_value(headers, &B3, MAX_B3).and_then(parse_b3_single),
        B3Form::Multi => parse_b3_multi(headers),
        B3Form::None => None,
    };
    from_b3.map(|(parent, sampled)| TraceContext {
        parent,
        sampled,
        tracestate: None,
        b3,
    })
}

/// The only value of header `name`, trimmed of optional whitespace, if it is no longer
/// than `cap`; several values or non-ASCII bytes count as malformed.
fn one_value<'h>(headers: &'h HeaderMap, name: &HeaderName, cap: usize) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let v = values.next()?;
    if values.next().is_some() || v.len() > cap {
        return None;
    }
    let s = v.to_str().ok()?.trim_matches([' ', '\t']);
    s.is_ascii().then_some(s)
}

/// Parses a `traceparent` per W3C Trace Context level 1 §3.2 (and its rules for
/// versions after 00): the ids and the sampled flag.
fn parse_traceparent(v: &str) -> Option<(SpanIds, bool)> {
    let b = v.as_bytes();
    if b.len() < 55 || !v.is_ascii() {
        return None;
    }
    let [version] = hex_lower::<1>(&v[0..2])?;
    match version {
        0xff => return None,
        0 if b.len() != 55 => return None,
        _ if b.len() > 55 && b[55] != b'-' => return None,
        _ => {}
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let ids = SpanIds {
        trace_id: nonzero(hex_lower::<16>(&v[3..35])?)?,
        span_id: nonzero(hex_lower::<8>(&v[36..52])?)?,
    };
    let [flags] = hex_lower::<1>(&v[53..55])?;
    Some((ids, flags & 1 == 1))
}

/// The `tracestate` headers joined, with members trimmed per W3C §3.3.1.5 when over
/// [`MAX_TRACESTATE`]: the longest members first, then from the end.
fn tracestate(headers: &HeaderMap) -> Option<String> {
    let mut raw = 0;
    let mut members = Vec::new();
    for v in headers.get_all(TRACESTATE) {
        raw += v.len();
        if raw > MAX_TRACESTATE_RAW {
            return None;
        }
        let s = v.to_str().ok()?;
        members.extend(
            s.split(',')
                .map(|m| m.trim_matches([' ', '\t']))
                .filter(|m| !m.is_empty()),
        );
    }
    if members.is_empty() || members.len() > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    let joined_len = |m: &[&str]| m.iter().map(|s| s.len()).sum::<usize>() + m.len() - 1;
    if joined_len(&members) > MAX_TRACESTATE {
        members.retain(|m| m.len() <= MAX_TRACESTATE_MEMBER);
        while !members.is_empty() && joined_len(&members) > MAX_TRACESTATE {
            members.pop();
        }
    }
    (!members.is_empty()).then(|| members.join(","))
}

/// Parses a `b3` single header: the ids (`None` for a bare decision) and the decision.
fn parse_b3_single(v: &str) -> Option<(Option<SpanIds>, Option<bool>)> {
    if v.len() == 1 {
        return Some((None, Some(b3_sampling(v)?)));
    }
    let mut parts = v.split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = nonzero(hex_any::<8>(parts.next()?)?)?;
    let sampled = match parts.next() {
        Some(s) => Some(b3_sampling(s)?),
        None => None,
    };
    if let Some(parent) = parts.next() {
        nonzero(hex_any::<8>(parent)?)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((Some(SpanIds { trace_id, span_id }), sampled))
}

/// Parses the `x-b3-*` headers: the ids (`None` when only a decision came) and the
/// decision (`x-b3-flags: 1`, debug, means sampled).
fn parse_b3_multi(headers: &HeaderMap) -> Option<(Option<SpanIds>, Option<bool>)> {
    let get = |name: &HeaderName| {
        if headers.contains_key(name) {
            one_value(headers, name, 32).map(Some)
        } else {
            Some(None)
        }
    };
    let sampled = match get(&X_B3_SAMPLED)? {
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) => return None,
        None => None,
    };
    let sampled = match get(&X_B3_FLAGS)? {
        Some("1") => Some(true),
        Some("0") | None => sampled,
        Some(_) => return None,
    };
    let ids = match (get(&X_B3_TRACEID)?, get(&X_B3_SPANID)?) {
        (Some(t), Some(s)) => Some(SpanIds {
            trace_id: b3_trace_id(t)?,
            span_id: nonzero(hex_any::<8>(s)?)?,
        }),
        (None, None) => None,
        _ => return None,
    };
    if let Some(parent) = get(&X_B3_PARENTSPANID)? {
        nonzero(hex_any::<8>(parent)?)?;
    }
    if ids.is_none() && sampled.is_none() {
        return None;
    }
    Some((ids, sampled))
}

/// A B3 trace id: 32 hex digits, or 16 left-padded with zeros.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    let id = match s.len() {
        32 => hex_any::<16>(s)?,
        16 => {
            let low = hex_any::<8>(s)?;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    nonzero(id)
}

/// B3's sampling state: `1`, `d` (debug, which is sampled) or `0`.
fn b3_sampling(s: &str) -> Option<bool> {
    match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// `N` bytes from exactly `2N` lowercase hex digits (W3C forbids uppercase).
fn hex_lower<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    hex_any(s)
}

/// `N` bytes from exactly `2N` hex digits of either case (B3, as Envoy reads it).
fn hex_any<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *o = u8::try_from((digit(pair[0])? << 4) | digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// `id` unless it is all zeros, which both W3C and B3 call invalid.
fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    id.iter().any(|b| *b != 0).then_some(id)
}

/// The decision for a trace that starts here: Istio's `randomSamplingPercentage`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    percent: f64,
}

impl Sampler {
    /// Samples `percent` of new traces, clamped to `0..=100` (NaN is 0).
    pub fn new(percent: f64) -> Self {
        let percent = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 100.0)
        };
        Self { percent }
    }

    /// The percentage in effect.
    pub fn percent(&self) -> f64 {
        self.percent
    }

    /// Whether a request is traced: the caller's decision when it made one (the
    /// parent's decision is continued, as Envoy does), else a random draw.
    pub fn decide(&self, incoming: Option<bool>) -> bool {
        match incoming {
            Some(decision) => decision,
            // 53 random bits as a uniform float in [0, 1): 100% is always, 0% never.
            None => ((next_u64() >> 11) as f64 / (1u64 << 53) as f64) * 100.0 < self.percent,
        }
    }
}

/// Which side of a call a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy sending a request on (outbound).
    Client,
    /// The proxy receiving a request (inbound, gateway).
    Server,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string (every tag Envoy sets is one).
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Double(f64),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<&Arc<str>> for AttrValue {
    fn from(s: &Arc<str>) -> Self {
        Self::Str(s.to_string())
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<f64> for AttrValue {
    fn from(f: f64) -> Self {
        Self::Double(f)
    }
}

/// One span: a request as one side of the proxy saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The trace, continued from the caller or new.
    pub trace_id: [u8; 16],
    /// This span, always new.
    pub span_id: [u8; 8],
    /// The caller's span (or the span this one is a child of); `None` for a root.
    pub parent_span_id: Option<[u8; 8]>,
    /// Whether the span is recorded and exported; propagated downstream either way.
    pub sampled: bool,
    /// W3C `tracestate`, passed through unchanged.
    pub tracestate: Option<String>,
    /// The B3 encoding to write besides `traceparent`.
    pub b3: B3Form,
    /// Istio's operation name, `<host>:<port>/*` ([`operation_name`]).
    pub name: String,
    /// Client (outbound) or server (inbound).
    pub kind: SpanKind,
    /// When the request arrived.
    pub start: SystemTime,
    /// When the response ended ([`Span::finish`]); `start` until then.
    pub end: SystemTime,
    /// The tags, in the order set.
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Whether the span's status is ERROR (no response, or a 5xx).
    pub status_error: bool,
}

impl Span {
    /// A span continuing `incoming` (or a new trace), starting now, sampled per the
    /// caller's decision or else `sampler`.
    pub fn start(
        kind: SpanKind,
        name: impl Into<String>,
        incoming: Option<&TraceContext>,
        sampler: &Sampler,
    ) -> Self {
        let parent = incoming.and_then(|c| c.parent);
        let start = SystemTime::now();
        Self {
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            parent_span_id: parent.map(|p| p.span_id),
            sampled: sampler.decide(incoming.and_then(|c| c.sampled)),
            tracestate: incoming.and_then(|c| c.tracestate.clone()),
            b3: incoming.map_or(B3Form::None, |c| c.b3),
            name: name.into(),
            kind,
            start,
            end: start,
            attributes: Vec::new(),
            status_error: false,
        }
    }

    /// A span of the same trace with this one as parent (a client span under the
    /// server span of the request that caused it), starting now.
    pub fn child(&self, kind: SpanKind, name: impl Into<String>) -> Self {
        let start = SystemTime::now();
        Self {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
            tracestate: self.tracestate.clone(),
            b3: self.b3,
            name: name.into(),
            kind,
            start,
            end: start,
            attributes: Vec::new(),
            status_error: false,
        }
    }

    /// Sets tag `key` (appended; set each key once).
    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        self.attributes.push((key, value.into()));
    }

    /// The value of tag `key`, if set.
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }

    /// Ends the span now.
    pub fn finish(&mut self) {
        self.end = SystemTime::now();
    }

    /// This span's W3C `traceparent` (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Writes this span as the forwarded request's context, after removing every
    /// trace header that came in: `traceparent` (and `tracestate` unchanged) always,
    /// and B3 in the form that came in (multi when none did).
    pub fn inject(&self, headers: &mut HeaderMap) {
        for h in [
            &TRACEPARENT,
            &TRACESTATE,
            &B3,
            &X_B3_TRACEID,
            &X_B3_SPANID,
            &X_B3_PARENTSPANID,
            &X_B3_SAMPLED,
            &X_B3_FLAGS,
        ] {
            headers.remove(h);
        }
        let mut put = |name: HeaderName, value: String| {
            // Hex digits and dashes (or a tracestate that was a header value): valid.
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(name, v);
            }
        };
        put(TRACEPARENT, self.traceparent());
        if let Some(state) = &self.tracestate {
            put(TRACESTATE, state.clone());
        }
        let sampled = if self.sampled { "1" } else { "0" };
        let trace_id = || b3_trace_hex(&self.trace_id);
        match self.b3 {
            B3Form::Single => {
                let mut v = format!("{}-{}-{sampled}", trace_id(), hex(&self.span_id));
                if let Some(p) = &self.parent_span_id {
                    let _ = write!(v, "-{}", hex(p));
                }
                put(B3, v);
            }
            // No B3 came in: W3C alone, as Envoy's OpenTelemetry tracer propagates.
            B3Form::None => {}
            B3Form::Multi => {
                put(X_B3_TRACEID, trace_id());
                put(X_B3_SPANID, hex(&self.span_id));
                put(X_B3_SAMPLED, sampled.to_owned());
                if let Some(p) = &self.parent_span_id {
                    put(X_B3_PARENTSPANID, hex(p));
                }
            }
        }
    }

    /// Sets Istio's sidecar tags, Warden's peer identities and the error status.
    pub fn set_istio(&mut self, a: &IstioAttributes<'_>) {
        let dash = |v: Option<&str>| v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
        self.set(tags::ISTIO_CANONICAL_SERVICE, a.canonical_service);
        self.set(tags::ISTIO_CANONICAL_REVISION, a.canonical_revision);
        self.set(tags::ISTIO_MESH_ID, a.mesh_id);
        self.set(tags::ISTIO_NAMESPACE, a.namespace);
        self.set(tags::NODE_ID, a.node_id);
        if let Some(id) = a.request_id {
            self.set(tags::GUID_X_REQUEST_ID, id);
        }
        self.set(tags::HTTP_URL, a.url);
        self.set(tags::HTTP_METHOD, a.method);
        self.set(tags::HTTP_PROTOCOL, a.protocol);
        let status = a.status_code.unwrap_or(0);
        self.set(tags::HTTP_STATUS_CODE, status.to_string());
        self.set(tags::DOWNSTREAM_CLUSTER, dash(a.downstream_cluster));
        self.set(tags::USER_AGENT, dash(a.user_agent));
        self.set(tags::PEER_ADDRESS, a.peer_address);
        self.set(tags::REQUEST_SIZE, a.request_size.to_string());
        self.set(tags::RESPONSE_SIZE, a.response_size.to_string());
        self.set(tags::RESPONSE_FLAGS, dash(Some(a.response_flags)));
        if let Some(cluster) = a.upstream_cluster {
            self.set(tags::UPSTREAM_CLUSTER, cluster);
            self.set(tags::UPSTREAM_CLUSTER_NAME, cluster);
        }
        if let Some(addr) = a.upstream_address {
            self.set(tags::UPSTREAM_ADDRESS, addr);
        }
        self.set(tags::COMPONENT, "proxy");
        if let Some(p) = a.source_principal {
            self.set(tags::WARDEN_SOURCE_PRINCIPAL, p);
        }
        if let Some(p) = a.destination_principal {
            self.set(tags::WARDEN_DESTINATION_PRINCIPAL, p);
        }
        if status == 0 || status >= 500 {
            self.set(tags::ERROR, "true");
            self.status_error = true;
        }
    }
}

/// What the caller knows of a request for Istio's tags ([`Span::set_istio`]); fill it
/// once the response has ended.
#[derive(Debug, Clone, Default)]
pub struct IstioAttributes<'a> {
    /// This workload's canonical service (`reviews`).
    pub canonical_service: &'a str,
    /// This workload's canonical revision (`v2`).
    pub canonical_revision: &'a str,
    /// The mesh id (`cluster.local`).
    pub mesh_id: &'a str,
    /// This workload's namespace.
    pub namespace: &'a str,
    /// Envoy's node id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    pub node_id: &'a str,
    /// The `x-request-id` header.
    pub request_id: Option<&'a str>,
    /// The full URL (`http://reviews:9080/reviews/0`).
    pub url: &'a str,
    /// The method.
    pub method: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// The response status; `None` when there was no response (tagged `0`, an error).
    pub status_code: Option<u16>,
    /// `x-envoy-downstream-service-cluster`, if sent.
    pub downstream_cluster: Option<&'a str>,
    /// `user-agent`, if sent.
    pub user_agent: Option<&'a str>,
    /// The downstream peer's address (`10.0.0.1:52112`).
    pub peer_address: &'a str,
    /// Request body bytes.
    pub request_size: u64,
    /// Response body bytes.
    pub response_size: u64,
    /// Envoy's response flags (`UF,URX`); empty is `-`.
    pub response_flags: &'a str,
    /// Istio's cluster name (`outbound|9080||reviews.bookinfo.svc.cluster.local`).
    pub upstream_cluster: Option<&'a str>,
    /// The upstream endpoint's address.
    pub upstream_address: Option<&'a str>,
    /// The client's SPIFFE ID, when known.
    pub source_principal: Option<&'a str>,
    /// The server's SPIFFE ID, when known.
    pub destination_principal: Option<&'a str>,
}

/// The tag names Istio's sidecars set, and Warden's.
pub mod tags {
    #![allow(missing_docs)]
    pub const ISTIO_CANONICAL_SERVICE: &str = "istio.canonical_service";
    pub const ISTIO_CANONICAL_REVISION: &str = "istio.canonical_revision";
    pub const ISTIO_MESH_ID: &str = "istio.mesh_id";
    pub const ISTIO_NAMESPACE: &str = "istio.namespace";
    pub const NODE_ID: &str = "node_id";
    pub const GUID_X_REQUEST_ID: &str = "guid:x-request-id";
    pub const HTTP_URL: &str = "http.url";
    pub const HTTP_METHOD: &str = "http.method";
    pub const HTTP_PROTOCOL: &str = "http.protocol";
    pub const HTTP_STATUS_CODE: &str = "http.status_code";
    pub const DOWNSTREAM_CLUSTER: &str = "downstream_cluster";
    pub const USER_AGENT: &str = "user_agent";
    pub const PEER_ADDRESS: &str = "peer.address";
    pub const REQUEST_SIZE: &str = "request_size";
    pub const RESPONSE_SIZE: &str = "response_size";
    pub const RESPONSE_FLAGS: &str = "response_flags";
    pub const UPSTREAM_CLUSTER: &str = "upstream_cluster";
    pub const UPSTREAM_CLUSTER_NAME: &str = "upstream_cluster.name";
    pub const UPSTREAM_ADDRESS: &str = "upstream_address";
    pub const COMPONENT: &str = "component";
    pub const ERROR: &str = "error";
    pub const WARDEN_SOURCE_PRINCIPAL: &str = "warden.source_principal";
    pub const WARDEN_DESTINATION_PRINCIPAL: &str = "warden.destination_principal";
}

/// Istio's span name for HTTP, the route decorator's operation: `<host>:<port>/*`.
pub fn operation_name(host: &str, port: u16) -> String {
    format!("{host}:{port}/*")
}

/// Istio's `service.name` for a workload's spans: `<canonical service>.<namespace>`.
pub fn service_name(canonical_service: &str, namespace: &str) -> String {
    format!("{canonical_service}.{namespace}")
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A B3 trace id: 16 digits when the high half is zero (a 64-bit id stays 64-bit).
fn b3_trace_hex(id: &[u8; 16]) -> String {
    if id[..8].iter().all(|b| *b == 0) {
        hex(&id[8..])
    } else {
        hex(id)
    }
}

/// A new, non-zero trace id.
pub fn new_trace_id() -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&nonzero_u64().to_be_bytes());
    id[8..].copy_from_slice(&next_u64().to_be_bytes());
    id
}

/// A new, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    nonzero_u64().to_be_bytes()
}

fn nonzero_u64() -> u64 {
    loop {
        let v = next_u64();
        if v != 0 {
            return v;
        }
    }
}

thread_local! {
    /// SplitMix64's state: see the module's "Ids".
    static RNG: Cell<u64> = Cell::new(seed());
}

/// A random 64-bit seed from the OS; if that fails (it does not on Linux), from the
/// standard library's randomly keyed hasher, which is seeded from the OS as well.
fn seed() -> u64 {
    let mut b = [0; 8];
    if SystemRandom::new().fill(&mut b).is_ok() {
        return u64::from_ne_bytes(b);
    }
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// SplitMix64 (Steele, Lea, Flood 2014): the next value of this thread's sequence.
fn next_u64() -> u64 {
    RNG.with(|state| {
        let x = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(x);
        let z = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests;
