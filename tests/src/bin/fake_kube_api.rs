//! `warden-fake-kube-api`: the fake Kubernetes API server of `warden_common::testing`
//! as a process, for end-to-end tests that run the real `warden-ca` in Kubernetes mode.
//! No API server can run on the machines Warden is tested on; the responses follow the
//! Kubernetes API reference (see `common/src/testing/kube_api.rs`).
//!
//! ```text
//! warden-fake-kube-api --state STATE.json --kubeconfig OUT
//! ```
//!
//! STATE.json:
//! ```json
//! {"client_token": "the bearer token clients must send",
//!  "objects": [ {"apiVersion": "v1", "kind": "Namespace", ...}, ... ],
//!  "tokens": {"TOKEN": {"user": "system:serviceaccount:NS:SA",
//!                       "audiences": ["istio-ca"],
//!                       "extra": {"authentication.kubernetes.io/pod-name": ["p"]}},
//!             "BROKEN": {"api_error": 500}}}
//! ```
//! A TokenReview of a listed token is answered as the API server answers one: the
//! user, groups `system:serviceaccounts` and `system:serviceaccounts:NS`, and the
//! audiences it shares with the review's `spec.audiences` (none shared: not
//! authenticated, with the API server's error text); an unlisted token is not
//! authenticated; `api_error` answers that HTTP status. Writes a kubeconfig that points
//! at the server and logs one JSON line `{"message": "fake API server serving", "addr":
//! ...}` on stderr; serves until killed.

#![allow(clippy::print_stderr)] // the one line tests wait for

use std::path::PathBuf;

use serde_json::{Value, json};
use warden_common::testing::kube_api::FakeApiServer;

fn arg(args: &[String], name: &str) -> anyhow::Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{name} is required"))
}

fn review(tokens: &Value, spec: &Value) -> Result<Value, (u16, String)> {
    let token = spec["token"].as_str().unwrap_or_default();
    let Some(entry) = tokens.get(token) else {
        return Ok(json!({"authenticated": false, "error": "invalid bearer token"}));
    };
    if let Some(code) = entry["api_error"].as_u64() {
        return Err((
            u16::try_from(code).unwrap_or(500),
            "the fake API server was told to fail".into(),
        ));
    }
    let user = entry["user"].as_str().unwrap_or_default();
    let has: Vec<&str> = entry["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let asked: Vec<&str> = spec["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let shared: Vec<&str> = if asked.is_empty() {
        has.clone()
    } else {
        asked.iter().copied().filter(|a| has.contains(a)).collect()
    };
    if shared.is_empty() {
        return Ok(json!({"authenticated": false,
            "error": format!("[invalid bearer token, token audiences {has:?} is invalid for the target audiences {asked:?}]")}));
    }
    let ns = user.split(':').nth(2).unwrap_or_default();
    Ok(json!({
        "authenticated": true,
        "user": {
            "username": user,
            "uid": "3f9b1c5e-0000-4000-8000-000000000001",
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": entry.get("extra").cloned().unwrap_or(json!({})),
        },
        "audiences": shared,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let state_path = PathBuf::from(arg(&args, "--state")?);
    let kubeconfig_path = PathBuf::from(arg(&args, "--kubeconfig")?);
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&state_path)?)?;
    let api = FakeApiServer::new();
    for object in state["objects"].as_array().into_iter().flatten() {
        api.insert(object.clone());
    }
    let tokens = state["tokens"].clone();
    api.on_token_review(move |spec| review(&tokens, spec));
    let client_token = state["client_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{}: client_token is required", state_path.display()))?;
    let (addr, kubeconfig) = api.serve_tls(client_token).await?;
    std::fs::write(&kubeconfig_path, kubeconfig)?;
    eprintln!(
        "{}",
        json!({"message": "fake API server serving", "addr": addr.to_string()})
    );
    std::future::pending::<()>().await;
    Ok(())
}
