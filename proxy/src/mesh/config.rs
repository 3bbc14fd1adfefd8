//! The proxy's mesh config: a directory of Istio YAML, compiled into one immutable
//! [`MeshConfig`] (the registry, the proxy's own workload, the AuthorizationPolicy,
//! PeerAuthentication and RequestAuthentication engines, the DestinationRules).
//!
//! Loading is all or nothing: a problem anywhere (a file, a resource, a policy, the
//! registry, the proxy's own `WorkloadEntry` missing) rejects the whole snapshot, and
//! [`super::watch::ConfigWatch`] keeps the last good one in force. Files and
//! directories whose names start with `.` are skipped (ConfigMap's `..data` and
//! `..<timestamp>` directories, editors' swap and lock files); `*.yaml`, `*.yml` and
//! `*.json` are read, recursively, in name order.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use warden_policy::authz;
use warden_policy::loader::{self, ConfigSet};
use warden_policy::peer_authn::PeerAuthn;
use warden_policy::request_authn::RequestAuthn;
use warden_proto::SpiffeId;

use crate::mesh::model::LocalWorkload;
use crate::mesh::registry::Registry;
use crate::mesh::traffic_policy::{DestinationRules, H2UpgradePolicy};
use warden_policy::normalize::PathNormalization;

const MAX_DEPTH: usize = 16;

/// Where the config is and whom it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOptions {
    /// The directory of Istio YAML.
    pub dir: PathBuf,
    /// Istio's root namespace (mesh-wide policies), `istio-system` by default.
    pub root_namespace: String,
    /// The mesh trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The name of this proxy's `WorkloadEntry`.
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// The mesh-wide settings (`--mesh-config`).
    pub settings: MeshSettings,
}

/// The parts of Istio's MeshConfig (the `mesh` key of the `istio` ConfigMap) the
/// proxy applies, read once at start from `--mesh-config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshSettings {
    /// `pathNormalization.normalization` (`BASE` by default).
    pub path_normalization: PathNormalization,
    /// `h2UpgradePolicy` (`DO_NOT_UPGRADE` by default).
    pub h2_upgrade_policy: H2UpgradePolicy,
    /// `outboundTrafficPolicy.mode` (`ALLOW_ANY` by default, as Istio).
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// What the outbound side does with a host the registry does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutboundTrafficPolicy {
    /// Passed through in plaintext to the host and port asked for (Istio's
    /// `PassthroughCluster`).
    #[default]
    AllowAny,
    /// Refused with 502 (Istio's `BlackHoleCluster`).
    RegistryOnly,
}

impl MeshSettings {
    /// Reads a MeshConfig YAML file. Fields Warden does not use are returned by name,
    /// for a warning; a field it uses with a wrong value is an error naming the file
    /// and the field.
    pub fn load(path: &Path) -> Result<(Self, Vec<String>), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the mesh config: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// [`MeshSettings::load`] on YAML text.
    pub fn parse(text: &str) -> Result<(Self, Vec<String>), String> {
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_saphyr::from_str(text).map_err(|e| format!("not YAML: {e}"))?
        };
        let serde_json::Value::Object(map) = value else {
            return Err(
                "expected a MeshConfig mapping (pathNormalization, h2UpgradePolicy, ...)".into(),
            );
        };
        let mut settings = Self::default();
        let mut unused = Vec::new();
        for (key, v) in &map {
            match key.as_str() {
                "pathNormalization" => {
                    let n = v.get("normalization").unwrap_or(&serde_json::Value::Null);
                    match n {
                        serde_json::Value::Null => {}
                        serde_json::Value::String(s) => {
                            settings.path_normalization = PathNormalization::parse(s)
                                .map_err(|e| format!("pathNormalization.normalization: {e}"))?;
                        }
                        _ => return Err("pathNormalization.normalization: expected NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES".into()),
                    }
                    if let Some(obj) = v.as_object() {
                        unused.extend(
                            obj.keys()
                                .filter(|k| *k != "normalization")
                                .map(|k| format!("pathNormalization.{k}")),
                        );
                    }
                }
                "h2UpgradePolicy" => {
                    settings.h2_upgrade_policy = match v.as_str() {
                        _ if v.is_null() => H2UpgradePolicy::Default,
                        Some("DO_NOT_UPGRADE") => H2UpgradePolicy::DoNotUpgrade,
                        Some("UPGRADE") => H2UpgradePolicy::Upgrade,
                        _ => {
                            return Err(format!(
                                "h2UpgradePolicy: {v} is not DO_NOT_UPGRADE or UPGRADE"
                            ));
                        }
                    };
                }
                "outboundTrafficPolicy" => {
                    let mode = v.get("mode").unwrap_or(&serde_json::Value::Null);
                    settings.outbound_traffic_policy = match mode.as_str() {
                        _ if mode.is_null() => OutboundTrafficPolicy::AllowAny,
                        Some("ALLOW_ANY") => OutboundTrafficPolicy::AllowAny,
                        Some("REGISTRY_ONLY") => OutboundTrafficPolicy::RegistryOnly,
                        _ => {
                            return Err(format!(
                                "outboundTrafficPolicy.mode: {mode} is not ALLOW_ANY or REGISTRY_ONLY"
                            ));
                        }
                    };
                    if let Some(obj) = v.as_object() {
                        unused.extend(
                            obj.keys()
                                .filter(|k| *k != "mode")
                                .map(|k| format!("outboundTrafficPolicy.{k}")),
                        );
                    }
                }
                // Read by the telemetry settings.
                k if crate::telemetry::settings::MESH_KEYS.contains(&k) => {}
                other => unused.push(other.to_string()),
            }
        }
        Ok((settings, unused))
    }
}

/// One compiled, immutable snapshot of the mesh config.
#[derive(Debug)]
pub struct MeshConfig {
    /// 1 for the first snapshot, +1 for each applied change.
    pub generation: u64,
    /// Services and workloads.
    pub registry: Registry,
    /// This proxy's own workload.
    pub local: LocalWorkload,
    /// AuthorizationPolicies.
    pub authz: authz::Engine,
    /// PeerAuthentications.
    pub peer_authn: PeerAuthn,
    /// RequestAuthentications.
    pub request_authn: RequestAuthn,
    /// DestinationRules (the HTTP version toward each destination).
    pub destination_rules: DestinationRules,
    /// VirtualServices and DestinationRules as the client side routes by them.
    pub routes: warden_policy::route::RouteTable,
    /// Local rate limits (EnvoyFilter `local_ratelimit`, LocalRateLimit).
    pub rate_limits: warden_policy::ratelimit::RateLimits,
    /// The mesh-wide settings.
    pub settings: MeshSettings,
    /// How many YAML/JSON files were read.
    pub files: usize,
    /// How many resources of the kinds Warden reads they held.
    pub resources: usize,
    /// Every resource in force: kind, `namespace/name` and where it was read (the
    /// admin port's `/config_dump`).
    pub inventory: Vec<InventoryItem>,
}

/// One resource in force.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InventoryItem {
    /// Kind.
    pub kind: String,
    /// `namespace/name`.
    pub name: String,
    /// File and line.
    pub origin: String,
}

pub(super) fn inventory(set: &ConfigSet) -> Vec<InventoryItem> {
    fn items<S>(out: &mut Vec<InventoryItem>, list: &[loader::Loaded<S>]) {
        for l in list {
            let m = &l.resource.metadata;
            out.push(InventoryItem {
                kind: l.resource.kind.clone(),
                name: format!("{}/{}", m.namespace.as_deref().unwrap_or("default"), m.name),
                origin: format!("{}:{}", l.origin.file.display(), l.origin.line),
            });
        }
    }
    let mut out = Vec::with_capacity(resources(set));
    items(&mut out, &set.authorization_policies);
    items(&mut out, &set.peer_authentications);
    items(&mut out, &set.request_authentications);
    items(&mut out, &set.service_entries);
    items(&mut out, &set.workload_entries);
    items(&mut out, &set.virtual_services);
    items(&mut out, &set.destination_rules);
    items(&mut out, &set.gateways);
    items(&mut out, &set.envoy_filters);
    items(&mut out, &set.local_rate_limits);
    out
}

/// What was being done when a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Checking [`ConfigOptions`].
    Options,
    /// Reading and parsing the files.
    Load,
    /// Compiling AuthorizationPolicies.
    Authz,
    /// Compiling RequestAuthentications.
    RequestAuthn,
    /// Building the registry from ServiceEntries and WorkloadEntries.
    Registry,
    /// Reading DestinationRules.
    DestinationRules,
    /// Compiling VirtualServices (and DestinationRules) into the route table.
    Routes,
    /// Compiling local rate limits (EnvoyFilters, LocalRateLimits).
    RateLimits,
    /// Finding the proxy's own WorkloadEntry.
    LocalWorkload,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Options => "checking the options",
            Self::Load => "loading",
            Self::Authz => "compiling AuthorizationPolicies",
            Self::RequestAuthn => "compiling RequestAuthentications",
            Self::Registry => "building the service registry",
            Self::DestinationRules => "reading DestinationRules",
            Self::Routes => "compiling VirtualServices",
            Self::RateLimits => "compiling local rate limits",
            Self::LocalWorkload => "finding the proxy's own WorkloadEntry",
        })
    }
}

/// One problem with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What was being done.
    pub stage: Stage,
    /// The problem, as the loader or compiler words it (`file:line: document N: ...`).
    pub message: String,
}

/// Why a config was rejected: every problem found, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config directory.
    pub dir: PathBuf,
    /// The problems, in the order found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", p.stage, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads and compiles the config in `opts.dir` as snapshot `generation`, all or nothing.
pub fn load(opts: &ConfigOptions, generation: u64) -> Result<MeshConfig, ConfigError> {
    load_with_refs(opts, generation).0
}

/// [`load`], and the JWKS files the RequestAuthentications name (`None` when the files
/// did not parse, so they are unknown).
pub(super) fn load_with_refs(
    opts: &ConfigOptions,
    generation: u64,
) -> (Result<MeshConfig, ConfigError>, Option<Vec<PathBuf>>) {
    let mut problems = Vec::new();
    let mut problem = |stage, message: String| problems.push(Problem { stage, message });
    let err = |problems| ConfigError {
        dir: opts.dir.clone(),
        problems,
    };

    match SpiffeId::parse(&format!("spiffe://{}", opts.trust_domain)) {
        Ok(id) if id.path().is_empty() => {}
        _ => problem(
            Stage::Options,
            format!(
                "trust domain {:?} is not valid: expected 1-255 characters of [a-z0-9._-]",
                opts.trust_domain
            ),
        ),
    }
    let files = match config_files(&opts.dir) {
        Ok(files) => files,
        Err(e) => {
            problem(Stage::Load, e);
            return (Err(err(problems)), None);
        }
    };
    let set = match loader::load(&files) {
        Ok(set) => set,
        Err(e) => {
            for e in e.0 {
                problem(Stage::Load, e.to_string());
            }
            return (Err(err(problems)), None);
        }
    };
    let refs = jwks_files(&set);

    let authz = authz::Engine::compile_for(&set, &opts.root_namespace, &opts.trust_domain)
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::Authz, e.to_string()))
        })
        .ok();
    let peer_authn = PeerAuthn::new(&set, &opts.root_namespace);
    let request_authn = RequestAuthn::compile(&set, &opts.root_namespace)
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::RequestAuthn, e.to_string()))
        })
        .ok();
    let registry = Registry::build(&set, &opts.trust_domain)
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::Registry, e.to_string()))
        })
        .ok();
    let destination_rules = DestinationRules::compile(&set, &opts.root_namespace)
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::DestinationRules, e.to_string()))
        })
        .ok();
    let routes = warden_policy::route::RouteTable::build(
        &set,
        warden_policy::route::TableOptions {
            domain: "cluster.local".into(),
            root_namespace: opts.root_namespace.clone(),
        },
    )
    .map_err(|e| {
        e.into_iter()
            .for_each(|e| problem(Stage::Routes, e.to_string()))
    })
    .ok();
    let rate_limits = warden_policy::ratelimit::RateLimits::build(&set, &opts.root_namespace)
        .map(|(limits, notes)| {
            for note in notes {
                tracing::debug!("{note}");
            }
            limits
        })
        .map_err(|e| {
            e.into_iter()
                .for_each(|e| problem(Stage::RateLimits, e.to_string()))
        })
        .ok();
    let local = registry.as_ref().and_then(|r| {
        let local = r.workload(&opts.namespace, &opts.workload).cloned();
        if local.is_none() {
            problem(
                Stage::LocalWorkload,
                format!(
                    "no WorkloadEntry {}/{} in {}: the proxy's own workload (its address, labels and service account) must be declared there",
                    opts.namespace,
                    opts.workload,
                    opts.dir.display()
                ),
            );
        }
        local
    });
    let result = match (
        authz,
        request_authn,
        registry,
        local,
        destination_rules,
        routes,
        rate_limits,
    ) {
        (
            Some(authz),
            Some(request_authn),
            Some(registry),
            Some(local),
            Some(destination_rules),
            Some(routes),
            Some(rate_limits),
        ) if problems.is_empty() => Ok(MeshConfig {
            routes,
            rate_limits,
            generation,
            registry,
            local,
            authz,
            peer_authn,
            request_authn,
            destination_rules,
            settings: opts.settings,
            files: files.len(),
            resources: resources(&set),
            inventory: inventory(&set),
        }),
        _ => Err(err(problems)),
    };
    (result, Some(refs))
}

pub(super) fn resources(set: &ConfigSet) -> usize {
    set.authorization_policies.len()
        + set.peer_authentications.len()
        + set.request_authentications.len()
        + set.service_entries.len()
        + set.workload_entries.len()
        + set.virtual_services.len()
        + set.destination_rules.len()
        + set.gateways.len()
        + set.envoy_filters.len()
        + set.local_rate_limits.len()
}

/// The YAML/JSON files under `dir`, recursively, sorted; names starting with `.` are
/// skipped. The error names the path.
pub(super) fn config_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let at = |e: io::Error| format!("{}: {e}", dir.display());
        let mut entries = std::fs::read_dir(dir)
            .map_err(at)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        entries.sort();
        for path in entries {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
            if hidden {
                continue;
            }
            let is_config = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            // Follows symlinks: ConfigMap files are links into `..data`.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => {
                    if depth >= MAX_DEPTH {
                        return Err(format!(
                            "{}: directories nested more than {MAX_DEPTH} deep (a symlink loop?)",
                            path.display()
                        ));
                    }
                    walk(&path, depth + 1, out)?;
                }
                Ok(m) if m.is_file() && is_config => out.push(path),
                Ok(_) => {}
                // A config file that cannot be read must not silently drop out of the set.
                Err(e) if is_config => return Err(format!("{}: {e}", path.display())),
                Err(_) => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, 0, &mut out)?;
    Ok(out)
}

/// The JWKS files RequestAuthentications read: the loader resolved and read them
/// (`jwksUri` paths and `file://` URLs, relative to the YAML file's directory, when no
/// inline `jwks` is set), so the watcher polls exactly what was compiled.
pub(super) fn jwks_files(set: &ConfigSet) -> Vec<PathBuf> {
    set.jwks_files.keys().cloned().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use std::fs;

    use super::*;
    use crate::mesh::traffic_policy::H2UpgradePolicy;

    pub(in crate::mesh) const WORKLOAD: &str = r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec:
  address: 127.0.0.2
  labels: {app: web}
  serviceAccount: web
  ports: {http: 8080}
"#;

    pub(in crate::mesh) const SERVICE: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: web}}
"#;

    pub(in crate::mesh) const POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

    pub(in crate::mesh) fn opts(dir: &Path) -> ConfigOptions {
        ConfigOptions {
            dir: dir.to_path_buf(),
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            workload: "web".into(),
            namespace: "shop".into(),
            settings: MeshSettings::default(),
        }
    }

    /// A temp dir holding `mesh.yaml` = workload + service.
    pub(in crate::mesh) fn mesh_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("mesh.yaml"),
            format!("{WORKLOAD}---\n{SERVICE}"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn load_compiles_everything() {
        let dir = mesh_dir();
        fs::write(dir.path().join("policy.yml"), POLICY).unwrap();
        fs::write(dir.path().join("README.md"), "not config").unwrap();
        let c = load(&opts(dir.path()), 7).unwrap();
        assert_eq!((c.generation, c.files, c.resources), (7, 2, 3));
        assert_eq!(c.local.name, "web");
        assert_eq!(
            c.local.spiffe_id.as_str(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        let t = c.registry.inbound_target(&c.local, "web", 80).unwrap();
        assert_eq!(t.app_port, 8080);
    }

    #[test]
    fn load_errors_name_stage_file_and_line() {
        let dir = mesh_dir();
        fs::write(dir.path().join("bad.yaml"), "kind: [\n").unwrap();
        let e = load(&opts(dir.path()), 1).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.problems.len(), 1, "{text}");
        assert_eq!(e.problems[0].stage, Stage::Load);
        assert!(text.starts_with("loading: "), "{text}");
        assert!(
            text.contains("bad.yaml:1: document 1: not valid YAML"),
            "{text}"
        );

        // Problems of several stages are all reported, one per line.
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("a.yaml"),
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules: [{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: shop}
spec:
  hosts: [s.example.com]
  ports: [{number: 80, name: http, protocol: HTTPX}]
"#,
        )
        .unwrap();
        let e = load(&opts(dir.path()), 1).unwrap_err();
        let stages: Vec<_> = e.problems.iter().map(|p| p.stage).collect();
        assert_eq!(
            stages,
            // (The proxy's own WorkloadEntry is looked for only in a registry that built.)
            [Stage::Authz, Stage::Registry],
            "{e}"
        );
        let text = e.to_string();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("compiling AuthorizationPolicies: "),
            "{text}"
        );
        assert!(
            lines[0].contains("a.yaml:1: document 1: AuthorizationPolicy shop/p"),
            "{text}"
        );
        assert!(
            lines[1].contains("a.yaml:7: document 2: ServiceEntry shop/s: spec.ports[0].protocol: unknown protocol \"HTTPX\""),
            "{text}"
        );

        let mut o = opts(dir.path());
        o.dir = dir.path().join("missing");
        let e = load(&o, 1).unwrap_err();
        assert!(e.to_string().contains("missing: "), "{e}");
        let mut o = opts(dir.path());
        o.trust_domain = "Bad/TD".into();
        let e = load(&o, 1).unwrap_err();
        assert_eq!(e.problems[0].stage, Stage::Options, "{e}");
    }

    #[test]
    fn hidden_entries_and_other_extensions_are_skipped() {
        let dir = mesh_dir();
        // A broken file in a hidden directory, an editor's swap file, a lock symlink.
        fs::create_dir(dir.path().join(".git")).unwrap();
        fs::write(dir.path().join(".git/x.yaml"), "kind: [").unwrap();
        fs::write(dir.path().join(".mesh.yaml.swp"), "kind: [").unwrap();
        fs::write(dir.path().join("mesh.yaml~"), "kind: [").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("nowhere", dir.path().join(".#mesh.yaml")).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(
            dir.path().join("sub/policy.json"),
            serde_json::json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "shop"}, "spec": {}
            })
            .to_string(),
        )
        .unwrap();
        let c = load(&opts(dir.path()), 1).unwrap();
        assert_eq!((c.files, c.resources), (2, 3));
    }

    #[test]
    fn mesh_settings_read_istios_mesh_config() {
        let (s, unused) = MeshSettings::parse(
            "pathNormalization:\n  normalization: DECODE_AND_MERGE_SLASHES\nh2UpgradePolicy: UPGRADE\naccessLogFile: /dev/stdout\nenableAutoMtls: true\n",
        )
        .unwrap();
        assert_eq!(
            s.path_normalization,
            PathNormalization::DecodeAndMergeSlashes
        );
        assert_eq!(s.h2_upgrade_policy, H2UpgradePolicy::Upgrade);
        // accessLogFile is the telemetry settings' to read.
        assert_eq!(unused, ["enableAutoMtls"]);
        assert_eq!(MeshSettings::parse("").unwrap().0, MeshSettings::default());
        let e = MeshSettings::parse("pathNormalization: {normalization: base}").unwrap_err();
        assert!(
            e.contains("pathNormalization.normalization: \"base\" is not a path normalization"),
            "{e}"
        );
        let e = MeshSettings::parse("h2UpgradePolicy: ALWAYS").unwrap_err();
        assert!(e.contains("h2UpgradePolicy"), "{e}");
        assert!(
            MeshSettings::parse("[1, 2]")
                .unwrap_err()
                .contains("expected a MeshConfig mapping")
        );
    }
}
