//! The audit log's hash chain: how a row's hash is computed and how a chain is verified.
//!
//! `hash = SHA-256(prev_hash ‖ seq ‖ ts ‖ event ‖ outcome ‖ identity ‖ requester ‖ peer ‖
//! detail)`, each field length-prefixed so no two rows serialise alike. The first row's
//! `prev_hash` is 64 zeros. Editing, inserting or removing any row breaks the chain at
//! that row; removing rows at the end is caught against the head the CA keeps.

use serde::Serialize;

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An identity event to append.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// e.g. `cert.issued`, `cert.denied`, `entry.created`, `token.used`.
    pub event: &'static str,
    /// `issued`, `denied`, `created`, `deleted`, `used`.
    pub outcome: &'static str,
    /// The identity the event concerns.
    pub identity: String,
    /// Who asked.
    pub requester: String,
    /// The caller's address, or `admin.sock`.
    pub peer_addr: String,
    /// Details (serial, reason, ...), a JSON object.
    pub detail: serde_json::Value,
}

/// A stored audit row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Time of the event, nanoseconds since the Unix epoch.
    pub ts_nanos: i64,
    /// Event name.
    pub event: String,
    /// Outcome.
    pub outcome: String,
    /// Identity concerned.
    pub identity: String,
    /// Caller.
    pub requester: String,
    /// Caller address.
    pub peer_addr: String,
    /// JSON details.
    pub detail: String,
    /// Hash of the row before.
    pub prev_hash: String,
    /// This row's hash.
    pub hash: String,
}

/// Computes a row's hash from its fields and the previous row's hash.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    prev_hash: &str,
    seq: i64,
    ts_nanos: i64,
    event: &str,
    outcome: &str,
    identity: &str,
    requester: &str,
    peer_addr: &str,
    detail: &str,
) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    };
    field(prev_hash.as_bytes());
    field(&seq.to_be_bytes());
    field(&ts_nanos.to_be_bytes());
    for s in [event, outcome, identity, requester, peer_addr, detail] {
        field(s.as_bytes());
    }
    hex::encode(ctx.finish())
}

impl AuditRow {
    /// The hash this row should have.
    pub fn expected_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            self.seq,
            self.ts_nanos,
            &self.event,
            &self.outcome,
            &self.identity,
            &self.requester,
            &self.peer_addr,
            &self.detail,
        )
    }
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows checked.
    pub rows: i64,
    /// The first row that fails, and why; `None` when the chain is intact.
    pub first_bad: Option<(i64, String)>,
    /// Hash of the last good row.
    pub head_hash: String,
    /// The row the walk started after: 0 (genesis), or the checkpoint that anchors the
    /// rows left after pruning.
    pub anchor_seq: i64,
    /// The key that signed the anchoring checkpoint (empty without one).
    pub anchor_key_id: String,
}

impl VerifyReport {
    /// A report of a failure found before any row was read.
    pub fn failed(seq: i64, why: String) -> Self {
        Self {
            rows: 0,
            first_bad: Some((seq, why)),
            head_hash: String::new(),
            anchor_seq: 0,
            anchor_key_id: String::new(),
        }
    }
}

/// Incremental chain verifier: feed rows in `seq` order, then [`ChainVerifier::finish`].
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    rows: i64,
    first_bad: Option<(i64, String)>,
    anchor_seq: i64,
    /// A row whose hash must be this (from a checkpoint).
    expect: Option<(i64, String)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
            rows: 0,
            first_bad: None,
            anchor_seq: 0,
            expect: None,
        }
    }
}

impl ChainVerifier {
    /// A verifier whose first row is `seq + 1`, chained to `hash` (a checkpoint's).
    pub fn from_anchor(seq: i64, hash: &str) -> Self {
        Self {
            expected_seq: seq + 1,
            prev_hash: hash.to_string(),
            anchor_seq: seq,
            ..Self::default()
        }
    }

    /// The hash the next row must chain to.
    pub fn prev_hash(&self) -> &str {
        &self.prev_hash
    }

    /// Requires row `seq` to have hash `hash` (a checkpoint); checked as rows pass.
    pub fn expect(&mut self, seq: i64, hash: &str) {
        self.expect = Some((seq, hash.to_string()));
    }

    /// Checks the next row; after the first failure, later rows are only counted.
    pub fn push(&mut self, row: &AuditRow) {
        self.rows += 1;
        if self.first_bad.is_some() {
            return;
        }
        let problem = if row.seq != self.expected_seq {
            Some(format!(
                "sequence gap: expected row {}, found row {}",
                self.expected_seq, row.seq
            ))
        } else if row.prev_hash != self.prev_hash {
            Some("prev_hash does not match the hash of the row before".to_string())
        } else if row.hash != row.expected_hash() {
            Some("contents do not match the row's hash (the row was edited)".to_string())
        } else if self
            .expect
            .as_ref()
            .is_some_and(|(seq, hash)| *seq == row.seq && *hash != row.hash)
        {
            Some(
                "the row's hash differs from the checkpoint's: the log up to here was rewritten"
                    .to_string(),
            )
        } else {
            None
        };
        match problem {
            Some(p) => self.first_bad = Some((row.seq.min(self.expected_seq), p)),
            None => {
                self.expected_seq += 1;
                self.prev_hash = row.hash.clone();
            }
        }
    }

    /// Finishes against the recorded head (`seq`, `hash`).
    pub fn finish(mut self, head_seq: i64, head_hash: &str) -> VerifyReport {
        if self.first_bad.is_none()
            && let Some((seq, _)) = &self.expect
        {
            let last = self.expected_seq - 1;
            if *seq > last {
                self.first_bad = Some((
                    *seq,
                    format!(
                        "the checkpoint is for row {seq}, but the log ends at row {last} (rows were removed)"
                    ),
                ));
            }
        }
        if self.first_bad.is_none() {
            let last = self.expected_seq - 1;
            if head_seq != last {
                self.first_bad = Some((
                    last + 1,
                    format!(
                        "the chain head records {head_seq} rows but {last} are present (rows were removed)"
                    ),
                ));
            } else if head_hash != self.prev_hash {
                self.first_bad = Some((
                    last,
                    "the last row's hash does not match the recorded chain head".to_string(),
                ));
            }
        }
        VerifyReport {
            rows: self.rows,
            first_bad: self.first_bad,
            head_hash: self.prev_hash,
            anchor_seq: self.anchor_seq,
            anchor_key_id: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let mut row = AuditRow {
                    seq,
                    ts_nanos: seq * 1000,
                    event: "cert.issued".into(),
                    outcome: "issued".into(),
                    identity: format!("spiffe://td/ns/a/sa/{seq}"),
                    requester: "r".into(),
                    peer_addr: "p".into(),
                    detail: "{}".into(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                row.hash = row.expected_hash();
                prev = row.hash.clone();
                row
            })
            .collect()
    }

    fn verify(rows: &[AuditRow], head_seq: i64, head_hash: &str) -> VerifyReport {
        let mut v = ChainVerifier::default();
        rows.iter().for_each(|r| v.push(r));
        v.finish(head_seq, head_hash)
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(5);
        let r = verify(&rows, 5, &rows[4].hash);
        assert_eq!(r.first_bad, None);
        assert_eq!(r.rows, 5);
        assert_eq!(verify(&[], 0, GENESIS_HASH).first_bad, None);
    }

    #[test]
    fn edits_gaps_and_truncation_are_found() {
        let rows = chain(5);
        let head = rows[4].hash.clone();

        let mut edited = rows.clone();
        edited[2].identity = "spiffe://td/ns/a/sa/evil".into();
        assert_eq!(verify(&edited, 5, &head).first_bad.unwrap().0, 3);

        let mut rehashed = edited.clone();
        rehashed[2].hash = rehashed[2].expected_hash();
        assert_eq!(verify(&rehashed, 5, &head).first_bad.unwrap().0, 4);

        let mut gap = rows.clone();
        gap.remove(1);
        assert_eq!(verify(&gap, 5, &head).first_bad.unwrap().0, 2);

        let truncated = &rows[..4];
        let bad = verify(truncated, 5, &head).first_bad.unwrap();
        assert_eq!(bad.0, 5);
        assert!(bad.1.contains("removed"));
    }

    #[test]
    fn fields_are_unambiguous() {
        let a = chain_hash(GENESIS_HASH, 1, 1, "ab", "c", "", "", "", "");
        let b = chain_hash(GENESIS_HASH, 1, 1, "a", "bc", "", "", "", "");
        assert_ne!(a, b);
    }
}
