//! What Warden's binaries share at run time (the CA, the node agent and the proxy;
//! `warden-proto` stays free of I/O): [`config`] (YAML config files, errors naming the
//! setting), [`process`] (logging, signals), [`files`] (atomic writes, PEM), [`x509`]
//! (the SPIFFE ID of a certificate), [`backoff`] (retry delays, full jitter),
//! [`monitoring`] (the `/metrics`, `/ready` HTTP server), [`prometheus`] (the text
//! exposition format, histograms), [`readiness`] (named guards `/ready` reports), [`uds`]
//! (gRPC over unix sockets, served to grpc-core clients too) and [`grpc_status`]
//! (`RESOURCE_EXHAUSTED` for oversized messages on every gRPC server). With the
//! `testing` feature, `testing` holds the test CA other crates' tests issue SVIDs with.

pub mod backoff;
pub mod checkpoint;
pub mod config;
pub mod files;
pub mod grpc_status;
pub mod io;
pub mod monitoring;
pub mod process;
pub mod prometheus;
pub mod readiness;
#[cfg(feature = "testing")]
pub mod testing;
pub mod uds;
pub mod x509;
