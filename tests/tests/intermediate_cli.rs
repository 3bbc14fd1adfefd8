//! `warden ca intermediate`: Warden as the shared root that signs a `cacerts`
//! intermediate per cluster. Real processes; openssl (which no one here wrote) judges
//! the certificates, makes an RSA key and CSR for `--csr`, and verifies a leaf that a
//! second CA, plugged with the intermediate, issues.
#![allow(clippy::unwrap_used)] // tests fail by panicking

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use warden_tests::{CaProcess, fails, ok, warden};

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_intermediate_per_cluster_under_one_root() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = CaProcess::start(&tmp.path().join("root-ca"), &[]);
    let root = parent.data_dir.join("root-cert.pem");
    let east = tmp.path().join("east");

    let out = ok(parent.warden(&[
        "ca",
        "intermediate",
        "--cluster",
        "east",
        "--out",
        s(&east),
        "--ttl",
        "30d",
    ]));
    assert!(
        out.contains("kubectl create secret generic cacerts"),
        "{out}"
    );
    assert_eq!(mode(&east), 0o700);
    assert_eq!(mode(&east.join("ca-key.pem")), 0o600);
    assert_eq!(
        std::fs::read_to_string(east.join("root-cert.pem")).unwrap(),
        std::fs::read_to_string(&root).unwrap()
    );
    // openssl: a CA for leaves only, under the shared root, for the named cluster.
    openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        s(&root),
        s(&east.join("ca-cert.pem")),
    ]);
    let text = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        s(&east.join("ca-cert.pem")),
    ]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(
        text.contains("L=east") || text.contains("L = east"),
        "{text}"
    );
    // The key written is the certified one.
    let cert_pub = openssl(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        s(&east.join("ca-cert.pem")),
    ]);
    let key_pub = openssl(&["pkey", "-pubout", "-in", s(&east.join("ca-key.pem"))]);
    assert_eq!(cert_pub, key_pub);

    // A second CA plugged with it issues leaves that verify to the shared root.
    let child = CaProcess::start(&tmp.path().join("east-ca"), &["--plugin-certs", s(&east)]);
    let token = child.join_token("node-1");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let node = tmp.path().join("node");
    ok(warden(&[
        "cert",
        "request",
        "--ca-addr",
        &child.url(),
        "--ca-root",
        s(&child.data_dir.join("root-cert.pem")),
        "--token-file",
        s(&token_file),
        "--out",
        s(&node),
    ]));
    let chain = node.join("cert-chain.pem");
    openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        s(&root),
        "-untrusted",
        s(&chain),
        s(&chain),
    ]);

    // The issuance is in the parent's audit log.
    let audit = ok(parent.warden(&["audit", "list", "--json"]));
    let row = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"] == "ca.intermediate")
        .expect("an audit row for the intermediate");
    let detail: serde_json::Value = match &row["detail"] {
        serde_json::Value::String(t) => serde_json::from_str(t).unwrap(),
        v => v.clone(),
    };
    assert_eq!(detail["cluster"], "east", "{row}");

    // Files in the way: refused before anything is signed; nothing changes.
    let before = std::fs::read(east.join("ca-key.pem")).unwrap();
    let err = fails(parent.warden(&["ca", "intermediate", "--cluster", "east", "--out", s(&east)]));
    assert!(err.contains("already exist; pass --force"), "{err}");
    assert_eq!(std::fs::read(east.join("ca-key.pem")).unwrap(), before);
    // A bad cluster name: the CA says what it expects, and writes nothing.
    let bad = tmp.path().join("bad");
    let err = fails(parent.warden(&["ca", "intermediate", "--cluster", "a b", "--out", s(&bad)]));
    assert!(err.contains("cluster \"a b\": expected"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn a_csr_made_elsewhere_keeps_its_key_there() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = CaProcess::start(&tmp.path().join("root-ca"), &[]);
    let key = tmp.path().join("west.key");
    let csr = tmp.path().join("west.csr");
    // openssl makes the RSA key and CSR; it asks for things the CA does not grant.
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&csr),
        "-subj",
        "/CN=west/O=evil",
        "-addext",
        "subjectAltName=DNS:evil.example",
    ]);
    let west = tmp.path().join("west");
    ok(parent.warden(&[
        "ca",
        "intermediate",
        "--cluster",
        "west",
        "--csr",
        s(&csr),
        "--out",
        s(&west),
    ]));
    assert!(!west.join("ca-key.pem").exists());
    let cert = west.join("ca-cert.pem");
    let text = openssl(&["x509", "-noout", "-text", "-in", s(&cert)]);
    assert!(!text.contains("evil"), "{text}");
    assert!(text.contains("URI:spiffe://cluster.local"), "{text}");
    assert_eq!(
        openssl(&["x509", "-noout", "-pubkey", "-in", s(&cert)]),
        openssl(&["pkey", "-pubout", "-in", s(&key)])
    );
    openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        s(&parent.data_dir.join("root-cert.pem")),
        s(&cert),
    ]);

    // A CSR whose signature does not verify is refused with the reason.
    let mut pem = std::fs::read_to_string(&csr).unwrap();
    let body_start = pem.find('\n').unwrap() + 40;
    let flipped = if &pem[body_start..=body_start] == "A" {
        "B"
    } else {
        "A"
    };
    pem.replace_range(body_start..=body_start, flipped);
    let broken = tmp.path().join("broken.csr");
    std::fs::write(&broken, pem).unwrap();
    let err = fails(parent.warden(&[
        "ca",
        "intermediate",
        "--cluster",
        "west",
        "--csr",
        s(&broken),
        "--out",
        s(&tmp.path().join("w2")),
    ]));
    assert!(err.contains("the CA refused: the CSR"), "{err}");
}
