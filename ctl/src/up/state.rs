//! What `warden up` writes into its state directory: the CA's and agent's configs, the
//! copy of the demo config the proxies watch, Prometheus's config, and `up.json`, the
//! record `warden status` reads.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `up.json`.
pub const UP_FILE: &str = "up.json";

/// A running `warden up`: what it started and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpState {
    /// The `warden up` process.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started_at: String,
    pub state_dir: PathBuf,
    /// The CA's admin socket (`warden --admin-socket ...`).
    pub admin_socket: PathBuf,
    /// SHA-256 of the root certificate (hex).
    pub root_fingerprint: String,
    pub gateway_url: Option<String>,
    pub console_url: Option<String>,
    pub prometheus_url: Option<String>,
    pub components: Vec<Component>,
}

/// One process `warden up` started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Component {
    /// `ca`, `agent`, `app/<workload>`, `proxy/<workload>`, `gateway/<workload>`,
    /// `prometheus`.
    pub name: String,
    pub pid: u32,
    /// The executable (to tell our process from another with a reused pid).
    pub exe: PathBuf,
    pub log: PathBuf,
    /// The identity it serves as, when it has one.
    pub spiffe_id: Option<String>,
    pub address: Option<IpAddr>,
    /// Its Prometheus endpoint.
    pub metrics_url: Option<String>,
    /// The metric on `metrics_url` holding its certificate's expiry (Unix seconds).
    pub expiry_metric: Option<String>,
}

impl UpState {
    /// Reads `<state_dir>/up.json`.
    pub fn read(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(UP_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: no warden up has run with --state-dir {}",
                path.display(),
                state_dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not warden up's record", path.display()))
    }

    /// Writes `<state_dir>/up.json` atomically.
    pub fn write(&self) -> anyhow::Result<()> {
        let path = self.state_dir.join(UP_FILE);
        let tmp = self.state_dir.join(format!(".{UP_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Whether process `pid` runs `exe` (so a pid reused by another program is not ours).
pub fn runs(pid: u32, exe: &Path) -> bool {
    let Ok(target) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    // A rebuilt binary shows as "<path> (deleted)".
    let target = target.to_string_lossy();
    let target = target.strip_suffix(" (deleted)").unwrap_or(&target);
    Path::new(target) == exe || Path::new(target).file_name() == exe.file_name()
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Copies the YAML files of `from` (recursively) to a fresh `to`.
pub fn copy_config(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = std::fs::read_dir(from).with_context(|| {
        format!(
            "--demo-dir {}: run warden up from the repository's root, or point --demo-dir at the demo's Istio YAML",
            from.display()
        )
    })?;
    for e in entries {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_config(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// `warden-ca run --config` for `warden up`.
pub fn ca_yaml(data_dir: &Path, host: IpAddr, grpc_port: u16, monitoring_port: u16) -> String {
    format!(
        "# Written by `warden up`; rewritten at every start.\n\
         data-dir: {data}\n\
         trust-domain: {td}\n\
         grpc-addr: \"{host}:{grpc_port}\"\n\
         monitoring-addr: \"{host}:{monitoring_port}\"\n\
         serving-ip-addrs: [\"{host}\"]\n\
         kubernetes: \"off\"\n\
         log-format: json\n",
        data = yaml_str(data_dir),
        td = super::plan::TRUST_DOMAIN,
    )
}

/// `warden-agent run --config` for `warden up` (the join token is given as a flag).
pub fn agent_yaml(
    data_dir: &Path,
    ca_root: &Path,
    host: IpAddr,
    grpc_port: u16,
    monitoring_port: u16,
    node: &str,
    svid_ttl: &str,
) -> String {
    format!(
        "# Written by `warden up`; rewritten at every start.\n\
         ca-addr: \"https://{host}:{grpc_port}\"\n\
         ca-root: {root}\n\
         trust-domain: {td}\n\
         data-dir: {data}\n\
         node-name: {node}\n\
         svid-ttl: {svid_ttl}\n\
         sync-interval: 1s\n\
         kubernetes: \"off\"\n\
         monitoring-addr: \"{host}:{monitoring_port}\"\n\
         log-format: json\n",
        root = yaml_str(ca_root),
        data = yaml_str(data_dir),
        td = super::plan::TRUST_DOMAIN,
    )
}

/// A scrape job of `prometheus.yml`: name, metrics path, and targets with their labels.
pub type ScrapeJob = (String, String, Vec<(String, Vec<(String, String)>)>);

/// `prometheus.yml`: every job scraped every 5 s.
pub fn prometheus_yaml(jobs: &[ScrapeJob]) -> String {
    let mut y = String::from(
        "# Written by `warden up`: every component it started.\nglobal:\n  scrape_interval: 5s\n  evaluation_interval: 5s\nscrape_configs:\n",
    );
    for (job, path, targets) in jobs {
        y.push_str(&format!(
            "- job_name: {job}\n  metrics_path: {path}\n  static_configs:\n"
        ));
        for (target, labels) in targets {
            y.push_str(&format!("  - targets: [\"{target}\"]\n"));
            if !labels.is_empty() {
                y.push_str("    labels:\n");
                for (k, v) in labels {
                    y.push_str(&format!("      {k}: \"{v}\"\n"));
                }
            }
        }
    }
    y
}

/// A path as a YAML double-quoted string.
fn yaml_str(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_what_the_servers_need() {
        let host: IpAddr = "127.0.30.1".parse().unwrap();
        let ca = ca_yaml(Path::new("/s/ca"), host, 15012, 15014);
        assert!(ca.contains("data-dir: \"/s/ca\"\n"), "{ca}");
        assert!(ca.contains("grpc-addr: \"127.0.30.1:15012\""), "{ca}");
        assert!(ca.contains("serving-ip-addrs: [\"127.0.30.1\"]"), "{ca}");
        let agent = agent_yaml(
            Path::new("/s/agent"),
            Path::new("/s/ca/root-cert.pem"),
            host,
            15012,
            15020,
            "warden-up",
            "1h",
        );
        assert!(
            agent.contains("ca-addr: \"https://127.0.30.1:15012\""),
            "{agent}"
        );
        assert!(agent.contains("node-name: warden-up"), "{agent}");
    }

    #[test]
    fn prometheus_scrapes_each_target_with_its_labels() {
        let y = prometheus_yaml(&[(
            "warden-proxy".into(),
            "/stats/prometheus".into(),
            vec![(
                "127.0.30.10:15020".into(),
                vec![("workload".into(), "productpage-v1".into())],
            )],
        )]);
        assert!(
            y.contains("- job_name: warden-proxy\n  metrics_path: /stats/prometheus\n"),
            "{y}"
        );
        assert!(y.contains("  - targets: [\"127.0.30.10:15020\"]\n    labels:\n      workload: \"productpage-v1\"\n"), "{y}");
    }

    #[test]
    fn our_own_process_is_alive() {
        assert!(alive(std::process::id()));
        let exe = std::env::current_exe().unwrap();
        assert!(runs(std::process::id(), &exe));
        assert!(!runs(std::process::id(), Path::new("/bin/not-this")));
    }
}
