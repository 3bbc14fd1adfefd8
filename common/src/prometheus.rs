//! The Prometheus text exposition format (version 0.0.4), written by hand: `# HELP` and
//! `# TYPE` lines, samples with escaped labels, and fixed-bucket [`Histogram`]s with
//! cumulative `_bucket{le=".."}` lines, `+Inf`, `_sum` and `_count`.
//!
//! The CA and the node agent render their metrics with [`Text`] over plain atomics.
//! `prometheus-client` is not used for them because it writes OpenMetrics, which appends
//! `_total` to every counter: the CA's counters must keep istiod's names exactly
//! (`citadel_server_csr_count`), and dashboards scrape the agent's as they are. The
//! proxy keeps `prometheus-client` for Istio's standard metrics, whose label families
//! (a dozen labels per series, created on first use) are what that crate is for and
//! whose names already end in `_total`.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A metric's type, as `# TYPE` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// An exposition being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// An empty exposition.
    pub fn new() -> Self {
        Self {
            out: String::with_capacity(4096),
        }
    }

    /// The `# HELP` and `# TYPE` lines of a metric; its samples follow with
    /// [`Text::sample`].
    pub fn header(&mut self, name: &str, help: &str, kind: Kind) {
        let help = escape(help, false);
        // Writing to a String cannot fail.
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
    }

    /// One sample line: `name{label="value",...} value`, label values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape(v, true));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, Kind::Counter);
        self.sample(name, &[], value);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.header(name, help, Kind::Gauge);
        self.sample(name, &[], value);
    }

    /// A histogram: cumulative buckets, `+Inf`, sum (seconds) and count.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, Kind::Histogram);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(h.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            self.sample(&bucket, &[("le", &bound.to_string())], cumulative);
        }
        let count = h.count.load(Ordering::Relaxed);
        self.sample(&bucket, &[("le", "+Inf")], count);
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes a HELP text (`\` and newline) or a label value (also `"`).
fn escape(s: &str, label: bool) -> std::borrow::Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (label && c == '"');
    if !s.contains(special) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

/// A latency histogram with fixed bucket bounds in seconds; lock-free to observe.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Empty, with `bounds` (ascending upper bounds in seconds; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_labelled_samples() {
        let mut t = Text::new();
        t.counter("csr_count", "CSRs received.", 3);
        t.gauge("expiry", "When.", -1);
        t.header("errors", "Errors by kind.", Kind::Counter);
        t.sample("errors", &[("error", "ttl"), ("kind", "a\"b\\c\nd")], 2);
        assert_eq!(
            t.finish(),
            "# HELP csr_count CSRs received.\n# TYPE csr_count counter\ncsr_count 3\n\
             # HELP expiry When.\n# TYPE expiry gauge\nexpiry -1\n\
             # HELP errors Errors by kind.\n# TYPE errors counter\n\
             errors{error=\"ttl\",kind=\"a\\\"b\\\\c\\nd\"} 2\n"
        );
    }

    #[test]
    fn help_escapes_backslash_and_newline_only() {
        let mut t = Text::new();
        t.header("m", "a \"quoted\" \\ and\nmore", Kind::Gauge);
        assert_eq!(
            t.finish(),
            "# HELP m a \"quoted\" \\\\ and\\nmore\n# TYPE m gauge\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        static BOUNDS: [f64; 3] = [0.001, 0.5, 1.0];
        let h = Histogram::new(&BOUNDS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_millis(700));
        h.observe(Duration::from_secs(3));
        let mut t = Text::new();
        t.histogram("d_seconds", "Durations.", &h);
        assert_eq!(
            t.finish(),
            "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.001\"} 1\n\
             d_seconds_bucket{le=\"0.5\"} 2\n\
             d_seconds_bucket{le=\"1\"} 3\n\
             d_seconds_bucket{le=\"+Inf\"} 4\n\
             d_seconds_sum 4.2005\n\
             d_seconds_count 4\n"
        );
    }
}
