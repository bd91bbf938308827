//! The OTLP/HTTP receiver: `POST /v1/traces`, protobuf or JSON, optionally gzip-compressed.

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::status::RpcStatus;
use crate::{Ingest, IngestError};

/// The two payload encodings of OTLP/HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// The router of the HTTP receiver.
pub(crate) fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .with_state(ingest)
}

async fn export(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    // Until the content type is known, errors are answered in JSON.
    let encoding = match request_encoding(&headers) {
        Ok(encoding) => encoding,
        Err(error) => {
            ingest.count_refused(&error);
            return error_response(&error, Encoding::Json);
        }
    };
    let _permit = match ingest.admit() {
        Ok(permit) => permit,
        Err(error) => return error_response(&error, encoding),
    };
    match decode(&ingest, &headers, body, encoding).await {
        Ok((request, wire_bytes)) => match ingest.export(request, wire_bytes).await {
            Ok(outcome) => {
                let response = outcome.into_response();
                let body = match encoding {
                    Encoding::Protobuf => response.encode_to_vec(),
                    // `{}` rather than `{"partialSuccess":null}` when everything was accepted.
                    Encoding::Json if response.partial_success.is_none() => b"{}".to_vec(),
                    Encoding::Json => serde_json::to_vec(&response).expect("responses serialise"),
                };
                ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
            }
            Err(error) => error_response(&error, encoding),
        },
        Err(error) => {
            ingest.count_refused(&error);
            error_response(&error, encoding)
        }
    }
}

fn request_encoding(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(IngestError::UnsupportedMediaType(format!(
            "unsupported Content-Type `{content_type}`: use application/x-protobuf or application/json"
        ))),
    }
}

/// Reads the body within the size limit, decompresses it within the same limit (so a
/// decompression bomb stops at the limit, not at the memory): the request in protobuf wire
/// form (JSON is decoded and encoded again), and the size of the body as sent.
async fn decode(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<(Bytes, usize), IngestError> {
    let limit = ingest.config().max_request_bytes;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(IngestError::UnsupportedMediaType(format!(
                "unsupported Content-Encoding `{other}`: use gzip or none"
            )))
        }
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if length > limit {
            return Err(IngestError::TooLarge { limit });
        }
    }
    let wire: Bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                IngestError::TooLarge { limit }
            } else {
                IngestError::Malformed(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes();
    let wire_bytes = wire.len();
    let payload = if gzip {
        gunzip_limited(&wire, limit)?
    } else {
        wire
    };
    let request = match encoding {
        // Read in place by the normaliser, which refuses invalid protobuf.
        Encoding::Protobuf => payload,
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(&payload)
            .map_err(|e| IngestError::Malformed(format!("invalid OTLP/JSON: {e}")))?
            .encode_to_vec()
            .into(),
    };
    Ok((request, wire_bytes))
}

/// Decompresses gzip, refusing at `limit` bytes of output.
pub(crate) fn gunzip_limited(data: &[u8], limit: usize) -> Result<Bytes, IngestError> {
    let mut out = Vec::with_capacity((data.len() * 4).min(limit));
    flate2::read::MultiGzDecoder::new(data)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::Malformed(format!("invalid gzip body: {e}")))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

fn error_response(error: &IngestError, encoding: Encoding) -> Response {
    let status = RpcStatus {
        code: error.grpc_code() as i32,
        message: error.to_string(),
    };
    let body = match encoding {
        Encoding::Protobuf => status.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&status).expect("status serialises"),
    };
    let mut response = (
        error.http_status(),
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if let Some(delay) = error.retry_after() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(delay.as_secs().max(1)),
        );
    }
    if error.http_status() == StatusCode::SERVICE_UNAVAILABLE {
        tracing::debug!(%error, "export refused as retryable");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            encoder.write_all(&chunk).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let err = gunzip_limited(&bomb, 1 << 20).unwrap_err();
        assert!(matches!(err, IngestError::TooLarge { limit } if limit == 1 << 20));
        assert_eq!(gunzip_limited(&bomb, 64 << 20).unwrap().len(), 64 << 20);
    }

    #[test]
    fn garbage_is_malformed_not_a_crash() {
        let err = gunzip_limited(b"definitely not gzip", 1024).unwrap_err();
        assert!(matches!(err, IngestError::Malformed(_)), "{err}");
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(request_encoding(&headers).unwrap(), Encoding::Json);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        assert_eq!(request_encoding(&headers).unwrap(), Encoding::Protobuf);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            request_encoding(&headers),
            Err(IngestError::UnsupportedMediaType(_))
        ));
    }
}
