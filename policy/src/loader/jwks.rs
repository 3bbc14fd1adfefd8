//! The JWKS files RequestAuthentications point to with `jwksUri`: a local path or a
//! `file://` URL, relative to the directory of the YAML file that names it. The loader
//! reads each once, at load time, into [`ConfigSet::jwks_files`], so the
//! RequestAuthentication compiler is a pure function of the loaded set. Remote URIs are
//! not read here (the compiler refuses them).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ConfigSet;

/// The local file a `jwksUri` names, `yaml_file` being the file the RequestAuthentication
/// was loaded from: a path or a `file://` URL, relative to `yaml_file`'s directory unless
/// absolute. `None` for an empty URI or any other scheme (`https://`, `ftp://`, ...).
pub fn jwks_path(uri: &str, yaml_file: &Path) -> Option<PathBuf> {
    let path = match uri.strip_prefix("file://") {
        Some(p) => p,
        None if uri.is_empty() || uri.contains("://") => return None,
        None => uri,
    };
    // `join` with an absolute path is that path.
    Some(yaml_file.parent().unwrap_or(Path::new("")).join(path))
}

/// Reads, once each, the JWKS files of the RequestAuthentication rules of `set` that
/// have no inline `jwks` (which wins over `jwksUri`). A file that cannot be read is kept
/// as its error.
pub(super) fn read_files(set: &mut ConfigSet) {
    for ra in &set.request_authentications {
        for rule in &ra.resource.spec.jwt_rules {
            if rule.inline_jwks().is_some() {
                continue;
            }
            let uri = rule.jwks_uri.as_deref().unwrap_or_default();
            let Some(path) = jwks_path(uri, &ra.origin.file) else {
                continue;
            };
            set.jwks_files.entry(path).or_insert_with_key(|path| {
                std::fs::read_to_string(path).map(Arc::from).map_err(|e| {
                    format!(
                        "cannot read the JWKS file {}: {e}; expected a readable JSON Web Key Set",
                        path.display()
                    )
                })
            });
        }
    }
}
