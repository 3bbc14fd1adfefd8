//! X.509-SVIDs as the agent holds them: a key pair made here, the CSR for it, and the
//! CA's answer parsed into what SDS, the Workload API and the rotation schedule need.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use warden_proto::SpiffeId;

/// A key pair made on this node. The private key never leaves the process unless file
/// output is asked for; `Debug` never prints it.
pub struct NodeKey {
    pair: rcgen::KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(P-256, redacted)")
    }
}

impl NodeKey {
    /// Makes a new ECDSA P-256 key (the key type ztunnel and SPIRE use).
    pub fn generate() -> Result<Self, rcgen::Error> {
        Ok(Self {
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// Loads a PKCS#8 PEM key (the node key kept in the data dir).
    pub fn from_pem(pem: &str) -> Result<Self, rcgen::Error> {
        Ok(Self {
            pair: rcgen::KeyPair::from_pem(pem)?,
        })
    }

    /// A CSR for `id` (a URI SAN), or with no SAN when the CA decides the identity
    /// (first node attestation, workload mode). Empty subject, as ztunnel sends.
    pub fn csr_pem(&self, id: Option<&SpiffeId>) -> Result<String, rcgen::Error> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(id) = id {
            params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into()?)];
        }
        params.serialize_request(&self.pair)?.pem()
    }

    /// PKCS#8 PEM.
    pub fn pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// PKCS#8 DER.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.pair.serialize_der()
    }
}

/// Why a CA answer is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    /// Fewer than two PEM blocks (a leaf and the root bundle).
    #[error("the CA answered {0} certificate(s); expected the chain and the root bundle")]
    ShortChain(usize),
    /// A PEM block did not parse.
    #[error("certificate {index} in the CA's answer is not a PEM certificate: {reason}")]
    Pem {
        /// Position in the answer.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The leaf certificate did not parse or has no usable SPIFFE ID.
    #[error("the issued certificate is unusable: {0}")]
    Leaf(String),
    /// The leaf is for another identity than asked for.
    #[error("the CA issued {got} but {want} was asked for")]
    WrongId {
        /// What was asked for.
        want: String,
        /// What came back.
        got: String,
    },
}

/// The CA's CRLs (one per authority), as it publishes them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Crls {
    /// PEM, concatenated (Envoy's `validation_context.crl`).
    pub pem: String,
    /// DER each (the Workload API's `crl`).
    pub der: Vec<Vec<u8>>,
    /// Serials (lowercase hex) of every certificate they revoke.
    pub serials: std::collections::BTreeSet<String>,
    /// The issuer names (DER) of the CRLs.
    pub issuers: std::collections::BTreeSet<Vec<u8>>,
}

impl Crls {
    /// Parses concatenated PEM CRLs; each must parse whole.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use rustls_pki_types::CertificateRevocationListDer;
        use x509_parser::revocation_list::CertificateRevocationList;
        let mut der = Vec::new();
        let mut serials = std::collections::BTreeSet::new();
        let mut issuers = std::collections::BTreeSet::new();
        for crl in CertificateRevocationListDer::pem_slice_iter(pem.as_bytes()) {
            let crl = crl.map_err(|e| format!("a CRL is not PEM: {e}"))?;
            let (_, parsed) = CertificateRevocationList::from_der(&crl)
                .map_err(|e| format!("a CRL does not parse: {e}"))?;
            for r in parsed.iter_revoked_certificates() {
                serials.insert(hex::encode(r.raw_serial()));
            }
            issuers.insert(parsed.tbs_cert_list.issuer.as_raw().to_vec());
            der.push(crl.to_vec());
        }
        Ok(Self {
            pem: pem.to_string(),
            der,
            serials,
            issuers,
        })
    }

    /// Whether every root of `bundle` has a CRL issued by it. A verifier that checks
    /// the whole chain (Envoy's SPIFFE validator: CRL_CHECK_ALL) needs one from each
    /// issuer it meets, and fails every chain without.
    pub fn cover(&self, bundle: &Bundle) -> bool {
        !self.der.is_empty()
            && bundle.der.iter().all(|root| {
                x509_parser::parse_x509_certificate(root)
                    .is_ok_and(|(_, c)| self.issuers.contains(c.tbs_certificate.subject.as_raw()))
            })
    }
}

/// The trust bundle: the CA's roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Trust domain.
    pub trust_domain: String,
    /// Roots, PEM, concatenated.
    pub pem: String,
    /// Roots, DER each.
    pub der: Vec<Vec<u8>>,
}

impl Bundle {
    /// Parses a PEM bundle.
    pub fn from_pem(trust_domain: &str, pem: &str) -> Result<Self, String> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        if der.is_empty() {
            return Err("no certificates".into());
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            pem: pem.to_string(),
            der,
        })
    }

    /// All roots as one DER blob (the Workload API's bundle encoding).
    pub fn der_concat(&self) -> Vec<u8> {
        self.der.concat()
    }
}

/// A federated trust domain's bundle, as the CA fetched it from its bundle endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedBundle {
    /// Its X.509 roots (`trust_domain` is the foreign trust domain).
    pub x509: Bundle,
    /// Its JWT-SVID keys, a JWKS.
    pub jwks_json: String,
}

/// The federated bundles, by trust domain.
pub type FederatedBundles = std::collections::BTreeMap<String, Arc<FederatedBundle>>;

/// An X.509-SVID with its key, as served to workloads.
pub struct Svid {
    /// The SPIFFE ID.
    pub id: SpiffeId,
    /// The chain, leaf first, PEM (the root is not included).
    pub chain_pem: String,
    /// The chain, leaf first, DER each.
    pub chain_der: Vec<Vec<u8>>,
    /// The key.
    pub key: NodeKey,
    /// The trust bundle that came with it.
    pub bundle: Bundle,
    /// Leaf serial, lowercase hex.
    pub serial: String,
    /// Leaf `notBefore`.
    pub not_before: SystemTime,
    /// Leaf `notAfter`.
    pub not_after: SystemTime,
    /// When the agent received it.
    pub received: SystemTime,
    /// The leaf's authority key identifier, lowercase hex: which of the CA's
    /// authorities signed it (a tainted one means re-issue now).
    pub authority_key_id: Option<String>,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.as_str())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl Svid {
    /// Builds an SVID from the CA's CreateCertificate answer (PEM blocks: leaf,
    /// intermediates, and the root bundle last). `want` is the identity asked for, if
    /// the CSR named one.
    pub fn from_ca_answer(
        key: NodeKey,
        answer: &[String],
        want: Option<&SpiffeId>,
        received: SystemTime,
    ) -> Result<Self, SvidError> {
        if answer.len() < 2 {
            return Err(SvidError::ShortChain(answer.len()));
        }
        let (chain, root) = answer.split_at(answer.len() - 1);
        let mut chain_der = Vec::with_capacity(chain.len());
        for (index, pem) in chain.iter().enumerate() {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let c = c.map_err(|e| SvidError::Pem {
                    index,
                    reason: e.to_string(),
                })?;
                chain_der.push(c.to_vec());
            }
        }
        let leaf = chain_der.first().ok_or(SvidError::ShortChain(0))?;
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|e| SvidError::Leaf(e.to_string()))?;
        let id = crate::spiffe_id_of(&cert).map_err(SvidError::Leaf)?;
        if let Some(want) = want
            && want != &id
        {
            return Err(SvidError::WrongId {
                want: want.to_string(),
                got: id.to_string(),
            });
        }
        let bundle =
            Bundle::from_pem(id.trust_domain(), &root[0]).map_err(|reason| SvidError::Pem {
                index: answer.len() - 1,
                reason,
            })?;
        let authority_key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
                }
                _ => None,
            });
        Ok(Self {
            authority_key_id,
            serial: hex::encode(cert.raw_serial()),
            not_before: system_time(cert.validity().not_before),
            not_after: system_time(cert.validity().not_after),
            chain_pem: chain.concat(),
            chain_der,
            id,
            key,
            bundle,
            received,
        })
    }

    /// Loads an SVID kept on disk (the node SVID): chain PEM, key PEM, bundle PEM;
    /// `loaded` counts as when it was received.
    pub fn from_files(
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
        loaded: SystemTime,
    ) -> Result<Self, String> {
        let key = NodeKey::from_pem(key_pem).map_err(|e| format!("key: {e}"))?;
        let answer = [chain_pem.to_string(), bundle_pem.to_string()];
        let svid = Self::from_ca_answer(key, &answer, None, loaded).map_err(|e| e.to_string())?;
        Ok(svid)
    }

    /// Whether it is still valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        now < self.not_after
    }

    /// Seconds since the epoch of `notAfter`.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// Test support: the agent's view of Warden's one test CA
/// ([`warden_common::testing::TestCa`]), answering as the CA's CreateCertificate does.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_support {
    use warden_common::files::pem_encode;
    use warden_common::testing::TestCa;

    use super::*;

    /// What the agent asks of a test CA: CreateCertificate answers and SVIDs.
    pub trait AgentCa {
        /// The test CA itself.
        fn test_ca(&self) -> &TestCa;

        /// The CA's answer (PEM: the chain, leaf first, then the root) for a CSR-less
        /// issuance of `id` to `key`.
        fn answer(&self, id: &str, key: &NodeKey) -> Vec<String> {
            let ca = self.test_ca();
            answer(ca, &ca.certify(id, &key.pair, |_| {}))
        }

        /// The CA's answer to `csr_pem`: a leaf for `id` whatever the CSR names, valid
        /// from `not_before` to `not_after`, and the root.
        fn sign_csr(
            &self,
            csr_pem: &str,
            id: &SpiffeId,
            not_before: SystemTime,
            not_after: SystemTime,
        ) -> Vec<String> {
            let ca = self.test_ca();
            let chain = ca.certify_csr(csr_pem, id.as_str(), |p| {
                p.not_before = not_before.into();
                p.not_after = not_after.into();
            });
            answer(ca, &chain)
        }

        /// An SVID for `id`, received now.
        fn svid(&self, id: &str) -> Svid {
            let key = NodeKey::generate().unwrap();
            let answer = self.answer(id, &key);
            Svid::from_ca_answer(key, &answer, None, SystemTime::now()).unwrap()
        }
    }

    impl AgentCa for TestCa {
        fn test_ca(&self) -> &TestCa {
            self
        }
    }

    /// The chain's certificates, PEM each, and the root last.
    fn answer(ca: &TestCa, chain: &[CertificateDer<'_>]) -> Vec<String> {
        let mut pems: Vec<String> = chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
        pems.push(ca.pem());
        pems
    }
}

#[cfg(test)]
mod tests {
    use warden_common::testing::TestCa;

    use super::test_support::AgentCa;
    use super::*;

    fn issue(id: &str, key: &NodeKey) -> Vec<String> {
        TestCa::new().answer(id, key)
    }

    #[test]
    fn parses_the_ca_answer() {
        let key = NodeKey::generate().unwrap();
        let answer = issue("spiffe://example.org/ns/a/sa/b", &key);
        let want = SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap();
        let svid = Svid::from_ca_answer(key, &answer, Some(&want), SystemTime::now()).unwrap();
        assert_eq!(svid.id, want);
        assert_eq!(svid.chain_der.len(), 1);
        assert_eq!(svid.bundle.der.len(), 1);
        assert_eq!(svid.bundle.trust_domain, "example.org");
        assert!(!svid.serial.is_empty());
        assert!(!format!("{svid:?}").contains("PRIVATE"));
    }

    #[test]
    fn refuses_the_wrong_identity_and_short_answers() {
        let key = NodeKey::generate().unwrap();
        let answer = issue("spiffe://example.org/ns/a/sa/b", &key);
        let want = SpiffeId::parse("spiffe://example.org/ns/a/sa/c").unwrap();
        let err = Svid::from_ca_answer(key, &answer, Some(&want), SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("sa/c was asked for"), "{err}");
        let key = NodeKey::generate().unwrap();
        let err = Svid::from_ca_answer(key, &answer[..1], None, SystemTime::now()).unwrap_err();
        assert!(matches!(err, SvidError::ShortChain(1)));
    }

    #[test]
    fn csr_names_the_identity() {
        let key = NodeKey::generate().unwrap();
        let id = SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap();
        let pem = key.csr_pem(Some(&id)).unwrap();
        let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        assert_eq!(params.params.subject_alt_names.len(), 1);
        assert!(key.csr_pem(None).is_ok());
    }
}
