//! The shared ingest path of both receivers: admit, normalise, log, acknowledge.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow::array::RecordBatch;
use arrow::ipc::writer::StreamWriter;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use runledger_processor::Normalizer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::CollectorMetrics;
use crate::wal::Wal;
use crate::{IngestConfig, IngestError, MemoryBudget};

/// What an accepted export did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportOutcome {
    /// Spans now durable.
    pub accepted_spans: usize,
    /// Spans refused one by one (invalid ids or timestamps).
    pub rejected_spans: usize,
    /// Why they were refused.
    pub error_message: String,
}

impl ExportOutcome {
    /// The OTLP response: `partial_success` is set only when something was rejected, as the
    /// specification asks.
    pub fn into_response(self) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            partial_success: (self.rejected_spans > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: self.rejected_spans as i64,
                error_message: self.error_message,
            }),
        }
    }
}

/// The ingest path shared by the gRPC and HTTP receivers.
pub struct Ingest {
    normalizer: Arc<Normalizer>,
    wal: Wal,
    budget: MemoryBudget,
    inflight: Arc<Semaphore>,
    config: IngestConfig,
    metrics: Arc<CollectorMetrics>,
    /// The nice value of the threads that receive exports: the process's when the ingest
    /// path was built, plus `ingest.receiver_nice`; `None` when that is 0.
    receiver_priority: Option<i32>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("budget_used", &self.budget.used())
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// Builds the ingest path over an open WAL.
    pub(crate) fn new(
        normalizer: Normalizer,
        wal: Wal,
        budget: MemoryBudget,
        config: IngestConfig,
        metrics: Arc<CollectorMetrics>,
    ) -> Self {
        let receiver_priority =
            (config.receiver_nice != 0).then(|| (thread_priority() + config.receiver_nice).min(19));
        Self {
            normalizer: Arc::new(normalizer),
            wal,
            budget,
            inflight: Arc::new(Semaphore::new(config.max_inflight_requests)),
            config,
            metrics,
            receiver_priority,
        }
    }

    /// The configured limits.
    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// The collector's counters.
    pub fn metrics(&self) -> &CollectorMetrics {
        &self.metrics
    }

    fn overloaded(&self, reason: &'static str) -> IngestError {
        CollectorMetrics::add(&self.metrics.requests_overloaded, 1);
        IngestError::Overloaded {
            reason,
            retry_after: Duration::from_secs(self.config.retry_after_seconds.max(1)),
        }
    }

    /// Admits one request, before its body is read: refused with the overload status when
    /// too many are in flight or the memory budget is spent. Hold the permit until the
    /// request is answered.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, IngestError> {
        if self.budget.is_full() {
            return Err(self.overloaded("memory budget for unflushed spans is spent"));
        }
        self.inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.overloaded("too many export requests in flight"))
    }

    /// Counts a request refused before [`Ingest::export`] (malformed, too large).
    pub fn count_refused(&self, error: &IngestError) {
        CollectorMetrics::add(&self.metrics.requests, 1);
        match error {
            IngestError::Malformed(_) | IngestError::UnsupportedMediaType(_) => {
                CollectorMetrics::add(&self.metrics.requests_malformed, 1)
            }
            IngestError::TooLarge { .. } => {
                CollectorMetrics::add(&self.metrics.requests_too_large, 1)
            }
            _ => {}
        }
    }

    /// Normalises the request (an `ExportTraceServiceRequest` in protobuf wire form, read in
    /// place) on the blocking pool, appends the accepted spans to the WAL, and returns once
    /// they are durable. `payload_bytes` is the body as sent (compressed or not); invalid
    /// protobuf is refused whole, as malformed.
    pub async fn export(
        &self,
        request: bytes::Bytes,
        payload_bytes: usize,
    ) -> Result<ExportOutcome, IngestError> {
        CollectorMetrics::add(&self.metrics.requests, 1);
        CollectorMetrics::add(&self.metrics.bytes_received, payload_bytes as u64);
        let priority = self.receiver_priority;
        lower_thread_priority_once(priority);
        if request.is_empty() {
            return Ok(ExportOutcome::default());
        }
        let normalizer = self.normalizer.clone();
        let (normalized, payload) = tokio::task::spawn_blocking(move || {
            lower_thread_priority_once(priority);
            let normalized = normalizer.normalize_wire(&request, SystemTime::now())?;
            let payload = normalized.batch.as_ref().map(encode_batch);
            Ok::<_, runledger_processor::WireError>((normalized, payload))
        })
        .await
        .map_err(|e| IngestError::Unavailable(format!("normalising the request failed: {e}")))?
        .map_err(|e| {
            CollectorMetrics::add(&self.metrics.requests_malformed, 1);
            IngestError::Malformed(e.to_string())
        })?;
        CollectorMetrics::add(
            &self.metrics.spans_received,
            (normalized.accepted_spans + normalized.rejected_spans) as u64,
        );
        CollectorMetrics::add(
            &self.metrics.spans_rejected_invalid,
            normalized.rejected_spans as u64,
        );
        if let Some(payload) = payload {
            let payload = payload
                .map_err(|e| IngestError::Unavailable(format!("encoding the batch: {e}")))?;
            // The record stays in memory with its WAL segment until the flush (the log on
            // disk is for recovery): the reservation counts it until then.
            let reservation = self
                .budget
                .try_reserve(payload.len())
                .ok_or_else(|| self.overloaded("memory budget for unflushed spans is spent"))?;
            self.wal
                .append(payload, reservation)
                .await
                .map_err(|e| IngestError::Unavailable(e.to_string()))?;
        }
        CollectorMetrics::add(
            &self.metrics.spans_accepted,
            normalized.accepted_spans as u64,
        );
        Ok(ExportOutcome {
            accepted_spans: normalized.accepted_spans,
            rejected_spans: normalized.rejected_spans,
            error_message: normalized.error_message,
        })
    }

    /// Seals the WAL and stops its writer; later exports fail as unavailable.
    pub(crate) fn close_wal(&self) {
        self.wal.close();
    }
}

/// Sets the calling thread's nice value to `priority`, once per thread: the threads that
/// receive and normalise exports yield the CPU to the flusher's and the WAL's, which are
/// started before any export and keep the process's priority (`ingest.receiver_nice`). On
/// Linux the nice value belongs to the thread and a new thread inherits its creator's: the
/// value is set, not lowered by an increment, so that a thread started by a receiving thread
/// (tokio's blocking pool grows from them) is not lowered twice. A failure leaves the thread
/// as it was.
fn lower_thread_priority_once(priority: Option<i32>) {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let Some(priority) = priority else { return };
    if LOWERED.get() {
        return;
    }
    LOWERED.set(true);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: with `who` 0, setpriority(2) changes only the calling thread's nice value.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, priority) } != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "lowering a receiver thread's priority"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

/// The calling thread's nice value (0 where it cannot be read).
fn thread_priority() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // getpriority(2) may return -1 as a nice value: only errno tells a failure.
        // SAFETY: errno is this thread's; with `who` 0 getpriority reads the calling thread.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            if nice == -1 && *libc::__errno_location() != 0 {
                return 0;
            }
            nice
        }
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// A batch as one Arrow IPC stream: the WAL record format.
pub(crate) fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    // The builders' capacity bounds the stream's size: one allocation, no regrowth (whose
    // copies and fresh page faults were measurable); pages past the end are never touched.
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 4096);
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// Where a WAL record's bytes come from, which decides whether decoding validates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// Encoded by this process from a valid batch by [`encode_batch`] and kept in memory.
    EncodedHere,
    /// Read from a segment on disk (recovery): validated as it is decoded.
    ReadFromDisk,
}

/// The batches of one WAL record, decoded in place: the arrays point into `payload`.
///
/// Records that this process encoded are not validated again (UTF-8, offsets): they were
/// valid when encoded, and the bytes stayed in memory since; records read back from disk
/// are. arrow-ipc's `StreamDecoder::with_skip_validation` (59.3) applies its flag to
/// dictionaries only, not to record batches, so the stream's messages are read here and each
/// batch is decoded by a `RecordBatchDecoder` given the flag that `trust` decides. The stream
/// holds a schema and record batches (no dictionaries: the span table has no dictionary
/// columns).
pub(crate) fn decode_batches(
    payload: bytes::Bytes,
    trust: Trust,
) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    use arrow::error::ArrowError;
    use arrow::ipc::reader::RecordBatchDecoder;
    use arrow::ipc::MessageHeader;
    let buffer = arrow::buffer::Buffer::from(payload);
    let mut skip_validation = arrow_data::UnsafeFlag::new();
    if trust == Trust::EncodedHere {
        // SAFETY: only `encode_batch`'s output, from valid batches, kept in this process's
        // memory, is trusted.
        unsafe { skip_validation.set(true) };
    }
    let malformed = |what: &str| ArrowError::IpcError(format!("WAL record: {what}"));
    let read_i32 = |at: usize| -> Result<i32, ArrowError> {
        let bytes = buffer
            .get(at..at + 4)
            .ok_or_else(|| malformed("cut short"))?;
        Ok(i32::from_le_bytes(bytes.try_into().expect("four bytes")))
    };
    let no_dictionaries = std::collections::HashMap::new();
    let mut schema = None;
    let mut batches = Vec::new();
    let mut at = 0;
    while at < buffer.len() {
        // A message: the continuation marker, the metadata's length, the metadata (a
        // flatbuffer), then the body; a length of zero ends the stream.
        let mut length = read_i32(at)?;
        at += 4;
        if length == -1 {
            length = read_i32(at)?;
            at += 4;
        }
        if length == 0 {
            break;
        }
        let length = usize::try_from(length).map_err(|_| malformed("negative length"))?;
        let metadata = buffer
            .get(at..at + length)
            .ok_or_else(|| malformed("cut short"))?;
        let message = arrow::ipc::root_as_message(metadata)
            .map_err(|e| malformed(&format!("message: {e}")))?;
        at += length;
        let body_length = usize::try_from(message.bodyLength())
            .ok()
            .filter(|n| at.checked_add(*n).is_some_and(|end| end <= buffer.len()))
            .ok_or_else(|| malformed("body cut short"))?;
        let body = buffer.slice_with_length(at, body_length);
        at += body_length;
        match message.header_type() {
            MessageHeader::Schema => {
                let ipc_schema = message
                    .header_as_schema()
                    .ok_or_else(|| malformed("schema"))?;
                schema = Some(Arc::new(arrow::ipc::convert::fb_to_schema(ipc_schema)));
            }
            MessageHeader::RecordBatch => {
                let ipc_batch = message
                    .header_as_record_batch()
                    .ok_or_else(|| malformed("record batch"))?;
                let schema = schema.clone().ok_or_else(|| malformed("no schema"))?;
                let version = message.version();
                let batch = RecordBatchDecoder::try_new(
                    &body,
                    ipc_batch,
                    schema,
                    &no_dictionaries,
                    &version,
                )?
                .with_require_alignment(false)
                .with_skip_validation(skip_validation.clone())
                .read_record_batch()?;
                batches.push(batch);
            }
            other => return Err(malformed(&format!("unexpected message {other:?}"))),
        }
    }
    Ok(batches)
}
