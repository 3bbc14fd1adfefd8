//! The clients the mesh tests drive it with: [`http`] (hyper over HTTP/1.1 and h2c,
//! and a raw client that may break every rule), [`grpc`] (tonic), [`ws`] (WebSocket),
//! and small readers shared by them (Prometheus text, TCP echo).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

pub mod grpc;
pub mod http;
pub mod ws;

/// The sum of `metric`'s samples in Prometheus text `text` whose labels include all of
/// `labels` (0 if none).
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(metric)?;
            let (have, value) = if let Some(r) = rest.strip_prefix('{') {
                let (inner, value) = r.rsplit_once('}')?;
                (parse_labels(inner), value)
            } else if rest.starts_with(' ') {
                (BTreeMap::new(), rest)
            } else {
                return None;
            };
            let ok = labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v));
            if !ok {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `a="x",b="y\"z"` → map.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

/// Writes `msg` on `s` and reads back as many bytes; `Err` (or fewer bytes) when the
/// peer closes instead of echoing.
pub fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut back = Vec::new();
    let mut chunk = [0u8; 4096];
    while back.len() < msg.len() {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        back.extend_from_slice(&chunk[..n]);
    }
    Ok(back)
}
