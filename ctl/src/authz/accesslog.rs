//! The proxy's JSON access log as `warden authz replay` and `suggest` read it: one
//! object per line (Istio's JSON fields plus Warden's `direction`, principals,
//! workloads and `authz_*`), streamed line by line; the registry (WorkloadEntries) that
//! gives a line's destination workload its labels; and the path patterns both commands
//! group by.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;
use warden_policy::authz::{HttpRequest, Protocol, Request, Workload};
use warden_policy::loader::ConfigSet;
use warden_policy::normalize::path_only;

/// The longest line read; a longer one is a bad line (and memory stays bounded).
const MAX_LINE: u64 = 1 << 20;

/// Which side of a request a line was logged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The server's sidecar: it decided the request.
    Inbound,
    /// The client's sidecar: no decision (the server logged one).
    Outbound,
    /// An ingress gateway: it decided with the gateway workload's policies.
    Gateway,
}

/// The fields of a line the commands read; others are ignored (the proxy may add some).
#[derive(Debug, Default, Deserialize)]
struct RawLine {
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    downstream_local_address: Option<String>,
    #[serde(default)]
    downstream_remote_address: Option<String>,
    #[serde(default)]
    requested_server_name: Option<String>,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    source_principal: Option<String>,
    #[serde(default)]
    destination_workload: Option<String>,
    #[serde(default)]
    destination_namespace: Option<String>,
    #[serde(default)]
    destination_service: Option<String>,
    #[serde(default)]
    destination_port: Option<u16>,
    #[serde(default)]
    request_principal: Option<String>,
    #[serde(default)]
    authz_decision: Option<String>,
    #[serde(default)]
    authz_policy: Option<String>,
    #[serde(default)]
    authz_rule: Option<u64>,
}

/// One line, checked: an inbound or gateway line with a decision has everything the
/// engine's request needs.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Inbound, outbound or gateway.
    pub direction: Direction,
    /// `start_time` as logged.
    pub start_time: String,
    /// `request_id`.
    pub request_id: Option<String>,
    /// The peer identity without `spiffe://`; `None`: plaintext.
    pub source_principal: Option<String>,
    /// `downstream_remote_address`.
    pub source: Option<SocketAddr>,
    /// `downstream_local_address`.
    pub local: Option<SocketAddr>,
    /// `destination_port`.
    pub port: Option<u16>,
    /// `(method, path)` of an HTTP request (the path as logged, query included);
    /// `None`: TCP.
    pub http: Option<(String, String)>,
    /// `authority`.
    pub authority: Option<String>,
    /// `requested_server_name`.
    pub sni: Option<String>,
    /// `request_principal` (`iss/sub` of an accepted JWT).
    pub request_principal: Option<String>,
    /// `destination_namespace`, `destination_workload`.
    pub destination_workload: Option<(String, String)>,
    /// `destination_service`.
    pub destination_service: Option<String>,
    /// `authz_decision`: `Some(true)` allow, `Some(false)` deny, `None` not evaluated.
    pub recorded: Option<bool>,
    /// `authz_policy` (and `authz_rule`) of the recorded decision.
    pub recorded_policy: Option<String>,
}

impl Entry {
    /// The path without its query (what path rules match), if HTTP.
    pub fn path(&self) -> Option<&str> {
        self.http.as_ref().map(|(_, p)| path_only(p))
    }

    /// The destination as the line names it, for lines whose workload is unknown.
    pub fn logged_destination(&self) -> String {
        if let Some((ns, name)) = &self.destination_workload {
            return format!("{ns}/{name}");
        }
        if let Some(s) = &self.destination_service {
            return s.clone();
        }
        self.local
            .map_or_else(|| "(unknown)".to_string(), |a| a.to_string())
    }

    /// The request as the proxy builds it for the policy engine (proxy/src/inbound.rs
    /// `policy_request`, proxy/src/http.rs `policy_request`): the peer's principal
    /// without `spiffe://`, the peer and local addresses, the workload port, the method,
    /// the path with its query (the engine matches paths without it), the authority as
    /// host. Headers are not in the log: the view has none (callers account for
    /// policies that read them). `jwt`: the claims the caller reconstructs.
    pub fn request(&self, jwt: Option<serde_json::Value>) -> Request {
        Request {
            protocol: if self.http.is_some() {
                Protocol::Http
            } else {
                Protocol::Tcp
            },
            source_principal: self.source_principal.clone(),
            source_ip: self.source.map(|a| a.ip()),
            // Inbound: the peer (the proxy sets no remote address). Gateway: computed
            // from X-Forwarded-For with trusted hops, which the log does not give:
            // callers treat remote.ip as unrecorded on gateway lines.
            remote_ip: None,
            destination_ip: self.local.map(|a| a.ip()),
            destination_port: self.port.unwrap_or_default(),
            sni: self.sni.clone(),
            http: self.http.as_ref().map(|(method, path)| HttpRequest {
                method: method.clone(),
                path: path.clone(),
                host: self.authority.clone().unwrap_or_default(),
                headers: BTreeMap::new(),
            }),
            jwt,
        }
    }
}

fn parse_addr(field: &str, v: Option<&str>) -> Result<Option<SocketAddr>, String> {
    match v {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            format!("{field}: {s:?} is not an address and port (\"127.0.0.1:15006\")")
        }),
    }
}

/// Parses and checks one line.
fn parse(text: &str) -> Result<Entry, String> {
    if !text.trim_start().starts_with('{') {
        return Err("not a JSON object (one object per line expected)".into());
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawLine = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path == "?" {
            format!("not a JSON object: {}", e.inner())
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    de.end()
        .map_err(|e| format!("not a JSON object: text after it ({e})"))?;
    let direction = match raw.direction.as_deref() {
        Some("inbound") => Direction::Inbound,
        Some("outbound") => Direction::Outbound,
        Some("gateway") => Direction::Gateway,
        Some(other) => {
            return Err(format!(
                "direction: {other:?}: expected \"inbound\", \"outbound\" or \"gateway\""
            ));
        }
        None => return Err("direction: missing or null".into()),
    };
    let recorded = match raw.authz_decision.as_deref() {
        Some("allow") => Some(true),
        Some("deny") => Some(false),
        None => None,
        Some(other) => {
            return Err(format!(
                "authz_decision: {other:?}: expected \"allow\", \"deny\" or null"
            ));
        }
    };
    let http = match (raw.method, raw.path) {
        (Some(m), Some(p)) => {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("method: {m:?} is not an HTTP method"));
            }
            if !p.starts_with('/') && p != "*" {
                return Err(format!("path: {p:?}: expected a path starting with /"));
            }
            Some((m, p))
        }
        (None, None) => None,
        (Some(_), None) => return Err("path: null but method is set".into()),
        (None, Some(_)) => return Err("method: null but path is set".into()),
    };
    let source_principal = match raw.source_principal {
        Some(p) if p.is_empty() => return Err("source_principal: empty string".into()),
        Some(p) => Some(p.strip_prefix("spiffe://").map(String::from).unwrap_or(p)),
        None => None,
    };
    let entry = Entry {
        direction,
        start_time: raw.start_time.unwrap_or_default(),
        request_id: raw.request_id,
        source_principal,
        source: parse_addr(
            "downstream_remote_address",
            raw.downstream_remote_address.as_deref(),
        )?,
        local: parse_addr(
            "downstream_local_address",
            raw.downstream_local_address.as_deref(),
        )?,
        port: raw.destination_port,
        http,
        authority: raw.authority,
        sni: raw.requested_server_name,
        request_principal: raw.request_principal.filter(|p| !p.is_empty()),
        destination_workload: raw.destination_namespace.zip(raw.destination_workload),
        destination_service: raw.destination_service,
        recorded,
        recorded_policy: raw.authz_policy.map(|p| match raw.authz_rule {
            Some(r) => format!("{p} rule {r}"),
            None => p,
        }),
    };
    if direction != Direction::Outbound && recorded.is_some() {
        // What the decision was made on must be there to make it again.
        if entry.source.is_none() {
            return Err("downstream_remote_address: null on a line with a decision".into());
        }
        if entry.local.is_none() {
            return Err("downstream_local_address: null on a line with a decision".into());
        }
        if entry.port.is_none() {
            return Err("destination_port: null on a line with a decision".into());
        }
    }
    Ok(entry)
}

/// How the reading went.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReadStats {
    /// Files read.
    pub files: usize,
    /// Non-blank lines read.
    pub lines: u64,
    /// Bad lines skipped (`--skip-bad-lines`).
    pub bad_lines: u64,
    /// Outbound lines skipped (the client side of a request the server logged).
    pub outbound: u64,
    /// Inbound/gateway lines without a decision (refused before authorization).
    pub no_decision: u64,
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// A file cannot be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A bad line, without `--skip-bad-lines`.
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What was wrong.
        message: String,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { path, message } => write!(f, "{}: {message}", path.display()),
            Self::BadLine {
                path,
                line,
                message,
            } => write!(
                f,
                "{}:{line}: {message} (--skip-bad-lines skips such lines)",
                path.display()
            ),
        }
    }
}

/// Reads every `--log` file (`-`: stdin) line by line and calls `f` with each inbound
/// or gateway line that carries a decision; outbound lines, lines without a decision
/// and (with `skip_bad`) bad lines are counted. A bad line stops the read unless
/// `skip_bad`; then the first ten are reported on stderr as `warden authz {command}:
/// skipped FILE:LINE: ...` (an empty `command`: not reported). Only one line is held at a time.
pub fn read_logs(
    logs: &[PathBuf],
    skip_bad: bool,
    command: &str,
    mut f: impl FnMut(&Entry),
) -> Result<ReadStats, ReadError> {
    let mut stats = ReadStats::default();
    for path in logs {
        let io_err = |e: std::io::Error| ReadError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        let reader: Box<dyn Read> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(path).map_err(io_err)?)
        };
        let mut reader = BufReader::new(reader);
        stats.files += 1;
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            buf.clear();
            let n = (&mut reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut buf)
                .map_err(io_err)?;
            if n == 0 {
                break;
            }
            number += 1;
            let result = if buf.last() != Some(&b'\n') && buf.len() as u64 > MAX_LINE {
                // Drop the rest of the over-long line without holding it.
                loop {
                    let chunk = reader.fill_buf().map_err(io_err)?;
                    if chunk.is_empty() {
                        break;
                    }
                    match chunk.iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            reader.consume(i + 1);
                            break;
                        }
                        None => {
                            let len = chunk.len();
                            reader.consume(len);
                        }
                    }
                }
                Err(format!("line longer than {MAX_LINE} bytes"))
            } else {
                match std::str::from_utf8(&buf) {
                    Err(e) => Err(format!("not UTF-8: {e}")),
                    Ok(text) if text.trim().is_empty() => continue,
                    Ok(text) => parse(text.trim_end_matches(['\n', '\r'])),
                }
            };
            stats.lines += 1;
            match result {
                Ok(e) if e.direction == Direction::Outbound => stats.outbound += 1,
                Ok(e) if e.recorded.is_none() => stats.no_decision += 1,
                Ok(e) => f(&e),
                Err(message) if skip_bad => {
                    stats.bad_lines += 1;
                    if stats.bad_lines <= 10 && !command.is_empty() {
                        eprintln!(
                            "warden authz {command}: skipped {}:{number}: {message}",
                            path.display()
                        );
                    }
                }
                Err(message) => {
                    return Err(ReadError::BadLine {
                        path: path.clone(),
                        line: number,
                        message,
                    });
                }
            }
        }
    }
    Ok(stats)
}

/// A destination workload found in the registry.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// WorkloadEntry `namespace/name`.
    pub name: String,
    /// Its namespace and labels, as the engine takes them.
    pub workload: Workload,
}

/// The WorkloadEntries of the `--config` and `--workloads` directories.
#[derive(Debug, Default)]
pub struct Registry {
    by_name: HashMap<(String, String), Workload>,
    by_address: HashMap<IpAddr, Vec<(String, String)>>,
}

impl Registry {
    /// The WorkloadEntries of `sets`; one `namespace/name` in two sets must be the same
    /// entry.
    pub fn new(sets: &[&ConfigSet]) -> Result<Self, String> {
        let mut r = Self::default();
        let mut seen: HashMap<(String, String), (String, String)> = HashMap::new();
        for set in sets {
            for we in &set.workload_entries {
                let key = (
                    we.resource.namespace().to_string(),
                    we.resource.metadata.name.clone(),
                );
                let spec = &we.resource.spec;
                let shape = (format!("{:?}", spec.labels), spec.address.clone());
                if let Some(first) = seen.get(&key) {
                    if *first != shape {
                        return Err(format!(
                            "{}: WorkloadEntry {}/{}: defined differently in another --config/--workloads directory",
                            we.origin, key.0, key.1
                        ));
                    }
                    continue;
                }
                seen.insert(key.clone(), shape);
                if let Ok(ip) = spec.address.parse::<IpAddr>() {
                    r.by_address.entry(ip).or_default().push(key.clone());
                }
                r.by_name.insert(
                    key.clone(),
                    Workload {
                        namespace: key.0,
                        labels: spec.labels.clone(),
                    },
                );
            }
        }
        Ok(r)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// `namespace/name` of the entries in `namespace` that `selector` selects, sorted.
    pub fn selected(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_name
            .iter()
            .filter(|((ns, _), w)| ns == namespace && w.selected_by(Some(selector)))
            .map(|((ns, name), _)| format!("{ns}/{name}"))
            .collect();
        v.sort();
        v
    }

    fn named(&self, key: &(String, String)) -> Resolved {
        Resolved {
            name: format!("{}/{}", key.0, key.1),
            workload: self.by_name.get(key).cloned().unwrap_or_default(),
        }
    }

    /// The workload that decided `e`: on an inbound line the WorkloadEntry named by
    /// `destination_namespace`/`destination_workload` (or, if the line names none, the
    /// one entry whose address is the local address); on a gateway line the gateway
    /// itself, the one entry whose address is the local address (the gateway decides
    /// with its own policies, whatever the line names as destination). Otherwise why
    /// not.
    pub fn resolve(&self, e: &Entry) -> Result<Resolved, String> {
        let by_address = || -> Result<Resolved, String> {
            let Some(ip) = e.local.map(|a| a.ip()) else {
                return Err("no downstream_local_address to find the workload by".into());
            };
            match self.by_address.get(&ip).map(Vec::as_slice) {
                Some([one]) => Ok(self.named(one)),
                Some(many) if many.len() > 1 => Err(format!(
                    "{} WorkloadEntries have the address {ip}: cannot tell which decided",
                    many.len()
                )),
                _ => Err(format!("no WorkloadEntry has the address {ip}")),
            }
        };
        match (e.direction, &e.destination_workload) {
            (Direction::Gateway, _) | (_, None) => by_address(),
            (_, Some(key)) if self.by_name.contains_key(key) => Ok(self.named(key)),
            (_, Some((ns, name))) => Err(format!(
                "WorkloadEntry {ns}/{name} is in no --config or --workloads directory"
            )),
        }
    }
}

/// What kind of identifier a path segment looks like: all digits, a UUID, or at least
/// 16 hex digits. Such segments vary per object and are grouped as `*`.
pub fn id_kind(segment: &str) -> Option<&'static str> {
    let b = segment.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        return Some("digits");
    }
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if uuid {
        return Some("a UUID");
    }
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        return Some("hex");
    }
    None
}

/// The path (without query) with ID-like segments ([`id_kind`]) replaced by `*`:
/// `/reviews/0` and `/reviews/1` are both `/reviews/*`.
pub fn pattern(path: &str) -> String {
    path_only(path)
        .split('/')
        .map(|s| if id_kind(s).is_some() { "*" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Characters that could end a YAML comment line or steer a terminal.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `s` safe to print on a terminal or in a YAML comment: control characters (and
/// Unicode line separators) escaped.
pub fn printable(s: &str) -> String {
    if !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Loads `--config` and `--workloads` directories: the policy set, and the registry
/// of both (only the WorkloadEntries of `--workloads` are used).
pub fn load_sets(
    config: &[PathBuf],
    workloads: &[PathBuf],
) -> Result<(ConfigSet, Registry), String> {
    let set = if config.is_empty() {
        ConfigSet::default()
    } else {
        warden_policy::loader::load(config).map_err(|e| e.to_string())?
    };
    let extra = if workloads.is_empty() {
        ConfigSet::default()
    } else {
        warden_policy::loader::load(workloads).map_err(|e| e.to_string())?
    };
    let registry = Registry::new(&[&set, &extra])?;
    Ok((set, registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"start_time":"2026-12-07T01:02:03.456Z","route_name":"default","method":"GET","path":"/ratings/0?x=1","protocol":"HTTP/1.1","response_code":200,"response_flags":"-","response_code_details":"via_upstream","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":48,"duration":3,"upstream_service_time":2,"x_forwarded_for":null,"user_agent":"warden-demo","request_id":"a1b2","authority":"ratings.bookinfo.svc.cluster.local:9080","upstream_host":"127.0.10.14:9080","upstream_cluster":"inbound|9080||","upstream_local_address":"127.0.10.14:50412","downstream_local_address":"127.0.10.14:15006","downstream_remote_address":"127.0.10.13:40112","requested_server_name":"outbound_.9080_._.ratings.bookinfo.svc.cluster.local","direction":"inbound","source_principal":"spiffe://cluster.local/ns/bookinfo/sa/reviews","destination_principal":"spiffe://cluster.local/ns/bookinfo/sa/ratings","source_workload":"reviews-v2","source_namespace":"bookinfo","destination_workload":"ratings-v1","destination_namespace":"bookinfo","destination_service":"ratings.bookinfo.svc.cluster.local","destination_port":9080,"request_principal":null,"authz_decision":"allow","authz_policy":null,"authz_rule":null,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#;

    #[test]
    fn a_spec_line_becomes_the_proxys_request() {
        let e = parse(LINE).unwrap();
        assert_eq!(e.direction, Direction::Inbound);
        assert_eq!(e.recorded, Some(true));
        assert_eq!(e.path(), Some("/ratings/0"));
        let r = e.request(None);
        assert_eq!(
            r.source_principal.as_deref(),
            Some("cluster.local/ns/bookinfo/sa/reviews")
        );
        assert_eq!(r.source_ip, Some("127.0.10.13".parse().unwrap()));
        assert_eq!(r.destination_ip, Some("127.0.10.14".parse().unwrap()));
        assert_eq!(r.destination_port, 9080);
        let http = r.http.unwrap();
        assert_eq!(http.path, "/ratings/0?x=1");
        assert_eq!(http.host, "ratings.bookinfo.svc.cluster.local:9080");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("{", "not a JSON object"),
            ("[1]", "not a JSON object"),
            ("{\"direction\":\"outbound\"} x", "text after it"),
            (
                &LINE.replace("\"destination_port\":9080", "\"destination_port\":\"9080\""),
                "destination_port",
            ),
            (
                &LINE.replace("\"direction\":\"inbound\"", "\"direction\":\"sideways\""),
                "direction",
            ),
            (
                &LINE.replace(
                    "\"authz_decision\":\"allow\"",
                    "\"authz_decision\":\"maybe\"",
                ),
                "authz_decision",
            ),
            (
                &LINE.replace("\"127.0.10.13:40112\"", "\"nowhere\""),
                "downstream_remote_address",
            ),
            (
                &LINE.replace("\"destination_port\":9080", "\"destination_port\":null"),
                "destination_port: null",
            ),
            (
                &LINE.replace("\"method\":\"GET\"", "\"method\":null"),
                "method: null",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn id_like_segments_are_grouped() {
        assert_eq!(pattern("/ratings/0?x"), "/ratings/*");
        assert_eq!(
            pattern("/api/v1/users/123e4567-e89b-12d3-a456-426614174000/orders"),
            "/api/v1/users/*/orders"
        );
        assert_eq!(pattern("/blob/0123456789abcdef0123"), "/blob/*");
        assert_eq!(pattern("/v2/cafe"), "/v2/cafe");
        assert_eq!(id_kind("v1"), None);
        assert_eq!(printable("/a\n- b"), "/a\\n- b");
    }

    #[test]
    fn long_and_binary_lines_are_bad_lines_not_panics() {
        let dir = std::env::temp_dir().join(format!("warden-accesslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("log");
        let mut text = Vec::new();
        text.extend_from_slice(LINE.as_bytes());
        text.push(b'\n');
        text.extend(std::iter::repeat_n(b'x', (MAX_LINE + 10) as usize));
        text.push(b'\n');
        text.extend_from_slice(&[0xff, 0xfe, b'\n', b'\n']);
        text.extend_from_slice(LINE.as_bytes());
        std::fs::write(&file, &text).unwrap();
        let mut seen = 0;
        let stats = read_logs(std::slice::from_ref(&file), true, "test", |_| seen += 1).unwrap();
        assert_eq!((seen, stats.bad_lines, stats.lines), (2, 2, 4));
        let err = read_logs(std::slice::from_ref(&file), false, "test", |_| {}).unwrap_err();
        assert!(err.to_string().contains(":2: line longer than"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
