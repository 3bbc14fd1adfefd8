//! Where the CA's trust comes from and what happens when its storage or files are bad:
//! a plugged-in intermediate made with openssl (Istio's `cacerts`), tampering caught by
//! the hash chain, a failed audit write that must not hand out a certificate, and
//! configuration errors that name the file.

#![allow(clippy::unwrap_used)] // tests fail by panicking

mod common;

use std::path::Path;
use std::process::Command;

use tonic::Code;

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Istio's `cacerts` layout as `make -f Makefile.selfsigned.mk` would: an RSA root with a
/// PKCS#1 key and an EC P-256 intermediate with a SEC1 key.
fn make_cacerts(dir: &Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        "[req]\ndistinguished_name=dn\n[dn]\n[root]\nbasicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
         subjectKeyIdentifier=hash\n\
         [inter]\nbasicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\nsubjectAltName=URI:spiffe://cluster.local/ns/istio-system/sa/citadel\n",
    )
    .unwrap();
    openssl(
        dir,
        &["genrsa", "-traditional", "-out", "root-key.pem", "2048"],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root-key.pem",
            "-days",
            "3650",
            "-subj",
            "/O=Istio/CN=Root CA",
            "-config",
            "ext.cnf",
            "-extensions",
            "root",
            "-out",
            "root-cert.pem",
        ],
    );
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca-key.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            "/O=Istio/CN=Intermediate CA/L=cluster1",
            "-out",
            "ca.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-days",
            "730",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "inter",
            "-out",
            "ca-cert.pem",
        ],
    );
    let chain = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
}

async fn plugged_in_intermediate(db: Db) {
    let cacerts = tempfile::tempdir().unwrap();
    make_cacerts(cacerts.path());
    let opts = Opts {
        plugin_certs: Some(cacerts.path().to_path_buf()),
        ..Default::default()
    };
    let Some(ca) = TestCa::start(db, opts).await else {
        return;
    };
    let root = std::fs::read_to_string(cacerts.path().join("root-cert.pem")).unwrap();
    let inter = std::fs::read_to_string(cacerts.path().join("ca-cert.pem")).unwrap();
    assert_eq!(
        ca.roots_pem().trim(),
        root.trim(),
        "the bundle is the plugged-in root"
    );
    let mut client = ca.client(None).await;
    let (c, _k) = csr(None);
    let chain = create(
        &mut client,
        request(&c, 3600, Some(&sa_token("default", "web")), None),
    )
    .await
    .unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[1].trim(), inter.trim());
    assert_eq!(chain[2].trim(), root.trim());
    for purpose in ["sslclient", "sslserver"] {
        openssl_verify(
            ca.dir.path(),
            &chain[0],
            &[chain[1].clone()],
            &root,
            purpose,
        );
    }
    ca.stop().await;
}

#[tokio::test]
async fn plugged_in_certs_that_do_not_fit_are_refused_by_file() {
    init();
    let cacerts = tempfile::tempdir().unwrap();
    make_cacerts(cacerts.path());
    let dir = cacerts.path();
    let load = |d: &Path| {
        warden_ca::pki::Authority::load(
            &tempfile::tempdir().unwrap().keep(),
            Some(d),
            TD,
            warden_ca::pki::KeyType::EcP256,
        )
        .unwrap_err()
        .to_string()
    };
    // A key that is not the certificate's.
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "other-key.pem",
        ],
    );
    std::fs::copy(dir.join("ca-key.pem"), dir.join("good-key.pem")).unwrap();
    std::fs::copy(dir.join("other-key.pem"), dir.join("ca-key.pem")).unwrap();
    let err = load(dir);
    assert!(
        err.contains("ca-cert.pem") && err.contains("does not match the private key"),
        "{err}"
    );
    std::fs::copy(dir.join("good-key.pem"), dir.join("ca-key.pem")).unwrap();
    // A root that did not sign the intermediate.
    std::fs::copy(dir.join("root-cert.pem"), dir.join("good-root.pem")).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "x.pem",
            "-subj",
            "/CN=Other",
            "-out",
            "root-cert.pem",
        ],
    );
    let err = load(dir);
    assert!(
        err.contains("not signed by any certificate in root-cert.pem"),
        "{err}"
    );
    std::fs::copy(dir.join("good-root.pem"), dir.join("root-cert.pem")).unwrap();
    // A leaf where a CA is expected.
    std::fs::copy(dir.join("ca-cert.pem"), dir.join("good-cert.pem")).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-key",
            "ca-key.pem",
            "-subj",
            "/CN=leaf",
            "-addext",
            "basicConstraints=CA:false",
            "-out",
            "ca-cert.pem",
        ],
    );
    let err = load(dir);
    assert!(
        err.contains("ca-cert.pem") && err.contains("not a CA certificate"),
        "{err}"
    );
    // Garbage.
    std::fs::write(dir.join("ca-cert.pem"), "garbage").unwrap();
    let err = load(dir);
    assert!(
        err.contains("ca-cert.pem") && err.contains("no PEM CERTIFICATE"),
        "{err}"
    );
    // Missing.
    std::fs::remove_file(dir.join("ca-key.pem")).unwrap();
    std::fs::copy(dir.join("good-cert.pem"), dir.join("ca-cert.pem")).unwrap();
    let err = load(dir);
    assert!(err.contains("ca-key.pem"), "{err}");
}

#[tokio::test]
async fn own_root_key_is_private_and_a_lone_cert_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    init();
    let data = tempfile::tempdir().unwrap();
    for kt in ["ec-p384", "rsa-2048"] {
        let d = data.path().join(kt);
        std::fs::create_dir(&d).unwrap();
        let kt: warden_ca::pki::KeyType = kt.parse().unwrap();
        let a = warden_ca::pki::Authority::load(&d, None, TD, kt).unwrap();
        let mode = std::fs::metadata(d.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let root = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
        assert_eq!(root, a.roots_pem());
        // Loading again gives the same root; a loosened key mode is tightened.
        std::fs::set_permissions(d.join("ca-key.pem"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let again = warden_ca::pki::Authority::load(&d, None, TD, kt).unwrap();
        assert_eq!(again.roots_pem(), root);
        let mode = std::fs::metadata(d.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_file(d.join("ca-key.pem")).unwrap();
        let err = warden_ca::pki::Authority::load(&d, None, TD, kt)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ca-key.pem") && err.contains("is missing"),
            "{err}"
        );
    }
}

/// Direct SQL on the CA's database, as an attacker with file access would.
async fn tamper(ca: &TestCa, sql: &'static str) {
    use sqlx::Connection;
    match &ca.pg {
        Some(pg) => {
            let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
        None => {
            let url = format!("sqlite://{}", ca.data_dir().join("warden.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
    }
}

async fn audit_verify_catches_an_edited_row(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut client = ca.client(None).await;
    for sa in ["a", "b", "c"] {
        let (c, _k) = csr(None);
        create(
            &mut client,
            request(&c, 0, Some(&sa_token("default", sa)), None),
        )
        .await
        .unwrap();
    }
    let mut admin = ca.admin().await;
    let v = admin
        .verify_audit(warden_proto::admin::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok && v.rows_checked == 3, "{v:?}");
    tamper(
        &ca,
        "UPDATE audit_log SET identity = 'spiffe://cluster.local/ns/default/sa/x' WHERE seq = 2",
    )
    .await;
    let v = admin
        .verify_audit(warden_proto::admin::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!v.ok);
    assert_eq!(v.first_bad_seq, 2);
    assert!(v.reason.contains("edited"), "{v:?}");
    ca.stop().await;
}

async fn no_certificate_without_a_durable_record(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut client = ca.client(None).await;
    let (c, _k) = csr(None);
    create(
        &mut client,
        request(&c, 0, Some(&sa_token("default", "a")), None),
    )
    .await
    .unwrap();
    // The certificate table disappears (a broken database): issuance must fail closed.
    tamper(&ca, "ALTER TABLE issued_certs RENAME TO issued_certs_gone").await;
    let (c, _k) = csr(None);
    assert_refused(
        create(
            &mut client,
            request(&c, 0, Some(&sa_token("default", "b")), None),
        )
        .await,
        Code::Unavailable,
        "could not record the issuance durably, so no certificate was issued",
    );
    let metrics = ca.metrics().await;
    assert!(
        metrics.contains("warden_ca_store_failure_count 1"),
        "{metrics}"
    );
    // The failed batch left nothing behind: the chain still verifies.
    tamper(&ca, "ALTER TABLE issued_certs_gone RENAME TO issued_certs").await;
    let v = ca
        .admin()
        .await
        .verify_audit(warden_proto::admin::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(ca.bound().store.issued_count().await.unwrap(), 1);
    ca.stop().await;
}

#[tokio::test]
async fn monitoring_endpoints() {
    let Some(ca) = TestCa::start(Db::Sqlite, Opts::default()).await else {
        return;
    };
    let addr = ca.bound().monitoring_addr;
    assert_eq!(http_get(addr, "/ready").await.0, 200);
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "citadel_server_csr_count",
        "citadel_server_success_cert_issuance_count",
        "citadel_server_authentication_failure_count",
        "citadel_server_csr_sign_err_count",
        "citadel_server_root_cert_expiry_timestamp",
        "warden_ca_sign_duration_seconds_bucket",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    let expiry: i64 = body
        .lines()
        .find_map(|l| l.strip_prefix("citadel_server_root_cert_expiry_timestamp "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(expiry > now() + 9 * 365 * 86_400);
    ca.stop().await;
}

#[tokio::test]
async fn a_second_ca_on_the_same_data_dir_is_refused() {
    let Some(ca) = TestCa::start(Db::Sqlite, Opts::default()).await else {
        return;
    };
    let err = warden_ca::app::build(warden_ca::config::Config::load(ca.args.clone()).unwrap())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("another warden-ca is running"),
        "{err:#}"
    );
    ca.stop().await;
}

/// Two CA replicas on one PostgreSQL database, signing with the same plugged-in
/// intermediate: concurrent issuance on both keeps one intact audit chain, and a join
/// token is spent exactly once across replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres_database() {
    use warden_proto::admin::VerifyAuditRequest;
    init();
    let Some(pg) = pg_database().await else {
        return;
    };
    let cacerts = tempfile::tempdir().unwrap();
    make_cacerts(cacerts.path());
    let opts = Opts {
        plugin_certs: Some(cacerts.path().to_path_buf()),
        database_url: Some(pg.url.clone()),
        ..Default::default()
    };
    // `Db::Sqlite` only means "no database of its own": the URL above wins.
    let a = TestCa::start(Db::Sqlite, opts.clone()).await.unwrap();
    let b = TestCa::start(Db::Sqlite, opts).await.unwrap();
    assert_eq!(a.roots_pem(), b.roots_pem());

    let token = a.join_token("shared").await;
    let mut tasks = Vec::new();
    for (i, ca) in [&a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let mut client = ca.client(None).await;
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut issued = 0;
            for _ in 0..20 {
                let (c, _k) = csr(None);
                create(
                    &mut client,
                    request(&c, 0, Some(&sa_token("replicas", &format!("sa{i}"))), None),
                )
                .await
                .unwrap();
                issued += 1;
            }
            let (c, _k) = csr(None);
            let token_ok = create(&mut client, request(&c, 0, Some(&token), None))
                .await
                .is_ok();
            (issued, usize::from(token_ok))
        }));
    }
    let (mut issued, mut token_uses) = (0, 0);
    for t in tasks {
        let (i, u) = t.await.unwrap();
        issued += i;
        token_uses += u;
    }
    assert_eq!(token_uses, 1, "the join token works once across replicas");
    assert_eq!(
        a.bound().store.issued_count().await.unwrap(),
        issued as i64 + 1
    );
    for ca in [&a, &b] {
        let v = ca
            .admin()
            .await
            .verify_audit(VerifyAuditRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(v.ok, "{v:?}");
        // issued + token.created + token.used + the token's issuance + 5 spent-token denials
        assert_eq!(v.rows_checked, issued as i64 + 8, "{v:?}");
    }
    a.stop().await;
    b.stop().await;
    pg.drop_db().await;
}

on_both_backends!(
    plugged_in_intermediate,
    audit_verify_catches_an_edited_row,
    no_certificate_without_a_durable_record,
);
