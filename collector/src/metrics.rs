//! The collector's own counters: what came in, what was accepted or rejected and why, and
//! how the WAL and the flusher are doing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters shared by the receivers, the WAL and the flusher.
#[derive(Debug, Default)]
pub struct CollectorMetrics {
    /// Export requests received, by either protocol.
    pub requests: AtomicU64,
    /// Spans received (valid or not).
    pub spans_received: AtomicU64,
    /// Spans acknowledged as durable.
    pub spans_accepted: AtomicU64,
    /// Spans rejected one by one through partial success.
    pub spans_rejected_invalid: AtomicU64,
    /// Requests refused as malformed.
    pub requests_malformed: AtomicU64,
    /// Requests refused as too large.
    pub requests_too_large: AtomicU64,
    /// Requests refused because the collector was overloaded.
    pub requests_overloaded: AtomicU64,
    /// Bytes of request payloads received: the body as sent (before decompression) over
    /// HTTP, the protobuf message size over gRPC.
    pub bytes_received: AtomicU64,
    /// Records appended to the WAL.
    pub wal_records: AtomicU64,
    /// fsyncs of the WAL; fewer than records when exports share one (group commit).
    pub wal_fsyncs: AtomicU64,
    /// Bytes appended to the WAL.
    pub wal_bytes: AtomicU64,
    /// WAL segments committed to the lake and released.
    pub segments_flushed: AtomicU64,
    /// Rows committed to the lake, summed over tiers.
    pub rows_committed: AtomicU64,
    /// Failed flush attempts (each is retried).
    pub flush_errors: AtomicU64,
    /// Time from the start of a segment's flush to its last tier's commit, in microseconds,
    /// summed over segments (segments in the pipeline overlap, so this can exceed wall time).
    pub flush_micros: AtomicU64,
    /// CPU time spent redacting, in microseconds, summed over the threads that redact.
    pub redact_micros: AtomicU64,
    /// Spans with token counts but no price for their model (their cost is null).
    pub spans_unpriced: AtomicU64,
    /// Values redacted, by kind (`EMAIL`, `SECRET`...).
    pub redactions: Mutex<BTreeMap<String, u64>>,
}

impl CollectorMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds redaction counts by kind.
    pub fn add_redactions(&self, by_kind: &[(String, u64)]) {
        if by_kind.is_empty() {
            return;
        }
        let mut redactions = self.redactions.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, n) in by_kind {
            *redactions.entry(kind.clone()).or_default() += n;
        }
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
