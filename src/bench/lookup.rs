//! `runledger bench lookup`: the latency of reconstructing one run through the API, by run id
//! and by external ref, over a large lake, against DuckDB filtering the same files for the
//! same keys, in one run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::seq::IndexedRandom as _;
use rand::SeedableRng as _;
use runledger_query::api::ApiState;
use runledger_query::{ApiConfig, GatesConfig, Lake, Role};

use super::api::{one_token, BenchApi};
use super::lake::build;
use super::query::{duckdb_python, live_files};

fn percentile(times: &mut [f64], p: f64) -> f64 {
    times.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * times.len() as f64).ceil() as usize;
    times[rank.clamp(1, times.len()) - 1]
}

/// Every value of one column, from the lake by SQL.
async fn column(lake: &Lake, sql: &str) -> anyhow::Result<Vec<String>> {
    use arrow::array::AsArray as _;
    let (ctx, _) = lake.session(false).await?;
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut out = Vec::new();
    for batch in &batches {
        let values = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
        let values = values.as_string::<i32>();
        out.extend(values.iter().flatten().map(str::to_string));
    }
    Ok(out)
}

pub(crate) async fn run(
    spans: u64,
    hours: u64,
    data_dir: PathBuf,
    lookups: usize,
    duckdb_lookups: usize,
) -> anyhow::Result<ExitCode> {
    println!(
        "runledger run lookup benchmark ({} cores): GET /api/v1/runs/{{id}} and ?ref= over {spans} spans in {hours} hour partitions",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    build(&data_dir, spans, hours).await?;
    let sidecars = data_dir.join("redacted").join("run_index");
    let _ = std::fs::remove_dir_all(&sidecars);

    // The keys: random run ids and refs of the lake.
    let sampler = Lake::new(&data_dir, Duration::from_secs(3600)).with_memory_limit(16 << 30);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let all_runs = column(&sampler, "SELECT DISTINCT run_id FROM spans").await?;
    let all_refs = column(
        &sampler,
        "SELECT external_ref FROM spans WHERE external_ref IS NOT NULL",
    )
    .await?;
    if all_runs.is_empty() || all_refs.is_empty() {
        bail!("the bench lake has no runs or no external refs");
    }
    let run_ids: Vec<String> = all_runs
        .choose_multiple(&mut rng, lookups)
        .cloned()
        .collect();
    let refs: Vec<String> = all_refs
        .choose_multiple(&mut rng, lookups)
        .cloned()
        .collect();
    println!(
        "{} runs, {} external refs in the lake; {} of each looked up",
        all_runs.len(),
        all_refs.len(),
        run_ids.len()
    );
    drop((all_runs, all_refs));

    // The API, in process, over a real socket.
    let lake = Arc::new(Lake::new(&data_dir, Duration::from_secs(2)));
    let token = "bench-oncall-token-0123456789";
    let state = ApiState::new(
        Arc::clone(&lake),
        &ApiConfig::default(),
        one_token(Role::Oncall, token),
        GatesConfig::default(),
    );
    let api = BenchApi::serve(state, token).await?;

    // The index: built from the files once (no sidecars), then loaded from its sidecars.
    let started = Instant::now();
    let files = lake
        .run_index(runledger_schemas::Tier::Redacted, |i| i.files())
        .await?;
    let cold = started.elapsed().as_secs_f64();
    let started = Instant::now();
    Lake::new(&data_dir, Duration::ZERO)
        .run_index(runledger_schemas::Tier::Redacted, |i| i.files())
        .await?;
    let warm = started.elapsed().as_secs_f64();
    println!(
        "run index: {files} files, built from the files in {cold:.2} s, loaded from sidecars in {:.0} ms",
        warm * 1000.0
    );

    let mut by_id = Vec::new();
    let mut our_rows = Vec::new();
    for id in &run_ids {
        let (ms, body) = api.get(&format!("/api/v1/runs/{id}")).await?;
        by_id.push(ms);
        our_rows.push(body["spans"].as_array().map_or(0, Vec::len));
    }
    // The same lookups in process, without HTTP and JSON, and the index alone.
    let mut direct = Vec::new();
    let mut index_only = Vec::new();
    for id in &run_ids {
        let started = Instant::now();
        lake.run_index(runledger_schemas::Tier::Redacted, |i| i.files_with_run(id))
            .await?;
        index_only.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        runledger_query::runs::lookup(&lake, runledger_schemas::Tier::Redacted, id).await?;
        direct.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut by_ref = Vec::new();
    for external_ref in &refs {
        let (ms, body) = api.get(&format!("/api/v1/runs?ref={external_ref}")).await?;
        if body["runs"].as_array().is_none_or(Vec::is_empty) {
            bail!("ref {external_ref} found no run");
        }
        by_ref.push(ms);
    }

    // DuckDB on the same files, for the first `duckdb_lookups` of the same keys.
    let n = duckdb_lookups.min(run_ids.len());
    let scratch = tempfile::tempdir()?;
    let list = scratch.path().join("files.txt");
    let keys = scratch.path().join("keys.json");
    std::fs::write(&list, live_files(&data_dir).await?.join("\n"))?;
    std::fs::write(
        &keys,
        serde_json::to_vec(&serde_json::json!({"run_ids": &run_ids[..n], "refs": &refs[..n]}))?,
    )?;
    let output = duckdb_python()?
        .arg("scripts/duckdb_lookup.py")
        .arg(&list)
        .arg(&keys)
        .output()
        .context("running DuckDB")?;
    if !output.status.success() {
        bail!("DuckDB failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let duck: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let numbers = |key: &str| -> Vec<f64> {
        duck[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default()
    };
    let (mut duck_id, mut duck_ref) = (numbers("run_ms"), numbers("ref_ms"));
    let duck_rows: Vec<usize> = numbers("run_rows").iter().map(|r| *r as usize).collect();
    if duck_rows[..] != our_rows[..n] {
        bail!("the engines disagree on the spans of the runs looked up");
    }
    println!("both engines return the same spans for the {n} runs they both looked up");
    let (p50, p99) = (percentile(&mut by_id, 50.0), percentile(&mut by_id, 99.0));
    let (r50, r99) = (percentile(&mut by_ref, 50.0), percentile(&mut by_ref, 99.0));
    let (d50, d99) = (
        percentile(&mut duck_id, 50.0),
        percentile(&mut duck_id, 99.0),
    );
    let (dr50, dr99) = (
        percentile(&mut duck_ref, 50.0),
        percentile(&mut duck_ref, 99.0),
    );
    println!(
        "runledger GET /api/v1/runs/{{id}}  ({:>4} lookups): p50 {p50:>7.1} ms  p99 {p99:>7.1} ms",
        run_ids.len()
    );
    println!(
        "  of which in process: lookup p50 {:.2} ms, index alone p50 {:.3} ms",
        percentile(&mut direct, 50.0),
        percentile(&mut index_only, 50.0)
    );
    println!(
        "runledger GET /api/v1/runs?ref=   ({:>4} lookups): p50 {r50:>7.1} ms  p99 {r99:>7.1} ms",
        refs.len()
    );
    println!(
        "DuckDB {} threads, run_id = ?      ({n:>4} lookups): p50 {d50:>7.1} ms  p99 {d99:>7.1} ms",
        duck["threads"]
    );
    println!(
        "DuckDB {} threads, by external_ref ({n:>4} lookups): p50 {dr50:>7.1} ms  p99 {dr99:>7.1} ms",
        duck["threads"]
    );
    println!(
        "speed-up over DuckDB (p50): by id {:.1}x, by ref {:.1}x",
        d50 / p50,
        dr50 / r50
    );
    Ok(ExitCode::SUCCESS)
}
