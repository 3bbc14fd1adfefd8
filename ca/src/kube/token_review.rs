//! Service-account tokens reviewed by the API server, as istiod's `KubeJWTAuthenticator`
//! does: the CA posts a `TokenReview` (`authentication.k8s.io/v1`) with its audiences and
//! trusts only what the API server answers.
//!
//! A token is accepted when the review is authenticated with no error, one of our
//! audiences is among the audiences the API server returns (the Kubernetes API reference
//! asks clients that set `spec.audiences` to check this, so an audience-unaware server
//! cannot pass a token meant for someone else), the user is in `system:serviceaccounts`
//! and is named `system:serviceaccount:NS:SA`. The pod the token is bound to (the
//! review's `extra` keys `authentication.kubernetes.io/pod-name` and `pod-uid`) is kept
//! for node authorization.
//!
//! Accepted reviews are cached by the token's SHA-256 until the token's own `exp` (read
//! without verifying: it only shortens the cache), and never longer than
//! [`MAX_CACHE_TTL_SECS`]: a bound token dies with its pod, and the API server must get the
//! chance to say so. The cache holds at most [`CACHE_CAPACITY`] entries. Refusals are
//! not cached. The token never appears in a log or an error.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::Api;
use kube::api::PostParams;

/// Longest time an accepted review is reused, in seconds.
pub const MAX_CACHE_TTL_SECS: i64 = 300;
/// Most reviews kept.
pub const CACHE_CAPACITY: usize = 10_000;

/// The `extra` key naming the pod a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The `extra` key with the bound pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// The `extra` key with the bound pod's node (Kubernetes 1.32 and later).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// The pod a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    /// Pod name (in the service account's namespace).
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// The node, when the API server names it.
    pub node: Option<String>,
}

/// What the API server vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The pod the token is bound to, if it is.
    pub pod: Option<BoundPod>,
}

/// Why a token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server answered, and the answer is no.
    #[error("the Kubernetes API server did not accept the token: {0}")]
    Denied(String),
    /// The API server could not be asked; nothing is accepted meanwhile.
    #[error("cannot review the token with the Kubernetes API server: {0}")]
    Unavailable(String),
}

/// Reviews tokens through the API server, with a bounded cache.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], (Reviewed, i64)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer asking for `audiences` (`--token-audience`, `istio-ca` by default).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self {
            api: Api::all(client),
            audiences,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Reviews `token` at time `now` (Unix seconds).
    pub async fn review(&self, token: &str, now: i64) -> Result<Reviewed, ReviewError> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        if let Some(hit) = self.cached(&key, now) {
            return Ok(hit);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(self.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(describe(&e)))?;
        let status = answer.status.unwrap_or_default();
        let reviewed = interpret(&status, &self.audiences)?;
        let until = token_expiry(token)
            .unwrap_or(i64::MAX)
            .min(now.saturating_add(MAX_CACHE_TTL_SECS));
        if until > now {
            self.remember(key, reviewed.clone(), until, now);
        }
        Ok(reviewed)
    }

    fn cached(&self, key: &[u8; 32], now: i64) -> Option<Reviewed> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(r, _)| r.clone())
    }

    fn remember(&self, key: [u8; 32], reviewed: Reviewed, until: i64, now: i64) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (_, u)| *u > now);
        }
        if cache.len() >= CACHE_CAPACITY {
            // Still full of live entries: drop the one that would expire first.
            if let Some(oldest) = cache.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k) {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (reviewed, until));
    }

    /// Entries in the cache (for tests and metrics).
    pub fn cache_len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A kube client error, described without request bodies.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {} ({})", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// Decides a review's status.
pub fn interpret(
    status: &TokenReviewStatus,
    audiences: &[String],
) -> Result<Reviewed, ReviewError> {
    let deny = |m: String| Err(ReviewError::Denied(m));
    if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
        return deny(error.to_string());
    }
    if status.authenticated != Some(true) {
        return deny("the token is not authenticated".into());
    }
    let returned = status.audiences.as_deref().unwrap_or_default();
    if !returned.iter().any(|a| audiences.contains(a)) {
        return deny(format!(
            "the token is not for audience {} (the API server returned {:?})",
            audiences.join(" or "),
            returned
        ));
    }
    let Some(user) = status.user.as_ref() else {
        return deny("the review names no user".into());
    };
    if !user
        .groups
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|g| g == "system:serviceaccounts")
    {
        return deny(
            "the token is not a service account's (not in group system:serviceaccounts)".into(),
        );
    }
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = match username.split(':').collect::<Vec<_>>()[..] {
        ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => {
            (ns.to_string(), sa.to_string())
        }
        _ => {
            return deny(format!(
                "user {username:?} is not system:serviceaccount:NAMESPACE:NAME"
            ));
        }
    };
    let extra = |key: &str| -> Option<String> {
        user.extra
            .as_ref()?
            .get(key)?
            .first()
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let pod = match (extra(EXTRA_POD_NAME), extra(EXTRA_POD_UID)) {
        (Some(name), Some(uid)) => Some(BoundPod {
            name,
            uid,
            node: extra(EXTRA_NODE_NAME),
        }),
        _ => None,
    };
    Ok(Reviewed {
        namespace,
        service_account,
        pod,
    })
}

/// The `exp` claim of a JWT, read without verifying it.
fn token_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests;
