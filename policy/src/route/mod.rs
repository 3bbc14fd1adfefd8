//! Istio's traffic management as a client sidecar or a gateway applies it, with no I/O:
//! the VirtualServices, DestinationRules and Gateways of a [`crate::loader::ConfigSet`]
//! compiled into a [`RouteTable`], and the decision for one request
//! ([`RouteTable::decide`]): which VirtualService owns the host (for a gateway, the
//! bound VirtualServices whose routes merge into the host's virtual host), which rule
//! matches (first match wins; match blocks OR, fields AND; `tls` rules by SNI), and what
//! follows (weighted destinations, redirect, direct response, rewrite, timeout, retries,
//! fault, mirror, header operations, CORS) with the effective DestinationRule policy of the
//! chosen destination. `warden route check` prints it. [`RouteTable::gateway_servers`]
//! lists the Gateway servers a gateway workload listens with (`gateway`).

mod cors;
pub mod duration;
mod gateway;
pub mod model;
mod table;

pub use cors::{Cors, OriginMatch};
pub use gateway::{GatewayConfig, GatewayServer, ServerProtocol, ServerTls, TlsMode};
pub use table::{
    DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON, Decision, DestinationOut, RouteError, RouteRequest,
    RouteTable, TableOptions,
};

#[cfg(test)]
mod tests;
