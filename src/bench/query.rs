//! `runledger bench query`: the per-workflow metrics over a large lake, runledger
//! (DataFusion through delta-rs) against DuckDB running the same SQL over the same Parquet
//! files, in one run.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use runledger_query::metrics::workflow_sums_sql;
use runledger_query::{Lake, TimeWindow};

use super::lake::{build, BenchLake};

/// The Python with DuckDB: `$RUNLEDGER_PYTHON`, else the test environment's `.venv`.
pub(crate) fn python() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("RUNLEDGER_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let venv = PathBuf::from(".venv/bin/python");
    if venv.exists() {
        return Ok(venv);
    }
    bail!("no Python with DuckDB: run scripts/test once (it makes .venv), or set RUNLEDGER_PYTHON")
}

/// The live files of the redacted table, as DuckDB should read them.
pub(crate) async fn live_files(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = runledger_lake::table_path(data_dir, runledger_schemas::Tier::Redacted);
    let url = url::Url::from_directory_path(std::fs::canonicalize(&path)?)
        .map_err(|()| anyhow::anyhow!("bad path"))?;
    let table = deltalake::open_table(url).await?;
    use futures::TryStreamExt as _;
    let files: Vec<_> = table
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await?;
    Ok(files
        .iter()
        .map(|f| path.join(f.path().as_ref()).display().to_string())
        .collect())
}

/// A command that runs the Python with DuckDB, under the machine's default memory
/// settings: the benchmarks run with the server's (see `tune_memory_for_serving`), and the
/// huge-page flag among them would otherwise pass to DuckDB.
pub(crate) fn duckdb_python() -> anyhow::Result<Command> {
    let mut command = Command::new(python()?);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl, which is async-signal-safe and takes no pointers.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Ok(command)
}

/// DuckDB with the query prepared over the table's live files, in a process of its own
/// (`scripts/duckdb_query.py`), which runs the query each time it is asked: the benchmark
/// alternates the engines run by run, so that a slow spell of the machine falls on both.
pub(crate) struct DuckDb {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// DuckDB's thread count.
    pub threads: String,
    _scratch: tempfile::TempDir,
}

/// One run of the query in DuckDB.
pub(crate) struct DuckDbRun {
    pub time_ms: f64,
    pub rows: Vec<Vec<String>>,
}

impl DuckDb {
    /// Starts DuckDB over the live files of `data_dir`'s redacted table, ready to run `sql`.
    pub(crate) async fn start(data_dir: &Path, sql: &str) -> anyhow::Result<Self> {
        let files = live_files(data_dir).await?;
        let scratch = tempfile::tempdir()?;
        let list = scratch.path().join("files.txt");
        let sql_file = scratch.path().join("query.sql");
        std::fs::write(&list, files.join("\n"))?;
        std::fs::write(&sql_file, sql)?;
        let mut child = duckdb_python()?
            .arg("scripts/duckdb_query.py")
            .arg(&list)
            .arg(&sql_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting DuckDB")?;
        let stdin = child.stdin.take().context("DuckDB's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("DuckDB's stdout")?);
        let mut duck = Self {
            child,
            stdin,
            stdout,
            threads: String::new(),
            _scratch: scratch,
        };
        let ready = duck.read_reply()?;
        duck.threads = ready["threads"].to_string();
        Ok(duck)
    }

    /// Runs the query once.
    pub(crate) fn run(&mut self) -> anyhow::Result<DuckDbRun> {
        writeln!(self.stdin, "run")?;
        self.stdin.flush()?;
        let reply = self.read_reply()?;
        Ok(DuckDbRun {
            time_ms: reply["time_ms"].as_f64().context("DuckDB's time")?,
            rows: serde_json::from_value(reply["rows"].clone())?,
        })
    }

    fn read_reply(&mut self) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("DuckDB exited ({status}); its error is above");
        }
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for DuckDb {
    fn drop(&mut self) {
        // The script would end at the end of its input; killing it ends it at once, even in
        // the middle of a query when the benchmark stops on an error.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

pub(crate) fn window_of(lake: &BenchLake) -> TimeWindow {
    let end = DateTime::<Utc>::from_timestamp_nanos(lake.end_unix_nano as i64);
    TimeWindow {
        from: end - chrono::Duration::hours(lake.hours as i64),
        to: end,
    }
}

/// What `bench query` runs besides the default comparison.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Also print DataFusion's EXPLAIN ANALYZE of the query (where the time goes).
    #[arg(long)]
    explain: bool,
    /// Time this SQL file in both engines instead of the per-workflow query (`{window}` is
    /// replaced by the window's predicate over the table `spans`; its second column must
    /// count runs, for the agreement check).
    #[arg(long)]
    sql: Option<PathBuf>,
    /// A DataFusion option for runledger's session, `key=value` (repeatable), to try a
    /// setting against the defaults.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    datafusion: Vec<String>,
    /// runledger's memory cap for the query, MiB (default: the API's `api.query_memory_mib`).
    #[arg(long)]
    memory_mib: Option<usize>,
}

/// A session of `lake` with the `key=value` options applied.
async fn session(
    lake: &Lake,
    settings: &[String],
) -> anyhow::Result<datafusion::prelude::SessionContext> {
    let (ctx, _) = lake.session(false).await?;
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .with_context(|| format!("--set {setting}: expected KEY=VALUE"))?;
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .set(key, value)?;
    }
    Ok(ctx)
}

pub(crate) async fn run(
    spans: u64,
    hours: u64,
    data_dir: PathBuf,
    repeats: usize,
    options: Options,
) -> anyhow::Result<ExitCode> {
    let Options {
        explain,
        sql: sql_file,
        datafusion: settings,
        memory_mib,
    } = options;
    let memory_mib = memory_mib.unwrap_or(runledger_query::ApiConfig::default().query_memory_mib);
    println!(
        "runledger query benchmark ({} cores): per-workflow metrics over {spans} spans in {hours} hour partitions",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let lake_info = build(&data_dir, spans, hours).await?;
    let window = window_of(&lake_info);
    let sql = match sql_file {
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .replace("{window}", &window.predicate()),
        None => workflow_sums_sql("spans", &window.predicate()),
    };

    // Under the same per-query memory cap as the API's (api.query_memory_mib) by default.
    let lake = Lake::new(&data_dir, Duration::from_secs(3600)).with_memory_limit(memory_mib << 20);
    let mut duck = DuckDb::start(&data_dir, &sql).await?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut rows, mut our_runs, mut their_runs) = (0, 0, 0);
    // The engines take turns, run by run. The first run of each opens the table and warms
    // the OS cache, for both alike, and is not timed.
    for i in 0..=repeats {
        let started = Instant::now();
        let ctx = session(&lake, &settings).await?;
        let batches = ctx.sql(&sql).await?.collect().await?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        rows = batches.iter().map(|b| b.num_rows()).sum::<usize>();
        our_runs = second_column_sum(&batches)?;
        let run = duck.run()?;
        their_runs = run
            .rows
            .iter()
            .filter_map(|r| r.get(1)?.parse::<u64>().ok())
            .sum();
        if i > 0 {
            ours.push(elapsed);
            theirs.push(run.time_ms);
        }
    }
    if explain {
        let ctx = session(&lake, &settings).await?;
        let plan = ctx
            .sql(&format!("EXPLAIN ANALYZE {sql}"))
            .await?
            .collect()
            .await?;
        println!("{}", arrow::util::pretty::pretty_format_batches(&plan)?);
    }
    let (ours_all, theirs_all) = (ours.clone(), theirs.clone());
    let ours = median(&mut ours);
    let theirs = median(&mut theirs);

    // Both engines must agree before their times mean anything.
    if our_runs != their_runs {
        bail!("the engines disagree: runledger counted {our_runs} runs, DuckDB {their_runs}");
    }
    println!("result rows (workflows): {rows}, runs: {our_runs} (both engines agree)");
    println!(
        "runledger (DataFusion) per-workflow metrics: median {ours:>8.0} ms of {repeats} (memory cap {memory_mib} MiB)"
    );
    println!(
        "DuckDB {} threads, same SQL, same files:     median {theirs:>8.0} ms of {repeats}",
        duck.threads
    );
    println!(
        "each run (ms), in turn: runledger {}; DuckDB {}",
        list_ms(&ours_all),
        list_ms(&theirs_all)
    );
    println!(
        "ratio runledger / DuckDB: {:.2} (<= 1.0: runledger at most as slow)",
        ours / theirs
    );
    Ok(ExitCode::SUCCESS)
}

/// The sum of the second column (the run count of the per-workflow query).
fn second_column_sum(batches: &[arrow::array::RecordBatch]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for batch in batches {
        let column = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::UInt64)?;
        let column = column
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
            .context("second column")?;
        sum += column.iter().flatten().sum::<u64>();
    }
    Ok(sum)
}

fn list_ms(times: &[f64]) -> String {
    times
        .iter()
        .map(|t| format!("{t:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
