//! The Arrow schema of the span table, and the tiers it is stored in.

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// The column-by-column documentation of the span table (`schemas/span_table.md`).
pub const SPAN_TABLE_DOC: &str = include_str!("../span_table.md");

/// The partition columns of every span table, in order: `date=YYYY-MM-DD/hour=HH` of the
/// span's start time in UTC.
pub const PARTITION_COLUMNS: [&str; 2] = [col::DATE, col::HOUR];

/// The `strftime` form of the `date` partition value (UTC): `2026-11-24`. Writers and
/// retention must agree on it.
pub const PARTITION_DATE_FORMAT: &str = "%Y-%m-%d";

/// The `strftime` form of the `hour` partition value (UTC): `05`.
pub const PARTITION_HOUR_FORMAT: &str = "%H";

/// Column names, so that no other crate spells them out by hand.
#[allow(missing_docs)]
pub mod col {
    pub const RUN_ID: &str = "run_id";
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    pub const START_TIME: &str = "start_time";
    pub const END_TIME: &str = "end_time";
    pub const DURATION_NS: &str = "duration_ns";
    pub const NAME: &str = "name";
    pub const KIND: &str = "kind";
    pub const STATUS_CODE: &str = "status_code";
    pub const STATUS_MESSAGE: &str = "status_message";
    pub const ERROR_TYPE: &str = "error_type";
    pub const SERVICE_NAME: &str = "service_name";
    pub const AGENT_NAME: &str = "agent_name";
    pub const AGENT_ID: &str = "agent_id";
    pub const WORKFLOW: &str = "workflow";
    pub const CUSTOMER_ID: &str = "customer_id";
    pub const CONVERSATION_ID: &str = "conversation_id";
    pub const OPERATION: &str = "operation";
    pub const PROVIDER: &str = "provider";
    pub const REQUEST_MODEL: &str = "request_model";
    pub const RESPONSE_MODEL: &str = "response_model";
    pub const TOOL_NAME: &str = "tool_name";
    pub const TOOL_CALL_ID: &str = "tool_call_id";
    pub const SIDE_EFFECT: &str = "side_effect";
    pub const EXTERNAL_REF: &str = "external_ref";
    pub const RETRY_ATTEMPT: &str = "retry_attempt";
    pub const OUTCOME: &str = "outcome";
    pub const INPUT_TOKENS: &str = "input_tokens";
    pub const OUTPUT_TOKENS: &str = "output_tokens";
    pub const CACHE_READ_TOKENS: &str = "cache_read_tokens";
    pub const CACHE_WRITE_TOKENS: &str = "cache_write_tokens";
    pub const REASONING_TOKENS: &str = "reasoning_tokens";
    pub const COST_INFERENCE_USD: &str = "cost_inference_usd";
    pub const COST_TOOL_USD: &str = "cost_tool_usd";
    pub const COST_REVIEW_USD: &str = "cost_review_usd";
    pub const PRICE_VERSION: &str = "price_version";
    pub const SCOPE_NAME: &str = "scope_name";
    pub const SCOPE_VERSION: &str = "scope_version";
    pub const ATTRIBUTES: &str = "attributes";
    pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
    pub const SCOPE_ATTRIBUTES: &str = "scope_attributes";
    pub const EVENTS: &str = "events";
    pub const LINKS: &str = "links";
    pub const REDACTIONS: &str = "redactions";
    pub const RECEIVED_AT: &str = "received_at";
    pub const DATE: &str = "date";
    pub const HOUR: &str = "hour";
}

/// The storage tiers. Every span goes to each enabled tier; each tier is its own Delta table at
/// `<data-dir>/<tier>/spans/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Full fidelity, short-lived, readable only by the `raw` role.
    Raw,
    /// PII and secrets masked or keyed-hashed, long-lived.
    Redacted,
}

impl Tier {
    /// Every tier, in a stable order.
    pub const ALL: [Tier; 2] = [Tier::Raw, Tier::Redacted];

    /// The tier's name, as used in paths and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Redacted => "redacted",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Tier::Raw),
            "redacted" => Ok(Tier::Redacted),
            other => Err(format!("unknown tier `{other}` (expected raw or redacted)")),
        }
    }
}

/// The Arrow type of the `attributes` and `resource_attributes` columns: a string-to-string map
/// laid out as Delta Lake expects (`key_value` entries of `key` and `value`).
pub fn attribute_map_type() -> DataType {
    key_value_map(DataType::Utf8, true)
}

/// The Arrow type of the `redactions` column: counts by kind (`EMAIL` -> 2), laid out like
/// the attribute maps.
pub fn redaction_summary_type() -> DataType {
    key_value_map(DataType::Int32, false)
}

/// A map with string keys laid out as Delta Lake expects: `key_value` entries of `key` and
/// `value`.
fn key_value_map(value: DataType, value_nullable: bool) -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "key_value",
            DataType::Struct(Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", value, value_nullable),
            ])),
            false,
        )),
        false,
    )
}

/// The Arrow schema of the span table. The first 32 columns carry Delta file statistics (the
/// Delta default), so the columns that queries filter on come first.
pub fn span_table_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            let i64f = |name: &str| Field::new(name, DataType::Int64, true);
            let f64f = |name: &str| Field::new(name, DataType::Float64, true);
            Arc::new(Schema::new(vec![
                s(col::RUN_ID, false),
                s(col::TRACE_ID, false),
                s(col::SPAN_ID, false),
                s(col::PARENT_SPAN_ID, true),
                Field::new(col::START_TIME, ts(), false),
                Field::new(col::END_TIME, ts(), false),
                Field::new(col::DURATION_NS, DataType::Int64, false),
                s(col::NAME, false),
                s(col::KIND, false),
                s(col::STATUS_CODE, false),
                s(col::STATUS_MESSAGE, true),
                s(col::ERROR_TYPE, true),
                s(col::SERVICE_NAME, true),
                s(col::AGENT_NAME, true),
                s(col::AGENT_ID, true),
                s(col::WORKFLOW, true),
                s(col::CUSTOMER_ID, true),
                s(col::CONVERSATION_ID, true),
                s(col::OPERATION, true),
                s(col::PROVIDER, true),
                s(col::REQUEST_MODEL, true),
                s(col::RESPONSE_MODEL, true),
                s(col::TOOL_NAME, true),
                s(col::TOOL_CALL_ID, true),
                s(col::SIDE_EFFECT, true),
                s(col::EXTERNAL_REF, true),
                Field::new(col::RETRY_ATTEMPT, DataType::Int32, true),
                s(col::OUTCOME, true),
                i64f(col::INPUT_TOKENS),
                i64f(col::OUTPUT_TOKENS),
                i64f(col::CACHE_READ_TOKENS),
                i64f(col::CACHE_WRITE_TOKENS),
                i64f(col::REASONING_TOKENS),
                f64f(col::COST_INFERENCE_USD),
                f64f(col::COST_TOOL_USD),
                f64f(col::COST_REVIEW_USD),
                s(col::PRICE_VERSION, true),
                s(col::SCOPE_NAME, true),
                s(col::SCOPE_VERSION, true),
                Field::new(col::ATTRIBUTES, attribute_map_type(), false),
                Field::new(col::RESOURCE_ATTRIBUTES, attribute_map_type(), false),
                Field::new(col::SCOPE_ATTRIBUTES, attribute_map_type(), false),
                s(col::EVENTS, true),
                s(col::LINKS, true),
                Field::new(col::REDACTIONS, redaction_summary_type(), true),
                Field::new(col::RECEIVED_AT, ts(), false),
                s(col::DATE, false),
                s(col::HOUR, false),
            ]))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column of the schema is documented in `span_table.md`, and the doc names no
    /// column that does not exist.
    #[test]
    fn every_column_is_documented() {
        let schema = span_table_schema();
        let documented: Vec<&str> = SPAN_TABLE_DOC
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        for field in schema.fields() {
            assert!(
                documented.contains(&field.name().as_str()),
                "column `{}` is not documented in schemas/span_table.md",
                field.name()
            );
        }
        for name in &documented {
            assert!(
                schema.field_with_name(name).is_ok(),
                "span_table.md documents `{name}`, which is not a column"
            );
        }
    }

    #[test]
    fn partition_columns_are_last() {
        let schema = span_table_schema();
        let n = schema.fields().len();
        assert_eq!(schema.field(n - 2).name(), PARTITION_COLUMNS[0]);
        assert_eq!(schema.field(n - 1).name(), PARTITION_COLUMNS[1]);
    }
}
