//! `runledger serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use std::sync::Arc;

use runledger_collector::{Collector, CollectorSettings};
use runledger_query::api::telemetry::{Exposition, MetricsSource};
use runledger_query::api::{load_or_create_admin_token, ApiState, Tokens};
use runledger_query::{Lake, Role, TokenConfig};

use crate::config::RunledgerConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Data directory (WAL, lake, collector id). Default ./runledger-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address. Default 127.0.0.1:4317.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP listen address. Default 127.0.0.1:4318.
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// API and dashboard listen address. Default 127.0.0.1:8080.
    #[arg(long)]
    api_addr: Option<SocketAddr>,
    /// TOML config file (see runledger.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The API's state: the lake, the tokens (with a generated admin token when none is
/// configured, returned so that it can be shown) and the gates.
pub(crate) fn api_state(config: &RunledgerConfig) -> anyhow::Result<(ApiState, Option<String>)> {
    let mut tokens = config.api.tokens.clone();
    let mut generated = None;
    if tokens.is_empty() {
        let token = load_or_create_admin_token(&config.server.data_dir)
            .context("reading or creating the admin token")?;
        tokens.push(TokenConfig {
            role: Role::Admin,
            token: Some(token.clone()),
            token_sha256: None,
            name: Some("admin.token".into()),
        });
        generated = Some(token);
    }
    let lake = Lake::new(&config.server.data_dir, config.api.refresh_every())
        .with_memory_limit(config.api.query_memory_mib << 20);
    let state = ApiState::new(
        Arc::new(lake),
        &config.api,
        Tokens::from_config(&tokens),
        config.gates.clone(),
    )
    .with_budgets(config.budgets.clone());
    Ok((state, generated))
}

/// Everything `serve` runs: the collector, the API and periodic maintenance.
pub(crate) struct Running {
    pub collector: Collector,
    pub api_addr: SocketAddr,
    pub api_state: Arc<ApiState>,
    pub generated_token: Option<String>,
    stop_api: tokio::sync::oneshot::Sender<()>,
    api: tokio::task::JoinHandle<std::io::Result<()>>,
    warm: Option<tokio::task::JoinHandle<()>>,
    maintenance: crate::maintain::Periodic,
}

impl Running {
    /// Starts everything. With `warm`, the overview's answers are computed in the background
    /// at once (`serve`); the demo computes them itself once its replay has landed.
    pub(crate) async fn start(config: &RunledgerConfig, warm: bool) -> anyhow::Result<Self> {
        let collector = Collector::start(CollectorSettings {
            data_dir: config.server.data_dir.clone(),
            grpc_addr: config.server.grpc_addr,
            http_addr: config.server.http_addr,
            collector: config.collector(),
            processor: config.processor.clone(),
            lake: config.lake.clone(),
            tiers: config.tiers.enabled(),
            redaction: config.redaction.clone(),
            pricing: config.pricing.clone(),
        })
        .await
        .context("starting the collector")?;

        let api_listener = tokio::net::TcpListener::bind(config.server.api_addr)
            .await
            .with_context(|| format!("binding the API on {}", config.server.api_addr))?;
        let api_addr = api_listener.local_addr()?;
        let (api_state, generated_token) = api_state(config)?;
        let maintenance_counters = crate::maintain::Counters::shared();
        let api_state = Arc::new(api_state.with_metrics_source(collector_series(
            &collector,
            Arc::clone(&maintenance_counters),
        )));
        // The overview's answers are computed once at start, so that the first visitor does
        // not wait for a scan of the whole window.
        let warm = warm.then(|| {
            let warming = Arc::clone(&api_state);
            tokio::spawn(async move {
                if let Err(e) = runledger_query::api::warm_overview(warming, 168).await {
                    tracing::warn!("warming the overview: {e:?}");
                }
            })
        });
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let router = runledger_query::api::router(Arc::clone(&api_state));
        let api = tokio::spawn(async move {
            axum::serve(api_listener, router)
                .with_graceful_shutdown(async {
                    let _ = api_stopped.await;
                })
                .await
        });
        let maintenance = crate::maintain::Periodic::start(config, maintenance_counters);
        Ok(Self {
            collector,
            api_addr,
            api_state,
            generated_token,
            stop_api,
            api,
            warm,
            maintenance,
        })
    }

    /// Stops accepting, flushes everything to the lake, stops the API and maintenance.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let metrics = self.collector.metrics();
        if let Some(warm) = &self.warm {
            warm.abort();
        }
        let _ = self.stop_api.send(());
        self.maintenance.stop().await;
        self.collector
            .shutdown()
            .await
            .context("stopping the collector")?;
        let _ = self.api.await;
        use runledger_collector::CollectorMetrics as M;
        println!(
            "stopped: {} spans accepted, {} rejected, {} segments flushed, {} rows committed, redaction_us={}",
            M::get(&metrics.spans_accepted),
            M::get(&metrics.spans_rejected_invalid),
            M::get(&metrics.segments_flushed),
            M::get(&metrics.rows_committed),
            M::get(&metrics.redact_micros),
        );
        Ok(())
    }
}

/// Waits for SIGTERM or SIGINT.
pub(crate) async fn until_stopped(sigterm: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = RunledgerConfig::load_or_default(args.config.as_deref(), args.data_dir)?;
    config.server.grpc_addr = args.grpc_addr.unwrap_or(config.server.grpc_addr);
    config.server.http_addr = args.http_addr.unwrap_or(config.server.http_addr);
    config.server.api_addr = args.api_addr.unwrap_or(config.server.api_addr);

    // Signals are caught before anything starts, so that a SIGTERM during start-up is a
    // graceful stop too.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let running = Running::start(&config, true).await?;
    let addrs = running.collector.addrs();
    let api_addr = running.api_addr;
    // One machine-readable line, then the human one.
    println!(
        "listening grpc={} http={} api={} data_dir={}",
        addrs.grpc,
        addrs.http,
        api_addr,
        config.server.data_dir.display()
    );
    println!(
        "runledger is receiving OTLP on grpc://{} and http://{}/v1/traces; API on http://{}",
        addrs.grpc, addrs.http, api_addr
    );
    if let Some(token) = &running.generated_token {
        println!(
            "no [[api.tokens]] configured: admin token in {}; open http://{api_addr}/?token={token}",
            runledger_query::api::auth::admin_token_path(&config.server.data_dir).display()
        );
    }
    until_stopped(&mut sigterm).await;
    running.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// The collector's and maintenance's series for `GET /metrics`.
pub(crate) fn collector_series(
    collector: &Collector,
    maintenance: Arc<crate::maintain::Counters>,
) -> MetricsSource {
    let metrics = collector.metrics();
    let queue = collector.memory_budget();
    MetricsSource(Box::new(move |out: &mut Exposition| {
        use runledger_collector::CollectorMetrics as M;
        let counters = [
            (
                "runledger_export_requests_total",
                "Export requests received (gRPC and HTTP).",
                &metrics.requests,
            ),
            (
                "runledger_spans_received_total",
                "Spans received, valid or not.",
                &metrics.spans_received,
            ),
            (
                "runledger_spans_accepted_total",
                "Spans acknowledged as durable.",
                &metrics.spans_accepted,
            ),
            (
                "runledger_bytes_received_total",
                "Export payload bytes received, as sent.",
                &metrics.bytes_received,
            ),
            (
                "runledger_wal_records_total",
                "Records appended to the WAL.",
                &metrics.wal_records,
            ),
            (
                "runledger_wal_fsyncs_total",
                "WAL fsyncs (group commit: fewer than records).",
                &metrics.wal_fsyncs,
            ),
            (
                "runledger_wal_bytes_total",
                "Bytes appended to the WAL.",
                &metrics.wal_bytes,
            ),
            (
                "runledger_segments_flushed_total",
                "WAL segments committed to the lake (a Parquet file per tier and hour each).",
                &metrics.segments_flushed,
            ),
            (
                "runledger_rows_committed_total",
                "Rows committed to the lake, summed over tiers.",
                &metrics.rows_committed,
            ),
            (
                "runledger_flush_errors_total",
                "Failed flush attempts (each is retried).",
                &metrics.flush_errors,
            ),
            (
                "runledger_spans_unpriced_total",
                "Spans with tokens but no price for their model.",
                &metrics.spans_unpriced,
            ),
        ];
        for (name, help, counter) in counters {
            out.single(name, "counter", help, M::get(counter) as f64);
        }
        out.help(
            "runledger_spans_rejected_total",
            "counter",
            "Spans or requests refused, by reason.",
        );
        for (reason, counter) in [
            ("invalid_span", &metrics.spans_rejected_invalid),
            ("malformed_request", &metrics.requests_malformed),
            ("too_large", &metrics.requests_too_large),
            ("overloaded", &metrics.requests_overloaded),
        ] {
            out.sample(
                "runledger_spans_rejected_total",
                &[("reason", reason)],
                M::get(counter) as f64,
            );
        }
        out.single(
            "runledger_flush_seconds_total",
            "counter",
            "Time from the start of each WAL segment's flush to its last commit to the lake, summed over segments.",
            M::get(&metrics.flush_micros) as f64 / 1e6,
        );
        out.single(
            "runledger_redaction_seconds_total",
            "counter",
            "CPU time spent redacting, summed over the threads that redact.",
            M::get(&metrics.redact_micros) as f64 / 1e6,
        );
        out.help(
            "runledger_redactions_total",
            "counter",
            "Values redacted, by kind.",
        );
        let redactions = metrics
            .redactions
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        for (kind, n) in &redactions {
            out.sample("runledger_redactions_total", &[("kind", kind)], *n as f64);
        }
        out.single(
            "runledger_queue_bytes",
            "gauge",
            "Accepted export bytes not yet committed to the lake.",
            queue.used() as f64,
        );
        out.single(
            "runledger_queue_limit_bytes",
            "gauge",
            "Queue size past which exports get UNAVAILABLE / 503.",
            queue.limit() as f64,
        );
        maintenance.write(out);
    }))
}
