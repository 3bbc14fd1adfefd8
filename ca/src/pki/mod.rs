//! The CA's public-key infrastructure: its keys ([`keys`]), its signing chain and trust
//! bundle ([`authority`]), the checks every CSR passes ([`csr`]), the X.509-SVIDs it
//! builds, and its JWT-SVID signer ([`jwt_svid`]).

pub mod authority;
pub mod csr;
pub mod jwt_svid;
pub mod keys;

pub use authority::{Authority, IssuedCert, PkiError};
pub use jwt_svid::JwtSigner;
pub use keys::KeyType;

use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path` atomically (temp file + rename) with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("warden")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
