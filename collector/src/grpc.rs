//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The service is written out rather than generated so that its codec hands the request to
//! the normaliser as the bytes that arrived (tonic's framing, decompression and size limit
//! included), to be read in place: the generated service decodes into structs first, which
//! cost about a fifth of the collector's CPU in allocations and copies.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, EnabledCompressionEncodings, StdError};
use tonic::{Request, Response, Status};

use crate::{CollectorMetrics, Ingest};

/// The gRPC path of the one method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The gRPC receiver, as a tower service for tonic's router.
#[derive(Clone)]
pub(crate) struct GrpcReceiver {
    ingest: Arc<Ingest>,
    compression: EnabledCompressionEncodings,
    max_message_bytes: usize,
}

impl GrpcReceiver {
    /// Accepts and sends gzip; refuses messages over `max_message_bytes` once decompressed.
    pub(crate) fn new(ingest: Arc<Ingest>, max_message_bytes: usize) -> Self {
        let mut compression = EnabledCompressionEncodings::default();
        compression.enable(tonic::codec::CompressionEncoding::Gzip);
        Self {
            ingest,
            compression,
            max_message_bytes,
        }
    }
}

impl tonic::server::NamedService for GrpcReceiver {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> tower::Service<http::Request<B>> for GrpcReceiver
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                Ok(Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let receiver = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WireCodec)
                .apply_compression_config(receiver.compression, receiver.compression)
                .apply_max_message_size_config(Some(receiver.max_message_bytes), None);
            Ok(grpc.unary(ExportMethod(receiver.ingest), request).await)
        })
    }
}

/// The Export method: admit, then hand the bytes to the shared ingest path.
struct ExportMethod(Arc<Ingest>);

impl tonic::server::UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let ingest = Arc::clone(&self.0);
        Box::pin(async move {
            let _permit = ingest.admit().map_err(|e| e.to_grpc_status())?;
            let wire = request.into_inner();
            // tonic does not expose the size on the wire: the decompressed size is counted.
            let size = wire.len();
            let outcome = ingest
                .export(wire, size)
                .await
                .map_err(|e| e.to_grpc_status())?;
            Ok(Response::new(outcome.into_response()))
        })
    }
}

/// Requests stay bytes (the normaliser reads them in place); responses are encoded as usual.
struct WireCodec;

impl Codec for WireCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The message's own buffer, split off without a copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Rewrites the status that tonic's framing produces before the handler runs into the code
/// the OTLP specification asks for: a message over the size limit is RESOURCE_EXHAUSTED
/// (tonic says OUT_OF_RANGE). Invalid protobuf is found by the normaliser, which answers
/// INVALID_ARGUMENT itself.
pub(crate) fn otlp_status_codes<B>(
    metrics: &CollectorMetrics,
    mut response: http::Response<B>,
) -> http::Response<B> {
    let headers = response.headers();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    if code == Some(tonic::Code::OutOfRange as i32) && message.contains("message length too large")
    {
        CollectorMetrics::add(&metrics.requests, 1);
        CollectorMetrics::add(&metrics.requests_too_large, 1);
        response.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
    response
}
