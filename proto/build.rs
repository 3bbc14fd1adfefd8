//! Compiles the protos with protox (pure Rust; this machine has no protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/istio_ca.proto",
        "proto/admin.proto",
        "proto/warden_ca.proto",
        "proto/workload.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
