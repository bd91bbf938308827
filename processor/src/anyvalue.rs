//! How OTLP attribute values become the strings of the span table's attribute maps.
//!
//! Strings are stored as they are; ints, doubles and bools in their usual decimal / `true`
//! form; bytes as base64; arrays and key-value lists as JSON, whose scalars keep their types.

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use serde_json::Value as Json;

/// Appends the string form of `value` to `out`. An absent value is the empty string.
pub(crate) fn write_string(value: Option<&AnyValue>, out: &mut String) {
    use std::fmt::Write as _;
    let Some(value) = value.and_then(|v| v.value.as_ref()) else {
        return;
    };
    match value {
        Value::StringValue(s) => out.push_str(s),
        Value::BoolValue(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::IntValue(i) => {
            let _ = write!(out, "{i}");
        }
        // An index into a profiles string table: meaningless in traces, kept as a number.
        Value::StringValueStrindex(i) => {
            let _ = write!(out, "{i}");
        }
        Value::DoubleValue(d) => {
            let _ = write!(out, "{d}");
        }
        Value::BytesValue(b) => out.push_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        Value::ArrayValue(_) | Value::KvlistValue(_) => {
            out.push_str(&to_json(Some(value)).to_string());
        }
    }
}

/// The JSON form of a value, used inside arrays, key-value lists, events and links.
pub(crate) fn to_json(value: Option<&Value>) -> Json {
    match value {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::StringValueStrindex(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(d.to_string())),
        Some(Value::BytesValue(b)) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(Value::ArrayValue(a)) => {
            Json::Array(a.values.iter().map(|v| to_json(v.value.as_ref())).collect())
        }
        Some(Value::KvlistValue(kv)) => attributes_to_json(&kv.values),
    }
}

/// A list of key-values as a JSON object.
pub(crate) fn attributes_to_json(attributes: &[KeyValue]) -> Json {
    Json::Object(
        attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    to_json(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                )
            })
            .collect(),
    )
}

/// An integer read from an int, a double or a decimal string (some SDKs send token counts as
/// strings); `None` for anything else.
pub(crate) fn as_i64(value: Option<&AnyValue>) -> Option<i64> {
    match value?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.is_finite() => Some(*d as i64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn any(v: Value) -> AnyValue {
        AnyValue { value: Some(v) }
    }

    fn string_of(v: Value) -> String {
        let mut s = String::new();
        write_string(Some(&any(v)), &mut s);
        s
    }

    #[test]
    fn scalars_encode_plainly() {
        assert_eq!(string_of(Value::StringValue("héllo".into())), "héllo");
        assert_eq!(string_of(Value::IntValue(-42)), "-42");
        assert_eq!(string_of(Value::DoubleValue(0.25)), "0.25");
        assert_eq!(string_of(Value::BoolValue(true)), "true");
        assert_eq!(string_of(Value::BytesValue(vec![0, 255])), "AP8=");
    }

    #[test]
    fn nested_values_encode_as_typed_json() {
        let nested = Value::KvlistValue(KeyValueList {
            values: vec![
                KeyValue {
                    key: "n".into(),
                    value: Some(any(Value::IntValue(7))),
                    ..Default::default()
                },
                KeyValue {
                    key: "list".into(),
                    value: Some(any(Value::ArrayValue(ArrayValue {
                        values: vec![
                            any(Value::StringValue("a".into())),
                            any(Value::BoolValue(false)),
                        ],
                    }))),
                    ..Default::default()
                },
            ],
        });
        let s = string_of(nested);
        let parsed: Json = serde_json::from_str(&s).unwrap();
        assert_eq!(parsed, serde_json::json!({"n": 7, "list": ["a", false]}));
    }

    #[test]
    fn integers_are_read_from_strings_and_doubles() {
        assert_eq!(
            as_i64(Some(&any(Value::StringValue(" 12 ".into())))),
            Some(12)
        );
        assert_eq!(as_i64(Some(&any(Value::DoubleValue(3.0)))), Some(3));
        assert_eq!(as_i64(Some(&any(Value::BoolValue(true)))), None);
        assert_eq!(as_i64(None), None);
    }
}
