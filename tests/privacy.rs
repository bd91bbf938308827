//! Privacy end to end: the redacted tier on disk holds no secret that was sent, the raw tier
//! keeps everything in private files; retention, erase and compaction against a real server
//! and after crashes, checked on the files on disk with another Parquet reader.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::otlp::{kv, request};
use common::{fast_flush_config, ok, query, run_python, runledger, Server};
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::Span;

/// What a leak would look like: (as sent, the part that must not reach the redacted tier).
const SECRETS: &[(&str, &str)] = &[
    (
        "mail jane.doe+vip@example.co.uk now",
        "jane.doe+vip@example.co.uk",
    ),
    ("call +44 20 7946 0958 today", "+44 20 7946 0958"),
    ("card 4539 1488 0343 6467 exp 09/27", "4539 1488 0343 6467"),
    ("iban DE89370400440532013000", "DE89370400440532013000"),
    ("ssn 078-05-1120", "078-05-1120"),
    ("from 203.0.113.77", "203.0.113.77"),
    (
        "key sk-proj-4f9XbQ2LmZt8Yc1VwRk7Hs3JdPq6NnEa0GuTiOy5",
        "4f9XbQ2LmZt8Yc1VwRk7Hs3JdPq6NnEa0GuTiOy5",
    ),
    (
        "Authorization: Bearer tok_9c8b7a6f5e4d3c2b1a0",
        "tok_9c8b7a6f5e4d3c2b1a0",
    ),
    ("{\"password\": \"Tr0ub4dor&3x\"}", "Tr0ub4dor"),
    ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
];

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn span_at(
    trace: u128,
    id: u64,
    start_ns: u64,
    attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> Span {
    Span {
        trace_id: trace.to_be_bytes().to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        name: format!("span {id}"),
        start_time_unix_nano: start_ns,
        end_time_unix_nano: start_ns + 1_000_000,
        attributes,
        ..Default::default()
    }
}

async fn send(server: &Server, spans: Vec<Span>) {
    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(server.grpc_endpoint())
        .await
        .unwrap();
    let response = client.export(request(spans)).await.unwrap().into_inner();
    assert!(response
        .partial_success
        .is_none_or(|p| p.rejected_spans == 0));
}

/// Everything on disk under a tier, as text, read by pyarrow from the Parquet files.
fn disk_text(data_dir: &Path, tier: &str) -> String {
    let out = run_python(
        "scan_files.py",
        &[data_dir.join(tier).to_str().unwrap(), "--text"],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["text"].as_str().unwrap().to_string()
}

fn disk_files(data_dir: &Path, tier: &str) -> serde_json::Value {
    let out = run_python("scan_files.py", &[data_dir.join(tier).to_str().unwrap()]);
    serde_json::from_str(&out).unwrap()
}

fn count(data_dir: &Path, sql: &str) -> i64 {
    query(data_dir, sql)[0]["n"].as_i64().unwrap()
}

async fn wait_for_rows(data_dir: &Path, table: &str, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if data_dir
            .join(table.replace("_spans", ""))
            .join("spans/_delta_log")
            .exists()
            && count(data_dir, &format!("SELECT count(*) AS n FROM {table}")) >= n
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{table} never reached {n} rows"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redacted_tier_on_disk_holds_no_secret_and_the_raw_tier_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, "");
    // Each secret in a span name, an attribute, an event and a resource-like attribute.
    let start = now_ns();
    let spans: Vec<Span> = SECRETS
        .iter()
        .enumerate()
        .map(|(i, (text, _))| {
            let mut span = span_at(
                1000 + i as u128,
                1 + i as u64,
                start,
                vec![
                    kv("note", text),
                    kv(
                        "gen_ai.input.messages",
                        &serde_json::json!([{"role": "user", "content": text}]).to_string(),
                    ),
                    kv("user.id", &format!("customer-{i}")),
                ],
            );
            span.name = format!("handle {text}");
            span.events.push(Event {
                name: "exception".into(),
                time_unix_nano: start,
                attributes: vec![kv("exception.message", text)],
                ..Default::default()
            });
            span
        })
        .collect();
    send(&server, spans).await;
    assert!(server.stop().success());

    let redacted = disk_text(&data, "redacted");
    let raw = disk_text(&data, "raw");
    for (text, secret) in SECRETS {
        assert!(
            !redacted.contains(secret),
            "the redacted tier holds {secret:?}"
        );
        let in_raw = raw.contains(secret) || raw.contains(&secret.replace('"', "\\\""));
        assert!(in_raw, "the raw tier lost {text:?}");
    }
    for i in 0..SECRETS.len() {
        assert!(
            !redacted.contains(&format!("customer-{i}")),
            "customer ids are hashed"
        );
    }
    assert!(redacted.contains("<EMAIL:") && redacted.contains("<PAYMENT_CARD>"));
    assert!(redacted.contains("<CUSTOMER_ID:"));

    // Raw tier: directories 0700, files 0600, from the first one.
    let mut checked = 0;
    for entry in walk(&data.join("raw")) {
        let mode = std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
        let expected = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{} has mode {mode:o}", entry.display());
        checked += 1;
    }
    assert!(checked > 5);
    // The HMAC key the hashes depend on is private too.
    let key_mode = std::fs::metadata(data.join("hmac.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn hour_ns(rfc3339: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_exactly_the_hours_past_each_tier_ttl_and_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, "[maintenance]\nretention_interval = \"0s\"\n");
    // Spans at 03:59, 04:30, 05:00 and 06:10 on 2026-01-10.
    let times = [
        "2026-01-10T03:59:59Z",
        "2026-01-10T04:30:00Z",
        "2026-01-10T05:00:00Z",
        "2026-01-10T06:10:00Z",
    ];
    let spans = times
        .iter()
        .enumerate()
        .map(|(i, t)| span_at(50 + i as u128, 1 + i as u64, hour_ns(t), vec![]))
        .collect();
    send(&server, spans).await;
    assert!(server.stop().success());
    let data_arg = data.to_str().unwrap();

    // Raw TTL 7 days: at 2026-01-17T05:30 the hours ending by 2026-01-10T05:30 have expired:
    // 03 and 04, not 05 (ends 06:00).
    let now = "2026-01-17T05:30:00Z";
    let preview = ok(runledger(
        &[
            "retention",
            "--data-dir",
            data_arg,
            "--now",
            now,
            "--dry-run",
        ],
        &[],
    ));
    assert!(
        preview.contains("raw: ttl 7d, cutoff 2026-01-10T05:30:00Z: would delete 2 partitions"),
        "{preview}"
    );
    assert!(
        preview
            .contains("redacted: ttl 400d, cutoff 2024-12-13T05:30:00Z: would delete 0 partitions"),
        "{preview}"
    );
    assert_eq!(
        count(&data, "SELECT count(*) AS n FROM raw_spans"),
        4,
        "a dry run deletes nothing"
    );

    let applied = ok(runledger(
        &["retention", "--data-dir", data_arg, "--now", now],
        &[],
    ));
    assert!(
        applied.contains("raw: removed 2 files from the table and 2 from disk"),
        "{applied}"
    );
    let hours: Vec<String> = query(&data, "SELECT hour FROM raw_spans ORDER BY hour")
        .into_iter()
        .map(|r| r["hour"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hours, ["05", "06"]);
    assert_eq!(count(&data, "SELECT count(*) AS n FROM redacted_spans"), 4);
    let on_disk = disk_files(&data, "raw");
    let paths: Vec<&str> = on_disk["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths
            .iter()
            .all(|p| !p.contains("hour=03") && !p.contains("hour=04")),
        "{paths:?}"
    );
    assert_eq!(paths.len(), 2);

    // One second before 06:00 the next hour is not yet expired; at 06:00 it is.
    let kept = ok(runledger(
        &[
            "retention",
            "--data-dir",
            data_arg,
            "--now",
            "2026-01-17T05:59:59Z",
        ],
        &[],
    ));
    assert!(kept.contains("deleting 0 partitions"), "{kept}");
    ok(runledger(
        &[
            "retention",
            "--data-dir",
            data_arg,
            "--now",
            "2026-01-17T06:00:00Z",
        ],
        &[],
    ));
    assert_eq!(count(&data, "SELECT count(*) AS n FROM raw_spans"), 1);
    // The redacted tier's 400 days.
    ok(runledger(
        &[
            "retention",
            "--data-dir",
            data_arg,
            "--now",
            "2027-02-14T07:00:00Z",
        ],
        &[],
    ));
    assert_eq!(count(&data, "SELECT count(*) AS n FROM redacted_spans"), 0);
    assert_eq!(
        disk_files(&data, "redacted")["files"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// Runs of two customers; only each run's root carries the customer id.
fn customer_runs(first_trace: u128, customer: &str, runs: usize, start: u64) -> Vec<Span> {
    let mut spans = Vec::new();
    for r in 0..runs {
        let trace = first_trace + r as u128;
        let base = (trace as u64) * 100;
        spans.push(span_at(
            trace,
            base,
            start,
            vec![kv("customer.id", customer), kv("note", "root")],
        ));
        for c in 1..4 {
            let mut child = span_at(
                trace,
                base + c,
                start + c * 1000,
                vec![kv("gen_ai.tool.name", "lookup")],
            );
            child.parent_span_id = base.to_be_bytes().to_vec();
            spans.push(child);
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_removes_a_customers_runs_from_every_tier_and_disk_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &fast_flush_config(""));
    let start = now_ns();
    let mut spans = customer_runs(0xA000, "cust-A", 3, start);
    spans.extend(customer_runs(0xB000, "cust-B", 2, start));
    send(&server, spans).await;
    wait_for_rows(&data, "redacted_spans", 20).await;
    wait_for_rows(&data, "raw_spans", 20).await;
    let a_runs: Vec<String> = (0..3).map(|r| format!("{:032x}", 0xA000 + r)).collect();
    let data_arg = data.to_str().unwrap();

    // Erase while the server keeps receiving.
    let more = customer_runs(0xC000, "cust-C", 5, start);
    let (erased, ()) = tokio::join!(
        tokio::task::spawn_blocking({
            let data_arg = data_arg.to_string();
            move || {
                ok(runledger(
                    &["erase", "--data-dir", &data_arg, "--customer", "cust-A"],
                    &[],
                ))
            }
        }),
        send(&server, more)
    );
    let erased = erased.unwrap();
    assert!(erased.contains("erase: 3 runs found"), "{erased}");
    assert!(
        erased.contains("raw: erased 12 spans") && erased.contains("redacted: erased 12 spans"),
        "{erased}"
    );
    assert!(
        !erased.contains("cust-A") && !erased.contains(&a_runs[0]),
        "counts, never content"
    );
    wait_for_rows(&data, "redacted_spans", 28).await;

    for tier in ["raw", "redacted"] {
        let on_disk = disk_files(&data, tier);
        let ids: Vec<&str> = on_disk["run_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for a in &a_runs {
            assert!(!ids.contains(&a.as_str()), "{tier}: run {a} still on disk");
        }
        assert_eq!(
            ids.len(),
            7,
            "{tier}: the other customers' runs are untouched: {ids:?}"
        );
        let table = format!("{tier}_spans");
        assert_eq!(
            count(&data, &format!("SELECT count(*) AS n FROM {table}")),
            28
        );
    }

    // One run by id, with a crash after the DELETE commit and before its files left the
    // disk: the rerun finishes the job.
    let b0 = format!("{:032x}", 0xB000);
    let crashed = runledger(
        &["erase", "--data-dir", data_arg, "--run-id", &b0],
        &[("RUNLEDGER_FAILPOINT", "lake.delete.before_purge")],
    );
    assert!(!crashed.status.success());
    let still: Vec<String> = disk_files(&data, "raw")["run_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(still.contains(&b0), "the crash left the old file on disk");
    assert_eq!(
        count(
            &data,
            &format!("SELECT count(*) AS n FROM raw_spans WHERE run_id = '{b0}'")
        ),
        0
    );
    let rerun = ok(runledger(
        &["erase", "--data-dir", data_arg, "--run-id", &b0],
        &[],
    ));
    assert!(rerun.contains("erase: 1 runs found"), "{rerun}");
    for tier in ["raw", "redacted"] {
        let ids: Vec<String> = disk_files(&data, tier)["run_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(
            !ids.contains(&b0),
            "{tier}: run {b0} still on disk after the rerun"
        );
        assert_eq!(ids.len(), 6);
    }
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_closed_hours_under_a_live_server_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &fast_flush_config("[maintenance]\ncompaction_interval = \"0s\"\n"),
    );
    // 12 flushes into an hour that closed two hours ago: 12 small files per tier.
    let two_hours_ago = now_ns() - 2 * 3600 * 1_000_000_000;
    for batch in 0..12u64 {
        let spans = (0..10u64)
            .map(|i| {
                // Trace ids (run ids) that differ in their leading characters, as real ones do.
                let trace = ((batch * 7 + i % 3) as u128 + 1)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
                span_at(trace, batch * 100 + i + 1, two_hours_ago + i, vec![])
            })
            .collect();
        send(&server, spans).await;
        wait_for_rows(&data, "redacted_spans", ((batch + 1) * 10) as i64).await;
    }
    let before = disk_files(&data, "raw")["files"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        before.len() >= 6,
        "expected many small files, got {}",
        before.len()
    );
    // Ingest writes Snappy; compaction rewrites in the archival ZSTD.
    for file in &before {
        assert_eq!(file["codecs"], serde_json::json!(["SNAPPY"]), "{file}");
    }
    let ids_before = common::raw_span_ids(&data);
    let data_arg = data.to_str().unwrap();

    // A crash right after the compaction commit: nothing lost, nothing doubled.
    let crashed = runledger(
        &["compact", "--data-dir", data_arg],
        &[("RUNLEDGER_FAILPOINT", "lake.compact.after_commit")],
    );
    assert!(!crashed.status.success());
    let mut ids_after = common::raw_span_ids(&data);
    let mut sorted_before = ids_before.clone();
    sorted_before.sort();
    ids_after.sort();
    assert_eq!(ids_after, sorted_before);

    // Then a full run next to the live server, which keeps writing into the current hour.
    let (compacted, ()) = tokio::join!(
        tokio::task::spawn_blocking({
            let data_arg = data_arg.to_string();
            move || ok(runledger(&["compact", "--data-dir", &data_arg], &[]))
        }),
        send(&server, vec![span_at(999, 99_999, now_ns(), vec![])])
    );
    let compacted = compacted.unwrap();
    assert!(
        compacted.contains("redacted: compacted 1 hours"),
        "{compacted}"
    );
    let mut ids_final = common::raw_span_ids(&data);
    wait_for_rows(&data, "raw_spans", 121).await;
    ids_final = {
        let _ = &mut ids_final;
        common::raw_span_ids(&data)
    };
    ids_final.sort();
    let mut expected = sorted_before.clone();
    expected.push(format!("{:016x}", 99_999u64));
    expected.sort();
    assert_eq!(ids_final, expected, "no span lost or doubled");
    let live: i64 = count(&data, "SELECT count(DISTINCT hour) AS n FROM raw_spans");
    assert!(live >= 1);

    // The closed hour is one file, sorted by run; the replaced files wait for the grace period.
    let hour = chrono::DateTime::from_timestamp_nanos(two_hours_ago as i64)
        .format("hour=%H")
        .to_string();
    let in_hour = |tier: &str| -> Vec<serde_json::Value> {
        disk_files(&data, tier)["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["path"].as_str().unwrap().contains(&hour))
            .cloned()
            .collect()
    };
    assert!(
        in_hour("raw").len() > 1,
        "old files kept during the grace period"
    );
    let config = dir.path().join("nograce.toml");
    std::fs::write(&config, "[maintenance]\nvacuum_grace = \"0s\"\n").unwrap();
    ok(runledger(
        &[
            "compact",
            "--data-dir",
            data_arg,
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    ));
    for tier in ["raw", "redacted"] {
        let files = in_hour(tier);
        assert_eq!(files.len(), 1, "{tier}: {files:?}");
        assert_eq!(files[0]["rows"], 120);
        assert_eq!(files[0]["sorted_by_run"], true);
        assert_eq!(files[0]["codecs"], serde_json::json!(["ZSTD"]), "{tier}");
    }
    assert!(server.stop().success());
}
