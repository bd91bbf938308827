//! The flusher: sealed WAL segments become commits to the lake, in sequence order.
//!
//! Runs on threads of its own with its own runtime, because Parquet encoding is CPU work
//! that must not stall the receivers' async threads. Segments are flushed one at a time, in
//! order. For each: decode its records (kept in memory by the WAL writer; read back from the
//! file only after a restart), group their rows by hour, price them, and append them to
//! every tier's table, the tiers side by side, in one commit per tier that carries the
//! application transaction (collector id, segment sequence). Only when every tier has it is
//! the segment file deleted and its memory-budget reservation released.
//! A failed flush is retried with backoff; meanwhile the budget fills up and the receivers
//! answer with the overload status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use runledger_lake::{group_by_partition, AppendOutcome, SpanTable};
use runledger_processor::{Pricer, RedactionTotals, Redactor};
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
        // One batch per segment, its rows grouped by hour (one copy of the rows): pricing,
        // redaction (whose memo of repeated values works within a batch) and the Parquet
        // writers then run once over ~40k spans instead of once per request, and neither
        // tier's append has to split or sort what the other already did.
        let priced = match group_by_partition(&aligned)
            .map_err(|e| format!("merging the segment's batches: {e}"))?
        {
            None => None,
            Some(merged) => {
                drop(aligned);
                let (batch, totals) = self
                    .pricer
                    .price_batch(&merged)
                    .map_err(|e| format!("pricing: {e}"))?;
                CollectorMetrics::add(&self.metrics.spans_unpriced, totals.unpriced);
                Some(batch)
            }
        };
        failpoint::hit("flush.before_commit");
        // The tiers are separate tables with their own commits: each is written by a task of
        // its own, so that redacting and encoding the redacted tier runs on one core while
        // the raw tier is encoded on the other. The segment is released only when all have
        // committed; a crash in between replays it, and each table skips the transaction it
        // already holds.
        let mut tasks = tokio::task::JoinSet::new();
        for (index, table) in std::mem::take(&mut self.tables).into_iter().enumerate() {
            let tier_flush = TierFlush {
                batch: priced.clone(),
                redactor: self.redactor.clone(),
                app_id: self.app_id.clone(),
                seq: segment.seq,
                metrics: self.metrics.clone(),
            };
            tasks.spawn(async move {
                let mut table = table;
                let result = tier_flush.write(&mut table).await;
                (index, table, result)
            });
        }
        let mut tables = Vec::with_capacity(tasks.len());
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let (index, table, result) = match joined {
                Ok(done) => done,
                // A panic in a tier's flush is a bug: let it end the flusher, as it would
                // have on this thread. The segment stays in the WAL for the next start.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            match result {
                Ok(()) if tables.is_empty() => failpoint::hit("flush.between_tiers"),
                Ok(()) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            tables.push((index, table));
        }
        tables.sort_unstable_by_key(|(index, _)| *index);
        self.tables = tables.into_iter().map(|(_, table)| table).collect();
        if let Some(error) = first_error {
            return Err(error);
        }
        failpoint::hit("flush.after_commit");
        match std::fs::remove_file(&segment.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", segment.path.display())),
        }
    }
}

/// One tier's share of a segment's flush: redact (for the redacted tier) and append.
struct TierFlush {
    batch: Option<RecordBatch>,
    redactor: Option<Arc<Redactor>>,
    app_id: String,
    seq: u64,
    metrics: Arc<CollectorMetrics>,
}

impl TierFlush {
    async fn write(self, table: &mut SpanTable) -> Result<(), String> {
        let batch = match (table.tier(), self.batch) {
            (_, None) => None,
            (Tier::Raw, Some(priced)) => Some(vec![priced]),
            (Tier::Redacted, Some(priced)) => {
                let Some(redactor) = &self.redactor else {
                    return Err("the redacted tier has no redactor: refusing to write".into());
                };
                let parts = std::thread::available_parallelism().map_or(1, |n| n.get());
                let (parts, cpu) = redact_side_by_side(redactor, &priced, parts)?;
                CollectorMetrics::add(&self.metrics.redact_micros, cpu.as_micros() as u64);
                for (_, totals) in &parts {
                    self.metrics.add_redactions(&totals.by_kind);
                }
                Some(parts.into_iter().map(|(batch, _)| batch).collect())
            }
        };
        let outcome = table
            .append(
                batch.as_deref().unwrap_or_default(),
                &self.app_id,
                self.seq as i64,
            )
            .await
            .map_err(|e| e.to_string())?;
        if let AppendOutcome::Committed { rows, .. } = outcome {
            CollectorMetrics::add(&self.metrics.rows_committed, rows as u64);
        }
        tracing::debug!(segment = self.seq, tier = %table.tier(), ?outcome, "flushed");
        Ok(())
    }
}

/// Rows below which a batch is redacted on one thread: splitting pays for a thread only
/// when there is enough to share (a segment holds tens of thousands of spans).
const MIN_ROWS_PER_REDACTION_THREAD: usize = 4096;

/// Redacts `batch` in up to `threads` slices of consecutive rows, side by side: redaction
/// is the largest share of a segment's flush, and on its own it would leave the redacted
/// tier's commit far behind the raw one. The slices keep the batch's row order (and so its
/// grouping by hour) and are appended as they are, without a concatenation. Returns each
/// slice's redacted batch and totals, and the CPU time spent (thread time, so that waiting
/// for a core is not counted as redaction).
fn redact_side_by_side(
    redactor: &Redactor,
    batch: &RecordBatch,
    threads: usize,
) -> Result<(Vec<(RecordBatch, RedactionTotals)>, Duration), String> {
    let rows = batch.num_rows();
    let parts = threads.min(rows / MIN_ROWS_PER_REDACTION_THREAD).max(1);
    let chunk = rows.div_ceil(parts);
    let redact = |offset: usize| {
        let started = thread_cpu_time();
        let slice = batch.slice(offset, chunk.min(rows - offset));
        let redacted = redactor
            .redact_batch(&slice)
            .map_err(|e| format!("redacting: {e}"));
        (redacted, thread_cpu_time().saturating_sub(started))
    };
    let results: Vec<_> = if parts == 1 {
        vec![redact(0)]
    } else {
        std::thread::scope(|scope| {
            let others: Vec<_> = (1..parts)
                .map(|part| scope.spawn(move || redact(part * chunk)))
                .collect();
            let mut results = vec![redact(0)];
            for other in others {
                match other.join() {
                    Ok(result) => results.push(result),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            results
        })
    };
    let cpu = results.iter().map(|(_, cpu)| *cpu).sum();
    let parts = results
        .into_iter()
        .map(|(redacted, _)| redacted)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((parts, cpu))
}

/// CPU time of the calling thread so far.
fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime writes into the struct it is given.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use runledger_processor::{Normalizer, ProcessorConfig, RedactionConfig};

    /// `n` spans whose attributes hold personal data, some repeated across the batch.
    fn spans_with_pii(n: usize) -> RecordBatch {
        let text = |i: usize| {
            format!(
                "customer {} <user{}@example.com> paid with 4111 1111 1111 1111, call +1 415 555 {:04}",
                i % 7,
                i % 97,
                i % 10_000
            )
        };
        let spans = (0..n)
            .map(|i| Span {
                trace_id: (i as u128 / 10 + 1).to_be_bytes().to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: format!("tool refund {}", i % 3),
                start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1_000_000,
                end_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1_000_000 + 500,
                attributes: vec![KeyValue {
                    key: "gen_ai.tool.call.arguments".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(text(i))),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Normalizer::new(&ProcessorConfig::default())
            .unwrap()
            .normalize(&request, std::time::SystemTime::now())
            .batch
            .unwrap()
    }

    #[test]
    fn redacting_side_by_side_equals_redacting_on_one_thread() {
        let redactor = Redactor::new(&RedactionConfig::default(), &[], b"test key").unwrap();
        let batch = spans_with_pii(3 * MIN_ROWS_PER_REDACTION_THREAD + 5);
        let (whole, _) = redact_side_by_side(&redactor, &batch, 1).unwrap();
        let (parts, _) = redact_side_by_side(&redactor, &batch, 3).unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(parts.len(), 3, "one slice per thread");
        let schema = batch.schema();
        let joined = arrow::compute::concat_batches(
            &schema,
            &parts.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(joined, whole[0].0);
        let total = |totals: &[&RedactionTotals]| {
            let mut sum = std::collections::BTreeMap::<String, u64>::new();
            for t in totals {
                for (kind, n) in &t.by_kind {
                    *sum.entry(kind.clone()).or_default() += n;
                }
            }
            sum
        };
        let whole_totals = total(&[&whole[0].1]);
        assert_eq!(
            total(&parts.iter().map(|(_, t)| t).collect::<Vec<_>>()),
            whole_totals
        );
        // Something was found, in every span: the comparison is not of two untouched copies.
        assert!(
            whole_totals.values().all(|&n| n >= batch.num_rows() as u64),
            "{whole_totals:?}"
        );
        assert!(!whole_totals.is_empty());
        // Too few rows to share: one slice, whatever the number of threads.
        let small = batch.slice(0, MIN_ROWS_PER_REDACTION_THREAD);
        assert_eq!(
            redact_side_by_side(&redactor, &small, 4).unwrap().0.len(),
            1
        );
    }
}
