//! `warden-ca`: the certificate authority server.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use warden_ca::config::{Config, RunArgs};
use warden_common::process::{ShutdownSignals, init_tracing};

#[derive(Debug, Parser)]
#[command(
    name = "warden-ca",
    version,
    about = "Warden's SPIFFE certificate authority"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the CA server.
    Run(RunArgs),
}

fn main() -> ExitCode {
    // Only ring is compiled in, but make the choice explicit (see shared/CRATES.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Command::Run(args) = Cli::parse().command;
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden-ca: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    tracing::info!(
        data_dir = %config.data_dir.display(),
        trust_domain = %config.trust_domain,
        database = %config.database_url_redacted(),
        plugin_certs = ?config.plugin_certs,
        workload_cert_ttl = %warden_proto::duration::format(config.workload_cert_ttl),
        max_workload_cert_ttl = %warden_proto::duration::format(config.max_workload_cert_ttl),
        key_type = %config.key_type,
        jwks = ?config.jwks,
        token_issuer = ?config.token_issuer,
        token_audiences = ?config.token_audiences,
        trusted_node_accounts = ?config.trusted_node_accounts.iter().map(|a| format!("{}/{}", a.namespace, a.name)).collect::<Vec<_>>(),
        "effective configuration"
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden-ca: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = match ShutdownSignals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warden-ca: cannot catch SIGTERM/SIGINT: {e}");
                return ExitCode::FAILURE;
            }
        };
        let bound = match warden_ca::app::build(config).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("warden-ca: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        signals.wait("draining").await;
        bound.shutdown().await;
        ExitCode::SUCCESS
    })
}
