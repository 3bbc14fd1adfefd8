//! SPIFFE IDs, parsed and validated by the rules of the SPIFFE-ID specification.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID accepted, in bytes (the spec requires support up to 2048).
const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A validated SPIFFE ID: `spiffe://<trust-domain>[/<path>]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID, `spiffe://td/path`.
    id: String,
    /// Byte offset where the path starts (the length of `spiffe://td`).
    path_start: usize,
}

/// Why a string is not a valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The ID does not start with `spiffe://`.
    #[error("{0:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    Scheme(String),
    /// The trust domain is empty, too long, or has characters outside `[a-z0-9._-]`.
    #[error("{0:?} has an invalid trust domain: expected 1-255 characters of [a-z0-9._-]")]
    TrustDomain(String),
    /// A path segment is empty, `.` or `..`, or has characters outside `[A-Za-z0-9._-]`.
    #[error(
        "{0:?} has an invalid path: segments must be non-empty, not '.' or '..', of [A-Za-z0-9._-], with no trailing '/'"
    )]
    Path(String),
    /// The ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {0} bytes long; at most 2048 are allowed")]
    TooLong(usize),
    /// A workload identity was expected but the ID has no path.
    #[error("{0:?} names a trust domain, not a workload: a path is required")]
    NoPath(String),
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_string()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty()
            || td.len() > MAX_TRUST_DOMAIN_LEN
            || !td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(SpiffeIdError::TrustDomain(s.to_string()));
        }
        if !path.is_empty() {
            let segments_ok = path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
            if !segments_ok {
                return Err(SpiffeIdError::Path(s.to_string()));
            }
        }
        Ok(Self {
            id: s.to_string(),
            path_start: "spiffe://".len() + td.len(),
        })
    }

    /// Parses an ID that must name a workload (non-empty path), as X.509-SVID leaves do.
    pub fn parse_workload(s: &str) -> Result<Self, SpiffeIdError> {
        let id = Self::parse(s)?;
        if id.path().is_empty() {
            return Err(SpiffeIdError::NoPath(s.to_string()));
        }
        Ok(id)
    }

    /// Builds Istio's identity for a Kubernetes service account: `spiffe://td/ns/NS/sa/SA`.
    pub fn for_service_account(td: &str, ns: &str, sa: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("spiffe://{td}/ns/{ns}/sa/{sa}"))
    }

    /// Builds the identity of a Warden node: `spiffe://td/warden/node/NAME`.
    pub fn for_node(td: &str, node: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("spiffe://{td}/warden/node/{node}"))
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.path_start]
    }

    /// The path, starting with `/`, or empty.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The ID without its scheme, as Istio policies write principals: `cluster.local/ns/a/sa/b`.
    pub fn principal(&self) -> &str {
        &self.id["spiffe://".len()..]
    }

    /// `(namespace, service account)` when the path is Istio's `/ns/NS/sa/SA`.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The node name when this is a Warden node ID `/warden/node/NAME`.
    pub fn node_name(&self) -> Option<&str> {
        let name = self.path().strip_prefix("/warden/node/")?;
        (!name.contains('/')).then_some(name)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identity() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/web");
        assert_eq!(id.service_account(), Some(("default", "web")));
        assert_eq!(id.node_name(), None);
    }

    #[test]
    fn node_ids() {
        let id = SpiffeId::for_node("example.org", "node-1").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/warden/node/node-1");
        assert_eq!(id.node_name(), Some("node-1"));
        assert_eq!(id.service_account(), None);
    }

    #[test]
    fn rejects_invalid_ids() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://Cluster.local/x",
            "spiffe://td:443/x",
            "spiffe://user@td/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/./x",
            "spiffe://td/../x",
            "spiffe://td/x?q=1",
            "spiffe://td/x#f",
            "spiffe://td/x%20y",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2040));
        assert!(matches!(
            SpiffeId::parse(&long),
            Err(SpiffeIdError::TooLong(_))
        ));
        assert!(matches!(
            SpiffeId::parse_workload("spiffe://td"),
            Err(SpiffeIdError::NoPath(_))
        ));
    }

    #[test]
    fn accepts_trust_domain_only_and_limits() {
        assert!(SpiffeId::parse("spiffe://a-b_c.d").is_ok());
        let td = "a".repeat(255);
        assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_ok());
        let td = "a".repeat(256);
        assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_err());
    }
}
