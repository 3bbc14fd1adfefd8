//! The upstream HTTP version for a request, as istiod configures Envoy's clusters
//! (`setUpstreamProtocol` and `shouldH2Upgrade` in istio/istio's cluster builder):
//!
//! - a port declared `HTTP2` or `GRPC` is spoken as HTTP/2, a port declared `HTTP` as
//!   HTTP/1.1, whatever the client spoke;
//! - toward a peer proxy (outbound), an `HTTP` port is upgraded to HTTP/2 when the
//!   DestinationRule's `connectionPool.http.h2UpgradePolicy` is `UPGRADE`, or when it
//!   is unset and `meshConfig.h2UpgradePolicy` is `UPGRADE`; `DO_NOT_UPGRADE` keeps
//!   HTTP/1.1;
//! - `connectionPool.http.useClientProtocol: true` speaks whatever the client spoke,
//!   before all of the above, outbound and inbound (to the app) alike.
//!
//! Only those two fields of a DestinationRule are read here (the rest is routing and
//! resilience, still to come); `trafficPolicy.portLevelSettings` override the rule's
//! level for their port, without inheriting from it, as Istio does. Which
//! DestinationRule applies follows Istio's lookup for a sidecar: the client's own
//! namespace first (rules whose `workloadSelector` selects the client before the
//! others), then the service's namespace, then the root namespace; `exportTo` is
//! honoured; within a namespace the most specific `host` wins, then the first loaded.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;
use warden_policy::loader::{CompileError, ConfigSet, Loaded};

use crate::mesh::errors::Errors;
use crate::mesh::model::{PortProtocol, Service};
use crate::pool::UpstreamProtocol;

/// `h2UpgradePolicy` (DestinationRule `connectionPool.http` and MeshConfig).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Follow the mesh (in a DestinationRule) or do not upgrade (in MeshConfig).
    #[default]
    Default,
    /// Keep HTTP/1.1.
    DoNotUpgrade,
    /// Upgrade HTTP/1.1 to HTTP/2.
    Upgrade,
}

impl H2UpgradePolicy {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "DEFAULT" => Ok(Self::Default),
            "DO_NOT_UPGRADE" => Ok(Self::DoNotUpgrade),
            "UPGRADE" => Ok(Self::Upgrade),
            _ => Err(format!(
                "{s:?} is not an h2UpgradePolicy: expected DEFAULT, DO_NOT_UPGRADE or UPGRADE"
            )),
        }
    }
}

/// A DestinationRule's `connectionPool.http` settings that choose the HTTP version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpPool {
    /// `h2UpgradePolicy`.
    pub h2_upgrade: H2UpgradePolicy,
    /// `useClientProtocol`.
    pub use_client_protocol: bool,
}

/// The HTTP version toward an upstream: the app (`inbound`) or a peer proxy.
pub fn upstream_protocol(
    port: PortProtocol,
    pool: HttpPool,
    mesh_h2: H2UpgradePolicy,
    downstream_h2: bool,
    inbound: bool,
) -> UpstreamProtocol {
    let h2 = if pool.use_client_protocol {
        downstream_h2
    } else if matches!(port, PortProtocol::Http2 | PortProtocol::Grpc) {
        true
    } else if inbound {
        false
    } else {
        match pool.h2_upgrade {
            H2UpgradePolicy::Upgrade => true,
            H2UpgradePolicy::DoNotUpgrade => false,
            H2UpgradePolicy::Default => mesh_h2 == H2UpgradePolicy::Upgrade,
        }
    };
    if h2 {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    }
}

/// One DestinationRule, reduced to what is read here.
#[derive(Debug, Clone)]
struct Rule {
    namespace: String,
    /// FQDN, `*.suffix` or `*`.
    host: String,
    /// `None`: every namespace.
    export_to: Option<Vec<String>>,
    selector: Option<BTreeMap<String, String>>,
    pool: HttpPool,
    ports: HashMap<u16, HttpPool>,
}

impl Rule {
    fn matches_host(&self, service: &Service) -> Option<usize> {
        let h = self.host.as_str();
        service
            .hosts
            .iter()
            .filter_map(|s| {
                if h == s {
                    Some(usize::MAX)
                } else if h == "*" {
                    Some(0)
                } else if let Some(suffix) = h.strip_prefix('*')
                    && s.ends_with(suffix)
                {
                    Some(suffix.len())
                } else {
                    None
                }
            })
            .max()
    }

    fn visible_from(&self, namespace: &str) -> bool {
        match &self.export_to {
            None => true,
            Some(list) => list
                .iter()
                .any(|n| n == "*" || n == namespace || (n == "." && self.namespace == namespace)),
        }
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    fn pool_for(&self, port: u16) -> HttpPool {
        self.ports.get(&port).copied().unwrap_or(self.pool)
    }
}

/// The DestinationRules of a config, for [`DestinationRules::http_pool`].
#[derive(Debug, Clone, Default)]
pub struct DestinationRules {
    rules: Vec<Rule>,
    /// Per namespace: rules by exact host, and the wildcard ones (indexes into
    /// `rules`, in load order), so a lookup does not scan every rule.
    by_namespace: HashMap<String, NamespaceRules>,
    root_namespace: String,
}

#[derive(Debug, Clone, Default)]
struct NamespaceRules {
    exact: HashMap<String, Vec<usize>>,
    wildcard: Vec<usize>,
}

impl DestinationRules {
    /// Reads the DestinationRules of `set`; every problem names the file, the rule and
    /// the field.
    pub fn compile(set: &ConfigSet, root_namespace: &str) -> Result<Self, Vec<CompileError>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for l in &set.destination_rules {
            let mut e = Errors::new("DestinationRule", l);
            if let Some(r) = rule(l, &mut e) {
                rules.push(r);
            }
            errors.extend(e.into_list());
        }
        if errors.is_empty() {
            let mut by_namespace: HashMap<String, NamespaceRules> = HashMap::new();
            for (i, r) in rules.iter().enumerate() {
                let ns = by_namespace.entry(r.namespace.clone()).or_default();
                if r.host.starts_with('*') {
                    ns.wildcard.push(i);
                } else {
                    ns.exact.entry(r.host.clone()).or_default().push(i);
                }
            }
            Ok(Self {
                rules,
                by_namespace,
                root_namespace: root_namespace.to_string(),
            })
        } else {
            Err(errors)
        }
    }

    /// The `connectionPool.http` settings for a client in `namespace` with `labels`
    /// calling `service` on `port`.
    pub fn http_pool(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        service: &Service,
        port: u16,
    ) -> HttpPool {
        let tiers = [
            namespace,
            service.namespace.as_str(),
            self.root_namespace.as_str(),
        ];
        for (tier, ns) in tiers.iter().enumerate() {
            let Some(index) = self.by_namespace.get(*ns) else {
                continue;
            };
            let mut candidates: Vec<usize> = service
                .hosts
                .iter()
                .filter_map(|h| index.exact.get(h))
                .flatten()
                .chain(index.wildcard.iter())
                .copied()
                .collect();
            // Load order, so ties go to the first loaded.
            candidates.sort_unstable();
            candidates.dedup();
            let best = candidates
                .iter()
                .map(|&i| &self.rules[i])
                .filter(|r| r.namespace == *ns && r.visible_from(namespace))
                // Only the client's own namespace may select it by labels.
                .filter(|r| r.selector.is_none() || (tier == 0 && r.selects(labels)))
                .filter_map(|r| Some((r.selector.is_some(), r.matches_host(service)?, r)))
                // Selected first, then the most specific host, then the first loaded.
                .min_by_key(|(selected, specificity, _)| (!*selected, usize::MAX - *specificity));
            if let Some((_, _, r)) = best {
                return r.pool_for(port);
            }
        }
        HttpPool::default()
    }
}

/// `spec.host` qualified as Istio does: a short name is in the rule's namespace.
fn qualify(host: &str, namespace: &str) -> String {
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if h == "*" || h.starts_with("*.") || h.contains('.') {
        h
    } else {
        format!("{h}.{namespace}.svc.cluster.local")
    }
}

fn rule(l: &Loaded<Value>, e: &mut Errors) -> Option<Rule> {
    let namespace = l.resource.namespace().to_string();
    let spec = &l.resource.spec;
    let host = match spec.get("host") {
        Some(Value::String(h)) if !h.is_empty() => qualify(h, &namespace),
        Some(_) => {
            e.push("spec.host", "expected a host name (a string)");
            return None;
        }
        None => {
            e.push("spec.host", "is required: the service host the rule is for");
            return None;
        }
    };
    let export_to = match spec.get("exportTo") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(s) => out.push(s.to_string()),
                    None => e.push(
                        format!("spec.exportTo[{i}]"),
                        "expected a namespace, \".\" or \"*\"",
                    ),
                }
            }
            Some(out)
        }
        Some(_) => {
            e.push("spec.exportTo", "expected a list of namespaces");
            None
        }
    };
    let selector = match spec.pointer("/workloadSelector/matchLabels") {
        None | Some(Value::Null) => None,
        Some(v) => match BTreeMap::<String, String>::deserialize(v) {
            Ok(m) => Some(m),
            Err(_) => {
                e.push(
                    "spec.workloadSelector.matchLabels",
                    "expected a map of label names to values",
                );
                None
            }
        },
    };
    let policy = spec.get("trafficPolicy");
    let pool = policy
        .map(|p| http_pool(p, "spec.trafficPolicy", e))
        .unwrap_or_default();
    let mut ports = HashMap::new();
    if let Some(settings) = policy.and_then(|p| p.get("portLevelSettings")) {
        let Some(list) = settings.as_array() else {
            e.push(
                "spec.trafficPolicy.portLevelSettings",
                "expected a list of port settings",
            );
            return None;
        };
        for (i, s) in list.iter().enumerate() {
            let at = format!("spec.trafficPolicy.portLevelSettings[{i}]");
            match s.pointer("/port/number").and_then(Value::as_u64) {
                Some(n) if (1..=65535).contains(&n) => {
                    let port = u16::try_from(n).unwrap_or_default();
                    ports.insert(port, http_pool(s, &at, e));
                }
                _ => e.push(
                    format!("{at}.port.number"),
                    "expected a port number 1-65535",
                ),
            }
        }
    }
    Some(Rule {
        namespace,
        host,
        export_to,
        selector,
        pool,
        ports,
    })
}

/// `connectionPool.http.{h2UpgradePolicy, useClientProtocol}` of a traffic policy (or
/// of one port's settings) at field path `at`.
fn http_pool(policy: &Value, at: &str, e: &mut Errors) -> HttpPool {
    let mut pool = HttpPool::default();
    let Some(http) = policy.pointer("/connectionPool/http") else {
        return pool;
    };
    let at = format!("{at}.connectionPool.http");
    match http.get("h2UpgradePolicy") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match H2UpgradePolicy::parse(s) {
            Ok(p) => pool.h2_upgrade = p,
            Err(m) => e.push(format!("{at}.h2UpgradePolicy"), m),
        },
        Some(_) => e.push(
            format!("{at}.h2UpgradePolicy"),
            "expected DEFAULT, DO_NOT_UPGRADE or UPGRADE",
        ),
    }
    match http.get("useClientProtocol") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => pool.use_client_protocol = *b,
        Some(_) => e.push(format!("{at}.useClientProtocol"), "expected true or false"),
    }
    pool
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use warden_policy::loader::load_str;

    fn rules(yaml: &str) -> Result<DestinationRules, Vec<String>> {
        let set = load_str(std::path::Path::new("dr.yaml"), yaml).unwrap();
        DestinationRules::compile(&set, "istio-system")
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    fn dr(name: &str, ns: &str, spec: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
        )
    }

    fn service(host: &str, ns: &str) -> Service {
        Service::for_tests(host, ns)
    }

    #[test]
    fn the_port_protocol_decides_unless_a_rule_says_otherwise() {
        use PortProtocol::{Grpc, Http, Http2};
        use UpstreamProtocol::{Http1, Http2 as H2};
        let none = HttpPool::default();
        let up = |h2_upgrade| HttpPool {
            h2_upgrade,
            use_client_protocol: false,
        };
        let client = HttpPool {
            h2_upgrade: H2UpgradePolicy::Upgrade,
            use_client_protocol: true,
        };
        let d = H2UpgradePolicy::Default;
        // (port, pool, mesh, downstream h2, inbound) -> protocol
        let cases = [
            (Http, none, d, true, false, Http1),
            (Http, none, d, true, true, Http1),
            (Grpc, none, d, false, true, H2),
            (Http2, none, d, false, false, H2),
            (Http, up(H2UpgradePolicy::Upgrade), d, false, false, H2),
            (Http, up(H2UpgradePolicy::Upgrade), d, false, true, Http1),
            (Http, none, H2UpgradePolicy::Upgrade, false, false, H2),
            (
                Http,
                up(H2UpgradePolicy::DoNotUpgrade),
                H2UpgradePolicy::Upgrade,
                false,
                false,
                Http1,
            ),
            (Http, client, d, false, false, Http1),
            (Grpc, client, d, false, true, Http1),
            (Http, client, d, true, true, H2),
        ];
        for (port, pool, mesh, h2, inbound, want) in cases {
            assert_eq!(
                upstream_protocol(port, pool, mesh, h2, inbound),
                want,
                "{port:?} {pool:?} {mesh:?} h2={h2} inbound={inbound}"
            );
        }
    }

    #[test]
    fn lookup_follows_istios_namespace_order_and_specificity() {
        let yaml = [
            dr("mesh", "istio-system", "{host: '*.svc.cluster.local', trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}}"),
            dr("svc-ns", "shop", "{host: cart, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}, portLevelSettings: [{port: {number: 9080}, connectionPool: {http: {useClientProtocol: true}}}]}}"),
            dr("hidden", "other", "{host: cart.shop.svc.cluster.local, exportTo: ['.'], trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}}"),
            dr("mine", "web", "{host: cart.shop.svc.cluster.local, workloadSelector: {matchLabels: {app: web}}, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}}"),
        ]
        .concat();
        let r = rules(&yaml).unwrap();
        let cart = service("cart.shop.svc.cluster.local", "shop");
        let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
        // The client's namespace, selected by its labels.
        assert_eq!(
            r.http_pool("web", &labels("web"), &cart, 80).h2_upgrade,
            H2UpgradePolicy::Upgrade
        );
        // Not selected: the service's namespace; its port setting does not inherit.
        let p = r.http_pool("web", &labels("api"), &cart, 80);
        assert_eq!(p.h2_upgrade, H2UpgradePolicy::DoNotUpgrade);
        let p = r.http_pool("web", &labels("api"), &cart, 9080);
        assert_eq!(
            p,
            HttpPool {
                h2_upgrade: H2UpgradePolicy::Default,
                use_client_protocol: true
            }
        );
        // Another host: the root namespace's wildcard.
        let other = service("pay.shop.svc.cluster.local", "shop");
        assert_eq!(
            r.http_pool("web", &labels("web"), &other, 80).h2_upgrade,
            H2UpgradePolicy::Upgrade
        );
        // `exportTo: ['.']` hides a rule from other namespaces.
        assert!(
            r.http_pool("other", &labels("x"), &cart, 80)
                .use_client_protocol
        );
        assert!(
            !r.http_pool("web", &labels("x"), &cart, 80)
                .use_client_protocol
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let e = rules(&dr(
            "bad",
            "shop",
            "{host: cart, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: SOMETIMES, useClientProtocol: 'yes'}}, portLevelSettings: [{port: {number: 0}}]}}",
        ))
        .unwrap_err();
        let all = e.join("\n");
        assert!(all.contains("DestinationRule shop/bad: spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: \"SOMETIMES\" is not an h2UpgradePolicy"), "{all}");
        assert!(
            all.contains(
                "spec.trafficPolicy.connectionPool.http.useClientProtocol: expected true or false"
            ),
            "{all}"
        );
        assert!(all.contains("spec.trafficPolicy.portLevelSettings[0].port.number: expected a port number 1-65535"), "{all}");
        assert!(all.contains("dr.yaml:"), "{all}");
        let e = rules(&dr("nohost", "shop", "{trafficPolicy: {}}")).unwrap_err();
        assert!(e[0].contains("spec.host: is required"), "{e:?}");
    }
}
