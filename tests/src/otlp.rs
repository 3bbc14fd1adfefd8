//! An OTLP/gRPC trace receiver no one here wrote (`tests/interop/otlp_receiver.py`:
//! OpenTelemetry's generated stubs on grpcio), for the span export tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::KillOnDrop;

/// Python that can import grpcio and OpenTelemetry's generated TraceService stubs
/// (skipped loudly without, except under CI=true).
pub fn python() -> Option<PathBuf> {
    crate::interop_python(
        "the OTLP export interop (opentelemetry-proto's receiver)",
        "grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
    )
}

/// Starts the receiver on a free port; its port and the file it appends spans to.
pub fn receiver(py: &PathBuf, dir: &std::path::Path) -> (KillOnDrop, u16, PathBuf) {
    let out = dir.join("spans.jsonl");
    let mut child = Command::new(py)
        .arg(crate::interop_script("otlp_receiver.py"))
        .args(["--port", "0", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    // The first line, or EOF if the receiver died (its stderr is the test's).
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("receiver printed no port ({e}): {line:?}"));
    let port = u16::try_from(v["port"].as_u64().unwrap()).unwrap();
    (child, port, out)
}

/// The spans the receiver wrote to `out` so far (one JSON object per span).
pub fn spans(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
