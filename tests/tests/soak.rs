//! Soak (issue 17): mixed HTTP/1.1, HTTP/2, gRPC and TCP traffic through Warden proxies
//! and Envoy for `$WARDEN_SOAK_SECONDS` (default 120, the CI run; `bench/soak.sh` runs
//! 30 minutes), with 10-second certificates, an AuthorizationPolicy change every 10 s
//! and a root rotation (`warden ca authority prepare`, `activate`, `taint`, `revoke`)
//! partway through. Everything is on loopback.
//!
//! The mesh (see `warden_tests::mesh`): `client` and `intruder` (Warden proxies, no
//! apps), `server` (Warden proxy; HTTP/1.1 8080, HTTP/2 8082, TCP 9000 and 9001) and
//! `grpc` (Warden proxy in front of Python's grpcio, gRPC 9090), an Envoy client sidecar
//! (`envoy-client`: plain HTTP in, one mTLS connection per request to `server`'s Warden
//! proxy) and an Envoy server sidecar (`envoy-server`, in front of its app), both with
//! their certificates over SDS from the agent.
//!
//! The policy oracle: two policy sets, "open" and "closed", alternate every 10 s.
//! Every probe is in one of three classes:
//! - ALWAYS: allowed by both sets; any other outcome is an allowed request that failed;
//! - NEVER: denied by both (by default-deny, by an explicit DENY that overrides an
//!   ALLOW, or because the caller is `intruder`); any success is a request allowed that
//!   should have been denied;
//! - FLIP: allowed by "open", denied by "closed"; judged only outside a transition
//!   window (from just before the file is written until every proxy's
//!   `warden_config_generation` has moved, plus [`WINDOW_MARGIN`]); inside one, either
//!   answer is right (an error is not) and the probe is counted as skipped.
//!
//! An answer from an app counts as allowed only if it is the right app's, for the path
//! asked, and names the caller's identity in `x-forwarded-client-cert`. The root
//! rotation starts 40% of the way through the time after warm-up and keeps each state
//! for a certificate lifetime; the soak lasts until it is over.
//!
//! Reports what went wrong (each must be 0), the certificates rotated, the rotation's
//! steps, and the resident memory of every Warden process and Envoy after warm-up and at
//! the end (which must be flat, see [`GROWTH_FLOOR_MIB`]); one JSON line starts with
//! `SOAK-REPORT ` (for `bench/soak.sh`).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use warden_tests::envoy::SIDECAR_NODE_ID;
use warden_tests::envoy::{Bootstrap, Cluster, Envoy, Listener, UpstreamTls};
use warden_tests::mesh::{
    Mesh, Protocol, Req, Resp, ServiceSpec, WorkloadSpec, echo, grpc_call, metric_sum,
};
use warden_tests::{bin, eventually, grpcio_python, interop_script, try_eventually};

/// How often the policy set changes.
const POLICY_EVERY: Duration = Duration::from_secs(10);
/// How long after every proxy reported the new generation a transition window stays
/// open (the generation is counted just before the new config is published).
const WINDOW_MARGIN: Duration = Duration::from_millis(250);
/// How long the root rotation stays in each state.
const ROTATION_DWELL: Duration = Duration::from_secs(10);
/// The policy file the soak rewrites.
const POLICY_FILE: &str = "soak-policy.yaml";
/// How many failures each lane keeps as examples.
const EXAMPLES: usize = 10;
/// Flat memory: a process's resident memory at the end may exceed what it was after
/// warm-up by at most the larger of this many MiB and [`GROWTH_FRACTION`] of it.
/// Allocators keep freed pages for a while (jemalloc in the proxy decays them over
/// seconds, glibc keeps per-thread arenas), which moves the readings of debug builds by
/// a few MiB with no leak; a leak that scales with the work here (about 90 requests/s,
/// a certificate per identity every 5 s, a policy change every 10 s) passes 20 MiB in
/// two minutes at ~2 KiB per request, and in 30 minutes at ~130 bytes per request or
/// ~60 KiB per certificate a proxy takes.
const GROWTH_FLOOR_MIB: f64 = 20.0;
const GROWTH_FRACTION: f64 = 0.5;

const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------
// The policy sets.

/// The AuthorizationPolicies of the "open" (`open`) or "closed" set, for the workloads
/// labelled `tier: backend` (`server` and `grpc`). App ports: 18080 HTTP/1.1, 18082
/// HTTP/2, 19000 and 19001 TCP, 19090 gRPC.
fn policies(open: bool) -> String {
    let (paths, tcp_ports, deny) = if open {
        (
            r#""/ok/*", "/flip/*", "/warden.test.Echo/Say", "/warden.test.Flip/*""#,
            r#""19000", "19001""#,
            r#""/ok/forbidden/*", "/warden.test.Never/*""#,
        )
    } else {
        (
            r#""/ok/*", "/warden.test.Echo/Say""#,
            r#""19000""#,
            r#""/ok/forbidden/*", "/warden.test.Never/*", "/warden.test.Flip/*""#,
        )
    };
    let set = if open { "open" } else { "closed" };
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: soak-allow, namespace: default, labels: {{set: {set}}}}}
spec:
  selector: {{matchLabels: {{tier: backend}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/default/sa/client", "cluster.local/ns/default/sa/envoy-client"]}}}}]
    to: [{{operation: {{paths: [{paths}]}}}}]
  - from: [{{source: {{principals: ["cluster.local/ns/default/sa/client"]}}}}]
    to: [{{operation: {{ports: [{tcp_ports}]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: soak-deny, namespace: default, labels: {{set: {set}}}}}
spec:
  selector: {{matchLabels: {{tier: backend}}}}
  action: DENY
  rules:
  # With the HTTP ports named: on TCP a DENY rule loses its paths and would match all.
  - to: [{{operation: {{ports: ["18080", "18082", "19090"], paths: [{deny}]}}}}]
"#
    )
}

/// Where the policy stands, as the request lanes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PolicyState {
    /// Moves when a transition window opens and when it closes.
    epoch: u64,
    /// No transition window is open.
    settled: bool,
    /// The set in force (or being applied): "open" lets FLIP probes through.
    open: bool,
}

// ---------------------------------------------------------------------------------
// Probes and their outcomes.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Always,
    Never,
    Flip,
}

#[derive(Debug)]
enum Outcome {
    /// The application answered (or echoed).
    Allowed,
    /// A proxy refused: 403 `RBAC: access denied`, gRPC PERMISSION_DENIED, or a TCP
    /// connection closed without an echo.
    Denied,
    /// Anything else.
    Failed(String),
}

#[derive(Debug, Clone)]
enum Target {
    /// HTTP/1.1 on a new connection to workload `from`'s Warden outbound port
    /// (absolute-form).
    Http1 {
        from: &'static str,
        url: String,
        path: &'static str,
        app: &'static str,
    },
    /// HTTP/2 (h2c) to `client`'s outbound port on the lane's one long-lived connection.
    H2 {
        url: String,
        path: &'static str,
        app: &'static str,
    },
    /// HTTP/1.1, origin-form, on a new connection to an Envoy listener.
    Envoy {
        addr: SocketAddr,
        url: String,
        path: &'static str,
        app: &'static str,
    },
    /// A unary gRPC call with tonic on a new connection to `from`'s outbound port.
    Grpc {
        from: &'static str,
        authority: String,
        method: &'static str,
    },
    /// A new TCP connection to `from`'s outbound listener for `port`, one line echoed.
    Tcp { from: &'static str, port: u16 },
}

#[derive(Debug, Clone)]
struct Probe {
    what: String,
    class: Class,
    target: Target,
}

/// A probe of `class`, named after its target.
fn probe(class: Class, target: Target) -> Probe {
    let what = match &target {
        Target::Http1 {
            from, path, app, ..
        } => format!("{from} GET {path} to {app}"),
        Target::H2 { path, .. } => format!("client h2 GET {path}"),
        Target::Envoy { path, .. } => format!("envoy-client GET {path}"),
        Target::Grpc { from, method, .. } => format!("{from} gRPC {method}"),
        Target::Tcp { from, port } => format!("{from} TCP {port}"),
    };
    Probe {
        what,
        class,
        target,
    }
}

/// What an HTTP answer means. An answer from the app must be for `path`, from `app`,
/// and name the caller, service account `caller`, in `x-forwarded-client-cert` (set by
/// the server's Warden proxy or Envoy from the client certificate it verified).
fn http_outcome(r: anyhow::Result<(u16, Bytes)>, path: &str, app: &str, caller: &str) -> Outcome {
    match r {
        Err(e) => Outcome::Failed(format!("{e:#}")),
        Ok((200, body)) => {
            let v = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
            let uri = format!("URI=spiffe://cluster.local/ns/default/sa/{caller}");
            let xfcc = v["headers"]["x-forwarded-client-cert"]
                .as_str()
                .unwrap_or("");
            if v["path"] == path && v["name"] == app && xfcc.contains(&uri) {
                Outcome::Allowed
            } else {
                Outcome::Failed(format!(
                    "200 not from {app} for {path} with {uri}: {}",
                    short(&String::from_utf8_lossy(&body))
                ))
            }
        }
        Ok((403, body)) if body.as_ref() == b"RBAC: access denied" => Outcome::Denied,
        Ok((status, body)) => Outcome::Failed(format!(
            "{status} {}",
            short(&String::from_utf8_lossy(&body))
        )),
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

fn resp(r: anyhow::Result<Resp>) -> anyhow::Result<(u16, Bytes)> {
    r.map(|r| (r.status, r.body))
}

/// One long-lived h2c connection (re-opened when the proxy closed it).
#[derive(Default)]
struct H2Conn {
    sender: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>,
    /// Times the connection was found closed and opened again.
    reconnects: u64,
}

impl H2Conn {
    async fn get(&mut self, addr: SocketAddr, url: &str) -> anyhow::Result<(u16, Bytes)> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
            self.reconnects += 1;
        }
        if self.sender.is_none() {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().unwrap();
        sender.ready().await?;
        let req = http::Request::builder()
            .uri(url)
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// What the lanes share.
struct Ctx<'a> {
    mesh: &'a Mesh,
    stop: &'a AtomicBool,
    policy: &'a Mutex<PolicyState>,
    start: Instant,
    /// What the gRPC server puts before the echoed message (`grpcio:`).
    grpc_prefix: &'static str,
}

impl Ctx<'_> {
    fn run(&self, t: &Target, h2: &mut H2Conn, seq: u64) -> Outcome {
        let mesh = self.mesh;
        match t {
            Target::Http1 {
                from,
                url,
                path,
                app,
            } => http_outcome(resp(mesh.send(from, &Req::get(url))), path, app, from),
            Target::H2 { url, path, app } => {
                let addr = mesh.workload("client").outbound();
                let r = mesh.rt.block_on(async {
                    match tokio::time::timeout(
                        warden_tests::mesh::REQUEST_TIMEOUT,
                        h2.get(addr, url),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            // A stuck connection: start over on a new one.
                            h2.sender = None;
                            Err(anyhow::anyhow!("no response within 15 s"))
                        }
                    }
                });
                if r.is_err() {
                    h2.sender = None;
                }
                http_outcome(r, path, app, "client")
            }
            Target::Envoy {
                addr,
                url,
                path,
                app,
            } => http_outcome(
                resp(mesh.send_to(*addr, &Req::get(url).origin_form())),
                path,
                app,
                "envoy-client",
            ),
            Target::Grpc {
                from,
                authority,
                method,
            } => {
                let addr = mesh.workload(from).outbound();
                let msg = format!("soak {seq}");
                let r = mesh.rt.block_on(async {
                    tokio::time::timeout(
                        warden_tests::mesh::REQUEST_TIMEOUT,
                        grpc_call(addr, authority, method, Bytes::from(msg.clone())),
                    )
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("test timeout")))
                });
                let want = format!("{}{msg}", self.grpc_prefix);
                match r {
                    Ok(b) if *method == "/warden.test.Echo/Say" && b == want.as_bytes() => {
                        Outcome::Allowed
                    }
                    Ok(b) => Outcome::Failed(format!("unexpected reply {b:?}")),
                    // The app has no such method: it was let through.
                    Err(s)
                        if s.code() == tonic::Code::Unimplemented
                            && *method != "/warden.test.Echo/Say" =>
                    {
                        Outcome::Allowed
                    }
                    Err(s)
                        if s.code() == tonic::Code::PermissionDenied
                            && s.message() == "RBAC: access denied" =>
                    {
                        Outcome::Denied
                    }
                    Err(s) => Outcome::Failed(format!("{:?} {}", s.code(), s.message())),
                }
            }
            Target::Tcp { from, port } => {
                let msg = format!("soak {seq}\n");
                let mut s = match mesh.tcp_connect(from, *port) {
                    Ok(s) => s,
                    Err(e) => return Outcome::Failed(format!("connect: {e}")),
                };
                match echo(&mut s, msg.as_bytes()) {
                    Ok(b) if b == msg.as_bytes() => Outcome::Allowed,
                    // Closed without a byte: the server's proxy refused the connection.
                    Ok(b) if b.is_empty() => Outcome::Denied,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        Outcome::Denied
                    }
                    Ok(b) => Outcome::Failed(format!("echo {b:?}")),
                    Err(e) => Outcome::Failed(format!("echo: {e}")),
                }
            }
        }
    }
}

/// The results of one lane.
#[derive(Debug, Default, Clone)]
struct Tally {
    requests: u64,
    /// Answered as their class says (allowed, or cleanly denied).
    as_expected: u64,
    /// Allowed although they should have been denied (NEVER, or FLIP while closed).
    wrongly_allowed: u64,
    /// Should have been allowed (ALWAYS, or FLIP while open) and were not.
    allowed_failed: u64,
    /// Should have been denied and got an error instead of a clean denial.
    denial_errors: u64,
    /// FLIP probes judged (outside transition windows), and of them, wrong.
    flip_checked: u64,
    flip_mismatched: u64,
    /// FLIP probes inside a transition window (not judged), and of them, errors.
    flip_in_window: u64,
    window_errors: u64,
    /// h2 connection re-opened after the proxy closed it.
    reconnects: u64,
    examples: Vec<String>,
}

impl Tally {
    fn record(
        &mut self,
        p: &Probe,
        out: Outcome,
        before: PolicyState,
        after: PolicyState,
        t: Duration,
    ) {
        self.requests += 1;
        let judged = before == after && before.settled;
        let expect_allowed = match p.class {
            Class::Always => Some(true),
            Class::Never => Some(false),
            Class::Flip if judged => Some(before.open),
            Class::Flip => None,
        };
        if p.class == Class::Flip {
            if judged {
                self.flip_checked += 1;
            } else {
                self.flip_in_window += 1;
            }
        }
        let bad = match (expect_allowed, &out) {
            (None, Outcome::Failed(_)) => {
                self.window_errors += 1;
                true
            }
            (None, _) => false,
            (Some(true), Outcome::Allowed) | (Some(false), Outcome::Denied) => {
                self.as_expected += 1;
                false
            }
            (Some(true), _) => {
                self.allowed_failed += 1;
                true
            }
            (Some(false), Outcome::Allowed) => {
                self.wrongly_allowed += 1;
                true
            }
            (Some(false), Outcome::Failed(_)) => {
                self.denial_errors += 1;
                true
            }
        };
        if bad && p.class == Class::Flip && judged {
            self.flip_mismatched += 1;
        }
        if bad && self.examples.len() < EXAMPLES {
            let got = match &out {
                Outcome::Failed(why) => format!("failed: {why}"),
                other => format!("{other:?}"),
            };
            self.examples.push(format!(
                "{:.1}s {} ({:?}, policy {}): {got}",
                t.as_secs_f64(),
                p.what,
                p.class,
                if before.open { "open" } else { "closed" },
            ));
        }
    }

    fn add(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.as_expected += o.as_expected;
        self.wrongly_allowed += o.wrongly_allowed;
        self.allowed_failed += o.allowed_failed;
        self.denial_errors += o.denial_errors;
        self.flip_checked += o.flip_checked;
        self.flip_mismatched += o.flip_mismatched;
        self.flip_in_window += o.flip_in_window;
        self.window_errors += o.window_errors;
        self.reconnects += o.reconnects;
    }
}

/// A request loop: `probes` in turn, `per_second` at most, until `stop`.
struct Lane {
    name: &'static str,
    per_second: f64,
    probes: Vec<Probe>,
}

fn run_lane(ctx: &Ctx<'_>, lane: &Lane) -> Tally {
    let mut tally = Tally::default();
    let mut h2 = H2Conn::default();
    let interval = Duration::from_secs_f64(1.0 / lane.per_second);
    let mut next = Instant::now();
    let mut seq: u64 = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        let p = &lane.probes[(seq % lane.probes.len() as u64) as usize];
        let before = *ctx.policy.lock().unwrap();
        let t = ctx.start.elapsed();
        let out = ctx.run(&p.target, &mut h2, seq);
        let after = *ctx.policy.lock().unwrap();
        tally.record(p, out, before, after, t);
        seq += 1;
        // Paced, never bursting to catch up.
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        while !ctx.stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(100)));
        }
    }
    tally.reconnects = h2.reconnects;
    tally
}

// ---------------------------------------------------------------------------------
// Processes: memory, certificates.

/// VmRSS of `pid` in bytes (0 once it is gone).
fn rss(pid: u32) -> u64 {
    warden_tests::memory_kib(pid).map_or(0, |(rss, _)| rss * 1024)
}

/// "SDS: new certificate" lines proxy `name` logged so far.
fn certs_received(mesh: &Mesh, name: &str) -> usize {
    mesh.proxy_json(name)
        .iter()
        .filter(|v| v["message"] == "SDS: new certificate")
        .count()
}

/// Certificate (not bundle) updates Envoy took over SDS: its `sds.<secret>.update_success`
/// counters other than `ROOTCA`'s.
fn envoy_cert_updates(e: &Envoy) -> u64 {
    let (_, body) = e.admin("/stats?filter=update_success");
    body.lines()
        .filter(|l| l.starts_with("sds.") && !l.starts_with("sds.ROOTCA."))
        .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
        .sum()
}

fn ca_metric(mesh: &Mesh, name: &str) -> f64 {
    let addr = mesh.ca.lock().unwrap().monitoring_addr.clone();
    metric_sum(&warden_tests::http_get(&addr, "/metrics").1, name, &[])
}

// ---------------------------------------------------------------------------------
// The root rotation (as in ca_rotation.rs).

/// A counter from the Envoy admin interface at `admin` (0 when absent).
fn envoy_stat(admin: &str, name: &str) -> u64 {
    let (_, body) = warden_tests::http_get(admin, &format!("/stats?filter=^{name}$"));
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Prepare, activate, taint and revoke, each step checked where it shows (the proxies'
/// and Envoys' bundles, the identities' certificates) and each state kept for
/// [`ROTATION_DWELL`]. Returns (step, seconds since
/// `start`) for each.
fn rotate_root(mesh: &Mesh, envoys: &[String], start: Instant) -> Vec<(String, f64)> {
    let mut done = Vec::new();
    let mut at = |what: &str| done.push((what.to_string(), start.elapsed().as_secs_f64()));
    let proxies = mesh.running_proxies();
    let ids: Vec<String> = mesh.workloads.values().map(|w| w.spiffe_id()).collect();
    let first = mesh.authorities()[0]["id"].as_str().unwrap().to_string();
    let rootca = || -> Vec<u64> {
        envoys
            .iter()
            .map(|admin| envoy_stat(admin, "sds.ROOTCA.update_success"))
            .collect()
    };
    let wait_envoys = |before: &[u64], what: &str| {
        try_eventually(
            format_args!("every Envoy to take the bundle {what}"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let now = rootca();
                if now.iter().zip(before).all(|(n, b)| n > b) {
                    Ok(())
                } else {
                    Err(now)
                }
            },
        )
        .unwrap();
    };
    let wait_proxies = |roots: u64| {
        for name in &proxies {
            mesh.wait_proxy_log(name, Duration::from_secs(20), |v| {
                v["message"] == "SDS: new trust bundle" && v["roots"] == roots
            })
            .unwrap_or_else(|l| {
                panic!(
                    "proxy {name} never got the {roots}-root bundle: {}",
                    warden_tests::mesh::tail(&l, 20)
                )
            });
        }
    };
    for name in &proxies {
        mesh.mark_proxy_log(name);
    }

    let before = rootca();
    let second = mesh.authority_step(&["prepare"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_proxies(2);
    wait_envoys(&before, "with the new root");
    at("prepare");
    // Each state lasts a certificate lifetime under traffic: two roots trusted, the
    // old one signing.
    std::thread::sleep(ROTATION_DWELL);

    let active = mesh.authority_step(&["activate"]);
    assert_eq!(active["id"], second.as_str());
    at("activate");
    // The new root signs; certificates of both roots meet in handshakes while the
    // identities rotate on their own.
    std::thread::sleep(ROTATION_DWELL);

    mesh.authority_step(&["taint", &first]);
    try_eventually(
        "every SVID to be signed by the new root",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let old: Vec<&String> = ids
                .iter()
                .filter(|id| warden_tests::authority_key_id(&mesh.leaf_der(id)) != second)
                .collect();
            if old.is_empty() {
                Ok(())
            } else {
                Err(format!("{old:?}"))
            }
        },
    )
    .unwrap();
    try_eventually(
        "the old authority to be in use nowhere",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let list = mesh.authorities();
            let old = list.iter().find(|a| a["id"] == first.as_str()).cloned();
            if old.is_some_and(|o| o["in_use"] == 0) {
                Ok(())
            } else {
                Err(list)
            }
        },
    )
    .unwrap();
    at("taint");
    std::thread::sleep(ROTATION_DWELL);

    let before = rootca();
    let revoked = mesh.authority_step(&["revoke", &first]);
    assert_eq!(revoked["state"], "revoked");
    wait_proxies(1);
    wait_envoys(&before, "without the old root");
    let list = mesh.authorities();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], second.as_str());
    at("revoke");
    done
}

/// Sets the flag when a thread panics, so everything else stops too.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

fn soak_seconds() -> u64 {
    match std::env::var("WARDEN_SOAK_SECONDS") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("WARDEN_SOAK_SECONDS={s:?} is not a number of seconds")),
        Err(_) => 120,
    }
}

#[test]
fn soak() {
    let total = Duration::from_secs(soak_seconds().max(20));
    // Warm-up: traffic (judged like the rest) before the first memory reading, so that
    // pools, caches and allocator arenas have reached their working size.
    let warmup = (total / 6).clamp(Duration::from_secs(5), Duration::from_secs(30));
    let rotate_at = warmup + (total - warmup).mul_f64(0.4);

    let mesh = Mesh::builder()
        .svid_ttl("10s")
        .workload_spec(WorkloadSpec::new("client", "default", "client").without_apps())
        .workload_spec(WorkloadSpec::new("intruder", "default", "intruder").without_apps())
        .workload_spec(WorkloadSpec::new("server", "default", "server").label("tier", "backend"))
        .workload_spec(
            WorkloadSpec::new("grpc", "default", "grpc")
                .label("tier", "backend")
                .without_apps(),
        )
        .workload_spec(WorkloadSpec::new("envoy-client", "default", "envoy-client").without_proxy())
        .workload_spec(WorkloadSpec::new("envoy-server", "default", "envoy-server").without_proxy())
        .service(
            ServiceSpec::new("server", "default")
                .http(8080)
                .port("http2", 8082, Protocol::Http2)
                .tcp(9000)
                .port("tcp-flip", 9001, Protocol::Tcp),
        )
        .service(ServiceSpec::new("grpc", "default").grpc(9090))
        .service(ServiceSpec::new("envoy-server", "default").http(8080))
        .config(POLICY_FILE, &policies(true))
        .start();

    // The gRPC server: grpcio (no one here wrote it), or the test app without Python.
    let g = mesh.workload("grpc").clone();
    let grpc_addr = g.addr(g.ports["grpc"]).to_string();
    let grpc_prefix =
        match grpcio_python("grpcio as the soak's gRPC server (the test app serves instead)") {
            Some(py) => {
                let mut cmd = Command::new(py);
                cmd.arg(interop_script("grpc_echo_server.py"))
                    .arg(&grpc_addr);
                mesh.spawn_app(cmd);
                "grpcio:"
            }
            None => {
                let mut cmd = Command::new(bin("warden-test-app"));
                cmd.args(["http", &grpc_addr, "--name", "grpc"]);
                mesh.spawn_app(cmd);
                ""
            }
        };

    // Envoy on both sides: a client sidecar (plain HTTP in, a new mTLS connection per
    // request to the server's Warden proxy) and a server sidecar in front of its app.
    let (ec, server, es) = (
        mesh.workload("envoy-client").clone(),
        mesh.workload("server").clone(),
        mesh.workload("envoy-server").clone(),
    );
    let client_bootstrap = Bootstrap::new(SIDECAR_NODE_ID, &mesh.sds_socket)
        .listener(Listener::http("plain_out", &ec.ip.to_string(), 15001).route("/", "to_server"))
        .cluster(
            Cluster::to("to_server", &server.ip.to_string(), 15006)
                .http1()
                .max_requests_per_connection(1)
                .tls(
                    UpstreamTls::new(&ec.spiffe_id(), &server.spiffe_id())
                        .sni(&format!(
                            "outbound_.8080_._.{}",
                            mesh.service("server").host
                        ))
                        .alpn("http/1.1"),
                ),
        );
    let server_bootstrap = warden_tests::envoy::server_sidecar(
        &mesh.sds_socket,
        (&es.ip.to_string(), 15006),
        (&es.ip.to_string(), es.ports["http"]),
        &es.spiffe_id(),
        true,
    );
    let envoy_client = Envoy::start(&mesh.dir.path().join("envoy-client"), &client_bootstrap, 1);
    let envoy_server = Envoy::start(&mesh.dir.path().join("envoy-server"), &server_bootstrap, 1);
    let via_envoy: SocketAddr = format!("{}:15001", ec.ip).parse().unwrap();

    // The lanes.
    let url = |svc: &str, port: &str, path: &str| mesh.url(svc, port, path);
    let h1 = |from: &'static str, path: &'static str, app: &'static str| Target::Http1 {
        from,
        url: url(app, "http", path),
        path,
        app,
    };
    let h2 = |path: &'static str| Target::H2 {
        url: url("server", "http2", path),
        path,
        app: "server",
    };
    let envoy = |path: &'static str| Target::Envoy {
        addr: via_envoy,
        url: url("server", "http", path),
        path,
        app: "server",
    };
    let grpc_authority = format!("{}:9090", mesh.service("grpc").host);
    let grpc = |from: &'static str, method: &'static str| Target::Grpc {
        from,
        authority: grpc_authority.clone(),
        method,
    };
    let tcp = |from: &'static str, port: u16| Target::Tcp { from, port };
    use Class::{Always, Flip, Never};
    // Each lane's probes in turn; ALWAYS probes twice as often as the others.
    let lanes = vec![
        Lane {
            name: "HTTP/1.1 Warden→Warden",
            per_second: 20.0,
            probes: vec![
                probe(Always, h1("client", "/ok/h1", "server")),
                probe(Never, h1("client", "/ok/forbidden/h1", "server")),
                probe(Always, h1("client", "/ok/h1", "server")),
                probe(Never, h1("client", "/other/h1", "server")),
                probe(Flip, h1("client", "/flip/h1", "server")),
            ],
        },
        Lane {
            name: "HTTP/2 Warden→Warden, one connection",
            per_second: 15.0,
            probes: vec![
                probe(Always, h2("/ok/h2")),
                probe(Never, h2("/ok/forbidden/h2")),
                probe(Always, h2("/ok/h2")),
                probe(Never, h2("/other/h2")),
                probe(Flip, h2("/flip/h2")),
            ],
        },
        Lane {
            name: "gRPC tonic→Warden→Warden→grpcio",
            per_second: 15.0,
            probes: vec![
                probe(Always, grpc("client", "/warden.test.Echo/Say")),
                probe(Never, grpc("client", "/warden.test.Never/Say")),
                probe(Always, grpc("client", "/warden.test.Echo/Say")),
                probe(Flip, grpc("client", "/warden.test.Flip/Say")),
            ],
        },
        Lane {
            name: "TCP Warden→Warden",
            per_second: 10.0,
            probes: vec![
                probe(Always, tcp("client", 9000)),
                probe(Flip, tcp("client", 9001)),
                probe(Always, tcp("client", 9000)),
                probe(Never, tcp("intruder", 9000)),
            ],
        },
        Lane {
            name: "HTTP/1.1 Envoy→Warden",
            per_second: 15.0,
            probes: vec![
                probe(Always, envoy("/ok/envoy")),
                probe(Never, envoy("/ok/forbidden/envoy")),
                probe(Always, envoy("/ok/envoy")),
                probe(Never, envoy("/other/envoy")),
                probe(Flip, envoy("/flip/envoy")),
            ],
        },
        Lane {
            name: "HTTP/1.1 Warden→Envoy",
            per_second: 10.0,
            probes: vec![probe(Always, h1("client", "/to-envoy", "envoy-server"))],
        },
        Lane {
            name: "intruder HTTP/1.1 and gRPC",
            per_second: 5.0,
            probes: vec![
                probe(Never, h1("intruder", "/ok/h1", "server")),
                probe(Never, grpc("intruder", "/warden.test.Echo/Say")),
            ],
        },
    ];

    let stop = AtomicBool::new(false);
    let policy = Mutex::new(PolicyState {
        epoch: 0,
        settled: true,
        open: true,
    });
    let ctx = Ctx {
        mesh: &mesh,
        stop: &stop,
        policy: &policy,
        start: Instant::now(),
        grpc_prefix,
    };

    // Before the clock starts: every probe answers as its class says under "open"
    // (Envoy and the gRPC server may need a moment).
    for lane in &lanes {
        let mut h2 = H2Conn::default();
        for p in &lane.probes {
            let want_allowed = p.class != Class::Never;
            eventually(
                format_args!(
                    "{} to be {}",
                    p.what,
                    if want_allowed { "allowed" } else { "denied" }
                ),
                Duration::from_secs(30),
                || match ctx.run(&p.target, &mut h2, 0) {
                    Outcome::Allowed if want_allowed => Ok(()),
                    Outcome::Denied if !want_allowed => Ok(()),
                    other => Err(other),
                },
            );
        }
    }

    let mut procs: Vec<(String, u32)> = vec![
        ("warden-ca".into(), mesh.ca.lock().unwrap().child.id()),
        ("warden-agent".into(), mesh.agent.lock().unwrap().child.id()),
    ];
    for name in mesh.running_proxies() {
        let pid = mesh.with_proxy(&name, |p| p.child.id());
        procs.push((format!("warden-proxy {name}"), pid));
    }
    procs.push(("envoy client".into(), envoy_client.pid()));
    procs.push(("envoy server".into(), envoy_server.pid()));
    let envoys = [&envoy_client, &envoy_server];
    let envoy_admins = [
        envoy_client.admin_addr.clone(),
        envoy_server.admin_addr.clone(),
    ];

    let start = Instant::now();
    let ctx = Ctx { start, ..ctx };
    let agent_refreshes = |m: &Mesh| {
        let a = m.agent.lock().unwrap();
        (
            a.metric("warden_agent_svid_refreshes_total"),
            a.metric("warden_agent_svid_refresh_failures_total"),
        )
    };
    struct Readings {
        rss: Vec<u64>,
        agent: (f64, f64),
        ca_issued: f64,
        proxy_certs: BTreeMap<String, usize>,
        envoy_certs: Vec<u64>,
    }
    let read = |m: &Mesh| Readings {
        rss: procs.iter().map(|(_, pid)| rss(*pid)).collect(),
        agent: agent_refreshes(m),
        ca_issued: ca_metric(m, "citadel_server_success_cert_issuance_count"),
        proxy_certs: m
            .running_proxies()
            .into_iter()
            .map(|n| {
                let c = certs_received(m, &n);
                (n, c)
            })
            .collect(),
        envoy_certs: envoys.iter().map(|e| envoy_cert_updates(e)).collect(),
    };
    let at_start = read(&mesh);
    let mut peak: Vec<u64> = at_start.rss.clone();

    let mut policy_changes = 0u64;
    let mut apply_max = Duration::ZERO;
    let mut apply_sum = Duration::ZERO;
    let (tallies, rotation, after_warmup, at_end) = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|lane| {
                let ctx = &ctx;
                s.spawn(move || {
                    let _stop = StopOnPanic(ctx.stop);
                    run_lane(ctx, lane)
                })
            })
            .collect();
        let rotation = s.spawn(|| {
            let _stop = StopOnPanic(&stop);
            while start.elapsed() < rotate_at {
                if stop.load(Ordering::Relaxed) {
                    return Vec::new();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            rotate_root(&mesh, &envoy_admins, start)
        });
        let _stop = warden_tests::StopOnDrop(&stop);

        let mut open = true;
        let mut next_change = start + POLICY_EVERY;
        let mut after_warmup = None;
        loop {
            let now = Instant::now();
            let elapsed = now - start;
            // The end: the clock ran out and the rotation is done (it has bounded
            // waits of its own).
            if elapsed >= total && rotation.is_finished() {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if after_warmup.is_none() && elapsed >= warmup {
                after_warmup = Some(read(&mesh));
            }
            if now >= next_change {
                open = !open;
                {
                    let mut p = policy.lock().unwrap();
                    p.epoch += 1;
                    p.settled = false;
                    p.open = open;
                }
                let took = mesh.apply_config(POLICY_FILE, &policies(open));
                std::thread::sleep(WINDOW_MARGIN);
                {
                    let mut p = policy.lock().unwrap();
                    p.epoch += 1;
                    p.settled = true;
                }
                policy_changes += 1;
                apply_max = apply_max.max(took);
                apply_sum += took;
                for (i, (_, pid)) in procs.iter().enumerate() {
                    peak[i] = peak[i].max(rss(*pid));
                }
                next_change += POLICY_EVERY;
                let elapsed = start.elapsed().as_secs();
                if elapsed % 60 < 10 {
                    eprintln!("soak: {elapsed} s of {} s", total.as_secs());
                }
            }
            // The grpcio server logs every request; keep its channel empty.
            mesh.app_log();
            std::thread::sleep(Duration::from_millis(100));
        }
        // The end readings, under the same load as the start.
        let at_end = read(&mesh);
        stop.store(true, Ordering::Relaxed);
        let tallies: Vec<Tally> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let rotation = rotation.join().unwrap();
        (tallies, rotation, after_warmup, at_end)
    });
    let elapsed = start.elapsed();
    let after_warmup = after_warmup.unwrap_or_else(|| panic!("the soak ended before its warm-up"));

    // The report.
    let mut all = Tally::default();
    for t in &tallies {
        all.add(t);
    }
    let mut memory = serde_json::Map::new();
    let mut grew_too_much = Vec::new();
    for (i, (name, _)) in procs.iter().enumerate() {
        let (s, e) = (after_warmup.rss[i], at_end.rss[i]);
        peak[i] = peak[i].max(e).max(s);
        let growth = e as f64 - s as f64;
        let limit = (GROWTH_FLOOR_MIB * MIB).max(s as f64 * GROWTH_FRACTION);
        if growth > limit {
            grew_too_much.push(format!(
                "{name}: {:.1} → {:.1} MiB (+{:.1}, limit {:.1})",
                s as f64 / MIB,
                e as f64 / MIB,
                growth / MIB,
                limit / MIB
            ));
        }
        memory.insert(
            name.clone(),
            json!({
                "start_mib": round1(s as f64 / MIB),
                "end_mib": round1(e as f64 / MIB),
                "growth_mib": round1(growth / MIB),
                "peak_sampled_mib": round1(peak[i] as f64 / MIB),
            }),
        );
    }
    let proxy_rotations: BTreeMap<&String, i64> = at_end
        .proxy_certs
        .iter()
        .map(|(n, c)| (n, *c as i64 - at_start.proxy_certs[n] as i64))
        .collect();
    let envoy_rotations: Vec<i64> = at_end
        .envoy_certs
        .iter()
        .zip(&at_start.envoy_certs)
        .map(|(e, s)| *e as i64 - *s as i64)
        .collect();
    let lanes_json: serde_json::Map<String, serde_json::Value> = lanes
        .iter()
        .zip(&tallies)
        .map(|(l, t)| {
            (
                l.name.to_string(),
                json!({
                    "requests": t.requests,
                    "as_expected": t.as_expected,
                    "wrongly_allowed": t.wrongly_allowed,
                    "allowed_failed": t.allowed_failed,
                    "denial_errors": t.denial_errors,
                    "flip_checked": t.flip_checked,
                    "flip_in_window": t.flip_in_window,
                    "reconnects": t.reconnects,
                }),
            )
        })
        .collect();
    let steps: Vec<&str> = rotation.iter().map(|(s, _)| s.as_str()).collect();
    let steps_json: Vec<_> = rotation
        .iter()
        .map(|(s, t)| json!({"step": s, "at_s": round1(*t)}))
        .collect();
    let apply_mean = apply_sum
        .checked_div(u32::try_from(policy_changes).unwrap())
        .unwrap_or_default();
    let per_second = all.requests as f64 / elapsed.as_secs_f64();
    let report = json!({
        "seconds": round1(elapsed.as_secs_f64()),
        "warmup_seconds": warmup.as_secs(),
        "requests": all.requests,
        "requests_per_second": round1(per_second),
        "allowed_that_should_have_been_denied": all.wrongly_allowed,
        "allowed_requests_failed": all.allowed_failed,
        "denials_with_errors": all.denial_errors,
        "flip": {
            "checked": all.flip_checked,
            "mismatched": all.flip_mismatched,
            "skipped_in_window": all.flip_in_window,
            "errors_in_window": all.window_errors,
        },
        "policy_changes": policy_changes,
        "policy_apply_ms": {
            "max": apply_max.as_millis() as u64,
            "mean": apply_mean.as_millis() as u64,
        },
        "svid_rotations": {
            "agent_refreshes": at_end.agent.0 - at_start.agent.0,
            "agent_refresh_failures": at_end.agent.1 - at_start.agent.1,
            "ca_issued": at_end.ca_issued - at_start.ca_issued,
            "proxies": proxy_rotations,
            "envoy_client": envoy_rotations[0],
            "envoy_server": envoy_rotations[1],
        },
        "root_rotation": {
            "completed": u64::from(steps == ["prepare", "activate", "taint", "revoke"]),
            "steps": steps_json,
        },
        "memory": memory,
        "h2_reconnects": all.reconnects,
        "lanes": lanes_json,
    });
    let mut text = format!(
        "\n=== soak: {:.0} s ({} s warm-up), {} requests ({per_second:.1}/s) ===\n",
        elapsed.as_secs_f64(),
        warmup.as_secs(),
        all.requests,
    );
    text += &format!(
        "requests allowed that should have been denied: {}\n",
        all.wrongly_allowed
    );
    text += &format!("allowed requests that failed: {}\n", all.allowed_failed);
    text += &format!("denials that came as errors: {}\n", all.denial_errors);
    text += &format!(
        "FLIP probes: {} judged ({} wrong), {} skipped in transition windows ({} errors)\n",
        all.flip_checked, all.flip_mismatched, all.flip_in_window, all.window_errors
    );
    text += &format!(
        "policy changes: {policy_changes} (every proxy applied each within {} ms, mean {} ms)\n",
        apply_max.as_millis(),
        apply_mean.as_millis()
    );
    text += &format!(
        "certificates: agent refreshed {} ({} failures), CA issued {}\n  taken by:",
        at_end.agent.0 - at_start.agent.0,
        at_end.agent.1 - at_start.agent.1,
        at_end.ca_issued - at_start.ca_issued,
    );
    for (name, n) in &proxy_rotations {
        text += &format!(" proxy {name} {n},");
    }
    text += &format!(
        " envoy client {}, envoy server {}\n",
        envoy_rotations[0], envoy_rotations[1]
    );
    let steps_text: Vec<String> = rotation
        .iter()
        .map(|(step, t)| format!("{step} at {t:.1} s"))
        .collect();
    text += &format!("root rotation: {}\n", steps_text.join(", "));
    text += "memory (VmRSS after warm-up → end, MiB):\n";
    for (i, (name, _)) in procs.iter().enumerate() {
        text += &format!(
            "  {name:<24} {:>7.1} → {:>7.1} ({:+.1}; peak sampled {:.1})\n",
            after_warmup.rss[i] as f64 / MIB,
            at_end.rss[i] as f64 / MIB,
            (at_end.rss[i] as f64 - after_warmup.rss[i] as f64) / MIB,
            peak[i] as f64 / MIB
        );
    }
    text += "lanes: requests; wrongly allowed, allowed failed, denial errors; ";
    text += "FLIP judged, in window\n";
    for (l, t) in lanes.iter().zip(&tallies) {
        text += &format!(
            "  {:<38} {:>6}; {} {} {}; {} {}{}\n",
            l.name,
            t.requests,
            t.wrongly_allowed,
            t.allowed_failed,
            t.denial_errors,
            t.flip_checked,
            t.flip_in_window,
            if t.reconnects > 0 {
                format!("; {} reconnects", t.reconnects)
            } else {
                String::new()
            }
        );
        for e in &t.examples {
            text += &format!("      {e}\n");
        }
    }
    eprintln!("{text}");
    println!("SOAK-REPORT {report}");

    // The verdict.
    assert_eq!(
        all.wrongly_allowed, 0,
        "requests allowed that should have been denied"
    );
    assert_eq!(all.allowed_failed, 0, "allowed requests that failed");
    assert_eq!(all.denial_errors, 0, "denials that came as errors");
    assert_eq!(all.window_errors, 0, "errors inside transition windows");
    assert_eq!(
        steps,
        ["prepare", "activate", "taint", "revoke"],
        "the root rotation"
    );
    assert!(all.flip_checked > 0, "no FLIP probe was judged");
    assert!(grew_too_much.is_empty(), "memory grew: {grew_too_much:#?}");
    // 10-second certificates: every proxy and Envoy took a new one at least every 10 s.
    let min = (elapsed.as_secs() / 10) as i64;
    for (name, n) in &proxy_rotations {
        assert!(
            *n >= min,
            "proxy {name} took {n} certificates in {elapsed:?}"
        );
    }
    for (name, n) in ["envoy client", "envoy server"]
        .iter()
        .zip(&envoy_rotations)
    {
        assert!(*n >= min, "{name} took {n} certificates in {elapsed:?}");
    }
    let expected = (elapsed.as_secs_f64() / POLICY_EVERY.as_secs_f64()) as u64;
    assert!(
        policy_changes + 1 >= expected,
        "{policy_changes} policy changes in {elapsed:?}"
    );
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
