//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

use crate::{CollectorMetrics, Ingest};

/// The gRPC receiver.
pub(crate) struct GrpcReceiver {
    pub(crate) ingest: Arc<Ingest>,
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _permit = self.ingest.admit().map_err(|e| e.to_grpc_status())?;
        // tonic does not expose the wire size: the message's protobuf size is counted
        // instead, measured on the CPU pool with the rest of the decoding work.
        let outcome = self
            .ingest
            .export(request.into_inner(), None)
            .await
            .map_err(|e| e.to_grpc_status())?;
        Ok(Response::new(outcome.into_response()))
    }
}

/// Rewrites the two statuses that tonic's decoder produces before the handler runs into the
/// codes the OTLP specification asks for: a message over the size limit is
/// RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE), and a payload that is not valid protobuf is
/// INVALID_ARGUMENT (tonic says INTERNAL).
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
    let replacement = match code {
        Some(11) if message.contains("message length too large") => {
            Some(tonic::Code::ResourceExhausted)
        }
        Some(13) if message.contains("failed to decode Protobuf message") => {
            Some(tonic::Code::InvalidArgument)
        }
        _ => None,
    };
    if let Some(code) = replacement {
        CollectorMetrics::add(&metrics.requests, 1);
        match code {
            tonic::Code::ResourceExhausted => CollectorMetrics::add(&metrics.requests_too_large, 1),
            _ => CollectorMetrics::add(&metrics.requests_malformed, 1),
        }
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from(code as i32));
    }
    response
}
