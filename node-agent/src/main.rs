//! `warden-agent`: the node agent.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use warden_agent::config::{Config, RunArgs};
use warden_common::process::{ShutdownSignals, init_tracing};

#[derive(Debug, Parser)]
#[command(
    name = "warden-agent",
    version,
    about = "Warden's node agent: SVIDs for local workloads over Envoy SDS and the SPIFFE Workload API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Call the Workload API, like `spire-agent api`.
    #[command(subcommand)]
    Api(warden_agent::client::ApiCmd),
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("warden-agent: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Api(cmd) => {
            let rt = match runtime() {
                Ok(r) => r,
                Err(c) => return c,
            };
            match rt.block_on(warden_agent::client::run(cmd)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("warden-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            let config = match Config::load(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("warden-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(config.log_format);
            tracing::info!(
                ca_addr = %config.ca_addr,
                trust_domain = %config.trust_domain,
                node = %config.node_name,
                mode = ?config.mode,
                credential = ?config.credential,
                svid_ttl = %warden_proto::duration::format(config.svid_ttl),
                rotation_ratio = config.rotation.ratio,
                socket_dir = %config.socket_dir.display(),
                "effective configuration"
            );
            let rt = match runtime() {
                Ok(r) => r,
                Err(c) => return c,
            };
            rt.block_on(async move {
                let signals = match ShutdownSignals::install() {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("warden-agent: cannot catch SIGTERM/SIGINT: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let bound = match warden_agent::app::build(config).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        eprintln!("warden-agent: {e:#}");
                        return ExitCode::FAILURE;
                    }
                };
                signals.wait("stopping").await;
                bound.shutdown().await;
                ExitCode::SUCCESS
            })
        }
    }
}
