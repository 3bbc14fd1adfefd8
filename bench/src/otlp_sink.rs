//! A minimal OTLP/gRPC trace collector for `bench/proxy.sh`'s tracing variants: it
//! accepts every `Export`, counts spans and throws them away, so the benchmark measures
//! what the proxies pay to build, batch and send spans, not a collector's storage.
//!
//!     otlp_sink 127.0.0.1:4317
//!
//! Prints the span count on SIGTERM/SIGINT (stderr) and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use warden_proto::otlp::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use warden_proto::otlp::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Debug, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_string())
        .parse()?;
    let sink = Sink::default();
    let spans = sink.spans.clone();
    let stop = async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ok();
        let int = tokio::signal::ctrl_c();
        match term.as_mut() {
            Some(t) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = int => {}
                }
            }
            None => {
                let _ = int.await;
            }
        }
    };
    eprintln!("otlp_sink: listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve_with_shutdown(addr, stop)
        .await?;
    eprintln!("otlp_sink: {} spans", spans.load(Ordering::Relaxed));
    Ok(())
}
