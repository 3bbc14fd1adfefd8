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
            set.jwks_files
                .entry(path)
                .or_insert_with_key(|path| read_jwks(path).map(Arc::from));
        }
    }
}

/// The largest JWKS file read (a key set of dozens of RSA keys is a few tens of KiB).
pub const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// Reads one JWKS file: a regular file of at most [`MAX_JWKS_BYTES`]. A device, FIFO or
/// directory (`/dev/zero`, `/dev/stdin`) is refused before it is read, so a config can
/// never make the loader block or read without end.
fn read_jwks(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let cannot = |e: &dyn std::fmt::Display| {
        format!(
            "cannot read the JWKS file {}: {e}; expected a readable JSON Web Key Set",
            path.display()
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(cannot(&"not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(|e| cannot(&e))?
        .take(MAX_JWKS_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| cannot(&e))?;
    if text.len() as u64 > MAX_JWKS_BYTES {
        return Err(cannot(&format!("larger than {MAX_JWKS_BYTES} bytes")));
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("jwks.json");
        std::fs::write(&small, "{\"keys\": []}").unwrap();
        assert_eq!(read_jwks(&small).unwrap(), "{\"keys\": []}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; 1024 * 1024 + 1]).unwrap();
        let e = read_jwks(&big).unwrap_err();
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
        for special in ["/dev/zero", "/dev/stdin", "/"] {
            let e = read_jwks(Path::new(special)).unwrap_err();
            assert!(e.contains(special), "{e}");
        }
        let e = read_jwks(&dir.path().join("missing.json")).unwrap_err();
        assert!(
            e.contains("missing.json") && e.contains("expected a readable JSON Web Key Set"),
            "{e}"
        );
    }
}
