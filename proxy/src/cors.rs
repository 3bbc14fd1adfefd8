//! A route's `corsPolicy` on a request, as Envoy's CORS filter applies the policy
//! istiod gives it (`envoy.filters.http.cors`, `cors_filter.cc`), after the route is
//! chosen and before faults and forwarding:
//!
//! - a request without `Origin` (or with an empty one) is left alone;
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
//!   allowed origin is answered here: 200, no body, `access-control-allow-origin` (the
//!   request's origin), `-allow-credentials: true` when allowed, `-allow-methods` and
//!   `-allow-headers` (`*` echoes what the preflight asked for), `-max-age`; a
//!   preflight from another origin goes to the app (`unmatchedPreflights: FORWARD`,
//!   the default) or is answered here the same way without `-allow-origin` (`IGNORE`);
//! - any other request from an allowed origin goes on, and its answer (the app's, or
//!   a local reply after this point) gets `access-control-allow-origin`,
//!   `-allow-credentials` and `-expose-headers`; from another origin, no CORS header.

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS as ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_HEADERS as ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS as ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN as ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS as EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE as MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS as REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD as REQUEST_METHOD, HeaderMap, HeaderName, HeaderValue, ORIGIN,
};
use http::{Method, Request, Response, StatusCode};

use warden_policy::route::Cors;

use crate::http::Body;
use crate::pipeline::Reply;

/// The CORS headers every answer to a request from an allowed origin gets (Envoy's
/// `encodeHeaders`).
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The request's origin, echoed.
    origin: HeaderValue,
    /// `access-control-allow-credentials: true`.
    credentials: bool,
    /// `access-control-expose-headers`.
    expose: Option<HeaderValue>,
}

impl Allowed {
    /// Sets the headers on `headers` (replacing any the app set).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(ALLOW_ORIGIN, self.origin.clone());
        if self.credentials {
            headers.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(e) = &self.expose {
            headers.insert(EXPOSE_HEADERS, e.clone());
        }
    }
}

/// Applies `policy` to `req`: `Err` is the preflight answer (flags `-`); `Ok(Some)`
/// the headers the request's answer gets; `Ok(None)` when CORS does not touch it.
pub fn filter<B>(policy: Option<&Cors>, req: &Request<B>) -> Result<Option<Allowed>, Reply> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    let headers = req.headers();
    let Some(origin) = joined(headers, &ORIGIN) else {
        return Ok(None);
    };
    let allowed = origin
        .to_str()
        .is_ok_and(|o| policy.allows_origin(o))
        .then(|| Allowed {
            origin,
            credentials: policy.allow_credentials,
            expose: policy.expose_headers.as_deref().and_then(value),
        });
    let requested_method = headers
        .get(&REQUEST_METHOD)
        .filter(|v| !v.is_empty())
        .cloned();
    let Some(requested_method) = requested_method.filter(|_| req.method() == Method::OPTIONS)
    else {
        return Ok(allowed);
    };
    if allowed.is_none() && policy.forwards_unmatched_preflights() {
        return Ok(None);
    }
    Err(preflight(
        policy,
        allowed.as_ref(),
        requested_method,
        headers,
    ))
}

/// The local answer to a preflight: 200 without a body, the policy's preflight
/// headers, then those of an allowed origin (Envoy encodes its own answer through
/// the filter's `encodeHeaders` too, so `-expose-headers` comes along).
fn preflight(
    policy: &Cors,
    allowed: Option<&Allowed>,
    requested_method: HeaderValue,
    request: &HeaderMap,
) -> Reply {
    let mut resp = Response::new(Body::local(Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    if policy.allow_credentials {
        h.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    match policy.allow_methods.as_deref() {
        Some("*") => {
            h.insert(ALLOW_METHODS, requested_method);
        }
        Some(m) => {
            if let Some(v) = value(m) {
                h.insert(ALLOW_METHODS, v);
            }
        }
        None => {}
    }
    match policy.allow_headers.as_deref() {
        // The request's list, empty when it sent none (as Envoy copies it).
        Some("*") => {
            let asked = request
                .get(&REQUEST_HEADERS)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static(""));
            h.insert(ALLOW_HEADERS, asked);
        }
        Some(list) => {
            if let Some(v) = value(list) {
                h.insert(ALLOW_HEADERS, v);
            }
        }
        None => {}
    }
    if let Some(v) = policy.max_age.as_deref().and_then(value) {
        h.insert(MAX_AGE, v);
    }
    if let Some(a) = allowed {
        a.apply(h);
    }
    Reply {
        resp: Box::new(resp),
        flags: "-",
    }
}

/// Every value of `name`, joined with `,` as Envoy keeps a repeated inline header;
/// `None` when absent or empty.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.push(b',');
        out.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&out).ok().filter(|v| !v.is_empty())
}

fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use warden_policy::route::{RouteRequest, RouteTable, TableOptions};

    use super::*;

    /// The policy of a VirtualService rule whose `corsPolicy` is `yaml` (flow style),
    /// compiled by the route table.
    fn policy(yaml: &str) -> Cors {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: default}}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {{host: r}}\n    corsPolicy: {yaml}\n"
        );
        let set = warden_policy::loader::load_str(Path::new("cors.yaml"), &text).unwrap();
        let table = RouteTable::build(&set, TableOptions::default()).unwrap();
        let d = table.decide(
            &RouteRequest {
                source_namespace: "default".into(),
                http: true,
                host: "r".into(),
                port: 80,
                method: "GET".into(),
                path: "/".into(),
                ..Default::default()
            },
            None,
        );
        (*d.cors.unwrap()).clone()
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    const POLICY: &str = "{allowOrigins: [{exact: 'https://app.example'}, {regex: 'https://.*\\.trusted\\.example'}], allowMethods: [GET, POST], allowHeaders: [x-token], exposeHeaders: [x-served-by], maxAge: 24h, allowCredentials: true}";

    /// Envoy's `TestRouteConfigSuccess`: the preflight of an allowed origin is answered
    /// with 200 and the policy's headers, and never forwarded.
    #[test]
    fn preflight_from_an_allowed_origin_is_answered() {
        let p = policy(POLICY);
        let req = request(
            "OPTIONS",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-token"),
            ],
        );
        let reply = filter(Some(&p), &req).unwrap_err();
        assert_eq!(reply.flags, "-");
        assert_eq!(reply.resp.status(), StatusCode::OK);
        let h = reply.resp.headers();
        assert_eq!(
            header(h, "access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(header(h, "access-control-allow-methods"), Some("GET,POST"));
        assert_eq!(header(h, "access-control-allow-headers"), Some("x-token"));
        assert_eq!(header(h, "access-control-max-age"), Some("86400"));
        assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            header(h, "access-control-expose-headers"),
            Some("x-served-by")
        );
        assert_eq!(header(h, "content-type"), None);
        // The regex matches the whole origin.
        let req = request(
            "OPTIONS",
            &[
                ("origin", "https://a.trusted.example"),
                ("access-control-request-method", "GET"),
            ],
        );
        assert!(filter(Some(&p), &req).is_err());
    }

    /// `*` in `allowMethods` / `allowHeaders` echoes what the preflight asked for.
    #[test]
    fn wildcards_echo_the_request() {
        let p = policy("{allowOrigins: [{exact: '*'}], allowMethods: ['*'], allowHeaders: ['*']}");
        let req = request(
            "OPTIONS",
            &[
                ("origin", "https://anyone.example"),
                ("access-control-request-method", "DELETE"),
                ("access-control-request-headers", "x-a, x-b"),
            ],
        );
        let reply = filter(Some(&p), &req).unwrap_err();
        let h = reply.resp.headers();
        // `exact: "*"` allows every origin, and the answer names the request's.
        assert_eq!(
            header(h, "access-control-allow-origin"),
            Some("https://anyone.example")
        );
        assert_eq!(header(h, "access-control-allow-methods"), Some("DELETE"));
        assert_eq!(header(h, "access-control-allow-headers"), Some("x-a, x-b"));
        assert_eq!(header(h, "access-control-max-age"), None);
        assert_eq!(header(h, "access-control-allow-credentials"), None);
    }

    /// A preflight from another origin: forwarded by default (no CORS header on the
    /// app's answer); answered without `-allow-origin` under `IGNORE`.
    #[test]
    fn unmatched_preflights_forward_or_ignore() {
        let preflight = request(
            "OPTIONS",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        );
        assert!(matches!(
            filter(Some(&policy(POLICY)), &preflight),
            Ok(None)
        ));
        let ignore = policy(
            "{allowOrigins: [{exact: 'https://app.example'}], allowMethods: [GET], maxAge: 10s, unmatchedPreflights: IGNORE}",
        );
        let reply = filter(Some(&ignore), &preflight).unwrap_err();
        assert_eq!(reply.resp.status(), StatusCode::OK);
        let h = reply.resp.headers();
        assert_eq!(header(h, "access-control-allow-origin"), None);
        assert_eq!(header(h, "access-control-allow-methods"), Some("GET"));
        assert_eq!(header(h, "access-control-max-age"), Some("10"));
        // Not a preflight: passes under IGNORE too.
        let get = request("GET", &[("origin", "https://evil.example")]);
        assert!(matches!(filter(Some(&ignore), &get), Ok(None)));
    }

    /// Envoy's `TestEncodeHeaders*` and `TestExposeHeaders`: an allowed origin's
    /// answer gets `-allow-origin`, `-allow-credentials` and `-expose-headers`.
    #[test]
    fn allowed_origins_get_headers_on_the_answer() {
        let p = policy(POLICY);
        for req in [
            request("GET", &[("origin", "https://app.example")]),
            // OPTIONS without Access-Control-Request-Method is no preflight.
            request("OPTIONS", &[("origin", "https://app.example")]),
            request(
                "OPTIONS",
                &[
                    ("origin", "https://app.example"),
                    ("access-control-request-method", ""),
                ],
            ),
        ] {
            let allowed = filter(Some(&p), &req).unwrap().unwrap();
            let mut h = HeaderMap::new();
            h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
            allowed.apply(&mut h);
            assert_eq!(
                header(&h, "access-control-allow-origin"),
                Some("https://app.example")
            );
            assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
            assert_eq!(
                header(&h, "access-control-expose-headers"),
                Some("x-served-by")
            );
            assert_eq!(header(&h, "access-control-allow-methods"), None);
        }
    }

    /// No policy, no `Origin`, an empty `Origin`, or an origin not allowed: nothing.
    #[test]
    fn requests_cors_does_not_touch() {
        let p = policy(POLICY);
        let get = request("GET", &[("origin", "https://app.example")]);
        assert!(matches!(filter(None, &get), Ok(None)));
        for req in [
            request("GET", &[]),
            request("GET", &[("origin", "")]),
            request("GET", &[("origin", "https://app.example.evil")]),
            request("OPTIONS", &[("access-control-request-method", "GET")]),
        ] {
            assert!(matches!(filter(Some(&p), &req), Ok(None)), "{req:?}");
        }
    }
}
