//! The lake: one Delta Lake table of Parquet files per tier.
//!
//! ```text
//!  <data-dir>/<tier>/spans/_delta_log/...                 the table's commits and checkpoints
//!  <data-dir>/<tier>/spans/date=YYYY-MM-DD/hour=HH/*.parquet
//! ```
//!
//! Why Delta and not loose Parquet files: commits are atomic, so a reader never sees half a
//! flush and several collectors can append to one table; each commit can carry an
//! *application transaction* (`app_id`, `version`) that makes a replay after a crash
//! idempotent; and DELETE, OPTIMIZE and VACUUM give erasure, compaction and retention without
//! hand-written file juggling. Spark, Trino, DuckDB and Polars read the same tables in place.
//!
//! Within a file rows are sorted by (`run_id`, `start_time`) with bloom filters on `run_id` and
//! `trace_id`, so that reconstructing one run reads a few row groups, not the partition.
#![deny(missing_docs)]

mod error;
pub mod failpoint;
mod maintenance;
mod span_table;
mod tiers;

pub use error::LakeError;
pub use maintenance::{
    cast_to_schema, CompactOutcome, DeleteOutcome, HourPartition, PartitionFiles,
};
pub use span_table::{
    group_by_partition, ingest_writer_properties, is_archival_file, sort_for_lake, table_path,
    writer_properties, AppendOutcome, IngestCompression, LakeConfig, SpanTable,
};
pub use tiers::{MaintenanceConfig, RawTierConfig, RedactedTierConfig, TiersConfig};
