//! The console `warden up` serves: one page (HTML, CSS and JS embedded in the binary,
//! nothing fetched from elsewhere) drawing the live service graph from the proxies'
//! metrics, each workload's certificate and next rotation, the CA's recent audit
//! events, and for a chosen edge the policies that decide it.
//!
//! - [`scrape`] fetches each proxy's `/stats/prometheus` every [`SCRAPE_INTERVAL`];
//!   [`prom`] parses it; [`graph`] keeps the samples of the last
//!   [`graph::WINDOW_SECONDS`] and computes edges, rates and states.
//! - [`audit`] follows the CA's audit log through the admin socket.
//! - [`policy`] asks the authorization engine about an edge.
//! - [`http`] serves the page and the JSON API (`/api/graph`, `/api/audit`,
//!   `/api/edge`).

mod audit;
mod graph;
mod http;
mod policy;
mod prom;
mod scrape;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use audit::{AuditTail, lock};
use graph::{EdgeKey, EdgeStats, History, node_id};

/// How often each proxy is scraped and the audit log read.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);

/// What the console shows.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The Istio YAML the proxies watch (WorkloadEntries, AuthorizationPolicies).
    pub config_dir: PathBuf,
    /// The CA's admin socket.
    pub admin_socket: PathBuf,
    /// The workloads whose proxies are scraped.
    pub workloads: Vec<ConsoleWorkload>,
}

/// One workload and its proxy.
#[derive(Debug, Clone)]
pub struct ConsoleWorkload {
    /// WorkloadEntry name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Its (loopback) address.
    pub address: IpAddr,
    /// `http://addr:15020/stats/prometheus`.
    pub stats_url: String,
    /// The proxy's admin/readiness URL, if it has one (shown as a link).
    pub admin_url: Option<String>,
}

/// Serves the console on `listener` until the task is dropped or the listener fails.
/// Scrape and audit errors are shown on the page; they never end the console.
pub async fn serve(listener: tokio::net::TcpListener, config: ConsoleConfig) -> anyhow::Result<()> {
    let state = Arc::new(State::new(config));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..state.config.workloads.len() {
        tasks.spawn(scrape_loop(state.clone(), index));
    }
    tasks.spawn(audit_loop(state.clone()));
    // The background tasks end with `tasks` when serving stops.
    http::serve(listener, state).await
}

/// What the scrapes and the audit log have said.
#[derive(Debug)]
struct State {
    config: ConsoleConfig,
    /// Per workload (same order as `config.workloads`).
    proxies: Vec<Mutex<Proxy>>,
    audit: Mutex<AuditTail>,
}

/// One proxy's scrapes.
#[derive(Debug, Default)]
struct Proxy {
    history: History,
    /// The last scrape's error, if it failed.
    error: Option<String>,
    /// When the last scrape finished (seconds since the epoch).
    last_attempt: Option<f64>,
    /// The SVID expiry seen, and when it was first seen (for the rotation estimate).
    expiry_seen: Option<(f64, f64)>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn scrape_loop(state: Arc<State>, index: usize) {
    let url = state.config.workloads[index].stats_url.clone();
    let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = scrape::fetch(&url)
            .await
            .map_err(|e| e.to_string())
            .and_then(|text| {
                prom::parse(&text).map_err(|e| format!("{url}: not Prometheus text: {e}"))
            });
        let at = now();
        let mut p = lock(&state.proxies[index]);
        p.last_attempt = Some(at);
        match result {
            Ok(samples) => {
                let scrape = graph::summarize(at, &samples);
                match (scrape.svid_expiry, p.expiry_seen) {
                    (Some(e), Some((seen, _))) if e == seen => {}
                    (Some(e), _) => p.expiry_seen = Some((e, at)),
                    (None, _) => p.expiry_seen = None,
                }
                p.history.push(scrape);
                p.error = None;
            }
            Err(e) => {
                p.history.prune(at - graph::WINDOW_SECONDS);
                p.error = Some(e);
            }
        }
    }
}

async fn audit_loop(state: Arc<State>) {
    let mut client = None;
    let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        audit::read(&state.config.admin_socket, &mut client, &state.audit).await;
    }
}

impl State {
    fn new(config: ConsoleConfig) -> Self {
        Self {
            proxies: config.workloads.iter().map(|_| Mutex::default()).collect(),
            config,
            audit: Mutex::default(),
        }
    }

    /// Every edge the proxies report, with the principals seen for workloads.
    fn edges(&self) -> (BTreeMap<EdgeKey, EdgeStats>, BTreeMap<String, String>) {
        let mut edges = BTreeMap::new();
        let mut principals = BTreeMap::new();
        for proxy in &self.proxies {
            let p = lock(proxy);
            let stale = p.error.is_some();
            edges.extend(p.history.edges().into_iter().map(|(k, mut e)| {
                e.stale = stale;
                (k, e)
            }));
            if let Some(latest) = p.history.latest() {
                principals.extend(latest.principals.clone());
            }
        }
        (edges, principals)
    }

    /// `/api/graph`.
    fn graph_json(&self) -> serde_json::Value {
        let (edges, principals) = self.edges();
        let audit = lock(&self.audit);
        let mut nodes = Vec::new();
        let mut known = std::collections::BTreeSet::new();
        for (w, proxy) in self.config.workloads.iter().zip(&self.proxies) {
            let id = node_id(&w.namespace, &w.name);
            known.insert(id.clone());
            let p = lock(proxy);
            let latest = p.history.latest();
            let cert = p.expiry_seen.map(|(expiry, first_seen)| {
                let issued = audit.issued_at(&w.spiffe_id, expiry);
                let rotation =
                    graph::next_rotation(expiry, issued.map(|i| i.issued_at), first_seen);
                serde_json::json!({
                    "expiry": expiry,
                    "next_rotation": rotation.at,
                    "rotation_basis": rotation.basis,
                    "issued_at": issued.map(|i| i.issued_at),
                    "serial": issued.map(|i| i.serial.clone()),
                })
            });
            nodes.push(serde_json::json!({
                "id": id,
                "name": w.name,
                "namespace": w.namespace,
                "spiffe_id": w.spiffe_id,
                "address": w.address.to_string(),
                "stats_url": w.stats_url,
                "admin_url": w.admin_url,
                "known": true,
                "reachable": p.error.is_none() && latest.is_some(),
                "scraped": p.last_attempt.is_some(),
                "error": p.error,
                "cert": cert,
                "authz": latest.map(|l| l.authz.clone()).unwrap_or_default(),
            }));
        }
        // Callers the proxies saw that `warden up` did not name (an unknown client).
        let mut extra = std::collections::BTreeSet::new();
        for key in edges.keys() {
            for id in [&key.source, &key.destination] {
                if !known.contains(id) {
                    extra.insert(id.clone());
                }
            }
        }
        for id in extra {
            let (namespace, name) = id.split_once('/').unwrap_or(("", id.as_str()));
            nodes.push(serde_json::json!({
                "id": id,
                "name": name,
                "namespace": namespace,
                "spiffe_id": principals.get(&id),
                "known": false,
                "reachable": null,
            }));
        }
        serde_json::json!({
            "generated_at": now(),
            "scrape_interval_seconds": SCRAPE_INTERVAL.as_secs_f64(),
            "window_seconds": graph::WINDOW_SECONDS,
            "nodes": nodes,
            "edges": edges.iter().map(|(k, e)| e.json(k)).collect::<Vec<_>>(),
        })
    }

    /// `/api/audit`.
    fn audit_json(&self) -> serde_json::Value {
        lock(&self.audit).to_json()
    }

    /// One side of an edge: from `warden up`'s list, else what the metrics said.
    fn side(&self, id: &str, principals: &BTreeMap<String, String>) -> policy::Side {
        match self
            .config
            .workloads
            .iter()
            .find(|w| node_id(&w.namespace, &w.name) == id)
        {
            Some(w) => policy::Side {
                id: id.to_string(),
                spiffe_id: Some(w.spiffe_id.clone()),
                address: Some(w.address),
            },
            None => policy::Side {
                id: id.to_string(),
                spiffe_id: principals.get(id).cloned(),
                address: None,
            },
        }
    }

    /// `/api/edge`: the policies deciding `source` → `destination`, and the edge's numbers.
    async fn edge_json(self: Arc<Self>, source: String, destination: String) -> serde_json::Value {
        let (edges, principals) = self.edges();
        let key = EdgeKey {
            source: source.clone(),
            destination: destination.clone(),
        };
        let stats = edges.get(&key).map(|e| e.json(&key));
        let src = self.side(&source, &principals);
        let dst = self.side(&destination, &principals);
        let dir = self.config.config_dir.clone();
        // The loader reads files: off the runtime's thread.
        let mut v = tokio::task::spawn_blocking(move || policy::explain_edge(&dir, &src, &dst))
            .await
            .unwrap_or_else(
                |e| serde_json::json!({"error": format!("the evaluation failed: {e}")}),
            );
        v["metrics"] = stats.unwrap_or(serde_json::Value::Null);
        v
    }
}

/// `warden console` (hidden): the console on its own, for tests and for a mesh
/// started by hand.
#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Where to listen (keep it on loopback: the page has no authentication).
    #[arg(long, default_value = "127.0.0.1:15000")]
    listen: std::net::SocketAddr,
    /// The Istio YAML directory the proxies watch.
    #[arg(long)]
    config_dir: PathBuf,
    /// A workload: NAME,NAMESPACE,SPIFFE_ID,ADDRESS,STATS_URL[,ADMIN_URL]. Repeatable.
    #[arg(long = "workload", value_parser = parse_workload)]
    workloads: Vec<ConsoleWorkload>,
}

fn parse_workload(s: &str) -> Result<ConsoleWorkload, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [name, namespace, spiffe_id, address, stats_url, rest @ ..] = parts.as_slice() else {
        return Err("expected NAME,NAMESPACE,SPIFFE_ID,ADDRESS,STATS_URL[,ADMIN_URL]".into());
    };
    if rest.len() > 1 {
        return Err(
            "too many fields: NAME,NAMESPACE,SPIFFE_ID,ADDRESS,STATS_URL[,ADMIN_URL]".into(),
        );
    }
    if !spiffe_id.starts_with("spiffe://") {
        return Err(format!("{spiffe_id:?} is not a SPIFFE ID (spiffe://...)"));
    }
    Ok(ConsoleWorkload {
        name: (*name).to_string(),
        namespace: (*namespace).to_string(),
        spiffe_id: (*spiffe_id).to_string(),
        address: address
            .parse()
            .map_err(|e| format!("address {address:?}: {e}"))?,
        stats_url: (*stats_url).to_string(),
        admin_url: rest.first().map(|u| (*u).to_string()),
    })
}

/// Runs `warden console`: binds, says where on stderr, serves until killed.
pub async fn run(
    admin_socket: PathBuf,
    args: ConsoleArgs,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!("warden console: serving on http://{addr}/");
    serve(
        listener,
        ConsoleConfig {
            config_dir: args.config_dir,
            admin_socket,
            workloads: args.workloads,
        },
    )
    .await?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn workload_flags_are_parsed() {
        let w = parse_workload(
            "ratings-v1,bookinfo,spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings,127.0.20.7,http://127.0.20.7:15020/stats/prometheus",
        )
        .unwrap();
        assert_eq!(w.name, "ratings-v1");
        assert_eq!(w.address.to_string(), "127.0.20.7");
        assert_eq!(w.admin_url, None);
        for (bad, want) in [
            ("a,b,c", "expected NAME"),
            ("a,b,c,127.0.0.1,http://x/", "not a SPIFFE ID"),
            ("a,b,spiffe://td/x,nope,http://x/", "address"),
            (
                "a,b,spiffe://td/x,127.0.0.1,http://x/,http://y/,z",
                "too many",
            ),
        ] {
            let e = parse_workload(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn unreachable_proxies_and_a_missing_ca_are_shown_not_fatal() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State::new(ConsoleConfig {
            config_dir: dir.path().into(),
            admin_socket: dir.path().join("no.sock"),
            workloads: vec![ConsoleWorkload {
                name: "ratings-v1".into(),
                namespace: "bookinfo".into(),
                spiffe_id: "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings".into(),
                address: "127.0.0.1".parse().unwrap(),
                stats_url: format!("http://{dead_addr}/stats/prometheus"),
                admin_url: None,
            }],
        }));
        let task = tokio::spawn(scrape_loop(state.clone(), 0));
        audit::read(&state.config.admin_socket, &mut None, &state.audit).await;
        for _ in 0..100 {
            if lock(&state.proxies[0]).last_attempt.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        let g = state.graph_json();
        assert_eq!(g["nodes"][0]["reachable"], false, "{g:#}");
        assert!(
            g["nodes"][0]["error"]
                .as_str()
                .unwrap()
                .contains("cannot connect")
        );
        assert!(g["edges"].as_array().unwrap().is_empty());
        let a = state.audit_json();
        assert!(
            a["error"].as_str().unwrap().contains("does not exist"),
            "{a:#}"
        );
    }
}
