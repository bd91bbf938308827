//! The real OpenTelemetry Python SDK exporters (gRPC and HTTP/protobuf, with and without
//! gzip) send to a running `runledger serve`; the rows of the lake, read back by another
//! engine (delta-rs in Python, and DuckDB), are checked field by field against what the SDK
//! says it exported.

mod common;

use common::{read_lake_with_python, run_python, Server};
use serde_json::Value;

#[test]
fn sdk_exporters_land_in_the_lake_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, "");
    let cases = [
        ("grpc", false, server.grpc_endpoint()),
        ("grpc", true, server.grpc_endpoint()),
        ("http", false, server.http_url()),
        ("http", true, server.http_url()),
    ];
    let mut sent: Vec<(String, Value)> = Vec::new();
    for (protocol, gzip, endpoint) in &cases {
        let run_id = format!("run-{protocol}-{}", if *gzip { "gzip" } else { "plain" });
        let mut args = vec![
            "--protocol",
            protocol,
            "--endpoint",
            endpoint,
            "--run-id",
            &run_id,
        ];
        if *gzip {
            args.push("--gzip");
        }
        let out = run_python("export_with_sdk.py", &args);
        let report: Value = serde_json::from_str(&out).unwrap();
        assert!(
            report["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r == "SUCCESS"),
            "{protocol} gzip={gzip}: {report}"
        );
        for span in report["spans"].as_array().unwrap() {
            sent.push((run_id.clone(), span.clone()));
        }
    }
    assert_eq!(sent.len(), 16);
    let status = server.stop();
    assert!(status.success(), "graceful stop exits 0: {status}");

    let lake = read_lake_with_python(&data_dir, "raw");
    assert_eq!(
        lake["partition_columns"],
        serde_json::json!(["date", "hour"])
    );
    assert_eq!(lake["duckdb"]["count"], 16);
    assert_eq!(lake["duckdb"]["runs"], 4);
    assert_eq!(lake["duckdb"]["input_tokens"], 4 * 1200);
    for file in lake["files"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        assert!(file.contains("/date=") && file.contains("/hour="), "{file}");
        assert!(file.ends_with(".parquet"));
    }
    let rows = lake["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 16, "every exported span exactly once");

    for (run_id, span) in &sent {
        let row = rows
            .iter()
            .find(|r| r["span_id"] == span["span_id"])
            .unwrap_or_else(|| panic!("span {} is missing", span["span_id"]));
        let attrs = &span["attributes"];
        let row_attrs = &row["attributes"];
        // Identity and timing.
        assert_eq!(row["trace_id"], span["trace_id"]);
        assert_eq!(row["parent_span_id"], span["parent_span_id"]);
        assert_eq!(row["run_id"], Value::from(run_id.as_str()));
        assert_eq!(row["name"], span["name"]);
        assert_eq!(row["kind"], span["kind"]);
        let start_ns = span["start_time_unix_nano"].as_u64().unwrap();
        let end_ns = span["end_time_unix_nano"].as_u64().unwrap();
        assert_eq!(row["start_time"].as_u64().unwrap(), start_ns / 1000);
        assert_eq!(row["end_time"].as_u64().unwrap(), end_ns / 1000);
        assert_eq!(row["duration_ns"].as_u64().unwrap(), end_ns - start_ns);
        let start = chrono::DateTime::from_timestamp_nanos(start_ns as i64);
        assert_eq!(
            row["date"],
            Value::from(start.format("%Y-%m-%d").to_string())
        );
        assert_eq!(row["hour"], Value::from(start.format("%H").to_string()));
        assert_eq!(row["status_code"], span["status_code"]);
        if span["status_code"] == "error" {
            assert_eq!(row["status_message"], "card declined");
            assert_eq!(row["error_type"], "CardDeclined");
            let events: Value = serde_json::from_str(row["events"].as_str().unwrap()).unwrap();
            assert_eq!(events[0]["name"], "exception");
            assert_eq!(events[0]["attributes"]["exception.type"], "ValueError");
            let links: Value = serde_json::from_str(row["links"].as_str().unwrap()).unwrap();
            assert_eq!(links[0]["span_id"], span["parent_span_id"]);
            assert_eq!(links[0]["attributes"]["link.kind"], "caused_by");
        }
        // Who.
        assert_eq!(row["service_name"], "refund-service");
        assert_eq!(
            row["resource_attributes"]["deployment.environment.name"],
            "test"
        );
        assert_eq!(
            row["resource_attributes"]["telemetry.sdk.language"],
            "python"
        );
        assert_eq!(row["scope_name"], "runledger.tests");
        assert_eq!(row["scope_version"], "0.1");
        // Every attribute is kept, in its string form.
        for (key, value) in attrs.as_object().unwrap() {
            let expected = match value {
                Value::String(s) => s.clone(),
                Value::Array(_) => value.to_string(),
                other => other.to_string(),
            };
            let stored = row_attrs[key]
                .as_str()
                .unwrap_or_else(|| panic!("attribute {key} missing"));
            if value.is_array() {
                assert_eq!(
                    serde_json::from_str::<Value>(stored).unwrap(),
                    *value,
                    "{key}"
                );
            } else {
                assert_eq!(stored, expected, "{key}");
            }
        }
        // Normalised columns.
        match span["name"].as_str().unwrap() {
            "invoke_agent refund-agent" => {
                assert_eq!(row["workflow"], "refunds");
                assert_eq!(row["agent_name"], "refund-agent");
                assert_eq!(row["customer_id"], "cust-0042");
                assert_eq!(row["outcome"], "escalated");
                assert_eq!(row["operation"], "invoke_agent");
                assert_eq!(row["side_effect"], "none");
            }
            "chat gpt-4o" => {
                assert_eq!(row["operation"], "chat");
                assert_eq!(row["provider"], "openai");
                assert_eq!(row["request_model"], "gpt-4o");
                assert_eq!(row["response_model"], "gpt-4o-2024-08-06");
                assert_eq!(row["input_tokens"], 1200);
                assert_eq!(row["output_tokens"], 300);
                assert_eq!(row["cache_read_tokens"], 1000);
                assert_eq!(row["reasoning_tokens"], 100);
                assert_eq!(row["outcome"], Value::Null, "only roots carry the outcome");
                assert_eq!(row["workflow"], Value::Null);
                assert_eq!(
                    row["agent_name"], "refund-service",
                    "falls back to service.name"
                );
                assert_eq!(row_attrs["gen_ai.request.temperature"], "0.25");
            }
            "execute_tool issue_refund" => {
                assert_eq!(row["tool_name"], "issue_refund");
                assert_eq!(row["side_effect"], "write");
                let attempt = attrs["runledger.retry.attempt"].as_i64().unwrap();
                assert_eq!(row["retry_attempt"], attempt);
                if attempt == 2 {
                    assert_eq!(row["external_ref"], Value::from(format!("re_{run_id}")));
                }
            }
            other => panic!("unexpected span {other}"),
        }
        assert!(row["received_at"].as_u64().unwrap() >= start_ns / 1000);
    }
}
