//! A route's `corsPolicy` compiled as istiod translates it for Envoy's CORS filter
//! (istio/istio `pilot/pkg/networking/core/route/route.go` `TranslateCORSPolicy`):
//! `allowOrigins` (or, when it is empty, the deprecated `allowOrigin` strings as exact
//! matches) become origin matchers, the header lists are joined with `,`, `maxAge` is
//! whole seconds, and `unmatchedPreflights: IGNORE` turns off Envoy's
//! `forward_not_matching_preflights`. The proxy applies it (`warden-proxy`'s `cors`).

use regex::Regex;
use serde::{Serialize, Serializer};

use super::duration;
use super::model::{CorsPolicy, StringMatch, UnmatchedPreflights};
use super::table::full_regex;

/// The CORS policy of a route, in the form Envoy's `CorsPolicy` takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cors {
    /// Origin matchers; an origin is allowed when one matches it (or matches `*`).
    pub allow_origins: Vec<OriginMatch>,
    /// `access-control-allow-methods` of a preflight answer (`*`: the requested method).
    pub allow_methods: Option<String>,
    /// `access-control-allow-headers` of a preflight answer (`*`: the requested headers).
    pub allow_headers: Option<String>,
    /// `access-control-expose-headers` of an allowed origin's answers.
    pub expose_headers: Option<String>,
    /// `access-control-max-age` of a preflight answer, in seconds.
    pub max_age: Option<String>,
    /// `access-control-allow-credentials: true` on allowed answers.
    pub allow_credentials: bool,
    /// `FORWARD` (the default): a preflight from an origin not allowed goes to the
    /// app; `IGNORE`: the proxy answers it, without `access-control-allow-origin`.
    pub unmatched_preflights: UnmatchedPreflights,
}

/// One allowed-origin condition (Envoy's `StringMatcher`, case-sensitive).
#[derive(Debug, Clone)]
pub enum OriginMatch {
    /// The whole origin.
    Exact(String),
    /// Its start.
    Prefix(String),
    /// An RE2 expression matched against the whole origin (the pattern as written,
    /// and compiled).
    Regex(String, Regex),
}

impl OriginMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(_, r) => r.is_match(value),
        }
    }
}

impl PartialEq for OriginMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b))
            | (Self::Prefix(a), Self::Prefix(b))
            | (Self::Regex(a, _), Self::Regex(b, _)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for OriginMatch {
    /// As Istio writes a `StringMatch`: `{"exact": ...}`, `{"prefix": ...}` or
    /// `{"regex": ...}`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (kind, value) = match self {
            Self::Exact(v) => ("exact", v),
            Self::Prefix(v) => ("prefix", v),
            Self::Regex(v, _) => ("regex", v),
        };
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(kind, value)?;
        map.end()
    }
}

impl Cors {
    /// Compiles `policy`; an error names the field under `corsPolicy` (`field` is its
    /// path) and what is wrong.
    pub(super) fn compile(policy: &CorsPolicy, field: &str) -> Result<Self, (String, String)> {
        let allow_origins = if policy.allow_origins.is_empty() {
            policy
                .allow_origin
                .iter()
                .map(|o| OriginMatch::Exact(o.clone()))
                .collect()
        } else {
            let mut out = Vec::new();
            for (i, m) in policy.allow_origins.iter().enumerate() {
                if let Some(c) = origin_match(m, &format!("{field}.allowOrigins[{i}]"))? {
                    out.push(c);
                }
            }
            out
        };
        let joined = |list: &[String]| Some(list.join(",")).filter(|s| !s.is_empty());
        let max_age = match &policy.max_age {
            Some(t) => Some(
                duration::parse(t)
                    .map_err(|e| (format!("{field}.maxAge"), e))?
                    .as_secs()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Self {
            allow_origins,
            allow_methods: joined(&policy.allow_methods),
            allow_headers: joined(&policy.allow_headers),
            expose_headers: joined(&policy.expose_headers),
            max_age,
            allow_credentials: policy.allow_credentials.unwrap_or(false),
            unmatched_preflights: match policy.unmatched_preflights {
                Some(UnmatchedPreflights::Ignore) => UnmatchedPreflights::Ignore,
                _ => UnmatchedPreflights::Forward,
            },
        })
    }

    /// Whether `origin` is allowed (Envoy's `isOriginAllowed`: a matcher that matches
    /// the string `*`, such as `exact: "*"` or `prefix: ""`, allows every origin).
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    /// Whether a preflight from an origin not allowed goes on to the app.
    pub fn forwards_unmatched_preflights(&self) -> bool {
        self.unmatched_preflights != UnmatchedPreflights::Ignore
    }
}

/// One `allowOrigins` entry; `None` for one with no match type, which istiod leaves
/// out (`ConvertToEnvoyMatch`).
fn origin_match(m: &StringMatch, field: &str) -> Result<Option<OriginMatch>, (String, String)> {
    Ok(match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Some(OriginMatch::Exact(e.clone())),
        (None, Some(p), None) => Some(OriginMatch::Prefix(p.clone())),
        (None, None, Some(r)) => Some(OriginMatch::Regex(
            r.clone(),
            full_regex(r).map_err(|e| (format!("{field}.regex"), e))?,
        )),
        (None, None, None) => None,
        _ => {
            return Err((
                field.to_string(),
                "only one of exact, prefix and regex may be set".into(),
            ));
        }
    })
}

/// `Decision::cors` as JSON: the policy itself.
pub(super) fn serialize_shared<S: Serializer>(
    cors: &Option<std::sync::Arc<Cors>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    cors.as_deref().serialize(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<Cors, (String, String)> {
        // As the loader reads a resource: YAML to JSON, then the typed model.
        let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        let policy: CorsPolicy = serde_json::from_value(value).unwrap();
        Cors::compile(&policy, "corsPolicy")
    }

    /// Envoy's `isOriginAllowed`: each matcher is tried against `*` and the origin.
    #[test]
    fn origins_match_as_envoy_matches_them() {
        let c = compile(
            "allowOrigins: [{exact: 'https://a.example'}, {prefix: 'https://b.'}, {regex: 'https://.*\\.c\\.example'}]",
        )
        .unwrap();
        assert!(c.allows_origin("https://a.example"));
        assert!(!c.allows_origin("https://a.example.evil"));
        assert!(c.allows_origin("https://b.anything"));
        assert!(c.allows_origin("https://x.c.example"));
        // A regex matches the whole origin.
        assert!(!c.allows_origin("https://x.c.example.evil"));
        assert!(!c.allows_origin("http://x.c.example"));
        // `exact: "*"` and `prefix: ""` match `*`: every origin.
        for any in [
            "allowOrigins: [{exact: '*'}]",
            "allowOrigins: [{prefix: ''}]",
        ] {
            assert!(
                compile(any).unwrap().allows_origin("https://whoever"),
                "{any}"
            );
        }
        // No allowed origin: none is allowed.
        assert!(!compile("allowMethods: [GET]").unwrap().allows_origin("x"));
    }

    /// `TranslateCORSPolicy`: `allowOrigin` only when `allowOrigins` is empty, lists
    /// joined by `,`, `maxAge` in whole seconds, credentials off unless set.
    #[test]
    fn istiod_translation() {
        let c = compile(
            "allowOrigin: ['https://old.example', '*']\nallowMethods: [GET, POST]\nallowHeaders: [x-a, x-b]\nexposeHeaders: [x-c]\nmaxAge: 1m30.5s\n",
        )
        .unwrap();
        assert_eq!(
            c.allow_origins,
            [
                OriginMatch::Exact("https://old.example".into()),
                OriginMatch::Exact("*".into())
            ]
        );
        assert_eq!(c.allow_methods.as_deref(), Some("GET,POST"));
        assert_eq!(c.allow_headers.as_deref(), Some("x-a,x-b"));
        assert_eq!(c.expose_headers.as_deref(), Some("x-c"));
        assert_eq!(c.max_age.as_deref(), Some("90"));
        assert!(!c.allow_credentials);
        assert!(c.forwards_unmatched_preflights());
        let c = compile(
            "allowOrigin: ['https://old.example']\nallowOrigins: [{exact: 'https://new.example'}, {}]\nallowCredentials: true\nunmatchedPreflights: IGNORE\n",
        )
        .unwrap();
        assert_eq!(
            c.allow_origins,
            [OriginMatch::Exact("https://new.example".into())]
        );
        assert_eq!(c.allow_methods, None);
        assert!(c.allow_credentials);
        assert!(!c.forwards_unmatched_preflights());
        assert_eq!(
            serde_json::to_value(&c).unwrap()["allow_origins"],
            serde_json::json!([{"exact": "https://new.example"}])
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let (field, msg) = compile("allowOrigins: [{exact: a}, {regex: '(x'}]").unwrap_err();
        assert_eq!(field, "corsPolicy.allowOrigins[1].regex");
        assert!(msg.contains("not an RE2 regular expression"), "{msg}");
        let (field, _) = compile("allowOrigins: [{exact: a, prefix: b}]").unwrap_err();
        assert_eq!(field, "corsPolicy.allowOrigins[0]");
        let (field, msg) = compile("maxAge: soon").unwrap_err();
        assert_eq!(field, "corsPolicy.maxAge");
        assert!(msg.contains("not a duration"), "{msg}");
    }
}
