//! The query side: DataFusion over the lake, the metrics, and the API that serves them.
//!
//! ```text
//!  <data>/redacted/spans (Delta)  ──►  table `spans` (alias `redacted_spans`)
//!  <data>/raw/spans      (Delta)  ──►  table `raw_spans` (raw and admin roles only)
//!        │  partition pruning on date/hour, Parquet statistics and bloom filters
//!        ▼
//!  metrics.rs: one SQL text per metric over a time window (runs, workflows, cost, gates,
//!  tools, capabilities), shared by the API and the benchmark that runs it in DuckDB too
//!        ▼
//!  run_index.rs + runs.rs: run id / external ref -> files -> one run as a tree
//!        ▼
//!  api.rs: axum routes, role-scoped bearer tokens, JSON and CSV
//! ```
//!
//! Tables are read in place through delta-rs: a query sees every commit up to the last
//! refresh, and refreshes are cheap (the log is re-read only when it moved).
#![deny(missing_docs)]

pub mod api;
pub mod budgets;
pub mod config;
mod lake;
pub mod metrics;
mod rows;
pub mod run_index;
pub mod runs;
pub mod sql_guard;
mod string_extremes;
pub mod web;
mod window;

pub use config::{ApiConfig, GateThresholds, GatesConfig, Role, TokenConfig};
pub use lake::{table_name, Lake};
pub use window::TimeWindow;

use runledger_schemas::Tier;

/// Errors of the query side.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A table could not be opened or refreshed.
    #[error("opening the {tier} span table at {path}: {source}")]
    Open {
        /// The tier.
        tier: Tier,
        /// Its path.
        path: String,
        /// The underlying error.
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// DataFusion refused or failed a query.
    #[error("query failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A query's answer did not have the expected shape.
    #[error("unexpected query result: {0}")]
    Shape(String),
    /// A request was malformed: the message says what to fix.
    #[error("{0}")]
    BadRequest(String),
    /// The run index could not be built or read.
    #[error("run index: {0}")]
    Index(String),
    /// The tier a request needs is not enabled or has no data yet.
    #[error("the {0} tier has no table in this data directory")]
    NoTier(Tier),
}
