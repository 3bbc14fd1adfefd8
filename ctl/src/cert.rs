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
    /// Print SPIFFE ID, validity, issuer and serial of each certificate in a PEM or DER file.
    Inspect {
        /// Certificate file (a chain is fine).
        file: PathBuf,
        /// One JSON object per certificate.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `warden cert ...`.
pub fn run(cmd: CertCmd) -> anyhow::Result<ExitCode> {
    let CertCmd::Inspect { file, json } = cmd;
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
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
