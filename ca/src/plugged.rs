//! A plugged-in CA from files (`--plugin-certs`, Istio's `cacerts` layout) followed
//! while the CA runs, as istiod follows its `cacerts` mount: when the files change and
//! form a usable set (key matching certificate, chain up to `root-cert.pem`), the CA
//! signs with the new intermediate from the next request on, serves its new chain, and
//! publishes the new `root-cert.pem`; a set that does not (a half-copied directory, a
//! key that does not match) is refused, logged and audited once, and the authority in
//! use stays until the files change again.
//!
//! A new intermediate under the same root is invisible to peers: they trust the root,
//! and every leaf is served with the chain of the intermediate that signed it. To move
//! to a new root, put both roots in `root-cert.pem` first, let agents take the bundle,
//! then switch the intermediate, and drop the old root last (the steps
//! `warden ca authority` automates for a CA's own root).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::pki::{Authority, AuthorityHandle};
use crate::store::{AuditEvent, Store};

/// How often the files are read.
pub const POLL: Duration = Duration::from_secs(2);

const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// SHA-256 over the four files (an absent `cert-chain.pem`, or `ca-key.pem` when the key
/// is in a token, reads as empty); `None` if a required one cannot be read.
pub fn fingerprint(dir: &Path) -> Option<[u8; 32]> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for name in FILES {
        let bytes = match std::fs::read(dir.join(name)) {
            Ok(b) => b,
            Err(e)
                if matches!(name, "cert-chain.pem" | "ca-key.pem")
                    && e.kind() == std::io::ErrorKind::NotFound =>
            {
                Vec::new()
            }
            Err(_) => return None,
        };
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Some(out)
}

/// Follows `dir` every [`POLL`] until `shutdown` flips. `loaded` is the fingerprint of
/// the files the running authority came from.
pub async fn follow(
    dir: PathBuf,
    load: impl Fn(&Path) -> Result<Authority, crate::pki::PkiError>,
    loaded: Option<[u8; 32]>,
    handle: AuthorityHandle,
    store: Store,
    trust_domain: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut current = loaded;
    let mut refused = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        let Some(now) = fingerprint(&dir) else {
            continue;
        };
        if Some(now) == current || Some(now) == refused {
            continue;
        }
        let (outcome, detail) = match load(&dir) {
            Ok(authority) => {
                let key_id = authority.key_id().to_string();
                let source = authority.source().to_string();
                match handle.replace(authority) {
                    Ok(bundle_changed) => {
                        current = Some(now);
                        refused = None;
                        tracing::info!(%source, authority = %key_id, bundle_changed, "the plugged-in CA files changed; signing with them from now on");
                        (
                            "loaded",
                            serde_json::json!({
                                "dir": dir.display().to_string(),
                                "authority": key_id,
                                "bundle_changed": bundle_changed,
                            }),
                        )
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot publish the new plugged-in CA; keeping the one in use");
                        continue;
                    }
                }
            }
            Err(e) => {
                refused = Some(now);
                tracing::warn!(error = %e, "the plugged-in CA files changed but are not a usable set; keeping the authority in use until they change again");
                (
                    "refused",
                    serde_json::json!({
                        "dir": dir.display().to_string(),
                        "error": e.to_string(),
                    }),
                )
            }
        };
        let event = AuditEvent {
            event: "ca.authority",
            outcome,
            identity: format!("spiffe://{trust_domain}"),
            requester: "plugin-certs".into(),
            peer_addr: "file".into(),
            detail,
        };
        if let Err(e) = store.audit(event).await {
            tracing::error!(error = %e, "cannot audit the plugged-in CA change");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_every_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(fingerprint(dir.path()), None);
        for f in ["ca-cert.pem", "ca-key.pem", "root-cert.pem"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let a = fingerprint(dir.path()).unwrap();
        std::fs::write(dir.path().join("cert-chain.pem"), "").unwrap();
        // An empty chain file reads as an absent one.
        assert_eq!(fingerprint(dir.path()), Some(a));
        std::fs::write(dir.path().join("ca-key.pem"), "other").unwrap();
        assert_ne!(fingerprint(dir.path()), Some(a));
    }
}
