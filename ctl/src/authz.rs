//! `warden authz check`: evaluate a request against Istio policy files, offline, with
//! the same engines the proxy uses: RequestAuthentication (JWT) first, then
//! AuthorizationPolicy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use warden_policy::authz::{Engine, HttpRequest, Protocol, Request, Workload};
use warden_policy::loader::ConfigSet;
use warden_policy::normalize::{PathNormalization, normalize};
use warden_policy::peer_authn::PeerAuthn;
use warden_policy::request_authn::{self, Outcome, RequestAuthn};
use warden_policy::resources::{Action, MtlsMode};

mod accesslog;
mod replay;
mod suggest;

/// `warden authz ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuthzCmd {
    /// Decide one request as Istio would; prints JSON.
    Check {
        /// Policy files or directories (Istio YAML); repeatable.
        #[arg(long = "config", required = true)]
        config: Vec<PathBuf>,
        /// The request, a JSON file (see the README), or - for stdin.
        #[arg(long)]
        request: PathBuf,
        /// Namespace whose policies apply mesh-wide.
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        /// The mesh's trust domain (`cluster.local` in policies stands for it).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Also say, for each policy considered, why it did or did not match.
        #[arg(long)]
        explain: bool,
        /// `meshConfig.pathNormalization`: how the proxy normalizes the path before any
        /// policy sees it (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES).
        #[arg(long, default_value = "BASE", value_parser = PathNormalization::parse)]
        path_normalization: PathNormalization,
    },
    /// Re-decide the requests in proxy access logs under a proposed policy set and
    /// report what would change: allowed requests that would be denied and the reverse,
    /// grouped by source principal, destination, method and path pattern; requests
    /// whose decision depends on what the log does not record are "uncertain".
    #[command(after_help = replay::EXIT_CODES)]
    Replay(replay::ReplayArgs),
    /// Write the least-privilege ALLOW AuthorizationPolicies (YAML) that allow exactly
    /// the identity-to-identity traffic the access logs show as allowed.
    #[command(after_help = suggest::EXIT_CODES)]
    Suggest(suggest::SuggestArgs),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckFile {
    workload: WorkloadJson,
    request: RequestJson,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadJson {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum ProtocolJson {
    Http,
    Tcp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceJson {
    principal: Option<String>,
    namespace: Option<String>,
    ip: Option<std::net::IpAddr>,
    remote_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationJson {
    ip: Option<std::net::IpAddr>,
    port: u16,
    sni: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpJson {
    method: String,
    path: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    protocol: ProtocolJson,
    #[serde(default)]
    source: SourceJson,
    destination: DestinationJson,
    http: Option<HttpJson>,
    jwt_claims: Option<serde_json::Value>,
    /// Unix seconds to check JWT `exp`/`nbf` against (default: the current time).
    now: Option<u64>,
}

/// A request file in the engines' terms.
#[derive(Debug)]
struct Check {
    workload: Workload,
    request: Request,
    /// `request.now`.
    now: Option<u64>,
}

/// An AuthorizationPolicy action as Istio writes it.
pub(crate) fn action(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

/// Parses the request file into the engines' terms, or says what is wrong.
fn parse_request(text: &str) -> Result<Check, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let f: CheckFile =
        serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let r = f.request;
    let principal = r
        .source
        .principal
        .map(|p| p.strip_prefix("spiffe://").map(String::from).unwrap_or(p));
    if let (Some(ns), Some(p)) = (&r.source.namespace, &principal) {
        let from_principal = p.split('/').skip_while(|s| *s != "ns").nth(1);
        if from_principal != Some(ns.as_str()) {
            return Err(format!(
                "request.source.namespace {ns:?} does not match the principal {p:?}: Istio derives the namespace from the peer identity"
            ));
        }
    }
    if principal.is_none() && r.source.namespace.is_some() {
        return Err(
            "request.source.namespace needs a principal: a plaintext peer has no namespace".into(),
        );
    }
    let protocol = match r.protocol {
        ProtocolJson::Http => Protocol::Http,
        ProtocolJson::Tcp => Protocol::Tcp,
    };
    if protocol == Protocol::Http && r.http.is_none() {
        return Err("request.http is required when request.protocol is \"http\"".into());
    }
    if protocol == Protocol::Tcp && r.http.is_some() {
        return Err("request.http must be null when request.protocol is \"tcp\"".into());
    }
    let request = Request {
        protocol,
        source_principal: principal,
        source_ip: r.source.ip,
        remote_ip: r.source.remote_ip,
        destination_ip: r.destination.ip,
        destination_port: r.destination.port,
        sni: r.destination.sni,
        http: r.http.map(|h| HttpRequest {
            method: h.method,
            path: h.path,
            host: h.host,
            headers: h
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        }),
        jwt: r.jwt_claims,
    };
    Ok(Check {
        workload: Workload {
            namespace: f.workload.namespace,
            labels: f.workload.labels,
        },
        request,
        now: r.now,
    })
}

/// What RequestAuthentication did before authorization.
#[derive(Debug)]
enum Authn {
    /// No RequestAuthentication applies, claims were given, or the request is TCP.
    Skipped,
    /// The JWT filter ran; the request goes on to authorization.
    Passed(serde_json::Value),
    /// The JWT filter refused the request: the answer, authorization is not reached.
    Refused(serde_json::Value),
}

/// Runs the JWT filter of the workload on the request, as Envoy does before RBAC: only
/// when the file gives no `jwt_claims`, the request is HTTP and a RequestAuthentication
/// applies. Only those policies are compiled (their JWKS read), so a remote `jwksUri`
/// elsewhere in the mesh does not stop the check. A verified token's claims become the
/// request's, and the filter's header edits (token stripped, payload and claim headers)
/// are made before authorization sees the request.
fn authenticate(set: &ConfigSet, root_namespace: &str, check: &mut Check) -> Result<Authn, String> {
    let Some(http) = check.request.http.as_mut() else {
        return Ok(Authn::Skipped);
    };
    if check.request.jwt.is_some() {
        return Ok(Authn::Skipped);
    }
    let applicable = ConfigSet {
        request_authentications: set
            .request_authentications
            .iter()
            .filter(|p| request_authn::applies(p, root_namespace, &check.workload))
            .cloned()
            .collect(),
        // The JWKS files the loader read for them.
        jwks_files: set.jwks_files.clone(),
        ..ConfigSet::default()
    };
    if applicable.request_authentications.is_empty() {
        return Ok(Authn::Skipped);
    }
    let ra = RequestAuthn::compile(&applicable, root_namespace).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let now = check
        .now
        .map_or_else(SystemTime::now, |s| UNIX_EPOCH + Duration::from_secs(s));
    Ok(match ra.authenticate(&check.workload, http, now) {
        Outcome::NoToken { edits } => {
            request_authn::apply_edits(&edits, http);
            Authn::Passed(serde_json::json!({"result": "no_token"}))
        }
        Outcome::Authenticated(a) => {
            request_authn::apply_edits(&a.edits, http);
            let summary = serde_json::json!({
                "result": "authenticated", "principal": a.principal, "policy": a.policy,
                "rule": a.rule, "claims": a.claims,
            });
            check.request.jwt = Some(a.claims);
            Authn::Passed(summary)
        }
        Outcome::Rejected(r) => Authn::Refused(serde_json::json!({
            "decision": "DENY",
            "status": r.status,
            "policy": r.policy,
            "rule": r.rule,
            "reason": r.reason(),
            "audit": [],
            "dry_run": [],
            "request_authentication": {
                "result": "rejected", "policy": r.policy, "rule": r.rule, "reason": r.reason(),
            },
        })),
    })
}

fn bad(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("warden authz check: {message}");
    ExitCode::from(2)
}

/// The request file's text (`-`: stdin), or why it cannot be read.
pub(crate) fn read_request(path: &std::path::Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("cannot read the request from stdin: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --request {}: {e}", path.display()))
}

/// One policy's explanation as `warden authz check --explain` prints it (and the
/// console's edge panel shows it).
pub(crate) fn explanation_json(e: &warden_policy::authz::Explanation) -> serde_json::Value {
    serde_json::json!({
        "policy": e.policy, "action": action(e.action), "dry_run": e.dry_run,
        "applies": e.applies, "matched_rule": e.matched_rule, "why": e.why,
    })
}

/// Runs `warden authz ...`.
pub fn run(cmd: AuthzCmd) -> ExitCode {
    let (config, request, root_namespace, trust_domain, explain, path_normalization) = match cmd {
        AuthzCmd::Check {
            config,
            request,
            root_namespace,
            trust_domain,
            explain,
            path_normalization,
        } => (
            config,
            request,
            root_namespace,
            trust_domain,
            explain,
            path_normalization,
        ),
        AuthzCmd::Replay(args) => return replay::run(args),
        AuthzCmd::Suggest(args) => return suggest::run(args),
    };
    let text = match read_request(&request) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let mut check = match parse_request(&text) {
        Ok(x) => x,
        Err(e) => return bad(format!("--request {}: {e}", request.display())),
    };
    // The proxy normalizes the path first; every filter, JWT included, sees the result.
    let mut refused_path = None;
    if let Some(http) = check.request.http.as_mut() {
        match normalize(&http.path, path_normalization) {
            Ok(p) => http.path = p.into_owned(),
            Err(e) => refused_path = Some(e.to_string()),
        }
    }
    let set = match warden_policy::loader::load(&config) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let engine = match Engine::compile_for(&set, &root_namespace, &trust_domain) {
        Ok(e) => e,
        Err(errors) => {
            return bad(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"));
        }
    };
    let authn = match authenticate(&set, &root_namespace, &mut check) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let (workload, req) = (&check.workload, &check.request);
    let mtls = PeerAuthn::new(&set, &root_namespace).mode(workload, req.destination_port);
    let peer = serde_json::json!({
        "mode": mtls_mode(mtls.mode), "policy": mtls.policy, "port_level": mtls.port_level,
    });
    if mtls.mode == MtlsMode::Strict && req.source_principal.is_none() {
        // The sidecar refuses the plaintext connection before any HTTP filter runs.
        let reason = format!(
            "refused before authorization: {} requires mutual TLS on port {} and the peer is plaintext",
            mtls.policy.as_deref().map_or_else(
                || "the mesh default".to_string(),
                |p| format!("PeerAuthentication {p}")
            ),
            req.destination_port,
        );
        let mut out = serde_json::json!({
            "decision": "DENY", "status": null, "policy": null, "rule": null,
            "reason": reason, "audit": [], "dry_run": [], "peer_authentication": peer,
        });
        if explain {
            out["explain"] = serde_json::json!([]);
        }
        return print(&out);
    }
    if let Some(why) = refused_path {
        let mut out = serde_json::json!({
            "decision": "DENY", "status": 400, "policy": null, "rule": null,
            "reason": format!("refused before authorization: {why}"),
            "audit": [], "dry_run": [], "peer_authentication": peer,
        });
        if explain {
            out["explain"] = serde_json::json!([]);
        }
        return print(&out);
    }
    if let Authn::Refused(mut out) = authn {
        if explain {
            // Envoy answers before the RBAC filter: no AuthorizationPolicy is considered.
            out["explain"] = serde_json::json!([]);
        }
        return print(&out);
    }
    let d = engine.evaluate(workload, req);
    let mut out = serde_json::json!({
        "decision": if d.allowed { "ALLOW" } else { "DENY" },
        "status": if d.allowed { 200 } else { 403 },
        "policy": d.deciding.as_ref().map(|m| m.policy.clone()),
        "rule": d.deciding.as_ref().map(|m| m.rule),
        "reason": d.reason,
        "audit": d.audit.iter().map(|m| serde_json::json!({"policy": m.policy, "rule": m.rule})).collect::<Vec<_>>(),
        "dry_run": d.dry_run.iter().map(|x| serde_json::json!({
            "policy": x.policy, "action": action(x.action), "matched": x.rule.is_some(), "rule": x.rule,
        })).collect::<Vec<_>>(),
    });
    if let Some((provider, m)) = &d.custom {
        out["custom"] = serde_json::json!({"provider": provider, "policy": m.policy, "rule": m.rule,
            "note": "the external authorizer must be asked; it can still deny"});
    }
    if let Authn::Passed(summary) = authn {
        out["request_authentication"] = summary;
    }
    if let Some(http) = &req.http {
        out["path"] = serde_json::json!(http.path);
    }
    out["peer_authentication"] = peer;
    if explain {
        out["explain"] = engine
            .explain(workload, req)
            .iter()
            .map(explanation_json)
            .collect();
    }
    print(&out)
}

fn mtls_mode(m: MtlsMode) -> &'static str {
    match m {
        MtlsMode::Unset => "UNSET",
        MtlsMode::Disable => "DISABLE",
        MtlsMode::Permissive => "PERMISSIVE",
        MtlsMode::Strict => "STRICT",
    }
}

fn print(out: &serde_json::Value) -> ExitCode {
    match serde_json::to_string_pretty(out) {
        Ok(s) => println!("{s}"),
        Err(e) => return bad(e),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_files_are_checked() {
        let ok = r#"{"workload": {"namespace": "foo", "labels": {"app": "x"}},
          "request": {"protocol": "http", "source": {"principal": "spiffe://cluster.local/ns/a/sa/b", "namespace": "a", "ip": "10.1.0.5"},
                      "destination": {"ip": "10.0.0.10", "port": 8080},
                      "http": {"method": "GET", "path": "/x?y=1", "host": "svc.foo", "headers": {"X-K": "v"}}, "jwt_claims": null}}"#;
        let Check {
            workload: w,
            request: r,
            now,
        } = parse_request(ok).unwrap();
        assert_eq!(now, None);
        assert_eq!(w.namespace, "foo");
        assert_eq!(
            r.source_principal.as_deref(),
            Some("cluster.local/ns/a/sa/b")
        );
        assert_eq!(r.http.unwrap().headers["x-k"], "v");
        let cases = [
            (
                ok.replace("\"namespace\": \"a\"", "\"namespace\": \"z\""),
                "does not match the principal",
            ),
            (
                ok.replace("\"port\": 8080", "\"port\": 80800"),
                "request.destination.port",
            ),
            (
                ok.replace("\"protocol\": \"http\"", "\"protocol\": \"udp\""),
                "request.protocol",
            ),
            (ok.replace("\"method\"", "\"verb\""), "request.http"),
            (
                ok.replace("\"protocol\": \"http\"", "\"protocol\": \"tcp\""),
                "must be null",
            ),
        ];
        for (text, want) in cases {
            let e = parse_request(&text).unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
