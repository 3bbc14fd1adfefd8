//! Istio's traffic management as a client sidecar applies it, with no I/O: the
//! VirtualServices and DestinationRules of a [`crate::loader::ConfigSet`] compiled into a
//! [`RouteTable`], and the decision for one request ([`RouteTable::decide`]): which
//! VirtualService owns the host, which rule matches (first match wins; match blocks OR,
//! fields AND), and what follows (weighted destinations, redirect, direct response,
//! rewrite, timeout, retries, fault, mirror, header operations) with the effective
//! DestinationRule policy of the chosen destination. `warden route check` prints it.

pub mod duration;
pub mod model;
mod table;

pub use table::{
    DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON, Decision, DestinationOut, RouteError, RouteRequest,
    RouteTable, TableOptions,
};

#[cfg(test)]
mod tests;
