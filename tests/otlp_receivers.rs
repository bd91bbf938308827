//! The receivers against every class of input the OTLP specification names: the JSON
//! mapping, malformed payloads, oversized payloads and decompression bombs, partially invalid
//! requests, empty requests, and overload. Each answer is checked for its status code, its
//! body, and what reached the lake.

mod common;

use common::otlp::{kv, request, span};
use common::{gzip, query, raw_grpc, RpcStatus, Server};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde_json::{json, Value};

const LIMIT: usize = 64 * 1024;

fn config() -> String {
    format!("[ingest]\nmax_request_bytes = {LIMIT}\n")
}

async fn post(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_mapping_is_accepted_and_answered_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, &config());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let payload = json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}],
                         "somethingNew": true},
            "scopeSpans": [{
                "scope": {"name": "json-scope"},
                "spans": [{
                    "traceId": "5b8efff798038103d269b633813fc60c",
                    "spanId": "eee19b7ec3c1b174",
                    "parentSpanId": "",
                    "name": "chat gpt-4o",
                    "kind": 3,
                    "startTimeUnixNano": (now - 2_000_000).to_string(),
                    "endTimeUnixNano": now,
                    "attributes": [
                        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}},
                        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 300}},
                        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                        {"key": "flag", "value": {"boolValue": true}},
                        {"key": "ratio", "value": {"doubleValue": 0.5}},
                        {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}}
                    ],
                    "events": [{"timeUnixNano": now.to_string(), "name": "gen_ai.choice", "attributes": []}],
                    "status": {"code": 2, "message": "boom"},
                    "futureField": {"nested": [1, 2, 3]}
                }]
            }]
        }]
    });
    let body = serde_json::to_vec(&payload).unwrap();
    for encoding in [None, Some("gzip")] {
        let body = match encoding {
            Some(_) => gzip(&body),
            None => body.clone(),
        };
        let response = post(&server.http_url(), "application/json", encoding, body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let answer: Value = response.json().await.unwrap();
        assert!(answer.get("partialSuccess").is_none(), "{answer}");
    }
    assert!(server.stop().success());
    let rows = query(&data_dir, "SELECT * FROM raw_spans");
    assert_eq!(
        rows.len(),
        2,
        "both deliveries are stored (client retries are deduplicated at query time)"
    );
    let row = &rows[0];
    assert_eq!(row["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(row["span_id"], "eee19b7ec3c1b174");
    assert!(
        row.get("parent_span_id").is_none_or(Value::is_null),
        "{row}"
    );
    assert_eq!(row["kind"], "client");
    assert_eq!(row["status_code"], "error");
    assert_eq!(row["status_message"], "boom");
    assert_eq!(row["input_tokens"], 1200);
    assert_eq!(row["output_tokens"], 300);
    assert_eq!(row["request_model"], "gpt-4o");
    assert_eq!(row["service_name"], "json-svc");
    assert_eq!(row["scope_name"], "json-scope");
    assert_eq!(row["duration_ns"], 2_000_000);
    let attributes = &row["attributes"];
    assert_eq!(attributes["flag"], "true");
    assert_eq!(attributes["ratio"], "0.5");
    assert_eq!(
        serde_json::from_str::<Value>(attributes["list"].as_str().unwrap()).unwrap(),
        json!(["a", 2])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input_gets_the_otlp_status_and_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, &config());
    let url = server.http_url();

    // Malformed protobuf: 400 with a protobuf Status.
    let response = post(
        &url,
        "application/x-protobuf",
        None,
        vec![0xff, 0xff, 0xff, 0x0f],
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let status = RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(
        status.message.contains("invalid protobuf"),
        "{}",
        status.message
    );

    // Malformed JSON: 400 with a JSON Status.
    let response = post(
        &url,
        "application/json",
        None,
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 400);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["code"], 3);
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("invalid OTLP/JSON"));

    // A hex id that is not hex.
    let bad_id = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "eee19b7ec3c1b174"}]}]}]});
    let response = post(
        &url,
        "application/json",
        None,
        serde_json::to_vec(&bad_id).unwrap(),
    )
    .await;
    assert_eq!(response.status(), 400);

    // Garbage that claims to be gzip.
    let response = post(
        &url,
        "application/x-protobuf",
        Some("gzip"),
        b"not gzip at all".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 400);

    // Unsupported content type and encoding: 415.
    let response = post(&url, "text/plain", None, b"hello".to_vec()).await;
    assert_eq!(response.status(), 415);
    let response = post(&url, "application/x-protobuf", Some("br"), vec![]).await;
    assert_eq!(response.status(), 415);

    // Over the limit as sent: 413.
    let big = request(vec![span(1, 1, vec![kv("blob", &"x".repeat(LIMIT))])]).encode_to_vec();
    let response = post(&url, "application/x-protobuf", None, big.clone()).await;
    assert_eq!(response.status(), 413);
    let status = RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 8, "RESOURCE_EXHAUSTED");
    assert!(response_has_no_retry(&status));

    // A decompression bomb: tiny on the wire, far over the limit inflated. 413, and the
    // server is still there to answer the next request.
    let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
    assert!(bomb.len() < LIMIT);
    let response = post(&url, "application/x-protobuf", Some("gzip"), bomb).await;
    assert_eq!(response.status(), 413);

    // Empty request: success, nothing stored.
    let empty =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::default();
    let response = post(&url, "application/x-protobuf", None, empty.encode_to_vec()).await;
    assert_eq!(response.status(), 200);
    let answer = ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert!(answer.partial_success.is_none());

    // Partially invalid: the bad spans are rejected one by one, the others stored.
    let mut short_trace = span(2, 3, vec![]);
    short_trace.trace_id.truncate(8);
    let mut backwards = span(2, 4, vec![]);
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;
    let partial = request(vec![
        span(2, 1, vec![]),
        short_trace,
        span(2, 2, vec![]),
        backwards,
    ]);
    let response = post(
        &url,
        "application/x-protobuf",
        None,
        partial.encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer = ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    let partial_success = answer.partial_success.unwrap();
    assert_eq!(partial_success.rejected_spans, 2);
    assert!(partial_success
        .error_message
        .contains("trace_id must be 16 bytes"));
    assert!(partial_success.error_message.contains("before start"));

    assert!(server.stop().success());
    let mut ids: Vec<String> = query(&data_dir, "SELECT span_id FROM raw_spans")
        .into_iter()
        .map(|r| r["span_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![format!("{:016x}", 1), format!("{:016x}", 2)]);
}

fn response_has_no_retry(status: &RpcStatus) -> bool {
    !status.message.contains("retry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_input_gets_the_otlp_status_and_a_message() {
    use tonic::Code;
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, &config());
    let endpoint = server.grpc_endpoint();

    let status = raw_grpc::export(&endpoint, vec![0xff, 0xff, 0xff, 0x0f], false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let big = request(vec![span(1, 1, vec![kv("blob", &"x".repeat(LIMIT))])]).encode_to_vec();
    let status = raw_grpc::export(&endpoint, big, false).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.get_details_retry_info().is_none(), "not retryable");

    // A bomb: a request of 16 MiB of one repeated byte, gzip-compressed by the client.
    let bomb = request(vec![span(1, 1, vec![kv("blob", &"a".repeat(16 << 20))])]).encode_to_vec();
    let status = raw_grpc::export(&endpoint, bomb, true).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let empty = raw_grpc::export(&endpoint, Vec::new(), false)
        .await
        .unwrap();
    assert!(empty.partial_success.is_none());

    let mut zero_span = span(3, 0, vec![]);
    zero_span.span_id = vec![0; 8];
    let partial = request(vec![span(3, 7, vec![]), zero_span]).encode_to_vec();
    let answer = raw_grpc::export(&endpoint, partial, true).await.unwrap();
    let partial_success = answer.partial_success.unwrap();
    assert_eq!(partial_success.rejected_spans, 1);
    assert!(partial_success
        .error_message
        .contains("span_id is all zeros"));

    assert!(server.stop().success());
    let ids: Vec<Value> = query(&data_dir, "SELECT span_id FROM raw_spans")
        .into_iter()
        .map(|r| r["span_id"].clone())
        .collect();
    assert_eq!(ids, vec![Value::from(format!("{:016x}", 7))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_with_the_retryable_status_and_nothing_is_lost() {
    use tonic::Code;
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // A budget of one byte and a flush that never comes while the test runs: the first
    // export fills the budget and stays uncommitted, as with a stalled lake.
    let server = Server::start(
        &data_dir,
        "[ingest]\nmemory_limit_bytes = 1\nretry_after_seconds = 3\n[wal]\nflush_interval_ms = 3600000\n",
    );
    let first = request(vec![span(9, 1, vec![])]).encode_to_vec();
    raw_grpc::export(&server.grpc_endpoint(), first, false)
        .await
        .unwrap();

    let second = request(vec![span(9, 2, vec![])]).encode_to_vec();
    let status = raw_grpc::export(&server.grpc_endpoint(), second.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let retry = status
        .get_details_retry_info()
        .expect("RetryInfo on overload");
    assert_eq!(retry.retry_delay, Some(std::time::Duration::from_secs(3)));

    let response = post(&server.http_url(), "application/x-protobuf", None, second).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "3");
    let status = RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 14, "UNAVAILABLE");
    assert!(status.message.contains("overloaded"), "{}", status.message);

    // Stopping flushes what was accepted; what was refused was never acknowledged.
    assert!(server.stop().success());
    let ids = common::raw_span_ids(&data_dir);
    assert_eq!(ids, vec![format!("{:016x}", 1)]);
}

/// Each thread of `pid` by name, with its nice value (`/proc/<pid>/task/<tid>/stat`).
#[cfg(target_os = "linux")]
fn thread_nice_values(pid: u32) -> Vec<(String, i64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // After the command name in parentheses: state is field 3, nice field 19.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        threads.push((comm.trim().to_string(), fields[16].parse().unwrap()));
    }
    threads
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiving_threads_yield_the_cpu_to_the_flusher_and_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, "[ingest]\nreceiver_nice = 4\n");
    let pid = server.child.id();
    let before = thread_nice_values(pid);
    let base = before
        .iter()
        .find(|(name, _)| name == "runledger-wal")
        .expect("a WAL thread")
        .1;
    assert!(
        before.iter().all(|(_, nice)| *nice == base),
        "before any export every thread has the process's priority: {before:?}"
    );
    // Exports over both receivers, answered: some receiving thread has handled each.
    for id in 1..=4 {
        let payload = request(vec![span(7, id, vec![])]).encode_to_vec();
        raw_grpc::export(&server.grpc_endpoint(), payload, false)
            .await
            .unwrap();
    }
    let payload = request(vec![span(7, 5, vec![])]).encode_to_vec();
    let response = post(&server.http_url(), "application/x-protobuf", None, payload).await;
    assert_eq!(response.status(), 200);
    // Concurrent exports grow tokio's blocking pool from receiving threads, whose nice value
    // a new thread inherits: it must not be lowered a second time.
    let endpoint = server.grpc_endpoint();
    let concurrent = (6..=37).map(|id| {
        let payload = request(vec![span(7, id, vec![])]).encode_to_vec();
        raw_grpc::export(&endpoint, payload, false)
    });
    for result in futures::future::join_all(concurrent).await {
        result.unwrap();
    }

    let after = thread_nice_values(pid);
    let lowered: Vec<_> = after.iter().filter(|(_, nice)| *nice == base + 4).collect();
    assert!(
        !lowered.is_empty(),
        "the threads that received the exports run 4 nice levels lower: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|(_, nice)| *nice == base || *nice == base + 4),
        "{after:?}"
    );
    for (name, nice) in &after {
        if name.starts_with("runledger-flush") || name == "runledger-wal" {
            assert_eq!(
                *nice, base,
                "{name} keeps the process's priority: {after:?}"
            );
        }
    }
    assert!(after
        .iter()
        .any(|(name, _)| name.starts_with("runledger-flush")));
    assert!(server.stop().success());
    assert_eq!(common::raw_span_ids(&data_dir).len(), 37);
}

/// The figure after `label` on the line that starts with `line_start`, as a number.
fn figure(output: &str, line_start: &str, label: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(line_start))
        .unwrap_or_else(|| panic!("no line {line_start:?} in:\n{output}"));
    let after = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"))
        + label.len()..];
    after
        .split_whitespace()
        .next()
        .and_then(|v| v.trim_end_matches([';', ',', ':']).parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"))
}

#[test]
fn the_ingest_benchmark_prints_every_figure_from_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::ok(common::runledger(
        &[
            "bench",
            "ingest",
            "--runs",
            "400",
            "--concurrency",
            "4",
            "--runs-per-request",
            "20",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        figure(&output, "(a) decode-only", "one core:") > 0.0,
        "{output}"
    );
    assert!(output.contains("(b) end to end"), "{output}");
    let both = figure(&output, "raw + redacted tiers", "(redaction on):");
    let raw = figure(&output, "raw tier only", "(no redaction):");
    let backfill = figure(&output, "backfill", "raw tier only:");
    assert!(both > 0.0 && raw > 0.0 && backfill > 0.0, "{output}");
    let server = figure(&output, "raw + redacted tiers", "server CPU");
    let exporters = figure(&output, "CPU, raw + redacted", "gRPC client)");
    let busy = figure(&output, "CPU, raw + redacted", "kept");
    assert!(server > 0.0 && exporters > 0.0, "{output}");
    assert!(busy > 0.0 && busy <= 64.0, "{output}");
    assert!(
        figure(&output, "redaction in the server:", "server:") > 0.0,
        "{output}"
    );
    // The spans went to the lake: Parquet is smaller than the OTLP that carried them, and
    // smaller again once compaction has rewritten ingest's Snappy files as ZSTD.
    let otlp = figure(&output, "(d) bytes per span", "OTLP protobuf");
    let ingested = figure(&output, "(d) bytes per span", "as ingest writes it");
    let compacted = figure(&output, "(d) bytes per span", "compacted");
    assert!(ingested > 0.0 && ingested < otlp, "{output}");
    assert!(compacted > 0.0 && compacted < ingested, "{output}");
    assert!(dir.path().join("data/raw/spans/_delta_log").exists());
    assert!(dir.path().join("data/redacted/spans/_delta_log").exists());
}

#[test]
fn the_redaction_benchmark_prints_its_throughput_and_baseline() {
    let output = common::ok(common::runledger(
        &[
            "bench",
            "redaction",
            "--runs",
            "200",
            "--runs-per-request",
            "20",
        ],
        &[],
    ));
    let spans = figure(&output, "(e) redaction", "one core:");
    let megabytes = figure(&output, "(e) redaction", "spans/s");
    let baseline = figure(&output, "(e) redaction", "normalising the same spans:");
    assert!(spans > 0.0 && megabytes > 0.0 && baseline > 0.0, "{output}");
}
