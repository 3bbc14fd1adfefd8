//! From scrapes to the service graph: each proxy's destination-reporter
//! `istio_requests_total` series summed per edge (source workload → destination
//! workload), kept for a short window, and turned into totals, a request rate and a
//! state from the increases inside the window, as Prometheus's `increase()` computes
//! them (a counter that went down was reset, and counts from zero).

use std::collections::{BTreeMap, VecDeque};

use super::prom::Sample;

/// How long samples are kept: rates and "recent" denials and errors are over this.
pub const WINDOW_SECONDS: f64 = 20.0;

/// A workload as the graph names it: `namespace/name`.
pub fn node_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// One edge of the graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeKey {
    /// `namespace/workload` of the caller.
    pub source: String,
    /// `namespace/workload` of the called workload.
    pub destination: String,
}

/// Request counters of one edge.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Every request.
    pub total: f64,
    /// 5xx responses.
    pub server_errors: f64,
    /// 403 responses: refused by authorization (or by the app).
    pub denied: f64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.total += other.total;
        self.server_errors += other.server_errors;
        self.denied += other.denied;
    }

    /// What `self` (later) grew by since `before`, per counter; a counter that went
    /// down was reset and counts from zero.
    fn increase_since(&self, before: &Counts) -> Counts {
        let inc = |now: f64, then: f64| if now >= then { now - then } else { now };
        Counts {
            total: inc(self.total, before.total),
            server_errors: inc(self.server_errors, before.server_errors),
            denied: inc(self.denied, before.denied),
        }
    }
}

/// What one scrape of one proxy says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// When, in seconds since the epoch.
    pub at: f64,
    /// Inbound requests per edge (destination reporter).
    pub edges: BTreeMap<EdgeKey, Counts>,
    /// SPIFFE IDs seen for workloads (`namespace/name` → principal), from the labels.
    pub principals: BTreeMap<String, String>,
    /// `warden_svid_expiry_timestamp_seconds`, when the proxy has an SVID.
    pub svid_expiry: Option<f64>,
    /// `warden_authz_decisions_total` by decision (`allow`, `deny`, ...).
    pub authz: BTreeMap<String, f64>,
}

/// Sums a scrape's samples into what the console shows.
pub fn summarize(at: f64, samples: &[Sample]) -> Scrape {
    let mut s = Scrape {
        at,
        ..Scrape::default()
    };
    for m in samples {
        match m.name.as_str() {
            "istio_requests_total" if m.label("reporter") == "destination" => {
                let source = node_id(
                    m.label("source_workload_namespace"),
                    m.label("source_workload"),
                );
                let destination = node_id(
                    m.label("destination_workload_namespace"),
                    m.label("destination_workload"),
                );
                for (id, key) in [
                    (&source, "source_principal"),
                    (&destination, "destination_principal"),
                ] {
                    let p = m.label(key);
                    if !p.is_empty() && p != "unknown" {
                        s.principals.insert(id.clone(), p.to_string());
                    }
                }
                let code = m.label("response_code");
                let counts = Counts {
                    total: m.value,
                    server_errors: if code.starts_with('5') { m.value } else { 0.0 },
                    denied: if code == "403" { m.value } else { 0.0 },
                };
                s.edges
                    .entry(EdgeKey {
                        source,
                        destination,
                    })
                    .or_default()
                    .add(&counts);
            }
            "warden_svid_expiry_timestamp_seconds" if m.value > 0.0 => {
                s.svid_expiry = Some(m.value);
            }
            "warden_authz_decisions_total" => {
                *s.authz.entry(m.label("decision").to_string()).or_default() += m.value;
            }
            _ => {}
        }
    }
    s
}

/// The samples of one proxy inside the window, oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    samples: VecDeque<Scrape>,
}

impl History {
    /// Adds a scrape and forgets those older than the window before it.
    pub fn push(&mut self, scrape: Scrape) {
        let oldest = scrape.at - WINDOW_SECONDS;
        self.samples.push_back(scrape);
        self.prune(oldest);
    }

    /// Forgets samples taken before `oldest` (seconds since the epoch), except the
    /// newest: a proxy that stopped answering keeps its last counts (with no rate).
    pub fn prune(&mut self, oldest: f64) {
        while self.samples.len() > 1 && self.samples.front().is_some_and(|s| s.at < oldest) {
            self.samples.pop_front();
        }
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Scrape> {
        self.samples.back()
    }

    /// Each edge this proxy reports, with its numbers over the window.
    pub fn edges(&self) -> BTreeMap<EdgeKey, EdgeStats> {
        let mut out: BTreeMap<EdgeKey, EdgeStats> = BTreeMap::new();
        let Some(latest) = self.samples.back() else {
            return out;
        };
        let seconds = self.samples.front().map_or(0.0, |f| latest.at - f.at);
        for (key, counts) in &latest.edges {
            out.insert(
                key.clone(),
                EdgeStats {
                    totals: *counts,
                    recent: Counts::default(),
                    seconds,
                    stale: false,
                },
            );
        }
        // Pairwise increases; a series absent from the earlier scrape was created in
        // between and counts from zero.
        for (before, after) in self.samples.iter().zip(self.samples.iter().skip(1)) {
            for (key, now) in &after.edges {
                let then = before.edges.get(key).copied().unwrap_or_default();
                if let Some(stats) = out.get_mut(key) {
                    stats.recent.add(&now.increase_since(&then));
                }
            }
        }
        out
    }
}

/// An edge's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EdgeStats {
    /// The counters' current values.
    pub totals: Counts,
    /// What they grew by over the window.
    pub recent: Counts,
    /// The window actually covered (0 with one sample: no rate yet).
    pub seconds: f64,
    /// The reporting proxy's last scrape failed: these are its last known numbers.
    pub stale: bool,
}

/// How an edge is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeState {
    /// Requests refused (403) within the window: red.
    Denied,
    /// 5xx within the window: amber.
    Error,
    /// Otherwise: green.
    Ok,
}

impl EdgeState {
    /// The name the page and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::Error => "error",
            Self::Ok => "ok",
        }
    }
}

impl EdgeStats {
    /// Requests per second over the window, once two samples span some time.
    pub fn rate(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.recent.total / self.seconds)
    }

    /// Red for recent denials, amber for recent 5xx, green otherwise.
    pub fn state(&self) -> EdgeState {
        if self.recent.denied > 0.0 {
            EdgeState::Denied
        } else if self.recent.server_errors > 0.0 {
            EdgeState::Error
        } else {
            EdgeState::Ok
        }
    }

    /// The edge as `/api/graph` lists it.
    pub fn json(&self, key: &EdgeKey) -> serde_json::Value {
        serde_json::json!({
            "source": key.source,
            "destination": key.destination,
            "total": self.totals.total,
            "allowed": self.totals.total - self.totals.denied,
            "denied": self.totals.denied,
            "server_errors": self.totals.server_errors,
            "rate": self.rate(),
            "recent": {
                "seconds": self.seconds,
                "total": self.recent.total,
                "denied": self.recent.denied,
                "server_errors": self.recent.server_errors,
            },
            "state": self.state().as_str(),
            "stale": self.stale,
        })
    }
}

/// When the next rotation is expected, and how that was worked out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rotation {
    /// Seconds since the epoch.
    pub at: f64,
    /// `half-life`: issuance known from the CA's audit log, the agent refreshes at half
    /// the lifetime; `estimate`: issuance unknown, expiry minus a third of the validity
    /// the console has seen.
    pub basis: &'static str,
}

/// The expected rotation of a certificate expiring at `expiry`: half its life from
/// `issued_at` when that is known, else `expiry` minus a third of the span from when
/// the console first saw it (`first_seen`) to its expiry.
pub fn next_rotation(expiry: f64, issued_at: Option<f64>, first_seen: f64) -> Rotation {
    match issued_at {
        Some(issued) if issued < expiry => Rotation {
            at: issued + (expiry - issued) / 2.0,
            basis: "half-life",
        },
        _ => Rotation {
            at: expiry - (expiry - first_seen).max(0.0) / 3.0,
            basis: "estimate",
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::console::prom::parse;

    fn series(src: &str, dst: &str, code: u16, reporter: &str, value: u64) -> String {
        format!(
            "istio_requests_total{{reporter=\"{reporter}\",source_workload=\"{src}\",source_workload_namespace=\"bookinfo\",source_principal=\"spiffe://cluster.local/ns/bookinfo/sa/{src}\",destination_workload=\"{dst}\",destination_workload_namespace=\"bookinfo\",destination_principal=\"spiffe://cluster.local/ns/bookinfo/sa/{dst}\",response_code=\"{code}\"}} {value}\n"
        )
    }

    fn scrape(at: f64, text: &str) -> Scrape {
        summarize(at, &parse(text).unwrap())
    }

    fn key(s: &str, d: &str) -> EdgeKey {
        EdgeKey {
            source: format!("bookinfo/{s}"),
            destination: format!("bookinfo/{d}"),
        }
    }

    #[test]
    fn edges_sum_codes_and_ignore_the_source_reporter() {
        let text = [
            series("reviews-v2", "ratings-v1", 200, "destination", 10),
            series("reviews-v2", "ratings-v1", 403, "destination", 3),
            series("reviews-v2", "ratings-v1", 503, "destination", 2),
            series("reviews-v3", "ratings-v1", 200, "destination", 4),
            // the client's own count of the same requests: not counted twice
            series("reviews-v2", "ratings-v1", 200, "source", 10),
            "warden_svid_expiry_timestamp_seconds 1900000000\n".into(),
            "warden_authz_decisions_total{decision=\"deny\",protocol=\"http\"} 3\n".into(),
            "warden_authz_decisions_total{decision=\"deny\",protocol=\"tcp\"} 1\n".into(),
        ]
        .concat();
        let s = scrape(100.0, &text);
        assert_eq!(s.edges.len(), 2);
        let c = s.edges[&key("reviews-v2", "ratings-v1")];
        assert_eq!(
            c,
            Counts {
                total: 15.0,
                server_errors: 2.0,
                denied: 3.0
            }
        );
        assert_eq!(s.svid_expiry, Some(1_900_000_000.0));
        assert_eq!(s.authz["deny"], 4.0);
        assert_eq!(
            s.principals["bookinfo/reviews-v3"],
            "spiffe://cluster.local/ns/bookinfo/sa/reviews-v3"
        );
    }

    #[test]
    fn rate_and_state_come_from_increases_in_the_window() {
        let mut h = History::default();
        h.push(scrape(
            100.0,
            &series("reviews-v2", "ratings-v1", 200, "destination", 10),
        ));
        let e = h.edges()[&key("reviews-v2", "ratings-v1")];
        assert_eq!(e.rate(), None, "one sample: no rate yet");
        assert_eq!(e.state(), EdgeState::Ok, "old counts are not recent");
        assert_eq!(e.totals.total, 10.0);

        h.push(scrape(
            102.0,
            &series("reviews-v2", "ratings-v1", 200, "destination", 20),
        ));
        let e = h.edges()[&key("reviews-v2", "ratings-v1")];
        assert_eq!(e.rate(), Some(5.0));
        assert_eq!(e.state(), EdgeState::Ok);

        // A 403 series appears: its whole count is new.
        let denied = [
            series("reviews-v2", "ratings-v1", 200, "destination", 20),
            series("reviews-v2", "ratings-v1", 403, "destination", 4),
        ]
        .concat();
        h.push(scrape(104.0, &denied));
        let e = h.edges()[&key("reviews-v2", "ratings-v1")];
        assert_eq!(e.state(), EdgeState::Denied);
        assert_eq!(e.recent.denied, 4.0);
        assert_eq!(e.rate(), Some(14.0 / 4.0));
        assert_eq!(e.totals.denied, 4.0);
        let json = e.json(&key("reviews-v2", "ratings-v1"));
        assert_eq!(json["allowed"], 20.0);
        assert_eq!(json["state"], "denied");

        // Nothing new for longer than the window: green again, totals kept.
        h.push(scrape(110.0, &denied));
        h.push(scrape(126.0, &denied));
        let e = h.edges()[&key("reviews-v2", "ratings-v1")];
        assert_eq!(e.state(), EdgeState::Ok);
        assert_eq!(e.rate(), Some(0.0));
        assert_eq!(e.totals.denied, 4.0);

        // The proxy stops answering: its last counts stay, with no rate.
        h.prune(200.0);
        let e = h.edges()[&key("reviews-v2", "ratings-v1")];
        assert_eq!((e.totals.total, e.rate()), (24.0, None));
    }

    #[test]
    fn five_hundreds_are_amber_and_resets_count_from_zero() {
        let mut h = History::default();
        h.push(scrape(
            100.0,
            &series("productpage-v1", "details-v1", 200, "destination", 50),
        ));
        // The proxy restarted: its counter starts again.
        let after = [
            series("productpage-v1", "details-v1", 200, "destination", 6),
            series("productpage-v1", "details-v1", 503, "destination", 1),
        ]
        .concat();
        h.push(scrape(102.0, &after));
        let e = h.edges()[&key("productpage-v1", "details-v1")];
        assert_eq!(e.recent.total, 7.0);
        assert_eq!(e.state(), EdgeState::Error);
    }

    #[test]
    fn rotation_is_half_life_when_issuance_is_known() {
        let r = next_rotation(2000.0, Some(1000.0), 1500.0);
        assert_eq!((r.at, r.basis), (1500.0, "half-life"));
        let r = next_rotation(2000.0, None, 1100.0);
        assert_eq!((r.at, r.basis), (1700.0, "estimate"));
        let r = next_rotation(2000.0, Some(3000.0), 2000.0);
        assert_eq!((r.at, r.basis), (2000.0, "estimate"));
    }
}
