//! Plain HTTP GETs of the components' monitoring endpoints (`/ready`, metrics), and
//! reading one value out of the Prometheus text format.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read (a proxy's metrics are tens of KiB).
const MAX_BODY: usize = 8 << 20;

/// GETs `url` (`http://host:port/path`) over HTTP/1.1 within `timeout`; the status and
/// body.
pub async fn get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(timeout, get_inner(url))
        .await
        .map_err(|_| anyhow!("GET {url}: no answer within {timeout:?}"))?
}

async fn get_inner(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = TcpStream::connect(authority)
        .await
        .with_context(|| format!("GET {url}"))?;
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut resp = Vec::new();
    (&mut s)
        .take(MAX_BODY as u64)
        .read_to_end(&mut resp)
        .await?;
    parse_response(&resp).with_context(|| format!("GET {url}"))
}

/// The status and body of a whole HTTP/1.1 response (plain or chunked).
pub fn parse_response(resp: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("not an HTTP response");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status line"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    Ok((status, out))
}

/// The value of the first sample of `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A Unix time as `2026-11-21T14:02:42Z (in 23h59m)`.
pub fn expiry(unix: f64, now: time::OffsetDateTime) -> String {
    #[allow(clippy::cast_possible_truncation)] // whole seconds of a timestamp
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(unix as i64) else {
        return "-".to_string();
    };
    let at = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| unix.to_string());
    let left = t - now;
    let secs = left.whole_seconds();
    let rel = if secs < 0 {
        "expired".to_string()
    } else if secs >= 2 * 86_400 {
        format!("in {}d", secs / 86_400)
    } else if secs >= 3600 {
        format!("in {}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else {
        format!("in {}m{:02}s", secs / 60, secs % 60)
    };
    format!("{at} ({rel})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain).unwrap(), (200, "ok".to_string()));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (503, "not ready".to_string())
        );
    }

    #[test]
    fn finds_a_metric_not_its_prefix() {
        let text = "# HELP x\nwarden_svid_expiry_timestamp_seconds_total 1\nwarden_svid_expiry_timestamp_seconds 1790000000\n";
        assert_eq!(
            metric(text, "warden_svid_expiry_timestamp_seconds"),
            Some(1_790_000_000.0)
        );
        assert_eq!(metric("a{b=\"c\"} 2.5\n", "a"), Some(2.5));
        assert_eq!(metric("ab 1\n", "a"), None);
    }

    #[test]
    fn expiry_reads_in_hours_or_minutes() {
        let now = time::macros::datetime!(2026-11-21 14:00:00 UTC);
        let t = |s: i64| (now.unix_timestamp() + s) as f64;
        assert_eq!(
            expiry(t(3600 + 120), now),
            "2026-11-21T15:02:00Z (in 1h02m)"
        );
        assert_eq!(expiry(t(90), now), "2026-11-21T14:01:30Z (in 1m30s)");
        assert!(expiry(t(-5), now).ends_with("(expired)"));
    }
}
