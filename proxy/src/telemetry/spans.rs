//! A span per exchange: continued from the request's W3C or B3 context
//! ([`crate::trace`]), its context written into the request for the next hop, ended
//! with Istio's attributes when the exchange completes, and exported over OTLP
//! ([`crate::otlp`]) without ever waiting on the collector.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderMap;

use super::{Detail, TelemetrySettings};
use crate::metrics::{ConnLabels, Metrics};
use crate::otlp::{Exporter, ExporterConfig, ExporterHandle, ExporterStats};
use crate::trace::{IstioAttributes, Sampler, Span};

pub use crate::trace::SpanKind;

/// A request's span, in flight.
#[derive(Debug)]
pub struct ActiveSpan(Span);

impl ActiveSpan {
    /// The trace id, 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        crate::trace::hex(&self.0.trace_id)
    }
}

/// Who this proxy is, on every span.
#[derive(Debug, Clone)]
pub struct SpanIdentity {
    /// Canonical service of the workload.
    pub canonical_service: String,
    /// Canonical revision.
    pub canonical_revision: String,
    /// Namespace.
    pub namespace: String,
    /// Envoy's node id.
    pub node_id: String,
    /// The mesh (trust domain).
    pub mesh_id: String,
}

/// Starts spans and hands finished ones to the exporter.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    exporter: ExporterHandle,
    identity: SpanIdentity,
    /// The exporter's counters.
    pub stats: Arc<ExporterStats>,
}

impl Tracer {
    /// The tracer the settings ask for (`None`: tracing off), its counters registered
    /// in `metrics`. Must run inside the runtime (the exporter is a task).
    pub fn start(
        settings: &TelemetrySettings,
        identity: SpanIdentity,
        metrics: &mut Metrics,
    ) -> Result<Option<Self>, String> {
        let Some(endpoint) = &settings.otlp_endpoint else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("--tracing-otlp-endpoint {endpoint:?}: {e}"))?;
        let service = crate::trace::service_name(&identity.canonical_service, &identity.namespace);
        let config = ExporterConfig::new(uri, service);
        let (exporter, stats) = Exporter::start(config).map_err(|e| format!("tracing: {e}"))?;
        type Read = fn(&ExporterStats) -> u64;
        let counters: [(&str, &str, Read); 3] = [
            (
                "warden_tracing_spans_exported",
                "Spans the collector accepted",
                |s| s.spans_exported.load(Ordering::Relaxed),
            ),
            (
                "warden_tracing_spans_dropped",
                "Spans dropped because the export queue was full",
                |s| s.spans_dropped_queue_full.load(Ordering::Relaxed),
            ),
            (
                "warden_tracing_spans_failed",
                "Spans lost because the collector could not be reached or refused them",
                |s| s.spans_failed_export.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in counters {
            let stats = stats.clone();
            metrics.register_counter(name, help, move || read(&stats));
        }
        Ok(Some(Self {
            sampler: Sampler::new(settings.sampling),
            exporter,
            identity,
            stats,
        }))
    }

    /// Starts the span of a request: a child of the context `headers` carry (or a
    /// new trace, sampled at the configured percentage), whose own context replaces
    /// theirs for the next hop.
    pub fn start_span(
        &self,
        headers: &mut HeaderMap,
        kind: SpanKind,
        name: Option<String>,
        _detail: &Detail,
    ) -> Option<ActiveSpan> {
        let incoming = crate::trace::extract(headers);
        let span = Span::start(
            kind,
            name.unwrap_or_else(|| "unknown".to_string()),
            incoming.as_ref(),
            &self.sampler,
        );
        span.inject(headers);
        Some(ActiveSpan(span))
    }

    /// Ends `span` with the exchange's outcome and queues it for export.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        span: ActiveSpan,
        detail: &Detail,
        labels: &ConnLabels,
        code: u16,
        flags: &str,
        received: u64,
        sent: u64,
    ) {
        let mut span = span.0;
        if !span.sampled {
            return;
        }
        let known = |s: &str| (s != "unknown" && !s.is_empty()).then(|| s.to_string());
        let url = format!(
            "http://{}{}",
            detail.authority.as_deref().unwrap_or(""),
            detail.path.as_deref().unwrap_or("")
        );
        let protocol = match detail.protocol {
            Some(http::Version::HTTP_2) => "HTTP/2",
            Some(http::Version::HTTP_10) => "HTTP/1.0",
            Some(_) => "HTTP/1.1",
            None => "TCP",
        };
        let peer = detail
            .downstream_remote
            .map(|a| a.to_string())
            .unwrap_or_default();
        let upstream = detail.upstream.host.map(|a| a.to_string());
        let source = known(&labels.source.principal);
        let destination = known(&labels.destination.principal);
        let id = &self.identity;
        span.set_istio(&IstioAttributes {
            canonical_service: &id.canonical_service,
            canonical_revision: &id.canonical_revision,
            mesh_id: &id.mesh_id,
            namespace: &id.namespace,
            node_id: &id.node_id,
            request_id: detail.request_id.as_deref(),
            url: &url,
            method: detail.method.as_ref().map_or("", http::Method::as_str),
            protocol,
            status_code: (code != 0 || detail.protocol.is_none()).then_some(code),
            downstream_cluster: None,
            user_agent: detail.user_agent.as_deref(),
            peer_address: &peer,
            request_size: received,
            response_size: sent,
            response_flags: flags,
            upstream_cluster: detail.upstream.cluster.as_deref(),
            upstream_address: upstream.as_deref(),
            source_principal: source.as_deref(),
            destination_principal: destination.as_deref(),
        });
        if let Some(a) = &detail.authz {
            span.set("warden.authz_decision", a.decision);
            if let Some(p) = &a.policy {
                span.set("warden.authz_policy", p.as_str());
            }
        }
        span.finish();
        self.exporter.record(span);
    }

    /// Exports what is queued, for at most `timeout` (on shutdown).
    pub async fn flush(&self, timeout: Duration) {
        self.exporter.shutdown(timeout).await;
    }
}
