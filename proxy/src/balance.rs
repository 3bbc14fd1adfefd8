//! Load balancing: which endpoint of a destination a request goes to, by the
//! DestinationRule's `trafficPolicy.loadBalancer` as istiod translates it for Envoy
//! (`applyLoadBalancer` in pilot's `cluster_traffic_policy.go`, the route's hash
//! policy from `ConsistentHashToHashPolicy` in `route/route.go`):
//!
//! - no DestinationRule, no `loadBalancer`, `simple: UNSPECIFIED`, `LEAST_REQUEST` or
//!   the deprecated `LEAST_CONN`: least request (istiod's `defaultLBAlgorithm` is
//!   `LEAST_REQUEST`), two choices compared by requests in flight ([`Tables::choose`]);
//! - `ROUND_ROBIN`; `PASSTHROUGH` too: Envoy would connect to the address the app
//!   dialled, but an app asks Warden's outbound port for a host, so there is no such
//!   address and Warden takes turns among the endpoints;
//! - `RANDOM`;
//! - `consistentHash` (ring hash; `maglev` takes the same ring, with its `tableSize` as
//!   the ring's size): the request's header, cookie (generated with a `Set-Cookie`
//!   when absent and a `ttl` is set), source IP or query parameter, hashed onto a ring
//!   of the destination's usable endpoints. No key (the header absent, say): a random
//!   point on the ring, as Envoy does.
//!
//! Candidates arrive already filtered (the subset's labels, outlier ejections), so an
//! ejected endpoint is off the ring too. `localityLbSetting` and `warmupDurationSecs` /
//! `warmup` are accepted and do nothing: a Warden mesh has no localities, and a
//! workload's proxy starts taking requests once it is ready (logged once at debug).

use std::collections::HashMap;
use std::hash::{BuildHasher, DefaultHasher, Hash as _, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use http::{Response, Uri};
use serde_json::Value;

use crate::mesh::model::{Service, ServiceId};

/// Envoy's default `minimum_ring_size` (and istiod's for the deprecated field).
pub const DEFAULT_RING_SIZE: usize = 1024;
/// The most points a ring gets, whatever the rule asks: Envoy's own bound is 8M; at 16
/// bytes a point this keeps a ring near 1 MiB.
pub const MAX_RING_SIZE: usize = 1 << 16;
/// Rings kept per config generation before the cache starts afresh (each distinct set
/// of usable endpoints of a destination is one ring).
const MAX_RINGS: usize = 256;

/// How a destination's endpoint is chosen, read from its traffic policy (borrowing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy<'a> {
    /// Take turns.
    RoundRobin,
    /// The less loaded of two choices.
    LeastRequest,
    /// Uniformly at random.
    Random,
    /// A ring hash on a request key.
    Hash(HashPolicy<'a>),
}

/// `consistentHash`: what is hashed and the ring's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPolicy<'a> {
    /// The request key.
    pub key: HashKey<'a>,
    /// Points on the ring (before the per-endpoint rounding).
    pub ring_size: usize,
}

/// The request key of a consistent hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey<'a> {
    /// `httpHeaderName`: every value of the header, in sorted order.
    Header(&'a str),
    /// `httpCookie`.
    Cookie(CookieKey<'a>),
    /// `useSourceIp: true`: the downstream connection's IP address.
    SourceIp,
    /// `httpQueryParameterName`: the first value of the parameter, as sent.
    QueryParameter(&'a str),
    /// None named (or `useSourceIp: false`): every request hashes to a random point.
    Nothing,
}

/// `httpCookie {name, path, ttl, attributes}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieKey<'a> {
    /// The cookie's name.
    pub name: &'a str,
    /// `Path` of a generated cookie (none when empty).
    pub path: &'a str,
    /// Set: a cookie is generated when the request has none (zero: a session cookie,
    /// without `Max-Age`). Unset: no cookie, no hash (Envoy's `ttl` semantics).
    pub ttl: Option<Duration>,
    /// `attributes: [{name, value}]` added to a generated cookie.
    pub attributes: &'a [Value],
}

impl<'a> Policy<'a> {
    /// The policy a destination's traffic policy (proto field names) asks for; without
    /// one, Istio's default, least request.
    pub fn from_policy(policy: Option<&'a Value>) -> Self {
        let Some(lb) = policy.and_then(|p| p.get("loadBalancer")) else {
            return Self::LeastRequest;
        };
        note_not_applicable(lb);
        // istiod applies `simple` first and then the ring hash over it, so a
        // consistent hash wins (validation refuses both at once anyway).
        if let Some(ch) = lb.get("consistentHash") {
            return Self::Hash(HashPolicy::from_json(ch));
        }
        match lb.get("simple").and_then(Value::as_str) {
            Some("ROUND_ROBIN" | "PASSTHROUGH") => Self::RoundRobin,
            Some("RANDOM") => Self::Random,
            // LEAST_REQUEST, LEAST_CONN, UNSPECIFIED, unset.
            _ => Self::LeastRequest,
        }
    }
}

impl<'a> HashPolicy<'a> {
    fn from_json(ch: &'a Value) -> Self {
        let key = if let Some(h) = ch.get("httpHeaderName").and_then(Value::as_str) {
            HashKey::Header(h)
        } else if let Some(c) = ch.get("httpCookie") {
            HashKey::Cookie(CookieKey {
                name: c.get("name").and_then(Value::as_str).unwrap_or_default(),
                path: c.get("path").and_then(Value::as_str).unwrap_or_default(),
                ttl: c.get("ttl").and_then(duration),
                attributes: c
                    .get("attributes")
                    .and_then(Value::as_array)
                    .map_or(&[], Vec::as_slice),
            })
        } else if ch.get("useSourceIp").and_then(Value::as_bool) == Some(true) {
            HashKey::SourceIp
        } else if let Some(q) = ch.get("httpQueryParameterName").and_then(Value::as_str) {
            HashKey::QueryParameter(q)
        } else {
            HashKey::Nothing
        };
        let size = |ptr: &str| ch.pointer(ptr).and_then(number).filter(|n| *n > 0);
        let ring_size = size("/ringHash/minimumRingSize")
            .or_else(|| size("/maglev/tableSize"))
            .or_else(|| size("/minimumRingSize"))
            .unwrap_or(DEFAULT_RING_SIZE);
        Self {
            key,
            ring_size: ring_size.min(MAX_RING_SIZE),
        }
    }
}

/// A proto `uint64` in JSON: a number or a decimal string.
fn number(v: &Value) -> Option<usize> {
    let n = match v {
        Value::String(s) => s.parse().ok()?,
        _ => v.as_u64()?,
    };
    Some(usize::try_from(n).unwrap_or(usize::MAX))
}

/// A proto `Duration` in JSON (`"3600s"`; `1h` and the like as Warden writes them).
fn duration(v: &Value) -> Option<Duration> {
    warden_policy::route::duration::parse(v.as_str()?).ok()
}

/// Logs, once per process, that locality and warm-up settings have no effect here.
fn note_not_applicable(lb: &Value) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    for field in ["localityLbSetting", "warmupDurationSecs", "warmup"] {
        if lb.get(field).is_some() && !LOGGED.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                field,
                "DestinationRule loadBalancer setting accepted and not applied: a Warden mesh has no localities and no endpoint warm-up"
            );
        }
    }
}

/// The downstream connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downstream {
    /// The client's address.
    pub remote: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
}

/// What the balancer may read of a request (all borrowed; nothing is copied).
#[derive(Debug, Clone, Copy, Default)]
pub struct Hint<'a> {
    /// The request headers (HTTP).
    pub headers: Option<&'a HeaderMap>,
    /// The request target (HTTP).
    pub uri: Option<&'a Uri>,
    /// The downstream connection.
    pub conn: Option<Downstream>,
    /// Endpoints a retry has tried already: left out while others remain, except under
    /// a consistent hash (Istio's retry policy has Envoy's `previous_hosts` predicate
    /// then, and none with a hash policy: a hashed request retries where it belongs).
    pub avoid: &'a [usize],
}

impl<'a> Hint<'a> {
    /// An HTTP request's.
    pub fn http(headers: &'a HeaderMap, uri: &'a Uri, conn: Option<Downstream>) -> Self {
        Self {
            headers: Some(headers),
            uri: Some(uri),
            conn,
            avoid: &[],
        }
    }
}

/// An endpoint chosen, with what the choice leaves to do on the response.
#[derive(Debug)]
pub struct Picked {
    /// The endpoint's index in its service.
    pub index: usize,
    /// Its in-flight mark and any cookie to set.
    pub held: Held,
}

/// What a choice holds until the response is done: the endpoint's request-in-flight
/// mark and a generated hash cookie for the client.
#[derive(Debug, Default)]
pub struct Held {
    in_flight: Option<InFlight>,
    set_cookie: Option<HeaderValue>,
}

impl Held {
    /// Puts the choice on the response: a `Set-Cookie` when one was generated, and the
    /// in-flight mark, kept by the body until it has been read from upstream.
    pub fn finish(self, resp: &mut Response<crate::http::Body>) {
        if let Some(cookie) = self.set_cookie {
            resp.headers_mut().append(SET_COOKIE, cookie);
        }
        if let Some(mark) = self.in_flight {
            resp.body_mut().hold_in_flight(mark);
        }
    }

    /// The same without its cookie (a retry's choice: the first try's cookie stands).
    pub fn without_cookie(mut self) -> Self {
        self.set_cookie = None;
        self
    }

    /// The generated cookie, if any.
    pub fn set_cookie(&self) -> Option<&HeaderValue> {
        self.set_cookie.as_ref()
    }
}

/// One request in flight to an endpoint (Envoy's `rq_active`), counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    counts: Arc<[AtomicU32]>,
    index: usize,
}

impl InFlight {
    fn start(counts: &Arc<[AtomicU32]>, index: usize) -> Option<Self> {
        counts.get(index)?.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            counts: counts.clone(),
            index,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = self.counts.get(self.index) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One service's balancing state.
#[derive(Debug)]
struct ServiceState {
    /// Round-robin position.
    next: AtomicU64,
    /// Requests in flight, by endpoint index.
    active: Arc<[AtomicU32]>,
}

/// Key of a cached ring: the service, the ring size and a fingerprint of the usable
/// endpoints (checked against the ring's own list on a hit).
type RingKey = (ServiceId, usize, u64);

/// The balancing state of one config generation (it lives in the snapshot, so every
/// key is implicitly that generation's): per service a round-robin position and
/// requests in flight per endpoint, and the consistent-hash rings built so far.
#[derive(Debug, Default)]
pub struct Tables {
    /// By service id (ids are registry positions).
    services: Vec<ServiceState>,
    rings: Mutex<HashMap<RingKey, Arc<Ring>>>,
}

impl Tables {
    /// Tables for `services`, every count at zero.
    pub fn new(services: &[Arc<Service>]) -> Self {
        let mut states: Vec<ServiceState> = Vec::new();
        for svc in services {
            let i = svc.id.0;
            while states.len() <= i {
                states.push(ServiceState {
                    next: AtomicU64::new(0),
                    active: Arc::new([]),
                });
            }
            states[i].active = svc.endpoints.iter().map(|_| AtomicU32::new(0)).collect();
        }
        Self {
            services: states,
            rings: Mutex::default(),
        }
    }

    /// Chooses among `candidates` (indices into `service.endpoints`, never empty) by
    /// `policy`, reading the request through `hint`.
    ///
    /// Least request compares two choices by requests in flight and takes the one
    /// with fewer, as Envoy's default `choice_count` of 2 does; the first choice is the
    /// next in turn rather than random, so idle endpoints take strict turns (Envoy's
    /// two random draws spread them only on average) while a loaded endpoint is
    /// passed over just as often.
    pub fn choose(
        &self,
        service: &Service,
        candidates: &[usize],
        policy: &Policy<'_>,
        hint: &Hint<'_>,
    ) -> Picked {
        let state = self.services.get(service.id.0);
        let mut held = Held::default();
        let index = match policy {
            Policy::Hash(h) => {
                let (key, cookie) = h.key(hint);
                held.set_cookie = cookie;
                let ring = self.ring(service, candidates, h.ring_size);
                ring.pick(key.unwrap_or_else(random_u64))
            }
            simple => {
                let kept: Vec<usize>;
                let pool = if hint.avoid.is_empty() {
                    candidates
                } else {
                    kept = candidates
                        .iter()
                        .copied()
                        .filter(|i| !hint.avoid.contains(i))
                        .collect();
                    if kept.is_empty() { candidates } else { &kept }
                };
                let turn =
                    || state.map_or_else(random_u64, |s| s.next.fetch_add(1, Ordering::Relaxed));
                let at = |n: u64| pool[usize::try_from(n % pool.len() as u64).unwrap_or(0)];
                match simple {
                    Policy::RoundRobin => at(turn()),
                    Policy::Random => at(random_u64()),
                    _ => {
                        let (first, second) = (at(turn()), at(random_u64()));
                        let load = |i: usize| {
                            state
                                .and_then(|s| s.active.get(i))
                                .map_or(0, |c| c.load(Ordering::Relaxed))
                        };
                        if load(second) < load(first) {
                            second
                        } else {
                            first
                        }
                    }
                }
            }
        };
        held.in_flight = state.and_then(|s| InFlight::start(&s.active, index));
        Picked { index, held }
    }

    /// Requests in flight to endpoint `index` of `service`.
    pub fn in_flight(&self, service: ServiceId, index: usize) -> u32 {
        self.services
            .get(service.0)
            .and_then(|s| s.active.get(index))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The ring over `members` of `service`, from the cache or built now.
    fn ring(&self, service: &Service, members: &[usize], size: usize) -> Arc<Ring> {
        let key = (service.id, size, hash64(members));
        let lock = || {
            self.rings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(r) = lock().get(&key).filter(|r| *r.members == *members) {
            return r.clone();
        }
        let ring = Arc::new(Ring::build(service, members, size));
        let mut rings = lock();
        if rings.len() >= MAX_RINGS {
            rings.clear();
        }
        rings.insert(key, ring.clone());
        ring
    }
}

/// A consistent-hash ring (ketama style): each endpoint at a fixed number of points,
/// each point the hash of the endpoint's address and the point's number; a key goes
/// to the first point at or after its hash, wrapping around.
///
/// The points per endpoint are the ring size over the service's endpoint count, not
/// over the usable ones, so an endpoint leaving (ejected, or outside a subset) takes
/// its own points away and moves only the keys that were on them, about 1/N.
#[derive(Debug)]
struct Ring {
    /// The endpoints on the ring (indices into the service's).
    members: Box<[usize]>,
    /// (hash, endpoint index), sorted.
    points: Box<[(u64, usize)]>,
}

impl Ring {
    fn build(service: &Service, members: &[usize], size: usize) -> Self {
        let per_endpoint = size.div_ceil(service.endpoints.len().max(1)).max(1);
        let mut points = Vec::with_capacity(per_endpoint * members.len());
        for &i in members {
            let Some(ep) = service.endpoints.get(i) else {
                continue;
            };
            for n in 0..per_endpoint {
                let mut h = DefaultHasher::new();
                ep.inbound.hash(&mut h);
                n.hash(&mut h);
                points.push((h.finish(), i));
            }
        }
        points.sort_unstable();
        Self {
            members: members.into(),
            points: points.into(),
        }
    }

    /// The endpoint for a key's hash.
    fn pick(&self, hash: u64) -> usize {
        let at = self.points.partition_point(|p| p.0 < hash);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map_or(self.members.first().copied().unwrap_or(0), |p| p.1)
    }
}

impl HashPolicy<'_> {
    /// The request's hash (`None`: no key) and a cookie to set when one was generated.
    fn key(&self, hint: &Hint<'_>) -> (Option<u64>, Option<HeaderValue>) {
        match self.key {
            HashKey::Header(name) => (hint.headers.and_then(|h| header_hash(h, name)), None),
            HashKey::Cookie(c) => {
                if let Some(v) = hint.headers.and_then(|h| cookie(h, c.name))
                    && !v.is_empty()
                {
                    return (Some(hash64(v.as_bytes())), None);
                }
                let Some(ttl) = c.ttl else {
                    return (None, None);
                };
                let value = generated_cookie(hint.conn);
                (Some(hash64(value.as_bytes())), c.set_cookie(&value, ttl))
            }
            HashKey::SourceIp => (
                hint.conn.map(|c| match c.remote.ip() {
                    IpAddr::V4(ip) => hash64(&ip.octets()),
                    IpAddr::V6(ip) => hash64(&ip.octets()),
                }),
                None,
            ),
            HashKey::QueryParameter(name) => (
                hint.uri
                    .and_then(|u| query_value(u, name))
                    .map(|v| hash64(v.as_bytes())),
                None,
            ),
            HashKey::Nothing => (None, None),
        }
    }
}

impl CookieKey<'_> {
    /// Envoy's `Set-Cookie` for a generated cookie: `name="value"`, `Max-Age` unless
    /// the ttl is under a second (a session cookie), `Path`, the attributes, `HttpOnly`.
    fn set_cookie(&self, value: &str, ttl: Duration) -> Option<HeaderValue> {
        let mut s = format!("{}=\"{value}\"", self.name);
        if ttl.as_secs() > 0 {
            s.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        if !self.path.is_empty() {
            s.push_str("; Path=");
            s.push_str(self.path);
        }
        for a in self.attributes {
            let name = a.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                continue;
            }
            match a.get("value").and_then(Value::as_str) {
                Some(v) if !v.is_empty() => s.push_str(&format!("; {name}={v}")),
                _ => s.push_str(&format!("; {name}")),
            }
        }
        s.push_str("; HttpOnly");
        HeaderValue::from_str(&s).ok()
    }
}

/// A generated cookie's value, as Envoy makes it: the hash of the downstream
/// connection's two addresses in hex, so that requests racing on one connection get
/// the same cookie. Without a connection (never for a listener's request), random.
fn generated_cookie(conn: Option<Downstream>) -> String {
    let h = match conn {
        Some(c) => hash64(format!("{}{}", c.remote, c.local).as_bytes()),
        None => random_u64(),
    };
    format!("{h:016x}")
}

/// The hash of every value of header `name`, sorted (so their order does not matter,
/// as in Envoy); `None` without the header.
fn header_hash(headers: &HeaderMap, name: &str) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(hash64(first.as_bytes()));
    };
    let mut all: Vec<&[u8]> = vec![first.as_bytes(), second.as_bytes()];
    all.extend(values.map(HeaderValue::as_bytes));
    all.sort_unstable();
    Some(hash64(&all))
}

/// The value of cookie `name` in the request's `Cookie` headers (quotes removed).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim_start().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            let v = v.trim_end();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

/// The first value of query parameter `name` (as sent, not decoded).
fn query_value<'u>(uri: &'u Uri, name: &str) -> Option<&'u str> {
    uri.query()?
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A stable 64-bit hash (SipHash with fixed keys): proxies of one build agree on it.
fn hash64<T: std::hash::Hash + ?Sized>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// A fast per-thread pseudo-random number (xorshift64*, seeded from std's random
/// hasher keys); balancing needs spread, not secrecy.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::mesh::model::Endpoint;

    /// A service with `n` endpoints at 10.0.0.1.. port 15006.
    fn service(n: usize) -> Service {
        let mut s = Service::for_tests("web.default.svc.cluster.local", "default");
        for i in 0..n {
            let ip: IpAddr = format!("10.0.0.{}", i + 1).parse().unwrap();
            s.endpoints.push(Endpoint {
                workload: Some(format!("web-{i}")),
                namespace: "default".into(),
                address: ip,
                inbound: SocketAddr::new(ip, 15006),
                spiffe_id: warden_proto::SpiffeId::parse(
                    "spiffe://cluster.local/ns/default/sa/web",
                )
                .unwrap(),
                ports: BTreeMap::new(),
                labels: BTreeMap::new(),
                dial: crate::mesh::model::Dial::Address,
            });
        }
        s
    }

    fn tables(s: Service) -> (Arc<Service>, Tables) {
        let s = Arc::new(s);
        let t = Tables::new(std::slice::from_ref(&s));
        (s, t)
    }

    fn counts(
        t: &Tables,
        s: &Service,
        candidates: &[usize],
        policy: &Policy<'_>,
        n: usize,
    ) -> Vec<usize> {
        let mut out = vec![0; s.endpoints.len()];
        for _ in 0..n {
            out[t.choose(s, candidates, policy, &Hint::default()).index] += 1;
        }
        out
    }

    fn with_header(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn policies_from_traffic_policies() {
        let p = |v: Value| {
            let v = Box::leak(Box::new(v));
            Policy::from_policy(Some(v))
        };
        assert_eq!(Policy::from_policy(None), Policy::LeastRequest);
        assert_eq!(p(json!({})), Policy::LeastRequest);
        assert_eq!(
            p(json!({"loadBalancer": {"simple": "UNSPECIFIED"}})),
            Policy::LeastRequest
        );
        assert_eq!(
            p(json!({"loadBalancer": {"simple": "LEAST_CONN"}})),
            Policy::LeastRequest
        );
        assert_eq!(
            p(json!({"loadBalancer": {"simple": "ROUND_ROBIN"}})),
            Policy::RoundRobin
        );
        assert_eq!(
            p(json!({"loadBalancer": {"simple": "PASSTHROUGH"}})),
            Policy::RoundRobin
        );
        assert_eq!(
            p(json!({"loadBalancer": {"simple": "RANDOM", "warmupDurationSecs": "10s"}})),
            Policy::Random
        );
        assert_eq!(
            p(json!({"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})),
            Policy::Hash(HashPolicy {
                key: HashKey::Header("x-user"),
                ring_size: DEFAULT_RING_SIZE
            })
        );
        assert_eq!(
            p(
                json!({"loadBalancer": {"consistentHash": {"useSourceIp": true, "ringHash": {"minimumRingSize": "2048"}}}})
            ),
            Policy::Hash(HashPolicy {
                key: HashKey::SourceIp,
                ring_size: 2048
            })
        );
        assert_eq!(
            p(
                json!({"loadBalancer": {"consistentHash": {"httpQueryParameterName": "u", "maglev": {"tableSize": 65537}}}})
            ),
            Policy::Hash(HashPolicy {
                key: HashKey::QueryParameter("u"),
                ring_size: MAX_RING_SIZE
            })
        );
        assert_eq!(
            p(json!({"loadBalancer": {"consistentHash": {"minimumRingSize": 10}}})),
            Policy::Hash(HashPolicy {
                key: HashKey::Nothing,
                ring_size: 10
            })
        );
        let Policy::Hash(HashPolicy {
            key: HashKey::Cookie(c),
            ..
        }) = p(
            json!({"loadBalancer": {"consistentHash": {"httpCookie": {"name": "s", "path": "/", "ttl": "0s"}}}}),
        )
        else {
            panic!("a cookie hash");
        };
        assert_eq!((c.name, c.path, c.ttl), ("s", "/", Some(Duration::ZERO)));
    }

    #[test]
    fn round_robin_takes_strict_turns_among_candidates() {
        let (s, t) = tables(service(4));
        let c = counts(&t, &s, &[0, 2, 3], &Policy::RoundRobin, 300);
        assert_eq!(c, vec![100, 0, 100, 100]);
    }

    #[test]
    fn random_spreads_evenly() {
        let (s, t) = tables(service(3));
        let c = counts(&t, &s, &[0, 1, 2], &Policy::Random, 3000);
        // Binomial(3000, 1/3): standard deviation 26; 150 is nearly six of them.
        for n in &c {
            assert!((850..=1150).contains(n), "{c:?}");
        }
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let (s, t) = tables(service(3));
        // Idle endpoints take strict turns.
        let c = counts(&t, &s, &[0, 1, 2], &Policy::LeastRequest, 300);
        assert_eq!(c, vec![100, 100, 100]);
        // Endpoint 0 has ten requests in flight.
        let busy: Vec<Picked> = (0..10)
            .map(|_| t.choose(&s, &[0], &Policy::LeastRequest, &Hint::default()))
            .collect();
        assert_eq!(t.in_flight(s.id, 0), 10);
        let c = counts(&t, &s, &[0, 1, 2], &Policy::LeastRequest, 900);
        // It is chosen only when both choices fall on it: about 1 in 9 (100 expected,
        // standard deviation 9.4), where turns would give it 300.
        assert!(c[0] < 150, "{c:?}");
        assert!(c[1] > 300 && c[2] > 300, "{c:?}");
        // Marks end with their picks.
        drop(busy);
        assert_eq!(t.in_flight(s.id, 0), 0);
        // Between two, a busy endpoint is chosen only when both choices fall on it:
        // about 1 in 4 (100 of 400, standard deviation 8.7), where turns give 200.
        let _busy = t.choose(&s, &[1], &Policy::LeastRequest, &Hint::default());
        let c = counts(&t, &s, &[1, 2], &Policy::LeastRequest, 400);
        assert!(c[1] < 150 && c[2] > 250, "{c:?}");
    }

    #[test]
    fn retries_avoid_tried_endpoints_unless_hashed() {
        let (s, t) = tables(service(3));
        let hint = Hint {
            avoid: &[0, 1],
            ..Hint::default()
        };
        for p in [Policy::RoundRobin, Policy::Random, Policy::LeastRequest] {
            for _ in 0..20 {
                assert_eq!(t.choose(&s, &[0, 1, 2], &p, &hint).index, 2);
            }
        }
        // All tried: any of them.
        let all = Hint {
            avoid: &[0, 1, 2],
            ..Hint::default()
        };
        assert!(t.choose(&s, &[0, 1, 2], &Policy::RoundRobin, &all).index < 3);
        // A hashed request goes back where it belongs.
        let h = with_header("x-user", "alice");
        let policy = Policy::Hash(HashPolicy {
            key: HashKey::Header("x-user"),
            ring_size: DEFAULT_RING_SIZE,
        });
        let uri = Uri::default();
        let first = t
            .choose(&s, &[0, 1, 2], &policy, &Hint::http(&h, &uri, None))
            .index;
        let again = Hint {
            avoid: &[first],
            ..Hint::http(&h, &uri, None)
        };
        assert_eq!(t.choose(&s, &[0, 1, 2], &policy, &again).index, first);
    }

    #[test]
    fn consistent_hash_is_stable_per_key_and_spreads_keys() {
        let (s, t) = tables(service(3));
        let policy = Policy::Hash(HashPolicy {
            key: HashKey::Header("x-user"),
            ring_size: DEFAULT_RING_SIZE,
        });
        let uri = Uri::default();
        let mut per_endpoint = [0usize; 3];
        for user in 0..300 {
            let h = with_header("x-user", &format!("user-{user}"));
            let hint = Hint::http(&h, &uri, None);
            let first = t.choose(&s, &[0, 1, 2], &policy, &hint).index;
            for _ in 0..5 {
                assert_eq!(t.choose(&s, &[0, 1, 2], &policy, &hint).index, first);
            }
            per_endpoint[first] += 1;
        }
        // Each endpoint gets a fair share of the keys (100 each on a perfect ring).
        assert!(per_endpoint.iter().all(|n| *n > 50), "{per_endpoint:?}");
        // One ring was built, and is shared.
        assert_eq!(t.rings.lock().unwrap().len(), 1);
    }

    #[test]
    fn consistent_hash_moves_only_the_keys_of_an_endpoint_that_leaves() {
        let s = service(3);
        let all = Ring::build(&s, &[0, 1, 2], DEFAULT_RING_SIZE);
        let two = Ring::build(&s, &[0, 1], DEFAULT_RING_SIZE);
        let keys: Vec<u64> = (0..3000u32).map(|k| hash64(&k)).collect();
        let mut moved = 0;
        for k in &keys {
            let (before, after) = (all.pick(*k), two.pick(*k));
            if before == 2 {
                moved += 1;
                assert_ne!(after, 2);
            } else {
                assert_eq!(before, after, "a key of a staying endpoint moved");
            }
        }
        // About a third of the keys were on the endpoint that left.
        assert!((700..=1300).contains(&moved), "{moved} of 3000 moved");
    }

    #[test]
    fn source_ip_and_query_parameter_keys() {
        let (s, t) = tables(service(3));
        let conn = |ip: &str, port| Downstream {
            remote: SocketAddr::new(ip.parse().unwrap(), port),
            local: "10.0.0.9:15001".parse().unwrap(),
        };
        let policy = Policy::Hash(HashPolicy {
            key: HashKey::SourceIp,
            ring_size: DEFAULT_RING_SIZE,
        });
        let h = HeaderMap::new();
        let uri = Uri::default();
        let pick = |c| {
            t.choose(&s, &[0, 1, 2], &policy, &Hint::http(&h, &uri, Some(c)))
                .index
        };
        // The port does not matter, the address does.
        assert_eq!(pick(conn("192.0.2.1", 1000)), pick(conn("192.0.2.1", 2000)));
        let spread: std::collections::BTreeSet<usize> = (1..60)
            .map(|i| pick(conn(&format!("192.0.2.{i}"), 1000)))
            .collect();
        assert!(spread.len() > 1);

        let policy = Policy::Hash(HashPolicy {
            key: HashKey::QueryParameter("u"),
            ring_size: DEFAULT_RING_SIZE,
        });
        let by_query = |q: &str| {
            let uri: Uri = format!("/p?{q}").parse().unwrap();
            t.choose(&s, &[0, 1, 2], &policy, &Hint::http(&h, &uri, None))
                .index
        };
        assert_eq!(by_query("a=1&u=bob"), by_query("u=bob&x=2"));
        assert_eq!(query_value(&"/p?u=1&u=2".parse().unwrap(), "u"), Some("1"));
        assert_eq!(query_value(&"/p?x".parse().unwrap(), "u"), None);
    }

    #[test]
    fn header_values_hash_in_any_order() {
        let mut a = HeaderMap::new();
        a.append("x-k", HeaderValue::from_static("1"));
        a.append("x-k", HeaderValue::from_static("2"));
        let mut b = HeaderMap::new();
        b.append("x-k", HeaderValue::from_static("2"));
        b.append("X-K", HeaderValue::from_static("1"));
        assert_eq!(header_hash(&a, "x-k"), header_hash(&b, "X-k"));
        assert_ne!(header_hash(&a, "x-k"), header_hash(&a, "x-other"));
        assert_eq!(header_hash(&a, "x-other"), None);
    }

    #[test]
    fn cookies_are_generated_with_a_ttl_and_then_followed() {
        let (s, t) = tables(service(3));
        let spec = |ttl| {
            Policy::Hash(HashPolicy {
                key: HashKey::Cookie(CookieKey {
                    name: "session",
                    path: "/",
                    ttl,
                    attributes: &[],
                }),
                ring_size: DEFAULT_RING_SIZE,
            })
        };
        let conn = Some(Downstream {
            remote: "10.1.0.1:40000".parse().unwrap(),
            local: "10.1.0.1:15001".parse().unwrap(),
        });
        let none = HeaderMap::new();
        let uri = Uri::default();
        let hint = Hint::http(&none, &uri, conn);

        // No cookie, a ttl: one is generated, and set on the response.
        let policy = spec(Some(Duration::from_secs(3600)));
        let first = t.choose(&s, &[0, 1, 2], &policy, &hint);
        let set = first
            .held
            .set_cookie()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let value = set
            .strip_prefix("session=\"")
            .and_then(|r| r.split_once('"'))
            .map(|(v, _)| v.to_string())
            .unwrap();
        assert_eq!(value.len(), 16, "{set}");
        assert_eq!(
            set,
            format!("session=\"{value}\"; Max-Age=3600; Path=/; HttpOnly")
        );
        // The same connection gets the same cookie (racing requests agree).
        let again = t.choose(&s, &[0, 1, 2], &policy, &hint);
        assert_eq!(again.held.set_cookie().unwrap().to_str().unwrap(), set);
        // With the cookie, no new one, and the same endpoint, every time.
        let with = with_header("cookie", &format!("a=b; session=\"{value}\""));
        for _ in 0..10 {
            let p = t.choose(&s, &[0, 1, 2], &policy, &Hint::http(&with, &uri, conn));
            assert_eq!(p.index, first.index);
            assert!(p.held.set_cookie().is_none());
        }
        // Unquoted, as some clients send it back: the same.
        let bare = with_header("cookie", &format!("session={value}"));
        let p = t.choose(&s, &[0, 1, 2], &policy, &Hint::http(&bare, &uri, None));
        assert_eq!(p.index, first.index);

        // A zero ttl: a session cookie (no Max-Age).
        let p = t.choose(&s, &[0, 1, 2], &spec(Some(Duration::ZERO)), &hint);
        assert_eq!(
            p.held.set_cookie().unwrap().to_str().unwrap(),
            format!("session=\"{value}\"; Path=/; HttpOnly")
        );
        // No ttl: no cookie.
        let p = t.choose(&s, &[0, 1, 2], &spec(None), &hint);
        assert!(p.held.set_cookie().is_none());

        // Attributes follow the path.
        let attrs = [
            json!({"name": "SameSite", "value": "Strict"}),
            json!({"name": "Secure"}),
        ];
        let key = CookieKey {
            name: "s",
            path: "",
            ttl: Some(Duration::from_secs(5)),
            attributes: &attrs,
        };
        assert_eq!(
            key.set_cookie("v", Duration::from_secs(5)).unwrap(),
            "s=\"v\"; Max-Age=5; SameSite=Strict; Secure; HttpOnly"
        );
    }

    #[test]
    fn the_response_keeps_the_mark_and_gets_the_cookie() {
        let (s, t) = tables(service(1));
        let policy = Policy::Hash(HashPolicy {
            key: HashKey::Cookie(CookieKey {
                name: "s",
                path: "",
                ttl: Some(Duration::from_secs(1)),
                attributes: &[],
            }),
            ring_size: 16,
        });
        let picked = t.choose(&s, &[0], &policy, &Hint::default());
        assert_eq!(t.in_flight(s.id, 0), 1);
        let mut resp = Response::new(crate::http::Body::local("hi"));
        picked.held.finish(&mut resp);
        assert!(
            resp.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .starts_with("s=\"")
        );
        assert_eq!(t.in_flight(s.id, 0), 1, "held by the body");
        let mut body = resp.into_body();
        let mut frames = 0;
        block_on(async {
            while let Some(Ok(_)) = std::future::poll_fn(|cx| {
                hyper::body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
            })
            .await
            {
                frames += 1;
            }
        });
        assert_eq!(frames, 1);
        assert_eq!(t.in_flight(s.id, 0), 0, "released at the end of the body");
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }
}
