//! Process setup shared by the servers: the one `main()` sequence ([`serve`]), logging
//! and waiting for SIGTERM/SIGINT.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::process::ExitCode;

use crate::config::{ConfigError, LogFormat};

/// A server's effective configuration, as [`serve`] needs it.
pub trait ServerConfig: Debug {
    /// How to log.
    fn log_format(&self) -> LogFormat;

    /// The runtime the server runs on: multi-threaded with a worker per core unless the
    /// config says otherwise.
    fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }

    /// Logs the configuration in effect (flags over file over defaults), once at start.
    /// Override to redact secrets; keys and tokens are never logged.
    fn log_effective(&self) {
        tracing::info!(config = ?self, "effective configuration");
    }
}

/// What a binary's `app::build` returns: its servers, bound and serving.
pub trait Serving {
    /// Stops accepting, drains what is in flight, and returns when the server is down.
    fn shutdown(self) -> impl Future<Output = ()>;
}

/// The `main()` of every Warden server, in one order: a config error exits 2 with the
/// message; then logging starts, the effective config is logged, the runtime is made,
/// SIGTERM/SIGINT are caught (before anything is bound, so a signal during start-up is
/// a clean stop), the server is built (a failure exits 1 with the cause chain), and on
/// the first signal it drains and the process exits 0.
pub fn serve<C, B, E, F>(
    name: &str,
    config: Result<C, ConfigError>,
    build: impl FnOnce(C) -> F,
) -> ExitCode
where
    C: ServerConfig,
    B: Serving,
    E: Display,
    F: Future<Output = Result<B, E>>,
{
    // Only ring is compiled in; make the choice explicit (one crypto provider).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format());
    config.log_effective();
    let runtime = match config.runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = match ShutdownSignals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: cannot catch SIGTERM/SIGINT: {e}");
                return ExitCode::FAILURE;
            }
        };
        let bound = match build(config).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("{name}: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        signals.wait("stopping").await;
        bound.shutdown().await;
        ExitCode::SUCCESS
    })
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter in force and its handle, for [`set_log_filter`].
static LOG_FILTER: std::sync::OnceLock<(FilterHandle, std::sync::Mutex<String>)> =
    std::sync::OnceLock::new();

/// Logs to stderr in `format`, level from `RUST_LOG` (default `info`); the level can
/// be changed while running with [`set_log_filter`].
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let spec = filter.to_string();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    let _ = LOG_FILTER.set((handle, std::sync::Mutex::new(spec)));
}

/// The log filter in force (`RUST_LOG` syntax), when [`init_tracing`] set one up.
pub fn log_filter() -> Option<String> {
    LOG_FILTER.get().map(|(_, s)| {
        s.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    })
}

/// Parses a filter as [`set_log_filter`] does, without applying it. The filter comes
/// from whoever reaches an admin port, so field values are matched literally, never
/// compiled as regular expressions (tracing-subscriber's advice for untrusted input:
/// the `admin_api` fuzz target found a 1 KiB `[{x=\w\w...}]` compiling for minutes).
fn parse_log_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(spec)
        .map_err(|e| format!("{spec:?} is not a log filter: {e}"))
}

/// Whether [`set_log_filter`] would take `spec` (it applies nothing that fails here).
pub fn check_log_filter(spec: &str) -> Result<(), String> {
    parse_log_filter(spec).map(drop)
}

/// Replaces the log filter (`RUST_LOG` syntax: `debug`, `warden_proxy=debug,info`).
/// A filter that does not parse changes nothing and says why.
pub fn set_log_filter(spec: &str) -> Result<(), String> {
    let (handle, current) = LOG_FILTER
        .get()
        .ok_or("logging was not set up with a changeable filter")?;
    let filter = parse_log_filter(spec)?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log filter: {e}"))?;
    *current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = spec.to_string();
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_compile_no_regular_expressions() {
        // Found by the admin_api fuzz target: as a regular expression this field value
        // took minutes to compile; matched literally it is read at once.
        let spec = format!("[{{x={}}}]=trace", r"\w".repeat(300));
        let started = std::time::Instant::now();
        assert!(check_log_filter(&spec).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(check_log_filter("warden_proxy=debug,info").is_ok());
        assert!(check_log_filter("warden_proxy=loud").is_err());
    }
}
