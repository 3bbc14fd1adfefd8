//! RequestAuthentication (`ValidateRequestAuthentication`, `validateJwtRule`): audiences,
//! issuer, `jwksUri` (Warden also reads local files, with a warning), inline `jwks`,
//! token locations, output headers and the fetch timeout as a Go duration. The error
//! checks are shared with [`crate::request_authn`]'s compiler ([`jwt_rule_errors`]).

use super::metadata::{dry_run_annotation, selection};
use super::{Findings, Severity};
use crate::resources::{JwtRule, RequestAuthenticationSpec, Resource};

pub(super) fn request_authentication(r: &Resource<RequestAuthenticationSpec>) -> Findings {
    let mut f = Findings::default();
    let spec = &r.spec;
    dry_run_annotation(&r.metadata, None, &mut f);
    selection(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        spec.target_refs.as_ref(),
        &mut f,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        jwt_rule(&format!("spec.jwtRules[{i}]"), rule, &mut f);
    }
    f
}

/// The webhook's errors for one `jwtRules` entry at `path` (no warnings): what
/// [`crate::request_authn`] refuses before it reads any keys, so the runtime and
/// `warden validate` cannot disagree. `(field path, message)` pairs.
pub(crate) fn jwt_rule_errors(path: &str, rule: &JwtRule) -> Vec<(String, String)> {
    let mut f = Findings::default();
    jwt_rule(path, rule, &mut f);
    f.0.into_iter()
        .filter(|x| x.severity == Severity::Error)
        .map(|x| (x.path, x.message))
        .collect()
}

/// `validateJwtRule`.
fn jwt_rule(path: &str, rule: &JwtRule, f: &mut Findings) {
    for (i, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            f.error(
                format!("{path}.audiences[{i}]"),
                "audience must be non-empty string",
            );
        }
    }
    let uri = rule.jwks_uri.as_deref().unwrap_or_default();
    if rule.issuer.is_empty() && uri.is_empty() {
        f.error(
            format!("{path}.issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    if !uri.is_empty() {
        jwks_uri(&format!("{path}.jwksUri"), uri, f);
    }
    if let Some(jwks) = rule.jwks.as_deref().filter(|j| !j.is_empty())
        && let Err(e) = jwks_document(jwks)
    {
        f.error(format!("{path}.jwks"), format!("jwks parse error: {e}"));
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            f.error(
                format!("{path}.fromHeaders[{i}].name"),
                "location header name must be non-empty string",
            );
        }
    }
    for (i, q) in rule.from_params.iter().enumerate() {
        if q.is_empty() {
            f.error(
                format!("{path}.fromParams[{i}]"),
                "location query must be non-empty string",
            );
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            f.error(
                format!("{path}.fromCookies[{i}]"),
                "cookie name must be non-empty string",
            );
        }
    }
    for (i, o) in rule.output_claim_to_headers.iter().enumerate() {
        let p = format!("{path}.outputClaimToHeaders[{i}]");
        if o.claim.is_empty() || o.header.is_empty() {
            f.error(
                p,
                "outputClaimToHeaders header and claim value must be non-empty string",
            );
        } else if !strict_header_name(&o.header) {
            f.error(
                format!("{p}.header"),
                format!("header name {} is not a valid header name", o.header),
            );
        }
    }
    if let Some(t) = &rule.timeout
        && let Err(e) = duration(t)
    {
        f.error(format!("{path}.timeout"), e);
    }
}

/// `ValidateStrictHTTPHeaderName`: `^[-A-Za-z0-9]+$`.
fn strict_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `security.ParseJwksURI`: Istio fetches `http`/`https` URIs only. Warden also reads
/// `file://` URIs and local paths; those are accepted with a warning that Istio would
/// refuse them.
fn jwks_uri(path: &str, uri: &str, f: &mut Findings) {
    let scheme = uri
        .split_once(':')
        .map(|(s, _)| s)
        .filter(|s| {
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
        .map(str::to_ascii_lowercase);
    match scheme.as_deref() {
        Some("http" | "https") => {
            if let Err(e) = authority_port(uri) {
                f.error(path, e);
            }
        }
        Some("file") | None => f.warning(
            path,
            format!(
                "URI scheme {:?} is not supported by Istio (http and https only); \
                 Warden reads the local file",
                scheme.as_deref().unwrap_or_default()
            ),
        ),
        Some(other) => f.error(path, format!("URI scheme {other:?} is not supported")),
    }
}

/// Go's `url.Parse` on `scheme://host:port/...`: the port, if any, is decimal.
fn authority_port(uri: &str) -> Result<(), String> {
    let Some((_, rest)) = uri.split_once("://") else {
        return Ok(());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = if let Some(v6) = host.strip_prefix('[') {
        match v6.split_once(']') {
            Some((_, after)) => after.strip_prefix(':').unwrap_or(after),
            None => return Err(format!("parse {uri:?}: missing ']' in host")),
        }
    } else {
        host.rsplit_once(':').map_or("", |(_, p)| p)
    };
    if port.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "parse {uri:?}: invalid port \":{port}\" after host"
        ))
    }
}

/// `jwk.Parse`: a JSON Web Key, or a set (`{"keys": [...]}`) of them, each with `kty`.
fn jwks_document(text: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let has_kty = |k: &serde_json::Value| k.get("kty").is_some_and(serde_json::Value::is_string);
    match v.get("keys") {
        Some(serde_json::Value::Array(keys)) => match keys.iter().position(|k| !has_kty(k)) {
            Some(i) => Err(format!("keys[{i}]: a key needs a string \"kty\"")),
            None => Ok(()),
        },
        Some(_) => Err("\"keys\" must be a list".into()),
        None if has_kty(&v) => Ok(()),
        None => Err("expected a JSON Web Key or a set {\"keys\": [...]}".into()),
    }
}

/// `agent.ValidateDuration` on a Go duration (`5s`, `1m30s`, `250ms`): at least 1ms,
/// whole milliseconds.
fn duration(text: &str) -> Result<(), String> {
    let nanos = go_duration(text).ok_or_else(|| format!("invalid duration {text:?}"))?;
    if nanos < 1_000_000 {
        Err("duration must be greater than 1ms".into())
    } else if nanos % 1_000_000 != 0 {
        Err("only durations to ms precision are supported".into())
    } else {
        Ok(())
    }
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub(super) fn go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let n = digits(rest);
        let whole = &rest[..n];
        rest = &rest[n..];
        let mut fraction = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = digits(r);
            fraction = &r[..n];
            rest = &r[n..];
        }
        if (whole.is_empty() && fraction.is_empty()) || whole.len() > 20 {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: i128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += whole.parse::<i128>().unwrap_or(0) * unit;
        let fraction = &fraction[..fraction.len().min(20)];
        if !fraction.is_empty() {
            let scale = 10i128.pow(u32::try_from(fraction.len()).ok()?);
            total += fraction.parse::<i128>().ok()? * unit / scale;
        }
    }
    Some(if negative { -total } else { total })
}
