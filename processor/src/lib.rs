//! The processor: turns OTLP spans into rows of the span table.
//!
//! ```text
//!  ExportTraceServiceRequest, read in place from its protobuf bytes (`wire`)
//!      |  validate each span (ids, timestamps): the bad ones are rejected one by one
//!      v
//!  normalise: attributes -> typed columns by the conventions of `runledger_schemas`
//!      |        (run_id, workflow, outcome, side effect, tokens...), the rest kept as maps
//!      v
//!  Arrow RecordBatch in the span-table schema  ->  the collector's write-ahead log
//!      |
//!      v   (at flush)
//!  price: cost columns from the versioned price table (`pricing`)
//!      v
//!  redact: the copy bound for the redacted tier (`redact`)
//! ```
//!
//! Normalisation is deterministic and cheap, so the collector runs it before the write-ahead
//! log: what is logged is already a batch of the table's rows, and the flush to the lake is
//! pricing, redaction and a Parquet encode, not a second decode of OTLP.
#![deny(missing_docs)]

mod anyvalue;
pub mod config;
mod normalize;
pub mod pricing;
pub mod redact;
#[cfg(test)]
mod test_support;
mod wire;

pub use config::ProcessorConfig;
pub use normalize::{NormalizedBatch, Normalizer};
pub use pricing::{Pricer, PricingConfig};
pub use redact::{RedactionConfig, RedactionTotals, Redactor};
pub use wire::WireError;

/// The entry and field names of the span table's maps, as Delta Lake lays maps out
/// (`key_value` entries of `key` and `value`), for Arrow's map builders.
pub(crate) fn map_field_names() -> arrow::array::MapFieldNames {
    arrow::array::MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    }
}
