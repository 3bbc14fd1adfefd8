//! `warden route check`: what a client sidecar (or, with `"gateway"`, an ingress or
//! egress gateway) does with one request, offline, from Istio's VirtualService,
//! DestinationRule and Gateway YAML, with the route table the proxy uses
//! (`warden_policy::route`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;
use warden_policy::route::{GatewayServer, RouteRequest, RouteTable, TableOptions};

/// `warden route ...`
#[derive(Debug, clap::Subcommand)]
pub enum RouteCmd {
    /// Decide one request as a client sidecar (or a Gateway's proxy) would; prints JSON.
    Check {
        /// Config files or directories (Istio YAML); repeatable.
        #[arg(long = "config", required = true)]
        config: Vec<PathBuf>,
        /// The request, a JSON file (see the README), or - for stdin.
        #[arg(long)]
        request: PathBuf,
        /// Namespace whose DestinationRules apply mesh-wide.
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        /// The cluster's DNS domain.
        #[arg(long, default_value = "cluster.local")]
        domain: String,
        /// Also say, rule by rule, why each did or did not match.
        #[arg(long)]
        explain: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckFile {
    /// `ns/name` of a Gateway: decide as its proxy.
    #[serde(default)]
    gateway: Option<String>,
    /// The client; with `gateway`, the gateway workload (default: the Gateway's
    /// namespace and its selector's labels).
    #[serde(default)]
    source: Option<SourceJson>,
    request: RequestJson,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceJson {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    principal: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    protocol: String,
    host: String,
    port: u16,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    scheme: Option<String>,
    /// The SNI of a TLS connection.
    #[serde(default)]
    sni: Option<String>,
}

/// A checked request file.
#[derive(Debug)]
struct Check {
    request: RouteRequest,
    /// `ns/name` of the Gateway to decide as.
    gateway: Option<String>,
    /// Whether `source` was given (else a gateway's defaults apply).
    has_source: bool,
}

fn bad(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("warden route check: {message}");
    ExitCode::from(2)
}

/// Reads and checks the request file.
fn parse_request(text: &str) -> Result<Check, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let file: CheckFile =
        serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let r = file.request;
    let http = match r.protocol.as_str() {
        "http" => true,
        "tcp" => false,
        other => return Err(format!("request.protocol: {other:?} is not http or tcp")),
    };
    if r.host.trim().is_empty() {
        return Err("request.host: required".into());
    }
    let path = r.path.unwrap_or_else(|| "/".into());
    if http && !path.starts_with('/') {
        return Err(format!("request.path: {path:?} must start with /"));
    }
    if let Some(g) = &file.gateway
        && !g
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
    {
        return Err(format!("gateway: {g:?} is not ns/name"));
    }
    if r.sni.as_deref().is_some_and(|s| s.trim().is_empty()) {
        return Err("request.sni: empty".into());
    }
    let has_source = file.source.is_some();
    let source = match (file.source, &file.gateway) {
        (Some(s), _) => s,
        (None, Some(_)) => SourceJson {
            namespace: String::new(),
            labels: BTreeMap::new(),
            principal: None,
        },
        (None, None) => return Err("source: required (or a top-level gateway)".into()),
    };
    let _ = source.principal;
    let request = RouteRequest {
        source_namespace: source.namespace,
        source_labels: source.labels,
        http,
        host: r.host,
        port: r.port,
        method: r.method.unwrap_or_else(|| "GET".into()),
        path,
        headers: r
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
        scheme: r.scheme.unwrap_or_else(|| "http".into()),
        skip_policy: false,
        gateways: Vec::new(),
        sni: r.sni.map(|s| s.trim().to_ascii_lowercase()),
    };
    Ok(Check {
        request,
        gateway: file.gateway,
        has_source,
    })
}

/// `host` without `:port`, lowercase.
fn host_name(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name.to_string()
        }
        _ => h,
    }
}

/// Whether `server` takes the request: on its port, HTTP by the Host (or the SNI of
/// HTTPS), TLS by the SNI, TCP without an SNI whatever the host (Istio routes a TCP
/// server's connections without looking at one).
fn takes(server: &GatewayServer, req: &RouteRequest) -> bool {
    if server.port != req.port {
        return false;
    }
    match (req.http, &req.sni) {
        (true, sni) => {
            let name = match sni {
                Some(sni) if req.scheme == "https" => sni.clone(),
                _ => host_name(&req.host),
            };
            server.is_http() && server.serves_host(&name)
        }
        (false, Some(sni)) => !server.is_http() && server.tls.is_some() && server.serves_host(sni),
        (false, None) => !server.is_http() && !server.is_passthrough(),
    }
}

/// Makes `check.request` one the proxy of Gateway `name` decides: the gateway
/// workload's namespace and labels (unless `source` gave them), and every Gateway
/// selecting it with a server that takes the request. The server of `name` that takes
/// it, or why none does.
fn as_gateway<'t>(
    table: &'t RouteTable,
    name: &str,
    check: &mut Check,
) -> Result<&'t GatewayServer, String> {
    let gw = table
        .gateway(name)
        .ok_or_else(|| format!("gateway {name}: no such Gateway in the config"))?;
    let req = &mut check.request;
    if !check.has_source {
        req.source_namespace = gw.namespace.clone();
        req.source_labels = gw.selector.clone().unwrap_or_default();
    }
    let server = gw.servers.iter().find(|s| takes(s, req)).ok_or_else(|| {
        let what = match (&req.sni, req.http) {
            (Some(sni), false) => format!("SNI {sni}"),
            (_, false) => "TCP".to_string(),
            (_, true) => format!("host {}", host_name(&req.host)),
        };
        format!(
            "gateway {name} has no server on port {} for {what}",
            req.port
        )
    })?;
    let mut gateways = vec![name.to_string()];
    for s in table.gateway_servers(&req.source_labels) {
        if !gateways.contains(&s.gateway) && takes(&s, req) {
            gateways.push(s.gateway);
        }
    }
    req.gateways = gateways;
    Ok(server)
}

/// Runs `warden route ...`.
pub fn run(cmd: RouteCmd) -> ExitCode {
    let RouteCmd::Check {
        config,
        request,
        root_namespace,
        domain,
        explain,
    } = cmd;
    let text = match crate::authz::read_request(&request) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let mut check = match parse_request(&text) {
        Ok(r) => r,
        Err(e) => return bad(format!("--request {}: {e}", request.display())),
    };
    let set = match warden_policy::loader::load(&config) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let table = match RouteTable::build(
        &set,
        TableOptions {
            domain,
            root_namespace,
        },
    ) {
        Ok(t) => t,
        Err(errors) => {
            return bad(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"));
        }
    };
    let server = match check.gateway.clone() {
        Some(name) => match as_gateway(&table, &name, &mut check) {
            Ok(s) => Some(format!(
                "{} servers[{}] (port {}, hosts {})",
                s.gateway,
                s.index,
                s.port,
                s.hosts.join(", ")
            )),
            Err(e) => return bad(format!("--request {}: {e}", request.display())),
        },
        None => None,
    };
    let req = check.request;
    let mut lines = Vec::new();
    let decision = table.decide(&req, explain.then_some(&mut lines));
    let mut out = serde_json::to_value(&decision).unwrap_or_default();
    if let Some(o) = out.as_object_mut() {
        if let Some(server) = server {
            o.insert("gateway_server".into(), server.into());
            o.insert("gateways".into(), req.gateways.clone().into());
        }
        if explain {
            o.insert("explain".into(), lines.into());
        }
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    ExitCode::SUCCESS
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_files_are_checked_by_field() {
        let ok = r#"{"source": {"namespace": "foo", "labels": {"app": "productpage"}, "principal": "cluster.local/ns/foo/sa/productpage"}, "request": {"protocol": "http", "host": "reviews", "port": 9080, "method": "GET", "path": "/x?y=1", "headers": {"End-User": "jason"}}}"#;
        let r = parse_request(ok).unwrap().request;
        assert_eq!(r.headers["end-user"], "jason");
        assert!(r.http);
        let g = parse_request(r#"{"gateway": "istio-system/gw", "request": {"protocol": "tcp", "host": "h", "port": 443, "sni": "A.example.com"}}"#).unwrap();
        assert_eq!(g.gateway.as_deref(), Some("istio-system/gw"));
        assert!(!g.has_source);
        assert_eq!(g.request.sni.as_deref(), Some("a.example.com"));
        for (text, want) in [
            (
                r#"{"source": {"namespace": "a"}, "request": {"protocol": "udp", "host": "h", "port": 1}}"#,
                "request.protocol",
            ),
            (
                r#"{"source": {"namespace": "a"}, "request": {"protocol": "http", "host": "h", "port": 70000}}"#,
                "request.port",
            ),
            (
                r#"{"source": {"namespace": "a"}, "request": {"protocol": "http", "host": "h", "port": 1, "path": "x"}}"#,
                "request.path",
            ),
            (
                r#"{"source": {"namespace": "a", "lables": {}}, "request": {"protocol": "http", "host": "h", "port": 1}}"#,
                "lables",
            ),
            (
                r#"{"request": {"protocol": "http", "host": "h", "port": 1}}"#,
                "source: required",
            ),
            (
                r#"{"gateway": "gw", "request": {"protocol": "http", "host": "h", "port": 1}}"#,
                "gateway: \"gw\" is not ns/name",
            ),
        ] {
            let e = parse_request(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
