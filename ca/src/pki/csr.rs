//! Checking a certificate signing request before anything is signed.
//!
//! The CA takes only the public key from a CSR. It checks that the request is a
//! well-formed, self-signed PKCS#10 with an allowed key, that any URI SAN names the
//! identity the caller is authorized for, and that it asks for nothing a workload
//! certificate must not have (other SAN kinds, CA basic constraints).

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use warden_proto::SpiffeId;

/// Largest PEM CSR accepted, in bytes. An RSA-4096 CSR is about 1.7 KiB.
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (ring verifies up to 8192).
const MAX_RSA_BITS: usize = 8192;

/// The kind of public key a CSR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrKey {
    /// ECDSA P-256.
    EcP256,
    /// ECDSA P-384.
    EcP384,
    /// RSA with this many modulus bits.
    Rsa(usize),
}

impl CsrKey {
    /// Whether certificates for this key should carry `keyEncipherment`.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa(_))
    }
}

/// A CSR that passed every check: its public key, ready to be certified.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// DER SubjectPublicKeyInfo of the requester's key.
    pub spki_der: Vec<u8>,
    /// The key's type.
    pub key: CsrKey,
}

/// Why a CSR is refused. Each message says what was wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Empty CSR field.
    #[error("the request has no CSR: expected a PEM \"CERTIFICATE REQUEST\"")]
    Missing,
    /// Larger than [`MAX_CSR_PEM_BYTES`].
    #[error("the CSR is {0} bytes; at most 16384 are accepted")]
    TooLarge(usize),
    /// Not PEM, or the wrong PEM label, or several blocks.
    #[error("the CSR is not PEM: {0}")]
    Pem(String),
    /// The DER is not a PKCS#10 request.
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    Der(String),
    /// The signature does not verify with the CSR's own key.
    #[error("the CSR signature does not verify with its public key")]
    Signature,
    /// The signature algorithm is weak or unknown.
    #[error(
        "the CSR is signed with {0}; expected ECDSA with SHA-256/384 or RSA with SHA-256/384/512 or PSS"
    )]
    SignatureAlgorithm(String),
    /// A key type or size that is not allowed.
    #[error("the CSR key is {0}; allowed keys are EC P-256, EC P-384 and RSA of 2048 to 8192 bits")]
    KeyType(String),
    /// More than one URI SAN.
    #[error("the CSR has {0} URI SANs; at most one, the SPIFFE ID, is allowed")]
    ManyUris(usize),
    /// A URI SAN other than the caller's identity.
    #[error("the CSR asks for {requested}, but the caller is authorized only for {authorized}")]
    WrongUri {
        /// URI in the CSR.
        requested: String,
        /// Identity the caller may obtain.
        authorized: String,
    },
    /// A DNS, IP, email or other SAN.
    #[error("the CSR has a {0} SAN; only a URI SAN with the SPIFFE ID is allowed")]
    OtherSan(&'static str),
    /// Asks to be a CA.
    #[error("the CSR asks for CA basic constraints (CA:true); workload certificates are never CAs")]
    CaRequested,
    /// An extension that does not parse.
    #[error("the CSR has a malformed {0} extension")]
    BadExtension(String),
}

impl CsrError {
    /// Short label for the `error` label of `citadel_server_csr_sign_err_count`-style metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing | Self::TooLarge(_) | Self::Pem(_) | Self::Der(_) => "csr_parse",
            Self::Signature | Self::SignatureAlgorithm(_) => "csr_signature",
            Self::KeyType(_) => "csr_key",
            Self::ManyUris(_) | Self::WrongUri { .. } | Self::OtherSan(_) => "csr_san",
            Self::CaRequested | Self::BadExtension(_) => "csr_extension",
        }
    }
}

/// Decodes the PEM CSR from a request to DER, refusing anything but one request block.
pub fn decode_pem(pem: &str) -> Result<Vec<u8>, CsrError> {
    if pem.trim().is_empty() {
        return Err(CsrError::Missing);
    }
    if pem.len() > MAX_CSR_PEM_BYTES {
        return Err(CsrError::TooLarge(pem.len()));
    }
    let mut blocks = PemBlocks::new(pem);
    let (label, der) = blocks
        .next()
        .ok_or_else(|| CsrError::Pem("no -----BEGIN ...----- block".into()))??;
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::Pem(format!(
            "found a {label:?} block; expected \"CERTIFICATE REQUEST\""
        )));
    }
    if blocks.next().is_some() {
        return Err(CsrError::Pem(
            "more than one PEM block; expected exactly one".into(),
        ));
    }
    Ok(der)
}

/// Parses and checks a DER CSR for a caller authorized for `authorized`.
pub fn check(der: &[u8], authorized: &SpiffeId) -> Result<CheckedCsr, CsrError> {
    let (checked, csr) = parse_checked(der)?;
    check_extensions(&csr, authorized)?;
    Ok(checked)
}

/// Parses a DER CSR and checks only its key and self-signature: for requests whose
/// subject and extensions the CA decides itself (an intermediate CA certificate), so
/// what the CSR asks for beyond its key is ignored.
pub fn check_key_and_signature(der: &[u8]) -> Result<CheckedCsr, CsrError> {
    parse_checked(der).map(|(checked, _)| checked)
}

fn parse_checked(der: &[u8]) -> Result<(CheckedCsr, X509CertificationRequest<'_>), CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Der(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let sig_alg = &csr.signature_algorithm.algorithm;
    let sig_ok = [
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_PKCS1_RSASSAPSS,
    ]
    .contains(sig_alg);
    if !sig_ok {
        return Err(CsrError::SignatureAlgorithm(sig_alg.to_id_string()));
    }
    let key = key_kind(&csr)?;
    csr.verify_signature().map_err(|_| CsrError::Signature)?;
    let checked = CheckedCsr {
        spki_der: csr.certification_request_info.subject_pki.raw.to_vec(),
        key,
    };
    Ok((checked, csr))
}

fn key_kind(csr: &X509CertificationRequest<'_>) -> Result<CsrKey, CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::KeyType("EC without a named curve".into()))?;
        if curve == OID_EC_P256 {
            Ok(CsrKey::EcP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(CsrKey::EcP384)
        } else {
            Err(CsrError::KeyType(format!(
                "EC on curve {}",
                curve.to_id_string()
            )))
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(k)) => k.key_size(),
            _ => return Err(CsrError::KeyType("a malformed RSA key".into())),
        };
        if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            Ok(CsrKey::Rsa(bits))
        } else {
            Err(CsrError::KeyType(format!("RSA-{bits}")))
        }
    } else {
        Err(CsrError::KeyType(format!(
            "of algorithm {}",
            alg.to_id_string()
        )))
    }
}

fn check_extensions(
    csr: &X509CertificationRequest<'_>,
    authorized: &SpiffeId,
) -> Result<(), CsrError> {
    let Some(exts) = csr.requested_extensions() else {
        return Ok(());
    };
    for ext in exts {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                let mut uris = 0;
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => {
                            uris += 1;
                            if *uri != authorized.as_str() {
                                return Err(CsrError::WrongUri {
                                    requested: (*uri).to_string(),
                                    authorized: authorized.to_string(),
                                });
                            }
                        }
                        GeneralName::DNSName(_) => return Err(CsrError::OtherSan("DNS")),
                        GeneralName::IPAddress(_) => return Err(CsrError::OtherSan("IP address")),
                        GeneralName::RFC822Name(_) => return Err(CsrError::OtherSan("email")),
                        _ => return Err(CsrError::OtherSan("non-URI")),
                    }
                }
                if uris > 1 {
                    return Err(CsrError::ManyUris(uris));
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::CaRequested),
            ParsedExtension::ParseError { error } => {
                return Err(CsrError::BadExtension(error.to_string()));
            }
            // Key usage, EKU and anything else are ignored: the CA sets its own.
            _ => {}
        }
    }
    Ok(())
}

/// A minimal strict PEM reader: `-----BEGIN L-----`, base64 lines, `-----END L-----`.
struct PemBlocks<'a> {
    lines: std::str::Lines<'a>,
}

impl<'a> PemBlocks<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            lines: text.lines(),
        }
    }
}

impl Iterator for PemBlocks<'_> {
    type Item = Result<(String, Vec<u8>), CsrError>;

    fn next(&mut self) -> Option<Self::Item> {
        use base64::Engine;
        let label = loop {
            let line = self.lines.next()?.trim();
            if let Some(l) = line
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                break l.to_string();
            }
            if !line.is_empty() {
                return Some(Err(CsrError::Pem(
                    "unexpected text outside a PEM block".into(),
                )));
            }
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        for line in self.lines.by_ref() {
            let line = line.trim();
            if line == end {
                return Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(&b64)
                        .map(|der| (label, der))
                        .map_err(|e| CsrError::Pem(format!("bad base64: {e}"))),
                );
            }
            b64.push_str(line);
        }
        Some(Err(CsrError::Pem(format!("missing {end:?}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
        SanType,
    };

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap()
    }

    fn csr_with(params: CertificateParams, key: &KeyPair) -> Vec<u8> {
        params.serialize_request(key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn accepts_csr_without_sans_and_with_matching_uri() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let checked = check(&csr_with(CertificateParams::default(), &key), &id()).unwrap();
        assert_eq!(checked.key, CsrKey::EcP256);
        assert_eq!(
            checked.spki_der,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );

        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![uri(id().as_str())];
        assert!(check(&csr_with(p, &key), &id()).is_ok());
    }

    #[test]
    fn refuses_wrong_or_extra_sans() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/default/sa/admin")];
        let err = check(&csr_with(p, &key), &id()).unwrap_err();
        assert!(matches!(err, CsrError::WrongUri { .. }));
        assert!(err.to_string().contains("sa/admin") && err.to_string().contains("sa/web"));

        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![
            uri(id().as_str()),
            SanType::DnsName("web".try_into().unwrap()),
        ];
        assert_eq!(
            check(&csr_with(p, &key), &id()).unwrap_err(),
            CsrError::OtherSan("DNS")
        );

        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::IpAddress([10, 0, 0, 1].into())];
        assert_eq!(
            check(&csr_with(p, &key), &id()).unwrap_err(),
            CsrError::OtherSan("IP address")
        );

        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![uri(id().as_str()), uri(id().as_str())];
        assert_eq!(
            check(&csr_with(p, &key), &id()).unwrap_err(),
            CsrError::ManyUris(2)
        );
    }

    #[test]
    fn refuses_ca_requests() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        assert_eq!(
            check(&csr_with(p, &key), &id()).unwrap_err(),
            CsrError::CaRequested
        );
    }

    #[test]
    fn refuses_disallowed_keys() {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let err = check(&csr_with(CertificateParams::default(), &key), &id()).unwrap_err();
        // Ed25519 is refused for its signature algorithm before its key is looked at.
        assert!(matches!(err, CsrError::SignatureAlgorithm(_)), "{err}");
    }

    #[test]
    fn refuses_bad_signature_and_garbage() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_with(CertificateParams::default(), &key);
        // Flip a bit inside the signed body (the subject public key).
        let n = der.len();
        der[n / 2] ^= 0x01;
        assert!(matches!(
            check(&der, &id()).unwrap_err(),
            CsrError::Signature | CsrError::Der(_) | CsrError::KeyType(_)
        ));
        assert!(matches!(
            check(b"garbage", &id()).unwrap_err(),
            CsrError::Der(_)
        ));
        let mut der = csr_with(CertificateParams::default(), &key);
        der.push(0);
        assert!(matches!(check(&der, &id()).unwrap_err(), CsrError::Der(_)));
    }

    #[test]
    fn pem_decoding_is_strict() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        assert!(decode_pem(&pem).is_ok());
        assert_eq!(decode_pem("  ").unwrap_err(), CsrError::Missing);
        assert!(matches!(
            decode_pem(&format!("{pem}{pem}")).unwrap_err(),
            CsrError::Pem(_)
        ));
        assert!(matches!(
            decode_pem(&key.serialize_pem()).unwrap_err(),
            CsrError::Pem(_)
        ));
        let truncated = &pem[..pem.len() - 30];
        assert!(matches!(
            decode_pem(truncated).unwrap_err(),
            CsrError::Pem(_)
        ));
        assert!(matches!(
            decode_pem(&"A".repeat(MAX_CSR_PEM_BYTES + 1)).unwrap_err(),
            CsrError::TooLarge(_)
        ));
    }

    /// RSA keys: openssl-made CSRs of 1024 bits are refused, 2048 accepted.
    #[test]
    fn rsa_sizes_from_openssl() {
        let dir = tempfile::tempdir().unwrap();
        for (bits, ok) in [(1024, false), (2048, true)] {
            let key = dir.path().join(format!("k{bits}.pem"));
            let out = std::process::Command::new("openssl")
                .args([
                    "req",
                    "-new",
                    "-newkey",
                    &format!("rsa:{bits}"),
                    "-nodes",
                    "-subj",
                    "/CN=web",
                ])
                .arg("-keyout")
                .arg(&key)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let der = decode_pem(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
            let res = check(&der, &id());
            assert_eq!(res.is_ok(), ok, "RSA-{bits}: {res:?}");
            if ok {
                assert_eq!(res.unwrap().key, CsrKey::Rsa(bits));
            } else {
                assert_eq!(res.unwrap_err(), CsrError::KeyType("RSA-1024".into()));
            }
        }
    }
}
