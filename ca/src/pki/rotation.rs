//! Root rotation for a CA that keeps its own root (no `--plugin-certs`, no Kubernetes
//! Secret): a set of authorities, each a self-signed root and its key in the data
//! directory, moving through SPIRE's states.
//!
//! - **prepared**: its root is in every trust bundle; it signs nothing yet.
//! - **active**: signs every certificate; exactly one at a time.
//! - **old**: was active; still trusted until what it signed expires. It may be
//!   **tainted**: agents then re-issue every SVID it signed at once.
//! - **revoked**: removed from the set, its root from every bundle, its key deleted.
//!
//! The set is recorded in `<data_dir>/authorities.json`; writing that file (atomically)
//! is the commit point of every change. New key files are written before it, removed
//! files after it, so a crash at any point leaves either the old or the new set, never
//! half of one. A CA that predates the file (`ca-cert.pem`, `ca-key.pem`) adopts its
//! root as the active authority on the first start.
//!
//! Every member's root is in the active authority's bundle (see
//! [`Authority::with_trust`]), so `root-cert.pem`, CreateCertificate answers, the
//! agents' SDS `ROOTCA` and Workload API bundles and the CA's own client verifier all
//! follow a change within an agent's sync interval.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::authority::{Authority, PkiError, invalid, io_err as io, key_id_of};
use super::keys::KeyType;

/// The manifest's file name in the data directory.
pub const MANIFEST: &str = "authorities.json";
/// Where new authorities' files go, under the data directory.
const DIR: &str = "authorities";

/// An authority's place in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Trusted, not signing yet.
    Prepared,
    /// Signing.
    Active,
    /// Trusted until what it signed expires.
    Old,
}

impl State {
    /// Lowercase name, as printed and recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Prepared => "prepared",
            State::Active => "active",
            State::Old => "old",
        }
    }
}

/// One authority of the set, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Key identifier of its root (lowercase hex): the authority key identifier of
    /// everything it signs.
    pub id: String,
    /// Certificate file, relative to the data directory.
    pub cert: String,
    /// Key file (0600), relative to the data directory.
    pub key: String,
    /// Where it is in its life.
    pub state: State,
    /// Tainted: what it signed is re-issued at once.
    #[serde(default)]
    pub tainted: bool,
    /// When it entered the set, unix seconds.
    pub created_at: i64,
    /// When it last became active, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    authorities: Vec<Member>,
}

/// A member with what its certificate says, for listings.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// The manifest's record.
    pub member: Member,
    /// Root validity start, unix seconds.
    pub not_before: i64,
    /// Root validity end, unix seconds.
    pub not_after: i64,
    /// The root, PEM.
    pub cert_pem: String,
}

/// A refused or failed change, naming the authority or file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The change does not apply to the set as it is (a precondition).
    #[error("{0}")]
    Refused(String),
    /// No member has that ID.
    #[error("no authority {0:?}; `warden ca authority list` shows them")]
    NotFound(String),
    /// A file could not be read, parsed or written.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The authorities of an own-root CA.
#[derive(Debug, Clone)]
pub struct AuthoritySet {
    data_dir: PathBuf,
    trust_domain: String,
    key_type: KeyType,
    root_lifetime: Duration,
    manifest: Manifest,
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

impl AuthoritySet {
    /// Loads the set from `<data_dir>/authorities.json`, or adopts (creating it on a
    /// first start) the root in `ca-cert.pem` / `ca-key.pem` as its only, active member.
    /// `root_lifetime` is the lifetime of roots [`AuthoritySet::prepare`] makes.
    pub fn load(
        data_dir: &Path,
        trust_domain: &str,
        key_type: KeyType,
        root_lifetime: Duration,
    ) -> Result<Self, PkiError> {
        let path = data_dir.join(MANIFEST);
        let manifest = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            serde_json::from_str(&text)
                .map_err(|e| invalid(&path, format!("not an authority manifest: {e}")))?
        } else {
            let adopted =
                Authority::load_or_create_root(data_dir, trust_domain, key_type, root_lifetime)?;
            Manifest {
                authorities: vec![Member {
                    id: adopted.key_id().to_string(),
                    cert: "ca-cert.pem".into(),
                    key: "ca-key.pem".into(),
                    state: State::Active,
                    tainted: false,
                    created_at: now(),
                    activated_at: Some(now()),
                }],
            }
        };
        let set = Self {
            data_dir: data_dir.to_path_buf(),
            trust_domain: trust_domain.to_string(),
            key_type,
            root_lifetime,
            manifest,
        };
        set.check(&path)?;
        if !path.exists() {
            set.commit()?;
        }
        Ok(set)
    }

    /// The manifest's invariants: one active member, unique IDs that match their roots.
    fn check(&self, path: &Path) -> Result<(), PkiError> {
        let active = self
            .manifest
            .authorities
            .iter()
            .filter(|m| m.state == State::Active)
            .count();
        if active != 1 {
            return Err(invalid(
                path,
                format!("{active} authorities are active; exactly one must be"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.manifest.authorities {
            if !seen.insert(m.id.as_str()) {
                return Err(invalid(path, format!("authority {} is listed twice", m.id)));
            }
            if m.tainted && m.state != State::Old {
                return Err(invalid(
                    path,
                    format!("authority {} is tainted but {}", m.id, m.state.as_str()),
                ));
            }
            let cert = self.root_der(m)?;
            let id = key_id_of(&cert);
            if id != m.id {
                return Err(invalid(
                    &self.data_dir.join(&m.cert),
                    format!("its key identifier is {id}, the manifest says {}", m.id),
                ));
            }
        }
        Ok(())
    }

    fn root_der(&self, m: &Member) -> Result<CertificateDer<'static>, PkiError> {
        let path = self.data_dir.join(&m.cert);
        CertificateDer::from_pem_file(&path)
            .map_err(|e| invalid(&path, format!("not a PEM certificate: {e:?}")))
    }

    /// The members, in manifest order (oldest first).
    pub fn members(&self) -> &[Member] {
        &self.manifest.authorities
    }

    /// The members with their roots' validity.
    pub fn describe(&self) -> Result<Vec<MemberInfo>, PkiError> {
        self.manifest
            .authorities
            .iter()
            .map(|m| {
                let der = self.root_der(m)?;
                let (nb, na) = X509Certificate::from_der(&der)
                    .map(|(_, c)| {
                        (
                            c.validity().not_before.timestamp(),
                            c.validity().not_after.timestamp(),
                        )
                    })
                    .map_err(|e| invalid(&self.data_dir.join(&m.cert), e.to_string()))?;
                Ok(MemberInfo {
                    member: m.clone(),
                    not_before: nb,
                    not_after: na,
                    cert_pem: super::pem_encode("CERTIFICATE", &der),
                })
            })
            .collect()
    }

    /// The active member.
    pub fn active(&self) -> &Member {
        // `check` guarantees exactly one.
        self.manifest
            .authorities
            .iter()
            .find(|m| m.state == State::Active)
            .unwrap_or(&self.manifest.authorities[0])
    }

    /// The prepared member, if any.
    pub fn prepared(&self) -> Option<&Member> {
        self.manifest
            .authorities
            .iter()
            .find(|m| m.state == State::Prepared)
    }

    /// The signing authority: the active member, trusting every member's root (the
    /// active one first), with the tainted members' IDs.
    pub fn authority(&self) -> Result<Authority, PkiError> {
        let active = self.active();
        let cert_path = self.data_dir.join(&active.cert);
        let key_path = self.data_dir.join(&active.key);
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
        let authority = Authority::from_root_pem(
            &read(&cert_path)?,
            &read(&key_path)?,
            &cert_path,
            &key_path,
            format!(
                "self-signed root {} (authority {})",
                cert_path.display(),
                active.id
            ),
        )?;
        let mut roots = Vec::new();
        for m in &self.manifest.authorities {
            roots.push(self.root_der(m)?);
        }
        let tainted = self
            .manifest
            .authorities
            .iter()
            .filter(|m| m.tainted)
            .map(|m| m.id.clone())
            .collect();
        Ok(authority.with_trust(&roots, tainted))
    }

    /// Every member as an authority of its own (its root, its key): what signs the CRL
    /// of the certificates each one issued.
    pub fn member_authorities(&self) -> Result<Vec<Authority>, PkiError> {
        self.manifest
            .authorities
            .iter()
            .map(|m| {
                let cert_path = self.data_dir.join(&m.cert);
                let key_path = self.data_dir.join(&m.key);
                let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
                Authority::from_root_pem(
                    &read(&cert_path)?,
                    &read(&key_path)?,
                    &cert_path,
                    &key_path,
                    format!("authority {}", m.id),
                )
            })
            .collect()
    }

    fn find(&self, id: &str) -> Result<usize, RotationError> {
        let id = id.to_ascii_lowercase();
        self.manifest
            .authorities
            .iter()
            .position(|m| m.id == id)
            .ok_or(RotationError::NotFound(id))
    }

    /// Makes a new root and adds it as prepared. Its files are written now but are
    /// part of the set only once [`AuthoritySet::commit`] writes the manifest.
    pub fn prepare(&mut self) -> Result<Member, RotationError> {
        if let Some(p) = self.prepared() {
            return Err(RotationError::Refused(format!(
                "authority {} is already prepared; activate or revoke it first",
                p.id
            )));
        }
        let (cert_pem, key_pem) =
            Authority::new_root_pem_for(&self.trust_domain, self.key_type, self.root_lifetime)?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Sign(format!("the new root does not parse: {e:?}")))?;
        let id = key_id_of(&der);
        let dir = self.data_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let cert = format!("{DIR}/{id}-cert.pem");
        let key = format!("{DIR}/{id}-key.pem");
        let key_path = self.data_dir.join(&key);
        super::write_atomic(&key_path, key_pem.as_bytes(), 0o600).map_err(io(&key_path))?;
        let cert_path = self.data_dir.join(&cert);
        super::write_atomic(&cert_path, cert_pem.as_bytes(), 0o644).map_err(io(&cert_path))?;
        let member = Member {
            id,
            cert,
            key,
            state: State::Prepared,
            tainted: false,
            created_at: now(),
            activated_at: None,
        };
        self.manifest.authorities.push(member.clone());
        Ok(member)
    }

    /// Makes the prepared authority (or `id`, which must be prepared) active; the
    /// active one becomes old. Returns (new active, now old).
    pub fn activate(&mut self, id: Option<&str>) -> Result<(Member, Member), RotationError> {
        let target = match id {
            Some(id) => self.find(id)?,
            None => self
                .manifest
                .authorities
                .iter()
                .position(|m| m.state == State::Prepared)
                .ok_or_else(|| {
                    RotationError::Refused(
                        "no authority is prepared; `warden ca authority prepare` first".into(),
                    )
                })?,
        };
        let m = &self.manifest.authorities[target];
        if m.state != State::Prepared {
            return Err(RotationError::Refused(format!(
                "authority {} is {}; only a prepared authority can be activated",
                m.id,
                m.state.as_str()
            )));
        }
        let mut old = None;
        for m in &mut self.manifest.authorities {
            if m.state == State::Active {
                m.state = State::Old;
                old = Some(m.clone());
            }
        }
        let m = &mut self.manifest.authorities[target];
        m.state = State::Active;
        m.activated_at = Some(now());
        let active = m.clone();
        let old = old.ok_or_else(|| RotationError::Refused("no authority was active".into()))?;
        Ok((active, old))
    }

    /// Taints an old authority: agents re-issue what it signed at once.
    pub fn taint(&mut self, id: &str) -> Result<Member, RotationError> {
        let i = self.find(id)?;
        let m = &mut self.manifest.authorities[i];
        if m.state != State::Old {
            return Err(RotationError::Refused(format!(
                "authority {} is {}; only an old authority can be tainted (activate its successor first)",
                m.id,
                m.state.as_str()
            )));
        }
        if m.tainted {
            return Err(RotationError::Refused(format!(
                "authority {} is already tainted",
                m.id
            )));
        }
        m.tainted = true;
        Ok(m.clone())
    }

    /// Removes an old or prepared authority from the set. `in_use` counts the
    /// identities whose current certificate it signed; while any is, the removal is
    /// refused unless `force` (those identities then fail verification until re-issued).
    pub fn revoke(
        &mut self,
        id: &str,
        in_use: usize,
        force: bool,
    ) -> Result<Member, RotationError> {
        let i = self.find(id)?;
        let m = &self.manifest.authorities[i];
        if m.state == State::Active {
            return Err(RotationError::Refused(format!(
                "authority {} is active; prepare and activate a successor, then revoke it",
                m.id
            )));
        }
        if in_use > 0 && !force {
            return Err(RotationError::Refused(format!(
                "authority {} still signs the current certificate of {in_use} identit{}; taint it so agents re-issue them, wait for them to expire, or revoke with --force",
                m.id,
                if in_use == 1 { "y" } else { "ies" }
            )));
        }
        Ok(self.manifest.authorities.remove(i))
    }

    /// Writes the manifest: the commit point of a change.
    pub fn commit(&self) -> Result<(), PkiError> {
        let path = self.data_dir.join(MANIFEST);
        let mut text = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| PkiError::Sign(format!("encoding the manifest: {e}")))?;
        text.push('\n');
        super::write_atomic(&path, text.as_bytes(), 0o600).map_err(io(&path))
    }

    /// Deletes a removed member's files (after the commit that removed it): the key
    /// first. A failure is logged; the files are no longer part of the set.
    pub fn delete_files(&self, m: &Member) {
        for f in [&m.key, &m.cert] {
            let path = self.data_dir.join(f);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(path = %path.display(), error = %e, "cannot delete a revoked authority's file");
            }
        }
    }

    /// Old members whose root has expired: nothing they signed can verify any more
    /// (no leaf outlives its chain), so automatic rotation removes them.
    pub fn expired_old(&self, at: OffsetDateTime) -> Vec<String> {
        self.describe()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.member.state == State::Old && i.not_after <= at.unix_timestamp())
            .map(|i| i.member.id)
            .collect()
    }

    /// Where the active root is in its life, 0.0 at `notBefore` to 1.0 at `notAfter`.
    pub fn active_life_fraction(&self, at: OffsetDateTime) -> Result<f64, PkiError> {
        let der = self.root_der(self.active())?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| invalid(&self.data_dir.join(&self.active().cert), e.to_string()))?;
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        if na <= nb {
            return Ok(1.0);
        }
        #[allow(clippy::cast_precision_loss)] // seconds within centuries fit an f64
        Ok((at.unix_timestamp() - nb) as f64 / (na - nb) as f64)
    }
}

/// What automatic rotation does now, given where the active root is in its life: SPIRE's
/// schedule (prepare at `prepare_at`, activate at `activate_at` of the active root's
/// lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoStep {
    /// Nothing is due.
    Wait,
    /// Prepare a successor.
    Prepare,
    /// Activate the prepared successor.
    Activate,
}

/// The automatic step for a set whose active root is at `fraction` of its life.
pub fn auto_step(fraction: f64, prepared: bool, prepare_at: f64, activate_at: f64) -> AutoStep {
    if prepared && fraction >= activate_at {
        AutoStep::Activate
    } else if !prepared && fraction >= prepare_at {
        AutoStep::Prepare
    } else {
        AutoStep::Wait
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set(dir: &Path) -> AuthoritySet {
        AuthoritySet::load(
            dir,
            "cluster.local",
            KeyType::EcP256,
            Duration::from_secs(86_400),
        )
        .unwrap()
    }

    #[test]
    fn adopts_the_existing_root_and_rotates_through_every_state() {
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::load(dir.path(), None, "cluster.local", KeyType::EcP256).unwrap();
        let mut s = set(dir.path());
        assert_eq!(s.members().len(), 1);
        assert_eq!(s.active().id, first.key_id());
        assert_eq!(s.active().cert, "ca-cert.pem");

        let prepared = s.prepare().unwrap();
        s.commit().unwrap();
        // Prepared: trusted, not signing.
        let a = s.authority().unwrap();
        assert_eq!(a.key_id(), first.key_id());
        assert_eq!(a.roots_der().len(), 2);
        let key = std::fs::metadata(dir.path().join(&prepared.key)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        // Only one prepared at a time.
        assert!(matches!(s.prepare(), Err(RotationError::Refused(_))));
        // The active one cannot be tainted or revoked.
        assert!(s.taint(first.key_id()).is_err());
        assert!(s.revoke(first.key_id(), 0, true).is_err());

        // Two roots of one trust domain never share a name: verifiers find CRLs and
        // issuers by name.
        let subject = |der: &[u8]| {
            X509Certificate::from_der(der)
                .unwrap()
                .1
                .subject()
                .to_string()
        };
        let a = s.authority().unwrap();
        assert_ne!(subject(&a.roots_der()[0]), subject(&a.roots_der()[1]));
        let (active, old) = s.activate(None).unwrap();
        s.commit().unwrap();
        assert_eq!(active.id, prepared.id);
        assert_eq!(old.id, first.key_id());
        let a = s.authority().unwrap();
        assert_eq!(a.key_id(), prepared.id);
        assert_eq!(a.roots_der().len(), 2);
        // The new root first in the bundle.
        assert_eq!(key_id_of(&a.roots_der()[0]), prepared.id);

        // Reloaded from the manifest: the same set.
        let reloaded = set(dir.path());
        assert_eq!(reloaded.members(), s.members());

        s.taint(&old.id).unwrap();
        assert!(s.taint(&old.id).is_err(), "tainted twice");
        assert_eq!(
            s.authority().unwrap().tainted(),
            std::slice::from_ref(&old.id)
        );
        let err = s.revoke(&old.id, 3, false).unwrap_err().to_string();
        assert!(err.contains("3 identities"), "{err}");
        let removed = s.revoke(&old.id, 0, false).unwrap();
        s.commit().unwrap();
        s.delete_files(&removed);
        assert!(!dir.path().join("ca-key.pem").exists());
        let a = s.authority().unwrap();
        assert_eq!(a.roots_der().len(), 1);
        assert!(a.tainted().is_empty());
        assert_eq!(set(dir.path()).members().len(), 1);
        assert!(matches!(
            s.taint("00ff"),
            Err(RotationError::NotFound(id)) if id == "00ff"
        ));
    }

    #[test]
    fn leaves_carry_the_authority_id_as_their_key_identifier() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = set(dir.path());
        s.prepare().unwrap();
        s.activate(None).unwrap();
        let a = s.authority().unwrap();
        let key = KeyType::EcP256.generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let leaf = a
            .sign_svid(
                &spki,
                super::super::csr::CsrKey::EcP256,
                &warden_proto::SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        let (_, parsed) = X509Certificate::from_der(&leaf.der).unwrap();
        let aki = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, a.key_id());
    }

    #[test]
    fn a_damaged_manifest_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = set(dir.path());
        s.prepare().unwrap();
        s.commit().unwrap();
        let path = dir.path().join(MANIFEST);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"prepared\"", "\"active\"")).unwrap();
        let err = AuthoritySet::load(
            dir.path(),
            "cluster.local",
            KeyType::EcP256,
            Duration::from_secs(60),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("authorities.json") && err.contains("2 authorities are active"),
            "{err}"
        );
        std::fs::write(&path, "{").unwrap();
        let err = AuthoritySet::load(
            dir.path(),
            "cluster.local",
            KeyType::EcP256,
            Duration::from_secs(60),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not an authority manifest"), "{err}");
    }

    #[test]
    fn the_schedule_prepares_then_activates() {
        assert_eq!(auto_step(0.2, false, 0.5, 0.833), AutoStep::Wait);
        assert_eq!(auto_step(0.5, false, 0.5, 0.833), AutoStep::Prepare);
        assert_eq!(auto_step(0.7, true, 0.5, 0.833), AutoStep::Wait);
        assert_eq!(auto_step(0.9, true, 0.5, 0.833), AutoStep::Activate);
    }
}
