//! The checks every security kind starts with (istio/istio `validation.go`
//! `validateMetadata`, `validateOneOfSelectorType`, `validateWorkloadSelector`,
//! `validatePolicyTargetReference`): the `istio.io/dry-run` annotation, the workload
//! selector and `targetRef(s)`.

use super::Findings;
use crate::resources::{Action, ObjectMeta, PolicyTargetReference, WorkloadSelector};

const DRY_RUN: &str = "istio.io/dry-run";

/// `validateMetadata` / `checkDryRunAnnotation`: only ALLOW and DENY AuthorizationPolicies
/// may carry `istio.io/dry-run`, and its value must be a Go boolean. `action` is `None`
/// for the other kinds.
pub(super) fn dry_run_annotation(meta: &ObjectMeta, action: Option<Action>, f: &mut Findings) {
    let Some(value) = meta.annotations.get(DRY_RUN) else {
        return;
    };
    let path = format!("metadata.annotations.{DRY_RUN}");
    match action {
        None => f.error(
            path,
            format!("unsupported annotation {DRY_RUN}, please remove the annotation"),
        ),
        Some(Action::Allow | Action::Deny) => match go_bool(value) {
            None => f.error(
                path,
                format!("annotation {DRY_RUN} with invalid value ({value}): expected a boolean"),
            ),
            Some(b) => {
                // Istio's strconv.ParseBool also reads "1", "t", "T"...; Warden's engine
                // takes only "true" (any case) as dry-run.
                let word = if b { "true" } else { "false" };
                if !value.eq_ignore_ascii_case(word) {
                    f.warning(
                        path,
                        format!(
                            "Istio reads {value:?} as {b}, Warden only \"true\"; write {word:?}"
                        ),
                    );
                }
            }
        },
        Some(a) => f.error(
            path,
            format!(
                "the annotation {DRY_RUN} currently only supports action ALLOW/DENY, \
                 found action {}",
                action_name(a)
            ),
        ),
    }
}

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub(super) fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

/// `validateOneOfSelectorType`: at most one of `selector`, `targetRef`, `targetRefs`.
fn one_of_selector_type(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: Option<&Vec<PolicyTargetReference>>,
    f: &mut Findings,
) {
    let refs = target_refs.is_some_and(|t| !t.is_empty());
    let set =
        usize::from(selector.is_some()) + usize::from(target_ref.is_some()) + usize::from(refs);
    if set > 1 {
        let path = if refs {
            "spec.targetRefs"
        } else {
            "spec.targetRef"
        };
        f.error(
            path,
            "only one of targetRefs or workloadSelector can be set",
        );
    }
}

/// `validateWorkloadSelector`: no empty keys, no `*` in keys or values; a selector
/// without labels is a warning.
pub(super) fn workload_selector(selector: Option<&WorkloadSelector>, f: &mut Findings) {
    let Some(selector) = selector else {
        return;
    };
    for (k, v) in &selector.match_labels {
        let path = format!("spec.selector.matchLabels.{k}");
        if k.is_empty() {
            f.error(
                &path,
                format!("empty key is not supported in selector: \"{k}={v}\""),
            );
        }
        if k.contains('*') || v.contains('*') {
            f.error(
                &path,
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
    if selector.match_labels.is_empty() {
        f.warning(
            "spec.selector",
            "workload selector specified without labels",
        );
    }
}

/// `allowedTargetRefs`: (canonical group, kind).
const TARGET_KINDS: [(&str, &str); 4] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// `validatePolicyTargetReference`: a name, no namespace, an allowed group and kind.
fn target_ref(path: &str, r: &PolicyTargetReference, f: &mut Findings) {
    if r.name.is_empty() {
        f.error(format!("{path}.name"), "targetRef name must be set");
    }
    if r.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        f.error(
            format!("{path}.namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = if r.group.is_empty() { "core" } else { &r.group };
    if !TARGET_KINDS.contains(&(group, r.kind.as_str())) {
        let allowed: Vec<String> = TARGET_KINDS
            .iter()
            .map(|(g, k)| format!("{g}/{k}"))
            .collect();
        f.error(
            format!("{path}.kind"),
            format!(
                "targetRef must be to one of [{}] but was {}/{}",
                allowed.join(" "),
                r.group,
                r.kind
            ),
        );
    }
}

/// The selector and target checks every policy kind starts with.
pub(super) fn selection(
    selector: Option<&WorkloadSelector>,
    one: Option<&PolicyTargetReference>,
    many: Option<&Vec<PolicyTargetReference>>,
    f: &mut Findings,
) {
    one_of_selector_type(selector, one, many, f);
    workload_selector(selector, f);
    if let Some(r) = one {
        target_ref("spec.targetRef", r, f);
    }
    for (i, r) in many.into_iter().flatten().enumerate() {
        target_ref(&format!("spec.targetRefs[{i}]"), r, f);
    }
}
