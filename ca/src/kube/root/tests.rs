//! The root in the cluster against the fake API server (kube's `tower_test`; no API
//! server can run here). Secret bodies follow the core/v1 Secret reference and Istio's
//! `cacerts` / `istio-ca-secret` layouts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use warden_common::testing::kube_api::FakeApiServer;

use rustls_pki_types::pem::PemObject;

use super::*;
use crate::monitoring::Metrics;
use crate::store::AuditFilter;

const NS: &str = "istio-system";
const TD: &str = "cluster.local";

async fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(&format!("sqlite://{}/ca.db", dir.path().display()))
        .await
        .unwrap()
}

fn secrets(fake: &FakeApiServer) -> RootSecrets {
    RootSecrets::new(fake.client(), NS, TD, KeyType::EcP256)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// An intermediate signed by a new root: (ca-cert, ca-key, root-cert), PEM.
fn intermediate() -> (String, String, String) {
    let (root_pem, root_key) = Authority::new_root_pem(TD, KeyType::EcP256).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&root_pem, KeyPair::from_pem(&root_key).unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cluster-1 intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem(), root_pem)
}

fn cacerts(data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": CACERTS, "namespace": NS}, "data": data})
}

async fn audit_rows(store: &Store) -> Vec<(String, String)> {
    store
        .list_audit(&AuditFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event == "ca.authority")
        .map(|r| (r.outcome, r.detail))
        .collect()
}

#[tokio::test]
async fn replicas_starting_together_create_one_root_and_all_load_it() {
    let fake = FakeApiServer::new();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    // Both believe they lead (the race the Lease normally prevents): the API server's
    // create-once still leaves exactly one root.
    let (_l, leader) = watch::channel(true);
    let (a, b) = tokio::join!(
        async {
            let mut l = leader.clone();
            secrets(&fake).initial(&store, &mut l).await.unwrap()
        },
        async {
            let mut l = leader.clone();
            secrets(&fake).initial(&store, &mut l).await.unwrap()
        },
    );
    assert_eq!(a.roots_pem(), b.roots_pem());
    let secret = fake.get("v1", "secrets", Some(NS), SELF_SIGNED).unwrap();
    assert_eq!(secret["type"], "istio.io/ca-root");
    let cert = secret
        .pointer("/data/ca-cert.pem")
        .unwrap()
        .as_str()
        .unwrap();
    let cert = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .unwrap();
    assert_eq!(String::from_utf8(cert).unwrap(), a.roots_pem());
    let creates = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("secrets"))
        .count();
    assert!((1..=2).contains(&creates), "{creates} creates");
    let rows = audit_rows(&store).await;
    assert_eq!(
        rows.iter().filter(|r| r.0 == "created").count(),
        1,
        "{rows:?}"
    );
}

#[tokio::test]
async fn two_replicas_under_one_lease_make_exactly_one_root() {
    use crate::kube::lease::{self, LeaseTimings};
    let fake = FakeApiServer::new();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let timings = LeaseTimings {
        duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry: Duration::from_millis(100),
    };
    let (_stop, shutdown) = watch::channel(false);
    let replica = |name: &'static str| {
        let fake = fake.clone();
        let store = store.clone();
        let shutdown = shutdown.clone();
        async move {
            let (mut leader, _task) = lease::start(
                Api::namespaced(fake.client(), NS),
                name.into(),
                timings,
                shutdown,
            );
            secrets(&fake).initial(&store, &mut leader).await.unwrap()
        }
    };
    let (a, b) = tokio::join!(replica("ca-a"), replica("ca-b"));
    assert_eq!(a.roots_pem(), b.roots_pem());
    let creates: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST") && r.contains("/secrets"))
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
}

#[tokio::test]
async fn replicas_share_one_jwt_and_audit_key() {
    let fake = FakeApiServer::new();
    let (_l, leader) = watch::channel(true);
    let (_f, follower) = watch::channel(false);
    let (a, b, c) = tokio::join!(
        async {
            secrets(&fake)
                .shared_keys(&mut leader.clone())
                .await
                .unwrap()
        },
        async {
            secrets(&fake)
                .shared_keys(&mut leader.clone())
                .await
                .unwrap()
        },
        async {
            secrets(&fake)
                .shared_keys(&mut follower.clone())
                .await
                .unwrap()
        },
    );
    assert_eq!(a.jwt_key, b.jwt_key);
    assert_eq!(a.jwt_key, c.jwt_key);
    assert_eq!(a.audit_key, c.audit_key);
    let s = secrets(&fake);
    let jwt = crate::pki::JwtSigner::from_pem(&a.jwt_key, &s.key_label("jwt-key.pem")).unwrap();
    let again = crate::pki::JwtSigner::from_pem(&c.jwt_key, &s.key_label("jwt-key.pem")).unwrap();
    assert_eq!(jwt.jwks_json(), again.jwks_json());
    // A Secret without a key is an error naming it.
    let mut broken = fake.get("v1", "secrets", Some(NS), SHARED_KEYS).unwrap();
    broken["data"]
        .as_object_mut()
        .unwrap()
        .remove("audit-key.pem");
    fake.insert(broken);
    let err = secrets(&fake)
        .shared_keys(&mut follower.clone())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}")
            .contains("Secret istio-system/warden-ca-keys key audit-key.pem: is missing"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_follower_waits_for_the_leaders_root() {
    let fake = FakeApiServer::new();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let follower = {
        let fake = fake.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let (_l, mut leader) = watch::channel(false);
            secrets(&fake).initial(&store, &mut leader).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!follower.is_finished());
    assert!(fake.get("v1", "secrets", Some(NS), SELF_SIGNED).is_none());
    let (_l, mut leader) = watch::channel(true);
    let made = secrets(&fake).initial(&store, &mut leader).await.unwrap();
    let loaded = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(made.roots_pem(), loaded.roots_pem());
}

#[tokio::test]
async fn cacerts_wins_and_is_reloaded_without_restart_and_a_broken_one_is_refused() {
    let fake = FakeApiServer::new();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let (_l, mut leader) = watch::channel(true);
    let first = secrets(&fake).initial(&store, &mut leader).await.unwrap();
    let self_signed_pem = first.roots_pem().to_string();
    let handle = AuthorityHandle::new(
        first,
        dir.path().join("root-cert.pem"),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(secrets(&fake).watch(handle.clone(), store.clone(), shutdown));
    let mut bundle = handle.bundle();
    bundle.borrow_and_update();
    // Issuance goes on throughout, as CertificateService does it (one snapshot per
    // request): every leaf verifies against the chain it is sent with.
    let counts: Arc<Counts> = Arc::default();
    let issuing = tokio::spawn(issue_continuously(handle.clone(), counts.clone()));

    // An operator plugs in an intermediate: the CA signs with it from then on.
    let (ca_cert, ca_key, root) = intermediate();
    fake.insert(cacerts(&[
        ("ca-cert.pem", &ca_cert),
        ("ca-key.pem", &ca_key),
        ("cert-chain.pem", &ca_cert),
        ("root-cert.pem", &root),
    ]));
    tokio::time::timeout(Duration::from_secs(10), bundle.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.current().roots_pem(), root);
    assert!(handle.current().source().contains("cacerts"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("root-cert.pem")).unwrap(),
        root
    );

    // A key that does not match: refused, audited, the authority in use kept.
    let (_, other_key, _) = intermediate();
    fake.insert(cacerts(&[
        ("ca-cert.pem", &ca_cert),
        ("ca-key.pem", &other_key),
        ("root-cert.pem", &root),
    ]));
    let refused = async {
        loop {
            if audit_rows(&store).await.iter().any(|r| r.0 == "refused") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("the broken cacerts is audited");
    let rows = audit_rows(&store).await;
    let refusal = &rows.iter().find(|r| r.0 == "refused").unwrap().1;
    assert!(
        refusal.contains("Secret istio-system/cacerts key ca-cert.pem")
            && refusal.contains("does not match"),
        "{refusal}"
    );
    assert_eq!(handle.current().roots_pem(), root);

    // cacerts removed: back to istio-ca-secret.
    fake.remove("v1", "secrets", Some(NS), CACERTS);
    tokio::time::timeout(Duration::from_secs(10), bundle.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.current().roots_pem(), self_signed_pem);
    // Issuance goes on after the reloads (how many fit in the steps above depends on
    // the machine's load: wait for them rather than count a window).
    let issued_so_far = counts.0.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(10), async {
        while counts.0.load(std::sync::atomic::Ordering::Relaxed) < issued_so_far + 10 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    issuing.abort();
    let _ = issuing.await;
    let issued = counts.0.load(std::sync::atomic::Ordering::Relaxed);
    let inconsistent = counts.1.load(std::sync::atomic::Ordering::Relaxed);
    assert!(issued > 10, "{issued} issued");
    assert_eq!(inconsistent, 0);
}

/// (issued, inconsistent) by [`issue_continuously`].
type Counts = (
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicUsize,
);

async fn issue_continuously(handle: AuthorityHandle, counts: Arc<Counts>) {
    use std::sync::atomic::Ordering::Relaxed;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let key = KeyPair::generate().unwrap();
    let id = warden_proto::SpiffeId::parse("spiffe://cluster.local/ns/foo/sa/sleep").unwrap();
    loop {
        let authority = handle.current();
        let cert = authority
            .sign_svid(
                &rcgen::PublicKeyData::subject_public_key_info(&key),
                crate::pki::csr::CsrKey::EcP256,
                &id,
                Duration::from_secs(60),
            )
            .unwrap();
        let chain = authority.response_chain(cert.pem);
        // The leaf's issuer: the first intermediate, else the root.
        let issuer_pem = if chain.len() > 2 {
            &chain[1]
        } else {
            &chain[chain.len() - 1]
        };
        let issuer_der = rustls_pki_types::CertificateDer::pem_slice_iter(issuer_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, issuer) = X509Certificate::from_der(&issuer_der).unwrap();
        let (_, leaf) = X509Certificate::from_der(&cert.der).unwrap();
        let ok = leaf.verify_signature(Some(issuer.public_key())).is_ok();
        counts.0.fetch_add(1, Relaxed);
        if !ok {
            counts.1.fetch_add(1, Relaxed);
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_broken_root_at_start_is_fatal_and_names_the_secret_and_key() {
    let fake = FakeApiServer::new();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let (ca_cert, _, root) = intermediate();
    fake.insert(cacerts(&[
        ("ca-cert.pem", &ca_cert),
        ("root-cert.pem", &root),
    ]));
    let (_l, mut leader) = watch::channel(true);
    let err = secrets(&fake)
        .initial(&store, &mut leader)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("Secret istio-system/cacerts key ca-key.pem: is missing"),
        "{text}"
    );
    // Nothing was created beside it.
    assert!(fake.get("v1", "secrets", Some(NS), SELF_SIGNED).is_none());
    assert!(audit_rows(&store).await.iter().any(|r| r.0 == "refused"));
}

#[tokio::test]
async fn cacerts_in_the_tls_layout_is_loaded() {
    let fake = FakeApiServer::new();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let (ca_cert, ca_key, root) = intermediate();
    fake.insert(cacerts(&[
        ("tls.crt", &ca_cert),
        ("tls.key", &ca_key),
        ("ca.crt", &root),
    ]));
    let (_l, mut leader) = watch::channel(false);
    let authority = secrets(&fake).initial(&store, &mut leader).await.unwrap();
    assert_eq!(authority.roots_pem(), root);
}
