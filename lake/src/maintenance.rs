//! Retention, erasure and compaction of a tier's table: Delta DELETE, OPTIMIZE and VACUUM.
//!
//! - **Retention** deletes whole hour partitions past the tier's TTL. The predicate names only
//!   partition columns, so the DELETE removes files without rewriting any; the removed files
//!   are then deleted from disk at once (a TTL is a promise about the disk, not the log).
//! - **Erasure** deletes the rows of given runs: the DELETE rewrites the files that held them
//!   without those rows, and the old files are deleted from disk at once, because a row that
//!   a later vacuum would remove is not yet erased.
//! - **Compaction** rewrites the small files of closed hours into larger ones ordered by
//!   `run_id` (a one-column Z-order: a sort on the first 15 or so characters, which for run
//!   ids, UUIDs or hex trace ids, is a sort), in one atomic commit per hour: a crash before
//!   the commit leaves only unreferenced new files, after it only tombstoned old ones, never a
//!   lost or doubled span. The old files are vacuumed after a grace period that lets running
//!   queries finish reading them.
//!
//! Every operation is an optimistic Delta commit, so it can run next to a collector that keeps
//! appending: a conflicting commit is retried on the new table state.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::{col, lit, Expr, SessionContext};
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::SaveMode;
use deltalake::{FilterLiteral, FilterOp, FilterValue};
use futures::TryStreamExt as _;
use runledger_schemas::{
    col as column, span_table_schema, PARTITION_COLUMNS, PARTITION_DATE_FORMAT,
    PARTITION_HOUR_FORMAT,
};
use serde::{Deserialize, Serialize};

use crate::{LakeError, SpanTable};

/// Attempts of an operation whose commit conflicts with a concurrent one.
const COMMIT_ATTEMPTS: u32 = 5;

/// One hour partition of a table: `date=YYYY-MM-DD/hour=HH`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HourPartition {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// `HH`, 00 to 23.
    pub hour: String,
}

impl HourPartition {
    /// The partition an instant falls in.
    pub fn of(t: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            date: t.format(PARTITION_DATE_FORMAT).to_string(),
            hour: t.format(PARTITION_HOUR_FORMAT).to_string(),
        }
    }

    /// The instant the hour ends (exclusive), or `None` for a malformed partition value.
    pub fn end(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let date = chrono::NaiveDate::parse_from_str(&self.date, PARTITION_DATE_FORMAT).ok()?;
        let hour: u32 = self.hour.parse().ok()?;
        let start = date.and_hms_opt(hour, 0, 0)?;
        Some(start.and_utc() + chrono::Duration::hours(1))
    }
}

impl std::fmt::Display for HourPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "date={}/hour={}", self.date, self.hour)
    }
}

/// The live files of one hour partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionFiles {
    /// Data files in the current table version.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// Files smaller than half the compaction target.
    pub small_files: usize,
    /// Files not in the archival layout (see [`crate::is_archival_file`]): ingest's, or a
    /// DELETE's rewrite, not yet compacted.
    pub unarchived_files: usize,
}

/// What a DELETE did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Rows deleted (for a partition-only delete, delta-rs may not count them).
    pub rows: usize,
    /// Files that the DELETE removed from the table.
    pub files_removed: usize,
    /// Files that it wrote (the rewritten rest of partially deleted files).
    pub files_added: usize,
    /// Files then deleted from disk.
    pub files_purged: usize,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactOutcome {
    /// Hours rewritten.
    pub partitions: usize,
    /// Small files replaced.
    pub files_removed: u64,
    /// Larger files written.
    pub files_added: u64,
}

impl SpanTable {
    /// Re-reads the table's log, to see what other processes committed.
    pub async fn refresh(&mut self) -> Result<(), LakeError> {
        if self.table.version().is_some() {
            self.table
                .update_state()
                .await
                .map_err(LakeError::delta(self.tier, "reloading the table"))?;
        }
        Ok(())
    }

    /// The hour partitions with live files, with their file counts and sizes.
    /// `small_below` is the size under which a file counts as small.
    pub async fn partitions(
        &mut self,
        small_below: u64,
    ) -> Result<BTreeMap<HourPartition, PartitionFiles>, LakeError> {
        self.refresh().await?;
        let mut out: BTreeMap<HourPartition, PartitionFiles> = BTreeMap::new();
        if self.table.version().is_none() {
            return Ok(out);
        }
        let files: Vec<_> = self
            .table
            .get_active_add_actions_by_partitions(&[])
            .try_collect()
            .await
            .map_err(LakeError::delta(self.tier, "listing the files"))?;
        for file in files {
            let path = file.path();
            let Some(partition) = partition_of_path(&path) else {
                continue;
            };
            let entry = out.entry(partition).or_default();
            entry.files += 1;
            entry.bytes += file.size().max(0) as u64;
            if (file.size().max(0) as u64) < small_below {
                entry.small_files += 1;
            }
            if !crate::is_archival_file(&path) {
                entry.unarchived_files += 1;
            }
        }
        Ok(out)
    }

    /// Deletes every partition whose hour ended at or before `cutoff`, then deletes the
    /// removed files from disk.
    pub async fn delete_hours_ending_by(
        &mut self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<DeleteOutcome, LakeError> {
        // An hour ends by the cutoff exactly when it starts before the hour the cutoff is in.
        let first_kept = HourPartition::of(cutoff);
        let predicate = col(column::DATE)
            .lt(lit(first_kept.date.clone()))
            .or(col(column::DATE)
                .eq(lit(first_kept.date.clone()))
                .and(col(column::HOUR).lt(lit(first_kept.hour.clone()))));
        self.delete_where(predicate).await
    }

    /// Deletes every span of the given runs, then deletes the files that held them from disk.
    pub async fn delete_runs(&mut self, run_ids: &[String]) -> Result<DeleteOutcome, LakeError> {
        if run_ids.is_empty() {
            return Ok(DeleteOutcome::default());
        }
        let list: Vec<Expr> = run_ids.iter().map(|r| lit(r.clone())).collect();
        self.delete_where(col(column::RUN_ID).in_list(list, false))
            .await
    }

    async fn delete_where(&mut self, predicate: Expr) -> Result<DeleteOutcome, LakeError> {
        self.refresh().await?;
        if self.table.version().is_none() {
            return Ok(DeleteOutcome::default());
        }
        let mut attempt = 0;
        let metrics = loop {
            attempt += 1;
            match self
                .table
                .clone()
                .delete()
                .with_predicate(predicate.clone())
                .await
            {
                Ok((table, metrics)) => {
                    self.table = table;
                    break metrics;
                }
                Err(e) if attempt < COMMIT_ATTEMPTS && is_conflict(&e) => {
                    tracing::info!(tier = %self.tier, attempt, error = %e, "delete conflicted; retrying");
                    self.refresh().await?;
                }
                Err(e) => return Err(LakeError::delta(self.tier, "deleting rows")(e)),
            }
        };
        let mut outcome = DeleteOutcome {
            rows: metrics.num_deleted_rows.unwrap_or(0),
            files_removed: metrics.num_removed_files,
            files_added: metrics.num_added_files,
            files_purged: 0,
        };
        crate::failpoint::hit("lake.delete.before_purge");
        if outcome.files_removed > 0 {
            outcome.files_purged = self.purge_removed_files().await?;
        }
        Ok(outcome)
    }

    /// Deletes from disk every file that the table no longer references (a vacuum with no
    /// retention period): what erasure and retention promise. It also removes what an earlier
    /// compaction left for its grace period, which a query started before that compaction
    /// might still be reading; such a query fails and can be retried.
    pub async fn purge_removed_files(&mut self) -> Result<usize, LakeError> {
        self.vacuum_older_than(Duration::ZERO, VacuumMode::Lite)
            .await
    }

    /// Deletes from disk the files removed from the table more than `grace` ago, and (`full`)
    /// files that no commit references, such as those a crash left behind mid-write.
    pub async fn vacuum(&mut self, grace: Duration) -> Result<usize, LakeError> {
        self.vacuum_older_than(grace, VacuumMode::Full).await
    }

    async fn vacuum_older_than(
        &mut self,
        grace: Duration,
        mode: VacuumMode,
    ) -> Result<usize, LakeError> {
        self.refresh().await?;
        if self.table.version().is_none() {
            return Ok(0);
        }
        let retention = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let (table, metrics) = self
            .table
            .clone()
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_mode(mode)
            .await
            .map_err(LakeError::delta(self.tier, "vacuuming"))?;
        self.table = table;
        Ok(metrics.files_deleted.len())
    }

    /// Rewrites each given hour into files of about `target_bytes`, ordered by `run_id`.
    pub async fn compact(
        &mut self,
        hours: &[HourPartition],
        target_bytes: u64,
    ) -> Result<CompactOutcome, LakeError> {
        let mut outcome = CompactOutcome::default();
        let target = NonZeroU64::new(target_bytes.max(1 << 20)).expect("non-zero");
        for hour in hours {
            self.refresh().await?;
            let filters: Vec<FilterLiteral> = vec![
                (
                    column::DATE,
                    FilterOp::Eq,
                    FilterValue::Scalar(hour.date.as_str()),
                ),
                (
                    column::HOUR,
                    FilterOp::Eq,
                    FilterValue::Scalar(hour.hour.as_str()),
                ),
            ];
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result = self
                    .table
                    .clone()
                    .optimize()
                    .with_filters(&filters)
                    .with_type(OptimizeType::ZOrder(vec![column::RUN_ID.to_string()]))
                    .with_target_size(target)
                    .with_writer_properties(self.properties.clone())
                    .await;
                match result {
                    Ok((table, metrics)) => {
                        self.table = table;
                        if metrics.num_files_removed > 0 {
                            outcome.partitions += 1;
                        }
                        outcome.files_removed += metrics.num_files_removed;
                        outcome.files_added += metrics.num_files_added;
                        crate::failpoint::hit("lake.compact.after_commit");
                        break;
                    }
                    Err(e) if attempt < COMMIT_ATTEMPTS && is_conflict(&e) => {
                        tracing::info!(tier = %self.tier, %hour, attempt, error = %e, "compaction conflicted; retrying");
                        self.refresh().await?;
                    }
                    Err(e) => return Err(LakeError::delta(self.tier, "compacting")(e)),
                }
            }
        }
        Ok(outcome)
    }

    /// Rewrites one hour partition through `transform` in one atomic commit (Delta overwrite
    /// with a `replace_where` on the partition): readers see the old rows or the new ones,
    /// never both. Rows keep the lake's sort order. Returns the rows rewritten.
    pub async fn rewrite_hour(
        &mut self,
        hour: &HourPartition,
        transform: &(dyn Fn(RecordBatch) -> Result<RecordBatch, String> + Sync),
    ) -> Result<usize, LakeError> {
        let tier = self.tier;
        let in_hour = || {
            col(column::DATE)
                .eq(lit(hour.date.clone()))
                .and(col(column::HOUR).eq(lit(hour.hour.clone())))
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.refresh().await?;
            if self.table.version().is_none() {
                return Ok(0);
            }
            let query = |e: deltalake::datafusion::error::DataFusionError| LakeError::Query {
                tier,
                source: Box::new(e),
            };
            let ctx = SessionContext::new();
            let provider = self.table.table_provider().await.map_err(query)?;
            let batches = ctx
                .read_table(provider)
                .map_err(query)?
                .filter(in_hour())
                .map_err(query)?
                .collect()
                .await
                .map_err(query)?;
            let schema = span_table_schema();
            let mut aligned = Vec::with_capacity(batches.len());
            for batch in batches {
                aligned
                    .push(cast_to_schema(&batch, &schema).map_err(|e| LakeError::Arrow(e, tier))?);
            }
            let Some(sorted) =
                crate::sort_for_lake(&aligned).map_err(|e| LakeError::Arrow(e, tier))?
            else {
                return Ok(0);
            };
            drop(aligned);
            let rows = sorted.num_rows();
            let rewritten =
                transform(sorted).map_err(|message| LakeError::Transform { tier, message })?;
            let result = self
                .table
                .clone()
                .write(vec![rewritten])
                .with_save_mode(SaveMode::Overwrite)
                .with_replace_where(in_hour())
                .with_partition_columns(PARTITION_COLUMNS.iter().map(|c| c.to_string()))
                .with_writer_properties(self.properties.clone())
                .await;
            match result {
                Ok(table) => {
                    self.table = table;
                    return Ok(rows);
                }
                Err(e) if attempt < COMMIT_ATTEMPTS && is_conflict(&e) => {
                    tracing::info!(tier = %self.tier, %hour, attempt, error = %e, "rewrite conflicted; retrying");
                }
                Err(e) => return Err(LakeError::delta(self.tier, "rewriting an hour")(e)),
            }
        }
    }

    /// Distinct run ids of the spans whose `column` equals `value`.
    pub async fn run_ids_where(
        &mut self,
        column_name: &str,
        value: &str,
    ) -> Result<Vec<String>, LakeError> {
        self.refresh().await?;
        if self.table.version().is_none() {
            return Ok(Vec::new());
        }
        let ctx = SessionContext::new();
        let tier = self.tier;
        let query = |e: deltalake::datafusion::error::DataFusionError| LakeError::Query {
            tier,
            source: Box::new(e),
        };
        let provider = self.table.table_provider().await.map_err(query)?;
        let frame = ctx
            .read_table(provider)
            .map_err(query)?
            .filter(col(column_name).eq(lit(value.to_string())))
            .map_err(query)?
            .select(vec![col(column::RUN_ID)])
            .map_err(query)?
            .distinct()
            .map_err(query)?;
        let batches = frame.collect().await.map_err(query)?;
        let mut out = Vec::new();
        for batch in batches {
            let ids = deltalake::arrow::compute::cast(
                batch.column(0),
                &deltalake::arrow::datatypes::DataType::Utf8,
            )
            .map_err(|e| LakeError::Arrow(e, self.tier))?;
            let ids = deltalake::arrow::array::AsArray::as_string::<i32>(ids.as_ref());
            out.extend(ids.iter().flatten().map(str::to_string));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

fn is_conflict(e: &deltalake::DeltaTableError) -> bool {
    matches!(
        e,
        deltalake::DeltaTableError::Transaction { .. }
            | deltalake::DeltaTableError::VersionAlreadyExists(_)
    ) || e.to_string().to_ascii_lowercase().contains("conflict")
}

/// `date=2024-07-18/hour=10/part-....parquet` -> that hour.
pub(crate) fn partition_of_path(path: &str) -> Option<HourPartition> {
    let mut date = None;
    let mut hour = None;
    for segment in path.split('/') {
        if let Some(d) = segment.strip_prefix("date=") {
            date = Some(d.to_string());
        } else if let Some(h) = segment.strip_prefix("hour=") {
            hour = Some(h.to_string());
        }
    }
    Some(HourPartition {
        date: date?,
        hour: hour?,
    })
}

/// A batch read back through DataFusion (which may hand out view or dictionary types) in the
/// span table's exact types, columns in the schema's order.
pub fn cast_to_schema(
    batch: &RecordBatch,
    schema: &deltalake::arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch.column_by_name(field.name()).ok_or_else(|| {
                deltalake::arrow::error::ArrowError::SchemaError(format!(
                    "column {} is missing",
                    field.name()
                ))
            })?;
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                deltalake::arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}
