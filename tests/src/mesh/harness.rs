//! The running mesh: [`Mesh`] and its builder, the CA, the agent, a `warden-proxy`
//! per workload and the applications, on a loopback subnet of its own (see the
//! [module docs](super)).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::clients::grpc::grpc_say;
use super::clients::http::{Req, Resp, send, try_http_get};
use super::clients::metric_sum;
use super::spec::{Protocol, ServiceSpec, Workload, WorkloadSpec, mesh_yaml};
use super::{
    HEALTH_PORT, INBOUND_PORT, MESH_FILE, OUTBOUND_PORT, REQUEST_TIMEOUT, TRUST_DOMAIN,
    random_bytes,
};
use crate::{
    AgentProcess, CaProcess, bin, eventually, http_get, my_uid, spawn_logged, try_eventually,
    write_atomic,
};

/// Builds a [`Mesh`].
#[derive(Debug)]
pub struct MeshBuilder {
    workloads: Vec<WorkloadSpec>,
    services: Vec<ServiceSpec>,
    identities: Vec<String>,
    svid_ttl: String,
    files: Vec<(String, String)>,
    proxy_args: Vec<String>,
    agent_args: Vec<String>,
    ca_args: Vec<String>,
    mesh_config: Option<String>,
}

impl MeshBuilder {
    /// A workload in `default` with its own proxy and applications.
    pub fn workload(self, name: &str, service_account: &str) -> Self {
        self.workload_spec(WorkloadSpec::new(name, "default", service_account))
    }

    pub fn workload_spec(mut self, w: WorkloadSpec) -> Self {
        self.workloads.push(w);
        self
    }

    pub fn service(mut self, s: ServiceSpec) -> Self {
        self.services.push(s);
        self
    }

    /// An extra identity for this uid (e.g. an Envoy's), besides the workloads'.
    pub fn identity(mut self, spiffe_id: &str) -> Self {
        self.identities.push(spiffe_id.into());
        self
    }

    /// The agent's `--svid-ttl` (1h by default).
    pub fn svid_ttl(mut self, ttl: &str) -> Self {
        self.svid_ttl = ttl.into();
        self
    }

    /// A file in the config directory from the start (policies).
    pub fn config(mut self, file: &str, yaml: &str) -> Self {
        self.files.push((file.into(), yaml.into()));
        self
    }

    /// Extra `warden-proxy run` arguments for every proxy.
    pub fn proxy_args(mut self, args: &[&str]) -> Self {
        self.proxy_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An Istio MeshConfig YAML every proxy reads (`--mesh-config`).
    pub fn mesh_config(mut self, yaml: &str) -> Self {
        self.mesh_config = Some(yaml.into());
        self
    }

    /// Extra `warden-agent run` arguments.
    /// Extra `warden-ca run` flags.
    pub fn ca_args(mut self, args: &[&str]) -> Self {
        self.ca_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn agent_args(mut self, args: &[&str]) -> Self {
        self.agent_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts everything; returns once every proxy is ready.
    pub fn start(self) -> Mesh {
        Mesh::start(self)
    }
}

/// A running `warden-proxy` and the log lines it wrote.
#[derive(Debug)]
pub struct ProxyProcess {
    pub child: Child,
    log: mpsc::Receiver<String>,
    /// Every line so far.
    lines: Vec<String>,
    /// Lines before this were matched by a wait already.
    cursor: usize,
}

impl ProxyProcess {
    fn pump(&mut self) {
        self.lines.extend(self.log.try_iter());
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running application.
#[derive(Debug)]
struct AppProcess {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running mesh; see the module docs. Fields drop in order: proxies, applications,
/// agent, CA, then the temporary directory.
#[derive(Debug)]
pub struct Mesh {
    proxies: Mutex<BTreeMap<String, ProxyProcess>>,
    /// Kept to be killed on drop.
    apps: Mutex<Vec<AppProcess>>,
    pub agent: Mutex<AgentProcess>,
    pub ca: Mutex<CaProcess>,
    pub workloads: BTreeMap<String, Workload>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// The runtime the async helpers run on.
    pub rt: tokio::runtime::Runtime,
    /// Where the agent writes each SVID (`<dir>/ns/<ns>/sa/<sa>/cert-chain.pem`).
    pub svid_dir: PathBuf,
    pub config_dir: PathBuf,
    /// What the mesh wrote to [`MESH_FILE`] in `config_dir`.
    pub mesh_yaml: String,
    /// The agent's SDS socket.
    pub sds_socket: PathBuf,
    proxy_args: Vec<String>,
    pub dir: tempfile::TempDir,
    /// The claim on the mesh's subnet (see `pick_subnet`), released last.
    _subnet_lock: std::fs::File,
}

/// A `127.A.B.0/24` no other mesh uses now: `A` in 1..=254, claimed by an exclusive
/// lock on `$TMPDIR/warden-test-subnets/127.A.B.lock` that the mesh holds until it is
/// dropped (so meshes in parallel threads and test binaries never share a subnet,
/// whatever the timing), and `.2:15006`, `.2:15001` and `.2:15021` bindable (so no
/// process outside the tests sits there). The lock goes with its process, even a
/// killed one.
fn pick_subnet() -> ((u8, u8), std::fs::File) {
    let locks = std::env::temp_dir().join("warden-test-subnets");
    std::fs::create_dir_all(&locks).unwrap();
    for _ in 0..100 {
        let [a, b] = random_bytes::<2>();
        if a == 0 || a == 255 {
            continue;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(locks.join(format!("127.{a}.{b}.lock")))
            .unwrap();
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => panic!("locking subnet 127.{a}.{b}: {e}"),
        }
        let free = [INBOUND_PORT, OUTBOUND_PORT, HEALTH_PORT].iter().all(|p| {
            std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::new(127, a, b, 2), *p))).is_ok()
        });
        if free {
            return ((a, b), lock);
        }
    }
    panic!("no free 127.A.B.0/24 after 100 tries");
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            workloads: Vec::new(),
            services: Vec::new(),
            identities: Vec::new(),
            svid_ttl: "1h".into(),
            files: Vec::new(),
            proxy_args: Vec::new(),
            mesh_config: None,
            agent_args: Vec::new(),
            ca_args: Vec::new(),
        }
    }

    fn start(b: MeshBuilder) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();

        // Addresses and application ports.
        let ((a, bb), subnet_lock) = pick_subnet();
        let mut workloads = BTreeMap::new();
        assert!(b.workloads.len() <= 248, "at most 248 workloads in a mesh");
        for (host, spec) in (2u8..).zip(&b.workloads) {
            let ip = Ipv4Addr::new(127, a, bb, host);
            let mut ports = BTreeMap::new();
            for s in b.services.iter().filter(|s| s.selects(spec)) {
                for p in &s.ports {
                    ports.insert(p.name.clone(), p.target());
                }
            }
            let w = Workload {
                spec: spec.clone(),
                ip,
                ports,
            };
            assert!(
                workloads.insert(spec.name.clone(), w).is_none(),
                "two workloads named {}",
                spec.name
            );
        }

        // CA, entries for every identity, agent.
        let ca_args: Vec<&str> = b.ca_args.iter().map(String::as_str).collect();
        let ca = CaProcess::start(&dir.path().join("ca"), &ca_args);
        let uid = format!("unix:uid:{}", my_uid());
        let mut ids: Vec<String> = workloads.values().map(Workload::spiffe_id).collect();
        ids.extend(b.identities.iter().cloned());
        ids.sort();
        ids.dedup();
        for id in &ids {
            ca.entry("node-a", id, &[&uid]);
        }
        let svid_dir = dir.path().join("svids");
        let mut agent_args: Vec<&str> = vec![
            "--svid-ttl",
            &b.svid_ttl,
            "--sync-interval",
            "1s",
            "--write-dir",
            svid_dir.to_str().unwrap(),
        ];
        agent_args.extend(b.agent_args.iter().map(String::as_str));
        let agent = AgentProcess::start_node(&ca, &dir.path().join("agent"), "node-a", &agent_args);
        agent.wait_ready();
        let sds_socket = agent.socket.clone();

        // Config directory.
        let mut proxy_args = b.proxy_args.clone();
        if let Some(yaml) = &b.mesh_config {
            let path = dir.path().join("mesh-config.yaml");
            write_atomic(&path, yaml);
            proxy_args.push("--mesh-config".into());
            proxy_args.push(path.to_string_lossy().into_owned());
        }
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        let mesh_yaml = mesh_yaml(&workloads, &b.services);
        write_atomic(&config_dir.join(MESH_FILE), &mesh_yaml);
        for (file, yaml) in &b.files {
            write_atomic(&config_dir.join(file), yaml);
        }

        // Applications.
        let mut apps = Vec::new();
        for w in workloads.values().filter(|w| w.spec.apps) {
            for s in b.services.iter().filter(|s| s.selects(&w.spec)) {
                for p in &s.ports {
                    let addr = w.addr(p.target()).to_string();
                    let mut cmd = Command::new(bin("warden-test-app"));
                    match p.protocol {
                        Protocol::Tcp => cmd.args(["tcp", &addr]),
                        _ => cmd.args(["http", &addr, "--name", &w.spec.name]),
                    };
                    let (child, log) = spawn_logged(cmd);
                    apps.push(AppProcess { child, log });
                }
            }
        }
        for app in &apps {
            crate::wait_message(&app.log, "serving", Duration::from_secs(10));
        }

        let mesh = Self {
            proxies: Mutex::new(BTreeMap::new()),
            apps: Mutex::new(apps),
            agent: Mutex::new(agent),
            ca: Mutex::new(ca),
            workloads,
            services: b
                .services
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            rt,
            svid_dir,
            config_dir,
            mesh_yaml,
            sds_socket,
            proxy_args,
            dir,
            _subnet_lock: subnet_lock,
        };
        let names: Vec<String> = mesh
            .workloads
            .values()
            .filter(|w| w.spec.proxy)
            .map(|w| w.spec.name.clone())
            .collect();
        for name in &names {
            mesh.spawn_proxy(name, &[]);
        }
        for name in &names {
            mesh.wait_proxy_ready(name);
        }
        mesh
    }

    /// The workload called `name`.
    pub fn workload(&self, name: &str) -> &Workload {
        self.workloads
            .get(name)
            .unwrap_or_else(|| panic!("no workload {name}"))
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> &ServiceSpec {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// `http://<host>:<port><path>` of service `name`'s port `port_name`.
    pub fn url(&self, service: &str, port_name: &str, path: &str) -> String {
        let s = self.service(service);
        let p = s
            .ports
            .iter()
            .find(|p| p.name == port_name)
            .unwrap_or_else(|| panic!("service {service} has no port {port_name}"));
        format!("http://{}:{}{path}", s.host, p.number)
    }

    /// The `warden-proxy run` command line for workload `name` with `config_dir` and
    /// `sds_socket`.
    pub fn proxy_command(
        &self,
        name: &str,
        config_dir: &Path,
        sds_socket: &Path,
        extra: &[&str],
    ) -> Command {
        let w = self.workload(name);
        let mut cmd = Command::new(bin("warden-proxy"));
        cmd.arg("run")
            .arg("--config-dir")
            .arg(config_dir)
            .args(["--workload", &w.spec.name, "--namespace", &w.spec.namespace])
            .arg("--sds-socket")
            .arg(sds_socket)
            .args(["--log-format", "json"])
            .args(&self.proxy_args)
            .args(extra);
        cmd
    }

    /// Starts workload `name`'s proxy (killing a previous one first) without waiting.
    pub fn spawn_proxy(&self, name: &str, extra: &[&str]) {
        self.spawn_proxy_in(name, &self.config_dir, extra);
    }

    /// Like [`Mesh::spawn_proxy`] with another config directory (a proxy whose view of
    /// the mesh differs from the others').
    pub fn spawn_proxy_in(&self, name: &str, config_dir: &Path, extra: &[&str]) {
        self.spawn_proxy_with(name, config_dir, &self.sds_socket.clone(), extra);
    }

    /// Like [`Mesh::spawn_proxy`] with another config directory and SDS socket.
    pub fn spawn_proxy_with(
        &self,
        name: &str,
        config_dir: &Path,
        sds_socket: &Path,
        extra: &[&str],
    ) {
        drop(self.proxies.lock().unwrap().remove(name));
        let cmd = self.proxy_command(name, config_dir, sds_socket, extra);
        let (child, log) = spawn_logged(cmd);
        let p = ProxyProcess {
            child,
            log,
            lines: Vec::new(),
            cursor: 0,
        };
        self.proxies.lock().unwrap().insert(name.to_string(), p);
    }

    /// Waits for the proxy's `ready` log line and 200 from its `/ready`.
    pub fn wait_proxy_ready(&self, name: &str) {
        self.wait_proxy_log(name, Duration::from_secs(30), |v| v["message"] == "ready")
            .unwrap_or_else(|lines| {
                panic!(
                    "proxy {name} did not log \"ready\" within 30 s; it logged:\n{}",
                    lines.join("\n")
                )
            });
        let health = self.workload(name).health().to_string();
        eventually(
            format_args!("proxy {name}, which logged ready, to answer 200 on {health}/ready"),
            Duration::from_secs(10),
            || match try_http_get(&health, "/ready") {
                Ok((200, _)) => Ok(()),
                other => Err(other.map(|r| r.0)),
            },
        );
    }

    /// Runs `f` on workload `name`'s proxy.
    pub fn with_proxy<T>(&self, name: &str, f: impl FnOnce(&mut ProxyProcess) -> T) -> T {
        let mut proxies = self.proxies.lock().unwrap();
        let p = proxies
            .get_mut(name)
            .unwrap_or_else(|| panic!("no running proxy for {name}"));
        f(p)
    }

    /// Starts an application no one here wrote (a Python `http.server`, a grpcio
    /// server, ...) that logs `{"message": "serving"}` on stderr when it listens; it is
    /// killed with the mesh.
    pub fn spawn_app(&self, cmd: Command) {
        let (child, log) = spawn_logged(cmd);
        crate::wait_message(&log, "serving", Duration::from_secs(20));
        self.apps.lock().unwrap().push(AppProcess { child, log });
    }

    /// Every JSON line the applications started by [`Mesh::spawn_app`] logged since the
    /// last call.
    pub fn app_log(&self) -> Vec<serde_json::Value> {
        let apps = self.apps.lock().unwrap();
        apps.iter()
            .flat_map(|a| a.log.try_iter().collect::<Vec<_>>())
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// Takes workload `name`'s proxy out of the mesh (to stop it by hand).
    pub fn take_proxy(&self, name: &str) -> ProxyProcess {
        self.proxies
            .lock()
            .unwrap()
            .remove(name)
            .unwrap_or_else(|| panic!("no running proxy for {name}"))
    }

    /// Every line proxy `name` logged so far.
    pub fn proxy_log(&self, name: &str) -> Vec<String> {
        self.with_proxy(name, |p| {
            p.pump();
            p.lines.clone()
        })
    }

    /// Every JSON line proxy `name` logged so far.
    pub fn proxy_json(&self, name: &str) -> Vec<serde_json::Value> {
        self.proxy_log(name)
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Moves proxy `name`'s wait cursor past everything logged so far.
    pub fn mark_proxy_log(&self, name: &str) {
        self.with_proxy(name, |p| {
            p.pump();
            p.cursor = p.lines.len();
        });
    }

    /// Waits for a JSON line from proxy `name` (after its wait cursor) that matches;
    /// moves the cursor past it. `Err` with every line since the cursor on timeout or
    /// if the proxy exits.
    pub fn wait_proxy_log(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, Vec<String>> {
        let waited = try_eventually(
            format_args!("a matching log line from proxy {name}"),
            timeout,
            Duration::from_millis(20),
            || {
                self.with_proxy(name, |p| {
                    p.pump();
                    for i in p.cursor..p.lines.len() {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&p.lines[i])
                            && pred(&v)
                        {
                            p.cursor = i + 1;
                            return Ok(Ok(v));
                        }
                    }
                    match p.child.try_wait().unwrap() {
                        // Stop waiting: nothing more will come.
                        Some(status) => Ok(Err(status)),
                        None => Err("no such line yet"),
                    }
                })
            },
        );
        let exited = match waited {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(status)) => Some(status),
            Err(_) => None,
        };
        if exited.is_some() {
            // Its last words.
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut lines = self.with_proxy(name, |p| {
            p.pump();
            p.lines[p.cursor..].to_vec()
        });
        if let Some(status) = exited {
            lines.push(format!("(proxy {name} exited: {status})"));
        }
        Err(lines)
    }

    /// Proxy `name`'s `/stats/prometheus`.
    pub fn metrics(&self, name: &str) -> String {
        let (code, body) = http_get(
            &self.workload(name).stats().to_string(),
            "/stats/prometheus",
        );
        assert_eq!(code, 200, "/stats/prometheus of {name}: {body}");
        body
    }

    /// The sum of `metric`'s samples at proxy `name` whose labels include `labels`.
    pub fn metric(&self, name: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(name), metric, labels)
    }

    /// `warden_config_generation` at proxy `name`.
    pub fn generation(&self, name: &str) -> f64 {
        self.metric(name, "warden_config_generation", &[])
    }

    /// Names of the workloads whose proxies run.
    pub fn running_proxies(&self) -> Vec<String> {
        self.proxies.lock().unwrap().keys().cloned().collect()
    }

    /// Writes `file` in the config directory atomically (no wait).
    pub fn write_config(&self, file: &str, yaml: &str) {
        write_atomic(&self.config_dir.join(file), yaml);
    }

    /// Removes `file` from the config directory (no wait).
    pub fn remove_config(&self, file: &str) {
        std::fs::remove_file(self.config_dir.join(file)).unwrap();
    }

    /// Writes `file` and waits until every running proxy's config generation moved
    /// past what it was (at most 10 s); returns how long that took.
    pub fn apply_config(&self, file: &str, yaml: &str) -> Duration {
        self.change_config(|| self.write_config(file, yaml))
    }

    /// Removes `file` and waits as [`Mesh::apply_config`] does.
    pub fn unapply_config(&self, file: &str) -> Duration {
        self.change_config(|| self.remove_config(file))
    }

    fn change_config(&self, change: impl FnOnce()) -> Duration {
        let names = self.running_proxies();
        let before: Vec<f64> = names.iter().map(|n| self.generation(n)).collect();
        let start = Instant::now();
        change();
        for (n, g) in names.iter().zip(before) {
            try_eventually(
                format_args!("proxy {n} to apply the config change (generation past {g})"),
                Duration::from_secs(10).saturating_sub(start.elapsed()),
                Duration::from_millis(20),
                || {
                    let now = self.generation(n);
                    if now > g { Ok(()) } else { Err(now) }
                },
            )
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.proxy_log(n).join("\n")));
        }
        start.elapsed()
    }

    /// The current leaf certificate (DER) the agent holds for `spiffe_id`, from its
    /// `--write-dir`.
    pub fn leaf_der(&self, spiffe_id: &str) -> Vec<u8> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let path = spiffe_id
            .strip_prefix(&format!("spiffe://{TRUST_DOMAIN}/"))
            .unwrap();
        let file = self.svid_dir.join(path).join("cert-chain.pem");
        let first = CertificateDer::pem_file_iter(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .next()
            .unwrap()
            .unwrap();
        first.to_vec()
    }

    /// Sends `req` to workload `client`'s outbound port.
    pub fn send(&self, client: &str, req: &Req) -> anyhow::Result<Resp> {
        self.send_to(self.workload(client).outbound(), req)
    }

    /// Sends `req` to `addr` (e.g. a server's inbound port, as a plaintext caller).
    pub fn send_to(&self, addr: SocketAddr, req: &Req) -> anyhow::Result<Resp> {
        self.rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, send(addr, req))
                .await
                .map_err(|_| anyhow::anyhow!("no response within {REQUEST_TIMEOUT:?}"))?
        })
    }

    /// GET `url` through workload `client`'s outbound port (HTTP/1.1, absolute-form);
    /// panics if no response comes.
    pub fn get(&self, client: &str, url: &str) -> Resp {
        self.send(client, &Req::get(url))
            .unwrap_or_else(|e| panic!("GET {url} from {client}: {e:#}"))
    }

    /// A unary gRPC call `/warden.test.Echo/Say` with tonic through workload `client`'s
    /// outbound port, with `:authority` `authority`.
    pub fn grpc_say(
        &self,
        client: &str,
        authority: &str,
        msg: &[u8],
    ) -> Result<Bytes, tonic::Status> {
        let addr = self.workload(client).outbound();
        self.rt.block_on(async {
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                grpc_say(addr, authority, Bytes::copy_from_slice(msg)),
            )
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("test timeout")))
        })
    }

    /// A TCP connection to workload `client`'s outbound listener for a TCP service port.
    pub fn tcp_connect(&self, client: &str, port: u16) -> std::io::Result<TcpStream> {
        let s =
            TcpStream::connect_timeout(&self.workload(client).addr(port), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    }

    /// Sends SIGTERM to proxy `name` and waits for it to exit; its exit code and log.
    pub fn sigterm_proxy(&self, name: &str) -> (Option<i32>, Vec<String>) {
        let mut p = self.take_proxy(name);
        let code = crate::sigterm(&mut p.child);
        std::thread::sleep(Duration::from_millis(50));
        p.pump();
        (code, p.lines.clone())
    }

    /// Forwards every TCP connection to `from` to `to`, byte for byte, until the mesh
    /// is dropped: an endpoint that leads somewhere else than its `WorkloadEntry` says
    /// (for secure-naming tests).
    pub fn relay(&self, from: SocketAddr, to: SocketAddr) {
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(from))
            .unwrap_or_else(|e| panic!("relay on {from}: {e}"));
        self.rt.spawn(async move {
            while let Ok((mut a, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
    }

    /// The CA's authorities, from `warden ca authority list --json`.
    pub fn authorities(&self) -> Vec<serde_json::Value> {
        let out = crate::ok(
            self.ca
                .lock()
                .unwrap()
                .warden(&["ca", "authority", "list", "--json"]),
        );
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `warden ca authority ARGS --json`: one step of a rotation; its JSON answer.
    pub fn authority_step(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["ca", "authority"];
        all.extend_from_slice(args);
        all.push("--json");
        let out = crate::ok(self.ca.lock().unwrap().warden(&all));
        serde_json::from_str(out.trim()).unwrap()
    }

    /// Lines the agent logged since the last call (JSON).
    pub fn agent_log(&self) -> Vec<serde_json::Value> {
        let agent = self.agent.lock().unwrap();
        agent
            .log
            .try_iter()
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }
}
