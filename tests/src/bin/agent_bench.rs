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
use tonic::transport::{Channel, Endpoint};
use warden_tests::{AgentProcess, CaProcess};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

async fn uds_channel(path: PathBuf) -> Channel {
    Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .unwrap()
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

fn wait_metric(agent: &AgentProcess, name: &str, at_least: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while agent.metric(name) < at_least {
        assert!(Instant::now() < deadline, "{name} did not reach {at_least}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn scale(dir: &Path, n: usize, ttl_secs: u64) {
    println!("## Scale: {n} identities, {n} SDS streams, node mode, --svid-ttl {ttl_secs}s");
    let ca = CaProcess::start(&dir.join("ca"), &[]);
    let token = ca.join_token("bench");
    create_entries(&ca, "bench", n).await;
    let start = Instant::now();
    let ttl = format!("{ttl_secs}s");
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
    wait_metric(
        &agent,
        "warden_agent_identities",
        n as f64,
        Duration::from_secs(120),
    );
    let warm = start.elapsed();
    let (cpu0, rss0, _) = usage(pid);
    println!(
        "- {n} SVIDs fetched in {:.2} s after start; agent CPU so far {cpu0:.2} s; RSS {rss0:.1} MiB",
        warm.as_secs_f64()
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let socket_dir = agent.socket_dir();
    let open_start = Instant::now();
    for i in 0..n {
        tokio::spawn(sds_stream(
            socket_dir.join(format!("w{i}.sock")),
            tx.clone(),
        ));
    }
    let mut got = 0;
    while got < n {
        rx.recv().await.unwrap();
        got += 1;
    }
    let (cpu1, rss1, _) = usage(pid);
    println!(
        "- {n} SDS streams open and served in {:.2} s; agent RSS {rss1:.1} MiB; streams gauge {}",
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
        "- agent RSS {rss2:.1} MiB (peak {hwm:.1} MiB) with {n} identities and {n} streams; {:.1} KiB per identity+stream over the idle agent\n",
        (rss2 - rss0 + (rss0 - 0.0).min(0.0)) * 1024.0 / n as f64
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let ttl: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    scale(dir.path(), n, ttl).await;
}
