//! What an SDS stream does with each `DiscoveryRequest`, as istio-agent decides it
//! (`ShouldRespond` in istio's `pkg/xds`), kept free of I/O and protobuf types so every
//! case is a unit test. The SDS server feeds it the request's fields and acts on the
//! [`Decision`].
//!
//! - `error_detail` set: a NACK. Logged and counted; nothing is sent.
//! - No nonce, or nothing sent yet on this stream: a new watch or a reconnect. Respond
//!   with every requested resource.
//! - A nonce that is not the last one sent: stale (a response crossed it). Ignored.
//! - The last nonce with the same names: an ACK. Nothing is sent.
//! - The last nonce with new names: respond with the added names only; removed names
//!   stop being watched.

use std::collections::BTreeSet;

/// The parts of a `DiscoveryRequest` that decide the answer.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `response_nonce`: the nonce of the response being (N)ACKed, empty on a new stream.
    pub response_nonce: &'a str,
    /// `resource_names`.
    pub resource_names: &'a [String],
    /// `error_detail.message` when the request is a NACK.
    pub error_detail: Option<&'a str>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send these resources (sorted, deduplicated).
    Respond(Vec<String>),
    /// The client accepted the last response; send nothing.
    Ack,
    /// The client rejected the last response; send nothing, log and count it.
    Nack(String),
    /// The request answers an older response; ignore it.
    Stale,
}

/// Per-stream state: what was last sent and what is watched.
#[derive(Debug, Default, Clone)]
pub struct StreamState {
    last_nonce: Option<String>,
    watched: BTreeSet<String>,
}

impl StreamState {
    /// Decides what to do with a request and updates the watched names.
    pub fn on_request(&mut self, req: RequestView<'_>) -> Decision {
        if let Some(err) = req.error_detail {
            // istio-agent sends nothing after a NACK. The watch is left as it was.
            return Decision::Nack(err.to_string());
        }
        let requested: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        if req.response_nonce.is_empty() || self.last_nonce.is_none() {
            self.watched = requested.clone();
            return Decision::Respond(requested.into_iter().collect());
        }
        if self.last_nonce.as_deref() != Some(req.response_nonce) {
            return Decision::Stale;
        }
        let added: Vec<String> = requested.difference(&self.watched).cloned().collect();
        self.watched = requested;
        if added.is_empty() {
            Decision::Ack
        } else {
            Decision::Respond(added)
        }
    }

    /// Records a response sent with `nonce` (a reply or a push).
    pub fn on_sent(&mut self, nonce: String) {
        self.last_nonce = Some(nonce);
    }

    /// Whether a change of `name` (a rotation, a new bundle) must be pushed here.
    pub fn watches(&self, name: &str) -> bool {
        self.watched.contains(name)
    }

    /// The watched names.
    pub fn watched(&self) -> impl Iterator<Item = &str> {
        self.watched.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn req<'a>(nonce: &'a str, names: &'a [String], err: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            response_nonce: nonce,
            resource_names: names,
            error_detail: err,
        }
    }

    #[test]
    fn first_request_is_answered_with_every_name() {
        let mut s = StreamState::default();
        let n = names(&["ROOTCA", "default", "default"]);
        assert_eq!(
            s.on_request(req("", &n, None)),
            Decision::Respond(names(&["ROOTCA", "default"]))
        );
        assert!(s.watches("default") && s.watches("ROOTCA"));
    }

    #[test]
    fn ack_of_the_last_response_sends_nothing() {
        let mut s = StreamState::default();
        let n = names(&["default"]);
        s.on_request(req("", &n, None));
        s.on_sent("n1".into());
        assert_eq!(s.on_request(req("n1", &n, None)), Decision::Ack);
    }

    #[test]
    fn nack_sends_nothing_and_keeps_the_watch() {
        let mut s = StreamState::default();
        let n = names(&["default"]);
        s.on_request(req("", &n, None));
        s.on_sent("n1".into());
        let none: Vec<String> = vec![];
        assert_eq!(
            s.on_request(req("n1", &none, Some("bad cert"))),
            Decision::Nack("bad cert".into())
        );
        assert!(s.watches("default"));
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let mut s = StreamState::default();
        let n = names(&["default"]);
        s.on_request(req("", &n, None));
        s.on_sent("n1".into());
        // A rotation push went out as n2 while the client was ACKing n1.
        s.on_sent("n2".into());
        assert_eq!(s.on_request(req("n1", &n, None)), Decision::Stale);
        assert_eq!(s.on_request(req("n2", &n, None)), Decision::Ack);
        // Even a NACK of an old nonce is only a NACK: nothing is sent.
        assert!(matches!(
            s.on_request(req("n1", &n, Some("x"))),
            Decision::Nack(_)
        ));
    }

    #[test]
    fn added_names_are_answered_alone_and_removed_ones_unwatched() {
        let mut s = StreamState::default();
        let one = names(&["default"]);
        s.on_request(req("", &one, None));
        s.on_sent("n1".into());
        let two = names(&["default", "ROOTCA"]);
        assert_eq!(
            s.on_request(req("n1", &two, None)),
            Decision::Respond(names(&["ROOTCA"]))
        );
        s.on_sent("n2".into());
        let only_root = names(&["ROOTCA"]);
        assert_eq!(s.on_request(req("n2", &only_root, None)), Decision::Ack);
        assert!(!s.watches("default") && s.watches("ROOTCA"));
    }

    #[test]
    fn a_request_without_nonce_is_a_reconnect_and_is_answered() {
        let mut s = StreamState::default();
        let n = names(&["default"]);
        s.on_request(req("", &n, None));
        s.on_sent("n1".into());
        assert_eq!(
            s.on_request(req("", &n, None)),
            Decision::Respond(names(&["default"]))
        );
    }

    #[test]
    fn a_nonce_before_anything_was_sent_is_treated_as_a_new_watch() {
        // Envoy reconnecting to a restarted agent carries the old agent's nonce.
        let mut s = StreamState::default();
        let n = names(&["default"]);
        assert_eq!(
            s.on_request(req("from-old-agent", &n, None)),
            Decision::Respond(names(&["default"]))
        );
    }
}
