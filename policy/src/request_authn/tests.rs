//! Unit tests of the JWT filter: algorithms, bad tokens and their reasons, audiences,
//! token locations, outputs and forwarding, several rules and tokens, scoping, JWKS files
//! (read by the loader) and Envoy's helpers.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;

use super::extract::{extract_jwt, parse_cookies, parse_query, percent_decode};
use super::filter::claim_header_value;
use super::verify::{SHOWN_MAX, sanitize_audience, shown};
use super::*;
use crate::loader::load_str;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const RSA_PEM: &str = include_str!("../../tests/data/jwt/rsa-2048.pem");
const EC_PEM: &str = include_str!("../../tests/data/jwt/ec-p256.pem");
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
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(public.as_bytes())).unwrap()
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
                if r.status != *status || !reason.contains(want) || reason.contains(token.as_str())
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
        let token = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(secret)).unwrap();
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

/// Compiling reads nothing: the JWKS file the loader read still verifies tokens after it
/// is gone from the disk.
#[test]
fn jwks_files_compile_from_the_loaded_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks()).unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: {ISS}\n    jwksUri: jwks.json\n"
    );
    let file = dir.path().join("ra.yaml");
    std::fs::write(&file, yaml).unwrap();
    let set = crate::loader::load(std::slice::from_ref(&file)).unwrap();
    drop(dir);
    let ra = RequestAuthn::compile(&set, "istio-system").unwrap();
    let a = authenticated(ra.authenticate(&wl(), &bearer(&rs256()), now()));
    assert_eq!(a.principal, format!("{ISS}/alice"));
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
