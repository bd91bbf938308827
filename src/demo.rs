//! `runledger demo`: one command from a fresh clone to a dashboard of agents' cost and
//! readiness. It starts the whole server on a local data directory, replays generated
//! agent traffic through OTLP/gRPC (the same path real exporters take), waits until the lake
//! holds all of it, prints a summary per workflow, and keeps serving until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use runledger_query::budgets::{BudgetConfig, BudgetPeriod, BudgetScope};
use runledger_query::{metrics, TimeWindow};
use runledger_sample_data::{send, GeneratorOptions, Protocol, SendOptions};

use crate::config::RunledgerConfig;
use crate::serve::{until_stopped, Running};

/// `runledger demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Data directory of the demo; emptied at start if an earlier demo made it.
    #[arg(long, default_value = "./runledger-demo")]
    data_dir: PathBuf,
    /// Agent runs to replay (about 10 spans each).
    #[arg(long, default_value_t = 5000)]
    runs: u64,
    /// Hours the runs are spread over, ending now.
    #[arg(long, default_value_t = 72.0)]
    hours: f64,
    /// Address of the API and dashboard (another free port is taken if it is busy).
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_addr: std::net::SocketAddr,
    /// Print the summary and stop, instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

const MARKER: &str = ".runledger-demo";

fn prepare(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if dir.join(MARKER).exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("clearing the earlier demo in {}", dir.display()))?;
        } else if !empty {
            bail!(
                "{} exists and was not made by `runledger demo`; pick another --data-dir",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by runledger demo; deleted by the next one\n",
    )?;
    Ok(())
}

fn demo_config(args: &DemoArgs) -> anyhow::Result<RunledgerConfig> {
    let mut config = RunledgerConfig::parse("[wal]\nflush_interval_ms = 300\n")?;
    config.server.data_dir = args.data_dir.clone();
    config.server.grpc_addr = "127.0.0.1:0".parse()?;
    config.server.http_addr = "127.0.0.1:0".parse()?;
    config.server.api_addr = args.api_addr;
    let budget = |scope, key: &str, period, usd| BudgetConfig {
        name: None,
        scope,
        key: key.into(),
        period,
        usd,
    };
    config.budgets = vec![
        budget(BudgetScope::Workflow, "refunds", BudgetPeriod::Daily, 5.0),
        budget(
            BudgetScope::Workflow,
            "incident_remediation",
            BudgetPeriod::Monthly,
            250.0,
        ),
        budget(
            BudgetScope::Workflow,
            "support_triage",
            BudgetPeriod::Daily,
            20.0,
        ),
    ];
    Ok(config)
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    prepare(&args.data_dir)?;
    let mut config = demo_config(&args)?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // The default port may be taken (another runledger, another service): any free one will do.
    if std::net::TcpListener::bind(config.server.api_addr).is_err() {
        config.server.api_addr = "127.0.0.1:0".parse()?;
    }
    let running = Running::start(&config, false).await?;
    let addrs = running.collector.addrs();
    println!(
        "runledger demo: collector on grpc://{} and http://{}/v1/traces, data in {}",
        addrs.grpc,
        addrs.http,
        args.data_dir.display()
    );
    println!(
        "replaying {} generated agent runs over OTLP/gRPC…",
        args.runs
    );
    let report = send(SendOptions {
        endpoint: format!("http://{}", addrs.grpc),
        protocol: Protocol::Grpc,
        runs: args.runs,
        runs_per_request: 50,
        concurrency: 4,
        rate: None,
        gzip: true,
        generator: GeneratorOptions {
            seed: 7,
            end_unix_nano: crate::gen::now_unix_nano(),
            spread_nanos: (args.hours.max(0.0) * 3.6e12) as u64,
            customers: 120,
        },
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        max_retries: 20,
    })
    .await?;
    println!(
        "sent {} spans; {} acknowledged as durable",
        report.spans_sent, report.spans_acked
    );

    // Every acknowledged span is in both tiers once the flusher has caught up.
    let metrics_now = running.collector.metrics();
    let tiers = config.tiers.enabled().len() as u64;
    use runledger_collector::CollectorMetrics as M;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while M::get(&metrics_now.rows_committed) < M::get(&metrics_now.spans_accepted) * tiers {
        if tokio::time::Instant::now() > deadline {
            bail!("the lake did not catch up with the collector within 5 minutes");
        }
        tick.tick().await;
    }
    // Anything cached during the replay (a visitor's early request) is of a partial lake.
    running.api_state.lake.invalidate().await;
    running.api_state.cache.clear();
    runledger_query::api::warm_overview(std::sync::Arc::clone(&running.api_state), 168)
        .await
        .map_err(|e| anyhow::anyhow!("computing the overview: {e:?}"))?;

    print_summary(&running, args.hours).await?;
    let url = format!(
        "http://{}/?token={}",
        running.api_addr,
        running.generated_token.clone().unwrap_or_default()
    );
    println!("\ndashboard: {url}");
    println!(
        "API:       curl -H 'Authorization: Bearer {}' http://{}/api/v1/workflows",
        running.generated_token.clone().unwrap_or_default(),
        running.api_addr
    );
    if !args.exit {
        println!("serving until Ctrl-C");
        until_stopped(&mut sigterm).await;
    }
    running.stop().await?;
    Ok(ExitCode::SUCCESS)
}

async fn print_summary(running: &Running, hours: f64) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let window = TimeWindow {
        from: now - chrono::Duration::minutes((hours * 60.0) as i64 + 60),
        to: now + chrono::Duration::minutes(1),
    };
    let state = &running.api_state;
    let (ctx, _) = state.lake.session(false).await?;
    let rows = metrics::workflows(&ctx, "spans", &window).await?;
    println!(
        "\n{:<22} {:>6} {:>11} {:>13} {:>11}  gates",
        "workflow", "runs", "completion", "cost/success", "total cost"
    );
    for m in &rows {
        let name = m.workflow.clone().unwrap_or_else(|| "(none)".into());
        let gates = metrics::gates(&name, Some(m), &state.gates.for_workflow(&name));
        let failing: Vec<&str> = gates
            .gates
            .iter()
            .filter(|g| !g.pass)
            .map(|g| g.name)
            .collect();
        println!(
            "{:<22} {:>6} {:>10.1}% {:>13} {:>11}  {}",
            name,
            m.runs,
            m.completion_rate.unwrap_or(0.0) * 100.0,
            m.cost_per_success_usd
                .map_or("–".into(), |c| format!("${c:.4}")),
            format!("${:.2}", m.total_cost_usd),
            if gates.ready {
                "ready for autopilot".to_string()
            } else {
                format!("not yet: {}", failing.join(", "))
            }
        );
    }
    Ok(())
}
