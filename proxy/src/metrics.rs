//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_tcp_*`) with Istio's labels in Istio's order, plus Warden's authorization,
//! config and SDS counters, served on `/stats/prometheus`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Envoy's default histogram buckets (ms), which Istio keeps.
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's cluster label for a single-cluster mesh.
const CLUSTER: &str = "Kubernetes";

/// The workload labels of one side of a request (source or destination).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Workload name (`unknown` when not in the registry).
    pub workload: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// SPIFFE ID, or `unknown`.
    pub principal: Arc<str>,
    /// `app` label.
    pub app: Arc<str>,
    /// `version` label.
    pub version: Arc<str>,
    /// Canonical service.
    pub canonical_service: Arc<str>,
    /// Canonical revision.
    pub canonical_revision: Arc<str>,
}

fn unknown() -> Arc<str> {
    Arc::from("unknown")
}

impl Peer {
    /// A peer no one knows.
    pub fn unknown() -> Arc<Self> {
        Arc::new(Self {
            workload: unknown(),
            namespace: unknown(),
            principal: unknown(),
            app: unknown(),
            version: unknown(),
            canonical_service: unknown(),
            canonical_revision: Arc::from("latest"),
        })
    }

    /// A workload with `labels`, named by Istio's canonical-service rules
    /// (`pkg/kube/labels`).
    pub fn workload(
        name: &str,
        namespace: &str,
        principal: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Arc<Self> {
        let label = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).map(String::as_str);
        let canonical_service = label(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ])
        .unwrap_or(name);
        let canonical_revision = label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .unwrap_or("latest");
        Arc::new(Self {
            workload: Arc::from(name),
            namespace: Arc::from(namespace),
            principal: Arc::from(principal.unwrap_or("unknown")),
            app: Arc::from(labels.get("app").map_or("unknown", String::as_str)),
            version: Arc::from(labels.get("version").map_or("unknown", String::as_str)),
            canonical_service: Arc::from(canonical_service),
            canonical_revision: Arc::from(canonical_revision),
        })
    }

    /// An unregistered peer known only by its SPIFFE ID (its namespace from the ID).
    pub fn principal_only(principal: Option<&str>) -> Arc<Self> {
        let Some(p) = principal else {
            return Self::unknown();
        };
        let ns = p
            .split("/ns/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("unknown");
        let mut peer = (*Self::unknown()).clone();
        peer.principal = Arc::from(p);
        peer.namespace = Arc::from(ns);
        Arc::new(peer)
    }
}

/// Who reports: the server's sidecar (`destination`) or the client's (`source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// Inbound.
    Destination,
    /// Outbound.
    Source,
}

/// The destination service of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    /// FQDN host (`destination_service`).
    pub host: Arc<str>,
    /// Short name.
    pub name: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
}

impl ServiceLabels {
    /// For a service host in `namespace`; the short name is the host's first label.
    pub fn new(host: &str, namespace: &str) -> Arc<Self> {
        Arc::new(Self {
            host: Arc::from(host),
            name: Arc::from(host.split('.').next().unwrap_or(host)),
            namespace: Arc::from(namespace),
        })
    }

    /// Unknown.
    pub fn unknown() -> Arc<Self> {
        Arc::new(Self {
            host: unknown(),
            name: unknown(),
            namespace: unknown(),
        })
    }
}

/// The labels of one connection, fixed when it is set up. Its hash is computed once
/// ([`ConnLabels::new`]), so counting a request hashes a few words, not 20 strings.
#[derive(Debug, Clone)]
pub struct ConnLabels {
    /// Reporter.
    pub reporter: Reporter,
    /// Source workload.
    pub source: Arc<Peer>,
    /// Destination workload.
    pub destination: Arc<Peer>,
    /// Destination service.
    pub service: Arc<ServiceLabels>,
    /// `mutual_tls`, `none` or `unknown` (client side).
    pub security: &'static str,
    hash: u64,
    /// The series the last request under these labels was counted in.
    last: Arc<LastSeries>,
}

/// The metric handles of the last request counted under one [`ConnLabels`], with what
/// else named its series (protocol, status, gRPC status, flags): the next request like
/// it (nearly all of them) is counted without looking up four label families.
#[derive(Debug, Default)]
struct LastSeries(std::sync::Mutex<Option<Series>>);

#[derive(Debug)]
struct Series {
    key: (bool, u16, Option<u16>, &'static str),
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl ConnLabels {
    /// Labels for a connection.
    pub fn new(
        reporter: Reporter,
        source: Arc<Peer>,
        destination: Arc<Peer>,
        service: Arc<ServiceLabels>,
        security: &'static str,
    ) -> Self {
        use std::hash::{Hash, Hasher};
        // DefaultHasher::new() has fixed keys: equal label sets get equal hashes.
        let mut fixed = std::hash::DefaultHasher::new();
        (reporter, &source, &destination, &service, security).hash(&mut fixed);
        Self {
            reporter,
            source,
            destination,
            service,
            security,
            hash: fixed.finish(),
            last: Arc::default(),
        }
    }
}

impl PartialEq for ConnLabels {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
            || (self.hash == other.hash
                && self.reporter == other.reporter
                && self.security == other.security
                && self.source == other.source
                && self.destination == other.destination
                && self.service == other.service)
    }
}

impl Eq for ConnLabels {}

impl std::hash::Hash for ConnLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// `istio_requests_total` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// The connection's labels.
    pub conn: Arc<ConnLabels>,
    /// `http` or `grpc`.
    pub grpc: bool,
    /// HTTP status (0 when none was sent).
    pub code: u16,
    /// `grpc-status` for gRPC.
    pub grpc_status: Option<u16>,
    /// Envoy's response flags (`-`, `UF`, `NR`, `UH`, `UAEX`...).
    pub flags: &'static str,
}

fn encode_conn(
    c: &ConnLabels,
    protocol: &str,
    e: &mut LabelSetEncoder,
    http: Option<(u16, Option<u16>)>,
    flags: &str,
) -> Result<(), fmt::Error> {
    let reporter = match c.reporter {
        Reporter::Destination => "destination",
        Reporter::Source => "source",
    };
    let (s, d) = (&c.source, &c.destination);
    let pairs: [(&str, &str); 21] = [
        ("reporter", reporter),
        ("source_workload", &s.workload),
        ("source_canonical_service", &s.canonical_service),
        ("source_canonical_revision", &s.canonical_revision),
        ("source_workload_namespace", &s.namespace),
        ("source_principal", &s.principal),
        ("source_app", &s.app),
        ("source_version", &s.version),
        ("source_cluster", CLUSTER),
        ("destination_workload", &d.workload),
        ("destination_workload_namespace", &d.namespace),
        ("destination_principal", &d.principal),
        ("destination_app", &d.app),
        ("destination_version", &d.version),
        ("destination_service", &c.service.host),
        ("destination_canonical_service", &d.canonical_service),
        ("destination_canonical_revision", &d.canonical_revision),
        ("destination_service_name", &c.service.name),
        ("destination_service_namespace", &c.service.namespace),
        ("destination_cluster", CLUSTER),
        ("request_protocol", protocol),
    ];
    for pair in pairs {
        pair.encode(e.encode_label())?;
    }
    if let Some((code, grpc)) = http {
        ("response_code", code.to_string().as_str()).encode(e.encode_label())?;
        let grpc = grpc.map(|g| g.to_string()).unwrap_or_default();
        ("grpc_response_status", grpc.as_str()).encode(e.encode_label())?;
    }
    ("response_flags", flags).encode(e.encode_label())?;
    ("connection_security_policy", c.security).encode(e.encode_label())
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        let protocol = if self.grpc { "grpc" } else { "http" };
        encode_conn(
            &self.conn,
            protocol,
            e,
            Some((self.code, self.grpc_status)),
            self.flags,
        )
    }
}

/// `istio_tcp_*` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    /// The connection's labels.
    pub conn: Arc<ConnLabels>,
    /// Response flags.
    pub flags: &'static str,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        encode_conn(&self.conn, "tcp", e, None, self.flags)
    }
}

/// An authorization outcome, for `warden_authz_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Allowed (enforced).
    Allow,
    /// Denied (enforced).
    Deny,
    /// A dry-run policy would have allowed.
    DryRunAllow,
    /// A dry-run policy would have denied.
    DryRunDeny,
    /// An AUDIT policy matched.
    Audit,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::DryRunAllow => "dry_run_allow",
            Self::DryRunDeny => "dry_run_deny",
            Self::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionLabels {
    decision: Outcome,
    protocol: &'static str,
}

impl EncodeLabelSet for DecisionLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        ("decision", self.decision.as_str()).encode(e.encode_label())?;
        ("protocol", self.protocol).encode(e.encode_label())
    }
}

/// Values read at scrape time from elsewhere (config watch, SDS client).
#[derive(Debug, Default)]
pub struct Gauges {
    /// Config generation in force.
    pub config_generation: AtomicU64,
    /// Config changes applied.
    pub config_applied: AtomicU64,
    /// Config changes rejected.
    pub config_rejected: AtomicU64,
    /// Seconds since the epoch when the SVID expires (0: none yet).
    pub svid_expiry: AtomicU64,
    /// Downstream connections open.
    pub connections: AtomicU64,
    /// Downstream connections closed at accept: the connection limit was reached.
    pub overflow: AtomicU64,
    /// Downstream connections closed because a request head took too long.
    pub header_timeouts: AtomicU64,
    /// Downstream connections closed for being idle.
    pub idle_timeouts: AtomicU64,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Where a registered counter's value comes from at scrape time.
struct CounterSource(Box<dyn Fn() -> u64 + Send + Sync>);

impl fmt::Debug for CounterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CounterSource")
    }
}

/// The proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RequestLabels>,
    request_bytes: HistogramFamily<RequestLabels>,
    response_bytes: HistogramFamily<RequestLabels>,
    request_messages: Family<RequestLabels, Counter>,
    response_messages: Family<RequestLabels, Counter>,
    health: Family<Vec<(&'static str, &'static str)>, Counter>,
    telemetry_counters: Vec<(Counter, CounterSource)>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    /// Each decision series once it exists (outcome x protocol), so a request takes it
    /// without hashing its labels under the family's lock.
    decision_series: [std::sync::OnceLock<Counter>; 10],
    rate_limited: Family<Vec<(&'static str, &'static str)>, Counter>,
    config_generation: Gauge,
    config_applied: Counter,
    config_rejected: Counter,
    svid_expiry: Gauge,
    connections: Gauge,
    overflow: Counter,
    header_timeouts: Counter,
    idle_timeouts: Counter,
    /// Scrape-time sources.
    pub gauges: Arc<Gauges>,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily<RequestLabels> = Family::new_with_constructor(histogram);
        let request_bytes: HistogramFamily<RequestLabels> = Family::new_with_constructor(histogram);
        let response_bytes: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(histogram);
        let request_messages = Family::<RequestLabels, Counter>::default();
        let response_messages = Family::<RequestLabels, Counter>::default();
        let health = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        registry.register(
            "istio_request_bytes",
            "Request body sizes (bytes)",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes (bytes)",
            response_bytes.clone(),
        );
        registry.register(
            "istio_request_messages",
            "gRPC messages sent by the client",
            request_messages.clone(),
        );
        registry.register(
            "istio_response_messages",
            "gRPC messages sent by the server",
            response_messages.clone(),
        );
        registry.register(
            "warden_upstream_events",
            "Upstream health events: connect failures, resets, timeouts, circuit-breaker overflows, outlier ejections, retries",
            health.clone(),
        );
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let rate_limited = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        registry.register(
            "warden_local_rate_limited",
            "Requests over a local rate limit (enforced: refused; shadow: counted only)",
            rate_limited.clone(),
        );
        registry.register("istio_requests", "Requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration (ms)",
            duration.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream",
            tcp_received.clone(),
        );
        registry.register(
            "warden_authz_decisions",
            "Authorization outcomes (enforced, dry-run and audit)",
            decisions.clone(),
        );
        let config_generation = Gauge::default();
        let config_applied = Counter::default();
        let config_rejected = Counter::default();
        let svid_expiry = Gauge::default();
        let connections = Gauge::default();
        registry.register(
            "warden_config_generation",
            "Generation of the config in force",
            config_generation.clone(),
        );
        registry.register(
            "warden_config_applied",
            "Config changes applied",
            config_applied.clone(),
        );
        registry.register(
            "warden_config_rejected",
            "Config changes rejected, the last good config kept",
            config_rejected.clone(),
        );
        registry.register(
            "warden_svid_expiry_timestamp_seconds",
            "When the proxy's SVID expires",
            svid_expiry.clone(),
        );
        registry.register(
            "warden_downstream_connections",
            "Downstream connections open",
            connections.clone(),
        );
        let overflow = Counter::default();
        let header_timeouts = Counter::default();
        let idle_timeouts = Counter::default();
        registry.register(
            "warden_downstream_connections_overflow",
            "Downstream connections closed at accept because --max-connections were open",
            overflow.clone(),
        );
        registry.register(
            "warden_downstream_request_headers_timeouts",
            "Downstream connections closed because a request head took longer than --request-headers-timeout",
            header_timeouts.clone(),
        );
        registry.register(
            "warden_downstream_idle_timeouts",
            "Downstream connections closed after --idle-timeout with no request in flight",
            idle_timeouts.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            request_messages,
            response_messages,
            health,
            telemetry_counters: Vec::new(),
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            decisions,
            decision_series: Default::default(),
            rate_limited,
            config_generation,
            config_applied,
            config_rejected,
            svid_expiry,
            connections,
            overflow,
            header_timeouts,
            idle_timeouts,
            gauges: Arc::new(Gauges::default()),
        }
    }

    /// Counts one finished HTTP request.
    pub fn request(&self, labels: &RequestLabels, millis: f64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
    }

    /// Counts one finished HTTP request: `istio_requests_total`, its duration and its
    /// body sizes each way.
    pub fn complete(&self, labels: &RequestLabels, millis: f64, received: u64, sent: u64) {
        let key = (labels.grpc, labels.code, labels.grpc_status, labels.flags);
        let mut last = labels
            .conn
            .last
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let series = match last.take() {
            Some(s) if s.key == key => s,
            _ => Series {
                key,
                requests: self.requests.get_or_create(labels).clone(),
                duration: self.duration.get_or_create(labels).clone(),
                request_bytes: self.request_bytes.get_or_create(labels).clone(),
                response_bytes: self.response_bytes.get_or_create(labels).clone(),
            },
        };
        series.requests.inc();
        series.duration.observe(millis);
        series.request_bytes.observe(received as f64);
        series.response_bytes.observe(sent as f64);
        *last = Some(series);
        drop(last);
        if let Some(kind) = upstream_event(labels.flags) {
            self.upstream_event(kind);
        }
    }

    /// The gRPC messages of one finished request, each way.
    pub fn grpc_messages(&self, labels: &RequestLabels, sent: u64, received: u64) {
        self.request_messages.get_or_create(labels).inc_by(sent);
        self.response_messages
            .get_or_create(labels)
            .inc_by(received);
    }

    /// Counts an upstream health event (`connect_failure`, `reset`, `timeout`,
    /// `overflow`, `no_healthy_upstream`, `ejection`, `retry`, `retry_overflow`).
    pub fn upstream_event(&self, kind: &'static str) {
        self.health.get_or_create(&vec![("event", kind)]).inc();
    }

    /// Registers a counter read at scrape time from `source` (a sink's own count).
    pub fn register_counter(
        &mut self,
        name: &str,
        help: &str,
        source: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let c = Counter::default();
        self.registry.register(name, help, c.clone());
        self.telemetry_counters
            .push((c, CounterSource(Box::new(source))));
    }

    /// Counts an authorization outcome.
    pub fn decision(&self, decision: Outcome, tcp: bool) {
        let protocol = if tcp { "tcp" } else { "http" };
        let slot = decision as usize * 2 + usize::from(tcp);
        let make = || {
            self.decisions
                .get_or_create(&DecisionLabels { decision, protocol })
                .clone()
        };
        match self.decision_series.get(slot) {
            Some(cell) => cell.get_or_init(make).inc(),
            None => make().inc(),
        };
    }

    /// Counts a request over a local rate limit: refused (`enforced`) or only counted.
    pub fn rate_limited(&self, enforced: bool) {
        let outcome = if enforced { "enforced" } else { "shadow" };
        self.rate_limited
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// Counts a TCP connection opening.
    pub fn tcp_open(&self, labels: &TcpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// Counts a TCP connection closing with its byte counts.
    pub fn tcp_close(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let g = &self.gauges;
        let get = |a: &AtomicU64| i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        self.config_generation.set(get(&g.config_generation));
        // Counters follow their sources (which only grow).
        for (counter, source) in [
            (&self.config_applied, &g.config_applied),
            (&self.config_rejected, &g.config_rejected),
            (&self.overflow, &g.overflow),
            (&self.header_timeouts, &g.header_timeouts),
            (&self.idle_timeouts, &g.idle_timeouts),
        ] {
            let now = source.load(Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        for (counter, source) in &self.telemetry_counters {
            let now = (source.0)();
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        self.svid_expiry.set(get(&g.svid_expiry));
        self.connections.set(get(&g.connections));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        to_text_format(&out)
    }
}

/// OpenMetrics (what `prometheus-client` writes) as Prometheus's text format 0.0.4,
/// the content type the proxy serves and Envoy writes: a counter's `# HELP` and
/// `# TYPE` name its samples' `_total` name, and there is no `# EOF` or `# UNIT`.
fn to_text_format(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len() + 1024);
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The upstream health event a response flag stands for.
fn upstream_event(flags: &str) -> Option<&'static str> {
    Some(match flags {
        "UF" => "connect_failure",
        "UC" | "UR" => "reset",
        "UT" => "timeout",
        "UO" => "overflow",
        "UH" => "no_healthy_upstream",
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_labels_come_in_istio_order() {
        let m = Metrics::new();
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), "reviews".to_string());
        labels.insert("version".to_string(), "v2".to_string());
        let conn = Arc::new(ConnLabels::new(
            Reporter::Destination,
            Peer::principal_only(Some("spiffe://cluster.local/ns/foo/sa/web")),
            Peer::workload(
                "reviews-v2",
                "bar",
                Some("spiffe://cluster.local/ns/bar/sa/reviews"),
                &labels,
            ),
            ServiceLabels::new("reviews.bar.svc.cluster.local", "bar"),
            "mutual_tls",
        ));
        m.request(
            &RequestLabels {
                conn,
                grpc: false,
                code: 403,
                grpc_status: None,
                flags: "-",
            },
            0.7,
        );
        m.decision(Outcome::Deny, false);
        let text = m.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(
            line.starts_with(
                "istio_requests_total{reporter=\"destination\",source_workload=\"unknown\",source_canonical_service=\"unknown\",source_canonical_revision=\"latest\",source_workload_namespace=\"foo\",source_principal=\"spiffe://cluster.local/ns/foo/sa/web\""
            ),
            "{line}"
        );
        assert!(line.contains("destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",destination_service_name=\"reviews\""), "{line}");
        assert!(line.ends_with("request_protocol=\"http\",response_code=\"403\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"} 1"), "{line}");
        assert!(
            text.contains("warden_authz_decisions_total{decision=\"deny\",protocol=\"http\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("istio_request_duration_milliseconds_bucket{"),
            "{text}"
        );
    }
}
