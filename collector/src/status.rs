//! The `google.rpc.Status` message that OTLP/HTTP returns in error responses, in protobuf or
//! JSON to match the request.

/// `google.rpc.Status`, without details.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    /// The gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// A developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
}
