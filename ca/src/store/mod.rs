//! The CA's durable state in SQLite or PostgreSQL, through one set of queries.
//!
//! Reads go straight to the pool. Every write goes through one writer task that groups
//! whatever is queued into a single transaction (group commit): the certificate record,
//! the registration change or the token use, together with its audit rows, commit
//! before any caller in the batch gets its answer. A failed commit fails every caller
//! in the batch, so no certificate is ever handed out unrecorded.

pub mod audit;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, Row};
use tokio::sync::{mpsc, oneshot};

pub use audit::{AuditEvent, AuditRow, VerifyReport};
pub use warden_common::checkpoint::Checkpoint;

/// Largest number of operations committed in one transaction.
const MAX_BATCH: usize = 512;
/// Queue depth in front of the writer; callers wait when it is full.
const QUEUE_DEPTH: usize = 4096;

/// A storage failure. The caller's request fails; nothing is half-applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("database error: {0}")]
    Db(String),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// The writer task has stopped (the CA is shutting down).
    #[error("the audit writer has stopped")]
    WriterGone,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e.to_string())
    }
}

/// Which database is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A certificate to record.
#[derive(Debug, Clone)]
pub struct CertRecord {
    /// Serial, hex.
    pub serial: String,
    /// SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// Validity start, unix seconds.
    pub not_before: i64,
    /// Validity end, unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Authenticated caller.
    pub requester: String,
    /// Node name, when a node asked.
    pub node: Option<String>,
    /// Caller address.
    pub peer_addr: String,
    /// Key identifier (hex) of the authority that signed it.
    pub authority: String,
}

/// A revoked certificate, as the CRLs list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Serial, hex.
    pub serial: String,
    /// SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// Key identifier (hex) of the authority that signed it.
    pub authority: String,
    /// Its expiry, unix seconds: it leaves the CRLs then.
    pub not_after: i64,
    /// RFC 5280 reason name.
    pub reason: String,
    /// When it was revoked, unix seconds.
    pub revoked_at: i64,
}

/// A registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    /// Entry ID (a UUID).
    pub id: String,
    /// Parent (node) SPIFFE ID.
    pub parent_id: String,
    /// The SPIFFE ID the entry grants.
    pub spiffe_id: String,
    /// `type:value` selectors, sorted.
    pub selectors: Vec<String>,
    /// Creation time, unix seconds.
    pub created_at: i64,
}

/// A join token to store (hash only).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// Node the token attests.
    pub node_name: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

/// One write, applied atomically with its audit rows.
#[derive(Debug)]
pub enum Op {
    /// Record an issued certificate; when `consume_token` is set, also spend that join
    /// token, and record a denial instead if it was spent or expired meanwhile.
    Issue {
        /// The certificate.
        cert: CertRecord,
        /// Its `cert.issued` event.
        event: AuditEvent,
        /// Join token hash to spend in the same transaction.
        consume_token: Option<String>,
    },
    /// Only an audit event (a denial, a failure).
    Event(AuditEvent),
    /// Create a registration entry unless an identical one exists.
    CreateEntry {
        /// The entry.
        entry: EntryRecord,
        /// Its `entry.created` event.
        event: AuditEvent,
    },
    /// Delete a registration entry by ID.
    DeleteEntry {
        /// Entry ID.
        id: String,
        /// Its `entry.deleted` event.
        event: AuditEvent,
    },
    /// Revoke one certificate by serial, or every unexpired certificate of an identity
    /// and the identity itself (no new certificate until unrevoked).
    Revoke {
        /// The serial (hex), or
        serial: Option<String>,
        /// the identity.
        spiffe_id: Option<String>,
        /// RFC 5280 reason name.
        reason: String,
        /// Its `cert.revoked` event (the serials are added to its detail).
        event: AuditEvent,
    },
    /// Lift an identity's revocation (its revoked certificates stay revoked).
    Unrevoke {
        /// The identity.
        spiffe_id: String,
        /// Its `identity.unrevoked` event.
        event: AuditEvent,
    },
    /// Store a new join token.
    CreateToken {
        /// The token's record.
        token: TokenRecord,
        /// Its `token.created` event.
        event: AuditEvent,
    },
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Done,
    /// The join token was already used or has expired; a denial was recorded.
    TokenSpent,
    /// An identical entry exists (its ID); nothing changed.
    EntryExists(String),
    /// No entry has that ID; nothing changed.
    EntryNotFound,
    /// These serials were revoked (some may have been already).
    Revoked(Vec<String>),
    /// No certificate with that serial was issued here; nothing changed.
    CertNotFound,
    /// The identity was not revoked; nothing changed.
    NotRevoked,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Filters for listing the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only rows about this identity.
    pub identity: Option<String>,
    /// Only rows with this outcome.
    pub outcome: Option<String>,
    /// Only rows at or after this time (unix nanoseconds).
    pub since_nanos: Option<i64>,
    /// At most this many rows (the latest ones are dropped, order is by seq).
    pub limit: Option<i64>,
}

/// Counters of the writer's group commits.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Operations committed (the mean batch size is `ops / commits`).
    pub ops: AtomicU64,
    /// Transactions that failed.
    pub failures: AtomicU64,
}

/// Handle to the database and its writer.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    writer: mpsc::Sender<Job>,
    stats: Arc<CommitStats>,
}

fn migrator() -> Migrator {
    Migrator {
        migrations: Cow::Owned(vec![
            Migration::new(
                1,
                Cow::Borrowed("init"),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(include_str!("../../migrations/0001_init.sql")),
                false,
            ),
            Migration::new(
                2,
                Cow::Borrowed("audit checkpoints"),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(include_str!(
                    "../../migrations/0002_audit_checkpoints.sql"
                )),
                false,
            ),
            Migration::new(
                3,
                Cow::Borrowed("cert authority"),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(include_str!(
                    "../../migrations/0003_cert_authority.sql"
                )),
                false,
            ),
            Migration::new(
                4,
                Cow::Borrowed("revocations"),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(include_str!(
                    "../../migrations/0004_revocations.sql"
                )),
                false,
            ),
        ]),
        ..Migrator::DEFAULT
    }
}

impl Store {
    /// Connects, applies migrations and starts the writer task.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            // Create the file on first start.
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let opts: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL for concurrent readers; FULL so a commit is on disk before
                        // the caller is answered.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        // Statement journals in memory, and a 32 MiB page cache.
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                        conn.execute("PRAGMA cache_size = -32768").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(CommitStats::default());
        tokio::spawn(writer_loop(pool.clone(), rx, stats.clone()));
        Ok(Self {
            pool,
            backend,
            writer: tx,
            stats,
        })
    }

    /// Which backend is in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Group-commit counters.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Applies a write with its audit rows; returns once committed.
    pub async fn apply(&self, op: Op) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Records an audit event on its own.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.apply(Op::Event(event)).await.map(|_| ())
    }

    /// Whether an entry grants `spiffe_id` under `parent_id`.
    pub async fn entry_exists(&self, parent_id: &str, spiffe_id: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 FROM entries WHERE parent_id = $1 AND spiffe_id = $2 LIMIT 1")
                .bind(parent_id)
                .bind(spiffe_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    /// One entry by ID.
    pub async fn get_entry(&self, id: &str) -> Result<Option<EntryRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, parent_id, spiffe_id, selectors, created_at FROM entries WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_row).transpose()
    }

    /// Lists entries, optionally filtered by parent and/or SPIFFE ID.
    pub async fn list_entries(
        &self,
        parent_id: Option<&str>,
        spiffe_id: Option<&str>,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, parent_id, spiffe_id, selectors, created_at FROM entries \
             WHERE ($1 = '' OR parent_id = $1) AND ($2 = '' OR spiffe_id = $2) \
             ORDER BY created_at, id",
        )
        .bind(parent_id.unwrap_or(""))
        .bind(spiffe_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_row).collect()
    }

    /// The node a join token attests, if the token exists, is unused and unexpired.
    /// Spending it happens with the issuance, in [`Op::Issue`].
    pub async fn join_token_node(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT node_name FROM join_tokens \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("node_name")?),
            None => None,
        })
    }

    /// Lists audit rows in chain order.
    pub async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, ts_nanos, event, outcome, identity, requester, peer_addr, detail, \
             prev_hash, hash FROM audit_log \
             WHERE ($1 = '' OR identity = $1) AND ($2 = '' OR outcome = $2) AND ts_nanos >= $3 \
             ORDER BY seq LIMIT $4",
        )
        .bind(f.identity.clone().unwrap_or_default())
        .bind(f.outcome.clone().unwrap_or_default())
        .bind(f.since_nanos.unwrap_or(0))
        .bind(f.limit.filter(|l| *l > 0).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_row).collect()
    }

    /// The chain head: the last row's sequence number and hash.
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok((head.try_get("seq")?, head.try_get("hash")?))
    }

    /// Records a checkpoint; one already at that row is kept (and returned).
    pub async fn put_checkpoint(&self, c: &Checkpoint) -> Result<Checkpoint, StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, time_nanos, trust_domain, key_id, \
             public_key, signature) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(c.seq)
        .bind(&c.hash)
        .bind(c.time_nanos)
        .bind(&c.trust_domain)
        .bind(&c.key_id)
        .bind(&c.public_key)
        .bind(&c.signature)
        .execute(&self.pool)
        .await?;
        self.checkpoint_at(c.seq)
            .await?
            .ok_or_else(|| StoreError::Db(format!("checkpoint at row {} vanished", c.seq)))
    }

    /// The checkpoint recorded at row `seq`, if any.
    pub async fn checkpoint_at(&self, seq: i64) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, hash, time_nanos, trust_domain, key_id, public_key, signature \
             FROM audit_checkpoints WHERE seq = $1",
        )
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| -> Result<Checkpoint, StoreError> {
            Ok(Checkpoint {
                version: warden_common::checkpoint::VERSION.to_string(),
                seq: r.try_get("seq")?,
                hash: r.try_get("hash")?,
                time_nanos: r.try_get("time_nanos")?,
                trust_domain: r.try_get("trust_domain")?,
                key_id: r.try_get("key_id")?,
                public_key: r.try_get("public_key")?,
                signature: r.try_get("signature")?,
            })
        })
        .transpose()
    }

    /// Walks the audit chain and checks it against the recorded head. Rows pruned
    /// behind a checkpoint are skipped: the chain then starts from that checkpoint
    /// (its signature checked). With `expect` (a checkpoint's row and hash, e.g. from
    /// a file an auditor kept), the row it names must still have that hash: that is
    /// what catches a database rewritten consistently, head included.
    pub async fn verify_audit(
        &self,
        expect: Option<(i64, &str)>,
    ) -> Result<VerifyReport, StoreError> {
        const PAGE: i64 = 5000;
        // Read the head first: rows appended while we walk are beyond it and ignored.
        let (head_seq, head_hash) = self.audit_head().await?;
        let first: Option<i64> = sqlx::query("SELECT MIN(seq) AS m FROM audit_log")
            .fetch_one(&self.pool)
            .await?
            .try_get("m")?;
        // Where the remaining rows start: genesis, or the checkpoint before them.
        let anchor_seq = first.map_or(head_seq, |f| f - 1);
        let mut verifier = audit::ChainVerifier::default();
        let mut anchor_key_id = String::new();
        if anchor_seq > 0 {
            let anchor = self.checkpoint_at(anchor_seq).await?;
            match anchor {
                Some(c) => match c.verify(None) {
                    Ok(()) => {
                        verifier = audit::ChainVerifier::from_anchor(c.seq, &c.hash);
                        anchor_key_id = c.key_id;
                    }
                    Err(e) => {
                        return Ok(VerifyReport::failed(
                            anchor_seq,
                            format!(
                                "rows up to {anchor_seq} were pruned, but the checkpoint there does not verify: {e}"
                            ),
                        ));
                    }
                },
                None => {
                    return Ok(VerifyReport::failed(
                        1,
                        format!(
                            "rows 1 to {anchor_seq} are missing and no checkpoint covers them (rows were removed)"
                        ),
                    ));
                }
            }
        }
        if let Some((seq, _)) = expect
            && seq < anchor_seq
        {
            return Ok(VerifyReport::failed(
                seq,
                format!(
                    "the checkpoint is for row {seq}, but rows up to {anchor_seq} have been pruned; it can no longer be checked"
                ),
            ));
        }
        if let Some((seq, hash)) = expect {
            if seq == anchor_seq && anchor_seq > 0 && verifier.prev_hash() != hash {
                return Ok(VerifyReport::failed(
                    seq,
                    "the checkpoint's hash differs from the recorded anchor's: the log up to here was rewritten".into(),
                ));
            }
            verifier.expect(seq, hash);
        }
        let mut after = anchor_seq;
        loop {
            let rows = sqlx::query(
                "SELECT seq, ts_nanos, event, outcome, identity, requester, peer_addr, detail, \
                 prev_hash, hash FROM audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
            )
            .bind(after)
            .bind(head_seq)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let row = audit_row(r)?;
                after = row.seq;
                verifier.push(&row);
            }
        }
        let mut report = verifier.finish(head_seq, &head_hash);
        report.anchor_key_id = anchor_key_id;
        Ok(report)
    }

    /// Removes the audit rows up to `seq`, which must have a recorded checkpoint (the
    /// new anchor). The chain up to there is verified against it first; nothing is
    /// removed if it does not verify. Returns the number of rows removed.
    pub async fn prune_audit(&self, seq: i64) -> Result<Result<u64, String>, StoreError> {
        let Some(anchor) = self.checkpoint_at(seq).await? else {
            return Ok(Err(format!(
                "no checkpoint is recorded at row {seq}; make one (warden audit checkpoint) and prune up to it"
            )));
        };
        if let Err(e) = anchor.verify(None) {
            return Ok(Err(format!(
                "the checkpoint recorded at row {seq} does not verify: {e}; nothing was pruned"
            )));
        }
        let report = self.verify_audit(Some((anchor.seq, &anchor.hash))).await?;
        if let Some((bad, why)) = report.first_bad {
            return Ok(Err(format!(
                "the audit chain does not verify (row {bad}: {why}); nothing was pruned"
            )));
        }
        let done = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(Ok(done.rows_affected()))
    }

    /// Number of issued certificates recorded (for tests and the benchmark).
    /// How many identities' current certificate each authority signed: for every
    /// (identity, node) with an unexpired certificate, the latest one's authority
    /// (serials are time-ordered). Scans the unexpired certificates; for the rare admin
    /// command that needs it, not for the request path.
    pub async fn authorities_in_use(
        &self,
        now: i64,
    ) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        let rows = sqlx::query(
            "SELECT spiffe_id, node, serial, authority FROM issued_certs WHERE not_after > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut latest: std::collections::HashMap<(String, String), (String, String)> =
            std::collections::HashMap::new();
        for r in &rows {
            let id: String = r.try_get("spiffe_id")?;
            let node: Option<String> = r.try_get("node")?;
            let serial: String = r.try_get("serial")?;
            let authority: Option<String> = r.try_get("authority")?;
            let entry = latest.entry((id, node.unwrap_or_default())).or_default();
            if serial > entry.0 {
                *entry = (serial, authority.unwrap_or_default());
            }
        }
        let mut counts = std::collections::HashMap::new();
        for (_, authority) in latest.into_values() {
            *counts.entry(authority).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Revocations of certificates that have not expired at `now`.
    pub async fn revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, spiffe_id, authority, not_after, reason, revoked_at \
             FROM revocations WHERE not_after > $1 ORDER BY serial",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Revocation {
                    serial: r.try_get("serial")?,
                    spiffe_id: r.try_get("spiffe_id")?,
                    authority: r.try_get("authority")?,
                    not_after: r.try_get("not_after")?,
                    reason: r.try_get("reason")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// Identities revoked as a whole.
    pub async fn revoked_identities(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT spiffe_id FROM revoked_identities")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("spiffe_id").map_err(StoreError::from))
            .collect()
    }

    pub async fn issued_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM issued_certs")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Closes the pool after the writer has drained.
    pub async fn close(self) {
        drop(self.writer);
        self.pool.close().await;
    }
}

fn entry_row(r: &sqlx::any::AnyRow) -> Result<EntryRecord, StoreError> {
    let selectors: String = r.try_get("selectors")?;
    Ok(EntryRecord {
        id: r.try_get("id")?,
        parent_id: r.try_get("parent_id")?,
        spiffe_id: r.try_get("spiffe_id")?,
        selectors: serde_json::from_str(&selectors)
            .map_err(|e| StoreError::Db(format!("entry selectors: {e}")))?,
        created_at: r.try_get("created_at")?,
    })
}

fn audit_row(r: &sqlx::any::AnyRow) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        ts_nanos: r.try_get("ts_nanos")?,
        event: r.try_get("event")?,
        outcome: r.try_get("outcome")?,
        identity: r.try_get("identity")?,
        requester: r.try_get("requester")?,
        peer_addr: r.try_get("peer_addr")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// Times the writer yields to gather a batch while new writes keep arriving.
const MAX_YIELDS: usize = 8;

/// Moves queued jobs into `batch` (up to [`MAX_BATCH`]); true if any were moved.
fn drain(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) -> bool {
    let before = batch.len();
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    batch.len() > before
}

async fn writer_loop(pool: AnyPool, mut rx: mpsc::Receiver<Job>, stats: Arc<CommitStats>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        drain(&mut rx, &mut batch);
        // Adaptive group commit: let request tasks that are already runnable finish
        // signing and join this batch before paying for a commit. When nothing else is
        // runnable the yield returns at once and the batch commits without delay.
        for _ in 0..MAX_YIELDS {
            if batch.len() >= MAX_BATCH {
                break;
            }
            tokio::task::yield_now().await;
            if !drain(&mut rx, &mut batch) {
                break;
            }
        }
        match write_batch(&pool, &batch).await {
            Ok(outcomes) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, jobs = batch.len(), "audit batch failed; callers get errors");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn now_nanos() -> i64 {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(now).unwrap_or(i64::MAX)
}

/// Rows per multi-row INSERT: 10 columns x 256 rows stays far below SQLite's 32766 and
/// PostgreSQL's 65535 bind parameters.
const ROWS_PER_INSERT: usize = 256;

/// `INSERT INTO <table> (<cols>) VALUES ($1, ..), ($n, ..)` for `rows` rows. Only
/// placeholders are generated; every value is bound.
fn insert_sql(table_and_columns: &str, columns: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(64 + rows * columns * 5);
    sql.push_str("INSERT INTO ");
    sql.push_str(table_and_columns);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * columns + c + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// An audit row ready to insert.
struct PendingAudit {
    seq: i64,
    ts: i64,
    event: AuditEvent,
    detail: String,
    prev_hash: String,
    hash: String,
}

async fn write_batch(pool: &AnyPool, batch: &[Job]) -> Result<Vec<Outcome>, StoreError> {
    let mut conn = pool.acquire().await?;
    let result = write_batch_on(&mut conn, batch).await;
    if result.is_err() {
        // A connection whose batch failed is closed, never reused. After SQLITE_FULL
        // (a full disk) a connection was left inside a transaction that never
        // committed (most likely sqlx's ROLLBACK on drop failed while it still counted
        // the transaction open, so later batches ran as savepoints inside it): they
        // answered "committed" while nothing reached the file, and its write lock kept
        // every other connection out (tests/tests/faults_ca.rs, disk full).
        conn.close_on_drop();
    }
    result
}

async fn write_batch_on(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    batch: &[Job],
) -> Result<Vec<Outcome>, StoreError> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    // Lock the chain head first: PostgreSQL holds the row lock until commit, so replicas
    // sharing a database append one batch at a time; SQLite takes its write lock here.
    let head = sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut *tx)
        .await?;
    let mut seq: i64 = head.try_get("seq")?;
    let mut prev: String = head.try_get("hash")?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut certs: Vec<&CertRecord> = Vec::with_capacity(batch.len());
    let mut audits: Vec<PendingAudit> = Vec::with_capacity(batch.len() + 4);
    // Conditional writes (token spends, entry changes) run in order; certificate and
    // audit rows are collected and written below in a few multi-row statements.
    for job in batch {
        let (outcome, events) = apply_op(&mut tx, &job.op).await?;
        if outcome == Outcome::Done
            && let Op::Issue { cert, .. } = &job.op
        {
            certs.push(cert);
        }
        for event in events {
            seq += 1;
            let ts = now_nanos();
            let detail = event.detail.to_string();
            let hash = audit::chain_hash(
                &prev,
                seq,
                ts,
                event.event,
                event.outcome,
                &event.identity,
                &event.requester,
                &event.peer_addr,
                &detail,
            );
            audits.push(PendingAudit {
                seq,
                ts,
                event,
                detail,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            });
        }
        outcomes.push(outcome);
    }
    let issued_at = now_nanos() / 1_000_000_000;
    for chunk in certs.chunks(ROWS_PER_INSERT) {
        let sql = insert_sql(
            "issued_certs (serial, spiffe_id, not_before, not_after, fingerprint, requester, \
             node, peer_addr, issued_at, authority)",
            10,
            chunk.len(),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for c in chunk {
            q = q
                .bind(c.serial.as_str())
                .bind(c.spiffe_id.as_str())
                .bind(c.not_before)
                .bind(c.not_after)
                .bind(c.fingerprint.as_str())
                .bind(c.requester.as_str())
                .bind(c.node.as_deref())
                .bind(c.peer_addr.as_str())
                .bind(issued_at)
                .bind(c.authority.as_str());
        }
        q.execute(&mut *tx).await?;
    }
    for chunk in audits.chunks(ROWS_PER_INSERT) {
        let sql = insert_sql(
            "audit_log (seq, ts_nanos, event, outcome, identity, requester, peer_addr, detail, \
             prev_hash, hash)",
            10,
            chunk.len(),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            q = q
                .bind(a.seq)
                .bind(a.ts)
                .bind(a.event.event)
                .bind(a.event.outcome)
                .bind(a.event.identity.as_str())
                .bind(a.event.requester.as_str())
                .bind(a.event.peer_addr.as_str())
                .bind(a.detail.as_str())
                .bind(a.prev_hash.as_str())
                .bind(a.hash.as_str());
        }
        q.execute(&mut *tx).await?;
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(prev)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Applies one op's conditional writes inside the batch transaction; returns its outcome
/// and the audit events to append (an op that changes nothing may still be audited, e.g.
/// a spent token). Certificate rows are inserted by the caller, for the whole batch.
/// Records `rows` (issued_certs: serial, spiffe_id, authority, not_after) as revoked
/// for `reason`; returns their serials. Already revoked ones keep their first record.
async fn insert_revocations(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[sqlx::any::AnyRow],
    reason: &str,
) -> Result<Vec<String>, StoreError> {
    let now = now_nanos() / 1_000_000_000;
    let mut serials = Vec::with_capacity(rows.len());
    for r in rows {
        let serial: String = r.try_get("serial")?;
        let spiffe_id: String = r.try_get("spiffe_id")?;
        let authority: Option<String> = r.try_get("authority")?;
        let not_after: i64 = r.try_get("not_after")?;
        sqlx::query(
            "INSERT INTO revocations (serial, spiffe_id, authority, not_after, reason, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (serial) DO NOTHING",
        )
        .bind(serial.as_str())
        .bind(spiffe_id.as_str())
        .bind(authority.unwrap_or_default())
        .bind(not_after)
        .bind(reason)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        serials.push(serial);
    }
    Ok(serials)
}

async fn apply_op(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    op: &Op,
) -> Result<(Outcome, Vec<AuditEvent>), StoreError> {
    match op {
        Op::Issue {
            cert,
            event,
            consume_token,
        } => {
            if let Some(hash) = consume_token {
                let now = now_nanos() / 1_000_000_000;
                let spent = sqlx::query(
                    "UPDATE join_tokens SET used_at = $1 \
                     WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
                )
                .bind(now)
                .bind(hash.as_str())
                .execute(&mut **tx)
                .await?;
                if spent.rows_affected() != 1 {
                    let mut denied = event.clone();
                    denied.event = "cert.denied";
                    denied.outcome = "denied";
                    denied.detail = serde_json::json!({
                        "reason": "join token already used or expired",
                    });
                    return Ok((Outcome::TokenSpent, vec![denied]));
                }
            }
            let mut events = Vec::with_capacity(2);
            if let Some(hash) = consume_token {
                events.push(AuditEvent {
                    event: "token.used",
                    outcome: "used",
                    identity: event.identity.clone(),
                    requester: event.requester.clone(),
                    peer_addr: event.peer_addr.clone(),
                    detail: serde_json::json!({
                        "token_sha256_prefix": hash.get(..12).unwrap_or_default(),
                        "serial": cert.serial,
                    }),
                });
            }
            events.push(event.clone());
            Ok((Outcome::Done, events))
        }
        Op::Event(event) => Ok((Outcome::Done, vec![event.clone()])),
        Op::CreateEntry { entry, event } => {
            let selectors = serde_json::to_string(&entry.selectors)
                .map_err(|e| StoreError::Db(e.to_string()))?;
            let existing = sqlx::query(
                "SELECT id FROM entries WHERE parent_id = $1 AND spiffe_id = $2 AND selectors = $3",
            )
            .bind(entry.parent_id.as_str())
            .bind(entry.spiffe_id.as_str())
            .bind(selectors.as_str())
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(row) = existing {
                return Ok((Outcome::EntryExists(row.try_get("id")?), Vec::new()));
            }
            sqlx::query(
                "INSERT INTO entries (id, parent_id, spiffe_id, selectors, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(entry.id.as_str())
            .bind(entry.parent_id.as_str())
            .bind(entry.spiffe_id.as_str())
            .bind(selectors)
            .bind(entry.created_at)
            .execute(&mut **tx)
            .await?;
            Ok((Outcome::Done, vec![event.clone()]))
        }
        Op::DeleteEntry { id, event } => {
            let entry = sqlx::query("SELECT parent_id, spiffe_id FROM entries WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
            let Some(entry) = entry else {
                return Ok((Outcome::EntryNotFound, Vec::new()));
            };
            let parent: String = entry.try_get("parent_id")?;
            let spiffe_id: String = entry.try_get("spiffe_id")?;
            sqlx::query("DELETE FROM entries WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
            // The node may no longer hold the identity: what it was issued under this
            // entry is revoked, unless another entry still grants it the same identity.
            let still = sqlx::query(
                "SELECT 1 FROM entries WHERE parent_id = $1 AND spiffe_id = $2 LIMIT 1",
            )
            .bind(parent.as_str())
            .bind(spiffe_id.as_str())
            .fetch_optional(&mut **tx)
            .await?;
            let mut event = event.clone();
            if still.is_none()
                && let Some((_, node)) = parent.split_once("/warden/node/")
            {
                let rows = sqlx::query(
                    "SELECT serial, spiffe_id, authority, not_after FROM issued_certs \
                     WHERE spiffe_id = $1 AND node = $2 AND not_after > $3",
                )
                .bind(spiffe_id.as_str())
                .bind(node)
                .bind(now_nanos() / 1_000_000_000)
                .fetch_all(&mut **tx)
                .await?;
                let serials = insert_revocations(tx, &rows, "cessationOfOperation").await?;
                if let Some(d) = event.detail.as_object_mut() {
                    d.insert("revoked_serials".into(), serials.into());
                }
            }
            Ok((Outcome::Done, vec![event]))
        }
        Op::Revoke {
            serial,
            spiffe_id,
            reason,
            event,
        } => {
            let now = now_nanos() / 1_000_000_000;
            let rows = match (serial, spiffe_id) {
                (Some(serial), _) => {
                    sqlx::query(
                        "SELECT serial, spiffe_id, authority, not_after FROM issued_certs \
                         WHERE serial = $1",
                    )
                    .bind(serial.as_str())
                    .fetch_all(&mut **tx)
                    .await?
                }
                (None, Some(id)) => {
                    sqlx::query(
                        "SELECT serial, spiffe_id, authority, not_after FROM issued_certs \
                         WHERE spiffe_id = $1 AND not_after > $2",
                    )
                    .bind(id.as_str())
                    .bind(now)
                    .fetch_all(&mut **tx)
                    .await?
                }
                (None, None) => Vec::new(),
            };
            if serial.is_some() && rows.is_empty() {
                return Ok((Outcome::CertNotFound, Vec::new()));
            }
            let serials = insert_revocations(tx, &rows, reason).await?;
            if let (None, Some(id)) = (serial, spiffe_id) {
                sqlx::query(
                    "INSERT INTO revoked_identities (spiffe_id, reason, revoked_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (spiffe_id) DO UPDATE \
                     SET reason = excluded.reason, revoked_at = excluded.revoked_at",
                )
                .bind(id.as_str())
                .bind(reason.as_str())
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            let mut event = event.clone();
            if event.identity.is_empty()
                && let Some(r) = rows.first()
            {
                event.identity = r.try_get("spiffe_id")?;
            }
            if let Some(d) = event.detail.as_object_mut() {
                d.insert("serials".into(), serials.clone().into());
            }
            Ok((Outcome::Revoked(serials), vec![event]))
        }
        Op::Unrevoke { spiffe_id, event } => {
            let res = sqlx::query("DELETE FROM revoked_identities WHERE spiffe_id = $1")
                .bind(spiffe_id.as_str())
                .execute(&mut **tx)
                .await?;
            if res.rows_affected() == 0 {
                return Ok((Outcome::NotRevoked, Vec::new()));
            }
            Ok((Outcome::Done, vec![event.clone()]))
        }
        Op::CreateToken { token, event } => {
            sqlx::query(
                "INSERT INTO join_tokens (token_hash, node_name, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(token.hash.as_str())
            .bind(token.node_name.as_str())
            .bind(token.created_at)
            .bind(token.expires_at)
            .execute(&mut **tx)
            .await?;
            Ok((Outcome::Done, vec![event.clone()]))
        }
    }
}
