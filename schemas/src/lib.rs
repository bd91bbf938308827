//! The data contract of runledger, defined once.
//!
//! Everything downstream of the collector reads one table, the **span table**: one row per
//! OpenTelemetry span, with typed columns for what queries use (run, workflow, model, tokens,
//! cost...) and generic maps for everything else. This crate is the single definition of that
//! table ([`span_table_schema`]) and of the attribute keys that fill its typed columns
//! ([`conventions`]). The column-by-column documentation lives next to it in
//! `schemas/span_table.md`; a test keeps the two in step.
//!
//! The schema only uses types that the Delta Lake protocol can express (strings, longs,
//! doubles, microsecond UTC timestamps, string maps), so that Spark, Trino, DuckDB and Polars
//! read the lake in place.
#![deny(missing_docs)]

pub mod conventions;
mod span_table;

pub use span_table::{
    attribute_map_type, col, redaction_summary_type, span_table_schema, Tier, PARTITION_COLUMNS,
    PARTITION_DATE_FORMAT, PARTITION_HOUR_FORMAT, SPAN_TABLE_DOC,
};

/// The built-in price table (`schemas/prices.toml`): USD per million tokens by model and
/// date. A data file, not code, so that prices change without a code change.
pub const BUILTIN_PRICES: &str = include_str!("../prices.toml");
