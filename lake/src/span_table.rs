//! One tier's span table: open or create it, and append batches idempotently.

use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::array::{RecordBatch, StringArray};
use arrow::compute::{concat, concat_batches, interleave_record_batch};
use arrow::row::{RowConverter, SortField};
use delta_kernel::expressions::Scalar;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, TableProperty};
use indexmap::IndexMap;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use runledger_schemas::{col, span_table_schema, Tier, PARTITION_COLUMNS};
use serde::{Deserialize, Serialize};

use crate::LakeError;

/// How the lake writes (`[lake]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// ZSTD level of the lake's archival files, which compaction writes (1-22). Default 1: on
    /// span data (sorted by run, much repeated context) it compresses as well as level 3 at
    /// less CPU; higher levels gain about 10% more for several times the CPU.
    pub zstd_level: i32,
    /// The codec of the files that ingest writes, which live until compaction rewrites their
    /// closed hour into ZSTD files sorted by run. Default `snappy`: it costs the collector
    /// about a quarter less CPU per tier than ZSTD for files about 1.7 times larger, for an
    /// hour or so. `zstd` writes the archival codec at once (compaction then rewrites an hour
    /// only for its small files).
    pub ingest_compression: IngestCompression,
    /// Rows per Parquet row group. Smaller groups let a run lookup skip more; larger ones
    /// compress better. Default 65536.
    pub max_row_group_rows: usize,
    /// A Delta checkpoint is written every this many commits, so that opening a table reads
    /// one checkpoint and at most this many JSON commits however long it lives. Default 100.
    pub checkpoint_interval: u32,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            zstd_level: 1,
            ingest_compression: IngestCompression::Snappy,
            max_row_group_rows: 65_536,
            checkpoint_interval: 100,
        }
    }
}

impl LakeConfig {
    /// Checks the ranges serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=22).contains(&self.zstd_level) {
            return Err(format!(
                "lake.zstd_level must be between 1 and 22, got {}",
                self.zstd_level
            ));
        }
        if self.max_row_group_rows == 0 {
            return Err("lake.max_row_group_rows must be positive".into());
        }
        if self.checkpoint_interval == 0 {
            return Err("lake.checkpoint_interval must be positive".into());
        }
        Ok(())
    }
}

/// Where a tier's span table lives: `<data-dir>/<tier>/spans`.
pub fn table_path(data_dir: &Path, tier: Tier) -> PathBuf {
    data_dir.join(tier.as_str()).join("spans")
}

/// Most rows in one data page (the writer checks it every 1,024 rows).
pub const DATA_PAGE_ROWS: usize = 1024;

/// The codec of the files that ingest writes (`lake.ingest_compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestCompression {
    /// Snappy: the cheapest to write that every Parquet reader knows.
    Snappy,
    /// LZ4 (the `LZ4_RAW` codec of Parquet 2.9; Spark reads it from 3.4).
    Lz4,
    /// ZSTD at `lake.zstd_level`, as archival files.
    Zstd,
}

/// Whether the data file at `path` (a table-relative path) is in the lake's archival layout,
/// going by its name: the Delta writer names a file after its codec, Hadoop's convention
/// (`part-00000-<uuid>-c000.zstd.parquet`), and only archival files are ZSTD unless
/// `lake.ingest_compression` is `zstd`. Compaction rewrites the closed hours that hold other
/// files: ingest's, and those that a DELETE (erase) rewrote.
pub fn is_archival_file(path: &str) -> bool {
    path.ends_with(".zstd.parquet")
}

/// The Parquet settings of the files that ingest writes: those of
/// [`writer_properties`], with `lake.ingest_compression`'s codec.
pub fn ingest_writer_properties(config: &LakeConfig) -> WriterProperties {
    let compression = match config.ingest_compression {
        IngestCompression::Snappy => Compression::SNAPPY,
        IngestCompression::Lz4 => Compression::LZ4_RAW,
        IngestCompression::Zstd => return writer_properties(config),
    };
    writer_properties(config)
        .into_builder()
        .set_compression(compression)
        .build()
}

/// The Parquet settings of the lake's archival files (compaction's, and those of a rewritten
/// hour): ZSTD, page statistics, bloom filters on the id columns, and no dictionary for free
/// text.
pub fn writer_properties(config: &LakeConfig) -> WriterProperties {
    let no_dictionary = [
        vec![col::ATTRIBUTES, "key_value", "value"],
        vec![col::RESOURCE_ATTRIBUTES, "key_value", "value"],
        vec![col::EVENTS],
        vec![col::LINKS],
        vec![col::STATUS_MESSAGE],
    ];
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(config.zstd_level).unwrap_or_default(),
        ))
        // Chunk statistics for every column (Delta's data skipping reads them), page statistics
        // where lookups filter; none for free text, whose min and max help no query.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(config.max_row_group_rows))
        // Small pages: a run lookup decompresses only the pages that hold the run's rows, and
        // a page of prompts and attributes at the 1 MiB default holds thousands of rows.
        .set_data_page_row_count_limit(DATA_PAGE_ROWS);
    for id_column in [col::RUN_ID, col::TRACE_ID] {
        let path = ColumnPath::from(id_column);
        builder = builder
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_max_ndv(path.clone(), config.max_row_group_rows as u64)
            .set_column_bloom_filter_fpp(path, 0.01);
    }
    for path in no_dictionary {
        let path = ColumnPath::new(path.into_iter().map(String::from).collect());
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    // The keys of the maps: no Delta statistics are kept for a map, and no query prunes on
    // the smallest and largest key of a file, so their statistics (a comparison of every key
    // of every span) are not computed. Their dictionary stays: a few dozen distinct keys.
    for map in [
        col::ATTRIBUTES,
        col::RESOURCE_ATTRIBUTES,
        col::SCOPE_ATTRIBUTES,
        col::REDACTIONS,
    ] {
        let path = ColumnPath::new(vec![map.into(), "key_value".into(), "key".into()]);
        builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    // Strings whose smallest and largest value in a file prune nothing: every file, sorted by
    // run or in arrival order, holds nearly all of their values (names, models, workflows,
    // customers) or a random sample of them (span ids). Their statistics were a comparison of
    // every value, twice, in each tier: 7% of the Parquet encoder's time. The ids that run
    // lookups use, the times and the numbers keep theirs.
    for column in [
        col::SPAN_ID,
        col::PARENT_SPAN_ID,
        col::NAME,
        col::KIND,
        col::STATUS_CODE,
        col::ERROR_TYPE,
        col::SERVICE_NAME,
        col::AGENT_NAME,
        col::AGENT_ID,
        col::WORKFLOW,
        col::CUSTOMER_ID,
        col::CONVERSATION_ID,
        col::OPERATION,
        col::PROVIDER,
        col::REQUEST_MODEL,
        col::RESPONSE_MODEL,
        col::TOOL_NAME,
        col::TOOL_CALL_ID,
        col::SIDE_EFFECT,
        col::EXTERNAL_REF,
        col::OUTCOME,
        col::PRICE_VERSION,
        col::SCOPE_NAME,
        col::SCOPE_VERSION,
    ] {
        builder = builder
            .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    // Ids that are unique per row never gain from a dictionary; building one only to drop it
    // costs a hash per value.
    for unique in [col::SPAN_ID, col::PARENT_SPAN_ID, col::TOOL_CALL_ID] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(unique), false);
    }
    for lookup_column in [col::RUN_ID, col::TRACE_ID, col::START_TIME] {
        builder = builder.set_column_statistics_enabled(
            ColumnPath::from(lookup_column),
            EnabledStatistics::Page,
        );
    }
    // Times and counts change little from one row to the next once rows are sorted by run and
    // start: delta encoding stores the small differences, not the 8-byte values.
    for column in [
        col::START_TIME,
        col::END_TIME,
        col::DURATION_NS,
        col::RECEIVED_AT,
        col::INPUT_TOKENS,
        col::OUTPUT_TOKENS,
        col::CACHE_READ_TOKENS,
        col::CACHE_WRITE_TOKENS,
        col::REASONING_TOKENS,
        col::RETRY_ATTEMPT,
    ] {
        let path = ColumnPath::from(column);
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
    }
    builder.build()
}

/// Merges batches of the span table into one, its rows sorted by partition, then
/// (`run_id`, `start_time`): the order in which compaction rewrites an hour, so that each
/// compacted file is sorted by run (and the split of a batch that straddles hours). Only the
/// sort keys are concatenated; the rows are gathered once from the inputs.
pub fn sort_for_lake(
    batches: &[RecordBatch],
) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(None);
    }
    // The sort keys in arrow's row format, so that comparing two rows is one memcmp rather
    // than four dynamically dispatched column comparisons.
    let key_columns = [col::DATE, col::HOUR, col::RUN_ID, col::START_TIME];
    let mut keys: Vec<arrow::array::ArrayRef> = Vec::with_capacity(key_columns.len());
    for name in key_columns {
        let parts: Vec<&dyn arrow::array::Array> = batches
            .iter()
            .map(|b| b.column_by_name(name).expect("span table column").as_ref())
            .collect();
        keys.push(concat(&parts)?);
    }
    let converter = RowConverter::new(
        keys.iter()
            .map(|k| SortField::new(k.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&keys)?;
    let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
    order.sort_unstable_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
    let mut starts = Vec::with_capacity(batches.len());
    let mut total = 0usize;
    for batch in &batches {
        starts.push(total);
        total += batch.num_rows();
    }
    let rows: Vec<(usize, usize)> = order
        .iter()
        .map(|&i| {
            let i = i as usize;
            let b = starts.partition_point(|&start| start <= i) - 1;
            (b, i - starts[b])
        })
        .collect();
    Ok(Some(interleave_record_batch(&batches, &rows)?))
}

/// A partition's values: (`date`, `hour`).
type PartitionKey<'a> = (&'a str, &'a str);

/// The partition columns of a batch of the span table: (`date`, `hour`).
fn partition_columns(batch: &RecordBatch) -> (&StringArray, &StringArray) {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("the span table has a {name} column"))
            .as_string::<i32>()
    };
    (column(col::DATE), column(col::HOUR))
}

/// Merges batches of the span table into one whose rows are grouped by partition (hours in
/// time order), each partition's rows in the order they are given: the input that
/// [`SpanTable::append`] writes as it is. The collector's flush does this once per WAL
/// segment, before any tier, so that neither tier's append has to sort. Rows are copied
/// once; when everything lies in one hour (live traffic), that copy is a plain
/// concatenation. Unlike [`sort_for_lake`], rows are not sorted by run: compaction does that
/// once per closed hour.
pub fn group_by_partition(
    batches: &[RecordBatch],
) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    // Each partition's (batch, row) pairs, in arrival order. A segment holds a handful of
    // hours, so a linear search from the last hit finds a row's partition.
    let mut partitions: Vec<(PartitionKey<'_>, Vec<(usize, usize)>)> = Vec::new();
    let mut last = 0;
    for (b, batch) in batches.iter().enumerate() {
        let (date, hour) = partition_columns(batch);
        for row in 0..batch.num_rows() {
            let key = (date.value(row), hour.value(row));
            if partitions.get(last).is_none_or(|(k, _)| *k != key) {
                last = match partitions.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        partitions.push((key, Vec::new()));
                        partitions.len() - 1
                    }
                };
            }
            partitions[last].1.push((b, row));
        }
    }
    if partitions.len() == 1 {
        let owned: Vec<RecordBatch> = batches.iter().map(|b| (*b).clone()).collect();
        return concat_batches(&first.schema(), &owned).map(Some);
    }
    partitions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let rows: Vec<(usize, usize)> = partitions.into_iter().flat_map(|(_, rows)| rows).collect();
    Ok(Some(interleave_record_batch(&batches, &rows)?))
}

/// The (offset, length) of each run of equal partition values in a batch: one for a batch
/// that lies in one hour, one per partition for a batch sorted by [`sort_for_lake`].
fn partition_runs(batch: &RecordBatch) -> Vec<(usize, usize)> {
    let (date, hour) = partition_columns(batch);
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=batch.num_rows() {
        if i == batch.num_rows()
            || date.value(i) != date.value(start)
            || hour.value(i) != hour.value(start)
        {
            runs.push((start, i - start));
            start = i;
        }
    }
    runs
}

/// Whether each partition of `batch` is one of its `runs` (as [`group_by_partition`] and
/// [`sort_for_lake`] leave it), so that the runs can be written as they are.
fn partitions_are_contiguous(batch: &RecordBatch, runs: &[(usize, usize)]) -> bool {
    if runs.len() <= 1 {
        return true;
    }
    let (date, hour) = partition_columns(batch);
    let mut keys: Vec<PartitionKey<'_>> = runs
        .iter()
        .map(|&(offset, _)| (date.value(offset), hour.value(offset)))
        .collect();
    keys.sort_unstable();
    keys.windows(2).all(|pair| pair[0] != pair[1])
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// A new table version was committed.
    Committed {
        /// The table version of the commit.
        version: i64,
        /// Rows written.
        rows: usize,
    },
    /// The application transaction was committed before: nothing was written.
    AlreadyCommitted,
    /// There was nothing to write.
    Empty,
}

/// One tier's span table, open for appends.
pub struct SpanTable {
    pub(crate) tier: Tier,
    path: PathBuf,
    pub(crate) table: DeltaTable,
    /// The archival files' settings (compaction, rewritten hours).
    pub(crate) properties: WriterProperties,
    /// The settings of the files that [`SpanTable::append`] writes.
    ingest_properties: WriterProperties,
}

/// The raw tier's directory is its owner's alone (0700), created so before anything is
/// written in it; the files in it get 0600 from the process umask that `runledger` sets.
fn restrict_raw_tier_dir(dir: &Path) -> Result<(), LakeError> {
    let io = |source| LakeError::Io {
        context: format!("creating {} with mode 0700", dir.display()),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(io)?;
    Ok(())
}

impl std::fmt::Debug for SpanTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanTable")
            .field("tier", &self.tier)
            .field("path", &self.path)
            .field("version", &self.table.version())
            .finish()
    }
}

impl SpanTable {
    /// Opens the tier's table under `data_dir`, creating it (and its directories) if it does
    /// not exist yet. Creating is safe when another collector races to create the same table.
    pub async fn open_or_create(
        data_dir: &Path,
        tier: Tier,
        config: &LakeConfig,
    ) -> Result<Self, LakeError> {
        let path = table_path(data_dir, tier);
        if tier == Tier::Raw {
            restrict_raw_tier_dir(&data_dir.join(tier.as_str()))?;
        }
        std::fs::create_dir_all(&path).map_err(|source| LakeError::Io {
            context: format!("creating {}", path.display()),
            source,
        })?;
        let absolute = std::fs::canonicalize(&path).map_err(|source| LakeError::Io {
            context: format!("resolving {}", path.display()),
            source,
        })?;
        let url = url::Url::from_directory_path(&absolute).map_err(|()| LakeError::Location {
            tier,
            path: absolute.display().to_string(),
            reason: "not an absolute directory path".into(),
        })?;
        let delta = |context| LakeError::delta(tier, context);
        // A table without a log is created without trying to load it first (which only
        // logs a loud "no files in log segment").
        let has_log = std::fs::read_dir(absolute.join("_delta_log"))
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        let mut table = if has_log {
            DeltaTable::try_from_url(url)
                .await
                .map_err(delta("opening the table"))?
        } else {
            deltalake::DeltaTableBuilder::from_url(url)
                .and_then(|builder| builder.build())
                .map_err(delta("opening the table"))?
        };
        if table.version().is_none() {
            let schema: StructType =
                span_table_schema()
                    .as_ref()
                    .try_into_kernel()
                    .map_err(|e| LakeError::Delta {
                        tier,
                        context: "converting the span-table schema",
                        source: Box::new(e.into()),
                    })?;
            table = table
                .create()
                .with_columns(schema.fields().cloned())
                .with_partition_columns(PARTITION_COLUMNS)
                .with_table_name(format!("runledger_{}_spans", tier.as_str()))
                .with_comment(format!(
                    "runledger {tier} tier: one row per span, see schemas/span_table.md"
                ))
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(config.checkpoint_interval.to_string()),
                )
                .with_save_mode(SaveMode::Ignore)
                .await
                .map_err(delta("creating the table"))?;
            if table.version().is_none() {
                table.load().await.map_err(delta("loading the table"))?;
            }
        }
        Ok(Self {
            tier,
            path: absolute,
            table,
            properties: writer_properties(config),
            ingest_properties: ingest_writer_properties(config),
        })
    }

    /// The tier of this table.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The table's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The latest version of the application transaction `app_id` committed to this table,
    /// reading the log for commits made since it was opened (by this process or another).
    pub async fn committed_transaction(&mut self, app_id: &str) -> Result<Option<i64>, LakeError> {
        let tier = self.tier;
        self.table
            .update_state()
            .await
            .map_err(LakeError::delta(tier, "refreshing the table"))?;
        let log_store = self.table.log_store();
        self.table
            .snapshot()
            .map_err(LakeError::delta(tier, "reading the snapshot"))?
            .transaction_version(log_store.as_ref(), app_id)
            .await
            .map_err(LakeError::delta(tier, "reading application transactions"))
    }

    /// Appends `batches` in one atomic commit carrying the application transaction
    /// (`app_id`, `txn_version`). When that transaction, or a later one of the same
    /// application, is already in the table, nothing is written: this is what makes a replay
    /// of the write-ahead log idempotent.
    ///
    /// Rows keep the order they are given in: a batch whose partitions are contiguous (one
    /// hour, the common case, or grouped by [`group_by_partition`]) goes to the writer as it
    /// is, one slice per partition, without a copy; only a batch whose hours are interleaved
    /// is sorted, through [`sort_for_lake`]. The collector's flushes therefore keep arrival
    /// order (a request's spans mostly come run by run), and compaction sorts each closed
    /// hour by run once, instead of every span being sorted twice.
    pub async fn append(
        &mut self,
        batches: &[RecordBatch],
        app_id: &str,
        txn_version: i64,
    ) -> Result<AppendOutcome, LakeError> {
        if self
            .committed_transaction(app_id)
            .await?
            .is_some_and(|committed| committed >= txn_version)
        {
            return Ok(AppendOutcome::AlreadyCommitted);
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(AppendOutcome::Empty);
        }
        let tier = self.tier;
        let delta = |context| LakeError::delta(tier, context);
        let mut writer = RecordBatchWriter::for_table(&self.table)
            .map_err(delta("opening a writer"))?
            .with_writer_properties(self.ingest_properties.clone())
            .with_commit_properties(
                CommitProperties::default()
                    .with_application_transaction(Transaction::new(app_id, txn_version)),
            );
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let mut in_order = batch.clone();
            let mut runs = partition_runs(&in_order);
            if !partitions_are_contiguous(&in_order, &runs) {
                in_order = sort_for_lake(std::slice::from_ref(batch))
                    .map_err(|e| LakeError::Arrow(e, tier))?
                    .expect("a non-empty batch");
                runs = partition_runs(&in_order);
            }
            // Each partition is now a contiguous slice, handed to the writer without a copy.
            for (offset, len) in runs {
                let slice = in_order.slice(offset, len);
                let value = |name: &str| {
                    let column = slice.column_by_name(name).expect("partition column");
                    Scalar::String(column.as_string::<i32>().value(0).to_string())
                };
                let partition: IndexMap<String, Scalar> = PARTITION_COLUMNS
                    .iter()
                    .map(|name| (name.to_string(), value(name)))
                    .collect();
                writer
                    .write_partition(slice, &partition, WriteMode::Default)
                    .await
                    .map_err(delta("writing Parquet files"))?;
            }
        }
        let version = writer
            .flush_and_commit(&mut self.table)
            .await
            .map_err(delta("committing"))?;
        Ok(AppendOutcome::Committed {
            version: version as i64,
            rows,
        })
    }
}

#[cfg(test)]
mod tests;
