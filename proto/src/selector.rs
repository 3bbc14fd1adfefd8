//! Registration-entry selectors: the syntax the CA's admin API accepts and the node
//! agent matches callers against (`unix:uid:N`, `unix:gid:N`, `unix:path:/ABS`,
//! `socket:NAME`).

use std::fmt;
use std::path::PathBuf;

/// One selector of a registration entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Selector {
    /// `unix:uid:N`: the caller's user ID.
    UnixUid(u32),
    /// `unix:gid:N`: the caller's group ID.
    UnixGid(u32),
    /// `unix:path:/abs`: the caller's executable.
    UnixPath(PathBuf),
    /// `socket:NAME`: the caller connected to `<socket-dir>/NAME.sock`.
    Socket(String),
}

/// A selector string that is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "selector {0:?} is not understood: expected unix:uid:N, unix:gid:N, unix:path:/ABS or socket:NAME"
)]
pub struct SelectorError(String);

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SelectorError(s.to_string());
        match s.split_once(':').ok_or_else(err)? {
            ("unix", rest) => match rest.split_once(':').ok_or_else(err)? {
                ("uid", n) => n.parse().map(Self::UnixUid).map_err(|_| err()),
                ("gid", n) => n.parse().map(Self::UnixGid).map_err(|_| err()),
                ("path", p) if p.starts_with('/') => Ok(Self::UnixPath(PathBuf::from(p))),
                _ => Err(err()),
            },
            ("socket", name)
                if !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                Ok(Self::Socket(name.to_string()))
            }
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnixUid(n) => write!(f, "unix:uid:{n}"),
            Self::UnixGid(n) => write!(f, "unix:gid:{n}"),
            Self::UnixPath(p) => write!(f, "unix:path:{}", p.display()),
            Self::Socket(n) => write!(f, "socket:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in [
            "unix:uid:1000",
            "unix:gid:0",
            "unix:path:/usr/bin/app",
            "socket:web-1.a_b",
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
        for bad in [
            "unix:uid:-1",
            "unix:uid:abc",
            "unix:path:rel",
            "unix:pid:1",
            "socket:",
            "socket:a/b",
            "k8s:ns:x",
            "nocolon",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
        let long = format!("socket:{}", "a".repeat(65));
        assert!(long.parse::<Selector>().is_err());
    }
}
