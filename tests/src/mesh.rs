//! A local mesh for the proxy's end-to-end tests: a real `warden-ca` and `warden-agent`
//! (node mode, join token), one loopback address per workload, a config directory of
//! Istio YAML (a `WorkloadEntry` per workload, a `MESH_INTERNAL` `ServiceEntry` per
//! service, and the policies a test gives), a `warden-test-app` per application port
//! and a `warden-proxy` per workload. Everything is killed on drop.
//!
//! The test process's uid is every workload: the agent has an entry with
//! `unix:uid:<uid>` for each workload's `spiffe://cluster.local/ns/<ns>/sa/<sa>` (and
//! for any extra identity a test asks for), and each proxy asks SDS for its own ID by
//! name.
//!
//! Addresses: each mesh takes a random `127.A.B.0/24` (never `127.0.0.0/24`), checked
//! free, and gives workloads `.2`, `.3`, ... so tests in parallel threads and parallel
//! test binaries do not collide; every proxy uses the default ports (15001 outbound,
//! 15006 inbound, 15020 stats, 15021 health) on its own address. An application port
//! is the service port plus [`APP_PORT_OFFSET`] (the `targetPort` and the
//! `WorkloadEntry` port), so an application never sits on a port a proxy binds for a
//! TCP service.
//!
//! Also here: an HTTP/1.1 and h2c client ([`Req`], [`send`]), a gRPC client over tonic
//! with a raw-bytes codec ([`grpc_say`]), a WebSocket client ([`WsClient`]) and the
//! frame codec the test application shares ([`ws`]), and a Prometheus text reader
//! ([`metric_sum`]).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // test support: panics are failures

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{AgentProcess, CaProcess, bin, http_get, my_uid, spawn_logged};

/// The trust domain of the mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// An application listens on its service port plus this.
pub const APP_PORT_OFFSET: u16 = 10000;
/// The proxy's ports (its defaults).
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const STATS_PORT: u16 = 15020;
pub const HEALTH_PORT: u16 = 15021;
/// The file of `WorkloadEntry`s and `ServiceEntry`s in the config directory.
pub const MESH_FILE: &str = "00-mesh.yaml";
/// How long a request made by the helpers may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

/// A service port's protocol (`ServiceEntry.spec.ports[].protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// Istio's name.
    pub fn istio(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Tcp => "TCP",
        }
    }
}

/// A service port.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub number: u16,
    pub protocol: Protocol,
}

impl Port {
    /// The port the application listens on (`targetPort`).
    pub fn target(&self) -> u16 {
        self.number + APP_PORT_OFFSET
    }
}

/// A workload: a `WorkloadEntry`, the applications behind it and (unless `proxy` is
/// false) a `warden-proxy`.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// `spec.labels` (and `metadata.labels`); `app: <name>` by default.
    pub labels: BTreeMap<String, String>,
    /// Run a `warden-proxy` for it.
    pub proxy: bool,
    /// Run `warden-test-app` on each of its application ports.
    pub apps: bool,
}

impl WorkloadSpec {
    pub fn new(name: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            proxy: true,
            apps: true,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn without_proxy(mut self) -> Self {
        self.proxy = false;
        self
    }

    pub fn without_apps(mut self) -> Self {
        self.apps = false;
        self
    }
}

/// A `MESH_INTERNAL` `ServiceEntry` with a `workloadSelector`.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    /// `<name>.<namespace>.svc.cluster.local` by default.
    pub host: String,
    pub ports: Vec<Port>,
    /// `app: <name>` by default.
    pub selector: BTreeMap<String, String>,
    pub subject_alt_names: Vec<String>,
}

impl ServiceSpec {
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            host: format!("{name}.{namespace}.svc.cluster.local"),
            ports: Vec::new(),
            selector: BTreeMap::from([("app".to_string(), name.to_string())]),
            subject_alt_names: Vec::new(),
        }
    }

    pub fn port(mut self, name: &str, number: u16, protocol: Protocol) -> Self {
        self.ports.push(Port {
            name: name.into(),
            number,
            protocol,
        });
        self
    }

    pub fn http(self, number: u16) -> Self {
        self.port("http", number, Protocol::Http)
    }

    pub fn grpc(self, number: u16) -> Self {
        self.port("grpc", number, Protocol::Grpc)
    }

    pub fn tcp(self, number: u16) -> Self {
        self.port("tcp", number, Protocol::Tcp)
    }

    pub fn select(mut self, labels: &[(&str, &str)]) -> Self {
        self.selector = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    pub fn subject_alt_name(mut self, id: &str) -> Self {
        self.subject_alt_names.push(id.into());
        self
    }

    /// `http://<host>:<port>`.
    pub fn url(&self, port: u16) -> String {
        format!("http://{}:{port}", self.host)
    }

    fn selects(&self, w: &WorkloadSpec) -> bool {
        w.namespace == self.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
    }
}

/// What a test knows of a running workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub spec: WorkloadSpec,
    pub ip: Ipv4Addr,
    /// Port name → application port.
    pub ports: BTreeMap<String, u16>,
}

impl Workload {
    pub fn spiffe_id(&self) -> String {
        spiffe_id(&self.spec.namespace, &self.spec.service_account)
    }
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
    pub fn outbound(&self) -> SocketAddr {
        self.addr(OUTBOUND_PORT)
    }
    pub fn inbound(&self) -> SocketAddr {
        self.addr(INBOUND_PORT)
    }
    pub fn stats(&self) -> SocketAddr {
        self.addr(STATS_PORT)
    }
    pub fn health(&self) -> SocketAddr {
        self.addr(HEALTH_PORT)
    }
}

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
}

/// A random byte from ring's generator.
fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

/// A `127.A.B.0/24` no other mesh uses now: `A` in 1..=254, and `.2:15006` and
/// `.2:15001` bindable. (A mesh elsewhere that picked the same subnet and has not bound
/// yet is a 1-in-65k chance per concurrent mesh.)
fn pick_subnet() -> (u8, u8) {
    for _ in 0..100 {
        let [a, b] = random_bytes::<2>();
        if a == 0 || a == 255 {
            continue;
        }
        let free = [INBOUND_PORT, OUTBOUND_PORT, HEALTH_PORT].iter().all(|p| {
            std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::new(127, a, b, 2), *p))).is_ok()
        });
        if free {
            return (a, b);
        }
    }
    panic!("no free 127.A.B.0/24 after 100 tries");
}

fn yaml_map(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).unwrap()
}

/// The `WorkloadEntry`s and `ServiceEntry`s of the mesh.
fn mesh_yaml(workloads: &BTreeMap<String, Workload>, services: &[ServiceSpec]) -> String {
    let mut docs = Vec::new();
    for w in workloads.values() {
        let ports: BTreeMap<String, u16> = w.ports.clone();
        docs.push(format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {}\nspec:\n  address: {}\n  serviceAccount: {}\n  labels: {}\n  ports: {}\n",
            w.spec.name,
            w.spec.namespace,
            yaml_map(&w.spec.labels),
            w.ip,
            w.spec.service_account,
            yaml_map(&w.spec.labels),
            serde_json::to_string(&ports).unwrap(),
        ));
    }
    for s in services {
        let ports: Vec<serde_json::Value> = s
            .ports
            .iter()
            .map(|p| {
                serde_json::json!({"number": p.number, "name": p.name,
                    "protocol": p.protocol.istio(), "targetPort": p.target()})
            })
            .collect();
        let mut doc = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  hosts: [{}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: {}\n  workloadSelector:\n    labels: {}\n",
            s.name,
            s.namespace,
            serde_json::to_string(&s.host).unwrap(),
            serde_json::to_string(&ports).unwrap(),
            yaml_map(&s.selector),
        );
        if !s.subject_alt_names.is_empty() {
            doc.push_str(&format!(
                "  subjectAltNames: {}\n",
                serde_json::to_string(&s.subject_alt_names).unwrap()
            ));
        }
        docs.push(doc);
    }
    docs.join("---\n")
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
        let (a, bb) = pick_subnet();
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
        let ca = CaProcess::start(&dir.path().join("ca"), &[]);
        let uid = format!("unix:uid:{}", my_uid());
        let mut ids: Vec<String> = workloads.values().map(Workload::spiffe_id).collect();
        ids.extend(b.identities.iter().cloned());
        ids.sort();
        ids.dedup();
        for id in &ids {
            ca.entry("node-a", id, &[&uid]);
        }
        let token = ca.join_token("node-a");
        let svid_dir = dir.path().join("svids");
        let mut agent_args: Vec<&str> = vec![
            "--node-name",
            "node-a",
            "--join-token",
            &token,
            "--svid-ttl",
            &b.svid_ttl,
            "--sync-interval",
            "1s",
            "--write-dir",
            svid_dir.to_str().unwrap(),
        ];
        agent_args.extend(b.agent_args.iter().map(String::as_str));
        let agent = AgentProcess::start(&ca, &dir.path().join("agent"), &agent_args);
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let code = try_http_get(&health, "/ready").map(|r| r.0);
            if code.as_ref().is_ok_and(|c| *c == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy {name} logged ready but {health}/ready answers {code:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
        let deadline = Instant::now() + timeout;
        loop {
            let (found, exited) = self.with_proxy(name, |p| {
                p.pump();
                for i in p.cursor..p.lines.len() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&p.lines[i])
                        && pred(&v)
                    {
                        p.cursor = i + 1;
                        return (Ok(v), None);
                    }
                }
                let exited = p.child.try_wait().unwrap();
                (Err(p.lines[p.cursor..].to_vec()), exited)
            });
            match found {
                Ok(v) => return Ok(v),
                Err(mut lines) => {
                    if let Some(status) = exited {
                        std::thread::sleep(Duration::from_millis(100));
                        lines = self.with_proxy(name, |p| {
                            p.pump();
                            p.lines[p.cursor..].to_vec()
                        });
                        lines.push(format!("(proxy {name} exited: {status})"));
                        return Err(lines);
                    }
                    if Instant::now() > deadline {
                        return Err(lines);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
            loop {
                let now = self.generation(n);
                if now > g {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "proxy {n} did not apply the config change within 10 s (generation {now}); log:\n{}",
                    self.proxy_log(n).join("\n")
                );
                std::thread::sleep(Duration::from_millis(20));
            }
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

/// What a raw HTTP/1 exchange got back: every byte until the proxy closed the
/// connection or went quiet for `quiet`, and whether it closed.
#[derive(Debug)]
pub struct Raw {
    pub text: String,
    pub closed: bool,
}

impl Raw {
    /// The status codes of the responses, in order (a status line may follow the
    /// previous response's body directly).
    pub fn statuses(&self) -> Vec<u16> {
        let t = self.text.as_bytes();
        (0..t.len())
            .filter(|&i| t[i..].starts_with(b"HTTP/1.1 ") || t[i..].starts_with(b"HTTP/1.0 "))
            .filter_map(|i| {
                let code = t.get(i + 9..i + 12)?;
                (t.get(i + 12) == Some(&b' ') && code.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(code).ok()?.parse().ok())
                    .flatten()
            })
            .collect()
    }
}

/// Writes `bytes` to `addr` as they are (a client that may break every rule) and reads
/// until the peer closes or nothing arrives for `quiet`.
pub fn raw_http(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Raw {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(quiet)).unwrap();
    // A proxy may refuse and close before reading everything: that is an answer too.
    let _ = s.write_all(bytes);
    read_until_quiet(&mut s)
}

/// Reads from `s` until it closes or a read times out.
pub fn read_until_quiet(s: &mut TcpStream) -> Raw {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    Raw {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// The last `n` of `lines`, one per line (for failure messages).
pub fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// GET over plain HTTP/1.1, `Err` instead of a panic when nothing listens.
pub fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    crate::envoy::http(addr, path)
}

/// The sum of `metric`'s samples in Prometheus text `text` whose labels include all of
/// `labels` (0 if none).
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(metric)?;
            let (have, value) = if let Some(r) = rest.strip_prefix('{') {
                let (inner, value) = r.rsplit_once('}')?;
                (parse_labels(inner), value)
            } else if rest.starts_with(' ') {
                (BTreeMap::new(), rest)
            } else {
                return None;
            };
            let ok = labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v));
            if !ok {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `a="x",b="y\"z"` → map.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

/// How a [`Req`] goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 with an absolute-form request target (a forward-proxy request).
    Absolute,
    /// HTTP/1.1, origin-form with a `Host` header (as an intercepted request).
    Origin,
    /// HTTP/2 with prior knowledge, `:authority` from the URL.
    H2c,
}

/// An HTTP request for [`send`].
#[derive(Debug, Clone)]
pub struct Req {
    pub method: http::Method,
    /// `http://host:port/path?query`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub wire: Wire,
}

impl Req {
    pub fn get(url: &str) -> Self {
        Self {
            method: http::Method::GET,
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            wire: Wire::Absolute,
        }
    }

    pub fn post(url: &str, body: impl Into<Bytes>) -> Self {
        Self {
            method: http::Method::POST,
            body: body.into(),
            ..Self::get(url)
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    pub fn h2c(self) -> Self {
        self.wire(Wire::H2c)
    }

    pub fn origin_form(self) -> Self {
        self.wire(Wire::Origin)
    }
}

/// An HTTP response, read to the end.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the test application's echo); panics showing the response
    /// otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?} {}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    /// A header the application saw (from its JSON echo).
    pub fn app_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(String::from)
    }
}

/// Sends `req` on a new connection to `addr`.
pub async fn send(addr: SocketAddr, req: &Req) -> anyhow::Result<Resp> {
    let uri: http::Uri = req.url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{} has no authority", req.url))?
        .to_string();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(tcp);
    let mut b = http::Request::builder().method(req.method.clone());
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = Full::new(req.body.clone());
    let resp = match req.wire {
        Wire::H2c => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            let r = b.uri(uri).version(http::Version::HTTP_2).body(body)?;
            sender.send_request(r).await?
        }
        Wire::Absolute | Wire::Origin => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn.with_upgrades());
            let target: http::Uri = if req.wire == Wire::Absolute {
                uri
            } else {
                uri.path_and_query().map_or("/", |p| p.as_str()).parse()?
            };
            let has_host = req
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("host"));
            if !has_host {
                b = b.header("host", authority);
            }
            let r = b.uri(target).body(body)?;
            sender.send_request(r).await?
        }
    };
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// gRPC messages as raw bytes, so a test needs no generated code.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf as _;
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// `/warden.test.Echo/Say` with tonic over h2c to `addr` (a proxy's outbound port),
/// with `:authority` `authority` (`host:port` of the service).
pub async fn grpc_say(
    addr: SocketAddr,
    authority: &str,
    msg: Bytes,
) -> Result<Bytes, tonic::Status> {
    let unavailable = |e: &dyn std::fmt::Display| tonic::Status::unavailable(e.to_string());
    let origin: http::Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| unavailable(&e))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unavailable(&e))?
        .origin(origin)
        .connect()
        .await
        .map_err(|e| unavailable(&e))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| unavailable(&e))?;
    let path = http::uri::PathAndQuery::from_static("/warden.test.Echo/Say");
    grpc.unary(tonic::Request::new(msg), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A minimal RFC 6455 frame codec (shared by the test application and [`WsClient`]).
pub mod ws {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;

    /// The GUID of RFC 6455 section 1.3.
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

    /// A frame, unmasked.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Frame {
        pub fin: bool,
        pub opcode: u8,
        pub payload: Vec<u8>,
    }

    /// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
    pub fn accept_key(key: &str) -> String {
        use base64::Engine as _;
        let d = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{key}{GUID}").as_bytes(),
        );
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    }

    /// A frame on the wire; masked with `mask` (clients must mask).
    pub fn encode(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// The first complete frame in `buf` and how many bytes it took, unmasked; `None`
    /// if `buf` holds less than a frame.
    pub fn decode(buf: &[u8]) -> Option<(Frame, usize)> {
        if buf.len() < 2 {
            return None;
        }
        let fin = buf[0] & 0x80 != 0;
        let opcode = buf[0] & 0x0f;
        let masked = buf[1] & 0x80 != 0;
        let (len, mut at) = match buf[1] & 0x7f {
            126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
            127 => {
                let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
                (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
            }
            n => (n as usize, 2),
        };
        let mask = if masked {
            let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(k)
        } else {
            None
        };
        let data = buf.get(at..at + len)?;
        let payload = match mask {
            Some(k) => data.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
            None => data.to_vec(),
        };
        Some((
            Frame {
                fin,
                opcode,
                payload,
            },
            at + len,
        ))
    }
}

/// A WebSocket client over a blocking TCP stream.
#[derive(Debug)]
pub struct WsClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The response head of the upgrade.
    pub response_head: String,
}

impl WsClient {
    /// Connects to `addr`, sends an upgrade for `url` (origin-form, `Host` from the URL,
    /// or absolute-form when `absolute`), checks the `101` and its
    /// `Sec-WebSocket-Accept`. `Err` with the response head on any other answer.
    pub fn connect(addr: SocketAddr, url: &str, absolute: bool) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let host = uri.authority().unwrap().to_string();
        let target = if absolute {
            url.to_string()
        } else {
            uri.path_and_query().map_or("/", |p| p.as_str()).to_string()
        };
        let key = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>())
        };
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed before a response head: {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    return Err(format!(
                        "reading the response head: {e}; got {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let rest = buf[head_end..].to_vec();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!("not switched: {head}"));
        }
        let accept = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("sec-websocket-accept")
                    .then(|| v.trim().to_string())
            })
            .ok_or_else(|| format!("no Sec-WebSocket-Accept: {head}"))?;
        if accept != ws::accept_key(&key) {
            return Err(format!(
                "Sec-WebSocket-Accept {accept} is not {} : {head}",
                ws::accept_key(&key)
            ));
        }
        Ok(Self {
            stream,
            buf: rest,
            response_head: head,
        })
    }

    /// Sends a masked frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&ws::encode(
            opcode,
            true,
            payload,
            Some(random_bytes::<4>()),
        ))
    }

    /// Reads the next frame.
    pub fn recv(&mut self) -> std::io::Result<ws::Frame> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((f, used)) = ws::decode(&self.buf) {
                self.buf.drain(..used);
                return Ok(f);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a frame",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Writes `msg` on `s` and reads back as many bytes; `Err` (or fewer bytes) when the
/// peer closes instead of echoing.
pub fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut back = Vec::new();
    let mut chunk = [0u8; 4096];
    while back.len() < msg.len() {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        back.extend_from_slice(&chunk[..n]);
    }
    Ok(back)
}
