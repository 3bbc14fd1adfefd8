//! Durations as Istio writes them in networking resources (`7s`, `0.5s`, `100ms`,
//! `1m`, `1h30m`: Go's `time.ParseDuration` units from `ns` to `h`), and printed as
//! protobuf JSON writes a `Duration` (seconds, the fraction only as long as needed).

use std::time::Duration;

/// Parses `text`; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (expected e.g. 7s, 0.5s, 100ms, 1m, 1h30m)");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 315_576_000_000.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// `d` as protobuf JSON prints it: `7s`, `0.5s`, `0.001s`.
pub fn format(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return format!("{}s", d.as_secs());
    }
    let frac = format!("{nanos:09}");
    format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn istio_durations() {
        for (text, want) in [
            ("7s", "7s"),
            ("0.5s", "0.5s"),
            ("100ms", "0.1s"),
            ("1m", "60s"),
            ("1h30m", "5400s"),
            ("1.5s", "1.5s"),
            ("0s", "0s"),
        ] {
            assert_eq!(format(parse(text).unwrap()), want, "{text}");
        }
        for bad in ["", "7", "s", "7x", "-1s", "1..s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
