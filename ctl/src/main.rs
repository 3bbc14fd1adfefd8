//! `warden`: the command line for operating a Warden mesh.
//!
//! Talks to the CA's admin socket for registration entries, join tokens and the audit
//! log, and reads certificates locally (`warden cert inspect`).

mod admin;
mod authority;
mod authz;
mod ca;
mod cert;
mod console;
mod route;
mod status;
mod up;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Operate a Warden mesh: the CA's entries, tokens and audit log; certificates"
)]
struct Cli {
    /// The CA's admin socket.
    #[arg(long, global = true, default_value = "./data/admin.sock")]
    admin_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read and verify the CA's audit log.
    #[command(subcommand)]
    Audit(admin::AuditCmd),
    /// Manage registration entries (which node may obtain which identity).
    #[command(subcommand)]
    Entry(admin::EntryCmd),
    /// Manage one-time node join tokens.
    #[command(subcommand)]
    Token(admin::TokenCmd),
    /// The CA itself: intermediates for other clusters' CAs.
    #[command(subcommand)]
    Ca(ca::CaCmd),
    /// Inspect certificates.
    #[command(subcommand)]
    Cert(cert::CertCmd),
    /// Evaluate Istio authorization policies offline.
    #[command(subcommand)]
    Authz(authz::AuthzCmd),
    /// Check Istio security policies as Istio's validation webhook would, offline.
    Validate(validate::ValidateArgs),
    /// Decide offline what a client sidecar does with a request (VirtualService,
    /// DestinationRule).
    #[command(subcommand)]
    Route(route::RouteCmd),
    /// The console alone (what `warden up` serves), for tests and hand-started meshes.
    #[command(hide = true)]
    Console(console::ConsoleArgs),
    /// Run a whole mesh on this machine: a CA, an agent, bookinfo behind sidecars, an
    /// ingress gateway (and Prometheus when installed); Ctrl-C stops it all.
    Up(up::UpArgs),
    /// What a running `warden up` started: state, identities, certificate expiry and
    /// last rotation.
    Status(status::StatusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Authz(cmd) = cli.command {
        // Offline: no runtime, no CA.
        return authz::run(cmd);
    }
    if let Command::Validate(args) = cli.command {
        return validate::run(args);
    }
    if let Command::Route(cmd) = cli.command {
        return route::run(cmd);
    }
    if let Command::Up(args) = cli.command {
        // Its own multi-threaded runtime, signals and children.
        return up::run(args);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Audit(cmd) => admin::audit(&cli.admin_socket, cmd).await,
            Command::Entry(cmd) => admin::entry(&cli.admin_socket, cmd).await,
            Command::Token(cmd) => admin::token(&cli.admin_socket, cmd).await,
            Command::Cert(cmd) => cert::run(&cli.admin_socket, cmd).await,
            Command::Ca(cmd) => ca::run(&cli.admin_socket, cmd).await,
            Command::Status(args) => status::run(args).await,
            Command::Console(args) => console::run(cli.admin_socket, args).await,
            // Handled above, before the runtime starts.
            Command::Authz(_) | Command::Validate(_) | Command::Route(_) | Command::Up(_) => {
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warden: {e:#}");
            ExitCode::FAILURE
        }
    }
}
