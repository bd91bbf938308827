//! The lake as DataFusion tables, refreshed as collectors commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;
use runledger_lake::table_path;
use runledger_schemas::{span_table_schema, Tier};
use tokio::sync::Mutex;

use crate::run_index::RunIndex;
use crate::QueryError;

/// The SQL name of a tier's span table.
pub fn table_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Raw => "raw_spans",
        Tier::Redacted => "redacted_spans",
    }
}

/// The name aggregates and run lookups read: the redacted tier, the long-lived one that no
/// role needs the raw-tier privilege for.
pub(crate) const SPANS: &str = "spans";

struct Loaded {
    tables: Vec<(Tier, DeltaTable)>,
    refreshed: Option<Instant>,
}

/// The lake of one data directory: its tier tables, refreshed at most every
/// `refresh_every`, each query in a session of its own over the current snapshots.
pub struct Lake {
    data_dir: PathBuf,
    refresh_every: Duration,
    memory_limit: usize,
    loaded: Mutex<Loaded>,
    indexes: Mutex<Vec<(Tier, RunIndex)>>,
    footers: std::sync::Mutex<
        std::collections::HashMap<
            PathBuf,
            datafusion::parquet::arrow::arrow_reader::ArrowReaderMetadata,
        >,
    >,
}

/// Most Parquet footers kept in memory for run lookups; past it the cache starts again.
const MAX_FOOTERS: usize = 8192;

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Lake {
    /// A lake over `data_dir`; nothing is read until the first query.
    pub fn new(data_dir: &Path, refresh_every: Duration) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            refresh_every,
            memory_limit: 2 << 30,
            loaded: Mutex::new(Loaded {
                tables: Vec::new(),
                refreshed: None,
            }),
            indexes: Mutex::new(Vec::new()),
            footers: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Caps the memory of each query (`api.query_memory_mib`, default 8 GiB; 2 GiB here); a query over it fails, it does not
    /// take the server down.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A session with the tiers registered: `spans` and `redacted_spans` (the redacted
    /// tier), and `raw_spans` when `with_raw`. A tier with no table yet is registered as an
    /// empty table of the span schema, so that every query runs and an empty lake answers
    /// with no rows. Returns the tiers that have data.
    pub async fn session(&self, with_raw: bool) -> Result<(SessionContext, Vec<Tier>), QueryError> {
        let tables = self.current_tables().await?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.memory_limit, 1.0)
            .build_arc()?;
        let config = SessionConfig::new()
            .with_information_schema(false)
            .set_bool("datafusion.execution.parquet.pushdown_filters", true)
            .set_bool("datafusion.execution.parquet.bloom_filter_on_read", true);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        ctx.register_udaf(crate::string_extremes::max());
        ctx.register_udaf(crate::string_extremes::min());
        let mut found = Vec::new();
        for (tier, table) in tables {
            if tier == Tier::Raw && !with_raw {
                continue;
            }
            table
                .update_datafusion_session(&ctx.state())
                .map_err(|source| self.open_error(tier, source))?;
            let provider = table.table_provider().await?;
            ctx.register_table(table_name(tier), provider.clone())?;
            if tier == Tier::Redacted {
                ctx.register_table(SPANS, provider)?;
            }
            found.push(tier);
        }
        for tier in Tier::ALL {
            if found.contains(&tier) || (tier == Tier::Raw && !with_raw) {
                continue;
            }
            let empty = Arc::new(MemTable::try_new(span_table_schema(), vec![vec![]])?);
            ctx.register_table(table_name(tier), empty.clone())?;
            if tier == Tier::Redacted {
                ctx.register_table(SPANS, empty)?;
            }
        }
        Ok((ctx, found))
    }

    fn open_error(&self, tier: Tier, source: deltalake::DeltaTableError) -> QueryError {
        QueryError::Open {
            tier,
            path: table_path(&self.data_dir, tier).display().to_string(),
            source,
        }
    }

    /// The tables at their latest version, re-reading the logs when the last refresh is
    /// older than `refresh_every`.
    async fn current_tables(&self) -> Result<Vec<(Tier, DeltaTable)>, QueryError> {
        let mut loaded = self.loaded.lock().await;
        let stale = loaded
            .refreshed
            .is_none_or(|at| at.elapsed() >= self.refresh_every);
        if stale {
            for tier in Tier::ALL {
                let position = loaded.tables.iter().position(|(t, _)| *t == tier);
                match position {
                    Some(i) => loaded.tables[i]
                        .1
                        .update_state()
                        .await
                        .map_err(|source| self.open_error(tier, source))?,
                    None => {
                        let path = table_path(&self.data_dir, tier);
                        if !path.join("_delta_log").is_dir() {
                            continue;
                        }
                        let absolute = std::fs::canonicalize(&path).map_err(|e| {
                            self.open_error(
                                tier,
                                deltalake::DeltaTableError::generic(e.to_string()),
                            )
                        })?;
                        let url = url::Url::from_directory_path(&absolute).map_err(|()| {
                            self.open_error(
                                tier,
                                deltalake::DeltaTableError::generic("not an absolute path"),
                            )
                        })?;
                        let table = deltalake::open_table(url)
                            .await
                            .map_err(|source| self.open_error(tier, source))?;
                        loaded.tables.push((tier, table));
                    }
                }
            }
            loaded.refreshed = Some(Instant::now());
        }
        Ok(loaded.tables.clone())
    }

    /// Calls `f` with the [run index](crate::run_index) of `tier`, first brought up to the
    /// table's current version (new files indexed, removed ones forgotten).
    pub async fn run_index<R>(
        &self,
        tier: Tier,
        f: impl FnOnce(&RunIndex) -> R,
    ) -> Result<R, QueryError> {
        let tables = self.current_tables().await?;
        let Some((_, table)) = tables.into_iter().find(|(t, _)| *t == tier) else {
            return Err(QueryError::NoTier(tier));
        };
        let version = table.version().unwrap_or(0);
        let mut indexes = self.indexes.lock().await;
        let position = match indexes.iter().position(|(t, _)| *t == tier) {
            Some(i) => i,
            None => {
                let table_dir = table_path(&self.data_dir, tier);
                let sidecars = self.data_dir.join(tier.as_str()).join("run_index");
                indexes.push((tier, RunIndex::new(&table_dir, &sidecars)));
                indexes.len() - 1
            }
        };
        let index = &mut indexes[position].1;
        if index.version() != Some(version) {
            use futures::TryStreamExt as _;
            let files: Vec<_> = table
                .get_active_add_actions_by_partitions(&[])
                .try_collect()
                .await
                .map_err(|source| self.open_error(tier, source))?;
            let keys = files.iter().map(|f| f.path().to_string()).collect();
            index.sync(version, keys).await?;
        }
        Ok(f(index))
    }

    /// The parsed footer (page indexes included) of a data file, if a lookup read it before.
    /// Data files are immutable, so an entry never goes stale; a removed file's entry is only
    /// never asked for again.
    pub fn footer(
        &self,
        path: &Path,
    ) -> Option<datafusion::parquet::arrow::arrow_reader::ArrowReaderMetadata> {
        self.footers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }

    /// Keeps a data file's parsed footer for the next lookup.
    pub fn store_footer(
        &self,
        path: PathBuf,
        footer: datafusion::parquet::arrow::arrow_reader::ArrowReaderMetadata,
    ) {
        let mut footers = self.footers.lock().unwrap_or_else(|e| e.into_inner());
        if footers.len() >= MAX_FOOTERS && !footers.contains_key(&path) {
            footers.clear();
        }
        footers.insert(path, footer);
    }

    /// Forces the next query to re-read the tables' logs.
    pub async fn invalidate(&self) {
        self.loaded.lock().await.refreshed = None;
    }
}
