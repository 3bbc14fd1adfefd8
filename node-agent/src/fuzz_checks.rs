//! The bodies of the fuzz targets in `fuzz/` that exercise this crate, shared with the
//! replay test below so a crash the fuzzer finds (kept in `fuzz/regressions/<target>/`)
//! is replayed by a plain `cargo test`. Each function takes the fuzzer's bytes, calls
//! the public entry point that meets untrusted input and panics if an invariant the
//! code documents does not hold.
//!
//! The agent's callers are attested by `SO_PEERCRED`, not by what they send: the
//! untrusted bytes are the requests themselves, checked here against a fixed state (a
//! caller entitled to `web` and `db`, `db`'s SVID not fetched yet, and `admin`'s SVID
//! present for another caller).

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use prost_types::value::Kind;
use tonic::Code;
use tonic::metadata::MetadataMap;

use warden_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest};
use warden_proto::{SpiffeId, WORKLOAD_API_HEADER};

use crate::attestation::Caller;
use crate::endpoints::sds::{
    DEFAULT, ROOTCA, SECRET_TYPE_URL, check_type_url, is_known_name, resource,
};
use crate::endpoints::sds_state::{Decision, RequestView, StreamState};
use crate::endpoints::workload_api::{check_audience, check_header, validate_request, wanted_ids};
use crate::manager::State;
use crate::svid::{Bundle, FederatedBundle, FederatedBundles, NodeKey, Svid};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DB: &str = "spiffe://cluster.local/ns/default/sa/db";
const ADMIN: &str = "spiffe://cluster.local/ns/default/sa/admin";

/// The public key of `policy/tests/data/jwt/rsa-2048.pem` (`kid: fuzz-rsa`), which
/// signed the seed tokens (`fuzz/make_seeds.py`): this trust domain's JWT bundle.
const FUZZ_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"fuzz-rsa","alg":"RS256","use":"sig","n":"mT1NBt6I23uIpcQr7IJxTtTBJs6uK3mbs5-ZyT7aDLJgFHHxjAthxkb2IlqmeRLgpYG8DW7Qnc1gYqgqzJ7Zo2YAx9dytQopc9kMBppgexp7FsAFgEYSGaw2nnX8IR-RwlCnmHLliC9YLQ4HzsFF_UtpQODBaiG0ngoswkoVqKsmIxVvk6Xir7oE5F2zHMo0Y3dzEHUcUHTtcVWpk-fRsTANRQgItSdP0jzrDBdQe-rwr4KtKbhcpOoHvKFhlhSE4A7y-yW6OpiDjj-BRav9KlHBQRqAyG7ln8jc416MNkFvj_vYviCgapuYk8J7FJatj8yriDPYMCaXVONq-xpy9w","e":"AQAB"}]}"#;

/// The federated `partner.example`'s JWT bundle: the same key, as `kid: partner-rsa`.
/// A token validates only with the bundle of the trust domain its `sub` names, so the
/// kid tells which bundle let it through.
const PARTNER_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"partner-rsa","alg":"RS256","use":"sig","n":"mT1NBt6I23uIpcQr7IJxTtTBJs6uK3mbs5-ZyT7aDLJgFHHxjAthxkb2IlqmeRLgpYG8DW7Qnc1gYqgqzJ7Zo2YAx9dytQopc9kMBppgexp7FsAFgEYSGaw2nnX8IR-RwlCnmHLliC9YLQ4HzsFF_UtpQODBaiG0ngoswkoVqKsmIxVvk6Xir7oE5F2zHMo0Y3dzEHUcUHTtcVWpk-fRsTANRQgItSdP0jzrDBdQe-rwr4KtKbhcpOoHvKFhlhSE4A7y-yW6OpiDjj-BRav9KlHBQRqAyG7ln8jc416MNkFvj_vYviCgapuYk8J7FJatj8yriDPYMCaXVONq-xpy9w","e":"AQAB"}]}"#;

/// The agent's state and the caller's identities the targets run against.
struct Fixture {
    state: State,
    ids: Vec<SpiffeId>,
}

/// An SVID whose chain reads `chain of <id>` (what is served is compared, not parsed).
fn svid(id: &SpiffeId, bundle: &Bundle) -> Option<Svid> {
    Some(Svid {
        id: id.clone(),
        chain_pem: format!("chain of {id}\n"),
        chain_der: Vec::new(),
        key: NodeKey::generate().ok()?,
        bundle: bundle.clone(),
        serial: "01".into(),
        not_before: SystemTime::UNIX_EPOCH,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800),
        received: SystemTime::UNIX_EPOCH,
        authority_key_id: None,
    })
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let [web, db, admin] = [WEB, DB, ADMIN].map(|s| SpiffeId::parse(s).ok());
        let (web, db, admin) = (web?, db?, admin?);
        let bundle = Bundle {
            trust_domain: "cluster.local".into(),
            pem: "roots of cluster.local\n".into(),
            der: Vec::new(),
        };
        let mut state = State::default();
        for id in [&web, &admin] {
            state.svids.insert(id.clone(), Arc::new(svid(id, &bundle)?));
        }
        state.bundle = Some(Arc::new(bundle));
        state.jwt_bundle = Some(Arc::new(("cluster.local".into(), FUZZ_JWKS.into())));
        let mut federated = FederatedBundles::new();
        federated.insert(
            "partner.example".into(),
            Arc::new(FederatedBundle {
                x509: Bundle {
                    trust_domain: "partner.example".into(),
                    pem: "roots of partner.example\n".into(),
                    der: Vec::new(),
                },
                jwks_json: PARTNER_JWKS.into(),
            }),
        );
        state.federated = Arc::new(federated);
        Some(Fixture {
            state,
            ids: vec![web, db],
        })
    })
    .as_ref()
}

fn inline(d: Option<DataSource>) -> Option<Vec<u8>> {
    match d?.specifier? {
        Specifier::InlineBytes(b) => Some(b),
        _ => None,
    }
}

/// `sds_request`: the bytes as the `DiscoveryRequest`s of one SDS stream, each
/// length-delimited as gRPC frames them. A `type_url` other than empty or `Secret`
/// ends the stream with `InvalidArgument`. Each request is decided as
/// [`StreamState::on_request`] documents (a NACK sends nothing and keeps the watch; no
/// nonce or nothing sent yet: every name, sorted, deduplicated; another nonce than the
/// last: stale; the last nonce: the added names, or an ACK), and the watched names
/// follow. Of the names a response carries, only `default`, `ROOTCA` and SPIFFE IDs
/// are looked up; a resource is served under the name asked for, `default` and a
/// SPIFFE ID only as an SVID the caller holds (`admin`'s is never served, whatever
/// the name), `ROOTCA` as the bundle. The node metadata is not read: the caller is
/// who `SO_PEERCRED` says.
pub fn check_sds_request(data: &[u8]) {
    let Some(f) = fixture() else {
        panic!("the fuzz fixture does not build");
    };
    let mut buf = data;
    let mut stream = StreamState::default();
    let mut last: Option<String> = None;
    let mut watched: BTreeSet<String> = BTreeSet::new();
    let mut sent = 0u32;
    while !buf.is_empty() {
        let Ok(req) = DiscoveryRequest::decode_length_delimited(&mut buf) else {
            return;
        };
        if let Err(status) = check_type_url(&req.type_url) {
            assert!(!req.type_url.is_empty() && req.type_url != SECRET_TYPE_URL);
            assert_eq!(status.code(), Code::InvalidArgument);
            return;
        }
        let error = req.error_detail.as_ref().map(|e| e.message.as_str());
        let decision = stream.on_request(RequestView {
            response_nonce: &req.response_nonce,
            resource_names: &req.resource_names,
            error_detail: error,
        });
        let requested: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let want = if let Some(e) = error {
            Decision::Nack(e.to_string())
        } else if req.response_nonce.is_empty() || last.is_none() {
            watched.clone_from(&requested);
            Decision::Respond(requested.into_iter().collect())
        } else if last.as_deref() != Some(req.response_nonce.as_str()) {
            Decision::Stale
        } else {
            let added: Vec<String> = requested.difference(&watched).cloned().collect();
            watched = requested;
            if added.is_empty() {
                Decision::Ack
            } else {
                Decision::Respond(added)
            }
        };
        assert_eq!(decision, want);
        assert!(
            stream.watched().eq(watched.iter().map(String::as_str)),
            "watched {:?}, expected {watched:?}",
            stream.watched().collect::<Vec<_>>()
        );
        let Decision::Respond(names) = decision else {
            continue;
        };
        let mut served = false;
        for name in names.iter().filter(|n| is_known_name(n)) {
            served |= check_resource(f, name);
        }
        if served {
            sent += 1;
            let nonce = format!("nonce-{sent}");
            stream.on_sent(nonce.clone());
            last = Some(nonce);
        }
    }
}

/// Resource `name` for the fixture's caller: see [`check_sds_request`].
fn check_resource(f: &Fixture, name: &str) -> bool {
    let holder = if name == DEFAULT {
        f.ids.first()
    } else {
        f.ids.iter().find(|id| id.as_str() == name)
    };
    let Some((secret, _)) = resource(&f.state, &f.ids, name) else {
        assert_ne!(name, ROOTCA, "ROOTCA not served");
        assert!(
            holder.is_none_or(|id| !f.state.svids.contains_key(id)),
            "{name:?}: the caller's SVID not served"
        );
        return false;
    };
    assert_eq!(secret.name, name);
    match secret.r#type {
        Some(secret::Type::ValidationContext(v)) => {
            assert_eq!(name, ROOTCA, "a bundle served as {name:?}");
            assert_eq!(
                inline(v.trusted_ca).as_deref(),
                Some(&b"roots of cluster.local\n"[..])
            );
        }
        Some(secret::Type::TlsCertificate(t)) => {
            let Some(id) = holder else {
                panic!("{name:?}: an SVID served to a caller that does not hold it");
            };
            assert_eq!(
                inline(t.certificate_chain),
                Some(format!("chain of {id}\n").into_bytes()),
                "{name:?}: another identity's SVID"
            );
        }
        other => panic!("{name:?} served as {other:?}"),
    }
    true
}

/// `workload_api`: the bytes are gRPC metadata lines (`name: value`, lower-case names
/// as HTTP/2 carries them) up to an empty line, then a first byte choosing the call
/// (even `FetchJWTSVID`, odd `ValidateJWTSVID`) and its protobuf request. A call is
/// admitted only with exactly one `workload.spiffe.io` value, `true` (else
/// `InvalidArgument`). `FetchJWTSVID` needs at least one audience and no empty one; it
/// is for every identity of the caller when `spiffe_id` is empty, else for exactly
/// that SPIFFE ID, which the caller must hold (`InvalidArgument` when it does not
/// parse, `PermissionDenied` when it is not the caller's). `ValidateJWTSVID` refuses
/// with `InvalidArgument`; what it accepts is a SPIFFE ID of the trust domain whose
/// bundle has the token's key (ours: `fuzz-rsa`; the federated `partner.example`:
/// `partner-rsa`), with the claims' `sub` that ID and `aud` holding the audience.
pub fn check_workload_api(data: &[u8]) {
    let Some(f) = fixture() else {
        panic!("the fuzz fixture does not build");
    };
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        // HTTP/2 refuses upper-case names; `from_bytes` would have lowered them.
        if name.as_str().as_bytes() == &line[..colon] {
            headers.append(name, value);
        }
    }
    let values: Vec<Vec<u8>> = headers
        .get_all(WORKLOAD_API_HEADER)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let mut request = tonic::Request::new(());
    *request.metadata_mut() = MetadataMap::from_headers(headers);
    match check_header(&request) {
        Ok(()) => assert_eq!(values, [b"true".to_vec()], "admitted"),
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert_ne!(values, [b"true".to_vec()], "refused: {}", s.message());
            return;
        }
    }
    let Some((&call, msg)) = body.split_first() else {
        return;
    };
    if call % 2 == 0 {
        check_fetch_jwt_svid(f, msg);
    } else {
        check_validate_jwt_svid(f, msg);
    }
}

fn check_fetch_jwt_svid(f: &Fixture, msg: &[u8]) {
    let Ok(req) = JwtsvidRequest::decode(msg) else {
        return;
    };
    let audience_ok = !req.audience.is_empty() && req.audience.iter().all(|a| !a.is_empty());
    match check_audience(&req.audience) {
        Ok(()) => assert!(audience_ok, "audience {:?} accepted", req.audience),
        Err(s) => {
            assert!(!audience_ok, "audience {:?} refused", req.audience);
            assert_eq!(s.code(), Code::InvalidArgument);
            return;
        }
    }
    let caller = Caller {
        socket: None,
        uid: 1000,
        gid: 1000,
        exe: None,
        kubernetes: None,
    };
    let parsed = SpiffeId::parse(&req.spiffe_id);
    match wanted_ids(&req.spiffe_id, f.ids.clone(), &caller) {
        Ok(wanted) if req.spiffe_id.is_empty() => assert_eq!(wanted, f.ids),
        Ok(wanted) => {
            let [id] = wanted.as_slice() else {
                panic!("{:?}: {wanted:?}", req.spiffe_id);
            };
            assert_eq!(id.as_str(), req.spiffe_id, "another identity minted");
            assert!(f.ids.contains(id), "{id} is not the caller's");
        }
        Err(s) => {
            assert!(!req.spiffe_id.is_empty());
            match s.code() {
                Code::InvalidArgument => assert!(parsed.is_err(), "{:?}", req.spiffe_id),
                Code::PermissionDenied => {
                    assert!(parsed.is_ok_and(|id| !f.ids.contains(&id)));
                }
                c => panic!("{c:?}: {}", s.message()),
            }
        }
    }
}

fn check_validate_jwt_svid(f: &Fixture, msg: &[u8]) {
    let Ok(req) = ValidateJwtsvidRequest::decode(msg) else {
        return;
    };
    let resp = match validate_request(&req, &f.state) {
        Ok(resp) => resp,
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
            return;
        }
    };
    assert!(!req.audience.is_empty() && !req.svid.is_empty());
    let Ok(id) = SpiffeId::parse_workload(&resp.spiffe_id) else {
        panic!("{:?} accepted", resp.spiffe_id);
    };
    let kid = jsonwebtoken::decode_header(&req.svid)
        .ok()
        .and_then(|h| h.kid);
    let want_kid = match id.trust_domain() {
        "cluster.local" => "fuzz-rsa",
        "partner.example" => "partner-rsa",
        td => panic!("{id} accepted: no bundle for {td}"),
    };
    assert_eq!(
        kid.as_deref(),
        Some(want_kid),
        "{id}: another trust domain's key"
    );
    let fields = resp.claims.map(|c| c.fields).unwrap_or_default();
    let kind = |k: &str| fields.get(k).and_then(|v| v.kind.clone());
    assert_eq!(
        kind("sub"),
        Some(Kind::StringValue(resp.spiffe_id.clone())),
        "sub"
    );
    let audience_ok = match kind("aud") {
        Some(Kind::StringValue(a)) => a == req.audience,
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .any(|v| v.kind == Some(Kind::StringValue(req.audience.clone()))),
        _ => false,
    };
    assert!(
        audience_ok,
        "aud {:?} lacks {:?}",
        kind("aud"),
        req.audience
    );
}

#[cfg(test)]
mod tests {
    /// Feeds every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
    fn replay(target: &str, check: fn(&[u8])) {
        let workspace = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        warden_common::testing::replay_fuzz_corpus(workspace, target, check);
    }

    #[test]
    fn sds_request_corpus() {
        replay("sds_request", super::check_sds_request);
    }

    #[test]
    fn workload_api_corpus() {
        replay("workload_api", super::check_workload_api);
    }
}
