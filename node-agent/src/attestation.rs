//! Which registration entries a local caller gets: its selectors, discovered from the
//! socket it connected to and its `SO_PEERCRED` credentials, matched against the
//! entries the CA holds for this node. Pure: the socket server supplies [`Caller`].
//!
//! An entry matches when every one of its selectors holds for the caller (SPIRE's
//! rule). The socket decides which entries are candidates: on a named socket
//! `<socket-dir>/NAME.sock` only entries with `socket:NAME`; on the shared socket only
//! entries without a `socket:` selector. So a named socket never hands out an identity
//! meant for the shared one, or the other way round.
//!
//! In Kubernetes mode the caller is also tied to its pod ([`PodCaller`]): `k8s:`
//! selectors match its namespace, service account, labels, UID, name and container,
//! and it has its pod's identity `spiffe://TD/ns/NS/sa/SA` without any entry, as Istio
//! gives it. A caller that cannot be tied to a pod gets nothing, with the reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use warden_proto::SpiffeId;

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
    /// Kubernetes mode: the caller's pod, or why it cannot be tied to one. `None`
    /// outside Kubernetes mode.
    pub kubernetes: Option<Result<PodCaller, String>>,
}

/// The pod a caller runs in, as the API server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCaller {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Service account.
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The container the caller runs in, when known.
    pub container_name: Option<String>,
    /// Its default identity, `spiffe://TD/ns/NS/sa/SA`.
    pub identity: SpiffeId,
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
        )?;
        match &self.kubernetes {
            Some(Ok(p)) => write!(
                f,
                " pod={}/{} container={}",
                p.namespace,
                p.name,
                p.container_name.as_deref().unwrap_or("unknown")
            ),
            Some(Err(_)) => f.write_str(" pod=unknown"),
            None => Ok(()),
        }
    }
}

fn holds_for(selector: &Selector, c: &Caller) -> bool {
    let pod = match &c.kubernetes {
        Some(Ok(p)) => Some(p),
        _ => None,
    };
    let on_pod = |f: &dyn Fn(&PodCaller) -> bool| pod.is_some_and(f);
    match selector {
        Selector::K8sNs(ns) => on_pod(&|p| p.namespace == *ns),
        Selector::K8sSa(sa) => on_pod(&|p| p.service_account == *sa),
        Selector::K8sPodLabel(k, v) => on_pod(&|p| p.labels.get(k) == Some(v)),
        Selector::K8sPodUid(uid) => on_pod(&|p| p.uid == *uid),
        Selector::K8sPodName(n) => on_pod(&|p| p.name == *n),
        Selector::K8sContainerName(n) => {
            on_pod(&|p| p.container_name.as_deref() == Some(n.as_str()))
        }
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
            kubernetes: None,
        }
    }

    fn pod_caller(container: Option<&str>) -> Caller {
        Caller {
            kubernetes: Some(Ok(PodCaller {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: "u-1".into(),
                service_account: "web".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                container_name: container.map(String::from),
                identity: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap(),
            })),
            ..caller(None, 1000, 1000, Some("/usr/bin/web"))
        }
    }

    #[test]
    fn kubernetes_selectors_match_the_callers_pod() {
        let c = pod_caller(Some("app"));
        for yes in [
            &["k8s:ns:shop"][..],
            &["k8s:sa:web", "k8s:ns:shop"],
            &["k8s:pod-label:app:web"],
            &["k8s:pod-uid:u-1"],
            &["k8s:pod-name:web-0", "unix:uid:1000"],
            &["k8s:container-name:app"],
        ] {
            assert!(matches(&sel(yes), &c), "{yes:?}");
        }
        for no in [
            &["k8s:ns:other"][..],
            &["k8s:sa:web", "k8s:ns:other"],
            &["k8s:pod-label:app:db"],
            &["k8s:pod-label:tier:web"],
            &["k8s:pod-uid:u-2"],
            &["k8s:container-name:istio-proxy"],
            &["k8s:ns:shop", "unix:uid:0"],
        ] {
            assert!(!matches(&sel(no), &c), "{no:?}");
        }
        // Unknown container: container selectors never match; the others still do.
        let unknown = pod_caller(None);
        assert!(!matches(&sel(&["k8s:container-name:app"]), &unknown));
        assert!(matches(&sel(&["k8s:ns:shop"]), &unknown));
        // Outside Kubernetes mode, or without a pod, k8s selectors match nothing.
        assert!(!matches(&sel(&["k8s:ns:shop"]), &caller(None, 1, 1, None)));
        let refused = Caller {
            kubernetes: Some(Err("no pod".into())),
            ..caller(None, 1, 1, None)
        };
        assert!(!matches(&sel(&["k8s:ns:shop"]), &refused));
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
