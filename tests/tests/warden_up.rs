//! `warden up`: the real `warden` starts the real CA, agent, bookinfo apps
//! (`warden-demo`), sidecars, ingress gateway and (when installed) Prometheus from
//! `deploy/local/demo`; curl, a client no one here wrote, goes through the whole chain
//! (gateway → productpage → details and reviews → ratings); the ratings sidecar's
//! metrics name the caller; SIGINT leaves no child running; a second start reuses the
//! CA's root.
//!
//! `warden up` uses fixed addresses (127.0.30.0/24, which no other test uses), so
//! everything runs in one test, in order.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warden_tests::{bin, curl, try_eventually};

const GATEWAY: &str = "http://127.0.30.20:8080/productpage";
const RATINGS_STATS: &str = "127.0.30.15:15020";
const PROMETHEUS: &str = "127.0.30.1:9090";
const CONSOLE: &str = "127.0.30.1:15100";

/// A running `warden up` and what it printed.
struct Up {
    child: Child,
    out: mpsc::Receiver<String>,
    lines: Vec<String>,
    state_dir: PathBuf,
}

impl Up {
    /// Starts `warden up` and waits for its summary (printed once everything is ready).
    fn start(state_dir: &Path, extra: &[&str]) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut child = Command::new(bin("warden"))
            .arg("up")
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--demo-dir")
            .arg(root.join("deploy/local/demo"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, out) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut up = Self {
            child,
            out,
            lines: Vec::new(),
            state_dir: state_dir.to_path_buf(),
        };
        up.wait_line(Duration::from_secs(120), |l| l.starts_with("Status "));
        up
    }

    /// Waits for an output line matching `pred`; panics with the output and the logs'
    /// ends when `warden up` exits or the time is up.
    fn wait_line(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.out.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.lines.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.fail("warden up closed its output");
                }
            }
            if Instant::now() > deadline {
                self.fail("no such line in time");
            }
        }
    }

    fn output(&self) -> String {
        self.lines.join("\n")
    }

    fn fail(&mut self, why: &str) -> ! {
        self.lines.extend(self.out.try_iter());
        let mut logs = String::new();
        if let Ok(dir) = std::fs::read_dir(self.state_dir.join("logs")) {
            for e in dir.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                logs.push_str(&format!("--- {}\n", e.path().display()));
                for l in tail.iter().rev() {
                    logs.push_str(l);
                    logs.push('\n');
                }
            }
        }
        panic!("{why}; warden up printed:\n{}\n{logs}", self.output())
    }

    /// The pids `up.json` lists.
    fn pids(&self) -> Vec<(String, u32)> {
        let v = up_json(&self.state_dir);
        v["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    u32::try_from(c["pid"].as_u64().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    /// SIGINT, as Ctrl-C sends; waits for `warden up` to exit; its exit code.
    fn interrupt(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        let status = try_eventually(
            "warden up to exit after SIGINT",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || self.child.try_wait().unwrap(),
        )
        .unwrap_or_else(|e| self.fail(&e.to_string()));
        self.lines.extend(self.out.try_iter());
        status.code()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // A failed test: SIGINT stops the children too; SIGKILL if that did not work.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn up_json(state_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state_dir.join("up.json")).unwrap()).unwrap()
}

/// Whether `pid` still exists in any state (a zombie too: nobody reaped it).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The `istio_requests_total` samples of a Prometheus text whose labels include all of
/// `labels`.
fn requests(text: &str, labels: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(String::from)
        .collect()
}

#[test]
fn up_runs_bookinfo_end_to_end_stops_cleanly_and_reuses_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // An OpenTelemetry receiver for the proxies' spans, when the tests' Python has it.
    let receiver =
        warden_tests::otlp::python().map(|py| warden_tests::otlp::receiver(&py, dir.path()));
    let endpoint = receiver
        .as_ref()
        .map(|(_, port, _)| format!("http://127.0.0.1:{port}"));
    let extra: Vec<&str> = endpoint
        .as_deref()
        .map(|e| vec!["--otlp-endpoint", e])
        .unwrap_or_default();
    let mut up = Up::start(&state, &extra);
    let out = up.output();
    for want in [
        "  starting ca",
        "  made the root in",
        "  starting agent",
        "  starting app/productpage-v1",
        "  starting proxy/ratings-v1",
        "  starting gateway/istio-ingressgateway",
        &format!("Gateway     {GATEWAY}"),
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }

    // The whole chain, through curl: every reviews version answers in turn (least
    // request over idle endpoints), v2 and v3 with ratings' stars.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let page = curl(&[GATEWAY]);
        assert_eq!(page.status, 200, "{page:?}");
        assert!(
            page.body.contains("<dd>paperback</dd>"),
            "details missing: {}",
            page.body
        );
        let version = ["reviews-v1", "reviews-v2", "reviews-v3"]
            .into_iter()
            .find(|v| page.body.contains(&format!("<u>{v}</u>")))
            .unwrap_or_else(|| panic!("no reviews in: {}", page.body));
        match version {
            "reviews-v2" => assert!(
                page.body.contains("<font color=\"black\">★★★★★</font>"),
                "{}",
                page.body
            ),
            "reviews-v3" => assert!(
                page.body.contains("<font color=\"red\">★★★★★</font>"),
                "{}",
                page.body
            ),
            _ => assert!(!page.body.contains('★'), "{}", page.body),
        }
        seen.insert(version);
    }
    assert_eq!(
        seen.len(),
        3,
        "not every reviews version answered: {seen:?}"
    );

    // The ratings sidecar counted reviews' calls with Istio's labels.
    let stats = warden_tests::http_get(RATINGS_STATS, "/stats/prometheus").1;
    for source in ["reviews-v2", "reviews-v3"] {
        let found = requests(
            &stats,
            &[
                "reporter=\"destination\"",
                &format!("source_workload=\"{source}\""),
                "source_principal=\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews\"",
                "destination_workload=\"ratings-v1\"",
                "destination_app=\"ratings\"",
                "destination_service=\"ratings.bookinfo.svc.cluster.local\"",
                "response_code=\"200\"",
                "connection_security_policy=\"mutual_tls\"",
            ],
        );
        assert!(
            !found.is_empty(),
            "no request from {source} counted:\n{stats}"
        );
    }

    // warden status names each component, its identity, expiry and last rotation.
    let status = Command::new(bin("warden"))
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let ratings = text
        .lines()
        .find(|l| l.starts_with("proxy/ratings-v1 "))
        .unwrap_or_else(|| panic!("no ratings row in:\n{text}"));
    assert!(ratings.contains(" running "), "{ratings}");
    assert!(
        ratings.contains("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings"),
        "{ratings}"
    );
    assert!(
        ratings.contains("(in ") && ratings.contains("serial "),
        "{ratings}"
    );

    prometheus_scrapes_everything(&mut up);
    traced_and_logged_at_every_hop(&state, receiver.as_ref().map(|r| r.2.as_path()));
    replay_and_suggest_on_the_recorded_logs(&state, dir.path());
    console_turns_the_denied_edge_red(&state);

    // SIGINT: warden up stops every child and exits 0; none is left.
    let pids = up.pids();
    assert!(pids.len() >= 15, "{pids:?}");
    assert_eq!(up.interrupt(), Some(0), "{}", up.output());
    for (name, pid) in &pids {
        assert!(
            !exists(*pid),
            "{name} (pid {pid}) still exists after warden up stopped"
        );
    }
    let stopped = Command::new(bin("warden"))
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(stopped.status.code(), Some(1));

    // A second start reuses the root.
    let first_root = up_json(&state)["root_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    drop(up);
    let mut again = Up::start(&state, &[]);
    assert!(
        again.output().contains(&format!(
            "  reusing the root in {}",
            state.join("ca").display()
        )),
        "{}",
        again.output()
    );
    assert_eq!(up_json(&state)["root_fingerprint"], first_root.as_str());
    let page = curl(&[GATEWAY]);
    assert_eq!(page.status, 200, "{page:?}");
    let pids = again.pids();
    assert_eq!(again.interrupt(), Some(0));
    for (name, pid) in &pids {
        assert!(
            !exists(*pid),
            "{name} (pid {pid}) still exists after the second stop"
        );
    }
}

/// With `prometheus` installed, `warden up` started it and every component is a
/// healthy target. Skipped loudly without it; a failed scrape fails under CI=true.
fn prometheus_scrapes_everything(up: &mut Up) {
    let installed = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("prometheus").is_file()));
    if !installed {
        assert!(
            up.output()
                .contains("Prometheus not found: apt install prometheus"),
            "{}",
            up.output()
        );
        eprintln!(
            "\n*** SKIPPING the Prometheus scrape: prometheus is not installed (apt install prometheus) ***\n"
        );
        return;
    }
    let result = try_eventually(
        "Prometheus to scrape every component",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let (status, body) =
                warden_tests::try_http_get(PROMETHEUS, "/api/v1/targets?state=active").ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let targets = v["data"]["activeTargets"].as_array()?.clone();
            let up_count = targets.iter().filter(|t| t["health"] == "up").count();
            (status == 200 && targets.len() == 9 && up_count == 9).then_some(targets)
        },
    );
    match result {
        Ok(targets) => {
            let jobs: std::collections::BTreeSet<&str> = targets
                .iter()
                .filter_map(|t| t["labels"]["job"].as_str())
                .collect();
            assert_eq!(
                jobs.into_iter().collect::<Vec<_>>(),
                ["warden-agent", "warden-ca", "warden-proxy"]
            );
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            let targets = warden_tests::try_http_get(PROMETHEUS, "/api/v1/targets").map(|r| r.1);
            panic!("{e}; targets: {targets:?}");
        }
        Err(e) => eprintln!("\n*** Prometheus did not scrape every component: {e} ***\n"),
    }
}

/// The access-log lines of workload `name` (JSON, one per request).
fn access_log(state: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("logs").join(format!("access-{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One request with a W3C trace id through the gateway (retried with new ids until a
/// reviews version that calls ratings answers): the trace reaches every hop and the
/// collector, and every hop's access log has the request, inbound lines with their
/// policy decision.
fn traced_and_logged_at_every_hop(state: &Path, spans: Option<&Path>) {
    let mut trace = String::new();
    for i in 0..30u8 {
        trace = format!("5b8efff798038103d269b633813fc6{i:02x}");
        let page = curl(&[
            "-H",
            &format!("traceparent: 00-{trace}-eee19b7ec3c1b174-01"),
            "-H",
            "x-request-id: chosen-by-the-client",
            GATEWAY,
        ]);
        assert_eq!(page.status, 200, "{page:?}");
        if page.body.contains('★') {
            break;
        }
    }
    // The gateway's line names the trace; its request id is every hop's.
    let gateway = warden_tests::eventually(
        "the gateway's access log line",
        Duration::from_secs(10),
        || {
            access_log(state, "istio-ingressgateway")
                .into_iter()
                .find(|v| v["trace_id"] == trace.as_str())
        },
    );
    assert_eq!(gateway["direction"], "gateway");
    assert_eq!(gateway["path"], "/productpage");
    let id = gateway["request_id"].as_str().unwrap().to_string();
    // The edge makes its own request id: a client's is not trusted (Envoy's default).
    assert_eq!(id.len(), 36, "{gateway}");
    for (workload, path) in [
        ("productpage-v1", "/productpage"),
        ("details-v1", "/details/0"),
        ("ratings-v1", "/ratings/0"),
    ] {
        let line = warden_tests::eventually(
            format!("{workload}'s inbound line for request {id}"),
            Duration::from_secs(10),
            || {
                access_log(state, workload)
                    .into_iter()
                    .find(|v| v["request_id"] == id.as_str() && v["direction"] == "inbound")
            },
        );
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["response_code"], 200, "{line}");
        assert_eq!(line["authz_decision"], "allow", "{line}");
        assert_eq!(line["trace_id"], trace.as_str(), "{line}");
        assert!(line["authz_policy"].as_str().is_some(), "{line}");
    }
    let Some(out) = spans else {
        eprintln!("SKIPPED: no OTLP receiver (the tests' Python lacks opentelemetry-proto)");
        return;
    };
    // Every hop's proxy exported its spans of the trace.
    let services = warden_tests::eventually("every hop's spans", Duration::from_secs(15), || {
        let services: std::collections::BTreeSet<String> = warden_tests::otlp::spans(out)
            .into_iter()
            .filter(|s| s["trace_id"] == trace.as_str())
            .filter_map(|s| s["resource"]["service.name"].as_str().map(str::to_string))
            .collect();
        let want = [
            "istio-ingressgateway.istio-system",
            "productpage.bookinfo",
            "details.bookinfo",
            "reviews.bookinfo",
            "ratings.bookinfo",
        ];
        want.iter()
            .all(|w| services.contains(*w))
            .then_some(services)
    });
    assert!(services.len() >= 5, "{services:?}");
}

/// The recorded logs replayed against the step that denies reviews -> ratings: the
/// change is reported (exit 1) and names ratings; the policies `suggest` writes from
/// the same logs validate and, added to the demo's, change nothing.
fn replay_and_suggest_on_the_recorded_logs(state: &Path, tmp: &Path) {
    let logs: Vec<PathBuf> = std::fs::read_dir(state.join("logs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("access-"))
        })
        .collect();
    let proposed = tmp.join("proposed");
    std::fs::create_dir_all(&proposed).unwrap();
    for f in std::fs::read_dir(state.join("config")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, proposed.join(f.file_name().unwrap())).unwrap();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(
        root.join("deploy/local/demo-steps/deny-ratings.yaml"),
        proposed.join("deny-ratings.yaml"),
    )
    .unwrap();
    let mut replay = Command::new(bin("warden"));
    replay.args(["authz", "replay", "--config"]).arg(&proposed);
    for l in &logs {
        replay.arg("--log").arg(l);
    }
    let out = replay.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("bookinfo-reviews") && text.contains("ratings"),
        "{text}"
    );

    let mut suggest = Command::new(bin("warden"));
    suggest
        .args(["authz", "suggest", "--namespace", "bookinfo", "--config"])
        .arg(state.join("config"));
    for l in &logs {
        suggest.arg("--log").arg(l);
    }
    let out = suggest.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(yaml.contains("kind: AuthorizationPolicy"), "{yaml}");
    let suggested = tmp.join("suggested");
    std::fs::create_dir_all(&suggested).unwrap();
    std::fs::write(suggested.join("suggested.yaml"), &yaml).unwrap();
    let v = Command::new(bin("warden"))
        .args(["validate"])
        .arg(&suggested)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{}{}\n{yaml}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// The console in Chromium on the live mesh: the demo's edges drawn; after the step
/// that denies reviews -> ratings is applied and traffic flows, that edge turns red.
fn console_turns_the_denied_edge_red(state: &Path) {
    use warden_tests::browser::{Chromium, tags};
    let Some(browser) = Chromium::or_skip("the console on warden up's mesh") else {
        return;
    };
    let url = format!("http://{CONSOLE}/");
    let edge_state = |dom: &str, source: &str, destination: &str| {
        tags(dom, "g")
            .into_iter()
            .find(|t| {
                t.has_class("edge")
                    && t.attr("data-source") == source
                    && t.attr("data-destination") == destination
            })
            .map(|t| t.attr("data-state").to_string())
    };
    let dom = browser.dump_dom(&url, 5000);
    for (s, d) in [
        (
            "istio-system/istio-ingressgateway",
            "bookinfo/productpage-v1",
        ),
        ("bookinfo/productpage-v1", "bookinfo/details-v1"),
        ("bookinfo/reviews-v2", "bookinfo/ratings-v1"),
    ] {
        assert!(
            edge_state(&dom, s, d).is_some(),
            "no edge {s} -> {d} in the console"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(
        root.join("deploy/local/demo-steps/deny-ratings.yaml"),
        state.join("config/deny-ratings.yaml"),
    )
    .unwrap();
    // Traffic until reviews' calls to ratings are refused (the config is polled).
    warden_tests::eventually("reviews -> ratings denied", Duration::from_secs(20), || {
        let page = curl(&[GATEWAY]);
        page.body
            .contains("Ratings service is currently unavailable")
            .then_some(())
    });
    for _ in 0..6 {
        curl(&[GATEWAY]);
    }
    let artifacts = warden_tests::browser::artifacts_dir("warden-up");
    let denied = warden_tests::eventually("the red edge", Duration::from_secs(20), || {
        let dom = browser.dump_dom(&url, 5000);
        ["bookinfo/reviews-v2", "bookinfo/reviews-v3"]
            .iter()
            .any(|s| edge_state(&dom, s, "bookinfo/ratings-v1").as_deref() == Some("denied"))
            .then_some(dom)
    });
    assert_eq!(
        edge_state(&denied, "bookinfo/productpage-v1", "bookinfo/details-v1").as_deref(),
        Some("ok")
    );
    browser.screenshot(&url, &artifacts.join("denied.png"), (1400, 900), 5000);
    std::fs::remove_file(state.join("config/deny-ratings.yaml")).unwrap();
}
