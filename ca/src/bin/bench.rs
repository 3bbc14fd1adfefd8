//! `warden-ca-bench`: CreateCertificate throughput and cost, next to ring's ceiling.
//!
//! Starts the real `warden-ca` binary (durable audit on: SQLite with synchronous=FULL, or
//! PostgreSQL), drives CreateCertificate over gRPC/TLS from many concurrent clients with
//! pre-made P-256 CSRs and service-account tokens, and prints certificates per second,
//! p50/p99 latency and the server's CPU time per issued certificate (from /proc), beside
//! the single-core ECDSA P-256 sign and verify rates of ring measured in the same run.
//! Loopback only; bounded by --duration.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use warden_proto::istio_ca::IstioCertificateRequest;
use warden_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

#[derive(Debug, Parser)]
#[command(
    name = "warden-ca-bench",
    about = "Benchmark warden-ca's CreateCertificate"
)]
struct Args {
    /// The warden-ca binary [default: next to this one].
    #[arg(long)]
    ca_binary: Option<PathBuf>,
    /// Database URL for the CA [default: SQLite in a temp dir].
    #[arg(long)]
    database_url: Option<String>,
    /// Concurrent clients, each on its own TLS connection.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = warden_proto::duration::parse_flag)]
    duration: Duration,
    /// Pre-made CSRs, used round-robin.
    #[arg(long, default_value_t = 256)]
    csrs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Burst mode: send this many CSRs at once instead of measuring for --duration,
    /// from --nodes callers, with the CA's limits on; clients honour the CA's retry
    /// pushback as the node agent does. Reports per-node completion and the CA's
    /// memory.
    #[arg(long, default_value_t = 0)]
    burst: usize,
    /// Burst mode: simulated nodes (distinct callers), each on --node-conns connections.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Burst mode: connections per node.
    #[arg(long, default_value_t = 4)]
    node_conns: usize,
    /// Extra warden-ca flags (repeatable), e.g. --ca-arg=--csr-node-rate=20.
    #[arg(long = "ca-arg", allow_hyphen_values = true)]
    ca_args: Vec<String>,
}

/// Operations per second of `f` on one core for about `budget`.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// ring's single-core ECDSA P-256 sign and verify rates.
fn ring_ceiling() -> anyhow::Result<(f64, f64)> {
    use ring::signature::{self, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("keygen"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("key"))?;
    let msg = [7u8; 300];
    let sign = rate(Duration::from_secs(1), || {
        let _ = key.sign(&rng, &msg);
    });
    let sig = key.sign(&rng, &msg).map_err(|_| anyhow::anyhow!("sign"))?;
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        key.public_key().as_ref().to_vec(),
    );
    let verify = rate(Duration::from_secs(1), || {
        let _ = public.verify(&msg, sig.as_ref());
    });
    Ok((sign, verify))
}

/// User+system CPU seconds of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, a)| a)
        .context("stat format")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// CPU seconds of every process named `postgres` on this machine (0 when none).
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|pid| cpu_seconds(pid).ok())
        .sum()
}

/// (commits, committed writes) from the CA's /metrics.
async fn commit_counters(addr: &str) -> anyhow::Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("warden_ca_store_commit_count"),
        value("warden_ca_store_committed_ops_count"),
    ))
}

fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let (sign_rate, verify_rate) = tokio::task::spawn_blocking(ring_ceiling).await??;
    let sign_verify_us = 1e6 / sign_rate + 1e6 / verify_rate;

    let dir = tempfile::tempdir()?;
    // Token keys and JWKS.
    let jwt_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let raw = jwt_key.public_key_raw();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])}]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string())?;
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(jwt_key.serialize_pem().as_bytes())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let tokens: Vec<String> = (0..args.clients)
        .map(|i| {
            let claims = serde_json::json!({
                "iss": ISSUER, "aud": ["istio-ca"], "sub": format!("system:serviceaccount:bench:sa{i}"),
                "exp": now + 3600, "iat": now,
                "kubernetes.io": {"namespace": "bench", "serviceaccount": {"name": format!("sa{i}")}},
            });
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            h.kid = Some("k1".into());
            jsonwebtoken::encode(&h, &claims, &encoding)
        })
        .collect::<Result<_, _>>()?;
    let csrs: Vec<String> = (0..args.csrs.max(1))
        .map(|_| -> anyhow::Result<String> {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut p = CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            Ok(p.serialize_request(&key)?.pem()?)
        })
        .collect::<Result<_, _>>()?;

    // Start the CA.
    let ca_binary = match args.ca_binary.clone() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("warden-ca"),
    };
    let mut cmd = tokio::process::Command::new(&ca_binary);
    cmd.args([
        "run",
        "--grpc-addr",
        "127.0.0.1:0",
        "--monitoring-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .arg("--data-dir")
    .arg(dir.path().join("data"))
    .arg("--jwks")
    .arg(dir.path().join("jwks.json"))
    .args(["--token-issuer", ISSUER])
    .env_remove("RUST_LOG") // the CA's default: info, one log line per certificate
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .kill_on_drop(true);
    if let Some(url) = &args.database_url {
        cmd.args(["--database-url", url]);
    }
    if args.burst == 0 {
        // Throughput: every client is one identity at hundreds of requests a second,
        // far above the per-identity default; measure the CA, not its limits.
        cmd.args(["--csr-node-rate", "0", "--csr-identity-rate", "0"]);
    }
    cmd.args(&args.ca_args);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", ca_binary.display()))?;
    let pid = child.id().context("no pid")?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let (grpc_addr, monitoring_addr) = loop {
        let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??
        else {
            bail!("warden-ca exited before serving");
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "warden-ca serving"
        {
            break (
                v["grpc_addr"].as_str().context("grpc_addr")?.to_string(),
                v["monitoring_addr"]
                    .as_str()
                    .context("monitoring_addr")?
                    .to_string(),
            );
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let roots = std::fs::read_to_string(dir.path().join("data/root-cert.pem"))?;
    let port = grpc_addr.rsplit(':').next().context("port")?;
    if args.burst > 0 {
        let token = |i: usize| -> anyhow::Result<String> {
            let claims = serde_json::json!({
                "iss": ISSUER, "aud": ["istio-ca"], "sub": format!("system:serviceaccount:bench:node{i}"),
                "exp": now + 3600, "iat": now,
                "kubernetes.io": {"namespace": "bench", "serviceaccount": {"name": format!("node{i}")}},
            });
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            h.kid = Some("k1".into());
            Ok(jsonwebtoken::encode(&h, &claims, &encoding)?)
        };
        let result = burst(&args, port, &roots, &csrs, pid, token).await;
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
        return result;
    }

    // Connect the clients; one request each to warm up (token cache, connections).
    let mut clients = Vec::new();
    for token in &tokens {
        let channel = Endpoint::from_shared(format!("https://localhost:{port}"))?
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&roots))
                    .domain_name("localhost"),
            )?
            .connect()
            .await?;
        let mut client = IstioCertificateServiceClient::new(channel);
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csrs[0].clone(),
            validity_duration: 3600,
            metadata: None,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        client
            .create_certificate(req)
            .await
            .context("warm-up request")?;
        clients.push((client, token.clone()));
    }

    let commits_before = commit_counters(&monitoring_addr).await?;
    let db_cpu_before = postgres_cpu_seconds();
    let cpu_before = cpu_seconds(pid)?;
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut tasks = Vec::new();
    for (i, (mut client, token)) in clients.into_iter().enumerate() {
        let csrs = csrs.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut n = i;
            let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""));
            while Instant::now() < deadline {
                let mut req = tonic::Request::new(IstioCertificateRequest {
                    csr: csrs[n % csrs.len()].clone(),
                    validity_duration: 3600,
                    metadata: None,
                });
                req.metadata_mut().insert("authorization", header.clone());
                n += 1;
                let t = Instant::now();
                match client.create_certificate(req).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let db_cpu = postgres_cpu_seconds() - db_cpu_before;
    let commits_after = commit_counters(&monitoring_addr).await?;
    let commits = commits_after.0 - commits_before.0;
    let mean_batch = (commits_after.1 - commits_before.1) / commits.max(1.0);
    latencies.sort();
    let issued = latencies.len() as f64;
    let certs_per_sec = issued / elapsed;
    let cpu_us = cpu * 1e6 / issued.max(1.0);
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    let backend = if args
        .database_url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres"))
    {
        "postgres"
    } else {
        "sqlite"
    };
    let db_cpu_us = if backend == "postgres" {
        db_cpu * 1e6 / issued.max(1.0)
    } else {
        0.0
    };

    // Stop the CA cleanly.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "backend": backend, "clients": args.clients, "seconds": elapsed, "issued": issued, "errors": errors,
                "certs_per_sec": certs_per_sec, "p50_ms": p50.as_secs_f64() * 1e3, "p99_ms": p99.as_secs_f64() * 1e3,
                "server_cpu_us_per_cert": cpu_us, "ring_p256_sign_per_sec": sign_rate, "ring_p256_verify_per_sec": verify_rate,
                "ring_sign_plus_verify_us": sign_verify_us, "commits": commits, "mean_batch": mean_batch, "postgres_cpu_us_per_cert": db_cpu_us,
            })
        );
    } else {
        println!("warden-ca CreateCertificate benchmark ({backend}, durable audit on)");
        println!("  clients              {}", args.clients);
        println!("  issued               {issued} in {elapsed:.1}s ({errors} errors)");
        println!("  throughput           {certs_per_sec:.0} certs/s");
        println!(
            "  latency              p50 {:.2} ms, p99 {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        println!(
            "  group commit         {commits:.0} transactions, {mean_batch:.1} writes each on average"
        );
        println!(
            "  server CPU           {cpu_us:.1} µs per issued certificate ({:.0} certs/s per core)",
            1e6 / cpu_us.max(1e-9)
        );
        if backend == "postgres" {
            println!(
                "  PostgreSQL CPU       {db_cpu_us:.1} µs per issued certificate (all postgres processes on this machine)"
            );
        }
        println!("ring ECDSA P-256 on one core, same run");
        println!(
            "  sign                 {sign_rate:.0}/s ({:.1} µs)",
            1e6 / sign_rate
        );
        println!(
            "  verify               {verify_rate:.0}/s ({:.1} µs)",
            1e6 / verify_rate
        );
        println!(
            "  sign+verify ceiling  {:.0}/s ({sign_verify_us:.1} µs)",
            1e6 / sign_verify_us
        );
        println!("ratios");
        println!(
            "  server CPU per cert / ring sign+verify   {:.2}x",
            cpu_us / sign_verify_us
        );
        println!(
            "  certs/s per server core / ceiling        {:.2}",
            (1e6 / cpu_us.max(1e-9)) / (1e6 / sign_verify_us)
        );
    }
    Ok(())
}

/// Resident memory of a process in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A number in [0, 1) from a per-task xorshift state.
fn unit(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// Burst mode: `--burst` CSRs at once from `--nodes` callers.
async fn burst(
    args: &Args,
    port: &str,
    roots: &str,
    csrs: &[String],
    pid: u32,
    token: impl Fn(usize) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let nodes = args.nodes.max(1);
    let per_node = args.burst.div_ceil(nodes);
    let mut conns = Vec::new();
    for i in 0..nodes {
        let header: tonic::metadata::MetadataValue<_> = format!("Bearer {}", token(i)?).parse()?;
        for _ in 0..args.node_conns.max(1) {
            let channel = Endpoint::from_shared(format!("https://localhost:{port}"))?
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(roots))
                        .domain_name("localhost"),
                )?
                .connect()
                .await?;
            conns.push((
                i,
                IstioCertificateServiceClient::new(channel),
                header.clone(),
            ));
        }
    }
    let remaining: Arc<Vec<AtomicUsize>> =
        Arc::new((0..nodes).map(|_| AtomicUsize::new(per_node)).collect());
    let done_at: Arc<Vec<AtomicU64>> = Arc::new((0..nodes).map(|_| AtomicU64::new(0)).collect());
    let refusals = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let rss_start = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(rss_start));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (k, (node, mut client, header)) in conns.into_iter().enumerate() {
        let (remaining, done_at, refusals, errors) = (
            remaining.clone(),
            done_at.clone(),
            refusals.clone(),
            errors.clone(),
        );
        let csrs = csrs.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (k as u64 + 1);
            let mut n = k;
            // Take one job at a time from this node's share.
            while remaining[node]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
                .is_ok()
            {
                loop {
                    let mut req = tonic::Request::new(IstioCertificateRequest {
                        csr: csrs[n % csrs.len()].clone(),
                        validity_duration: 3600,
                        metadata: None,
                    });
                    n += 1;
                    req.metadata_mut().insert("authorization", header.clone());
                    match client.create_certificate(req).await {
                        Ok(_) => {
                            done_at[node].fetch_max(
                                u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
                                Ordering::Relaxed,
                            );
                            break;
                        }
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            refusals.fetch_add(1, Ordering::Relaxed);
                            // As the agent: the pushback, plus up to half again.
                            let hint = s
                                .metadata()
                                .get("grpc-retry-pushback-ms")
                                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                                .unwrap_or(100);
                            let wait =
                                Duration::from_millis(hint).mul_f64(1.0 + unit(&mut rng) / 2.0);
                            tokio::time::sleep(wait).await;
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    sampling.abort();
    let peak_kib = peak.load(Ordering::Relaxed);
    let mut done: Vec<f64> = done_at
        .iter()
        .map(|d| d.load(Ordering::Relaxed) as f64 / 1e6)
        .collect();
    done.sort_by(f64::total_cmp);
    let issued = args.burst.div_ceil(nodes) * nodes - errors.load(Ordering::Relaxed) as usize;
    let (first, median, last) = (done[0], done[done.len() / 2], done[done.len() - 1]);
    let out = serde_json::json!({
        "mode": "burst", "csrs": per_node * nodes, "nodes": nodes, "connections": nodes * args.node_conns.max(1),
        "issued": issued, "errors": errors.load(Ordering::Relaxed),
        "refusals_resource_exhausted": refusals.load(Ordering::Relaxed),
        "seconds": elapsed, "certs_per_sec": issued as f64 / elapsed,
        "node_done_first_s": first, "node_done_median_s": median, "node_done_last_s": last,
        "ca_rss_start_mib": rss_start as f64 / 1024.0, "ca_rss_peak_mib": peak_kib as f64 / 1024.0,
        "ca_args": args.ca_args,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "warden-ca burst: {} CSRs from {nodes} nodes at once, limits on",
            per_node * nodes
        );
        println!(
            "  issued               {issued} in {elapsed:.1}s ({} errors)",
            errors.load(Ordering::Relaxed)
        );
        println!(
            "  RESOURCE_EXHAUSTED   {} (retried after the CA's pushback)",
            refusals.load(Ordering::Relaxed)
        );
        println!("  nodes done           first {first:.2}s, median {median:.2}s, last {last:.2}s");
        println!(
            "  CA memory            {:.1} MiB at start, {:.1} MiB peak",
            rss_start as f64 / 1024.0,
            peak_kib as f64 / 1024.0
        );
    }
    Ok(())
}
