//! Kubernetes mode's workload attestation: which pod a caller runs in ([`cgroup`]: its
//! `/proc/PID/cgroup`).

pub mod cgroup;
