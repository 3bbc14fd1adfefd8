//! PeerAuthentication (`ValidatePeerAuthentication`): port-level mTLS only with a
//! workload selector, ports in range, and a warning for a selector in the root namespace.

use super::metadata::{dry_run_annotation, workload_selector};
use super::{Findings, Options};
use crate::resources::{PeerAuthenticationSpec, Resource};

pub(super) fn peer_authentication(
    r: &Resource<PeerAuthenticationSpec>,
    options: &Options,
) -> Findings {
    let mut f = Findings::default();
    let spec = &r.spec;
    dry_run_annotation(&r.metadata, None, &mut f);
    let labelled = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if let Some(ports) = &spec.port_level_mtls {
        if ports.is_empty() {
            f.error(
                "spec.portLevelMtls",
                "port level mTLS, if defined, must have at least one element",
            );
        } else if !labelled {
            f.error(
                "spec.portLevelMtls",
                "mesh/namespace peer authentication cannot have port level mTLS",
            );
        }
        for port in ports.keys().filter(|p| **p == 0 || **p > 65535) {
            f.error(
                format!("spec.portLevelMtls.{port}"),
                "port must be in range 1..65535",
            );
        }
    }
    workload_selector(spec.selector.as_ref(), &mut f);
    if labelled && r.namespace() == options.root_namespace {
        f.warning(
            "spec.selector",
            format!(
                "a selector in the root namespace ({}) is ignored: \
                 the policy applies to no workload",
                options.root_namespace
            ),
        );
    }
    f
}
