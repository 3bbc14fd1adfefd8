//! Commands that talk to the CA's admin API over its unix socket.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use tonic::transport::Channel;

use warden_proto::admin::admin_client::AdminClient;
use warden_proto::admin::{
    AuditRecord, CreateEntryRequest, CreateJoinTokenRequest, DeleteEntryRequest, Entry,
    ListAuditRequest, ListEntriesRequest, Selector, VerifyAuditRequest,
};

/// `warden audit ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// List audit rows, oldest first.
    List {
        /// Only rows about this SPIFFE ID.
        #[arg(long)]
        identity: Option<String>,
        /// Only rows with this outcome.
        #[arg(long, value_parser = ["issued", "denied", "created", "deleted", "used", "loaded", "refused", "prepared", "activated", "tainted", "revoked", "unrevoked"])]
        outcome: Option<String>,
        /// Only rows at or after this RFC 3339 time, e.g. 2026-11-21T10:00:00Z.
        #[arg(long)]
        since: Option<String>,
        /// At most this many rows.
        #[arg(long)]
        limit: Option<i64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Walk the hash chain; exit non-zero naming the first bad row.
    Verify {
        /// A checkpoint file (from `warden audit checkpoint`): its signature is checked
        /// here, and the CA's log must still hash to it at its row.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The key the checkpoint must be signed with (its key_id).
        #[arg(long, requires = "checkpoint")]
        key_id: Option<String>,
    },
    /// Sign the chain head with the CA's audit key; print (or write) the checkpoint.
    /// Keep it somewhere the CA's database is not: it proves the log up to its row.
    Checkpoint {
        /// Write the checkpoint JSON here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove the rows up to a checkpoint recorded by the CA; the rest still verifies
    /// from it. The chain is verified first; the pruning is audited.
    Prune {
        /// The checkpoint to prune up to (JSON from `warden audit checkpoint`).
        #[arg(long)]
        checkpoint: PathBuf,
    },
}

/// Reads and checks a checkpoint file: its signature, and its key if pinned.
fn read_checkpoint(
    path: &Path,
    key_id: Option<&str>,
) -> anyhow::Result<warden_common::checkpoint::Checkpoint> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--checkpoint {}", path.display()))?;
    let c: warden_common::checkpoint::Checkpoint = serde_json::from_str(&text)
        .with_context(|| format!("--checkpoint {}: not a checkpoint", path.display()))?;
    c.verify(key_id)
        .map_err(|e| anyhow!("--checkpoint {}: {e}", path.display()))?;
    Ok(c)
}

/// `warden entry ...`
#[derive(Debug, clap::Subcommand)]
pub enum EntryCmd {
    /// Create a registration entry.
    Create {
        /// SPIFFE ID of the node (or trusted node account) that may obtain the identity.
        #[arg(long)]
        parent_id: String,
        /// SPIFFE ID the entry grants.
        #[arg(long)]
        spiffe_id: String,
        /// TYPE:VALUE, e.g. unix:uid:1000, unix:path:/usr/bin/app, socket:web. Repeatable.
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
        /// Print the entry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List registration entries.
    List {
        /// Only entries under this parent.
        #[arg(long)]
        parent_id: Option<String>,
        /// Only entries granting this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Delete a registration entry by ID.
    Delete {
        /// The entry's ID.
        id: String,
    },
}

/// `warden token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create a one-time join token for a node; the token is the last line printed.
    Create {
        /// The node's name; it becomes spiffe://<td>/warden/node/<name>.
        #[arg(long)]
        node: String,
        /// Lifetime, e.g. 10m, 1h [default: the CA's --join-token-ttl].
        #[arg(long, value_parser = warden_proto::duration::parse_flag)]
        ttl: Option<std::time::Duration>,
    },
}

pub(crate) async fn connect(socket: &Path) -> anyhow::Result<AdminClient<Channel>> {
    if !socket.exists() {
        bail!(
            "admin socket {} does not exist: is warden-ca running with that --data-dir? (set --admin-socket)",
            socket.display()
        );
    }
    let channel = warden_common::uds::channel(socket)
        .await
        .with_context(|| format!("cannot connect to admin socket {}", socket.display()))?;
    Ok(AdminClient::new(channel))
}

fn status_err(what: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow!("{what}: {}", s.message())
}

/// Streams the audit rows `request` selects, oldest first, to `each`; the first error
/// (the CA's or `each`'s) ends the listing. `warden audit list` and the console's audit
/// panel both read the log through this.
pub(crate) async fn list_audit(
    client: &mut AdminClient<Channel>,
    request: ListAuditRequest,
    mut each: impl FnMut(AuditRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stream = client
        .list_audit(request)
        .await
        .map_err(status_err("audit list"))?
        .into_inner();
    while let Some(row) = stream.message().await.map_err(status_err("audit list"))? {
        each(row)?;
    }
    Ok(())
}

/// An audit row as `warden audit list --json` prints it (`detail` parsed).
pub(crate) fn audit_json(row: &AuditRecord) -> serde_json::Value {
    let detail: serde_json::Value =
        serde_json::from_str(&row.detail_json).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "seq": row.seq,
        "time": row.time,
        "event": row.event,
        "outcome": row.outcome,
        "identity": row.identity,
        "requester": row.requester,
        "peer_addr": row.peer_addr,
        "detail": detail,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    })
}

/// Runs `warden audit ...`.
pub async fn audit(socket: &Path, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    let mut client = connect(socket).await?;
    match cmd {
        AuditCmd::List {
            identity,
            outcome,
            since,
            limit,
            json,
        } => {
            let request = ListAuditRequest {
                identity: identity.unwrap_or_default(),
                outcome: outcome.unwrap_or_default(),
                since: since.unwrap_or_default(),
                limit: limit.unwrap_or(0),
            };
            let mut out = std::io::stdout().lock();
            if !json {
                writeln!(
                    out,
                    "{:>6}  {:<30}  {:<14}  {:<8}  {:<48}  REQUESTER / DETAIL",
                    "SEQ", "TIME", "EVENT", "OUTCOME", "IDENTITY"
                )?;
            }
            list_audit(&mut client, request, |row| {
                if json {
                    writeln!(out, "{}", audit_json(&row))?;
                } else {
                    writeln!(
                        out,
                        "{:>6}  {:<30}  {:<14}  {:<8}  {:<48}  {} {}",
                        row.seq,
                        row.time,
                        row.event,
                        row.outcome,
                        if row.identity.is_empty() {
                            "-"
                        } else {
                            &row.identity
                        },
                        row.requester,
                        row.detail_json
                    )?;
                }
                Ok(())
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify { checkpoint, key_id } => {
            let c = match &checkpoint {
                Some(path) => Some(read_checkpoint(path, key_id.as_deref())?),
                None => None,
            };
            let r = client
                .verify_audit(VerifyAuditRequest {
                    checkpoint_seq: c.as_ref().map_or(0, |c| c.seq),
                    checkpoint_hash: c.as_ref().map(|c| c.hash.clone()).unwrap_or_default(),
                })
                .await
                .map_err(status_err("audit verify"))?
                .into_inner();
            // The checkpoint the remaining rows start from must be signed by the pinned
            // key too: a database writer could plant one signed by a key of their own.
            if let Some(pinned) = &key_id
                && r.anchor_seq > 0
                && !r.anchor_key_id.eq_ignore_ascii_case(pinned)
            {
                eprintln!(
                    "warden: the log starts after a checkpoint at row {} signed by key {}, not the expected key {pinned}",
                    r.anchor_seq, r.anchor_key_id
                );
                return Ok(ExitCode::FAILURE);
            }
            if r.ok {
                let from = if r.anchor_seq > 0 {
                    format!(
                        " after the checkpoint at row {} (older rows pruned; signed by key {})",
                        r.anchor_seq, r.anchor_key_id
                    )
                } else {
                    String::new()
                };
                println!(
                    "audit log intact: {} rows{from}, head {}",
                    r.rows_checked, r.head_hash
                );
                if let Some(c) = &c {
                    println!(
                        "matches the checkpoint at row {} signed by key {}",
                        c.seq, c.key_id
                    );
                }
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "warden: audit log broken at row {}: {} ({} rows read)",
                    r.first_bad_seq, r.reason, r.rows_checked
                );
                Ok(ExitCode::FAILURE)
            }
        }
        AuditCmd::Checkpoint { out } => {
            let c = client
                .create_checkpoint(warden_proto::admin::CreateCheckpointRequest {})
                .await
                .map_err(status_err("audit checkpoint"))?
                .into_inner();
            let c = warden_common::checkpoint::Checkpoint::from(c);
            // Checked here too: what is written is what verifies.
            c.verify(None)
                .map_err(|e| anyhow!("the CA's checkpoint does not verify: {e}"))?;
            let json = serde_json::to_string_pretty(&c)? + "\n";
            match out {
                Some(path) => {
                    crate::cert::write_file(&path, json.as_bytes(), 0o644)?;
                    eprintln!(
                        "checkpoint at row {} (key {}) written to {}",
                        c.seq,
                        c.key_id,
                        path.display()
                    );
                }
                None => print!("{json}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Prune { checkpoint } => {
            let c = read_checkpoint(&checkpoint, None)?;
            let r = client
                .prune_audit(warden_proto::admin::PruneAuditRequest {
                    through_seq: c.seq,
                    hash: c.hash,
                })
                .await
                .map_err(status_err("audit prune"))?
                .into_inner();
            println!(
                "removed {} audit rows up to row {}; the log verifies from that checkpoint",
                r.rows_removed, c.seq
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_selector(s: &str) -> anyhow::Result<Selector> {
    let (t, v) = s
        .split_once(':')
        .filter(|(t, v)| !t.is_empty() && !v.is_empty())
        .ok_or_else(|| {
            anyhow!("--selector {s:?}: expected TYPE:VALUE, e.g. unix:uid:1000 or socket:web")
        })?;
    Ok(Selector {
        r#type: t.to_string(),
        value: v.to_string(),
    })
}

fn entry_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "parent_id": e.parent_id,
        "spiffe_id": e.spiffe_id,
        "selectors": e.selectors.iter().map(|s| format!("{}:{}", s.r#type, s.value)).collect::<Vec<_>>(),
        "created_at": e.created_at,
    })
}

fn print_entry(e: &Entry) {
    println!("Entry ID   : {}", e.id);
    println!("SPIFFE ID  : {}", e.spiffe_id);
    println!("Parent ID  : {}", e.parent_id);
    for s in &e.selectors {
        println!("Selector   : {}:{}", s.r#type, s.value);
    }
}

/// Runs `warden entry ...`.
pub async fn entry(socket: &Path, cmd: EntryCmd) -> anyhow::Result<ExitCode> {
    // Parse everything before connecting, so bad input fails the same way with or
    // without a running CA.
    match cmd {
        EntryCmd::Create {
            parent_id,
            spiffe_id,
            selectors,
            json,
        } => {
            let selectors = selectors
                .iter()
                .map(|s| parse_selector(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let e = connect(socket)
                .await?
                .create_entry(CreateEntryRequest {
                    parent_id,
                    spiffe_id,
                    selectors,
                })
                .await
                .map_err(status_err("entry create"))?
                .into_inner();
            if json {
                println!("{}", entry_json(&e));
            } else {
                print_entry(&e);
            }
        }
        EntryCmd::List {
            parent_id,
            spiffe_id,
            json,
        } => {
            let list = connect(socket)
                .await?
                .list_entries(ListEntriesRequest {
                    parent_id: parent_id.unwrap_or_default(),
                    spiffe_id: spiffe_id.unwrap_or_default(),
                })
                .await
                .map_err(status_err("entry list"))?
                .into_inner();
            if json {
                for e in &list.entries {
                    println!("{}", entry_json(e));
                }
            } else {
                println!(
                    "Found {} entr{}",
                    list.entries.len(),
                    if list.entries.len() == 1 { "y" } else { "ies" }
                );
                for e in &list.entries {
                    println!();
                    print_entry(e);
                }
            }
        }
        EntryCmd::Delete { id } => {
            connect(socket)
                .await?
                .delete_entry(DeleteEntryRequest { id: id.clone() })
                .await
                .map_err(status_err("entry delete"))?;
            println!("Deleted entry {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `warden token ...`.
pub async fn token(socket: &Path, cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    let TokenCmd::Create { node, ttl } = cmd;
    let r = connect(socket)
        .await?
        .create_join_token(CreateJoinTokenRequest {
            node_name: node,
            ttl_seconds: ttl
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        })
        .await
        .map_err(status_err("token create"))?
        .into_inner();
    let expires = time::OffsetDateTime::from_unix_timestamp(r.expires_at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| r.expires_at.to_string());
    println!("SPIFFE ID : {}", r.spiffe_id);
    println!("Expires   : {expires}");
    println!("{}", r.token);
    Ok(ExitCode::SUCCESS)
}
