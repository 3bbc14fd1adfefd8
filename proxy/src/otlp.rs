//! Span export over OTLP/gRPC (`/opentelemetry.proto.collector.trace.v1.TraceService/Export`)
//! to the configured collector, off the request path.
//!
//! [`ExporterHandle::record`] never blocks or awaits: it puts the span in a bounded
//! queue ([`ExporterConfig::queue_capacity`], 4096) or, when the queue is full, drops it
//! and counts it. One background task takes spans in batches (up to 512, or whatever
//! is queued every second), sends each batch once over a lazily connected plaintext
//! HTTP/2 channel (1 s to connect, 5 s per export) and counts a failed batch and drops
//! it: there is no retry buffer, so a slow or absent collector costs at most the queue's
//! memory and some dropped spans, never request latency. [`ExporterHandle::shutdown`]
//! sends what is queued, within a deadline. The counters are [`ExporterStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Uri;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use warden_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use warden_proto::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use warden_proto::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use warden_proto::otlp::resource::v1::Resource;
use warden_proto::otlp::trace::v1 as pb;

use crate::trace::{AttrValue, Span, SpanKind};

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    /// The collector, `http://host:port` (OTLP/gRPC, plaintext HTTP/2).
    pub endpoint: Uri,
    /// The resource's `service.name`: Istio's `<canonical service>.<namespace>`
    /// ([`crate::trace::service_name`]).
    pub service_name: String,
    /// More resource attributes (after `service.name`).
    pub resource: Vec<(String, AttrValue)>,
    /// Spans waiting for export; more are dropped.
    pub queue_capacity: usize,
    /// Spans per export request.
    pub max_batch: usize,
    /// How long a span waits for a full batch before a partial one is sent.
    pub batch_interval: Duration,
    /// Limit on connecting to the collector.
    pub connect_timeout: Duration,
    /// Limit on one export request.
    pub request_timeout: Duration,
}

impl ExporterConfig {
    /// The defaults: 4096 queued spans, batches of 512 or every second, 1 s to
    /// connect, 5 s per export.
    pub fn new(endpoint: Uri, service_name: impl Into<String>) -> Self {
        Self {
            endpoint,
            service_name: service_name.into(),
            resource: Vec::new(),
            queue_capacity: 4096,
            max_batch: 512,
            batch_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the exporter did not start.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The endpoint is not `http://host:port`.
    #[error(
        "OTLP collector endpoint {endpoint:?}: expected http://host:port (OTLP/gRPC over plaintext HTTP/2)"
    )]
    Endpoint {
        /// The endpoint given.
        endpoint: String,
    },
    /// A queue or batch size of zero.
    #[error("OTLP exporter: queue capacity ({queue}) and batch size ({batch}) must be at least 1")]
    Size {
        /// The queue capacity given.
        queue: usize,
        /// The batch size given.
        batch: usize,
    },
    /// Started outside a Tokio runtime.
    #[error("the OTLP exporter must be started within a Tokio runtime")]
    NoRuntime,
}

/// The exporter's counters, for metrics.
#[derive(Debug, Default)]
pub struct ExporterStats {
    /// Spans the collector accepted.
    pub spans_exported: AtomicU64,
    /// Spans dropped because the queue was full (or the exporter had shut down).
    pub spans_dropped_queue_full: AtomicU64,
    /// Spans in export requests that failed, timed out, or that the collector rejected.
    pub spans_failed_export: AtomicU64,
    /// Export requests sent (successful or not).
    pub export_batches: AtomicU64,
}

impl ExporterStats {
    /// The counters now: (exported, dropped, failed, batches).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.spans_exported.load(Ordering::Relaxed),
            self.spans_dropped_queue_full.load(Ordering::Relaxed),
            self.spans_failed_export.load(Ordering::Relaxed),
            self.export_batches.load(Ordering::Relaxed),
        )
    }
}

/// The OTLP span exporter: [`Exporter::start`] spawns its task.
#[derive(Debug)]
pub struct Exporter;

impl Exporter {
    /// Starts exporting to `config.endpoint` (connecting on the first export) and
    /// returns the handle to record spans with and the counters. Must be called within
    /// a Tokio runtime.
    pub fn start(
        config: ExporterConfig,
    ) -> Result<(ExporterHandle, Arc<ExporterStats>), ExporterError> {
        let bad_endpoint = || ExporterError::Endpoint {
            endpoint: config.endpoint.to_string(),
        };
        if config.endpoint.scheme_str() != Some("http") || config.endpoint.host().is_none() {
            return Err(bad_endpoint());
        }
        if config.queue_capacity == 0 || config.max_batch == 0 {
            return Err(ExporterError::Size {
                queue: config.queue_capacity,
                batch: config.max_batch,
            });
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ExporterError::NoRuntime)?;
        let _guard = runtime.enter();
        let channel = Endpoint::from(config.endpoint.clone())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .connect_lazy();
        let stats = Arc::new(ExporterStats::default());
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = Task {
            client: TraceServiceClient::new(channel),
            resource: resource(&config),
            stats: stats.clone(),
            max_batch: config.max_batch,
            deadline: config.connect_timeout + config.request_timeout,
            failing: false,
        };
        let join = runtime.spawn(task.run(rx, stop_rx, config.batch_interval));
        let handle = ExporterHandle {
            tx,
            stats: stats.clone(),
            control: Arc::new(Control {
                stop: Mutex::new(Some(stop_tx)),
                task: Mutex::new(Some(join)),
            }),
        };
        Ok((handle, stats))
    }
}

/// Records spans for export; cheap to clone, one per listener or request.
#[derive(Debug, Clone)]
pub struct ExporterHandle {
    tx: mpsc::Sender<Span>,
    stats: Arc<ExporterStats>,
    control: Arc<Control>,
}

#[derive(Debug)]
struct Control {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ExporterHandle {
    /// Queues a sampled span for export, without blocking: a span that does not fit is
    /// dropped and counted. Unsampled spans are ignored.
    pub fn record(&self, span: Span) {
        if !span.sampled {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.stats
                .spans_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops taking spans and exports those queued, waiting at most `timeout` (then
    /// the rest are dropped). Later calls return at once.
    pub async fn shutdown(&self, timeout: Duration) {
        if let Some(stop) = lock(&self.control.stop).take() {
            let _ = stop.send(());
        }
        let Some(mut task) = lock(&self.control.task).take() else {
            return;
        };
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                ?timeout,
                "OTLP exporter: spans still queued at the shutdown deadline were dropped"
            );
        }
    }
}

/// A poisoned lock only means a panic elsewhere while holding an `Option`: still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The background task: batches, converts, exports, counts.
struct Task {
    client: TraceServiceClient<Channel>,
    resource: Resource,
    stats: Arc<ExporterStats>,
    max_batch: usize,
    /// Bound on one export, connecting included (the channel enforces both parts;
    /// this is the backstop).
    deadline: Duration,
    /// Whether the last export failed (failures are logged once, not per batch).
    failing: bool,
}

/// How often the export task empties the queue into its batch.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Span>,
        mut stop: oneshot::Receiver<()>,
        interval: Duration,
    ) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // The queue is drained on a timer, never woken per span: recording a span is a
        // channel push on the request path and nothing more, whatever the rate. 50 ms
        // empties the queue (4096 spans) before it fills at up to ~80k spans/s.
        let mut drain = tokio::time::interval(DRAIN_EVERY.min(interval));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_export = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                // A stop.
                _ = &mut stop => break,
                _ = drain.tick() => {
                    let mut closed = false;
                    loop {
                        match rx.try_recv() {
                            Ok(span) => {
                                batch.push(span);
                                if batch.len() >= self.max_batch {
                                    self.export(&mut batch).await;
                                    last_export = tokio::time::Instant::now();
                                }
                            }
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            // Every handle dropped.
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if !batch.is_empty() && last_export.elapsed() >= interval {
                        self.export(&mut batch).await;
                        last_export = tokio::time::Instant::now();
                    }
                    if closed {
                        break;
                    }
                }
            }
        }
        // Flush: what is queued now, and nothing recorded after.
        rx.close();
        while let Some(span) = rx.recv().await {
            batch.push(span);
            if batch.len() >= self.max_batch {
                self.export(&mut batch).await;
            }
        }
        if !batch.is_empty() {
            self.export(&mut batch).await;
        }
    }

    /// Sends `batch` once (leaving it empty) and counts the outcome.
    async fn export(&mut self, batch: &mut Vec<Span>) {
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![pb::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![pb::ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "warden-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: batch.drain(..).map(|s| to_proto(&s)).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        self.stats.export_batches.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(self.deadline, self.client.export(request)).await;
        let error = match result {
            Ok(Ok(response)) => {
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    .min(n);
                self.stats
                    .spans_exported
                    .fetch_add(n - rejected, Ordering::Relaxed);
                self.stats
                    .spans_failed_export
                    .fetch_add(rejected, Ordering::Relaxed);
                if self.failing {
                    tracing::info!("OTLP exporter: the collector accepts spans again");
                    self.failing = false;
                }
                return;
            }
            Ok(Err(status)) => status.to_string(),
            Err(_) => format!("no answer within {:?}", self.deadline),
        };
        self.stats
            .spans_failed_export
            .fetch_add(n, Ordering::Relaxed);
        if self.failing {
            tracing::debug!(spans = n, %error, "OTLP export failed; batch dropped");
        } else {
            tracing::warn!(spans = n, %error, "OTLP export failed; batch dropped (further failures are logged at debug)");
            self.failing = true;
        }
    }
}

/// The resource: `service.name`, then the configured attributes.
fn resource(config: &ExporterConfig) -> Resource {
    let mut attributes = vec![key_value(
        "service.name",
        &AttrValue::Str(config.service_name.clone()),
    )];
    attributes.extend(config.resource.iter().map(|(k, v)| key_value(k, v)));
    Resource {
        attributes,
        dropped_attributes_count: 0,
    }
}

fn key_value(key: &str, value: &AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A span as OTLP carries it.
pub fn to_proto(span: &Span) -> pb::Span {
    pb::Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        trace_state: span.tracestate.clone().unwrap_or_default(),
        parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        // The W3C trace flags: sampled.
        flags: u32::from(span.sampled),
        name: span.name.clone(),
        kind: match span.kind {
            SpanKind::Client => pb::span::SpanKind::Client,
            SpanKind::Server => pb::span::SpanKind::Server,
        }
        .into(),
        start_time_unix_nano: unix_nanos(span.start),
        end_time_unix_nano: unix_nanos(span.end.max(span.start)),
        attributes: span
            .attributes
            .iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        dropped_attributes_count: 0,
        status: Some(pb::Status {
            message: String::new(),
            code: if span.status_error {
                pb::status::StatusCode::Error
            } else {
                pb::status::StatusCode::Unset
            }
            .into(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Instant;

    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};
    use warden_proto::otlp::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use warden_proto::otlp::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };

    use super::*;
    use crate::trace::{Sampler, SpanKind};

    fn span(name: &str) -> Span {
        Span::start(SpanKind::Server, name, None, &Sampler::new(100.0))
    }

    /// An endpoint where nothing listens (a port just freed).
    async fn nowhere() -> Uri {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("http://{addr}").parse().unwrap()
    }

    /// A collector in this process: records what it gets, optionally rejects some
    /// spans or never answers.
    #[derive(Clone, Default)]
    struct Collector {
        got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
        reject: i64,
        hang: bool,
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: Request<ExportTraceServiceRequest>,
        ) -> Result<Response<ExportTraceServiceResponse>, Status> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            self.got.lock().unwrap().push(request.into_inner());
            Ok(Response::new(ExportTraceServiceResponse {
                partial_success: (self.reject > 0).then(|| ExportTracePartialSuccess {
                    rejected_spans: self.reject,
                    error_message: "no".into(),
                }),
            }))
        }
    }

    async fn collector(c: Collector) -> Uri {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(c))
                .serve_with_incoming(TcpListenerStream::new(l)),
        );
        format!("http://{addr}").parse().unwrap()
    }

    fn spans_of(got: &[ExportTraceServiceRequest]) -> Vec<&pb::Span> {
        got.iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let (handle, stats) =
            Exporter::start(ExporterConfig::new(nowhere().await, "a.ns")).unwrap();
        let spans: Vec<Span> = (0..10_000).map(|i| span(&format!("s{i}"))).collect();
        let started = Instant::now();
        for s in spans {
            handle.record(s);
        }
        // The current-thread runtime never ran the exporter's task meanwhile: exactly
        // the queue's capacity was kept.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(stats.snapshot(), (0, 10_000 - 4096, 0, 0));
        // With no collector, every queued span fails in batches of 512, and shutdown
        // is bounded.
        let started = Instant::now();
        handle.shutdown(Duration::from_secs(20)).await;
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(stats.snapshot(), (0, 10_000 - 4096, 4096, 8));
        // After shutdown, recording drops.
        handle.record(span("late"));
        assert_eq!(
            stats.spans_dropped_queue_full.load(Ordering::Relaxed),
            10_000 - 4096 + 1
        );
    }

    #[tokio::test]
    async fn unsampled_spans_are_not_queued() {
        let (handle, stats) =
            Exporter::start(ExporterConfig::new(nowhere().await, "a.ns")).unwrap();
        let mut s = span("x");
        s.sampled = false;
        handle.record(s);
        handle.shutdown(Duration::from_secs(5)).await;
        assert_eq!(stats.snapshot(), (0, 0, 0, 0));
    }

    #[tokio::test]
    async fn shutdown_flushes_in_batches() {
        let c = Collector::default();
        let uri = collector(c.clone()).await;
        let mut config = ExporterConfig::new(uri, "reviews-v2.bookinfo");
        config
            .resource
            .push(("k8s.namespace.name".into(), "bookinfo".into()));
        config.batch_interval = Duration::from_secs(3600);
        let (handle, stats) = Exporter::start(config).unwrap();
        for i in 0..1000 {
            handle.record(span(&format!("s{i}")));
        }
        handle.shutdown(Duration::from_secs(10)).await;
        assert_eq!(stats.snapshot(), (1000, 0, 0, 2));
        let got = c.got.lock().unwrap();
        let sizes: Vec<usize> = got
            .iter()
            .map(|r| spans_of(std::slice::from_ref(r)).len())
            .collect();
        assert_eq!(sizes, [512, 488]);
        let res = got[0].resource_spans[0].resource.as_ref().unwrap();
        let attr = |i: usize| {
            let kv = &res.attributes[i];
            (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap())
        };
        assert_eq!(
            attr(0),
            (
                "service.name",
                any_value::Value::StringValue("reviews-v2.bookinfo".into())
            )
        );
        assert_eq!(
            attr(1),
            (
                "k8s.namespace.name",
                any_value::Value::StringValue("bookinfo".into())
            )
        );
        let names: Vec<&str> = spans_of(&got).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.first(), Some(&"s0"));
        assert_eq!(names.last(), Some(&"s999"));
    }

    #[tokio::test]
    async fn a_partial_batch_goes_after_the_interval() {
        let c = Collector::default();
        let mut config = ExporterConfig::new(collector(c.clone()).await, "a.ns");
        config.batch_interval = Duration::from_millis(100);
        let (handle, stats) = Exporter::start(config).unwrap();
        handle.record(span("one"));
        let started = Instant::now();
        while stats.spans_exported.load(Ordering::Relaxed) == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "not exported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(spans_of(&c.got.lock().unwrap())[0].name, "one");
        handle.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn rejected_spans_count_as_failed() {
        let c = Collector {
            reject: 2,
            ..Default::default()
        };
        let (handle, stats) =
            Exporter::start(ExporterConfig::new(collector(c).await, "a.ns")).unwrap();
        for _ in 0..5 {
            handle.record(span("x"));
        }
        handle.shutdown(Duration::from_secs(10)).await;
        assert_eq!(stats.snapshot(), (3, 0, 2, 1));
    }

    #[tokio::test]
    async fn a_hanging_collector_bounds_export_and_shutdown() {
        let c = Collector {
            hang: true,
            ..Default::default()
        };
        let mut config = ExporterConfig::new(collector(c).await, "a.ns");
        config.request_timeout = Duration::from_millis(200);
        config.batch_interval = Duration::from_millis(50);
        let (handle, stats) = Exporter::start(config).unwrap();
        handle.record(span("x"));
        let started = Instant::now();
        while stats.spans_failed_export.load(Ordering::Relaxed) == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "no timeout");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Recording stays immediate while an export hangs; shutdown keeps its deadline.
        handle.record(span("y"));
        let started = Instant::now();
        handle.shutdown(Duration::from_millis(100)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn bad_config_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        for uri in ["https://collector:4317", "collector:4317", "/v1/traces"] {
            let config = ExporterConfig::new(uri.parse().unwrap(), "a.ns");
            assert!(
                matches!(Exporter::start(config), Err(ExporterError::Endpoint { .. })),
                "{uri}"
            );
        }
        let mut config = ExporterConfig::new("http://c:4317".parse().unwrap(), "a.ns");
        config.queue_capacity = 0;
        assert!(matches!(
            Exporter::start(config),
            Err(ExporterError::Size { .. })
        ));
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let config = ExporterConfig::new("http://c:4317".parse().unwrap(), "a.ns");
        assert!(matches!(
            Exporter::start(config),
            Err(ExporterError::NoRuntime)
        ));
    }

    #[test]
    fn span_conversion() {
        let server = span("in");
        let mut client = server.child(SpanKind::Client, "out");
        client.set("http.status_code", "503");
        client.set("n", 3i64);
        client.set("b", true);
        client.status_error = true;
        client.tracestate = Some("rojo=1".into());
        client.finish();
        let p = to_proto(&client);
        assert_eq!(p.trace_id, server.trace_id.to_vec());
        assert_eq!(p.parent_span_id, server.span_id.to_vec());
        assert_eq!(p.kind, pb::span::SpanKind::Client as i32);
        assert_eq!(p.flags, 1);
        assert_eq!(p.trace_state, "rojo=1");
        assert!(p.end_time_unix_nano >= p.start_time_unix_nano && p.start_time_unix_nano > 0);
        assert_eq!(p.status.unwrap().code, pb::status::StatusCode::Error as i32);
        assert_eq!(p.attributes.len(), 3);
        assert_eq!(
            p.attributes[1].value.clone().unwrap().value,
            Some(any_value::Value::IntValue(3))
        );
        assert!(to_proto(&server).parent_span_id.is_empty());
    }
}
