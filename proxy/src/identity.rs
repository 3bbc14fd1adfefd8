//! The proxy's identity as the node agent delivers it over SDS: the X.509-SVID (`default`:
//! chain and private key) and the trust bundle (`ROOTCA`). Each part is checked when it
//! arrives ("parse, don't validate"), so the TLS code only ever sees usable material: a
//! chain whose leaf carries exactly one SPIFFE ID and is not a CA, a key that matches
//! it, and roots that are usable trust anchors.
//!
//! The private key stays in memory: nothing here writes or logs it, and `Debug` of every
//! type holding it is written by hand to leave it out.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

use warden_proto::SpiffeId;

/// The latest identity, `None` until both `default` and `ROOTCA` have arrived. Every
/// TLS config built by [`crate::tls`] reads it at each handshake.
pub type IdentityWatch = watch::Receiver<Option<Arc<Identity>>>;

/// The one crypto provider of the proxy: ring (see `CRATES.md`).
pub(crate) static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// Why a certificate cannot be an X.509-SVID leaf (SPIFFE `X509-SVID.md` §4, §5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    /// The DER does not parse as an X.509 certificate.
    #[error("it does not parse as X.509 ({0})")]
    Unparsable(String),
    /// No URI SAN, more than one, or one that is not a workload SPIFFE ID.
    #[error("SPIFFE ID: {0}")]
    SpiffeId(String),
    /// `basicConstraints cA=true`: a signing certificate presented as a leaf.
    #[error("it is a CA certificate (basicConstraints cA=true), not a leaf")]
    IsCa,
    /// `keyUsage` has `keyCertSign` or `cRLSign`, which a leaf must not have.
    #[error("its key usage allows signing certificates or CRLs (keyCertSign/cRLSign)")]
    SigningKeyUsage,
}

/// What the SPIFFE rules let us read off a leaf.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub(crate) spiffe_id: SpiffeId,
    pub(crate) serial: String,
    pub(crate) not_after: SystemTime,
}

/// Checks `der` as an X.509-SVID leaf: exactly one URI SAN naming a workload, not a CA,
/// no certificate or CRL signing. Chain and validity are checked elsewhere (webpki).
pub(crate) fn check_leaf(der: &[u8]) -> Result<Leaf, LeafError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| LeafError::Unparsable(e.to_string()))?;
    let unparsable = |e: x509_parser::error::X509Error| LeafError::Unparsable(e.to_string());
    if let Some(bc) = cert.basic_constraints().map_err(unparsable)?
        && bc.value.ca
    {
        return Err(LeafError::IsCa);
    }
    if let Some(ku) = cert.key_usage().map_err(unparsable)?
        && (ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(LeafError::SigningKeyUsage);
    }
    let spiffe_id = warden_common::x509::spiffe_id_of(&cert).map_err(LeafError::SpiffeId)?;
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok(Leaf {
        spiffe_id,
        serial,
        not_after,
    })
}

/// Why an SVID or a trust bundle from SDS is unusable. Messages never include key bytes.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The chain is not PEM.
    #[error("the certificate chain is not valid PEM: {0}")]
    ChainPem(String),
    /// The chain holds no certificate.
    #[error("the certificate chain holds no certificate")]
    EmptyChain,
    /// The leaf breaks the X.509-SVID rules.
    #[error("the leaf certificate is not a usable X.509-SVID: {0}")]
    Leaf(LeafError),
    /// The key is not a PEM private key.
    #[error("the private key is not a PEM private key (PKCS#8, SEC1 or PKCS#1): {0}")]
    KeyPem(String),
    /// The key parses but the crypto provider cannot sign with it.
    #[error("the private key is not usable for TLS: {0}")]
    UnsupportedKey(String),
    /// The key is not the leaf's key.
    #[error("the private key does not match the leaf certificate's public key")]
    KeyMismatch,
    /// The bundle is not PEM.
    #[error("the trust bundle is not valid PEM: {0}")]
    BundlePem(String),
    /// The bundle holds no certificate.
    #[error("the trust bundle holds no certificate")]
    EmptyBundle,
    /// A CRL does not parse.
    #[error("CRL #{index} of the trust bundle is unusable: {reason}")]
    BadCrl {
        /// Position among the CRLs, from 0.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A trust domain of the SPIFFE validator is unusable.
    #[error("SPIFFE validator trust domain {name:?}: {reason}")]
    BadTrustDomain {
        /// The trust domain as given.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A bundle certificate cannot be a trust anchor.
    #[error("trust bundle certificate #{index} is not a usable trust anchor: {reason}")]
    BadRoot {
        /// Position in the bundle, from 0.
        index: usize,
        /// What webpki said.
        reason: String,
    },
}

/// An X.509-SVID with its private key: what SDS `default` carries.
pub struct Svid {
    leaf: Leaf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The chain with the key loaded into the provider, made once per SVID.
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.leaf.spiffe_id.as_str())
            .field("serial", &self.leaf.serial)
            .field("not_after", &self.leaf.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Svid {
    /// Parses SDS's PEM: the chain (leaf first) and the key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::ChainPem(e.to_string()))?;
        // The PEM error names the section problem, never the key material.
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| IdentityError::KeyPem(e.to_string()))?;
        Self::from_der(chain, key)
    }

    /// Checks a DER chain (leaf first) and its key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        let leaf_der = chain.first().ok_or(IdentityError::EmptyChain)?;
        let leaf = check_leaf(leaf_der).map_err(IdentityError::Leaf)?;
        let signing_key = PROVIDER
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| IdentityError::UnsupportedKey(e.to_string()))?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        match certified.keys_match() {
            // A provider that cannot tell (no public key for the signer) is not a mismatch.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(IdentityError::KeyMismatch);
            }
            Err(e) => return Err(IdentityError::Leaf(LeafError::Unparsable(e.to_string()))),
        }
        Ok(Self {
            leaf,
            chain,
            key,
            certified: Arc::new(certified),
        })
    }

    /// The SPIFFE ID of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.leaf.spiffe_id
    }

    /// The chain, leaf first, DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key, DER. Keep it in memory; never log it.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The leaf's serial number, lowercase hex as encoded (leading zero bytes kept).
    pub fn serial(&self) -> &str {
        &self.leaf.serial
    }

    /// The leaf's `notAfter`.
    pub fn not_after(&self) -> SystemTime {
        self.leaf.not_after
    }

    /// The chain and loaded key as rustls presents them.
    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

/// The trust bundle: the roots a peer's chain must lead to. What SDS `ROOTCA` carries.
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    /// The CA's CRLs (`validation_context.crl`), DER each, as received.
    crl_ders: Vec<Vec<u8>>,
    /// The same, parsed for webpki.
    crls: Vec<webpki::CertRevocationList<'static>>,
    /// Serials (lowercase hex) the CRLs revoke: open connections from these peers close.
    revoked: std::collections::HashSet<String>,
    /// With Envoy's SPIFFE validator (federation): the roots of each trust domain. A
    /// peer is then verified only against its own trust domain's roots.
    domains: Option<std::collections::BTreeMap<String, DomainRoots>>,
}

/// One trust domain's roots, for the SPIFFE validator.
struct DomainRoots {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots.len())
            .field("crls", &self.crls.len())
            .field(
                "trust_domains",
                &self.domains.as_ref().map(|d| d.keys().collect::<Vec<_>>()),
            )
            .finish()
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        let domain_roots = |b: &Self| {
            b.domains.as_ref().map(|d| {
                d.iter()
                    .map(|(td, r)| (td.clone(), r.roots.clone()))
                    .collect::<Vec<_>>()
            })
        };
        self.roots == other.roots
            && self.crl_ders == other.crl_ders
            && domain_roots(self) == domain_roots(other)
    }
}

impl TrustBundle {
    /// Parses concatenated PEM certificates.
    pub fn from_pem(pem: &[u8]) -> Result<Self, IdentityError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::BundlePem(e.to_string()))?;
        Self::from_der(roots)
    }

    /// Checks DER roots.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<Self, IdentityError> {
        let anchors = anchors_of(&roots)?;
        Ok(Self {
            roots,
            anchors,
            crl_ders: Vec::new(),
            crls: Vec::new(),
            revoked: std::collections::HashSet::new(),
            domains: None,
        })
    }

    /// Verifies peers per trust domain, as Envoy's SPIFFE validator does: a peer whose
    /// SPIFFE ID is in trust domain T must chain to one of `T`'s roots (PEM, each),
    /// and a peer of a trust domain not listed is refused. Every trust domain needs a
    /// root; a name must be a bare trust domain (no `spiffe://`).
    pub fn with_trust_domains(
        mut self,
        domains: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, IdentityError> {
        let mut map = std::collections::BTreeMap::new();
        for (name, pem) in domains {
            let bad = |reason: String| IdentityError::BadTrustDomain {
                name: name.clone(),
                reason,
            };
            if warden_proto::SpiffeId::parse(&format!("spiffe://{name}/x"))
                .map_or(true, |id| id.trust_domain() != name)
            {
                return Err(bad(
                    "not a trust domain name (expected e.g. example.org, without spiffe://)".into(),
                ));
            }
            let roots = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("trust_bundle is not valid PEM: {e}")))?;
            let anchors = anchors_of(&roots).map_err(|e| bad(e.to_string()))?;
            if map
                .insert(name.clone(), DomainRoots { roots, anchors })
                .is_some()
            {
                return Err(bad("listed twice".into()));
            }
        }
        if map.is_empty() {
            return Err(IdentityError::BadTrustDomain {
                name: String::new(),
                reason: "the SPIFFE validator lists no trust domain".into(),
            });
        }
        self.domains = Some(map);
        Ok(self)
    }

    /// Adds the CA's CRLs (concatenated PEM `X509 CRL` blocks); every one must parse.
    pub fn with_crls_pem(mut self, pem: &[u8]) -> Result<Self, IdentityError> {
        use rustls_pki_types::CertificateRevocationListDer;
        use x509_parser::revocation_list::CertificateRevocationList;
        for (index, der) in CertificateRevocationListDer::pem_slice_iter(pem).enumerate() {
            let der = der.map_err(|e| IdentityError::BadCrl {
                index,
                reason: format!("not PEM: {e}"),
            })?;
            let owned = webpki::OwnedCertRevocationList::from_der(&der).map_err(|e| {
                IdentityError::BadCrl {
                    index,
                    reason: format!("{e:?}"),
                }
            })?;
            let (_, parsed) =
                CertificateRevocationList::from_der(&der).map_err(|e| IdentityError::BadCrl {
                    index,
                    reason: e.to_string(),
                })?;
            for r in parsed.iter_revoked_certificates() {
                self.revoked.insert(hex_lower(r.raw_serial()));
            }
            self.crls.push(owned.into());
            self.crl_ders.push(der.to_vec());
        }
        Ok(self)
    }

    /// The CRLs, for webpki's revocation check.
    pub(crate) fn crls(&self) -> &[webpki::CertRevocationList<'static>] {
        &self.crls
    }

    /// Whether a CRL revokes the certificate with `serial` (lowercase hex).
    pub fn revokes(&self, serial: &str) -> bool {
        self.revoked.contains(serial)
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// Whether peers are verified per trust domain (SPIFFE validator).
    pub fn per_trust_domain(&self) -> bool {
        self.domains.is_some()
    }

    /// The trust anchors for a peer in `trust_domain`: its own roots with the SPIFFE
    /// validator (none for an unknown trust domain), every root otherwise.
    pub(crate) fn anchors_for(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        match &self.domains {
            None => Some(&self.anchors),
            Some(d) => d.get(trust_domain).map(|r| r.anchors.as_slice()),
        }
    }
}

fn anchors_of(
    roots: &[CertificateDer<'static>],
) -> Result<Vec<TrustAnchor<'static>>, IdentityError> {
    if roots.is_empty() {
        return Err(IdentityError::EmptyBundle);
    }
    roots
        .iter()
        .enumerate()
        .map(|(index, der)| {
            webpki::anchor_from_trusted_cert(der)
                .map(|a| a.to_owned())
                .map_err(|e| IdentityError::BadRoot {
                    index,
                    reason: format!("{e:?}"),
                })
        })
        .collect()
}

/// Both halves together: what a TLS handshake needs. Cheap to rebuild when either half
/// rotates (two `Arc`s).
#[derive(Debug, Clone)]
pub struct Identity {
    svid: Arc<Svid>,
    bundle: Arc<TrustBundle>,
}

impl Identity {
    /// Pairs an SVID with the trust bundle peers are verified against. The SVID is not
    /// required to chain to the bundle: SDS delivers them separately and a root rotation
    /// may briefly separate them, as with Envoy.
    pub fn new(svid: Arc<Svid>, bundle: Arc<TrustBundle>) -> Self {
        Self { svid, bundle }
    }

    /// The proxy's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        self.svid.spiffe_id()
    }

    /// The certificate chain, leaf first, DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        self.svid.chain()
    }

    /// The private key, DER. Keep it in memory; never log it.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        self.svid.key()
    }

    /// The trust bundle's roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        self.bundle.roots()
    }

    /// The leaf's `notAfter`.
    pub fn not_after(&self) -> SystemTime {
        self.svid.not_after()
    }

    /// The leaf's serial, lowercase hex.
    pub fn serial(&self) -> &str {
        self.svid.serial()
    }

    /// The SVID half.
    pub fn svid(&self) -> &Arc<Svid> {
        &self.svid
    }

    /// The trust bundle half.
    pub fn bundle(&self) -> &Arc<TrustBundle> {
        &self.bundle
    }
}

/// Lowercase hex of `bytes` (serials, as the CA prints them).
pub fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_support::TestCa;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

    #[test]
    fn parses_an_svid_and_a_bundle_from_pem() {
        let ca = TestCa::new();
        let (chain_pem, key_pem) = ca.leaf_pem(ID);
        let svid = Svid::from_pem(chain_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        assert_eq!(svid.spiffe_id().as_str(), ID);
        assert_eq!(svid.chain().len(), 1);
        assert!(svid.not_after() > SystemTime::now());
        assert!(!svid.serial().is_empty());
        let bundle = TrustBundle::from_pem(ca.pem().as_bytes()).unwrap();
        assert_eq!(bundle.roots().len(), 1);
        let identity = Identity::new(Arc::new(svid), Arc::new(bundle));
        assert_eq!(identity.spiffe_id().as_str(), ID);
    }

    #[test]
    fn debug_never_prints_the_key() {
        let ca = TestCa::new();
        let (chain_pem, key_pem) = ca.leaf_pem(ID);
        let svid = Svid::from_pem(chain_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        let key_der = svid.key().secret_der().to_vec();
        let identity = Identity::new(
            Arc::new(svid),
            Arc::new(TrustBundle::from_pem(ca.pem().as_bytes()).unwrap()),
        );
        let debug = format!("{identity:?}");
        assert!(debug.contains("redacted"), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        let hex: String = key_der.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!debug.contains(&hex[..32]), "{debug}");
        assert!(!debug.contains(&format!("{:?}", &key_der[..8])), "{debug}");
    }

    #[test]
    fn refuses_a_key_that_does_not_match() {
        let ca = TestCa::new();
        let (chain_pem, _) = ca.leaf_pem(ID);
        let (_, other_key) = ca.leaf_pem(ID);
        let err = Svid::from_pem(chain_pem.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch), "{err}");
    }

    #[test]
    fn refuses_bad_pem_and_empty_input() {
        let ca = TestCa::new();
        let (chain_pem, key_pem) = ca.leaf_pem(ID);
        let err = Svid::from_pem(b"not pem", key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::EmptyChain), "{err}");
        let broken = chain_pem.replace('M', "*");
        let err = Svid::from_pem(broken.as_bytes(), key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::ChainPem(_)), "{err}");
        let err = Svid::from_pem(chain_pem.as_bytes(), b"").unwrap_err();
        assert!(matches!(err, IdentityError::KeyPem(_)), "{err}");
        let err = TrustBundle::from_pem(b"").unwrap_err();
        assert!(matches!(err, IdentityError::EmptyBundle), "{err}");
    }

    #[test]
    fn refuses_leaves_that_break_the_svid_rules() {
        let ca = TestCa::new();
        let (chain, key) = ca.leaf_pem_with(ID, |p| p.subject_alt_names.clear());
        let err = Svid::from_pem(chain.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("SPIFFE ID"), "{err}");
        let (chain, key) = ca.leaf_pem_with(ID, |p| {
            p.subject_alt_names.push(rcgen::SanType::URI(
                "spiffe://cluster.local/ns/default/sa/two"
                    .try_into()
                    .unwrap(),
            ));
        });
        let err = Svid::from_pem(chain.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("2 URI SANs"), "{err}");
        let (chain, key) = ca.leaf_pem_with(ID, |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
        });
        let err = Svid::from_pem(chain.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::Leaf(LeafError::IsCa)), "{err}");
    }
}
