//! `warden-agent`: the node agent.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use warden_agent::config::{Config, RunArgs};
use warden_common::process::serve;

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

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => serve("warden-agent", Config::load(args), warden_agent::app::build),
        Command::Api(cmd) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warden-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(warden_agent::client::run(cmd)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("warden-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
