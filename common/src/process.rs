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

/// SIGTERM and SIGINT, caught from the moment this is made. Make it before the server
/// announces that it is serving: a signal that arrives during start-up (or right after
/// the announcement) is then a graceful stop, not the default action that kills the
/// process.
#[derive(Debug)]
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Starts catching the signals (inside a Tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Returns on SIGTERM or SIGINT, logging `what` (e.g. "draining").
    pub async fn wait(mut self, what: &str) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: {what}"),
            _ = self.int.recv() => tracing::info!("SIGINT: {what}"),
        }
    }
}
