//! JWT-SVIDs from the CA: minted for the caller or, with node authorization, for a
//! registered workload; verified with the published bundle by an independent JWT
//! implementation; every issuance and refusal audited.

#![allow(clippy::unwrap_used)] // tests fail by panicking
mod common;

use tonic::Code;
use tonic::transport::Channel;

use common::*;
use warden_proto::admin::{CreateEntryRequest, Selector};
use warden_proto::warden_ca::jwt_svid_service_client::JwtSvidServiceClient;
use warden_proto::warden_ca::{GetJwtBundleRequest, MintJwtSvidRequest};

fn mint_req(
    spiffe_id: &str,
    aud: &[&str],
    ttl: i64,
    token: Option<&str>,
) -> tonic::Request<MintJwtSvidRequest> {
    let mut req = tonic::Request::new(MintJwtSvidRequest {
        spiffe_id: spiffe_id.into(),
        audience: aud.iter().map(|a| a.to_string()).collect(),
        ttl_seconds: ttl,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

/// Verifies a JWT-SVID against the bundle with jsonwebtoken; returns its claims.
fn verify(token: &str, jwks: &str, aud: &str) -> serde_json::Value {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks).unwrap();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk = set.find(&kid).expect("the token's kid is in the bundle");
    assert_eq!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Other("jwt-svid".into()))
    );
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .unwrap()
    .claims
}

async fn jwt_client(ca: &TestCa, identity: Option<(&str, &str)>) -> JwtSvidServiceClient<Channel> {
    JwtSvidServiceClient::new(ca.channel(identity).await)
}

async fn jwt_svids_for_self_and_registered_workloads(db: Db) {
    let Some(ca) = TestCa::start(db, Opts::default()).await else {
        return;
    };
    let mut jwt = jwt_client(&ca, None).await;
    let bundle = jwt
        .get_jwt_bundle(GetJwtBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bundle.trust_domain, TD);
    let jwks: serde_json::Value = serde_json::from_str(&bundle.jwks_json).unwrap();
    assert_eq!(jwks["spiffe_refresh_hint"], 300);

    // A workload with its own service-account token: its own identity, default 5m.
    let web = sa_id("default", "web");
    let r = jwt
        .mint_jwt_svid(mint_req(
            "",
            &["db", "cache"],
            0,
            Some(&sa_token("default", "web")),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spiffe_id, web);
    let claims = verify(&r.token, &bundle.jwks_json, "cache");
    assert_eq!(claims["sub"], web.as_str());
    assert_eq!(claims["aud"], serde_json::json!(["db", "cache"]));
    assert!((claims["exp"].as_i64().unwrap() - (now() + 300)).abs() <= 5);
    assert_eq!(claims["exp"].as_i64().unwrap(), r.expires_at);

    // A node (join token -> node SVID -> mTLS) mints for a workload registered under it.
    let tok = ca.join_token("n1").await;
    let node_id = format!("spiffe://{TD}/warden/node/n1");
    // A join token itself cannot mint.
    let err = jwt
        .mint_jwt_svid(mint_req("", &["db"], 0, Some(&tok)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut certs = ca.client(None).await;
    let (c, node_key) = csr(None);
    let chain = create(&mut certs, request(&c, 0, Some(&tok), None))
        .await
        .unwrap();
    ca.admin()
        .await
        .create_entry(CreateEntryRequest {
            parent_id: node_id.clone(),
            spiffe_id: web.clone(),
            selectors: vec![Selector {
                r#type: "unix".into(),
                value: "uid:1000".into(),
            }],
        })
        .await
        .unwrap();
    let mut node = jwt_client(&ca, Some((&chain[0], &node_key.serialize_pem()))).await;
    let r = node
        .mint_jwt_svid(mint_req(&web, &["db"], 60, None))
        .await
        .unwrap()
        .into_inner();
    let claims = verify(&r.token, &bundle.jwks_json, "db");
    assert_eq!(claims["sub"], web.as_str());
    assert!((claims["exp"].as_i64().unwrap() - (now() + 60)).abs() <= 5);

    // Refusals, each naming the problem.
    let db_id = sa_id("default", "db");
    let cases = [
        (
            mint_req(&db_id, &["db"], 0, None),
            Code::PermissionDenied,
            "no registration entry",
        ),
        (
            mint_req(&web, &[], 0, None),
            Code::InvalidArgument,
            "at least one audience",
        ),
        (
            mint_req(&web, &[""], 0, None),
            Code::InvalidArgument,
            "audience \"\" is invalid",
        ),
        (
            mint_req(&web, &["db"], 100 * 86_400, None),
            Code::InvalidArgument,
            "max allowed JWT-SVID TTL",
        ),
    ];
    let n_cases = cases.len();
    for (req, code, needle) in cases {
        let err = node.mint_jwt_svid(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(
            err.message().contains(needle),
            "{:?} should contain {needle:?}",
            err.message()
        );
    }
    let err = jwt
        .mint_jwt_svid(mint_req("", &["db"], 0, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let rows = audit_rows(&ca).await;
    assert_eq!(rows.iter().filter(|r| r.event == "jwt.issued").count(), 2);
    // The join-token attempt, the four refusals and the unauthenticated call.
    assert_eq!(
        rows.iter().filter(|r| r.event == "jwt.denied").count(),
        n_cases + 2
    );
    assert!(
        rows.iter()
            .all(|r| !r.detail_json.contains(&r.hash) && !r.detail_json.contains("eyJ")),
        "tokens are never audited"
    );
    let metrics = ca.metrics().await;
    assert!(
        metrics.contains("warden_ca_jwt_svid_issuance_count 2"),
        "{metrics}"
    );
    ca.stop().await;
}

on_both_backends!(jwt_svids_for_self_and_registered_workloads);
