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
//! Addresses: each mesh takes a random `127.A.B.0/24` (never `127.0.0.0/24`), claimed
//! with a lock file for its lifetime and checked free, and gives workloads `.2`, `.3`, ... so tests in parallel threads and parallel
//! test binaries do not collide; every proxy uses the default ports (15001 outbound,
//! 15006 inbound, 15020 stats, 15021 health) on its own address. An application port
//! is the service port plus [`APP_PORT_OFFSET`] (the `targetPort` and the
//! `WorkloadEntry` port), so an application never sits on a port a proxy binds for a
//! TCP service.
//!
//! The module is split in two:
//!
//! - the harness: [`spec`] (what a test asks for: workloads, services, ports, and the
//!   Istio YAML written for them) and [`harness`] (the processes: [`Mesh`], its
//!   builder, the proxies and applications, the subnet);
//! - the clients the tests drive it with, in [`clients`]: an HTTP/1.1 and h2c client
//!   ([`Req`], [`send`]) and a raw one ([`raw_http`]), a gRPC client over tonic with a
//!   raw-bytes codec ([`grpc_say`]), a WebSocket client ([`WsClient`]) and the frame
//!   codec the test application shares ([`ws`]), and a Prometheus text reader
//!   ([`metric_sum`]).
//!
//! Everything is re-exported here, so tests `use warden_tests::mesh::...`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // test support: panics are failures

use std::time::Duration;

pub mod clients;
pub mod harness;
pub mod spec;

pub use clients::grpc::{RawCodec, grpc_call, grpc_say};
pub use clients::http::{Raw, Req, Resp, Wire, raw_http, read_until_quiet, send, try_http_get};
pub use clients::ws::{self, WsClient};
pub use clients::{echo, metric_sum};
pub use harness::{Mesh, MeshBuilder, ProxyProcess};
pub use spec::{
    Port, Protocol, ServiceSpec, Workload, WorkloadSpec, allow_only, authorization_policy,
    peer_authentication,
};

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

/// Random bytes from ring's generator.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

/// The last `n` of `lines`, one per line (for failure messages).
pub fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}
