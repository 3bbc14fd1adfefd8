//! `warden status`: what a running `warden up` started (its `up.json`), each process's
//! state, identity and certificate expiry (from its metrics), and when the CA last
//! issued that identity a certificate (its audit log: the last rotation).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;

use warden_proto::admin::ListAuditRequest;

use crate::up::probe;
use crate::up::state::{self, UpState};

/// `warden status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The state directory `warden up` was started with.
    #[arg(long, default_value = "./.warden-up")]
    state_dir: PathBuf,
}

/// The last issuance of one identity: when, its serial, how many so far.
#[derive(Debug)]
struct Issued {
    time: String,
    serial: String,
    count: usize,
}

/// Runs `warden status`; exit 1 when `warden up` is not running there.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let st = UpState::read(&args.state_dir)?;
    if !up_running(&st) {
        eprintln!(
            "warden: warden up is not running with --state-dir {} (it last started at {} as pid {})",
            args.state_dir.display(),
            st.started_at,
            st.pid
        );
        return Ok(ExitCode::FAILURE);
    }
    let issued = last_issued(&st.admin_socket, &st).await;
    let now = time::OffsetDateTime::now_utc();
    let mut out = String::new();
    writeln!(
        out,
        "warden up: pid {}, started {}, root sha256 {}",
        st.pid, st.started_at, st.root_fingerprint
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<30} {:>7}  {:<11} {:<62} {:<40} LAST ROTATION",
        "COMPONENT", "PID", "STATE", "IDENTITY", "CERTIFICATE EXPIRES"
    )?;
    for c in &st.components {
        let running = state::alive(c.pid) && state::runs(c.pid, &c.exe);
        let expiry = if running {
            crate::up::expiry_of(c).await
        } else {
            None
        };
        let rotation = c
            .spiffe_id
            .as_ref()
            .and_then(|id| issued.as_ref().ok()?.get(id))
            .map_or_else(
                || "-".to_string(),
                |i| format!("{} (serial {}, {} issued)", i.time, i.serial, i.count),
            );
        writeln!(
            out,
            "{:<30} {:>7}  {:<11} {:<62} {:<40} {rotation}",
            c.name,
            c.pid,
            if running { "running" } else { "not running" },
            c.spiffe_id.as_deref().unwrap_or("-"),
            expiry.map_or_else(|| "-".to_string(), |e| probe::expiry(e, now)),
        )?;
    }
    if let Err(e) = &issued {
        writeln!(out, "\n(last rotations unknown: {e:#})")?;
    }
    writeln!(out)?;
    if let Some(url) = &st.gateway_url {
        writeln!(out, "Gateway     {url}")?;
    }
    if let Some(url) = &st.console_url {
        writeln!(out, "Console     {url}")?;
    }
    if let Some(url) = &st.prometheus_url {
        writeln!(out, "Prometheus  {url}")?;
    }
    writeln!(
        out,
        "Audit log   warden --admin-socket {} audit list",
        st.admin_socket.display()
    )?;
    // A closed pipe (`warden status | head`) is not an error.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// Whether the `warden up` that wrote `st` still runs.
fn up_running(st: &UpState) -> bool {
    state::alive(st.pid)
        && std::fs::read_link(format!("/proc/{}/exe", st.pid)).is_ok_and(|e| {
            e.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("warden"))
        })
}

/// The CA's last `cert.issued` audit row for each SPIFFE ID of `st`'s components.
async fn last_issued(socket: &Path, st: &UpState) -> anyhow::Result<BTreeMap<String, Issued>> {
    let mut client = crate::admin::connect(socket).await?;
    let mut out = BTreeMap::new();
    for id in st.components.iter().filter_map(|c| c.spiffe_id.as_ref()) {
        if !id.starts_with("spiffe://") || out.contains_key(id) {
            continue;
        }
        let mut stream = client
            .list_audit(ListAuditRequest {
                identity: id.clone(),
                outcome: "issued".into(),
                since: String::new(),
                limit: 0,
            })
            .await
            .map_err(|s| anyhow!("audit list: {}", s.message()))?
            .into_inner();
        let mut last = None;
        let mut count = 0;
        while let Some(row) = stream
            .message()
            .await
            .map_err(|s| anyhow!("audit list: {}", s.message()))?
        {
            if row.event != "cert.issued" {
                continue;
            }
            count += 1;
            let detail: serde_json::Value =
                serde_json::from_str(&row.detail_json).unwrap_or_default();
            last = Some((
                whole_seconds(&row.time),
                detail["serial"].as_str().unwrap_or("-").to_string(),
            ));
        }
        if let Some((time, serial)) = last {
            out.insert(
                id.clone(),
                Issued {
                    time,
                    serial,
                    count,
                },
            );
        }
    }
    Ok(out)
}

/// An RFC 3339 time without its fraction of a second.
fn whole_seconds(t: &str) -> String {
    match t.split_once('.') {
        Some((head, rest)) => {
            let zone = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}{zone}")
        }
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_lose_their_fraction() {
        assert_eq!(
            whole_seconds("2026-12-07T01:21:10.104757641Z"),
            "2026-12-07T01:21:10Z"
        );
        assert_eq!(
            whole_seconds("2026-12-07T01:21:10+01:00"),
            "2026-12-07T01:21:10+01:00"
        );
    }
}
