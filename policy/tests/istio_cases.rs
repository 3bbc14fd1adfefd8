//! The policy case table: `tests/cases/*.yaml`, the one home of Istio's documented
//! AuthorizationPolicy cases, each written from Istio's reference or concept pages (its
//! `ref`), run through the same `Engine` that `warden authz check` and the proxy use.
//! Every failing case is reported by file and name.
//!
//! A case: `policies` (Istio YAML), `workload` (default `foo`, `app: httpbin`),
//! `request` (defaults: plaintext HTTP `GET /` to `httpbin.foo:8080` from 10.1.0.5 to
//! 10.0.0.10), and the expected `expect` (`ALLOW`/`DENY`), and optionally the
//! deciding `policy`/`rule`, the `audit` matches, the `dry_run` matches and the
//! `custom` provider.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use warden_policy::authz::{Engine, HttpRequest, Protocol, Request, Workload};
use warden_policy::loader::load_str;
use warden_policy::normalize::{PathNormalization, normalize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    policies: String,
    #[serde(default)]
    workload: Option<WorkloadCase>,
    #[serde(default)]
    request: RequestCase,
    expect: String,
    policy: Option<String>,
    rule: Option<usize>,
    audit: Option<Vec<String>>,
    dry_run: Option<Vec<String>>,
    custom: Option<String>,
    trust_domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadCase {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestCase {
    tcp: Option<bool>,
    principal: Option<String>,
    ip: Option<String>,
    remote_ip: Option<String>,
    destination_ip: Option<String>,
    port: Option<u16>,
    sni: Option<String>,
    method: Option<String>,
    path: Option<String>,
    /// `meshConfig.pathNormalization` the proxy normalizes `path` with (`BASE`).
    normalization: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    jwt: Option<serde_json::Value>,
}

impl RequestCase {
    fn build(&self) -> Request {
        let ip = |v: &Option<String>, d: &str| {
            Some(
                v.as_deref()
                    .unwrap_or(d)
                    .parse()
                    .expect("case IPs are valid"),
            )
        };
        let tcp = self.tcp.unwrap_or(false);
        Request {
            protocol: if tcp { Protocol::Tcp } else { Protocol::Http },
            source_principal: self.principal.clone(),
            source_ip: ip(&self.ip, "10.1.0.5"),
            remote_ip: ip(&self.remote_ip, self.ip.as_deref().unwrap_or("10.1.0.5")),
            destination_ip: ip(&self.destination_ip, "10.0.0.10"),
            destination_port: self.port.unwrap_or(8080),
            sni: self.sni.clone(),
            http: (!tcp).then(|| HttpRequest {
                method: self.method.clone().unwrap_or_else(|| "GET".into()),
                path: self.path.clone().unwrap_or_else(|| "/".into()),
                host: self.host.clone().unwrap_or_else(|| "httpbin.foo".into()),
                headers: self
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
            }),
            jwt: self.jwt.clone(),
        }
    }
}

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/cases exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Checks one case; `Err` says how the decision differs.
fn run(file: &Path, case: &Case) -> Result<(), String> {
    let set = load_str(&file.join(&case.name), &case.policies)
        .map_err(|e| format!("policies do not load: {e}"))?;
    let engine = Engine::compile_for(
        &set,
        "istio-system",
        case.trust_domain.as_deref().unwrap_or("cluster.local"),
    )
    .map_err(|e| format!("policies do not compile: {e:?}"))?;
    let workload = match &case.workload {
        Some(w) => Workload {
            namespace: w.namespace.clone(),
            labels: w.labels.clone(),
        },
        None => Workload {
            namespace: "foo".into(),
            labels: BTreeMap::from([("app".to_string(), "httpbin".to_string())]),
        },
    };
    // The proxy normalizes the path before any policy sees it; a path it refuses
    // (400) never reaches authorization and counts as DENY here.
    let mut request = case.request.build();
    let mode = case.request.normalization.as_deref().unwrap_or("BASE");
    let mode = PathNormalization::parse(mode)?;
    if let Some(h) = &mut request.http {
        match normalize(&h.path, mode) {
            Ok(p) => h.path = p.into_owned(),
            Err(e) => {
                return if case.expect == "DENY" {
                    Ok(())
                } else {
                    Err(format!("the path is refused before authorization: {e}"))
                };
            }
        }
    }
    let d = engine.evaluate(&workload, &request);
    let mut diffs = Vec::new();
    let got = if d.allowed { "ALLOW" } else { "DENY" };
    if got != case.expect {
        diffs.push(format!("decision {got}, want {}", case.expect));
    }
    if let Some(want) = &case.policy {
        let got = d.deciding.as_ref().map(|m| m.policy.as_str());
        if got != Some(want.as_str()) {
            diffs.push(format!("deciding policy {got:?}, want {want}"));
        }
    }
    if let Some(want) = case.rule {
        let got = d.deciding.as_ref().map(|m| m.rule);
        if got != Some(want) {
            diffs.push(format!("deciding rule {got:?}, want {want}"));
        }
    }
    if let Some(want) = &case.audit {
        let got: Vec<&str> = d.audit.iter().map(|m| m.policy.as_str()).collect();
        if &got != want {
            diffs.push(format!("audit {got:?}, want {want:?}"));
        }
    }
    if let Some(want) = &case.dry_run {
        let got: Vec<&str> = d
            .dry_run
            .iter()
            .filter(|x| x.rule.is_some())
            .map(|x| x.policy.as_str())
            .collect();
        if &got != want {
            diffs.push(format!("matched dry-run policies {got:?}, want {want:?}"));
        }
    }
    if let Some(want) = &case.custom {
        let got = d.custom.as_ref().map(|(p, _)| p.as_str());
        if got != Some(want.as_str()) {
            diffs.push(format!("custom provider {got:?}, want {want}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("{} (reason: {})", diffs.join("; "), d.reason))
    }
}

#[test]
fn istio_documented_cases() {
    let mut total = 0;
    let mut failed = Vec::new();
    let mut names = std::collections::HashSet::new();
    for file in case_files() {
        let text = std::fs::read_to_string(&file).expect("case file readable");
        let cases: Vec<Case> =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in &cases {
            total += 1;
            assert!(
                names.insert(case.name.clone()),
                "duplicate case name {:?}",
                case.name
            );
            assert!(!case.reference.is_empty(), "{}: no ref", case.name);
            if let Err(e) = run(&file, case) {
                failed.push(format!(
                    "{}: {} [{}]: {e}",
                    file.display(),
                    case.name,
                    case.reference
                ));
            }
        }
    }
    assert!(total >= 182, "only {total} cases found");
    assert!(
        failed.is_empty(),
        "{} of {total} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("{total} policy cases passed");
}
