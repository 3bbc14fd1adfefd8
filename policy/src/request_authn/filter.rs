//! What Envoy's `jwt_authn` filter does with one request (`verifier.cc`,
//! `authenticator.cc`): each provider's output headers removed first, its tokens verified
//! (the first failure ends it), Istio's `requires_any` over the providers, and for a
//! verified token the payload and claim headers added and the token stripped; the
//! changes are recorded as [`HeaderEdit`]s.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::extract::{Found, Location, extract, parse_query};
use super::verify::Verified;
use super::{Failure, HeaderEdit, Provider};
use crate::authz::HttpRequest;

/// tree looks at).
#[derive(Debug)]
pub(super) enum Status {
    Ok,
    /// `JwtMissed`: no token at the provider's locations.
    Missed,
    Failed(Failure),
}

/// The request as the filter changes it while it verifies, and the edits made (no
/// `Debug`: its headers may hold tokens).
pub(super) struct Exchange<'p> {
    /// Lowercase names.
    pub(super) headers: BTreeMap<String, String>,
    pub(super) path: String,
    pub(super) edits: Vec<HeaderEdit>,
    /// The payload metadata: every verified token overwrites it (verifier.cc
    /// `addExtractedData` under Istio's single `payload_in_metadata` key).
    pub(super) identity: Option<(&'p Provider, Map<String, Value>)>,
}

impl<'p> Exchange<'p> {
    pub(super) fn new(http: &HttpRequest) -> Self {
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
    pub(super) fn any_provider_or_all_optional(
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
    pub(super) fn run(&mut self, p: &'p Provider, now: u64) -> Status {
        for h in p.output_headers() {
            self.remove_header(h);
        }
        let found = extract(p, &self.headers, &self.path);
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
pub(super) fn claim_header_value(claims: &Map<String, Value>, path: &str) -> Option<String> {
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
