//! Helpers for Warden's end-to-end tests: find the real binaries, start them as child
//! processes on loopback port 0, read the addresses they log, run the `warden` CLI.
//!
//! The binaries are the workspace's debug builds next to the test executable;
//! `./test.sh` builds them (`cargo build --workspace --bins`) before `cargo test`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // test support: panics are failures

pub mod browser;
pub mod envoy;
pub mod eventually;
pub mod mesh;
pub mod otlp;

pub use eventually::{POLL_INTERVAL, eventually, eventually_async, try_eventually};

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The uid of this process: the caller the agent sees on its sockets (`unix:uid:N`).
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// An ES256 JWT issuer for tests, made with ring: its JWKS (key id `k1`) and tokens.
#[derive(Debug)]
pub struct Es256Issuer {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

fn b64url(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Es256Issuer {
    /// A new P-256 key.
    pub fn new() -> Self {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self { key, rng }
    }

    /// The JWKS with the public key.
    pub fn jwks(&self) -> String {
        use ring::signature::KeyPair as _;
        let p = self.key.public_key().as_ref();
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "use": "sig", "x": b64url(&p[1..33]), "y": b64url(&p[33..65])}]})
        .to_string()
    }

    /// A token with `claims`, signed.
    pub fn token(&self, claims: &serde_json::Value) -> String {
        let signed = format!(
            "{}.{}",
            b64url(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
            b64url(claims.to_string())
        );
        let sig = self.key.sign(&self.rng, signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64url(sig))
    }
}

impl Default for Es256Issuer {
    fn default() -> Self {
        Self::new()
    }
}

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> (tests) or target/<profile>/<bench> (benchmarks)
    // -> target/<profile>/<name>
    let mut dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run ./test.sh, or `cargo build --workspace --bins` before `cargo test`",
        path.display()
    );
    path
}

/// A running `warden-ca` process.
#[derive(Debug)]
pub struct CaProcess {
    pub child: Child,
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub monitoring_addr: String,
    /// The admission webhook's address (Kubernetes mode only).
    pub webhook_addr: Option<String>,
    /// The SPIFFE bundle endpoint's address (with `--bundle-endpoint-addr`).
    pub bundle_endpoint_addr: Option<String>,
    pub log: mpsc::Receiver<String>,
}

impl CaProcess {
    /// Starts `warden-ca run` with JSON logs and waits for its "serving" line.
    // The child is killed and reaped in `Drop`, or reaped in `terminate`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// Like [`CaProcess::start`] on a fixed gRPC address (to restart a CA where its
    /// agents expect it).
    pub fn start_at(data_dir: &Path, grpc_addr: &str, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, grpc_addr, extra, &[])
    }

    /// Like [`CaProcess::start_at`] with extra environment variables (e.g.
    /// `SOFTHSM2_CONF` for a test's own token directory).
    pub fn start_with_env(
        data_dir: &Path,
        grpc_addr: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Self {
        let mut cmd = Command::new(bin("warden-ca"));
        cmd.envs(env.iter().copied());
        cmd.args([
            "run",
            "--grpc-addr",
            grpc_addr,
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra);
        let (child, log) = spawn_logged(cmd);
        let v = wait_message(&log, "warden-ca serving", Duration::from_secs(30));
        Self {
            child,
            data_dir: data_dir.to_path_buf(),
            grpc_addr: v["grpc_addr"].as_str().unwrap().to_string(),
            monitoring_addr: v["monitoring_addr"].as_str().unwrap().to_string(),
            webhook_addr: v["webhook_addr"].as_str().map(String::from),
            bundle_endpoint_addr: v["bundle_endpoint_addr"].as_str().map(String::from),
            log,
        }
    }

    /// A one-time join token for `node` (the CLI prints it on its last line).
    pub fn join_token(&self, node: &str) -> String {
        ok(self.warden(&["token", "create", "--node", node]))
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    }

    /// Registers `spiffe_id` for node `node` (in `spiffe_id`'s trust domain) with
    /// `selectors`; returns the entry ID.
    pub fn entry(&self, node: &str, spiffe_id: &str, selectors: &[&str]) -> String {
        let td = spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or("cluster.local");
        let parent = format!("spiffe://{td}/warden/node/{node}");
        let mut args = vec![
            "entry",
            "create",
            "--json",
            "--parent-id",
            &parent,
            "--spiffe-id",
            spiffe_id,
        ];
        for s in selectors {
            args.push("--selector");
            args.push(s);
        }
        let out = ok(self.warden(&args));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// `https://localhost:PORT` for clients that verify the serving certificate.
    pub fn url(&self) -> String {
        format!(
            "https://localhost:{}",
            self.grpc_addr.rsplit(':').next().unwrap()
        )
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }

    /// Runs the `warden` CLI against this CA's admin socket.
    pub fn warden(&self, args: &[&str]) -> Output {
        warden(
            &[
                &["--admin-socket", self.admin_socket().to_str().unwrap()],
                args,
            ]
            .concat(),
        )
    }

    /// Sends SIGTERM and waits for exit; returns the exit code and the remaining log.
    pub fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let code = sigterm_and_wait(&mut self.child, "warden-ca");
        (code, self.log.try_iter().collect())
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `warden` CLI.
pub fn warden(args: &[&str]) -> Output {
    Command::new(bin("warden")).args(args).output().unwrap()
}

/// Stdout of a successful command, or a panic showing its stderr.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Stderr of a command that must fail.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "command should fail but printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// Spawns `cmd` with stderr read line by line into the returned channel.
// The child is killed and reaped by its owner's `Drop`, or reaped in `terminate`.
#[allow(clippy::zombie_processes)]
pub fn spawn_logged(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a JSON log line whose `message` is `message`; returns it. Panics with the
/// lines seen when it does not come within `timeout`.
pub fn wait_message(
    log: &mpsc::Receiver<String>,
    message: &str,
    timeout: Duration,
) -> serde_json::Value {
    wait_log(log, timeout, |v| v["message"] == message).unwrap_or_else(|seen| {
        panic!(
            "no log line {message:?} within {timeout:?}; saw:\n{}",
            seen.join("\n")
        )
    })
}

/// Waits for a JSON log line matching `pred`; `Err` with the lines seen on timeout.
pub fn wait_log(
    log: &mpsc::Receiver<String>,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, Vec<String>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = log.recv_timeout(left) else {
            return Err(seen);
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && pred(&v)
        {
            return Ok(v);
        }
        seen.push(line);
    }
}

/// Sends SIGTERM to `child` and waits up to 20 s for it to exit.
pub fn sigterm(child: &mut Child) -> Option<i32> {
    sigterm_and_wait(child, "the process")
}

/// [`sigterm`], naming the process `what` if it does not exit.
fn sigterm_and_wait(child: &mut Child, what: &str) -> Option<i32> {
    let pid = child.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let exited = try_eventually(
        format!("{what} (pid {pid}) to exit after SIGTERM"),
        Duration::from_secs(20),
        Duration::from_millis(20),
        || child.try_wait().unwrap(),
    );
    exited.unwrap_or_else(|e| panic!("{e}")).code()
}

/// Writes `contents` to `path` atomically (a hidden temporary file renamed over it).
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// GET `path` from `addr` over plain HTTP/1.1 ([`try_http_get`]); panics when it
/// cannot connect or read.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// GET `path` from `addr` over plain HTTP/1.1 with a 10 s timeout; status and body
/// (chunked bodies decoded). `Err` instead of a panic when nothing listens.
pub fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    Ok(parse_response(&resp))
}

/// Status code and body of an HTTP/1.1 response read to the end (plain or chunked).
pub fn parse_response(resp: &[u8]) -> (u16, String) {
    let resp = String::from_utf8_lossy(resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        return (status, String::new());
    };
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return (status, body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    (status, out)
}

/// A running `warden-agent` process.
#[derive(Debug)]
pub struct AgentProcess {
    pub child: Child,
    pub data_dir: PathBuf,
    /// The shared socket.
    pub socket: PathBuf,
    pub monitoring_addr: String,
    pub log: mpsc::Receiver<String>,
}

impl AgentProcess {
    /// Starts `warden-agent run` against `ca` (node name, credential etc. in `extra`)
    /// and waits for its "serving" line.
    pub fn start(ca: &CaProcess, data_dir: &Path, extra: &[&str]) -> Self {
        Self::try_start(ca, data_dir, extra)
            .unwrap_or_else(|lines| panic!("warden-agent did not start:\n{}", lines.join("\n")))
    }

    /// Starts a node-mode agent for node `node` attested with a fresh join token from
    /// `ca` (`--node-name node --join-token T`, then `extra`), as [`AgentProcess::start`].
    pub fn start_node(ca: &CaProcess, data_dir: &Path, node: &str, extra: &[&str]) -> Self {
        let token = ca.join_token(node);
        let args = [&["--node-name", node, "--join-token", &token], extra].concat();
        Self::start(ca, data_dir, &args)
    }

    /// Like [`AgentProcess::start`]; `Err` with the agent's output if it exits or does
    /// not report serving within 30 s.
    pub fn try_start(ca: &CaProcess, data_dir: &Path, extra: &[&str]) -> Result<Self, Vec<String>> {
        let mut cmd = Command::new(bin("warden-agent"));
        cmd.args([
            "run",
            "--ca-addr",
            &ca.url(),
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .arg("--ca-root")
        .arg(ca.data_dir.join("root-cert.pem"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--log-format", "json"])
        .args(extra);
        let (mut child, log) = spawn_logged(cmd);
        let v = wait_log(&log, Duration::from_secs(30), |v| {
            v["message"] == "warden-agent serving"
        });
        match v {
            Ok(v) => Ok(Self {
                child,
                data_dir: data_dir.to_path_buf(),
                socket: PathBuf::from(v["socket"].as_str().unwrap()),
                monitoring_addr: v["monitoring_addr"].as_str().unwrap().to_string(),
                log,
            }),
            Err(mut seen) => {
                let _ = child.kill();
                let _ = child.wait();
                seen.extend(log.try_iter());
                Err(seen)
            }
        }
    }

    /// The socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.socket.parent().unwrap().to_path_buf()
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        http_get(&self.monitoring_addr, "/metrics").1
    }

    /// A metric's value (first line starting with `name`).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Waits up to `limit` until metric `name` satisfies `pred`; returns its value.
    pub fn wait_metric(&self, name: &str, limit: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        try_eventually(
            format_args!("the agent's metric {name}"),
            limit,
            Duration::from_millis(100),
            || {
                let v = self.metric(name);
                last = Some(v);
                pred(v).then_some(v)
            },
        )
        .unwrap_or_else(|e| panic!("{e}; {name} stuck at {last:?}"))
    }

    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&self) {
        eventually(
            "the agent's /ready to answer 200",
            Duration::from_secs(30),
            || http_get(&self.monitoring_addr, "/ready").0 == 200,
        );
    }

    /// Runs `warden-agent api ...` against the shared socket (or `socket`).
    pub fn api(&self, args: &[&str]) -> Output {
        Command::new(bin("warden-agent"))
            .arg("api")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an interop script (`tests/interop/`) that prints one JSON line last; returns
/// whether it exited 0 and that line. Panics, with the script's stderr, when the last
/// line is not JSON.
pub fn run_json(cmd: &mut Command) -> (bool, serde_json::Value) {
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{cmd:?} printed no JSON line ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), v)
}

/// Python with grpcio (`.venv`, or `$WARDEN_TEST_PYTHON`) for `what`; `None` (skipped
/// loudly) without it, except under CI=true, where it panics.
pub fn grpcio_python(what: &str) -> Option<PathBuf> {
    interop_python(what, "grpc")
}

/// Python with the `websockets` library for `what`, like [`grpcio_python`].
pub fn websockets_python(what: &str) -> Option<PathBuf> {
    interop_python(what, "websockets")
}

/// A script under `tests/interop/`.
pub fn interop_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// What curl got: the status (0 when no response) and the body.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub body: String,
    /// curl's stderr (why it failed).
    pub stderr: String,
}

impl Curl {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("curl body is not JSON ({e}): {:?}", self.body))
    }
}

/// Runs curl (the system's, a client no one here wrote) with `args` (no proxy from the
/// environment; `--proxy` in `args` is the one used), a 15 s limit; the status code
/// and body.
pub fn curl(args: &[&str]) -> Curl {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap_or_else(|e| panic!("curl cannot run ({e}): ./test.sh installs it"));
    let out = String::from_utf8_lossy(&o.stdout);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    Curl {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Python with py-spiffe (PyPI `spiffe`, on grpcio) for `what`, like [`grpcio_python`].
pub fn py_spiffe_python(what: &str) -> Option<PathBuf> {
    interop_python(what, "spiffe")
}

/// Python (`.venv`, or `$WARDEN_TEST_PYTHON`) that can import `module`, from
/// `tests/interop/requirements.txt`.
pub(crate) fn interop_python(what: &str, module: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = std::env::var_os("WARDEN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let found = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(py);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} with Python's {module} is required under CI=true for {what} (./test.sh installs it)",
            py.display()
        );
    }
    eprintln!(
        "\n*** SKIPPING {what}: no Python {module} at {} (run ./test.sh) ***\n",
        py.display()
    );
    None
}

/// Runs the openssl command line in `dir` (a program no one here wrote), panicking
/// with its stderr when it fails.
pub fn openssl_in(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (./test.sh installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A small PKI made by the openssl command line in `dir`: a CA (`ca.pem`,
/// `ca-key.pem`, subject `/CN=<ca_name>`) and, for each `(name, common name,
/// extension line)`, `<name>.pem` and `<name>-key.pem` signed by it (EC P-256, two
/// days; the extension line is an `-extfile` entry such as `subjectAltName=DNS:x`).
pub fn openssl_pki(dir: &Path, ca_name: &str, leaves: &[(&str, &str, &str)]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let subject = format!("/CN={ca_name}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", "ca-key.pem", "-out", "ca.pem", "-subj", &subject]);
    args.extend(["-days", "2"]);
    openssl_in(dir, &args);
    for (name, cn, extension) in leaves {
        let (key, csr, cert, ext) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subject = format!("/CN={cn}");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl_in(dir, &args);
        std::fs::write(dir.join(&ext), extension).unwrap();
        openssl_in(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &cert,
                "-extfile",
                &ext,
                "-days",
                "2",
            ],
        );
    }
}

/// A child process killed and reaped when this is dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sets the flag when dropped, so request loops end when a test's main thread panics.
#[derive(Debug)]
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// For a facility a test needs from the machine (root, a tmpfs, iptables, initdb):
/// under CI=true its absence fails the test; elsewhere the test is skipped loudly.
pub fn skip_or_fail(what: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is required under CI=true");
    }
    eprintln!("\n*** SKIPPING: {what} ***\n");
}

/// Resident and peak resident memory (VmRSS, VmHWM) of a process in KiB; `None` once
/// it is gone.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The authority key identifier of a DER certificate, hex.
pub fn authority_key_id(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => None,
        })
        .unwrap()
}
