//! Loads Istio YAML: files and directories (recursively, `*.yaml`, `*.yml`, `*.json`,
//! in name order), multi-document streams, Kubernetes `List` documents, comments and
//! anchors. Known kinds become typed resources; unknown kinds are skipped with a note.
//! Loading is all or nothing: any bad document rejects the whole set, and every error
//! names the file, the line and number of the document, the kind, `namespace/name`,
//! the field path (`spec.rules[0].from[1].source.ipBlocks[2]`) and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::resources::{
    AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec, Resource,
    ServiceEntrySpec, WorkloadEntrySpec,
};

/// Where a resource came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// 1-based document number in the file.
    pub doc: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// 0-based index in a `List` document's `items`.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: document {}",
            self.file.display(),
            self.line,
            self.doc
        )?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        Ok(())
    }
}

/// A resource the loader accepted but an engine cannot use: a value is bad (an
/// AuthorizationPolicy CIDR, a RequestAuthentication JWKS file, ...). One type for every
/// engine, so every such error names the file, the kind, `ns/name` and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {kind} {policy}: {path}: {message}")]
pub struct CompileError {
    /// The resource's kind, e.g. `AuthorizationPolicy`.
    pub kind: &'static str,
    /// `ns/name`.
    pub policy: String,
    /// Where the resource was loaded from.
    pub origin: Origin,
    /// Field path, e.g. `spec.rules[0].from[1].source.ipBlocks[2]`.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// A resource and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<S> {
    /// The resource.
    pub resource: Resource<S>,
    /// Its origin.
    pub origin: Origin,
}

/// Everything loaded from a set of files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSet {
    /// `security.istio.io` AuthorizationPolicies.
    pub authorization_policies: Vec<Loaded<AuthorizationPolicySpec>>,
    /// `security.istio.io` PeerAuthentications.
    pub peer_authentications: Vec<Loaded<PeerAuthenticationSpec>>,
    /// `security.istio.io` RequestAuthentications.
    pub request_authentications: Vec<Loaded<RequestAuthenticationSpec>>,
    /// `networking.istio.io` ServiceEntries.
    pub service_entries: Vec<Loaded<ServiceEntrySpec>>,
    /// `networking.istio.io` WorkloadEntries.
    pub workload_entries: Vec<Loaded<WorkloadEntrySpec>>,
    /// `networking.istio.io` VirtualServices, carried untyped for the routing work.
    pub virtual_services: Vec<Loaded<serde_json::Value>>,
    /// `networking.istio.io` DestinationRules, carried untyped.
    pub destination_rules: Vec<Loaded<serde_json::Value>>,
    /// `networking.istio.io` Gateways, carried untyped.
    pub gateways: Vec<Loaded<serde_json::Value>>,
    /// What was skipped, and why (unknown kinds, empty documents are silent).
    pub notes: Vec<String>,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// A file or directory cannot be read.
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A document is not YAML.
    Yaml {
        /// Where.
        origin: Origin,
        /// The parser's message (line numbers are the file's).
        message: String,
    },
    /// A document is YAML but not a valid resource.
    Resource {
        /// Where.
        origin: Origin,
        /// `kind` (or `?`).
        kind: String,
        /// `namespace/name` (or `?`).
        name: String,
        /// Field path, e.g. `spec.rules[0].from[1].source.ipBlocks[2]`.
        path: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Two resources of one kind with the same `namespace/name`.
    Duplicate {
        /// Kind.
        kind: String,
        /// `namespace/name`.
        name: String,
        /// The first.
        first: Origin,
        /// The second.
        second: Origin,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, message } => write!(f, "{}: {message}", path.display()),
            Self::Yaml { origin, message } => write!(f, "{origin}: not valid YAML: {message}"),
            Self::Resource {
                origin,
                kind,
                name,
                path,
                message,
            } => {
                write!(f, "{origin}: {kind} {name}: ")?;
                if !path.is_empty() {
                    write!(f, "{path}: ")?;
                }
                f.write_str(message)
            }
            Self::Duplicate {
                kind,
                name,
                first,
                second,
            } => write!(
                f,
                "{second}: {kind} {name}: duplicate name: already defined at {first}"
            ),
        }
    }
}

/// All problems of a rejected set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

const SECURITY: &str = "security.istio.io";
const NETWORKING: &str = "networking.istio.io";

/// Files under `path` (itself if a file), recursively, sorted.
fn files(path: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<LoadError>) {
    let io = |e: std::io::Error| LoadError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return errors.push(io(e)),
    };
    if meta.is_file() {
        return out.push(path.to_path_buf());
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => return errors.push(io(e)),
    };
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out, errors);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
}

/// A document of a YAML stream.
struct Document {
    /// 1-based line of the first line of `text` (to shift parser line numbers).
    body_line: usize,
    /// 1-based line of its first content line (what errors point at).
    content_line: usize,
    text: String,
}

/// Splits a YAML stream into documents. A line `---` (optionally followed by a space
/// and content) starts a document; `...` ends one. Documents with nothing but blank
/// lines and comments are dropped.
fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = Document {
        body_line: 1,
        content_line: 0,
        text: String::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let is_start = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let is_end = line == "..." || line.starts_with("... ");
        if is_start || is_end {
            let next = Document {
                body_line: n + 1,
                content_line: 0,
                text: String::new(),
            };
            let done = std::mem::replace(&mut current, next);
            if done.content_line > 0 {
                docs.push(done);
            }
            if is_start && line.len() > 4 && !line[4..].trim_start().starts_with('#') {
                // `--- {content}` on the marker line.
                current.body_line = n;
                current.content_line = n;
                current.text.push_str(&line[4..]);
                current.text.push('\n');
            }
            continue;
        }
        let blank = line.trim().is_empty() || line.trim_start().starts_with('#');
        if !blank && current.content_line == 0 {
            current.content_line = n;
        }
        current.text.push_str(line);
        current.text.push('\n');
    }
    if current.content_line > 0 {
        docs.push(current);
    }
    docs
}

/// Shifts `line N` in a parser message by `offset`.
fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("line ") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<usize>() {
            out.push_str(&(n + offset).to_string());
            rest = &rest[digits.len()..];
        }
    }
    out.push_str(rest);
    out
}

struct Loader {
    set: ConfigSet,
    errors: Vec<LoadError>,
    seen: BTreeMap<(String, String), Origin>,
}

fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(serde_json::Value::as_str)
}

impl Loader {
    fn resource_error(
        &mut self,
        origin: &Origin,
        doc: &serde_json::Value,
        path: &str,
        message: String,
    ) {
        let kind = str_field(doc, "kind").unwrap_or("?").to_string();
        let meta = doc.get("metadata");
        let name = meta.and_then(|m| str_field(m, "name")).unwrap_or("?");
        let ns = meta
            .and_then(|m| str_field(m, "namespace"))
            .unwrap_or("default");
        self.errors.push(LoadError::Resource {
            origin: origin.clone(),
            kind,
            name: format!("{ns}/{name}"),
            path: path.to_string(),
            message,
        });
    }

    fn typed<S: DeserializeOwned + Default>(
        &mut self,
        origin: &Origin,
        doc: serde_json::Value,
    ) -> Option<Loaded<S>> {
        let copy = doc.clone();
        match serde_path_to_error::deserialize::<_, Resource<S>>(doc) {
            Ok(resource) => {
                if resource.metadata.name.is_empty() {
                    self.resource_error(origin, &copy, "metadata.name", "is required".into());
                    return None;
                }
                let key = (
                    resource.kind.clone(),
                    format!("{}/{}", resource.namespace(), resource.metadata.name),
                );
                if let Some(first) = self.seen.get(&key) {
                    self.errors.push(LoadError::Duplicate {
                        kind: key.0,
                        name: key.1,
                        first: first.clone(),
                        second: origin.clone(),
                    });
                    return None;
                }
                self.seen.insert(key, origin.clone());
                Some(Loaded {
                    resource,
                    origin: origin.clone(),
                })
            }
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let mut message = e.into_inner().to_string();
                if message.starts_with("invalid type: boolean") && message.contains("string") {
                    // Kubernetes reads YAML 1.1 too: y/n/yes/no/on/off are booleans.
                    message.push_str(
                        " (YAML reads y, n, yes, no, on, off, true and false as booleans: quote the value)",
                    );
                }
                self.resource_error(origin, &copy, &path, message);
                None
            }
        }
    }

    fn document(&mut self, origin: Origin, doc: serde_json::Value) {
        if doc.is_null() {
            return;
        }
        if !doc.is_object() {
            self.resource_error(
                &origin,
                &doc,
                "",
                "expected a mapping with apiVersion, kind, metadata and spec".into(),
            );
            return;
        }
        let api_version = str_field(&doc, "apiVersion")
            .unwrap_or_default()
            .to_string();
        let Some(kind) = str_field(&doc, "kind").map(String::from) else {
            self.resource_error(&origin, &doc, "kind", "is required".into());
            return;
        };
        if kind == "List" && api_version == "v1" {
            let items = match doc.get("items") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                _ => {
                    self.resource_error(
                        &origin,
                        &doc,
                        "items",
                        "expected a list of resources".into(),
                    );
                    return;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let mut o = origin.clone();
                o.item = Some(i);
                self.document(o, item);
            }
            return;
        }
        let (group, version) = api_version
            .split_once('/')
            .unwrap_or(("", api_version.as_str()));
        let known_versions: &[&str] = match group {
            SECURITY => &["v1", "v1beta1"],
            NETWORKING => &["v1", "v1beta1", "v1alpha3"],
            _ => &[],
        };
        let group_kinds: &[&str] = match group {
            SECURITY => &[
                "AuthorizationPolicy",
                "PeerAuthentication",
                "RequestAuthentication",
            ],
            NETWORKING => &[
                "ServiceEntry",
                "WorkloadEntry",
                "VirtualService",
                "DestinationRule",
                "Gateway",
            ],
            _ => &[],
        };
        if !group_kinds.contains(&kind.as_str()) {
            let name = doc
                .get("metadata")
                .and_then(|m| str_field(m, "name"))
                .unwrap_or("?");
            self.set.notes.push(format!(
                "{origin}: skipped {kind} {name} ({}): not a kind Warden reads",
                if api_version.is_empty() {
                    "no apiVersion"
                } else {
                    &api_version
                }
            ));
            return;
        }
        if !known_versions.contains(&version) {
            self.resource_error(
                &origin,
                &doc,
                "apiVersion",
                format!(
                    "{api_version:?} is not served; expected {}",
                    known_versions
                        .iter()
                        .map(|v| format!("{group}/{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return;
        }
        match kind.as_str() {
            "AuthorizationPolicy" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.authorization_policies.push(r);
                }
            }
            "PeerAuthentication" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.peer_authentications.push(r);
                }
            }
            "RequestAuthentication" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.request_authentications.push(r);
                }
            }
            "ServiceEntry" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.service_entries.push(r);
                }
            }
            "WorkloadEntry" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.workload_entries.push(r);
                }
            }
            "VirtualService" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.virtual_services.push(r);
                }
            }
            "DestinationRule" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.destination_rules.push(r);
                }
            }
            _ => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.gateways.push(r);
                }
            }
        }
    }

    fn text(&mut self, file: &Path, text: &str) {
        for (doc_index, doc) in split_documents(text).into_iter().enumerate() {
            let origin = Origin {
                file: file.to_path_buf(),
                doc: doc_index + 1,
                line: doc.content_line,
                item: None,
            };
            match serde_saphyr::from_str::<serde_json::Value>(&doc.text) {
                Ok(v) => self.document(origin, v),
                Err(e) => self.errors.push(LoadError::Yaml {
                    message: shift_lines(&e.to_string(), doc.body_line - 1),
                    origin,
                }),
            }
        }
    }
}

/// Loads YAML text as if it were the file `name` (for tests and stdin).
pub fn load_str(name: &Path, text: &str) -> Result<ConfigSet, LoadErrors> {
    let mut l = Loader {
        set: ConfigSet::default(),
        errors: Vec::new(),
        seen: BTreeMap::new(),
    };
    l.text(name, text);
    if l.errors.is_empty() {
        Ok(l.set)
    } else {
        Err(LoadErrors(l.errors))
    }
}

/// Loads files and directories (recursively), all or nothing.
pub fn load(paths: &[PathBuf]) -> Result<ConfigSet, LoadErrors> {
    let mut l = Loader {
        set: ConfigSet::default(),
        errors: Vec::new(),
        seen: BTreeMap::new(),
    };
    let mut all = Vec::new();
    for p in paths {
        files(p, &mut all, &mut l.errors);
    }
    for f in all {
        match std::fs::read_to_string(&f) {
            Ok(text) => l.text(&f, &text),
            Err(e) => l.errors.push(LoadError::Io {
                path: f.clone(),
                message: e.to_string(),
            }),
        }
    }
    if l.errors.is_empty() {
        Ok(l.set)
    } else {
        Err(LoadErrors(l.errors))
    }
}

#[cfg(test)]
mod tests {
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
        assert!(e[0].contains("document 2: PeerAuthentication istio-system/default: spec.mtls.mode: unknown variant"), "{}", e[0]);
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
}
