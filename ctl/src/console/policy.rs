//! The policies that decide an edge: the AuthorizationPolicies in the proxies' config
//! directory, compiled by the engine the proxies use, asked about a representative
//! request of the edge. The metrics carry no methods or paths, so a `GET /` from the
//! source's SPIFFE ID stands for the edge's requests; every policy in scope is listed
//! with the engine's explanation, so rules on other paths are visible too.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use warden_policy::authz::{Engine, HttpRequest, Protocol, Request, Workload};

use crate::authz::action;

/// Whose policies apply mesh-wide (the proxies' `--root-namespace` default).
const ROOT_NAMESPACE: &str = "istio-system";

/// One side of the edge, as the console knows it.
#[derive(Debug, Clone, Default)]
pub struct Side {
    /// `namespace/name`.
    pub id: String,
    /// SPIFFE ID (`spiffe://...`), from `warden up` or seen in the metrics.
    pub spiffe_id: Option<String>,
    /// Address.
    pub address: Option<IpAddr>,
}

/// The engine's decision and explanation for the edge `source` → `destination`.
/// Problems (a config that does not load, an unknown workload) are reported in the
/// JSON's `error`, so the page can show them.
pub fn explain_edge(config_dir: &Path, source: &Side, destination: &Side) -> serde_json::Value {
    match explain(config_dir, source, destination) {
        Ok(v) => v,
        Err(error) => serde_json::json!({
            "source": source.id, "destination": destination.id, "error": error,
        }),
    }
}

fn explain(
    config_dir: &Path,
    source: &Side,
    destination: &Side,
) -> Result<serde_json::Value, String> {
    let set = warden_policy::loader::load(&[config_dir.to_path_buf()])
        .map_err(|e| format!("{}: {e}", config_dir.display()))?;
    let (dst_ns, dst_name) = destination
        .id
        .split_once('/')
        .ok_or_else(|| format!("destination {:?} is not namespace/name", destination.id))?;
    let entry = set
        .workload_entries
        .iter()
        .find(|w| w.resource.metadata.name == dst_name && w.resource.namespace() == dst_ns)
        .ok_or_else(|| {
            format!(
                "no WorkloadEntry {dst_ns}/{dst_name} in {}: its labels decide which policies select it",
                config_dir.display()
            )
        })?;
    let spec = &entry.resource.spec;
    let trust_domain = destination
        .spiffe_id
        .as_deref()
        .and_then(|id| id.strip_prefix("spiffe://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("cluster.local");
    let engine = Engine::compile_for(&set, ROOT_NAMESPACE, trust_domain).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let workload = Workload {
        namespace: dst_ns.to_string(),
        labels: spec.labels.clone(),
    };
    let port = spec
        .ports
        .values()
        .next()
        .and_then(|p| u16::try_from(*p).ok())
        .unwrap_or(80);
    let app = spec.labels.get("app").map_or(dst_name, String::as_str);
    let host = format!("{app}.{dst_ns}.svc.cluster.local");
    let principal = source
        .spiffe_id
        .as_deref()
        .map(|p| p.strip_prefix("spiffe://").unwrap_or(p).to_string());
    let request = Request {
        protocol: Protocol::Http,
        source_principal: principal.clone(),
        source_ip: source.address,
        remote_ip: None,
        destination_ip: spec.address.parse().ok().or(destination.address),
        destination_port: port,
        sni: None,
        http: Some(HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            host: host.clone(),
            headers: BTreeMap::new(),
        }),
        jwt: None,
    };
    let d = engine.evaluate(&workload, &request);
    let explain: Vec<_> = engine
        .explain(&workload, &request)
        .iter()
        .map(crate::authz::explanation_json)
        .collect();
    Ok(serde_json::json!({
        "source": source.id,
        "destination": destination.id,
        "request": {
            "method": "GET", "path": "/", "host": host, "port": port,
            "source_principal": principal.map(|p| format!("spiffe://{p}")),
            "destination_labels": spec.labels,
            "note": "the metrics carry no paths: a GET / from the source stands for the edge's requests",
        },
        "decision": if d.allowed { "ALLOW" } else { "DENY" },
        "policy": d.deciding.as_ref().map(|m| m.policy.clone()),
        "rule": d.deciding.as_ref().map(|m| m.rule),
        "reason": d.reason,
        "dry_run": d.dry_run.iter().map(|x| serde_json::json!({
            "policy": x.policy, "action": action(x.action), "matched": x.rule.is_some(),
        })).collect::<Vec<_>>(),
        "custom": d.custom.as_ref().map(|(provider, m)| serde_json::json!({
            "provider": provider, "policy": m.policy, "rule": m.rule,
        })),
        "explain": explain,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1, namespace: bookinfo}
spec:
  address: 127.0.20.7
  labels: {app: ratings, version: v1}
  serviceAccount: bookinfo-ratings
  ports: {http: 9080}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-from-reviews, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/bookinfo/sa/bookinfo-reviews"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-only, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules: [{}]
"#;

    fn sides() -> (Side, Side) {
        (
            Side {
                id: "bookinfo/reviews-v2".into(),
                spiffe_id: Some("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews".into()),
                address: "127.0.20.5".parse().ok(),
            },
            Side {
                id: "bookinfo/ratings-v1".into(),
                spiffe_id: Some("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings".into()),
                address: None,
            },
        )
    }

    #[test]
    fn explains_the_edge_with_every_policy_in_scope() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
        let (src, dst) = sides();
        let v = explain_edge(dir.path(), &src, &dst);
        assert_eq!(v["decision"], "ALLOW", "{v:#}");
        assert_eq!(v["policy"], "bookinfo/ratings-from-reviews");
        assert_eq!(v["request"]["port"], 9080);
        let explain = v["explain"].as_array().unwrap();
        assert_eq!(explain.len(), 2);
        let details = explain
            .iter()
            .find(|e| e["policy"] == "bookinfo/details-only")
            .unwrap();
        assert_eq!(details["applies"], false);

        let deny = "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-ratings, namespace: bookinfo}\nspec:\n  selector: {matchLabels: {app: ratings}}\n  action: DENY\n  rules: [{}]\n";
        std::fs::write(dir.path().join("mesh.yaml"), format!("{MESH}{deny}")).unwrap();
        let v = explain_edge(dir.path(), &src, &dst);
        assert_eq!(v["decision"], "DENY", "{v:#}");
        assert_eq!(v["policy"], "bookinfo/deny-ratings");
    }

    #[test]
    fn problems_are_reported_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
        let (src, mut dst) = sides();
        dst.id = "bookinfo/nope".into();
        let v = explain_edge(dir.path(), &src, &dst);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("no WorkloadEntry bookinfo/nope")
        );
        std::fs::write(dir.path().join("mesh.yaml"), "kind: [").unwrap();
        let v = explain_edge(dir.path(), &src, &sides().1);
        assert!(v["error"].as_str().is_some(), "{v:#}");
    }
}
