//! `warden ca intermediate`: an intermediate CA for another cluster's CA (istiod, or a
//! Warden CA in another cluster), in Istio's `cacerts` layout, signed by this CA so
//! every cluster shares one root.
//!
//! The intermediate's key is made where the command runs, which should be where it
//! will be used; it is written 0600 and never sent anywhere. With `--csr` the key stays
//! wherever the CSR was made (an HSM, another machine) and only the certificates are
//! written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use warden_proto::admin::SignIntermediateRequest;

/// `warden ca ...`
#[derive(Debug, clap::Subcommand)]
pub enum CaCmd {
    /// Sign an intermediate CA for a cluster and write Istio's cacerts files
    /// (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) to --out.
    Intermediate(IntermediateArgs),
    /// Rotate the CA's own root: list, prepare, activate, taint, revoke authorities.
    #[command(subcommand)]
    Authority(crate::authority::AuthorityCmd),
}

/// `warden ca intermediate` arguments.
#[derive(Debug, clap::Args)]
pub struct IntermediateArgs {
    /// The cluster the intermediate is for (its certificate's subject names it).
    #[arg(long)]
    cluster: String,
    /// Directory for the files; created 0700 if missing.
    #[arg(long)]
    out: PathBuf,
    /// Key to make: ec-p256 or ec-p384. For RSA, make the key and a CSR elsewhere
    /// (e.g. with openssl) and pass --csr.
    #[arg(long, default_value = "ec-p256", value_parser = ["ec-p256", "ec-p384"])]
    key_type: String,
    /// Lifetime, e.g. 365d; clamped to the CA's own certificate.
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    ttl: Option<Duration>,
    /// A PEM CSR made elsewhere; no key is made or written.
    #[arg(long)]
    csr: Option<PathBuf>,
    /// Replace files already in --out.
    #[arg(long)]
    force: bool,
}

const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// Runs `warden ca ...`.
pub async fn run(socket: &Path, cmd: CaCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCmd::Intermediate(args) => intermediate(socket, args).await,
        CaCmd::Authority(cmd) => crate::authority::run(socket, cmd).await,
    }
}

async fn intermediate(socket: &Path, args: IntermediateArgs) -> anyhow::Result<ExitCode> {
    // Refuse before anything is signed: nothing is half-written over existing files.
    if !args.force {
        let existing: Vec<String> = FILES
            .iter()
            .map(|f| args.out.join(f))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "{} already exist; pass --force to replace them",
                existing.join(", ")
            );
        }
    }
    let (csr, key_pem) = match &args.csr {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("--csr {}", path.display()))?,
            None,
        ),
        None => {
            let alg = match args.key_type.as_str() {
                "ec-p384" => &rcgen::PKCS_ECDSA_P384_SHA384,
                _ => &rcgen::PKCS_ECDSA_P256_SHA256,
            };
            let key = rcgen::KeyPair::generate_for(alg)?;
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, args.cluster.as_str());
            let csr = params.serialize_request(&key)?.pem()?;
            (csr, Some(key.serialize_pem()))
        }
    };
    let mut client = crate::admin::connect(socket).await?;
    let resp = client
        .sign_intermediate(SignIntermediateRequest {
            csr,
            cluster: args.cluster.clone(),
            ttl_seconds: args
                .ttl
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the CA refused: {}", s.message()))?
        .into_inner();
    create_private_dir(&args.out)?;
    if let Some(key) = &key_pem {
        crate::cert::write_file(&args.out.join("ca-key.pem"), key.as_bytes(), 0o600)?;
    }
    crate::cert::write_file(
        &args.out.join("ca-cert.pem"),
        resp.certificate.as_bytes(),
        0o644,
    )?;
    crate::cert::write_file(
        &args.out.join("cert-chain.pem"),
        resp.cert_chain.as_bytes(),
        0o644,
    )?;
    crate::cert::write_file(
        &args.out.join("root-cert.pem"),
        resp.root_cert.as_bytes(),
        0o644,
    )?;
    let dir = args.out.display();
    let not_after = time::OffsetDateTime::from_unix_timestamp(resp.not_after)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| resp.not_after.to_string());
    println!(
        "intermediate CA for cluster {} (serial {}, valid until {not_after})",
        args.cluster, resp.serial
    );
    if key_pem.is_some() {
        println!("wrote {dir}/ca-cert.pem, ca-key.pem (0600), cert-chain.pem, root-cert.pem");
        println!("plug it into the cluster's CA (istiod or warden-ca) with:");
        println!(
            "  kubectl create secret generic cacerts -n istio-system \\\n    --from-file={dir}/ca-cert.pem --from-file={dir}/ca-key.pem \\\n    --from-file={dir}/cert-chain.pem --from-file={dir}/root-cert.pem"
        );
    } else {
        println!(
            "wrote {dir}/ca-cert.pem, cert-chain.pem, root-cert.pem; ca-key.pem is the key the CSR was made with"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create --out {}", dir.display()))?;
    }
    Ok(())
}
