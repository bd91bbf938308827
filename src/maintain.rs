//! `runledger retention`, `runledger erase`, `runledger compact` and `runledger reprice`, and the periodic
//! retention and compaction that `serve` runs: the lake's upkeep, on whichever tier tables
//! exist in the data directory. Each is safe next to a running `serve` (Delta commits are
//! optimistic and retried on conflict) and prints counts, never content.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use runledger_lake::{table_path, HourPartition, LakeConfig, SpanTable};
use runledger_processor::Redactor;
use runledger_schemas::{col, Tier};

use crate::config::RunledgerConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct RetentionArgs {
    /// Data directory. Default ./runledger-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The clock TTLs are measured against (RFC 3339). Default: now.
    #[arg(long)]
    now: Option<String>,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// TOML config file (for the tiers' TTLs).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["customer", "run_id"])))]
pub(crate) struct EraseArgs {
    /// Data directory. Default ./runledger-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Erase every run that belongs to this customer (any of its spans carries the id).
    #[arg(long)]
    customer: Option<String>,
    /// Erase this run.
    #[arg(long)]
    run_id: Option<String>,
    /// TOML config file (for the HMAC key and customer-id keys).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CompactArgs {
    /// Data directory. Default ./runledger-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The clock that decides which hours are closed (RFC 3339). Default: now.
    #[arg(long)]
    now: Option<String>,
    /// TOML config file (target file size, grace period).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RepriceArgs {
    /// Data directory. Default ./runledger-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// First instant to reprice (RFC 3339): every hour partition that ends after it.
    /// Default: the beginning.
    #[arg(long)]
    from: Option<String>,
    /// Last instant (RFC 3339, exclusive): every hour partition that starts before it.
    /// Default: now.
    #[arg(long)]
    to: Option<String>,
    /// TOML config file (`[pricing]`: your price file and rates).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn parse_time(flag: &str, text: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("{flag} `{text}` is not an RFC 3339 time"))
}

/// `runledger reprice`: recomputes the cost columns of stored spans with the current price
/// table, one hour partition per atomic commit, in every tier.
pub(crate) async fn reprice(args: RepriceArgs) -> anyhow::Result<ExitCode> {
    let config = RunledgerConfig::load_or_default(args.config.as_deref(), args.data_dir)?;
    let from = args
        .from
        .as_deref()
        .map(|t| parse_time("--from", t))
        .transpose()?;
    let to = match args.to.as_deref() {
        Some(t) => parse_time("--to", t)?,
        None => Utc::now(),
    };
    let pricer = runledger_processor::Pricer::new(&config.pricing)
        .map_err(|e| anyhow::anyhow!(e))
        .context("loading the price table")?;
    let pricer = Arc::new(pricer);
    let unpriced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for mut table in existing_tables(&config.server.data_dir, &config.lake).await? {
        let tier = table.tier();
        let hours: Vec<HourPartition> = table
            .partitions(0)
            .await?
            .into_keys()
            .filter(|p| {
                let Some(end) = p.end() else { return false };
                let start = end - chrono::Duration::hours(1);
                from.is_none_or(|from| end > from) && start < to
            })
            .collect();
        let mut rows = 0;
        for hour in &hours {
            let (pricer, unpriced) = (pricer.clone(), unpriced.clone());
            let transform = move |batch: arrow::array::RecordBatch| {
                let (priced, totals) = pricer.price_batch(&batch).map_err(|e| e.to_string())?;
                unpriced.fetch_add(totals.unpriced, std::sync::atomic::Ordering::Relaxed);
                Ok(priced)
            };
            rows += table
                .rewrite_hour(hour, &transform)
                .await
                .with_context(|| format!("repricing {tier} {hour}"))?;
        }
        println!(
            "{tier}: repriced {rows} spans in {} hour partitions with price version {}",
            hours.len(),
            pricer.version()
        );
    }
    println!(
        "spans with tokens but no price (cost left null): {}",
        unpriced.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_now(now: Option<&str>) -> anyhow::Result<DateTime<Utc>> {
    match now {
        None => Ok(Utc::now()),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .with_context(|| format!("--now `{text}` is not an RFC 3339 time")),
    }
}

/// The tier tables that exist in the data directory (none is created).
async fn existing_tables(data_dir: &Path, lake: &LakeConfig) -> anyhow::Result<Vec<SpanTable>> {
    let mut tables = Vec::new();
    for tier in Tier::ALL {
        if table_path(data_dir, tier).join("_delta_log").is_dir() {
            tables.push(
                SpanTable::open_or_create(data_dir, tier, lake)
                    .await
                    .with_context(|| format!("opening the {tier} tier"))?,
            );
        }
    }
    Ok(tables)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Retention of every tier at `now`: returns a line per tier.
async fn apply_retention(
    config: &RunledgerConfig,
    now: DateTime<Utc>,
    dry_run: bool,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for mut table in existing_tables(&config.server.data_dir, &config.lake).await? {
        let tier = table.tier();
        let ttl = config.tiers.ttl(tier);
        let cutoff = now - chrono::Duration::from_std(ttl).context("TTL out of range")?;
        let partitions = table.partitions(0).await?;
        let expired: Vec<(&HourPartition, u64, usize)> = partitions
            .iter()
            .filter(|(p, _)| p.end().is_some_and(|end| end <= cutoff))
            .map(|(p, f)| (p, f.bytes, f.files))
            .collect();
        let files: usize = expired.iter().map(|e| e.2).sum();
        let bytes: u64 = expired.iter().map(|e| e.1).sum();
        let span = match (expired.first(), expired.last()) {
            (Some(first), Some(last)) => format!(" ({} .. {})", first.0, last.0),
            _ => String::new(),
        };
        let verb = if dry_run { "would delete" } else { "deleting" };
        lines.push(format!(
            "{tier}: ttl {}, cutoff {}: {verb} {} partitions{span}, {files} files, {}; keeping {}",
            match tier {
                Tier::Raw => &config.tiers.raw.ttl,
                Tier::Redacted => &config.tiers.redacted.ttl,
            },
            cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            expired.len(),
            mib(bytes),
            partitions.len() - expired.len()
        ));
        if !dry_run && !expired.is_empty() {
            let outcome = table.delete_hours_ending_by(cutoff).await?;
            lines.push(format!(
                "{tier}: removed {} files from the table and {} from disk",
                outcome.files_removed, outcome.files_purged
            ));
        }
    }
    Ok(lines)
}

pub(crate) async fn retention(args: RetentionArgs) -> anyhow::Result<ExitCode> {
    let config = RunledgerConfig::load_or_default(args.config.as_deref(), args.data_dir)?;
    let now = parse_now(args.now.as_deref())?;
    for line in apply_retention(&config, now, args.dry_run).await? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn erase(args: EraseArgs) -> anyhow::Result<ExitCode> {
    let config = RunledgerConfig::load_or_default(args.config.as_deref(), args.data_dir)?;
    let data_dir = &config.server.data_dir;
    let mut tables = existing_tables(data_dir, &config.lake).await?;
    // The run ids to erase, found in every tier: the raw tier holds customer ids as sent,
    // the redacted tier as keyed hashes made with the same key.
    let mut run_ids: Vec<String> = Vec::new();
    match (&args.customer, &args.run_id) {
        (Some(customer), _) => {
            let key = config
                .redaction
                .resolve_hmac_key(data_dir)
                .context("reading the HMAC key")?;
            let redactor =
                Redactor::new(&config.redaction, &config.processor.customer_id_keys, &key)?;
            let token = redactor.hash_token("customer_id", customer);
            for table in &mut tables {
                let value = match table.tier() {
                    Tier::Raw => customer.as_str(),
                    Tier::Redacted => token.as_str(),
                };
                run_ids.extend(table.run_ids_where(col::CUSTOMER_ID, value).await?);
            }
        }
        (None, Some(run_id)) => run_ids.push(run_id.clone()),
        (None, None) => unreachable!("clap requires one"),
    }
    run_ids.sort();
    run_ids.dedup();
    println!("erase: {} runs found", run_ids.len());
    for table in &mut tables {
        let mut outcome = table.delete_runs(&run_ids).await?;
        // A DELETE that removed files has purged them already; otherwise purge what an
        // interrupted earlier erase committed but left on disk.
        if outcome.files_removed == 0 {
            outcome.files_purged += table.purge_removed_files().await?;
        }
        println!(
            "{}: erased {} spans; {} files rewritten without them, {} written, {} deleted from disk",
            table.tier(),
            outcome.rows,
            outcome.files_removed,
            outcome.files_added,
            outcome.files_purged
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Compaction of every tier's closed hours at `now`, then a vacuum after the grace period.
async fn apply_compaction(
    config: &RunledgerConfig,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<String>> {
    let maintenance = &config.maintenance;
    let target = maintenance.compact_target_bytes();
    let closed_before =
        now - chrono::Duration::from_std(maintenance.compact_after()).context("compact_after")?;
    let mut lines = Vec::new();
    for mut table in existing_tables(&config.server.data_dir, &config.lake).await? {
        let tier = table.tier();
        let partitions = table.partitions(target / 2).await?;
        let hours: Vec<HourPartition> = partitions
            .iter()
            // Small files to merge, or files still in ingest's codec to rewrite as archival.
            .filter(|(p, f)| {
                p.end().is_some_and(|end| end <= closed_before)
                    && (f.small_files >= 2 || f.unarchived_files > 0)
            })
            .map(|(p, _)| p.clone())
            .collect();
        let outcome = table.compact(&hours, target).await?;
        let vacuumed = table.vacuum(maintenance.vacuum_grace()).await?;
        lines.push(format!(
            "{tier}: compacted {} hours: {} files into {}; vacuumed {} files older than {}",
            outcome.partitions,
            outcome.files_removed,
            outcome.files_added,
            vacuumed,
            maintenance.vacuum_grace
        ));
    }
    Ok(lines)
}

pub(crate) async fn compact(args: CompactArgs) -> anyhow::Result<ExitCode> {
    let config = RunledgerConfig::load_or_default(args.config.as_deref(), args.data_dir)?;
    let now = parse_now(args.now.as_deref())?;
    for line in apply_compaction(&config, now).await? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What periodic maintenance did, for `GET /metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    retention_passes: AtomicU64,
    retention_actions: AtomicU64,
    compaction_passes: AtomicU64,
    compaction_actions: AtomicU64,
    failures: AtomicU64,
}

impl Counters {
    pub(crate) fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn write(&self, out: &mut runledger_query::api::telemetry::Exposition) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        out.help(
            "runledger_maintenance_passes_total",
            "counter",
            "Periodic retention and compaction passes.",
        );
        out.sample(
            "runledger_maintenance_passes_total",
            &[("job", "retention")],
            get(&self.retention_passes),
        );
        out.sample(
            "runledger_maintenance_passes_total",
            &[("job", "compaction")],
            get(&self.compaction_passes),
        );
        out.help(
            "runledger_maintenance_actions_total",
            "counter",
            "Tier-level actions taken (partitions deleted and vacuumed, hours compacted).",
        );
        out.sample(
            "runledger_maintenance_actions_total",
            &[("job", "retention")],
            get(&self.retention_actions),
        );
        out.sample(
            "runledger_maintenance_actions_total",
            &[("job", "compaction")],
            get(&self.compaction_actions),
        );
        out.single(
            "runledger_maintenance_failures_total",
            "counter",
            "Failed retention or compaction passes (retried at the next tick).",
            get(&self.failures),
        );
    }
}

/// Retention and compaction on a timer, inside `serve`, on a thread of their own so that
/// rewriting Parquet never competes with the receivers' async threads.
pub(crate) struct Periodic {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Periodic {
    pub(crate) fn start(config: &RunledgerConfig, counters: Arc<Counters>) -> Self {
        let retention_every = config.maintenance.retention_every();
        let compaction_every = config.maintenance.compaction_every();
        if retention_every.is_none() && compaction_every.is_none() {
            return Self {
                stop: None,
                thread: None,
            };
        }
        let config = Arc::new(config.clone());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("runledger-maintenance".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("the maintenance runtime starts");
                runtime.block_on(async move {
                    let far = Duration::from_secs(365 * 24 * 3600);
                    let mut retention = tokio::time::interval(retention_every.unwrap_or(far));
                    let mut compaction = tokio::time::interval(compaction_every.unwrap_or(far));
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => return,
                            _ = retention.tick(), if retention_every.is_some() => {
                                counters.retention_passes.fetch_add(1, Ordering::Relaxed);
                                match apply_retention(&config, Utc::now(), false).await {
                                    Ok(lines) => for line in lines {
                                        counters.retention_actions.fetch_add(1, Ordering::Relaxed);
                                        tracing::info!("retention: {line}");
                                    },
                                    Err(e) => {
                                        counters.failures.fetch_add(1, Ordering::Relaxed);
                                        tracing::error!("retention failed: {e:#}");
                                    }
                                }
                            }
                            _ = compaction.tick(), if compaction_every.is_some() => {
                                counters.compaction_passes.fetch_add(1, Ordering::Relaxed);
                                match apply_compaction(&config, Utc::now()).await {
                                    Ok(lines) => for line in lines {
                                        counters.compaction_actions.fetch_add(1, Ordering::Relaxed);
                                        tracing::info!("compaction: {line}");
                                    },
                                    Err(e) => {
                                        counters.failures.fetch_add(1, Ordering::Relaxed);
                                        tracing::error!("compaction failed: {e:#}");
                                    }
                                }
                            }
                        }
                    }
                });
            })
            .expect("spawning the maintenance thread");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops after the operation in progress, if any, has committed.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
