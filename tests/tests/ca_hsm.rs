//! The CA's key in a PKCS#11 token: SoftHSM (Debian's `softhsm2`; `./test.sh` installs
//! it), set up by the test in a directory of its own. An intermediate from another CA
//! has its key imported into the token and deleted from disk; `warden-ca
//! --plugin-certs DIR --ca-key-uri pkcs11:...` signs with it (openssl verifies the
//! chains), the key is nowhere on disk, and a wrong PIN, label or stray `ca-key.pem`
//! stops the CA with an error naming what was wrong.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking; env read here

use std::path::{Path, PathBuf};
use std::process::Command;

use warden_tests::{CaProcess, ok};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The SoftHSM library, or `None` (skipped loudly) without it; under CI=true a panic.
fn softhsm() -> Option<PathBuf> {
    let module = PathBuf::from(MODULE);
    let util = Command::new("softhsm2-util").arg("--version").output();
    if module.exists() && util.is_ok_and(|o| o.status.success()) {
        return Some(module);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "SoftHSM ({MODULE}, softhsm2-util) is required under CI=true (./test.sh installs it)"
        );
    }
    eprintln!("\n*** SKIPPING the PKCS#11 tests: no SoftHSM (run ./test.sh) ***\n");
    None
}

/// A SoftHSM configuration with its own token directory, and a token labelled `warden`
/// (user PIN 1234).
fn token(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    softhsm2(
        &conf,
        &[
            "--init-token",
            "--free",
            "--label",
            "warden",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ],
    );
    conf
}

fn softhsm2(conf: &Path, args: &[&str]) -> String {
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", conf)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "softhsm2-util {args:?}: {text}");
    text
}

/// Imports the PKCS#8 key `file` into the token as `label`/`id`.
fn import(conf: &Path, file: &Path, label: &str, id: &str) {
    softhsm2(
        conf,
        &[
            "--import",
            file.to_str().unwrap(),
            "--token",
            "warden",
            "--label",
            label,
            "--id",
            id,
            "--pin",
            "1234",
        ],
    );
}

fn uri(object: &str, pin_file: &Path) -> String {
    format!(
        "pkcs11:token=warden;object={object}?module-path={MODULE}&pin-source=file:{}",
        pin_file.display()
    )
}

/// `warden-ca run` that must fail; its stderr.
fn ca_fails(data: &Path, conf: &Path, args: &[&str]) -> String {
    let out = Command::new(warden_tests::bin("warden-ca"))
        .env("SOFTHSM2_CONF", conf)
        .args([
            "run",
            "--grpc-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the CA started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_plugged_in_key_signs_from_a_pkcs11_token_and_never_touches_disk() {
    if softhsm().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = token(tmp.path());
    // Another CA (the organisation's root) signs an intermediate for this one.
    let root = CaProcess::start(&tmp.path().join("root"), &[]);
    let cacerts = tmp.path().join("cacerts");
    ok(root.warden(&[
        "ca",
        "intermediate",
        "--cluster",
        "hsm",
        "--out",
        cacerts.to_str().unwrap(),
    ]));
    // Its key goes into the token, then off the disk.
    let key_file = cacerts.join("ca-key.pem");
    import(&conf, &key_file, "ca-key", "01");
    let key_pem = std::fs::read_to_string(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let pin = tmp.path().join("pin");
    warden_tests::write_atomic(&pin, "1234\n");
    let data = tmp.path().join("data");
    let plugin = cacerts.to_str().unwrap();

    // Refusals name what is wrong.
    let bad_pin = tmp.path().join("bad-pin");
    std::fs::write(&bad_pin, "0000").unwrap();
    let err = ca_fails(
        &data,
        &conf,
        &[
            "--plugin-certs",
            plugin,
            "--ca-key-uri",
            &uri("ca-key", &bad_pin),
        ],
    );
    assert!(err.contains("logging in to token \"warden\""), "{err}");
    let err = ca_fails(
        &data,
        &conf,
        &[
            "--plugin-certs",
            plugin,
            "--ca-key-uri",
            &uri("other", &pin),
        ],
    );
    assert!(
        err.contains("no private key matches token \"warden\", object \"other\""),
        "{err}"
    );
    let err = ca_fails(&data, &conf, &["--ca-key-uri", &uri("ca-key", &pin)]);
    assert!(err.contains("needs --plugin-certs"), "{err}");
    std::fs::write(&key_file, &key_pem).unwrap();
    let err = ca_fails(
        &data,
        &conf,
        &[
            "--plugin-certs",
            plugin,
            "--ca-key-uri",
            &uri("ca-key", &pin),
        ],
    );
    assert!(
        err.contains("ca-key.pem") && err.contains("remove it"),
        "{err}"
    );
    std::fs::remove_file(&key_file).unwrap();
    // A key that is not ca-cert.pem's: another intermediate's, in the same token.
    let other = tmp.path().join("other");
    ok(root.warden(&[
        "ca",
        "intermediate",
        "--cluster",
        "x",
        "--out",
        other.to_str().unwrap(),
    ]));
    import(&conf, &other.join("ca-key.pem"), "not-this-one", "02");
    let err = ca_fails(
        &data,
        &conf,
        &[
            "--plugin-certs",
            plugin,
            "--ca-key-uri",
            &uri("not-this-one", &pin),
        ],
    );
    assert!(
        err.contains("is not the key of the CA certificate"),
        "{err}"
    );

    // The CA signs with the token's key.
    let ca = CaProcess::start_with_env(
        &data,
        "127.0.0.1:0",
        &[
            "--plugin-certs",
            plugin,
            "--ca-key-uri",
            &uri("ca-key", &pin),
        ],
        &[("SOFTHSM2_CONF", &conf)],
    );
    let token = ok(ca.warden(&["token", "create", "--node", "hsm-node"]))
        .lines()
        .last()
        .unwrap()
        .to_string();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let out = tmp.path().join("node");
    ok(warden_tests::warden(&[
        "cert",
        "request",
        "--ca-addr",
        &ca.url(),
        "--ca-root",
        data.join("root-cert.pem").to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let verify = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(cacerts.join("root-cert.pem"))
        .arg("-untrusted")
        .arg(out.join("cert-chain.pem"))
        .arg(out.join("cert-chain.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // The CRL is the token's signature too (openssl checks it with ca-cert.pem).
    let (status, crl) = warden_tests::http_get(&ca.monitoring_addr, "/crl.pem");
    assert_eq!(status, 200);
    std::fs::write(tmp.path().join("crl.pem"), crl).unwrap();
    let check = Command::new("openssl")
        .args(["crl", "-noout", "-in"])
        .arg(tmp.path().join("crl.pem"))
        .arg("-CAfile")
        .arg(cacerts.join("ca-cert.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(text.contains("verify OK"), "{text}");
    // No private key of the intermediate anywhere on disk but in the token's store.
    let key_der = pem_body(&key_pem);
    for dir in [&data, &cacerts] {
        for entry in walk(dir) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&key_der),
                "{} holds the CA key",
                entry.display()
            );
        }
    }
}

/// Base64 of the key's private scalar (past the PKCS#8 header every P-256 key shares).
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("")[48..88]
        .to_string()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
