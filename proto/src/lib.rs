//! Everything that crosses a Warden process boundary, with no I/O: the generated
//! gRPC types for Istio's certificate API ([`istio_ca`]) and Warden's admin API
//! ([`admin`]), Warden's CA services ([`warden_ca`]: JWT-SVIDs, node entries), the SPIFFE Workload API ([`workload`]), and the [`SpiffeId`] type every component uses to name identities.

pub mod duration;
pub mod selector;
pub mod spiffe;

pub use selector::{Selector, SelectorError};
pub use spiffe::{SpiffeId, SpiffeIdError};

/// `istio.v1.auth.IstioCertificateService`, wire-compatible with Istio's `ca.proto`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod istio_ca {
    tonic::include_proto!("istio.v1.auth");
}

/// `warden.admin.v1.Admin`, the CA's local admin API used by the `warden` CLI.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod admin {
    tonic::include_proto!("warden.admin.v1");
}

/// `warden.ca.v1.JwtSvidService`: JWT-SVID minting and the JWT bundle.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod warden_ca {
    tonic::include_proto!("warden.ca.v1");
}

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package), server and client.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod workload {
    tonic::include_proto!("_");
}

/// OpenTelemetry's OTLP trace protos (package `opentelemetry.proto`, a subset), for the
/// proxy's span export: `otlp::collector::trace::v1::trace_service_client`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod otlp {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.common.v1");
        }
    }
    pub mod resource {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.resource.v1");
        }
    }
    pub mod trace {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.trace.v1");
        }
    }
    pub mod collector {
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
            }
        }
    }
}

/// The gRPC metadata every Workload API request must carry (`workload.spiffe.io: true`).
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// Metadata key of a CreateCertificate request naming the identity a node asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
