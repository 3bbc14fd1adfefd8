//! `warden-proxy` end to end under load and over its lifetime, in the mesh of
//! `proxy_mesh.rs` (see `warden_tests::mesh`): policy changes and a bad policy under a
//! steady request loop; certificate rotation under load; SIGTERM draining; readiness
//! only once the proxy has an identity.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warden_tests::mesh::{
    Mesh, Req, ServiceSpec, allow_only, authorization_policy, echo, spiffe_id, tail,
};
use warden_tests::{POLL_INTERVAL, try_eventually};

fn client_id() -> String {
    spiffe_id("default", "client")
}
fn server_id() -> String {
    spiffe_id("default", "server")
}

/// Results of a request loop.
#[derive(Debug, Default)]
struct LoopResult {
    ok: usize,
    /// (time since start, what) of every failed request.
    failures: Vec<(Duration, String)>,
    /// (time since start, status) of every answer.
    statuses: Vec<(Duration, u16)>,
    /// XFCC hashes the app saw, in order, deduplicated consecutively.
    hashes: Vec<String>,
}

/// Sends GETs from `client` to `url` until `stop` (at most `max` requests).
fn request_loop(
    mesh: &Mesh,
    client: &str,
    url: &str,
    stop: &AtomicBool,
    max: usize,
    start: Instant,
    expect: u16,
) -> LoopResult {
    let mut out = LoopResult::default();
    for _ in 0..max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t = start.elapsed();
        match mesh.send(client, &Req::get(url)) {
            Ok(r) => {
                out.statuses.push((t, r.status));
                if r.status == expect {
                    out.ok += 1;
                } else {
                    out.failures.push((t, format!("{} {}", r.status, r.text())));
                }
                if r.status == 200
                    && let Some(x) = r.app_header("x-forwarded-client-cert")
                    && let Some(h) = x.split(';').find_map(|p| p.strip_prefix("Hash="))
                    && out.hashes.last().map(String::as_str) != Some(h)
                {
                    out.hashes.push(h.to_string());
                }
            }
            Err(e) => out.failures.push((t, format!("{e:#}"))),
        }
    }
    out
}

#[test]
fn policy_changes_under_load_apply_within_a_second_and_bad_ones_are_rejected() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("other", "other")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .start();
    let url = mesh.url("server", "http", "/steady");
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let other_seen: Mutex<Vec<(Duration, u16)>> = Mutex::new(Vec::new());

    let (client_loop, applied_at, rejected_at, relaxed_at) = std::thread::scope(|s| {
        let steady = s.spawn(|| request_loop(&mesh, "client", &url, &stop, 20_000, start, 200));
        let probe = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let t = start.elapsed();
                let code = mesh
                    .send("other", &Req::get(&url))
                    .map(|r| r.status)
                    .unwrap_or(0);
                other_seen.lock().unwrap().push((t, code));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let _stop = warden_tests::StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(700));

        // Tighten: only the client principal.
        mesh.mark_proxy_log("server");
        let applied_at = start.elapsed();
        mesh.write_config("policy.yaml", &allow_only("server", "client"));
        let ev = mesh
            .wait_proxy_log("server", Duration::from_secs(5), |v| {
                v["message"] == "config applied"
            })
            .unwrap_or_else(|l| panic!("no \"config applied\":\n{}", tail(&l, 30)));
        assert!(ev["generation"].as_u64().is_some(), "{ev}");
        std::thread::sleep(Duration::from_millis(1500));

        // A change that would relax the policy, in a file with a bad document: the
        // whole change is refused and the last good policy stays.
        let gen_before = mesh.generation("server");
        let rejected_before = mesh.metric("server", "warden_config_rejected_total", &[]);
        mesh.mark_proxy_log("server");
        let rejected_at = start.elapsed();
        let bad = [
            authorization_policy("server", "allow-client", "ALLOW", "[{}]"),
            authorization_policy("server", "broken", "PERMIT_EVERYONE", "[{}]"),
        ]
        .join("---\n");
        mesh.write_config("policy.yaml", &bad);
        let ev = mesh
            .wait_proxy_log("server", Duration::from_secs(5), |v| {
                v["message"] == "config rejected"
            })
            .unwrap_or_else(|l| {
                let config: Vec<&String> = l.iter().filter(|x| x.contains("config")).collect();
                panic!("no \"config rejected\"; config lines:\n{config:#?}")
            });
        let shown = ev.to_string();
        assert!(
            shown.contains("PERMIT_EVERYONE") || shown.contains("action"),
            "the rejection says why: {ev}"
        );
        try_eventually(
            "warden_config_rejected_total to grow after the rejection",
            Duration::from_secs(2),
            POLL_INTERVAL,
            || mesh.metric("server", "warden_config_rejected_total", &[]) > rejected_before,
        )
        .unwrap_or_else(|e| panic!("{e}: {}", mesh.metrics("server")));
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            mesh.generation("server"),
            gen_before,
            "the rejected config was not applied"
        );

        // A good relaxing change applies.
        let relaxed_at = start.elapsed();
        mesh.apply_config(
            "policy.yaml",
            &authorization_policy("server", "allow-client", "ALLOW", "[{}]"),
        );
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        probe.join().unwrap();
        (steady.join().unwrap(), applied_at, rejected_at, relaxed_at)
    });

    // Not one allowed request failed, across every change.
    assert!(
        client_loop.failures.is_empty(),
        "{} of {} allowed requests failed: {:?}",
        client_loop.failures.len(),
        client_loop.ok + client_loop.failures.len(),
        &client_loop.failures[..client_loop.failures.len().min(10)]
    );
    assert!(
        client_loop.ok >= 300,
        "only {} requests in the loop",
        client_loop.ok
    );

    // The other principal: 200 before, 403 from at most ~1 s after the write (never 200
    // again until the relaxing change, also through the rejected one), 200 after.
    let seen = other_seen.into_inner().unwrap();
    assert!(seen.iter().all(|(_, c)| *c == 200 || *c == 403), "{seen:?}");
    assert!(seen.iter().any(|(t, c)| *t < applied_at && *c == 200));
    let first_denied = seen
        .iter()
        .find(|(t, c)| *t >= applied_at && *c == 403)
        .unwrap_or_else(|| panic!("the new policy never took effect: {seen:?}"))
        .0;
    let took = first_denied - applied_at;
    assert!(
        took <= Duration::from_millis(1500),
        "the new policy took {took:?} to apply"
    );
    let flapped: Vec<_> = seen
        .iter()
        .filter(|(t, c)| *t > first_denied && *t < relaxed_at && *c != 403)
        .collect();
    assert!(
        flapped.is_empty(),
        "after the policy applied (and through the rejected change at {rejected_at:?}), the other principal got {flapped:?}"
    );
    let after_relax: Vec<_> = seen.iter().filter(|(t, _)| *t > relaxed_at).collect();
    assert!(
        after_relax.last().is_some_and(|(_, c)| *c == 200),
        "the relaxing change did not apply: {after_relax:?}"
    );
    eprintln!(
        "policy change: {} allowed requests, none failed; new policy in force after {took:?}",
        client_loop.ok
    );
}

#[test]
fn certificate_rotation_under_load_fails_no_request() {
    // 6 s SVIDs: the agent rotates each at about half its life.
    let mesh = Mesh::builder()
        .svid_ttl("6s")
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080).tcp(9000))
        .config("policy.yaml", &allow_only("server", "client"))
        .start();
    mesh.agent_log(); // drop what came before
    let url = mesh.url("server", "http", "/rotating");
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (a, b, tcp) = std::thread::scope(|s| {
        let a = s.spawn(|| request_loop(&mesh, "client", &url, &stop, 100_000, start, 200));
        let b = s.spawn(|| request_loop(&mesh, "client", &url, &stop, 100_000, start, 200));
        // Every TCP connection is a new mTLS connection between the proxies: a new
        // handshake with whatever certificates each proxy holds at that moment.
        let tcp = s.spawn(|| {
            let mut out = LoopResult::default();
            while !stop.load(Ordering::Relaxed) {
                let t = start.elapsed();
                let msg = format!("tcp at {t:?}");
                let back = mesh
                    .tcp_connect("client", 9000)
                    .and_then(|mut c| echo(&mut c, msg.as_bytes()));
                match back {
                    Ok(b) if b == msg.as_bytes() => {
                        out.ok += 1;
                        out.statuses.push((t, 200));
                    }
                    other => out.failures.push((t, format!("{other:?}"))),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            out
        });
        let _stop = warden_tests::StopOnDrop(&stop);
        // Past the first certificates' expiry, through two rotations or more.
        std::thread::sleep(Duration::from_secs(9));
        stop.store(true, Ordering::Relaxed);
        (a.join().unwrap(), b.join().unwrap(), tcp.join().unwrap())
    });
    let received: Vec<String> = mesh
        .agent_log()
        .into_iter()
        .filter(|v| v["message"] == "SVID received")
        .map(|v| v["id"].as_str().unwrap_or("").to_string())
        .collect();
    for id in [client_id(), server_id()] {
        let n = received.iter().filter(|r| **r == id).count();
        assert!(
            n >= 2,
            "{id} rotated {n} times during the loop: {received:?}"
        );
    }
    let failures: Vec<_> = a.failures.iter().chain(&b.failures).collect();
    let total = a.ok + b.ok + failures.len();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during rotation: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(total >= 300, "only {total} requests");
    assert!(
        tcp.failures.is_empty(),
        "{} of {} new TCP connections failed during rotation: {:?}",
        tcp.failures.len(),
        tcp.ok + tcp.failures.len(),
        &tcp.failures[..tcp.failures.len().min(10)]
    );
    // New handshakes after the first certificates expired (6 s) succeeded: they used
    // rotated certificates.
    let late = tcp
        .statuses
        .iter()
        .filter(|(t, _)| *t > Duration::from_millis(7500))
        .count();
    assert!(late >= 10, "only {late} TCP connections after 7.5 s");
    // After the rotations, the server proxy still answers and sees a client certificate
    // the agent issued.
    let r = mesh.get("client", &url);
    assert_eq!(r.status, 200);
    eprintln!(
        "rotation: {total} requests and {} new TCP connections, none failed; client certificates the server saw over HTTP: {}",
        tcp.ok,
        a.hashes.len().max(b.hashes.len())
    );
    for name in ["client", "server"] {
        assert_eq!(
            warden_tests::mesh::try_http_get(&mesh.workload(name).health().to_string(), "/ready")
                .unwrap()
                .0,
            200
        );
    }
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .proxy_args(&["--drain-grace", "5s"])
        .start();
    let slow = mesh.url("server", "http", "/delay/2000");
    let (resp, code, log, took) = std::thread::scope(|s| {
        let inflight = s.spawn(|| mesh.send("client", &Req::get(&slow)));
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let (code, log) = mesh.sigterm_proxy("server");
        let took = t.elapsed();
        (inflight.join().unwrap(), code, log, took)
    });
    let resp = resp.unwrap_or_else(|e| {
        panic!(
            "the in-flight request failed: {e:#}\nserver log:\n{}",
            log.join("\n")
        )
    });
    assert_eq!(
        resp.status,
        200,
        "{}\nserver log:\n{}",
        resp.text(),
        log.join("\n")
    );
    assert_eq!(resp.json()["path"], "/delay/2000");
    assert_eq!(code, Some(0), "exit code; log:\n{}", log.join("\n"));
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    // Gone: nothing listens on its inbound port, and the client gets an error answer.
    assert!(std::net::TcpStream::connect(mesh.workload("server").inbound()).is_err());
    let r = mesh.get("client", &mesh.url("server", "http", "/after"));
    assert!(r.status >= 500, "{} {}", r.status, r.text());
}

#[test]
fn ready_only_once_it_has_an_identity() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .start();
    // The server's proxy again, with an SDS socket that is not there yet.
    let late = mesh.dir.path().join("late.sock");
    mesh.spawn_proxy_with("server", &mesh.config_dir, &late, &[]);
    mesh.wait_proxy_log("server", Duration::from_secs(10), |v| {
        v["message"] == "serving"
    })
    .unwrap_or_else(|l| panic!("no \"serving\":\n{}", tail(&l, 30)));
    let health = mesh.workload("server").health().to_string();
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = warden_tests::mesh::try_http_get(&health, "/ready").unwrap();
    assert_eq!(code, 503, "/ready without an identity: {body}");
    assert!(
        !mesh
            .proxy_json("server")
            .iter()
            .any(|v| v["message"] == "ready"),
        "{}",
        mesh.proxy_log("server").join("\n")
    );
    // No identity, no service: the caller gets an error answer, not the app.
    let url = mesh.url("server", "http", "/");
    let r = mesh.get("client", &url);
    assert!(r.status >= 500, "{} {}", r.status, r.text());

    // The socket appears: the proxy gets its identity and becomes ready.
    std::os::unix::fs::symlink(&mesh.sds_socket, &late).unwrap();
    mesh.wait_proxy_ready("server");
    assert_eq!(mesh.get("client", &url).status, 200);
}
