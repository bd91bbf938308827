//! Durability: what was acknowledged survives a SIGKILL at any instant, lands exactly once,
//! and a graceful stop flushes everything.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::otlp::{request, span};
use common::{fast_flush_config, raw_span_ids, Server};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

/// Streams requests of `per_request` spans with fresh ids from `concurrency` clients until
/// the server stops answering; records the ids of every acknowledged span, and sends the
/// running count on `acked`.
async fn stream_until_refused(
    endpoint: String,
    concurrency: u64,
    per_request: u64,
    acked: Arc<Mutex<Vec<u64>>>,
    progress: tokio::sync::watch::Sender<usize>,
) {
    let mut clients = Vec::new();
    for worker in 0..concurrency {
        let endpoint = endpoint.clone();
        let acked = acked.clone();
        let progress = progress.clone();
        clients.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
            for batch in 0u64.. {
                let first = (worker << 40) | (batch * per_request) | 1;
                let ids: Vec<u64> = (first..first + per_request).collect();
                let spans = ids
                    .iter()
                    .map(|id| span(*id as u128 + 1, *id, vec![]))
                    .collect();
                match client.export(request(spans)).await {
                    Ok(response) => {
                        assert!(response.into_inner().partial_success.is_none());
                        let mut acked = acked.lock().unwrap();
                        acked.extend(ids);
                        let _ = progress.send(acked.len());
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    for client in clients {
        let _ = client.await;
    }
}

fn wait_with_deadline(server: Server, deadline: Duration) -> std::process::ExitStatus {
    let mut server = server;
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// WAL segments left in the data directory.
fn wal_segments(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wal")
        })
        .count()
}

fn assert_exactly_once(data_dir: &std::path::Path, acked: &[u64]) {
    let stored = raw_span_ids(data_dir);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in &stored {
        *counts.entry(id.clone()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated spans: {duplicated:?}");
    let missing: Vec<_> = acked
        .iter()
        .map(|id| format!("{id:016x}"))
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged spans lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        wal_segments(data_dir),
        0,
        "every segment is released after its commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_streaming_loses_and_duplicates_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, &fast_flush_config(""));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (progress, mut watch) = tokio::sync::watch::channel(0usize);
    let stream = tokio::spawn(stream_until_refused(
        server.grpc_endpoint(),
        4,
        50,
        acked.clone(),
        progress,
    ));
    // Kill once enough is acknowledged that some segments are committed and some are not.
    watch.wait_for(|n| *n >= 20_000).await.unwrap();
    server.kill();
    stream.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20_000);

    let restarted = Server::start(&data_dir, &fast_flush_config(""));
    assert!(restarted.stop().success());
    assert_exactly_once(&data_dir, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_a_flush_is_replayed_exactly_once() {
    for failpoint in [
        "flush.before_commit",
        "flush.between_tiers",
        "flush.after_commit",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let server = Server::start_with_env(
            &data_dir,
            &fast_flush_config(""),
            &[("RUNLEDGER_FAILPOINT", failpoint)],
        );
        let mut client = TraceServiceClient::connect(server.grpc_endpoint())
            .await
            .unwrap();
        let mut acked = Vec::new();
        for batch in 0..3u64 {
            let ids: Vec<u64> = (batch * 10 + 1..batch * 10 + 11).collect();
            let spans = ids.iter().map(|id| span(7, *id, vec![])).collect();
            if client.export(request(spans)).await.is_ok() {
                acked.extend(ids);
            }
        }
        assert!(!acked.is_empty(), "{failpoint}: something was acknowledged");
        // The first flush reaches the failpoint and the process aborts on its own.
        let status = tokio::task::spawn_blocking(move || {
            wait_with_deadline(server, Duration::from_secs(60))
        })
        .await
        .unwrap();
        assert!(
            !status.success(),
            "{failpoint}: the failpoint aborted the server"
        );

        let restarted = Server::start(&data_dir, &fast_flush_config(""));
        assert!(restarted.stop().success());
        assert_exactly_once(&data_dir, &acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_flushes_everything_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Nothing would be flushed for an hour: only the stop can put it in the lake.
    let server = Server::start(&data_dir, "[wal]\nflush_interval_ms = 3600000\n");
    let mut client = TraceServiceClient::connect(server.grpc_endpoint())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for batch in 0..20u64 {
        let ids: Vec<u64> = (batch * 100 + 1..batch * 100 + 101).collect();
        let spans = ids
            .iter()
            .map(|id| span(*id as u128, *id, vec![]))
            .collect();
        client.export(request(spans)).await.unwrap();
        acked.extend(ids);
    }
    let stop = tokio::task::spawn_blocking(move || server.stop());
    let status = stop.await.unwrap();
    assert!(status.success(), "{status}");
    assert_exactly_once(&data_dir, &acked);
    assert_eq!(raw_span_ids(&data_dir).len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_queryable_within_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // The default configuration: a 2 s flush interval, within the promised 5 s.
    let server = Server::start(&data_dir, "");
    let mut client = TraceServiceClient::connect(server.grpc_endpoint())
        .await
        .unwrap();
    client
        .export(request(vec![span(5, 5, vec![])]))
        .await
        .unwrap();
    let acked_at = Instant::now();
    let data = data_dir.clone();
    let visible_after = tokio::task::spawn_blocking(move || loop {
        if raw_span_ids(&data) == vec![format!("{:016x}", 5)] {
            return acked_at.elapsed();
        }
        assert!(
            acked_at.elapsed() < Duration::from_secs(10),
            "not visible after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    })
    .await
    .unwrap();
    assert!(
        visible_after < Duration::from_secs(5),
        "visible after {visible_after:?}"
    );
    drop(server);
}

/// The value of a counter on the server's `/metrics`.
async fn counter(server: &Server, name: &str) -> f64 {
    let (status, metrics) = server.get_text("/metrics", "").await;
    assert_eq!(status, 200, "{metrics}");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// Polls the server's `/metrics` until `condition` holds of `name` or `deadline` passes (a
/// wait on the server's progress, not a guess at how long it takes).
async fn wait_for_counter(server: &Server, name: &str, condition: impl Fn(f64) -> bool) {
    let started = Instant::now();
    loop {
        let value = counter(server, name).await;
        if condition(value) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting on {name} (at {value})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redacted_span_ids(data_dir: &std::path::Path) -> Vec<String> {
    common::query(data_dir, "SELECT span_id FROM redacted_spans")
        .into_iter()
        .map(|row| row["span_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_that_cannot_commit_keeps_its_segments_while_the_other_tier_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, &fast_flush_config(""));
    let mut client = TraceServiceClient::connect(server.grpc_endpoint())
        .await
        .unwrap();
    let export = |ids: std::ops::Range<u64>| request(ids.map(|id| span(9, id, vec![])).collect());
    const ROWS: &str = "runledger_rows_committed_total";
    client.export(export(1..11)).await.unwrap();
    // Ten rows in each tier.
    wait_for_counter(&server, ROWS, |rows| rows == 20.0).await;

    // The redacted tier's log becomes a file: its commits fail until it is put back.
    let log = data_dir.join("redacted/spans/_delta_log");
    let held = data_dir.join("redacted/spans/_delta_log.held");
    std::fs::rename(&log, &held).unwrap();
    std::fs::write(&log, b"not a directory").unwrap();
    client.export(export(11..21)).await.unwrap();
    client.export(export(21..31)).await.unwrap();
    // The raw tier's lane commits them meanwhile (twenty more rows); the redacted lane fails
    // and retries.
    wait_for_counter(&server, ROWS, |rows| rows == 40.0).await;
    wait_for_counter(&server, "runledger_flush_errors_total", |errors| {
        errors > 0.0
    })
    .await;
    assert_eq!(raw_span_ids(&data_dir).len(), 30);
    let pending = wal_segments(&data_dir);
    assert!(
        pending >= 1,
        "the segment stays in the WAL until both tiers commit it"
    );

    std::fs::remove_file(&log).unwrap();
    std::fs::rename(&held, &log).unwrap();
    assert!(server.stop().success());
    // If the stop came before the lane's next attempt, the segment is replayed now.
    let restarted = Server::start(&data_dir, &fast_flush_config(""));
    assert!(restarted.stop().success());

    let acked: Vec<u64> = (1..31).collect();
    assert_exactly_once(&data_dir, &acked);
    let mut redacted = redacted_span_ids(&data_dir);
    redacted.sort();
    let mut expected: Vec<String> = acked.iter().map(|id| format!("{id:016x}")).collect();
    expected.sort();
    assert_eq!(
        redacted, expected,
        "the redacted tier holds every span once"
    );
}
