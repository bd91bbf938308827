//! Sends generated traffic over OTLP, as an SDK's exporter would, and counts what the
//! collector acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::CompressionEncoding;

use crate::{Generator, GeneratorOptions};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf payloads.
    Http,
}

/// What to send, where, how fast.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// `http://host:4317` for gRPC, `http://host:4318` (or the full `/v1/traces` URL) for HTTP.
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// Runs to send.
    pub runs: u64,
    /// Runs per request (an SDK batches about 512 spans).
    pub runs_per_request: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Runs per second; `None` sends as fast as the collector takes them.
    pub rate: Option<f64>,
    /// gzip the payloads.
    pub gzip: bool,
    /// The generator's options.
    pub generator: GeneratorOptions,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Retries of one request refused as retryable before it counts as failed.
    pub max_retries: u32,
}

/// What was sent and what the collector said.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    /// Runs generated and sent.
    pub runs: u64,
    /// Export requests sent (retries not counted).
    pub requests: u64,
    /// Spans sent.
    pub spans_sent: u64,
    /// Spans acknowledged (accepted, not rejected).
    pub spans_acked: u64,
    /// Spans rejected through partial success.
    pub spans_rejected: u64,
    /// Spans in requests that failed after all retries.
    pub spans_failed: u64,
    /// Retries after a retryable refusal (overload).
    pub retries: u64,
    /// Protobuf bytes of the requests (before gzip).
    pub otlp_bytes: u64,
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
    /// The first error of a failed request, if any.
    pub first_error: Option<String>,
}

impl SendReport {
    /// Acknowledged spans per second.
    pub fn spans_per_second(&self) -> f64 {
        self.spans_acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why sending could not start.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The endpoint is not a valid URL.
    #[error("bad endpoint `{0}`: {1}")]
    Endpoint(String, String),
}

struct Work {
    /// The request, protobuf-encoded once by the generator thread: retries resend the bytes.
    payload: bytes::Bytes,
    spans: u64,
}

enum Outcome {
    Acked { accepted: u64, rejected: u64 },
    Retry(Duration),
    Failed(String),
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    spans_sent: AtomicU64,
    spans_acked: AtomicU64,
    spans_rejected: AtomicU64,
    spans_failed: AtomicU64,
    retries: AtomicU64,
    otlp_bytes: AtomicU64,
    runs_done: AtomicU64,
}

/// Generates `options.runs` runs and sends them; returns what happened.
pub async fn send(options: SendOptions) -> Result<SendReport, SendError> {
    let runs_per_request = options.runs_per_request.max(1);
    let concurrency = options.concurrency.max(1);
    let (tx, rx) = tokio::sync::mpsc::channel::<(Work, u64)>(concurrency * 2);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));

    // The generator runs on a thread of its own, paced when a rate is asked for.
    let generator_options = options.generator;
    let total_runs = options.runs;
    let rate = options.rate;
    let generator = std::thread::spawn(move || {
        let mut generator = Generator::new(generator_options);
        let started = Instant::now();
        let mut sent_runs = 0u64;
        while sent_runs < total_runs {
            let runs = (runs_per_request as u64).min(total_runs - sent_runs);
            if let Some(rate) = rate.filter(|r| *r > 0.0) {
                let due = started + Duration::from_secs_f64(sent_runs as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let (payload, spans) = generator.next_request_encoded(runs as usize);
            let work = Work {
                payload: payload.into(),
                spans: spans as u64,
            };
            if tx.blocking_send((work, runs)).is_err() {
                return;
            }
            sent_runs += runs;
        }
    });

    let progress = if options.progress {
        let bar = indicatif::ProgressBar::new(options.runs);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} runs ({per_sec}, eta {eta})",
            )
            .expect("valid template"),
        );
        Some(bar)
    } else {
        None
    };

    let counters = Arc::new(Counters::default());
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let rx = rx.clone();
        let counters = counters.clone();
        let first_error = first_error.clone();
        let progress = progress.clone();
        let mut client = Client::connect(&options).await?;
        let max_retries = options.max_retries;
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((work, runs)) = next else { break };
                counters.requests.fetch_add(1, Ordering::Relaxed);
                counters.spans_sent.fetch_add(work.spans, Ordering::Relaxed);
                counters
                    .otlp_bytes
                    .fetch_add(work.payload.len() as u64, Ordering::Relaxed);
                let mut attempt = 0;
                loop {
                    match client.export(&work.payload, work.spans).await {
                        Outcome::Acked { accepted, rejected } => {
                            counters.spans_acked.fetch_add(accepted, Ordering::Relaxed);
                            counters
                                .spans_rejected
                                .fetch_add(rejected, Ordering::Relaxed);
                            break;
                        }
                        Outcome::Retry(delay) if attempt < max_retries => {
                            attempt += 1;
                            counters.retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(delay).await;
                        }
                        Outcome::Retry(_) => {
                            counters
                                .spans_failed
                                .fetch_add(work.spans, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| "still overloaded after all retries".into());
                            break;
                        }
                        Outcome::Failed(error) => {
                            counters
                                .spans_failed
                                .fetch_add(work.spans, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(error);
                            break;
                        }
                    }
                }
                counters.runs_done.fetch_add(runs, Ordering::Relaxed);
                if let Some(bar) = &progress {
                    bar.inc(runs);
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let _ = generator.join();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let report = SendReport {
        runs: get(&counters.runs_done),
        requests: get(&counters.requests),
        spans_sent: get(&counters.spans_sent),
        spans_acked: get(&counters.spans_acked),
        spans_rejected: get(&counters.spans_rejected),
        spans_failed: get(&counters.spans_failed),
        retries: get(&counters.retries),
        otlp_bytes: get(&counters.otlp_bytes),
        elapsed: started.elapsed(),
        first_error: first_error.lock().unwrap().clone(),
    };
    Ok(report)
}

enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http {
        client: reqwest::Client,
        url: String,
        gzip: bool,
    },
}

impl Client {
    async fn connect(options: &SendOptions) -> Result<Self, SendError> {
        match options.protocol {
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(options.endpoint.clone())
                    .map_err(|e| SendError::Endpoint(options.endpoint.clone(), e.to_string()))?;
                let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
                if options.gzip {
                    client = client
                        .send_compressed(CompressionEncoding::Gzip)
                        .accept_compressed(CompressionEncoding::Gzip);
                }
                Ok(Client::Grpc(client))
            }
            Protocol::Http => {
                let mut url = options.endpoint.trim_end_matches('/').to_string();
                if !url.ends_with("/v1/traces") {
                    url.push_str("/v1/traces");
                }
                reqwest::Url::parse(&url)
                    .map_err(|e| SendError::Endpoint(url.clone(), e.to_string()))?;
                Ok(Client::Http {
                    client: reqwest::Client::new(),
                    url,
                    gzip: options.gzip,
                })
            }
        }
    }

    async fn export(&mut self, payload: &bytes::Bytes, spans: u64) -> Outcome {
        let acked = |spans: u64, response: ExportTraceServiceResponse| {
            let rejected = response
                .partial_success
                .map(|p| p.rejected_spans.max(0) as u64)
                .unwrap_or(0);
            Outcome::Acked {
                accepted: spans.saturating_sub(rejected),
                rejected,
            }
        };
        match self {
            Client::Grpc(client) => match grpc_export(client, payload.clone()).await {
                Ok(response) => acked(spans, response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    use tonic_types::StatusExt;
                    let delay = status
                        .get_details_retry_info()
                        .and_then(|r| r.retry_delay)
                        .unwrap_or(Duration::from_secs(1));
                    Outcome::Retry(delay)
                }
                Err(status) => {
                    Outcome::Failed(format!("{:?}: {}", status.code(), status.message()))
                }
            },
            Client::Http { client, url, gzip } => {
                let mut body = payload.to_vec();
                let mut builder = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf");
                if *gzip {
                    use std::io::Write;
                    let mut encoder =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    let _ = encoder.write_all(&body);
                    body = encoder.finish().unwrap_or_default();
                    builder = builder.header("content-encoding", "gzip");
                }
                match builder.body(body).send().await {
                    Ok(response) if response.status().is_success() => {
                        match response
                            .bytes()
                            .await
                            .map(ExportTraceServiceResponse::decode)
                        {
                            Ok(Ok(decoded)) => acked(spans, decoded),
                            Ok(Err(e)) => Outcome::Failed(format!("undecodable response: {e}")),
                            Err(e) => Outcome::Failed(e.to_string()),
                        }
                    }
                    Ok(response) if response.status() == 503 || response.status() == 429 => {
                        let delay = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_secs)
                            .unwrap_or(Duration::from_secs(1));
                        Outcome::Retry(delay)
                    }
                    Ok(response) => Outcome::Failed(format!("HTTP {}", response.status())),
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
        }
    }
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends `payload`, already protobuf-encoded (or any bytes at all: the tests send malformed
/// ones), as one OTLP/gRPC `Export` call to `endpoint`, gzip-compressed if asked.
pub async fn export_encoded(
    endpoint: &str,
    payload: bytes::Bytes,
    gzip: bool,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| tonic::Status::invalid_argument(format!("bad endpoint {endpoint}: {e}")))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting to {endpoint}: {e}")))?;
    let mut client = tonic::client::Grpc::new(channel);
    if gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    grpc_export(&mut client, payload)
        .await
        .map(tonic::Response::into_inner)
}

async fn grpc_export(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    payload: bytes::Bytes,
) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
    client
        .unary(tonic::Request::new(payload), path, EncodedCodec)
        .await
}

/// A gRPC codec whose requests are already-encoded protobuf bytes.
#[derive(Debug, Default, Clone, Copy)]
struct EncodedCodec;

struct BytesEncoder;

struct ResponseDecoder;

impl tonic::codec::Encoder for BytesEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        // Room for the whole request at once: tonic's buffer starts at 8 KiB, and growing it
        // by doubling to a 500 kB request copied it over and over.
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable response: {e}")))
    }
}

impl tonic::codec::Codec for EncodedCodec {
    type Encode = bytes::Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = BytesEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}
