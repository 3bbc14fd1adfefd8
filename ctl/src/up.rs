//! `warden up`: a whole mesh on this machine, as real processes on real sockets. A CA
//! (SQLite and its root in the state directory, reused by the next start), a node
//! agent, bookinfo's apps (`warden-demo`) each behind a `warden-proxy` sidecar, an
//! ingress gateway and, when installed, Prometheus, all from the Istio YAML of
//! `--demo-dir` (copied to `<state>/config`, which the proxies watch). It shows what
//! starts and when it is ready, then a live summary, and on Ctrl-C (or SIGTERM) stops
//! every process it started: SIGTERM, then SIGKILL after 5 s.

mod plan;
pub(crate) mod probe;
mod procs;
pub(crate) mod state;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use warden_proto::admin::{
    CreateEntryRequest, CreateJoinTokenRequest, ListEntriesRequest, Selector,
};

use self::plan::{TRUST_DOMAIN, Workload};
use self::procs::Procs;
use self::state::{Component, UpState};

/// `print!` that ignores a closed stdout (`warden up | head` must not panic while
/// its children run), flushed at once.
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

/// `println!` that ignores a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        out!($($arg)*);
        out!("\n");
    }};
}

/// The CA's certificate API port.
const CA_GRPC_PORT: u16 = 15012;
/// The CA's `/metrics` and `/ready`.
const CA_MONITORING_PORT: u16 = 15014;
/// The agent's `/metrics` and `/ready`.
const AGENT_MONITORING_PORT: u16 = 15020;
/// The proxies' ports on their workload's address (their defaults).
const PROXY_STATS_PORT: u16 = 15020;
const PROXY_HEALTH_PORT: u16 = 15021;
const PROXY_ADMIN_PORT: u16 = 15000;
/// The node the agent is.
const NODE: &str = "warden-up";
/// How long a component may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the summary is redrawn.
const REFRESH: Duration = Duration::from_secs(2);

/// `warden-proxy run` flags that newer proxies have: passed only when `warden-proxy
/// run --help` lists them (checked once at start), so `warden up` works with a proxy
/// built before them.
const OPTIONAL_PROXY_FLAGS: &[&str] = &[
    "--access-log-file",
    "--access-log-encoding",
    "--admin-port",
    "--tracing-otlp-endpoint",
    "--tracing-sampling",
];

/// `warden up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the CA's database and root, the agent's node SVID, the config the proxies
    /// watch, the logs and `up.json` live. A second start reuses the CA's root.
    #[arg(long, default_value = "./.warden-up")]
    state_dir: PathBuf,
    /// Where warden-ca, warden-agent, warden-proxy and warden-demo are [default: the
    /// directory of this `warden`, e.g. target/release].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The mesh's Istio YAML: WorkloadEntries (each gets a sidecar and, for bookinfo's
    /// apps, the app), ServiceEntries, the Gateway, policies. Copied to
    /// `<state-dir>/config` at every start.
    #[arg(long, default_value = "deploy/local/demo")]
    demo_dir: PathBuf,
    /// The address the CA, the agent, the console and Prometheus listen on.
    #[arg(long, default_value = "127.0.30.1")]
    host: IpAddr,
    /// The console's port on --host.
    #[arg(long, default_value_t = 15100)]
    console_port: u16,
    /// Prometheus's port on --host.
    #[arg(long, default_value_t = 9090)]
    prometheus_port: u16,
    /// Do not start Prometheus even when it is installed.
    #[arg(long)]
    no_prometheus: bool,
    /// Send the proxies' traces to this OpenTelemetry collector (OTLP/gRPC), e.g.
    /// http://127.0.0.1:4317.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Lifetime of the SVIDs the agent asks for; they rotate at half of it.
    #[arg(long, default_value = "1h")]
    svid_ttl: String,
}

/// The executables `warden up` runs.
#[derive(Debug)]
struct Bins {
    ca: PathBuf,
    agent: PathBuf,
    proxy: PathBuf,
    demo: PathBuf,
    prometheus: Option<PathBuf>,
}

impl Bins {
    fn find(bin_dir: Option<&Path>, want_prometheus: bool) -> anyhow::Result<Self> {
        let dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("cannot find this executable's directory: give --bin-dir")?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| {
                    anyhow!("cannot find this executable's directory: give --bin-dir")
                })?,
        };
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(anyhow!(
                    "{} not found: build the workspace (cargo build --release) or give --bin-dir",
                    p.display()
                ))
            }
        };
        Ok(Self {
            ca: find("warden-ca")?,
            agent: find("warden-agent")?,
            proxy: find("warden-proxy")?,
            demo: find("warden-demo")?,
            prometheus: if want_prometheus {
                on_path("prometheus")
            } else {
                None
            },
        })
    }
}

/// `name` in a directory of `$PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Everything the start-up steps share.
#[derive(Debug)]
struct Ctx {
    args: UpArgs,
    bins: Bins,
    state_dir: PathBuf,
    logs: PathBuf,
    config_dir: PathBuf,
    workloads: Vec<Workload>,
    /// The optional proxy flags this proxy accepts.
    proxy_flags: Vec<&'static str>,
    tty: bool,
}

impl Ctx {
    fn ca_dir(&self) -> PathBuf {
        self.state_dir.join("ca")
    }
    fn admin_socket(&self) -> PathBuf {
        self.ca_dir().join("admin.sock")
    }
    fn agent_dir(&self) -> PathBuf {
        self.state_dir.join("agent")
    }
    fn sds_socket(&self) -> PathBuf {
        self.agent_dir().join("sockets").join("socket")
    }
    fn host_url(&self, port: u16, path: &str) -> String {
        format!("http://{}{path}", SocketAddr::new(self.args.host, port))
    }
    fn proxy_flag(&self, flag: &str) -> bool {
        self.proxy_flags.contains(&flag)
    }
    fn component(&self, name: &str) -> Component {
        Component {
            name: name.to_string(),
            pid: 0,
            exe: PathBuf::new(),
            log: self.logs.join(format!("{}.log", name.replace('/', "-"))),
            spiffe_id: None,
            address: None,
            metrics_url: None,
            expiry_metric: None,
        }
    }
}

/// Runs `warden up` on a runtime of its own; returns when everything has stopped.
pub fn run(args: UpArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden up: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(up(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warden up: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    // Caught before any child starts: a Ctrl-C during start-up stops what started.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;

    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating --state-dir {}", args.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;
    let bins = Bins::find(args.bin_dir.as_deref(), !args.no_prometheus)?;
    refuse_a_running_up(&state_dir)?;
    let logs = state_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let config_dir = state_dir.join("config");
    state::copy_config(&args.demo_dir, &config_dir)?;
    let set = warden_policy::loader::load(std::slice::from_ref(&config_dir))
        .map_err(|e| anyhow!("{} does not load:\n{e}", args.demo_dir.display()))?;
    let workloads = plan::plan(&set)?;
    let proxy_flags = supported_proxy_flags(&bins.proxy).await;
    let ctx = Ctx {
        args,
        bins,
        state_dir,
        logs,
        config_dir,
        workloads,
        proxy_flags,
        tty: std::io::stdout().is_terminal(),
    };
    outln!(
        "warden up: state in {}, config copied from {}",
        ctx.state_dir.display(),
        ctx.args.demo_dir.display()
    );

    let mut procs = Procs::default();
    let mut record = UpState {
        pid: std::process::id(),
        started_at: now_rfc3339(),
        state_dir: ctx.state_dir.clone(),
        admin_socket: ctx.admin_socket(),
        root_fingerprint: String::new(),
        gateway_url: None,
        console_url: None,
        prometheus_url: None,
        components: Vec::new(),
    };
    let started = tokio::select! {
        r = start(&ctx, &mut procs, &mut record) => r,
        _ = int.recv() => Err(anyhow!("interrupted while starting")),
        _ = term.recv() => Err(anyhow!("terminated while starting")),
    };
    record.components = procs.list.iter().map(|p| p.info.clone()).collect();
    let written = record.write();
    let code = match started.and(written) {
        Ok(()) => {
            live(&ctx, &mut procs, &record, &mut int, &mut term).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            if STEP_OPEN.swap(false, Ordering::Relaxed) {
                outln!(" failed");
            }
            eprintln!("warden up: {e:#}");
            ExitCode::FAILURE
        }
    };
    let n = procs.list.iter().filter(|p| p.exit.is_none()).count();
    if n == 0 {
        return Ok(code);
    }
    out!("\nstopping {n} processes ...");
    let _ = std::io::stdout().flush();
    let t = Instant::now();
    let killed = procs.stop(STOP_GRACE).await;
    if killed > 0 {
        outln!(
            " done ({killed} killed after {STOP_GRACE:?}; {:.1}s)",
            t.elapsed().as_secs_f64()
        );
    } else {
        outln!(" done ({:.1}s)", t.elapsed().as_secs_f64());
    }
    Ok(code)
}

/// Refuses a state directory another `warden up` is using, and stops processes a
/// `warden up` that was killed left behind.
fn refuse_a_running_up(state_dir: &Path) -> anyhow::Result<()> {
    let Ok(old) = UpState::read(state_dir) else {
        return Ok(());
    };
    let up_runs = old.pid != std::process::id()
        && state::alive(old.pid)
        && std::fs::read_link(format!("/proc/{}/exe", old.pid)).is_ok_and(|e| {
            e.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("warden"))
        });
    if up_runs {
        bail!(
            "warden up (pid {}) is already running with --state-dir {}: stop it first, or give another --state-dir",
            old.pid,
            state_dir.display()
        );
    }
    let left: Vec<&Component> = old
        .components
        .iter()
        .filter(|c| state::alive(c.pid) && state::runs(c.pid, &c.exe))
        .collect();
    if !left.is_empty() {
        let pids: Vec<String> = left.iter().map(|c| c.pid.to_string()).collect();
        outln!(
            "stopping {} processes a previous warden up left running: {}",
            left.len(),
            left.iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .status();
    }
    Ok(())
}

/// Which of [`OPTIONAL_PROXY_FLAGS`] `warden-proxy run --help` lists.
async fn supported_proxy_flags(proxy: &Path) -> Vec<&'static str> {
    let help = tokio::process::Command::new(proxy)
        .args(["run", "--help"])
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    OPTIONAL_PROXY_FLAGS
        .iter()
        .copied()
        .filter(|f| {
            help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .any(|w| w == *f)
        })
        .collect()
}

/// Whether a progress line is waiting for its end (` ready`, or ` failed`).
static STEP_OPEN: AtomicBool = AtomicBool::new(false);

/// One line of start-up progress: `  starting ca ... ready (0.4s)`.
#[derive(Debug)]
struct Step(Instant);

impl Step {
    fn new(what: &str) -> Self {
        out!("  starting {what:<36} ...");
        STEP_OPEN.store(true, Ordering::Relaxed);
        let _ = std::io::stdout().flush();
        Self(Instant::now())
    }
    fn ready(self) {
        STEP_OPEN.store(false, Ordering::Relaxed);
        outln!(" ready ({:.1}s)", self.0.elapsed().as_secs_f64());
    }
}

/// Starts everything, in order: the CA, its registration entries, the agent, the apps,
/// the sidecars and gateway, Prometheus, the console.
async fn start(ctx: &Ctx, procs: &mut Procs, record: &mut UpState) -> anyhow::Result<()> {
    ports_free(ctx)?;
    start_ca(ctx, procs, record).await?;
    register(ctx).await?;
    start_agent(ctx, procs).await?;

    // Apps, all at once, then each waited for.
    let mut started = Vec::new();
    for w in &ctx.workloads {
        let Some((app, port)) = &w.app else { continue };
        let listen = SocketAddr::new(w.address, *port);
        let mut c = ctx.component(&format!("app/{}", w.name));
        c.address = Some(w.address);
        let i = procs.spawn(c, &ctx.bins.demo, &app.args(&w.name, &listen.to_string()))?;
        started.push((i, format!("http://{listen}/health")));
    }
    for (i, url) in started {
        let step = Step::new(&procs.list[i].info.name.clone());
        procs.wait_ready(i, &url, READY_TIMEOUT).await?;
        step.ready();
    }

    // Sidecars and the gateway.
    let mut started = Vec::new();
    for w in &ctx.workloads {
        let kind = if w.gateway_port.is_some() {
            "gateway"
        } else {
            "proxy"
        };
        let mut c = ctx.component(&format!("{kind}/{}", w.name));
        c.address = Some(w.address);
        c.spiffe_id = Some(w.spiffe_id());
        c.metrics_url = Some(format!(
            "http://{}/stats/prometheus",
            SocketAddr::new(w.address, PROXY_STATS_PORT)
        ));
        c.expiry_metric = Some("warden_svid_expiry_timestamp_seconds".into());
        let i = procs.spawn(c, &ctx.bins.proxy, &proxy_args(ctx, w))?;
        started.push((
            i,
            format!(
                "http://{}/ready",
                SocketAddr::new(w.address, PROXY_HEALTH_PORT)
            ),
        ));
        if let Some(port) = w.gateway_port {
            record.gateway_url = Some(format!(
                "http://{}/productpage",
                SocketAddr::new(w.address, port)
            ));
        }
    }
    for (i, url) in started {
        let step = Step::new(&procs.list[i].info.name.clone());
        procs.wait_ready(i, &url, READY_TIMEOUT).await?;
        step.ready();
    }
    record.components = procs.list.iter().map(|p| p.info.clone()).collect();
    record.write()?;

    record.prometheus_url = start_prometheus(ctx, procs).await;
    record.console_url = start_console(ctx).await;
    Ok(())
}

/// Fails, naming the address, when something already listens where `warden up` is
/// about to (another `warden up` with another state directory, say): readiness checks
/// would otherwise talk to it.
fn ports_free(ctx: &Ctx) -> anyhow::Result<()> {
    let mut addrs: Vec<SocketAddr> = [CA_GRPC_PORT, CA_MONITORING_PORT, AGENT_MONITORING_PORT]
        .into_iter()
        .map(|p| SocketAddr::new(ctx.args.host, p))
        .collect();
    for w in &ctx.workloads {
        addrs.push(SocketAddr::new(w.address, PROXY_HEALTH_PORT));
        if let Some((_, port)) = &w.app {
            addrs.push(SocketAddr::new(w.address, *port));
        }
    }
    for addr in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!(
                "{addr} is taken ({e}): is another warden up running? (warden status --state-dir DIR)"
            );
        }
    }
    Ok(())
}

async fn start_ca(ctx: &Ctx, procs: &mut Procs, record: &mut UpState) -> anyhow::Result<()> {
    let ca_dir = ctx.ca_dir();
    let reused = ca_dir.join("root-cert.pem").exists();
    let config = ctx.state_dir.join("ca.yaml");
    std::fs::write(
        &config,
        state::ca_yaml(&ca_dir, ctx.args.host, CA_GRPC_PORT, CA_MONITORING_PORT),
    )?;
    let mut c = ctx.component("ca");
    c.address = Some(ctx.args.host);
    c.metrics_url = Some(ctx.host_url(CA_MONITORING_PORT, "/metrics"));
    c.expiry_metric = Some("citadel_server_root_cert_expiry_timestamp".into());
    let step = Step::new("ca");
    let args = [
        "run".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let i = procs.spawn(c, &ctx.bins.ca, &args)?;
    procs
        .wait_ready(
            i,
            &ctx.host_url(CA_MONITORING_PORT, "/ready"),
            READY_TIMEOUT,
        )
        .await?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ctx.admin_socket().exists() {
        if Instant::now() > deadline {
            bail!(
                "the CA is ready but {} did not appear",
                ctx.admin_socket().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    step.ready();
    record.root_fingerprint = root_fingerprint(&ca_dir.join("root-cert.pem"))?;
    outln!(
        "  {} the root in {} (sha256 {})",
        if reused { "reusing" } else { "made" },
        ca_dir.display(),
        short(&record.root_fingerprint)
    );
    procs.list[i].info.spiffe_id = Some(format!("root sha256:{}", short(&record.root_fingerprint)));
    Ok(())
}

/// The SHA-256 of the first certificate in a PEM file, hex.
pub(crate) fn root_fingerprint(path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
    Ok(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &pem.contents,
    )))
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// A registration entry for every workload's identity, under the agent's node, for
/// this uid (every process here runs as you); entries from an earlier start are kept.
async fn register(ctx: &Ctx) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata("/proc/self")?.uid().to_string();
    let parent = format!("spiffe://{TRUST_DOMAIN}/warden/node/{NODE}");
    let mut ids: Vec<String> = ctx.workloads.iter().map(Workload::spiffe_id).collect();
    ids.sort();
    ids.dedup();
    let t = Instant::now();
    out!(
        "  registering {:<33} ...",
        format!("{} identities", ids.len())
    );
    STEP_OPEN.store(true, Ordering::Relaxed);
    let mut client = crate::admin::connect(&ctx.admin_socket()).await?;
    let existing = client
        .list_entries(ListEntriesRequest {
            parent_id: parent.clone(),
            spiffe_id: String::new(),
        })
        .await
        .map_err(|s| anyhow!("entry list: {}", s.message()))?
        .into_inner()
        .entries;
    let mut made = 0;
    for id in &ids {
        let have = existing.iter().any(|e| {
            &e.spiffe_id == id
                && e.selectors
                    .iter()
                    .any(|s| s.r#type == "unix" && s.value == format!("uid:{uid}"))
        });
        if have {
            continue;
        }
        client
            .create_entry(CreateEntryRequest {
                parent_id: parent.clone(),
                spiffe_id: id.clone(),
                selectors: vec![Selector {
                    r#type: "unix".into(),
                    value: format!("uid:{uid}"),
                }],
            })
            .await
            .map_err(|s| anyhow!("entry create {id}: {}", s.message()))?;
        made += 1;
    }
    STEP_OPEN.store(false, Ordering::Relaxed);
    outln!(
        " done ({made} new, unix:uid:{uid}; {:.1}s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn start_agent(ctx: &Ctx, procs: &mut Procs) -> anyhow::Result<()> {
    let agent_dir = ctx.agent_dir();
    let config = ctx.state_dir.join("agent.yaml");
    std::fs::write(
        &config,
        state::agent_yaml(
            &agent_dir,
            &ctx.ca_dir().join("root-cert.pem"),
            ctx.args.host,
            CA_GRPC_PORT,
            AGENT_MONITORING_PORT,
            NODE,
            &ctx.args.svid_ttl,
        ),
    )?;
    let mut args = vec![
        "run".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    // A join token only when the node SVID kept from an earlier start is missing or
    // about to expire.
    if !node_svid_valid(&agent_dir.join("node").join("cert-chain.pem")) {
        let token = crate::admin::connect(&ctx.admin_socket())
            .await?
            .create_join_token(CreateJoinTokenRequest {
                node_name: NODE.into(),
                ttl_seconds: 600,
            })
            .await
            .map_err(|s| anyhow!("token create: {}", s.message()))?
            .into_inner()
            .token;
        // An expired node SVID would be tried first; the token replaces it.
        let _ = std::fs::remove_dir_all(agent_dir.join("node"));
        args.extend(["--join-token".to_string(), token]);
    }
    let mut c = ctx.component("agent");
    c.address = Some(ctx.args.host);
    c.spiffe_id = Some(format!("spiffe://{TRUST_DOMAIN}/warden/node/{NODE}"));
    c.metrics_url = Some(ctx.host_url(AGENT_MONITORING_PORT, "/metrics"));
    c.expiry_metric = Some("warden_agent_node_cert_expiry_timestamp_seconds".into());
    let step = Step::new("agent");
    let i = procs.spawn(c, &ctx.bins.agent, &args)?;
    procs
        .wait_ready(
            i,
            &ctx.host_url(AGENT_MONITORING_PORT, "/ready"),
            READY_TIMEOUT,
        )
        .await?;
    step.ready();
    Ok(())
}

/// Whether the node SVID at `path` is valid for at least another minute.
fn node_svid_valid(path: &Path) -> bool {
    let Ok(pem) = std::fs::read(path) else {
        return false;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    cert.validity().not_after.timestamp() > now + 60
}

fn proxy_args(ctx: &Ctx, w: &Workload) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--config-dir".into(),
        ctx.config_dir.display().to_string(),
        "--workload".into(),
        w.name.clone(),
        "--namespace".into(),
        w.namespace.clone(),
        "--sds-socket".into(),
        ctx.sds_socket().display().to_string(),
        "--log-format".into(),
        "json".into(),
        "--concurrency".into(),
        "1".into(),
        "--drain-grace".into(),
        "1s".into(),
    ];
    if w.gateway_port.is_some() {
        a.extend(["--mode".into(), "gateway".into()]);
    }
    let mut opt = |flag: &str, value: String| {
        if ctx.proxy_flag(flag) {
            a.extend([flag.to_string(), value]);
        }
    };
    opt(
        "--access-log-file",
        ctx.logs
            .join(format!("access-{}.log", w.name))
            .display()
            .to_string(),
    );
    opt("--access-log-encoding", "JSON".into());
    opt("--admin-port", PROXY_ADMIN_PORT.to_string());
    if let Some(endpoint) = &ctx.args.otlp_endpoint {
        opt("--tracing-otlp-endpoint", endpoint.clone());
    }
    opt("--tracing-sampling", "100".into());
    a
}

/// Starts Prometheus scraping every component, when it is installed; its URL.
async fn start_prometheus(ctx: &Ctx, procs: &mut Procs) -> Option<String> {
    let exe = ctx.bins.prometheus.clone()?;
    let mut proxies = Vec::new();
    for w in &ctx.workloads {
        proxies.push((
            SocketAddr::new(w.address, PROXY_STATS_PORT).to_string(),
            vec![
                ("workload".to_string(), w.name.clone()),
                ("namespace".to_string(), w.namespace.clone()),
            ],
        ));
    }
    let host = |port| SocketAddr::new(ctx.args.host, port).to_string();
    let jobs = vec![
        (
            "warden-ca".to_string(),
            "/metrics".to_string(),
            vec![(host(CA_MONITORING_PORT), vec![])],
        ),
        (
            "warden-agent".to_string(),
            "/metrics".to_string(),
            vec![(host(AGENT_MONITORING_PORT), vec![])],
        ),
        (
            "warden-proxy".to_string(),
            "/stats/prometheus".to_string(),
            proxies,
        ),
    ];
    let config = ctx.state_dir.join("prometheus.yml");
    if let Err(e) = std::fs::write(&config, state::prometheus_yaml(&jobs)) {
        eprintln!(
            "warden up: cannot write {}: {e}; Prometheus not started",
            config.display()
        );
        return None;
    }
    let listen = host(ctx.args.prometheus_port);
    let args = [
        format!("--config.file={}", config.display()),
        format!(
            "--storage.tsdb.path={}",
            ctx.state_dir.join("prometheus").display()
        ),
        format!("--web.listen-address={listen}"),
    ];
    let step = Step::new("prometheus");
    let mut c = ctx.component("prometheus");
    c.address = Some(ctx.args.host);
    let i = match procs.spawn(c, &exe, &args) {
        Ok(i) => i,
        Err(e) => {
            STEP_OPEN.store(false, Ordering::Relaxed);
            outln!(" failed: {e:#}");
            return None;
        }
    };
    let url = format!("http://{listen}");
    match procs
        .wait_ready(i, &format!("{url}/-/ready"), READY_TIMEOUT)
        .await
    {
        Ok(()) => {
            step.ready();
            Some(url)
        }
        // The mesh runs without it.
        Err(e) => {
            STEP_OPEN.store(false, Ordering::Relaxed);
            outln!(" failed (the mesh runs without it): {e:#}");
            None
        }
    }
}

/// The console (`crate::console`), served on `--console-port` in a task of its own;
/// its URL. The mesh runs without it when its port is taken.
async fn start_console(ctx: &Ctx) -> Option<String> {
    let addr = SocketAddr::new(ctx.args.host, ctx.args.console_port);
    let step = Step::new("console");
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            STEP_OPEN.store(false, Ordering::Relaxed);
            outln!(" failed (the mesh runs without it): {addr}: {e}");
            return None;
        }
    };
    let admin = ctx.proxy_flag("--admin-port");
    let config = crate::console::ConsoleConfig {
        config_dir: ctx.config_dir.clone(),
        admin_socket: ctx.admin_socket(),
        workloads: ctx
            .workloads
            .iter()
            .map(|w| crate::console::ConsoleWorkload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                spiffe_id: w.spiffe_id(),
                address: w.address,
                stats_url: format!(
                    "http://{}/stats/prometheus",
                    SocketAddr::new(w.address, PROXY_STATS_PORT)
                ),
                admin_url: admin
                    .then(|| format!("http://{}", SocketAddr::new(w.address, PROXY_ADMIN_PORT))),
            })
            .collect(),
    };
    tokio::spawn(async move {
        if let Err(e) = crate::console::serve(listener, config).await {
            eprintln!("warden up: the console stopped: {e:#}");
        }
    });
    step.ready();
    Some(format!("http://{addr}/"))
}

/// The live summary until SIGINT or SIGTERM: redrawn every 2 s on a terminal, plain
/// lines otherwise (the summary once, then a line when a process exits and a status
/// line every minute).
async fn live(
    ctx: &Ctx,
    procs: &mut Procs,
    record: &UpState,
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) {
    let mut tick = tokio::time::interval(REFRESH);
    let mut printed = false;
    let mut last_line = Instant::now();
    let mut exited: Vec<bool> = procs.list.iter().map(|p| p.exit.is_some()).collect();
    loop {
        tokio::select! {
            _ = int.recv() => return,
            _ = term.recv() => return,
            _ = tick.tick() => {}
        }
        procs.poll();
        if ctx.tty {
            let expiries = expiries(procs).await;
            out!("\x1b[H\x1b[2J{}", summary(ctx, procs, record, &expiries));
        } else if !printed {
            let expiries = expiries(procs).await;
            out!("\n{}", summary(ctx, procs, record, &expiries));
            printed = true;
        } else {
            for (p, was) in procs.list.iter().zip(exited.iter_mut()) {
                if p.exit.is_some() && !*was {
                    *was = true;
                    outln!("[{}] {} {}", now_rfc3339(), p.info.name, p.state());
                }
            }
            if last_line.elapsed() >= Duration::from_secs(60) {
                last_line = Instant::now();
                let running = procs.list.iter().filter(|p| p.exit.is_none()).count();
                outln!(
                    "[{}] {running} of {} processes running",
                    now_rfc3339(),
                    procs.list.len()
                );
            }
        }
        let _ = std::io::stdout().flush();
    }
}

/// Each process's certificate expiry (Unix seconds), from its metrics.
async fn expiries(procs: &Procs) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for p in &procs.list {
        out.push(expiry_of(&p.info).await);
    }
    out
}

/// A component's certificate expiry (Unix seconds), from its metrics.
pub(crate) async fn expiry_of(c: &Component) -> Option<f64> {
    let (url, metric) = (c.metrics_url.as_ref()?, c.expiry_metric.as_ref()?);
    let (status, body) = probe::get(url, Duration::from_millis(500)).await.ok()?;
    (status == 200)
        .then(|| probe::metric(&body, metric))
        .flatten()
}

/// The summary: every process, then where to look.
fn summary(ctx: &Ctx, procs: &Procs, record: &UpState, expiries: &[Option<f64>]) -> String {
    let now = time::OffsetDateTime::now_utc();
    let running = procs.list.iter().filter(|p| p.exit.is_none()).count();
    let mut s = format!(
        "Warden mesh: {running} of {} processes running (updated {}). Ctrl-C stops them all.\n\n",
        procs.list.len(),
        now_rfc3339()
    );
    s.push_str(&format!(
        "{:<30} {:>7}  {:<14} {:<62} {}\n",
        "COMPONENT", "PID", "STATE", "IDENTITY", "CERTIFICATE EXPIRES"
    ));
    for (p, exp) in procs.list.iter().zip(expiries) {
        s.push_str(&format!(
            "{:<30} {:>7}  {:<14} {:<62} {}\n",
            p.info.name,
            p.info.pid,
            p.state(),
            p.info.spiffe_id.as_deref().unwrap_or("-"),
            exp.map_or_else(|| "-".to_string(), |e| probe::expiry(e, now)),
        ));
    }
    let st = ctx.state_dir.display();
    let (host, logs) = (ctx.args.host, ctx.logs.display());
    s.push('\n');
    let mut row = |k: &str, v: String| s.push_str(&format!("{k:<12}{v}\n"));
    row(
        "Gateway",
        record
            .gateway_url
            .clone()
            .unwrap_or_else(|| "- (no Gateway in the config)".into()),
    );
    row(
        "Console",
        record
            .console_url
            .clone()
            .unwrap_or_else(|| format!("- (port {} taken)", ctx.args.console_port)),
    );
    row(
        "Prometheus",
        match (&record.prometheus_url, &ctx.bins.prometheus) {
            (Some(url), _) => {
                format!("{url} (scrapes every component every 5s; {st}/prometheus.yml)")
            }
            (None, Some(_)) if ctx.args.no_prometheus => "- (--no-prometheus)".into(),
            (None, Some(_)) => format!("- (did not start: see {logs}/prometheus.log)"),
            (None, None) if ctx.args.no_prometheus => "- (--no-prometheus)".into(),
            (None, None) => {
                "Prometheus not found: apt install prometheus, then run warden up again".into()
            }
        },
    );
    row(
        "Metrics",
        format!(
            "http://<address>:{PROXY_STATS_PORT}/stats/prometheus (each proxy), http://{host}:{CA_MONITORING_PORT}/metrics (ca), http://{host}:{AGENT_MONITORING_PORT}/metrics (agent)"
        ),
    );
    row("Logs", format!("{logs}/<component>.log"));
    if ctx.proxy_flag("--access-log-file") {
        row(
            "Access logs",
            format!("{logs}/access-<workload>.log (JSON)"),
        );
    }
    row(
        "Traces",
        match (
            &ctx.args.otlp_endpoint,
            ctx.proxy_flag("--tracing-otlp-endpoint"),
        ) {
            (Some(e), true) => format!("sent to {e} (OTLP, every request sampled)"),
            (Some(_), false) => "- (this warden-proxy cannot send traces yet)".into(),
            (None, _) => {
                "off: warden up --otlp-endpoint http://127.0.0.1:4317 sends them to a collector"
                    .into()
            }
        },
    );
    row(
        "Audit log",
        format!(
            "warden --admin-socket {} audit list",
            record.admin_socket.display()
        ),
    );
    row(
        "Config",
        format!(
            "{} (edit it, or copy deploy/local/demo-steps/*.yaml into it: applied at once)",
            ctx.config_dir.display()
        ),
    );
    row("Status", format!("warden status --state-dir {st}"));
    s
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
