//! Source lines of YAML fields: for each document of a file, a map from field paths in
//! the loader's syntax (`spec.rules[0].from[1].source.ipBlocks[2]`) to the 1-based line
//! where the field's key (or a sequence item) is written. `warden validate` uses it to
//! point at the offending field rather than at the start of the document.
//!
//! Built from the event stream of `granit-parser`, the parser `serde-saphyr` (the
//! loader's deserializer) runs on, so both read the same YAML the same way. Aliases are
//! recorded where the alias is written; fields reached only through an alias or a `<<`
//! merge are not in the map, and lookups fall back to the nearest recorded ancestor.
//!
//! Lines are computed from the text the loader parsed and kept
//! ([`ConfigSet::sources`]), never from the files again: an edit after loading cannot
//! shift them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use granit_parser::{Event, Parser, Span};

use crate::loader::{ConfigSet, Loaded, Origin};

/// Field paths of one YAML document and their lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineMap {
    /// 1-based line of the document's root node.
    root_line: usize,
    /// Path (`""` for the root) to 1-based line.
    lines: HashMap<String, usize>,
}

impl LineMap {
    /// The line of `path`, or of its nearest recorded ancestor
    /// (`a.b[2].c` → `a.b[2]` → `a.b` → `a` → the root).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }
}

/// `a.b[2]` → `a.b`; `a.b` → `a`; `a` → ``.
fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The line maps of the documents of one file, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileLines {
    docs: Vec<LineMap>,
}

impl FileLines {
    /// Maps every document of `text`. A syntax error ends the mapping there: documents
    /// before it are kept, and lookups in later ones fail (callers fall back to the
    /// document's line).
    pub fn parse(text: &str) -> Self {
        let mut builder = Builder::default();
        for event in Parser::new_from_str(text) {
            match event {
                Ok((event, span)) => builder.event(&event, &span),
                Err(_) => break,
            }
        }
        Self { docs: builder.docs }
    }

    /// The document whose content starts at `line` (the loader's [`Origin::line`]: the
    /// first line that is not blank, a comment or a `---` marker): the first document
    /// whose root node is on or after it. Documents without fields (empty or a bare
    /// scalar, which the loader skips or refuses) are passed over.
    pub fn document(&self, line: usize) -> Option<&LineMap> {
        self.docs
            .iter()
            .find(|d| d.root_line >= line && d.lines.len() > 1)
    }
}

/// Line maps of every file a [`ConfigSet`] was loaded from.
#[derive(Debug, Clone, Default)]
pub struct SourceLines {
    files: HashMap<PathBuf, FileLines>,
}

impl SourceLines {
    /// Maps the files named in `set`'s origins, from the text the loader kept. A file
    /// whose text is not in `set` (a hand-built set) is left out: its problems are
    /// reported at document lines.
    pub fn new(set: &ConfigSet) -> Self {
        let mut files = HashMap::new();
        for origin in origins(set) {
            if files.contains_key(&origin.file) {
                continue;
            }
            if let Some(text) = set.sources.get(&origin.file) {
                files.insert(origin.file.clone(), FileLines::parse(text));
            }
        }
        Self { files }
    }

    /// Maps `text` as the content of `file` (for tests and stdin).
    pub fn insert(&mut self, file: &Path, text: &str) {
        self.files
            .insert(file.to_path_buf(), FileLines::parse(text));
    }

    /// The line of `path` (relative to the resource, `spec.rules[0]`) in the resource
    /// loaded at `origin`; the document's line when the field cannot be found.
    pub fn line(&self, origin: &Origin, path: &str) -> usize {
        let doc = self
            .files
            .get(&origin.file)
            .and_then(|f| f.document(origin.line));
        let full = match origin.item {
            Some(i) if path.is_empty() => format!("items[{i}]"),
            Some(i) => format!("items[{i}].{path}"),
            None => path.to_string(),
        };
        doc.and_then(|d| d.line(&full)).unwrap_or(origin.line)
    }
}

/// Every origin in `set`, in load order per kind.
fn origins(set: &ConfigSet) -> impl Iterator<Item = &Origin> {
    fn o<S>(v: &[Loaded<S>]) -> impl Iterator<Item = &Origin> {
        v.iter().map(|l| &l.origin)
    }
    o(&set.authorization_policies)
        .chain(o(&set.peer_authentications))
        .chain(o(&set.request_authentications))
        .chain(o(&set.service_entries))
        .chain(o(&set.workload_entries))
        .chain(o(&set.virtual_services))
        .chain(o(&set.destination_rules))
        .chain(o(&set.gateways))
}

/// A collection being read.
#[derive(Debug)]
enum Frame {
    /// A mapping at `path`; `key` is the key whose value comes next, if any.
    Map { path: String, key: Option<String> },
    /// A sequence at `path`; `next` is the index of the next item.
    Seq { path: String, next: usize },
    /// A collection used as a mapping key: nothing inside is recorded.
    Skip { depth: usize },
}

/// Turns parser events into [`LineMap`]s.
#[derive(Debug, Default)]
struct Builder {
    docs: Vec<LineMap>,
    current: Option<LineMap>,
    stack: Vec<Frame>,
}

impl Builder {
    fn event(&mut self, event: &Event<'_>, span: &Span) {
        let line = span.start.line();
        match event {
            Event::DocumentStart(..) => {
                self.current = Some(LineMap::default());
                self.stack.clear();
            }
            Event::DocumentEnd => {
                if let Some(doc) = self.current.take() {
                    self.docs.push(doc);
                }
            }
            Event::Scalar(value, ..) => {
                self.node(line, Some(value), false);
            }
            Event::Alias(_) => {
                self.node(line, None, false);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(event, Event::MappingStart(..));
                if let Some(Frame::Skip { depth }) = self.stack.last_mut() {
                    *depth += 1;
                    return;
                }
                match self.node(line, None, true) {
                    Placed::Value(path) => self.stack.push(if is_map {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    }),
                    Placed::Key => self.stack.push(Frame::Skip { depth: 1 }),
                }
            }
            Event::MappingEnd | Event::SequenceEnd => self.end(),
            _ => {}
        }
    }

    /// Closes the innermost collection.
    fn end(&mut self) {
        if let Some(Frame::Skip { depth }) = self.stack.last_mut() {
            *depth -= 1;
            if *depth > 0 {
                return;
            }
        }
        self.stack.pop();
    }

    /// Places a node (scalar, alias or collection start) at `line`: as the root, a
    /// mapping key, a mapping value or a sequence item. Returns where it went.
    fn node(&mut self, line: usize, scalar: Option<&str>, collection: bool) -> Placed {
        let Some(doc) = self.current.as_mut() else {
            return Placed::Key;
        };
        let placed = match self.stack.last_mut() {
            None => {
                doc.root_line = line;
                Placed::Value(String::new())
            }
            Some(Frame::Skip { .. }) => Placed::Key,
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Placed::Value(p)
            }
            // A value: its key's line is already recorded (`or_insert` keeps it).
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Placed::Value(join(path, &k)),
                None => {
                    // A key. Collections and aliases as keys are not fields.
                    let name = match (scalar, collection) {
                        (Some(s), false) => s.to_string(),
                        _ => String::new(),
                    };
                    if !name.is_empty() {
                        doc.lines.entry(join(path, &name)).or_insert(line);
                    }
                    *key = Some(name);
                    return Placed::Key;
                }
            },
        };
        if let Placed::Value(p) = &placed {
            doc.lines.entry(p.clone()).or_insert(line);
        }
        placed
    }
}

/// Where [`Builder::node`] put a node.
#[derive(Debug)]
enum Placed {
    /// A value (root, mapping value or sequence item) at this path.
    Value(String),
    /// A mapping key, or something inside a key.
    Key,
}

/// `a` + `b` → `a.b`; `` + `b` → `b`.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# leading comment
apiVersion: v1
kind: List
items:
- kind: AuthorizationPolicy
  spec:
    rules:
    - from:
      - source:
          ipBlocks: [10.0.0.0/8,
            bad]
    - {}
---
--- {a: 1, b: [x, y]}
...
---
# comment
key: &anchor
  nested: 1
other: *anchor
? [complex, key]
: value
after: 2
";

    #[test]
    fn paths_map_to_the_lines_of_their_keys_and_items() {
        let f = FileLines::parse(TEXT);
        let d = f.document(2).unwrap();
        assert_eq!(d.line(""), Some(2));
        assert_eq!(d.line("items"), Some(4));
        assert_eq!(d.line("items[0]"), Some(5));
        assert_eq!(d.line("items[0].spec.rules"), Some(7));
        assert_eq!(d.line("items[0].spec.rules[0].from[0].source"), Some(9));
        assert_eq!(
            d.line("items[0].spec.rules[0].from[0].source.ipBlocks[0]"),
            Some(10)
        );
        assert_eq!(
            d.line("items[0].spec.rules[0].from[0].source.ipBlocks[1]"),
            Some(11)
        );
        assert_eq!(d.line("items[0].spec.rules[1]"), Some(12));
        // Unknown fields fall back to their nearest ancestor.
        assert_eq!(d.line("items[0].spec.rules[1].to[0]"), Some(12));
        assert_eq!(d.line("items[0].spec.action"), Some(6));
    }

    #[test]
    fn documents_are_found_by_their_first_content_line() {
        let f = FileLines::parse(TEXT);
        let d = f.document(14).unwrap();
        assert_eq!(d.line("b[1]"), Some(14));
        let d = f.document(17).unwrap();
        assert_eq!(d.line("key.nested"), Some(19));
        assert_eq!(d.line("other"), Some(20));
        assert_eq!(d.line("other.nested"), Some(20), "through the alias");
        assert_eq!(d.line("after"), Some(23), "complex keys are skipped");
        assert!(f.document(24).is_none());
    }

    /// Lines come from the text that was parsed: overwriting the file after loading
    /// changes nothing.
    #[test]
    fn lines_come_from_the_loaded_text_not_the_file_now() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ap.yaml");
        let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {methods: [GET]}\n";
        std::fs::write(&file, text).unwrap();
        let set = crate::loader::load(std::slice::from_ref(&file)).unwrap();
        // Three lines more at the top, and the rules elsewhere.
        std::fs::write(&file, format!("# a\n# b\n# c\n{text}")).unwrap();
        let lines = SourceLines::new(&set);
        let origin = &set.authorization_policies[0].origin;
        assert_eq!(origin.line, 1);
        assert_eq!(lines.line(origin, "spec.rules"), 6);
        assert_eq!(lines.line(origin, "spec.rules[0].to[0].operation"), 8);
        // Gone: still the loaded text.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(SourceLines::new(&set).line(origin, "spec.action"), 5);
    }

    #[test]
    fn broken_yaml_keeps_the_documents_before_the_error() {
        let f = FileLines::parse("a: 1\n---\nb: [unclosed\n");
        assert_eq!(f.document(1).unwrap().line("a"), Some(1));
        assert!(f.document(3).is_none());
    }
}
