//! Which pod (and container) a process belongs to, from `/proc/PID/cgroup`, as SPIRE's
//! `k8s` workload attestor finds it (written here from the formats, not its regexes).
//!
//! Kubelet puts every pod in a cgroup named after its UID, and the container runtime
//! puts each container in a child cgroup named after the container ID. The file has one
//! line per hierarchy, `ID:CONTROLLERS:PATH` (cgroup v1: many lines; v2: one `0::PATH`
//! line). The path depends on the cgroup driver:
//!
//! - cgroupfs: `/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/<64 hex>`
//!   (the pod segment is `pod<UID>`, the container segment the bare ID);
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-<64 hex>.scope`
//!   (dashes of the UID become `_`; the container scope is `<runtime>-<ID>.scope`);
//! - seen from a non-root cgroup namespace, the path starts with `/../..` and may
//!   begin at the pod segment: `/../../kubepods-besteffort-pod<UID>.slice/cri-containerd-<ID>.scope`.
//!
//! Static (mirror) pods have 32-hex UIDs without dashes; both forms are accepted.

use std::path::Path;

/// Where a process runs in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProcess {
    /// The pod's UID, with dashes (as in `metadata.uid`).
    pub pod_uid: String,
    /// The container ID (64 hex), when the process is in a container's cgroup.
    pub container_id: Option<String>,
}

/// Whether `s` is a pod UID as cgroup names carry it: 8-4-4-4-12 hex with `-` or `_`,
/// or 32 hex (static pods). Returns it as `metadata.uid` spells it.
fn pod_uid(s: &str) -> Option<String> {
    let hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
    if s.len() == 32 && hex(s) {
        return Some(s.to_string());
    }
    if s.len() != 36 {
        return None;
    }
    let sep = if s.contains('_') { '_' } else { '-' };
    let parts: Vec<&str> = s.split(sep).collect();
    let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    (lens == [8, 4, 4, 4, 12] && parts.iter().all(|p| hex(p))).then(|| parts.join("-"))
}

/// The pod UID of one path segment: `pod<UID>` (cgroupfs) or `…-pod<UID>.slice`
/// (systemd).
fn pod_segment(segment: &str) -> Option<String> {
    if let Some(rest) = segment.strip_prefix("pod") {
        return pod_uid(rest);
    }
    let stem = segment.strip_suffix(".slice")?;
    let (_, uid) = stem.rsplit_once("-pod")?;
    pod_uid(uid)
}

/// The container ID of one path segment: the bare 64-hex ID (cgroupfs), or
/// `<runtime>-<ID>.scope` (systemd: `cri-containerd-`, `crio-`, `docker-`, `containerd-`).
fn container_segment(segment: &str) -> Option<String> {
    let id = match segment.strip_suffix(".scope") {
        Some(stem) => [
            "cri-containerd-",
            "crio-",
            "docker-",
            "containerd-",
            "cri-o-",
        ]
        .iter()
        .find_map(|p| stem.strip_prefix(p))?,
        None => segment,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// The pod and container of one cgroup path, if it is a pod's.
fn parse_path(path: &str) -> Option<PodProcess> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (at, uid) = segments
        .iter()
        .enumerate()
        .find_map(|(i, s)| pod_segment(s).map(|u| (i, u)))?;
    // The container is the segment right under the pod's.
    let container_id = segments.get(at + 1).and_then(|s| container_segment(s));
    Some(PodProcess {
        pod_uid: uid,
        container_id,
    })
}

/// The pod of the content of a `/proc/PID/cgroup` file.
pub fn parse(content: &str) -> Result<PodProcess, String> {
    let mut found: Option<PodProcess> = None;
    let mut paths = Vec::new();
    for line in content.lines().filter(|l| !l.trim().is_empty()) {
        // ID:CONTROLLERS:PATH; the path may itself contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("malformed cgroup line {line:?}"));
        };
        paths.push(path);
        let Some(this) = parse_path(path) else {
            continue;
        };
        match &mut found {
            None => found = Some(this),
            Some(f) if f.pod_uid != this.pod_uid => {
                return Err(format!(
                    "its cgroups name two pods, {} and {}",
                    f.pod_uid, this.pod_uid
                ));
            }
            Some(f) => {
                if f.container_id.is_none() {
                    f.container_id = this.container_id;
                }
            }
        }
    }
    found.ok_or_else(|| {
        paths.dedup();
        format!(
            "it is in no Kubernetes pod (its cgroups: {})",
            if paths.is_empty() {
                "none".to_string()
            } else {
                paths.join(", ")
            }
        )
    })
}

/// The pod of process `pid`, reading `<proc_root>/<pid>/cgroup`.
pub fn pod_of_process(proc_root: &Path, pid: i32) -> Result<PodProcess, String> {
    let file = proc_root.join(pid.to_string()).join("cgroup");
    let content = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse(&content).map_err(|reason| format!("process {pid}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
    const UID_SYSTEMD: &str = "1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d";

    fn cid() -> String {
        "0123456789abcdef".repeat(4)
    }

    fn want(container: bool) -> PodProcess {
        PodProcess {
            pod_uid: UID.into(),
            container_id: container.then(cid),
        }
    }

    /// Writes `<root>/<pid>/cgroup`.
    fn proc_file(root: &Path, pid: i32, content: &str) {
        std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
        std::fs::write(root.join(pid.to_string()).join("cgroup"), content).unwrap();
    }

    #[test]
    fn cgroup_v2_systemd_driver() {
        let dir = tempfile::tempdir().unwrap();
        let c = cid();
        proc_file(
            dir.path(),
            42,
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{c}.scope\n"
            ),
        );
        assert_eq!(pod_of_process(dir.path(), 42).unwrap(), want(true));
    }

    #[test]
    fn cgroup_v1_cgroupfs_driver() {
        let dir = tempfile::tempdir().unwrap();
        let c = cid();
        proc_file(
            dir.path(),
            7,
            &format!(
                "12:memory:/kubepods/besteffort/pod{UID}/{c}\n\
                 11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{c}\n\
                 1:name=systemd:/kubepods/besteffort/pod{UID}/{c}\n\
                 0::/\n"
            ),
        );
        assert_eq!(pod_of_process(dir.path(), 7).unwrap(), want(true));
    }

    #[test]
    fn cgroup_v1_systemd_driver_with_docker_and_crio_scopes() {
        let c = cid();
        for scope in [format!("docker-{c}.scope"), format!("crio-{c}.scope")] {
            let text = format!(
                "4:pids:/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/{scope}\n1:name=systemd:/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/{scope}\n"
            );
            assert_eq!(parse(&text).unwrap(), want(true), "{scope}");
        }
    }

    #[test]
    fn non_root_cgroup_namespace() {
        let c = cid();
        let text = format!(
            "0::/../../kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{c}.scope\n"
        );
        assert_eq!(parse(&text).unwrap(), want(true));
        let text = format!("0::/../pod{UID}/{c}\n");
        assert_eq!(parse(&text).unwrap(), want(true));
    }

    #[test]
    fn static_pod_uids_and_pod_level_cgroups() {
        let hash = "2c48913c3ad5e69b43e40a1a5bd81b4d";
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{hash}.slice/cri-containerd-{}.scope",
            cid()
        );
        assert_eq!(parse(&text).unwrap().pod_uid, hash);
        // A process in the pod's cgroup but no container's: the pod, no container.
        let text = format!("0::/kubepods/burstable/pod{UID}\n");
        assert_eq!(parse(&text).unwrap(), want(false));
        // conmon is not the container.
        let text = format!(
            "0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/crio-conmon-{}.scope",
            cid()
        );
        assert_eq!(parse(&text).unwrap(), want(false));
    }

    #[test]
    fn a_process_in_no_pod_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        proc_file(
            dir.path(),
            9,
            "0::/user.slice/user-1000.slice/session-3.scope\n",
        );
        let err = pod_of_process(dir.path(), 9).unwrap_err();
        assert!(
            err.contains("process 9") && err.contains("no Kubernetes pod"),
            "{err}"
        );
        assert!(
            err.contains("/user.slice/user-1000.slice/session-3.scope"),
            "{err}"
        );
        for not_a_pod in [
            "0::/system.slice/podman.service\n",
            "0::/kubepods/besteffort/podnot-a-uid/x\n",
            "0::/\n",
        ] {
            assert!(parse(not_a_pod).is_err(), "{not_a_pod}");
        }
        let err = pod_of_process(dir.path(), 10).unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("10/cgroup"),
            "{err}"
        );
        assert!(parse("garbage").unwrap_err().contains("malformed"));
    }

    #[test]
    fn two_pods_in_one_file_are_refused() {
        let other = "ffffffff-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
        let text = format!(
            "2:cpu:/kubepods/pod{UID}/{}\n1:memory:/kubepods/pod{other}/{}\n",
            cid(),
            cid()
        );
        assert!(parse(&text).unwrap_err().contains("two pods"));
    }
}
