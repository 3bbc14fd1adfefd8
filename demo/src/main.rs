//! `warden-demo`: bookinfo's four services, small, for `warden up`'s demo mesh.
//!
//! `productpage` → `details` and `reviews`; `reviews` v2 and v3 → `ratings`. Each app
//! listens on `--listen` and reaches the others through its workload's sidecar as an
//! HTTP proxy (`--proxy`, default port 15001 of the listen address), forwarding the
//! request and trace headers as bookinfo's apps do ([`http::FORWARDED_HEADERS`]).
//! Every app answers `GET /health`; each request is logged as a JSON line on stderr.

mod details;
mod http;
mod productpage;
mod ratings;
mod reviews;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::http::{Upstream, sidecar_of};

#[derive(Debug, Parser)]
#[command(
    name = "warden-demo",
    version,
    about = "Bookinfo's services, small, for `warden up`"
)]
struct Cli {
    #[command(subcommand)]
    app: AppCmd,
}

/// Where an app listens and how it reaches other services.
#[derive(Debug, clap::Args)]
struct Common {
    /// Address to listen on (the workload's address and app port).
    #[arg(long)]
    listen: SocketAddr,
    /// The sidecar's outbound HTTP proxy [default: port 15001 of --listen's address].
    #[arg(long)]
    proxy: Option<SocketAddr>,
}

impl Common {
    fn upstream(&self, base: String, timeout: std::time::Duration) -> Upstream {
        Upstream {
            proxy: self.proxy.unwrap_or_else(|| sidecar_of(self.listen)),
            base,
            timeout,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AppCmd {
    /// The product page: GET /productpage renders details and reviews.
    Productpage {
        #[command(flatten)]
        common: Common,
        /// The details service.
        #[arg(long, default_value = "http://details:9080")]
        details_url: String,
        /// The reviews service.
        #[arg(long, default_value = "http://reviews:9080")]
        reviews_url: String,
    },
    /// The book's details: GET /details/<id>.
    Details {
        #[command(flatten)]
        common: Common,
    },
    /// Two reviews: GET /reviews/<id>; v2 and v3 add ratings' stars.
    Reviews {
        #[command(flatten)]
        common: Common,
        /// Which of bookinfo's versions.
        #[arg(long, value_enum)]
        version: reviews::Version,
        /// The stars' colour [default: black for v2, red for v3; v1 shows none].
        #[arg(long)]
        color: Option<String>,
        /// The name reported to productpage [default: reviews-<version>].
        #[arg(long)]
        name: Option<String>,
        /// The ratings service.
        #[arg(long, default_value = "http://ratings:9080")]
        ratings_url: String,
    },
    /// The ratings: GET /ratings/<id>.
    Ratings {
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden-demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.app)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(app: AppCmd) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (name, listen) = match &app {
        AppCmd::Productpage { common, .. } => ("productpage", common.listen),
        AppCmd::Details { common } => ("details", common.listen),
        AppCmd::Reviews { common, .. } => ("reviews", common.listen),
        AppCmd::Ratings { common } => ("ratings", common.listen),
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("{name}: cannot listen on {listen}"))?;
    eprintln!(
        "{}",
        serde_json::json!({"message": "serving", "app": name, "addr": listener.local_addr()?.to_string()})
    );
    let serve = async move {
        match app {
            AppCmd::Productpage {
                common,
                details_url,
                reviews_url,
            } => {
                let page = productpage::ProductPage {
                    details: common.upstream(details_url, productpage::CALL_TIMEOUT),
                    reviews: common.upstream(reviews_url, productpage::CALL_TIMEOUT),
                };
                http::serve(listener, page).await;
            }
            AppCmd::Details { .. } => http::serve(listener, details::Details).await,
            AppCmd::Reviews {
                common,
                version,
                color,
                name,
                ratings_url,
            } => {
                let color = color.or_else(|| version.default_color().map(String::from));
                let timeout = reviews::ratings_timeout(color.as_deref().unwrap_or(""));
                let app = reviews::Reviews {
                    name: name.unwrap_or_else(|| format!("reviews-{}", version.as_str())),
                    color: if version == reviews::Version::V1 {
                        None
                    } else {
                        color
                    },
                    ratings: common.upstream(ratings_url, timeout),
                };
                http::serve(listener, app).await;
            }
            AppCmd::Ratings { .. } => http::serve(listener, ratings::Ratings).await,
        }
    };
    tokio::select! {
        () = serve => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!(
        "{}",
        serde_json::json!({"message": "stopping", "app": name})
    );
    Ok(())
}
