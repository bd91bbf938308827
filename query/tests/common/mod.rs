//! A golden dataset: agent runs described in plain Rust, written to a real lake through the
//! processor (normalise, price) and the lake writer, with their expected metrics computed
//! here, independently of DataFusion.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runledger_lake::{sort_for_lake, LakeConfig, SpanTable};
use runledger_processor::{Normalizer, Pricer, PricingConfig, ProcessorConfig};
use runledger_schemas::Tier;

/// The first run starts here; runs follow every 7 minutes, crossing hours and a day.
pub const BASE_SECS: i64 = 1_773_136_800; // 2026-03-10T10:00:00Z
pub const WORKFLOWS: [&str; 3] = ["refunds", "triage", "deploys"];
/// USD per hour of review in the golden config: one dollar a second, so costs stay dyadic.
pub const REVIEW_HOURLY_USD: f64 = 3600.0;

#[derive(Debug, Clone)]
pub struct Tool {
    pub name: &'static str,
    pub write: bool,
    pub error: bool,
    pub incorrect: bool,
    pub retry: bool,
    /// Explicit `runledger.cost.usd`, a multiple of 1/64 so that sums are exact.
    pub cost: f64,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub workflow: &'static str,
    pub agent: String,
    pub customer: String,
    /// None: the root span never arrived.
    pub outcome: Option<&'static str>,
    pub start_secs: i64,
    pub llm_costs: Vec<f64>,
    /// LLM calls on a model no table prices, with tokens and no explicit cost.
    pub unpriced_calls: usize,
    pub tools: Vec<Tool>,
    pub review_seconds: Option<f64>,
    /// One span whose parent is not in the run.
    pub orphan: bool,
    /// One span is sent twice (a client's retried export).
    pub duplicate: bool,
}

impl Run {
    pub fn cost(&self) -> f64 {
        self.llm_costs.iter().sum::<f64>()
            + self.tools.iter().map(|t| t.cost).sum::<f64>()
            + self
                .review_seconds
                .map_or(0.0, |s| s * REVIEW_HOURLY_USD / 3600.0)
    }
}

fn dyadic(rng: &mut ChaCha8Rng, max_64ths: u32) -> f64 {
    rng.random_range(0..=max_64ths) as f64 / 64.0
}

pub fn golden_runs(seed: u64, n: usize) -> Vec<Run> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let workflow = WORKFLOWS[rng.random_range(0..WORKFLOWS.len())];
            let outcome = match rng.random_range(0..20) {
                0 => None,
                1..=2 => Some("failure"),
                3 => Some("escalated"),
                _ => Some("success"),
            };
            let tools = (0..rng.random_range(0..5))
                .map(|_| {
                    let write = rng.random_bool(0.4);
                    Tool {
                        name: if write {
                            "issue_refund"
                        } else {
                            "lookup_order"
                        },
                        write,
                        error: rng.random_bool(0.1),
                        incorrect: write && rng.random_bool(0.05),
                        retry: rng.random_bool(0.15),
                        cost: dyadic(&mut rng, 8),
                    }
                })
                .collect();
            Run {
                id: format!("run-{seed}-{i:05}"),
                workflow,
                agent: format!("{workflow}-agent"),
                customer: format!("cust-{}", rng.random_range(0..7)),
                outcome,
                start_secs: BASE_SECS + i as i64 * 7 * 60,
                llm_costs: (0..rng.random_range(1..4))
                    .map(|_| dyadic(&mut rng, 64))
                    .collect(),
                unpriced_calls: usize::from(rng.random_bool(0.1)),
                tools,
                review_seconds: rng.random_bool(0.2).then(|| dyadic(&mut rng, 128)),
                orphan: rng.random_bool(0.05),
                duplicate: rng.random_bool(0.1),
            }
        })
        .collect()
}

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
pub fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// The external ref that the `k`th tool call of a run leaves when it is a successful write.
pub fn external_ref(run_id: &str, k: usize) -> String {
    format!("RF-{run_id}-{k}")
}

/// The run's spans, as an SDK would send them.
pub fn spans_of(run: &Run, index: usize) -> Vec<Span> {
    let trace_id: Vec<u8> = (0..16)
        .map(|b| (index as u8).wrapping_add(b))
        .chain([])
        .collect();
    let mut trace_id = trace_id;
    trace_id[0] = (index >> 8) as u8;
    trace_id[1] = index as u8;
    let root_id = vec![1, 0, 0, 0, 0, 0, (index >> 8) as u8, index as u8];
    let nanos = |secs: i64, offset_ms: i64| ((secs * 1000 + offset_ms) * 1_000_000) as u64;
    let mut next = 2u8;
    let mut child =
        |name: &str, offset_ms: i64, duration_ms: i64, attrs: Vec<KeyValue>, error: bool| {
            let id = next;
            next += 1;
            Span {
                trace_id: trace_id.clone(),
                span_id: vec![id, 0, 0, 0, 0, 0, (index >> 8) as u8, index as u8],
                parent_span_id: root_id.clone(),
                name: name.into(),
                start_time_unix_nano: nanos(run.start_secs, offset_ms),
                end_time_unix_nano: nanos(run.start_secs, offset_ms + duration_ms),
                attributes: [vec![kv("runledger.run.id", s(&run.id))], attrs].concat(),
                status: error.then(|| Status {
                    code: StatusCode::Error as i32,
                    message: "failed".into(),
                }),
                ..Default::default()
            }
        };
    let mut spans = Vec::new();
    let mut offset = 100;
    for cost in &run.llm_costs {
        spans.push(child(
            "chat gpt-4o",
            offset,
            400,
            vec![
                kv("gen_ai.operation.name", s("chat")),
                kv("gen_ai.request.model", s("gpt-4o")),
                kv("gen_ai.usage.input_tokens", Value::IntValue(1000)),
                kv("gen_ai.usage.output_tokens", Value::IntValue(100)),
                kv("gen_ai.usage.cost", Value::DoubleValue(*cost)),
            ],
            false,
        ));
        offset += 500;
    }
    for _ in 0..run.unpriced_calls {
        spans.push(child(
            "chat in-house",
            offset,
            100,
            vec![
                kv("gen_ai.operation.name", s("chat")),
                kv("gen_ai.request.model", s("in-house-llm-7")),
                kv("gen_ai.usage.input_tokens", Value::IntValue(10)),
            ],
            false,
        ));
        offset += 200;
    }
    for (k, tool) in run.tools.iter().enumerate() {
        let mut attrs = vec![
            kv("gen_ai.operation.name", s("execute_tool")),
            kv("gen_ai.tool.name", s(tool.name)),
            kv(
                "runledger.action.side_effect",
                s(if tool.write { "write" } else { "read" }),
            ),
            kv("runledger.cost.usd", Value::DoubleValue(tool.cost)),
            kv(
                "runledger.retry.attempt",
                Value::IntValue(i64::from(tool.retry)),
            ),
        ];
        if tool.incorrect {
            attrs.push(kv("runledger.action.correct", Value::BoolValue(false)));
        }
        if tool.write && !tool.error {
            attrs.push(kv("runledger.action.ref", s(&external_ref(&run.id, k))));
        }
        spans.push(child(
            &format!("execute_tool {}", tool.name),
            offset,
            250,
            attrs,
            tool.error,
        ));
        offset += 300;
    }
    if let Some(seconds) = run.review_seconds {
        spans.push(child(
            "human review",
            offset,
            1000,
            vec![
                kv("gen_ai.operation.name", s("human_review")),
                kv("runledger.review.seconds", Value::DoubleValue(seconds)),
            ],
            false,
        ));
        offset += 1000;
    }
    if run.orphan {
        let mut span = child("lost parent", offset, 10, vec![], false);
        span.parent_span_id = vec![0xee; 8];
        spans.push(span);
    }
    if let Some(outcome) = run.outcome {
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: root_id.clone(),
            name: format!("invoke_agent {}", run.agent),
            start_time_unix_nano: nanos(run.start_secs, 0),
            end_time_unix_nano: nanos(run.start_secs, offset + 50),
            attributes: vec![
                kv("runledger.run.id", s(&run.id)),
                kv("gen_ai.operation.name", s("invoke_agent")),
                kv("gen_ai.agent.name", s(&run.agent)),
                kv("gen_ai.workflow.name", s(run.workflow)),
                kv("runledger.run.outcome", s(outcome)),
                kv("customer.id", s(&run.customer)),
            ],
            ..Default::default()
        });
    } else {
        // Without its root, the run still names its workflow on a child.
        if let Some(first) = spans.first_mut() {
            first
                .attributes
                .push(kv("gen_ai.workflow.name", s(run.workflow)));
        }
    }
    if run.duplicate {
        let copy = spans[0].clone();
        spans.push(copy);
    }
    spans
}

pub fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("golden-service"))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Writes the runs to the redacted tier of `data_dir` (and the raw tier, unredacted: the
/// metrics do not depend on redaction), in a few commits, as a collector would.
pub async fn write_lake(data_dir: &Path, runs: &[Run]) {
    write_lake_as(data_dir, runs, "golden").await
}

/// [`write_lake`] as the writer `app` (commits are idempotent per writer and commit number).
pub async fn write_lake_as(data_dir: &Path, runs: &[Run], app: &str) {
    let normalizer = Normalizer::new(&ProcessorConfig::default()).unwrap();
    let pricer = Pricer::new(&PricingConfig {
        review_hourly_usd: Some(REVIEW_HOURLY_USD),
        ..Default::default()
    })
    .unwrap();
    for tier in [Tier::Redacted, Tier::Raw] {
        let mut table = SpanTable::open_or_create(data_dir, tier, &LakeConfig::default())
            .await
            .unwrap();
        for (commit, chunk) in runs.chunks(50).enumerate() {
            let spans: Vec<Span> = chunk
                .iter()
                .enumerate()
                .flat_map(|(i, run)| spans_of(run, commit * 50 + i))
                .collect();
            let normalized = normalizer.normalize(&request(spans), SystemTime::now());
            assert_eq!(normalized.rejected_spans, 0, "{}", normalized.error_message);
            let batch = normalized.batch.unwrap();
            let (priced, _) = pricer.price_batch(&batch).unwrap();
            let sorted = sort_for_lake(&[priced]).unwrap();
            table
                .append(sorted.as_slice(), app, commit as i64)
                .await
                .unwrap();
        }
    }
}

/// The expected per-workflow figures, from the run descriptions alone.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Expected {
    pub runs: u64,
    pub successful_runs: u64,
    pub finished_runs: u64,
    pub total_cost_usd: f64,
    pub tool_calls: u64,
    pub tool_errors: u64,
    pub retries: u64,
    pub write_actions: u64,
    pub failed_write_actions: u64,
    pub covered_runs: u64,
    pub unpriced_spans: u64,
}

pub fn expected(runs: &[Run]) -> BTreeMap<&'static str, Expected> {
    let mut out: BTreeMap<&'static str, Expected> = BTreeMap::new();
    for run in runs {
        let e = out.entry(run.workflow).or_default();
        e.runs += 1;
        e.successful_runs += u64::from(run.outcome == Some("success"));
        e.finished_runs += u64::from(run.outcome.is_some());
        e.total_cost_usd += run.cost();
        for t in &run.tools {
            e.tool_calls += 1;
            e.tool_errors += u64::from(t.error);
            e.retries += u64::from(t.retry);
            e.write_actions += u64::from(t.write);
            e.failed_write_actions += u64::from(t.write && (t.error || t.incorrect));
        }
        e.covered_runs += u64::from(run.outcome.is_some() && !run.orphan);
        e.unpriced_spans += run.unpriced_calls as u64;
    }
    out
}
