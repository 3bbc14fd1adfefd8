//! The agent's SPIFFE Workload API as workloads use it: the `spiffe` crate's client (an
//! implementation Warden did not write) over the agent's real unix sockets, a raw tonic
//! client for what that client never sends, and `warden-agent api`. Real CA, real
//! agent, entries changed with the `warden` CLI while the agent runs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spiffe::{JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient, WorkloadApiError, X509Svid};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use warden_tests::{AgentProcess, CaProcess, eventually_async, my_uid, ok, run_json};
use x509_parser::prelude::{FromDer, X509Certificate};

const X: &str = "spiffe://cluster.local/ns/default/sa/x";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

/// A CA and an agent attested as node-a (agent first: dropped, i.e. killed, first).
struct Env {
    agent: AgentProcess,
    ca: CaProcess,
    tmp: tempfile::TempDir,
}

/// Starts a CA, registers `entries` (SPIFFE ID, selectors) for node-a, starts the agent
/// with a join token, a 4 s SVID lifetime and a 500 ms entry sync.
fn start(entries: &[(&str, &[&str])]) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CaProcess::start(&tmp.path().join("ca"), &[]);
    for (id, selectors) in entries {
        ca.entry("node-a", id, selectors);
    }
    let agent = AgentProcess::start_node(
        &ca,
        &tmp.path().join("agent"),
        "node-a",
        &["--svid-ttl", "4s", "--sync-interval", "500ms"],
    );
    Env { agent, ca, tmp }
}

async fn client(socket: &Path) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
        .await
        .unwrap()
}

/// A tonic client of the Workload API that adds no metadata by itself.
async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let channel = warden_common::uds::channel(socket).await.unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

fn leaf(svid: &X509Svid) -> (String, i64) {
    let (_, cert) = X509Certificate::from_der(svid.leaf().as_bytes()).unwrap();
    (
        hex(cert.raw_serial()),
        cert.validity().not_after.timestamp(),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies the SVID's chain up to one of `roots` with webpki, for TLS client use.
fn verify_chain(svid: &X509Svid, roots: &[spiffe::Certificate]) {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(r.as_bytes()))
                .unwrap()
                .to_owned()
        })
        .collect();
    let leaf_der = CertificateDer::from(svid.leaf().as_bytes());
    let ee = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    let intermediates: Vec<CertificateDer<'_>> = svid.cert_chain()[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes()))
        .collect();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .unwrap();
}

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

/// X.509-SVID, X.509 bundles, JWT-SVID and JWT bundles through the `spiffe` crate; the
/// JWT-SVID validated locally with the fetched bundle and by the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_client_fetches_svids_and_bundles() {
    let uid = format!("unix:uid:{}", my_uid());
    let env = start(&[(X, &[&uid])]);
    let c = client(&env.agent.socket).await;

    let svid = eventually_async("X.509-SVID", Duration::from_secs(20), || {
        c.fetch_x509_svid()
    })
    .await;
    assert_eq!(svid.spiffe_id().to_string(), X);
    let (_, not_after) = leaf(&svid);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        not_after > now && not_after <= now + 10,
        "the 4s lifetime asked for: not_after {not_after}, now {now}"
    );

    let bundles = c.fetch_x509_bundles().await.unwrap();
    assert_eq!(bundles.len(), 1);
    let bundle = bundles.get(&td()).expect("a bundle for cluster.local");
    verify_chain(&svid, bundle.authorities());
    // The bundle is the CA's root.
    let root_pem = std::fs::read(env.ca.data_dir.join("root-cert.pem")).unwrap();
    let root_der: Vec<Vec<u8>> = rustls_pki_types::pem::PemObject::pem_slice_iter(&root_pem)
        .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap().to_vec())
        .collect();
    let served: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|a| a.as_bytes().to_vec())
        .collect();
    assert_eq!(served, root_der);
    // The context carries the same bundle.
    let ctx = c.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.svids().len(), 1);
    assert!(ctx.bundle_set().get(&td()).is_some());

    // JWT-SVID for audience "a".
    let jwt = c.fetch_jwt_svid(["a"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), X);
    assert_eq!(jwt.audience(), ["a".to_string()]);
    let jwt_bundles = c.fetch_jwt_bundles().await.unwrap();
    let jwt_bundle = jwt_bundles
        .get(&td())
        .expect("a JWT bundle for cluster.local");
    assert!(jwt_bundle.find_jwt_authority(jwt.key_id()).is_some());
    // Locally, with the crate's verifier and the fetched bundle.
    let local = JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["a"]).unwrap();
    assert_eq!(local.spiffe_id().to_string(), X);
    assert!(JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["b"]).is_err());
    // By the agent (ValidateJWTSVID).
    let validated = c.validate_jwt_token("a", jwt.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), X);
    let err = c.validate_jwt_token("b", jwt.token()).await.unwrap_err();
    assert!(err.is_invalid_argument(), "{err:?}");
    let err = c.validate_jwt_token("a", "not.a.jwt").await.unwrap_err();
    assert!(err.is_invalid_argument(), "{err:?}");
    // Asking for an identity this caller does not have: PermissionDenied with "no
    // identity issued ...", as SPIRE answers, which the crate reports as its own variant.
    let other = SpiffeId::new(WEB).unwrap();
    let err = c.fetch_jwt_svid(["a"], Some(&other)).await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
}

/// py-spiffe's own `WorkloadApiClient` (`tests/interop/py_spiffe_client.py`), found
/// through `SPIFFE_ENDPOINT_SOCKET`: grpcio underneath sends the socket path as the
/// HTTP/2 `:authority`, which h2 alone resets with PROTOCOL_ERROR. X.509-SVID and bundle
/// (chain checked by `openssl verify`, bundle = the CA's root), JWT-SVID validated with
/// the fetched JWT bundles and by the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_client_fetches_svids_and_bundles() {
    let Some(py) = warden_tests::py_spiffe_python("the py-spiffe client") else {
        return;
    };
    let uid = format!("unix:uid:{}", my_uid());
    let env = start(&[(X, &[&uid])]);
    // Wait for the SVID with the Rust client, so one py-spiffe run decides.
    let c = client(&env.agent.socket).await;
    eventually_async("X.509-SVID", Duration::from_secs(20), || {
        c.fetch_x509_svid()
    })
    .await;

    let out = env.tmp.path().join("py-spiffe");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/py_spiffe_client.py");
    let (ok, r) = run_json(
        std::process::Command::new(&py)
            .arg(&script)
            .args(["--audience", "a", "--out", out.to_str().unwrap()])
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix:{}", env.agent.socket.display()),
            ),
    );
    assert!(ok && r["ok"] == true, "py-spiffe failed: {r}");
    assert_eq!(r["spiffe_id"], X, "{r}");
    assert_eq!(
        r["bundle_trust_domains"],
        serde_json::json!(["cluster.local"])
    );

    // The chain verifies against the fetched bundle, which is the CA's root.
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(out.join("bundle.pem"))
        .arg("-untrusted")
        .arg(out.join("svid.pem"))
        .arg(out.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let ders = |path: &Path| -> Vec<Vec<u8>> {
        let pem = std::fs::read(path).unwrap();
        rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
            .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap().to_vec())
            .collect()
    };
    assert_eq!(
        ders(&out.join("bundle.pem")),
        ders(&env.ca.data_dir.join("root-cert.pem"))
    );
    let chain = ders(&out.join("svid.pem"));
    assert_eq!(chain.len(), r["chain_len"].as_u64().unwrap() as usize);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => u.to_string(),
            other => format!("not a URI: {other:?}"),
        })
        .collect();
    assert_eq!(sans, [X]);

    // The JWT-SVID: validated by py-spiffe with the fetched bundle (another audience
    // refused) and by the agent; its claims as the spec says.
    assert_eq!(r["jwt"]["spiffe_id"], X, "{r}");
    assert_eq!(r["jwt"]["audience"], serde_json::json!(["a"]), "{r}");
    let claims = &r["jwt"]["claims"];
    assert_eq!(claims["sub"], X, "{r}");
    assert!(
        claims["aud"] == "a" || claims["aud"] == serde_json::json!(["a"]),
        "{r}"
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(claims["exp"].as_i64().unwrap() > now, "{r}");
    assert_eq!(r["jwt_other_audience_refused"], true, "{r}");
    assert_eq!(r["jwt_validated_by_agent"], X, "{r}");
    assert!(!r["jwt_key_ids"].as_array().unwrap().is_empty(), "{r}");
}

/// A root rotation as py-spiffe sees it: after `warden ca authority prepare` its X.509
/// bundle holds both roots (equal to the CA's `root-cert.pem`); after `activate` and
/// `taint`, its SVID is the new root's and verifies (openssl) against that bundle; after
/// `revoke`, the bundle is the new root alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_follows_a_root_rotation() {
    let Some(py) = warden_tests::py_spiffe_python("the py-spiffe client") else {
        return;
    };
    let uid = format!("unix:uid:{}", my_uid());
    let env = start(&[(X, &[&uid])]);
    let c = client(&env.agent.socket).await;
    eventually_async("X.509-SVID", Duration::from_secs(20), || {
        c.fetch_x509_svid()
    })
    .await;
    let out = env.tmp.path().join("py-spiffe");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/py_spiffe_client.py");
    let py_spiffe = || {
        let (ok, r) = run_json(
            std::process::Command::new(&py)
                .arg(&script)
                .args(["--audience", "a", "--out", out.to_str().unwrap()])
                .env(
                    "SPIFFE_ENDPOINT_SOCKET",
                    format!("unix:{}", env.agent.socket.display()),
                ),
        );
        assert!(ok && r["ok"] == true, "py-spiffe failed: {r}");
        r
    };
    let ders = |path: &Path| -> Vec<Vec<u8>> {
        let pem = std::fs::read(path).unwrap();
        rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
            .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap().to_vec())
            .collect()
    };
    let aki = |der: &[u8]| -> String {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| hex(k.0))
                }
                _ => None,
            })
            .unwrap()
    };
    let step = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["ca", "authority"];
        all.extend_from_slice(args);
        all.push("--json");
        serde_json::from_str(ok(env.ca.warden(&all)).trim()).unwrap()
    };
    let wait_bundle_len = |n: u64| {
        for _ in 0..100 {
            if py_spiffe()["bundle_len"] == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("py-spiffe never saw a bundle of {n} roots");
    };
    let root_cert = env.ca.data_dir.join("root-cert.pem");

    let first = py_spiffe();
    assert_eq!(first["bundle_len"], 1, "{first}");
    let old = aki(&ders(&out.join("svid.pem"))[0]);
    let second = step(&["prepare"])["id"].as_str().unwrap().to_string();
    wait_bundle_len(2);
    // The same roots (py-spiffe keeps them as a set: order aside).
    let sorted = |mut v: Vec<Vec<u8>>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(ders(&out.join("bundle.pem"))),
        sorted(ders(&root_cert))
    );
    step(&["activate"]);
    step(&["taint", &old]);
    let mut signed_by = String::new();
    for _ in 0..100 {
        py_spiffe();
        signed_by = aki(&ders(&out.join("svid.pem"))[0]);
        if signed_by == second {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        signed_by, second,
        "py-spiffe's SVID is still the old root's"
    );
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(out.join("bundle.pem"))
        .arg(out.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The old root is in use nowhere once the node SVID is renewed too.
    let mut revoked = false;
    for _ in 0..100 {
        let out = env.ca.warden(&["ca", "authority", "revoke", &old]);
        if out.status.success() {
            revoked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(revoked, "the old root stayed in use");
    wait_bundle_len(1);
    assert_eq!(ders(&out.join("bundle.pem")), ders(&root_cert));
}

/// With a 4 s lifetime, the open X.509 stream pushes the rotated SVID by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_stream_pushes_the_rotated_svid() {
    let uid = format!("unix:uid:{}", my_uid());
    let env = start(&[(X, &[&uid])]);
    let c = client(&env.agent.socket).await;
    eventually_async("X.509-SVID", Duration::from_secs(20), || {
        c.fetch_x509_svid()
    })
    .await;

    let mut stream = c.stream_x509_contexts().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the first context")
        .unwrap()
        .unwrap();
    let (serial1, not_after1) = leaf(first.default_svid().unwrap());
    let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("a rotated SVID pushed within 20s")
        .unwrap()
        .unwrap();
    let svid = next.default_svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), X);
    let (serial2, not_after2) = leaf(svid);
    assert_ne!(serial1, serial2);
    assert!(not_after2 >= not_after1, "{not_after2} < {not_after1}");
    assert_ne!(
        first.default_svid().unwrap().private_key().as_bytes(),
        svid.private_key().as_bytes(),
        "a rotation makes a new key"
    );
    verify_chain(svid, next.bundle_set().get(&td()).unwrap().authorities());
    // And again: the stream keeps pushing.
    let third = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("a second rotation within 20s")
        .unwrap()
        .unwrap();
    assert_ne!(leaf(third.default_svid().unwrap()).0, serial2);
    assert!(env.agent.metric("warden_agent_workload_api_streams") >= 1.0);
}

/// Every RPC without `workload.spiffe.io: true` is refused with InvalidArgument, before
/// attestation; with the header the same client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_security_header_are_invalid_argument() {
    let uid = format!("unix:uid:{}", my_uid());
    let env = start(&[(X, &[&uid])]);
    let mut raw = raw_client(&env.agent.socket).await;
    let check = |r: Result<(), tonic::Status>, rpc: &str| {
        let s = r.expect_err(rpc);
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{rpc}: {s:?}");
        assert!(s.message().contains("workload.spiffe.io"), "{rpc}: {s:?}");
    };
    check(
        raw.fetch_x509svid(X509svidRequest {}).await.map(|_| ()),
        "FetchX509SVID",
    );
    check(
        raw.fetch_x509_bundles(X509BundlesRequest {})
            .await
            .map(|_| ()),
        "FetchX509Bundles",
    );
    check(
        raw.fetch_jwt_bundles(JwtBundlesRequest {})
            .await
            .map(|_| ()),
        "FetchJWTBundles",
    );
    check(
        raw.fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .map(|_| ()),
        "FetchJWTSVID",
    );
    check(
        raw.validate_jwtsvid(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x".into(),
        })
        .await
        .map(|_| ()),
        "ValidateJWTSVID",
    );
    // A value other than "true" is no better.
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    check(raw.fetch_x509svid(req).await.map(|_| ()), "header false");

    // With the header, the same connection is served.
    let with_header = || {
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        req
    };
    let resp = eventually_async(
        "FetchX509SVID with the header",
        Duration::from_secs(20),
        || {
            let mut raw = raw.clone();
            let req = with_header();
            async move {
                let mut s = raw.fetch_x509svid(req).await?.into_inner();
                s.message()
                    .await?
                    .ok_or_else(|| tonic::Status::unknown("stream ended"))
            }
        },
    )
    .await;
    assert_eq!(resp.svids[0].spiffe_id, X);
}

/// A request over the agent's 1 MiB message limit is answered RESOURCE_EXHAUSTED (not
/// tonic's OUT_OF_RANGE), on a unary RPC and on a server-streaming one, and the
/// connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_resource_exhausted() {
    let uid = format!("unix:uid:{}", my_uid());
    let env = start(&[(X, &[&uid])]);
    let mut raw = raw_client(&env.agent.socket).await;
    let with_header = |r: JwtsvidRequest| {
        let mut req = tonic::Request::new(r);
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        req
    };
    let huge = JwtsvidRequest {
        audience: vec!["a".repeat(2 << 20)],
        spiffe_id: String::new(),
    };
    let s = raw
        .fetch_jwtsvid(with_header(huge.clone()))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("too large"), "{s:?}");

    // FetchX509SVID (server streaming) with a 2 MiB request message.
    let mut grpc = tonic::client::Grpc::new(
        warden_common::uds::channel(&env.agent.socket)
            .await
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<JwtsvidRequest, X509svidResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID");
    let s = grpc
        .server_streaming(with_header(huge), path, codec)
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");

    // The same connection serves a request under the limit.
    let ok = eventually_async("FetchJWTSVID", Duration::from_secs(20), || {
        let mut raw = raw.clone();
        async move {
            raw.fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: String::new(),
            }))
            .await
        }
    })
    .await;
    assert_eq!(ok.into_inner().svids[0].spiffe_id, X);
}

/// A caller no entry names is refused (and counted); an entry added at the CA takes
/// effect without restarting the agent; deleting it refuses the caller again and ends
/// its open stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_caller_is_denied_until_registered_and_again_after_delete() {
    let me = my_uid();
    let other = format!("unix:uid:{}", me.wrapping_add(12345));
    let env = start(&[(WEB, &[&other])]);
    env.agent
        .wait_metric("warden_agent_entries", Duration::from_secs(20), |v| {
            v == 1.0
        });
    let c = client(&env.agent.socket).await;

    let err = c.fetch_x509_svid().await.unwrap_err();
    // The agent's message starts "no identity issued", which the crate maps to its own
    // variant (the string is SPIRE's); the gRPC code underneath is PermissionDenied.
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    let err = c.fetch_jwt_svid(["a"], None).await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    let mut raw = raw_client(&env.agent.socket).await;
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let status = raw.fetch_x509svid(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(&format!("uid={me}")),
        "names the caller: {status:?}"
    );
    assert!(env.agent.metric("warden_agent_attestation_denied_total") >= 3.0);

    // Register this uid: served within seconds, no restart.
    let id = env.ca.entry("node-a", X, &[&format!("unix:uid:{me}")]);
    let svid = eventually_async(
        "the new entry to take effect",
        Duration::from_secs(20),
        || c.fetch_x509_svid(),
    )
    .await;
    assert_eq!(svid.spiffe_id().to_string(), X);
    let mut stream = c.stream_x509_svids().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.spiffe_id().to_string(), X);

    // Delete it: refused again, and the open stream ends with the refusal.
    ok(env.ca.warden(&["entry", "delete", &id]));
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue, // a rotation before the delete was seen
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends after the delete");
    assert!(
        matches!(ended, Some(Err(WorkloadApiError::NoIdentityIssued))),
        "{ended:?}"
    );
    let err = c.fetch_x509_svid().await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    // Only the other uid's identity is kept.
    env.agent
        .wait_metric("warden_agent_identities", Duration::from_secs(20), |v| {
            v == 1.0
        });
    env.agent
        .wait_metric("warden_agent_entries", Duration::from_secs(20), |v| {
            v == 1.0
        });
}

/// A `socket:web` entry is served on `<socket-dir>/web.sock` only; the shared socket
/// serves the uid entries only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_socket_serves_only_its_own_identity() {
    let uid = format!("unix:uid:{}", my_uid());
    let env = start(&[(WEB, &["socket:web"])]);
    let web_sock = env.agent.socket_dir().join("web.sock");
    let c = eventually_async("web.sock to open", Duration::from_secs(20), || {
        WorkloadApiClient::connect_to(format!("unix:{}", web_sock.display()))
    })
    .await;
    let svid = eventually_async("the SVID on web.sock", Duration::from_secs(20), || {
        c.fetch_x509_svid()
    })
    .await;
    assert_eq!(svid.spiffe_id().to_string(), WEB);
    let jwt = c.fetch_jwt_svid(["a"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), WEB);
    let mode = std::fs::metadata(&web_sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);

    let shared = client(&env.agent.socket).await;
    let err = shared.fetch_x509_svid().await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");

    // A uid entry appears on the shared socket and not on web.sock.
    env.ca.entry("node-a", X, &[&uid]);
    let svid = eventually_async(
        "the uid entry on the shared socket",
        Duration::from_secs(20),
        || shared.fetch_x509_svid(),
    )
    .await;
    assert_eq!(svid.spiffe_id().to_string(), X);
    let all = c.fetch_all_x509_svids().await.unwrap();
    let ids: Vec<String> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(ids, [WEB]);
}

/// `warden-agent api fetch x509 --write` and `api fetch jwt` / `api validate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cli_writes_files_and_prints_a_jwt() {
    let uid = format!("unix:uid:{}", my_uid());
    let env = start(&[(X, &[&uid])]);
    let c = client(&env.agent.socket).await;
    eventually_async("X.509-SVID", Duration::from_secs(20), || {
        c.fetch_x509_svid()
    })
    .await;

    let dir: PathBuf = env.tmp.path().join("out");
    let out = ok(env
        .agent
        .api(&["fetch", "x509", "--write", dir.to_str().unwrap()]));
    assert!(out.contains(X), "{out}");
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("svid.0.key"), 0o600);
    for name in ["svid.0.pem", "bundle.0.pem"] {
        assert!(dir.join(name).is_file(), "{name}");
    }
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(dir.join("bundle.0.pem"))
        .arg(dir.join("svid.0.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The key matches the certificate.
    let key = std::fs::read_to_string(dir.join("svid.0.key")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key).unwrap();
    let chain = std::fs::read(dir.join("svid.0.pem")).unwrap();
    let leaf: rustls_pki_types::CertificateDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(&chain).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(
        cert.tbs_certificate.subject_pki.raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );

    let out = ok(env.agent.api(&["fetch", "jwt", "--audience", "a"]));
    assert!(out.contains(&format!("token({X})")), "{out}");
    let token = out.lines().last().unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{out}");
    let out = ok(env
        .agent
        .api(&["validate", "--audience", "a", "--svid", &token]));
    assert!(out.contains("SVID is valid") && out.contains(X), "{out}");
    let out = env
        .agent
        .api(&["validate", "--audience", "other", "--svid", &token]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
