//! The flusher: sealed WAL segments become commits to the lake, in sequence order.
//!
//! Runs on threads of its own with its own runtime, because Parquet encoding is CPU work
//! that must not stall the receivers' async threads. It is a small pipeline:
//!
//! ```text
//!  sealed segments -> prepare: take the spans (kept in memory by the WAL writer; read back
//!                     from the file only after a restart), group them by hour, price them
//!                  -> the redacted tier's stage: redact (the raw tier's rows pass as
//!                     they are), one segment ahead of its lane
//!                  -> one lane per tier, each a task with its table: append in one
//!                     commit carrying the application transaction (collector id,
//!                     segment sequence), segment after segment in order
//!                  -> the last lane to commit a segment deletes its file; its memory-budget
//!                     reservation is released when the lanes let go of it
//! ```
//!
//! The lanes run side by side and need not wait for each other: while the redacted tier
//! encodes segment n and redacts segment n + 1, the raw tier can commit segment n + 1, and
//! the next segment is prepared meanwhile. Each table still receives the segments in
//! sequence order, which is what its transaction versions require. A failed append is
//! retried by its lane with backoff; meanwhile the budget fills up and the receivers answer
//! with the overload status.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// Prepared segments a lane may have queued: enough to keep it busy, few enough that the
/// priced copies in memory stay a couple of segments' worth.
const LANE_DEPTH: usize = 1;

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

/// A segment on its way through the lanes.
struct PreparedSegment {
    /// Released (reservations) when the last lane drops its handle.
    segment: SealedSegment,
    /// The segment's spans, grouped by hour and priced; `None` when it had none.
    batch: Option<RecordBatch>,
    /// Lanes it was handed to.
    lanes: usize,
    /// Lanes that have not committed it yet.
    uncommitted: AtomicUsize,
    /// When its preparation started.
    started: Instant,
}

impl Flusher {
    pub(crate) async fn run(self, mut sealed: UnboundedReceiver<SealedSegment>) {
        let mut lanes = Vec::with_capacity(self.tables.len());
        let mut tasks = tokio::task::JoinSet::new();
        for table in self.tables {
            let (ready_sender, ready) = tokio::sync::mpsc::channel::<ReadySegment>(LANE_DEPTH);
            match table.tier() {
                Tier::Raw => lanes.push(LaneInput::Rows(ready_sender)),
                Tier::Redacted => {
                    let (sender, receiver) = tokio::sync::mpsc::channel(LANE_DEPTH);
                    lanes.push(LaneInput::ToRedact(sender));
                    let stage = Redact {
                        redactor: self.redactor.clone(),
                        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                        metrics: self.metrics.clone(),
                        shutting_down: self.shutting_down.clone(),
                    };
                    tasks.spawn(stage.run(receiver, ready_sender));
                }
            }
            let lane = Lane {
                table,
                app_id: self.app_id.clone(),
                metrics: self.metrics.clone(),
                shutting_down: self.shutting_down.clone(),
            };
            tasks.spawn(lane.run(ready));
        }
        let prepare = Prepare {
            pricer: self.pricer,
            metrics: self.metrics.clone(),
        };
        'segments: while let Some(segment) = sealed.recv().await {
            let started = Instant::now();
            let mut attempt = 0u32;
            let batch = loop {
                match prepare.prepare(&segment) {
                    Ok(batch) => break batch,
                    Err(error) => {
                        attempt += 1;
                        CollectorMetrics::add(&self.metrics.flush_errors, 1);
                        tracing::error!(
                            segment = segment.seq,
                            attempt,
                            %error,
                            "preparing a WAL segment for the lake failed; it stays in the WAL"
                        );
                        if !backoff(&self.shutting_down, attempt).await {
                            break 'segments;
                        }
                    }
                }
            };
            failpoint::hit("flush.before_commit");
            let prepared = Arc::new(PreparedSegment {
                segment,
                batch,
                lanes: lanes.len(),
                uncommitted: AtomicUsize::new(lanes.len()),
                started,
            });
            if lanes.is_empty() {
                // No tier to write (the config requires one; kept safe all the same).
                release(&prepared, &self.metrics);
            }
            for lane in &lanes {
                let sent = match lane {
                    LaneInput::Rows(lane) => {
                        let rows = prepared.batch.as_ref().map(|b| vec![b.clone()]);
                        lane.send((prepared.clone(), rows)).await.is_ok()
                    }
                    LaneInput::ToRedact(stage) => stage.send(prepared.clone()).await.is_ok(),
                };
                if !sent {
                    // The lane gave up at shutdown: what follows stays on disk.
                    break 'segments;
                }
            }
        }
        // Closing the lanes' queues lets them finish what they hold, then stop.
        drop(lanes);
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                if e.is_panic() {
                    // A panic in a lane is a bug: let it end the flusher, as it would have
                    // on this thread. The segments stay in the WAL for the next start.
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

/// Waits before the next attempt; `false` when the flusher is shutting down and has tried
/// enough (the rest stays on disk and is replayed at the next start).
async fn backoff(shutting_down: &AtomicBool, attempt: u32) -> bool {
    if shutting_down.load(Ordering::Acquire) && attempt >= ATTEMPTS_WHEN_SHUTTING_DOWN {
        tracing::error!(
            "giving up at shutdown: the remaining segments stay on disk and are replayed at \
             the next start"
        );
        return false;
    }
    let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(9)));
    tokio::time::sleep(backoff.min(MAX_BACKOFF)).await;
    true
}

/// The first stage: a segment's spans, ready for every tier.
struct Prepare {
    pricer: Arc<Pricer>,
    metrics: Arc<CollectorMetrics>,
}

impl Prepare {
    fn prepare(&self, segment: &SealedSegment) -> Result<Option<RecordBatch>, String> {
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
        let Some(merged) = group_by_partition(&aligned)
            .map_err(|e| format!("merging the segment's batches: {e}"))?
        else {
            return Ok(None);
        };
        drop(aligned);
        let (batch, totals) = self
            .pricer
            .price_batch(&merged)
            .map_err(|e| format!("pricing: {e}"))?;
        CollectorMetrics::add(&self.metrics.spans_unpriced, totals.unpriced);
        Ok(Some(batch))
    }
}

/// A segment with the rows of one tier: the priced batch for the raw tier, the redacted
/// batches for the redacted one (`None`: the segment held no span).
type ReadySegment = (Arc<PreparedSegment>, Option<Vec<RecordBatch>>);

/// Where the flusher hands a prepared segment for one tier.
enum LaneInput {
    /// The raw tier's lane, which writes the prepared rows as they are.
    Rows(tokio::sync::mpsc::Sender<ReadySegment>),
    /// The redaction stage before the redacted tier's lane.
    ToRedact(tokio::sync::mpsc::Sender<Arc<PreparedSegment>>),
}

/// The redacted tier's stage before its lane: redacts segment n + 1 while the lane encodes
/// and commits segment n, so that the two overlap instead of leaving a core idle (when the
/// receivers go quiet, the backlog drained at two thirds of the machine before). It takes a
/// slot in the lane's queue before it takes a segment to redact, so that at most two redacted
/// segments are in memory: the one the lane writes and the next.
struct Redact {
    redactor: Option<Arc<Redactor>>,
    /// Threads that redact a segment side by side: the machine's cores.
    threads: usize,
    metrics: Arc<CollectorMetrics>,
    shutting_down: Arc<AtomicBool>,
}

impl Redact {
    async fn run(
        self,
        mut queue: tokio::sync::mpsc::Receiver<Arc<PreparedSegment>>,
        ready: tokio::sync::mpsc::Sender<ReadySegment>,
    ) {
        // The slot first, then the segment: waiting for room, the stage holds no segment, so
        // the priced copies in memory are one more than without it (the lane's, the queued
        // redacted one's, and the one in the queue before this stage).
        while let Ok(slot) = ready.reserve().await {
            let Some(prepared) = queue.recv().await else {
                return;
            };
            let mut attempt = 0u32;
            let batches = loop {
                match self.redact(&prepared).await {
                    Ok(batches) => break batches,
                    Err(error) => {
                        attempt += 1;
                        CollectorMetrics::add(&self.metrics.flush_errors, 1);
                        tracing::error!(
                            segment = prepared.segment.seq,
                            tier = %Tier::Redacted,
                            attempt,
                            %error,
                            "redacting a WAL segment failed; it stays in the WAL"
                        );
                        if !backoff(&self.shutting_down, attempt).await {
                            return;
                        }
                    }
                }
            };
            slot.send((prepared, batches));
        }
    }

    async fn redact(&self, prepared: &PreparedSegment) -> Result<Option<Vec<RecordBatch>>, String> {
        let Some(priced) = &prepared.batch else {
            return Ok(None);
        };
        let Some(redactor) = &self.redactor else {
            return Err("the redacted tier has no redactor: refusing to write".into());
        };
        let (parts, cpu) = redact_side_by_side(redactor, priced, self.threads).await?;
        CollectorMetrics::add(&self.metrics.redact_micros, cpu.as_micros() as u64);
        for (_, totals) in &parts {
            self.metrics.add_redactions(&totals.by_kind);
        }
        Ok(Some(parts.into_iter().map(|(batch, _)| batch).collect()))
    }
}

/// One tier's lane: its table, and the segments it commits in order.
struct Lane {
    table: SpanTable,
    app_id: String,
    metrics: Arc<CollectorMetrics>,
    shutting_down: Arc<AtomicBool>,
}

impl Lane {
    async fn run(mut self, mut queue: tokio::sync::mpsc::Receiver<ReadySegment>) {
        while let Some((prepared, batches)) = queue.recv().await {
            let mut attempt = 0u32;
            loop {
                match self.write(&prepared, batches.as_deref()).await {
                    Ok(()) => break,
                    Err(error) => {
                        attempt += 1;
                        CollectorMetrics::add(&self.metrics.flush_errors, 1);
                        tracing::error!(
                            segment = prepared.segment.seq,
                            tier = %self.table.tier(),
                            attempt,
                            %error,
                            "flushing a WAL segment to the lake failed; it stays in the WAL"
                        );
                        if !backoff(&self.shutting_down, attempt).await {
                            // Dropping the queue tells the flusher to stop sending.
                            return;
                        }
                    }
                }
            }
            let uncommitted = prepared.uncommitted.fetch_sub(1, Ordering::AcqRel);
            if uncommitted == prepared.lanes {
                // The first tier to commit it.
                failpoint::hit("flush.between_tiers");
            }
            if uncommitted == 1 {
                release(&prepared, &self.metrics);
            }
        }
    }

    /// This tier's share of a segment's flush: append its rows in one commit.
    async fn write(
        &mut self,
        prepared: &PreparedSegment,
        batches: Option<&[RecordBatch]>,
    ) -> Result<(), String> {
        let seq = prepared.segment.seq;
        let outcome = self
            .table
            .append(batches.unwrap_or_default(), &self.app_id, seq as i64)
            .await
            .map_err(|e| e.to_string())?;
        if let AppendOutcome::Committed { rows, .. } = outcome {
            CollectorMetrics::add(&self.metrics.rows_committed, rows as u64);
        }
        tracing::debug!(segment = seq, tier = %self.table.tier(), ?outcome, "flushed");
        Ok(())
    }
}

/// Every tier has committed the segment: its file goes (the segment's reservations go with
/// the last handle to it).
fn release(prepared: &PreparedSegment, metrics: &CollectorMetrics) {
    failpoint::hit("flush.after_commit");
    let path = &prepared.segment.path;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Committed everywhere: a replay at the next start finds every transaction in the
        // tables and writes nothing.
        Err(e) => tracing::warn!(segment = %path.display(), %e, "removing a flushed WAL segment"),
    }
    CollectorMetrics::add(
        &metrics.flush_micros,
        prepared.started.elapsed().as_micros() as u64,
    );
    CollectorMetrics::add(&metrics.segments_flushed, 1);
}

/// Rows below which a batch is redacted on one thread: splitting pays for a thread only
/// when there is enough to share (a segment holds tens of thousands of spans).
const MIN_ROWS_PER_REDACTION_THREAD: usize = 4096;

/// Rows that the redactor takes as one batch. Its memos of repeated values and its caches of
/// keys live for a batch: as it grows they become tables that miss the CPU's caches, and
/// cost more than the further repeats they catch, which are mostly within a run's ten or so
/// consecutive spans. `bench redaction` on batches of 20,000 rows was 11% slower than on
/// 2,000 to 4,000, and on 4,096 rows 8% slower than on 1,024 or 512; in the server, 1,024
/// rows cut redaction from 4.2-4.5 to 3.7-4.1 us per span (three alternating pairs).
const ROWS_PER_REDACTION_BATCH: usize = 1024;

/// Redacts `batch` in up to `threads` slices of consecutive rows, side by side (the first on
/// the calling thread, the others on the runtime's blocking threads): redaction is the
/// largest share of a segment's flush, and on its own it would leave the redacted tier's
/// commit far behind the raw one. The slices keep the batch's row order (and so its
/// grouping by hour) and are appended as they are, without a concatenation. Returns the
/// redacted batches (of at most [`ROWS_PER_REDACTION_BATCH`] rows) with their totals, in row
/// order, and the CPU time spent (thread time, so that waiting for a core is not counted as
/// redaction).
async fn redact_side_by_side(
    redactor: &Arc<Redactor>,
    batch: &RecordBatch,
    threads: usize,
) -> Result<(Vec<(RecordBatch, RedactionTotals)>, Duration), String> {
    let rows = batch.num_rows();
    let parts = threads.min(rows / MIN_ROWS_PER_REDACTION_THREAD).max(1);
    let chunk = rows.div_ceil(parts);
    // The other slices go to the runtime's blocking threads, which outlive a segment: a
    // thread started for each segment began its allocator heap anew every time, and took
    // fresh pages from the kernel for what the previous one had left behind.
    let others: Vec<_> = (1..parts)
        .map(|part| {
            let (redactor, batch) = (redactor.clone(), batch.clone());
            tokio::task::spawn_blocking(move || {
                redact_slice(&redactor, &batch, part * chunk, chunk)
            })
        })
        .collect();
    let mut results = vec![redact_slice(redactor, batch, 0, chunk)];
    for other in others {
        match other.await {
            Ok(result) => results.push(result),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(format!("a redaction thread was cancelled: {e}")),
        }
    }
    let mut parts = Vec::new();
    let mut cpu = Duration::ZERO;
    for result in results {
        let (redacted, spent) = result?;
        parts.extend(redacted);
        cpu += spent;
    }
    Ok((parts, cpu))
}

/// Redacts `len` rows of `batch` from `offset` (fewer at its end) in batches of at most
/// [`ROWS_PER_REDACTION_BATCH`] rows, on the calling thread; and the thread's CPU time spent.
fn redact_slice(
    redactor: &Redactor,
    batch: &RecordBatch,
    offset: usize,
    len: usize,
) -> Result<(Vec<(RecordBatch, RedactionTotals)>, Duration), String> {
    let started = thread_cpu_time();
    let end = offset + len.min(batch.num_rows() - offset);
    let redacted = (offset..end)
        .step_by(ROWS_PER_REDACTION_BATCH)
        .map(|at| {
            let slice = batch.slice(at, ROWS_PER_REDACTION_BATCH.min(end - at));
            redactor
                .redact_batch(&slice)
                .map_err(|e| format!("redacting: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((redacted, thread_cpu_time().saturating_sub(started)))
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

    /// A record that this process encoded decodes, without validation, to the batch it was
    /// encoded from, as it does with validation (recovery's path); a cut-short one is an
    /// error, not a panic; and read from disk, a string that is not UTF-8 is refused.
    #[test]
    fn trusted_records_decode_to_the_batches_they_were_encoded_from() {
        let batch = spans_with_pii(300);
        for input in [batch.clone(), batch.slice(17, 200)] {
            let record = bytes::Bytes::from(crate::ingest::encode_batch(&input).unwrap());
            for trust in [Trust::EncodedHere, Trust::ReadFromDisk] {
                let decoded = decode_batches(record.clone(), trust).unwrap();
                assert_eq!(decoded, vec![input.clone()], "{trust:?}");
            }
            for cut in [1, 7, record.len() / 2, record.len() - 9] {
                let short = record.slice(..cut);
                assert!(
                    decode_batches(short, Trust::EncodedHere).is_err(),
                    "cut at {cut}"
                );
            }
            let mut corrupt = record.to_vec();
            let at = corrupt
                .windows(b"example.com".len())
                .position(|w| w == b"example.com")
                .expect("an email in the record");
            corrupt[at] = 0xff;
            let corrupt = bytes::Bytes::from(corrupt);
            let error = decode_batches(corrupt, Trust::ReadFromDisk).unwrap_err();
            assert!(error.to_string().contains("Invalid UTF8"), "{error}");
        }
    }

    /// A segment as the flusher hands it on, with no WAL file behind it.
    fn prepared(seq: u64, batch: Option<RecordBatch>) -> Arc<PreparedSegment> {
        Arc::new(PreparedSegment {
            segment: SealedSegment {
                seq,
                path: std::path::PathBuf::from(format!("{seq}.wal")),
                bytes: 0,
                reservations: Vec::new(),
                records: None,
            },
            batch,
            lanes: 1,
            uncommitted: AtomicUsize::new(1),
            started: Instant::now(),
        })
    }

    fn redaction_stage(redactor: Option<Arc<Redactor>>, shutting_down: bool) -> Redact {
        Redact {
            redactor,
            threads: 2,
            metrics: Arc::new(CollectorMetrics::default()),
            shutting_down: Arc::new(AtomicBool::new(shutting_down)),
        }
    }

    /// The redaction stage hands its lane every segment in order, redacted as the redactor
    /// redacts it, and redacts the next one while the lane still holds the one before (it
    /// does not wait for the lane's commit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redaction_stage_works_a_segment_ahead_of_its_lane() {
        let redactor =
            Arc::new(Redactor::new(&RedactionConfig::default(), &[], b"test key").unwrap());
        let (input, queue) = tokio::sync::mpsc::channel(LANE_DEPTH);
        let (ready_sender, mut ready) = tokio::sync::mpsc::channel(LANE_DEPTH);
        let stage =
            tokio::spawn(redaction_stage(Some(redactor.clone()), false).run(queue, ready_sender));
        let batches = [spans_with_pii(50), spans_with_pii(70)];
        input
            .send(prepared(1, Some(batches[0].clone())))
            .await
            .unwrap();
        // The lane takes segment 1 and, still writing it, gets segment 2 redacted.
        let (first, first_rows) = ready.recv().await.unwrap();
        input
            .send(prepared(2, Some(batches[1].clone())))
            .await
            .unwrap();
        let ahead = tokio::time::timeout(Duration::from_secs(60), ready.recv());
        let (second, second_rows) = ahead
            .await
            .expect("segment 2 redacted while the lane holds segment 1")
            .unwrap();
        input.send(prepared(3, None)).await.unwrap();
        drop(input);
        let (third, third_rows) = ready.recv().await.unwrap();
        assert!(
            ready.recv().await.is_none(),
            "the stage stops with its queue"
        );
        stage.await.unwrap();
        let seqs = [&first, &second, &third].map(|p| p.segment.seq);
        assert_eq!(seqs, [1, 2, 3]);
        for (rows, batch) in [first_rows, second_rows].into_iter().zip(&batches) {
            let (expected, _) = redact_side_by_side(&redactor, batch, 2).await.unwrap();
            let expected: Vec<RecordBatch> = expected.into_iter().map(|(b, _)| b).collect();
            let rows = rows.expect("a segment with spans has rows");
            assert_eq!(rows, expected);
            let text = format!(
                "{}",
                arrow::util::pretty::pretty_format_batches(&rows).unwrap()
            );
            assert!(!text.contains("4111 1111 1111 1111"), "redacted: {text}");
        }
        assert!(third_rows.is_none(), "a segment without spans has no rows");
    }

    /// Without a redactor the stage hands nothing on (the redacted tier never gets raw
    /// rows); at shutdown it gives up after its retries and the segment stays in the WAL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redaction_stage_without_a_redactor_hands_nothing_on() {
        let (input, queue) = tokio::sync::mpsc::channel(LANE_DEPTH);
        let (ready_sender, mut ready) = tokio::sync::mpsc::channel(LANE_DEPTH);
        let stage = tokio::spawn(redaction_stage(None, true).run(queue, ready_sender));
        input
            .send(prepared(1, Some(spans_with_pii(5))))
            .await
            .unwrap();
        assert!(ready.recv().await.is_none(), "nothing reaches the lane");
        stage.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redacting_side_by_side_equals_redacting_on_one_thread() {
        let redactor =
            Arc::new(Redactor::new(&RedactionConfig::default(), &[], b"test key").unwrap());
        let batch = spans_with_pii(3 * MIN_ROWS_PER_REDACTION_THREAD + 5);
        let (whole, _) = redact_side_by_side(&redactor, &batch, 1).await.unwrap();
        let (parts, _) = redact_side_by_side(&redactor, &batch, 3).await.unwrap();
        // One thread: the rows in redaction batches; three threads: two slices of `chunk`
        // rows and the rest, each in redaction batches of its own.
        let batches = |rows: usize| rows.div_ceil(ROWS_PER_REDACTION_BATCH);
        let chunk = batch.num_rows().div_ceil(3);
        assert_eq!(whole.len(), batches(batch.num_rows()));
        assert_eq!(
            parts.len(),
            2 * batches(chunk) + batches(batch.num_rows() - 2 * chunk),
            "each thread's slice in redaction batches"
        );
        assert!(parts.len() > whole.len());
        assert!(parts
            .iter()
            .chain(&whole)
            .all(|(b, _)| b.num_rows() <= ROWS_PER_REDACTION_BATCH));
        let schema = batch.schema();
        let joined = |parts: &[(RecordBatch, RedactionTotals)]| {
            arrow::compute::concat_batches(
                &schema,
                &parts.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
            )
            .unwrap()
        };
        assert_eq!(joined(&parts), joined(&whole));
        assert_eq!(joined(&parts).num_rows(), batch.num_rows());
        let total = |totals: &[&RedactionTotals]| {
            let mut sum = std::collections::BTreeMap::<String, u64>::new();
            for t in totals {
                for (kind, n) in &t.by_kind {
                    *sum.entry(kind.clone()).or_default() += n;
                }
            }
            sum
        };
        let whole_totals = total(&whole.iter().map(|(_, t)| t).collect::<Vec<_>>());
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
        // Too few rows to share: one slice, whatever the number of threads, so every
        // redaction batch but the last is full (slices would leave a short one between).
        let rows = MIN_ROWS_PER_REDACTION_THREAD + ROWS_PER_REDACTION_BATCH / 2;
        let small = batch.slice(0, rows);
        let sizes: Vec<usize> = redact_side_by_side(&redactor, &small, 4)
            .await
            .unwrap()
            .0
            .iter()
            .map(|(b, _)| b.num_rows())
            .collect();
        let mut one_slice = vec![ROWS_PER_REDACTION_BATCH; rows / ROWS_PER_REDACTION_BATCH];
        one_slice.push(rows % ROWS_PER_REDACTION_BATCH);
        assert_eq!(sizes, one_slice);
    }
}
