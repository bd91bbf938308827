use super::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::Event, ResourceSpans, ScopeSpans, Span, Status};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn span(id: u8, parent: Option<u8>, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("span-{id}"),
        start_time_unix_nano: 1_700_000_000_123_456_789,
        end_time_unix_nano: 1_700_000_001_000_000_000,
        attributes,
        ..Default::default()
    }
}

fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "test-scope".into(),
                    version: "1.2".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn normalize(req: &ExportTraceServiceRequest) -> NormalizedBatch {
    let config = ProcessorConfig {
        write_tools: vec!["issue_*".into()],
        ..Default::default()
    };
    Normalizer::new(&config)
        .unwrap()
        .normalize(req, SystemTime::UNIX_EPOCH)
}

fn str_col(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    let col = batch.column_by_name(name).unwrap().as_string::<i32>();
    col.is_valid(row).then(|| col.value(row).to_string())
}

fn i64_col(batch: &RecordBatch, name: &str, row: usize) -> Option<i64> {
    let col = batch
        .column_by_name(name)
        .unwrap()
        .as_primitive::<Int64Type>();
    col.is_valid(row).then(|| col.value(row))
}

#[test]
fn genai_keys_win_over_fallbacks_whatever_their_order() {
    let req = request(
        vec![kv("service.name", s("svc"))],
        vec![span(
            1,
            Some(9),
            vec![
                kv("gen_ai.usage.prompt_tokens", Value::IntValue(1)),
                kv("gen_ai.usage.input_tokens", Value::IntValue(100)),
                kv("llm.token_count.completion", Value::StringValue("5".into())),
                kv("gen_ai.system", s("openai")),
                kv("gen_ai.provider.name", s("anthropic")),
                kv("llm.model_name", s("m-openinference")),
                kv("gen_ai.response.model", s("m-response")),
                kv(
                    "gen_ai.usage.cache_creation_input_tokens",
                    Value::IntValue(3),
                ),
                kv("gen_ai.usage.cache_read.input_tokens", Value::IntValue(40)),
                kv("gen_ai.usage.reasoning_tokens", Value::IntValue(2)),
            ],
        )],
    );
    let out = normalize(&req);
    let b = out.batch.unwrap();
    assert_eq!(i64_col(&b, "input_tokens", 0), Some(100));
    assert_eq!(i64_col(&b, "output_tokens", 0), Some(5));
    assert_eq!(i64_col(&b, "cache_read_tokens", 0), Some(40));
    assert_eq!(i64_col(&b, "cache_write_tokens", 0), Some(3));
    assert_eq!(i64_col(&b, "reasoning_tokens", 0), Some(2));
    assert_eq!(str_col(&b, "provider", 0).as_deref(), Some("anthropic"));
    assert_eq!(
        str_col(&b, "request_model", 0).as_deref(),
        Some("m-openinference")
    );
    assert_eq!(
        str_col(&b, "response_model", 0).as_deref(),
        Some("m-response")
    );
    assert_eq!(str_col(&b, "agent_name", 0).as_deref(), Some("svc"));
    // The raw attributes are kept too.
    let attrs = b.column_by_name("attributes").unwrap().as_map();
    assert_eq!(attrs.value(0).len(), 10);
}

#[test]
fn root_span_gives_run_workflow_and_outcome() {
    let mut root = span(1, None, vec![]);
    root.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "boom".into(),
    });
    let child = span(2, Some(1), vec![kv("runledger.run.id", s("run-42"))]);
    let out = normalize(&request(vec![], vec![root, child]));
    let b = out.batch.unwrap();
    let trace_hex = "07".repeat(16);
    assert_eq!(str_col(&b, "run_id", 0), Some(trace_hex));
    assert_eq!(str_col(&b, "run_id", 1).as_deref(), Some("run-42"));
    assert_eq!(str_col(&b, "workflow", 0).as_deref(), Some("span-1"));
    assert_eq!(str_col(&b, "workflow", 1), None);
    assert_eq!(str_col(&b, "outcome", 0).as_deref(), Some("failure"));
    assert_eq!(str_col(&b, "outcome", 1), None);
    assert_eq!(str_col(&b, "status_code", 0).as_deref(), Some("error"));
    assert_eq!(str_col(&b, "status_message", 0).as_deref(), Some("boom"));
    assert_eq!(str_col(&b, "parent_span_id", 0), None);
    assert_eq!(str_col(&b, "parent_span_id", 1), Some("01".repeat(8)));
    assert_eq!(str_col(&b, "date", 0).as_deref(), Some("2023-11-14"));
    assert_eq!(str_col(&b, "hour", 0).as_deref(), Some("22"));
    assert_eq!(str_col(&b, "scope_name", 0).as_deref(), Some("test-scope"));
    assert_eq!(i64_col(&b, "duration_ns", 0), Some(876_543_211));
}

#[test]
fn side_effects_retry_and_refs() {
    let spans = vec![
        span(1, None, vec![]),
        span(
            2,
            Some(1),
            vec![
                kv("gen_ai.tool.name", s("issue_refund")),
                kv("runledger.action.ref", s("re_1")),
            ],
        ),
        span(3, Some(1), vec![kv("gen_ai.tool.name", s("lookup_order"))]),
        span(
            4,
            Some(1),
            vec![
                kv("tool.name", s("lookup_order")),
                kv("runledger.action.side_effect", s("READ")),
                kv("runledger.retry.attempt", Value::IntValue(2)),
            ],
        ),
    ];
    let b = normalize(&request(vec![], spans)).batch.unwrap();
    assert_eq!(str_col(&b, "side_effect", 0).as_deref(), Some("none"));
    assert_eq!(str_col(&b, "side_effect", 1).as_deref(), Some("write"));
    assert_eq!(str_col(&b, "external_ref", 1).as_deref(), Some("re_1"));
    assert_eq!(
        str_col(&b, "side_effect", 2),
        None,
        "a tool of unknown effect is null"
    );
    assert_eq!(str_col(&b, "side_effect", 3).as_deref(), Some("read"));
    let retry = b
        .column_by_name("retry_attempt")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert_eq!(retry.value(3), 2);
    assert!(retry.is_null(1));
}

#[test]
fn customer_and_error_type_fallbacks() {
    let mut failing = span(2, Some(1), vec![kv("customer.id", s("cust-9"))]);
    failing.events.push(Event {
        name: "exception".into(),
        time_unix_nano: 1_700_000_000_200_000_000,
        attributes: vec![kv("exception.type", s("TimeoutError"))],
        ..Default::default()
    });
    let b = normalize(&request(
        vec![kv("enduser.id", s("cust-resource"))],
        vec![failing],
    ))
    .batch
    .unwrap();
    // The span's own configured key wins over the resource's standard key.
    assert_eq!(str_col(&b, "customer_id", 0).as_deref(), Some("cust-9"));
    assert_eq!(
        str_col(&b, "error_type", 0).as_deref(),
        Some("TimeoutError")
    );
    let events: serde_json::Value =
        serde_json::from_str(&str_col(&b, "events", 0).unwrap()).unwrap();
    assert_eq!(events[0]["name"], "exception");
    assert_eq!(events[0]["attributes"]["exception.type"], "TimeoutError");
}

#[test]
fn invalid_spans_are_rejected_one_by_one() {
    let good = span(1, None, vec![]);
    let mut short_trace = span(2, None, vec![]);
    short_trace.trace_id = vec![1; 8];
    let mut zero_span = span(3, None, vec![]);
    zero_span.span_id = vec![0; 8];
    let mut backwards = span(4, None, vec![]);
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;
    let mut bad_parent = span(5, None, vec![]);
    bad_parent.parent_span_id = vec![1; 3];
    let mut no_start = span(6, None, vec![]);
    no_start.start_time_unix_nano = 0;
    let mut too_late = span(7, None, vec![]);
    too_late.end_time_unix_nano = u64::MAX;
    let out = normalize(&request(
        vec![],
        vec![
            good,
            short_trace,
            zero_span,
            backwards,
            bad_parent,
            no_start,
            too_late,
        ],
    ));
    assert_eq!(out.accepted_spans, 1);
    assert_eq!(out.rejected_spans, 6);
    assert_eq!(out.batch.unwrap().num_rows(), 1);
    for needle in [
        "trace_id must be 16 bytes, got 8",
        "span_id is all zeros",
        "is before",
        "parent_span_id",
        "spans[5]",
    ] {
        assert!(
            out.error_message.contains(needle),
            "{needle} missing from {}",
            out.error_message
        );
    }
    assert!(
        out.error_message.contains("and 1 more"),
        "{}",
        out.error_message
    );
}

#[test]
fn operation_names_from_other_instrumentations_map_to_genai() {
    let spans = vec![
        span(1, None, vec![kv("openinference.span.kind", s("LLM"))]),
        span(2, None, vec![kv("traceloop.span.kind", s("tool"))]),
        span(
            3,
            None,
            vec![
                kv("gen_ai.operation.name", s("invoke_agent")),
                kv("openinference.span.kind", s("TOOL")),
            ],
        ),
    ];
    let b = normalize(&request(vec![], spans)).batch.unwrap();
    assert_eq!(str_col(&b, "operation", 0).as_deref(), Some("chat"));
    assert_eq!(str_col(&b, "operation", 1).as_deref(), Some("execute_tool"));
    assert_eq!(str_col(&b, "operation", 2).as_deref(), Some("invoke_agent"));
}

#[test]
fn empty_request_gives_no_batch() {
    let out = normalize(&ExportTraceServiceRequest::default());
    assert!(out.batch.is_none());
    assert_eq!((out.accepted_spans, out.rejected_spans), (0, 0));
}

#[test]
fn an_action_marked_incorrect_gets_an_error_type_unless_it_has_one() {
    let req = request(
        vec![],
        vec![
            span(
                1,
                None,
                vec![kv("runledger.action.correct", Value::BoolValue(false))],
            ),
            span(2, None, vec![kv("runledger.action.correct", s("false"))]),
            span(
                3,
                None,
                vec![
                    kv("runledger.action.correct", Value::BoolValue(false)),
                    kv("error.type", s("timeout")),
                ],
            ),
            span(
                4,
                None,
                vec![kv("runledger.action.correct", Value::BoolValue(true))],
            ),
        ],
    );
    let batch = normalize(&req).batch.unwrap();
    let error_type = batch
        .column_by_name("error_type")
        .unwrap()
        .as_string::<i32>();
    let got: Vec<Option<&str>> = error_type.iter().collect();
    assert_eq!(
        got,
        vec![
            Some("runledger.incorrect"),
            Some("runledger.incorrect"),
            Some("timeout"),
            None
        ]
    );
}
