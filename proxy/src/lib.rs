//! Warden's sidecar proxy (`warden-proxy`): every connection between workloads is
//! SPIFFE mutual TLS with SVIDs from the node agent, and every connection and request
//! passes PeerAuthentication, RequestAuthentication and AuthorizationPolicy before it
//! reaches the app.
//!
//! - [`mesh`]: the Istio YAML side. The watched directory (ServiceEntry, WorkloadEntry,
//!   DestinationRule and the security policies) compiled all-or-nothing into a
//!   [`mesh::config::MeshConfig`] ([`mesh::config`]); a bad change is refused whole and
//!   the last good one stays. [`mesh::model`] holds services, endpoints and workloads,
//!   [`mesh::registry`] builds them and resolves hosts, [`mesh::traffic_policy`] picks
//!   the HTTP version toward each destination.
//! - [`sds`] and [`identity`]: an SDS client of the node agent, as Envoy is one; it
//!   streams this workload's SVID and `ROOTCA` and keeps the last good material.
//! - [`tls`]: SPIFFE mutual TLS with rustls (ring only), secure naming, rotation for
//!   new handshakes without touching live connections.
//! - [`pipeline`]: the HTTP request path as one pipeline of stages over the request
//!   itself (validate, normalize the path, sanitize headers, then the side's own
//!   stages, then forward): what was authorized is what is forwarded.
//! - [`inbound`] (port 15006): STRICT/PERMISSIVE per port (TLS told from plaintext by
//!   the first byte), then per request the pipeline with the JWT filter and the RBAC
//!   decision, then the app; HTTP/1.1, HTTP/2, gRPC, WebSocket and opaque TCP.
//! - [`outbound`] (port 15001): an HTTP proxy (absolute form or `Host`) and a TCP
//!   listener per TCP service port, each sending mutual TLS with Istio's SNI to an
//!   endpoint of the resolved service and refusing a server with the wrong identity.
//! - [`listener`]: accepting within the connection limit, the header, idle and
//!   handshake timeouts, tunnels, the drain; [`pool`]: upstream connections;
//!   [`http`]: the response body and local replies in Envoy's words.
//! - [`metrics`]: Istio's standard metrics with Istio's labels, and Warden's own.
//! - [`config`]: the process flags; [`app`]: the wiring ([`app::build`] returns the
//!   bound addresses), the admin endpoints (`/ready` on 15021, `/stats/prometheus` on
//!   15020) and the SIGTERM drain; [`context`]: the state the listeners share.

pub mod app;
pub mod config;
pub mod context;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod outbound;
pub mod pipeline;
pub mod pool;
pub mod sds;
pub mod tls;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_support {
    //! A throwaway CA that issues SVIDs (and deliberately broken certificates) for tests.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use crate::identity::{Identity, Svid, TrustBundle};

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    /// A CA: a self-signed root, or an intermediate under one.
    pub(crate) struct TestCa {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        der: CertificateDer<'static>,
        /// The root of the hierarchy (the trust bundle).
        root: CertificateDer<'static>,
        /// Certificates sent after a leaf: the intermediates, if any.
        tail: Vec<CertificateDer<'static>>,
    }

    fn ca_params(name: Option<&str>) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        // A name of its own unless asked: two test CAs are two issuers to webpki.
        let name = name.map_or_else(
            || format!("Warden test CA {}", NEXT.fetch_add(1, Ordering::Relaxed)),
            str::to_string,
        );
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
    }

    fn key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            Self::root(None)
        }

        /// A root named `name` (to impersonate another CA's name).
        pub(crate) fn named(name: &str) -> Self {
            Self::root(Some(name))
        }

        fn root(name: Option<&str>) -> Self {
            let key = key();
            let params = ca_params(name);
            let der = params.self_signed(&key).unwrap().der().clone();
            Self {
                issuer: rcgen::Issuer::new(params, key),
                root: der.clone(),
                der,
                tail: Vec::new(),
            }
        }

        /// An intermediate CA signed by this one.
        pub(crate) fn intermediate(&self) -> Self {
            let key = key();
            let params = ca_params(None);
            let der = params.signed_by(&key, &self.issuer).unwrap().der().clone();
            let mut tail = vec![der.clone()];
            tail.extend(self.tail.iter().cloned());
            Self {
                issuer: rcgen::Issuer::new(params, key),
                root: self.root.clone(),
                der,
                tail,
            }
        }

        /// This CA's certificate.
        pub(crate) fn der(&self) -> CertificateDer<'static> {
            self.der.clone()
        }

        /// The root, PEM.
        pub(crate) fn pem(&self) -> String {
            warden_common::files::pem_encode("CERTIFICATE", &self.root)
        }

        /// A leaf for `id` as Warden's CA issues it, changed by `f`; chain leaf first.
        pub(crate) fn leaf_der_with(
            &self,
            id: &str,
            f: impl FnOnce(&mut rcgen::CertificateParams),
        ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let key = key();
            let mut p = rcgen::CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
            p.is_ca = rcgen::IsCa::ExplicitNoCa;
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::DigitalSignature,
                rcgen::KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            f(&mut p);
            let leaf = p.signed_by(&key, &self.issuer).unwrap().der().clone();
            let mut chain = vec![leaf];
            chain.extend(self.tail.iter().cloned());
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (chain, key)
        }

        pub(crate) fn leaf_der(
            &self,
            id: &str,
        ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            self.leaf_der_with(id, |_| {})
        }

        /// Chain PEM and key PEM (PKCS#8), as the agent serves them over SDS.
        pub(crate) fn leaf_pem_with(
            &self,
            id: &str,
            f: impl FnOnce(&mut rcgen::CertificateParams),
        ) -> (String, String) {
            let (chain, key) = self.leaf_der_with(id, f);
            let chain_pem = chain
                .iter()
                .map(|c| warden_common::files::pem_encode("CERTIFICATE", c))
                .collect();
            let key_pem = warden_common::files::pem_encode("PRIVATE KEY", key.secret_der());
            (chain_pem, key_pem)
        }

        pub(crate) fn leaf_pem(&self, id: &str) -> (String, String) {
            self.leaf_pem_with(id, |_| {})
        }

        /// A checked identity for `id` with this hierarchy's root as the bundle.
        pub(crate) fn identity(&self, id: &str) -> Arc<Identity> {
            let (chain, key) = self.leaf_der(id);
            Arc::new(Identity::new(
                Arc::new(Svid::from_der(chain, key).unwrap()),
                Arc::new(TrustBundle::from_der(vec![self.root.clone()]).unwrap()),
            ))
        }
    }
}
