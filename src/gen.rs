//! `runledger gen`: send generated agent traffic over OTLP.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use runledger_sample_data::{send, GeneratorOptions, Protocol, SendOptions, SendReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProtocolArg {
    Grpc,
    Http,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GenArgs {
    /// Collector endpoint. Default http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318 (http).
    #[arg(long)]
    endpoint: Option<String>,
    /// Runs (agent executions) to send.
    #[arg(long, default_value_t = 1000)]
    runs: u64,
    /// Runs per second; as fast as the collector takes them when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Seed: the same seed sends the same traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// OTLP transport.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Grpc)]
    protocol: ProtocolArg,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Runs per export request (about 10 spans each).
    #[arg(long, default_value_t = 50)]
    runs_per_request: usize,
    /// gzip the payloads.
    #[arg(long)]
    gzip: bool,
    /// Spread run start times over this many hours before --end (0: all at --end).
    #[arg(long, default_value_t = 0.0)]
    spread_hours: f64,
    /// The latest run start, RFC 3339. Default: now.
    #[arg(long)]
    end: Option<String>,
    /// Distinct customers.
    #[arg(long, default_value_t = 200)]
    customers: u32,
}

pub(crate) fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) async fn run(args: GenArgs) -> anyhow::Result<ExitCode> {
    let protocol = match args.protocol {
        ProtocolArg::Grpc => Protocol::Grpc,
        ProtocolArg::Http => Protocol::Http,
    };
    let endpoint = args.endpoint.clone().unwrap_or_else(|| match protocol {
        Protocol::Grpc => "http://127.0.0.1:4317".into(),
        Protocol::Http => "http://127.0.0.1:4318".into(),
    });
    let end_unix_nano = match &args.end {
        Some(end) => chrono::DateTime::parse_from_rfc3339(end)
            .with_context(|| format!("--end `{end}` is not RFC 3339"))?
            .timestamp_nanos_opt()
            .context("--end is out of range")? as u64,
        None => now_unix_nano(),
    };
    if args.spread_hours.is_nan() || args.spread_hours < 0.0 {
        anyhow::bail!("--spread-hours must be zero or positive");
    }
    let options = SendOptions {
        endpoint: endpoint.clone(),
        protocol,
        runs: args.runs,
        runs_per_request: args.runs_per_request,
        concurrency: args.concurrency,
        rate: args.rate,
        gzip: args.gzip,
        generator: GeneratorOptions {
            seed: args.seed,
            end_unix_nano,
            spread_nanos: (args.spread_hours * 3.6e12) as u64,
            customers: args.customers,
        },
        progress: std::io::stderr().is_terminal() && args.runs >= 1000,
        max_retries: 20,
    };
    let report = send(options).await?;
    print_report(&endpoint, &report);
    Ok(if report.spans_failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn print_report(endpoint: &str, report: &SendReport) {
    println!(
        "sent {} runs, {} spans in {} requests to {endpoint}",
        report.runs, report.spans_sent, report.requests
    );
    println!(
        "acknowledged {} spans, rejected {}, failed {}, retries {}",
        report.spans_acked, report.spans_rejected, report.spans_failed, report.retries
    );
    println!(
        "{:.2} s, {:.0} spans/s, {:.0} OTLP bytes/span",
        report.elapsed.as_secs_f64(),
        report.spans_per_second(),
        report.otlp_bytes as f64 / report.spans_sent.max(1) as f64
    );
    if let Some(error) = &report.first_error {
        println!("first error: {error}");
    }
}
