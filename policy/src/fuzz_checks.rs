//! The bodies of the fuzz targets in `fuzz/` that exercise this crate, shared with the
//! replay test below so a crash the fuzzer finds (kept in `fuzz/regressions/<target>/`)
//! is replayed by a plain `cargo test`. Each function takes the fuzzer's bytes, calls
//! the public entry point that meets untrusted input and panics if an invariant the
//! code documents does not hold.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::authz::{Engine, HttpRequest, Protocol, Request, Workload};
use crate::loader::load_str;
use crate::normalize::{PathNormalization, normalize};
use crate::peer_authn::PeerAuthn;
use crate::request_authn::RequestAuthn;

const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

/// `path_normalization`: [`normalize`] in every mode, checked against what
/// `normalize.rs` promises (Envoy's documented rules).
pub fn check_path_normalization(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let no_fragment = input.split('#').next().unwrap_or_default();
    let (in_path, in_query) = match no_fragment.find('?') {
        Some(i) => no_fragment.split_at(i),
        None => (no_fragment, ""),
    };
    let has_nul = in_path.contains('\0') || in_path.contains("%00");
    for mode in MODES {
        let out = match normalize(input, mode) {
            Ok(out) => out,
            Err(e) => {
                assert!(has_nul, "{mode}: {input:?} refused ({e}) without a NUL");
                continue;
            }
        };
        assert!(!has_nul, "{mode}: {input:?} has a NUL but was accepted");
        if mode == PathNormalization::None {
            assert_eq!(out, no_fragment, "NONE changed more than the fragment");
            continue;
        }
        let (path, query) = match out.find('?') {
            Some(i) => out.split_at(i),
            None => (&*out, ""),
        };
        assert_eq!(query, in_query, "{mode}: {input:?}: the query changed");
        assert!(
            path.starts_with('/'),
            "{mode}: {input:?} -> {out:?}: not absolute"
        );
        assert!(
            !path.contains('\\'),
            "{mode}: {input:?} -> {out:?}: backslash"
        );
        assert!(
            path.bytes()
                .all(|c| (0x21..0x7f).contains(&c) && !b"\"#<>^`{|}".contains(&c)),
            "{mode}: {input:?} -> {out:?}: a byte that should be percent-encoded"
        );
        for seg in path.split('/') {
            let dot = seg == "." || seg == ".." || seg.starts_with(".;") || seg.starts_with("..;");
            assert!(!dot, "{mode}: {input:?} -> {out:?}: dot segment {seg:?}");
        }
        if mode != PathNormalization::Base {
            assert!(
                !path.contains("//"),
                "{mode}: {input:?} -> {out:?}: `//` left"
            );
        }
        let again = normalize(&out, mode);
        assert_eq!(
            again.as_deref(),
            Ok(&*out),
            "{mode}: not idempotent: {input:?} -> {out:?}"
        );
    }
}

/// `istio_yaml`: [`load_str`] on arbitrary text, then every engine compiled from the
/// set and one request decided.
pub fn check_istio_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A `jwksUri` the input names is read only if it is a regular file of at most
    // 1 MiB (`loader::jwks`): `/dev/zero` or `/dev/stdin` is refused, not read.
    let Ok(set) = load_str(Path::new("/nonexistent/fuzz.yaml"), text) else {
        return;
    };
    let _ = PeerAuthn::new(&set, "istio-system");
    let _ = RequestAuthn::compile(&set, "istio-system");
    let Ok(engine) = Engine::compile(&set, "istio-system") else {
        return;
    };
    let workload = Workload {
        namespace: "foo".into(),
        labels: [("app".to_string(), "httpbin".to_string())].into(),
    };
    let request = Request {
        protocol: Protocol::Http,
        source_principal: Some("cluster.local/ns/foo/sa/sleep".into()),
        source_ip: Some([10, 0, 0, 1].into()),
        destination_port: 8000,
        http: Some(HttpRequest {
            method: "GET".into(),
            path: "/ip".into(),
            host: "httpbin.foo".into(),
            headers: [("x-token".to_string(), "admin".to_string())].into(),
        }),
        ..Request::default()
    };
    let _ = engine.evaluate(&workload, &request);
}

/// The public key of `policy/tests/data/jwt/rsa-2048.pem` (`kid: fuzz-rsa`), which
/// signed the seed tokens (`fuzz/make_jwt_seeds.py`).
pub const FUZZ_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"fuzz-rsa","alg":"RS256","use":"sig","n":"mT1NBt6I23uIpcQr7IJxTtTBJs6uK3mbs5-ZyT7aDLJgFHHxjAthxkb2IlqmeRLgpYG8DW7Qnc1gYqgqzJ7Zo2YAx9dytQopc9kMBppgexp7FsAFgEYSGaw2nnX8IR-RwlCnmHLliC9YLQ4HzsFF_UtpQODBaiG0ngoswkoVqKsmIxVvk6Xir7oE5F2zHMo0Y3dzEHUcUHTtcVWpk-fRsTANRQgItSdP0jzrDBdQe-rwr4KtKbhcpOoHvKFhlhSE4A7y-yW6OpiDjj-BRav9KlHBQRqAyG7ln8jc416MNkFvj_vYviCgapuYk8J7FJatj8yriDPYMCaXVONq-xpy9w","e":"AQAB"}]}"#;

fn request_authn() -> Option<&'static RequestAuthn> {
    static RA: OnceLock<Option<RequestAuthn>> = OnceLock::new();
    RA.get_or_init(|| {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
             metadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n  \
             - issuer: https://issuer.example\n    audiences: [svc-a]\n    \
             jwks: '{FUZZ_JWKS}'\n    outputPayloadToHeader: x-jwt-payload\n    \
             outputClaimToHeaders: [{{header: x-sub, claim: sub}}]\n"
        );
        let set = load_str(Path::new("/nonexistent/ra.yaml"), &yaml).ok()?;
        RequestAuthn::compile(&set, "istio-system").ok()
    })
    .as_ref()
}

/// `jwt` (policy side): a bearer token through RequestAuthentication as the proxy
/// runs it (Envoy's `jwt_authn`: the token is parsed before any signature check).
pub fn check_request_jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Some(ra) = request_authn() else {
        panic!("the fuzz RequestAuthentication does not compile");
    };
    let workload = Workload {
        namespace: "foo".into(),
        labels: Default::default(),
    };
    let http = HttpRequest {
        method: "GET".into(),
        path: "/get".into(),
        host: "httpbin.foo".into(),
        headers: [("authorization".to_string(), format!("Bearer {token}"))].into(),
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = ra.authenticate(&workload, &http, now);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Feeds every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
    fn replay(target: &str, check: fn(&[u8])) {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                eprintln!("replaying {}", path.display());
                check(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no corpus for {target}");
    }

    #[test]
    fn path_normalization_corpus() {
        replay("path_normalization", super::check_path_normalization);
    }

    #[test]
    fn istio_yaml_corpus() {
        replay("istio_yaml", super::check_istio_yaml);
    }

    #[test]
    fn jwt_corpus() {
        replay("jwt", super::check_request_jwt);
    }
}
