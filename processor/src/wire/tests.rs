//! The in-place reader against the generated decoder: on the same bytes, both must accept or
//! refuse alike, and what they accept must normalise to the same rows.

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use rand::{Rng, SeedableRng};

use crate::test_support::{kv, sv};
use crate::{NormalizedBatch, Normalizer, ProcessorConfig};

fn normalizer() -> Normalizer {
    Normalizer::new(&ProcessorConfig::default()).unwrap()
}

fn any(value: Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

/// A span with every kind of value, an exception event, a link and a status.
fn rich_span(id: u8, parent: Option<u8>) -> Span {
    let nested = Value::KvlistValue(KeyValueList {
        values: vec![
            kv("n", Value::IntValue(-7)),
            KeyValue {
                key: "list".into(),
                value: any(Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(Value::DoubleValue(0.5)),
                        },
                        AnyValue { value: None },
                        AnyValue {
                            value: Some(Value::BytesValue(vec![1, 2, 3])),
                        },
                    ],
                })),
                ..Default::default()
            },
        ],
    });
    Span {
        trace_id: vec![id.wrapping_add(1); 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        trace_state: "vendor=x".into(),
        name: format!("chat gpt-4o héllo {id}"),
        kind: 3,
        start_time_unix_nano: 1_760_000_000_000_000_000 + u64::from(id) * 1_000,
        end_time_unix_nano: 1_760_000_001_000_000_000,
        attributes: vec![
            kv("gen_ai.operation.name", sv("chat")),
            kv("gen_ai.request.model", sv("gpt-4o")),
            kv("gen_ai.usage.input_tokens", Value::IntValue(1200)),
            kv("gen_ai.usage.output_tokens", sv(" 80 ")),
            kv("runledger.action.correct", Value::BoolValue(false)),
            kv("ratio", Value::DoubleValue(f64::NAN)),
            kv("blob", Value::BytesValue(vec![0, 255, 9])),
            kv("nested", nested),
            KeyValue {
                key: "absent".into(),
                value: None,
                ..Default::default()
            },
            kv("", sv("empty key")),
        ],
        dropped_attributes_count: 2,
        events: vec![Event {
            time_unix_nano: 1_760_000_000_500_000_000,
            name: "exception".into(),
            attributes: vec![kv("exception.type", sv("TimeoutError"))],
            dropped_attributes_count: 0,
        }],
        links: vec![Link {
            trace_id: vec![9; 16],
            span_id: vec![8; 8],
            trace_state: String::new(),
            attributes: vec![kv("link.kind", Value::IntValue(1))],
            dropped_attributes_count: 0,
            flags: 1,
        }],
        status: Some(Status {
            message: "upstream timed out".into(),
            code: 2,
        }),
        flags: 0x100,
        ..Default::default()
    }
}

fn rich_request() -> ExportTraceServiceRequest {
    let mut invalid = rich_span(40, None);
    invalid.span_id = vec![1; 5];
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", sv("refund-agent")),
                        kv("runledger.workflow", sv("refunds")),
                    ],
                    dropped_attributes_count: 1,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "openai".into(),
                        version: "1.2".into(),
                        attributes: vec![kv("scope.attr", Value::BoolValue(true))],
                        dropped_attributes_count: 0,
                    }),
                    spans: vec![rich_span(1, None), rich_span(2, Some(1)), invalid],
                    schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
                }],
                schema_url: String::new(),
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![rich_span(3, Some(9))],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    }
}

/// What the in-place reader makes of `wire`, or its error.
fn in_place(wire: &[u8]) -> Result<NormalizedBatch, String> {
    normalizer()
        .normalize_wire(wire, SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())
}

/// What the generated decoder makes of `wire`, normalised.
fn decoded(wire: &[u8]) -> Result<NormalizedBatch, String> {
    let request = ExportTraceServiceRequest::decode(wire).map_err(|e| e.to_string())?;
    Ok(normalizer().normalize(&request, SystemTime::UNIX_EPOCH))
}

/// Both accept or both refuse; when both accept, the rows and counts are equal.
fn assert_same(wire: &[u8], context: &str) {
    match (in_place(wire), decoded(wire)) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.batch, b.batch, "{context}: rows differ");
            assert_eq!(a.accepted_spans, b.accepted_spans, "{context}");
            assert_eq!(a.rejected_spans, b.rejected_spans, "{context}");
            assert_eq!(a.error_message, b.error_message, "{context}");
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "{context}: in place {:?}, generated decoder {:?}",
            a.map(|n| n.accepted_spans),
            b.map(|n| n.accepted_spans)
        ),
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(number) << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// Fields no OTLP message defines, of every wire type, a group included.
fn unknown_fields() -> Vec<u8> {
    let mut out = Vec::new();
    varint(99 << 3, &mut out);
    varint(300, &mut out);
    varint(98 << 3 | 1, &mut out);
    out.extend_from_slice(&7u64.to_le_bytes());
    out.extend(field(97, b"ignored"));
    varint(96 << 3 | 5, &mut out);
    out.extend_from_slice(&7u32.to_le_bytes());
    varint(95 << 3 | 3, &mut out);
    varint(1 << 3, &mut out);
    varint(1, &mut out);
    varint(95 << 3 | 4, &mut out);
    out
}

#[test]
fn a_canonical_request_reads_the_same_in_place() {
    let wire = rich_request().encode_to_vec();
    let a = in_place(&wire).unwrap();
    assert_eq!(a.accepted_spans, 3);
    assert_eq!(a.rejected_spans, 1);
    assert!(a.error_message.contains("span_id must be 8 bytes"));
    assert_same(&wire, "canonical");
}

#[test]
fn field_order_unknown_fields_and_split_messages_read_as_the_generated_decoder_reads_them() {
    // A span in two halves (protobuf merges concatenated messages), unknown fields between.
    let span = rich_span(5, Some(1));
    let mut first = span.clone();
    first.attributes.truncate(4);
    first.status = Some(Status {
        message: "first".into(),
        code: 1,
    });
    let mut second = Span {
        attributes: span.attributes[4..].to_vec(),
        status: Some(Status {
            message: String::new(),
            code: 2,
        }),
        ..Default::default()
    };
    second.events = span.events.clone();
    let mut span_wire = second.encode_to_vec();
    span_wire.extend(unknown_fields());
    span_wire.extend(first.encode_to_vec());

    let scope = InstrumentationScope {
        name: "scope".into(),
        version: "9".into(),
        attributes: vec![kv("a", sv("b"))],
        dropped_attributes_count: 0,
    };
    let mut scope_spans = field(2, &span_wire);
    scope_spans.extend(unknown_fields());
    scope_spans.extend(field(1, &scope.encode_to_vec()));
    scope_spans.extend(field(2, &rich_span(6, None).encode_to_vec()));

    let resource_a = Resource {
        attributes: vec![kv("service.name", sv("svc"))],
        ..Default::default()
    };
    let resource_b = Resource {
        attributes: vec![kv("customer.id", sv("cus_1"))],
        ..Default::default()
    };
    let mut resource_spans = field(2, &scope_spans);
    resource_spans.extend(field(1, &resource_a.encode_to_vec()));
    resource_spans.extend(unknown_fields());
    resource_spans.extend(field(1, &resource_b.encode_to_vec()));

    let mut wire = unknown_fields();
    wire.extend(field(1, &resource_spans));
    wire.extend(field(1, &resource_spans));
    let a = in_place(&wire).unwrap();
    assert_eq!(a.accepted_spans, 4);
    assert_same(&wire, "non-canonical");
}

#[test]
fn every_truncation_is_refused_or_read_alike() {
    let wire = rich_request().encode_to_vec();
    for end in 0..wire.len() {
        assert_same(&wire[..end], &format!("truncated at {end}"));
    }
}

#[test]
fn corrupted_bytes_are_refused_or_read_alike() {
    let wire = rich_request().encode_to_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let mut refused = 0;
    for i in 0..3000 {
        let mut bad = wire.clone();
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(0..bad.len());
            bad[at] = rng.random();
        }
        if in_place(&bad).is_err() {
            refused += 1;
        }
        assert_same(&bad, &format!("corruption {i}"));
    }
    // The corruptions exercise both outcomes.
    assert!(refused > 300 && refused < 2700, "{refused} of 3000 refused");
}

#[test]
fn invalid_utf8_in_any_stored_string_is_refused_with_a_message() {
    for text in ["chat gpt-4o", "gen_ai.request.model", "upstream timed out"] {
        let mut wire = rich_request().encode_to_vec();
        let at = wire
            .windows(text.len())
            .position(|w| w == text.as_bytes())
            .unwrap();
        wire[at + 1] = 0xff;
        let error = in_place(&wire).unwrap_err();
        assert!(error.contains("not valid UTF-8"), "{error}");
        assert!(decoded(&wire).is_err());
    }
}

#[test]
fn an_empty_request_has_no_spans() {
    let out = in_place(&[]).unwrap();
    assert!(out.batch.is_none());
    assert_eq!(out.accepted_spans + out.rejected_spans, 0);
    let rich = in_place(&rich_request().encode_to_vec()).unwrap();
    assert_eq!(rich.accepted_spans + rich.rejected_spans, 4);
}
