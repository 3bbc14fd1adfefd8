//! The access log: one line per request or TCP connection, in Istio's default TEXT or
//! JSON form or a custom `accessLogFormat` written with Envoy's command operators
//! (`%START_TIME%`, `%REQ(:METHOD)%`, `%RESPONSE_CODE%`...), plus Warden's own
//! (`%WARDEN_AUTHZ_DECISION%`...).
//!
//! Lines are rendered where the exchange ends into the buffer of the writer
//! ([`super::writer`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use http::Version;
use http::header::HeaderName;

use super::Record;
use crate::metrics::ConnLabels;

/// Istio's default TEXT format (`EnvoyTextLogFormat`).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%";

/// Istio's default JSON fields, then Warden's.
const ISTIO_JSON_FIELDS: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("direction", "%WARDEN_DIRECTION%"),
    ("source_principal", "%WARDEN_SOURCE_PRINCIPAL%"),
    ("destination_principal", "%WARDEN_DESTINATION_PRINCIPAL%"),
    ("source_workload", "%WARDEN_SOURCE_WORKLOAD%"),
    ("source_namespace", "%WARDEN_SOURCE_NAMESPACE%"),
    ("destination_workload", "%WARDEN_DESTINATION_WORKLOAD%"),
    ("destination_namespace", "%WARDEN_DESTINATION_NAMESPACE%"),
    ("destination_service", "%WARDEN_DESTINATION_SERVICE%"),
    ("destination_port", "%WARDEN_DESTINATION_PORT%"),
    ("request_principal", "%WARDEN_REQUEST_PRINCIPAL%"),
    ("authz_decision", "%WARDEN_AUTHZ_DECISION%"),
    ("authz_policy", "%WARDEN_AUTHZ_POLICY%"),
    ("authz_rule", "%WARDEN_AUTHZ_RULE%"),
    ("authz_workload", "%WARDEN_AUTHZ_WORKLOAD%"),
    ("trace_id", "%TRACE_ID%"),
];

/// An Envoy command operator.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    StartTime,
    Method,
    Path,
    Authority,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamServiceTime,
    /// `user-agent`, `x-forwarded-for` and `x-request-id` with no alternative (Istio's
    /// defaults name them): read from what every detailed record keeps, so they are not
    /// also copied into [`Detail::request_headers`](super::Detail).
    UserAgent,
    ForwardedFor,
    RequestId,
    /// A request header, with an alternative.
    Req(HeaderName, Option<HeaderName>),
    /// A response header.
    Resp(HeaderName),
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
    TraceId,
    Direction,
    SourcePrincipal,
    DestinationPrincipal,
    SourceWorkload,
    SourceNamespace,
    DestinationWorkload,
    DestinationNamespace,
    DestinationService,
    DestinationPort,
    RequestPrincipal,
    AuthzDecision,
    AuthzPolicy,
    AuthzRule,
    AuthzWorkload,
}

/// A piece of a format: text, or an operator with an optional maximum length.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Op(Op, Option<usize>),
}

/// A value an operator gives.
enum Val<'a> {
    None,
    Str(Cow<'a, str>),
    Num(u64),
    /// An address, written in place (no string made for it).
    Addr(std::net::SocketAddr),
    /// An IP address, written in place.
    Ip(std::net::IpAddr),
    /// A time, written in place as RFC 3339 with milliseconds.
    Time(SystemTime),
}

impl Val<'_> {
    /// Appends the value (`-`/`null` aside) as text; a string at most `max` bytes (only
    /// `%REQ(..):N%` and `%RESP(..):N%` carry a length, and their values are strings).
    fn put(&self, max: Option<usize>, out: &mut String) {
        match self {
            Val::None => {}
            Val::Str(v) => out.push_str(truncate(v, max)),
            Val::Num(n) => put_u64(*n, out),
            Val::Addr(a) => put_addr(a, out),
            Val::Ip(ip) => put_ip(ip, out),
            Val::Time(t) => rfc3339_ms_into(*t, out),
        }
    }
}

/// Appends `n` in decimal (`itoa`: the formatting machinery costs more than the
/// digits, and every line has a dozen numbers, counting the addresses' octets).
fn put_u64(n: u64, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn put_ip(ip: &std::net::IpAddr, out: &mut String) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                put_u64(u64::from(*o), out);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip:port`, `[ip6]:port`, as `SocketAddr` displays them.
fn put_addr(a: &std::net::SocketAddr, out: &mut String) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            put_ip(&std::net::IpAddr::V4(*v4.ip()), out);
            out.push(':');
            put_u64(u64::from(v4.port()), out);
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// A compiled access-log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format(Layout);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// A line of text.
    Text(Vec<Segment>),
    /// A JSON object per line: each field's `{"name":` (the first) or `,"name":`
    /// (escaped once, here, with what comes before it) and value.
    Json(Vec<(String, Vec<Segment>)>),
}

/// `{"name":` for the first field, `,"name":` for the others, escaped.
fn json_key(first: bool, name: &str) -> String {
    let mut k = String::with_capacity(name.len() + 4);
    k.push(if first { '{' } else { ',' });
    json_string(name, &mut k);
    k.push(':');
    k
}

/// Headers that carry credentials: never written to a log.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-forwarded-client-cert",
];

fn header(name: &str, what: &str) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{what}: {name:?} is not a header name"))?;
    if SECRET_HEADERS.contains(&h.as_str()) {
        return Err(format!(
            "{what}({name}): Warden does not write credentials to access logs"
        ));
    }
    Ok(h)
}

fn op_of(name: &str, arg: Option<&str>) -> Result<Op, String> {
    let simple = match name {
        "START_TIME" => Some(Op::StartTime),
        "PROTOCOL" => Some(Op::Protocol),
        "RESPONSE_CODE" => Some(Op::ResponseCode),
        "RESPONSE_FLAGS" => Some(Op::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => Some(Op::ResponseCodeDetails),
        "CONNECTION_TERMINATION_DETAILS" => Some(Op::ConnectionTerminationDetails),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Some(Op::UpstreamTransportFailureReason),
        "BYTES_RECEIVED" => Some(Op::BytesReceived),
        "BYTES_SENT" => Some(Op::BytesSent),
        "DURATION" => Some(Op::Duration),
        "UPSTREAM_HOST" => Some(Op::UpstreamHost),
        "UPSTREAM_CLUSTER" => Some(Op::UpstreamCluster),
        "UPSTREAM_LOCAL_ADDRESS" => Some(Op::UpstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS" => Some(Op::DownstreamLocalAddress),
        "DOWNSTREAM_REMOTE_ADDRESS" => Some(Op::DownstreamRemoteAddress),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Some(Op::DownstreamRemoteAddressWithoutPort),
        "REQUESTED_SERVER_NAME" => Some(Op::RequestedServerName),
        "ROUTE_NAME" => Some(Op::RouteName),
        "TRACE_ID" => Some(Op::TraceId),
        // Envoy's peer SANs: the caller's on a server, the server's on a client.
        "DOWNSTREAM_PEER_URI_SAN" | "WARDEN_SOURCE_PRINCIPAL" => Some(Op::SourcePrincipal),
        "UPSTREAM_PEER_URI_SAN" | "WARDEN_DESTINATION_PRINCIPAL" => Some(Op::DestinationPrincipal),
        "WARDEN_DIRECTION" => Some(Op::Direction),
        "WARDEN_SOURCE_WORKLOAD" => Some(Op::SourceWorkload),
        "WARDEN_SOURCE_NAMESPACE" => Some(Op::SourceNamespace),
        "WARDEN_DESTINATION_WORKLOAD" => Some(Op::DestinationWorkload),
        "WARDEN_DESTINATION_NAMESPACE" => Some(Op::DestinationNamespace),
        "WARDEN_DESTINATION_SERVICE" => Some(Op::DestinationService),
        "WARDEN_DESTINATION_PORT" => Some(Op::DestinationPort),
        "WARDEN_REQUEST_PRINCIPAL" => Some(Op::RequestPrincipal),
        "WARDEN_AUTHZ_DECISION" => Some(Op::AuthzDecision),
        "WARDEN_AUTHZ_POLICY" => Some(Op::AuthzPolicy),
        "WARDEN_AUTHZ_RULE" => Some(Op::AuthzRule),
        "WARDEN_AUTHZ_WORKLOAD" => Some(Op::AuthzWorkload),
        _ => None,
    };
    match (simple, arg) {
        (Some(op), None) => return Ok(op),
        // START_TIME's strftime argument: Warden writes one form (RFC 3339, ms).
        (Some(Op::StartTime), Some(_)) => return Ok(Op::StartTime),
        (Some(_), Some(_)) => return Err(format!("%{name}% takes no argument")),
        (None, _) => {}
    }
    let arg = arg.ok_or_else(|| format!("unknown command operator %{name}%"))?;
    match name {
        "REQ" => {
            let (first, alt) = match arg.split_once('?') {
                Some((a, b)) => (a, Some(b)),
                None => (arg, None),
            };
            let pseudo = |h: &str| match h.to_ascii_uppercase().as_str() {
                ":METHOD" => Some(Op::Method),
                ":PATH" | "X-ENVOY-ORIGINAL-PATH" => Some(Op::Path),
                ":AUTHORITY" | "HOST" => Some(Op::Authority),
                _ => None,
            };
            if let Some(op) = pseudo(first) {
                return Ok(op);
            }
            if let Some(op) = alt.and_then(pseudo) {
                // `X-ENVOY-ORIGINAL-PATH?:PATH`: Warden never rewrites before logging.
                return Ok(op);
            }
            let alt = alt.map(|a| header(a, "REQ")).transpose()?;
            let first = header(first, "REQ")?;
            Ok(match (first.as_str(), &alt) {
                ("user-agent", None) => Op::UserAgent,
                ("x-forwarded-for", None) => Op::ForwardedFor,
                ("x-request-id", None) => Op::RequestId,
                _ => Op::Req(first, alt),
            })
        }
        "RESP" => {
            if arg.eq_ignore_ascii_case("X-ENVOY-UPSTREAM-SERVICE-TIME") {
                return Ok(Op::UpstreamServiceTime);
            }
            Ok(Op::Resp(header(arg, "RESP")?))
        }
        _ => Err(format!("unknown command operator %{name}({arg})%")),
    }
}

/// Reads a format string into segments.
fn compile(text: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut literal = String::new();
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            // `%%` is a literal percent sign.
            literal.push('%');
            rest = r;
            continue;
        }
        let end = rest.find('%').ok_or_else(|| {
            format!(
                "unterminated command operator at {:?}",
                &text[text.len() - rest.len() - 1..]
            )
        })?;
        let token = &rest[..end];
        rest = &rest[end + 1..];
        // NAME, NAME(ARG) or NAME(ARG):LEN
        let (body, max) = match token.rsplit_once("):") {
            Some((b, len)) => (
                format!("{b})"),
                Some(
                    len.parse::<usize>()
                        .map_err(|_| format!("%{token}%: {len:?} is not a length"))?,
                ),
            ),
            None => (token.to_string(), None),
        };
        let (name, arg) = match body.split_once('(') {
            Some((n, a)) => {
                let a = a
                    .strip_suffix(')')
                    .ok_or_else(|| format!("%{token}%: expected a closing parenthesis"))?;
                (n.to_string(), Some(a.to_string()))
            }
            None => (body.clone(), None),
        };
        if !literal.is_empty() {
            out.push(Segment::Text(std::mem::take(&mut literal)));
        }
        out.push(Segment::Op(op_of(&name, arg.as_deref())?, max));
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        out.push(Segment::Text(literal));
    }
    Ok(out)
}

/// A JSON object's entries in the order written (lines keep the user's field order).
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The log's encoding (MeshConfig `accessLogEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Istio's default.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Encoding {
    /// `TEXT` or `JSON` (any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "TEXT" => Ok(Self::Text),
            "JSON" => Ok(Self::Json),
            _ => Err(format!("{s:?} is not TEXT or JSON")),
        }
    }
}

impl Format {
    /// The format for `encoding` and an optional `accessLogFormat` (for JSON, an
    /// object of field names to format strings, as Istio takes it).
    pub fn new(encoding: Encoding, custom: Option<&str>) -> Result<Self, String> {
        let layout = match (encoding, custom.map(str::trim).filter(|c| !c.is_empty())) {
            (Encoding::Text, None) => Layout::Text(compile(ISTIO_TEXT_FORMAT)?),
            (Encoding::Text, Some(c)) => Layout::Text(compile(c)?),
            (Encoding::Json, None) => Layout::Json(
                ISTIO_JSON_FIELDS
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| Ok((json_key(i == 0, k), compile(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            (Encoding::Json, Some(c)) => {
                let Ordered(map) = serde_json::from_str(c).map_err(|e| {
                    format!(
                        "accessLogFormat: with JSON encoding, expected a JSON object of field names to format strings: {e}"
                    )
                })?;
                let mut fields = Vec::with_capacity(map.len());
                for (i, (k, v)) in map.into_iter().enumerate() {
                    let text = v.as_str().ok_or_else(|| {
                        format!("accessLogFormat: field {k:?}: expected a format string")
                    })?;
                    let segments =
                        compile(text).map_err(|e| format!("accessLogFormat: field {k:?}: {e}"))?;
                    fields.push((json_key(i == 0, &k), segments));
                }
                Layout::Json(fields)
            }
        };
        Ok(Self(layout))
    }

    /// Whether lines are JSON objects.
    pub fn is_json(&self) -> bool {
        matches!(self.0, Layout::Json(_))
    }

    fn segments(&self) -> impl Iterator<Item = &Segment> {
        let (a, b) = match &self.0 {
            Layout::Text(s) => (Some(s.iter()), None),
            Layout::Json(f) => (None, Some(f.iter().flat_map(|(_, s)| s.iter()))),
        };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }

    /// The request (or response) headers the format names.
    pub(crate) fn headers(&self, response: bool) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = Vec::new();
        for s in self.segments() {
            let names: Vec<&HeaderName> = match s {
                Segment::Op(Op::Req(a, b), _) if !response => {
                    [Some(a), b.as_ref()].into_iter().flatten().collect()
                }
                Segment::Op(Op::Resp(a), _) if response => vec![a],
                _ => vec![],
            };
            for n in names {
                if !out.contains(n) {
                    out.push(n.clone());
                }
            }
        }
        out
    }
}

/// What one line is made of.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The exchange.
    pub record: &'a Record,
    /// Its metric labels (the peers' identities).
    pub labels: &'a ConnLabels,
    /// Status (0 for TCP).
    pub code: u16,
    /// Response flags.
    pub flags: &'a str,
    /// Bytes from the downstream.
    pub received: u64,
    /// Bytes to the downstream.
    pub sent: u64,
    /// How long it took.
    pub duration: Duration,
}

fn known(s: &str) -> Val<'_> {
    if s == "unknown" || s.is_empty() {
        Val::None
    } else {
        Val::Str(Cow::Borrowed(s))
    }
}

fn opt<'a>(s: Option<&'a str>) -> Val<'a> {
    s.map_or(Val::None, |s| Val::Str(Cow::Borrowed(s)))
}

fn addr(a: Option<std::net::SocketAddr>) -> Val<'static> {
    a.map_or(Val::None, Val::Addr)
}

/// RFC 3339 in UTC with milliseconds, as Envoy's default `%START_TIME%`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    rfc3339_ms_into(t, &mut out);
    out
}

/// [`rfc3339_ms`] appended to `out`. The date and time to the second are made once per
/// second (per thread) and copied: every access-log line has one.
fn rfc3339_ms_into(t: SystemTime, out: &mut String) {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            last.1 = date_time(secs);
            last.0 = secs;
        }
        out.push_str(&last.1);
    });
    let ms = since.subsec_millis();
    out.push('.');
    out.push(char::from(b'0' + (ms / 100) as u8));
    out.push(char::from(b'0' + (ms / 10 % 10) as u8));
    out.push(char::from(b'0' + (ms % 10) as u8));
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC for `secs` since the epoch.
fn date_time(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl Entry<'_> {
    fn value(&self, op: &Op) -> Val<'_> {
        let d = self.record.detail.as_deref();
        let l = self.labels;
        match op {
            Op::StartTime => Val::Time(self.record.start),
            Op::Method => opt(d.and_then(|d| d.method.as_ref()).map(http::Method::as_str)),
            Op::Path => opt(d.and_then(|d| d.path.as_deref())),
            Op::Authority => opt(d.and_then(|d| d.authority.as_deref())),
            Op::Protocol => match d.and_then(|d| d.protocol) {
                Some(Version::HTTP_2) => Val::Str(Cow::Borrowed("HTTP/2")),
                Some(Version::HTTP_10) => Val::Str(Cow::Borrowed("HTTP/1.0")),
                Some(Version::HTTP_11) => Val::Str(Cow::Borrowed("HTTP/1.1")),
                Some(Version::HTTP_3) => Val::Str(Cow::Borrowed("HTTP/3")),
                _ => Val::None,
            },
            Op::ResponseCode => Val::Num(u64::from(self.code)),
            Op::ResponseFlags => Val::Str(Cow::Borrowed(self.flags)),
            Op::ResponseCodeDetails => opt(d.and_then(|d| d.code_details.as_deref())),
            Op::ConnectionTerminationDetails | Op::UpstreamTransportFailureReason => Val::None,
            Op::BytesReceived => Val::Num(self.received),
            Op::BytesSent => Val::Num(self.sent),
            Op::Duration => Val::Num(u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX)),
            Op::UpstreamServiceTime => d
                .and_then(|d| d.upstream.service_time)
                .map_or(Val::None, |t| {
                    Val::Num(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                }),
            Op::UserAgent => opt(d.and_then(|d| d.user_agent.as_deref())),
            Op::ForwardedFor => opt(d.and_then(|d| d.forwarded_for.as_deref())),
            Op::RequestId => opt(d.and_then(|d| d.request_id.as_deref())),
            Op::Req(a, b) => {
                let find = |n: &HeaderName| {
                    d.and_then(|d| d.request_headers.iter().find(|(k, _)| k == n))
                        .map(|(_, v)| v.as_str())
                };
                // With an alternative, both names are in `request_headers` (the format
                // lists them), the three the record keeps included.
                opt(find(a).or_else(|| b.as_ref().and_then(find)))
            }
            Op::Resp(a) => opt(d
                .and_then(|d| d.response_headers.iter().find(|(k, _)| k == a))
                .map(|(_, v)| v.as_str())),
            Op::UpstreamHost => addr(d.and_then(|d| d.upstream.host)),
            Op::UpstreamCluster => opt(d.and_then(|d| d.upstream.cluster.as_deref())),
            Op::UpstreamLocalAddress => Val::None,
            Op::DownstreamLocalAddress => addr(d.and_then(|d| d.downstream_local)),
            Op::DownstreamRemoteAddress => addr(d.and_then(|d| d.downstream_remote)),
            Op::DownstreamRemoteAddressWithoutPort => d
                .and_then(|d| d.downstream_remote)
                .map_or(Val::None, |a| Val::Ip(a.ip())),
            Op::RequestedServerName => opt(d.and_then(|d| d.sni.as_deref())),
            Op::RouteName => opt(d.and_then(|d| d.route_name.as_deref())),
            Op::TraceId => d
                .and_then(|d| d.span.as_ref())
                .map_or(Val::None, |s| Val::Str(Cow::Owned(s.trace_id_hex()))),
            Op::Direction => Val::Str(Cow::Borrowed(self.record.direction.as_str())),
            Op::SourcePrincipal => known(&l.source.principal),
            Op::DestinationPrincipal => known(&l.destination.principal),
            Op::SourceWorkload => known(&l.source.workload),
            Op::SourceNamespace => known(&l.source.namespace),
            Op::DestinationWorkload => known(&l.destination.workload),
            Op::DestinationNamespace => known(&l.destination.namespace),
            Op::DestinationService => known(&l.service.host),
            Op::DestinationPort => d
                .and_then(|d| d.destination_port)
                .map_or(Val::None, |p| Val::Num(u64::from(p))),
            Op::RequestPrincipal => opt(d.and_then(|d| d.request_principal.as_deref())),
            Op::AuthzDecision => opt(d.and_then(|d| d.authz.as_ref()).map(|a| a.decision)),
            Op::AuthzPolicy => opt(d
                .and_then(|d| d.authz.as_ref())
                .and_then(|a| a.policy.as_deref())),
            Op::AuthzRule => d
                .and_then(|d| d.authz.as_ref())
                .and_then(|a| a.rule)
                .map_or(Val::None, |r| Val::Num(r as u64)),
            Op::AuthzWorkload => opt(d.and_then(|d| d.authz_workload.as_deref())),
        }
    }

    fn text(&self, segments: &[Segment], out: &mut String) {
        for s in segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Op(op, max) => match self.value(op) {
                    Val::None => out.push('-'),
                    v => v.put(*max, out),
                },
            }
        }
    }

    /// The line, without its newline.
    pub fn render(&self, format: &Format) -> String {
        let mut out = String::with_capacity(512);
        self.render_into(format, &mut out);
        out
    }

    /// Appends the line, without its newline, to `out`.
    pub fn render_into(&self, format: &Format, out: &mut String) {
        match &format.0 {
            Layout::Text(segments) => self.text(segments, out),
            Layout::Json(fields) => {
                if fields.is_empty() {
                    out.push('{');
                }
                for (key, segments) in fields {
                    out.push_str(key);
                    match segments.as_slice() {
                        [Segment::Op(op, max)] => match self.value(op) {
                            Val::None => out.push_str("null"),
                            Val::Str(v) => json_string(truncate(&v, *max), out),
                            Val::Num(n) => put_u64(n, out),
                            // Addresses and times: digits, dots, colons, dashes and
                            // brackets, nothing to escape.
                            v => {
                                out.push('"');
                                v.put(*max, out);
                                out.push('"');
                            }
                        },
                        _ => {
                            let mut s = String::new();
                            self.text(segments, &mut s);
                            json_string(&s, out);
                        }
                    }
                }
                out.push('}');
            }
        }
    }
}

fn truncate(s: &str, max: Option<usize>) -> &str {
    match max {
        Some(m) if s.len() > m => {
            let mut end = m;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        _ => s,
    }
}

/// Whether `s` has a byte JSON must escape: checked 16 bytes at a time without an early
/// exit, which the compiler turns into vector compares (values are mostly ASCII
/// identities, paths and addresses that need none).
fn needs_escape(s: &[u8]) -> bool {
    let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let mut chunks = s.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | escaped(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| escaped(b))
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    // Nearly every value needs no escape: copied whole.
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metrics::{Peer, Reporter, ServiceLabels};
    use crate::telemetry::{AuthzNote, Detail, Direction, UpstreamInfo};

    fn entry_parts() -> (Record, ConnLabels) {
        let mut r = Record::new(Direction::Inbound, true);
        r.start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_605_323_456);
        let d: &mut Detail = r.detail().unwrap();
        d.method = Some(http::Method::GET);
        d.path = Some("/ratings/0".into());
        d.protocol = Some(Version::HTTP_11);
        d.authority = Some("ratings:9080".into());
        d.user_agent = Some("curl/8 \"quoted\"".into());
        d.downstream_remote = Some("127.0.0.2:4000".parse().unwrap());
        d.upstream = UpstreamInfo {
            host: Some("127.0.0.3:9080".parse().unwrap()),
            cluster: Some(std::sync::Arc::from("inbound|9080||")),
            service_time: Some(Duration::from_millis(2)),
        };
        d.destination_port = Some(9080);
        d.authz = Some(AuthzNote {
            decision: "deny",
            policy: Some("bookinfo/deny-ratings".into()),
            rule: Some(0),
        });
        let labels = ConnLabels::new(
            Reporter::Destination,
            Peer::principal_only(Some("spiffe://cluster.local/ns/bookinfo/sa/reviews")),
            Peer::unknown(),
            ServiceLabels::new("ratings.bookinfo.svc.cluster.local", "bookinfo"),
            "mutual_tls",
        );
        (r, labels)
    }

    #[test]
    fn json_lines_have_istios_fields_typed() {
        let (r, labels) = entry_parts();
        let e = Entry {
            record: &r,
            labels: &labels,
            code: 403,
            flags: "-",
            received: 0,
            sent: 19,
            duration: Duration::from_millis(3),
        };
        let line = e.render(&Format::new(Encoding::Json, None).unwrap());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["start_time"], "2026-12-07T01:02:03.456Z");
        assert_eq!(v["response_code"], 403);
        assert_eq!(v["bytes_sent"], 19);
        assert_eq!(v["upstream_service_time"], 2);
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["user_agent"], "curl/8 \"quoted\"");
        assert_eq!(v["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(v["upstream_cluster"], "inbound|9080||");
        assert_eq!(
            v["source_principal"],
            "spiffe://cluster.local/ns/bookinfo/sa/reviews"
        );
        assert_eq!(v["source_namespace"], "bookinfo");
        assert_eq!(v["destination_workload"], serde_json::Value::Null);
        assert_eq!(v["authz_decision"], "deny");
        assert_eq!(v["authz_policy"], "bookinfo/deny-ratings");
        assert_eq!(v["authz_rule"], 0);
        assert_eq!(v["destination_port"], 9080);
        assert_eq!(v["direction"], "inbound");
        // Istio's field order first.
        assert!(line.starts_with("{\"start_time\":"), "{line}");
    }

    #[test]
    fn text_lines_follow_istios_default_format() {
        let (r, labels) = entry_parts();
        let e = Entry {
            record: &r,
            labels: &labels,
            code: 200,
            flags: "-",
            received: 5,
            sent: 48,
            duration: Duration::from_millis(7),
        };
        let line = e.render(&Format::new(Encoding::Text, None).unwrap());
        assert_eq!(
            line,
            "[2026-12-07T01:02:03.456Z] \"GET /ratings/0 HTTP/1.1\" 200 - - - \"-\" 5 48 7 2 \"-\" \"curl/8 \"quoted\"\" \"-\" \"ratings:9080\" \"127.0.0.3:9080\" inbound|9080|| - - 127.0.0.2:4000 - -"
        );
    }

    #[test]
    fn istios_formats_copy_no_request_header_of_their_own() {
        // Their user-agent, x-forwarded-for and x-request-id come from what every
        // detailed record keeps; with an alternative, the header is read as named.
        for encoding in [Encoding::Text, Encoding::Json] {
            let f = Format::new(encoding, None).unwrap();
            assert!(f.headers(false).is_empty(), "{encoding:?}");
        }
        let f = Format::new(Encoding::Text, Some("%REQ(User-Agent?X-UA)%")).unwrap();
        assert_eq!(
            f.headers(false),
            vec![
                HeaderName::from_static("user-agent"),
                HeaderName::from_static("x-ua")
            ]
        );
    }

    #[test]
    fn custom_formats_compile_or_name_what_is_wrong() {
        let f = Format::new(
            Encoding::Text,
            Some("%REQ(:METHOD)% %REQ(X-CUSTOM):3% %WARDEN_AUTHZ_DECISION% 100%%"),
        )
        .unwrap();
        assert_eq!(f.headers(false), vec![HeaderName::from_static("x-custom")]);
        let (mut r, labels) = entry_parts();
        r.detail()
            .unwrap()
            .request_headers
            .push((HeaderName::from_static("x-custom"), "abcdef".into()));
        let e = Entry {
            record: &r,
            labels: &labels,
            code: 200,
            flags: "-",
            received: 0,
            sent: 0,
            duration: Duration::ZERO,
        };
        assert_eq!(e.render(&f), "GET abc deny 100%");
        for (bad, why) in [
            ("%NOPE%", "unknown command operator %NOPE%"),
            ("%REQ(:METHOD)", "unterminated"),
            ("%BYTES_SENT(x)%", "takes no argument"),
            ("%REQ(a b)%", "not a header name"),
            ("%REQ(x):big%", "not a length"),
            ("%REQ(Authorization)%", "does not write credentials"),
            ("%REQ(x-a?cookie)%", "does not write credentials"),
            ("%RESP(set-cookie)%", "does not write credentials"),
        ] {
            let e = Format::new(Encoding::Text, Some(bad)).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = Format::new(Encoding::Json, Some("[1]")).unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
        let e = Format::new(Encoding::Json, Some("{\"a\": 1}")).unwrap_err();
        assert!(e.contains("field \"a\""), "{e}");
        let f = Format::new(
            Encoding::Json,
            Some("{\"m\": \"%REQ(:METHOD)%\", \"c\": \"code=%RESPONSE_CODE%\"}"),
        )
        .unwrap();
        let line = e_render(&r, &labels, &f);
        assert_eq!(line, "{\"m\":\"GET\",\"c\":\"code=200\"}");
    }

    fn e_render(r: &Record, labels: &ConnLabels, f: &Format) -> String {
        Entry {
            record: r,
            labels,
            code: 200,
            flags: "-",
            received: 0,
            sent: 0,
            duration: Duration::ZERO,
        }
        .render(f)
    }

    #[test]
    fn start_times_are_rfc3339_utc() {
        assert_eq!(
            rfc3339_ms(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_007);
        assert_eq!(rfc3339_ms(t), "2000-02-29T00:00:00.007Z");
        // The second's text is cached: the next second, and a step back, are right too.
        let next = t + Duration::from_millis(1_990);
        assert_eq!(rfc3339_ms(next), "2000-02-29T00:00:01.997Z");
        assert_eq!(rfc3339_ms(t), "2000-02-29T00:00:00.007Z");
        let late = SystemTime::UNIX_EPOCH + Duration::from_millis(4_102_444_799_999);
        assert_eq!(rfc3339_ms(late), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn escapes_are_found_anywhere_in_a_value() {
        let base = "spiffe://cluster.local/ns/bench/sa/client-with-a-long-name";
        assert!(!needs_escape(base.as_bytes()));
        for at in [0, 5, 15, 16, 17, 31, 32, base.len() - 1] {
            for bad in [b'"', b'\\', b'\n', 0x00, 0x1f] {
                let mut v = base.as_bytes().to_vec();
                v[at] = bad;
                assert!(needs_escape(&v), "byte {bad:#x} at {at}");
            }
        }
        assert!(!needs_escape("é ü 中 \u{7f}".as_bytes()));
        let mut out = String::new();
        json_string("a\"b\\c\nd\u{1}", &mut out);
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_writes_them() {
        for n in [0, 7, 10, 99, 100, 65_535, 1_000_000_007, u64::MAX] {
            let mut out = String::from("x");
            put_u64(n, &mut out);
            assert_eq!(out, format!("x{n}"));
        }
        for a in [
            "127.0.0.1:15006",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.1.20.3:8080",
            "[::1]:9080",
            "[fe80::1%2]:80",
            "[2001:db8::ff00:42:8329]:443",
        ] {
            let a: std::net::SocketAddr = a.parse().unwrap();
            let mut out = String::new();
            put_addr(&a, &mut out);
            assert_eq!(out, a.to_string());
            let mut ip = String::new();
            put_ip(&a.ip(), &mut ip);
            assert_eq!(ip, a.ip().to_string());
        }
    }

    #[test]
    fn times_addresses_and_numbers_are_written_in_place() {
        let (r, labels) = entry_parts();
        let f = Format::new(
            Encoding::Text,
            Some("%START_TIME% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %RESPONSE_CODE%"),
        )
        .unwrap();
        assert_eq!(
            e_render(&r, &labels, &f),
            "2026-12-07T01:02:03.456Z 127.0.0.3:9080 127.0.0.2 200"
        );
        let f = Format::new(
            Encoding::Json,
            Some("{\"t\": \"%START_TIME%\", \"h\": \"%UPSTREAM_HOST%\", \"n\": \"%BYTES_SENT%\"}"),
        )
        .unwrap();
        assert_eq!(
            e_render(&r, &labels, &f),
            "{\"t\":\"2026-12-07T01:02:03.456Z\",\"h\":\"127.0.0.3:9080\",\"n\":0}"
        );
    }
}
