//! How OTLP attribute values become the strings of the span table's attribute maps.
//!
//! Strings are stored as they are; ints, doubles and bools in their usual decimal / `true`
//! form; bytes as base64; arrays and key-value lists as JSON, whose scalars keep their types.
//! Values arrive borrowed from the request's wire format (`crate::wire`).

use base64::Engine as _;
use serde_json::Value as Json;

use crate::wire::{for_each_array_item, for_each_kvlist_entry, Kv, Val};

/// Appends the string form of `value` to `out`. An absent value is the empty string.
pub(crate) fn write_string(value: Option<Val<'_>>, out: &mut String) {
    use std::fmt::Write as _;
    let Some(value) = value else {
        return;
    };
    match value {
        Val::Str(s) => out.push_str(s),
        Val::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Val::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Val::Strindex(i) => {
            let _ = write!(out, "{i}");
        }
        Val::Double(d) => {
            let _ = write!(out, "{d}");
        }
        Val::Bytes(b) => out.push_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        Val::Array(_) | Val::Kvlist(_) => out.push_str(&to_json(Some(value)).to_string()),
    }
}

/// The JSON form of a value, used inside arrays and key-value lists.
pub(crate) fn to_json(value: Option<Val<'_>>) -> Json {
    match value {
        None => Json::Null,
        Some(Val::Str(s)) => Json::String(s.to_string()),
        Some(Val::Bool(b)) => Json::Bool(b),
        Some(Val::Int(i)) => Json::from(i),
        Some(Val::Strindex(i)) => Json::from(i),
        Some(Val::Double(d)) => serde_json::Number::from_f64(d)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(d.to_string())),
        Some(Val::Bytes(b)) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Some(Val::Array(bytes)) => {
            let mut items = Vec::new();
            for_each_array_item(bytes, |item| {
                items.push(to_json(item));
                Ok(())
            })
            .expect("validated when read");
            Json::Array(items)
        }
        Some(Val::Kvlist(bytes)) => {
            let mut map = serde_json::Map::new();
            for_each_kvlist_entry(bytes, |(key, value)| {
                map.insert(key.to_string(), to_json(value));
                Ok(())
            })
            .expect("validated when read");
            Json::Object(map)
        }
    }
}

/// An integer read from an int, a double or a decimal string (some SDKs send token counts as
/// strings); `None` for anything else.
pub(crate) fn as_i64(value: Option<Val<'_>>) -> Option<i64> {
    match value? {
        Val::Int(i) => Some(i),
        Val::Double(d) if d.is_finite() => Some(d as i64),
        Val::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A list of key-values as a JSON object (events' and links' attributes).
pub(crate) fn attributes_to_json(attributes: &[Kv<'_>]) -> Json {
    Json::Object(
        attributes
            .iter()
            .map(|&(key, value)| (key.to_string(), to_json(value)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{
        any_value::Value, AnyValue, ArrayValue, KeyValue, KeyValueList,
    };
    use prost::Message as _;

    fn any(v: Value) -> AnyValue {
        AnyValue { value: Some(v) }
    }

    /// The string form of `v` as the normaliser sees it: encoded, then read back in place.
    fn string_of(v: Value) -> String {
        let kv = KeyValue {
            key: "k".into(),
            value: Some(any(v)),
            ..Default::default()
        };
        let wire = kv.encode_to_vec();
        let (_, value) = crate::wire::key_value(&wire).unwrap();
        let mut s = String::new();
        write_string(value, &mut s);
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
                            AnyValue { value: None },
                        ],
                    }))),
                    ..Default::default()
                },
            ],
        });
        let s = string_of(nested);
        let parsed: Json = serde_json::from_str(&s).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"n": 7, "list": ["a", false, null]})
        );
    }

    #[test]
    fn integers_are_read_from_strings_and_doubles() {
        assert_eq!(as_i64(Some(Val::Str(" 12 "))), Some(12));
        assert_eq!(as_i64(Some(Val::Double(3.0))), Some(3));
        assert_eq!(as_i64(Some(Val::Double(f64::NAN))), None);
        assert_eq!(as_i64(Some(Val::Bool(true))), None);
        assert_eq!(as_i64(None), None);
    }
}
