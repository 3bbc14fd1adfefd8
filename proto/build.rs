//! Compiles the protos with protox (pure Rust; this machine has no protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/istio_ca.proto",
        "proto/admin.proto",
        "proto/warden_ca.proto",
        "proto/workload.proto",
        // OTLP/gRPC trace export (its imports: common, resource, trace).
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // Imported files compiled with the ones above.
    println!("cargo:rerun-if-changed=proto/opentelemetry");
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
