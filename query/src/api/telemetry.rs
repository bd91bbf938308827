//! `GET /metrics`: runledger's own series in the Prometheus text format (version 0.0.4).
//!
//! The API records its latency by route here; the collector's counters come from a source
//! the binary plugs in ([`MetricsSource`]), so that this crate does not depend on the
//! collector; the business series (cost today by workflow, budgets) are computed at scrape
//! time through the response cache, so a 15-second scrape interval costs one query per
//! cache period.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the API latency histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// API request counts and latencies by route and status code.
#[derive(Debug, Default)]
pub struct RouteStats {
    latency: Mutex<BTreeMap<String, Histogram>>,
    codes: Mutex<BTreeMap<(String, u16), u64>>,
}

impl RouteStats {
    /// Records one request.
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        {
            let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            let h = latency.entry(route.to_string()).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        *codes.entry((route.to_string(), status)).or_default() += 1;
    }

    /// Writes the series.
    pub fn write(&self, out: &mut Exposition) {
        out.help(
            "runledger_api_request_duration_seconds",
            "histogram",
            "API request latency by route.",
        );
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (route, h) in &latency {
            for (i, bound) in BUCKETS.iter().enumerate() {
                out.sample(
                    "runledger_api_request_duration_seconds_bucket",
                    &[("route", route), ("le", &bound.to_string())],
                    h.counts[i] as f64,
                );
            }
            out.sample(
                "runledger_api_request_duration_seconds_bucket",
                &[("route", route), ("le", "+Inf")],
                h.count as f64,
            );
            out.sample(
                "runledger_api_request_duration_seconds_sum",
                &[("route", route)],
                h.sum,
            );
            out.sample(
                "runledger_api_request_duration_seconds_count",
                &[("route", route)],
                h.count as f64,
            );
        }
        out.help(
            "runledger_api_requests_total",
            "counter",
            "API requests by route and HTTP status code.",
        );
        let codes = self.codes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for ((route, code), n) in &codes {
            out.sample(
                "runledger_api_requests_total",
                &[("route", route), ("code", &code.to_string())],
                *n as f64,
            );
        }
    }
}

/// A Prometheus text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a metric family.
    pub fn help(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample; label values are escaped as the format requires.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{key}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        if value.is_finite() {
            let _ = writeln!(self.text, " {value}");
        } else {
            let _ = writeln!(self.text, " NaN");
        }
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.help(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// Where the series of other parts (the collector, maintenance) come from.
pub struct MetricsSource(pub Box<dyn Fn(&mut Exposition) + Send + Sync>);

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_histograms_cumulative() {
        let stats = RouteStats::default();
        stats.record("/a", 200, Duration::from_millis(3));
        stats.record("/a", 500, Duration::from_millis(300));
        let mut out = Exposition::default();
        stats.write(&mut out);
        out.sample("x", &[("k", "a\"b\\c\nd")], 1.0);
        let text = out.finish();
        assert!(text.contains(
            "runledger_api_request_duration_seconds_bucket{route=\"/a\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "runledger_api_request_duration_seconds_bucket{route=\"/a\",le=\"0.5\"} 2\n"
        ));
        assert!(text.contains(
            "runledger_api_request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("runledger_api_requests_total{route=\"/a\",code=\"500\"} 1\n"));
        assert!(text.contains("x{k=\"a\\\"b\\\\c\\nd\"} 1\n"));
    }
}
