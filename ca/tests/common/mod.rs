//! Test harness: a real CA on loopback port 0 with a temp data dir (SQLite) or a fresh
//! PostgreSQL database, real TLS clients, service-account tokens from a test JWKS.
// Shared by several test binaries (so some items go unused in each); test setup panics
// on failure by design; the environment is read here only.
#![allow(dead_code, clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use warden_ca::app::{self, Bound};
use warden_ca::config::{Config, RunArgs};
use warden_proto::admin::admin_client::AdminClient;
use warden_proto::istio_ca::IstioCertificateRequest;
use warden_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const TD: &str = "cluster.local";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Keys that sign test service-account tokens, and their JWKS.
pub struct TokenKeys {
    es: EncodingKey,
    rs: EncodingKey,
    pub jwks: String,
}

pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Process-wide token keys (RSA generation is slow, so once).
pub fn token_keys() -> &'static TokenKeys {
    static KEYS: OnceLock<TokenKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ec = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = ec.public_key_raw();
        let (x, y) = (&raw[1..33], &raw[33..65]);
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let rs_pem = rsa_key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "alg": "ES256",
             "x": b64url(x), "y": b64url(y)},
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
             "n": b64url(&rsa_key.n().to_bytes_be()), "e": b64url(&rsa_key.e().to_bytes_be())},
        ]});
        TokenKeys {
            es: EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
            rs: EncodingKey::from_rsa_pem(rs_pem.as_bytes()).unwrap(),
            jwks: jwks.to_string(),
        }
    })
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims of a projected Kubernetes service-account token.
pub fn sa_claims(ns: &str, sa: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER,
        "aud": ["istio-ca"],
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "iat": now(),
        "nbf": now(),
        "exp": now() + 3600,
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": {"name": sa, "uid": "0c8b1a5e-0000-4000-8000-000000000001"},
            "pod": {"name": format!("{sa}-abc"), "uid": "0c8b1a5e-0000-4000-8000-000000000002"},
        },
    })
}

/// Signs claims as a JWT with the test key of the given algorithm.
pub fn sign_token(claims: &serde_json::Value, alg: Algorithm) -> String {
    let keys = token_keys();
    let (key, kid) = match alg {
        Algorithm::ES256 => (&keys.es, "ec-1"),
        Algorithm::RS256 => (&keys.rs, "rsa-1"),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub fn sa_token(ns: &str, sa: &str) -> String {
    sign_token(&sa_claims(ns, sa), Algorithm::ES256)
}

pub fn sa_id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

/// A PostgreSQL database made for one test and dropped after it.
pub struct PgDb {
    admin_url: String,
    name: String,
    pub url: String,
}

pub fn pg_admin_url() -> String {
    std::env::var("WARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh database, or `None` (loudly) when no server answers outside CI.
pub async fn pg_database() -> Option<PgDb> {
    use sqlx::Connection;
    let admin_url = pg_admin_url();
    let mut conn = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at {admin_url} is required under CI=true: {e}");
            }
            eprintln!(
                "\n*** SKIPPING PostgreSQL test: no server at {admin_url} ({e}). Set WARDEN_TEST_DATABASE_URL. ***\n"
            );
            return None;
        }
    };
    let name = format!("warden_test_{}", hex::encode(rand_bytes::<6>()));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin_url);
    Some(PgDb {
        url: format!("{base}/{name}"),
        admin_url,
        name,
    })
}

impl PgDb {
    pub async fn drop_db(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

pub fn rand_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

/// A running test CA.
pub struct TestCa {
    pub bound: Option<Bound>,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDb>,
    pub args: RunArgs,
}

/// Settings a test may change.
#[derive(Default, Clone)]
pub struct Opts {
    pub plugin_certs: Option<PathBuf>,
    pub trusted_node_accounts: Vec<String>,
    pub max_ttl: Option<Duration>,
    pub database_url: Option<String>,
    pub csr_node_rate: Option<f64>,
    pub csr_node_burst: Option<u32>,
    pub max_concurrent_csrs: Option<usize>,
    pub max_queued_csrs: Option<usize>,
}

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl TestCa {
    /// Starts a CA; `None` when the PostgreSQL backend was asked for but is absent.
    pub async fn start(db: Db, opts: Opts) -> Option<Self> {
        init();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, &token_keys().jwks).unwrap();
        let pg = match db {
            Db::Postgres => Some(pg_database().await?),
            Db::Sqlite => None,
        };
        let args = RunArgs {
            data_dir: Some(dir.path().join("data")),
            grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
            monitoring_addr: Some("127.0.0.1:0".parse().unwrap()),
            jwks: Some(jwks),
            token_issuer: Some(ISSUER.into()),
            trusted_node_accounts: opts.trusted_node_accounts.clone(),
            plugin_certs: opts.plugin_certs.clone(),
            max_workload_cert_ttl: opts.max_ttl,
            workload_cert_ttl: opts.max_ttl.map(|m| m.min(Duration::from_secs(3600))),
            csr_node_rate: opts.csr_node_rate,
            csr_node_burst: opts.csr_node_burst,
            max_concurrent_csrs: opts.max_concurrent_csrs,
            max_queued_csrs: opts.max_queued_csrs,
            database_url: opts
                .database_url
                .clone()
                .or_else(|| pg.as_ref().map(|p| p.url.clone())),
            ..Default::default()
        };
        let bound = app::build(Config::load(args.clone()).unwrap())
            .await
            .unwrap();
        Some(Self {
            bound: Some(bound),
            dir,
            pg,
            args,
        })
    }

    pub fn bound(&self) -> &Bound {
        self.bound.as_ref().unwrap()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn roots_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("root-cert.pem")).unwrap()
    }

    /// Stops and starts the CA again on the same data dir and database.
    pub async fn restart(&mut self) {
        self.bound.take().unwrap().shutdown().await;
        let bound = app::build(Config::load(self.args.clone()).unwrap())
            .await
            .unwrap();
        self.bound = Some(bound);
    }

    pub async fn stop(mut self) {
        if let Some(b) = self.bound.take() {
            b.shutdown().await;
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_db().await;
        }
    }

    /// A TLS channel to the certificate port, verifying the server as `localhost`, with
    /// an optional client certificate (PEM chain, PEM key).
    pub async fn channel(&self, identity: Option<(&str, &str)>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.roots_pem()))
            .domain_name("localhost");
        if let Some((chain, key)) = identity {
            tls = tls.identity(Identity::from_pem(chain, key));
        }
        Endpoint::from_shared(format!(
            "https://localhost:{}",
            self.bound().grpc_addr.port()
        ))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
    }

    /// A certificate-API client (see [`TestCa::channel`]).
    pub async fn client(
        &self,
        identity: Option<(&str, &str)>,
    ) -> IstioCertificateServiceClient<Channel> {
        IstioCertificateServiceClient::new(self.channel(identity).await)
    }

    /// A one-time join token for `node` with the CA's default lifetime.
    pub async fn join_token(&self, node: &str) -> String {
        self.admin()
            .await
            .create_join_token(warden_proto::admin::CreateJoinTokenRequest {
                node_name: node.into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        admin_client(&self.bound().admin_socket).await
    }

    pub async fn metrics(&self) -> String {
        http_get(self.bound().monitoring_addr, "/metrics").await.1
    }
}

pub async fn admin_client(path: &Path) -> AdminClient<Channel> {
    let path = path.to_path_buf();
    let channel = Endpoint::try_from("http://admin")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    AdminClient::new(channel)
}

/// A minimal HTTP/1.1 GET, returning (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A P-256 CSR, optionally with a URI SAN; returns (CSR PEM, key).
pub fn csr(uri: Option<&str>) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(u) = uri {
        params.subject_alt_names = vec![SanType::URI(u.try_into().unwrap())];
    }
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key)
}

/// Builds a CreateCertificate request with optional bearer token and impersonation.
pub fn request(
    csr: &str,
    ttl: i64,
    token: Option<&str>,
    impersonate: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.into())),
            },
        )]
        .into_iter()
        .collect(),
    });
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.into(),
        validity_duration: ttl,
        metadata,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

/// Sends a request and returns the chain or the status.
pub async fn create(
    client: &mut IstioCertificateServiceClient<Channel>,
    req: tonic::Request<IstioCertificateRequest>,
) -> Result<Vec<String>, Status> {
    client
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

/// Asserts a refusal with `code` whose message contains `needle`.
pub fn assert_refused(res: Result<Vec<String>, Status>, code: Code, needle: &str) {
    let status = res.expect_err("request should be refused");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should contain {needle:?}",
        status.message()
    );
}

/// Runs `openssl verify` on a leaf with the given trust roots and untrusted intermediates.
pub fn openssl_verify(
    dir: &Path,
    leaf: &str,
    intermediates: &[String],
    roots: &str,
    purpose: &str,
) {
    let leaf_path = dir.join("leaf.pem");
    let roots_path = dir.join("roots.pem");
    let inter_path = dir.join("inter.pem");
    std::fs::write(&leaf_path, leaf).unwrap();
    std::fs::write(&roots_path, roots).unwrap();
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
        .arg(&roots_path);
    if !intermediates.is_empty() {
        std::fs::write(&inter_path, intermediates.concat()).unwrap();
        cmd.arg("-untrusted").arg(&inter_path);
    }
    let out = cmd.arg(&leaf_path).output().expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl verify -purpose {purpose} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lists audit rows through the admin API.
pub async fn audit_rows(ca: &TestCa) -> Vec<warden_proto::admin::AuditRecord> {
    let mut stream = ca
        .admin()
        .await
        .list_audit(warden_proto::admin::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut rows = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        rows.push(r);
    }
    rows
}

/// Generates both sqlite and postgres variants of an async scenario `fn(Db)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Postgres).await
                }
            )*
        }
    };
}
