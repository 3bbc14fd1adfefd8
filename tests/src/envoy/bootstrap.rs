//! The one Envoy bootstrap builder of the tests: Istio's shape (a node, the admin
//! interface on `127.0.0.1:0`, a static `sds-grpc` cluster speaking HTTP/2 over the
//! agent's unix socket, certificates as SDS secrets by name: `default` or a SPIFFE ID
//! for the SVID, `ROOTCA` for the bundle) plus the listeners and clusters a test adds.
//!
//! It renders JSON (Envoy reads a `.json` bootstrap as such), built as values rather
//! than indented text, so a listener or cluster is written once and composed.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The `sds-grpc` cluster's name (Istio's).
pub const SDS_CLUSTER: &str = "sds-grpc";

/// An `SdsSecretConfig` for `name` from the `sds-grpc` cluster (Istio's form).
pub fn sds(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
                "set_node_on_first_message_only": true,
                "transport_api_version": "V3",
            },
            "initial_fetch_timeout": "0s",
            "resource_api_version": "V3",
        },
    })
}

fn socket_address(ip: &str, port: u16) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

/// A `ClusterLoadAssignment` of `cluster` with one endpoint at `address`.
fn load_assignment(cluster: &str, address: Value) -> Value {
    json!({
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    })
}

/// An EDS response for a cluster built with [`Cluster::endpoints_from_file`]: one
/// endpoint `ip:port` (or none), for [`crate::write_atomic`] (Envoy watches the file
/// for a rename onto it).
pub fn endpoints_file(cluster: &str, endpoint: Option<(&str, u16)>) -> String {
    let mut cla = json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster,
    });
    if let Some((ip, port)) = endpoint {
        cla["endpoints"] = load_assignment(cluster, socket_address(ip, port))["endpoints"].clone();
    }
    json!({"version_info": "1", "resources": [cla]}).to_string()
}

/// A bootstrap; see the module docs.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    node_id: String,
    sds_socket: PathBuf,
    listeners: Vec<Listener>,
    clusters: Vec<Cluster>,
}

impl Bootstrap {
    /// Node `node_id` (cluster `envoy.default`) with its secrets from the SDS server on
    /// `sds_socket`.
    pub fn new(node_id: &str, sds_socket: &Path) -> Self {
        Self {
            node_id: node_id.into(),
            sds_socket: sds_socket.into(),
            listeners: Vec::new(),
            clusters: Vec::new(),
        }
    }

    pub fn listener(mut self, l: Listener) -> Self {
        self.listeners.push(l);
        self
    }

    pub fn cluster(mut self, c: Cluster) -> Self {
        self.clusters.push(c);
        self
    }

    /// The bootstrap as a JSON value.
    pub fn to_value(&self) -> Value {
        let sds_cluster = Cluster::pipe(SDS_CLUSTER, &self.sds_socket)
            .connect_timeout("1s")
            .http2();
        let clusters: Vec<Value> = std::iter::once(&sds_cluster)
            .chain(&self.clusters)
            .map(Cluster::to_value)
            .collect();
        json!({
            "node": {"id": self.node_id, "cluster": "envoy.default"},
            "admin": {"address": socket_address("127.0.0.1", 0)},
            "static_resources": {
                "listeners": self.listeners.iter().map(Listener::to_value).collect::<Vec<_>>(),
                "clusters": clusters,
            },
        })
    }

    /// The bootstrap as JSON text (write it to a `.json` file).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap()
    }
}

/// Server-side TLS of a listener: the SVID secret `cert`, a client certificate
/// required and checked against `ROOTCA` (and, with [`DownstreamTls::san_prefix`],
/// its URI SAN).
#[derive(Debug, Clone)]
pub struct DownstreamTls {
    cert: String,
    alpn: Vec<String>,
    san_prefix: Option<String>,
}

impl DownstreamTls {
    pub fn new(cert: &str) -> Self {
        Self {
            cert: cert.into(),
            alpn: Vec::new(),
            san_prefix: None,
        }
    }

    /// ALPN protocols offered, in order.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_string()).collect();
        self
    }

    /// Accept only client certificates whose URI SAN starts with `prefix`.
    pub fn san_prefix(mut self, prefix: &str) -> Self {
        self.san_prefix = Some(prefix.into());
        self
    }

    fn to_value(&self) -> Value {
        let mut ctx = json!({"tls_certificate_sds_secret_configs": [sds(&self.cert)]});
        if !self.alpn.is_empty() {
            ctx["alpn_protocols"] = json!(self.alpn);
        }
        match &self.san_prefix {
            None => ctx["validation_context_sds_secret_config"] = sds("ROOTCA"),
            Some(prefix) => {
                ctx["combined_validation_context"] = json!({
                    "default_validation_context": {"match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": prefix}}]},
                    "validation_context_sds_secret_config": sds("ROOTCA"),
                })
            }
        }
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": ctx,
            },
        })
    }
}

/// An HTTP listener: one HTTP connection manager (stat prefix: the listener's name)
/// with one virtual host for every domain, its routes matched by path prefix in order.
#[derive(Debug, Clone)]
pub struct Listener {
    name: String,
    address: Value,
    tls: Option<DownstreamTls>,
    hcm: serde_json::Map<String, Value>,
    routes: Vec<Value>,
}

impl Listener {
    /// Plain HTTP on `ip:port` (port 0: any; read it back from the admin interface).
    pub fn http(name: &str, ip: &str, port: u16) -> Self {
        Self {
            name: name.into(),
            address: socket_address(ip, port),
            tls: None,
            hcm: serde_json::Map::new(),
            routes: Vec::new(),
        }
    }

    /// mTLS instead of plain HTTP.
    pub fn tls(mut self, tls: DownstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// An extra field of the `HttpConnectionManager` (`codec_type`,
    /// `forward_client_cert_details`, ...).
    pub fn hcm(mut self, key: &str, value: Value) -> Self {
        self.hcm.insert(key.into(), value);
        self
    }

    /// Requests under `prefix` go to `cluster` (10 s timeout).
    pub fn route(mut self, prefix: &str, cluster: &str) -> Self {
        self.routes.push(json!({"match": {"prefix": prefix},
            "route": {"cluster": cluster, "timeout": "10s"}}));
        self
    }

    /// Requests under `prefix` are answered by Envoy itself.
    pub fn direct_response(mut self, prefix: &str, status: u16, body: &str) -> Self {
        self.routes.push(json!({"match": {"prefix": prefix},
            "direct_response": {"status": status, "body": {"inline_string": body}}}));
        self
    }

    fn to_value(&self) -> Value {
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": self.name,
            "route_config": {"virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": self.routes}]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }],
        });
        for (k, v) in &self.hcm {
            hcm[k] = v.clone();
        }
        let mut chain = json!({"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]});
        if let Some(tls) = &self.tls {
            chain["transport_socket"] = tls.to_value();
        }
        json!({"name": self.name, "address": self.address, "filter_chains": [chain]})
    }
}

/// Client-side TLS of a cluster: the SVID secret `cert`, the server checked against
/// `ROOTCA` and its URI SAN exactly `server_id` (secure naming).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    cert: String,
    server_id: String,
    sni: Option<String>,
    alpn: Option<String>,
}

impl UpstreamTls {
    pub fn new(cert: &str, server_id: &str) -> Self {
        Self {
            cert: cert.into(),
            server_id: server_id.into(),
            sni: None,
            alpn: None,
        }
    }

    pub fn sni(mut self, sni: &str) -> Self {
        self.sni = Some(sni.into());
        self
    }

    pub fn alpn(mut self, protocol: &str) -> Self {
        self.alpn = Some(protocol.into());
        self
    }

    fn to_value(&self) -> Value {
        let mut ctx = json!({
            "tls_certificate_sds_secret_configs": [sds(&self.cert)],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": self.server_id}}]},
                "validation_context_sds_secret_config": sds("ROOTCA"),
            },
        });
        if let Some(alpn) = &self.alpn {
            ctx["alpn_protocols"] = json!([alpn]);
        }
        let mut tls = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": ctx,
        });
        if let Some(sni) = &self.sni {
            tls["sni"] = json!(sni);
        }
        json!({"name": "envoy.transport_sockets.tls", "typed_config": tls})
    }
}

/// Which HTTP version a cluster speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Where a cluster's one endpoint is.
#[derive(Debug, Clone)]
enum Endpoints {
    Static(Value),
    /// EDS from a file.
    File(PathBuf),
}

/// An upstream cluster with one endpoint.
#[derive(Debug, Clone)]
pub struct Cluster {
    name: String,
    endpoints: Endpoints,
    connect_timeout: String,
    protocol: Option<Protocol>,
    max_requests_per_connection: Option<u32>,
    tls: Option<UpstreamTls>,
}

impl Cluster {
    fn with(name: &str, endpoints: Endpoints) -> Self {
        Self {
            name: name.into(),
            endpoints,
            connect_timeout: "2s".into(),
            protocol: None,
            max_requests_per_connection: None,
            tls: None,
        }
    }

    /// A `STATIC` cluster to `ip:port` (2 s connect timeout).
    pub fn to(name: &str, ip: &str, port: u16) -> Self {
        Self::with(name, Endpoints::Static(socket_address(ip, port)))
    }

    /// A `STATIC` cluster to the unix socket `path`.
    pub fn pipe(name: &str, path: &Path) -> Self {
        let address = json!({"pipe": {"path": path}});
        Self::with(name, Endpoints::Static(address))
    }

    /// An `EDS` cluster whose endpoints Envoy reads from `path` and re-reads when a file
    /// is renamed onto it ([`endpoints_file`]): for an endpoint known only once Envoy
    /// runs (its own listener on port 0).
    pub fn endpoints_from_file(name: &str, path: &Path) -> Self {
        Self::with(name, Endpoints::File(path.into()))
    }

    pub fn connect_timeout(mut self, timeout: &str) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// HTTP/1.1 upstream.
    pub fn http1(mut self) -> Self {
        self.protocol = Some(Protocol::Http1);
        self
    }

    /// HTTP/2 upstream.
    pub fn http2(mut self) -> Self {
        self.protocol = Some(Protocol::Http2);
        self
    }

    /// At most `n` requests per upstream connection (1: a fresh handshake each).
    pub fn max_requests_per_connection(mut self, n: u32) -> Self {
        self.max_requests_per_connection = Some(n);
        self
    }

    pub fn tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    fn to_value(&self) -> Value {
        let mut c = json!({"name": self.name, "connect_timeout": self.connect_timeout});
        match &self.endpoints {
            Endpoints::Static(address) => {
                c["type"] = json!("STATIC");
                c["load_assignment"] = load_assignment(&self.name, address.clone());
            }
            Endpoints::File(path) => {
                c["type"] = json!("EDS");
                c["eds_cluster_config"] = json!({"eds_config": {
                    "path_config_source": {"path": path},
                    "resource_api_version": "V3",
                }});
            }
        }
        if let Some(protocol) = self.protocol {
            let mut options = json!({
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": match protocol {
                    Protocol::Http1 => json!({"http_protocol_options": {}}),
                    Protocol::Http2 => json!({"http2_protocol_options": {}}),
                },
            });
            if let Some(n) = self.max_requests_per_connection {
                options["common_http_protocol_options"] = json!({"max_requests_per_connection": n});
            }
            c["typed_extension_protocol_options"] =
                json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options});
        }
        if let Some(tls) = &self.tls {
            c["transport_socket"] = tls.to_value();
        }
        c
    }
}
