//! SPIFFE federation between two real Warden CAs of different trust domains: each
//! serves its bundle on a SPIFFE bundle endpoint (`https_spiffe`, its own SVID) and
//! fetches the other's. Judged by programs no one here wrote: curl reads the bundle
//! endpoint, py-spiffe and the `spiffe` crate read the federated bundles from an
//! agent's Workload API, and a real Envoy in one trust domain calls through a Warden
//! proxy in the other, which authorizes it by `principals: ["partner.example/..."]`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests fail by panicking

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use spiffe::{TrustDomain, WorkloadApiClient};
use warden_proto::workload::X509svidRequest;
use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_tests::envoy::{Bootstrap, Cluster, Envoy, Listener, UpstreamTls};
use warden_tests::mesh::{Mesh, Req, ServiceSpec, WorkloadSpec, authorization_policy, spiffe_id};
use warden_tests::{
    AgentProcess, CaProcess, curl, eventually, eventually_async, my_uid, ok, run_json,
};

/// The flags of a CA serving its bundle endpoint on a free port, refreshed each second.
fn endpoint_args(trust_domain: &str) -> Vec<String> {
    [
        "--trust-domain",
        trust_domain,
        "--bundle-endpoint-addr",
        "127.0.0.1:0",
        "--bundle-refresh-hint",
        "1s",
    ]
    .map(String::from)
    .to_vec()
}

/// Writes a `--federates-with` file: `peer`'s endpoint, authenticated by its SVID
/// (`https_spiffe`), starting from its `root-cert.pem`.
fn federates_with(file: &Path, trust_domain: &str, peer: &CaProcess) {
    let yaml = format!(
        "- trust-domain: {trust_domain}\n  bundle-endpoint-url: https://{}\n  bundle-endpoint-profile: https_spiffe\n  endpoint-spiffe-id: spiffe://{trust_domain}/warden/ca\n  bundle-file: {}\n",
        peer.bundle_endpoint_addr.as_deref().unwrap(),
        peer.data_dir.join("root-cert.pem").display()
    );
    std::fs::write(file, yaml).unwrap();
}

fn start(data_dir: &Path, trust_domain: &str, extra: &[&str]) -> CaProcess {
    let mut args = endpoint_args(trust_domain);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    CaProcess::start(data_dir, &args)
}

/// DER of every certificate in a PEM file.
fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect()
}

/// `federation.bundle` audit outcomes for `trust_domain`, oldest first.
fn audited(ca: &CaProcess, trust_domain: &str) -> Vec<String> {
    ok(ca.warden(&["audit", "list", "--json"]))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["event"] == "federation.bundle" && v["identity"] == format!("spiffe://{trust_domain}")
        })
        .map(|v| v["outcome"].as_str().unwrap().to_string())
        .collect()
}

/// CA `b.example` serves its bundle; curl reads it as any HTTPS client; CA `a.example`
/// fetches it, audits it, and hands it to an agent, whose Workload API gives it to
/// py-spiffe and the `spiffe` crate as `b.example`'s bundle (X.509 and JWT) beside
/// `a.example`'s own. A new root prepared on B reaches A's workloads by refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trust_domains_federate_over_bundle_endpoints() {
    let py = warden_tests::py_spiffe_python("py-spiffe reading federated bundles");
    let tmp = tempfile::tempdir().unwrap();
    let b = start(&tmp.path().join("b"), "b.example", &[]);
    let b_root = b.data_dir.join("root-cert.pem");
    let b_endpoint = b.bundle_endpoint_addr.clone().unwrap();
    let port = b_endpoint.rsplit_once(':').unwrap().1;

    // curl, trusting B's root, reads the SPIFFE bundle document.
    let url = format!("https://localhost:{port}/");
    let r = curl(&["--cacert", b_root.to_str().unwrap(), &url]);
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["spiffe_refresh_hint"], 1, "{doc}");
    assert!(doc["spiffe_sequence"].as_u64().unwrap() >= 1, "{doc}");
    let keys = doc["keys"].as_array().unwrap();
    let x509: Vec<&serde_json::Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 1, "{doc}");
    let x5c = x509[0]["x5c"][0].as_str().unwrap();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(x5c)
        .unwrap();
    assert_eq!(vec![der], pem_certs(&b_root), "x5c is B's root");
    assert!(
        keys.iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string()),
        "{doc}"
    );
    // Anything but GET or HEAD of / is refused.
    let r = curl(&["--cacert", b_root.to_str().unwrap(), "-X", "POST", &url]);
    assert_eq!(r.status, 405, "{r:?}");
    let r = curl(&["--cacert", b_root.to_str().unwrap(), &format!("{url}other")]);
    assert_eq!(r.status, 404, "{r:?}");

    // A federates with B.
    let fed = tmp.path().join("federation-a.yaml");
    federates_with(&fed, "b.example", &b);
    let a = start(
        &tmp.path().join("a"),
        "a.example",
        &["--federates-with", fed.to_str().unwrap()],
    );
    eventually(
        "A to fetch and audit B's bundle",
        Duration::from_secs(20),
        || audited(&a, "b.example").contains(&"updated".to_string()),
    );
    // The bundle is kept in A's data dir, for restarts.
    assert!(a.data_dir.join("federation/b.example.json").is_file());
    // Operators see each relationship on the monitoring port.
    let status = curl(&[&format!("http://{}/federation", a.monitoring_addr)]).json();
    let b_status = &status["b.example"];
    assert_eq!(
        b_status["url"],
        format!("https://{b_endpoint}/"),
        "{status}"
    );
    assert!(b_status["last_success"].is_i64(), "{status}");
    assert_eq!(b_status["x509_roots"], 1, "{status}");
    assert!(b_status["jwt_keys"].as_u64().unwrap() >= 1, "{status}");

    // An agent of A, and a workload of A.
    let uid = format!("unix:uid:{}", my_uid());
    let x = "spiffe://a.example/ns/default/sa/x";
    a.entry("node-a", x, &[&uid]);
    let agent = AgentProcess::start_node(
        &a,
        &tmp.path().join("agent"),
        "node-a",
        &["--trust-domain", "a.example"],
    );
    let socket = format!("unix:{}", agent.socket.display());
    let client = WorkloadApiClient::connect_to(socket.clone()).await.unwrap();
    let b_td = TrustDomain::new("b.example").unwrap();
    let a_td = TrustDomain::new("a.example").unwrap();
    let bundles = eventually_async(
        "the agent to serve B's bundle",
        Duration::from_secs(20),
        || async {
            let set = client.fetch_x509_bundles().await.ok()?;
            set.get(&b_td).is_some().then_some(set)
        },
    )
    .await;
    let served = |set: &spiffe::X509BundleSet, td: &TrustDomain| -> Vec<Vec<u8>> {
        set.get(td)
            .unwrap()
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect()
    };
    assert_eq!(served(&bundles, &b_td), pem_certs(&b_root));
    assert_eq!(
        served(&bundles, &a_td),
        pem_certs(&a.data_dir.join("root-cert.pem"))
    );
    let jwt = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt.get(&b_td).is_some(), "B's JWT keys are served");

    // A JWT-SVID of B's workload z (from B's own agent) is taken in A: by the `spiffe`
    // crate with the JWT bundles A's agent serves, and by A's agent (ValidateJWTSVID).
    let z = "spiffe://b.example/ns/default/sa/z";
    b.entry("node-b", z, &[&uid]);
    let agent_b = AgentProcess::start_node(
        &b,
        &tmp.path().join("agent-b"),
        "node-b",
        &["--trust-domain", "b.example"],
    );
    let client_b = WorkloadApiClient::connect_to(format!("unix:{}", agent_b.socket.display()))
        .await
        .unwrap();
    let token = eventually_async("a JWT-SVID from B's agent", Duration::from_secs(20), || {
        client_b.fetch_jwt_svid(["a-service"], None)
    })
    .await;
    let local = spiffe::JwtSvid::parse_and_validate(token.token(), &jwt, &["a-service"]).unwrap();
    assert_eq!(local.spiffe_id().to_string(), z);
    let by_agent = client
        .validate_jwt_token("a-service", token.token())
        .await
        .unwrap();
    assert_eq!(by_agent.spiffe_id().to_string(), z);
    assert!(
        client
            .validate_jwt_token("other", token.token())
            .await
            .is_err()
    );
    // B's token with its subject moved into A's trust domain: A's keys do not verify it.
    let forged = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = token.token().split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = x.into();
        format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        )
    };
    let err = client
        .validate_jwt_token("a-service", &forged)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("kid"), "{err:?}");
    drop(agent_b);

    // FetchX509SVID carries B's bundle in federated_bundles, keyed by its SPIFFE ID.
    let channel = warden_common::uds::channel(&agent.socket).await.unwrap();
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = raw.fetch_x509svid(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let federated: Vec<&String> = first.federated_bundles.keys().collect();
    assert_eq!(federated, ["spiffe://b.example"]);
    assert_eq!(
        first.federated_bundles["spiffe://b.example"],
        pem_certs(&b_root).concat()
    );
    drop(stream);

    // py-spiffe sees both trust domains, X.509 and JWT.
    if let Some(py) = &py {
        let out = tmp.path().join("py-spiffe");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/py_spiffe_client.py");
        let (ran, r) = run_json(
            std::process::Command::new(py)
                .arg(&script)
                .args(["--audience", "a", "--out", out.to_str().unwrap()])
                .env("SPIFFE_ENDPOINT_SOCKET", &socket),
        );
        assert!(ran && r["ok"] == true, "py-spiffe failed: {r}");
        assert_eq!(
            r["bundle_trust_domains"],
            serde_json::json!(["a.example", "b.example"]),
            "{r}"
        );
        assert_eq!(
            pem_certs(&out.join("bundle-b.example.pem")),
            pem_certs(&b_root)
        );
        let jwt_tds = r["jwt_key_ids_by_trust_domain"].as_object().unwrap();
        assert!(
            !jwt_tds["b.example"].as_array().unwrap().is_empty(),
            "B's JWT keys reach py-spiffe: {r}"
        );
    }

    // B prepares a new root: its bundle grows, A refreshes (hint 1 s), the workload
    // sees both of B's roots.
    ok(b.warden(&["ca", "authority", "prepare"]));
    let prepared = std::time::Instant::now();
    eventually_async(
        "B's prepared root to reach A's workloads",
        Duration::from_secs(30),
        || async {
            let set = client.fetch_x509_bundles().await.ok()?;
            (set.get(&b_td)?.authorities().len() == 2).then_some(())
        },
    )
    .await;
    eprintln!(
        "federation: B's prepared root reached A's workload {:?} after the command (refresh hint 1 s)",
        prepared.elapsed()
    );
    assert_eq!(audited(&a, "b.example"), ["updated", "updated"]);

    // The relationships follow the file. A broken edit is refused whole and audited;
    // B's bundle stays.
    let good = std::fs::read_to_string(&fed).unwrap();
    std::fs::write(&fed, good.replace("https_spiffe", "https_spife")).unwrap();
    eventually(
        "the broken --federates-with to be refused",
        Duration::from_secs(20),
        || relationship_events(&a).iter().any(|(o, _)| o == "refused"),
    );
    let refusal = ok(a.warden(&["audit", "list", "--json"]));
    assert!(
        refusal.contains("https_spife"),
        "the refusal names the bad value"
    );
    assert!(
        client
            .fetch_x509_bundles()
            .await
            .unwrap()
            .get(&b_td)
            .is_some()
    );
    // Removing B: its bundle leaves A's workloads.
    std::fs::write(&fed, "[]\n").unwrap();
    eventually_async(
        "B's bundle to leave A's workloads",
        Duration::from_secs(20),
        || async {
            let set = client.fetch_x509_bundles().await.ok()?;
            set.get(&b_td).is_none().then_some(())
        },
    )
    .await;
    assert!(!a.data_dir.join("federation/b.example.json").exists());
    // And back: fetched again from its endpoint.
    std::fs::write(&fed, &good).unwrap();
    eventually_async(
        "B's bundle to come back",
        Duration::from_secs(20),
        || async {
            let set = client.fetch_x509_bundles().await.ok()?;
            (set.get(&b_td)?.authorities().len() == 2).then_some(())
        },
    )
    .await;
    let events: Vec<String> = relationship_events(&a)
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(events, ["refused", "removed", "added"]);
    ok(a.warden(&["audit", "verify"]));
}

/// `federation.relationship` audit rows: outcome and identity, oldest first.
fn relationship_events(ca: &CaProcess) -> Vec<(String, String)> {
    ok(ca.warden(&["audit", "list", "--json"]))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "federation.relationship")
        .map(|v| {
            (
                v["outcome"].as_str().unwrap().to_string(),
                v["identity"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A workload of `partner.example` behind a real Envoy calls a Warden-proxied app in
/// `cluster.local`; the trust domains federate both ways. The Envoy takes ROOTCA with
/// the SPIFFE validator (cluster.local's roots for the server), the Warden proxy
/// verifies the partner against partner.example's roots and authorizes it by
/// `principals: ["partner.example/ns/x/sa/y"]` on the one path the policy names.
#[test]
fn a_partner_workload_is_authorized_by_principal() {
    let tmp = tempfile::tempdir().unwrap();
    // B: partner.example, serving its bundle endpoint.
    let b_dir = tmp.path().join("b");
    let b = start(&b_dir, "partner.example", &[]);
    let b_grpc = b.grpc_addr.clone();
    let b_endpoint = b.bundle_endpoint_addr.clone().unwrap();

    // A: the mesh (cluster.local), federating with B; /partner is for B's y only.
    let fed_a = tmp.path().join("federation-a.yaml");
    federates_with(&fed_a, "partner.example", &b);
    let server_id = spiffe_id("default", "server");
    let mesh = Mesh::builder()
        .workload_spec(WorkloadSpec::new("server", "default", "server"))
        .service(ServiceSpec::new("server", "default").http(8080))
        .ca_args(&[
            "--bundle-endpoint-addr",
            "127.0.0.1:0",
            "--bundle-refresh-hint",
            "1s",
            "--federates-with",
            fed_a.to_str().unwrap(),
        ])
        .config(
            "authz.yaml",
            &authorization_policy(
                "server",
                "partner",
                "ALLOW",
                r#"[{"from": [{"source": {"principals": ["partner.example/ns/x/sa/y"]}}], "to": [{"operation": {"paths": ["/partner"]}}]}]"#,
            ),
        )
        .start();

    // B again, now federating with A (same addresses, same root).
    drop(b);
    let fed_b = tmp.path().join("federation-b.yaml");
    {
        let a = mesh.ca.lock().unwrap();
        federates_with(&fed_b, "cluster.local", &a);
        eventually(
            "the mesh CA to fetch partner.example's bundle",
            Duration::from_secs(20),
            || audited(&a, "partner.example").contains(&"updated".to_string()),
        );
    }
    let mut args = endpoint_args("partner.example");
    args[3] = b_endpoint;
    args.extend(["--federates-with".to_string(), fed_b.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = CaProcess::start_at(&b_dir, &b_grpc, &args);

    // B's agent: this uid is partner.example/ns/x/sa/y.
    let uid = format!("unix:uid:{}", my_uid());
    let partner_y = "spiffe://partner.example/ns/x/sa/y";
    b.entry("node-b", partner_y, &[&uid]);
    let agent = AgentProcess::start_node(
        &b,
        &tmp.path().join("agent-b"),
        "node-b",
        &["--trust-domain", "partner.example"],
    );

    // Envoy in partner.example: plain HTTP in, mTLS to the server's inbound port.
    let server = mesh.workload("server");
    let host = &mesh.service("server").host;
    let bootstrap = Bootstrap::new(warden_tests::envoy::SIDECAR_NODE_ID, &agent.socket)
        .listener(Listener::http("plain_out", "127.0.0.1", 0).route("/", "to_server"))
        .cluster(
            Cluster::to("to_server", &server.ip.to_string(), 15006)
                .http1()
                .tls(
                    UpstreamTls::new("default", &server_id)
                        .sni(&format!("outbound_.8080_._.{host}"))
                        .alpn("http/1.1"),
                ),
        );
    let envoy = Envoy::start(&tmp.path().join("envoy"), &bootstrap, 1);
    let via_envoy = envoy.listener_addr("plain_out").parse().unwrap();
    let call = |path: &str| {
        mesh.send_to(
            via_envoy,
            &Req::get(&mesh.url("server", "http", path)).origin_form(),
        )
        .unwrap()
    };
    // Once both sides hold the other's bundle, the partner is let in on /partner...
    let r = eventually(
        "the partner's call through Envoy to be allowed",
        Duration::from_secs(30),
        || {
            let r = call("/partner");
            (r.status == 200).then_some(r)
        },
    );
    let v = r.json();
    assert_eq!(v["path"], "/partner");
    let xfcc = v["headers"]["x-forwarded-client-cert"].as_str().unwrap();
    assert!(xfcc.ends_with(&format!("URI={partner_y}")), "{xfcc}");
    // ...and nowhere else: the policy names only that path.
    let r = call("/elsewhere");
    assert_eq!(r.status, 403, "{}", r.text());
    // Envoy took the SPIFFE validator: its ROOTCA lists both trust domains.
    let (_, dump) = envoy.admin("/config_dump?include_eds&resource=dynamic_active_secrets");
    assert!(dump.contains("envoy.tls.cert_validator.spiffe"), "{dump}");
    assert!(dump.contains("cluster.local"), "{dump}");
}
