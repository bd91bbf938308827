//! `runledger`: one binary whose subcommands run each part of the pipeline.
//!
//! - `serve`: the collector (OTLP gRPC and HTTP), the flush into the lake, and the API.
//! - `gen`: the sample-data generator, sending realistic agent traffic over OTLP.
//! - `demo`: a server with replayed sample traffic and the dashboard, in one command.
//! - `run`: one run as a tree with a waterfall, from the lake or the API.
//! - `bench`: the benchmarks documented in the README.

mod bench;
mod config;
mod demo;
mod gen;
mod maintain;
mod run;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the ingest path allocates a string per attribute of every span (protobuf decode,
/// Arrow builders); glibc's allocator spent a fifth of the collector's CPU on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_t` of mimalloc 3, the version
/// `libmimalloc-sys` 0.1.49 builds; `libmimalloc-sys` names it only for mimalloc 2).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory settings for a long-running server (`serve`, `demo`). The collector frees and
/// reallocates its request and segment buffers continuously; by default mimalloc hands freed
/// memory back to the OS a second later, in transparent huge pages, so that each reuse
/// faulted in fresh pages that the kernel zeroes 2 MiB at a time: 13-15% of the collector's
/// CPU. Here freed memory stays in the process and huge pages are off: the collector's CPU
/// per span falls by about a sixth on the ingest benchmark, and its peak resident set was
/// lower (0.90-0.98 GiB against 1.13 GiB; the default returned little of it after the
/// load). The footprint stays bounded by `ingest.memory_limit_bytes` and the query memory
/// cap. Also applied to the benchmarks that run the API's queries in their own process
/// (`bench query`, `lookup`, `overview`), so that they measure queries as the server runs
/// them: 12% less time on the 10M-span per-workflow query (8 to 10 times fewer page faults
/// on its key count alone). Not applied to the other subcommands. The huge-page flag is
/// inherited by child processes; the benchmarks clear it in the DuckDB they start
/// (`bench::query::duckdb_python`), which runs under the machine's defaults.
fn tune_memory_for_serving() {
    // SAFETY: sets one process-wide allocator option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; it takes no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "runledger",
    version,
    about = "What your AI agents did, what it cost, and whether they are safe to trust with more autonomy."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive OTLP traces, make them durable, and write them to the lake.
    Serve(serve::ServeArgs),
    /// Send generated agent traffic to a collector over OTLP.
    Gen(gen::GenArgs),
    /// Run a benchmark and print its figures.
    Bench(bench::BenchArgs),
    /// Delete every hour partition past its tier's TTL, and its files from disk.
    Retention(maintain::RetentionArgs),
    /// Erase every span of a customer's runs, or of one run, from every tier and from disk.
    Erase(maintain::EraseArgs),
    /// Compact the small files of closed hours, ordered by run, then vacuum after a grace period.
    Compact(maintain::CompactArgs),
    /// Start a server on a local data dir, replay sample agent traffic through OTLP, print a
    /// summary and the dashboard URL, and serve until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Show one run: its tree of spans, durations, tool calls, retries, errors, refs and costs.
    Run(run::RunArgs),
    /// Recompute the costs of stored spans with the current price table.
    Reprice(maintain::RepriceArgs),
}

fn main() -> ExitCode {
    // Everything runledger writes (WAL, raw and redacted tiers, keys) is its owner's alone:
    // files 0600, directories 0700, from the moment they are created.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNLEDGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(
                    "info,buoyant_kernel=warn,buoyant_kernel_engine=warn,deltalake_core=warn,deltalake=warn",
                )),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let serves_queries = match &cli.command {
        Command::Serve(_) | Command::Demo(_) => true,
        Command::Bench(bench) => bench.runs_api_queries_in_process(),
        _ => false,
    };
    if serves_queries {
        tune_memory_for_serving();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Gen(args) => gen::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Retention(args) => maintain::retention(args).await,
            Command::Erase(args) => maintain::erase(args).await,
            Command::Compact(args) => maintain::compact(args).await,
            Command::Reprice(args) => maintain::reprice(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// The option number is mimalloc 3's purge delay, whose default is 1000 ms. Fails if a
    /// `libmimalloc-sys` upgrade moves it or changes the mimalloc it builds.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one allocator option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            delay, 1000,
            "mi_option_t 15 is not mimalloc 3's purge_delay"
        );
    }
}
