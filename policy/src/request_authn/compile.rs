//! RequestAuthentications into JWT providers, as istiod's `convertToEnvoyJwtConfig`
//! configures them: Istio's `validateJwtRule` checks (shared with `warden validate`), the
//! token locations (Envoy's defaults when none is set), output headers, space-delimited
//! claims and the keys. A pure function of the loaded set: JWKS files were read by the
//! loader ([`ConfigSet::jwks_files`]); here each is parsed once per compile.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::jwks::{Key, parse_jwks};
use super::verify::sanitize_audience;
use super::{CompileError, Policy, Provider};
use crate::loader::jwks::jwks_path;
use crate::loader::{ConfigSet, Loaded};
use crate::resources::{JwtRule, RequestAuthenticationSpec};

/// Claims always split on spaces (policy_applier.go `buildSpaceDelimitedClaims`).
const DEFAULT_SPACE_DELIMITED: [&str; 2] = ["permission", "scope"];

/// The keys of the JWKS files of one compile, parsed once each from the loaded set.
#[derive(Debug)]
pub(super) struct Keys<'s> {
    set: &'s ConfigSet,
    parsed: HashMap<PathBuf, Result<Arc<Vec<Key>>, String>>,
}

impl<'s> Keys<'s> {
    pub(super) fn new(set: &'s ConfigSet) -> Self {
        Self {
            set,
            parsed: HashMap::new(),
        }
    }

    /// The keys of the JWKS file at `path` (as [`jwks_path`] resolved it), or why there
    /// are none.
    fn file(&mut self, path: &Path) -> Result<Arc<Vec<Key>>, String> {
        let set = self.set;
        self.parsed
            .entry(path.to_path_buf())
            .or_insert_with(|| match set.jwks_files.get(path) {
                Some(Ok(text)) => parse_jwks(text)
                    .map(Arc::new)
                    .map_err(|e| format!("the JWKS file {}: {e}", path.display())),
                Some(Err(e)) => Err(e.clone()),
                None => Err(format!(
                    "the JWKS file {} was not read: it is not in the loaded config set (load it with warden_policy::loader)",
                    path.display()
                )),
            })
            .clone()
    }
}

/// One RequestAuthentication: a provider per rule, or every error of every rule.
pub(super) fn compile_policy(
    p: &Loaded<RequestAuthenticationSpec>,
    keys: &mut Keys<'_>,
) -> Result<Policy, Vec<CompileError>> {
    let name = format!("{}/{}", p.resource.namespace(), p.resource.metadata.name);
    let mut errors = Vec::new();
    let mut providers = Vec::new();
    for (i, rule) in p.resource.spec.jwt_rules.iter().enumerate() {
        match compile_rule(&name, i, rule, &p.origin.file, keys) {
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
    yaml_file: &Path,
    keys: &mut Keys<'_>,
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
    let keys = match load_keys(rule, yaml_file, keys) {
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
/// ignored"); `jwksUri` is a path or `file://` URL, relative to the YAML file's directory,
/// whose text the loader read into the set ([`jwks_path`] resolves it the same way).
/// On error: the field and the message.
fn load_keys(
    rule: &JwtRule,
    yaml_file: &Path,
    keys: &mut Keys<'_>,
) -> Result<Arc<Vec<Key>>, (&'static str, String)> {
    if let Some(inline) = rule.inline_jwks() {
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
    let Some(path) = jwks_path(uri, yaml_file) else {
        return Err((
            "jwksUri",
            format!("{uri:?}: unsupported scheme; expected a path or a file:// URL"),
        ));
    };
    keys.file(&path).map_err(|e| ("jwksUri", e))
}
