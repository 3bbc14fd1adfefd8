//! Verifying a peer's X.509-SVID: RFC 5280 path validation to the current trust bundle
//! with webpki (ring's algorithms), then the SPIFFE leaf rules, then, on the client side,
//! secure naming (the server's SPIFFE ID must be one the destination runs as). There is
//! no hostname check: SVIDs name workloads with a URI SAN, not DNS names.
//!
//! The verifiers read the trust bundle from the identity watch at every handshake, so a
//! new `ROOTCA` applies to the next handshake without rebuilding any config.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use warden_proto::SpiffeId;

use crate::identity::{IdentityWatch, LeafError, PROVIDER, TrustBundle, check_leaf};

/// Which server identities a client accepts on one connection (secure naming).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedIds {
    /// Any SPIFFE ID whose chain leads to the trust bundle: what Envoy does when the
    /// destination's service accounts are unknown (no `match_subject_alt_names`).
    Any,
    /// Exactly these: the service accounts the destination service runs as.
    OneOf(Arc<[SpiffeId]>),
}

impl AllowedIds {
    /// Only `ids`.
    pub fn one_of(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self::OneOf(ids.into_iter().collect())
    }

    fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Any => true,
            Self::OneOf(ids) => ids.contains(id),
        }
    }
}

/// Why a peer's certificate was refused. Carried inside rustls's
/// `CertificateError::Other`, so it reaches the caller's error message whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `ROOTCA` has not arrived yet: nothing can be verified.
    #[error("no trust bundle yet: ROOTCA has not been received from the node agent")]
    NoTrustBundle,
    /// The peer sent no certificate.
    #[error("the peer sent no certificate")]
    NoCertificate,
    /// The chain does not lead to a root of the bundle.
    #[error(
        "the peer's certificate chain does not lead to a root of the trust bundle (issued by another CA)"
    )]
    UnknownIssuer,
    /// A certificate names a bundle CA (or an intermediate) as issuer but that CA's key
    /// did not sign it.
    #[error(
        "a signature in the peer's certificate chain does not verify with its issuer's key (another CA with the same name?)"
    )]
    BadSignature,
    /// The leaf (or a certificate of its chain) has expired.
    #[error(
        "the peer's certificate chain has expired: not valid after {not_after} (unix seconds), now is {now}"
    )]
    Expired {
        /// `notAfter` of the expired certificate, unix seconds.
        not_after: u64,
        /// The verification time, unix seconds.
        now: u64,
    },
    /// The leaf (or a certificate of its chain) is not valid yet.
    #[error(
        "the peer's certificate chain is not valid yet: not valid before {not_before} (unix seconds), now is {now}"
    )]
    NotYetValid {
        /// `notBefore`, unix seconds.
        not_before: u64,
        /// The verification time, unix seconds.
        now: u64,
    },
    /// The CA revoked the peer's certificate (it is in the CA's CRL).
    #[error("the peer's certificate is revoked (listed in the CA's CRL)")]
    Revoked,
    /// The SPIFFE validator has no roots for the peer's trust domain.
    #[error("the peer is in trust domain {0:?}, which this proxy does not trust (not federated)")]
    UntrustedDomain(String),
    /// A CA certificate was presented as the leaf.
    #[error("the peer presented a CA certificate as its leaf")]
    CaAsLeaf,
    /// Any other path validation failure, as webpki names it.
    #[error("the peer's certificate chain is invalid: {0}")]
    Chain(String),
    /// The chain is valid but the leaf is not an X.509-SVID.
    #[error("the peer's certificate is not an X.509-SVID: {0}")]
    NotSvid(LeafError),
    /// Secure naming: the server is not one the destination runs as.
    #[error(
        "secure naming: the server presented {presented}, but this destination must be served by {}",
        list(.expected)
    )]
    UnexpectedServer {
        /// The identities allowed for the destination.
        expected: Arc<[SpiffeId]>,
        /// The identity in the server's certificate.
        presented: SpiffeId,
    },
}

fn list(ids: &[SpiffeId]) -> String {
    match ids {
        [] => "no identity (none is allowed)".to_string(),
        [one] => one.to_string(),
        many => {
            let names: Vec<&str> = many.iter().map(SpiffeId::as_str).collect();
            format!("one of [{}]", names.join(", "))
        }
    }
}

impl From<VerifyError> for rustls::Error {
    fn from(e: VerifyError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

impl VerifyError {
    /// The [`VerifyError`] inside a rustls error, if that is why the handshake failed.
    pub fn from_rustls(e: &rustls::Error) -> Option<&VerifyError> {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<VerifyError>()
            }
            _ => None,
        }
    }

    /// The [`VerifyError`] inside an I/O error from a tokio-rustls handshake.
    pub fn from_io(e: &std::io::Error) -> Option<&VerifyError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(Self::from_rustls)
    }
}

fn unix(t: UnixTime) -> u64 {
    t.as_secs()
}

fn from_webpki(e: webpki::Error) -> VerifyError {
    match e {
        webpki::Error::UnknownIssuer => VerifyError::UnknownIssuer,
        webpki::Error::CertExpired { time, not_after } => VerifyError::Expired {
            not_after: unix(not_after),
            now: unix(time),
        },
        webpki::Error::CertNotValidYet { time, not_before } => VerifyError::NotYetValid {
            not_before: unix(not_before),
            now: unix(time),
        },
        webpki::Error::CaUsedAsEndEntity => VerifyError::CaAsLeaf,
        webpki::Error::CertRevoked => VerifyError::Revoked,
        webpki::Error::InvalidSignatureForPublicKey => VerifyError::BadSignature,
        other => VerifyError::Chain(format!("{other:?}")),
    }
}

/// Verifies a peer chain against `bundle` at `now` for `usage` (client or server
/// authentication) and returns the leaf's SPIFFE ID.
pub fn verify_svid(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, VerifyError> {
    let ee = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| VerifyError::NotSvid(LeafError::Unparsable(format!("{e:?}"))))?;
    // With the SPIFFE validator the peer's trust domain picks the roots, so a federated
    // CA cannot vouch for an identity in another trust domain.
    let anchors = if bundle.per_trust_domain() {
        let leaf = check_leaf(end_entity).map_err(|e| match e {
            LeafError::IsCa => VerifyError::CaAsLeaf,
            other => VerifyError::NotSvid(other),
        })?;
        let td = leaf.spiffe_id.trust_domain();
        bundle
            .anchors_for(td)
            .ok_or_else(|| VerifyError::UntrustedDomain(td.to_string()))?
    } else {
        bundle.anchors()
    };
    // The CA's CRLs: the leaf's issuer's CRL is consulted; a chain whose issuer has
    // none (another trust domain) is not refused for that, as Envoy with
    // `only_verify_leaf_cert_crl`. Expired CRLs still count: the CA re-signs them each
    // minute, and an old list of revocations is better than none.
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = bundle.crls().iter().collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
        .ok()
        .map(|b| {
            b.with_depth(webpki::RevocationCheckDepth::EndEntity)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
                .build()
        });
    ee.verify_for_usage(
        PROVIDER.signature_verification_algorithms.all,
        anchors,
        intermediates,
        now,
        usage,
        revocation,
        None,
    )
    .map_err(from_webpki)?;
    let leaf = check_leaf(end_entity).map_err(|e| match e {
        LeafError::IsCa => VerifyError::CaAsLeaf,
        other => VerifyError::NotSvid(other),
    })?;
    Ok(leaf.spiffe_id)
}

fn current_bundle(identity: &IdentityWatch) -> Result<Arc<TrustBundle>, VerifyError> {
    identity
        .borrow()
        .as_ref()
        .map(|i| i.bundle().clone())
        .ok_or(VerifyError::NoTrustBundle)
}

fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &PROVIDER.signature_verification_algorithms,
    )
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &PROVIDER.signature_verification_algorithms,
    )
}

fn schemes() -> Vec<SignatureScheme> {
    PROVIDER
        .signature_verification_algorithms
        .supported_schemes()
}

/// The server side: verifies client SVIDs (mandatory in STRICT, optional in PERMISSIVE).
#[derive(Debug)]
pub(crate) struct ClientSvidVerifier {
    identity: IdentityWatch,
    mandatory: bool,
}

impl ClientSvidVerifier {
    pub(crate) fn new(identity: IdentityWatch, mandatory: bool) -> Self {
        Self {
            identity,
            mandatory,
        }
    }
}

impl ClientCertVerifier for ClientSvidVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA hints (as Envoy sends none by default): clients send their SVID.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = current_bundle(&self.identity)?;
        let id = verify_svid(
            end_entity,
            intermediates,
            &bundle,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        tracing::trace!(peer = %id, "client SVID verified");
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// The client side: verifies the server's SVID and its SPIFFE ID against the
/// connection's [`AllowedIds`]. The `ServerName` rustls passes is ignored.
#[derive(Debug)]
pub(crate) struct ServerSvidVerifier {
    identity: IdentityWatch,
    allowed: AllowedIds,
}

impl ServerSvidVerifier {
    pub(crate) fn new(identity: IdentityWatch, allowed: AllowedIds) -> Self {
        Self { identity, allowed }
    }
}

impl ServerCertVerifier for ServerSvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = current_bundle(&self.identity)?;
        let id = verify_svid(
            end_entity,
            intermediates,
            &bundle,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if !self.allowed.allows(&id) {
            let expected = match &self.allowed {
                AllowedIds::OneOf(ids) => ids.clone(),
                AllowedIds::Any => Arc::from([]),
            };
            return Err(VerifyError::UnexpectedServer {
                expected,
                presented: id,
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_support::TestCa;

    const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

    fn verify(
        ca: &TestCa,
        chain: &[CertificateDer<'static>],
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, VerifyError> {
        let bundle = TrustBundle::from_der(vec![ca.der()]).unwrap();
        verify_svid(&chain[0], &chain[1..], &bundle, UnixTime::now(), usage)
    }

    #[test]
    fn accepts_an_svid_of_the_bundle_for_both_usages() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der(WEB);
        for usage in [
            webpki::KeyUsage::client_auth(),
            webpki::KeyUsage::server_auth(),
        ] {
            assert_eq!(verify(&ca, &chain, usage).unwrap().as_str(), WEB);
        }
    }

    #[test]
    fn refuses_a_leaf_its_issuers_crl_revokes() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let ca = TestCa::new();
        let (revoked, _) = ca.leaf_der(WEB);
        let (kept, _) = ca.leaf_der(WEB);
        let serial = |der: &CertificateDer<'_>| {
            X509Certificate::from_der(der)
                .unwrap()
                .1
                .raw_serial()
                .to_vec()
        };
        let crl = ca.crl_pem(&[serial(&revoked[0])]);
        let bundle = TrustBundle::from_der(vec![ca.der()])
            .unwrap()
            .with_crls_pem(crl.as_bytes())
            .unwrap();
        assert!(bundle.revokes(&crate::identity::hex_lower(&serial(&revoked[0]))));
        let usage = webpki::KeyUsage::client_auth();
        let err = verify_svid(&revoked[0], &[], &bundle, UnixTime::now(), usage).unwrap_err();
        assert_eq!(err, VerifyError::Revoked);
        assert!(err.to_string().contains("revoked"), "{err}");
        assert!(verify_svid(&kept[0], &[], &bundle, UnixTime::now(), usage).is_ok());
        // Through an intermediate with no CRL of its own: not refused for want of one.
        let intermediate = ca.intermediate();
        let (chain, _) = intermediate.leaf_der(WEB);
        assert!(verify_svid(&chain[0], &chain[1..], &bundle, UnixTime::now(), usage).is_ok());
        // A CRL that does not parse is refused by position.
        let err = TrustBundle::from_der(vec![ca.der()])
            .unwrap()
            .with_crls_pem(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
            .unwrap_err();
        assert!(err.to_string().contains("CRL #0"), "{err}");
    }

    #[test]
    fn accepts_a_chain_through_an_intermediate() {
        let root = TestCa::new();
        let intermediate = root.intermediate();
        let (chain, _) = intermediate.leaf_der(WEB);
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        assert_eq!(
            verify(&root, &chain, webpki::KeyUsage::client_auth())
                .unwrap()
                .as_str(),
            WEB
        );
        // Without the intermediate the path is broken.
        let err = verify(&root, &chain[..1], webpki::KeyUsage::client_auth()).unwrap_err();
        assert_eq!(err, VerifyError::UnknownIssuer);
    }

    #[test]
    fn rejects_a_cert_from_another_ca() {
        let ours = TestCa::new();
        let theirs = TestCa::new();
        let (chain, _) = theirs.leaf_der(WEB);
        let err = verify(&ours, &chain, webpki::KeyUsage::client_auth()).unwrap_err();
        assert_eq!(err, VerifyError::UnknownIssuer);
        assert!(err.to_string().contains("another CA"), "{err}");
    }

    #[test]
    fn rejects_a_cert_from_another_ca_with_the_same_name() {
        let ours = TestCa::named("cluster.local");
        let impostor = TestCa::named("cluster.local");
        let (chain, _) = impostor.leaf_der(WEB);
        let err = verify(&ours, &chain, webpki::KeyUsage::client_auth()).unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature), "{err}");
        assert!(err.to_string().contains("same name"), "{err}");
    }

    #[test]
    fn rejects_an_expired_cert() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der_with(WEB, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let err = verify(&ca, &chain, webpki::KeyUsage::server_auth()).unwrap_err();
        assert!(
            matches!(err, VerifyError::Expired { not_after, .. } if not_after == 978_307_200),
            "{err}"
        );
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn rejects_a_cert_not_valid_yet() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der_with(WEB, |p| {
            p.not_before = rcgen::date_time_ymd(3000, 1, 1);
            p.not_after = rcgen::date_time_ymd(3001, 1, 1);
        });
        let err = verify(&ca, &chain, webpki::KeyUsage::server_auth()).unwrap_err();
        assert!(matches!(err, VerifyError::NotYetValid { .. }), "{err}");
    }

    #[test]
    fn rejects_a_cert_without_a_uri_san() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der_with(WEB, |p| {
            p.subject_alt_names = vec![rcgen::SanType::DnsName("web.default".try_into().unwrap())];
        });
        let err = verify(&ca, &chain, webpki::KeyUsage::client_auth()).unwrap_err();
        assert!(
            matches!(err, VerifyError::NotSvid(LeafError::SpiffeId(_))),
            "{err}"
        );
        assert!(err.to_string().contains("no URI SAN"), "{err}");
    }

    #[test]
    fn rejects_a_non_spiffe_uri_san() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der_with(WEB, |p| {
            p.subject_alt_names = vec![rcgen::SanType::URI(
                "https://web.default.svc".try_into().unwrap(),
            )];
        });
        let err = verify(&ca, &chain, webpki::KeyUsage::client_auth()).unwrap_err();
        assert!(
            matches!(err, VerifyError::NotSvid(LeafError::SpiffeId(_))),
            "{err}"
        );
    }

    #[test]
    fn rejects_a_cert_with_two_uri_sans() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der_with(WEB, |p| {
            p.subject_alt_names.push(rcgen::SanType::URI(
                "spiffe://cluster.local/ns/default/sa/admin"
                    .try_into()
                    .unwrap(),
            ));
        });
        let err = verify(&ca, &chain, webpki::KeyUsage::client_auth()).unwrap_err();
        assert!(err.to_string().contains("2 URI SANs"), "{err}");
    }

    #[test]
    fn rejects_a_ca_cert_used_as_a_leaf() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der_with(WEB, |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        });
        let err = verify(&ca, &chain, webpki::KeyUsage::client_auth()).unwrap_err();
        assert_eq!(err, VerifyError::CaAsLeaf);
        // The root itself, presented as a leaf.
        let err = verify(&ca, &[ca.der()], webpki::KeyUsage::client_auth()).unwrap_err();
        assert_eq!(err, VerifyError::CaAsLeaf);
    }

    #[test]
    fn rejects_a_leaf_that_may_sign_certificates() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der_with(WEB, |p| {
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::DigitalSignature,
                rcgen::KeyUsagePurpose::KeyCertSign,
            ];
        });
        let err = verify(&ca, &chain, webpki::KeyUsage::client_auth()).unwrap_err();
        assert_eq!(err, VerifyError::NotSvid(LeafError::SigningKeyUsage));
    }

    #[test]
    fn rejects_a_leaf_without_the_usage() {
        let ca = TestCa::new();
        let (chain, _) = ca.leaf_der_with(WEB, |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        });
        assert!(verify(&ca, &chain, webpki::KeyUsage::server_auth()).is_ok());
        let err = verify(&ca, &chain, webpki::KeyUsage::client_auth()).unwrap_err();
        assert!(matches!(err, VerifyError::Chain(_)), "{err}");
    }

    #[test]
    fn secure_naming_error_names_both_ids() {
        let e = VerifyError::UnexpectedServer {
            expected: Arc::from([
                SpiffeId::parse("spiffe://cluster.local/ns/a/sa/x").unwrap(),
                SpiffeId::parse("spiffe://cluster.local/ns/a/sa/y").unwrap(),
            ]),
            presented: SpiffeId::parse(WEB).unwrap(),
        };
        let msg = e.to_string();
        assert!(msg.contains(WEB), "{msg}");
        assert!(
            msg.contains(
                "one of [spiffe://cluster.local/ns/a/sa/x, spiffe://cluster.local/ns/a/sa/y]"
            ),
            "{msg}"
        );
        let wrapped: rustls::Error = e.clone().into();
        assert_eq!(VerifyError::from_rustls(&wrapped), Some(&e));
        assert!(wrapped.to_string().contains(WEB), "{wrapped}");
    }

    #[test]
    fn the_spiffe_validator_verifies_each_peer_against_its_own_trust_domain() {
        let ours = TestCa::new();
        let partner = TestCa::new();
        let legacy = TrustBundle::from_der(vec![ours.root_der(), partner.root_der()]).unwrap();
        let per_td = TrustBundle::from_der(vec![ours.root_der(), partner.root_der()])
            .unwrap()
            .with_trust_domains(vec![
                ("cluster.local".into(), ours.pem().into_bytes()),
                ("partner.example".into(), partner.pem().into_bytes()),
            ])
            .unwrap();
        let check = |bundle: &TrustBundle, ca: &TestCa, id: &str| {
            let (chain, _) = ca.leaf_der(id);
            verify_svid(
                &chain[0],
                &chain[1..],
                bundle,
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
            )
        };
        let partner_id = "spiffe://partner.example/ns/x/sa/y";
        assert_eq!(
            check(&per_td, &partner, partner_id).unwrap().as_str(),
            partner_id
        );
        assert_eq!(check(&per_td, &ours, WEB).unwrap().as_str(), WEB);
        // The partner's CA naming one of our identities: concatenated roots take it,
        // the SPIFFE validator does not.
        assert!(check(&legacy, &partner, WEB).is_ok());
        assert_eq!(
            check(&per_td, &partner, WEB).unwrap_err(),
            VerifyError::UnknownIssuer
        );
        // A trust domain no one federates with.
        assert_eq!(
            check(&per_td, &ours, "spiffe://elsewhere.example/ns/a/sa/b").unwrap_err(),
            VerifyError::UntrustedDomain("elsewhere.example".into())
        );
        // Bad validator configurations are refused, naming the trust domain.
        let bad = |domains: Vec<(String, Vec<u8>)>| {
            TrustBundle::from_der(vec![ours.root_der()])
                .unwrap()
                .with_trust_domains(domains)
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad(vec![("spiffe://a.example".into(), ours.pem().into_bytes())])
                .contains("spiffe://a.example")
        );
        assert!(bad(vec![("a.example".into(), Vec::new())]).contains("\"a.example\""));
        assert!(bad(vec![]).contains("no trust domain"));
    }
}
