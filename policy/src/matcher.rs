//! Istio's value matching (exact, `prefix*`, `*suffix`, `*` = any non-empty value),
//! IP/CIDR blocks, and the default (`BASE`) path normalization.

use std::net::IpAddr;

/// A compiled string match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    /// The whole value.
    Exact(String),
    /// `abc*`: starts with `abc` (and may equal it).
    Prefix(String),
    /// `*abc`: ends with `abc`.
    Suffix(String),
    /// `*`: any non-empty value.
    Presence,
}

impl StringMatch {
    /// Compiles an Istio value: only one leading or trailing `*` is special.
    pub fn new(value: &str) -> Self {
        if value == "*" {
            Self::Presence
        } else if let Some(p) = value.strip_suffix('*') {
            Self::Prefix(p.to_string())
        } else if let Some(s) = value.strip_prefix('*') {
            Self::Suffix(s.to_string())
        } else {
            Self::Exact(value.to_string())
        }
    }

    /// Case-sensitive match.
    pub fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => v == e,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Suffix(s) => v.ends_with(s.as_str()),
            Self::Presence => !v.is_empty(),
        }
    }

    /// ASCII case-insensitive match (hosts), without allocating.
    pub fn matches_ignore_case(&self, v: &str) -> bool {
        let (v, n) = (v.as_bytes(), |p: &String| p.len());
        match self {
            Self::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
            Self::Prefix(p) => v.len() >= n(p) && v[..n(p)].eq_ignore_ascii_case(p.as_bytes()),
            Self::Suffix(s) => {
                v.len() >= n(s) && v[v.len() - n(s)..].eq_ignore_ascii_case(s.as_bytes())
            }
            Self::Presence => !v.is_empty(),
        }
    }
}

/// An IP address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the block (IPv4 and IPv6 never match each other).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Istio's default path normalization (`BASE`): the query and fragment are dropped,
/// `\` becomes `/`, the unreserved characters `%2D %2E %30-%39 %41-%5A %5F %61-%7A
/// %7E` are decoded once, and dot segments are removed (RFC 3986 5.2.4). `%00` is an
/// error (Envoy answers 400).
pub fn normalize_path(path: &str) -> Result<String, String> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            // Both are ASCII, so this slice is on character boundaries.
            let hex = &path[i + 1..i + 3];
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                if v == 0 {
                    return Err("the path contains %00".into());
                }
                let unreserved =
                    v == b'-' || v == b'.' || v == b'_' || v == b'~' || v.is_ascii_alphanumeric();
                if unreserved {
                    decoded.push(char::from(v));
                } else {
                    decoded.push('%');
                    decoded.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        if b == b'\\' {
            decoded.push('/');
        } else {
            // Push the whole UTF-8 character.
            let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
            decoded.push(ch);
            i += ch.len_utf8();
            continue;
        }
        i += 1;
    }
    Ok(remove_dot_segments(&decoded))
}

/// RFC 3986 section 5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > usize::from(absolute) {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if absolute && !joined.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matching_is_istios() {
        let m = StringMatch::new;
        assert!(m("abc").matches("abc") && !m("abc").matches("abcd"));
        assert!(
            m("abc*").matches("abc") && m("abc*").matches("abcd") && !m("abc*").matches("xabc")
        );
        assert!(
            m("*abc").matches("abc") && m("*abc").matches("xabc") && !m("*abc").matches("abcx")
        );
        assert!(m("*").matches("x") && !m("*").matches(""));
        // Only one leading or trailing star is special.
        assert!(m("a*c").matches("a*c") && !m("a*c").matches("abc"));
        assert!(m("*.Example.COM").matches_ignore_case("api.example.com"));
        assert!(!m("/Admin").matches("/admin"));
    }

    #[test]
    fn ip_blocks() {
        let b = |s| IpBlock::parse(s).unwrap();
        assert!(b("10.0.0.0/8").contains("10.1.2.3".parse().unwrap()));
        assert!(!b("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(b("10.1.2.3").contains("10.1.2.3".parse().unwrap()));
        assert!(b("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(!b("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(b("2001:db8::/32").contains("2001:db8:1::5".parse().unwrap()));
        assert!(!b("2001:db8::/32").contains("2001:db9::1".parse().unwrap()));
        assert!(IpBlock::parse("10.0.0.0/33").is_err());
        assert!(IpBlock::parse("10.0.0").is_err());
        assert!(IpBlock::parse("::/129").is_err());
    }

    #[test]
    fn base_normalization() {
        let n = |s| normalize_path(s).unwrap();
        assert_eq!(n("/a/b/../c"), "/a/c");
        assert_eq!(n("/a/./b/"), "/a/b/");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/a\\..\\admin"), "/admin");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/a%2e%2e/x"), "/a../x");
        assert_eq!(n("/a/%2E%2E/admin"), "/admin");
        assert_eq!(n("/a%2fb"), "/a%2Fb", "%2F stays encoded in BASE");
        assert_eq!(n("/info?x=1#f"), "/info");
        assert_eq!(n("/a/b/.."), "/a/");
        assert!(normalize_path("/a%00b").is_err());
        assert_eq!(n("/%zz"), "/%zz");
        assert_eq!(n("/é/x"), "/é/x");
    }
}
