//! The manager's unit tests: the state it publishes, and its rotation against an
//! in-process fake CA under tokio's paused clock (refresh at the rotation ratio,
//! backoff, the old SVID kept while the CA is down, file output).

use warden_common::testing::TestCa;

use super::*;
use crate::ca_client::CaClient;
use crate::ca_client::fake::{FakeCa, at};
use crate::config::NodeCredential;
use crate::svid::test_support::AgentCa;

fn manager(mode: Mode, root_pem: &str, dir: &std::path::Path) -> Arc<Manager> {
    let ca = Arc::new(CaClient::new("https://127.0.0.1:9", "localhost", root_pem.into()).unwrap());
    let node = Arc::new(
        Node::new(
            ca.clone(),
            NodeCredential::None,
            dir,
            "cluster.local",
            "n1",
            Duration::from_secs(60),
            RotationPolicy::default(),
        )
        .unwrap(),
    );
    let settings = Settings {
        mode,
        ttl: Duration::from_secs(60),
        rotation: RotationPolicy::default(),
        sync_interval: Duration::from_secs(5),
        write_dir: None,
    };
    Arc::new(Manager::new(
        ca,
        node,
        settings,
        Arc::new(Metrics::default()),
    ))
}

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

#[tokio::test]
async fn a_new_root_in_an_answer_replaces_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (TestCa::new(), TestCa::new());
    let m = manager(Mode::Node, &ca1.pem(), dir.path());
    let mut rx = m.subscribe();
    m.publish(ca1.svid(WEB));
    let b1 = m.state().bundle.clone().unwrap();
    assert!(rx.has_changed().unwrap());
    rx.borrow_and_update();
    // Same root: the bundle is kept as it was (no ROOTCA push).
    m.publish(ca1.svid(WEB));
    assert!(Arc::ptr_eq(&b1, m.state().bundle.as_ref().unwrap()));
    // Another root: the bundle changes with the SVID.
    let s2 = m.publish(ca2.svid(WEB));
    let b2 = m.state().bundle.clone().unwrap();
    assert_ne!(b1.pem, b2.pem);
    assert_eq!(b2.pem, ca2.pem());
    let id = SpiffeId::parse(WEB).unwrap();
    assert!(Arc::ptr_eq(&m.state().svids[&id], &s2));
}

#[tokio::test]
async fn removed_entries_drop_their_identities() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let m = manager(Mode::Node, &ca.pem(), dir.path());
    let web = SpiffeId::parse(WEB).unwrap();
    let entry = Entry {
        id: "e1".into(),
        spiffe_id: web.clone(),
        selectors: vec!["unix:uid:1000".parse().unwrap()],
    };
    m.apply_entries(vec![entry.clone()]);
    m.publish(ca.svid(WEB));
    let caller = Caller {
        socket: None,
        uid: 1000,
        gid: 1,
        exe: None,
        kubernetes: None,
    };
    assert_eq!(
        m.state().identities_for(Mode::Node, &caller),
        vec![web.clone()]
    );
    assert_eq!(m.tasks.lock().unwrap().len(), 1);
    m.apply_entries(vec![]);
    assert!(m.state().identities_for(Mode::Node, &caller).is_empty());
    assert!(
        m.state().svids.is_empty(),
        "the SVID of a removed entry is dropped"
    );
    assert!(m.tasks.lock().unwrap().is_empty());
    m.stop();
}

#[tokio::test]
async fn workload_mode_serves_its_own_identity_to_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let m = manager(Mode::Workload, &ca.pem(), dir.path());
    let anyone = Caller {
        socket: None,
        uid: 4242,
        gid: 4242,
        exe: None,
        kubernetes: None,
    };
    assert!(m.state().identities_for(Mode::Workload, &anyone).is_empty());
    assert_eq!(m.ready().pending(), ["first-svid"]);
    m.publish(ca.svid(WEB));
    assert_eq!(
        m.state().identities_for(Mode::Workload, &anyone),
        vec![SpiffeId::parse(WEB).unwrap()]
    );
}

/// A node-mode manager with one entry for WEB on a fake CA, under tokio's paused
/// clock: 100 s SVIDs refreshed at half life, backoff without jitter. Started; the
/// first SVID was issued at 0 s and it is now 1 s.
struct Running {
    m: Arc<Manager>,
    ca: Arc<FakeCa>,
    first: Arc<Svid>,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.m.stop();
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn running() -> Running {
    running_writing_to(None).await
}

/// [`running`], with file output to `write_dir`.
async fn running_writing_to(write_dir: Option<PathBuf>) -> Running {
    let ca = Arc::new(FakeCa::new());
    ca.add_entry("e1", WEB, &["unix:uid:1000"]);
    let (m, dir) = on_fake_ca(&ca, write_dir);
    let tasks = m.start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = web_svid(&m);
    Running {
        m,
        ca,
        first,
        tasks,
        _dir: dir,
    }
}

/// A node-mode manager on `ca`, not started: 100 s SVIDs refreshed at half life,
/// entries synced every 5 s, backoff without jitter; and its node's data dir.
fn on_fake_ca(ca: &Arc<FakeCa>, write_dir: Option<PathBuf>) -> (Arc<Manager>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(100);
    let rotation = RotationPolicy::new(0.5, 0.0).unwrap();
    let node = Node::new(
        ca.clone(),
        NodeCredential::None,
        dir.path(),
        "cluster.local",
        "n1",
        ttl,
        rotation,
    )
    .unwrap()
    .with_timing(ca.timing());
    let settings = Settings {
        mode: Mode::Node,
        ttl,
        rotation,
        sync_interval: Duration::from_secs(5),
        write_dir,
    };
    let m =
        Manager::new(ca.clone(), Arc::new(node), settings, Arc::default()).with_timing(ca.timing());
    (Arc::new(m), dir)
}

fn web_svid(m: &Manager) -> Arc<Svid> {
    m.state().svids[&SpiffeId::parse(WEB).unwrap()].clone()
}

/// Node mode: `/ready` waits for the first entry sync, and says so.
#[tokio::test(start_paused = true)]
async fn ready_once_the_first_entry_sync_is_done() {
    let ca = Arc::new(FakeCa::new());
    ca.set_down(true);
    let (m, _dir) = on_fake_ca(&ca, None);
    let tasks = m.start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _, body) = m.ready().answer();
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: waiting for: entry-sync\n");
    ca.set_down(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(m.ready().is_ready(), "{:?}", m.ready().pending());
    m.stop();
    tasks.iter().for_each(JoinHandle::abort);
}

#[tokio::test(start_paused = true)]
async fn svids_are_refreshed_at_the_rotation_ratio_of_their_life() {
    let Running { m, ca, first, .. } = &running().await;
    assert_eq!(first.not_after, at(100));
    // notBefore is backdated two minutes; the life counts from receipt.
    assert_eq!(first.received, at(0));
    tokio::time::sleep(Duration::from_millis(48_900)).await;
    assert!(Arc::ptr_eq(&web_svid(m), first), "refreshed before 50 s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = web_svid(m);
    assert_ne!(second.serial, first.serial, "not refreshed at 50 s");
    assert_eq!(second.received, at(50));
    tokio::time::sleep(Duration::from_secs(110)).await;
    assert_eq!(ca.call_times(true), [0, 50_000, 100_000, 150_000]);
    assert!(ca.call_times(false).is_empty());
    assert_eq!(m.metrics().svid_refreshes.load(Ordering::Relaxed), 4);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_backs_off_keeps_the_old_svid_and_recovers() {
    let Running { m, ca, first, .. } = &running().await;
    ca.set_down(true);
    tokio::time::sleep(Duration::from_secs(69)).await; // t = 70 s
    // Refresh due at 50 s; retries after 0.5, 1, 2, 4, 8 s; the next in 16 s.
    assert_eq!(
        ca.call_times(false),
        [50_000, 50_500, 51_500, 53_500, 57_500, 65_500]
    );
    assert_eq!(m.metrics().svid_refresh_failures.load(Ordering::Relaxed), 6);
    assert!(Arc::ptr_eq(&web_svid(m), first), "the old SVID is served");
    assert_eq!(m.state().entries.len(), 1, "the cached entries are kept");
    assert!(m.metrics().entry_sync_failures.load(Ordering::Relaxed) > 0);
    ca.set_down(false);
    tokio::time::sleep(Duration::from_secs(20)).await; // t = 90 s
    assert_eq!(
        ca.call_times(true),
        [0, 81_500],
        "recovered at the next retry"
    );
    let second = web_svid(m);
    assert_ne!(second.serial, first.serial);
    // Back on schedule: the next refresh at half the new SVID's life, from receipt
    // at 81.5 s to notAfter 181 s (X.509 keeps whole seconds): 81.5 + 99.5 / 2.
    assert_eq!(second.not_after, at(181));
    tokio::time::sleep(Duration::from_secs(45)).await; // t = 135 s
    assert_eq!(ca.call_times(true), [0, 81_500, 131_250]);
}

#[tokio::test(start_paused = true)]
async fn a_busy_ca_is_retried_no_sooner_than_its_pushback() {
    let Running { m, ca, first, .. } = &running().await;
    // At its limits from the refresh at 50 s on, asking for 8 s: the retries come at
    // the hint plus half of it again (the test's jitter is its maximum), not after the
    // 0.5 s backoff.
    ca.set_busy(Some(Duration::from_secs(8)));
    tokio::time::sleep(Duration::from_secs(69)).await; // t = 70 s
    assert_eq!(ca.call_times(false), [50_000, 62_000]);
    assert!(Arc::ptr_eq(&web_svid(m), first), "the old SVID is served");
    ca.set_busy(None);
    tokio::time::sleep(Duration::from_secs(10)).await; // t = 80 s
    assert_eq!(ca.call_times(true), [0, 74_000]);
}

#[tokio::test(start_paused = true)]
async fn while_the_ca_stays_down_the_old_svid_is_served_until_it_expires() {
    let Running { m, ca, first, .. } = &running().await;
    ca.set_down(true);
    tokio::time::sleep(Duration::from_millis(98_900)).await; // t = 99.9 s
    assert!(Arc::ptr_eq(&web_svid(m), first));
    assert!(first.valid_at(at(99) + Duration::from_millis(900)));
    // Retries come closer as expiry nears: each within half the life left (plus
    // the timer's millisecond), the last ones under a second before expiry.
    let failed = ca.call_times(false);
    for pair in failed.windows(2) {
        let left = 100_000 - pair[0];
        assert!(
            pair[1] - pair[0] <= (left / 2).max(100) + 1,
            "retry at {} ms after a failure at {} ms, {left} ms before expiry",
            pair[1],
            pair[0]
        );
    }
    assert!(
        failed.iter().any(|&t| (99_000..100_000).contains(&t)),
        "{failed:?}"
    );
    // Past expiry the retries go back to plain backoff: no busy loop.
    let before = ca.calls().len();
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(ca.calls().len() - before <= 2, "{:?}", ca.call_times(false));
}

#[tokio::test(start_paused = true)]
async fn write_dir_files_follow_rotation() {
    let out = tempfile::tempdir().unwrap();
    let Running { m, first, .. } = &running_writing_to(Some(out.path().into())).await;
    let dir = crate::files::dir_for(out.path(), &first.id);
    assert!(dir.ends_with("ns/default/sa/web"), "{}", dir.display());
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(read(crate::files::CHAIN_FILE), first.chain_pem);
    assert_eq!(read(crate::files::KEY_FILE), first.key.pem());
    assert_eq!(read(crate::files::ROOT_FILE), first.bundle.pem);
    tokio::time::sleep(Duration::from_secs(50)).await;
    let second = web_svid(m);
    assert_ne!(second.serial, first.serial);
    assert_eq!(read(crate::files::CHAIN_FILE), second.chain_pem);
    assert_eq!(read(crate::files::KEY_FILE), second.key.pem());
    // Rewritten in place: the three files, no temporary ones left behind, the key
    // private.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    let key = std::fs::metadata(dir.join(crate::files::KEY_FILE)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
}

/// Polls `f` every 10 ms for up to 5 s.
async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

/// Kubernetes mode against the fake API server (pod bodies follow the Kubernetes API
/// reference) and cgroup files in a temp dir standing for /proc.
#[tokio::test]
async fn kubernetes_mode_gives_a_pod_its_service_account_identity_without_an_entry() {
    use crate::endpoints::caller::identities_or_denied;
    use crate::kube::pods::{NodePods, tests::pod};
    use crate::kube::{PodAttestor, tests::proc_of};
    use warden_common::testing::kube_api::FakeApiServer;

    let api = FakeApiServer::new();
    let cid = "ef".repeat(32);
    let stored = api.insert(pod("shop", "web-0", "n1", "web", Some(&cid)));
    let uid = stored["metadata"]["uid"].as_str().unwrap().to_string();
    let (pods, _watch) = NodePods::start(api.client(), "n1");
    pods.wait_synced().await;
    let proc = tempfile::tempdir().unwrap();
    proc_of(proc.path(), 100, &uid, &cid);
    std::fs::create_dir_all(proc.path().join("200")).unwrap();
    std::fs::write(
        proc.path().join("200/cgroup"),
        "0::/system.slice/cron.service\n",
    )
    .unwrap();

    let ca = Arc::new(FakeCa::new());
    // An entry narrows the app container to its own identity; another would give a
    // host process (uid 0) an identity outside Kubernetes mode.
    let app = "spiffe://cluster.local/ns/shop/sa/web-app";
    ca.add_entry("e1", app, &["k8s:ns:shop", "k8s:container-name:app"]);
    ca.add_entry("e2", WEB, &["unix:uid:0"]);
    let (m, _dir) = on_fake_ca(&ca, None);
    let m = Arc::new(Arc::try_unwrap(m).unwrap().with_pod_attestor(PodAttestor {
        pods,
        proc_root: proc.path().to_path_buf(),
        wait: Duration::from_millis(200),
        trust_domain: "cluster.local".into(),
    }));
    let tasks = m.start();
    let default = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    // The pod's identity is fetched before it asks: impersonated under the node.
    eventually(|| m.state().svids.contains_key(&default)).await;
    assert!(
        ca.calls()
            .iter()
            .any(|c| c.impersonate.as_ref() == Some(&default))
    );

    let attestor = m.pod_attestor().unwrap();
    let in_pod = Caller {
        socket: None,
        uid: 1000,
        gid: 1000,
        exe: None,
        kubernetes: Some(attestor.attest(Some(100)).await),
    };
    let state = m.state();
    assert_eq!(
        state.identities_for(Mode::Node, &in_pod),
        vec![SpiffeId::parse(app).unwrap(), default.clone()]
    );
    // Another container of the pod: only the default identity.
    let mut sidecar = in_pod.clone();
    if let Some(Ok(p)) = &mut sidecar.kubernetes {
        p.container_name = Some("istio-proxy".into());
    }
    assert_eq!(
        state.identities_for(Mode::Node, &sidecar),
        vec![default.clone()]
    );
    // A host process: nothing in Kubernetes mode, even with a matching unix entry, and
    // the refusal says why.
    let host = Caller {
        socket: None,
        uid: 0,
        gid: 0,
        exe: None,
        kubernetes: Some(attestor.attest(Some(200)).await),
    };
    assert!(state.identities_for(Mode::Node, &host).is_empty());
    let denied = identities_or_denied(&m, &state, &host).unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("cannot be tied to a Kubernetes pod")
            && denied.message().contains("no Kubernetes pod"),
        "{}",
        denied.message()
    );
    // The pod goes: its identity's task stops and its SVID is dropped.
    api.remove("v1", "pods", Some("shop"), "web-0");
    eventually(|| !m.state().svids.contains_key(&default)).await;
    assert!(!m.tasks.lock().unwrap().contains_key(&default));
    m.stop();
    tasks.iter().for_each(JoinHandle::abort);
}

/// Kubernetes mode end to end on a real unix socket: the Workload API server reads
/// this test process's pid by SO_PEERCRED, its cgroup file (written in a temp dir
/// standing for /proc) names a pod that the fake API server holds, and the answer is
/// the pod's default identity; without a readable cgroup the refusal says why.
#[tokio::test]
async fn the_workload_api_serves_a_pod_its_identity_over_the_socket() {
    use crate::endpoints::Sockets;
    use crate::kube::pods::{NodePods, tests::pod};
    use crate::kube::{PodAttestor, tests::proc_of};
    use warden_common::testing::kube_api::FakeApiServer;
    use warden_proto::workload::X509svidRequest;
    use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

    let api = FakeApiServer::new();
    let cid = "0a".repeat(32);
    let stored = api.insert(pod("shop", "web-0", "n1", "web", Some(&cid)));
    let uid = stored["metadata"]["uid"].as_str().unwrap().to_string();
    let (pods, _watch) = NodePods::start(api.client(), "n1");
    pods.wait_synced().await;
    let proc = tempfile::tempdir().unwrap();
    let pid = i32::try_from(std::process::id()).unwrap();
    proc_of(proc.path(), pid, &uid, &cid);

    let ca = Arc::new(FakeCa::new());
    let (m, dir) = on_fake_ca(&ca, None);
    let m = Arc::new(Arc::try_unwrap(m).unwrap().with_pod_attestor(PodAttestor {
        pods,
        proc_root: proc.path().to_path_buf(),
        wait: Duration::from_millis(200),
        trust_domain: "cluster.local".into(),
    }));
    let tasks = m.start();
    let sockets = dir.path().join("sockets");
    let shared = sockets.join("socket");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (_sockets, serving) = Sockets::start(&sockets, &shared, m.clone(), stop_rx).unwrap();

    let request = || {
        let mut r = tonic::Request::new(X509svidRequest {});
        r.metadata_mut().insert(
            warden_proto::WORKLOAD_API_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        r
    };
    let channel = warden_common::uds::channel(&shared).await.unwrap();
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let mut stream = client.fetch_x509svid(request()).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://cluster.local/ns/shop/sa/web"]);

    // The same process, no longer tied to a pod: refused with the reason.
    std::fs::remove_file(proc.path().join(pid.to_string()).join("cgroup")).unwrap();
    let denied = client.fetch_x509svid(request()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("cannot be tied to a Kubernetes pod")
            && denied.message().contains("cgroup"),
        "{}",
        denied.message()
    );
    let _ = stop.send(true);
    serving.abort();
    m.stop();
    tasks.iter().for_each(JoinHandle::abort);
}
