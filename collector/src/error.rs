//! Errors of the collector, and their one mapping to gRPC codes and HTTP statuses, so that
//! both protocols answer the same failure the same way (as the OTLP specification says).

use std::time::Duration;

use tonic::Code;

/// Why an export request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The payload cannot be decoded: INVALID_ARGUMENT / 400. Not retryable.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The payload is over the size limit after decompression: RESOURCE_EXHAUSTED without
    /// RetryInfo / 413. Not retryable.
    #[error("request exceeds the limit of {limit} bytes after decompression")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The content type or encoding is not one OTLP/HTTP defines: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The memory budget is spent or too many requests are in flight: UNAVAILABLE with
    /// RetryInfo / 503 with Retry-After. Retryable.
    #[error("overloaded: {reason}; retry in {}s", retry_after.as_secs().max(1))]
    Overloaded {
        /// What is full.
        reason: &'static str,
        /// When to retry.
        retry_after: Duration,
    },
    /// The write-ahead log failed (disk full, I/O error) or the collector is shutting down:
    /// UNAVAILABLE / 503. Retryable: nothing was acknowledged.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl IngestError {
    /// The gRPC code of this error.
    pub fn grpc_code(&self) -> Code {
        match self {
            IngestError::Malformed(_) => Code::InvalidArgument,
            IngestError::TooLarge { .. } => Code::ResourceExhausted,
            IngestError::UnsupportedMediaType(_) => Code::InvalidArgument,
            IngestError::Overloaded { .. } | IngestError::Unavailable(_) => Code::Unavailable,
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            IngestError::Malformed(_) => http::StatusCode::BAD_REQUEST,
            IngestError::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::UnsupportedMediaType(_) => http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Overloaded { .. } | IngestError::Unavailable(_) => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The delay to suggest to the client, for the retryable errors that have one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Overloaded { retry_after, .. } => Some(*retry_after),
            IngestError::Unavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The gRPC status, with RetryInfo for the retryable errors.
    pub fn to_grpc_status(&self) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        match self.retry_after() {
            Some(delay) => tonic::Status::with_error_details(
                self.grpc_code(),
                self.to_string(),
                ErrorDetails::with_retry_info(Some(delay)),
            ),
            None => tonic::Status::new(self.grpc_code(), self.to_string()),
        }
    }
}

/// Why the collector could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The write-ahead log could not be opened or recovered.
    #[error("write-ahead log: {0}")]
    Wal(#[from] crate::wal::WalError),
    /// The lake could not be opened.
    #[error(transparent)]
    Lake(#[from] runledger_lake::LakeError),
    /// A listener could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else on the local file system.
    #[error("{context}: {source}")]
    Io {
        /// What runledger was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A background task failed.
    #[error("{0}")]
    Task(String),
}
