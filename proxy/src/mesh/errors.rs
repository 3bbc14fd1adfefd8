//! Collecting the compile errors of one resource, each naming the file, the resource
//! and the field.

use warden_policy::loader::{CompileError, Loaded};

/// The errors of one resource.
pub(crate) struct Errors {
    kind: &'static str,
    name: String,
    origin: warden_policy::loader::Origin,
    pub(crate) list: Vec<CompileError>,
}

impl Errors {
    pub(crate) fn new<S>(kind: &'static str, l: &Loaded<S>) -> Self {
        Self {
            kind,
            name: format!("{}/{}", l.resource.namespace(), l.resource.metadata.name),
            origin: l.origin.clone(),
            list: Vec::new(),
        }
    }

    pub(crate) fn into_list(self) -> Vec<CompileError> {
        self.list
    }

    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(CompileError {
            kind: self.kind,
            policy: self.name.clone(),
            origin: self.origin.clone(),
            path: path.into(),
            message: message.into(),
        });
    }
}
