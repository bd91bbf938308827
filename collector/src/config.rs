//! Configuration of the collector (`[ingest]` and `[wal]` in the config file).

use serde::{Deserialize, Serialize};

/// Everything the collector needs besides its addresses and data directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Limits of the receivers.
    pub ingest: IngestConfig,
    /// The write-ahead log.
    pub wal: WalConfig,
}

impl CollectorConfig {
    /// Checks the ranges serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.ingest.validate()?;
        self.wal.validate()
    }
}

/// Limits of the OTLP receivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest export request accepted, in bytes after decompression. Larger requests get
    /// RESOURCE_EXHAUSTED / 413. Default 16 MiB.
    pub max_request_bytes: usize,
    /// Memory budget in bytes for accepted spans not yet committed to the lake: what waits
    /// for the WAL plus the WAL backlog. When it is spent, exports get UNAVAILABLE / 503 with a
    /// retry hint until the flusher catches up. Default 512 MiB.
    pub memory_limit_bytes: usize,
    /// Export requests processed at once, both receivers together; more get the overload
    /// status. Bounds the memory of OTLP/HTTP bodies being read and decoded (gRPC messages are
    /// decoded by tonic before admission, bounded by `max_request_bytes` each). Default 64.
    pub max_inflight_requests: usize,
    /// The retry delay suggested to clients when overloaded (RetryInfo / Retry-After), in
    /// seconds. Default 1.
    pub retry_after_seconds: u64,
    /// How much lower than the flusher the receivers' threads are scheduled: a nice increment
    /// (0-19) applied to each thread the first time it handles an export. When the CPU is
    /// contended, the flusher, which turns the WAL into Parquet and frees the memory budget,
    /// then runs first and its backlog stays short, instead of growing while the receivers
    /// accept more; the exporters see slower answers (and, once the budget is spent, the
    /// overload status). 0 schedules them alike. Default 5.
    pub receiver_nice: i32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 * 1024 * 1024,
            memory_limit_bytes: 512 * 1024 * 1024,
            max_inflight_requests: 64,
            retry_after_seconds: 1,
            receiver_nice: 5,
        }
    }
}

impl IngestConfig {
    fn validate(&self) -> Result<(), String> {
        if self.max_request_bytes == 0 {
            return Err("ingest.max_request_bytes must be positive".into());
        }
        if self.memory_limit_bytes == 0 {
            return Err("ingest.memory_limit_bytes must be positive".into());
        }
        if self.max_inflight_requests == 0 {
            return Err("ingest.max_inflight_requests must be positive".into());
        }
        if !(0..=19).contains(&self.receiver_nice) {
            return Err(format!(
                "ingest.receiver_nice must be between 0 and 19, got {}",
                self.receiver_nice
            ));
        }
        Ok(())
    }
}

/// The write-ahead log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// fsync before acknowledging. Turning it off trades durability across power loss (not
    /// across process crashes) for latency. Default true.
    pub fsync: bool,
    /// A segment is sealed and flushed to the lake when it reaches this size. Default 64 MiB.
    pub segment_max_bytes: u64,
    /// A segment is sealed at most this long after its first record, so spans are queryable
    /// within about this interval plus the commit time. Default 2000 ms.
    pub flush_interval_ms: u64,
    /// Write segments with direct I/O (`O_DIRECT`), past the kernel's page cache: the WAL is
    /// read back only after a crash, and copying it into the cache was most of the WAL
    /// writer's CPU. Where the file system refuses it (tmpfs), segments are written through
    /// the cache. Default true.
    pub direct_io: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            fsync: true,
            segment_max_bytes: 64 * 1024 * 1024,
            flush_interval_ms: 2_000,
            direct_io: true,
        }
    }
}

impl WalConfig {
    fn validate(&self) -> Result<(), String> {
        if self.segment_max_bytes < 1024 {
            return Err("wal.segment_max_bytes must be at least 1024".into());
        }
        if self.flush_interval_ms == 0 {
            return Err("wal.flush_interval_ms must be positive".into());
        }
        Ok(())
    }
}
