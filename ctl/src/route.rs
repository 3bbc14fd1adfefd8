//! `warden route check`: what a client sidecar does with one request, offline, from
//! Istio's VirtualService and DestinationRule YAML, with the route table the proxy
//! uses (`warden_policy::route`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;
use warden_policy::route::{RouteRequest, RouteTable, TableOptions};

/// `warden route ...`
#[derive(Debug, clap::Subcommand)]
pub enum RouteCmd {
    /// Decide one request as a client sidecar would; prints JSON.
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
    source: SourceJson,
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
}

fn bad(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("warden route check: {message}");
    ExitCode::from(2)
}

/// Reads and checks the request file.
fn parse_request(text: &str) -> Result<RouteRequest, String> {
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
    let _ = file.source.principal;
    Ok(RouteRequest {
        source_namespace: file.source.namespace,
        source_labels: file.source.labels,
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
    })
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
    let req = match parse_request(&text) {
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
    let mut lines = Vec::new();
    let decision = table.decide(&req, explain.then_some(&mut lines));
    let mut out = serde_json::to_value(&decision).unwrap_or_default();
    if explain && let Some(o) = out.as_object_mut() {
        o.insert("explain".into(), lines.into());
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
        let r = parse_request(ok).unwrap();
        assert_eq!(r.headers["end-user"], "jason");
        assert!(r.http);
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
        ] {
            let e = parse_request(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
