//! The page people open first, end to end: `/metrics` parsed as Prometheus text with its
//! counters checked against what was sent; the Grafana dashboard and alert rules checked
//! against the series `/metrics` really exposes; and the built-in web page loaded in
//! headless Chromium, its workflows and dollar figures compared with the API's, and a
//! screenshot taken.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::{fast_flush_config, ok, runledger, Server};
use serde_json::Value;

/// Parses the Prometheus text format strictly: every line a comment, blank, or
/// `name{labels} value`. Returns samples by name and label text.
fn parse_prometheus(text: &str) -> BTreeMap<String, Vec<(String, f64)>> {
    let sample = regex::Regex::new(
        r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$"#,
    )
    .unwrap();
    let mut out: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment: {line}"
            );
            // A family may have no sample yet (no cost today): it is still exposed.
            if let Some(family) = rest.strip_prefix("TYPE ") {
                let name = family.split(' ').next().unwrap_or_default();
                out.entry(name.to_string()).or_default();
            }
            continue;
        }
        let caps = sample
            .captures(line)
            .unwrap_or_else(|| panic!("not Prometheus text: {line}"));
        let value: f64 = caps[3].parse().unwrap_or(f64::NAN);
        out.entry(caps[1].to_string()).or_default().push((
            caps.get(2)
                .map_or(String::new(), |m| m.as_str().to_string()),
            value,
        ));
    }
    out
}

fn metric_names_in(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"runledger_[a-z_]+").unwrap();
    re.find_iter(text)
        .map(|m| {
            let name = m.as_str();
            // A histogram's series are named after it.
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if base.ends_with("_seconds") {
                        return name.to_string();
                    }
                }
            }
            name.to_string()
        })
        .collect()
}

/// `$1,234.56` or `$0.1234`, as the page formats dollars.
fn usd(v: f64) -> String {
    let text = if v.abs() < 1.0 {
        format!("{v:.4}")
    } else {
        format!("{v:.2}")
    };
    let (int, frac) = text.split_once('.').unwrap();
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("${grouped}.{frac}")
}

fn chromium(args: &[&str]) -> String {
    let binary = std::env::var("RUNLEDGER_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(&binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Virtual time runs only while the page is idle: it waits for the API calls.
            "--virtual-time-budget=30000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {binary} (install Debian's chromium): {e}"));
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_grafana_and_the_web_page_agree_with_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = fast_flush_config(
        "[[budgets]]\nscope = \"workflow\"\nkey = \"refunds\"\nperiod = \"monthly\"\nusd = 1000.0\n",
    );
    let server = Server::start(&data_dir, &config);
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    let sent = ok(runledger(
        &[
            "gen",
            "--endpoint",
            &server.grpc_endpoint(),
            "--runs",
            "400",
            "--spread-hours",
            "20",
        ],
        &[],
    ));
    let acknowledged: f64 = sent
        .split("acknowledged ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(acknowledged > 2000.0, "{sent}");

    // /metrics: strict text format, counters equal to what was sent, a latency series for
    // the route just called.
    let (status, _) = server.get_text("/api/v1/whoami", &token).await;
    assert_eq!(status, 200);
    let (status, text) = server.get_text("/metrics", "").await;
    assert_eq!(status, 200, "{text}");
    let series = parse_prometheus(&text);
    let one = |name: &str| series[name][0].1;
    assert_eq!(one("runledger_spans_accepted_total"), acknowledged);
    assert_eq!(one("runledger_spans_received_total"), acknowledged);
    assert!(one("runledger_bytes_received_total") > 0.0);
    assert!(one("runledger_wal_bytes_total") > 0.0);
    let rejected: f64 = series["runledger_spans_rejected_total"]
        .iter()
        .map(|s| s.1)
        .sum();
    assert_eq!(rejected, 0.0);
    assert!(series["runledger_api_request_duration_seconds_count"]
        .iter()
        .any(|(labels, n)| labels.contains("/api/v1/whoami") && *n >= 1.0));
    assert!(series.contains_key("runledger_budget_usd"), "{text}");
    let budget = &series["runledger_budget_usd"];
    assert!(budget[0].0.contains("key=\"refunds\"") && budget[0].1 == 1000.0);

    // Every series the Grafana dashboard and the alert rules use exists.
    let exposed: BTreeSet<String> = series.keys().cloned().collect();
    let families: BTreeSet<String> = exposed
        .iter()
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let grafana_text =
        std::fs::read_to_string(root.join("dashboards/grafana/runledger.json")).unwrap();
    let grafana: Value =
        serde_json::from_str(&grafana_text).expect("the Grafana dashboard is JSON");
    let panels = grafana["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names_in(expr) {
                assert!(
                    exposed.contains(&name) || families.contains(&name),
                    "panel `{}` uses {name}, which /metrics does not expose",
                    panel["title"]
                );
            }
        }
    }
    let alerts = std::fs::read_to_string(root.join("dashboards/prometheus/alerts.yml")).unwrap();
    for name in metric_names_in(&alerts) {
        assert!(
            exposed.contains(&name) || families.contains(&name),
            "an alert uses {name}, which /metrics does not expose"
        );
    }
    assert!(server.stop().success());

    // The web page, in a real browser, against the API's own answers for the same window.
    let server = Server::start(&data_dir, &fast_flush_config(""));
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::hours(30))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    let to = (now + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    let (status, api) = server
        .get_json(&format!("/api/v1/workflows?from={from}&to={to}"), &token)
        .await;
    assert_eq!(status, 200);
    let expected: BTreeMap<String, f64> = api["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["workflow"].as_str().unwrap().to_string(),
                w["total_cost_usd"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(expected.len() >= 3, "{api}");

    let url = format!(
        "http://{}/?token={token}&from={from}&to={to}#workflows",
        server.api
    );
    let dom = chromium(&["--dump-dom", &url]);
    assert!(
        dom.contains("data-state=\"ready\""),
        "the page did not finish loading:\n{dom}"
    );
    let row = regex::Regex::new(
        r#"<tr data-workflow="([^"]*)" data-cost="([^"]*)" data-runs="[^"]*">.*?<td class="n cost">([^<]*)</td>"#,
    )
    .unwrap();
    let shown: BTreeMap<String, (f64, String)> = row
        .captures_iter(&dom)
        .map(|c| (c[1].to_string(), (c[2].parse().unwrap(), c[3].to_string())))
        .collect();
    assert_eq!(
        shown.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the page shows the API's workflows"
    );
    for (workflow, cost) in &expected {
        let (raw, text) = &shown[workflow];
        // Sums of floats in parallel may differ in the last bit between two computations.
        assert!((raw - cost).abs() < 1e-9, "{workflow}: {raw} vs {cost}");
        assert_eq!(text, &usd(*cost), "{workflow} as shown");
    }

    // The overview renders its charts and gates; its spend equals the API's total.
    let overview = chromium(&[
        "--dump-dom",
        &format!(
            "http://{}/?token={token}&from={from}&to={to}#overview",
            server.api
        ),
    ]);
    assert!(overview.contains("data-state=\"ready\""), "{overview}");
    let total: f64 = expected.values().sum();
    let spend = regex::Regex::new(r#"id="kpi-cost" data-usd="([^"]*)""#)
        .unwrap()
        .captures(&overview)
        .map(|c| c[1].parse::<f64>().unwrap())
        .expect("the spend figure");
    assert!((spend - total).abs() < 1e-9, "{spend} vs {total}");
    for workflow in expected.keys() {
        assert!(
            overview.contains(&format!("data-gate-workflow=\"{workflow}\"")),
            "gates of {workflow}"
        );
    }
    assert!(overview.contains("<svg"), "charts are drawn");

    // Without a token: the sign-in box, not data.
    let signed_out = chromium(&["--dump-dom", &format!("http://{}/", server.api)]);
    assert!(signed_out.contains("data-state=\"signin\""), "{signed_out}");

    let shot = dir.path().join("dashboard.png");
    chromium(&[
        "--window-size=1400,1200",
        &format!("--screenshot={}", shot.display()),
        &format!(
            "http://{}/?token={token}&from={from}&to={to}#overview",
            server.api
        ),
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );
    assert!(server.stop().success());
}
