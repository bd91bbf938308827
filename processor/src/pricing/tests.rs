use super::*;
use crate::test_support::{iv, kv, request_of, span_at, sv};
use crate::{Normalizer, ProcessorConfig};
use arrow::array::Array;
use arrow::datatypes::Float64Type;
use chrono::{NaiveDate, TimeZone, Utc};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use std::time::SystemTime;

fn nanos(date: &str, hour: u32) -> u64 {
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    Utc.from_utc_datetime(&day.and_hms_opt(hour, 0, 0).unwrap())
        .timestamp_nanos_opt()
        .unwrap() as u64
}

fn micros(date: &str) -> i64 {
    (nanos(date, 12) / 1000) as i64
}

fn builtin() -> Pricer {
    Pricer::from_parts(BUILTIN_PRICES, None, &PricingConfig::default()).unwrap()
}

/// Normalises and prices spans, returning the three cost columns by row.
fn price(
    pricer: &Pricer,
    spans: Vec<(u64, Vec<KeyValue>)>,
) -> (Vec<[Option<f64>; 3]>, PricingTotals) {
    let spans = spans
        .into_iter()
        .enumerate()
        .map(|(i, (start, attrs))| span_at(i as u8 + 1, start, attrs))
        .collect();
    let normalizer = Normalizer::new(&ProcessorConfig::default()).unwrap();
    let batch = normalizer
        .normalize(&request_of(spans), SystemTime::UNIX_EPOCH)
        .batch
        .unwrap();
    let (priced, totals) = pricer.price_batch(&batch).unwrap();
    let column = |name| {
        priced
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone()
    };
    let (inference, tool, review) = (
        column(col::COST_INFERENCE_USD),
        column(col::COST_TOOL_USD),
        column(col::COST_REVIEW_USD),
    );
    let opt = |a: &arrow::array::Float64Array, i| (!a.is_null(i)).then(|| a.value(i));
    let versions = priced
        .column_by_name(col::PRICE_VERSION)
        .unwrap()
        .as_string::<i32>();
    assert!(versions.iter().all(|v| v == Some(pricer.version())));
    let rows = (0..priced.num_rows())
        .map(|i| [opt(&inference, i), opt(&tool, i), opt(&review, i)])
        .collect();
    (rows, totals)
}

fn chat(model: &str, tokens: &[(&str, i64)]) -> Vec<KeyValue> {
    let mut attrs = vec![
        kv("gen_ai.operation.name", sv("chat")),
        kv("gen_ai.request.model", sv(model)),
    ];
    attrs.extend(tokens.iter().map(|(k, n)| kv(k, iv(*n))));
    attrs
}

fn assert_close(actual: Option<f64>, expected: f64) {
    let actual = actual.expect("a cost");
    assert!(
        (actual - expected).abs() < 1e-12,
        "cost {actual} != expected {expected}"
    );
}

#[test]
fn the_builtin_table_parses_and_covers_the_major_providers() {
    let pricer = builtin();
    let today = micros("2026-11-01");
    for model in [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "gpt-4.1-nano",
        "gpt-5",
        "o3-mini",
        "o4-mini",
        "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5",
        "claude-opus-4-1-20250805",
        "gemini-2.5-pro",
        "gemini-2.5-flash-lite",
        "mistral-large-2411",
        "llama-3.3-70b-versatile",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "meta.llama3-3-70b-instruct-v1:0",
        "openai/gpt-4o-mini",
        "models/gemini-2.5-flash",
        "deepseek-chat",
    ] {
        assert!(
            pricer.table().lookup(model, today).is_some(),
            "{model} has no price"
        );
    }
    assert_eq!(pricer.version(), "2026-11-01");
}

#[test]
fn cached_tokens_are_priced_once_at_their_own_rate() {
    let pricer = builtin();
    let start = nanos("2025-12-01", 10);
    // gpt-4o-mini: 0.15 input, 0.60 output, 0.075 cache read per million.
    let (rows, totals) = price(
        &pricer,
        vec![(
            start,
            chat(
                "gpt-4o-mini",
                &[
                    ("gen_ai.usage.input_tokens", 1_000_000),
                    ("gen_ai.usage.cache_read.input_tokens", 800_000),
                    ("gen_ai.usage.output_tokens", 100_000),
                ],
            ),
        )],
    );
    // 200k uncached * 0.15 + 800k cached * 0.075 + 100k * 0.60 = 0.03 + 0.06 + 0.06.
    assert_close(rows[0][0], 0.15);
    assert_eq!(
        totals,
        PricingTotals {
            priced: 1,
            explicit: 0,
            unpriced: 0
        }
    );

    // Anthropic: reads at 0.30, writes at 3.75, uncached input at 3.00 (sonnet 4.5).
    let (rows, _) = price(
        &pricer,
        vec![(
            start,
            chat(
                "claude-sonnet-4-5",
                &[
                    ("gen_ai.usage.input_tokens", 10_000),
                    ("gen_ai.usage.cache_read.input_tokens", 6_000),
                    ("gen_ai.usage.cache_creation.input_tokens", 3_000),
                    ("gen_ai.usage.output_tokens", 1_000),
                ],
            ),
        )],
    );
    let expected = (1_000.0 * 3.0 + 6_000.0 * 0.30 + 3_000.0 * 3.75 + 1_000.0 * 15.0) / 1e6;
    assert_close(rows[0][0], expected);
    // Never the double count: input priced in full plus the cache on top.
    let double = (10_000.0 * 3.0 + 6_000.0 * 0.30 + 3_000.0 * 3.75 + 1_000.0 * 15.0) / 1e6;
    assert!(rows[0][0].unwrap() < double);
}

#[test]
fn an_emitter_that_reports_input_without_the_cache_is_not_clamped_to_zero() {
    let pricer = builtin();
    let usage = Usage {
        input: Some(500),
        cache_read: Some(4_000),
        output: Some(0),
        ..Default::default()
    };
    let cost = pricer
        .inference_cost("claude-haiku-4-5", micros("2025-12-01"), &usage)
        .unwrap();
    assert_close(Some(cost), (500.0 * 1.0 + 4_000.0 * 0.10) / 1e6);
}

#[test]
fn reasoning_tokens_are_part_of_output_and_priced_once() {
    let file = r#"
        version = "t"
        [[model]]
        match = "thinker"
        effective_from = "2025-01-01"
        input_per_mtok = 1.0
        output_per_mtok = 4.0
        reasoning_per_mtok = 2.0
    "#;
    let pricer = Pricer::from_parts(file, None, &PricingConfig::default()).unwrap();
    let usage = Usage {
        input: Some(1_000_000),
        output: Some(1_000_000),
        reasoning: Some(750_000),
        ..Default::default()
    };
    let cost = pricer
        .inference_cost("thinker", micros("2025-06-01"), &usage)
        .unwrap();
    assert_close(Some(cost), 1.0 + 0.25 * 4.0 + 0.75 * 2.0);
    // Without a reasoning price, reasoning is output: the split does not change the sum.
    let cost = builtin()
        .inference_cost("o4-mini", micros("2025-06-01"), &usage)
        .unwrap();
    assert_close(Some(cost), 1.10 + 4.40);
}

#[test]
fn the_price_in_effect_at_the_span_start_applies() {
    let pricer = builtin();
    let tokens = [
        ("gen_ai.usage.input_tokens", 1_000_000),
        ("gen_ai.usage.output_tokens", 0),
    ];
    let (rows, _) = price(
        &pricer,
        vec![
            (nanos("2024-09-30", 23), chat("gpt-4o-2024-08-06", &tokens)),
            (nanos("2024-10-01", 0), chat("gpt-4o-2024-08-06", &tokens)),
            // Before the model's first price: unpriced, not the next pattern's price.
            (nanos("2024-07-01", 0), chat("gpt-4o-mini", &tokens)),
        ],
    );
    assert_close(rows[0][0], 5.0);
    assert_close(rows[1][0], 2.5);
    assert_eq!(rows[2][0], None);
}

#[test]
fn long_prompts_are_priced_at_the_tier_above_the_threshold() {
    let pricer = builtin();
    let at = micros("2025-12-01");
    let usage = |input| Usage {
        input: Some(input),
        output: Some(1_000),
        ..Default::default()
    };
    let short = pricer
        .inference_cost("gemini-2.5-pro", at, &usage(200_000))
        .unwrap();
    let long = pricer
        .inference_cost("gemini-2.5-pro", at, &usage(200_001))
        .unwrap();
    assert_close(Some(short), (200_000.0 * 1.25 + 1_000.0 * 10.0) / 1e6);
    assert_close(Some(long), (200_001.0 * 2.50 + 1_000.0 * 15.0) / 1e6);
}

#[test]
fn an_explicit_cost_wins_and_an_unknown_model_is_unpriced_not_free() {
    let pricer = builtin();
    let start = nanos("2025-12-01", 10);
    let mut explicit = chat("gpt-4o", &[("gen_ai.usage.input_tokens", 1_000_000)]);
    explicit.push(kv("gen_ai.usage.cost", sv("0.42")));
    let mut explicit_unknown = chat("in-house-model", &[("gen_ai.usage.input_tokens", 10)]);
    explicit_unknown.push(kv("llm.cost.total", Value::DoubleValue(0.01)));
    let (rows, totals) = price(
        &pricer,
        vec![
            (start, explicit),
            (start, explicit_unknown),
            (
                start,
                chat("in-house-model", &[("gen_ai.usage.input_tokens", 10)]),
            ),
            // No tokens: nothing to price, and not counted as unpriced.
            (start, chat("in-house-model", &[])),
        ],
    );
    assert_close(rows[0][0], 0.42);
    assert_close(rows[1][0], 0.01);
    assert_eq!(rows[2][0], None);
    assert_eq!(rows[3][0], None);
    assert_eq!(
        totals,
        PricingTotals {
            priced: 0,
            explicit: 2,
            unpriced: 1
        }
    );
}

#[test]
fn user_entries_take_precedence_and_exact_names_beat_globs() {
    let user = r#"
        [[model]]
        match = "gpt-4o*"
        effective_from = "2020-01-01"
        input_per_mtok = 1.0
        output_per_mtok = 1.0

        [[model]]
        match = "GPT-4o-2024-08-06"
        effective_from = "2020-01-01"
        input_per_mtok = 7.0
        output_per_mtok = 7.0
    "#;
    let pricer = Pricer::from_parts(BUILTIN_PRICES, Some(user), &PricingConfig::default()).unwrap();
    let usage = Usage {
        input: Some(1_000_000),
        ..Default::default()
    };
    let at = micros("2025-12-01");
    assert_close(
        pricer.inference_cost("openai/gpt-4o-2024-08-06", at, &usage),
        7.0,
    );
    assert_close(pricer.inference_cost("gpt-4o", at, &usage), 1.0);
    // The longer built-in glob still beats the user's shorter one.
    assert_close(pricer.inference_cost("gpt-4o-mini", at, &usage), 0.15);
    assert!(
        pricer.version().starts_with("2026-11-01+"),
        "{}",
        pricer.version()
    );
}

#[test]
fn bad_price_files_are_rejected_with_the_entry_named() {
    let bad = [
        ("[[model]]\nmatch = \"x\"\neffective_from = \"2025-13-01\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0", "effective_from"),
        ("[[model]]\nmatch = \"x\"\neffective_from = \"2025-01-01\"\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0", "non-negative"),
        ("[[model]]\nmatch = \"x\"\neffective_from = \"2025-01-01\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nprice = 3", "unknown field"),
        ("[[model]]\nmatch = \"x\"\neffective_from = \"2025-01-01\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n[[model]]\nmatch = \"x\"\neffective_from = \"2025-01-01\"\ninput_per_mtok = 2.0\noutput_per_mtok = 1.0", "two entries"),
    ];
    for (text, expected) in bad {
        let error =
            Pricer::from_parts(BUILTIN_PRICES, Some(text), &PricingConfig::default()).unwrap_err();
        assert!(error.contains(expected), "{error}");
        assert!(error.contains("pricing.file"), "{error}");
    }
}

#[test]
fn tool_and_review_costs_come_from_attributes_or_config() {
    let config = PricingConfig {
        review_hourly_usd: Some(90.0),
        tools: [("search_*".to_string(), 0.005)].into_iter().collect(),
        ..Default::default()
    };
    let pricer = Pricer::from_parts(BUILTIN_PRICES, None, &config).unwrap();
    assert_ne!(
        pricer.version(),
        builtin().version(),
        "rates are part of the version"
    );
    let start = nanos("2025-12-01", 10);
    let tool = |name: &str| {
        vec![
            kv("gen_ai.operation.name", sv("execute_tool")),
            kv("gen_ai.tool.name", sv(name)),
        ]
    };
    let mut paid = tool("issue_refund");
    paid.push(kv("runledger.cost.usd", Value::DoubleValue(0.25)));
    let review = vec![
        kv("gen_ai.operation.name", sv("human_review")),
        kv("runledger.review.seconds", iv(120)),
    ];
    let (rows, totals) = price(
        &pricer,
        vec![
            (start, paid),
            (start, tool("search_kb")),
            (start, tool("lookup")),
            (start, review),
        ],
    );
    assert_eq!(rows[0], [None, Some(0.25), None]);
    assert_eq!(rows[1], [None, Some(0.005), None]);
    assert_eq!(rows[2], [None, None, None]);
    assert_close(rows[3][2], 3.0);
    assert_eq!(
        totals.explicit, 0,
        "a tool's own cost is not an inference cost"
    );
}
