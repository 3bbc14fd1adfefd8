//! The agent with a service-account token instead of a join token: workload mode (the
//! token's own identity, Istio sidecar-style) and node mode as a trusted node account
//! (ztunnel-style). Tokens are ES256 JWTs signed here; the CA trusts their key through
//! `--jwks`. The token file is re-read on every use.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use warden_tests::{AgentProcess, CaProcess, Es256Issuer, ok, wait_log};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Signs projected service-account tokens.
struct Signer(Es256Issuer);

impl Signer {
    fn new() -> Self {
        Self(Es256Issuer::new())
    }

    fn jwks(&self) -> String {
        self.0.jwks()
    }

    /// A projected service-account token for ns/sa.
    fn token(&self, ns: &str, sa: &str) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.0.token(&serde_json::json!({
            "iss": ISSUER, "aud": ["istio-ca"], "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "iat": now, "nbf": now, "exp": now + 3600,
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u1"}},
        }))
    }
}

fn start_ca(dir: &Path, signer: &Signer) -> CaProcess {
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, signer.jwks()).unwrap();
    CaProcess::start(
        &dir.join("ca"),
        &[
            "--jwks",
            jwks.to_str().unwrap(),
            "--token-issuer",
            ISSUER,
            "--trusted-node-accounts",
            "istio-system/ztunnel",
        ],
    )
}

#[test]
fn workload_mode_serves_the_tokens_identity_and_rereads_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let ca = start_ca(dir.path(), &signer);
    let token_file = dir.path().join("istio-token");
    std::fs::write(&token_file, signer.token("default", "web")).unwrap();
    let out = dir.path().join("out");
    let agent = AgentProcess::start(
        &ca,
        &dir.path().join("agent"),
        &[
            "--mode",
            "workload",
            "--token-file",
            token_file.to_str().unwrap(),
            "--svid-ttl",
            "4s",
            "--write-dir",
            out.to_str().unwrap(),
        ],
    );
    agent.wait_ready();
    // Anyone on the sockets gets the token's identity: no entries are involved.
    let fetched = ok(agent.api(&["fetch", "x509"]));
    assert!(
        fetched.contains("spiffe://cluster.local/ns/default/sa/web"),
        "{fetched}"
    );
    let jwt = ok(agent.api(&["fetch", "jwt", "--audience", "db"]));
    assert!(
        jwt.contains("token(spiffe://cluster.local/ns/default/sa/web)"),
        "{jwt}"
    );
    // File output, directly in the directory in workload mode.
    let key_mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(out.join("cert-chain.pem").exists() && out.join("root-cert.pem").exists());

    // The token file is read on every refresh: a token the CA refuses makes the next
    // refresh fail (logged once), while the current SVID keeps being served...
    std::fs::write(&token_file, "not-a-jwt").unwrap();
    wait_log(&agent.log, Duration::from_secs(15), |v| {
        v["message"] == "SVID fetch failed; keeping the current SVID and retrying with backoff"
    })
    .unwrap_or_else(|seen| panic!("no refresh failure logged: {seen:?}"));
    assert!(ok(agent.api(&["fetch", "x509"])).contains("sa/web"));
    // ... and a good token again recovers without a restart.
    std::fs::write(&token_file, signer.token("default", "web")).unwrap();
    wait_log(&agent.log, Duration::from_secs(15), |v| {
        v["message"] == "SVID fetch recovered"
    })
    .unwrap_or_else(|seen| panic!("no recovery logged: {seen:?}"));
}

#[test]
fn node_mode_as_a_trusted_node_account() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let ca = start_ca(dir.path(), &signer);
    let token_file = dir.path().join("ztunnel-token");
    std::fs::write(&token_file, signer.token("istio-system", "ztunnel")).unwrap();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let parent = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
    ok(ca.warden(&[
        "entry",
        "create",
        "--parent-id",
        parent,
        "--spiffe-id",
        "spiffe://cluster.local/ns/shop/sa/cart",
        "--selector",
        &format!("unix:uid:{uid}"),
    ]));
    let agent = AgentProcess::start(
        &ca,
        &dir.path().join("agent"),
        &[
            "--node-name",
            "node-z",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    agent.wait_ready();
    let fetched = ok(agent.api(&["fetch", "x509"]));
    assert!(
        fetched.contains("spiffe://cluster.local/ns/shop/sa/cart"),
        "{fetched}"
    );
    // An untrusted service account is not a node: the entry sync is refused.
    std::fs::write(&token_file, signer.token("default", "web")).unwrap();
    let agent2 = AgentProcess::start(
        &ca,
        &dir.path().join("agent2"),
        &[
            "--node-name",
            "node-w",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let line = wait_log(&agent2.log, Duration::from_secs(10), |v| {
        v["message"] == "sync with the CA failed; serving cached entries and SVIDs, retrying"
    })
    .unwrap_or_else(|seen| panic!("no sync failure logged: {seen:?}"));
    assert!(
        line["error"].as_str().unwrap().contains("is not a node"),
        "{line}"
    );
}
