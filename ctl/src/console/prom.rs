//! The part of the Prometheus text format the console reads: samples (`name{labels}
//! value`), comments skipped. Label values are unescaped (`\\`, `\"`, `\n`), so a
//! SPIFFE ID or a workload name with a quote in it comes out as written.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (`istio_requests_total`).
    pub name: String,
    /// Labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// A label's value, `""` when absent.
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// A line that is not a sample: its number (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was expected.
    pub problem: String,
}

/// Parses an exposition; comment, `# EOF` and blank lines are skipped. The first bad
/// line is an error: a scrape that half-parses would show wrong counts.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|problem| ParseError {
            line: i + 1,
            problem,
        })?;
        out.push(sample);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or_else(|| "a metric name without a value".to_string())?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("{name:?} is not a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let value = rest
        .split_ascii_whitespace()
        .next()
        .ok_or_else(|| format!("{name}: no value"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value).ok_or_else(|| format!("{name}: {value:?} is not a number"))?,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `k="v",...}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s
            .find('=')
            .ok_or_else(|| "a label without `=`".to_string())?;
        let key = s[..eq].trim();
        if !valid_name(key) || key.contains(':') {
            return Err(format!("{key:?} is not a label name"));
        }
        let after_eq = s[eq + 1..].trim_start();
        let quoted = after_eq
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: the value is not quoted"))?;
        let (value, after) =
            unescape(quoted).ok_or_else(|| format!("label {key}: unterminated value"))?;
        labels.insert(key.to_string(), value);
        s = after.trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("label {key}: expected `,` or `}}` after the value"));
        }
    }
}

/// Reads a quoted value up to its closing quote; the value and what follows it.
fn unescape(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                // `\\`, `\"`; anything else is kept as written, as Prometheus does.
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            },
            c => out.push(c),
        }
    }
    None
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_and_skips_comments() {
        let text = "# HELP istio_requests Requests.\n# TYPE istio_requests counter\n\
            istio_requests_total{reporter=\"destination\",response_code=\"200\"} 17\n\
            warden_svid_expiry_timestamp_seconds 1900000000\n\
            up 1 1700000000000\n\
            h_bucket{le=\"+Inf\"} 3\n# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "istio_requests_total");
        assert_eq!(s[0].label("reporter"), "destination");
        assert_eq!(s[0].label("absent"), "");
        assert_eq!(s[0].value, 17.0);
        assert_eq!(s[1].value, 1_900_000_000.0);
        assert!(s[1].labels.is_empty());
        assert_eq!(s[2].value, 1.0, "a timestamp is not the value");
        assert_eq!(s[3].label("le"), "+Inf");
    }

    #[test]
    fn label_values_are_unescaped() {
        let text = r#"m{a="x\"y",b="back\\slash",c="line\nbreak",d="a}b,c=\"d\"",e=""} 2.5e1"#;
        let s = &parse(text).unwrap()[0];
        assert_eq!(s.label("a"), "x\"y");
        assert_eq!(s.label("b"), "back\\slash");
        assert_eq!(s.label("c"), "line\nbreak");
        assert_eq!(s.label("d"), "a}b,c=\"d\"");
        assert_eq!(s.label("e"), "");
        assert_eq!(s.value, 25.0);
    }

    #[test]
    fn special_values_and_trailing_comma() {
        let s = parse("a{x=\"1\",} +Inf\nb -Inf\nc NaN\n").unwrap();
        assert_eq!(s[0].label("x"), "1");
        assert_eq!(s[0].value, f64::INFINITY);
        assert_eq!(s[1].value, f64::NEG_INFINITY);
        assert!(s[2].value.is_nan());
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, want) in [
            ("ok 1\nbad{a=\"1\" 2", "line 2"),
            ("m{a=1} 2", "not quoted"),
            ("m{a=\"1} 2", "unterminated"),
            ("m 12x", "not a number"),
            ("m", "without a value"),
            ("9m 1", "not a metric name"),
            ("m{a=\"1\" b=\"2\"} 1", "expected `,`"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn reads_what_the_proxy_emits() {
        // A fixture made by warden-proxy's own encoder (tests/tests/warden_console.rs
        // regenerates and checks it).
        let text = include_str!("../../../tests/fixtures/console/denied/ratings-v1.prom");
        let s = parse(text).unwrap();
        let denied: f64 = s
            .iter()
            .filter(|s| {
                s.name == "istio_requests_total"
                    && s.label("reporter") == "destination"
                    && s.label("response_code") == "403"
            })
            .map(|s| s.value)
            .sum();
        assert!(denied > 0.0);
        assert!(
            s.iter()
                .any(|s| s.name == "warden_svid_expiry_timestamp_seconds" && s.value > 0.0)
        );
    }
}
