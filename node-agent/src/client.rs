//! `warden-agent api ...`: a Workload API client for people, like `spire-agent api`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use tonic::transport::Channel;
use warden_common::files::pem_encode;
use x509_parser::prelude::{FromDer, X509Certificate};

use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};

/// `warden-agent api ...`
#[derive(Debug, clap::Subcommand)]
pub enum ApiCmd {
    /// Fetch an SVID from the Workload API.
    #[command(subcommand)]
    Fetch(FetchCmd),
    /// Validate a JWT-SVID with the Workload API.
    Validate {
        #[command(flatten)]
        socket: SocketArg,
        /// Audience the token must carry.
        #[arg(long)]
        audience: String,
        /// The JWT-SVID.
        #[arg(long)]
        svid: String,
    },
}

/// Where the Workload API is.
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The agent's socket: a path or unix:///path [env: SPIFFE_ENDPOINT_SOCKET].
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    socket: String,
}

/// `warden-agent api fetch ...`
#[derive(Debug, clap::Subcommand)]
pub enum FetchCmd {
    /// X.509-SVIDs and bundle; --write saves svid.N.pem, svid.N.key (0600), bundle.N.pem.
    X509 {
        #[command(flatten)]
        socket: SocketArg,
        /// Directory to write the SVIDs, keys and bundles to.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// A JWT-SVID for an audience.
    Jwt {
        #[command(flatten)]
        socket: SocketArg,
        /// Audience; repeat for several.
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Only this one of the caller's SPIFFE IDs.
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

async fn connect(socket: &str) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    let path = PathBuf::from(socket.strip_prefix("unix://").unwrap_or(socket));
    let channel = warden_common::uds::channel(&path)
        .await
        .with_context(|| format!("cannot connect to the Workload API at {}", path.display()))?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        warden_proto::WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("the agent answered {:?}: {}", s.code(), s.message())
}

fn pem_blocks(der_concat: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut rest = der_concat;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (r, _) = X509Certificate::from_der(rest)
            .context("a certificate in the answer does not parse")?;
        out.push(rest[..rest.len() - r.len()].to_vec());
        rest = r;
    }
    Ok(out)
}

fn describe(der: &[u8]) -> String {
    match X509Certificate::from_der(der) {
        Ok((_, c)) => format!(
            "valid after {}, until {}, serial {}",
            c.validity().not_before,
            c.validity().not_after,
            hex::encode(c.raw_serial())
        ),
        Err(e) => format!("unparsable: {e}"),
    }
}

fn write(dir: &Path, name: &str, data: &str, mode: u32) -> anyhow::Result<()> {
    crate::files::write_atomic(&dir.join(name), data.as_bytes(), mode)
        .with_context(|| format!("cannot write {}", dir.join(name).display()))
}

/// Runs `warden-agent api ...`.
pub async fn run(cmd: ApiCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ApiCmd::Fetch(FetchCmd::X509 { socket, write: out }) => {
            let start = Instant::now();
            let mut client = connect(&socket.socket).await?;
            let mut stream = client
                .fetch_x509svid(request(X509svidRequest {}))
                .await
                .map_err(status)?
                .into_inner();
            let resp = stream
                .message()
                .await
                .map_err(status)?
                .context("the agent closed the stream without an answer")?;
            println!(
                "Received {} svid after {:.3}ms\n",
                resp.svids.len(),
                start.elapsed().as_secs_f64() * 1e3
            );
            if let Some(dir) = &out {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            for (i, s) in resp.svids.iter().enumerate() {
                let chain = pem_blocks(&s.x509_svid)?;
                let bundle = pem_blocks(&s.bundle)?;
                println!("SPIFFE ID:\t{}", s.spiffe_id);
                if let Some(leaf) = chain.first() {
                    println!("SVID:\t\t{}", describe(leaf));
                }
                for (n, ca) in bundle.iter().enumerate() {
                    println!("CA #{}:\t\t{}", n + 1, describe(ca));
                }
                if let Some(dir) = &out {
                    let chain_pem: String =
                        chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
                    let bundle_pem: String = bundle
                        .iter()
                        .map(|c| pem_encode("CERTIFICATE", c))
                        .collect();
                    write(
                        dir,
                        &format!("svid.{i}.key"),
                        &pem_encode("PRIVATE KEY", &s.x509_svid_key),
                        0o600,
                    )?;
                    write(dir, &format!("svid.{i}.pem"), &chain_pem, 0o644)?;
                    write(dir, &format!("bundle.{i}.pem"), &bundle_pem, 0o644)?;
                    println!(
                        "Wrote {0}/svid.{i}.pem, {0}/svid.{i}.key (0600), {0}/bundle.{i}.pem",
                        dir.display()
                    );
                }
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiCmd::Fetch(FetchCmd::Jwt {
            socket,
            audience,
            spiffe_id,
        }) => {
            let mut client = connect(&socket.socket).await?;
            let resp = client
                .fetch_jwtsvid(request(JwtsvidRequest {
                    audience,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                }))
                .await
                .map_err(status)?
                .into_inner();
            if resp.svids.is_empty() {
                bail!("the agent returned no JWT-SVID");
            }
            for s in resp.svids {
                println!("token({}):\n\t{}", s.spiffe_id, s.svid);
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiCmd::Validate {
            socket,
            audience,
            svid,
        } => {
            let mut client = connect(&socket.socket).await?;
            let resp = client
                .validate_jwtsvid(request(ValidateJwtsvidRequest { audience, svid }))
                .await
                .map_err(status)?
                .into_inner();
            println!("SVID is valid.\nSPIFFE ID : {}", resp.spiffe_id);
            Ok(ExitCode::SUCCESS)
        }
    }
}
