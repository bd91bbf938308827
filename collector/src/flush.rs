//! The flusher: sealed WAL segments become commits to the lake, in sequence order.
//!
//! Runs on a thread of its own with its own runtime, because Parquet encoding is CPU work
//! that must not stall the receivers' async threads. For each segment: decode its records
//! (kept in memory by the WAL writer; read back from the file only after a restart), price them,
//! and append them to every tier's table in one commit per tier that
//! carries the application transaction (collector id, segment sequence). Only when every
//! tier has it is the segment file deleted and its memory-budget reservation released.
//! A failed flush is retried with backoff; meanwhile the budget fills up and the receivers
//! answer with the overload status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use runledger_lake::{AppendOutcome, SpanTable};
use runledger_processor::{Pricer, Redactor};
use runledger_schemas::{span_table_schema, Tier};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::ingest::{decode_batches, Trust};
use crate::metrics::CollectorMetrics;
use crate::wal::{read_segment, SealedSegment};
use runledger_lake::failpoint;

/// Failed attempts after which a shutting-down flusher leaves the rest on disk for the next
/// start instead of retrying forever.
const ATTEMPTS_WHEN_SHUTTING_DOWN: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(crate) struct Flusher {
    pub(crate) tables: Vec<SpanTable>,
    /// Computes the cost columns of every span before any tier sees it.
    pub(crate) pricer: Arc<Pricer>,
    /// Present when a table of the redacted tier is among `tables`.
    pub(crate) redactor: Option<Arc<Redactor>>,
    pub(crate) app_id: String,
    pub(crate) metrics: Arc<CollectorMetrics>,
    pub(crate) shutting_down: Arc<AtomicBool>,
}

impl Flusher {
    pub(crate) async fn run(mut self, mut sealed: UnboundedReceiver<SealedSegment>) {
        while let Some(segment) = sealed.recv().await {
            let mut attempt = 0u32;
            loop {
                let started = Instant::now();
                match self.flush(&segment).await {
                    Ok(()) => {
                        CollectorMetrics::add(
                            &self.metrics.flush_micros,
                            started.elapsed().as_micros() as u64,
                        );
                        CollectorMetrics::add(&self.metrics.segments_flushed, 1);
                        break;
                    }
                    Err(error) => {
                        attempt += 1;
                        CollectorMetrics::add(&self.metrics.flush_errors, 1);
                        tracing::error!(
                            segment = segment.seq,
                            attempt,
                            %error,
                            "flushing a WAL segment to the lake failed; it stays in the WAL"
                        );
                        if self.shutting_down.load(Ordering::Acquire)
                            && attempt >= ATTEMPTS_WHEN_SHUTTING_DOWN
                        {
                            tracing::error!(
                                "giving up at shutdown: the remaining segments stay on disk \
                                 and are replayed at the next start"
                            );
                            return;
                        }
                        let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(9)));
                        tokio::time::sleep(backoff.min(MAX_BACKOFF)).await;
                    }
                }
            }
            // Dropping the segment releases its reservations.
            drop(segment);
        }
    }

    async fn flush(&mut self, segment: &SealedSegment) -> Result<(), String> {
        let schema = span_table_schema();
        // Records that this process encoded are taken as they are; records read back from
        // disk after a restart are validated (UTF-8, offsets) as they are decoded.
        let (records, trusted) = match &segment.records {
            Some(records) => (records.clone(), Trust::EncodedHere),
            None => (
                read_segment(&segment.path).map_err(|e| e.to_string())?.0,
                Trust::ReadFromDisk,
            ),
        };
        let mut aligned = Vec::with_capacity(records.len());
        for record in records {
            let batches = decode_batches(record, trusted).map_err(|e| {
                format!(
                    "segment {}: undecodable record: {e}",
                    segment.path.display()
                )
            })?;
            for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
                aligned.push(align_to_schema(batch, &schema).map_err(|e| e.to_string())?);
            }
        }
        // One batch per segment (a copy of each column's buffers, not a row-by-row gather):
        // pricing, redaction (whose memo of repeated values works within a batch) and the
        // Parquet writer then run once over ~40k spans instead of once per request.
        let priced = if aligned.is_empty() {
            None
        } else {
            let merged = arrow::compute::concat_batches(&schema, &aligned)
                .map_err(|e| format!("merging the segment's batches: {e}"))?;
            drop(aligned);
            let (batch, totals) = self
                .pricer
                .price_batch(&merged)
                .map_err(|e| format!("pricing: {e}"))?;
            CollectorMetrics::add(&self.metrics.spans_unpriced, totals.unpriced);
            Some(batch)
        };
        let mut redacted: Option<RecordBatch> = None;
        failpoint::hit("flush.before_commit");
        for (i, table) in self.tables.iter_mut().enumerate() {
            let batch = match table.tier() {
                Tier::Raw => priced.as_ref(),
                Tier::Redacted => match (&priced, &self.redactor) {
                    (None, _) => None,
                    (Some(priced), Some(redactor)) => {
                        let started = Instant::now();
                        let (batch, totals) = redactor
                            .redact_batch(priced)
                            .map_err(|e| format!("redacting: {e}"))?;
                        CollectorMetrics::add(
                            &self.metrics.redact_micros,
                            started.elapsed().as_micros() as u64,
                        );
                        self.metrics.add_redactions(&totals.by_kind);
                        Some(&*redacted.insert(batch))
                    }
                    (Some(_), None) => {
                        return Err("the redacted tier has no redactor: refusing to write".into())
                    }
                },
            };
            let outcome = table
                .append(
                    batch.map_or(&[], std::slice::from_ref),
                    &self.app_id,
                    segment.seq as i64,
                )
                .await
                .map_err(|e| e.to_string())?;
            if let AppendOutcome::Committed { rows, .. } = outcome {
                CollectorMetrics::add(&self.metrics.rows_committed, rows as u64);
            }
            tracing::debug!(segment = segment.seq, tier = %table.tier(), ?outcome, "flushed");
            if i == 0 {
                failpoint::hit("flush.between_tiers");
            }
        }
        failpoint::hit("flush.after_commit");
        match std::fs::remove_file(&segment.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", segment.path.display())),
        }
    }
}

/// A batch logged by an older version may lack columns added since: they are filled with
/// nulls, so that an upgrade never strands the WAL.
fn align_to_schema(
    batch: RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => Ok(column.clone()),
            None if field.is_nullable() => Ok(arrow::array::new_null_array(
                field.data_type(),
                batch.num_rows(),
            )),
            None => Err(arrow::error::ArrowError::SchemaError(format!(
                "a WAL record lacks the required column {}",
                field.name()
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}
