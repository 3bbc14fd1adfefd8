//! `warden cert inspect`: what a certificate file says, in SPIFFE terms.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// `warden cert ...`
#[derive(Debug, clap::Subcommand)]
pub enum CertCmd {
    /// Request a certificate from the CA: makes a P-256 key here (written 0600, never
    /// sent), sends a CSR with CreateCertificate, writes cert-chain.pem, key.pem and
    /// root-cert.pem to --out.
    Request(RequestArgs),
    /// Print SPIFFE ID, validity, issuer and serial of each certificate in a PEM or DER file.
    Inspect {
        /// Certificate file (a chain is fine).
        file: PathBuf,
        /// One JSON object per certificate.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate by serial, or every unexpired certificate of an identity
    /// (which then gets no new one until `unrevoke`); it is in the CA's CRLs at once.
    #[command(group = clap::ArgGroup::new("what").required(true))]
    Revoke {
        /// The certificate's serial (hex, as `warden cert inspect` prints it).
        #[arg(group = "what")]
        serial: Option<String>,
        /// Revoke this identity and every unexpired certificate it holds.
        #[arg(long, group = "what")]
        spiffe_id: Option<String>,
        /// RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged,
        /// superseded, cessationOfOperation.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Let a revoked identity be issued certificates again (what was revoked stays
    /// revoked).
    Unrevoke {
        /// The identity.
        #[arg(long)]
        spiffe_id: String,
    },
}

/// `warden cert request` flags.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The CA's certificate API.
    #[arg(long, default_value = "https://localhost:15012")]
    ca_addr: String,
    /// Trust bundle that authenticates the CA (the CA writes it to <data-dir>/root-cert.pem).
    #[arg(long, default_value = "./data/root-cert.pem")]
    ca_root: PathBuf,
    /// Name to verify in the CA's serving certificate [default: the host of --ca-addr].
    #[arg(long)]
    tls_server_name: Option<String>,
    /// File holding a bearer token: a join token or a service-account JWT.
    #[arg(long, conflicts_with = "cert")]
    token_file: Option<PathBuf>,
    /// Authenticate with this certificate chain (renewal over mTLS); needs --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Ask for this SPIFFE ID on a workload's behalf (node impersonation).
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Requested lifetime, e.g. 1h [default: the CA's --workload-cert-ttl].
    #[arg(long, value_parser = warden_proto::duration::parse_flag)]
    ttl: Option<std::time::Duration>,
    /// Directory for cert-chain.pem, key.pem (0600) and root-cert.pem.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `warden cert request`.
async fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    use warden_proto::istio_ca::IstioCertificateRequest;
    use warden_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let roots = read(&args.ca_root)?;
    let uri: http::Uri = args.ca_addr.parse().with_context(|| {
        format!(
            "--ca-addr {:?} is not a URL like https://host:15012",
            args.ca_addr
        )
    })?;
    let host = uri.host().unwrap_or("localhost").to_string();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&roots))
        .domain_name(args.tls_server_name.clone().unwrap_or(host));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    let token = match &args.token_file {
        Some(p) => Some(read(p)?.trim().to_string()),
        None => None,
    };
    if token.is_none() && args.cert.is_none() {
        bail!("give --token-file (join token or JWT) or --cert/--key to authenticate to the CA");
    }
    // The key is made here and never leaves this machine.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(id) = &args.spiffe_id {
        params.subject_alt_names = vec![rcgen::SanType::URI(
            id.as_str()
                .try_into()
                .with_context(|| format!("--spiffe-id {id:?}"))?,
        )];
    }
    let csr = params.serialize_request(&key)?.pem()?;
    let channel = Endpoint::from_shared(args.ca_addr.clone())?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to the CA at {}", args.ca_addr))?;
    let mut client = IstioCertificateServiceClient::new(channel);
    let metadata = args.spiffe_id.as_ref().map(|id| prost_types::Struct {
        fields: [(
            warden_proto::IMPERSONATED_IDENTITY.to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.clone())),
            },
        )]
        .into_iter()
        .collect(),
    });
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: args
            .ttl
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0),
        metadata,
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .context("the token has characters not allowed in a header")?,
        );
    }
    let chain = client
        .create_certificate(req)
        .await
        .map_err(|s| anyhow::anyhow!("the CA refused: {} ({:?})", s.message(), s.code()))?
        .into_inner()
        .cert_chain;
    if chain.len() < 2 {
        bail!(
            "the CA answered {} certificate(s); expected a leaf and the root bundle",
            chain.len()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (leaf_and_intermediates, root) = chain.split_at(chain.len() - 1);
    write_file(
        &args.out.join("key.pem"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &args.out.join("cert-chain.pem"),
        leaf_and_intermediates.concat().as_bytes(),
        0o644,
    )?;
    write_file(&args.out.join("root-cert.pem"), root[0].as_bytes(), 0o644)?;
    println!(
        "wrote {}/cert-chain.pem, key.pem (0600) and root-cert.pem",
        args.out.display()
    );
    inspect(&args.out.join("cert-chain.pem"), false)
}

pub(crate) fn write_file(path: &std::path::Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs `warden cert ...`.
pub async fn run(socket: &std::path::Path, cmd: CertCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCmd::Request(args) => request(args).await,
        CertCmd::Inspect { file, json } => inspect(&file, json),
        CertCmd::Revoke {
            serial,
            spiffe_id,
            reason,
        } => {
            let mut client = crate::admin::connect(socket).await?;
            let resp = client
                .revoke_certificate(warden_proto::admin::RevokeCertificateRequest {
                    serial: serial.unwrap_or_default(),
                    spiffe_id: spiffe_id.clone().unwrap_or_default(),
                    reason,
                })
                .await
                .map_err(|s| anyhow::anyhow!("the CA refused: {}", s.message()))?
                .into_inner();
            if let Some(id) = spiffe_id {
                println!(
                    "{id} revoked: no new certificate until `warden cert unrevoke --spiffe-id {id}`"
                );
            }
            if resp.serials.is_empty() {
                println!("no unexpired certificate to add to the CRL");
            }
            for serial in &resp.serials {
                println!("revoked {serial}");
            }
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::Unrevoke { spiffe_id } => {
            let mut client = crate::admin::connect(socket).await?;
            client
                .unrevoke_identity(warden_proto::admin::UnrevokeIdentityRequest {
                    spiffe_id: spiffe_id.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("the CA refused: {}", s.message()))?;
            println!("{spiffe_id} may be issued certificates again");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `warden cert inspect`.
pub fn inspect(file: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let certs: Vec<CertificateDer<'static>> =
        if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
            CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("{}: not PEM certificates: {e:?}", file.display()))?
        } else {
            vec![CertificateDer::from(bytes)]
        };
    if certs.is_empty() {
        bail!(
            "{}: holds no certificate (expected PEM CERTIFICATE blocks or DER)",
            file.display()
        );
    }
    let now = time::OffsetDateTime::now_utc();
    for (i, der) in certs.iter().enumerate() {
        let (_, c) = X509Certificate::from_der(der).map_err(|e| {
            anyhow::anyhow!(
                "{}: certificate #{} does not parse: {e}",
                file.display(),
                i + 1
            )
        })?;
        let uris: Vec<String> = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some((*u).to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let spiffe_id = uris.iter().find(|u| u.starts_with("spiffe://")).cloned();
        let not_before = c.validity().not_before.to_datetime();
        let not_after = c.validity().not_after.to_datetime();
        let fmt = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.to_string())
        };
        let status = if now < not_before {
            "not yet valid"
        } else if now > not_after {
            "expired"
        } else {
            "valid"
        };
        let fingerprint = hex::encode(ring::digest::digest(&ring::digest::SHA256, der));
        let serial = hex::encode(c.raw_serial());
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "index": i,
                    "spiffe_id": spiffe_id,
                    "subject": c.subject().to_string(),
                    "issuer": c.issuer().to_string(),
                    "serial": serial,
                    "not_before": fmt(not_before),
                    "not_after": fmt(not_after),
                    "status": status,
                    "is_ca": c.is_ca(),
                    "sha256": fingerprint,
                })
            );
        } else {
            if i > 0 {
                println!();
            }
            println!("Certificate #{} of {}", i + 1, certs.len());
            println!(
                "  SPIFFE ID  : {}",
                spiffe_id.as_deref().unwrap_or("(none)")
            );
            println!("  Subject    : {}", c.subject());
            println!("  Issuer     : {}", c.issuer());
            println!("  Serial     : {serial}");
            println!("  Not before : {}", fmt(not_before));
            println!("  Not after  : {} ({status})", fmt(not_after));
            println!("  CA         : {}", c.is_ca());
            println!("  SHA-256    : {fingerprint}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
