//! The console `warden up` serves, in a real browser: the real `warden` binary (its
//! hidden `console` subcommand) against a real CA's admin socket, scraping stats pages
//! that serve what warden-proxy's own metrics encoder writes for a bookinfo mesh
//! (the fixtures in `tests/fixtures/console/`, regenerated and checked here), read by
//! headless Chromium: the demo's edges appear, and after a DENY policy the
//! reviews → ratings edges turn red. Screenshots go to `target/test-artifacts/console/`.
#![allow(clippy::unwrap_used)] // tests fail by panicking

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use warden_proxy::metrics::{
    ConnLabels, Metrics, Outcome, Peer, Reporter, RequestLabels, ServiceLabels,
};
use warden_tests::browser::{Chromium, Tag, artifacts_dir, tags};
use warden_tests::{CaProcess, bin, eventually, http_get, spawn_logged};

/// A bookinfo workload: name, namespace, service account, labels (app, version),
/// address.
struct Workload {
    name: &'static str,
    namespace: &'static str,
    sa: &'static str,
    app: &'static str,
    version: &'static str,
    address: &'static str,
}

const WORKLOADS: [Workload; 7] = [
    Workload {
        name: "istio-ingressgateway",
        namespace: "istio-system",
        sa: "istio-ingressgateway",
        app: "istio-ingressgateway",
        version: "",
        address: "127.0.41.1",
    },
    Workload {
        name: "productpage-v1",
        namespace: "bookinfo",
        sa: "bookinfo-productpage",
        app: "productpage",
        version: "v1",
        address: "127.0.41.2",
    },
    Workload {
        name: "details-v1",
        namespace: "bookinfo",
        sa: "bookinfo-details",
        app: "details",
        version: "v1",
        address: "127.0.41.3",
    },
    Workload {
        name: "reviews-v1",
        namespace: "bookinfo",
        sa: "bookinfo-reviews",
        app: "reviews",
        version: "v1",
        address: "127.0.41.4",
    },
    Workload {
        name: "reviews-v2",
        namespace: "bookinfo",
        sa: "bookinfo-reviews",
        app: "reviews",
        version: "v2",
        address: "127.0.41.5",
    },
    Workload {
        name: "reviews-v3",
        namespace: "bookinfo",
        sa: "bookinfo-reviews",
        app: "reviews",
        version: "v3",
        address: "127.0.41.6",
    },
    Workload {
        name: "ratings-v1",
        namespace: "bookinfo",
        sa: "bookinfo-ratings",
        app: "ratings",
        version: "v1",
        address: "127.0.41.7",
    },
];

/// The demo's edges: (source, destination, service host).
const EDGES: [(&str, &str, &str); 7] = [
    (
        "istio-ingressgateway",
        "productpage-v1",
        "productpage.bookinfo.svc.cluster.local",
    ),
    (
        "productpage-v1",
        "details-v1",
        "details.bookinfo.svc.cluster.local",
    ),
    (
        "productpage-v1",
        "reviews-v1",
        "reviews.bookinfo.svc.cluster.local",
    ),
    (
        "productpage-v1",
        "reviews-v2",
        "reviews.bookinfo.svc.cluster.local",
    ),
    (
        "productpage-v1",
        "reviews-v3",
        "reviews.bookinfo.svc.cluster.local",
    ),
    (
        "reviews-v2",
        "ratings-v1",
        "ratings.bookinfo.svc.cluster.local",
    ),
    (
        "reviews-v3",
        "ratings-v1",
        "ratings.bookinfo.svc.cluster.local",
    ),
];

/// The SVID expiry the fixtures' proxies report (2100-01-01T00:00:00Z).
const SVID_EXPIRY: u64 = 4_102_444_800;

fn workload(name: &str) -> &'static Workload {
    WORKLOADS.iter().find(|w| w.name == name).unwrap()
}

fn spiffe_id(w: &Workload) -> String {
    format!("spiffe://cluster.local/ns/{}/sa/{}", w.namespace, w.sa)
}

fn id(w: &Workload) -> String {
    format!("{}/{}", w.namespace, w.name)
}

fn peer(w: &Workload) -> Arc<Peer> {
    let mut labels = BTreeMap::new();
    labels.insert("app".to_string(), w.app.to_string());
    if !w.version.is_empty() {
        labels.insert("version".to_string(), w.version.to_string());
    }
    Peer::workload(w.name, w.namespace, Some(&spiffe_id(w)), &labels)
}

/// The two states of the mesh the fixtures capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Every request allowed.
    Allowed,
    /// Later: more traffic, and ratings refusing reviews (403) after a DENY policy.
    Denied,
}

impl Phase {
    fn dir(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
        }
    }

    /// Requests on an edge by the time of this phase: (200s, 403s).
    fn counts(self, source: &str, destination: &str) -> (u32, u32) {
        let base = match (source, destination) {
            ("istio-ingressgateway", _) | (_, "details-v1") => 120,
            _ => 40,
        };
        match self {
            Self::Allowed => (base, 0),
            Self::Denied if destination == "ratings-v1" => (base, 14),
            Self::Denied => (base * 4 / 3, 0),
        }
    }
}

/// What `w`'s proxy serves on `/stats/prometheus` in `phase`, made by warden-proxy's
/// own encoder: destination-reporter series for its inbound requests, source-reporter
/// series for its outbound ones, its authorization decisions and SVID expiry.
fn encode(w: &Workload, phase: Phase) -> String {
    let m = Metrics::new();
    m.gauges.svid_expiry.store(SVID_EXPIRY, Ordering::Relaxed);
    for (src, dst, host) in EDGES {
        let (s, d) = (workload(src), workload(dst));
        let reporter = if d.name == w.name {
            Reporter::Destination
        } else if s.name == w.name {
            Reporter::Source
        } else {
            continue;
        };
        let security = match reporter {
            Reporter::Destination => "mutual_tls",
            Reporter::Source => "unknown",
        };
        let conn = Arc::new(ConnLabels::new(
            reporter,
            peer(s),
            peer(d),
            ServiceLabels::new(host, d.namespace),
            security,
        ));
        let (ok, denied) = phase.counts(src, dst);
        for (code, n) in [(200, ok), (403, denied)] {
            for _ in 0..n {
                let labels = RequestLabels {
                    conn: conn.clone(),
                    grpc: false,
                    code,
                    grpc_status: None,
                    flags: "-",
                };
                m.request(&labels, if code == 200 { 4.0 } else { 0.6 });
                if reporter == Reporter::Destination {
                    let outcome = if code == 403 {
                        Outcome::Deny
                    } else {
                        Outcome::Allow
                    };
                    m.decision(outcome, false);
                }
            }
        }
    }
    m.encode()
}

fn fixture_path(w: &Workload, phase: Phase) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/console")
        .join(phase.dir())
        .join(format!("{}.prom", w.name))
}

/// The committed fixtures are exactly what warden-proxy's encoder writes today;
/// `WARDEN_REGENERATE_FIXTURES=1` rewrites them.
#[test]
fn fixtures_are_what_the_proxy_encodes() {
    let regenerate = std::env::var_os("WARDEN_REGENERATE_FIXTURES").is_some();
    for phase in [Phase::Allowed, Phase::Denied] {
        for w in &WORKLOADS {
            let path = fixture_path(w, phase);
            let text = encode(w, phase);
            if regenerate {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (WARDEN_REGENERATE_FIXTURES=1 writes it)",
                    path.display()
                )
            });
            // Series come in the order of the encoder's hash maps: compare as sets.
            let lines = |t: &str| {
                t.lines()
                    .map(String::from)
                    .collect::<std::collections::BTreeSet<_>>()
            };
            let (old, new) = (lines(&committed), lines(&text));
            let gone: Vec<_> = old.difference(&new).take(3).collect();
            let added: Vec<_> = new.difference(&old).take(3).collect();
            assert!(
                gone.is_empty() && added.is_empty(),
                "{} differs from what warden-proxy encodes now (regenerate with WARDEN_REGENERATE_FIXTURES=1 and check the console still reads it); only in the file: {gone:#?}; only in the encoder's output: {added:#?}",
                path.display()
            );
        }
    }
}

/// A stats page per workload, on the workload's own loopback address as a proxy's is,
/// serving the current phase's fixture.
struct StatsServer {
    url: String,
    stop: Arc<AtomicBool>,
    addr: String,
}

impl StatsServer {
    fn start(w: &'static Workload, phase: Arc<AtomicU8>) -> Self {
        let listener = TcpListener::bind((w.address, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = stream else { continue };
                let phase = if phase.load(Ordering::Relaxed) == 0 {
                    Phase::Allowed
                } else {
                    Phase::Denied
                };
                let body = std::fs::read_to_string(fixture_path(w, phase)).unwrap();
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|x| x == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            url: format!("http://{addr}/stats/prometheus"),
            stop,
            addr,
        }
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// The config directory the proxies would watch: WorkloadEntries and the bookinfo
/// policies.
fn write_config(dir: &Path) {
    let mut yaml = String::new();
    for w in &WORKLOADS {
        let version = if w.version.is_empty() {
            String::new()
        } else {
            format!("\n    version: {}", w.version)
        };
        yaml += &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  address: {}\n  labels:\n    app: {}{version}\n  serviceAccount: {}\n  ports:\n    http: 9080\n---\n",
            w.name, w.namespace, w.address, w.app, w.sa
        );
    }
    yaml += "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ratings-viewers
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: ratings
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/bookinfo/sa/bookinfo-reviews]
    to:
    - operation:
        methods: [GET]
";
    std::fs::write(dir.join("bookinfo.yaml"), yaml).unwrap();
}

const DENY_POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-reviews-to-ratings
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: ratings
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/bookinfo/sa/bookinfo-reviews]
";

/// `warden console`, killed on drop.
struct Console {
    child: Child,
    addr: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_console(admin_socket: &Path, config_dir: &Path, workloads: &[String]) -> Console {
    let mut cmd = Command::new(bin("warden"));
    cmd.arg("--admin-socket")
        .arg(admin_socket)
        .args(["console", "--listen", "127.0.0.1:0", "--config-dir"])
        .arg(config_dir);
    for w in workloads {
        cmd.args(["--workload", w]);
    }
    let (child, log) = spawn_logged(cmd);
    let line = log
        .recv_timeout(Duration::from_secs(20))
        .expect("warden console said nothing");
    let addr = line
        .strip_prefix("warden console: serving on http://")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in log {
            eprintln!("warden console: {line}")
        }
    });
    Console { child, addr }
}

fn graph(addr: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, "/api/graph");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn edge_state(g: &serde_json::Value, source: &str, destination: &str) -> Option<String> {
    g["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source && e["destination"] == destination)
        .map(|e| e["state"].as_str().unwrap_or_default().to_string())
}

/// The `<g class="edge">` elements of a dump, by (source, destination).
fn edges_in(dom: &str) -> BTreeMap<(String, String), Tag> {
    tags(dom, "g")
        .into_iter()
        .filter(|t| t.has_class("edge"))
        .map(|t| {
            (
                (
                    t.attr("data-source").to_string(),
                    t.attr("data-destination").to_string(),
                ),
                t,
            )
        })
        .collect()
}

fn demo_edge(src: &str, dst: &str) -> (String, String) {
    (id(workload(src)), id(workload(dst)))
}

#[test]
fn console_draws_the_mesh_and_turns_a_denied_edge_red_in_a_real_browser() {
    let Some(browser) =
        Chromium::or_skip("console_draws_the_mesh_and_turns_a_denied_edge_red_in_a_real_browser")
    else {
        return;
    };
    let artifacts = artifacts_dir("console");

    // A real CA: its audit log has the identities' registrations.
    let data = tempfile::tempdir().unwrap();
    let ca = CaProcess::start(data.path(), &[]);
    let identities: std::collections::BTreeSet<String> = WORKLOADS.iter().map(spiffe_id).collect();
    for identity in &identities {
        ca.entry("node-1", identity, &["unix:uid:1000"]);
    }

    let config = tempfile::tempdir().unwrap();
    write_config(config.path());
    let phase = Arc::new(AtomicU8::new(0));
    let servers: Vec<StatsServer> = WORKLOADS
        .iter()
        .map(|w| StatsServer::start(w, phase.clone()))
        .collect();
    let mut flags: Vec<String> = WORKLOADS
        .iter()
        .zip(&servers)
        .map(|(w, s)| {
            format!(
                "{},{},{},{},{}",
                w.name,
                w.namespace,
                spiffe_id(w),
                w.address,
                s.url
            )
        })
        .collect();
    // A workload whose proxy is down, with markup in its name: shown as unreachable,
    // its name as text.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/stats/prometheus", dead.local_addr().unwrap());
    drop(dead);
    flags.push(format!(
        "legacy<img src=x onerror=alert(1)>,bookinfo,spiffe://cluster.local/ns/bookinfo/sa/legacy,127.0.41.9,{dead_url}"
    ));
    let console = start_console(&ca.admin_socket(), config.path(), &flags);
    let url = format!("http://{}/", console.addr);

    // (a) every demo edge, green.
    eventually(
        "the console to list the demo's 7 edges",
        Duration::from_secs(30),
        || {
            let g = graph(&console.addr);
            EDGES.iter().all(|(s, d, _)| {
                let (s, d) = demo_edge(s, d);
                edge_state(&g, &s, &d).as_deref() == Some("ok")
            })
        },
    );
    let dom = browser.dump_dom(&url, 5000);
    let drawn = edges_in(&dom);
    for (s, d, _) in EDGES {
        let key = demo_edge(s, d);
        let edge = drawn
            .get(&key)
            .unwrap_or_else(|| panic!("no edge {key:?} drawn; edges: {:?}", drawn.keys()));
        assert_eq!(edge.attr("data-state"), "ok", "{key:?}");
        let want = Phase::Allowed.counts(s, d).0.to_string();
        assert_eq!(edge.attr("data-total"), want, "{key:?}");
    }
    assert_eq!(drawn.len(), EDGES.len(), "{:?}", drawn.keys());
    let nodes = tags(&dom, "g");
    let ratings = nodes
        .iter()
        .find(|t| t.has_class("node") && t.attr("data-id") == "bookinfo/ratings-v1")
        .expect("ratings node");
    assert_eq!(
        ratings.attr("data-spiffe-id"),
        "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings"
    );
    assert_eq!(ratings.attr("data-reachable"), "true");
    let legacy = nodes
        .iter()
        .find(|t| t.has_class("node") && t.attr("data-id").starts_with("bookinfo/legacy"))
        .expect("the unreachable workload's node");
    assert_eq!(legacy.attr("data-reachable"), "false");
    assert!(
        tags(&dom, "img").is_empty(),
        "markup from a workload name became an element"
    );
    assert!(
        dom.contains("legacy&lt;img src=x onerror=alert(1)&gt;"),
        "the name is shown as text"
    );
    // Certificates from the proxies' SVID expiry; the audit panel from the CA.
    let rows: Vec<Tag> = tags(&dom, "tr")
        .into_iter()
        .filter(|t| t.has_class("workload"))
        .collect();
    let ratings_row = rows
        .iter()
        .find(|t| t.attr("data-id") == "bookinfo/ratings-v1")
        .expect("ratings row");
    assert_eq!(ratings_row.attr("data-expiry"), SVID_EXPIRY.to_string());
    assert_eq!(ratings_row.attr("data-rotation-basis"), "estimate");
    assert!(
        tags(&dom, "li")
            .iter()
            .any(|t| t.attr("data-event") == "entry.created"),
        "no audit event in the page"
    );
    browser.screenshot(&url, &artifacts.join("allowed.png"), (1400, 900), 5000);

    // (b) a DENY policy; ratings' proxy starts refusing reviews.
    std::fs::write(config.path().join("deny.yaml"), DENY_POLICY).unwrap();
    phase.store(1, Ordering::Relaxed);
    let (v2, ratings_id) = demo_edge("reviews-v2", "ratings-v1");
    eventually(
        "reviews-v2 -> ratings-v1 to be denied",
        Duration::from_secs(30),
        || edge_state(&graph(&console.addr), &v2, &ratings_id).as_deref() == Some("denied"),
    );
    let (status, body) = http_get(
        &console.addr,
        "/api/edge?source=bookinfo%2Freviews-v2&destination=bookinfo%2Fratings-v1",
    );
    assert_eq!(status, 200);
    let edge: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(edge["decision"], "DENY", "{edge:#}");
    assert_eq!(
        edge["policy"], "bookinfo/deny-reviews-to-ratings",
        "{edge:#}"
    );

    let selected = format!("{url}#edge=bookinfo%2Freviews-v2|bookinfo%2Fratings-v1");
    let dom = browser.dump_dom(&selected, 5000);
    let drawn = edges_in(&dom);
    for (s, d, _) in EDGES {
        let key = demo_edge(s, d);
        let want = if d == "ratings-v1" { "denied" } else { "ok" };
        assert_eq!(drawn[&key].attr("data-state"), want, "{key:?}");
        assert!(
            drawn[&key].has_class(want),
            "{key:?}: the class draws the colour"
        );
    }
    assert_eq!(
        drawn[&(v2.clone(), ratings_id.clone())].attr("data-denied"),
        "14"
    );
    let panel = tags(&dom, "section")
        .into_iter()
        .find(|t| t.attr("id") == "edge-panel")
        .unwrap();
    assert_eq!(panel.attr("data-source"), v2);
    assert_eq!(panel.attr("data-decision"), "DENY", "{dom}");
    assert_eq!(
        panel.attr("data-policy"),
        "bookinfo/deny-reviews-to-ratings"
    );
    let policies: Vec<Tag> = tags(&dom, "li")
        .into_iter()
        .filter(|t| t.has_class("policy"))
        .collect();
    let deciding = policies
        .iter()
        .find(|t| t.attr("data-deciding") == "true")
        .expect("the deciding policy listed");
    assert_eq!(
        deciding.attr("data-policy"),
        "bookinfo/deny-reviews-to-ratings"
    );
    assert!(
        policies
            .iter()
            .any(|t| t.attr("data-policy") == "bookinfo/ratings-viewers"
                && t.attr("data-applies") == "true"),
        "every policy selecting ratings is listed"
    );
    browser.screenshot(&selected, &artifacts.join("denied.png"), (1400, 900), 5000);
    drop(servers);
}
