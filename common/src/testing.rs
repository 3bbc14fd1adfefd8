//! Test support, behind the `testing` feature: [`TestCa`], a throwaway CA that issues
//! SVIDs (and deliberately broken certificates) for unit and integration tests.
//!
//! It is Warden's one test CA: a self-signed P-256 root, optionally intermediates under
//! it, and leaves shaped as Warden's CA issues them (a SPIFFE URI SAN, an empty subject,
//! digitalSignature and keyEncipherment, serverAuth and clientAuth), built with rcgen on
//! ring. A closure may change a leaf's parameters before signing, so a test can make
//! exactly the certificate a rule must refuse. Crates use it from their tests with
//! `warden-common = { workspace = true, features = ["testing"] }` under
//! `[dev-dependencies]`. Setup failures panic: this is test code.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::files::pem_encode;

mod fuzz_corpus;
pub mod kube_api;

pub use fuzz_corpus::replay_fuzz_corpus;

/// Numbers the test CAs' names, so two test CAs are two issuers to webpki.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A test CA: a self-signed root, or an intermediate under one.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    /// The root of the hierarchy (the trust bundle).
    root: CertificateDer<'static>,
    /// Certificates sent after a leaf: the intermediates, if any, nearest first.
    tail: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("intermediates", &self.tail.len())
            .finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

fn ca_params(name: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A name of its own unless asked: two test CAs are two issuers to webpki.
    let name = name.map_or_else(
        || format!("Warden test CA {}", NEXT.fetch_add(1, Ordering::Relaxed)),
        str::to_string,
    );
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

/// A fresh P-256 key.
pub fn key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

/// The parameters of a leaf for `id` as Warden's CA issues it.
pub fn leaf_params(id: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

impl TestCa {
    /// A new self-signed root with a name of its own.
    pub fn new() -> Self {
        Self::root(None)
    }

    /// A root named `name` (to impersonate another CA's name).
    pub fn named(name: &str) -> Self {
        Self::root(Some(name))
    }

    fn root(name: Option<&str>) -> Self {
        let key = key();
        let params = ca_params(name);
        let der = params.self_signed(&key).unwrap().der().clone();
        Self {
            issuer: Issuer::new(params, key),
            root: der.clone(),
            der,
            tail: Vec::new(),
        }
    }

    /// An intermediate CA signed by this one; its leaves' chains carry it.
    pub fn intermediate(&self) -> Self {
        let key = key();
        let params = ca_params(None);
        let der = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let mut tail = vec![der.clone()];
        tail.extend(self.tail.iter().cloned());
        Self {
            issuer: Issuer::new(params, key),
            root: self.root.clone(),
            der,
            tail,
        }
    }

    /// A CRL (PEM) signed by this CA revoking the certificates with `serials` (their
    /// DER serial bytes).
    pub fn crl_pem(&self, serials: &[Vec<u8>]) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - std::time::Duration::from_secs(60),
            next_update: now + std::time::Duration::from_secs(3600),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// This CA's own certificate.
    pub fn der(&self) -> CertificateDer<'static> {
        self.der.clone()
    }

    /// The root of the hierarchy (the trust bundle).
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// The root, PEM.
    pub fn pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.root)
    }

    /// Certifies `public_key` as a leaf for `id`, its parameters changed by `f`; the
    /// chain, leaf first, intermediates after (not the root).
    pub fn certify(
        &self,
        id: &str,
        public_key: &impl PublicKeyData,
        f: impl FnOnce(&mut CertificateParams),
    ) -> Vec<CertificateDer<'static>> {
        let mut p = leaf_params(id);
        f(&mut p);
        let leaf = p.signed_by(public_key, &self.issuer).unwrap().der().clone();
        let mut chain = vec![leaf];
        chain.extend(self.tail.iter().cloned());
        chain
    }

    /// Certifies the key of `csr_pem` (a PEM certificate signing request, its
    /// signature checked) as a leaf for `id`, changed by `f`, as Warden's CA does:
    /// whatever names or extensions the request asks for, the leaf is [`leaf_params`].
    /// The chain, leaf first, intermediates after (not the root).
    pub fn certify_csr(
        &self,
        csr_pem: &str,
        id: &str,
        f: impl FnOnce(&mut CertificateParams),
    ) -> Vec<CertificateDer<'static>> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        self.certify(id, &csr.public_key, f)
    }

    /// A leaf for `id` with a new key, changed by `f`: chain leaf first, and the key.
    pub fn leaf_der_with(
        &self,
        id: &str,
        f: impl FnOnce(&mut CertificateParams),
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = key();
        let chain = self.certify(id, &key, f);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (chain, key)
    }

    /// A leaf for `id` with a new key.
    pub fn leaf_der(&self, id: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.leaf_der_with(id, |_| {})
    }

    /// A leaf for `id` valid from `not_before` to `not_after`.
    pub fn leaf_der_valid(
        &self,
        id: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.leaf_der_with(id, |p| {
            p.not_before = not_before.into();
            p.not_after = not_after.into();
        })
    }

    /// Chain PEM and key PEM (PKCS#8), as the agent serves them over SDS.
    pub fn leaf_pem_with(
        &self,
        id: &str,
        f: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let (chain, key) = self.leaf_der_with(id, f);
        let chain_pem = chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
        let key_pem = pem_encode("PRIVATE KEY", key.secret_der());
        (chain_pem, key_pem)
    }

    /// Chain PEM and key PEM of a leaf for `id`.
    pub fn leaf_pem(&self, id: &str) -> (String, String) {
        self.leaf_pem_with(id, |_| {})
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

    #[test]
    fn leaves_carry_the_id_the_validity_and_the_intermediates() {
        let root = TestCa::new();
        let inter = root.intermediate();
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let until = from + Duration::from_secs(600);
        let (chain, _key) = inter.leaf_der_valid(ID, from, until);
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], inter.der());
        assert_eq!(inter.root_der(), root.der());
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        assert_eq!(crate::x509::spiffe_id_of(&leaf).unwrap().as_str(), ID);
        assert!(!leaf.is_ca());
        assert_eq!(leaf.validity().not_before.timestamp(), 1_800_000_000);
        assert_eq!(leaf.validity().not_after.timestamp(), 1_800_000_600);
        assert!(root.pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn a_csr_gets_the_leaf_the_ca_decides() {
        let ca = TestCa::new().intermediate();
        let requester = key();
        let mut asked = CertificateParams::default();
        asked.subject_alt_names = vec![SanType::URI("spiffe://elsewhere/x".try_into().unwrap())];
        let csr = asked.serialize_request(&requester).unwrap().pem().unwrap();
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let chain = ca.certify_csr(&csr, ID, |p| p.not_before = from.into());
        assert_eq!(chain.len(), 2);
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        assert_eq!(crate::x509::spiffe_id_of(&leaf).unwrap().as_str(), ID);
        assert_eq!(leaf.validity().not_before.timestamp(), 1_800_000_000);
        assert_eq!(
            leaf.public_key().raw,
            requester.subject_public_key_info().as_slice()
        );
    }
}
