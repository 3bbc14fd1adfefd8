//! Finding a provider's tokens in a request (Envoy `extractor.cc`): its headers with their
//! prefixes, query parameters (percent-decoded) and cookies, in Envoy's order.

use std::collections::BTreeMap;

use super::Provider;

#[derive(Debug)]
pub(super) enum Location {
    Header(String),
    Param(String),
    Cookie,
}

/// A token and where it was found (no `Debug`: it holds the token).
pub(super) struct Found {
    pub(super) token: String,
    pub(super) at: Location,
}

/// extractor.cc `extract`: headers (map order), then query parameters, then cookies.
pub(super) fn extract(p: &Provider, headers: &BTreeMap<String, String>, path: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for (name, prefix) in &p.headers {
        let Some(value) = headers.get(name) else {
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
        let query = parse_query(path);
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
        let cookies = parse_cookies(headers.get("cookie").map_or("", String::as_str));
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

/// extractor.cc `extractJWT`: after the prefix, skip to the first base64url-or-dot
/// character and take the run of them; if there is none, the whole value.
pub(super) fn extract_jwt(value: &str, after: usize) -> &str {
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
pub(super) fn parse_query(path: &str) -> Vec<(String, String)> {
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
pub(super) fn percent_decode(s: &str) -> String {
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
pub(super) fn parse_cookies(header: &str) -> Vec<(&str, &str)> {
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
