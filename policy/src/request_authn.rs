//! RequestAuthentication: JWT validation as Istio configures Envoy's `jwt_authn` filter,
//! with no network I/O.
//!
//! [`RequestAuthn::compile`] turns the RequestAuthentications of a config set into JWT
//! providers, reading each rule's JWKS once (inline `jwks`, or `jwksUri` as a local file
//! or `file://` URL); [`RequestAuthn::authenticate`] finds the tokens of a request and
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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::authz::{HttpRequest, Workload, root_and_own};
use crate::loader::{ConfigSet, Loaded};
use crate::resources::{JwtRule, RequestAuthenticationSpec, has_target_refs};

/// Envoy's default clock skew for `exp` and `nbf` (jwt_verify_lib `kClockSkewInSecond`);
/// Istio does not change it.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Claims always split on spaces (policy_applier.go `buildSpaceDelimitedClaims`).
const DEFAULT_SPACE_DELIMITED: [&str; 2] = ["permission", "scope"];

/// The `alg` values Envoy implements (jwt_verify_lib `jwt.cc` `isImplemented`).
const IMPLEMENTED_ALGS: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

/// Longest token-supplied value (`iss`, `aud`, `kid`) quoted in a reason.
const SHOWN_MAX: usize = 128;

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
    /// policies (`istio-system` by default). Each rule's JWKS is read here, once; a JWKS
    /// that cannot be used is an error naming the policy, the field and what was expected.
    pub fn compile(set: &ConfigSet, root_namespace: &str) -> Result<Self, Vec<CompileError>> {
        let mut by_namespace: HashMap<String, Vec<Policy>> = HashMap::new();
        let mut errors = Vec::new();
        let mut files = JwksFiles::default();
        for p in &set.request_authentications {
            let spec = &p.resource.spec;
            if has_target_refs(spec.target_ref.as_ref(), spec.target_refs.as_ref()) {
                continue;
            }
            match compile_policy(p, &mut files) {
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
    selector: Option<BTreeMap<String, String>>,
    providers: Vec<Provider>,
}

/// One `jwtRules[]` entry as an Envoy `JwtProvider`.
#[derive(Debug)]
struct Provider {
    policy: String,
    rule: usize,
    issuer: String,
    /// As configured (for messages).
    audiences: Vec<String>,
    /// Sanitized as jwt_verify_lib `check_audience.cc` does.
    audience_set: Vec<String>,
    keys: Arc<Vec<Key>>,
    /// (lowercase name, prefix), in the order of Envoy's `name + prefix` map.
    headers: Vec<(String, String)>,
    /// Sorted, deduplicated.
    params: Vec<String>,
    /// Sorted, deduplicated.
    cookies: Vec<String>,
    forward: bool,
    payload_header: Option<String>,
    /// (lowercase header, claim path `a.b`).
    claim_headers: Vec<(String, String)>,
    space_delimited: Vec<String>,
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

    /// authenticator.cc `startVerify` and `verifyKey`, for one token.
    fn verify(&self, token: &str, now: u64) -> Result<Verified, Failure> {
        let jwt = Jwt::parse(token)?;
        if !self.issuer.is_empty() && jwt.iss != self.issuer {
            return Err(Failure::UnknownIssuer {
                issuer: shown(&jwt.iss),
                expected: self.issuer.clone(),
            });
        }
        if now.saturating_add(CLOCK_SKEW_SECONDS) < jwt.nbf {
            return Err(Failure::NotYetValid { nbf: jwt.nbf, now });
        }
        if jwt.exp != 0 && now > jwt.exp.saturating_add(CLOCK_SKEW_SECONDS) {
            return Err(Failure::Expired { exp: jwt.exp, now });
        }
        if !self.audience_set.is_empty()
            && !jwt
                .aud
                .iter()
                .any(|a| self.audience_set.contains(&sanitize_audience(a)))
        {
            return Err(Failure::AudienceNotAllowed {
                audiences: jwt.aud.iter().map(|a| shown(a)).collect(),
                allowed: self.audiences.clone(),
            });
        }
        self.check_signature(&jwt)?;
        Ok(Verified {
            payload_b64: jwt.payload_b64.to_string(),
            claims: jwt.claims,
        })
    }

    /// jwt_verify_lib `verify.cc` `verifyJwtWithoutTimeChecking`: a key is tried when its
    /// `kid` and `alg` match the token's (a side without one matches any).
    fn check_signature(&self, jwt: &Jwt<'_>) -> Result<(), Failure> {
        let alg: Option<Algorithm> = jwt.alg.parse().ok();
        let signature = URL_SAFE_NO_PAD.encode(&jwt.signature);
        let mut matched: Vec<&str> = Vec::new();
        let mut fitting = false;
        for key in self.keys.iter() {
            if !jwt.kid.is_empty() && !key.kid.is_empty() && key.kid != jwt.kid {
                continue;
            }
            if !key.alg.is_empty() && key.alg != jwt.alg {
                continue;
            }
            matched.push(key.kind.name());
            let Some(alg) = alg.filter(|a| key.kind.verifies(*a)) else {
                continue;
            };
            fitting = true;
            if jsonwebtoken::crypto::verify(&signature, jwt.signed.as_bytes(), &key.key, alg)
                .unwrap_or(false)
            {
                return Ok(());
            }
        }
        if matched.is_empty() {
            Err(Failure::UnknownKid {
                kid: shown(&jwt.kid),
                alg: jwt.alg.clone(),
            })
        } else if !fitting {
            Err(Failure::AlgorithmNotAllowed {
                alg: jwt.alg.clone(),
                why: match alg {
                    None => "Warden does not implement it".into(),
                    Some(_) => format!(
                        "the JWKS keys matching the token's kid cannot verify it (key types: {matched:?})"
                    ),
                },
            })
        } else {
            Err(Failure::Signature)
        }
    }
}

/// A token that passed every check.
#[derive(Debug)]
struct Verified {
    payload_b64: String,
    claims: Map<String, Value>,
}

/// The result of one provider (jwt_verify_lib `Status`, reduced to what the verifier
/// tree looks at).
#[derive(Debug)]
enum Status {
    Ok,
    /// `JwtMissed`: no token at the provider's locations.
    Missed,
    Failed(Failure),
}

/// Where a token was found.
#[derive(Debug)]
enum Location {
    Header(String),
    Param(String),
    Cookie,
}

/// A token and where it was found (no `Debug`: it holds the token).
struct Found {
    token: String,
    at: Location,
}

/// The request as the filter changes it while it verifies, and the edits made (no
/// `Debug`: its headers may hold tokens).
struct Exchange<'p> {
    /// Lowercase names.
    headers: BTreeMap<String, String>,
    path: String,
    edits: Vec<HeaderEdit>,
    /// The payload metadata: every verified token overwrites it (verifier.cc
    /// `addExtractedData` under Istio's single `payload_in_metadata` key).
    identity: Option<(&'p Provider, Map<String, Value>)>,
}

impl<'p> Exchange<'p> {
    fn new(http: &HttpRequest) -> Self {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &http.headers {
            headers
                .entry(k.to_ascii_lowercase())
                .and_modify(|x| {
                    x.push(',');
                    x.push_str(v);
                })
                .or_insert_with(|| v.clone());
        }
        Self {
            headers,
            path: http.path.clone(),
            edits: Vec::new(),
            identity: None,
        }
    }

    /// Istio's requirement for several providers:
    /// `requires_any{P1, .., Pn, requires_all{requires_any{Pi, allow_missing}..}}`
    /// (verifier.cc `AnyVerifierImpl`, `AllVerifierImpl`).
    fn any_provider_or_all_optional(
        &mut self,
        providers: &[&'p Provider],
        now: u64,
    ) -> Result<(), (Failure, &'p Provider)> {
        let mut children: Vec<(Failure, &'p Provider)> = Vec::new();
        for &p in providers {
            match self.run(p, now) {
                Status::Ok => return Ok(()),
                Status::Missed => {}
                Status::Failed(f) => children.push((f, p)),
            }
        }
        let mut all = Ok(());
        for &p in providers {
            if let Status::Failed(f) = self.run(p, now) {
                all = Err((f, p));
                break;
            }
        }
        match all {
            Ok(()) => return Ok(()),
            Err(e) => children.push(e),
        }
        // AnyVerifierImpl::onComplete: the last error that is neither "missing" nor
        // "unknown issuer", else "unknown issuer", else "missing".
        let mut chosen: Option<(Failure, &'p Provider)> = None;
        for (f, p) in children {
            if !matches!(f, Failure::UnknownIssuer { .. }) || chosen.is_none() {
                chosen = Some((f, p));
            }
        }
        // `None` cannot happen: the requires_all child failed.
        chosen.map_or(Ok(()), Err)
    }

    /// One provider: sanitize its output headers, extract its tokens, verify each (last
    /// found first, as Envoy pops them), stop at the first failure.
    fn run(&mut self, p: &'p Provider, now: u64) -> Status {
        for h in p.output_headers() {
            self.remove_header(h);
        }
        let found = self.extract(p);
        if found.is_empty() {
            return Status::Missed;
        }
        for f in found.iter().rev() {
            match p.verify(&f.token, now) {
                Ok(v) => self.accept(p, f, v),
                Err(e) => return Status::Failed(e),
            }
        }
        Status::Ok
    }

    /// extractor.cc `extract`: headers (map order), then query parameters, then cookies.
    fn extract(&self, p: &Provider) -> Vec<Found> {
        let mut out = Vec::new();
        for (name, prefix) in &p.headers {
            let Some(value) = self.headers.get(name) else {
                continue;
            };
            let token = if prefix.is_empty() {
                value.as_str()
            } else {
                match value.find(prefix.as_str()) {
                    Some(pos) => extract_jwt(value, pos + prefix.len()),
                    None => continue,
                }
            };
            out.push(Found {
                token: token.to_string(),
                at: Location::Header(name.clone()),
            });
        }
        if !p.params.is_empty() {
            let query = parse_query(&self.path);
            for name in &p.params {
                if let Some((_, v)) = query.iter().find(|(k, _)| k == name) {
                    out.push(Found {
                        token: v.clone(),
                        at: Location::Param(name.clone()),
                    });
                }
            }
        }
        if !p.cookies.is_empty() {
            let cookies = parse_cookies(self.headers.get("cookie").map_or("", String::as_str));
            for name in &p.cookies {
                if let Some((_, v)) = cookies.iter().find(|(k, _)| k == name) {
                    out.push(Found {
                        token: (*v).to_string(),
                        at: Location::Cookie,
                    });
                }
            }
        }
        out
    }

    /// authenticator.cc `handleGoodJwt`.
    fn accept(&mut self, p: &'p Provider, found: &Found, v: Verified) {
        if let Some(h) = &p.payload_header {
            self.append_header(h, &v.payload_b64);
        }
        for (h, claim) in &p.claim_headers {
            if let Some(value) = claim_header_value(&v.claims, claim) {
                self.append_header(h, &value);
            }
        }
        if !p.forward {
            match &found.at {
                Location::Header(name) => self.remove_header(name),
                Location::Param(name) => self.remove_param(name),
                // Envoy leaves cookies in place (JwtCookieLocation::removeJwt is empty).
                Location::Cookie => {}
            }
        }
        self.identity = Some((p, normalize_claims(v.claims, &p.space_delimited)));
    }

    fn remove_header(&mut self, name: &str) {
        if self.headers.remove(name).is_some() {
            self.edits.push(HeaderEdit::Remove(name.to_string()));
        }
    }

    fn append_header(&mut self, name: &str, value: &str) {
        self.headers
            .entry(name.to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_string());
        self.edits
            .push(HeaderEdit::Append(name.to_string(), value.to_string()));
    }

    /// extractor.cc `JwtParamLocation::removeJwt`: every value of the parameter goes; the
    /// rest is written back sorted by name, decoded (Envoy `QueryParamsMulti::toString`).
    fn remove_param(&mut self, name: &str) {
        let mut rest = parse_query(&self.path);
        rest.retain(|(k, _)| k != name);
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        let base = self
            .path
            .split_once('?')
            .map_or(self.path.as_str(), |(b, _)| b);
        let mut path = base.to_string();
        for (i, (k, v)) in rest.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(k);
            path.push('=');
            path.push_str(v);
        }
        if path != self.path {
            self.path.clone_from(&path);
            self.edits.push(HeaderEdit::SetPath(path));
        }
    }
}

/// extractor.cc `extractJWT`: after the prefix, skip to the first base64url-or-dot
/// character and take the run of them; if there is none, the whole value.
fn extract_jwt(value: &str, after: usize) -> &str {
    let jwt_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    let bytes = value.as_bytes();
    let Some(start) = (after..bytes.len()).find(|&i| jwt_char(bytes[i])) else {
        return value;
    };
    let end = (start..bytes.len())
        .find(|&i| !jwt_char(bytes[i]))
        .unwrap_or(bytes.len());
    // Both ends are at ASCII characters (or the end), so they are char boundaries.
    value.get(start..end).unwrap_or(value)
}

/// Envoy `QueryParamsMulti::parseAndDecodeQueryString`: `&`-separated, split at the first
/// `=`, name and value percent-decoded; a segment without `=` has an empty value.
fn parse_query(path: &str) -> Vec<(String, String)> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .map(|seg| {
            let (k, v) = seg.split_once('=').unwrap_or((seg, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Envoy `PercentEncoding::decode`: `%XX` with two hex digits becomes the byte; anything
/// else is kept.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 0xff.
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Envoy `Utility::parseCookies`: `;`-separated `name=value`, leading spaces dropped, a
/// quoted value unquoted, the first of a name wins.
fn parse_cookies(header: &str) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in header.split(';') {
        let part = part.trim_start_matches(' ');
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        if !out.iter().any(|(n, _)| *n == k) {
            out.push((k, v));
        }
    }
    out
}

/// jwt_verify_lib `check_audience.cc` `sanitizeAudience`: no `http://`/`https://`, no
/// trailing `/`.
fn sanitize_audience(aud: &str) -> String {
    let a = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a).to_string()
}

/// authenticator.cc `setPayloadMetadata`: each listed top-level string claim becomes the
/// list of its space-separated words (unless it has none).
fn normalize_claims(
    mut claims: Map<String, Value>,
    space_delimited: &[String],
) -> Map<String, Value> {
    for name in space_delimited {
        if let Some(Value::String(s)) = claims.get(name) {
            let words: Vec<Value> = s
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(|w| Value::String(w.to_string()))
                .collect();
            if !words.is_empty() {
                claims.insert(name.clone(), Value::Array(words));
            }
        }
    }
    claims
}

/// authenticator.cc `addJWTClaimToHeader`: claim path `a.b`; strings as they are, numbers
/// as integers when whole (else C++ `%f`), booleans `true`/`false`, objects and lists as
/// base64 of their JSON; an empty value adds nothing.
fn claim_header_value(claims: &Map<String, Value>, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut v = claims.get(first)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => {
                format!("{f:.0}")
            }
            (None, Some(f)) => format!("{f:.6}"),
            (None, None) => n.to_string(),
        },
        Value::Object(_) | Value::Array(_) => STANDARD.encode(v.to_string()),
        Value::Null => String::new(),
    };
    (!s.is_empty()).then_some(s)
}

/// A token as jwt_verify_lib `Jwt::parseFromString` reads it (no `Debug`).
struct Jwt<'t> {
    /// `header.payload`, the signed text.
    signed: &'t str,
    payload_b64: &'t str,
    signature: Vec<u8>,
    alg: String,
    kid: String,
    iss: String,
    aud: Vec<String>,
    nbf: u64,
    exp: u64,
    claims: Map<String, Value>,
}

/// Base64url, padded or not (absl `WebSafeBase64Unescape` accepts both).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl<'t> Jwt<'t> {
    fn parse(token: &'t str) -> Result<Self, Failure> {
        let malformed = |m: &str| Failure::Malformed(m.to_string());
        let bad_format = || malformed("expected three base64url sections separated by two dots");
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(bad_format());
        }
        let (signed, sig_b64) = token.rsplit_once('.').ok_or_else(bad_format)?;
        let (header_b64, payload_b64) = signed.split_once('.').ok_or_else(bad_format)?;
        if header_b64.is_empty() || payload_b64.is_empty() || sig_b64.is_empty() {
            return Err(bad_format());
        }
        let header = B64URL
            .decode(header_b64)
            .map_err(|_| malformed("the header is not base64url"))?;
        let header =
            json_object(&header).ok_or_else(|| malformed("the header is not a JSON object"))?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(malformed("the header has no \"alg\" string")),
        };
        if !IMPLEMENTED_ALGS.contains(&alg.as_str()) {
            return Err(Failure::AlgorithmNotAllowed {
                alg: shown(&alg),
                why: format!("Envoy accepts only {}", IMPLEMENTED_ALGS.join(", ")),
            });
        }
        let kid = match header.get("kid") {
            None => String::new(),
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err(malformed("the header's \"kid\" is not a string")),
        };
        let payload = B64URL
            .decode(payload_b64)
            .map_err(|_| malformed("the payload is not base64url"))?;
        let claims =
            json_object(&payload).ok_or_else(|| malformed("the payload is not a JSON object"))?;
        let string = |name: &str| match claims.get(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(Failure::Malformed(format!(
                "claim \"{name}\" is not a string"
            ))),
        };
        let seconds = |name: &str| match claims.get(name) {
            None => Ok(0),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(u) => Ok(u),
                None => match n.as_f64() {
                    // jwt_verify_lib `GetUInt64`: truncated, 0 <= v < 2^64.
                    Some(f) if f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
                    _ => Err(Failure::Malformed(format!(
                        "claim \"{name}\" is not a positive integer"
                    ))),
                },
            },
            Some(_) => Err(Failure::Malformed(format!(
                "claim \"{name}\" is not an integer"
            ))),
        };
        let iss = string("iss")?;
        string("sub")?;
        seconds("iat")?;
        let nbf = seconds("nbf")?;
        let exp = seconds("exp")?;
        string("jti")?;
        let aud = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| malformed("claim \"aud\" is not a string or a list of strings"))?,
            Some(_) => {
                return Err(malformed(
                    "claim \"aud\" is not a string or a list of strings",
                ));
            }
        };
        let signature = B64URL
            .decode(sig_b64)
            .map_err(|_| malformed("the signature is not base64url"))?;
        Ok(Self {
            signed,
            payload_b64,
            signature,
            alg,
            kid,
            iss,
            aud,
            nbf,
            exp,
            claims,
        })
    }
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A token-supplied value, shortened for a reason.
fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A usable key of a JWKS. `DecodingKey`'s `Debug` redacts the key material.
#[derive(Debug)]
struct Key {
    kid: String,
    alg: String,
    kind: KeyKind,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Hmac,
    Ed25519,
}

impl KeyKind {
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Hmac => matches!(alg, HS256 | HS384 | HS512),
            Self::Ed25519 => alg == EdDSA,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::P256 => "EC P-256",
            Self::P384 => "EC P-384",
            Self::Hmac => "oct",
            Self::Ed25519 => "OKP Ed25519",
        }
    }
}

/// JWKS files read during one compile, by resolved path: each is read once.
#[derive(Debug, Default)]
struct JwksFiles(HashMap<PathBuf, Result<Arc<Vec<Key>>, String>>);

impl JwksFiles {
    fn load(&mut self, path: &Path) -> Result<Arc<Vec<Key>>, String> {
        self.0
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "cannot read the JWKS file {}: {e}; expected a readable JSON Web Key Set",
                        path.display()
                    )
                })?;
                parse_jwks(&text)
                    .map(Arc::new)
                    .map_err(|e| format!("the JWKS file {}: {e}", path.display()))
            })
            .clone()
    }
}

fn compile_policy(
    p: &Loaded<RequestAuthenticationSpec>,
    files: &mut JwksFiles,
) -> Result<Policy, Vec<CompileError>> {
    let name = format!("{}/{}", p.resource.namespace(), p.resource.metadata.name);
    let dir = p.origin.file.parent().unwrap_or(Path::new(""));
    let mut errors = Vec::new();
    let mut providers = Vec::new();
    for (i, rule) in p.resource.spec.jwt_rules.iter().enumerate() {
        match compile_rule(&name, i, rule, dir, files) {
            Ok(provider) => providers.push(provider),
            Err(e) => errors.extend(e.into_iter().map(|(path, message)| CompileError {
                kind: "RequestAuthentication",
                policy: name.clone(),
                origin: p.origin.clone(),
                path,
                message,
            })),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Policy {
        selector: p
            .resource
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone()),
        providers,
    })
}

/// One rule: Istio's `validateJwtRule` checks, then its JWKS.
fn compile_rule(
    policy: &str,
    i: usize,
    rule: &JwtRule,
    dir: &Path,
    files: &mut JwksFiles,
) -> Result<Provider, Vec<(String, String)>> {
    let at = |field: &str| format!("spec.jwtRules[{i}].{field}");
    // The webhook's checks, shared with `warden validate`; `jwks` and `jwksUri` are
    // read (and their errors reported) by `load_keys` below.
    let key_fields = [at("jwks"), at("jwksUri")];
    let mut errors: Vec<(String, String)> =
        crate::validate::jwt_rule_errors(&format!("spec.jwtRules[{i}]"), rule)
            .into_iter()
            .filter(|(path, _)| !key_fields.contains(path))
            .collect();
    let payload_header = rule
        .output_payload_to_header
        .as_deref()
        .filter(|h| !h.is_empty());
    if let Some(h) = payload_header
        && !is_header_name(h)
    {
        errors.push((
            at("outputPayloadToHeader"),
            format!("{h:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"),
        ));
    }
    let keys = match load_keys(rule, dir, files) {
        Ok(k) => Some(k),
        Err((field, message)) => {
            errors.push((at(field), message));
            None
        }
    };
    let Some(keys) = keys.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };

    let mut headers: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut params: Vec<String> = rule.from_params.clone();
    let cookies_sorted = {
        let mut c = rule.from_cookies.clone();
        c.sort();
        c.dedup();
        c
    };
    for h in &rule.from_headers {
        let name = h.name.to_ascii_lowercase();
        headers.insert(format!("{name}{}", h.prefix), (name, h.prefix.clone()));
    }
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        headers.insert(
            "authorizationBearer ".into(),
            ("authorization".into(), "Bearer ".into()),
        );
        params.push("access_token".into());
    }
    params.sort();
    params.dedup();
    let mut space_delimited: Vec<String> = rule.space_delimited_claims.clone();
    space_delimited.extend(DEFAULT_SPACE_DELIMITED.iter().map(|s| s.to_string()));
    space_delimited.sort();
    space_delimited.dedup();
    Ok(Provider {
        policy: policy.to_string(),
        rule: i,
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        audience_set: rule
            .audiences
            .iter()
            .map(|a| sanitize_audience(a))
            .collect(),
        keys,
        headers: headers.into_values().collect(),
        params,
        cookies: cookies_sorted,
        forward: rule.forward_original_token,
        payload_header: payload_header.map(str::to_ascii_lowercase),
        claim_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| (c.header.to_ascii_lowercase(), c.claim.clone()))
            .collect(),
        space_delimited,
    })
}

/// Istio `ValidateStrictHTTPHeaderName`: an RFC 7230 token.
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// The rule's keys: inline `jwks` wins over `jwksUri` (jwt.proto: "jwks_uri will be
/// ignored"); `jwksUri` is a path or `file://` URL, relative to the YAML file's directory.
/// On error: the field and the message.
fn load_keys(
    rule: &JwtRule,
    dir: &Path,
    files: &mut JwksFiles,
) -> Result<Arc<Vec<Key>>, (&'static str, String)> {
    if let Some(inline) = rule.jwks.as_deref().filter(|s| !s.trim().is_empty()) {
        return parse_jwks(inline)
            .map(Arc::new)
            .map_err(|e| ("jwks", format!("the inline JWKS: {e}")));
    }
    let uri = rule.jwks_uri.as_deref().unwrap_or_default();
    if uri.is_empty() {
        return Err((
            "jwksUri",
            "neither jwks nor jwksUri is set: Warden does not discover keys from the issuer (OpenID discovery); set jwks, or jwksUri to a file".into(),
        ));
    }
    let lower = uri.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err((
            "jwksUri",
            format!("{uri:?}: remote JWKS is not supported yet; use jwks or a file"),
        ));
    }
    let path = match uri.strip_prefix("file://") {
        Some(p) => p,
        None if uri.contains("://") => {
            return Err((
                "jwksUri",
                format!("{uri:?}: unsupported scheme; expected a path or a file:// URL"),
            ));
        }
        None => uri,
    };
    let path = Path::new(path);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    files.load(&path).map_err(|e| ("jwksUri", e))
}

/// jwt_verify_lib `Jwks::createFromJwksCore`: `{"keys": [...]}`; keys that cannot be used
/// are skipped; no usable key is an error that lists why each was skipped.
fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    const EXPECTED: &str = "expected a JSON Web Key Set {\"keys\": [...]}";
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("is not JSON ({e}); {EXPECTED}"))?;
    let keys = match v.get("keys") {
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(format!("\"keys\" is not an array; {EXPECTED}")),
        None => return Err(format!("has no \"keys\" array; {EXPECTED}")),
    };
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let Some(k) = k.as_object() else {
            skipped.push(format!("keys[{i}] is not an object"));
            continue;
        };
        match parse_jwk(k) {
            Ok(key) => out.push(key),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    if out.is_empty() {
        return Err(if skipped.is_empty() {
            "has no usable key: \"keys\" is empty".into()
        } else {
            format!("has no usable key: {}", skipped.join("; "))
        });
    }
    Ok(out)
}

/// jwt_verify_lib `extractJwk` and its per-`kty` helpers.
fn parse_jwk(k: &Map<String, Value>) -> Result<Key, String> {
    let text = |name: &str| match k.get(name) {
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        None => Ok(None),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    };
    let required = |name: &str| text(name)?.ok_or_else(|| format!("\"{name}\" is missing"));
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        B64URL
            .decode(required(name)?)
            .map_err(|_| format!("\"{name}\" is not base64url"))
    };
    let kty = required("kty")?;
    // jwt_verify_lib ignores a `kid`/`alg` that is not a string.
    let kid = text("kid").ok().flatten().unwrap_or_default().to_string();
    let alg = text("alg").ok().flatten().unwrap_or_default().to_string();
    let (kind, key) = match kty {
        "RSA" => {
            if !(alg.is_empty() || alg.starts_with("RS") || alg.starts_with("PS")) {
                return Err(format!(
                    "alg {alg:?} does not start with RS or PS for an RSA key"
                ));
            }
            let n = bytes("n")?;
            let e = bytes("e")?;
            let trim = |b: &[u8]| {
                b.iter()
                    .skip_while(|x| **x == 0)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            let (n, e) = (trim(&n), trim(&e));
            if e != [3] && e != [1, 0, 1] {
                return Err("the RSA exponent is neither 3 nor 65537".into());
            }
            if n.len() < 64 || n.len() > 512 {
                return Err(format!(
                    "the RSA modulus has {} bits; expected 512 to 4096",
                    n.len() * 8
                ));
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            if !alg.is_empty() && !alg.starts_with("ES") {
                return Err(format!("alg {alg:?} does not start with ES for an EC key"));
            }
            let crv = text("crv")?.unwrap_or_default();
            let kind = match (alg.as_str(), crv) {
                ("ES256" | "", "P-256") | ("ES256", "") | ("", "") => KeyKind::P256,
                ("ES384" | "", "P-384") | ("ES384", "") => KeyKind::P384,
                ("ES512" | "", "P-521") | ("ES512", "") => {
                    return Err("P-521 (ES512) keys are not supported by Warden".into());
                }
                ("ES256" | "ES384" | "ES512", _) if !crv.is_empty() && crv.starts_with("P-") => {
                    return Err(format!("crv {crv:?} does not fit alg {alg:?}"));
                }
                _ => return Err(format!("unsupported curve {crv:?} / alg {alg:?}")),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            let len = if kind == KeyKind::P256 { 32 } else { 48 };
            if x.len() != len || y.len() != len {
                return Err(format!("x and y must be {len} bytes for {}", kind.name()));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = DecodingKey::from_ec_der(&point);
            let alg = if kind == KeyKind::P256 {
                Algorithm::ES256
            } else {
                Algorithm::ES384
            };
            usable(&key, alg).map_err(|_| "x, y is not a point on the curve".to_string())?;
            (kind, key)
        }
        "oct" => {
            if !alg.is_empty() && !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
                return Err(format!(
                    "alg {alg:?} is not HS256, HS384 or HS512 for an oct key"
                ));
            }
            let k = bytes("k")?;
            if k.is_empty() {
                return Err("\"k\" is empty".into());
            }
            (KeyKind::Hmac, DecodingKey::from_secret(&k))
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" {
                return Err(format!("alg {alg:?} is not EdDSA for an OKP key"));
            }
            let crv = required("crv")?;
            if crv != "Ed25519" {
                return Err(format!(
                    "curve {crv:?} is not supported for an OKP key (Ed25519 is)"
                ));
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("\"x\" must be 32 bytes for Ed25519".into());
            }
            let key = DecodingKey::from_ed_der(&x);
            usable(&key, Algorithm::EdDSA)
                .map_err(|_| "\"x\" is not an Ed25519 key".to_string())?;
            (KeyKind::Ed25519, key)
        }
        other => return Err(format!("kty {other:?} is not supported")),
    };
    Ok(Key {
        kid,
        alg,
        kind,
        key,
    })
}

/// Builds the verifier for `key` once, so a key that cannot verify anything is refused at
/// compile time: only a bad key makes `crypto::verify` fail (a bad signature is `false`).
fn usable(key: &DecodingKey, alg: Algorithm) -> Result<(), jsonwebtoken::errors::Error> {
    jsonwebtoken::crypto::verify("AA", b"", key, alg).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load_str;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const RSA_PEM: &str = include_str!("../tests/data/jwt/rsa-2048.pem");
    const EC_PEM: &str = include_str!("../tests/data/jwt/ec-p256.pem");
    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://issuer.example";

    fn now() -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(NOW)
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap()
    }

    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap()
    }

    /// The public JWK of `key` with `kid`.
    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
        let mut j = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
        j["kid"] = json!(kid);
        j
    }

    /// A JWKS with the RSA key (`rsa-1`) and the EC key (`ec-1`).
    fn jwks() -> String {
        json!({"keys": [jwk(&rsa_key(), Algorithm::RS256, "rsa-1"), jwk(&ec_key(), Algorithm::ES256, "ec-1")]})
            .to_string()
    }

    fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let key = match alg {
            Algorithm::ES256 => ec_key(),
            _ => rsa_key(),
        };
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "alice", "aud": ["svc-a"], "exp": NOW + 3600, "iat": NOW, "scope": "read write  admin"})
    }

    fn rs256() -> String {
        sign(Algorithm::RS256, "rsa-1", &claims())
    }

    /// A RequestAuthentication `foo/jwt` selecting `app: httpbin` with one rule; `rule`
    /// is extra YAML for the rule (indented under it).
    fn ra_yaml(ns: &str, name: &str, selector: &str, rule: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  jwtRules:\n  - issuer: {ISS}\n    jwks: '{}'\n{rule}",
            jwks()
        )
    }

    fn compile(yaml: &str) -> RequestAuthn {
        let set = load_str(Path::new("/cfg/ra.yaml"), yaml).unwrap();
        RequestAuthn::compile(&set, "istio-system").unwrap()
    }

    fn compile_err(dir: &Path, yaml: &str) -> Vec<CompileError> {
        let set = load_str(&dir.join("ra.yaml"), yaml).unwrap();
        RequestAuthn::compile(&set, "istio-system").unwrap_err()
    }

    fn wl() -> Workload {
        Workload {
            namespace: "foo".into(),
            labels: [("app".to_string(), "httpbin".to_string())].into(),
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: path.into(),
            host: "httpbin.foo".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn bearer(token: &str) -> HttpRequest {
        req("/get", &[("authorization", &format!("Bearer {token}"))])
    }

    fn authenticated(o: Outcome) -> Authenticated {
        match o {
            Outcome::Authenticated(a) => a,
            other => panic!("want authenticated, got {other:?}"),
        }
    }

    fn rejected(o: Outcome) -> Rejected {
        match o {
            Outcome::Rejected(r) => r,
            other => panic!("want rejected, got {other:?}"),
        }
    }

    const SELECT_HTTPBIN: &str = "  selector: {matchLabels: {app: httpbin}}\n";

    #[test]
    fn rs256_and_es256_tokens_authenticate() {
        let ra = compile(&ra_yaml("foo", "jwt", SELECT_HTTPBIN, ""));
        for token in [rs256(), sign(Algorithm::ES256, "ec-1", &claims())] {
            let a = authenticated(ra.authenticate(&wl(), &bearer(&token), now()));
            assert_eq!(a.principal, format!("{ISS}/alice"));
            assert_eq!(a.policy, "foo/jwt");
            assert_eq!(a.rule, 0);
            assert_eq!(a.claims["sub"], "alice");
            // scope is always space-delimited; empty words dropped.
            assert_eq!(a.claims["scope"], json!(["read", "write", "admin"]));
            // The token is not forwarded by default.
            assert_eq!(a.edits, vec![HeaderEdit::Remove("authorization".into())]);
        }
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason_that_never_holds_the_token() {
        let ra = compile(&ra_yaml(
            "foo",
            "jwt",
            SELECT_HTTPBIN,
            "    audiences: [svc-a, \"https://svc-b/\"]\n",
        ));
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            sign(Algorithm::RS256, "rsa-1", &c)
        };
        let good = rs256();
        let (head, rest) = good.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let hs256_with_public_key = {
            let public = jwks();
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("rsa-1".into());
            jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(public.as_bytes()))
                .unwrap()
        };
        let alg_none = format!("{}.{payload}.{sig}", b64(&json!({"alg": "none"})));
        let cases: Vec<(&str, String, u16, &str)> = vec![
            (
                "expired",
                with(&|c| c["exp"] = json!(NOW - 61)),
                401,
                "expired: exp",
            ),
            (
                "nbf in the future",
                with(&|c| c["nbf"] = json!(NOW + 61)),
                401,
                "not yet valid",
            ),
            (
                "wrong audience",
                with(&|c| c["aud"] = json!("svc-c")),
                403,
                "audience [\"svc-c\"] is not in",
            ),
            (
                "unknown issuer",
                with(&|c| c["iss"] = json!("https://evil")),
                401,
                "issuer \"https://evil\" is not configured",
            ),
            (
                "bad signature",
                format!(
                    "{head}.{}.{sig}",
                    b64(&json!({"iss": ISS, "sub": "mallory", "aud": "svc-a"}))
                ),
                401,
                "signature does not verify",
            ),
            (
                "alg none",
                alg_none,
                401,
                "algorithm \"none\" is not allowed",
            ),
            (
                "alg none, no signature",
                format!("{}.{payload}.", b64(&json!({"alg": "none"}))),
                401,
                "malformed",
            ),
            (
                "HS256 with the RSA public key",
                hs256_with_public_key,
                401,
                "alg HS256",
            ),
            (
                "unknown kid",
                sign(Algorithm::RS256, "rsa-2", &claims()),
                401,
                "kid \"rsa-2\"",
            ),
            (
                "not a JWT",
                "hello".into(),
                401,
                "malformed: expected three",
            ),
            (
                "truncated in the payload",
                good[..head.len() + 10].to_string(),
                401,
                "malformed",
            ),
            (
                "truncated signature",
                good[..good.len() - 3].to_string(),
                401,
                "signature",
            ),
            (
                "payload not JSON",
                format!("{head}.{}.{sig}", URL_SAFE_NO_PAD.encode("nope")),
                401,
                "payload is not a JSON object",
            ),
            (
                "exp not a number",
                with(&|c| c["exp"] = json!("soon")),
                401,
                "\"exp\" is not an integer",
            ),
        ];
        let mut failed = Vec::new();
        for (name, token, status, want) in &cases {
            match ra.authenticate(&wl(), &bearer(token), now()) {
                Outcome::Rejected(r) => {
                    let reason = r.reason();
                    if r.status != *status
                        || !reason.contains(want)
                        || reason.contains(token.as_str())
                    {
                        failed.push(format!(
                            "{name}: status {}, reason {reason:?}, want {status} and {want:?}",
                            r.status
                        ));
                    }
                    if r.policy != "foo/jwt" || r.rule != 0 {
                        failed.push(format!("{name}: blamed {} rule {}", r.policy, r.rule));
                    }
                }
                other => failed.push(format!("{name}: {other:?}")),
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
        // Within the clock skew, and with an audience written with scheme and slash.
        let ok = with(&|c| {
            c["exp"] = json!(NOW - 60);
            c["nbf"] = json!(NOW + 60);
            c["aud"] = json!("http://svc-b");
        });
        authenticated(ra.authenticate(&wl(), &bearer(&ok), now()));
    }

    #[test]
    fn hs256_against_an_rsa_key_without_alg_is_refused() {
        // With `alg` on the key the kid/alg match already fails (above); without it the
        // kid matches and the RSA key cannot verify an HMAC: the public key is no secret.
        let mut key = jwk(&rsa_key(), Algorithm::RS256, "rsa-1");
        key.as_object_mut().unwrap().remove("alg");
        let keys = json!({"keys": [key]}).to_string();
        let ra = compile(&ra_yaml("foo", "jwt", SELECT_HTTPBIN, "").replace(&jwks(), &keys));
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        for secret in [keys.as_bytes(), RSA_PEM.as_bytes()] {
            let token =
                jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(secret)).unwrap();
            let r = rejected(ra.authenticate(&wl(), &bearer(&token), now()));
            assert!(
                matches!(&r.failure, Failure::AlgorithmNotAllowed { alg, .. } if alg == "HS256"),
                "{r:?}"
            );
        }
    }

    #[test]
    fn empty_audiences_accept_any_aud_and_missing_exp() {
        let ra = compile(&ra_yaml("foo", "jwt", SELECT_HTTPBIN, ""));
        let token = sign(
            Algorithm::RS256,
            "rsa-1",
            &json!({"iss": ISS, "sub": "bob", "aud": "anything"}),
        );
        let a = authenticated(ra.authenticate(&wl(), &bearer(&token), now()));
        assert_eq!(a.principal, format!("{ISS}/bob"));
    }

    #[test]
    fn token_locations() {
        let token = rs256();
        let cases: Vec<(&str, &str, HttpRequest, bool, Vec<HeaderEdit>)> = vec![
            (
                "default query parameter",
                "",
                req(&format!("/get?b=2&access_token={token}&a=1"), &[]),
                true,
                vec![HeaderEdit::SetPath("/get?a=1&b=2".into())],
            ),
            (
                "custom header with prefix, name case-insensitive",
                "    fromHeaders: [{name: X-Jwt-Assertion, prefix: \"Istio \"}]\n",
                req("/get", &[("x-jwt-assertion", &format!("Istio {token}"))]),
                true,
                vec![HeaderEdit::Remove("x-jwt-assertion".into())],
            ),
            (
                "custom header without its prefix is no token",
                "    fromHeaders: [{name: x-jwt-assertion, prefix: \"Istio \"}]\n",
                req("/get", &[("x-jwt-assertion", &token)]),
                false,
                vec![],
            ),
            (
                "custom query parameter",
                "    fromParams: [jwt]\n",
                req(&format!("/get?jwt={token}"), &[]),
                true,
                vec![HeaderEdit::SetPath("/get".into())],
            ),
            (
                "cookie (left in place, as Envoy does)",
                "    fromCookies: [session]\n",
                req("/get", &[("cookie", &format!("a=b; session=\"{token}\""))]),
                true,
                vec![],
            ),
            (
                "custom locations replace the defaults",
                "    fromParams: [jwt]\n",
                bearer(&token),
                false,
                vec![],
            ),
            (
                "lowercase bearer is not the Bearer prefix",
                "",
                req("/get", &[("authorization", &format!("bearer {token}"))]),
                false,
                vec![],
            ),
        ];
        for (name, rule, http, want_identity, want_edits) in cases {
            let ra = compile(&ra_yaml("foo", "jwt", SELECT_HTTPBIN, rule));
            match ra.authenticate(&wl(), &http, now()) {
                Outcome::Authenticated(a) => {
                    assert!(want_identity, "{name}: authenticated");
                    assert_eq!(a.edits, want_edits, "{name}");
                }
                Outcome::NoToken { edits } => {
                    assert!(!want_identity, "{name}: no token found");
                    assert_eq!(edits, want_edits, "{name}");
                }
                Outcome::Rejected(r) => panic!("{name}: {}", r.reason()),
            }
        }
    }

    #[test]
    fn missing_token_passes_through_and_cors_preflight_is_not_checked() {
        let ra = compile(&ra_yaml("foo", "jwt", SELECT_HTTPBIN, ""));
        assert_eq!(
            ra.authenticate(&wl(), &req("/get", &[]), now()),
            Outcome::NoToken { edits: vec![] }
        );
        let mut preflight = bearer("garbage");
        preflight.method = "OPTIONS".into();
        preflight
            .headers
            .insert("origin".into(), "https://app".into());
        preflight
            .headers
            .insert("access-control-request-method".into(), "GET".into());
        assert_eq!(
            ra.authenticate(&wl(), &preflight, now()),
            Outcome::NoToken { edits: vec![] }
        );
    }

    #[test]
    fn outputs_forwarding_and_spoofed_output_headers() {
        let ra = compile(&ra_yaml(
            "foo",
            "jwt",
            SELECT_HTTPBIN,
            "    forwardOriginalToken: true\n    outputPayloadToHeader: X-Jwt-Payload\n    outputClaimToHeaders: [{header: x-sub, claim: sub}, {header: x-exp, claim: exp}, {header: x-aud, claim: aud}, {header: x-none, claim: nope}]\n    spaceDelimitedClaims: [roles]\n",
        ));
        let token = sign(
            Algorithm::RS256,
            "rsa-1",
            &json!({"iss": ISS, "sub": "alice", "aud": ["svc-a"], "exp": NOW + 10, "roles": "a b"}),
        );
        let payload = token.split('.').nth(1).unwrap().to_string();
        let mut http = bearer(&token);
        http.headers.insert("x-jwt-payload".into(), "forged".into());
        http.headers.insert("x-sub".into(), "root".into());
        let a = authenticated(ra.authenticate(&wl(), &http, now()));
        assert_eq!(
            a.edits,
            vec![
                HeaderEdit::Remove("x-jwt-payload".into()),
                HeaderEdit::Remove("x-sub".into()),
                HeaderEdit::Append("x-jwt-payload".into(), payload.clone()),
                HeaderEdit::Append("x-sub".into(), "alice".into()),
                HeaderEdit::Append("x-exp".into(), (NOW + 10).to_string()),
                HeaderEdit::Append("x-aud".into(), STANDARD.encode("[\"svc-a\"]")),
            ]
        );
        assert_eq!(a.claims["roles"], json!(["a", "b"]));
        apply_edits(&a.edits, &mut http);
        assert_eq!(http.headers["authorization"], format!("Bearer {token}"));
        assert_eq!(http.headers["x-jwt-payload"], payload);
        assert_eq!(http.headers["x-sub"], "alice");
        // Spoofed outputs go even when there is no token.
        let mut no_token = req("/get", &[("x-jwt-payload", "forged")]);
        let Outcome::NoToken { edits } = ra.authenticate(&wl(), &no_token, now()) else {
            panic!("no token")
        };
        apply_edits(&edits, &mut no_token);
        assert!(!no_token.headers.contains_key("x-jwt-payload"));
    }

    #[test]
    fn several_rules_and_tokens() {
        // Two issuers on the default locations (istiod merges and sorts them).
        let second = format!(
            "  - issuer: https://other\n    jwks: '{}'\n",
            json!({"keys": [jwk(&ec_key(), Algorithm::ES256, "ec-1")]})
        );
        let ra = compile(&ra_yaml("foo", "jwt", SELECT_HTTPBIN, &second));
        let other = sign(
            Algorithm::ES256,
            "ec-1",
            &json!({"iss": "https://other", "sub": "carol"}),
        );
        let a = authenticated(ra.authenticate(&wl(), &bearer(&other), now()));
        assert_eq!((a.principal.as_str(), a.rule), ("https://other/carol", 1));
        let a = authenticated(ra.authenticate(&wl(), &bearer(&rs256()), now()));
        assert_eq!((a.policy.as_str(), a.rule), ("foo/jwt", 0));
        // Neither issuer: refused as an unknown issuer.
        let evil = sign(
            Algorithm::ES256,
            "ec-1",
            &json!({"iss": "https://evil", "sub": "x"}),
        );
        let r = rejected(ra.authenticate(&wl(), &bearer(&evil), now()));
        assert!(matches!(r.failure, Failure::UnknownIssuer { .. }), "{r:?}");
        // A bad token of a known issuer reports the real error, not "unknown issuer".
        let expired = sign(
            Algorithm::RS256,
            "rsa-1",
            &json!({"iss": ISS, "sub": "a", "exp": NOW - 100}),
        );
        let r = rejected(ra.authenticate(&wl(), &bearer(&expired), now()));
        assert!(matches!(r.failure, Failure::Expired { .. }), "{r:?}");

        // One rule, two tokens (header and query): both must be valid; the identity is
        // the first found (verified last).
        let one = compile(&ra_yaml("foo", "jwt", SELECT_HTTPBIN, ""));
        let bob = sign(
            Algorithm::RS256,
            "rsa-1",
            &json!({"iss": ISS, "sub": "bob"}),
        );
        let two = req(
            &format!("/get?access_token={bob}"),
            &[("authorization", &format!("Bearer {}", rs256()))],
        );
        let a = authenticated(one.authenticate(&wl(), &two, now()));
        assert_eq!(a.principal, format!("{ISS}/alice"));
        let bad_second = req(
            &format!("/get?access_token={expired}"),
            &[("authorization", &format!("Bearer {}", rs256()))],
        );
        let r = rejected(one.authenticate(&wl(), &bad_second, now()));
        assert!(matches!(r.failure, Failure::Expired { .. }), "{r:?}");
    }

    #[test]
    fn with_several_rules_the_first_whose_tokens_verify_decides() {
        let second = format!(
            "  - issuer: https://other\n    jwks: '{}'\n    fromHeaders: [{{name: x-other}}]\n",
            json!({"keys": [jwk(&ec_key(), Algorithm::ES256, "ec-1")]})
        );
        let ra = compile(&ra_yaml("foo", "jwt", SELECT_HTTPBIN, &second));
        let other = sign(
            Algorithm::ES256,
            "ec-1",
            &json!({"iss": "https://other", "sub": "carol"}),
        );
        let good_first = req(
            "/get",
            &[
                ("authorization", &format!("Bearer {}", rs256())),
                ("x-other", "garbage"),
            ],
        );
        let a = authenticated(ra.authenticate(&wl(), &good_first, now()));
        assert_eq!(a.rule, 0);
        assert_eq!(a.edits, vec![HeaderEdit::Remove("authorization".into())]);
        let good_second = req(
            "/get",
            &[("authorization", "Bearer garbage"), ("x-other", &other)],
        );
        let a = authenticated(ra.authenticate(&wl(), &good_second, now()));
        assert_eq!((a.rule, a.principal.as_str()), (1, "https://other/carol"));
        assert_eq!(a.edits, vec![HeaderEdit::Remove("x-other".into())]);
        // Only garbage: the rules' errors are reported, the real one first.
        let bad = req("/get", &[("authorization", "Bearer garbage")]);
        let r = rejected(ra.authenticate(&wl(), &bad, now()));
        assert!(matches!(r.failure, Failure::Malformed(_)), "{r:?}");
    }

    #[test]
    fn scoping_by_namespace_selector_root_and_target_ref() {
        let yaml = [
            ra_yaml("istio-system", "mesh", "", ""),
            ra_yaml(
                "foo",
                "other-app",
                "  selector: {matchLabels: {app: other}}\n",
                "",
            ),
            ra_yaml("bar", "bar-ns", "", ""),
            ra_yaml(
                "foo",
                "gateway-only",
                "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n",
                "",
            ),
        ]
        .join("---\n");
        let ra = compile(&yaml);
        // Only the root-namespace policy applies to foo/httpbin.
        let a = authenticated(ra.authenticate(&wl(), &bearer(&rs256()), now()));
        assert_eq!(a.policy, "istio-system/mesh");
        // Without the mesh policy, nothing applies to foo/httpbin.
        let yaml = [
            ra_yaml(
                "foo",
                "other-app",
                "  selector: {matchLabels: {app: other}}\n",
                "",
            ),
            ra_yaml("bar", "bar-ns", "", ""),
        ]
        .join("---\n");
        let ra = compile(&yaml);
        assert!(!ra.applies_to(&wl()));
        assert_eq!(
            ra.authenticate(&wl(), &bearer("garbage"), now()),
            Outcome::NoToken { edits: vec![] }
        );
        let bar = Workload {
            namespace: "bar".into(),
            labels: BTreeMap::new(),
        };
        let r = rejected(ra.authenticate(&bar, &bearer("garbage"), now()));
        assert_eq!(r.policy, "bar/bar-ns");
    }

    #[test]
    fn jwks_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/jwks.json"), jwks()).unwrap();
        std::fs::write(dir.path().join("not-json.json"), "{").unwrap();
        std::fs::write(dir.path().join("no-keys.json"), "{\"keys\": []}").unwrap();
        std::fs::write(
            dir.path().join("unusable.json"),
            r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}, {"kty": "foo"}, 7]}"#,
        )
        .unwrap();
        let rule = |uri: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: {ISS}\n    jwks: '{}'\n  - issuer: https://b\n    jwksUri: {uri}\n",
                jwks()
            )
        };
        for uri in ["keys/jwks.json", "file://keys/jwks.json"] {
            let set = load_str(&dir.path().join("ra.yaml"), &rule(uri)).unwrap();
            RequestAuthn::compile(&set, "istio-system").unwrap();
        }
        let abs = format!("file://{}", dir.path().join("keys/jwks.json").display());
        let set = load_str(Path::new("/elsewhere/ra.yaml"), &rule(&abs)).unwrap();
        RequestAuthn::compile(&set, "istio-system").unwrap();

        let cases = [
            (
                "https://example.com/jwks.json",
                "remote JWKS is not supported yet; use jwks or a file",
            ),
            ("missing.json", "cannot read the JWKS file"),
            ("not-json.json", "is not JSON"),
            ("no-keys.json", "no usable key: \"keys\" is empty"),
            (
                "unusable.json",
                "keys[0]: the RSA modulus has 24 bits; expected 512 to 4096; keys[1]: kty \"foo\" is not supported; keys[2] is not an object",
            ),
            ("ftp://x/jwks.json", "unsupported scheme"),
        ];
        for (uri, want) in cases {
            let errors = compile_err(dir.path(), &rule(uri));
            assert_eq!(errors.len(), 1, "{uri}: {errors:?}");
            let e = errors[0].to_string();
            assert!(
                e.contains("RequestAuthentication foo/jwt: spec.jwtRules[1].jwksUri: ")
                    && e.contains("ra.yaml")
                    && e.contains(want),
                "{uri}: {e}"
            );
        }
        let inline_bad = rule("x").replace(&jwks(), "{\"keys\": 1}");
        let e = compile_err(dir.path(), &inline_bad)[0].to_string();
        assert!(
            e.contains("spec.jwtRules[0].jwks: the inline JWKS: \"keys\" is not an array"),
            "{e}"
        );
        let neither = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: {ISS}\n    audiences: [\"\"]\n"
        );
        let errors: Vec<String> = compile_err(dir.path(), &neither)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errors
                .iter()
                .any(|e| e
                    .contains("spec.jwtRules[0].audiences[0]: audience must be non-empty string")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("spec.jwtRules[0].jwksUri: neither jwks nor jwksUri")),
            "{errors:?}"
        );
    }

    #[test]
    fn helpers_follow_envoy() {
        assert_eq!(extract_jwt("Bearer   a.b.c, other", 6), "a.b.c");
        assert_eq!(extract_jwt("Bearer ", 7), "Bearer ");
        assert_eq!(
            parse_query("/p?a=%41&b&a=2"),
            vec![
                ("a".to_string(), "A".to_string()),
                ("b".to_string(), String::new()),
                ("a".to_string(), "2".to_string()),
            ]
        );
        assert_eq!(percent_decode("%zz%2"), "%zz%2");
        assert_eq!(
            parse_cookies(" a=1;b=\"2\"; a=3"),
            vec![("a", "1"), ("b", "2")]
        );
        assert_eq!(sanitize_audience("https://svc/"), "svc");
        let c = json!({"n": 1.5, "neg": -2, "b": true, "o": {"k": "v"}, "e": ""});
        let c = c.as_object().unwrap();
        assert_eq!(claim_header_value(c, "n").as_deref(), Some("1.500000"));
        assert_eq!(claim_header_value(c, "neg").as_deref(), Some("-2.000000"));
        assert_eq!(claim_header_value(c, "b").as_deref(), Some("true"));
        assert_eq!(claim_header_value(c, "o.k").as_deref(), Some("v"));
        assert_eq!(claim_header_value(c, "e"), None);
        assert_eq!(shown(&"x".repeat(200)).len(), SHOWN_MAX + 3);
    }
}
