//! The CA over real TLS on loopback: every authentication path, every refusal, the
//! certificates it issues (checked with x509-parser and openssl), and its audit log, on
//! SQLite and on PostgreSQL.
//!
//! Over 800 lines on purpose: each file under `tests/` is a test binary that links the
//! whole CA, so the CA's API tests share one binary (and one build) instead of several.

#![allow(clippy::unwrap_used)] // tests fail by panicking

mod common;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use tonic::Code;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use common::*;
use warden_proto::admin::{CreateEntryRequest, CreateJoinTokenRequest, Selector};

fn pem_to_der(pem: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect()
}

/// Checks an issued leaf against the X.509-SVID rules and returns its serial.
fn check_svid(leaf_pem: &str, want_id: &str, want_ttl: Duration) -> Vec<u8> {
    let der = &pem_to_der(leaf_pem)[0];
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    assert!(
        cert.subject().iter().next().is_none(),
        "subject should be empty"
    );
    let mut uris = Vec::new();
    let mut san_critical = false;
    let mut saw_ku = false;
    let mut saw_eku = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                san_critical = ext.critical;
                for n in &san.general_names {
                    match n {
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => assert!(!bc.ca, "leaf must be CA:false"),
            ParsedExtension::KeyUsage(ku) => {
                saw_ku = true;
                assert!(ext.critical, "key usage must be critical");
                assert!(ku.digital_signature());
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                saw_eku = true;
                assert!(eku.server_auth && eku.client_auth);
            }
            _ => {}
        }
    }
    assert_eq!(uris, vec![want_id.to_string()]);
    assert!(
        san_critical,
        "URI SAN must be critical with an empty subject"
    );
    assert!(saw_ku && saw_eku);
    let serial = cert.raw_serial().to_vec();
    assert!(serial.len() * 8 >= 64, "serial too short");
    assert!(serial[0] & 0x80 == 0, "serial must be positive");
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let now = now();
    assert!(
        nb < now - 30 && nb > now - 600,
        "notBefore should be backdated a little"
    );
    let ttl = want_ttl.as_secs() as i64;
    assert!(
        (na - (now + ttl)).abs() <= 5,
        "notAfter {na} should be about now+{ttl}"
    );
    serial
}

async fn istio_style_jwt_request(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut client = ca.client(None).await;
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let token = sign_token(&sa_claims("default", "web"), alg);
        let (csr, _key) = csr(None);
        let chain = create(&mut client, request(&csr, 3600, Some(&token), None))
            .await
            .unwrap();
        assert_eq!(chain.len(), 2, "leaf and root bundle");
        assert_eq!(chain[1], ca.roots_pem(), "root bundle last");
        check_svid(
            &chain[0],
            &sa_id("default", "web"),
            Duration::from_secs(3600),
        );
        for purpose in ["sslclient", "sslserver"] {
            openssl_verify(ca.dir.path(), &chain[0], &[], &chain[1], purpose);
        }
    }
    // No TTL asked: the default, 24h as istiod.
    let (csr, _key) = csr(Some(&sa_id("default", "web")));
    let chain = create(
        &mut client,
        request(&csr, 0, Some(&sa_token("default", "web")), None),
    )
    .await
    .unwrap();
    check_svid(
        &chain[0],
        &sa_id("default", "web"),
        Duration::from_secs(86_400),
    );

    let metrics = ca.metrics().await;
    assert!(metrics.contains("citadel_server_csr_count 3"), "{metrics}");
    assert!(metrics.contains("citadel_server_success_cert_issuance_count 3"));
    let rows = audit_rows(&ca).await;
    assert_eq!(rows.iter().filter(|r| r.event == "cert.issued").count(), 3);
    assert!(rows.iter().all(|r| r.identity == sa_id("default", "web")));
    assert!(rows[0].detail_json.contains("\"auth\":\"jwt\""));
    ca.stop().await;
}

async fn jwt_refusals(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut client = ca.client(None).await;
    let (csr, _key) = csr(None);
    let base = sa_claims("default", "web");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base.clone();
        f(&mut c);
        sign_token(&c, Algorithm::ES256)
    };
    let cases: Vec<(String, &str)> = vec![
        (with(&|c| c["exp"] = (now() - 3600).into()), "expired"),
        (
            with(&|c| c["aud"] = serde_json::json!(["other"])),
            "audience",
        ),
        (
            with(&|c| c["iss"] = "https://evil.example".into()),
            "issuer",
        ),
        (with(&|c| c["nbf"] = (now() + 3600).into()), "not valid yet"),
        (
            with(&|c| c["sub"] = "system:serviceaccount:default:admin".into()),
            "kubernetes.io names default/web",
        ),
        (
            with(&|c| c["sub"] = "alice".into()),
            "not a Kubernetes service-account token",
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            }),
            "no kubernetes.io claim",
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "exp",
        ),
        ("not.a.jwt".to_string(), "not a valid JWT"),
    ];
    for (token, needle) in &cases {
        let res = create(&mut client, request(&csr, 0, Some(token), None)).await;
        assert_refused(res, Code::Unauthenticated, needle);
    }
    // A token signed by a key outside the JWKS, with a known kid.
    let foreign = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
        h.kid = Some("ec-1".into());
        jsonwebtoken::encode(
            &h,
            &base,
            &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    assert_refused(
        create(&mut client, request(&csr, 0, Some(&foreign), None)).await,
        Code::Unauthenticated,
        "signature does not verify",
    );
    // HS256 with the public key as secret (algorithm confusion) is refused outright.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &base,
        &jsonwebtoken::EncodingKey::from_secret(token_keys().jwks.as_bytes()),
    )
    .unwrap();
    assert_refused(
        create(&mut client, request(&csr, 0, Some(&hs), None)).await,
        Code::Unauthenticated,
        "only RS256 and ES256",
    );
    // No credentials, and a malformed header.
    assert_refused(
        create(&mut client, request(&csr, 0, None, None)).await,
        Code::Unauthenticated,
        "no credentials",
    );
    let mut req = request(&csr, 0, None, None);
    req.metadata_mut()
        .insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    assert_refused(
        create(&mut client, req).await,
        Code::Unauthenticated,
        "Bearer",
    );

    let expected = cases.len() as u64 + 4;
    let metrics = ca.metrics().await;
    assert!(
        metrics.contains(&format!(
            "citadel_server_authentication_failure_count {expected}"
        )),
        "{metrics}"
    );
    let rows = audit_rows(&ca).await;
    assert_eq!(rows.len() as u64, expected, "every refusal is audited");
    assert!(
        rows.iter()
            .all(|r| r.outcome == "denied" && r.requester == "unauthenticated")
    );
    assert!(rows.iter().any(|r| r.detail_json.contains("expired")));
    // Tokens never reach the audit log.
    for (token, _) in &cases {
        assert!(rows.iter().all(|r| !r.detail_json.contains(token.as_str())));
    }
    ca.stop().await;
}

async fn renewal_with_client_cert(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut client = ca.client(None).await;
    let (csr1, key1) = csr(None);
    let chain = create(
        &mut client,
        request(&csr1, 3600, Some(&sa_token("ns1", "api")), None),
    )
    .await
    .unwrap();
    // Renew over mTLS with the certificate just issued, and no token.
    let mut mtls = ca.client(Some((&chain[0], &key1.serialize_pem()))).await;
    let (csr2, _key2) = csr(Some(&sa_id("ns1", "api")));
    let renewed = create(&mut mtls, request(&csr2, 1800, None, None))
        .await
        .unwrap();
    check_svid(&renewed[0], &sa_id("ns1", "api"), Duration::from_secs(1800));
    // The client certificate wins over a token for someone else (istiod's order).
    let (csr3, _k) = csr(None);
    let renewed = create(
        &mut mtls,
        request(&csr3, 600, Some(&sa_token("ns1", "other")), None),
    )
    .await
    .unwrap();
    check_svid(&renewed[0], &sa_id("ns1", "api"), Duration::from_secs(600));
    // A workload certificate cannot impersonate.
    let (csr4, _k) = csr(None);
    assert_refused(
        create(
            &mut mtls,
            request(&csr4, 600, None, Some(&sa_id("ns1", "db"))),
        )
        .await,
        Code::PermissionDenied,
        "may not impersonate",
    );
    let rows = audit_rows(&ca).await;
    assert!(
        rows.iter()
            .any(|r| r.event == "cert.issued" && r.detail_json.contains("\"auth\":\"x509\""))
    );
    ca.stop().await;
}

async fn join_token_and_impersonation(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut admin = ca.admin().await;
    let tok = admin
        .create_join_token(CreateJoinTokenRequest {
            node_name: "node-1".into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    let node_id = format!("spiffe://{TD}/warden/node/node-1");
    assert_eq!(tok.spiffe_id, node_id);
    let mut client = ca.client(None).await;

    // A join token cannot be used to impersonate directly.
    let (csr0, _k) = csr(None);
    assert_refused(
        create(
            &mut client,
            request(&csr0, 0, Some(&tok.token), Some(&sa_id("default", "web"))),
        )
        .await,
        Code::PermissionDenied,
        "join token proves only the node's own identity",
    );
    // The token gives the node its SVID, once.
    let (csr1, node_key) = csr(None);
    let node_chain = create(&mut client, request(&csr1, 3600, Some(&tok.token), None))
        .await
        .unwrap();
    check_svid(&node_chain[0], &node_id, Duration::from_secs(3600));
    let (csr2, _k) = csr(None);
    assert_refused(
        create(&mut client, request(&csr2, 3600, Some(&tok.token), None)).await,
        Code::Unauthenticated,
        "join token is unknown, already used, or expired",
    );

    // The node renews over mTLS and asks for a workload registered under it.
    let web = sa_id("default", "web");
    admin
        .create_entry(CreateEntryRequest {
            parent_id: node_id.clone(),
            spiffe_id: web.clone(),
            selectors: vec![Selector {
                r#type: "unix".into(),
                value: "uid:1000".into(),
            }],
        })
        .await
        .unwrap();
    let mut node = ca
        .client(Some((&node_chain[0], &node_key.serialize_pem())))
        .await;
    let (csr3, _k) = csr(Some(&web));
    let chain = create(&mut node, request(&csr3, 600, None, Some(&web)))
        .await
        .unwrap();
    check_svid(&chain[0], &web, Duration::from_secs(600));
    let (csr4, _k) = csr(None);
    let renewed = create(&mut node, request(&csr4, 600, None, None))
        .await
        .unwrap();
    check_svid(&renewed[0], &node_id, Duration::from_secs(600));
    // Naming itself (or nothing) in ImpersonatedIdentity is no impersonation.
    for own in [node_id.as_str(), ""] {
        let (c, _k) = csr(None);
        let renewed = create(&mut node, request(&c, 600, None, Some(own)))
            .await
            .unwrap();
        check_svid(&renewed[0], &node_id, Duration::from_secs(600));
    }

    // Not registered under this node: refused, naming why.
    let (csr5, _k) = csr(None);
    assert_refused(
        create(
            &mut node,
            request(&csr5, 600, None, Some(&sa_id("default", "db"))),
        )
        .await,
        Code::PermissionDenied,
        "no registration entry has parent spiffe://cluster.local/warden/node/node-1",
    );
    // CSR for another identity than the impersonated one.
    let (csr6, _k) = csr(Some(&sa_id("default", "db")));
    assert_refused(
        create(&mut node, request(&csr6, 600, None, Some(&web))).await,
        Code::InvalidArgument,
        "the CSR asks for spiffe://cluster.local/ns/default/sa/db",
    );
    // Malformed and foreign impersonation targets.
    for (target, needle) in [
        ("not-a-spiffe-id", "is not a workload SPIFFE ID"),
        ("spiffe://other.domain/ns/a/sa/b", "foreign trust domain"),
    ] {
        let (c, _k) = csr(None);
        assert_refused(
            create(&mut node, request(&c, 600, None, Some(target))).await,
            Code::PermissionDenied,
            needle,
        );
    }

    let rows = audit_rows(&ca).await;
    let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    for e in [
        "token.created",
        "token.used",
        "entry.created",
        "cert.issued",
        "cert.denied",
    ] {
        assert!(events.contains(&e), "missing {e} in {events:?}");
    }
    let used = rows.iter().find(|r| r.event == "token.used").unwrap();
    assert_eq!(used.identity, node_id);
    // The token itself is never stored or logged.
    assert!(rows.iter().all(|r| !r.detail_json.contains(&tok.token)));
    ca.stop().await;
}

async fn trusted_node_account_impersonation(db: Db) {
    let opts = Opts {
        trusted_node_accounts: vec!["istio-system/ztunnel".into()],
        ..Default::default()
    };
    let Some(ca) = TestCa::start(db, opts).await else {
        return;
    };
    let ztunnel = sa_id("istio-system", "ztunnel");
    let web = sa_id("default", "web");
    let mut admin = ca.admin().await;
    admin
        .create_entry(CreateEntryRequest {
            parent_id: ztunnel.clone(),
            spiffe_id: web.clone(),
            selectors: vec![Selector {
                r#type: "socket".into(),
                value: "web".into(),
            }],
        })
        .await
        .unwrap();
    // `/warden/` is reserved: an entry there would hand a workload a node's identity
    // (or the CA's own, which federated trust domains trust for its bundle endpoint).
    for reserved in ["warden/node/node-a", "warden/ca", "warden"] {
        let err = admin
            .create_entry(CreateEntryRequest {
                parent_id: ztunnel.clone(),
                spiffe_id: format!("spiffe://{TD}/{reserved}"),
                selectors: vec![Selector {
                    r#type: "socket".into(),
                    value: "web".into(),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{reserved}: {err:?}");
        assert!(
            err.message().contains("reserved for nodes and the CA"),
            "{err:?}"
        );
    }
    let mut client = ca.client(None).await;
    let zt_token = sa_token("istio-system", "ztunnel");
    // ztunnel's own request, as ztunnel sends it: its token, ImpersonatedIdentity, a
    // CSR with the workload's URI SAN.
    let (c, _k) = csr(Some(&web));
    let chain = create(
        &mut client,
        request(&c, 86_400, Some(&zt_token), Some(&web)),
    )
    .await
    .unwrap();
    check_svid(&chain[0], &web, Duration::from_secs(86_400));
    let (c, _k) = csr(None);
    assert_refused(
        create(
            &mut client,
            request(&c, 0, Some(&zt_token), Some(&sa_id("default", "db"))),
        )
        .await,
        Code::PermissionDenied,
        "no registration entry",
    );
    // A service account that is not a trusted node account.
    let (c, _k) = csr(None);
    assert_refused(
        create(
            &mut client,
            request(&c, 0, Some(&sa_token("default", "api")), Some(&web)),
        )
        .await,
        Code::PermissionDenied,
        "--trusted-node-accounts",
    );
    // The admin socket answers an oversized request RESOURCE_EXHAUSTED too.
    let status = admin
        .list_entries(warden_proto::admin::ListEntriesRequest {
            parent_id: "x".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Entries deleted at the CA take effect at once.
    let entries = admin
        .list_entries(warden_proto::admin::ListEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    admin
        .delete_entry(warden_proto::admin::DeleteEntryRequest {
            id: entries[0].id.clone(),
        })
        .await
        .unwrap();
    let (c, _k) = csr(None);
    assert_refused(
        create(&mut client, request(&c, 0, Some(&zt_token), Some(&web))).await,
        Code::PermissionDenied,
        "no registration entry",
    );
    let rows = audit_rows(&ca).await;
    assert!(
        rows.iter()
            .any(|r| r.event == "entry.deleted" && r.identity == web)
    );
    ca.stop().await;
}

async fn csr_and_ttl_refusals(db: Db) {
    let opts = Opts {
        max_ttl: Some(Duration::from_secs(7 * 86_400)),
        ..Default::default()
    };
    let Some(ca) = TestCa::start(db, opts).await else {
        return;
    };
    let mut client = ca.client(None).await;
    let token = sa_token("default", "web");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let make = |f: &dyn Fn(&mut rcgen::CertificateParams)| {
        let mut p = rcgen::CertificateParams::default();
        f(&mut p);
        p.serialize_request(&key).unwrap().pem().unwrap()
    };
    let valid = make(&|_| {});
    let mut tampered: Vec<char> = valid.chars().collect();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let cases: Vec<(String, i64, &str)> = vec![
        (
            make(&|p| {
                p.subject_alt_names = vec![rcgen::SanType::URI(
                    sa_id("default", "admin").as_str().try_into().unwrap(),
                )]
            }),
            0,
            "authorized only for spiffe://cluster.local/ns/default/sa/web",
        ),
        (
            make(&|p| {
                p.subject_alt_names = vec![rcgen::SanType::DnsName(
                    "web.default.svc".try_into().unwrap(),
                )]
            }),
            0,
            "DNS SAN",
        ),
        (
            make(&|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
            0,
            "CA:true",
        ),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n"
                .into(),
            0,
            "not PEM",
        ),
        ("".into(), 0, "no CSR"),
        (key.serialize_pem(), 0, "expected \"CERTIFICATE REQUEST\""),
        (tampered, 0, "CSR"),
        (
            valid.clone(),
            8 * 86_400,
            "requested TTL 691200s is greater than the max allowed TTL 604800s",
        ),
    ];
    for (csr, ttl, needle) in &cases {
        let res = create(&mut client, request(csr, *ttl, Some(&token), None)).await;
        assert_refused(res, Code::InvalidArgument, needle);
    }
    // An RSA-1024 CSR from openssl.
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=web", "-keyout",
        ])
        .arg(ca.dir.path().join("k.pem"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let res = create(
        &mut client,
        request(
            &String::from_utf8(out.stdout).unwrap(),
            0,
            Some(&token),
            None,
        ),
    )
    .await;
    assert_refused(res, Code::InvalidArgument, "RSA-1024");
    // An RSA-2048 CSR from openssl is accepted, and keyEncipherment is added.
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=web", "-keyout",
        ])
        .arg(ca.dir.path().join("k2.pem"))
        .output()
        .unwrap();
    let chain = create(
        &mut client,
        request(
            &String::from_utf8(out.stdout).unwrap(),
            0,
            Some(&token),
            None,
        ),
    )
    .await
    .unwrap();
    let der = &pem_to_der(&chain[0])[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && ku.value.key_encipherment());
    openssl_verify(ca.dir.path(), &chain[0], &[], &chain[1], "sslserver");

    // Oversized request: refused before it is parsed, with RESOURCE_EXHAUSTED as gRPC's
    // status codes want (tonic alone says OUT_OF_RANGE).
    let huge = "A".repeat(100 * 1024);
    let res = create(&mut client, request(&huge, 0, Some(&token), None)).await;
    let status = res.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    // Too large for a CSR but under the message limit: a named refusal.
    let big = "A".repeat(20 * 1024);
    assert_refused(
        create(&mut client, request(&big, 0, Some(&token), None)).await,
        Code::InvalidArgument,
        "at most 16384",
    );

    let metrics = ca.metrics().await;
    assert!(
        metrics.contains("citadel_server_csr_sign_err_count{error=\"csr_san\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("citadel_server_csr_sign_err_count{error=\"ttl\"} 1"),
        "{metrics}"
    );
    let rows = audit_rows(&ca).await;
    let denied = rows.iter().filter(|r| r.outcome == "denied").count();
    assert_eq!(denied, cases.len() + 2, "each refusal audited once");
    assert!(
        rows.iter()
            .filter(|r| r.outcome == "denied")
            .all(|r| r.identity == sa_id("default", "web"))
    );
    ca.stop().await;
}

async fn restart_keeps_root_and_chain(db: Db) {
    let Some(mut ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let root = ca.roots_pem();
    let mut client = ca.client(None).await;
    let (c, _k) = csr(None);
    create(&mut client, request(&c, 0, Some(&sa_token("a", "b")), None))
        .await
        .unwrap();
    ca.restart().await;
    assert_eq!(ca.roots_pem(), root, "the root survives a restart");
    let mut client = ca.client(None).await;
    let (c, _k) = csr(None);
    let chain = create(&mut client, request(&c, 0, Some(&sa_token("a", "b")), None))
        .await
        .unwrap();
    assert_eq!(chain[1], root);
    let v = ca
        .admin()
        .await
        .verify_audit(warden_proto::admin::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.rows_checked, 2);
    ca.stop().await;
}

async fn concurrent_join_token_use_issues_once(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let tok = ca.join_token("racer").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = ca.client(None).await;
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            let (c, _k) = csr(None);
            create(&mut client, request(&c, 0, Some(&tok), None))
                .await
                .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 1, "a join token is single-use");
    assert_eq!(ca.bound().store.issued_count().await.unwrap(), 1);
    ca.stop().await;
}

async fn audit_load_is_durable_and_chained(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = ca.client(None).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let (c, _k) = csr(None);
                create(
                    &mut client,
                    request(&c, 0, Some(&sa_token("load", &format!("sa{i}"))), None),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ca.bound().store.issued_count().await.unwrap(), 160);
    let v = ca
        .admin()
        .await
        .verify_audit(warden_proto::admin::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok && v.rows_checked == 160, "{v:?}");
    ca.stop().await;
}

/// `NodeService.ListNodeEntries`: a node sees exactly the entries it is parent of; a
/// workload, a join token and a stranger are refused, and the refusals are audited.
async fn node_entry_listing(db: Db) {
    use warden_proto::warden_ca::ListNodeEntriesRequest;
    use warden_proto::warden_ca::node_service_client::NodeServiceClient;
    let Some(ca) = TestCa::start(
        db,
        Opts {
            trusted_node_accounts: vec!["istio-system/ztunnel".into()],
            ..Opts::default()
        },
    )
    .await
    else {
        return;
    };
    let mut admin = ca.admin().await;
    let entry = |parent: &str, id: &str, sel: &str| CreateEntryRequest {
        parent_id: parent.into(),
        spiffe_id: id.into(),
        selectors: vec![Selector {
            r#type: "unix".into(),
            value: sel.into(),
        }],
    };
    let node1 = format!("spiffe://{TD}/warden/node/node-1");
    let node2 = format!("spiffe://{TD}/warden/node/node-2");
    let zt = sa_id("istio-system", "ztunnel");
    for (parent, id, sel) in [
        (&node1, sa_id("default", "web"), "uid:1000"),
        (&node1, sa_id("default", "db"), "uid:1001"),
        (&node2, sa_id("default", "other"), "uid:1000"),
        (&zt, sa_id("default", "zt-web"), "uid:7"),
    ] {
        admin.create_entry(entry(parent, &id, sel)).await.unwrap();
    }
    // node-1 with its SVID sees its two entries (ordered by creation second, then ID).
    let token = ca.join_token("node-1").await;
    let (csr0, key) = csr(None);
    let chain = create(
        &mut ca.client(None).await,
        request(&csr0, 600, Some(&token), None),
    )
    .await
    .unwrap();
    let mut node =
        NodeServiceClient::new(ca.channel(Some((&chain[0], &key.serialize_pem()))).await);
    let resp = node
        .list_node_entries(ListNodeEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.node_id, node1);
    let mut ids: Vec<_> = resp
        .entries
        .iter()
        .map(|e| (e.spiffe_id.clone(), e.selectors.clone()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            (sa_id("default", "db"), vec!["unix:uid:1001".to_string()]),
            (sa_id("default", "web"), vec!["unix:uid:1000".to_string()])
        ]
    );
    // A trusted node account (JWT) sees the entries under its own SPIFFE ID.
    let mut anon = NodeServiceClient::new(ca.channel(None).await);
    let mut req = tonic::Request::new(ListNodeEntriesRequest {});
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", sa_token("istio-system", "ztunnel"))
            .parse()
            .unwrap(),
    );
    let resp = anon.list_node_entries(req).await.unwrap().into_inner();
    assert_eq!(resp.node_id, zt);
    assert_eq!(resp.entries.len(), 1);
    // A workload identity is not a node.
    let (csr1, wkey) = csr(None);
    let mut req = tonic::Request::new(warden_proto::istio_ca::IstioCertificateRequest {
        csr: csr1,
        validity_duration: 600,
        metadata: None,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", sa_token("default", "web"))
            .parse()
            .unwrap(),
    );
    let wchain = ca
        .client(None)
        .await
        .create_certificate(req)
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    let mut workload =
        NodeServiceClient::new(ca.channel(Some((&wchain[0], &wkey.serialize_pem()))).await);
    let err = workload
        .list_node_entries(ListNodeEntriesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("is not a node"), "{}", err.message());
    // A join token only buys the node certificate.
    let token2 = ca.join_token("node-2").await;
    let mut req = tonic::Request::new(ListNodeEntriesRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token2}").parse().unwrap());
    let err = anon.list_node_entries(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // No credentials at all.
    let err = anon
        .list_node_entries(ListNodeEntriesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let denied: Vec<_> = audit_rows(&ca)
        .await
        .into_iter()
        .filter(|r| r.event == "node.denied")
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
    ca.stop().await;
}

/// The database URL a test CA uses.
fn db_url(ca: &TestCa) -> String {
    match &ca.pg {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}/warden.db", ca.data_dir().display()),
    }
}

/// What someone with write access to the database can do: change row `seq` and
/// recompute every hash after it, the chain head included, so the chain is
/// consistent again.
async fn rewrite_audit_from(url: &str, seq: i64) {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    let mut prev: String = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(seq - 1)
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get("hash");
    let rows = sqlx::query(
        "SELECT seq, ts_nanos, event, outcome, identity, requester, peer_addr, detail \
         FROM audit_log WHERE seq >= $1 ORDER BY seq",
    )
    .bind(seq)
    .fetch_all(&mut c)
    .await
    .unwrap();
    for r in rows {
        let row_seq: i64 = r.get("seq");
        let identity: String = if row_seq == seq {
            "spiffe://cluster.local/ns/innocent/sa/nobody".into()
        } else {
            r.get("identity")
        };
        let hash = warden_ca::store::audit::chain_hash(
            &prev,
            row_seq,
            r.get("ts_nanos"),
            r.get::<String, _>("event").as_str(),
            r.get::<String, _>("outcome").as_str(),
            &identity,
            r.get::<String, _>("requester").as_str(),
            r.get::<String, _>("peer_addr").as_str(),
            r.get::<String, _>("detail").as_str(),
        );
        sqlx::query("UPDATE audit_log SET identity = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&identity)
            .bind(&prev)
            .bind(&hash)
            .bind(row_seq)
            .execute(&mut c)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&prev)
        .execute(&mut c)
        .await
        .unwrap();
}

/// Signed checkpoints: a checkpoint catches a database rewritten consistently (which
/// the chain alone cannot), pruning keeps the rest verifiable from its anchor, and
/// pruning refuses what it cannot stand on.
async fn audit_checkpoints_and_pruning(db: Db) {
    use warden_proto::admin::{CreateCheckpointRequest, PruneAuditRequest, VerifyAuditRequest};
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let issue = |n: usize| {
        let ca = &ca;
        async move {
            let mut client = ca.client(None).await;
            for i in 0..n {
                let (c, _k) = csr(None);
                create(
                    &mut client,
                    request(&c, 0, Some(&sa_token("ck", &format!("sa{i}"))), None),
                )
                .await
                .unwrap();
            }
        }
    };
    let mut admin = ca.admin().await;
    // Nothing to sign yet.
    let err = admin
        .create_checkpoint(CreateCheckpointRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    issue(5).await;
    let cp1 = admin
        .create_checkpoint(CreateCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cp1.seq, 5);
    // The same head gives the same checkpoint.
    let again = admin
        .create_checkpoint(CreateCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, cp1);
    let verify = |seq: i64, hash: &str| VerifyAuditRequest {
        checkpoint_seq: seq,
        checkpoint_hash: hash.to_string(),
    };
    let mut admin2 = ca.admin().await;
    let v = admin2
        .verify_audit(verify(cp1.seq, &cp1.hash))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok && v.rows_checked == 5, "{v:?}");
    let v = admin2
        .verify_audit(verify(cp1.seq, &"0".repeat(64)))
        .await
        .unwrap()
        .into_inner();
    assert!(!v.ok && v.first_bad_seq == 5, "{v:?}");

    issue(3).await;
    // Pruning needs a recorded checkpoint with the same hash.
    let err = admin2
        .prune_audit(PruneAuditRequest {
            through_seq: 4,
            hash: cp1.hash.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("no checkpoint is recorded at row 4"),
        "{err:?}"
    );
    let err = admin2
        .prune_audit(PruneAuditRequest {
            through_seq: 5,
            hash: "0".repeat(64),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("different hash"), "{err:?}");
    let pruned = admin2
        .prune_audit(PruneAuditRequest {
            through_seq: 5,
            hash: cp1.hash.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.rows_removed, 5);
    // 3 issuances and the audit.pruned row remain, verified from the anchor; the old
    // checkpoint still checks (it is the anchor).
    let v = admin2
        .verify_audit(verify(0, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok && v.rows_checked == 4 && v.anchor_seq == 5, "{v:?}");
    let v = admin2
        .verify_audit(verify(cp1.seq, &cp1.hash))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    let cp2 = admin2
        .create_checkpoint(CreateCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cp2.seq, 9);
    let v = admin2
        .verify_audit(verify(3, &cp1.hash))
        .await
        .unwrap()
        .into_inner();
    assert!(!v.ok && v.reason.contains("pruned"), "{v:?}");

    // Someone with the database rewrites row 7 and every hash after it: the chain alone
    // verifies again, the checkpoint does not.
    rewrite_audit_from(&db_url(&ca), 7).await;
    let v = admin2
        .verify_audit(verify(0, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(
        v.ok,
        "a consistent rewrite passes the chain check alone: {v:?}"
    );
    let v = admin2
        .verify_audit(verify(cp2.seq, &cp2.hash))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !v.ok && v.first_bad_seq == 9 && v.reason.contains("rewritten"),
        "{v:?}"
    );
    // And nothing can be pruned on a chain that does not match its checkpoint.
    let err = admin2
        .prune_audit(PruneAuditRequest {
            through_seq: 9,
            hash: cp2.hash.clone(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("nothing was pruned"), "{err:?}");
    ca.stop().await;
}

/// Limits: a caller over its rate is refused with RESOURCE_EXHAUSTED and gRPC's retry
/// pushback, others are not affected, nothing is audited for it; the concurrency bound
/// with no queue refuses what it cannot take at once and serves the rest.
async fn limits_refuse_with_a_retry_hint(db: Db) {
    let Some(ca) = TestCa::start(
        db,
        Opts {
            csr_node_rate: Some(0.01),
            csr_node_burst: Some(2),
            ..Opts::default()
        },
    )
    .await
    else {
        return;
    };
    let mut client = ca.client(None).await;
    let token = sa_token("busy", "app");
    for _ in 0..2 {
        let (c, _k) = csr(None);
        create(&mut client, request(&c, 0, Some(&token), None))
            .await
            .unwrap();
    }
    let (c, _k) = csr(None);
    let err = client
        .create_certificate(request(&c, 0, Some(&token), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("over its certificate request rate"),
        "{err:?}"
    );
    let hint: u64 = err
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hint > 1000, "{hint}");
    // Another caller has its own bucket.
    let (c, _k) = csr(None);
    create(
        &mut client,
        request(&c, 0, Some(&sa_token("busy", "other")), None),
    )
    .await
    .unwrap();
    let metrics = ca.metrics().await;
    assert!(
        metrics.contains("warden_ca_rate_limited_count{limit=\"node\"} 1"),
        "{metrics}"
    );
    let v = ca
        .admin()
        .await
        .verify_audit(warden_proto::admin::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.rows_checked, 3, "the refusal is counted, not audited");
    ca.stop().await;

    // One request at a time and no queue: a burst is partly refused, at once and with
    // a hint, and the rest is served.
    let Some(ca) = TestCa::start(
        db,
        Opts {
            max_concurrent_csrs: Some(1),
            max_queued_csrs: Some(0),
            ..Opts::default()
        },
    )
    .await
    else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut client = ca.client(None).await;
        tasks.push(tokio::spawn(async move {
            let (c, _k) = csr(None);
            client
                .create_certificate(request(
                    &c,
                    0,
                    Some(&sa_token("burst", &format!("sa{i}"))),
                    None,
                ))
                .await
        }));
    }
    let (mut served, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => served += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("concurrent request limit"), "{e:?}");
                assert!(e.metadata().get("grpc-retry-pushback-ms").is_some());
                refused += 1;
            }
        }
    }
    assert!(
        served >= 1 && refused >= 1,
        "served {served}, refused {refused}"
    );
    ca.stop().await;
}

/// A flood of unauthenticated requests: every one refused and counted, but only the
/// first 100 a minute get rows of their own; the rest are one aggregate row, written at
/// the end of the minute or at shutdown.
async fn an_unauthenticated_flood_is_aggregated(db: Db) {
    let Some(mut ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut client = ca.client(None).await;
    for _ in 0..150 {
        let (c, _k) = csr(None);
        let err = client
            .create_certificate(request(&c, 0, Some("not-a-jwt"), None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let metrics = ca.metrics().await;
    assert!(
        metrics.contains("citadel_server_authentication_failure_count 150"),
        "{metrics}"
    );
    ca.restart().await;
    let denied: Vec<_> = audit_rows(&ca)
        .await
        .into_iter()
        .filter(|r| r.event == "cert.denied")
        .collect();
    assert_eq!(denied.len(), 101, "100 rows of their own and one aggregate");
    let agg: serde_json::Value = serde_json::from_str(&denied[100].detail_json).unwrap();
    assert_eq!(agg["aggregated"], true, "{agg}");
    assert_eq!(agg["count"], 50, "{agg}");
    assert_eq!(
        agg["sample_peers"],
        serde_json::json!(["127.0.0.1"]),
        "{agg}"
    );
    ca.stop().await;
}

/// The authority key identifier of a PEM leaf, hex.
fn leaf_aki(pem: &str) -> String {
    let der = &pem_to_der(pem)[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => None,
        })
        .unwrap()
}

async fn authority_rotation_counts_what_is_in_use(db: Db) {
    use warden_proto::admin::{
        ActivateAuthorityRequest, ListAuthoritiesRequest, PrepareAuthorityRequest,
        RevokeAuthorityRequest, TaintAuthorityRequest,
    };
    use warden_proto::warden_ca::GetJwtBundleRequest;
    use warden_proto::warden_ca::jwt_svid_service_client::JwtSvidServiceClient;
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let token = sa_token("default", "web");
    let issue = || async {
        let mut client = ca.client(None).await;
        let (c, _k) = csr(None);
        create(&mut client, request(&c, 0, Some(&token), None))
            .await
            .unwrap()
    };
    let first_chain = issue().await;
    let mut admin = ca.admin().await;
    let list = admin
        .list_authorities(ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .authorities;
    assert_eq!(list.len(), 1);
    let first = list[0].id.clone();
    assert_eq!(leaf_aki(&first_chain[0]), first);
    assert_eq!(list[0].in_use, 1);

    let step = admin
        .prepare_authority(PrepareAuthorityRequest {})
        .await
        .unwrap()
        .into_inner();
    let second = step.authority.unwrap().id;
    // The bundle every caller gets carries both roots now.
    let chain = issue().await;
    assert_eq!(pem_to_der(chain.last().unwrap()).len(), 2);
    assert_eq!(leaf_aki(&chain[0]), first, "a prepared root signs nothing");
    admin
        .activate_authority(ActivateAuthorityRequest::default())
        .await
        .unwrap();
    // Revoking the old root while it signed web's current certificate is refused.
    let err = admin
        .revoke_authority(RevokeAuthorityRequest {
            id: first.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("1 identity"), "{err:?}");
    admin
        .taint_authority(TaintAuthorityRequest { id: first.clone() })
        .await
        .unwrap();
    // GetJwtBundle tells agents the bundle and what is tainted (a fresh channel: the
    // serving certificate is the new root's, root-cert.pem holds both).
    let bundle = JwtSvidServiceClient::new(ca.channel(None).await)
        .get_jwt_bundle(GetJwtBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pem_to_der(&bundle.x509_roots_pem).len(), 2);
    assert_eq!(bundle.tainted_authorities, std::slice::from_ref(&first));
    // web renews: its current certificate is the new root's; nothing uses the old one.
    let chain = issue().await;
    assert_eq!(leaf_aki(&chain[0]), second);
    let list = admin
        .list_authorities(ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .authorities;
    let old = list.iter().find(|a| a.id == first).unwrap();
    assert_eq!(
        (old.state.as_str(), old.tainted, old.in_use),
        ("old", true, 0)
    );
    admin
        .revoke_authority(RevokeAuthorityRequest {
            id: first.clone(),
            force: false,
        })
        .await
        .unwrap();
    assert_eq!(pem_to_der(&ca.roots_pem()).len(), 1);
    let rows: Vec<_> = audit_rows(&ca)
        .await
        .into_iter()
        .filter(|r| r.event == "ca.authority")
        .map(|r| r.outcome)
        .collect();
    assert_eq!(rows, ["prepared", "activated", "tainted", "revoked"]);
}

/// The serial (hex) of a PEM leaf.
fn leaf_serial(pem: &str) -> String {
    let der = &pem_to_der(pem)[0];
    hex::encode(X509Certificate::from_der(der).unwrap().1.raw_serial())
}

async fn revocation_and_crls(db: Db) {
    use warden_proto::admin::{
        DeleteEntryRequest, RevokeCertificateRequest, UnrevokeIdentityRequest,
    };
    use warden_proto::warden_ca::GetJwtBundleRequest;
    use warden_proto::warden_ca::jwt_svid_service_client::JwtSvidServiceClient;
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut admin = ca.admin().await;
    let bundle = || async {
        JwtSvidServiceClient::new(ca.channel(None).await)
            .get_jwt_bundle(GetJwtBundleRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    // An empty CRL from the start, signed by the root (openssl checks it).
    let dir = tempfile::tempdir().unwrap();
    let check_crl = |crl_pem: &str, leaf_pem: &str| -> String {
        std::fs::write(dir.path().join("crl.pem"), crl_pem).unwrap();
        std::fs::write(dir.path().join("root.pem"), ca.roots_pem()).unwrap();
        std::fs::write(dir.path().join("leaf.pem"), leaf_pem).unwrap();
        let out = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "verify",
                "-crl_check",
                "-CRLfile",
                "crl.pem",
                "-CAfile",
                "root.pem",
                "leaf.pem",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let token = sa_token("default", "web");
    let mut client = ca.client(None).await;
    let (c1, k1) = csr(None);
    let first = create(&mut client, request(&c1, 0, Some(&token), None))
        .await
        .unwrap();
    assert!(check_crl(&bundle().await.crl_pem, &first[0]).contains("OK"));

    // Refusals name what is wrong and change nothing.
    let err = admin
        .revoke_certificate(RevokeCertificateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = admin
        .revoke_certificate(RevokeCertificateRequest {
            serial: "abcd".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = admin
        .revoke_certificate(RevokeCertificateRequest {
            spiffe_id: "spiffe://other.domain/ns/a/sa/b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("not in trust domain"), "{err:?}");

    // One certificate: in the CRL, and it no longer authenticates at the CA.
    let serial = leaf_serial(&first[0]);
    let r = admin
        .revoke_certificate(RevokeCertificateRequest {
            serial: serial.to_uppercase(),
            reason: "keyCompromise".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.serials, std::slice::from_ref(&serial));
    let crl = bundle().await.crl_pem;
    assert!(check_crl(&crl, &first[0]).contains("certificate revoked"));
    let mut revoked_client = ca.client(Some((&first[0], &k1.serialize_pem()))).await;
    let (c2, _k) = csr(None);
    assert_refused(
        create(&mut revoked_client, request(&c2, 0, None, None)).await,
        Code::Unauthenticated,
        "is revoked",
    );
    // The identity is not revoked: it gets a new certificate with its token.
    let (c3, _k3) = csr(None);
    let second = create(&mut client, request(&c3, 0, Some(&token), None))
        .await
        .unwrap();
    assert!(check_crl(&crl, &second[0]).contains("OK"));

    // The whole identity: its certificates, and no new one until unrevoked.
    let web = sa_id("default", "web");
    let r = admin
        .revoke_certificate(RevokeCertificateRequest {
            spiffe_id: web.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.serials.contains(&leaf_serial(&second[0])), "{r:?}");
    assert!(check_crl(&bundle().await.crl_pem, &second[0]).contains("certificate revoked"));
    let (c4, _k) = csr(None);
    assert_refused(
        create(&mut client, request(&c4, 0, Some(&token), None)).await,
        Code::PermissionDenied,
        "is revoked",
    );
    admin
        .unrevoke_identity(UnrevokeIdentityRequest {
            spiffe_id: web.clone(),
        })
        .await
        .unwrap();
    let err = admin
        .unrevoke_identity(UnrevokeIdentityRequest {
            spiffe_id: web.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let (c5, _k) = csr(None);
    create(&mut client, request(&c5, 0, Some(&token), None))
        .await
        .unwrap();

    // Deleting an entry revokes what the node was issued under it.
    let node_token = ca.join_token("node-r").await;
    let (cn, kn) = csr(None);
    let node_chain = create(&mut client, request(&cn, 0, Some(&node_token), None))
        .await
        .unwrap();
    let api = sa_id("default", "api");
    let entry = admin
        .create_entry(CreateEntryRequest {
            parent_id: format!("spiffe://{TD}/warden/node/node-r"),
            spiffe_id: api.clone(),
            selectors: vec![Selector {
                r#type: "unix".into(),
                value: "uid:1".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let mut node = ca.client(Some((&node_chain[0], &kn.serialize_pem()))).await;
    let (ca_csr, _k) = csr(Some(&api));
    let api_chain = create(&mut node, request(&ca_csr, 0, None, Some(&api)))
        .await
        .unwrap();
    admin
        .delete_entry(DeleteEntryRequest { id: entry.id })
        .await
        .unwrap();
    assert!(check_crl(&bundle().await.crl_pem, &api_chain[0]).contains("certificate revoked"));

    let rows: Vec<_> = audit_rows(&ca)
        .await
        .into_iter()
        .filter(|r| r.event == "cert.revoked" || r.event == "identity.unrevoked")
        .map(|r| (r.event, r.identity))
        .collect();
    assert_eq!(
        rows,
        [
            ("cert.revoked".to_string(), web.clone()),
            ("cert.revoked".to_string(), web.clone()),
            ("identity.unrevoked".to_string(), web.clone()),
        ]
    );
    ca.stop().await;
}

on_both_backends!(
    revocation_and_crls,
    authority_rotation_counts_what_is_in_use,
    an_unauthenticated_flood_is_aggregated,
    limits_refuse_with_a_retry_hint,
    audit_checkpoints_and_pruning,
    node_entry_listing,
    istio_style_jwt_request,
    jwt_refusals,
    renewal_with_client_cert,
    join_token_and_impersonation,
    trusted_node_account_impersonation,
    csr_and_ttl_refusals,
    restart_keeps_root_and_chain,
    concurrent_join_token_use_issues_once,
    audit_load_is_durable_and_chained,
);
