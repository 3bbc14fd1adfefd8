//! TokenReview against a fake API server (kube's `tower_test` at the HTTP level; no API
//! server can run here). Review bodies follow the Kubernetes API reference for
//! `authentication.k8s.io/v1` TokenReview.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde_json::{Value, json};
use warden_common::testing::kube_api::FakeApiServer;

use super::*;

const NOW: i64 = 1_700_000_000;

/// A JWT-shaped token with `exp` (unsigned: only the API server judges it).
fn token(name: &str, exp: Option<i64>) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = match exp {
        Some(exp) => json!({"sub": name, "exp": exp}),
        None => json!({"sub": name}),
    };
    format!("{}.{}.sig", b64(&json!({"alg": "RS256"})), b64(&claims))
}

/// A fake that accepts tokens whose `sub` is `ok*` as pod-bound tokens of `default/web`.
fn fake() -> (FakeApiServer, Arc<AtomicUsize>) {
    let api = FakeApiServer::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    api.on_token_review(move |spec| {
        counter.fetch_add(1, Ordering::SeqCst);
        let token = spec["token"].as_str().unwrap_or_default();
        let claims: Value = token
            .split('.')
            .nth(1)
            .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(json!({}));
        match claims["sub"].as_str().unwrap_or_default() {
            "api-down" => Err((503, "etcdserver: request timed out".into())),
            "wrong-aud" => Ok(json!({"authenticated": true, "audiences": ["vault"],
                "user": {"username": "system:serviceaccount:default:web", "groups": ["system:serviceaccounts"]}})),
            "human" => Ok(json!({"authenticated": true, "audiences": spec["audiences"],
                "user": {"username": "alice@example.com", "groups": ["system:authenticated"]}})),
            s if s.starts_with("ok") => Ok(json!({
                "authenticated": true,
                "audiences": spec["audiences"],
                "user": {
                    "username": "system:serviceaccount:default:web",
                    "uid": "9e5e0ef3-0000-4000-8000-000000000001",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
                    "extra": {
                        "authentication.kubernetes.io/pod-name": ["web-5d9c"],
                        "authentication.kubernetes.io/pod-uid": ["0f3c0f5e-0000-4000-8000-000000000002"],
                        "authentication.kubernetes.io/node-name": ["node-a"]
                    }
                }
            })),
            _ => Ok(json!({"authenticated": false, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"})),
        }
    });
    (api, calls)
}

fn reviewer(api: &FakeApiServer) -> TokenReviewer {
    TokenReviewer::new(api.client(), vec!["istio-ca".into()])
}

#[tokio::test]
async fn allowed_gives_the_account_and_bound_pod() {
    let (api, _) = fake();
    let r = reviewer(&api)
        .review(&token("ok", Some(NOW + 3600)), NOW)
        .await
        .unwrap();
    assert_eq!(r.namespace, "default");
    assert_eq!(r.service_account, "web");
    assert_eq!(
        r.pod,
        Some(BoundPod {
            name: "web-5d9c".into(),
            uid: "0f3c0f5e-0000-4000-8000-000000000002".into(),
            node: Some("node-a".into()),
        })
    );
    // The CA asked for its audience.
    let reviews = api.requests();
    assert_eq!(reviews.len(), 1);
    assert!(
        reviews[0].starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews"),
        "{reviews:?}"
    );
}

#[tokio::test]
async fn denied_wrong_audience_and_non_service_accounts_are_refused() {
    let (api, _) = fake();
    let r = reviewer(&api);
    let denied = r.review(&token("forged", None), NOW).await.unwrap_err();
    assert!(
        matches!(&denied, ReviewError::Denied(m) if m.contains("invalid bearer token")),
        "{denied}"
    );
    let aud = r.review(&token("wrong-aud", None), NOW).await.unwrap_err();
    assert!(
        matches!(&aud, ReviewError::Denied(m) if m.contains("not for audience istio-ca") && m.contains("vault")),
        "{aud}"
    );
    let human = r.review(&token("human", None), NOW).await.unwrap_err();
    assert!(
        matches!(&human, ReviewError::Denied(m) if m.contains("system:serviceaccounts")),
        "{human}"
    );
    assert_eq!(r.cache_len(), 0, "refusals are not cached");
}

#[tokio::test]
async fn api_errors_fail_closed_as_unavailable() {
    let (api, _) = fake();
    let r = reviewer(&api);
    let e = r.review(&token("api-down", None), NOW).await.unwrap_err();
    assert!(
        matches!(&e, ReviewError::Unavailable(m) if m.contains("503")),
        "{e}"
    );
    // The CA's own RBAC missing: 403 from the API server is not a verdict on the caller.
    api.fail_next("POST", "tokenreviews", 403, 1);
    let e = r.review(&token("ok", None), NOW).await.unwrap_err();
    assert!(
        matches!(&e, ReviewError::Unavailable(m) if m.contains("403")),
        "{e}"
    );
}

#[tokio::test]
async fn reviews_are_cached_until_the_token_expires_and_bounded() {
    let (api, calls) = fake();
    let r = reviewer(&api);
    let t = token("ok-1", Some(NOW + 60));
    r.review(&t, NOW).await.unwrap();
    r.review(&t, NOW + 30).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "second review from the cache"
    );
    r.review(&t, NOW + 61).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "expired token asks again");
    // A long-lived token is still asked about again after MAX_CACHE_TTL.
    let long = token("ok-2", Some(NOW + 86_400));
    r.review(&long, NOW).await.unwrap();
    r.review(&long, NOW + MAX_CACHE_TTL_SECS + 1).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // An already-expired token is never cached.
    r.review(&token("ok-3", Some(NOW - 1)), NOW).await.unwrap();
    assert!(r.cache_len() <= 2);
}

#[test]
fn cache_stays_within_capacity() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let api = FakeApiServer::new();
    let _guard = rt.enter();
    let r = reviewer(&api);
    let reviewed = Reviewed {
        namespace: "a".into(),
        service_account: "b".into(),
        pod: None,
    };
    for i in 0..(CACHE_CAPACITY + 50) {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(i as u64).to_be_bytes());
        r.remember(key, reviewed.clone(), NOW + 100 + i as i64, NOW);
    }
    assert_eq!(r.cache_len(), CACHE_CAPACITY);
}

#[test]
fn expiry_is_read_from_the_payload_only() {
    assert_eq!(token_expiry(&token("x", Some(42))), Some(42));
    assert_eq!(token_expiry(&token("x", None)), None);
    assert_eq!(token_expiry("not-a-jwt"), None);
    assert_eq!(token_expiry("a.%%%.c"), None);
}
