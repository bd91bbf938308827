//! The collector: OTLP in, acknowledged only once durable, flushed into the lake.
//!
//! ```text
//!  OTLP/gRPC :4317 (grpc.rs)   OTLP/HTTP :4318 /v1/traces (http.rs)
//!          \                      /
//!           v                    v
//!        Ingest (ingest.rs): in-flight limit -> memory budget -> normalise (CPU pool)
//!           |                 full? -> UNAVAILABLE / 503 + retry hint
//!           v
//!        WAL (wal.rs): append, one fsync shared by every export waiting (group commit) -> ack
//!           |  segments sealed by size or age (the flush interval)
//!           v
//!        Flusher (flush.rs): segment -> sort -> one Delta commit per tier carrying the
//!           application transaction (collector id, segment sequence) -> release segment
//! ```
//!
//! A segment is deleted only after every tier has committed it, and its memory-budget
//! reservation is released only then, so a stalled lake turns into backpressure at the
//! receivers, never into unbounded memory. After a crash, recovery replays every segment
//! still on disk; the application transaction makes a replay of an already committed segment
//! a no-op, so every acknowledged span lands exactly once.
#![deny(missing_docs)]

mod budget;
pub mod config;
mod error;
mod flush;
mod grpc;
mod http;
mod ingest;
mod metrics;
mod server;
mod status;
pub mod wal;

pub use budget::MemoryBudget;
pub use config::{CollectorConfig, IngestConfig, WalConfig};
pub use error::{CollectorError, IngestError};
pub use ingest::{ExportOutcome, Ingest};
pub use metrics::CollectorMetrics;
pub use server::{Collector, CollectorAddrs, CollectorSettings};
