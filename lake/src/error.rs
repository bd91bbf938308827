//! Errors of the lake.

use runledger_schemas::Tier;

/// What went wrong writing or opening a span table.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The Delta log or the object store refused an operation.
    #[error("{tier} span table: {context}: {source}")]
    Delta {
        /// The tier whose table failed.
        tier: Tier,
        /// What runledger was doing.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// A batch could not be sorted or split (a bug if it ever happens: batches are built by
    /// the processor in the table's schema).
    #[error("{tier} span table: preparing a batch: {0}", tier = .1)]
    Arrow(#[source] arrow::error::ArrowError, Tier),
    /// The table location is not a valid path.
    #[error("{tier} span table: bad location {path}: {reason}")]
    Location {
        /// The tier.
        tier: Tier,
        /// The path that was given.
        path: String,
        /// Why it is bad.
        reason: String,
    },
    /// A query over the table failed.
    #[error("{tier} span table: query: {source}")]
    Query {
        /// The tier.
        tier: Tier,
        /// The underlying error.
        #[source]
        source: Box<deltalake::datafusion::error::DataFusionError>,
    },
    /// A rewrite's transformation refused the rows it was given.
    #[error("{tier} span table: rewriting: {message}")]
    Transform {
        /// The tier.
        tier: Tier,
        /// What the transformation said.
        message: String,
    },
    /// A local file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What runledger was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl LakeError {
    /// A `map_err` adapter for Delta errors of `tier` while doing `context`.
    pub(crate) fn delta(
        tier: Tier,
        context: &'static str,
    ) -> impl FnOnce(deltalake::DeltaTableError) -> LakeError {
        move |source| LakeError::Delta {
            tier,
            context,
            source: Box::new(source),
        }
    }
}
