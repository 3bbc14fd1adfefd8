//! What `warden up` runs, read from the demo's Istio YAML: a sidecar (and a demo app)
//! for each `WorkloadEntry`, and a gateway for each one a `Gateway` selects.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, anyhow, bail};
use warden_policy::loader::ConfigSet;

/// The trust domain `warden up`'s CA issues in.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// One of `warden-demo`'s apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoApp {
    Productpage,
    Details,
    /// `reviews` at a version (`v1`, `v2`, `v3`).
    Reviews(String),
    Ratings,
}

impl DemoApp {
    /// The app for a workload's `app` and `version` labels, if it is bookinfo's.
    fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        match labels.get("app").map(String::as_str)? {
            "productpage" => Some(Self::Productpage),
            "details" => Some(Self::Details),
            "ratings" => Some(Self::Ratings),
            "reviews" => match labels.get("version").map(String::as_str) {
                Some(v @ ("v1" | "v2" | "v3")) => Some(Self::Reviews(v.to_string())),
                _ => None,
            },
            _ => None,
        }
    }

    /// `warden-demo`'s arguments for this app.
    pub fn args(&self, workload: &str, listen: &str) -> Vec<String> {
        let mut a = match self {
            Self::Productpage => vec!["productpage".to_string()],
            Self::Details => vec!["details".to_string()],
            Self::Ratings => vec!["ratings".to_string()],
            Self::Reviews(v) => vec![
                "reviews".to_string(),
                "--version".to_string(),
                v.clone(),
                "--name".to_string(),
                workload.to_string(),
            ],
        };
        a.extend(["--listen".to_string(), listen.to_string()]);
        a
    }
}

/// A workload to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The WorkloadEntry's name (the proxy's `--workload`).
    pub name: String,
    pub namespace: String,
    /// Where its proxy (and app) listen.
    pub address: IpAddr,
    pub service_account: String,
    /// A gateway (`--mode gateway`), with the port its Gateway serves HTTP on.
    pub gateway_port: Option<u16>,
    /// The app behind a sidecar and its port; `None`: a sidecar with no app.
    pub app: Option<(DemoApp, u16)>,
}

impl Workload {
    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// The workloads of `set`, in file order; an error names the WorkloadEntry whose
/// address, service account or ports `warden up` cannot use.
pub fn plan(set: &ConfigSet) -> anyhow::Result<Vec<Workload>> {
    let mut out = Vec::new();
    for we in &set.workload_entries {
        let r = &we.resource;
        let name = r.metadata.name.clone();
        let namespace = r.namespace().to_string();
        let what = || format!("{}: WorkloadEntry {namespace}/{name}", we.origin);
        let address: IpAddr = r
            .spec
            .address
            .parse()
            .map_err(|_| anyhow!("spec.address {:?} is not an IP address", r.spec.address))
            .with_context(what)?;
        let service_account = r
            .spec
            .service_account
            .clone()
            .ok_or_else(|| anyhow!("spec.serviceAccount is required (it names the SPIFFE ID)"))
            .with_context(what)?;
        let gateway_port = gateway_port(set, &r.spec.labels);
        let app = match (gateway_port, DemoApp::from_labels(&r.spec.labels)) {
            (None, Some(app)) => {
                let port = r
                    .spec
                    .ports
                    .get("http")
                    .or_else(|| r.spec.ports.values().next())
                    .copied()
                    .unwrap_or(9080);
                let port = u16::try_from(port)
                    .map_err(|_| anyhow!("spec.ports: {port} is not a port"))
                    .with_context(what)?;
                Some((app, port))
            }
            _ => None,
        };
        out.push(Workload {
            name,
            namespace,
            address,
            service_account,
            gateway_port,
            app,
        });
    }
    if out.is_empty() {
        bail!("no WorkloadEntry in the config: nothing to run");
    }
    Ok(out)
}

/// The first HTTP server port of a Gateway whose selector picks a workload with
/// `labels` (Gateways select gateway workloads in any namespace, as Istio's do).
fn gateway_port(set: &ConfigSet, labels: &BTreeMap<String, String>) -> Option<u16> {
    set.gateways.iter().find_map(|g| {
        let spec = &g.resource.spec;
        let selector = spec.get("selector")?.as_object()?;
        let selected = !selector.is_empty()
            && selector.iter().all(|(k, v)| {
                v.as_str()
                    .is_some_and(|v| labels.get(k).is_some_and(|l| l == v))
            });
        if !selected {
            return None;
        }
        spec.get("servers")?.as_array()?.iter().find_map(|s| {
            let port = s.get("port")?;
            let http = port
                .get("protocol")
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.eq_ignore_ascii_case("HTTP"));
            http.then(|| {
                port.get("number")?
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
            })
            .flatten()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> ConfigSet {
        warden_policy::loader::load_str(std::path::Path::new("t.yaml"), yaml).unwrap()
    }

    #[test]
    fn the_demo_config_plans_bookinfo_and_its_gateway() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/demo");
        let set = warden_policy::loader::load(&[dir]).unwrap();
        let w = plan(&set).unwrap();
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "productpage-v1",
                "details-v1",
                "reviews-v1",
                "reviews-v2",
                "reviews-v3",
                "ratings-v1",
                "istio-ingressgateway"
            ]
        );
        let gw = w.last().unwrap();
        assert_eq!(gw.gateway_port, Some(8080));
        assert_eq!(gw.app, None);
        assert_eq!(
            gw.spiffe_id(),
            "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"
        );
        assert_eq!(w[3].app, Some((DemoApp::Reviews("v2".into()), 9080)));
        assert_eq!(
            w[3].spiffe_id(),
            "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
        );
    }

    #[test]
    fn each_walk_through_step_loads_with_the_demo() {
        let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local");
        for step in [
            "reviews-80-20.yaml",
            "ratings-delay.yaml",
            "deny-ratings.yaml",
        ] {
            let paths = [local.join("demo"), local.join("demo-steps").join(step)];
            let set = warden_policy::loader::load(&paths).unwrap_or_else(|e| panic!("{step}: {e}"));
            assert_eq!(plan(&set).unwrap().len(), 7, "{step}");
        }
    }

    #[test]
    fn an_entry_without_a_service_account_is_named() {
        let set = load(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: x, namespace: a}\nspec: {address: 127.0.30.9}\n",
        );
        let e = format!("{:#}", plan(&set).unwrap_err());
        assert!(
            e.contains("WorkloadEntry a/x") && e.contains("serviceAccount"),
            "{e}"
        );
    }

    #[test]
    fn reviews_args_carry_version_and_name() {
        let a = DemoApp::Reviews("v3".into()).args("reviews-v3", "127.0.30.14:9080");
        assert_eq!(
            a.join(" "),
            "reviews --version v3 --name reviews-v3 --listen 127.0.30.14:9080"
        );
    }
}
