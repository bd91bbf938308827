//! Builders of OTLP requests shared by the processor's unit tests.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// An attribute.
pub(crate) fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A string value.
pub(crate) fn sv(text: &str) -> Value {
    Value::StringValue(text.into())
}

/// An integer value.
pub(crate) fn iv(n: i64) -> Value {
    Value::IntValue(n)
}

/// A span of trace `[7; 16]` with id `[id; 8]`, starting at `start_unix_nano`, lasting 1 s.
pub(crate) fn span_at(id: u8, start_unix_nano: u64, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: vec![id; 8],
        name: format!("span-{id}"),
        start_time_unix_nano: start_unix_nano,
        end_time_unix_nano: start_unix_nano + 1_000_000_000,
        attributes,
        ..Default::default()
    }
}

/// One resource (with `service.name`) and one scope holding `spans`.
pub(crate) fn request_of(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", sv("test-service"))],
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
