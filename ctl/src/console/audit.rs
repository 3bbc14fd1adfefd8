//! The CA's audit log as the console follows it: the last rows for the audit panel,
//! and, per SPIFFE ID, the latest `cert.issued` row, which says when the certificate a
//! proxy holds was issued (so its rotation is known, not guessed).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use tonic::transport::Channel;
use warden_proto::admin::admin_client::AdminClient;
use warden_proto::admin::{AuditRecord, ListAuditRequest};

/// Rows the audit panel shows.
pub const KEEP: usize = 20;

/// How far back the first read goes: a long-lived CA's whole log is not read.
const FIRST_READ_SECONDS: i64 = 24 * 3600;

/// A certificate the CA issued, from its `cert.issued` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    /// Seconds since the epoch (the row's time).
    pub issued_at: f64,
    /// `not_after`, seconds since the epoch.
    pub not_after: f64,
    /// Serial, hex.
    pub serial: String,
}

/// What the console knows of the audit log.
#[derive(Debug, Default)]
pub struct AuditTail {
    /// The last rows, oldest first.
    rows: VecDeque<AuditRecord>,
    /// The newest row read.
    last_seq: i64,
    /// Its time, where the next read starts (inclusive; rows already seen are skipped).
    last_time: String,
    /// The latest certificate issued per SPIFFE ID.
    issued: BTreeMap<String, Issued>,
    /// Why the last read failed, if it did.
    error: Option<String>,
    /// Whether a read has succeeded.
    read_once: bool,
}

impl AuditTail {
    /// The request for the rows after those already read.
    pub fn next_request(&self) -> ListAuditRequest {
        let since = if self.read_once {
            self.last_time.clone()
        } else {
            let from =
                time::OffsetDateTime::now_utc() - time::Duration::seconds(FIRST_READ_SECONDS);
            from.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        ListAuditRequest {
            since,
            ..ListAuditRequest::default()
        }
    }

    /// Takes in one row (rows already seen are skipped).
    pub fn add(&mut self, row: AuditRecord) {
        if row.seq <= self.last_seq {
            return;
        }
        self.last_seq = row.seq;
        self.last_time.clone_from(&row.time);
        if row.event == "cert.issued"
            && let Some(issued) = issued(&row)
        {
            self.issued.insert(row.identity.clone(), issued);
        }
        self.rows.push_back(row);
        while self.rows.len() > KEEP {
            self.rows.pop_front();
        }
    }

    /// Records the outcome of a read.
    pub fn finish(&mut self, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                self.read_once = true;
                self.error = None;
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    /// When the certificate of `spiffe_id` expiring at `not_after` was issued, if the
    /// log says.
    pub fn issued_at(&self, spiffe_id: &str, not_after: f64) -> Option<&Issued> {
        self.issued
            .get(spiffe_id)
            .filter(|i| (i.not_after - not_after).abs() < 1.0)
    }

    /// `/api/audit`: the last rows, newest first, and the last error.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.rows.iter().rev().map(crate::admin::audit_json).collect::<Vec<_>>(),
            "error": self.error,
            "read": self.read_once,
        })
    }
}

fn issued(row: &AuditRecord) -> Option<Issued> {
    let detail: serde_json::Value = serde_json::from_str(&row.detail_json).ok()?;
    let at = time::OffsetDateTime::parse(&row.time, &time::format_description::well_known::Rfc3339)
        .ok()?;
    #[allow(clippy::cast_precision_loss)] // seconds since the epoch fit an f64 exactly
    Some(Issued {
        issued_at: at.unix_timestamp() as f64,
        not_after: detail["not_after"].as_i64()? as f64,
        serial: detail["serial"].as_str().unwrap_or_default().to_string(),
    })
}

/// Reads the rows after those `tail` has, through `client` (connected on first use,
/// dropped after a failure so the next read reconnects).
pub async fn read(
    socket: &Path,
    client: &mut Option<AdminClient<Channel>>,
    tail: &std::sync::Mutex<AuditTail>,
) {
    let request = lock(tail).next_request();
    let result = async {
        let c = match client {
            Some(c) => c,
            None => client.insert(crate::admin::connect(socket).await?),
        };
        let mut rows = Vec::new();
        crate::admin::list_audit(c, request, |row| {
            rows.push(row);
            Ok(())
        })
        .await?;
        let mut t = lock(tail);
        for row in rows {
            t.add(row);
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        *client = None;
    }
    lock(tail).finish(result);
}

/// Locks a mutex, recovering the data of a holder that panicked: the console shows what
/// it has rather than failing every later request.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(seq: i64, event: &str, identity: &str, detail: &str) -> AuditRecord {
        AuditRecord {
            seq,
            time: format!("2026-01-01T00:00:{:02}Z", seq % 60),
            event: event.into(),
            outcome: "issued".into(),
            identity: identity.into(),
            detail_json: detail.into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn keeps_the_last_rows_and_the_latest_issuance() {
        let mut t = AuditTail::default();
        assert!(
            !t.next_request().since.is_empty(),
            "the first read is bounded"
        );
        for seq in 1..=30 {
            t.add(row(seq, "entry.created", "spiffe://td/a", "{}"));
        }
        let id = "spiffe://cluster.local/ns/bookinfo/sa/ratings";
        t.add(row(
            31,
            "cert.issued",
            id,
            r#"{"serial":"0a","not_before":1767225480,"not_after":1767229231}"#,
        ));
        t.add(row(31, "cert.issued", id, "{}")); // seen already: skipped
        t.finish(Ok(()));
        assert_eq!(t.next_request().since, "2026-01-01T00:00:31Z");
        let json = t.to_json();
        let events = json["events"].as_array().unwrap();
        assert_eq!(events.len(), KEEP);
        assert_eq!(events[0]["seq"], 31, "newest first");
        assert_eq!(events[0]["detail"]["serial"], "0a");
        let i = t.issued_at(id, 1_767_229_231.0).unwrap();
        assert_eq!(i.issued_at, 1_767_225_631.0);
        assert!(
            t.issued_at(id, 1_767_299_999.0).is_none(),
            "another certificate"
        );
        t.finish(Err(anyhow::anyhow!("admin socket gone")));
        assert_eq!(t.to_json()["error"], "admin socket gone");
    }
}
