//! The metrics over a golden dataset equal what the test computes from the run descriptions,
//! exactly (every cost is a multiple of 1/64 USD, so that no summation order rounds).

mod common;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::*;
use runledger_query::metrics::{self, CostGroup};
use runledger_query::{GateThresholds, Lake, TimeWindow};

fn window() -> TimeWindow {
    TimeWindow {
        from: Utc.timestamp_opt(BASE_SECS - 3600, 0).unwrap(),
        to: Utc.timestamp_opt(BASE_SECS + 3 * 86_400, 0).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_metrics_equal_the_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let runs = golden_runs(7, 300);
    write_lake(dir.path(), &runs).await;
    let lake = Lake::new(dir.path(), Duration::ZERO);
    let (ctx, _) = lake.session(false).await.unwrap();
    let got = metrics::workflows(&ctx, "spans", &window()).await.unwrap();
    let want = expected(&runs);
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for m in &got {
        let name = m.workflow.as_deref().unwrap();
        let e = &want[name];
        assert_eq!(m.runs, e.runs, "{name} runs");
        assert_eq!(m.successful_runs, e.successful_runs, "{name} successful");
        assert_eq!(m.finished_runs, e.finished_runs, "{name} finished");
        assert_eq!(m.total_cost_usd, e.total_cost_usd, "{name} cost");
        assert_eq!(m.tool_calls, e.tool_calls, "{name} tool calls");
        assert_eq!(m.retries, e.retries, "{name} retries");
        assert_eq!(m.write_actions, e.write_actions, "{name} writes");
        assert_eq!(
            m.failed_write_actions, e.failed_write_actions,
            "{name} failed writes"
        );
        assert_eq!(m.unpriced_spans, e.unpriced_spans, "{name} unpriced");
        let r = |a: u64, b: u64| (b != 0).then(|| a as f64 / b as f64);
        assert_eq!(m.completion_rate, r(e.successful_runs, e.finished_runs));
        assert_eq!(
            m.cost_per_success_usd,
            (e.successful_runs != 0).then(|| e.total_cost_usd / e.successful_runs as f64)
        );
        assert_eq!(m.retry_rate, r(e.retries, e.tool_calls));
        assert_eq!(m.mean_retries_per_run, r(e.retries, e.runs));
        assert_eq!(m.tool_error_rate, r(e.tool_errors, e.tool_calls));
        assert_eq!(
            m.critical_error_rate,
            r(e.failed_write_actions, e.write_actions)
        );
        assert_eq!(
            m.trace_coverage,
            r(e.covered_runs, e.runs),
            "{name} coverage"
        );
    }
    // The dataset exercises what it claims to.
    assert!(runs.iter().any(|r| r.duplicate) && runs.iter().any(|r| r.orphan));
    assert!(runs.iter().any(|r| r.outcome.is_none()));
    assert!(want
        .values()
        .all(|e| e.failed_write_actions > 0 && e.retries > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_groups_add_up_and_a_narrow_window_sees_only_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let runs = golden_runs(11, 250);
    write_lake(dir.path(), &runs).await;
    let lake = Lake::new(dir.path(), Duration::ZERO);
    let (ctx, _) = lake.session(false).await.unwrap();
    let total: f64 = runs.iter().map(Run::cost).sum();
    for group in [
        CostGroup::Workflow,
        CostGroup::Agent,
        CostGroup::Customer,
        CostGroup::Day,
    ] {
        let rows = metrics::cost(&ctx, "spans", &window(), group)
            .await
            .unwrap();
        let sum: f64 = rows.iter().map(|r| r.cost_usd).sum();
        assert_eq!(sum, total, "{group:?}");
        let run_count: u64 = rows.iter().map(|r| r.runs).sum();
        assert_eq!(run_count, runs.len() as u64, "{group:?}");
    }
    // By model: inference only, the explicit costs of the LLM calls.
    let rows = metrics::cost(&ctx, "spans", &window(), CostGroup::Model)
        .await
        .unwrap();
    let gpt = rows
        .iter()
        .find(|r| r.key.as_deref() == Some("gpt-4o"))
        .unwrap();
    let llm: f64 = runs.iter().flat_map(|r| &r.llm_costs).sum();
    assert_eq!(gpt.cost_usd, llm);
    assert_eq!(gpt.cost_tool_usd, 0.0);
    let unpriced = rows
        .iter()
        .find(|r| r.key.as_deref() == Some("in-house-llm-7"))
        .unwrap();
    assert_eq!(unpriced.cost_usd, 0.0);
    assert_eq!(
        unpriced.unpriced_spans,
        runs.iter().map(|r| r.unpriced_calls as u64).sum::<u64>()
    );
    // The day runs cross: two days' rows.
    let days = metrics::cost(&ctx, "spans", &window(), CostGroup::Day)
        .await
        .unwrap();
    assert!(days.len() >= 2, "{days:?}");

    // A window of the first two hours holds exactly the runs that start in it.
    let narrow = TimeWindow {
        from: Utc.timestamp_opt(BASE_SECS, 0).unwrap(),
        to: Utc.timestamp_opt(BASE_SECS + 7200, 0).unwrap(),
    };
    let inside: Vec<Run> = runs
        .iter()
        .filter(|r| r.start_secs < BASE_SECS + 7200)
        .cloned()
        .collect();
    let got = metrics::workflows(&ctx, "spans", &narrow).await.unwrap();
    let want = expected(&inside);
    let got_runs: u64 = got.iter().map(|m| m.runs).sum();
    assert_eq!(got_runs, want.values().map(|e| e.runs).sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_pass_and_fail_on_their_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let runs = golden_runs(3, 200);
    write_lake(dir.path(), &runs).await;
    let lake = Lake::new(dir.path(), Duration::ZERO);
    let (ctx, _) = lake.session(false).await.unwrap();
    let all = metrics::workflows(&ctx, "spans", &window()).await.unwrap();
    let m = all
        .iter()
        .find(|m| m.workflow.as_deref() == Some("refunds"))
        .unwrap();
    // Thresholds set just around the measured values.
    let lenient = GateThresholds {
        min_completion_rate: m.completion_rate.unwrap(),
        max_critical_error_rate: m.critical_error_rate.unwrap(),
        max_cost_per_success_usd: m.cost_per_success_usd,
        min_trace_coverage: m.trace_coverage.unwrap(),
        min_runs: 1,
    };
    let gates = metrics::gates("refunds", Some(m), &lenient);
    assert!(gates.ready, "{gates:#?}");
    let strict = GateThresholds {
        max_critical_error_rate: m.critical_error_rate.unwrap() / 2.0,
        ..lenient.clone()
    };
    let gates = metrics::gates("refunds", Some(m), &strict);
    assert!(!gates.ready);
    let failed: Vec<&str> = gates
        .gates
        .iter()
        .filter(|g| !g.pass)
        .map(|g| g.name)
        .collect();
    assert_eq!(failed, ["critical_error_rate"]);
    assert_eq!(gates.gates[1].sample_size, m.write_actions);
    // The defaults: 100% coverage fails on this data (it has orphans and rootless runs), and
    // the cost gate fails without a threshold, saying so.
    let gates = metrics::gates("refunds", Some(m), &GateThresholds::default());
    let cost = gates
        .gates
        .iter()
        .find(|g| g.name == "cost_per_success_usd")
        .unwrap();
    assert!(!cost.pass && cost.reason.as_deref().unwrap().contains("no threshold"));
    // Too few runs: nothing passes.
    let few = GateThresholds {
        min_runs: 10_000,
        ..lenient
    };
    assert!(metrics::gates("refunds", Some(m), &few)
        .gates
        .iter()
        .all(|g| !g.pass));
}
