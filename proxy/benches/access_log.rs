//! The access log's cost per line where the request ends: the record's details taken
//! off the request head, then the line rendered (Istio's JSON and TEXT formats), as the
//! proxy does for every request with the log on. The writer thread is not included.
//!
//! `cargo bench -p warden-proxy --bench access_log` prints nanoseconds per line, the
//! best of five rounds of 1,000,000 (the VM this was written on moves ±15% between
//! runs: compare two builds in one sitting, or count perf samples).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // a bench fails by panicking

use std::time::{Duration, Instant};

use warden_proxy::metrics::{ConnLabels, Peer, Reporter, ServiceLabels};
use warden_proxy::telemetry::access_log::{Encoding, Entry, Format};
use warden_proxy::telemetry::{AuthzNote, Direction, Record};

const LINES: u32 = 1_000_000;

fn main() {
    // What the benchmark's server proxy sees: wrk's GET through the client proxy.
    let req = http::Request::builder()
        .method("GET")
        .uri("/index.html")
        .header("host", "app:8080")
        .header("user-agent", "wrk")
        .header("x-request-id", "0d1f6a3e-4c2b-4d8e-9f1a-2b3c4d5e6f70")
        .body(())
        .unwrap();
    let labels = ConnLabels::new(
        Reporter::Destination,
        Peer::principal_only(Some("spiffe://cluster.local/ns/default/sa/client")),
        Peer::unknown(),
        ServiceLabels::new("app.default.svc.cluster.local", "default"),
        "mutual_tls",
    );
    let workload: std::sync::Arc<str> = "default/app".into();
    let (remote, local) = (
        "127.0.0.2:40000".parse().unwrap(),
        "127.0.0.3:15006".parse().unwrap(),
    );
    for encoding in [Encoding::Json, Encoding::Text] {
        let format = Format::new(encoding, None).unwrap();
        let mut out = String::with_capacity(1 << 20);
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..LINES {
                let mut r = Record::new(Direction::Inbound, true);
                r.request_head(&req, "app:8080", &[]);
                if let Some(d) = r.detail() {
                    d.authz = Some(AuthzNote {
                        decision: "allow",
                        policy: Some("default/allow-client".to_string()),
                        rule: Some(0),
                    });
                    d.authz_workload = Some(workload.clone());
                    d.downstream_remote = Some(remote);
                    d.downstream_local = Some(local);
                    d.destination_port = Some(8080);
                }
                let e = Entry {
                    record: &r,
                    labels: &labels,
                    code: 200,
                    flags: "-",
                    received: 0,
                    sent: 612,
                    duration: Duration::from_millis(1),
                };
                e.render_into(&format, &mut out);
                out.push('\n');
                // The writer takes a block at a time; keep the buffer in the cache.
                if out.len() > (1 << 20) - 4096 {
                    out.clear();
                }
            }
            best = best.min(t.elapsed());
        }
        println!(
            "access log, {encoding:?}: {:.0} ns per line (best of 5 x {LINES})",
            best.as_nanos() as f64 / f64::from(LINES)
        );
    }
}
