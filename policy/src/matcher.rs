//! Istio's value matching (exact, `prefix*`, `*suffix`, `*` = any non-empty value),
//! path templates (`{*}`, `{**}`) and IP/CIDR blocks. Paths reach them normalized
//! ([`crate::normalize`]).

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
    /// A path template with `{*}` / `{**}` (paths only).
    Template(PathTemplate),
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

    /// Compiles a `paths`/`notPaths` value: a value with `{*}` or `{**}` is a path
    /// template (Istio's `ContainsPathTemplate`), anything else as [`StringMatch::new`].
    pub fn path(value: &str) -> Result<Self, String> {
        if PathTemplate::is_template(value) {
            PathTemplate::parse(value).map(Self::Template)
        } else {
            Ok(Self::new(value))
        }
    }

    /// Case-sensitive match.
    pub fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => v == e,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Suffix(s) => v.ends_with(s.as_str()),
            Self::Presence => !v.is_empty(),
            Self::Template(t) => t.matches(v),
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
            Self::Template(t) => t.matches(std::str::from_utf8(v).unwrap_or_default()),
        }
    }
}

impl std::fmt::Display for StringMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(e) => write!(f, "{e:?}"),
            Self::Prefix(p) => write!(f, "\"{p}*\""),
            Self::Suffix(s) => write!(f, "\"*{s}\""),
            Self::Presence => f.write_str("\"*\""),
            Self::Template(t) => write!(f, "{:?}", t.source),
        }
    }
}

/// One piece of a compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Literal text, `/` separators included.
    Lit(String),
    /// `{*}`: one path segment, one or more pchars.
    One,
    /// `{**}`: zero or more pchars or `/`.
    Any,
}

/// An Istio path template (`/api/{*}/items/{**}`), matched as Envoy's
/// `uri_template` matcher does (envoy source/extensions/path/uri_template_lib/
/// uri_template_internal.cc): Istio rewrites `{*}` to `*` and `{**}` to `**`
/// (istio pilot/pkg/security/authz/matcher/template.go); `*` is `[pchar]+`, `**` is
/// `[pchar/]*`, literal segments must be non-empty pchars, nothing may follow `**`
/// but literals, and the whole normalized path must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    pieces: Vec<Piece>,
}

/// RFC 3986 pchar as Envoy's template matcher allows it (no `*` or `=`).
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@".contains(&b)
}

impl PathTemplate {
    /// Whether Istio treats `value` as a template.
    pub fn is_template(value: &str) -> bool {
        value.contains("{*}") || value.contains("{**}")
    }

    /// Parses a template, or says what Envoy would refuse in it.
    pub fn parse(value: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid path template {value:?}: {why}"));
        // Istio's webhook (pkg/config/security CheckValidPathTemplate): braces only as
        // whole `{*}` / `{**}` segments, so `/{**}.mpd` is refused even though Envoy
        // would take `/**.mpd`.
        if let Some(seg) = value
            .trim_matches('/')
            .split('/')
            .find(|g| g.contains(['{', '}']) && *g != "{*}" && *g != "{**}")
        {
            return bad(&format!(
                "segment {seg:?} has {{ or }} other than a whole {{*}} or {{**}} segment"
            ));
        }
        let t = value.replace("{**}", "**").replace("{*}", "*");
        let Some(mut rest) = t.strip_prefix('/') else {
            return bad("it must start with /");
        };
        let mut pieces = vec![Piece::Lit("/".into())];
        let mut seen_any = false;
        let push_lit = |pieces: &mut Vec<Piece>, l: &str| match pieces.last_mut() {
            Some(Piece::Lit(prev)) => prev.push_str(l),
            _ => pieces.push(Piece::Lit(l.to_string())),
        };
        loop {
            if let Some(r) = rest.strip_prefix("**") {
                if seen_any {
                    return bad("{**} must be the last operator");
                }
                seen_any = true;
                pieces.push(Piece::Any);
                rest = r;
            } else if let Some(r) = rest.strip_prefix('*') {
                if seen_any {
                    return bad("{**} must be the last operator");
                }
                pieces.push(Piece::One);
                rest = r;
            } else {
                let end = rest.find('/').unwrap_or(rest.len());
                let lit = &rest[..end];
                if lit.is_empty() || !lit.bytes().all(is_pchar) {
                    return bad(&format!(
                        "segment {lit:?} is not a literal of unreserved or sub-delimiter characters, {{*}} or {{**}}"
                    ));
                }
                push_lit(&mut pieces, lit);
                rest = &rest[end..];
            }
            if rest.is_empty() {
                break;
            }
            if rest == "/" {
                push_lit(&mut pieces, "/");
                break;
            }
            if let Some(r) = rest.strip_prefix('/') {
                push_lit(&mut pieces, "/");
                rest = r;
            } else {
                // A suffix after an operator (Envoy's `/**.mpd`); unreachable from Istio
                // values, which the brace check above already refused.
                if rest.contains('/') || !rest.bytes().all(is_pchar) {
                    return bad(&format!("suffix {rest:?} must be literal characters only"));
                }
                push_lit(&mut pieces, rest);
                break;
            }
        }
        Ok(Self {
            source: value.to_string(),
            pieces,
        })
    }

    /// Whether the whole `path` (normalized, no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        fn go(pieces: &[Piece], s: &[u8]) -> bool {
            let Some((first, rest)) = pieces.split_first() else {
                return s.is_empty();
            };
            match first {
                Piece::Lit(l) => s.starts_with(l.as_bytes()) && go(rest, &s[l.len()..]),
                Piece::One => {
                    let run = s.iter().take_while(|b| is_pchar(**b)).count();
                    (1..=run).rev().any(|k| go(rest, &s[k..]))
                }
                Piece::Any => {
                    let run = s
                        .iter()
                        .take_while(|b| **b == b'/' || is_pchar(**b))
                        .count();
                    (0..=run).rev().any(|k| go(rest, &s[k..]))
                }
            }
        }
        go(&self.pieces, path.as_bytes())
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

impl std::fmt::Display for IpBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
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
    fn path_templates_match_as_envoy() {
        let t = |s| PathTemplate::parse(s).unwrap();
        // (template, path, matches)
        let cases = [
            ("/foo/{*}", "/foo/bar", true),
            ("/foo/{*}", "/foo/", false),
            ("/foo/{*}", "/foo/bar/baz", false),
            ("/foo/{**}", "/foo/bar/baz", true),
            ("/foo/{**}", "/foo/", true),
            ("/foo/{**}", "/foo", false),
            ("/{*}/foo/{**}/bar.tmp", "/x/foo/a/b/bar.tmp", true),
            ("/{*}/foo/{**}/bar.tmp", "/x/foo/bar.tmp", false),
            ("/{*}/foo/{**}/bar.tmp", "/x/foo//bar.tmp", true),
            ("/videos/{*}/{*}/x.m4s", "/videos/123/hls/x.m4s", true),
            ("/api/{*}/items/", "/api/v1/items/", true),
            ("/api/{*}/items/", "/api/v1/items", false),
            ("/a/{*}", "/a/b=c", false),
            ("/a/{*}", "/a/x%2Fy", true),
            ("/a/{*}", "/a/é", false),
        ];
        for (tpl, path, want) in cases {
            assert_eq!(t(tpl).matches(path), want, "{tpl} vs {path}");
        }
        for bad in [
            "foo/{*}",
            "/{**}/{*}",
            "/{**}/a/{**}",
            "/a*/{*}",
            "/a//{*}",
            "/{*}x/y",
            "/{name}/{*}",
            "/{**}.mpd",
            "/videos/{*}.m4s",
            "/a b/{*}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(matches!(
            StringMatch::path("/x/{*}").unwrap(),
            StringMatch::Template(_)
        ));
        assert_eq!(
            StringMatch::path("/x/*").unwrap(),
            StringMatch::Prefix("/x/".into())
        );
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
}
