//! `warden-proxy`: the sidecar.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use warden_common::process::init_tracing;
use warden_proxy::app::{run, runtime};
use warden_proxy::config::RunArgs;

#[derive(Debug, Parser)]
#[command(
    name = "warden-proxy",
    version,
    about = "Warden's sidecar: SPIFFE mutual TLS with SVIDs from the node agent, Istio policy on every connection and request"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar for one WorkloadEntry.
    Run(RunArgs),
}

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Command::Run(args) = Cli::parse().command;
    init_tracing(args.log_format);
    let rt = match runtime(args.concurrency) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warden-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "warden-proxy failed");
            eprintln!("warden-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
