//! Registration-entry selectors: the syntax the CA's admin API accepts and the node
//! agent matches callers against (`unix:uid:N`, `unix:gid:N`, `unix:path:/ABS`,
//! `socket:NAME`, and in Kubernetes mode `k8s:ns:NS`, `k8s:sa:SA`,
//! `k8s:pod-label:KEY:VALUE`, `k8s:pod-uid:UID`, `k8s:pod-name:NAME`,
//! `k8s:container-name:NAME`, as SPIRE's `k8s` workload attestor names them).

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
    /// `k8s:ns:NS`: the caller's pod is in namespace NS.
    K8sNs(String),
    /// `k8s:sa:SA`: the caller's pod runs as service account SA.
    K8sSa(String),
    /// `k8s:pod-label:KEY:VALUE`: the caller's pod has label KEY=VALUE.
    K8sPodLabel(String, String),
    /// `k8s:pod-uid:UID`: the caller's pod has UID.
    K8sPodUid(String),
    /// `k8s:pod-name:NAME`: the caller's pod is named NAME.
    K8sPodName(String),
    /// `k8s:container-name:NAME`: the caller runs in the pod's container NAME.
    K8sContainerName(String),
}

/// A Kubernetes name or label part: non-empty, no whitespace or ':'.
fn k8s_value(v: &str) -> Option<String> {
    (!v.is_empty() && v.len() <= 316 && !v.chars().any(|c| c.is_whitespace() || c == ':'))
        .then(|| v.to_string())
}

/// A selector string that is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "selector {0:?} is not understood: expected unix:uid:N, unix:gid:N, unix:path:/ABS, socket:NAME, k8s:ns:NS, k8s:sa:SA, k8s:pod-label:KEY:VALUE, k8s:pod-uid:UID, k8s:pod-name:NAME or k8s:container-name:NAME"
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
            ("k8s", rest) => {
                let (kind, value) = rest.split_once(':').ok_or_else(err)?;
                let one = |f: fn(String) -> Self| k8s_value(value).map(f).ok_or_else(err);
                match kind {
                    "ns" => one(Self::K8sNs),
                    "sa" => one(Self::K8sSa),
                    "pod-uid" => one(Self::K8sPodUid),
                    "pod-name" => one(Self::K8sPodName),
                    "container-name" => one(Self::K8sContainerName),
                    "pod-label" => {
                        // Label values may be empty; keys may not.
                        let (k, v) = value.split_once(':').ok_or_else(err)?;
                        let key = k8s_value(k).ok_or_else(err)?;
                        let v = if v.is_empty() {
                            String::new()
                        } else {
                            k8s_value(v).ok_or_else(err)?
                        };
                        Ok(Self::K8sPodLabel(key, v))
                    }
                    _ => Err(err()),
                }
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
            Self::K8sNs(n) => write!(f, "k8s:ns:{n}"),
            Self::K8sSa(n) => write!(f, "k8s:sa:{n}"),
            Self::K8sPodLabel(k, v) => write!(f, "k8s:pod-label:{k}:{v}"),
            Self::K8sPodUid(n) => write!(f, "k8s:pod-uid:{n}"),
            Self::K8sPodName(n) => write!(f, "k8s:pod-name:{n}"),
            Self::K8sContainerName(n) => write!(f, "k8s:container-name:{n}"),
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
            "k8s:ns:default",
            "k8s:sa:web",
            "k8s:pod-label:app.kubernetes.io/name:web",
            "k8s:pod-label:canary:",
            "k8s:pod-uid:1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
            "k8s:pod-name:web-0",
            "k8s:container-name:istio-proxy",
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
            "k8s:ns:",
            "k8s:ns:a b",
            "k8s:pod-label:app",
            "k8s:pod-label::v",
            "k8s:node:n1",
            "k8s:nocolon",
            "nocolon",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
        let long = format!("socket:{}", "a".repeat(65));
        assert!(long.parse::<Selector>().is_err());
    }
}
