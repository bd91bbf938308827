//! The query side: DataFusion over the lake.
//!
//! Each tier's Delta table is registered in a DataFusion [`SessionContext`] under a stable
//! name (`raw_spans`, `redacted_spans`), read in place through delta-rs with partition pruning
//! on `date`/`hour` and Parquet statistics and bloom filters. The metrics, gates and run
//! reconstruction are SQL over these tables.
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use runledger_lake::table_path;
use runledger_schemas::Tier;

/// Errors of the query side.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A table could not be opened.
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
}

/// The SQL name of a tier's span table.
pub fn table_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Raw => "raw_spans",
        Tier::Redacted => "redacted_spans",
    }
}

/// A DataFusion session with every tier that exists under `data_dir` registered as a table.
/// Returns the session and the tiers it found.
pub async fn open_lake(data_dir: &Path) -> Result<(SessionContext, Vec<Tier>), QueryError> {
    let ctx = SessionContext::new();
    let mut found = Vec::new();
    for tier in Tier::ALL {
        let path = table_path(data_dir, tier);
        if !path.join("_delta_log").is_dir() {
            continue;
        }
        let open_error = |source| QueryError::Open {
            tier,
            path: path.display().to_string(),
            source,
        };
        let absolute = std::fs::canonicalize(&path)
            .map_err(|e| open_error(deltalake::DeltaTableError::generic(e.to_string())))?;
        let url = url::Url::from_directory_path(&absolute).map_err(|()| {
            open_error(deltalake::DeltaTableError::generic("not an absolute path"))
        })?;
        let table: DeltaTable = deltalake::open_table(url).await.map_err(open_error)?;
        table
            .update_datafusion_session(&ctx.state())
            .map_err(open_error)?;
        let provider = table.table_provider().await?;
        ctx.register_table(table_name(tier), Arc::clone(&provider))?;
        found.push(tier);
    }
    Ok((ctx, found))
}

pub mod api;
