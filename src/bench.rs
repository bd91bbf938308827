//! `runledger bench ingest`: the ingest benchmark of the README.
//!
//! In one run, on this machine:
//! (a) decode-only throughput of the generator's spans on one core (protobuf decode of the
//!     export requests: the physical limit of any OTLP collector);
//! (b) end to end: `runledger gen` into a `runledger serve` child process over loopback gRPC,
//!     fsync on, until every span is committed to Parquet (the child is stopped with SIGTERM,
//!     which flushes, and the clock stops when it has exited);
//! (c) their ratio;
//! (d) Parquet bytes per span in the lake against OTLP protobuf bytes per span.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use prost::Message;
use runledger_sample_data::{send, Generator, GeneratorOptions, Protocol, SendOptions};

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    which: Which,
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
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.which {
        Which::Ingest {
            runs,
            concurrency,
            runs_per_request,
            data_dir,
        } => ingest(runs, concurrency, runs_per_request, data_dir).await,
    }
}

fn generator_options() -> GeneratorOptions {
    GeneratorOptions {
        seed: 7,
        end_unix_nano: crate::gen::now_unix_nano(),
        spread_nanos: 6 * 3_600_000_000_000,
        customers: 500,
    }
}

/// Spans per second of protobuf decoding on this thread, over `runs` generated runs.
fn decode_only(runs: u64, runs_per_request: usize) -> (f64, u64) {
    let mut generator = Generator::new(generator_options());
    let mut encoded = Vec::new();
    let mut spans = 0u64;
    let mut generated = 0;
    while generated < runs {
        let (request, n) = generator.next_request(runs_per_request);
        spans += n as u64;
        generated += runs_per_request as u64;
        encoded.push(request.encode_to_vec());
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
    println!(
        "runledger ingest benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let (decode_rate, decode_spans) =
        tokio::task::spawn_blocking(move || decode_only(runs.min(20_000), runs_per_request))
            .await?;
    println!(
        "(a) decode-only, one core:        {decode_rate:>12.0} spans/s  ({decode_spans} spans)"
    );

    let temp = tempfile::tempdir()?;
    let data_dir = data_dir.unwrap_or_else(|| temp.path().join("data"));
    let exe = std::env::current_exe().context("locating the runledger binary")?;
    let mut child = std::process::Command::new(exe)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
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
    // Drain the child's stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});

    let started = Instant::now();
    let report = send(SendOptions {
        endpoint: format!("http://{grpc}"),
        protocol: Protocol::Grpc,
        runs,
        runs_per_request,
        concurrency,
        rate: None,
        gzip: false,
        generator: generator_options(),
        progress: false,
        max_retries: 1000,
    })
    .await?;
    let acked_at = started.elapsed();
    // SIGTERM flushes everything acknowledged to Parquet; the clock stops when it has.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    let flushed_at = started.elapsed();
    if !status.success() {
        bail!("runledger serve exited with {status}");
    }
    if report.spans_failed > 0 || report.spans_acked != report.spans_sent {
        bail!("not every span was acknowledged: {report:?}");
    }
    let e2e_rate = report.spans_acked as f64 / flushed_at.as_secs_f64();
    println!(
        "(b) end to end, gRPC, fsync on:    {e2e_rate:>12.0} spans/s  ({} spans; acked in {:.2} s, in Parquet at {:.2} s; {} overload retries)",
        report.spans_acked,
        acked_at.as_secs_f64(),
        flushed_at.as_secs_f64(),
        report.retries
    );
    println!(
        "(c) end to end / decode-only:     {:>12.3}",
        e2e_rate / decode_rate
    );
    let parquet = parquet_bytes(&data_dir.join("raw").join("spans"))?;
    let otlp_per_span = report.otlp_bytes as f64 / report.spans_sent as f64;
    let parquet_per_span = parquet as f64 / report.spans_acked as f64;
    println!(
        "(d) bytes per span: OTLP protobuf {otlp_per_span:.1}, Parquet {parquet_per_span:.1}: Parquet is 1/{:.1} of OTLP",
        otlp_per_span / parquet_per_span
    );
    Ok(ExitCode::SUCCESS)
}
