//! Starting and stopping the collector: recovery, the receivers, the WAL and the flusher.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runledger_lake::{LakeConfig, SpanTable};
use runledger_processor::{
    Normalizer, Pricer, PricingConfig, ProcessorConfig, RedactionConfig, Redactor,
};
use runledger_schemas::Tier;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::flush::Flusher;
use crate::grpc::{otlp_status_codes, GrpcReceiver};
use crate::wal::{Wal, WalOptions};
use crate::{CollectorConfig, CollectorError, CollectorMetrics, Ingest, MemoryBudget};

/// Everything the collector is started with.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    /// The data directory: WAL, lake, collector id.
    pub data_dir: PathBuf,
    /// Where OTLP/gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where OTLP/HTTP listens.
    pub http_addr: SocketAddr,
    /// Receivers and WAL.
    pub collector: CollectorConfig,
    /// Normalisation.
    pub processor: ProcessorConfig,
    /// Parquet and Delta settings.
    pub lake: LakeConfig,
    /// The tiers every span is written to.
    pub tiers: Vec<Tier>,
    /// How the redacted tier is redacted.
    pub redaction: RedactionConfig,
    /// The price table and rates that cost every span.
    pub pricing: PricingConfig,
}

/// The addresses the receivers actually listen on (port 0 binds a free port).
#[derive(Debug, Clone, Copy)]
pub struct CollectorAddrs {
    /// OTLP/gRPC.
    pub grpc: SocketAddr,
    /// OTLP/HTTP.
    pub http: SocketAddr,
}

/// A running collector.
pub struct Collector {
    addrs: CollectorAddrs,
    ingest: Arc<Ingest>,
    metrics: Arc<CollectorMetrics>,
    stop: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    flusher: std::thread::JoinHandle<()>,
    shutting_down: Arc<AtomicBool>,
    recovered_segments: usize,
    budget: MemoryBudget,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// This collector's id, kept in `<data-dir>/collector.id`: the application id of its Delta
/// transactions, so it must survive restarts.
fn collector_id(data_dir: &Path) -> Result<String, CollectorError> {
    let path = data_dir.join("collector.id");
    let io = |context: String| move |source| CollectorError::Io { context, source };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        // Empty: never written (it is written by rename, so this is a foreign file). A new id
        // is safe: no commit can carry an id that was never stored.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io(format!("reading {}", path.display()))(source)),
    }
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = data_dir.join("collector.id.tmp");
    std::fs::write(&tmp, &id)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(id)
}

impl Collector {
    /// Recovers what a previous process left, opens the lake, and starts the receivers.
    pub async fn start(settings: CollectorSettings) -> Result<Self, CollectorError> {
        settings
            .collector
            .validate()
            .and_then(|()| settings.lake.validate())
            .map_err(CollectorError::Config)?;
        let normalizer = Normalizer::new(&settings.processor).map_err(CollectorError::Config)?;
        std::fs::create_dir_all(&settings.data_dir).map_err(|source| CollectorError::Io {
            context: format!("creating {}", settings.data_dir.display()),
            source,
        })?;
        let app_id = format!("runledger-{}", collector_id(&settings.data_dir)?);
        let metrics = Arc::new(CollectorMetrics::default());

        // The lake first: the WAL must number new segments above what the lake has.
        let mut tables = Vec::new();
        let mut committed: Option<i64> = None;
        for tier in &settings.tiers {
            let mut table =
                SpanTable::open_or_create(&settings.data_dir, *tier, &settings.lake).await?;
            let version = table.committed_transaction(&app_id).await?;
            committed = committed.max(version);
            tables.push(table);
        }
        let min_next_seq = committed.map(|v| v as u64 + 1).unwrap_or(0);

        let budget = MemoryBudget::new(settings.collector.ingest.memory_limit_bytes);
        let (sealed_tx, sealed_rx) = tokio::sync::mpsc::unbounded_channel();
        let (wal, recovered_segments) = Wal::open(
            WalOptions {
                dir: settings.data_dir.join("wal"),
                fsync: settings.collector.wal.fsync,
                segment_max_bytes: settings.collector.wal.segment_max_bytes,
                flush_interval: Duration::from_millis(settings.collector.wal.flush_interval_ms),
                direct_io: settings.collector.wal.direct_io,
            },
            min_next_seq,
            sealed_tx,
            &budget,
            metrics.clone(),
        )?;
        if recovered_segments > 0 {
            tracing::info!(
                recovered_segments,
                "replaying WAL segments left by the previous run"
            );
        }

        let redactor = if settings.tiers.contains(&Tier::Redacted) {
            let key = settings
                .redaction
                .resolve_hmac_key(&settings.data_dir)
                .map_err(|source| CollectorError::Io {
                    context: "reading or creating the HMAC key".into(),
                    source,
                })?;
            let redactor = Redactor::new(
                &settings.redaction,
                &settings.processor.customer_id_keys,
                &key,
            )
            .map_err(|e| CollectorError::Config(e.to_string()))?;
            Some(Arc::new(redactor))
        } else {
            None
        };

        let pricer = Arc::new(Pricer::new(&settings.pricing).map_err(CollectorError::Config)?);
        let shutting_down = Arc::new(AtomicBool::new(false));
        // One worker per tier lane and one for preparing the next segment (see `flush.rs`);
        // multi-threaded also so that the Delta kernel's nested blocking calls have somewhere
        // to run.
        let flush_workers = tables.len() + 1;
        let flusher = Flusher {
            tables,
            pricer,
            redactor,
            app_id,
            metrics: metrics.clone(),
            shutting_down: shutting_down.clone(),
        };
        let flusher = std::thread::Builder::new()
            .name("runledger-flush".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(flush_workers)
                    .thread_name("runledger-flush-rt")
                    .enable_all()
                    .build()
                    .expect("the flusher's runtime starts");
                runtime.block_on(flusher.run(sealed_rx));
            })
            .map_err(|source| CollectorError::Io {
                context: "starting the flusher thread".into(),
                source,
            })?;

        let queue = budget.clone();
        let ingest = Arc::new(Ingest::new(
            normalizer,
            wal,
            budget,
            settings.collector.ingest.clone(),
            metrics.clone(),
        ));
        let (stop, stopped) = watch::channel(false);
        let wait_for_stop = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };

        let grpc_listener = tokio::net::TcpListener::bind(settings.grpc_addr)
            .await
            .map_err(|source| CollectorError::Bind {
                what: "OTLP/gRPC",
                addr: settings.grpc_addr,
                source,
            })?;
        let http_listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .map_err(|source| CollectorError::Bind {
                what: "OTLP/HTTP",
                addr: settings.http_addr,
                source,
            })?;
        let addrs = CollectorAddrs {
            grpc: grpc_listener.local_addr().expect("bound"),
            http: http_listener.local_addr().expect("bound"),
        };

        let limit = settings.collector.ingest.max_request_bytes;
        let service = GrpcReceiver::new(ingest.clone(), limit);
        let layer_metrics = metrics.clone();
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tower::util::MapResponseLayer::new(move |response| {
                    otlp_status_codes(&layer_metrics, response)
                }))
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc_listener),
                    wait_for_stop(stopped.clone()),
                ),
        );
        let http_router = crate::http::router(ingest.clone());
        let http = tokio::spawn(async move {
            axum::serve(http_listener, http_router)
                .with_graceful_shutdown(wait_for_stop(stopped))
                .await
        });
        tracing::info!(grpc = %addrs.grpc, http = %addrs.http, "OTLP receivers listening");
        Ok(Self {
            addrs,
            ingest,
            metrics,
            stop,
            grpc,
            http,
            flusher,
            shutting_down,
            recovered_segments,
            budget: queue,
        })
    }

    /// Where the receivers listen.
    pub fn addrs(&self) -> CollectorAddrs {
        self.addrs
    }

    /// The collector's counters.
    pub fn metrics(&self) -> Arc<CollectorMetrics> {
        self.metrics.clone()
    }

    /// Bytes of accepted exports not yet committed to the lake (the ingest queue), and the
    /// limit past which exports are refused with UNAVAILABLE / 503.
    pub fn queue_bytes(&self) -> (usize, usize) {
        (self.budget.used(), self.budget.limit())
    }

    /// The ingest memory budget, to read the queue depth from elsewhere.
    pub fn memory_budget(&self) -> MemoryBudget {
        self.budget.clone()
    }

    /// How many WAL segments were replayed at start.
    pub fn recovered_segments(&self) -> usize {
        self.recovered_segments
    }

    /// Stops accepting, answers the requests in flight, seals the WAL, and waits until
    /// everything acknowledged is committed to the lake.
    pub async fn shutdown(self) -> Result<(), CollectorError> {
        let _ = self.stop.send(true);
        let grpc = self.grpc.await;
        let http = self.http.await;
        self.shutting_down.store(true, Ordering::Release);
        let ingest = self.ingest;
        let flusher = self.flusher;
        tokio::task::spawn_blocking(move || {
            ingest.close_wal();
            flusher.join()
        })
        .await
        .map_err(|e| CollectorError::Task(format!("stopping the flusher: {e}")))?
        .map_err(|_| CollectorError::Task("the flusher panicked".into()))?;
        grpc.map_err(|e| CollectorError::Task(e.to_string()))?
            .map_err(|e| CollectorError::Task(format!("OTLP/gRPC server: {e}")))?;
        http.map_err(|e| CollectorError::Task(e.to_string()))?
            .map_err(|e| CollectorError::Task(format!("OTLP/HTTP server: {e}")))?;
        Ok(())
    }
}
