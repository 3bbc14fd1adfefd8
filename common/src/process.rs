//! Process setup shared by the servers: logging and waiting for SIGTERM/SIGINT.

use crate::config::LogFormat;

/// Logs to stderr in `format`, level from `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Returns on SIGTERM or SIGINT, logging `what` (e.g. "draining").
pub async fn wait_for_signal(what: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: {what}"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: {what}"),
    }
}
