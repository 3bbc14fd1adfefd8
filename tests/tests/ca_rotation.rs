//! Root rotation of an own-root CA under load: `warden ca authority prepare`,
//! `activate`, `taint`, `revoke` while two proxies carry a steady stream of HTTP
//! requests and new mTLS connections, with no failed request; each step audited; the
//! CA's files, the trust bundle and the certificates checked by openssl and curl.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warden_tests::mesh::{Mesh, Req, ServiceSpec, allow_only, echo, spiffe_id};
use warden_tests::{fails, ok, try_eventually};

/// openssl verifies `leaf_der` against the CA's `root-cert.pem`.
fn openssl_verifies(mesh: &Mesh, leaf_der: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(
        &leaf,
        warden_common::files::pem_encode("CERTIFICATE", leaf_der),
    )
    .unwrap();
    let roots = mesh.ca.lock().unwrap().data_dir.join("root-cert.pem");
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&roots)
        .arg(&leaf)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    }
}

/// curl reaches the CA over TLS verifying its serving certificate with `root-cert.pem`
/// (a gRPC server answers a plain GET with some HTTP status; the handshake is the test).
fn curl_trusts_the_ca(mesh: &Mesh) {
    let ca = mesh.ca.lock().unwrap();
    let roots = ca.data_dir.join("root-cert.pem");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--http2",
            "--cacert",
        ])
        .arg(&roots)
        .arg(format!("{}/", ca.url()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl does not trust the CA's serving certificate with root-cert.pem: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Default)]
struct Counts {
    ok: usize,
    failures: Vec<(Duration, String)>,
}

/// Sends requests with `send` until `stop`: 200s count as ok, anything else fails.
fn http_loop(
    stop: &AtomicBool,
    start: Instant,
    send: impl Fn() -> anyhow::Result<warden_tests::mesh::Resp>,
) -> Counts {
    let mut out = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        let t = start.elapsed();
        match send() {
            Ok(r) if r.status == 200 => out.ok += 1,
            Ok(r) => out.failures.push((t, format!("{} {}", r.status, r.text()))),
            Err(e) => out.failures.push((t, format!("{e:#}"))),
        }
    }
    out
}

/// Every 20 ms until `stop`, a new TCP connection through `client`'s outbound port 9000
/// (a new mTLS handshake between the proxies) that must echo a line.
fn tcp_loop(mesh: &Mesh, stop: &AtomicBool, start: Instant) -> Counts {
    let mut out = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        let t = start.elapsed();
        let msg = format!("tcp at {t:?}");
        match mesh
            .tcp_connect("client", 9000)
            .and_then(|mut c| echo(&mut c, msg.as_bytes()))
        {
            Ok(b) if b == msg.as_bytes() => out.ok += 1,
            other => out.failures.push((t, format!("{other:?}"))),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

#[test]
fn root_rotation_under_load_fails_no_request() {
    // Hour-long SVIDs: no rotation happens by the clock during the test; every
    // re-issue is the taint's.
    let mesh = Mesh::builder()
        .svid_ttl("1h")
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080).tcp(9000))
        .config("policy.yaml", &allow_only("server", "client"))
        .start();
    let client = spiffe_id("default", "client");
    let server = spiffe_id("default", "server");
    let url = mesh.url("server", "http", "/rotating");
    let data_dir = mesh.ca.lock().unwrap().data_dir.clone();

    let before = mesh.authorities();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["state"], "active");
    let first = before[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        warden_tests::authority_key_id(&mesh.leaf_der(&client)),
        first
    );
    // Nothing to activate, taint or revoke yet: refused with the reason, nothing changes.
    let err = fails(
        mesh.ca
            .lock()
            .unwrap()
            .warden(&["ca", "authority", "activate"]),
    );
    assert!(err.contains("no authority is prepared"), "{err}");
    let err = fails(
        mesh.ca
            .lock()
            .unwrap()
            .warden(&["ca", "authority", "taint", &first]),
    );
    assert!(
        err.contains("is active; only an old authority can be tainted"),
        "{err}"
    );
    let err = fails(
        mesh.ca
            .lock()
            .unwrap()
            .warden(&["ca", "authority", "revoke", &first]),
    );
    assert!(err.contains("is active"), "{err}");
    let err = fails(
        mesh.ca
            .lock()
            .unwrap()
            .warden(&["ca", "authority", "taint", "00ff"]),
    );
    assert!(err.contains("no authority \"00ff\""), "{err}");
    assert_eq!(mesh.authorities().len(), 1);

    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (http, tcp, second) = std::thread::scope(|s| {
        let http = s.spawn(|| http_loop(&stop, start, || mesh.send("client", &Req::get(&url))));
        // Each TCP connection is a new mTLS handshake between the proxies, with the
        // certificates and bundle each holds at that moment.
        let tcp = s.spawn(|| tcp_loop(&mesh, &stop, start));
        let _stop = warden_tests::StopOnDrop(&stop);
        mesh.mark_proxy_log("client");
        mesh.mark_proxy_log("server");

        // Prepare: the new root joins every bundle; the old one still signs.
        let prepared = mesh.authority_step(&["prepare"]);
        assert_eq!(prepared["state"], "prepared");
        let second = prepared["id"].as_str().unwrap().to_string();
        assert_ne!(second, first);
        // Both proxies take the two-root bundle over SDS, without restarting.
        for name in ["client", "server"] {
            mesh.wait_proxy_log(name, Duration::from_secs(10), |v| {
                v["message"] == "SDS: new trust bundle" && v["roots"] == 2
            })
            .unwrap_or_else(|l| panic!("proxy {name} never got the 2-root bundle: {l:#?}"));
        }
        let bundle = std::fs::read_to_string(data_dir.join("root-cert.pem")).unwrap();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);

        // Activate: the new root signs; the old one stays trusted.
        let active = mesh.authority_step(&["activate"]);
        assert_eq!(active["id"], second.as_str());
        assert_eq!(active["state"], "active");
        // The CA's serving certificate is now the new root's: curl trusts it with
        // root-cert.pem, and the agent reaches the CA (it learned the root above).
        curl_trusts_the_ca(&mesh);
        // The old root still signs the identities' current certificates: revoking it
        // is refused, naming the count.
        let err = fails(
            mesh.ca
                .lock()
                .unwrap()
                .warden(&["ca", "authority", "revoke", &first]),
        );
        assert!(
            err.contains("still signs the current certificate of"),
            "{err}"
        );
        assert_eq!(mesh.authorities().len(), 2);

        // Taint: the agent re-issues every SVID the old root signed, now (the SVIDs
        // have an hour left).
        let tainted = mesh.authority_step(&["taint", &first]);
        assert_eq!(tainted["tainted"], true);
        try_eventually(
            "the agent to re-issue the tainted SVIDs",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || {
                let now = [
                    warden_tests::authority_key_id(&mesh.leaf_der(&client)),
                    warden_tests::authority_key_id(&mesh.leaf_der(&server)),
                ];
                if now.iter().all(|a| *a == second) {
                    Ok(())
                } else {
                    Err(now)
                }
            },
        )
        .unwrap();
        // Every identity (the node's too) has a certificate from the new root: the
        // old one is in use nowhere.
        try_eventually(
            "the old authority to be in use nowhere",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || {
                let list = mesh.authorities();
                let old = list
                    .iter()
                    .find(|a| a["id"] == first.as_str())
                    .unwrap()
                    .clone();
                if old["in_use"] == 0 {
                    Ok(())
                } else {
                    Err(list)
                }
            },
        )
        .unwrap();
        // Let both proxies serve with the new certificates for a moment.
        std::thread::sleep(Duration::from_millis(500));

        // Revoke: the old root leaves every bundle and its key is deleted.
        let revoked = mesh.authority_step(&["revoke", &first]);
        assert_eq!(revoked["state"], "revoked");
        for name in ["client", "server"] {
            mesh.wait_proxy_log(name, Duration::from_secs(10), |v| {
                v["message"] == "SDS: new trust bundle" && v["roots"] == 1
            })
            .unwrap_or_else(|l| panic!("proxy {name} never dropped the old root: {l:#?}"));
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (http.join().unwrap(), tcp.join().unwrap(), second)
    });

    let total = http.ok + http.failures.len();
    assert!(
        http.failures.is_empty(),
        "{} of {total} requests failed during the rotation: {:?}",
        http.failures.len(),
        &http.failures[..http.failures.len().min(10)]
    );
    assert!(
        tcp.failures.is_empty(),
        "{} of {} new connections failed during the rotation: {:?}",
        tcp.failures.len(),
        tcp.ok + tcp.failures.len(),
        &tcp.failures[..tcp.failures.len().min(10)]
    );
    assert!(
        total >= 100 && tcp.ok >= 20,
        "only {total} requests, {} connections",
        tcp.ok
    );

    // The files: one authority, the old key gone, the new key 0600, root-cert.pem the
    // new root only, and openssl verifies the current leaves with it.
    let list = mesh.authorities();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], second.as_str());
    assert!(!data_dir.join("ca-key.pem").exists());
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(data_dir.join(format!("authorities/{second}-key.pem"))).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let bundle = std::fs::read_to_string(data_dir.join("root-cert.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    for id in [&client, &server] {
        openssl_verifies(&mesh, &mesh.leaf_der(id)).unwrap();
    }
    curl_trusts_the_ca(&mesh);

    // Each step is in the audit log, with who asked.
    let audit = ok(mesh.ca.lock().unwrap().warden(&["audit", "list", "--json"]));
    let steps: Vec<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "ca.authority")
        .map(|v| v["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(steps, ["prepared", "activated", "tainted", "revoked"]);
    ok(mesh.ca.lock().unwrap().warden(&["audit", "verify"]));
    eprintln!(
        "root rotation: {total} requests and {} new mTLS connections, none failed",
        tcp.ok
    );
}

#[test]
fn a_ca_restarted_mid_rotation_keeps_its_authorities() {
    let dir = tempfile::tempdir().unwrap();
    let ca = warden_tests::CaProcess::start(dir.path(), &[]);
    let prepared: serde_json::Value =
        serde_json::from_str(ok(ca.warden(&["ca", "authority", "prepare", "--json"])).trim())
            .unwrap();
    let (code, _) = ca.terminate();
    assert_eq!(code, Some(0));
    let ca = warden_tests::CaProcess::start(dir.path(), &[]);
    let list = ok(ca.warden(&["ca", "authority", "list"]));
    assert!(
        list.contains(prepared["id"].as_str().unwrap()) && list.contains("prepared"),
        "{list}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("root-cert.pem"))
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    // A damaged manifest: the CA refuses to start, naming the file.
    drop(ca);
    std::fs::write(dir.path().join("authorities.json"), "{").unwrap();
    let out = Command::new(warden_tests::bin("warden-ca"))
        .args([
            "run",
            "--grpc-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authorities.json") && err.contains("not an authority manifest"),
        "{err}"
    );
}

#[test]
fn a_plugged_in_ca_refuses_authority_steps() {
    let dir = tempfile::tempdir().unwrap();
    // An intermediate signed by another CA, in Istio's cacerts layout.
    let root = warden_tests::CaProcess::start(&dir.path().join("root"), &[]);
    let cacerts = dir.path().join("cacerts");
    ok(root.warden(&[
        "ca",
        "intermediate",
        "--cluster",
        "east",
        "--out",
        cacerts.to_str().unwrap(),
    ]));
    let ca = warden_tests::CaProcess::start(
        &dir.path().join("plugged"),
        &["--plugin-certs", cacerts.to_str().unwrap()],
    );
    let err = fails(ca.warden(&["ca", "authority", "prepare"]));
    assert!(err.contains("plugged in"), "{err}");
    let err = fails(ca.warden(&["ca", "authority", "list"]));
    assert!(err.contains("plugged in"), "{err}");
}

#[test]
fn the_ca_prepares_and_activates_on_its_schedule() {
    // A 10-minute root (2 minutes backdated for clock skew) is at 1/6 of its life when
    // made; the schedule prepares a successor at 0.17 (~2.4 s later) and activates it
    // at 0.175 (~6 s), checked every 3 s (1/200 of the root's lifetime).
    let dir = tempfile::tempdir().unwrap();
    let ca = warden_tests::CaProcess::start(
        dir.path(),
        &[
            "--root-ttl",
            "10m",
            "--authority-prepare-at",
            "0.17",
            "--authority-activate-at",
            "0.175",
        ],
    );
    let first = ok(ca.warden(&["ca", "authority", "list", "--json"]));
    let first: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let first = first["id"].as_str().unwrap().to_string();
    let steps = try_eventually(
        "the CA to prepare and activate a successor by itself",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let audit = ok(ca.warden(&["audit", "list", "--json"]));
            let steps: Vec<serde_json::Value> = audit
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["event"] == "ca.authority")
                .collect();
            if steps.iter().any(|v| v["outcome"] == "activated") {
                Ok(steps)
            } else {
                Err(steps)
            }
        },
    )
    .unwrap();
    assert_eq!(steps[0]["outcome"], "prepared");
    assert_eq!(steps[0]["requester"], "auto");
    assert_eq!(steps[1]["outcome"], "activated");
    let list = ok(ca.warden(&["ca", "authority", "list", "--json"]));
    let list: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let old = list.iter().find(|a| a["id"] == first.as_str()).unwrap();
    assert_eq!(old["state"], "old", "{list:?}");
    // Bad schedules are refused by flag.
    let out = Command::new(warden_tests::bin("warden-ca"))
        .args([
            "run",
            "--authority-prepare-at",
            "0.9",
            "--authority-activate-at",
            "0.5",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--authority-prepare-at") && err.contains("prepare-at < activate-at"),
        "{err}"
    );
}

/// Envoy on both sides of a Warden proxy through a whole root rotation: an Envoy client
/// sidecar calling a Warden-proxied app with a new mTLS handshake per request (Envoy
/// verifies Warden's certificate with the SDS `ROOTCA` it holds at that moment, Warden
/// verifies Envoy's), and a Warden client calling an Envoy-fronted app that closes each
/// connection after one request (Envoy verifies Warden's client certificate each
/// time). No request fails.
#[test]
fn envoy_on_both_sides_takes_the_rotation_without_a_failed_request() {
    use warden_tests::envoy::SIDECAR_NODE_ID as NODE_ID;
    use warden_tests::envoy::{Bootstrap, Cluster, Envoy, Listener, UpstreamTls};
    use warden_tests::mesh::WorkloadSpec;

    let mesh = Mesh::builder()
        .svid_ttl("1h")
        .workload_spec(WorkloadSpec::new("envoy-client", "default", "envoy-client").without_proxy())
        .workload("server", "server")
        .workload("client", "client")
        .workload_spec(WorkloadSpec::new("envoy-server", "default", "envoy-server").without_proxy())
        .service(ServiceSpec::new("server", "default").http(8080))
        .service(ServiceSpec::new("envoy-server", "default").http(8080))
        .start();
    let (ec, server, es) = (
        mesh.workload("envoy-client").clone(),
        mesh.workload("server").clone(),
        mesh.workload("envoy-server").clone(),
    );
    let client_bootstrap = Bootstrap::new(NODE_ID, &mesh.sds_socket)
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
    let via_envoy: std::net::SocketAddr = format!("{}:15001", ec.ip).parse().unwrap();
    let to_server = mesh.url("server", "http", "/from-envoy");
    let to_envoy = mesh.url("envoy-server", "http", "/behind-envoy");
    // Both paths work before the rotation.
    let r = mesh
        .send_to(via_envoy, &Req::get(&to_server).origin_form())
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.text(),
        envoy_client.drain_log().join("\n")
    );
    let r = mesh.get("client", &to_envoy);
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.text(),
        envoy_server.drain_log().join("\n")
    );

    let first = mesh.authorities()[0]["id"].as_str().unwrap().to_string();
    let rootca_updates = |e: &Envoy| e.stat("sds.ROOTCA.update_success");
    let wait_envoys_updated = |before: (u64, u64), what: &str| {
        try_eventually(
            format_args!("both Envoys to take the bundle {what} over SDS"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let now = (rootca_updates(&envoy_client), rootca_updates(&envoy_server));
                if now.0 > before.0 && now.1 > before.1 {
                    Ok(())
                } else {
                    Err(now)
                }
            },
        )
        .unwrap();
    };
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (through_envoy, to_envoy_counts) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            http_loop(&stop, start, || {
                mesh.send_to(via_envoy, &Req::get(&to_server).origin_form())
            })
        });
        let b = s.spawn(|| http_loop(&stop, start, || mesh.send("client", &Req::get(&to_envoy))));
        let _stop = warden_tests::StopOnDrop(&stop);
        let before = (rootca_updates(&envoy_client), rootca_updates(&envoy_server));
        let second = mesh.authority_step(&["prepare"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_envoys_updated(before, "with the new root");
        for name in ["server", "client"] {
            mesh.wait_proxy_log(name, Duration::from_secs(10), |v| {
                v["message"] == "SDS: new trust bundle" && v["roots"] == 2
            })
            .unwrap_or_else(|l| panic!("proxy {name} never got the 2-root bundle: {l:#?}"));
        }
        mesh.authority_step(&["activate"]);
        mesh.authority_step(&["taint", &first]);
        try_eventually(
            "every SVID to be re-issued by the new root",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || {
                let now: Vec<String> = [&ec, &server, &es]
                    .iter()
                    .map(|w| warden_tests::authority_key_id(&mesh.leaf_der(&w.spiffe_id())))
                    .collect();
                if now.iter().all(|a| *a == second) {
                    Ok(())
                } else {
                    Err(now)
                }
            },
        )
        .unwrap();
        try_eventually(
            "the old authority to be in use nowhere",
            Duration::from_secs(15),
            Duration::from_millis(200),
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
        std::thread::sleep(Duration::from_millis(500));
        let before = (rootca_updates(&envoy_client), rootca_updates(&envoy_server));
        mesh.authority_step(&["revoke", &first]);
        wait_envoys_updated(before, "without the old root");
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (a.join().unwrap(), b.join().unwrap())
    });
    for (what, c) in [
        ("Envoy → Warden", &through_envoy),
        ("Warden → Envoy", &to_envoy_counts),
    ] {
        assert!(
            c.failures.is_empty(),
            "{what}: {} of {} requests failed during the rotation: {:?}\nenvoy client: {}\nenvoy server: {}",
            c.failures.len(),
            c.ok + c.failures.len(),
            &c.failures[..c.failures.len().min(10)],
            envoy_client.drain_log().join("\n"),
            envoy_server.drain_log().join("\n"),
        );
        assert!(c.ok >= 20, "{what}: only {} requests", c.ok);
    }
    // Every Envoy request was a new handshake verified against the bundle of its time.
    let handshakes = envoy_client.stat("cluster.to_server.ssl.handshake");
    assert!(
        handshakes >= through_envoy.ok as u64,
        "{handshakes} handshakes"
    );
    assert_eq!(
        envoy_client.stat("cluster.to_server.ssl.fail_verify_error"),
        0
    );
    let downstream = envoy_server.stat(&format!("listener.{}_15006.ssl.handshake", es.ip));
    eprintln!(
        "root rotation with Envoy: {} requests through an Envoy client ({handshakes} handshakes), {} to an Envoy server ({downstream} handshakes), none failed",
        through_envoy.ok, to_envoy_counts.ok
    );
}

/// A new plugged-in intermediate under the same root, copied over `--plugin-certs`
/// while two proxies carry steady traffic: the CA refuses the half-copied set (audited),
/// takes the whole one, signs with it (the SVIDs rotate every few seconds), and no
/// request fails.
#[test]
fn a_new_plugged_in_intermediate_is_taken_up_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    // The root CA (another cluster's, say) signs two intermediates for this one.
    let root = warden_tests::CaProcess::start(&dir.path().join("root"), &[]);
    // Both for cluster "east", as a replacement is: the same name but for the
    // serialNumber attribute the CA adds.
    let intermediate = |name: &str| {
        let out = dir.path().join(name);
        ok(root.warden(&[
            "ca",
            "intermediate",
            "--cluster",
            "east",
            "--out",
            out.to_str().unwrap(),
        ]));
        out
    };
    let first = intermediate("east-1");
    let second = intermediate("east-2");
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir_all(&cacerts).unwrap();
    let copy = |from: &std::path::Path, files: &[&str]| {
        for f in files {
            warden_tests::write_atomic(
                &cacerts.join(f),
                &std::fs::read_to_string(from.join(f)).unwrap(),
            );
        }
    };
    let all = [
        "ca-key.pem",
        "ca-cert.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ];
    copy(&first, &all);
    let ski = |path: &std::path::Path| {
        use rustls_pki_types::pem::PemObject;
        let der =
            rustls_pki_types::CertificateDer::from_pem_file(path.join("ca-cert.pem")).unwrap();
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        c.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(hex::encode(k.0))
                }
                _ => None,
            })
            .unwrap()
    };
    let (first_id, second_id) = (ski(&first), ski(&second));

    let mesh = Mesh::builder()
        .svid_ttl("4s")
        .ca_args(&["--plugin-certs", cacerts.to_str().unwrap()])
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080).tcp(9000))
        .config("policy.yaml", &allow_only("server", "client"))
        .start();
    let client = spiffe_id("default", "client");
    let url = mesh.url("server", "http", "/swapping");
    assert_eq!(
        warden_tests::authority_key_id(&mesh.leaf_der(&client)),
        first_id
    );
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (http, tcp) = std::thread::scope(|s| {
        let http = s.spawn(|| http_loop(&stop, start, || mesh.send("client", &Req::get(&url))));
        let tcp = s.spawn(|| tcp_loop(&mesh, &stop, start));
        let _stop = warden_tests::StopOnDrop(&stop);
        std::thread::sleep(Duration::from_secs(1));
        // Half a copy: the new key beside the old certificate. Refused, kept.
        copy(&second, &["ca-key.pem"]);
        try_eventually(
            "the CA to refuse the half-copied set",
            Duration::from_secs(10),
            Duration::from_millis(200),
            || {
                let audit = ok(mesh.ca.lock().unwrap().warden(&[
                    "audit",
                    "list",
                    "--json",
                    "--outcome",
                    "refused",
                ]));
                if audit.contains("ca.authority") {
                    Ok(())
                } else {
                    Err(audit)
                }
            },
        )
        .unwrap();
        // The rest: taken up, and every identity's next SVID is the new intermediate's.
        copy(&second, &["ca-cert.pem", "cert-chain.pem", "root-cert.pem"]);
        try_eventually(
            "the SVIDs to be signed by the new intermediate",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let now = [
                    warden_tests::authority_key_id(&mesh.leaf_der(&client)),
                    warden_tests::authority_key_id(&mesh.leaf_der(&spiffe_id("default", "server"))),
                ];
                if now.iter().all(|a| *a == second_id) {
                    Ok(())
                } else {
                    Err(now)
                }
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        (http.join().unwrap(), tcp.join().unwrap())
    });
    let total = http.ok + http.failures.len();
    assert!(
        http.failures.is_empty() && tcp.failures.is_empty(),
        "{} of {total} requests and {} of {} connections failed: {:?} {:?}",
        http.failures.len(),
        tcp.failures.len(),
        tcp.ok + tcp.failures.len(),
        &http.failures[..http.failures.len().min(5)],
        &tcp.failures[..tcp.failures.len().min(5)]
    );
    assert!(
        total >= 100 && tcp.ok >= 20,
        "only {total} requests, {} connections",
        tcp.ok
    );
    // The new leaves verify (openssl) with root-cert.pem and the chain they are served
    // with; the CA's serving certificate is the new intermediate's (curl).
    openssl_verifies_chain(&mesh, &client);
    curl_trusts_the_ca(&mesh);
    let loaded =
        ok(mesh
            .ca
            .lock()
            .unwrap()
            .warden(&["audit", "list", "--json", "--outcome", "loaded"]));
    assert!(loaded.contains(&second_id), "{loaded}");
    eprintln!(
        "plugged-in intermediate swap: {total} requests and {} new mTLS connections, none failed",
        tcp.ok
    );
}

/// openssl verifies the agent's current chain for `id` (leaf and intermediate) with the
/// CA's `root-cert.pem`.
fn openssl_verifies_chain(mesh: &Mesh, id: &str) {
    let path = id.strip_prefix("spiffe://cluster.local/").unwrap();
    let chain = mesh
        .dir
        .path()
        .join("svids")
        .join(path)
        .join("cert-chain.pem");
    let roots = mesh.ca.lock().unwrap().data_dir.join("root-cert.pem");
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&roots)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&chain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
