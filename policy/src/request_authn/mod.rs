//! RequestAuthentication: JWT validation as Istio configures Envoy's `jwt_authn` filter,
//! with no network I/O.
//!
//! [`RequestAuthn::compile`] turns the RequestAuthentications of a config set into JWT
//! providers, parsing each rule's JWKS once (inline `jwks`, or the `jwksUri` local file or
//! `file://` URL that the loader read into the set: compiling reads nothing);
//! [`RequestAuthn::authenticate`] finds the tokens of a request and
//! says whether it goes on without identity, with one (`iss/sub` and claims, plus the
//! header edits Envoy makes), or is refused with 401 (403 for a wrong audience).
//!
//! What is reproduced, and where it comes from:
//! - istio/istio `pilot/pkg/security/authn/policy_applier.go` (`convertToEnvoyJwtConfig`):
//!   the rules of every policy that applies to a workload are merged and sorted by issuer,
//!   one provider each; one provider is required as `requires_any{provider, allow_missing}`,
//!   several as `requires_any{P1, .., Pn, requires_all{requires_any{Pi, allow_missing}..}}`;
//!   `audiences` are passed as they are (empty: any `aud` is accepted), `forwardOriginalToken`
//!   is Envoy's `forward`, `outputPayloadToHeader` its `forward_payload_header`,
//!   `spaceDelimitedClaims` ∪ {`scope`, `permission`} are split in the payload metadata,
//!   and CORS preflights bypass the filter (`bypass_cors_preflight`).
//! - envoyproxy/envoy `source/extensions/filters/http/jwt_authn/verifier.cc`: a provider
//!   verifies every token found at its own locations and fails on the first bad one;
//!   `requires_any` succeeds on the first child that succeeds, else reports a child error,
//!   preferring real errors over "issuer not configured" over "missing";
//!   `allow_missing` turns only "missing" into success.
//! - `extractor.cc`: default locations `Authorization: Bearer <t>` and `?access_token=`;
//!   header names case-insensitive, the prefix searched case-sensitively, the token the
//!   base64url run after it; query values percent-decoded; cookies; the provider's output
//!   headers are removed from the incoming request first, so clients cannot forge them.
//! - `authenticator.cc`: per token, issuer (empty issuer = any), then `nbf`/`exp` with a
//!   60 s clock skew, then audiences (`http(s)://` and a trailing `/` ignored), then the
//!   signature; a verified token's payload segment goes to `outputPayloadToHeader`, its
//!   claims to `outputClaimToHeaders`, and the token leaves the headers or the query
//!   unless forwarded; `filter.cc`: a wrong audience is 403, every other failure 401.
//! - google/jwt_verify_lib `jwt.cc`, `jwks.cc`, `verify.cc`, `check_audience.cc`: what a
//!   well-formed token is, which JWKS keys are usable (unusable ones are skipped), and that
//!   a key is tried when its `kid` and `alg` (each if set on both sides) match the token.
//!
//! Deliberate differences: remote JWKS (`http(s)://`) and OpenID discovery are compile
//! errors, not a fetch; a JWKS that cannot be loaded is a compile error where istiod would
//! serve a key that fails every token; ES512 and the `kid → X.509` JWKS form are not
//! supported; several tokens yield the identity of the token verified last (the first
//! found), where Istio calls the principal nondeterministic.
//!
//! A consequence of Istio's requirement worth knowing: with several rules, the first rule
//! (by issuer) whose tokens all verify decides, and a token at another rule's location is
//! then neither checked nor stripped; with one rule, every token it finds must verify.
//!
//! The module is split by what each part holds: this file the public types, the
//! compiled providers and `authenticate`; `compile` (RequestAuthentications
//! into providers), `jwks` (JSON Web Key Sets into usable keys), `extract` (finding tokens
//! in headers, query and cookies), `verify` (one token against one provider) and `filter`
//! (the verifier tree over a request and the header edits it makes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::authz::{HttpRequest, Workload, root_and_own};
use crate::loader::{ConfigSet, Loaded};
use crate::resources::{RequestAuthenticationSpec, has_target_refs};

mod compile;
mod extract;
mod filter;
mod jwks;
#[cfg(test)]
mod tests;
mod verify;

use compile::{Keys, compile_policy};
use filter::{Exchange, Status};
use jwks::Key;

/// Envoy's default clock skew for `exp` and `nbf` (jwt_verify_lib `kClockSkewInSecond`);
/// Istio does not change it.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Compiled RequestAuthentications of one config version.
#[derive(Debug, Default)]
pub struct RequestAuthn {
    root_namespace: String,
    by_namespace: HashMap<String, Vec<Policy>>,
}

/// What the JWT filter does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No token at any location the applicable rules read (or no rule applies, or a CORS
    /// preflight): the request goes on without a request identity. `edits` remove output
    /// headers the client sent itself.
    NoToken {
        /// Header edits to make before forwarding.
        edits: Vec<HeaderEdit>,
    },
    /// The tokens at the deciding rule's locations all verified.
    Authenticated(Authenticated),
    /// A token is invalid: answer with `status` and forward nothing.
    Rejected(Rejected),
}

/// A request with a valid JWT.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    /// `request.auth.principal`: `iss + "/" + sub`.
    pub principal: String,
    /// The payload as `request.auth.claims` sees it (space-delimited claims split).
    pub claims: Value,
    /// The RequestAuthentication whose rule verified the token, `ns/name`.
    pub policy: String,
    /// The index of that rule in its `jwtRules`.
    pub rule: usize,
    /// Header edits to make before forwarding, in order.
    pub edits: Vec<HeaderEdit>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 401, or 403 for an audience that is not allowed (Envoy `filter.cc` `onComplete`).
    pub status: u16,
    /// What was wrong.
    pub failure: Failure,
    /// The RequestAuthentication whose rule refused the token, `ns/name`.
    pub policy: String,
    /// The index of that rule in its `jwtRules`.
    pub rule: usize,
}

impl Rejected {
    /// A sentence for logs and `warden authz check`; it never contains the token.
    pub fn reason(&self) -> String {
        format!(
            "{} (RequestAuthentication {}, jwtRules[{}])",
            self.failure, self.policy, self.rule
        )
    }
}

/// One change the filter makes to the request it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Remove every value of this header (lowercase name).
    Remove(String),
    /// Add a value to this header (lowercase name), after any present (Envoy `addCopy`).
    Append(String, String),
    /// Replace `:path` (a token taken from the query is removed from it).
    SetPath(String),
}

/// Applies `edits` in order to `http` (an appended value is joined to a present one with
/// `,`).
pub fn apply_edits(edits: &[HeaderEdit], http: &mut HttpRequest) {
    for e in edits {
        match e {
            HeaderEdit::Remove(name) => http.headers.retain(|k, _| !k.eq_ignore_ascii_case(name)),
            HeaderEdit::Append(name, value) => {
                http.headers
                    .entry(name.clone())
                    .and_modify(|v| {
                        v.push(',');
                        v.push_str(value);
                    })
                    .or_insert_with(|| value.clone());
            }
            HeaderEdit::SetPath(path) => http.path.clone_from(path),
        }
    }
}

/// Why a token is refused. Values taken from the token are quoted and shortened; the
/// token itself never appears.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Not a well-formed JWT (Envoy: `JwtBadFormat` and the `*ParseError*` statuses).
    #[error("the JWT is malformed: {0}")]
    Malformed(String),
    /// `alg` is not one Envoy implements (e.g. `none`), or no key that matches the token
    /// is of a type that can verify it (e.g. HS256 against an RSA key).
    #[error("the JWT algorithm {alg:?} is not allowed: {why}")]
    AlgorithmNotAllowed {
        /// The token's `alg`.
        alg: String,
        /// Why.
        why: String,
    },
    /// The token's `iss` is not the issuer of the rule that reads its location.
    #[error(
        "the JWT issuer {issuer:?} is not configured: the rule reading this token location expects {expected:?}"
    )]
    UnknownIssuer {
        /// The token's `iss`.
        issuer: String,
        /// The rule's issuer.
        expected: String,
    },
    /// `now` is more than the clock skew past `exp`.
    #[error("the JWT is expired: exp {exp} is more than {skew} s before now ({now})", skew = CLOCK_SKEW_SECONDS)]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The time of the check.
        now: u64,
    },
    /// `now` is more than the clock skew before `nbf`.
    #[error("the JWT is not yet valid: nbf {nbf} is more than {skew} s after now ({now})", skew = CLOCK_SKEW_SECONDS)]
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
        /// The time of the check.
        now: u64,
    },
    /// No `aud` of the token is one of the rule's audiences.
    #[error("the JWT audience {audiences:?} is not in {allowed:?}")]
    AudienceNotAllowed {
        /// The token's `aud`.
        audiences: Vec<String>,
        /// The rule's `audiences`.
        allowed: Vec<String>,
    },
    /// No key of the JWKS has the token's `kid` and `alg` (Envoy `JwksKidAlgMismatch`).
    #[error("no key in the JWKS matches the JWT's kid {kid:?} and alg {alg}")]
    UnknownKid {
        /// The token's `kid` (empty: none).
        kid: String,
        /// The token's `alg`.
        alg: String,
    },
    /// No matching key verifies the signature (Envoy `JwtVerificationFail`).
    #[error("the JWT signature does not verify with any matching key of the JWKS")]
    Signature,
}

impl Failure {
    /// The HTTP status Envoy answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::AudienceNotAllowed { .. } => 403,
            _ => 401,
        }
    }
}

pub use crate::loader::CompileError;

/// Whether `policy` applies to workload `w`: it is in the root namespace or `w`'s, its
/// selector (if any) is a subset of `w`'s labels, and it has no `targetRef(s)` (those
/// attach to gateways and waypoints; sidecars ignore them).
pub fn applies(
    policy: &Loaded<RequestAuthenticationSpec>,
    root_namespace: &str,
    w: &Workload,
) -> bool {
    let ns = policy.resource.namespace();
    let spec = &policy.resource.spec;
    !has_target_refs(spec.target_ref.as_ref(), spec.target_refs.as_ref())
        && (ns == root_namespace || ns == w.namespace)
        && w.selected_by(spec.selector.as_ref().map(|s| &s.match_labels))
}

impl RequestAuthn {
    /// Compiles the RequestAuthentications of `set`; `root_namespace` holds mesh-wide
    /// policies (`istio-system` by default). Each rule's JWKS is parsed here, once, from
    /// the set (the loader read the files); a JWKS that cannot be used is an error naming the policy, the field and what was expected.
    pub fn compile(set: &ConfigSet, root_namespace: &str) -> Result<Self, Vec<CompileError>> {
        let mut by_namespace: HashMap<String, Vec<Policy>> = HashMap::new();
        let mut errors = Vec::new();
        let mut keys = Keys::new(set);
        for p in &set.request_authentications {
            let spec = &p.resource.spec;
            if has_target_refs(spec.target_ref.as_ref(), spec.target_refs.as_ref()) {
                continue;
            }
            match compile_policy(p, &mut keys) {
                Ok(policy) => by_namespace
                    .entry(p.resource.namespace().to_string())
                    .or_default()
                    .push(policy),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            root_namespace: root_namespace.to_string(),
            by_namespace,
        })
    }

    /// Whether any rule applies to `w` (if not, [`Self::authenticate`] always answers
    /// [`Outcome::NoToken`] with no edits).
    pub fn applies_to(&self, w: &Workload) -> bool {
        !self.providers(w).is_empty()
    }

    /// Runs the JWT filter of workload `w` on `http` at time `now`.
    pub fn authenticate(&self, w: &Workload, http: &HttpRequest, now: SystemTime) -> Outcome {
        let providers = self.providers(w);
        if providers.is_empty() || is_cors_preflight(http) {
            return Outcome::NoToken { edits: Vec::new() };
        }
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut ex = Exchange::new(http);
        let verdict = match providers.as_slice() {
            // requires_any{provider, allow_missing}
            [only] => match ex.run(only, now) {
                Status::Failed(f) => Err((f, *only)),
                Status::Ok | Status::Missed => Ok(()),
            },
            _ => ex.any_provider_or_all_optional(&providers, now),
        };
        match verdict {
            Err((failure, p)) => Outcome::Rejected(Rejected {
                status: failure.status(),
                failure,
                policy: p.policy.clone(),
                rule: p.rule,
            }),
            Ok(()) => match ex.identity {
                Some((p, claims)) => {
                    let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default();
                    let principal = format!("{}/{}", text("iss"), text("sub"));
                    Outcome::Authenticated(Authenticated {
                        principal,
                        claims: Value::Object(claims),
                        policy: p.policy.clone(),
                        rule: p.rule,
                        edits: ex.edits,
                    })
                }
                None => Outcome::NoToken { edits: ex.edits },
            },
        }
    }

    /// The providers of every rule that applies to `w`, sorted by issuer as istiod sorts
    /// them (stable, so equal issuers keep root-namespace-first load order).
    fn providers(&self, w: &Workload) -> Vec<&Provider> {
        let mut out: Vec<&Provider> =
            root_and_own(&self.by_namespace, &self.root_namespace, &w.namespace)
                .flatten()
                .filter(|p| w.selected_by(p.selector.as_ref()))
                .flat_map(|p| p.providers.iter())
                .collect();
        out.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        out
    }
}

/// Envoy `filter.cc` `isCorsPreflightRequest`.
fn is_cors_preflight(http: &HttpRequest) -> bool {
    let present = |name: &str| header(&http.headers, name).is_some_and(|v| !v.is_empty());
    http.method == "OPTIONS" && present("origin") && present("access-control-request-method")
}

fn header<'a>(headers: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .or_else(|| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
}

#[derive(Debug)]
struct Policy {
    pub(super) selector: Option<BTreeMap<String, String>>,
    pub(super) providers: Vec<Provider>,
}

/// One `jwtRules[]` entry as an Envoy `JwtProvider`.
#[derive(Debug)]
struct Provider {
    pub(super) policy: String,
    pub(super) rule: usize,
    pub(super) issuer: String,
    /// As configured (for messages).
    pub(super) audiences: Vec<String>,
    /// Sanitized as jwt_verify_lib `check_audience.cc` does.
    pub(super) audience_set: Vec<String>,
    pub(super) keys: Arc<Vec<Key>>,
    /// (lowercase name, prefix), in the order of Envoy's `name + prefix` map.
    pub(super) headers: Vec<(String, String)>,
    /// Sorted, deduplicated.
    pub(super) params: Vec<String>,
    /// Sorted, deduplicated.
    pub(super) cookies: Vec<String>,
    pub(super) forward: bool,
    pub(super) payload_header: Option<String>,
    /// (lowercase header, claim path `a.b`).
    pub(super) claim_headers: Vec<(String, String)>,
    pub(super) space_delimited: Vec<String>,
}

impl Provider {
    /// Headers the provider writes, removed from the incoming request first
    /// (extractor.cc `sanitizeHeaders`).
    fn output_headers(&self) -> impl Iterator<Item = &str> {
        self.payload_header
            .iter()
            .map(String::as_str)
            .chain(self.claim_headers.iter().map(|(h, _)| h.as_str()))
    }
}
