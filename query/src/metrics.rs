//! The metrics of DESIGN.md as SQL over the span table, and their typed answers.
//!
//! Every metric is built from two views over the spans of a [`TimeWindow`]:
//! - `runs`: one row per run: workflow, agent, customer and outcome (from the root span, else
//!   any span that names them), start, end, cost components, tokens, tool calls, tool
//!   errors, retries, write actions, failed write actions, roots and orphan spans, each span
//!   counted once even when an SDK sent it twice (a retried export); see [`runs_sql`] for
//!   how it gets there without deduplicating every span;
//! - `s`: one row per (`run_id`, `span_id`), for the metrics that look at spans (tools,
//!   cost by model, capabilities).
//!
//! Definitions (also in the README):
//! - completion rate = successful runs / finished runs (runs with an outcome);
//! - cost per success = (inference + tool + review cost of all runs) / successful runs;
//! - retry rate = retried tool calls / tool calls; mean retries per run = retried tool calls
//!   / runs;
//! - tool error rate = tool calls with status ERROR / tool calls;
//! - critical error rate = write actions that failed (status ERROR or an `error_type`,
//!   which includes `runledger.action.correct = false`) / write actions;
//! - trace coverage = runs with exactly one root span and no orphan span / runs.
//!
//! The SQL is plain enough that DuckDB runs the same text (the benchmark does), and the
//! rates are computed from its sums in Rust, in one place.

use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::rows::{ratio, Columns};
use crate::{GateThresholds, QueryError, TimeWindow};

/// The view of one span per (run, span) in the window.
pub fn spans_sql(table: &str, window: &str) -> String {
    format!(
        "SELECT run_id, span_id,
            max(parent_span_id) AS parent_span_id,
            max(workflow) AS workflow,
            max(agent_name) AS agent_name,
            max(customer_id) AS customer_id,
            max(outcome) AS outcome,
            min(start_time) AS start_time,
            max(end_time) AS end_time,
            max(duration_ns) AS duration_ns,
            max(operation) AS operation,
            max(tool_name) AS tool_name,
            max(request_model) AS request_model,
            max(response_model) AS response_model,
            max(retry_attempt) AS retry_attempt,
            max(side_effect) AS side_effect,
            max(status_code) AS status_code,
            max(error_type) AS error_type,
            max(input_tokens) AS input_tokens,
            max(output_tokens) AS output_tokens,
            max(cache_read_tokens) AS cache_read_tokens,
            max(cache_write_tokens) AS cache_write_tokens,
            max(reasoning_tokens) AS reasoning_tokens,
            max(cost_inference_usd) AS cost_inference_usd,
            max(cost_tool_usd) AS cost_tool_usd,
            max(cost_review_usd) AS cost_review_usd
         FROM {table} WHERE {window}
         GROUP BY run_id, span_id"
    )
}

/// The per-run sums of [`runs_sql`], over rows that hold one span each: (expression,
/// column).
const RUN_SUMS: [(&str, &str); 16] = [
    ("sum(cost_inference_usd)", "cost_inference_usd"),
    ("sum(cost_tool_usd)", "cost_tool_usd"),
    ("sum(cost_review_usd)", "cost_review_usd"),
    ("count(*)", "spans"),
    ("sum(CASE WHEN tool_name IS NOT NULL OR operation = 'execute_tool' THEN 1 ELSE 0 END)", "tool_calls"),
    ("sum(CASE WHEN (tool_name IS NOT NULL OR operation = 'execute_tool') AND status_code = 'error' THEN 1 ELSE 0 END)", "tool_errors"),
    ("sum(CASE WHEN (tool_name IS NOT NULL OR operation = 'execute_tool') AND retry_attempt > 0 THEN 1 ELSE 0 END)", "retries"),
    ("sum(CASE WHEN side_effect = 'write' THEN 1 ELSE 0 END)", "write_actions"),
    ("sum(CASE WHEN side_effect = 'write' AND (status_code = 'error' OR error_type IS NOT NULL) THEN 1 ELSE 0 END)", "failed_write_actions"),
    ("sum(CASE WHEN parent_span_id IS NULL THEN 1 ELSE 0 END)", "roots"),
    ("sum(CASE WHEN (input_tokens IS NOT NULL OR output_tokens IS NOT NULL) AND cost_inference_usd IS NULL THEN 1 ELSE 0 END)", "unpriced_spans"),
    ("sum(input_tokens)", "input_tokens"),
    ("sum(output_tokens)", "output_tokens"),
    ("sum(cache_read_tokens)", "cache_read_tokens"),
    ("sum(cache_write_tokens)", "cache_write_tokens"),
    ("sum(reasoning_tokens)", "reasoning_tokens"),
];

/// The `runs` view: one row per run of `table` in `window`.
///
/// Written so that no step holds every span of the window at once with its attributes,
/// which is what made the straightforward form (deduplicate every span, then fold runs,
/// then self-join the spans for orphans) slow and memory-hungry at 10M spans:
/// - `a` folds the raw rows of each run in one pass. Its maxima and minima are right even
///   when a span was stored twice (a retried export), but its sums and counts are only
///   right for a run with no duplicated span, and it cannot see orphans;
/// - `k` finds the runs that `a` cannot answer, from keys alone: each (run, id) where `id`
///   is a span id or a parent id of the run, with `n` = how many rows carry it as their span
///   id. `n > 1` is a duplicated span; `n = 0` is a parent that is not in the run, so its
///   children are orphans. Every other key has `n = 1`;
/// - `f` recomputes just those runs over deduplicated spans, orphans included, and a run
///   found there takes `f`'s sums. Such runs are rare, so `f` is usually empty and its scan
///   is skipped.
///
/// Plain SQL: DuckDB runs the same text in the benchmark.
pub fn runs_sql(table: &str, window: &str) -> String {
    let sums = RUN_SUMS
        .iter()
        .map(|(sum, c)| format!("{sum} AS {c}"))
        .collect::<Vec<_>>()
        .join(",\n      ");
    let pick = RUN_SUMS
        .iter()
        .map(|(_, c)| format!("CASE WHEN f.run_id IS NULL THEN a.{c} ELSE f.{c} END AS {c}"))
        .collect::<Vec<_>>()
        .join(",\n    ");
    format!(
        "SELECT a.run_id, a.workflow, a.agent_name, a.customer_id, a.outcome, a.start_time, a.end_time,
    {pick},
    coalesce(f.orphan_spans, 0) AS orphan_spans
  FROM (
    SELECT run_id, {sums}, sum(orphan) AS orphan_spans
    FROM (
      SELECT x.run_id, x.span_id,
        max(x.parent_span_id) AS parent_span_id, max(x.operation) AS operation,
        max(x.tool_name) AS tool_name, max(x.retry_attempt) AS retry_attempt,
        max(x.side_effect) AS side_effect, max(x.status_code) AS status_code,
        max(x.error_type) AS error_type, max(x.input_tokens) AS input_tokens,
        max(x.output_tokens) AS output_tokens, max(x.cache_read_tokens) AS cache_read_tokens,
        max(x.cache_write_tokens) AS cache_write_tokens,
        max(x.reasoning_tokens) AS reasoning_tokens,
        max(x.cost_inference_usd) AS cost_inference_usd, max(x.cost_tool_usd) AS cost_tool_usd,
        max(x.cost_review_usd) AS cost_review_usd,
        max(CASE WHEN k.n = 0 AND x.parent_span_id = k.id THEN 1 ELSE 0 END) AS orphan
      FROM (
        SELECT run_id, id, n FROM (
          SELECT run_id, id, sum(present) AS n FROM (
            SELECT run_id, span_id AS id, 1 AS present FROM {table} WHERE {window}
            UNION ALL
            SELECT run_id, parent_span_id AS id, 0 AS present FROM {table}
            WHERE parent_span_id IS NOT NULL AND {window}
            GROUP BY run_id, parent_span_id
          ) keys GROUP BY run_id, id
        ) counted WHERE n <> 1
      ) k JOIN {table} x ON x.run_id = k.run_id
      WHERE {window}
      GROUP BY x.run_id, x.span_id
    ) deduplicated GROUP BY run_id
  ) f RIGHT JOIN (
    SELECT run_id,
      coalesce(max(CASE WHEN parent_span_id IS NULL THEN workflow END), max(workflow)) AS workflow,
      coalesce(max(CASE WHEN parent_span_id IS NULL THEN agent_name END), max(agent_name)) AS agent_name,
      max(customer_id) AS customer_id,
      coalesce(max(CASE WHEN parent_span_id IS NULL THEN outcome END), max(outcome)) AS outcome,
      min(start_time) AS start_time,
      max(end_time) AS end_time,
      {sums}
    FROM {table} WHERE {window} GROUP BY run_id
  ) a ON f.run_id = a.run_id"
    )
}

/// `WITH s AS (...), runs AS (...)` for a window of `table`, followed by `body`. `s` holds
/// one row per (run, span), for the bodies that need spans (CTEs that a body does not use
/// are not computed).
pub fn with_runs(table: &str, window: &str, body: &str) -> String {
    format!(
        "WITH s AS ({}), runs AS ({}) {body}",
        spans_sql(table, window),
        runs_sql(table, window)
    )
}

/// The per-workflow sums that every workflow metric is a ratio of.
pub fn workflow_sums_sql(table: &str, window: &str) -> String {
    with_runs(
        table,
        window,
        "SELECT workflow,
           count(*) AS runs,
           sum(CASE WHEN outcome = 'success' THEN 1 ELSE 0 END) AS successful_runs,
           sum(CASE WHEN outcome IS NOT NULL THEN 1 ELSE 0 END) AS finished_runs,
           sum(coalesce(cost_inference_usd, 0) + coalesce(cost_tool_usd, 0) + coalesce(cost_review_usd, 0)) AS total_cost_usd,
           sum(tool_calls) AS tool_calls,
           sum(tool_errors) AS tool_errors,
           sum(retries) AS retries,
           sum(write_actions) AS write_actions,
           sum(failed_write_actions) AS failed_write_actions,
           sum(CASE WHEN roots = 1 AND orphan_spans = 0 THEN 1 ELSE 0 END) AS covered_runs,
           sum(unpriced_spans) AS unpriced_spans
         FROM runs GROUP BY workflow ORDER BY workflow",
    )
}

/// One workflow's metrics (`GET /api/v1/workflows`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct WorkflowMetrics {
    /// The workflow; `null` for runs that name none.
    pub workflow: Option<String>,
    /// Runs with a span in the window.
    pub runs: u64,
    /// Runs whose outcome is success.
    pub successful_runs: u64,
    /// Runs with an outcome (success, failure, escalated).
    pub finished_runs: u64,
    /// successful_runs / finished_runs.
    pub completion_rate: Option<f64>,
    /// Inference + tool + review cost of all runs, USD.
    pub total_cost_usd: f64,
    /// total_cost_usd / successful_runs.
    pub cost_per_success_usd: Option<f64>,
    /// Retried tool calls / tool calls.
    pub retry_rate: Option<f64>,
    /// Retried tool calls / runs.
    pub mean_retries_per_run: Option<f64>,
    /// Tool calls with status ERROR / tool calls.
    pub tool_error_rate: Option<f64>,
    /// Failed or incorrect write actions / write actions.
    pub critical_error_rate: Option<f64>,
    /// Runs with one root and no orphan span / runs.
    pub trace_coverage: Option<f64>,
    /// Tool calls.
    pub tool_calls: u64,
    /// Retried tool calls.
    pub retries: u64,
    /// Write actions.
    pub write_actions: u64,
    /// Failed or incorrect write actions.
    pub failed_write_actions: u64,
    /// Spans with tokens but no price (their cost is unknown, not zero).
    pub unpriced_spans: u64,
}

/// Runs a query and collects its batches.
pub(crate) async fn collect(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>, QueryError> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// The metrics of every workflow with runs in the window.
pub async fn workflows(
    ctx: &SessionContext,
    table: &str,
    window: &TimeWindow,
) -> Result<Vec<WorkflowMetrics>, QueryError> {
    let batches = collect(ctx, &workflow_sums_sql(table, &window.predicate())).await?;
    workflows_from_sums(&batches)
}

/// The rates of [`WorkflowMetrics`] from the sums of [`workflow_sums_sql`].
fn workflows_from_sums(
    batches: &[datafusion::arrow::array::RecordBatch],
) -> Result<Vec<WorkflowMetrics>, QueryError> {
    let mut out = Vec::new();
    for batch in batches {
        let c = Columns::new(batch);
        let (workflow, runs, successful, finished, cost) = (
            c.string("workflow")?,
            c.int("runs")?,
            c.int("successful_runs")?,
            c.int("finished_runs")?,
            c.float("total_cost_usd")?,
        );
        let (tool_calls, tool_errors, retries) = (
            c.int("tool_calls")?,
            c.int("tool_errors")?,
            c.int("retries")?,
        );
        let (writes, failed_writes, covered, unpriced) = (
            c.int("write_actions")?,
            c.int("failed_write_actions")?,
            c.int("covered_runs")?,
            c.int("unpriced_spans")?,
        );
        for row in 0..batch.num_rows() {
            let runs = runs.count(row);
            let successful_runs = successful.count(row);
            let finished_runs = finished.count(row);
            let total_cost_usd = cost.f64(row).unwrap_or(0.0);
            let tool_calls = tool_calls.count(row);
            let retries = retries.count(row);
            let write_actions = writes.count(row);
            let failed_write_actions = failed_writes.count(row);
            out.push(WorkflowMetrics {
                workflow: workflow.str(row).map(str::to_string),
                runs,
                successful_runs,
                finished_runs,
                completion_rate: ratio(successful_runs as f64, finished_runs as f64),
                total_cost_usd,
                cost_per_success_usd: ratio(total_cost_usd, successful_runs as f64),
                retry_rate: ratio(retries as f64, tool_calls as f64),
                mean_retries_per_run: ratio(retries as f64, runs as f64),
                tool_error_rate: ratio(tool_errors.count(row) as f64, tool_calls as f64),
                critical_error_rate: ratio(failed_write_actions as f64, write_actions as f64),
                trace_coverage: ratio(covered.count(row) as f64, runs as f64),
                tool_calls,
                retries,
                write_actions,
                failed_write_actions,
                unpriced_spans: unpriced.count(row),
            });
        }
    }
    Ok(out)
}

/// What `GET /api/v1/cost` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostGroup {
    /// The run's workflow.
    Workflow,
    /// The run's agent.
    Agent,
    /// The span's model (response model, else request model): inference cost only.
    Model,
    /// The run's customer.
    Customer,
    /// The UTC day the run started.
    Day,
}

impl std::str::FromStr for CostGroup {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, QueryError> {
        Ok(match s {
            "workflow" => Self::Workflow,
            "agent" => Self::Agent,
            "model" => Self::Model,
            "customer" => Self::Customer,
            "day" => Self::Day,
            other => {
                return Err(QueryError::BadRequest(format!(
                    "`group_by` must be one of workflow, agent, model, customer, day; not `{other}`"
                )))
            }
        })
    }
}

/// One row of `GET /api/v1/cost`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostRow {
    /// The group's key; `null` for what names none.
    pub key: Option<String>,
    /// Cost in USD: inference + tool + review (inference only by model).
    pub cost_usd: f64,
    /// Inference cost.
    pub cost_inference_usd: f64,
    /// Tool cost (0 by model).
    pub cost_tool_usd: f64,
    /// Review cost (0 by model).
    pub cost_review_usd: f64,
    /// Runs in the group (by model: runs that called the model).
    pub runs: u64,
    /// Successful runs among them.
    pub successful_runs: u64,
    /// cost_usd / successful_runs.
    pub cost_per_success_usd: Option<f64>,
    /// Input tokens, cached included.
    pub input_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
    /// Cache reads.
    pub cache_read_tokens: u64,
    /// Cache writes.
    pub cache_write_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Spans with tokens and no price.
    pub unpriced_spans: u64,
}

/// The SQL of `GET /api/v1/cost`.
pub fn cost_sql(table: &str, window: &str, group: CostGroup) -> String {
    let tokens = "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
        sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
        sum(reasoning_tokens) AS reasoning_tokens";
    let body = match group {
        CostGroup::Model =>
            "SELECT coalesce(s.response_model, s.request_model) AS key,
               sum(s.cost_inference_usd) AS cost_inference_usd,
               0.0 AS cost_tool_usd, 0.0 AS cost_review_usd,
               count(DISTINCT s.run_id) AS runs,
               count(DISTINCT CASE WHEN runs.outcome = 'success' THEN s.run_id END) AS successful_runs,
               sum(s.input_tokens) AS input_tokens, sum(s.output_tokens) AS output_tokens,
               sum(s.cache_read_tokens) AS cache_read_tokens, sum(s.cache_write_tokens) AS cache_write_tokens,
               sum(s.reasoning_tokens) AS reasoning_tokens,
               sum(CASE WHEN (s.input_tokens IS NOT NULL OR s.output_tokens IS NOT NULL) AND s.cost_inference_usd IS NULL THEN 1 ELSE 0 END) AS unpriced_spans
             FROM s JOIN runs ON runs.run_id = s.run_id
             WHERE s.request_model IS NOT NULL OR s.response_model IS NOT NULL
             GROUP BY 1 ORDER BY 1"
            .to_string(),
        _ => {
            let key = match group {
                CostGroup::Workflow => "workflow",
                CostGroup::Agent => "agent_name",
                CostGroup::Customer => "customer_id",
                _ => "CAST(CAST(start_time AS DATE) AS VARCHAR)",
            };
            format!(
                "SELECT {key} AS key,
                   sum(cost_inference_usd) AS cost_inference_usd,
                   sum(cost_tool_usd) AS cost_tool_usd,
                   sum(cost_review_usd) AS cost_review_usd,
                   count(*) AS runs,
                   sum(CASE WHEN outcome = 'success' THEN 1 ELSE 0 END) AS successful_runs,
                   {tokens},
                   sum(unpriced_spans) AS unpriced_spans
                 FROM runs GROUP BY 1 ORDER BY 1"
            )
        }
    };
    with_runs(table, window, &body)
}

/// Cost grouped by `group`.
pub async fn cost(
    ctx: &SessionContext,
    table: &str,
    window: &TimeWindow,
    group: CostGroup,
) -> Result<Vec<CostRow>, QueryError> {
    let batches = collect(ctx, &cost_sql(table, &window.predicate(), group)).await?;
    let mut out = Vec::new();
    for batch in &batches {
        let c = Columns::new(batch);
        let key = c.string("key")?;
        let (ci, ct, cr) = (
            c.float("cost_inference_usd")?,
            c.float("cost_tool_usd")?,
            c.float("cost_review_usd")?,
        );
        let (runs, successful) = (c.int("runs")?, c.int("successful_runs")?);
        let tokens = [
            c.int("input_tokens")?,
            c.int("output_tokens")?,
            c.int("cache_read_tokens")?,
            c.int("cache_write_tokens")?,
            c.int("reasoning_tokens")?,
        ];
        let unpriced = c.int("unpriced_spans")?;
        for row in 0..batch.num_rows() {
            let (i, t, r) = (
                ci.f64(row).unwrap_or(0.0),
                ct.f64(row).unwrap_or(0.0),
                cr.f64(row).unwrap_or(0.0),
            );
            let cost_usd = i + t + r;
            let successful_runs = successful.count(row);
            out.push(CostRow {
                key: key.str(row).map(str::to_string),
                cost_usd,
                cost_inference_usd: i,
                cost_tool_usd: t,
                cost_review_usd: r,
                runs: runs.count(row),
                successful_runs,
                cost_per_success_usd: ratio(cost_usd, successful_runs as f64),
                input_tokens: tokens[0].count(row),
                output_tokens: tokens[1].count(row),
                cache_read_tokens: tokens[2].count(row),
                cache_write_tokens: tokens[3].count(row),
                reasoning_tokens: tokens[4].count(row),
                unpriced_spans: unpriced.count(row),
            });
        }
    }
    Ok(out)
}

/// One gate of `GET /api/v1/workflows/{workflow}/gates`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    /// `completion_rate`, `critical_error_rate`, `cost_per_success_usd`, `trace_coverage`.
    pub name: &'static str,
    /// The measured value; `null` when there is nothing to measure.
    pub value: Option<f64>,
    /// The threshold; `null` when none is configured.
    pub threshold: Option<f64>,
    /// `min` (value must be at least the threshold) or `max` (at most).
    pub comparison: &'static str,
    /// Whether the gate passes: a value, a threshold, enough runs, and the comparison holds.
    pub pass: bool,
    /// The count the value is measured over (finished runs, write actions, successful runs
    /// or runs).
    pub sample_size: u64,
    /// Why the gate fails when it is not the comparison (no threshold, too few runs...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The gates of one workflow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gates {
    /// The workflow.
    pub workflow: String,
    /// Every gate passes.
    pub ready: bool,
    /// The gates.
    pub gates: Vec<Gate>,
}

/// The graduation gates of `metrics` against `thresholds`.
pub fn gates(workflow: &str, metrics: Option<&WorkflowMetrics>, t: &GateThresholds) -> Gates {
    let finished = metrics.map_or(0, |m| m.finished_runs);
    let enough = finished >= t.min_runs;
    let gate = |name,
                value: Option<f64>,
                threshold: Option<f64>,
                max: bool,
                sample: u64,
                zero_ok: bool| {
        let reason = if threshold.is_none() {
            Some(format!(
                "no threshold configured: set gates.defaults.{}",
                threshold_key(name)
            ))
        } else if !enough {
            Some(format!(
                "{finished} finished runs, fewer than the {} the gates need",
                t.min_runs
            ))
        } else if value.is_none() && !zero_ok {
            Some("nothing to measure in the window".to_string())
        } else {
            None
        };
        let holds = match (value, threshold) {
            (Some(v), Some(th)) => {
                if max {
                    v <= th
                } else {
                    v >= th
                }
            }
            // No write actions: no critical error can have happened.
            (None, Some(_)) => zero_ok,
            _ => false,
        };
        Gate {
            name,
            value,
            threshold,
            comparison: if max { "max" } else { "min" },
            pass: reason.is_none() && holds,
            sample_size: sample,
            reason,
        }
    };
    let m = metrics;
    let list = vec![
        gate(
            "completion_rate",
            m.and_then(|m| m.completion_rate),
            Some(t.min_completion_rate),
            false,
            finished,
            false,
        ),
        gate(
            "critical_error_rate",
            m.and_then(|m| m.critical_error_rate),
            Some(t.max_critical_error_rate),
            true,
            m.map_or(0, |m| m.write_actions),
            true,
        ),
        gate(
            "cost_per_success_usd",
            m.and_then(|m| m.cost_per_success_usd),
            t.max_cost_per_success_usd,
            true,
            m.map_or(0, |m| m.successful_runs),
            false,
        ),
        gate(
            "trace_coverage",
            m.and_then(|m| m.trace_coverage),
            Some(t.min_trace_coverage),
            false,
            m.map_or(0, |m| m.runs),
            false,
        ),
    ];
    Gates {
        workflow: workflow.to_string(),
        ready: list.iter().all(|g| g.pass),
        gates: list,
    }
}

fn threshold_key(gate: &str) -> &'static str {
    match gate {
        "completion_rate" => "min_completion_rate",
        "critical_error_rate" => "max_critical_error_rate",
        "cost_per_success_usd" => "max_cost_per_success_usd",
        _ => "min_trace_coverage",
    }
}

/// One tool of `GET /api/v1/tools`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolMetrics {
    /// The tool.
    pub tool: String,
    /// Calls.
    pub calls: u64,
    /// Calls with status ERROR.
    pub errors: u64,
    /// errors / calls.
    pub error_rate: Option<f64>,
    /// Calls that were retries.
    pub retries: u64,
    /// Write actions among the calls.
    pub write_actions: u64,
    /// Latency percentiles, milliseconds (t-digest estimates).
    pub latency_ms_p50: Option<f64>,
    /// 95th percentile.
    pub latency_ms_p95: Option<f64>,
    /// 99th percentile.
    pub latency_ms_p99: Option<f64>,
    /// Tool cost, USD.
    pub cost_usd: f64,
}

/// Per-tool calls, errors, retries and latency.
pub async fn tools(
    ctx: &SessionContext,
    table: &str,
    window: &TimeWindow,
) -> Result<Vec<ToolMetrics>, QueryError> {
    let sql = format!(
        "WITH s AS ({}) SELECT tool_name,
           count(*) AS calls,
           sum(CASE WHEN status_code = 'error' THEN 1 ELSE 0 END) AS errors,
           sum(CASE WHEN retry_attempt > 0 THEN 1 ELSE 0 END) AS retries,
           sum(CASE WHEN side_effect = 'write' THEN 1 ELSE 0 END) AS write_actions,
           approx_percentile_cont(duration_ns / 1e6, 0.5) AS p50,
           approx_percentile_cont(duration_ns / 1e6, 0.95) AS p95,
           approx_percentile_cont(duration_ns / 1e6, 0.99) AS p99,
           sum(cost_tool_usd) AS cost_usd
         FROM s WHERE tool_name IS NOT NULL GROUP BY tool_name ORDER BY tool_name",
        spans_sql(table, &window.predicate())
    );
    let batches = collect(ctx, &sql).await?;
    let mut out = Vec::new();
    for batch in &batches {
        let c = Columns::new(batch);
        let (tool, calls, errors, retries, writes) = (
            c.string("tool_name")?,
            c.int("calls")?,
            c.int("errors")?,
            c.int("retries")?,
            c.int("write_actions")?,
        );
        let (p50, p95, p99, cost) = (
            c.float("p50")?,
            c.float("p95")?,
            c.float("p99")?,
            c.float("cost_usd")?,
        );
        for row in 0..batch.num_rows() {
            let (calls, errors) = (calls.count(row), errors.count(row));
            out.push(ToolMetrics {
                tool: tool.str(row).unwrap_or_default().to_string(),
                calls,
                errors,
                error_rate: ratio(errors as f64, calls as f64),
                retries: retries.count(row),
                write_actions: writes.count(row),
                latency_ms_p50: p50.f64(row),
                latency_ms_p95: p95.f64(row),
                latency_ms_p99: p99.f64(row),
                cost_usd: cost.f64(row).unwrap_or(0.0),
            });
        }
    }
    Ok(out)
}

/// One (agent, tool) pair of `GET /api/v1/agents/capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capability {
    /// The agent of the run (its root span's agent).
    pub agent: Option<String>,
    /// The tool it called.
    pub tool: String,
    /// Write actions performed through the tool.
    pub write_actions: u64,
    /// Of which failed or were marked incorrect.
    pub failed_write_actions: u64,
    /// Distinct runs that wrote through it.
    pub runs: u64,
    /// Workflows those runs belong to.
    pub workflows: Vec<String>,
    /// The last such write (RFC 3339).
    pub last_write: Option<String>,
}

/// Which agents performed write actions on which tools, with counts.
pub async fn capabilities(
    ctx: &SessionContext,
    table: &str,
    window: &TimeWindow,
) -> Result<Vec<Capability>, QueryError> {
    let sql = with_runs(
        table,
        &window.predicate(),
        "SELECT runs.agent_name AS agent, s.tool_name AS tool,
           count(*) AS write_actions,
           sum(CASE WHEN s.status_code = 'error' OR s.error_type IS NOT NULL THEN 1 ELSE 0 END) AS failed_write_actions,
           count(DISTINCT s.run_id) AS runs,
           string_agg(DISTINCT runs.workflow, '\n') AS workflows,
           max(s.start_time) AS last_write
         FROM s JOIN runs ON runs.run_id = s.run_id
         WHERE s.side_effect = 'write' AND s.tool_name IS NOT NULL
         GROUP BY 1, 2 ORDER BY write_actions DESC, agent, tool",
    );
    let batches = collect(ctx, &sql).await?;
    let mut out = Vec::new();
    for batch in &batches {
        let c = Columns::new(batch);
        let (agent, tool, writes, failed, runs, workflows, last) = (
            c.string("agent")?,
            c.string("tool")?,
            c.int("write_actions")?,
            c.int("failed_write_actions")?,
            c.int("runs")?,
            c.string("workflows")?,
            c.micros("last_write")?,
        );
        for row in 0..batch.num_rows() {
            let mut names: Vec<String> = workflows
                .str(row)
                .unwrap_or_default()
                .split('\n')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect();
            names.sort();
            out.push(Capability {
                agent: agent.str(row).map(str::to_string),
                tool: tool.str(row).unwrap_or_default().to_string(),
                write_actions: writes.count(row),
                failed_write_actions: failed.count(row),
                runs: runs.count(row),
                workflows: names,
                last_write: last.i64(row).and_then(|us| {
                    chrono::DateTime::from_timestamp_micros(us)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                }),
            });
        }
    }
    Ok(out)
}
