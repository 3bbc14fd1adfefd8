//! Which registration entries a local caller gets: its selectors, discovered from the
//! socket it connected to and its `SO_PEERCRED` credentials, matched against the
//! entries the CA holds for this node. Pure: the socket server supplies [`Caller`].
//!
//! An entry matches when every one of its selectors holds for the caller (SPIRE's
//! rule). The socket decides which entries are candidates: on a named socket
//! `<socket-dir>/NAME.sock` only entries with `socket:NAME`; on the shared socket only
//! entries without a `socket:` selector. So a named socket never hands out an identity
//! meant for the shared one, or the other way round.

use std::path::PathBuf;

pub use warden_proto::Selector;

/// What the agent knows about a connected caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The named socket it connected to; `None` for the shared socket.
    pub socket: Option<String>,
    /// `SO_PEERCRED` uid.
    pub uid: u32,
    /// `SO_PEERCRED` gid.
    pub gid: u32,
    /// The caller's executable (`/proc/PID/exe`), when it could be read.
    pub exe: Option<PathBuf>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "uid={} gid={} exe={} socket={}",
            self.uid,
            self.gid,
            self.exe
                .as_deref()
                .map_or_else(|| "unknown".into(), |p| p.display().to_string()),
            self.socket.as_deref().unwrap_or("shared")
        )
    }
}

fn holds_for(selector: &Selector, c: &Caller) -> bool {
    match selector {
        Selector::UnixUid(u) => c.uid == *u,
        Selector::UnixGid(g) => c.gid == *g,
        Selector::UnixPath(p) => c.exe.as_deref() == Some(p.as_path()),
        Selector::Socket(name) => c.socket.as_deref() == Some(name.as_str()),
    }
}

/// Whether an entry with `selectors` applies to `caller`.
pub fn matches(selectors: &[Selector], caller: &Caller) -> bool {
    let entry_socket = selectors.iter().find_map(|s| match s {
        Selector::Socket(n) => Some(n.as_str()),
        _ => None,
    });
    if entry_socket != caller.socket.as_deref() {
        return false;
    }
    !selectors.is_empty() && selectors.iter().all(|s| holds_for(s, caller))
}

/// The entries that apply to `caller`, in the order given.
pub fn select<'a, E>(
    entries: &'a [E],
    selectors_of: impl Fn(&E) -> &[Selector],
    caller: &Caller,
) -> Vec<&'a E> {
    entries
        .iter()
        .filter(|e| matches(selectors_of(e), caller))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &[&str]) -> Vec<Selector> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    fn caller(socket: Option<&str>, uid: u32, gid: u32, exe: Option<&str>) -> Caller {
        Caller {
            socket: socket.map(String::from),
            uid,
            gid,
            exe: exe.map(PathBuf::from),
        }
    }

    #[test]
    fn every_selector_must_hold() {
        let e = sel(&["unix:uid:1000", "unix:path:/usr/bin/web"]);
        assert!(matches(&e, &caller(None, 1000, 1, Some("/usr/bin/web"))));
        assert!(!matches(&e, &caller(None, 1000, 1, Some("/usr/bin/sh"))));
        assert!(!matches(&e, &caller(None, 1001, 1, Some("/usr/bin/web"))));
        // An unreadable executable never matches a path selector.
        assert!(!matches(&e, &caller(None, 1000, 1, None)));
        assert!(matches(&sel(&["unix:gid:50"]), &caller(None, 7, 50, None)));
    }

    #[test]
    fn named_sockets_and_the_shared_socket_do_not_mix() {
        let on_socket = sel(&["socket:web"]);
        let by_uid = sel(&["unix:uid:1000"]);
        let web_socket_caller = caller(Some("web"), 1000, 1, None);
        let shared_caller = caller(None, 1000, 1, None);
        assert!(matches(&on_socket, &web_socket_caller));
        assert!(!matches(&on_socket, &shared_caller));
        assert!(!matches(&on_socket, &caller(Some("db"), 1000, 1, None)));
        assert!(matches(&by_uid, &shared_caller));
        assert!(
            !matches(&by_uid, &web_socket_caller),
            "uid entries belong to the shared socket"
        );
        // Both: the socket and the uid must hold.
        let both = sel(&["socket:web", "unix:uid:1000"]);
        assert!(matches(&both, &web_socket_caller));
        assert!(!matches(&both, &caller(Some("web"), 0, 0, None)));
    }

    #[test]
    fn an_entry_without_selectors_matches_nobody() {
        assert!(!matches(&[], &caller(None, 0, 0, None)));
    }

    #[test]
    fn select_keeps_order() {
        let entries = vec![
            ("a", sel(&["unix:uid:1"])),
            ("b", sel(&["unix:gid:2"])),
            ("c", sel(&["unix:uid:9"])),
        ];
        let got = select(&entries, |e| &e.1, &caller(None, 1, 2, None));
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec!["a", "b"]);
    }
}
