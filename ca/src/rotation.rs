//! `warden ca authority list|prepare|activate|taint|revoke` and automatic rotation: the
//! [`AuthoritySet`] of an own-root CA changed one audited step at a time, each step
//! published to the running CA through its [`AuthorityHandle`].
//!
//! A step is applied in an order that leaves nothing half-done: the new set is built
//! and checked in memory (new key files written but not yet referenced), the audit row
//! is written, the manifest is committed, then the authority is swapped in (which
//! writes `root-cert.pem`). A failure before the commit removes the new files; a
//! failure to swap restores the previous manifest. Steps are serialized.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};

use crate::pki::AuthorityHandle;
use crate::pki::rotation::{AuthoritySet, AutoStep, Member, MemberInfo, RotationError, auto_step};
use crate::store::{AuditEvent, Store, StoreError};

/// Automatic rotation settings (`--authority-prepare-at`, `--authority-activate-at`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoRotation {
    /// Fraction of the active root's life at which a successor is prepared.
    pub prepare_at: f64,
    /// Fraction at which the prepared successor is activated.
    pub activate_at: f64,
}

impl Default for AutoRotation {
    /// SPIRE's schedule: prepare at 1/2, activate at 5/6 of the active root's life.
    fn default() -> Self {
        Self {
            prepare_at: 0.5,
            activate_at: 5.0 / 6.0,
        }
    }
}

/// A step that failed: refused, or failed to be stored.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The set refused or could not apply the step.
    #[error(transparent)]
    Rotation(#[from] RotationError),
    /// The audit log or the certificate records could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One authority, as listed.
#[derive(Debug, Clone)]
pub struct Status {
    /// The member and its root.
    pub info: MemberInfo,
    /// Identities whose current certificate it signed.
    pub in_use: usize,
}

/// The rotation service of an own-root CA.
#[derive(Debug)]
pub struct Rotation {
    set: Mutex<AuthoritySet>,
    handle: AuthorityHandle,
    store: Store,
    trust_domain: String,
}

impl Rotation {
    /// A service over `set`, whose authority `handle` already holds.
    pub fn new(
        set: AuthoritySet,
        handle: AuthorityHandle,
        store: Store,
        trust_domain: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            set: Mutex::new(set),
            handle,
            store,
            trust_domain,
        })
    }

    /// Every authority of the set with its own key, for signing CRLs.
    pub async fn signers(&self) -> Result<Vec<crate::pki::Authority>, crate::pki::PkiError> {
        self.set.lock().await.member_authorities()
    }

    async fn in_use(&self) -> Result<HashMap<String, usize>, StoreError> {
        self.store
            .authorities_in_use(OffsetDateTime::now_utc().unix_timestamp())
            .await
    }

    /// Every authority with how many identities' current certificates it signed.
    pub async fn list(&self) -> Result<Vec<Status>, StepError> {
        let in_use = self.in_use().await?;
        let set = self.set.lock().await;
        Ok(set
            .describe()
            .map_err(RotationError::from)?
            .into_iter()
            .map(|info| Status {
                in_use: in_use.get(&info.member.id).copied().unwrap_or(0),
                info,
            })
            .collect())
    }

    /// Prepares a successor.
    pub async fn prepare(&self, who: &str, peer: &str) -> Result<Member, StepError> {
        self.apply(who, peer, "prepared", |set| {
            let m = set.prepare()?;
            Ok((m, serde_json::json!({})))
        })
        .await
    }

    /// Activates the prepared successor (or `id`).
    pub async fn activate(
        &self,
        id: Option<&str>,
        who: &str,
        peer: &str,
    ) -> Result<Member, StepError> {
        self.apply(who, peer, "activated", |set| {
            let (active, old) = set.activate(id)?;
            Ok((active, serde_json::json!({ "previous": old.id })))
        })
        .await
    }

    /// Taints an old authority.
    pub async fn taint(&self, id: &str, who: &str, peer: &str) -> Result<Member, StepError> {
        self.apply(who, peer, "tainted", |set| {
            Ok((set.taint(id)?, serde_json::json!({})))
        })
        .await
    }

    /// Revokes an old or prepared authority; refused while it signed an identity's
    /// current certificate unless `force`.
    pub async fn revoke(
        &self,
        id: &str,
        force: bool,
        who: &str,
        peer: &str,
    ) -> Result<Member, StepError> {
        let in_use = self.in_use().await?;
        let count = in_use.get(&id.to_ascii_lowercase()).copied().unwrap_or(0);
        self.apply(who, peer, "revoked", |set| {
            let m = set.revoke(id, count, force)?;
            Ok((
                m,
                serde_json::json!({ "in_use": count, "forced": force && count > 0 }),
            ))
        })
        .await
    }

    async fn apply(
        &self,
        who: &str,
        peer: &str,
        outcome: &'static str,
        step: impl FnOnce(&mut AuthoritySet) -> Result<(Member, serde_json::Value), RotationError>,
    ) -> Result<Member, StepError> {
        let mut set = self.set.lock().await;
        let mut next = set.clone();
        let result = step(&mut next);
        // Files the step wrote that the current set does not reference.
        let added: Vec<Member> = next
            .members()
            .iter()
            .filter(|m| !set.members().iter().any(|o| o.id == m.id))
            .cloned()
            .collect();
        let discard = |next: &AuthoritySet| {
            for m in &added {
                next.delete_files(m);
            }
        };
        let (member, mut detail) = match result {
            Ok(r) => r,
            Err(e) => {
                discard(&next);
                return Err(e.into());
            }
        };
        let authority = match next.authority() {
            Ok(a) => a,
            Err(e) => {
                discard(&next);
                return Err(RotationError::from(e).into());
            }
        };
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("id".into(), member.id.clone().into());
            obj.insert("state".into(), member.state.as_str().into());
            obj.insert("tainted".into(), member.tainted.into());
            obj.insert("active".into(), authority.key_id().into());
            obj.insert("roots".into(), authority.roots_der().len().into());
        }
        let event = AuditEvent {
            event: "ca.authority",
            outcome,
            identity: format!("spiffe://{}", self.trust_domain),
            requester: who.to_string(),
            peer_addr: peer.to_string(),
            detail,
        };
        if let Err(e) = self.store.audit(event).await {
            discard(&next);
            return Err(e.into());
        }
        if let Err(e) = next.commit() {
            discard(&next);
            return Err(RotationError::from(e).into());
        }
        if let Err(e) = self.handle.replace(authority) {
            // Put the previous manifest back: the running CA and the files agree.
            if let Err(e2) = set.commit() {
                tracing::error!(error = %e2, "cannot restore the previous authority manifest");
            }
            discard(&next);
            return Err(RotationError::from(e).into());
        }
        for m in set.members() {
            if !next.members().iter().any(|n| n.id == m.id) {
                next.delete_files(m);
            }
        }
        tracing::info!(
            id = %member.id,
            step = outcome,
            state = member.state.as_str(),
            tainted = member.tainted,
            active = %next.active().id,
            by = who,
            "authority {outcome}"
        );
        *set = next;
        Ok(member)
    }

    /// Prepares and activates successors on SPIRE's schedule (see [`AutoRotation`]) and
    /// removes old authorities whose root has expired, checking every `every` until
    /// `shutdown` flips. A failed step is logged and
    /// tried again at the next check.
    pub async fn run_auto(
        self: Arc<Self>,
        auto: AutoRotation,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (due, expired) = {
                let set = self.set.lock().await;
                let now = OffsetDateTime::now_utc();
                let due = set.active_life_fraction(now).map(|f| {
                    auto_step(
                        f,
                        set.prepared().is_some(),
                        auto.prepare_at,
                        auto.activate_at,
                    )
                });
                (due, set.expired_old(now))
            };
            for id in expired {
                if let Err(e) = self.revoke(&id, false, "auto", "warden-ca").await {
                    tracing::error!(id = %id, error = %e, "cannot remove an expired authority");
                }
            }
            let result = match due {
                Ok(AutoStep::Wait) => Ok(()),
                Ok(AutoStep::Prepare) => self.prepare("auto", "warden-ca").await.map(drop),
                Ok(AutoStep::Activate) => self.activate(None, "auto", "warden-ca").await.map(drop),
                Err(e) => Err(RotationError::from(e).into()),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "automatic authority rotation failed; retrying at the next check");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
