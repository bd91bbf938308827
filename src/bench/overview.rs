//! `runledger bench overview`: the latency of the dashboard overview's API calls over a
//! large lake: cold (the first call computes) and warm (served from the response cache; a
//! stale answer takes the same path, its recomputation runs in the background).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runledger_query::api::ApiState;
use runledger_query::budgets::{BudgetConfig, BudgetPeriod, BudgetScope};
use runledger_query::{ApiConfig, GatesConfig, Lake, Role};

use super::api::{one_token, BenchApi};
use super::lake::build;
use super::query::{median, window_of};

pub(crate) async fn run(
    spans: u64,
    hours: u64,
    data_dir: PathBuf,
    repeats: usize,
) -> anyhow::Result<ExitCode> {
    println!(
        "runledger overview benchmark ({} cores): the dashboard overview's API calls over {spans} spans in {hours} hour partitions",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let lake_info = build(&data_dir, spans, hours).await?;
    let window = window_of(&lake_info);
    let range = format!(
        "from={}&to={}",
        window.from.format("%Y-%m-%dT%H:%M:%SZ"),
        window.to.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let token = "bench-finance-token-0123456789";
    let config = ApiConfig::default();
    // The API's own per-query memory cap (api.query_memory_mib), as `serve` runs it.
    let lake = Lake::new(&data_dir, Duration::from_secs(3600))
        .with_memory_limit(config.query_memory_mib << 20);
    let state = ApiState::new(
        Arc::new(lake),
        &config,
        one_token(Role::Finance, token),
        GatesConfig::default(),
    )
    .with_budgets(vec![BudgetConfig {
        name: None,
        scope: BudgetScope::Workflow,
        key: "refunds".into(),
        period: BudgetPeriod::Monthly,
        usd: 1000.0,
    }]);
    let api = BenchApi::serve(state, token).await?;
    // The calls the overview makes, in its order.
    let mut calls = vec![
        format!("/api/v1/workflows?{range}"),
        format!("/api/v1/cost?group_by=day&{range}"),
        "/api/v1/budgets".to_string(),
        format!("/api/v1/runs/runaway?{range}&limit=20"),
    ];
    let mut cold = Vec::new();
    let started = Instant::now();
    for path in calls.clone() {
        let (ms, body) = api.get(&path).await?;
        cold.push((path.clone(), ms));
        if path.starts_with("/api/v1/workflows?") {
            for w in body["workflows"].as_array().into_iter().flatten() {
                if let Some(name) = w["workflow"].as_str() {
                    calls.push(format!("/api/v1/workflows/{name}/gates?{range}"));
                }
            }
        }
    }
    for path in calls.iter().skip(4) {
        let (ms, _) = api.get(path).await?;
        cold.push((path.clone(), ms));
    }
    let cold_total = started.elapsed().as_secs_f64() * 1000.0;
    println!("cold (first call computes):");
    for (path, ms) in &cold {
        println!("  {ms:>9.1} ms  {path}");
    }
    println!(
        "  {cold_total:>9.1} ms  all {} calls in sequence",
        cold.len()
    );

    let mut warm = Vec::new();
    for _ in 0..repeats {
        for path in &calls {
            warm.push(api.get(path).await?.0);
        }
    }
    let warm_max = warm.iter().copied().fold(0.0, f64::max);
    println!(
        "warm (cached): median {:.2} ms, slowest {warm_max:.2} ms over {} calls",
        median(&mut warm),
        warm.len()
    );

    println!(
        "overview within 500 ms once cached: {}",
        if warm_max <= 500.0 { "yes" } else { "no" }
    );
    Ok(ExitCode::SUCCESS)
}
