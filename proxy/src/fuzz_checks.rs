//! The bodies of the fuzz targets in `fuzz/` that exercise this crate, shared with the
//! replay test below so a crash the fuzzer finds (kept in `fuzz/regressions/<target>/`)
//! is replayed by a plain `cargo test`. Each function takes the fuzzer's bytes, calls
//! the public entry point that meets untrusted input and panics if an invariant the
//! code documents does not hold.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Version};

use crate::metrics::{ConnLabels, Peer, Reporter, ServiceLabels};
use crate::telemetry::Direction;
use crate::telemetry::Record;
use crate::telemetry::access_log::{Encoding, Entry, Format};
use crate::trace::{extract, hex};

/// `trace_context`: the input is header lines (`name: value`, one a line), as a
/// request brings them; [`extract`] reads them.
pub fn check_trace_context(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let Some(ctx) = extract(&headers) else {
        return;
    };
    if let Some(ids) = ctx.parent {
        assert!(ids.trace_id != [0; 16], "all-zero trace id accepted");
        assert!(ids.span_id != [0; 8], "all-zero span id accepted");
        assert_eq!(hex(&ids.trace_id).len(), 32);
    }
    if let Some(ts) = &ctx.tracestate {
        assert!(ctx.parent.is_some(), "tracestate without a traceparent");
        assert!(ts.len() <= 512, "tracestate longer than 512: {}", ts.len());
    }
}

/// `access_log_format`: the first byte picks the encoding (even TEXT, odd JSON), the
/// rest is `accessLogFormat`. A format that compiles renders an entry; under JSON every
/// line is one JSON object.
pub fn check_access_log_format(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(custom) = std::str::from_utf8(rest) else {
        return;
    };
    let encoding = if first % 2 == 0 {
        Encoding::Text
    } else {
        Encoding::Json
    };
    let Ok(format) = Format::new(encoding, Some(custom)) else {
        return;
    };
    let mut record = Record::new(Direction::Inbound, true);
    record.start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_605_323_456);
    if let Some(d) = record.detail() {
        d.method = Some("GET".into());
        d.path = Some("/ratings/0?q=\"x\"\n".into());
        d.protocol = Some(Version::HTTP_11);
        d.authority = Some("ratings:9080".into());
        d.user_agent = Some("curl/8 \"quoted\" \u{7f}\u{e9}".into());
        d.downstream_remote = "127.0.0.2:4000".parse().ok();
        d.destination_port = Some(9080);
        d.request_headers = format
            .headers(false)
            .into_iter()
            .map(|h| (h, "v\"\\\u{1}".to_string()))
            .collect();
        d.response_headers = format
            .headers(true)
            .into_iter()
            .map(|h| (h, "r\t\u{2028}".to_string()))
            .collect();
    }
    let labels = ConnLabels::new(
        Reporter::Destination,
        Peer::principal_only(Some("spiffe://cluster.local/ns/bookinfo/sa/reviews")),
        Peer::unknown(),
        ServiceLabels::new("ratings.bookinfo.svc.cluster.local", "bookinfo"),
        "mutual_tls",
    );
    let entry = Entry {
        record: &record,
        labels: &labels,
        code: 403,
        flags: "-",
        received: 0,
        sent: 19,
        duration: Duration::from_millis(3),
    };
    let line = entry.render(&format);
    if format.is_json() {
        let v: Result<serde_json::Value, _> = serde_json::from_str(&line);
        assert!(
            v.as_ref().is_ok_and(serde_json::Value::is_object),
            "JSON access log line is not a JSON object: {line:?}: {v:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Feeds every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
    fn replay(target: &str, check: fn(&[u8])) {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                eprintln!("replaying {}", path.display());
                check(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no corpus for {target}");
    }

    #[test]
    fn trace_context_corpus() {
        replay("trace_context", super::check_trace_context);
    }

    #[test]
    fn access_log_format_corpus() {
        replay("access_log_format", super::check_access_log_format);
    }
}
