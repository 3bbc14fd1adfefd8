//! What the proxy reports about each exchange, in one place: Istio's standard metrics,
//! the access log and the trace spans. Each side of the proxy fills a [`Record`] as
//! the request goes through its stages; [`Telemetry::attach`] hangs the record on the
//! response body, and when the body has been sent (or the downstream went away) the
//! record is completed once: counted, logged and its spans exported.
//!
//! Nothing here blocks a request: the access log and the span exporter take lines and
//! spans through bounded queues, and drop (and count) what does not fit.

pub mod access_log;
pub mod settings;
pub mod spans;
pub mod writer;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderMap, HeaderName};
use http::{Response, Version};
use hyper::body::Frame;

use crate::http::{Body, GrpcFramer, ReqBody, Tally};
use crate::metrics::{ConnLabels, Metrics, RequestLabels, TcpLabels};
use crate::pipeline::Exchange;

pub use settings::TelemetrySettings;
pub use spans::SpanKind;
pub use writer::AccessLog;

/// `x-request-id`, looked up by name: a `&str` key is parsed into a name on every
/// lookup, and these are read on every request.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Which listener an exchange came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Into the workload (port 15006).
    Inbound,
    /// From the workload (port 15001 and the TCP listeners).
    Outbound,
    /// An ingress gateway's server.
    Gateway,
}

impl Direction {
    /// `inbound`, `outbound` or `gateway`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Gateway => "gateway",
        }
    }
}

/// What answered a request upstream, set on the response by the side that sent it.
#[derive(Debug, Clone, Default)]
pub struct UpstreamInfo {
    /// The endpoint's address.
    pub host: Option<SocketAddr>,
    /// Envoy's cluster name (`outbound|9080|v1|reviews.bookinfo.svc.cluster.local`,
    /// `inbound|9080||`).
    pub cluster: Option<Arc<str>>,
    /// From sending the request to the response's headers.
    pub service_time: Option<Duration>,
}

/// The authorization decision a request got, and which policy and rule made it.
#[derive(Debug, Clone)]
pub struct AuthzNote {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// `namespace/name` of the deciding policy.
    pub policy: Option<String>,
    /// The rule's index in it.
    pub rule: Option<usize>,
}

/// The details of an exchange only the access log and the spans need; not collected
/// when both are off.
#[derive(Debug, Default)]
pub struct Detail {
    /// Method (`None` for TCP; the standard ones are kept without an allocation).
    pub method: Option<http::Method>,
    /// Path and query, after normalization.
    pub path: Option<String>,
    /// The downstream's HTTP version (`None` for TCP).
    pub protocol: Option<Version>,
    /// Authority.
    pub authority: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-forwarded-for`.
    pub forwarded_for: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// SNI of the downstream TLS connection.
    pub sni: Option<String>,
    /// The address the downstream connected to.
    pub downstream_local: Option<SocketAddr>,
    /// The downstream's address.
    pub downstream_remote: Option<SocketAddr>,
    /// The upstream.
    pub upstream: UpstreamInfo,
    /// The route's name (VirtualService route, or `default`).
    pub route_name: Option<Cow<'static, str>>,
    /// Why the proxy answered as it did (`via_upstream`, `rbac_access_denied...`).
    pub code_details: Option<Cow<'static, str>>,
    /// The service port the request is for.
    pub destination_port: Option<u16>,
    /// `iss/sub` of an accepted JWT.
    pub request_principal: Option<String>,
    /// The authorization decision (inbound and gateway).
    pub authz: Option<AuthzNote>,
    /// `namespace/name` of the workload whose policies decided.
    pub authz_workload: Option<Arc<str>>,
    /// Request headers a custom access-log format names, captured as they were.
    pub request_headers: Vec<(HeaderName, String)>,
    /// Response headers a custom access-log format names.
    pub response_headers: Vec<(HeaderName, String)>,
    /// The request's span, ended with the exchange.
    pub span: Option<spans::ActiveSpan>,
}

/// One exchange's telemetry, filled as it goes.
#[derive(Debug)]
pub struct Record {
    /// The listener.
    pub direction: Direction,
    /// Wall-clock start.
    pub start: SystemTime,
    /// Monotonic start.
    pub started: Instant,
    /// gRPC.
    pub grpc: bool,
    /// The request body's tally (HTTP).
    pub request: Option<Arc<Tally>>,
    /// Filled when the access log or tracing is on.
    pub detail: Option<Box<Detail>>,
}

impl Record {
    /// A new exchange on `direction`; `detailed` when the access log or tracing needs
    /// the details.
    pub fn new(direction: Direction, detailed: bool) -> Self {
        Self {
            direction,
            start: SystemTime::now(),
            started: Instant::now(),
            grpc: false,
            request: None,
            detail: detailed.then(Box::default),
        }
    }

    /// The details, when collected.
    pub fn detail(&mut self) -> Option<&mut Detail> {
        self.detail.as_deref_mut()
    }

    /// The pipeline's exchange for `req`, its body counted into this record.
    pub fn exchange(&mut self, req: http::Request<hyper::body::Incoming>) -> Exchange {
        let grpc = crate::http::is_grpc(req.headers());
        let tally = Arc::new(Tally::default());
        self.grpc = grpc;
        self.request = Some(tally.clone());
        Exchange::new(req.map(|b| ReqBody::new(b, tally, grpc)))
    }

    /// Notes the authorization decision (and the JWT's `iss/sub`, when one was
    /// accepted).
    pub fn authz(
        &mut self,
        decision: &warden_policy::authz::Decision,
        allowed: bool,
        jwt: Option<&serde_json::Value>,
    ) {
        let Some(d) = self.detail.as_deref_mut() else {
            return;
        };
        let deciding = decision
            .deciding
            .as_ref()
            .or(decision.custom.as_ref().map(|(_, m)| m));
        d.authz = Some(AuthzNote {
            decision: if allowed { "allow" } else { "deny" },
            policy: deciding.map(|m| m.policy.clone()),
            rule: deciding.map(|m| m.rule),
        });
        if !allowed {
            // Envoy's RBAC detail: the policy as `ns[NS]-policy[NAME]-rule[N]`.
            d.code_details = Some(match deciding {
                Some(m) => {
                    let (ns, name) = m.policy.split_once('/').unwrap_or(("", &m.policy));
                    Cow::Owned(format!(
                        "rbac_access_denied_matched_policy[ns[{ns}]-policy[{name}]-rule[{}]]",
                        m.rule
                    ))
                }
                None => Cow::Borrowed("rbac_access_denied_matched_policy[none]"),
            });
        }
        if let Some(claims) = jwt {
            let iss = claims.get("iss").and_then(|v| v.as_str());
            let sub = claims.get("sub").and_then(|v| v.as_str());
            if let (Some(iss), Some(sub)) = (iss, sub) {
                d.request_principal = Some(format!("{iss}/{sub}"));
            }
        }
    }

    /// Reads what the access log and spans need off the request head (after the
    /// pipeline's normalization and sanitizing: what the policy saw).
    pub fn request_head<B>(
        &mut self,
        req: &http::Request<B>,
        authority: &str,
        headers: &[HeaderName],
    ) {
        let Some(d) = self.detail.as_deref_mut() else {
            return;
        };
        let h = req.headers();
        let get = |name: &HeaderName| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(ToString::to_string)
        };
        d.method = Some(req.method().clone());
        d.path = Some(crate::http::path_and_query(req.uri()).to_string());
        d.protocol = Some(req.version());
        d.authority = (!authority.is_empty()).then(|| authority.to_string());
        d.user_agent = get(&http::header::USER_AGENT);
        d.forwarded_for = get(&X_FORWARDED_FOR);
        d.request_id = get(&X_REQUEST_ID);
        for name in headers {
            if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
                d.request_headers.push((name.clone(), v.to_string()));
            }
        }
    }
}

/// The proxy's telemetry sinks.
#[derive(Debug)]
pub struct Telemetry {
    /// Istio's metrics.
    pub metrics: Arc<Metrics>,
    /// The access log, when on.
    pub access_log: Option<AccessLog>,
    /// Tracing, when on.
    pub tracer: Option<spans::Tracer>,
}

impl Telemetry {
    /// Metrics only.
    pub fn metrics_only(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            access_log: None,
            tracer: None,
        }
    }

    /// Whether exchanges need their [`Detail`].
    pub fn detailed(&self) -> bool {
        self.access_log.is_some() || self.tracer.is_some()
    }

    /// Request headers the access-log format reads.
    pub fn logged_request_headers(&self) -> &[HeaderName] {
        self.access_log
            .as_ref()
            .map_or(&[], |l| l.request_headers())
    }

    /// A record for an exchange on `direction`.
    pub fn record(&self, direction: Direction) -> Record {
        Record::new(direction, self.detailed())
    }

    /// Hangs `record` on `resp`: it completes when the body has been sent.
    pub fn attach(
        self: &Arc<Self>,
        resp: &mut Response<Body>,
        mut record: Record,
        labels: Arc<ConnLabels>,
        flags: &'static str,
    ) {
        let code = resp.status().as_u16();
        let grpc_status = record.grpc.then(|| grpc_status(resp.headers())).flatten();
        if let Some(d) = record.detail.as_deref_mut() {
            if let Some(u) = resp.extensions_mut().remove::<UpstreamInfo>() {
                d.upstream = u;
            }
            if d.code_details.is_none() {
                d.code_details = Some(Cow::Borrowed(
                    if d.upstream.host.is_some() && flags == "-" {
                        "via_upstream"
                    } else {
                        "local_reply"
                    },
                ));
            }
            if let Some(log) = &self.access_log {
                for name in log.response_headers() {
                    if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
                        d.response_headers.push((name.clone(), v.to_string()));
                    }
                }
            }
        }
        let grpc = record.grpc;
        let pending = Pending {
            telemetry: self.clone(),
            record,
            labels,
            code,
            grpc_status,
            flags,
            bytes: 0,
            messages: 0,
            framer: grpc.then(GrpcFramer::default),
        };
        resp.body_mut().complete_with(Box::new(pending));
    }

    /// Starts the exchange's span (when tracing is on) as a child of the trace the
    /// request carries, or a new trace as sampling decides, and writes its context
    /// into the request's headers for the next hop. `name` is only called when tracing
    /// is on: nothing is formatted for a span that is not made.
    pub fn start_span(
        &self,
        record: &mut Record,
        headers: &mut HeaderMap,
        kind: SpanKind,
        name: impl FnOnce() -> Option<String>,
    ) {
        if let (Some(tracer), Some(d)) = (&self.tracer, record.detail.as_deref_mut()) {
            d.span = tracer.start_span(headers, kind, name(), d);
        }
    }

    /// An exchange that ended with the connection closed and no answer: logged.
    pub fn closed(&self, mut record: Record, labels: Arc<ConnLabels>, flags: &'static str) {
        let duration = record.started.elapsed();
        if let Some(log) = &self.access_log {
            log.write(&access_log::Entry {
                record: &record,
                labels: &labels,
                code: 0,
                flags,
                received: 0,
                sent: 0,
                duration,
            });
        }
        if let (Some(tracer), Some(d)) = (&self.tracer, record.detail.as_deref_mut())
            && let Some(span) = d.span.take()
        {
            tracer.finish(span, d, &labels, 0, flags, 0, 0);
        }
    }

    /// A TCP connection ended: counted, logged, its span exported.
    pub fn tcp_closed(&self, mut record: Record, labels: &TcpLabels, sent: u64, received: u64) {
        self.metrics.tcp_close(labels, sent, received);
        let duration = record.started.elapsed();
        if let Some(log) = &self.access_log {
            log.write(&access_log::Entry {
                record: &record,
                labels: &labels.conn,
                code: 0,
                flags: labels.flags,
                received,
                sent,
                duration,
            });
        }
        if let (Some(tracer), Some(d)) = (&self.tracer, record.detail.as_deref_mut())
            && let Some(span) = d.span.take()
        {
            tracer.finish(span, d, &labels.conn, 0, labels.flags, received, sent);
        }
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// An exchange whose response is on its way: the body counts into it and completes
/// it once.
#[derive(Debug)]
pub struct Pending {
    telemetry: Arc<Telemetry>,
    record: Record,
    labels: Arc<ConnLabels>,
    code: u16,
    grpc_status: Option<u16>,
    flags: &'static str,
    bytes: u64,
    messages: u64,
    framer: Option<GrpcFramer>,
}

impl Pending {
    /// A frame of the response body went by.
    pub fn frame(&mut self, frame: &Frame<bytes::Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
            if let Some(f) = &mut self.framer {
                self.messages += f.feed(data);
            }
        } else if let Some(trailers) = frame.trailers_ref()
            && self.record.grpc
            && let Some(s) = grpc_status(trailers)
        {
            self.grpc_status = Some(s);
        }
    }

    /// The body ended (`complete`) or was dropped before its end.
    pub fn finish(mut self, complete: bool) {
        let t = self.telemetry.clone();
        let duration = self.record.started.elapsed();
        // The downstream went away before the answer was sent: Envoy's `DC`.
        let flags = if !complete && self.flags == "-" {
            "DC"
        } else {
            self.flags
        };
        let received = self
            .record
            .request
            .as_ref()
            .map_or(0, |t| t.bytes.load(Ordering::Relaxed));
        let labels = RequestLabels {
            conn: self.labels.clone(),
            grpc: self.record.grpc,
            code: self.code,
            grpc_status: self.grpc_status,
            flags,
        };
        t.metrics.complete(
            &labels,
            duration.as_secs_f64() * 1000.0,
            received,
            self.bytes,
        );
        if self.record.grpc {
            let sent_messages = self
                .record
                .request
                .as_ref()
                .map_or(0, |t| t.messages.load(Ordering::Relaxed));
            t.metrics
                .grpc_messages(&labels, sent_messages, self.messages);
        }
        if let Some(log) = &t.access_log {
            log.write(&access_log::Entry {
                record: &self.record,
                labels: &self.labels,
                code: self.code,
                flags,
                received,
                sent: self.bytes,
                duration,
            });
        }
        if let (Some(tracer), Some(d)) = (&t.tracer, self.record.detail.as_deref_mut())
            && let Some(span) = d.span.take()
        {
            tracer.finish(
                span,
                d,
                &self.labels,
                self.code,
                flags,
                received,
                self.bytes,
            );
        }
    }
}

/// Sets `x-request-id` to a new random UUID when the request has none, as Envoy does
/// on the edge and on a sidecar's outbound side.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(X_REQUEST_ID) {
        return;
    }
    let id = uuid_v4(random_u128());
    if let Ok(v) = http::HeaderValue::from_bytes(&id) {
        headers.insert(X_REQUEST_ID, v);
    }
}

/// A version-4 UUID from 128 random bits, in its 36-character text form (formatted in
/// place: this runs for every outbound request).
fn uuid_v4(r: u128) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Version 4 in bits 76..80, variant 10 in bits 62..64.
    let r = (r & !(0xf_u128 << 76)) | (0x4_u128 << 76);
    let r = (r & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    let mut out = [b'-'; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        let shift = 124 - 4 * nibble;
        *slot = HEX[((r >> shift) & 0xf) as usize];
        nibble += 1;
    }
    out
}

/// 128 bits from a per-thread generator (xorshift128+) seeded from the system's
/// randomness: ids must not collide, not stay secret.
pub(crate) fn random_u128() -> u128 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<(u64, u64)> = Cell::new(seed());
    }
    fn seed() -> (u64, u64) {
        let mut b = [0u8; 16];
        let rng = ring::rand::SystemRandom::new();
        if ring::rand::SecureRandom::fill(&rng, &mut b).is_err() {
            // No system randomness: the clock and the thread still make ids unique
            // enough for request ids.
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            b = t.to_le_bytes();
        }
        let (lo, hi) = b.split_at(8);
        let a = u64::from_le_bytes(lo.try_into().unwrap_or([1; 8])) | 1;
        let c = u64::from_le_bytes(hi.try_into().unwrap_or([2; 8])) | 1;
        (a, c)
    }
    STATE.with(|s| {
        let next = || {
            let (mut a, b) = s.get();
            a ^= a << 23;
            a ^= a >> 17;
            a ^= b ^ (b >> 26);
            s.set((b, a));
            a.wrapping_add(b)
        };
        (u128::from(next()) << 64) | u128::from(next())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_v4_uuids_and_kept_when_present() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h["x-request-id"].to_str().unwrap_or_default().to_string();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id.as_str());
        let mut other = HeaderMap::new();
        ensure_request_id(&mut other);
        assert_ne!(other["x-request-id"], id.as_str());
    }
}
