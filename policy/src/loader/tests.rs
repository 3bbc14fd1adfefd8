//! Unit tests of the loader: typed resources across documents, errors naming file,
//! document, kind, name and field, duplicates, `List`s, directories, the kept text and
//! the JWKS files read at load time, and mutated inputs that must never panic.

use super::*;
use crate::resources::{Action, MtlsMode};

fn load_text(text: &str) -> Result<ConfigSet, LoadErrors> {
    load_str(Path::new("policies.yaml"), text)
}

fn errors(text: &str) -> Vec<String> {
    load_text(text)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

const AP: &str = r#"
# A comment before the first document.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
  annotations:
    istio.io/dry-run: "true"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
        notIpBlocks: ["10.0.0.0/8"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
        ports: ["8000"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls:
    8080: {mode: DISABLE}
"#;

#[test]
fn loads_typed_resources_across_documents() {
    let set = load_text(AP).unwrap();
    assert_eq!(set.authorization_policies.len(), 1);
    let ap = &set.authorization_policies[0];
    assert_eq!(ap.resource.namespace(), "foo");
    assert_eq!(ap.resource.spec.action, Action::Deny);
    assert_eq!(ap.origin.doc, 1);
    let rule = &ap.resource.spec.rules.as_ref().unwrap()[0];
    let source = rule.from.as_ref().unwrap()[0].source.as_ref().unwrap();
    assert_eq!(
        source.not_ip_blocks.as_deref(),
        Some(&["10.0.0.0/8".to_string()][..])
    );
    assert_eq!(
        rule.when.as_ref().unwrap()[0].key,
        "request.auth.claims[iss]"
    );
    assert_eq!(set.peer_authentications.len(), 2);
    let pa = &set.peer_authentications[0];
    assert_eq!(
        pa.resource.spec.mtls.as_ref().unwrap().mode,
        MtlsMode::Strict
    );
    assert_eq!(pa.origin.doc, 2);
    assert_eq!(pa.origin.line, 29, "the line after the --- marker");
    let ports = set.peer_authentications[1]
        .resource
        .spec
        .port_level_mtls
        .as_ref()
        .unwrap();
    assert_eq!(ports[&8080].mode, MtlsMode::Disable);
}

#[test]
fn unknown_fields_are_named_with_their_path() {
    let text = AP.replace("notIpBlocks", "notIpBlock");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("policies.yaml:3: document 1: AuthorizationPolicy foo/httpbin: spec.rules[0].from[0].source.notIpBlock: unknown field `notIpBlock`"),
        "{}",
        e[0]
    );
    assert!(e[0].contains("expected one of"), "{}", e[0]);
}

#[test]
fn wrong_types_and_values_are_named() {
    let e = errors(&AP.replace("action: DENY", "action: REJECT"));
    assert!(e[0].contains("spec.action: unknown variant `REJECT`, expected one of `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`"), "{}", e[0]);
    let e = errors(&AP.replace("ports: [\"8000\"]", "ports: 8000"));
    assert!(
        e[0].contains("spec.rules[0].to[0].operation.ports: invalid type"),
        "{}",
        e[0]
    );
    let e = errors(&AP.replace("ports: [\"8000\"]", "hosts: [no]"));
    assert!(
        e[0].contains("operation.hosts[0]: invalid type: boolean `false`")
            && e[0].contains("quote the value"),
        "{}",
        e[0]
    );
    let e = errors(&AP.replace("{mode: STRICT}", "{mode: STRICTER}"));
    assert!(
        e[0].contains(
            "document 2: PeerAuthentication istio-system/default: spec.mtls.mode: unknown variant"
        ),
        "{}",
        e[0]
    );
}

#[test]
fn one_bad_document_rejects_the_set_and_all_errors_are_reported() {
    let text = format!(
        "{AP}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{namespace: x}}\nspec: {{}}\n---\napiVersion: security.istio.io/v2\nkind: PeerAuthentication\nmetadata: {{name: y}}\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("AuthorizationPolicy x/?: metadata.name: is required"),
        "{}",
        e[0]
    );
    assert!(e[1].contains("apiVersion: \"security.istio.io/v2\" is not served; expected security.istio.io/v1, security.istio.io/v1beta1"), "{}", e[1]);
}

#[test]
fn duplicates_are_refused_naming_both_places() {
    let doc = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: ns1}\n";
    let e = errors(&format!("{doc}---\n{doc}"));
    assert_eq!(
        e,
        [
            "policies.yaml:5: document 2: AuthorizationPolicy ns1/a: duplicate name: already defined at policies.yaml:1: document 1"
        ]
    );
    // Same name, other kind or namespace: fine.
    let other = doc.replace("namespace: ns1", "namespace: ns2");
    assert!(load_text(&format!("{doc}---\n{other}")).is_ok());
}

#[test]
fn lists_anchors_unknown_kinds_and_empty_documents() {
    let text = r#"
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: web, namespace: shop}
  spec:
    hosts: [web.shop.svc]
    location: MESH_INTERNAL
    ports: [{number: 80, name: http, protocol: HTTP}]
    workloadSelector: {labels: &l {app: web}}
- apiVersion: networking.istio.io/v1alpha3
  kind: WorkloadEntry
  metadata: {name: web-1, namespace: shop, labels: *l}
  spec: {address: 127.0.0.2, labels: *l, serviceAccount: web, ports: {http: 8080}}
---
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: vs}
spec: {hosts: [web], http: [{route: [{destination: {host: web}}]}]}
"#;
    let set = load_text(text).unwrap();
    assert_eq!(set.service_entries[0].resource.spec.ports[0].number, 80);
    assert_eq!(set.service_entries[0].origin.item, Some(0));
    let we = &set.workload_entries[0].resource;
    assert_eq!(we.metadata.labels["app"], "web");
    assert_eq!(we.spec.ports["http"], 8080);
    assert_eq!(set.virtual_services.len(), 1);
    assert_eq!(set.notes.len(), 1);
    assert!(
        set.notes[0].contains("skipped ConfigMap cm (v1)"),
        "{}",
        set.notes[0]
    );
}

#[test]
fn broken_yaml_names_the_file_line() {
    let e = errors("apiVersion: v1\nkind: List\nitems: []\n---\napiVersion: [unclosed\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("policies.yaml:5: document 2: not valid YAML"),
        "{}",
        e[0]
    );
}

#[test]
fn directories_load_recursively_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sub/a.yml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
    let set = load(&[dir.path().to_path_buf()]).unwrap();
    let names: Vec<_> = set
        .authorization_policies
        .iter()
        .map(|p| p.resource.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["b", "a"]);
    let missing = load(&[dir.path().join("nope")]).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

/// Deterministic mutation fuzzing: truncations, byte flips, spliced markers and
/// indentation changes of a real document set never panic the loader.
#[test]
fn mutated_inputs_never_panic() {
    let base = AP.as_bytes();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let inserts: [&[u8]; 8] = [b"---\n", b"\n- ", b": ", b"[", b"{", b"&a ", b"*a", b"\t"];
    for _ in 0..3000 {
        let mut bytes = base.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % (bytes.len() + 1);
            match next() % 4 {
                0 => bytes.truncate(at),
                1 if at < bytes.len() => bytes[at] = (next() % 128) as u8,
                2 => {
                    let ins = inserts[(next() as usize) % inserts.len()];
                    bytes.splice(at..at, ins.iter().copied());
                }
                _ => {
                    let end = (at + (next() as usize) % 8).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = load_text(&text);
    }
}

/// `jwksUri` files are read at load time, once, relative to the YAML file; inline `jwks`
/// wins and remote URIs are left to the compiler.
#[test]
fn jwks_files_are_read_at_load_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let jwks = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}"#;
    std::fs::write(dir.path().join("keys/a.json"), jwks).unwrap();
    let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules:\n  - {issuer: a, jwksUri: keys/a.json}\n  - {issuer: b, jwksUri: 'file://keys/a.json'}\n  - {issuer: c, jwksUri: missing.json}\n  - {issuer: d, jwksUri: https://example.com/jwks, jwks: '{}'}\n  - {issuer: e, jwksUri: inline-wins.json, jwks: 'x'}\n";
    let file = dir.path().join("ra.yaml");
    std::fs::write(&file, yaml).unwrap();
    let set = load(std::slice::from_ref(&file)).unwrap();
    let paths: Vec<&Path> = set.jwks_files.keys().map(PathBuf::as_path).collect();
    assert_eq!(
        paths,
        [
            dir.path().join("keys/a.json"),
            dir.path().join("missing.json")
        ]
    );
    assert_eq!(
        set.jwks_files[&dir.path().join("keys/a.json")].as_deref(),
        Ok(jwks)
    );
    let missing = set.jwks_files[&dir.path().join("missing.json")]
        .as_ref()
        .unwrap_err();
    assert!(missing.contains("cannot read the JWKS file"), "{missing}");
    assert_eq!(&*set.sources[&file], yaml);
}
