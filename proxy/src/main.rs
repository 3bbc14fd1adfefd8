//! `warden-proxy`: the sidecar.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use warden_proxy::config::{Config, RunArgs};

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
    let Command::Run(args) = Cli::parse().command;
    warden_common::process::serve("warden-proxy", Config::load(args), warden_proxy::app::build)
}
