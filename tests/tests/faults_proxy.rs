//! A proxy fed a flood of config changes and broken files (issue 17): it never enforces
//! a half-applied set and never allows what the last good set denies.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warden_tests::eventually;
use warden_tests::mesh::{Mesh, Req, ServiceSpec, authorization_policy};

/// The DENY every good set has: `/secret` from anyone.
fn deny_secret(generation: usize) -> String {
    let rules = r#"[{to: [{operation: {paths: ["/secret", "/secret/*"]}}]}]"#;
    // A changing annotation makes every good write a real change to apply.
    authorization_policy("server", "deny-secret", "DENY", rules).replace(
        "  namespace: default\n",
        &format!("  namespace: default\n  annotations: {{flood: \"{generation}\"}}\n"),
    )
}

/// The ALLOW of a good set: `/open` (and, in odd generations, `/also`) from the client.
fn allow_open(generation: usize) -> String {
    let paths = if generation.is_multiple_of(2) {
        r#"["/open", "/secret"]"#
    } else {
        r#"["/open", "/also", "/secret"]"#
    };
    authorization_policy(
        "server",
        "allow-open",
        "ALLOW",
        &format!(
            r#"[{{from: [{{source: {{principals: ["cluster.local/ns/default/sa/client"]}}}}], to: [{{operation: {{paths: {paths}}}}}]}}]"#
        ),
    )
}

/// Broken replacements for `deny.yaml`. Each one, applied in part, would drop the DENY
/// (and some would allow everything): the whole change must be refused.
fn broken(i: usize) -> Vec<u8> {
    let allow_all = authorization_policy("server", "allow-all", "ALLOW", "[{}]");
    match i % 6 {
        // A good ALLOW-everything with a document the compiler refuses.
        0 => format!(
            "{allow_all}---\n{}",
            authorization_policy("server", "bad", "PERMIT_EVERYONE", "[{}]")
        ),
        // The DENY's paths of the wrong type.
        1 => authorization_policy(
            "server",
            "deny-secret",
            "DENY",
            "[{to: [{operation: {paths: 5}}]}]",
        ),
        // Not YAML.
        2 => format!("{allow_all}---\nspec: [unclosed\n"),
        // Not UTF-8.
        3 => return [allow_all.as_bytes(), b"---\n\xff\xfe k: \x00\n"].concat(),
        // An unknown field in a known kind (Istio's strict decoding refuses it).
        4 => deny_secret(0).replace("  action: DENY\n", "  action: DENY\n  actoin: ALLOW\n"),
        // The DENY's selector made empty-keyed, and the ALLOW-everything beside it.
        _ => format!(
            "{allow_all}---\n{}",
            deny_secret(0).replace("{app: server}", "{\"\": [x]}")
        ),
    }
    .into_bytes()
}

/// Writes `bytes` to `file` in the mesh's config directory atomically (a rename), as
/// Kubernetes swaps a ConfigMap's files.
fn write_bytes(mesh: &Mesh, file: &str, bytes: &[u8]) {
    let tmp = mesh.config_dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, mesh.config_dir.join(file)).unwrap();
}

#[test]
fn a_flood_of_config_changes_never_allows_what_the_last_good_set_denies() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .config("deny.yaml", &deny_secret(0))
        .config("allow.yaml", &allow_open(0))
        .start();
    let secret = mesh.url("server", "http", "/secret");
    let open = mesh.url("server", "http", "/open");
    assert_eq!(mesh.get("client", &secret).status, 403);
    assert_eq!(mesh.get("client", &open).status, 200);
    let rejected_before = mesh.metric("server", "warden_config_rejected_total", &[]);
    let applied_before = mesh.metric("server", "warden_config_applied_total", &[]);

    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (secret_seen, open_seen, writes) = std::thread::scope(|s| {
        let probe = |url: &str| {
            let mut seen: Vec<(Duration, u16)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = start.elapsed();
                let code = mesh
                    .send("client", &Req::get(url))
                    .map(|r| r.status)
                    .unwrap_or(0);
                seen.push((t, code));
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        };
        let (secret_url, open_url) = (secret.as_str(), open.as_str());
        let secret_loop = s.spawn(move || probe(secret_url));
        let open_loop = s.spawn(move || probe(open_url));
        let _stop = warden_tests::StopOnDrop(&stop);
        // 10 s of writes every 10 ms: good sets (both files) and broken files mixed.
        let mut writes = 0;
        let mut i = 0usize;
        while start.elapsed() < Duration::from_secs(10) {
            i += 1;
            if i.is_multiple_of(3) {
                write_bytes(&mesh, "deny.yaml", &broken(i / 3));
            } else {
                mesh.write_config("deny.yaml", &deny_secret(i));
                mesh.write_config("allow.yaml", &allow_open(i));
            }
            writes += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        // End on a good set.
        mesh.write_config("deny.yaml", &deny_secret(0));
        mesh.write_config("allow.yaml", &allow_open(0));
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (
            secret_loop.join().unwrap(),
            open_loop.join().unwrap(),
            writes,
        )
    });

    let leaked: Vec<&(Duration, u16)> = secret_seen.iter().filter(|(_, c)| *c != 403).collect();
    let failed: Vec<&(Duration, u16)> = open_seen.iter().filter(|(_, c)| *c != 200).collect();
    let rejected = mesh.metric("server", "warden_config_rejected_total", &[]) - rejected_before;
    let applied = mesh.metric("server", "warden_config_applied_total", &[]) - applied_before;
    eprintln!(
        "config flood: {writes} writes in 10 s, {applied} sets applied, {rejected} rejected; /secret asked {} times, never allowed; /open asked {} times, {} failed",
        secret_seen.len(),
        open_seen.len(),
        failed.len()
    );
    assert!(
        leaked.is_empty(),
        "/secret, denied by every good set, answered {leaked:?}"
    );
    assert!(
        failed.is_empty(),
        "/open, allowed by every good set, answered {failed:?}"
    );
    assert!(rejected > 0.0, "no broken file was rejected");
    assert!(applied > 0.0, "no good set was applied");
    assert!(secret_seen.len() > 100 && open_seen.len() > 100);
    // Still alive and on the last good set.
    eventually("the last good set", Duration::from_secs(5), || {
        mesh.get("client", &secret).status == 403 && mesh.get("client", &open).status == 200
    });
}

/// Load over the proxy's bound: 200 callers at once, each with its own connection per
/// request, against a client proxy allowed 32 downstream connections. Every request is
/// answered 200 or refused by the connection being closed at accept (the caller may
/// retry; nothing half-done); none gets another status or hangs; the overflow is
/// counted; both proxies' peak memory stays bounded; afterwards the proxy answers as
/// before.
#[test]
fn over_its_connection_bound_the_proxy_refuses_cleanly_and_holds_its_memory() {
    let mesh = Mesh::builder()
        .workload("client", "client")
        .workload("server", "server")
        .service(ServiceSpec::new("server", "default").http(8080))
        .proxy_args(&["--max-connections", "32"])
        .start();
    let url = mesh.url("server", "http", "/load");
    assert_eq!(mesh.get("client", &url).status, 200);
    let pids: Vec<(String, u32)> = ["client", "server"]
        .iter()
        .map(|n| (n.to_string(), mesh.with_proxy(n, |p| p.child.id())))
        .collect();
    let before: Vec<(u64, u64)> = pids
        .iter()
        .map(|(_, p)| warden_tests::memory_kib(*p).unwrap())
        .collect();

    let start = Instant::now();
    let results: Vec<(usize, usize, Vec<String>)> = std::thread::scope(|s| {
        let callers: Vec<_> = (0..200)
            .map(|_| {
                s.spawn(|| {
                    let (mut ok, mut refused, mut other) = (0, 0, Vec::new());
                    while start.elapsed() < Duration::from_secs(8) {
                        match mesh.send("client", &Req::get(&url)) {
                            Ok(r) if r.status == 200 => ok += 1,
                            Ok(r) => other.push(format!("status {}", r.status)),
                            Err(e) => {
                                let e = format!("{e:#}");
                                // Closed at accept: reset, or closed before a response.
                                if e.contains("no response within") {
                                    other.push(e);
                                } else {
                                    refused += 1;
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                            }
                        }
                    }
                    (ok, refused, other)
                })
            })
            .collect();
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let ok: usize = results.iter().map(|r| r.0).sum();
    let refused: usize = results.iter().map(|r| r.1).sum();
    let other: Vec<&String> = results.iter().flat_map(|r| &r.2).collect();
    let after: Vec<(u64, u64)> = pids
        .iter()
        .map(|(_, p)| warden_tests::memory_kib(*p).unwrap())
        .collect();
    let overflow = mesh.metric(
        "client",
        "warden_downstream_connections_overflow_total",
        &[],
    );
    eprintln!(
        "over the bound: {ok} answered 200, {refused} refused at accept ({overflow} overflows counted), {} other; memory KiB (RSS before -> after, peak): {}",
        other.len(),
        pids.iter()
            .zip(before.iter().zip(&after))
            .map(|((n, _), (b, a))| format!("{n} {} -> {}, peak {}", b.0, a.0, a.1))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(other.is_empty(), "neither 200 nor refused: {other:?}");
    assert!(ok > 500, "only {ok} answered");
    assert!(refused > 0 && overflow > 0.0, "the bound never refused");
    for ((name, _), (_, peak)) in pids.iter().zip(&after) {
        assert!(
            *peak < 128 * 1024,
            "{name}'s proxy peaked at {peak} KiB under 200 callers"
        );
    }
    eventually(
        "the proxy answers as before",
        Duration::from_secs(5),
        || mesh.get("client", &url).status == 200,
    );
}
