//! `warden-proxy`: the sidecar binary.
fn main() {}
