//! `runledger serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use std::sync::Arc;

use runledger_collector::{Collector, CollectorSettings};
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
pub(crate) fn api_state(
    config: &RunledgerConfig,
) -> anyhow::Result<(Arc<ApiState>, Option<String>)> {
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
    );
    Ok((Arc::new(state), generated))
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
    let (api_state, generated_token) = api_state(&config)?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(async move {
        axum::serve(api_listener, runledger_query::api::router(api_state))
            .with_graceful_shutdown(async {
                let _ = api_stopped.await;
            })
            .await
    });

    let maintenance = crate::maintain::Periodic::start(&config);

    let addrs = collector.addrs();
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
    if let Some(token) = generated_token {
        println!(
            "no [[api.tokens]] configured: admin token in {}; open http://{api_addr}/?token={token}",
            runledger_query::api::auth::admin_token_path(&config.server.data_dir).display()
        );
    }

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    let metrics = collector.metrics();
    let _ = stop_api.send(());
    maintenance.stop().await;
    collector
        .shutdown()
        .await
        .context("stopping the collector")?;
    let _ = api.await;
    use runledger_collector::CollectorMetrics as M;
    println!(
        "stopped: {} spans accepted, {} rejected, {} segments flushed, {} rows committed, redaction_us={}",
        M::get(&metrics.spans_accepted),
        M::get(&metrics.spans_rejected_invalid),
        M::get(&metrics.segments_flushed),
        M::get(&metrics.rows_committed),
        M::get(&metrics.redact_micros),
    );
    Ok(ExitCode::SUCCESS)
}
