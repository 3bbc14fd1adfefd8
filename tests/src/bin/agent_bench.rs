//! `warden-agent-bench`: the node agent at scale and Envoy's view of rotation.
//!
//! 1. **Scale** (node mode): N identities (`socket:wI` entries, one socket each) and N
//!    open SDS streams, one per socket, each watching `default` and `ROOTCA` and ACKing
//!    every response like Envoy. Reports the agent's RSS and CPU: idle with N SVIDs,
//!    with N streams, and across one full rotation wave (N new SVIDs pushed to N streams).
//! 2. **Rotation to Envoy** (needs `.venv/bin/envoy`): one Envoy on the agent's SDS,
//!    SVIDs of a few seconds; for each rotation, the time from the agent receiving the
//!    new SVID from the CA (its JSON log) to Envoy's admin `/certs` showing that serial.
//!
//! Run through `bench/agent.sh` (release build).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // a benchmark: panics are failures

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use warden_tests::{AgentProcess, CaProcess};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

async fn uds_channel(path: PathBuf) -> Channel {
    warden_common::uds::channel(&path).await.unwrap()
}

/// (utime + stime) in seconds, VmRSS and VmHWM in MiB of `pid`.
fn usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0]; utime is field 14 → [11], stime [12].
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (ticks / 100.0, kb("VmRSS:"), kb("VmHWM:"))
}

/// One SDS stream like Envoy's: request, then ACK every response. Counts responses.
async fn sds_stream(path: PathBuf, responses: mpsc::UnboundedSender<()>) {
    let mut client = SecretDiscoveryServiceClient::new(uds_channel(path).await);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        resource_names: vec!["default".into(), "ROOTCA".into()],
        type_url: TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut inbound = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(resp)) = inbound.message().await {
        let _ = responses.send(());
        let ack = DiscoveryRequest {
            version_info: resp.version_info,
            resource_names: vec!["default".into(), "ROOTCA".into()],
            type_url: TYPE_URL.into(),
            response_nonce: resp.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
}

async fn create_entries(ca: &CaProcess, node: &str, n: usize) {
    use warden_proto::admin::admin_client::AdminClient;
    use warden_proto::admin::{CreateEntryRequest, Selector};
    let mut admin = AdminClient::new(uds_channel(ca.admin_socket()).await);
    for i in 0..n {
        admin
            .create_entry(CreateEntryRequest {
                parent_id: format!("spiffe://cluster.local/warden/node/{node}"),
                spiffe_id: format!("spiffe://cluster.local/ns/bench/sa/w{i}"),
                selectors: vec![Selector {
                    r#type: "socket".into(),
                    value: format!("w{i}"),
                }],
            })
            .await
            .unwrap();
    }
}

async fn scale(dir: &Path, n: usize, ttl_secs: u64, streams: usize) {
    println!("## Scale: {n} identities, {streams} SDS streams, node mode, --svid-ttl {ttl_secs}s");
    let ca = CaProcess::start(&dir.join("ca"), &[]);
    create_entries(&ca, "bench", n).await;
    let ttl = format!("{ttl_secs}s");
    let token = ca.join_token("bench");
    let start = Instant::now();
    let agent = AgentProcess::start(
        &ca,
        &dir.join("agent"),
        &[
            "--node-name",
            "bench",
            "--join-token",
            &token,
            "--svid-ttl",
            &ttl,
            "--sync-interval",
            "5s",
        ],
    );
    let pid = agent.child.id();
    agent.wait_metric("warden_agent_identities", Duration::from_secs(120), |v| {
        v >= n as f64
    });
    let warm = start.elapsed();
    let (cpu0, rss0, _) = usage(pid);
    println!(
        "- {n} SVIDs fetched in {:.2} s after start; agent CPU so far {cpu0:.2} s; RSS {rss0:.1} MiB",
        warm.as_secs_f64()
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let socket_dir = agent.socket_dir();
    let open_start = Instant::now();
    for i in 0..streams {
        tokio::spawn(sds_stream(
            socket_dir.join(format!("w{i}.sock")),
            tx.clone(),
        ));
    }
    let mut got = 0;
    while got < streams {
        rx.recv().await.unwrap();
        got += 1;
    }
    let (cpu1, rss1, _) = usage(pid);
    println!(
        "- {streams} SDS streams open and served in {:.2} s; agent RSS {rss1:.1} MiB; streams gauge {}",
        open_start.elapsed().as_secs_f64(),
        agent.metric("warden_agent_sds_streams")
    );
    let refreshes0 = agent.metric("warden_agent_svid_refreshes_total");
    let pushes0 = agent.metric("warden_agent_sds_pushes_total");
    // One full rotation wave: every SVID refreshes once in (0.49..0.51) * ttl.
    let window = Duration::from_secs(ttl_secs * 6 / 10);
    let wave_start = Instant::now();
    let mut pushed = 0;
    while wave_start.elapsed() < window {
        if tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_ok()
        {
            pushed += 1;
        }
    }
    let (cpu2, rss2, hwm) = usage(pid);
    let refreshes = agent.metric("warden_agent_svid_refreshes_total") - refreshes0;
    let pushes = agent.metric("warden_agent_sds_pushes_total") - pushes0;
    let cpu = cpu2 - cpu1;
    println!(
        "- rotation wave over {:.0} s: {refreshes} SVIDs refreshed, {pushes} SDS pushes ({pushed} received by the streams); agent CPU {cpu:.2} s = {:.0} µs per refresh+push, {:.1}% of one core",
        window.as_secs_f64(),
        cpu * 1e6 / refreshes.max(1.0),
        cpu * 100.0 / window.as_secs_f64()
    );
    println!(
        "- agent RSS {rss2:.1} MiB (peak {hwm:.1} MiB) with {n} identities and {streams} streams; {:.1} KiB per stream over the agent with {n} SVIDs and no streams\n",
        (rss2 - rss0) * 1024.0 / streams.max(1) as f64
    );
}

fn log_time(v: &serde_json::Value) -> std::time::SystemTime {
    let t = time::OffsetDateTime::parse(
        v["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    std::time::SystemTime::from(t)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Time from the agent receiving a rotated SVID to Envoy's `/certs` showing it in every
/// TLS context, over `rotations` rotations of `ttl_secs`-second SVIDs.
fn rotation_to_envoy(dir: &Path, rotations: usize, ttl_secs: u64) {
    if rotations == 0 {
        return;
    }
    use warden_tests::envoy::{EnvoyProcess, envoy_binary};
    println!(
        "## Rotation to Envoy: {rotations} rotations, --svid-ttl {ttl_secs}s, /certs polled every 2 ms"
    );
    let ca = CaProcess::start(&dir.join("ca2"), &[]);
    let id = "spiffe://cluster.local/ns/default/sa/envoy";
    let selector = format!("unix:path:{}", envoy_binary().display());
    ca.entry("edge", id, &[&selector]);
    let ttl = format!("{ttl_secs}s");
    let agent = AgentProcess::start_node(&ca, &dir.join("agent2"), "edge", &["--svid-ttl", &ttl]);
    let envoy = EnvoyProcess::start(&dir.join("envoy"), &agent.socket, id);
    let mut received = std::collections::HashMap::new();
    let mut serving = envoy.leaf_serials();
    let mut delays = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(ttl_secs * (rotations as u64 + 4));
    while delays.len() < rotations && Instant::now() < deadline {
        for line in agent.log.try_iter() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "SVID received"
            {
                received.insert(v["serial"].as_str().unwrap().to_string(), log_time(&v));
            }
        }
        let now_serving = envoy.leaf_serials();
        let seen = std::time::SystemTime::now();
        if now_serving.len() == 1 && now_serving != serving {
            // Envoy prints serials in lowercase hex like the agent.
            // The first certificate Envoy got predates the loop and is not timed.
            if let Some(t) = received.get(&now_serving[0]) {
                let d = seen.duration_since(*t).unwrap_or_default();
                delays.push(d.as_secs_f64() * 1e3);
            }
            serving = now_serving;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let acks = agent.metric("warden_agent_sds_push_ack_seconds_count");
    let ack_sum = agent.metric("warden_agent_sds_push_ack_seconds_sum");
    let n = delays.len();
    let (min, max) = (
        delays.iter().copied().fold(f64::MAX, f64::min),
        delays.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "- CA answer received by the agent -> Envoy serving the new certificate: median {:.2} ms over {n} rotations (min {min:.2}, max {max:.2}; includes up to 2 ms of polling)",
        median(&mut delays)
    );
    println!(
        "- agent's own measure, SVID received -> Envoy's SDS ACK: mean {:.2} ms over {acks} pushes; SDS NACKs {}\n",
        ack_sum * 1e3 / acks.max(1.0),
        agent.metric("warden_agent_sds_nacks_total"),
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let ttl: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60);
    let rotations: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let streams: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(n).min(n);
    scale(dir.path(), n, ttl, streams).await;
    let d = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || rotation_to_envoy(&d, rotations, 2))
        .await
        .unwrap();
}
