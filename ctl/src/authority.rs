//! `warden ca authority list|prepare|activate|taint|revoke`: root rotation of a CA that
//! keeps its own root, one audited step each, over the admin socket.
//!
//! A rotation with no failed request: `prepare` (the new root joins every trust
//! bundle), wait until agents and proxies have it (one agent sync interval; `list`
//! shows the set), `activate` (the new root signs; the old one stays trusted), `taint`
//! the old one (agents re-issue what it signed at once), then `revoke` it once `list`
//! shows nothing in use.

use std::path::Path;
use std::process::ExitCode;

use warden_proto::admin::{
    ActivateAuthorityRequest, AuthorityInfo, AuthorityStepResponse, ListAuthoritiesRequest,
    PrepareAuthorityRequest, RevokeAuthorityRequest, TaintAuthorityRequest,
};

/// `warden ca authority ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuthorityCmd {
    /// List the authorities: ID (the root's key identifier, which leaves carry as their
    /// authority key identifier), state, taint, validity, identities in use.
    List {
        /// One JSON object per authority.
        #[arg(long)]
        json: bool,
    },
    /// Make a new root and add it to every trust bundle; it signs nothing yet.
    Prepare {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the prepared root sign from now on; the active one becomes old (still
    /// trusted).
    Activate {
        /// The prepared authority [default: the one that is prepared].
        id: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark an old authority tainted: agents re-issue every SVID it signed at once.
    Taint {
        /// The old authority.
        id: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an old (or prepared) authority from every trust bundle and delete its
    /// key; refused while it signed an identity's current certificate.
    Revoke {
        /// The authority.
        id: String,
        /// Revoke even while certificates it signed are in use: peers then refuse them.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn time(secs: i64) -> String {
    if secs == 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn json(a: &AuthorityInfo) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "state": a.state,
        "tainted": a.tainted,
        "not_before": a.not_before,
        "not_after": a.not_after,
        "created_at": a.created_at,
        "activated_at": (a.activated_at != 0).then_some(a.activated_at),
        "in_use": a.in_use,
    })
}

fn print_table(list: &[AuthorityInfo]) {
    println!(
        "{:<40}  {:<8}  {:<7}  {:<20}  {:>6}",
        "ID", "STATE", "TAINTED", "NOT AFTER", "IN USE"
    );
    for a in list {
        println!(
            "{:<40}  {:<8}  {:<7}  {:<20}  {:>6}",
            a.id,
            a.state,
            if a.tainted { "yes" } else { "no" },
            time(a.not_after),
            a.in_use
        );
    }
}

fn print_step(verb: &str, resp: &AuthorityStepResponse, as_json: bool) {
    let Some(a) = &resp.authority else { return };
    if as_json {
        let mut v = json(a);
        v["authorities"] = resp.authorities.iter().map(json).collect();
        println!("{v}");
        return;
    }
    println!("authority {} {verb}", a.id);
    print_table(&resp.authorities);
}

fn refused(s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("the CA refused: {}", s.message())
}

/// Runs `warden ca authority ...`.
pub async fn run(socket: &Path, cmd: AuthorityCmd) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect(socket).await?;
    match cmd {
        AuthorityCmd::List { json: as_json } => {
            let list = client
                .list_authorities(ListAuthoritiesRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner()
                .authorities;
            if as_json {
                for a in &list {
                    println!("{}", json(a));
                }
            } else {
                print_table(&list);
            }
        }
        AuthorityCmd::Prepare { json } => {
            let r = client
                .prepare_authority(PrepareAuthorityRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_step("prepared: its root is now in every trust bundle", &r, json);
        }
        AuthorityCmd::Activate { id, json } => {
            let r = client
                .activate_authority(ActivateAuthorityRequest {
                    id: id.unwrap_or_default(),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_step("activated: it signs every new certificate", &r, json);
        }
        AuthorityCmd::Taint { id, json } => {
            let r = client
                .taint_authority(TaintAuthorityRequest { id })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_step("tainted: agents re-issue what it signed now", &r, json);
        }
        AuthorityCmd::Revoke { id, force, json } => {
            let r = client
                .revoke_authority(RevokeAuthorityRequest { id, force })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_step(
                "revoked: removed from every trust bundle, its key deleted",
                &r,
                json,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
