//! `runledger run RUN_ID`: one run in the terminal, as a tree with a waterfall of durations,
//! its tool calls, retries, errors, external refs and costs, readable at 80 columns.
//!
//! It reads the lake directly (`--data-dir`) or asks a server (`--api`, `--token`); both give
//! the same [`RunView`], and `--json` prints it as the API does.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use clap::Args;
use runledger_query::api::audit::{AuditEntry, AuditLog};
use runledger_query::runs::{self, RunView, SpanView};
use runledger_query::{Lake, Role};
use runledger_schemas::Tier;

/// `runledger run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The run id (`runledger.run.id`, else the trace id in hex).
    run_id: String,
    /// Read the lake in this data directory.
    #[arg(long, conflicts_with = "api")]
    data_dir: Option<PathBuf>,
    /// Ask the runledger API at this URL (e.g. http://127.0.0.1:8080).
    #[arg(long, requires = "token")]
    api: Option<String>,
    /// API token (oncall role or above; raw for `--tier raw`).
    #[arg(long, env = "RUNLEDGER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Tier to read: redacted (default) or raw. Raw reads are recorded in the audit log.
    #[arg(long, default_value = "redacted")]
    tier: Tier,
    /// Print the run as JSON, as `GET /api/v1/runs/{run_id}` returns it.
    #[arg(long)]
    json: bool,
    /// Columns to fit the tree in (default: 80).
    #[arg(long, default_value_t = 80)]
    width: usize,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let view = match (&args.api, &args.data_dir) {
        (Some(api), _) => from_api(api, args.token.as_deref().unwrap_or_default(), &args).await?,
        (None, data_dir) => {
            let data_dir = data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./runledger-data"));
            from_lake(&data_dir, &args).await?
        }
    };
    let Some(view) = view else {
        eprintln!("no run `{}` in the {} tier", args.run_id, args.tier);
        return Ok(ExitCode::from(2));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", render(&view, args.width.max(60), color));
    }
    Ok(ExitCode::SUCCESS)
}

async fn from_lake(data_dir: &std::path::Path, args: &RunArgs) -> anyhow::Result<Option<RunView>> {
    if !data_dir.is_dir() {
        bail!("no data directory at {}", data_dir.display());
    }
    if args.tier == Tier::Raw {
        let who = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        AuditLog::new(data_dir)
            .append(&AuditEntry {
                at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                who: format!("local:{who}"),
                role: Role::Admin,
                action: "read_run".into(),
                tier: "raw".into(),
                run_id: args.run_id.clone(),
            })
            .context("recording the raw read in the audit log")?;
    }
    let lake = Lake::new(data_dir, Duration::ZERO);
    match runs::lookup(&lake, args.tier, &args.run_id).await {
        Ok(view) => Ok(view),
        Err(runledger_query::QueryError::NoTier(_)) => Ok(None),
        Err(e) => Err(e).context("reading the run"),
    }
}

async fn from_api(api: &str, token: &str, args: &RunArgs) -> anyhow::Result<Option<RunView>> {
    let mut url =
        reqwest::Url::parse(api).with_context(|| format!("`--api {api}` is not a URL"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("`--api {api}` cannot be a base URL"))?
        .pop_if_empty()
        .extend(["api", "v1", "runs", &args.run_id]);
    if args.tier == Tier::Raw {
        url.query_pairs_mut().append_pair("tier", "raw");
    }
    let response = reqwest::Client::new()
        .get(url.clone())
        .bearer_auth(token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = response.text().await.context("reading the answer")?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("the API answered {status}: {message}");
    }
    Ok(Some(
        serde_json::from_str(&body).context("the API's answer is not a run")?,
    ))
}

fn micros(rfc: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc)
        .map(|t| t.timestamp_micros())
        .unwrap_or(0)
}

/// `1.23 s`, `120 ms`, `3 m 05 s`.
fn duration(ms: f64) -> String {
    if ms >= 60_000.0 {
        let secs = (ms / 1000.0).round() as u64;
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{}ms", ms.round() as u64)
    } else {
        format!("{}µs", (ms * 1000.0).round() as u64)
    }
}

fn dollars(usd: f64) -> String {
    if usd == 0.0 {
        "$0".into()
    } else if usd < 0.01 {
        format!("${usd:.5}")
    } else {
        format!("${usd:.4}")
    }
}

fn thousands(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// `text` cut or padded to exactly `width` characters.
fn fit(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        format!("{text}{}", " ".repeat(width - count))
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

fn label(span: &SpanView) -> String {
    // Markers first, so that cutting a long name never hides them.
    let mut label = String::new();
    if span.status == "error" || span.error_type.is_some() {
        label.push_str("✗ ");
    }
    if let Some(attempt) = span.retry_attempt.filter(|a| *a > 0) {
        label.push_str(&format!("↻{attempt} "));
    }
    match (&span.operation, &span.tool_name, &span.model) {
        (_, Some(tool), _) => label.push_str(&format!("tool {tool}")),
        (Some(op), None, Some(model)) => label.push_str(&format!("{op} {model}")),
        _ => label.push_str(&span.name),
    }
    if span.side_effect.as_deref() == Some("write") {
        label.push_str(" [write]");
    }
    label
}

/// The tree prefix of each span (`├─ `, `│  └─ `...), from the depths of the flat list.
fn tree_prefixes(spans: &[SpanView]) -> Vec<(String, String)> {
    let depth: Vec<u32> = spans.iter().map(|s| s.depth).collect();
    // Whether the span is the last of its siblings: no later span at its depth before the
    // list climbs above it.
    let last: Vec<bool> = (0..spans.len())
        .map(|i| {
            spans[i + 1..]
                .iter()
                .find(|s| s.depth <= depth[i])
                .is_none_or(|s| s.depth < depth[i])
        })
        .collect();
    let mut open: Vec<bool> = Vec::new(); // per level: whether more siblings follow
    let mut out = Vec::with_capacity(spans.len());
    for i in 0..spans.len() {
        let d = depth[i] as usize;
        open.truncate(d);
        let mut prefix = String::new();
        for level in 1..d {
            prefix.push_str(if open.get(level).copied().unwrap_or(false) {
                "│  "
            } else {
                "   "
            });
        }
        let mut continuation = prefix.clone();
        if d > 0 {
            prefix.push_str(if last[i] { "└─ " } else { "├─ " });
            continuation.push_str(if last[i] { "   " } else { "│  " });
        }
        while open.len() <= d {
            open.push(false);
        }
        open[d] = !last[i];
        out.push((prefix, continuation));
    }
    out
}

/// The run as text, `width` columns wide.
pub fn render(view: &RunView, width: usize, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    let who = [
        view.workflow.as_deref(),
        view.agent.as_deref(),
        view.customer_id.as_deref(),
    ]
    .iter()
    .flatten()
    .copied()
    .collect::<Vec<_>>()
    .join(" · ");
    out.push_str(fit(&format!("run {}  {who}", view.run_id), width).trim_end());
    out.push('\n');
    let outcome = view.outcome.as_deref().unwrap_or("unknown (no root span)");
    let outcome = match outcome {
        "success" => paint("32", outcome),
        "failure" => paint("31", outcome),
        _ => paint("33", outcome),
    };
    out.push_str(&format!(
        "outcome {outcome} · {} · {}\n",
        view.start_time.replace('T', " "),
        duration(view.duration_ms)
    ));
    out.push_str(&format!(
        "cost {} (inference {}, tool {}, review {}){}\n",
        dollars(view.cost_usd),
        dollars(view.cost.inference),
        dollars(view.cost.tool),
        dollars(view.cost.review),
        if view.unpriced_spans > 0 {
            format!(" + {} unpriced span(s)", view.unpriced_spans)
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "tokens in {} (cache read {}) · out {} (reasoning {})\n",
        thousands(view.tokens.input),
        thousands(view.tokens.cache_read),
        thousands(view.tokens.output),
        thousands(view.tokens.reasoning),
    ));
    let coverage = if view.coverage.root && view.coverage.orphans == 0 {
        "whole tree".to_string()
    } else {
        paint(
            "33",
            &format!(
                "{}{} orphan span(s)",
                if view.coverage.root {
                    ""
                } else {
                    "root span missing, "
                },
                view.coverage.orphans
            ),
        )
    };
    out.push_str(&format!("{} spans · {coverage}\n\n", view.spans.len()));

    // Columns: name | duration (8) | cost (9) | waterfall (the rest, at least 12).
    let bar = (width / 4).max(12);
    let name_width = width.saturating_sub(bar + 8 + 9 + 3).max(20);
    let start = micros(&view.start_time);
    let total = (micros(&view.end_time) - start).max(1) as f64;
    let header = format!(
        "{} {:>8} {:>9} {}",
        fit("SPAN", name_width),
        "DURATION",
        "COST",
        fit(
            &format!(
                "0 {:─>w$}",
                format!(" {}", duration(view.duration_ms)),
                w = bar - 2
            ),
            bar
        )
    );
    out.push_str(&paint("1", header.trim_end()));
    out.push('\n');
    for (span, (prefix, continuation)) in view.spans.iter().zip(tree_prefixes(&view.spans)) {
        let orphan = if span.orphan { "? " } else { "" };
        let name = fit(&format!("{prefix}{orphan}{}", label(span)), name_width);
        let offset =
            ((micros(&span.start_time) - start) as f64 / total * bar as f64).floor() as usize;
        let offset = offset.min(bar - 1);
        let length = ((span.duration_ms * 1000.0 / total * bar as f64).round() as usize)
            .clamp(1, bar - offset);
        let cells = format!("{}{}", " ".repeat(offset), "█".repeat(length));
        let failed = span.status == "error" || span.error_type.is_some();
        let cells = paint(if failed { "31" } else { "36" }, &cells);
        let cost = span.cost_usd.map(dollars).unwrap_or_default();
        out.push_str(&format!(
            "{name} {:>8} {:>9} {cells}\n",
            duration(span.duration_ms),
            cost
        ));
        let mut details = Vec::new();
        if failed {
            let error = span
                .error_type
                .as_deref()
                .or(span.status_message.as_deref())
                .unwrap_or("error");
            details.push(paint("31", &format!("error: {error}")));
        }
        if let Some(external_ref) = &span.external_ref {
            details.push(format!("ref {external_ref}"));
        }
        if !details.is_empty() {
            let line = format!("{continuation}   {}", details.join(" · "));
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use runledger_query::runs::{CostBreakdown, Coverage, Tokens};

    fn span(id: &str, depth: u32, start: &str, ms: f64) -> SpanView {
        SpanView {
            span_id: id.into(),
            parent_span_id: None,
            depth,
            orphan: false,
            trace_id: "t".into(),
            name: format!("span {id}"),
            operation: None,
            tool_name: None,
            model: None,
            start_time: start.into(),
            duration_ms: ms,
            status: "ok".into(),
            status_message: None,
            error_type: None,
            side_effect: None,
            external_ref: None,
            retry_attempt: None,
            cost_usd: None,
            tokens: Tokens::default(),
            attributes: Default::default(),
            events: None,
        }
    }

    #[test]
    fn the_tree_fits_80_columns_and_shows_errors_refs_and_retries() {
        let mut spans = vec![
            span("1", 0, "2026-01-01T00:00:00Z", 10_000.0),
            span("2", 1, "2026-01-01T00:00:01Z", 1_000.0),
            span("3", 2, "2026-01-01T00:00:01.5Z", 100.0),
            span("4", 1, "2026-01-01T00:00:05Z", 300.0),
            span("5", 1, "2026-01-01T00:00:06Z", 250.0),
        ];
        spans[3].tool_name = Some("issue_refund_with_a_very_long_name_indeed".into());
        spans[3].status = "error".into();
        spans[3].error_type = Some("timeout".into());
        spans[4].tool_name = Some("issue_refund".into());
        spans[4].retry_attempt = Some(1);
        spans[4].external_ref = Some("RF-77".into());
        spans[4].cost_usd = Some(0.5);
        let view = RunView {
            run_id: "run-1".into(),
            tier: "redacted".into(),
            workflow: Some("refunds".into()),
            agent: Some("support".into()),
            customer_id: None,
            outcome: Some("success".into()),
            start_time: "2026-01-01T00:00:00Z".into(),
            end_time: "2026-01-01T00:00:10Z".into(),
            duration_ms: 10_000.0,
            cost_usd: 0.5,
            cost: CostBreakdown::default(),
            unpriced_spans: 0,
            tokens: Tokens::default(),
            coverage: Coverage {
                root: true,
                orphans: 0,
            },
            spans,
        };
        let text = render(&view, 80, false);
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        let lines: Vec<&str> = text.lines().collect();
        let tree: Vec<&str> = lines
            .iter()
            .skip_while(|l| !l.starts_with("SPAN"))
            .skip(1)
            .copied()
            .collect();
        assert!(tree[0].starts_with("span 1 "), "{text}");
        assert!(tree[1].starts_with("├─ span 2"), "{text}");
        assert!(tree[2].starts_with("│  └─ span 3"), "{text}");
        assert!(
            tree[3].starts_with("├─ ✗ tool issue_refund_with_a_very_long"),
            "{text}"
        );
        assert!(tree[4].starts_with("│     error: timeout"), "{text}");
        assert!(tree[5].starts_with("└─ ↻1 tool issue_refund"), "{text}");
        assert!(tree[5].contains("$0.5000"), "{text}");
        assert!(tree[6].contains("ref RF-77"), "{text}");
        // The root's bar spans the whole waterfall; the retry's starts past its middle.
        let bar_start = |line: &str| line.chars().position(|c| c == '█').unwrap();
        assert!(bar_start(tree[5]) > bar_start(tree[0]) + 10, "{text}");
        assert_eq!(tree[0].chars().filter(|c| *c == '█').count(), 20);
    }
}
