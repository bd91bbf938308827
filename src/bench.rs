//! `runledger bench ingest` and `runledger bench query`: the benchmarks of the README.
//!
//! `bench query` is in `bench/query.rs`; what follows is `bench ingest`.
//!
//! In one run, on this machine:
//! (a) decode-only throughput of the generator's spans on one core (protobuf decode of the
//!     export requests: the physical limit of any OTLP collector);
//! (b) end to end: `runledger gen` into a `runledger serve` child process over loopback gRPC,
//!     fsync on, until every span is committed to Parquet (the child is stopped with SIGTERM,
//!     which flushes, and the clock stops when it has exited);
//! (c) their ratio;
//! (d) Parquet bytes per span in the lake against OTLP protobuf bytes per span: as ingest
//!     writes them, and once `runledger compact` has rewritten the hours as archival files.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use prost::Message;
use runledger_sample_data::{send, Generator, GeneratorOptions, Protocol, SendOptions};

mod api;
mod lake;
mod lookup;
mod overview;
mod query;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

/// The generated lake the query benchmarks run over.
#[derive(Debug, clap::Args)]
struct LakeArgs {
    /// Spans in the lake.
    #[arg(long, default_value_t = 10_000_000)]
    spans: u64,
    /// Hour partitions they are spread over.
    #[arg(long, default_value_t = 48)]
    hours: u64,
    /// Where the lake is built (kept and reused by later runs).
    #[arg(long, default_value = "bench-data/lake-10m")]
    data_dir: std::path::PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum Which {
    /// OTLP in to Parquet out: decode-only limit, end-to-end throughput, storage ratio.
    Ingest {
        /// Runs to send end to end (about 10 spans each).
        #[arg(long, default_value_t = 150_000)]
        runs: u64,
        /// Exporters sending at once (services or OpenTelemetry Collectors).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Runs per export request: 80 runs are about 500 spans, the batch size of the SDKs'
        /// batch span processor (512).
        #[arg(long, default_value_t = 80)]
        runs_per_request: usize,
        /// Where the server keeps its data (a fresh temporary directory by default).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// The redaction stage alone, one core, default rules, on the generator's traffic: the
    /// figure (e) of `bench ingest`, for working on the redactor.
    Redaction {
        /// Runs to generate (about 10 spans each).
        #[arg(long, default_value_t = 20_000)]
        runs: u64,
        /// Runs per export request, as in `bench ingest`.
        #[arg(long, default_value_t = 80)]
        runs_per_request: usize,
        /// Redact batches of this many rows, cut from all requests' spans in arrival order
        /// (the server redacts a segment in batches of 1,024 rows); by default, one batch per
        /// request.
        #[arg(long)]
        batch_rows: Option<usize>,
    },
    /// Per-workflow metrics over a large generated lake: runledger against DuckDB on the same
    /// files with the same SQL.
    Query {
        #[command(flatten)]
        lake: LakeArgs,
        /// Timed repetitions of each engine (after one warm-up).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[command(flatten)]
        options: query::Options,
    },
    /// The dashboard overview's API calls over a large generated lake: cold, cached, and
    /// stale-while-revalidate latencies.
    Overview {
        #[command(flatten)]
        lake: LakeArgs,
        /// Timed repetitions of the cached calls.
        #[arg(long, default_value_t = 20)]
        repeats: usize,
    },
    /// Run lookup through the API, by run id and by external ref, over a large generated
    /// lake: p50 and p99 latency against DuckDB filtering the same files.
    Lookup {
        #[command(flatten)]
        lake: LakeArgs,
        /// Random run ids (and as many refs) to look up through the API.
        #[arg(long, default_value_t = 500)]
        lookups: usize,
        /// How many of them DuckDB looks up too (each scans every file).
        #[arg(long, default_value_t = 50)]
        duckdb_lookups: usize,
    },
}

impl BenchArgs {
    /// Whether this benchmark runs the API's queries in its own process (and so should run
    /// under the server's memory settings); `ingest` starts a real server instead.
    pub(crate) fn runs_api_queries_in_process(&self) -> bool {
        !matches!(self.which, Which::Ingest { .. })
    }
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.which {
        Which::Ingest {
            runs,
            concurrency,
            runs_per_request,
            data_dir,
        } => ingest(runs, concurrency, runs_per_request, data_dir).await,
        Which::Redaction {
            runs,
            runs_per_request,
            batch_rows,
        } => {
            let figures = tokio::task::spawn_blocking(move || {
                redaction_throughput(runs, runs_per_request, batch_rows)
            })
            .await??;
            println!("{}", figures.line());
            Ok(ExitCode::SUCCESS)
        }
        Which::Query {
            lake:
                LakeArgs {
                    spans,
                    hours,
                    data_dir,
                },
            repeats,
            options,
        } => query::run(spans, hours, data_dir, repeats.max(1), options).await,
        Which::Overview {
            lake:
                LakeArgs {
                    spans,
                    hours,
                    data_dir,
                },
            repeats,
        } => overview::run(spans, hours, data_dir, repeats.max(1)).await,
        Which::Lookup {
            lake:
                LakeArgs {
                    spans,
                    hours,
                    data_dir,
                },
            lookups,
            duckdb_lookups,
        } => {
            lookup::run(
                spans,
                hours,
                data_dir,
                lookups.max(1),
                duckdb_lookups.max(1),
            )
            .await
        }
    }
}

/// Live traffic: runs that started within the last five minutes, as an SDK's batch span
/// processor exports them (a flush writes the current hour, two at an hour's turn).
const LIVE_SPREAD_NANOS: u64 = 5 * 60_000_000_000;
/// A backfill: runs spread over the last six hours, so that every flush writes seven hour
/// partitions per tier (seven files instead of one or two).
const BACKFILL_SPREAD_NANOS: u64 = 6 * 3_600_000_000_000;

/// The generator's traffic; `spread_nanos` spreads the runs' start times before now.
fn generator_options(spread_nanos: u64) -> GeneratorOptions {
    GeneratorOptions {
        seed: 7,
        end_unix_nano: crate::gen::now_unix_nano(),
        spread_nanos,
        customers: 500,
    }
}

/// Spans per second of protobuf decoding on this thread, over `runs` generated runs.
fn decode_only(runs: u64, runs_per_request: usize) -> (f64, u64) {
    let mut generator = Generator::new(generator_options(LIVE_SPREAD_NANOS));
    let mut encoded = Vec::new();
    let mut spans = 0u64;
    let mut generated = 0;
    while generated < runs {
        let (request, n) = generator.next_request_encoded(runs_per_request);
        spans += n as u64;
        generated += runs_per_request as u64;
        encoded.push(request);
    }
    let mut best = 0.0f64;
    // Three passes, best of: the first warms the allocator and caches.
    for _ in 0..3 {
        let started = Instant::now();
        let mut decoded_spans = 0usize;
        for bytes in &encoded {
            let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(bytes.as_slice())
                .expect("the generator's requests decode");
            decoded_spans += request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum::<usize>();
            std::hint::black_box(&request);
        }
        let rate = decoded_spans as f64 / started.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    (best, spans)
}

/// Runs `runledger compact` over `data_dir` as if its hours had closed, old files removed at
/// once: the lake's archival layout (ZSTD, sorted by run). Returns the seconds it took.
fn compact_closed(data_dir: &Path) -> anyhow::Result<f64> {
    let config_path = data_dir.with_extension("compact.toml");
    std::fs::write(
        &config_path,
        "[maintenance]\ncompact_after = \"0s\"\nvacuum_grace = \"0s\"\n",
    )?;
    let after_the_hour = chrono::Utc::now() + chrono::Duration::hours(2);
    let started = Instant::now();
    let status = std::process::Command::new(
        std::env::current_exe().context("locating the runledger binary")?,
    )
    .arg("compact")
    .arg("--data-dir")
    .arg(data_dir)
    .arg("--config")
    .arg(&config_path)
    .args(["--now", &after_the_hour.to_rfc3339()])
    .env("RUNLEDGER_LOG", "warn")
    .stdout(Stdio::null())
    .status()
    .context("running runledger compact")?;
    anyhow::ensure!(status.success(), "runledger compact exited with {status}");
    Ok(started.elapsed().as_secs_f64())
}

fn parquet_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.is_dir() {
            total += parquet_bytes(&path)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

async fn ingest(
    runs: u64,
    concurrency: usize,
    runs_per_request: usize,
    data_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("runledger ingest benchmark ({cores} cores)");
    let (decode_rate, decode_spans) =
        tokio::task::spawn_blocking(move || decode_only(runs.min(20_000), runs_per_request))
            .await?;
    println!(
        "(a) decode-only, one core:        {decode_rate:>12.0} spans/s  ({decode_spans} spans)"
    );

    let redaction = tokio::task::spawn_blocking(move || {
        redaction_throughput(runs.min(20_000), runs_per_request, None)
    })
    .await??;
    println!("{}", redaction.line());

    let temp = tempfile::tempdir()?;
    let live = IngestRun {
        runs,
        concurrency,
        runs_per_request,
        spread_nanos: LIVE_SPREAD_NANOS,
    };
    let backfill = IngestRun {
        spread_nanos: BACKFILL_SPREAD_NANOS,
        ..live
    };
    const RAW_ONLY: &str = "[tiers.redacted]\nenabled = false\n";
    let both = ingest_once(
        &live,
        data_dir.unwrap_or_else(|| temp.path().join("data")),
        "",
    )
    .await?;
    let raw_only = ingest_once(&live, temp.path().join("raw-only"), RAW_ONLY).await?;
    let raw_backfill = ingest_once(&backfill, temp.path().join("backfill"), RAW_ONLY).await?;
    let e2e_rate = both.rate;
    println!(
        "(b) end to end, gRPC, fsync on, live traffic (runs of the last 5 minutes), until all is in Parquet:"
    );
    println!(
        "    raw tier only (no redaction):                        {:>9.0} spans/s  ({} spans in {:.2} s; server CPU {:.2} µs/span; {} overload retries)",
        raw_only.rate, raw_only.spans, raw_only.seconds, raw_only.cpu_us_per_span, raw_only.retries
    );
    println!(
        "    raw + redacted tiers (redaction on):                 {e2e_rate:>9.0} spans/s  ({} spans in {:.2} s; server CPU {:.2} µs/span; {} overload retries)",
        both.spans, both.seconds, both.cpu_us_per_span, both.retries
    );
    println!(
        "    backfill (runs of the last 6 hours: 7 hour partitions per flush), raw tier only: {:>9.0} spans/s  (server CPU {:.2} µs/span)",
        raw_backfill.rate, raw_backfill.cpu_us_per_span
    );
    for (what, run) in [
        ("raw only", &raw_only),
        ("raw + redacted", &both),
        ("backfill, raw only", &raw_backfill),
    ] {
        println!(
            "    CPU, {what}: exporters (generator, encoding, gRPC client) {:.2} µs/span; server and exporters kept {:.2} of {cores} cores busy",
            run.exporters_cpu_us_per_span, run.cores_busy
        );
    }
    let redact_us = both.redaction_us as f64 / both.spans as f64;
    println!(
        "    redaction in the server: {redact_us:.2} µs/span = {:.1}% of the server's CPU; it adds {:.1}% to the CPU cost of ingest",
        100.0 * redact_us / both.cpu_us_per_span,
        100.0 * redact_us / (both.cpu_us_per_span - redact_us)
    );
    println!(
        "(c) end to end / decode-only:     {:>12.3} (raw tier only), {:.3} (raw + redacted)",
        raw_only.rate / decode_rate,
        e2e_rate / decode_rate
    );
    let raw_table = both.data_dir.join("raw").join("spans");
    let ingested = parquet_bytes(&raw_table)?;
    let compaction_seconds = compact_closed(&both.data_dir)?;
    let compacted = parquet_bytes(&raw_table)?;
    let otlp_per_span = both.otlp_bytes as f64 / both.spans as f64;
    let per_span = |bytes: u64| bytes as f64 / both.spans as f64;
    println!(
        "(d) bytes per span: OTLP protobuf {otlp_per_span:.1}; Parquet as ingest writes it {:.1} (1/{:.1} of OTLP), compacted {:.1} (1/{:.1} of OTLP; both tiers compacted in {compaction_seconds:.2} s)",
        per_span(ingested),
        otlp_per_span / per_span(ingested),
        per_span(compacted),
        otlp_per_span / per_span(compacted),
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy)]
struct IngestRun {
    runs: u64,
    concurrency: usize,
    runs_per_request: usize,
    /// The runs' start times spread over this long before now.
    spread_nanos: u64,
}

struct IngestResult {
    rate: f64,
    spans: u64,
    seconds: f64,
    retries: u64,
    otlp_bytes: u64,
    cpu_us_per_span: f64,
    /// CPU of the exporters (generator, encoding, gRPC client) per span.
    exporters_cpu_us_per_span: f64,
    /// Server and exporters' CPU over the run's wall time: how many cores they kept busy.
    cores_busy: f64,
    redaction_us: u64,
    data_dir: std::path::PathBuf,
}

/// CPU time (user + system) so far of `who`: this process (`RUSAGE_SELF`) or its
/// waited-for children (`RUSAGE_CHILDREN`).
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One `runledger serve` with `config`, the generator's traffic through it, SIGTERM, and
/// the figures: spans/s until everything is in Parquet, the server's CPU per span.
async fn ingest_once(
    options: &IngestRun,
    data_dir: std::path::PathBuf,
    config: &str,
) -> anyhow::Result<IngestResult> {
    std::fs::create_dir_all(&data_dir)?;
    let config_path = data_dir.with_extension("toml");
    std::fs::write(&config_path, config)?;
    let exe = std::env::current_exe().context("locating the runledger binary")?;
    // The previous run's files go to disk now, not as writeback during this one.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let cpu_before = cpu_seconds(libc::RUSAGE_CHILDREN);
    let mut child = std::process::Command::new(exe)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUNLEDGER_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting runledger serve")?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let grpc = loop {
        let Some(line) = lines.next() else {
            bail!("runledger serve exited before listening");
        };
        let line = line?;
        if let Some(rest) = line.strip_prefix("listening ") {
            let grpc = rest
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("grpc="))
                .context("no grpc address in the listening line")?;
            break grpc.to_string();
        }
    };
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.starts_with("stopped:") {
                let _ = stopped_tx.send(line);
            }
        }
    });

    // The exporters (generator, encoding, gRPC client) are this process: its CPU time over
    // the run is theirs.
    let exporters_before = cpu_seconds(libc::RUSAGE_SELF);
    let started = Instant::now();
    let report = send(SendOptions {
        endpoint: format!("http://{grpc}"),
        protocol: Protocol::Grpc,
        runs: options.runs,
        runs_per_request: options.runs_per_request,
        concurrency: options.concurrency,
        rate: None,
        gzip: false,
        generator: generator_options(options.spread_nanos),
        progress: false,
        max_retries: 1000,
    })
    .await?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    let flushed_at = started.elapsed();
    if !status.success() {
        bail!("runledger serve exited with {status}");
    }
    if report.spans_failed > 0 || report.spans_acked != report.spans_sent {
        bail!("not every span was acknowledged: {report:?}");
    }
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - cpu_before;
    let exporters_cpu = cpu_seconds(libc::RUSAGE_SELF) - exporters_before;
    let stopped = stopped_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_default();
    let redaction_us = stopped
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("redaction_us="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(IngestResult {
        rate: report.spans_acked as f64 / flushed_at.as_secs_f64(),
        spans: report.spans_acked,
        seconds: flushed_at.as_secs_f64(),
        retries: report.retries,
        otlp_bytes: report.otlp_bytes,
        cpu_us_per_span: cpu * 1e6 / report.spans_acked as f64,
        exporters_cpu_us_per_span: exporters_cpu * 1e6 / report.spans_acked as f64,
        cores_busy: (cpu + exporters_cpu) / flushed_at.as_secs_f64(),
        redaction_us,
        data_dir,
    })
}

struct RedactionFigures {
    spans_per_s: f64,
    mb_per_s: f64,
    attr_mb_per_s: f64,
    normalize_spans_per_s: f64,
}

impl RedactionFigures {
    fn line(&self) -> String {
        format!(
            "(e) redaction, one core:          {:>12.0} spans/s  {:.0} MB/s of string data ({:.0} MB/s of attribute values); normalising the same spans: {:.0} spans/s (ratio {:.2})",
            self.spans_per_s,
            self.mb_per_s,
            self.attr_mb_per_s,
            self.normalize_spans_per_s,
            self.spans_per_s / self.normalize_spans_per_s
        )
    }
}

/// The redaction stage alone with the default rules, on the generator's traffic normalised
/// into span-table batches, best of three; and normalisation of the same requests as the
/// baseline. With `batch_rows`, the spans are redacted in batches of that many rows instead of
/// one batch per request.
fn redaction_throughput(
    runs: u64,
    runs_per_request: usize,
    batch_rows: Option<usize>,
) -> anyhow::Result<RedactionFigures> {
    use arrow::array::{Array, AsArray};
    let mut generator = Generator::new(generator_options(LIVE_SPREAD_NANOS));
    let normalizer = runledger_processor::Normalizer::new(&Default::default())
        .map_err(|e| anyhow::anyhow!(e))?;
    let redactor = runledger_processor::Redactor::new(&Default::default(), &[], b"benchmark key")?;
    let mut requests = Vec::new();
    let mut generated = 0;
    while generated < runs {
        // Encoded once, as they arrive at the collector, which normalises them in place.
        requests.push(generator.next_request_encoded(runs_per_request).0);
        generated += runs_per_request as u64;
    }
    let mut best_normalize = 0.0f64;
    let mut batches = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        let mut spans = 0usize;
        for request in &requests {
            let normalized = normalizer.normalize_wire(request, std::time::SystemTime::now())?;
            spans += normalized.accepted_spans;
            if round == 0 {
                batches.extend(normalized.batch);
            } else {
                std::hint::black_box(normalized);
            }
        }
        best_normalize = best_normalize.max(spans as f64 / started.elapsed().as_secs_f64());
    }
    let spans: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut string_bytes = 0usize;
    let mut attr_bytes = 0usize;
    for batch in &batches {
        for column in batch.columns() {
            match column.data_type() {
                arrow::datatypes::DataType::Utf8 => {
                    string_bytes += column.as_string::<i32>().values().len();
                }
                arrow::datatypes::DataType::Map(..) => {
                    let map = column.as_map();
                    let keys = map.keys().as_string::<i32>().values().len();
                    let values = match map.values().data_type() {
                        arrow::datatypes::DataType::Utf8 => {
                            map.values().as_string::<i32>().values().len()
                        }
                        _ => 0,
                    };
                    string_bytes += keys + values;
                    attr_bytes += values;
                }
                _ => {}
            }
        }
    }
    if let (Some(rows), Some(first)) = (batch_rows, batches.first()) {
        anyhow::ensure!(rows > 0, "--batch-rows must be positive");
        let all = arrow::compute::concat_batches(&first.schema(), &batches)?;
        batches = (0..all.num_rows())
            .step_by(rows)
            .map(|at| all.slice(at, rows.min(all.num_rows() - at)))
            .collect();
    }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for batch in &batches {
            std::hint::black_box(redactor.redact_batch(batch)?);
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(RedactionFigures {
        spans_per_s: spans as f64 / best,
        mb_per_s: string_bytes as f64 / best / 1e6,
        attr_mb_per_s: attr_bytes as f64 / best / 1e6,
        normalize_spans_per_s: best_normalize,
    })
}
