//! Warden's sidecar proxy (`warden-proxy`): every connection between workloads is
//! SPIFFE mutual TLS with SVIDs from the node agent, and every connection and request
//! passes PeerAuthentication, RequestAuthentication and AuthorizationPolicy before it
//! reaches the app.
//!
//! - [`mesh`]: the Istio YAML side. The watched directory (ServiceEntry, WorkloadEntry,
//!   DestinationRule and the security policies) compiled all-or-nothing into a
//!   [`mesh::config::MeshConfig`] ([`mesh::config`]); a bad change is refused whole and
//!   the last good one stays. [`mesh::model`] holds services, endpoints and workloads,
//!   [`mesh::registry`] builds them and resolves hosts, [`mesh::traffic_policy`] picks
//!   the HTTP version toward each destination.
//! - [`sds`] and [`identity`]: an SDS client of the node agent, as Envoy is one; it
//!   streams this workload's SVID and `ROOTCA` and keeps the last good material.
//! - [`tls`]: SPIFFE mutual TLS with rustls (ring only), secure naming, rotation for
//!   new handshakes without touching live connections.
//! - [`pipeline`]: the HTTP request path as one pipeline of stages over the request
//!   itself (validate, normalize the path, sanitize headers, then the side's own
//!   stages, then forward): what was authorized is what is forwarded.
//! - [`inbound`] (port 15006): STRICT/PERMISSIVE per port (TLS told from plaintext by
//!   the first byte), then per request the pipeline with the JWT filter and the RBAC
//!   decision, then the app; HTTP/1.1, HTTP/2, gRPC, WebSocket and opaque TCP.
//! - [`outbound`] (port 15001): an HTTP proxy (absolute form or `Host`) and a TCP
//!   listener per TCP service port, each sending mutual TLS with Istio's SNI to an
//!   endpoint of the resolved service and refusing a server with the wrong identity;
//!   [`balance`] chooses the endpoint by the DestinationRule's `loadBalancer`;
//!   [`routing`] applies the route table ([`cors`]: a route's CORS policy, as Envoy's
//!   CORS filter applies it); [`circuit`] and [`outlier`] are the
//!   DestinationRule's connection pool and outlier detection; [`egress`] reaches
//!   `MESH_EXTERNAL` services: plaintext, TLS originated by the DestinationRule's
//!   `tls` (`SIMPLE`, `MUTUAL`), or mesh mutual TLS (`ISTIO_MUTUAL`).
//! - [`gateway`] (`--mode gateway`): an ingress gateway serving `Gateway` servers
//!   (HTTP, HTTPS with files, passthrough by SNI, TCP) through the same routing.
//! - [`ratelimit`]: local rate limits (token buckets) on inbound and gateway requests.
//! - [`listener`]: accepting within the connection limit, the header, idle and
//!   handshake timeouts, tunnels, the drain; [`pool`]: upstream connections;
//!   [`http`]: the response body and local replies in Envoy's words.
//! - [`metrics`]: Istio's standard metrics with Istio's labels, and Warden's own.
//! - [`config`]: the process flags; [`app`]: the wiring ([`app::build`] returns the
//!   bound addresses), the admin endpoints (`/ready` on 15021, `/stats/prometheus` on
//!   15020) and the SIGTERM drain; [`context`]: the state the listeners share.

pub mod admin;
pub mod app;
pub mod balance;
pub mod circuit;
pub mod config;
pub mod conn;
pub mod context;
pub mod cors;
pub mod egress;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod otlp;
pub mod outbound;
pub mod outlier;
pub mod pipeline;
pub mod pool;
pub mod ratelimit;
pub mod routing;
pub mod sds;
pub mod sock;
pub mod telemetry;
pub mod tls;
pub mod trace;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_support {
    //! The test CA (`warden_common::testing::TestCa`) and the proxy's own view of its
    //! leaves: a checked [`Identity`].

    use std::sync::Arc;

    pub(crate) use warden_common::testing::TestCa;

    use crate::identity::{Identity, Svid, TrustBundle};

    /// A checked identity for `id` with the CA's root as the bundle.
    pub(crate) trait IdentityOf {
        fn identity(&self, id: &str) -> Arc<Identity>;
    }

    impl IdentityOf for TestCa {
        fn identity(&self, id: &str) -> Arc<Identity> {
            let (chain, key) = self.leaf_der(id);
            Arc::new(Identity::new(
                Arc::new(Svid::from_der(chain, key).unwrap()),
                Arc::new(TrustBundle::from_der(vec![self.root_der()]).unwrap()),
            ))
        }
    }
}
