//! `warden-ca`: the certificate authority server.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use warden_ca::config::{Config, RunArgs};

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
    let Command::Run(args) = Cli::parse().command;
    warden_common::process::serve("warden-ca", Config::load(args), warden_ca::app::build)
}
