//! What a test asks the mesh for (workloads, services, their ports) and the Istio
//! YAML the mesh writes for it: a `WorkloadEntry` per workload, a `MESH_INTERNAL`
//! `ServiceEntry` per service.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::{APP_PORT_OFFSET, HEALTH_PORT, INBOUND_PORT, OUTBOUND_PORT, STATS_PORT, spiffe_id};

/// A service port's protocol (`ServiceEntry.spec.ports[].protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// Istio's name.
    pub fn istio(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Tcp => "TCP",
        }
    }
}

/// A service port.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub number: u16,
    pub protocol: Protocol,
}

impl Port {
    /// The port the application listens on (`targetPort`).
    pub fn target(&self) -> u16 {
        self.number + APP_PORT_OFFSET
    }
}

/// A workload: a `WorkloadEntry`, the applications behind it and (unless `proxy` is
/// false) a `warden-proxy`.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// `spec.labels` (and `metadata.labels`); `app: <name>` by default.
    pub labels: BTreeMap<String, String>,
    /// Run a `warden-proxy` for it.
    pub proxy: bool,
    /// Run `warden-test-app` on each of its application ports.
    pub apps: bool,
}

impl WorkloadSpec {
    pub fn new(name: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            proxy: true,
            apps: true,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn without_proxy(mut self) -> Self {
        self.proxy = false;
        self
    }

    pub fn without_apps(mut self) -> Self {
        self.apps = false;
        self
    }
}

/// A `MESH_INTERNAL` `ServiceEntry` with a `workloadSelector`.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    /// `<name>.<namespace>.svc.cluster.local` by default.
    pub host: String,
    pub ports: Vec<Port>,
    /// `app: <name>` by default.
    pub selector: BTreeMap<String, String>,
    pub subject_alt_names: Vec<String>,
}

impl ServiceSpec {
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            host: format!("{name}.{namespace}.svc.cluster.local"),
            ports: Vec::new(),
            selector: BTreeMap::from([("app".to_string(), name.to_string())]),
            subject_alt_names: Vec::new(),
        }
    }

    pub fn port(mut self, name: &str, number: u16, protocol: Protocol) -> Self {
        self.ports.push(Port {
            name: name.into(),
            number,
            protocol,
        });
        self
    }

    pub fn http(self, number: u16) -> Self {
        self.port("http", number, Protocol::Http)
    }

    pub fn grpc(self, number: u16) -> Self {
        self.port("grpc", number, Protocol::Grpc)
    }

    pub fn tcp(self, number: u16) -> Self {
        self.port("tcp", number, Protocol::Tcp)
    }

    pub fn select(mut self, labels: &[(&str, &str)]) -> Self {
        self.selector = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    pub fn subject_alt_name(mut self, id: &str) -> Self {
        self.subject_alt_names.push(id.into());
        self
    }

    /// `http://<host>:<port>`.
    pub fn url(&self, port: u16) -> String {
        format!("http://{}:{port}", self.host)
    }

    pub(super) fn selects(&self, w: &WorkloadSpec) -> bool {
        w.namespace == self.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
    }
}

/// What a test knows of a running workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub spec: WorkloadSpec,
    pub ip: Ipv4Addr,
    /// Port name → application port.
    pub ports: BTreeMap<String, u16>,
}

impl Workload {
    pub fn spiffe_id(&self) -> String {
        spiffe_id(&self.spec.namespace, &self.spec.service_account)
    }
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
    pub fn outbound(&self) -> SocketAddr {
        self.addr(OUTBOUND_PORT)
    }
    pub fn inbound(&self) -> SocketAddr {
        self.addr(INBOUND_PORT)
    }
    pub fn stats(&self) -> SocketAddr {
        self.addr(STATS_PORT)
    }
    pub fn health(&self) -> SocketAddr {
        self.addr(HEALTH_PORT)
    }
}

fn yaml_map(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).unwrap()
}

/// The `WorkloadEntry`s and `ServiceEntry`s of the mesh.
pub(super) fn mesh_yaml(
    workloads: &BTreeMap<String, Workload>,
    services: &[ServiceSpec],
) -> String {
    let mut docs = Vec::new();
    for w in workloads.values() {
        let ports: BTreeMap<String, u16> = w.ports.clone();
        docs.push(format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {}\nspec:\n  address: {}\n  serviceAccount: {}\n  labels: {}\n  ports: {}\n",
            w.spec.name,
            w.spec.namespace,
            yaml_map(&w.spec.labels),
            w.ip,
            w.spec.service_account,
            yaml_map(&w.spec.labels),
            serde_json::to_string(&ports).unwrap(),
        ));
    }
    for s in services {
        let ports: Vec<serde_json::Value> = s
            .ports
            .iter()
            .map(|p| {
                serde_json::json!({"number": p.number, "name": p.name,
                    "protocol": p.protocol.istio(), "targetPort": p.target()})
            })
            .collect();
        let mut doc = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  hosts: [{}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: {}\n  workloadSelector:\n    labels: {}\n",
            s.name,
            s.namespace,
            serde_json::to_string(&s.host).unwrap(),
            serde_json::to_string(&ports).unwrap(),
            yaml_map(&s.selector),
        );
        if !s.subject_alt_names.is_empty() {
            doc.push_str(&format!(
                "  subjectAltNames: {}\n",
                serde_json::to_string(&s.subject_alt_names).unwrap()
            ));
        }
        docs.push(doc);
    }
    docs.join("---\n")
}

/// An `AuthorizationPolicy` `default/<name>` for the workloads labelled `app: <app>`,
/// with `action` and `rules` (a YAML flow sequence).
pub fn authorization_policy(app: &str, name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  selector:\n    matchLabels: {{app: {app}}}\n  action: {action}\n  rules: {rules}\n"
    )
}

/// `allow-<sa>` at `app`: ALLOW only the principal of service account `<sa>` in
/// `default`.
pub fn allow_only(app: &str, sa: &str) -> String {
    authorization_policy(
        app,
        &format!("allow-{sa}"),
        "ALLOW",
        &format!(
            r#"[{{from: [{{source: {{principals: ["cluster.local/ns/default/sa/{sa}"]}}}}]}}]"#
        ),
    )
}

/// A `PeerAuthentication` `default/<app>-mtls` with mTLS `mode` for the workloads
/// labelled `app: <app>`.
pub fn peer_authentication(app: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {app}-mtls\n  namespace: default\nspec:\n  selector:\n    matchLabels: {{app: {app}}}\n  mtls:\n    mode: {mode}\n"
    )
}
