//! The signing authority: the CA certificate and key Warden signs with, the chain up to
//! the roots, and the trust bundle clients use.
//!
//! Two sources, as istiod has: a self-signed root Warden makes on first start and keeps in
//! its data directory, or a plugged-in intermediate in Istio's `cacerts` layout.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use ring::rand::SecureRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use warden_proto::SpiffeId;

use super::csr::CsrKey;
use super::keys::{self, KeyType};

/// How far `notBefore` is set in the past, for clocks that run behind (istiod: 2 min).
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);
/// Lifetime of a root Warden makes for itself (istiod: 10 years).
pub const ROOT_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);
/// Lifetime of the CA's own serving certificate.
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// The CA's signing state, loaded once at start.
pub struct Authority {
    issuer: Issuer<'static, CaKey>,
    /// DER of the certificate Warden signs with.
    signing_cert: CertificateDer<'static>,
    /// PEM of the chain above a leaf, excluding roots (empty when signing as the root).
    intermediates_pem: Vec<String>,
    /// DER of the same chain, for the serving certificate's TLS chain.
    intermediates_der: Vec<CertificateDer<'static>>,
    /// Every trusted root, PEM, concatenated (the `root-cert.pem` bundle).
    roots_pem: String,
    /// Every trusted root, DER.
    roots_der: Vec<CertificateDer<'static>>,
    /// Earliest `notAfter` of the signing chain; no leaf may outlive it.
    chain_not_after: OffsetDateTime,
    /// Earliest `notAfter` among the roots.
    root_not_after: OffsetDateTime,
    /// Where the authority came from, for logs.
    source: String,
    /// The signing certificate's key identifier, lowercase hex: the authority key
    /// identifier of every certificate it signs, and its ID in `warden ca authority`.
    key_id: String,
    /// Key IDs of tainted authorities: agents re-issue what they signed at once.
    tainted: Vec<String>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Authority")
            .field("source", &self.source)
            .field("key_id", &self.key_id)
            .field("chain_not_after", &self.chain_not_after)
            .finish_non_exhaustive()
    }
}

/// The key the CA signs with: in memory (from a PEM file or Secret), or in a PKCS#11
/// token, where it stays.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per authority, made once and never moved
pub enum CaKey {
    /// A key Warden holds.
    Memory(KeyPair),
    /// A key in a token.
    Pkcs11(std::sync::Arc<super::hsm::Pkcs11Key>),
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::Memory(k) => k.der_bytes(),
            CaKey::Pkcs11(k) => k.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKey::Memory(k) => PublicKeyData::algorithm(k),
            CaKey::Pkcs11(k) => k.algorithm(),
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::Memory(k) => k.sign(msg),
            CaKey::Pkcs11(k) => k.sign(msg),
        }
    }
}

/// The four parts of Istio's plug-in CA layout (`cacerts`), PEM.
#[derive(Clone, Default)]
pub struct PluggedPem {
    /// `ca-cert.pem`: the certificate Warden signs with.
    pub ca_cert: String,
    /// `ca-key.pem`: its key.
    pub ca_key: String,
    /// `cert-chain.pem`: the signing certificate and the intermediates above it.
    pub cert_chain: Option<String>,
    /// `root-cert.pem`: the roots.
    pub root_cert: String,
}

impl std::fmt::Debug for PluggedPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("PluggedPem").finish_non_exhaustive()
    }
}

/// A certificate Warden has signed.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// DER encoding.
    pub der: Vec<u8>,
    /// PEM encoding (ends with a newline).
    pub pem: String,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// A problem with the CA's keys or certificates, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's contents are not what was expected.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong and what was expected.
        message: String,
    },
    /// Key generation failed.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Signing failed (a bug or an unusable key).
    #[error("signing failed: {0}")]
    Sign(String),
    /// The authority expires before the certificate could be useful.
    #[error("the CA certificate expires at {0}; it cannot sign any more certificates")]
    Expired(OffsetDateTime),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn invalid(path: &Path, message: impl Into<String>) -> PkiError {
    PkiError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn sign_err(e: rcgen::Error) -> PkiError {
    PkiError::Sign(e.to_string())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn parse_pem_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e:?}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no PEM CERTIFICATE block"));
    }
    for c in &certs {
        X509Certificate::from_der(c)
            .map_err(|e| invalid(path, format!("a certificate does not parse: {e}")))?;
    }
    Ok(certs)
}

fn to_pem(der: &[u8]) -> String {
    super::pem_encode("CERTIFICATE", der)
}

fn not_after_of(der: &[u8]) -> OffsetDateTime {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.validity().not_after.to_datetime())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The key identifier a CA certificate's children carry as their authority key
/// identifier: its subject key identifier when it has one (rcgen copies it), else the
/// first 20 bytes of SHA-256 over its public key info (rcgen's derivation).
pub fn key_id_of(der: &[u8]) -> String {
    use x509_parser::extensions::ParsedExtension;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return String::new();
    };
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(ski) = ext.parsed_extension() {
            return hex::encode(ski.0);
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    hex::encode(&digest.as_ref()[..20])
}

/// A `serialNumber` name attribute of 16 random hex digits, making a CA's name its own.
fn unique_name_part() -> Result<rcgen::DnValue, PkiError> {
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Sign("the system random generator failed".into()))?;
    let printable = hex::encode(bytes)
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::Sign(e.to_string()))?;
    Ok(rcgen::DnValue::PrintableString(printable))
}

/// A positive 128-bit serial: a marker byte, 56 bits of the current time in microseconds,
/// then 64 bits from the system CSPRNG. The random half meets the "at least 64 bits of
/// CSPRNG output" rule for serials; the time half keeps the CA's serial index append-only,
/// so recording a certificate touches one B-tree page instead of a random one.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes[8..])
        .map_err(|_| PkiError::Sign("the system random generator failed".into()))?;
    let micros =
        u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(0);
    bytes[1..8].copy_from_slice(&micros.to_be_bytes()[1..]);
    // Positive and never shorter than 16 octets.
    bytes[0] = 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

impl Authority {
    /// Loads the plugged-in `cacerts` directory, or the data directory's own root,
    /// creating that root on first start. Writes the trust bundle to
    /// `<data_dir>/root-cert.pem` either way.
    pub fn load(
        data_dir: &Path,
        plugin_certs: Option<&Path>,
        trust_domain: &str,
        key_type: KeyType,
    ) -> Result<Self, PkiError> {
        let authority = match plugin_certs {
            Some(dir) => Self::load_plugged(dir)?,
            None => Self::load_or_create_root(data_dir, trust_domain, key_type, ROOT_LIFETIME)?,
        };
        super::write_atomic(
            &data_dir.join("root-cert.pem"),
            authority.roots_pem.as_bytes(),
            0o644,
        )
        .map_err(io_err(&data_dir.join("root-cert.pem")))?;
        Ok(authority)
    }

    /// The data directory's own root (`ca-cert.pem`, `ca-key.pem`), made with
    /// `lifetime` on first start.
    pub(crate) fn load_or_create_root(
        data_dir: &Path,
        trust_domain: &str,
        key_type: KeyType,
        lifetime: Duration,
    ) -> Result<Self, PkiError> {
        let cert_path = data_dir.join("ca-cert.pem");
        let key_path = data_dir.join("ca-key.pem");
        if !cert_path.exists() && !key_path.exists() {
            tracing::info!(%key_type, path = %cert_path.display(), "creating a self-signed root CA");
            let (cert_pem, key_pem) = Self::new_root_pem_for(trust_domain, key_type, lifetime)?;
            // Key first: a crash between the two leaves a key without a cert, which the
            // check below reports rather than silently replacing.
            super::write_atomic(&key_path, key_pem.as_bytes(), 0o600).map_err(io_err(&key_path))?;
            super::write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)
                .map_err(io_err(&cert_path))?;
        } else if !cert_path.exists() || !key_path.exists() {
            let missing = if cert_path.exists() {
                &key_path
            } else {
                &cert_path
            };
            return Err(invalid(
                missing,
                "is missing while its pair exists; restore it or remove both to make a new root",
            ));
        }
        tighten_key_mode(&key_path)?;
        Self::from_root_pem(
            &read(&cert_path)?,
            &read(&key_path)?,
            &cert_path,
            &key_path,
            format!("self-signed root {}", cert_path.display()),
        )
    }

    /// Makes a new self-signed root for `trust_domain` (istiod's lifetime, 10 years):
    /// the certificate and the PKCS#8 key, PEM. The key is only in memory; the caller
    /// decides where it is kept.
    pub fn new_root_pem(
        trust_domain: &str,
        key_type: KeyType,
    ) -> Result<(String, String), PkiError> {
        Self::new_root_pem_for(trust_domain, key_type, ROOT_LIFETIME)
    }

    /// Like [`Authority::new_root_pem`], valid for `lifetime`.
    pub fn new_root_pem_for(
        trust_domain: &str,
        key_type: KeyType,
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        let key = key_type.generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Warden Root CA");
        // A serialNumber attribute of its own, as SPIRE's CAs have: two roots of one
        // trust domain (a rotation) must not share a name, or verifiers that find a
        // CRL or an issuer by name (webpki, BoringSSL, openssl) take the other root's.
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), unique_name_part()?);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![trust_domain_san(trust_domain)?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + lifetime;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(sign_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A self-signed root from its certificate and key, PEM. `cert_label` and
    /// `key_label` name where each came from in errors (a file, or a Secret's key).
    pub fn from_root_pem(
        cert_pem: &str,
        key_pem: &str,
        cert_label: &Path,
        key_label: &Path,
        source: String,
    ) -> Result<Self, PkiError> {
        let key = keys::load_pem_key(key_pem).map_err(|e| invalid(key_label, e.to_string()))?;
        let certs = parse_pem_certs(cert_label, cert_pem)?;
        let root = certs[0].clone();
        check_key_matches(cert_label, &root, &key)?;
        check_is_ca(cert_label, &root)?;
        let issuer = Issuer::from_ca_cert_der(&root, CaKey::Memory(key))
            .map_err(|e| invalid(cert_label, e.to_string()))?;
        let not_after = not_after_of(&root);
        Ok(Self {
            issuer,
            key_id: key_id_of(&root),
            tainted: Vec::new(),
            signing_cert: root.clone(),
            intermediates_pem: Vec::new(),
            intermediates_der: Vec::new(),
            roots_pem: to_pem(&root),
            roots_der: vec![root],
            chain_not_after: not_after,
            root_not_after: not_after,
            source,
        })
    }

    /// The `cacerts` files in `dir` (`cert-chain.pem` optional).
    pub fn load_plugged(dir: &Path) -> Result<Self, PkiError> {
        let chain_path = dir.join("cert-chain.pem");
        let chain = if chain_path.exists() {
            Some(read(&chain_path)?)
        } else {
            None
        };
        Self::from_plugged_pem(
            &PluggedPem {
                ca_cert: read(&dir.join("ca-cert.pem"))?,
                ca_key: read(&dir.join("ca-key.pem"))?,
                cert_chain: chain,
                root_cert: read(&dir.join("root-cert.pem"))?,
            },
            &|name| dir.join(name),
            format!("plugged-in CA {}", dir.display()),
        )
    }

    /// A plugged-in intermediate in Istio's `cacerts` layout. `label` names where each
    /// part came from in errors (`label("ca-cert.pem")`: a file path or a Secret key).
    pub fn from_plugged_pem(
        pem: &PluggedPem,
        label: &dyn Fn(&str) -> PathBuf,
        source: String,
    ) -> Result<Self, PkiError> {
        let cert_path = label("ca-cert.pem");
        let key_path = label("ca-key.pem");
        let signing = parse_pem_certs(&cert_path, &pem.ca_cert)?.remove(0);
        let key = keys::load_pem_key(&pem.ca_key).map_err(|e| invalid(&key_path, e.to_string()))?;
        check_key_matches(&cert_path, &signing, &key)?;
        Self::from_plugged_parts(pem, CaKey::Memory(key), label, source)
    }

    /// The `cacerts` files in `dir` without `ca-key.pem`, signing with the key `uri`
    /// names in a PKCS#11 token (checked to be the key of `ca-cert.pem`). A
    /// `ca-key.pem` beside them is refused: the key must live only in the token.
    pub fn load_plugged_hsm(dir: &Path, uri: &super::hsm::Pkcs11Uri) -> Result<Self, PkiError> {
        let key_file = dir.join("ca-key.pem");
        if key_file.exists() {
            return Err(invalid(
                &key_file,
                "is present although --ca-key-uri puts the key in a token; remove it",
            ));
        }
        let chain_path = dir.join("cert-chain.pem");
        let chain = if chain_path.exists() {
            Some(read(&chain_path)?)
        } else {
            None
        };
        let cert_path = dir.join("ca-cert.pem");
        let pem = PluggedPem {
            ca_cert: read(&cert_path)?,
            ca_key: String::new(),
            cert_chain: chain,
            root_cert: read(&dir.join("root-cert.pem"))?,
        };
        let signing = parse_pem_certs(&cert_path, &pem.ca_cert)?.remove(0);
        let key = super::hsm::Pkcs11Key::open(uri, &signing)
            .map_err(|e| invalid(&cert_path, format!("--ca-key-uri {}: {e}", uri.describe())))?;
        let source = format!(
            "plugged-in CA {} with its key in {}",
            dir.display(),
            key.label()
        );
        Self::from_plugged_parts(
            &pem,
            CaKey::Pkcs11(std::sync::Arc::new(key)),
            &|name| dir.join(name),
            source,
        )
    }

    /// The rest of a plugged-in CA once its key is known to match `ca-cert.pem`.
    fn from_plugged_parts(
        pem: &PluggedPem,
        key: CaKey,
        label: &dyn Fn(&str) -> PathBuf,
        source: String,
    ) -> Result<Self, PkiError> {
        let cert_path = label("ca-cert.pem");
        let chain_path = label("cert-chain.pem");
        let root_path = label("root-cert.pem");
        let signing = parse_pem_certs(&cert_path, &pem.ca_cert)?.remove(0);
        check_is_ca(&cert_path, &signing)?;
        let roots = parse_pem_certs(&root_path, &pem.root_cert)?;
        // cert-chain.pem is ca-cert.pem followed by intermediates; some tools append the
        // root too. Keep the certificates between the signing cert and the roots.
        let chain = match pem.cert_chain.as_deref() {
            Some(text) if !text.trim().is_empty() => parse_pem_certs(&chain_path, text)?,
            _ => vec![signing.clone()],
        };
        let mut intermediates: Vec<CertificateDer<'static>> = chain
            .into_iter()
            .filter(|c| *c != signing && !roots.contains(c))
            .collect();
        // The signing cert itself goes first in the chain a leaf is served with.
        intermediates.insert(0, signing.clone());
        verify_chain(&chain_path, &intermediates, &roots)?;
        let issuer = Issuer::from_ca_cert_der(&signing, key)
            .map_err(|e| invalid(&cert_path, e.to_string()))?;
        let chain_not_after = intermediates
            .iter()
            .chain(roots.iter())
            .map(|c| not_after_of(c))
            .min()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let root_not_after = roots
            .iter()
            .map(|c| not_after_of(c))
            .min()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Ok(Self {
            issuer,
            key_id: key_id_of(&signing),
            tainted: Vec::new(),
            signing_cert: signing,
            intermediates_pem: intermediates.iter().map(|c| to_pem(c)).collect(),
            intermediates_der: intermediates,
            roots_pem: roots.iter().map(|c| to_pem(c)).collect(),
            roots_der: roots,
            chain_not_after,
            root_not_after,
            source,
        })
    }

    /// Adds `roots` to the trust bundle (those not already in it, in order) and records
    /// which authorities are tainted: an authority set's active member trusts every root
    /// of the set, so a leaf signed by any of them verifies during a rotation.
    pub fn with_trust(mut self, roots: &[CertificateDer<'static>], tainted: Vec<String>) -> Self {
        for root in roots {
            if !self.roots_der.contains(root) {
                self.roots_pem.push_str(&to_pem(root));
                self.roots_der.push(root.clone());
            }
        }
        self.tainted = tainted;
        self
    }

    /// The signing certificate's key identifier (lowercase hex), which every
    /// certificate it signs carries as its authority key identifier.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Key IDs of tainted authorities (own-root rotation), lowercase hex.
    pub fn tainted(&self) -> &[String] {
        &self.tainted
    }

    /// Where the authority came from, for logs.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The trust bundle, PEM.
    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }

    /// The trust bundle, DER.
    pub fn roots_der(&self) -> &[CertificateDer<'static>] {
        &self.roots_der
    }

    /// Earliest expiry among the roots.
    pub fn root_not_after(&self) -> OffsetDateTime {
        self.root_not_after
    }

    /// Earliest expiry along the signing chain.
    pub fn chain_not_after(&self) -> OffsetDateTime {
        self.chain_not_after
    }

    /// DER of the signing certificate.
    pub fn signing_cert(&self) -> &CertificateDer<'static> {
        &self.signing_cert
    }

    /// The `cert_chain` of a CreateCertificate response: leaf, intermediates, then the
    /// root bundle as one element (Istio's order; clients split several roots from it).
    pub fn response_chain(&self, leaf_pem: String) -> Vec<String> {
        let mut out = Vec::with_capacity(self.intermediates_pem.len() + 2);
        out.push(leaf_pem);
        out.extend(self.intermediates_pem.iter().cloned());
        out.push(self.roots_pem.clone());
        out
    }

    /// Signs an X.509-SVID for `id` over the given public key, valid from now (less the
    /// clock-skew allowance) for `ttl`, clamped to the signing chain's expiry.
    pub fn sign_svid(
        &self,
        spki_der: &[u8],
        key: CsrKey,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        // Empty subject: the URI SAN is the identity and is marked critical (X.509-SVID).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().map_err(sign_err)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if key.is_rsa() {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_over(params, spki_der, ttl)
    }

    /// Signs an intermediate CA certificate for cluster `cluster` over the given public
    /// key (Istio's plug-in CA: istiod or another Warden signs leaves with it): CA with
    /// path length 0 (it signs leaves only), `keyCertSign`/`cRLSign`, the trust domain as
    /// its URI SAN, valid for `ttl` clamped to this authority's own chain. The subject and
    /// extensions are the CA's choice; nothing the CSR asked for is copied.
    pub fn sign_intermediate(
        &self,
        spki_der: &[u8],
        cluster: &str,
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::LocalityName, cluster);
        dn.push(
            DnType::CommonName,
            format!("Warden intermediate CA {cluster}"),
        );
        // Unique, as a root's: two intermediates for one cluster (a swap) must not
        // share a name, or a verifier takes one's CRL for the other's.
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), unique_name_part()?);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![trust_domain_san(trust_domain)?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        self.sign_over(params, spki_der, ttl)
    }

    /// Signs `params` over the public key `spki_der`: a fresh serial, valid from now
    /// less the clock-skew allowance for `ttl`, clamped to the signing chain's expiry,
    /// with the authority key identifier. Refused once the chain has expired.
    fn sign_over(
        &self,
        mut params: CertificateParams,
        spki_der: &[u8],
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let now = OffsetDateTime::now_utc();
        if self.chain_not_after <= now {
            return Err(PkiError::Expired(self.chain_not_after));
        }
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + ttl).min(self.chain_not_after);
        let public_key = SubjectPublicKeyInfo::from_der(spki_der).map_err(sign_err)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(sign_err)?;
        let der = cert.der().to_vec();
        Ok(IssuedCert {
            fingerprint_hex: super::sha256_hex(&der),
            pem: cert.pem(),
            der,
            serial_hex,
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }

    /// A CRL (X.509 v2, PEM) of `revoked` (serial hex, revocation time, RFC 5280 reason
    /// name) signed by this authority: number `number`, valid from now (less the clock
    /// skew allowance) for `validity`, its authority key identifier this authority's.
    pub fn sign_crl(
        &self,
        revoked: &[(String, OffsetDateTime, String)],
        number: u64,
        validity: Duration,
    ) -> Result<String, PkiError> {
        use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams};
        let mut certs = Vec::with_capacity(revoked.len());
        for (serial, at, reason) in revoked {
            let bytes = hex::decode(serial)
                .map_err(|_| PkiError::Sign(format!("serial {serial:?} is not hex")))?;
            certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: *at,
                reason_code: revocation_reason(reason),
                invalidity_date: None,
            });
        }
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + validity,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: certs,
            key_identifier_method: KeyIdMethod::PreSpecified(
                hex::decode(&self.key_id).unwrap_or_default(),
            ),
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(sign_err)
    }

    /// PEM of the certificates a certificate this authority signs is sent with, below
    /// the roots: the signing certificate and the intermediates above it (empty when
    /// signing as the root).
    pub fn chain_pem(&self) -> &[String] {
        &self.intermediates_pem
    }

    /// Makes the CA's TLS serving certificate (fresh P-256 key, kept in memory only) with
    /// the given DNS and IP SANs. Returns the chain to present and the key.
    pub fn serving_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        self.serving_cert_with(dns_names, ips, None)
    }

    /// The bundle endpoint's certificate under the https_spiffe profile: an X.509-SVID
    /// of `id` (the CA's own, `spiffe://TD/warden/ca`) for server authentication, with
    /// the DNS names and addresses too, so https_web-style clients can also use it.
    pub fn endpoint_svid(
        &self,
        id: &warden_proto::SpiffeId,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        self.serving_cert_with(dns_names, ips, Some(id.as_str()))
    }

    fn serving_cert_with(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        uri: Option<&str>,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyType::EcP256.generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "warden-ca");
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for name in dns_names {
            sans.push(SanType::DnsName(name.as_str().try_into().map_err(
                |_| PkiError::Sign(format!("--serving-dns-names: {name:?} is not a DNS name")),
            )?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        if let Some(uri) = uri {
            sans.push(SanType::URI(uri.try_into().map_err(|_| {
                PkiError::Sign(format!("{uri:?} is not a URI SAN"))
            })?));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + SERVING_LIFETIME).min(self.chain_not_after);
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates_der.iter().cloned());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key_der))
    }
}

/// RFC 5280 reason names `warden cert revoke --reason` takes, and their codes.
pub const REVOCATION_REASONS: [&str; 6] = [
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
];

fn revocation_reason(name: &str) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    match name {
        "keyCompromise" => Some(R::KeyCompromise),
        "cACompromise" => Some(R::CaCompromise),
        "affiliationChanged" => Some(R::AffiliationChanged),
        "superseded" => Some(R::Superseded),
        "cessationOfOperation" => Some(R::CessationOfOperation),
        _ => None,
    }
}

/// The URI SAN `spiffe://<trust_domain>` of the CA certificates Warden makes.
fn trust_domain_san(trust_domain: &str) -> Result<SanType, PkiError> {
    let td = SpiffeId::parse(&format!("spiffe://{trust_domain}"))
        .map_err(|e| PkiError::Sign(format!("trust domain {trust_domain:?}: {e}")))?;
    Ok(SanType::URI(td.as_str().try_into().map_err(sign_err)?))
}

fn tighten_key_mode(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "CA key was readable by others; setting mode 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    Ok(())
}

fn check_key_matches(
    path: &Path,
    cert: &CertificateDer<'_>,
    key: &KeyPair,
) -> Result<(), PkiError> {
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| invalid(path, format!("does not parse: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(invalid(
            path,
            "the certificate's public key does not match the private key",
        ));
    }
    Ok(())
}

fn check_is_ca(path: &Path, cert: &CertificateDer<'_>) -> Result<(), PkiError> {
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| invalid(path, format!("does not parse: {e}")))?;
    if !parsed.is_ca() {
        return Err(invalid(
            path,
            "is not a CA certificate (basic constraints CA:true expected)",
        ));
    }
    if let Ok(Some(ku)) = parsed.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(invalid(path, "key usage lacks keyCertSign"));
    }
    if parsed.validity().not_after.to_datetime() <= OffsetDateTime::now_utc() {
        return Err(invalid(path, "the CA certificate has expired"));
    }
    Ok(())
}

/// Checks that each certificate in `chain` is signed by the next, and the last by a root.
fn verify_chain(
    path: &Path,
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), PkiError> {
    fn parse<'a>(
        path: &Path,
        c: &'a CertificateDer<'static>,
    ) -> Result<X509Certificate<'a>, PkiError> {
        X509Certificate::from_der(c)
            .map(|(_, p)| p)
            .map_err(|e| invalid(path, format!("does not parse: {e}")))
    }
    for pair in chain.windows(2) {
        let (child, parent) = (parse(path, &pair[0])?, parse(path, &pair[1])?);
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|_| {
                invalid(
                    path,
                    format!("{} is not signed by {}", child.subject(), parent.subject()),
                )
            })?;
    }
    let Some(last) = chain.last() else {
        return Ok(());
    };
    let last = parse(path, last)?;
    let signed_by_root = roots.iter().any(|r| {
        parse(path, r)
            .map(|root| last.verify_signature(Some(root.public_key())).is_ok())
            .unwrap_or(false)
    });
    if !signed_by_root {
        return Err(invalid(
            path,
            format!(
                "{} is not signed by any certificate in root-cert.pem",
                last.subject()
            ),
        ));
    }
    Ok(())
}
