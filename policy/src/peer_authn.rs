//! PeerAuthentication: which mTLS mode applies to a workload and port.
//!
//! Istio's composition (`ComposePeerAuthentication`): start from PERMISSIVE, then the
//! mesh policy (root namespace, no selector), the namespace policy (no selector), the
//! workload policy (selector matching the workload, not in the root namespace), and
//! finally that policy's `portLevelMtls` entry for the port; each level overrides
//! unless its mode is UNSET. Among several candidates of one level the oldest
//! (`creationTimestamp`, then name) wins.

use crate::authz::Workload;
use crate::loader::{ConfigSet, Loaded};
use crate::resources::{MtlsMode, PeerAuthenticationSpec};

/// The mode in force and the policies that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsDecision {
    /// STRICT, PERMISSIVE or DISABLE (never UNSET).
    pub mode: MtlsMode,
    /// `ns/name` of the policy whose setting is in force; `None` for the default.
    pub policy: Option<String>,
    /// Whether a `portLevelMtls` entry decided.
    pub port_level: bool,
}

/// PeerAuthentications of one config version.
#[derive(Debug, Clone)]
pub struct PeerAuthn {
    root_namespace: String,
    policies: Vec<Loaded<PeerAuthenticationSpec>>,
}

fn has_selector(p: &Loaded<PeerAuthenticationSpec>) -> bool {
    p.resource
        .spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

fn oldest(
    mut candidates: Vec<&Loaded<PeerAuthenticationSpec>>,
) -> Option<&Loaded<PeerAuthenticationSpec>> {
    candidates.sort_by(|a, b| {
        let key = |p: &Loaded<PeerAuthenticationSpec>| {
            (
                p.resource
                    .metadata
                    .creation_timestamp
                    .clone()
                    .unwrap_or_default(),
                p.resource.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    candidates.into_iter().next()
}

fn name(p: &Loaded<PeerAuthenticationSpec>) -> String {
    format!("{}/{}", p.resource.namespace(), p.resource.metadata.name)
}

impl PeerAuthn {
    /// Takes the PeerAuthentications of `set`.
    pub fn new(set: &ConfigSet, root_namespace: &str) -> Self {
        Self {
            root_namespace: root_namespace.to_string(),
            policies: set.peer_authentications.clone(),
        }
    }

    /// The mode for `workload` on `port`.
    pub fn mode(&self, workload: &Workload, port: u16) -> MtlsDecision {
        let mut d = MtlsDecision {
            mode: MtlsMode::Permissive,
            policy: None,
            port_level: false,
        };
        let apply = |d: &mut MtlsDecision, p: Option<&Loaded<PeerAuthenticationSpec>>| {
            if let Some(p) = p
                && let Some(m) = &p.resource.spec.mtls
                && m.mode != MtlsMode::Unset
            {
                d.mode = m.mode;
                d.policy = Some(name(p));
            }
        };
        let mesh = oldest(
            self.policies
                .iter()
                .filter(|p| p.resource.namespace() == self.root_namespace && !has_selector(p))
                .collect(),
        );
        apply(&mut d, mesh);
        let namespace = oldest(
            self.policies
                .iter()
                .filter(|p| {
                    p.resource.namespace() == workload.namespace
                        && workload.namespace != self.root_namespace
                        && !has_selector(p)
                })
                .collect(),
        );
        apply(&mut d, namespace);
        let selected = oldest(
            self.policies
                .iter()
                .filter(|p| {
                    p.resource.namespace() == workload.namespace
                        && workload.namespace != self.root_namespace
                        && has_selector(p)
                        && workload
                            .selected_by(p.resource.spec.selector.as_ref().map(|s| &s.match_labels))
                })
                .collect(),
        );
        apply(&mut d, selected);
        if let Some(p) = selected
            && let Some(ports) = &p.resource.spec.port_level_mtls
            && let Some(m) = ports.get(&u32::from(port))
            && m.mode != MtlsMode::Unset
        {
            d.mode = m.mode;
            d.policy = Some(name(p));
            d.port_level = true;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load_str;

    fn pa(ns: &str, name: &str, created: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{created}'}}\nspec: {spec}\n"
        )
    }

    fn wl(ns: &str, app: &str) -> Workload {
        Workload {
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into(),
        }
    }

    fn mode(yaml: &str, w: &Workload, port: u16) -> MtlsDecision {
        let set = load_str(std::path::Path::new("t.yaml"), yaml).unwrap();
        PeerAuthn::new(&set, "istio-system").mode(w, port)
    }

    #[test]
    fn precedence_workload_namespace_mesh() {
        let w = wl("foo", "web");
        assert_eq!(mode("", &w, 80).mode, MtlsMode::Permissive, "default");
        let mesh = pa(
            "istio-system",
            "default",
            "2026-01-01T00:00:00Z",
            "{mtls: {mode: STRICT}}",
        );
        assert_eq!(mode(&mesh, &w, 80).mode, MtlsMode::Strict);
        let ns = pa(
            "foo",
            "default",
            "2026-01-01T00:00:00Z",
            "{mtls: {mode: PERMISSIVE}}",
        );
        let d = mode(&format!("{mesh}{ns}"), &w, 80);
        assert_eq!(
            (d.mode, d.policy.as_deref()),
            (MtlsMode::Permissive, Some("foo/default"))
        );
        let workload = pa(
            "foo",
            "web",
            "2026-01-01T00:00:00Z",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}, portLevelMtls: {8443: {mode: STRICT}, 9000: {mode: UNSET}}}",
        );
        let all = format!("{mesh}{ns}{workload}");
        assert_eq!(mode(&all, &w, 80).mode, MtlsMode::Disable);
        let d = mode(&all, &w, 8443);
        assert_eq!((d.mode, d.port_level), (MtlsMode::Strict, true));
        assert_eq!(
            mode(&all, &w, 9000).mode,
            MtlsMode::Disable,
            "UNSET port inherits"
        );
        // Other workloads and namespaces are untouched.
        assert_eq!(
            mode(&all, &wl("foo", "db"), 8443).mode,
            MtlsMode::Permissive
        );
        assert_eq!(mode(&all, &wl("bar", "web"), 80).mode, MtlsMode::Strict);
    }

    #[test]
    fn unset_inherits_oldest_wins_and_root_selectors_are_ignored() {
        let w = wl("foo", "web");
        let mesh = pa(
            "istio-system",
            "default",
            "2026-01-01T00:00:00Z",
            "{mtls: {mode: STRICT}}",
        );
        let unset = pa(
            "foo",
            "default",
            "2026-01-01T00:00:00Z",
            "{mtls: {mode: UNSET}}",
        );
        assert_eq!(
            mode(&format!("{mesh}{unset}"), &w, 80).mode,
            MtlsMode::Strict
        );
        let older = pa(
            "foo",
            "b-old",
            "2025-01-01T00:00:00Z",
            "{mtls: {mode: DISABLE}}",
        );
        let newer = pa(
            "foo",
            "a-new",
            "2026-06-01T00:00:00Z",
            "{mtls: {mode: STRICT}}",
        );
        let d = mode(&format!("{newer}{older}"), &w, 80);
        assert_eq!(
            (d.mode, d.policy.as_deref()),
            (MtlsMode::Disable, Some("foo/b-old"))
        );
        let root_sel = pa(
            "istio-system",
            "sel",
            "2026-01-01T00:00:00Z",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
        );
        assert_eq!(
            mode(&format!("{mesh}{root_sel}"), &w, 80).mode,
            MtlsMode::Strict
        );
    }
}
