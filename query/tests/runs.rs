//! Run reconstruction over a real lake: runs across hour and day partitions, late spans in
//! later files, runs without their root, repeated span ids, parent cycles, and the run index
//! following compaction and erasure.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use common::{kv, request, s};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span, Status};
use runledger_lake::{sort_for_lake, HourPartition, LakeConfig, SpanTable};
use runledger_processor::{Normalizer, Pricer, PricingConfig, ProcessorConfig};
use runledger_query::runs::{lookup, runs_with_ref, RunView};
use runledger_query::Lake;
use runledger_schemas::Tier;

/// 2026-03-10T23:59:00Z: a minute before midnight, so that runs cross a day.
const NEAR_MIDNIGHT: i64 = 1_773_187_140;

static COMMIT: AtomicI64 = AtomicI64::new(0);

struct SpanSpec<'a> {
    id: u64,
    parent: Option<u64>,
    name: &'a str,
    start_ms: i64,
    duration_ms: i64,
    attributes: Vec<(&'a str, Value)>,
    error: bool,
}

fn spec<'a>(
    id: u64,
    parent: Option<u64>,
    name: &'a str,
    start_ms: i64,
    duration_ms: i64,
) -> SpanSpec<'a> {
    SpanSpec {
        id,
        parent,
        name,
        start_ms,
        duration_ms,
        attributes: Vec::new(),
        error: false,
    }
}

fn span_of(run_id: &str, spec: &SpanSpec) -> Span {
    let nanos = |ms: i64| ((NEAR_MIDNIGHT * 1000 + ms) * 1_000_000) as u64;
    let mut trace_id = [7u8; 16];
    trace_id[..run_id.len().min(16)].copy_from_slice(&run_id.as_bytes()[..run_id.len().min(16)]);
    let mut attributes = vec![kv("runledger.run.id", s(run_id))];
    attributes.extend(spec.attributes.iter().map(|(k, v)| kv(k, v.clone())));
    Span {
        trace_id: trace_id.to_vec(),
        span_id: spec.id.to_be_bytes().to_vec(),
        parent_span_id: spec
            .parent
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        name: spec.name.into(),
        start_time_unix_nano: nanos(spec.start_ms),
        end_time_unix_nano: nanos(spec.start_ms + spec.duration_ms),
        attributes,
        status: spec.error.then(|| Status {
            code: StatusCode::Error as i32,
            message: "timed out".into(),
        }),
        ..Default::default()
    }
}

/// Writes spans to both tiers in one commit each, as a collector's flush would.
async fn write(data_dir: &Path, spans: Vec<Span>) {
    let normalizer = Normalizer::new(&ProcessorConfig::default()).unwrap();
    let pricer = Pricer::new(&PricingConfig::default()).unwrap();
    let normalized = normalizer.normalize(&request(spans), SystemTime::now());
    assert_eq!(normalized.rejected_spans, 0, "{}", normalized.error_message);
    let (priced, _) = pricer.price_batch(&normalized.batch.unwrap()).unwrap();
    let sorted = sort_for_lake(&[priced]).unwrap();
    let commit = COMMIT.fetch_add(1, Ordering::SeqCst);
    for tier in [Tier::Redacted, Tier::Raw] {
        let mut table = SpanTable::open_or_create(data_dir, tier, &LakeConfig::default())
            .await
            .unwrap();
        table
            .append(sorted.as_slice(), "runs-test", commit)
            .await
            .unwrap();
    }
}

fn order(run: &RunView) -> Vec<(String, u32)> {
    run.spans
        .iter()
        .map(|s| (s.name.clone(), s.depth))
        .collect()
}

fn names(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|(n, d)| (n.to_string(), *d)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_across_days_with_late_and_repeated_spans() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path(), Duration::ZERO);
    let run = "run-cross-midnight";
    let mut root = spec(1, None, "invoke_agent support", 30_000, 90_000);
    root.attributes = vec![
        ("gen_ai.operation.name", s("invoke_agent")),
        ("gen_ai.agent.name", s("support")),
        ("gen_ai.workflow.name", s("refunds")),
        ("runledger.run.outcome", s("success")),
        ("user.id", s("cust-9")),
    ];
    let mut chat = spec(2, Some(1), "chat gpt-4o", 31_000, 2_000);
    chat.attributes = vec![
        ("gen_ai.operation.name", s("chat")),
        ("gen_ai.request.model", s("gpt-4o")),
        ("gen_ai.usage.input_tokens", Value::IntValue(1000)),
        ("gen_ai.usage.output_tokens", Value::IntValue(100)),
        ("gen_ai.usage.cost", Value::DoubleValue(0.25)),
    ];
    let tool = |id: u64, start_ms: i64, attempt: i64, error: bool| {
        let mut t = spec(id, Some(1), "execute_tool issue_refund", start_ms, 500);
        t.attributes = vec![
            ("gen_ai.operation.name", s("execute_tool")),
            ("gen_ai.tool.name", s("issue_refund")),
            ("runledger.action.side_effect", s("write")),
            ("runledger.retry.attempt", Value::IntValue(attempt)),
            ("runledger.cost.usd", Value::DoubleValue(0.5)),
        ];
        if !error {
            t.attributes.push(("runledger.action.ref", s("RF-778")));
        }
        t.error = error;
        t
    };
    // The first try fails after midnight; the retry succeeds.
    let first_try = tool(3, 70_000, 0, true);
    let http = spec(5, Some(3), "POST /refunds", 70_100, 300);
    let retry = tool(4, 80_000, 1, false);
    // An hour and more later, after the root ended: a follow-up in the 01:00 partition.
    let mut follow_up = spec(6, Some(1), "execute_tool notify_customer", 3_730_000, 200);
    follow_up.attributes = vec![("gen_ai.tool.name", s("notify_customer"))];

    write(
        dir.path(),
        [&root, &chat, &first_try, &http]
            .iter()
            .map(|x| span_of(run, x))
            .collect(),
    )
    .await;
    let early = lookup(&lake, Tier::Redacted, run).await.unwrap().unwrap();
    assert_eq!(early.spans.len(), 4);

    // Late: the retry, the chat span again (a client's retried export), then the follow-up.
    write(dir.path(), vec![span_of(run, &retry), span_of(run, &chat)]).await;
    write(dir.path(), vec![span_of(run, &follow_up)]).await;
    // Another run in the same files, which must not leak in.
    write(
        dir.path(),
        vec![span_of("run-other", &spec(1, None, "other", 31_000, 10))],
    )
    .await;

    let view = lookup(&lake, Tier::Redacted, run).await.unwrap().unwrap();
    assert_eq!(
        order(&view),
        names(&[
            ("invoke_agent support", 0),
            ("chat gpt-4o", 1),
            ("execute_tool issue_refund", 1),
            ("POST /refunds", 2),
            ("execute_tool issue_refund", 1),
            ("execute_tool notify_customer", 1),
        ])
    );
    assert_eq!(view.workflow.as_deref(), Some("refunds"));
    assert_eq!(view.agent.as_deref(), Some("support"));
    assert_eq!(view.customer_id.as_deref(), Some("cust-9"));
    assert_eq!(view.outcome.as_deref(), Some("success"));
    assert!(view.coverage.root);
    assert_eq!(view.coverage.orphans, 0);
    assert_eq!(view.start_time, "2026-03-10T23:59:30.000000Z");
    assert_eq!(view.end_time, "2026-03-11T01:01:10.200000Z");
    // 0.25 of inference (once, though its span came twice) and two tool calls of 0.5.
    assert_eq!(view.cost.inference, 0.25);
    assert_eq!(view.cost.tool, 1.0);
    assert_eq!(view.cost_usd, 1.25);
    assert_eq!(view.tokens.input, 1000);
    let failed = &view.spans[2];
    assert_eq!(failed.status, "error");
    assert_eq!(failed.retry_attempt, Some(0));
    assert_eq!(failed.external_ref, None);
    let retried = &view.spans[4];
    assert_eq!(retried.retry_attempt, Some(1));
    assert_eq!(retried.external_ref.as_deref(), Some("RF-778"));
    assert_eq!(retried.side_effect.as_deref(), Some("write"));
    assert_eq!(retried.parent_span_id.as_deref(), Some("0000000000000001"));
    assert!(view.spans.iter().all(|s| !s.orphan));

    // The ref leads to the run, and the raw tier holds the same run.
    assert_eq!(
        runs_with_ref(&lake, Tier::Redacted, "RF-778")
            .await
            .unwrap(),
        vec![run.to_string()]
    );
    assert!(runs_with_ref(&lake, Tier::Redacted, "RF-unknown")
        .await
        .unwrap()
        .is_empty());
    let raw = lookup(&lake, Tier::Raw, run).await.unwrap().unwrap();
    assert_eq!(order(&raw), order(&view));
    assert_eq!(raw.tier, "raw");
    assert!(lookup(&lake, Tier::Redacted, "run-never")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_its_root_shows_its_orphans_at_the_top() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path(), Duration::ZERO);
    let run = "run-rootless";
    write(
        dir.path(),
        vec![
            span_of(run, &spec(20, Some(1), "plan", 1_000, 100)),
            span_of(run, &spec(21, Some(20), "step", 1_010, 10)),
            span_of(run, &spec(30, Some(99), "lost", 500, 10)),
            // A parent cycle: neither is reachable from a root or an orphan.
            span_of(run, &spec(40, Some(41), "loop a", 2_000, 10)),
            span_of(run, &spec(41, Some(40), "loop b", 2_001, 10)),
        ],
    )
    .await;
    let view = lookup(&lake, Tier::Redacted, run).await.unwrap().unwrap();
    assert!(!view.coverage.root);
    assert_eq!(view.outcome, None);
    assert_eq!(view.coverage.orphans, 3);
    assert_eq!(
        order(&view),
        names(&[
            ("lost", 0),
            ("plan", 0),
            ("step", 1),
            ("loop a", 0),
            ("loop b", 1)
        ])
    );
    let flags: Vec<bool> = view.spans.iter().map(|s| s.orphan).collect();
    assert_eq!(flags, [true, true, false, true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_compaction_and_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path(), Duration::ZERO);
    let runs: Vec<String> = (0..6).map(|i| format!("run-{i}")).collect();
    // Six small files in one hour.
    for run in &runs {
        let mut root = spec(1, None, "root", 1_000, 100);
        root.attributes = vec![("runledger.action.ref", s(&format!("ref-{run}")))];
        write(
            dir.path(),
            vec![
                span_of(run, &root),
                span_of(run, &spec(2, Some(1), "child", 1_010, 10)),
            ],
        )
        .await;
    }
    let sidecars = dir.path().join("redacted").join("run_index");
    for run in &runs {
        assert_eq!(
            lookup(&lake, Tier::Redacted, run)
                .await
                .unwrap()
                .unwrap()
                .spans
                .len(),
            2
        );
    }
    let files_before = lake.run_index(Tier::Redacted, |i| i.files()).await.unwrap();
    assert_eq!(files_before, 6);
    assert_eq!(std::fs::read_dir(&sidecars).unwrap().count(), 6);

    let mut table = SpanTable::open_or_create(dir.path(), Tier::Redacted, &LakeConfig::default())
        .await
        .unwrap();
    let hour = HourPartition::of(chrono::DateTime::from_timestamp(NEAR_MIDNIGHT, 0).unwrap());
    let compacted = table.compact(&[hour], 64 << 20).await.unwrap();
    assert_eq!(compacted.files_added, 1, "{compacted:?}");
    for run in &runs {
        let view = lookup(&lake, Tier::Redacted, run).await.unwrap().unwrap();
        assert_eq!(view.spans.len(), 2, "{run} after compaction");
    }
    assert_eq!(
        lake.run_index(Tier::Redacted, |i| i.files()).await.unwrap(),
        1
    );
    assert_eq!(
        std::fs::read_dir(&sidecars).unwrap().count(),
        1,
        "stale sidecars removed"
    );

    table.delete_runs(&[runs[2].clone()]).await.unwrap();
    assert!(lookup(&lake, Tier::Redacted, &runs[2])
        .await
        .unwrap()
        .is_none());
    assert!(runs_with_ref(&lake, Tier::Redacted, "ref-run-2")
        .await
        .unwrap()
        .is_empty());
    for run in runs.iter().filter(|r| *r != &runs[2]) {
        assert!(
            lookup(&lake, Tier::Redacted, run).await.unwrap().is_some(),
            "{run}"
        );
    }

    // A fresh process finds the same from the saved sidecars (and rebuilds a corrupt one).
    for entry in std::fs::read_dir(&sidecars).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let fresh = Lake::new(dir.path(), Duration::ZERO);
    assert_eq!(
        runs_with_ref(&fresh, Tier::Redacted, "ref-run-4")
            .await
            .unwrap(),
        vec!["run-4".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_runs_are_those_far_above_their_workflow_norm() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path(), Duration::ZERO);
    let mut spans = Vec::new();
    for i in 0..30 {
        let run = format!("run-normal-{i:02}");
        let tools = if i == 7 { 60 } else { 2 + i % 3 };
        let mut root = spec(1, None, "root", 0, 60_000);
        root.attributes = vec![("gen_ai.workflow.name", s("refunds"))];
        spans.push(span_of(&run, &root));
        for t in 0..tools {
            let mut call = spec(
                10 + t as u64,
                Some(1),
                "execute_tool lookup",
                100 + t * 10,
                5,
            );
            call.attributes = vec![("gen_ai.tool.name", s("lookup"))];
            spans.push(span_of(&run, &call));
        }
    }
    write(dir.path(), spans).await;
    let (ctx, _) = lake.session(false).await.unwrap();
    let window = runledger_query::TimeWindow::parse(
        Some("2026-03-10T00:00:00Z"),
        Some("2026-03-12T00:00:00Z"),
        chrono::Utc::now(),
    )
    .unwrap();
    let found = runledger_query::runs::runaway(&ctx, "spans", &window, 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].run_id, "run-normal-07");
    assert_eq!(found[0].tool_calls, 60);
    assert_eq!(found[0].median_tool_calls, 3.0);
    assert!(
        found[0].reasons[0].starts_with("tool_calls 60"),
        "{found:?}"
    );
}

/// The `runs` view counts a span stored twice (in the same file or in a later one) once,
/// whether it is a root, a tool call or an orphan, and finds a parent in another file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_view_counts_each_span_once_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path(), Duration::ZERO);
    let tool = |id, parent, start| {
        let mut spec = spec(id, Some(parent), "execute_tool refund", start, 10);
        spec.attributes = vec![("gen_ai.tool.name", s("refund"))];
        spec.error = true;
        spec
    };
    let first = vec![
        span_of("run-dup", &spec(1, None, "root", 0, 1_000)),
        span_of("run-dup", &spec(2, Some(1), "plan", 10, 10)),
        span_of("run-dup", &tool(3, 1, 20)),
        span_of("run-orphans", &spec(10, None, "root", 0, 1_000)),
        span_of("run-orphans", &spec(11, Some(10), "plan", 10, 10)),
        span_of("run-orphans", &spec(12, Some(99), "lost", 20, 10)),
        span_of("run-orphans", &spec(12, Some(99), "lost", 20, 10)),
        span_of("run-clean", &spec(20, None, "root", 0, 1_000)),
        span_of("run-clean", &tool(21, 20, 10)),
    ];
    write(dir.path(), first).await;
    let later = vec![
        span_of("run-dup", &spec(1, None, "root", 0, 1_000)),
        span_of("run-dup", &tool(3, 1, 20)),
        span_of("run-orphans", &spec(12, Some(99), "lost", 20, 10)),
        span_of("run-orphans", &spec(13, Some(98), "lost too", 30, 10)),
        span_of("run-orphans", &spec(14, Some(10), "late", 40, 10)),
    ];
    write(dir.path(), later).await;

    let at = chrono::DateTime::from_timestamp(NEAR_MIDNIGHT, 0).unwrap();
    let window = runledger_query::TimeWindow {
        from: at - chrono::Duration::hours(1),
        to: at + chrono::Duration::hours(1),
    };
    let (ctx, _) = lake.session(false).await.unwrap();
    let sql = runledger_query::metrics::with_runs(
        "spans",
        &window.predicate(),
        "SELECT run_id, spans, roots, tool_calls, tool_errors, orphan_spans
         FROM runs ORDER BY run_id",
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with("| run-"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let want = [
        // run, spans, roots, tool calls, tool errors, orphan spans
        ["run-clean", "2", "1", "1", "1", "0"],
        ["run-dup", "3", "1", "1", "1", "0"],
        ["run-orphans", "5", "1", "0", "0", "2"],
    ];
    assert_eq!(rows, want.map(|r| r.map(String::from).to_vec()), "{text}");
}
