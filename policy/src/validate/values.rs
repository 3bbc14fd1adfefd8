//! The value checks of istio/istio `pkg/config/security/security.go`: empty values, IP
//! addresses and CIDRs as Go's `netip` parses them, ports, service accounts and path
//! templates.

use std::net::IpAddr;

use super::Findings;

/// `CheckEmptyValues`: reports empty strings; returns the other values with their paths.
pub(super) fn non_empty<'a>(
    path: &str,
    values: &'a Option<Vec<String>>,
    f: &mut Findings,
) -> Vec<(String, &'a str)> {
    let mut out = Vec::new();
    for (i, v) in values.iter().flatten().enumerate() {
        let p = format!("{path}[{i}]");
        if v.is_empty() {
            f.error(p, "empty value not allowed");
        } else {
            out.push((p, v.as_str()));
        }
    }
    out
}

/// `ValidateIPs`: an address (`netip.ParseAddr`) or, with a `/`, a CIDR
/// (`netip.ParsePrefix`).
pub(super) fn ip_or_cidr(v: &str) -> Result<(), String> {
    let Some((addr, bits)) = v.split_once('/') else {
        return address(v).map_err(|()| format!("bad IP address ({v})"));
    };
    let bad = |why: &str| Err(format!("bad CIDR range ({v}): {why}"));
    if addr.contains('%') {
        return bad("IPv6 zones cannot be present in a prefix");
    }
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return bad(&format!("ParseAddr({addr:?}): not an IP address"));
    };
    let digits = !bits.is_empty() && bits.len() <= 3 && bits.bytes().all(|b| b.is_ascii_digit());
    if !digits || (bits.len() > 1 && bits.starts_with('0')) {
        return bad(&format!("bad bits after slash: {bits:?}"));
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits.parse::<u32>() {
        Ok(n) if n <= max => Ok(()),
        _ => bad("prefix length out of range"),
    }
}

/// `netip.ParseAddr`: IPv4, IPv6, IPv6 with a zone (`fe80::1%eth0`).
fn address(v: &str) -> Result<(), ()> {
    match v.split_once('%') {
        Some((ip, zone)) if !zone.is_empty() => {
            ip.parse::<std::net::Ipv6Addr>().map(drop).map_err(drop)
        }
        Some(_) => Err(()),
        None => v.parse::<IpAddr>().map(drop).map_err(drop),
    }
}

/// `ValidatePorts`: a decimal number 0-65535 (`strconv.ParseUint`: no sign, no spaces).
pub(super) fn port(v: &str) -> Result<(), String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port ({v}): not a number"));
    }
    match v.parse::<u64>() {
        Ok(p) if p <= 65535 => Ok(()),
        _ => Err(format!("bad port ({v}): out of range 0-65535")),
    }
}

/// `CheckServiceAccount`, on the list: at most 16 values.
pub(super) fn account_count(n: usize) -> Result<(), String> {
    if n > 16 {
        Err("may not have more than 16 values".into())
    } else {
        Ok(())
    }
}

/// `CheckServiceAccount`, on one non-empty value: `sa` or `ns/sa`, no `*`, at most 320
/// characters.
pub(super) fn service_account(v: &str) -> Result<(), String> {
    const FORMAT: &str = "expected format 'serviceAccount' or 'namespace/serviceAccount'";
    if v.contains('*') {
        return Err("wildcard not allowed".into());
    }
    if v.matches('/').count() > 1 {
        return Err(format!("{FORMAT}, found {v:?}"));
    }
    if v.len() > 320 {
        return Err(format!("value cannot exceed 320 characters, found {v:?}"));
    }
    match v.split_once('/') {
        Some(("", _)) => Err(format!("{FORMAT}, found empty namespace {v:?}")),
        Some((_, "")) => Err(format!("{FORMAT}, found empty serviceAccount {v:?}")),
        _ => Ok(()),
    }
}

/// `CheckValidPathTemplate`: `{*}` and `{**}` only as whole segments, `{**}` last, no
/// other `{`/`}`; with a template, every other segment a valid literal (RFC 3986 pchar).
/// The message shows the path without its outer slashes, as Istio's does.
pub(super) fn path_template(value: &str) -> Result<(), String> {
    let template = value.contains("{*}") || value.contains("{**}");
    let trimmed = value.trim_matches('/');
    let bad = |why: String| Err(format!("invalid or unsupported path {trimmed}: {why}"));
    let mut any_seen = false;
    for segment in trimmed.split('/') {
        match segment {
            "{*}" | "{**}" if any_seen => return bad("{**} is not the last operator".into()),
            "{*}" => continue,
            "{**}" => {
                any_seen = true;
                continue;
            }
            _ => {}
        }
        if segment.contains(['{', '}']) {
            return bad("contains '{' or '}' beyond a supported path template".into());
        }
        let literal = !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b));
        if template && !literal {
            return bad(format!(
                "contains segment {segment} with invalid string literal"
            ));
        }
    }
    Ok(())
}
