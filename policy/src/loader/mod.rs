//! Loads Istio YAML: files and directories (recursively, `*.yaml`, `*.yml`, `*.json`,
//! in name order), multi-document streams, Kubernetes `List` documents, comments and
//! anchors. Known kinds become typed resources; unknown kinds are skipped with a note.
//! Loading is all or nothing: any bad document rejects the whole set, and every error
//! names the file, the line and number of the document, the kind, `namespace/name`,
//! the field path (`spec.rules[0].from[1].source.ipBlocks[2]`) and what was expected.
//!
//! The loader is the only part of the crate that touches the disk. It keeps the text of
//! every file it parsed ([`ConfigSet::sources`], from which [`crate::yaml_lines`] computes
//! field lines) and reads the JWKS files RequestAuthentications name in `jwksUri` into
//! [`ConfigSet::jwks_files`] (see [`jwks`]), so the engines compile a loaded set without
//! reading anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// `networking.istio.io` EnvoyFilters, carried untyped (Warden applies the local
    /// rate limits among them: [`crate::ratelimit`]).
    pub envoy_filters: Vec<Loaded<serde_json::Value>>,
    /// `warden.io` LocalRateLimits.
    pub local_rate_limits: Vec<Loaded<crate::ratelimit::LocalRateLimitSpec>>,
    /// What was skipped, and why (unknown kinds, empty documents are silent).
    pub notes: Vec<String>,
    /// The text of every file loaded, exactly as parsed, by path (for [`load_str`], its
    /// `name`): field lines are computed from it, never from the file again.
    pub sources: BTreeMap<PathBuf, Arc<str>>,
    /// The JWKS files RequestAuthentications name in `jwksUri` (resolved by
    /// [`jwks::jwks_path`]), read at load time: the text, or why it cannot be read (the
    /// RequestAuthentication compiler reports that at the rule's field).
    pub jwks_files: BTreeMap<PathBuf, Result<Arc<str>, String>>,
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

pub mod jwks;
#[cfg(test)]
mod tests;

const SECURITY: &str = "security.istio.io";
const NETWORKING: &str = "networking.istio.io";
const WARDEN: &str = "warden.io";

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
            WARDEN => &["v1alpha1"],
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
                "EnvoyFilter",
            ],
            WARDEN => &["LocalRateLimit"],
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
            "EnvoyFilter" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.envoy_filters.push(r);
                }
            }
            "LocalRateLimit" => {
                if let Some(r) = self.typed(&origin, doc) {
                    self.set.local_rate_limits.push(r);
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
        self.set.sources.insert(file.to_path_buf(), Arc::from(text));
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

/// Loads YAML text as if it were the file `name` (for tests and stdin). JWKS files named
/// by `jwksUri` are still read, relative to `name`'s directory.
pub fn load_str(name: &Path, text: &str) -> Result<ConfigSet, LoadErrors> {
    let mut l = Loader {
        set: ConfigSet::default(),
        errors: Vec::new(),
        seen: BTreeMap::new(),
    };
    l.text(name, text);
    if l.errors.is_empty() {
        jwks::read_files(&mut l.set);
        Ok(l.set)
    } else {
        Err(LoadErrors(l.errors))
    }
}

/// Loads one resource already parsed from JSON (the `object` of a Kubernetes
/// AdmissionReview), named `name` in messages. Unlike [`load_str`], no JWKS file named by
/// `jwksUri` is read: the object comes from the network, and its paths mean nothing on
/// this host.
pub fn load_object(name: &Path, object: serde_json::Value) -> Result<ConfigSet, LoadErrors> {
    let mut l = Loader {
        set: ConfigSet::default(),
        errors: Vec::new(),
        seen: BTreeMap::new(),
    };
    let origin = Origin {
        file: name.to_path_buf(),
        doc: 1,
        line: 1,
        item: None,
    };
    l.document(origin, object);
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
        jwks::read_files(&mut l.set);
        Ok(l.set)
    } else {
        Err(LoadErrors(l.errors))
    }
}
