//! Files the agent writes: the node SVID it keeps, and SVIDs for programs that read
//! files. Every write is atomic ([`write_atomic`]), so a reader never sees half a key,
//! nor a key that does not match the certificate next to it for longer than between
//! two renames.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::svid::Svid;

pub use warden_common::files::write_atomic;

/// Creates a directory (and parents) readable only by the agent's user.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The file names istio-agent's `OUTPUT_CERTS` uses.
pub const CHAIN_FILE: &str = "cert-chain.pem";
/// Private key file (0600).
pub const KEY_FILE: &str = "key.pem";
/// Trust bundle file.
pub const ROOT_FILE: &str = "root-cert.pem";

/// Writes an SVID's chain, key (0600) and bundle into `dir`. The key goes first and
/// the chain last, so a reader that watches the chain sees a matching key.
pub fn write_svid(dir: &Path, svid: &Svid) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomic(&dir.join(KEY_FILE), svid.key.pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join(ROOT_FILE), svid.bundle.pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join(CHAIN_FILE), svid.chain_pem.as_bytes(), 0o644)
}

/// Where node mode writes an identity's files: `base/<SPIFFE ID path>` (SPIFFE path
/// segments cannot be `.`, `..` or contain `/`, so this stays under `base`).
pub fn dir_for(base: &Path, id: &warden_proto::SpiffeId) -> PathBuf {
    base.join(id.path().trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_dirs_stay_under_the_base() {
        let id = warden_proto::SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        assert_eq!(
            dir_for(Path::new("/out"), &id),
            PathBuf::from("/out/ns/a/sa/b")
        );
    }
}
