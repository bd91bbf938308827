//! A lake of generated traffic for the query benchmarks: `spans` spans spread evenly over
//! `hours` hours, written the way a collector plus compaction leaves it (one sorted file per
//! hour partition, priced, in the redacted tier). Built once per directory and reused.

use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use runledger_lake::{sort_for_lake, LakeConfig, SpanTable};
use runledger_processor::{Normalizer, Pricer, PricingConfig, ProcessorConfig};
use runledger_sample_data::{Generator, GeneratorOptions};
use runledger_schemas::Tier;

/// What the bench lake holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BenchLake {
    /// The last hour ends here (Unix nanoseconds).
    pub end_unix_nano: u64,
    pub hours: u64,
}

/// Builds the lake under `data_dir` unless a previous run left it there.
pub(crate) async fn build(data_dir: &Path, spans: u64, hours: u64) -> anyhow::Result<BenchLake> {
    let marker = data_dir.join("bench-lake.json");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let v: serde_json::Value = serde_json::from_str(&text)?;
        if v["spans"].as_u64() == Some(spans) && v["hours"].as_u64() == Some(hours) {
            println!("reusing the bench lake in {}", data_dir.display());
            return Ok(BenchLake {
                end_unix_nano: v["end_unix_nano"].as_u64().context("marker")?,
                hours,
            });
        }
        anyhow::bail!(
            "{} holds a bench lake of other dimensions; remove it or pick another --data-dir",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)?;
    let hour_nanos = 3_600_000_000_000u64;
    // Whole hours, ending at the last full hour before now.
    let now = crate::gen::now_unix_nano();
    let end_unix_nano = now - now % hour_nanos;
    let normalizer = Normalizer::new(&ProcessorConfig::default()).map_err(anyhow::Error::msg)?;
    let pricer = Pricer::new(&PricingConfig {
        review_hourly_usd: Some(60.0),
        ..Default::default()
    })
    .map_err(anyhow::Error::msg)?;
    let mut table = SpanTable::open_or_create(data_dir, Tier::Redacted, &LakeConfig::default())
        .await
        .context("creating the bench table")?;
    let per_hour = spans.div_ceil(hours);
    let started = Instant::now();
    let mut written = 0u64;
    for hour in 0..hours {
        let hour_end = end_unix_nano - (hours - 1 - hour) * hour_nanos;
        let mut generator = Generator::new(GeneratorOptions {
            seed: 1000 + hour,
            // A run starts in the hour and its spans stay in it (runs last seconds).
            end_unix_nano: hour_end - 120_000_000_000,
            spread_nanos: hour_nanos - 240_000_000_000,
            customers: 2000,
        });
        let mut batches = Vec::new();
        let mut in_hour = 0u64;
        while in_hour < per_hour {
            let (request, n) = generator.next_request(100);
            in_hour += n as u64;
            let normalized = normalizer.normalize(&request, SystemTime::now());
            if let Some(batch) = normalized.batch {
                batches.push(pricer.price_batch(&batch)?.0);
            }
        }
        let sorted = sort_for_lake(&batches)?;
        drop(batches);
        table
            .append(sorted.as_slice(), "bench", hour as i64)
            .await
            .context("writing an hour")?;
        written += in_hour;
        eprint!(
            "\rbuilding the bench lake: {written} spans, hour {}/{hours}, {:.0} spans/s   ",
            hour + 1,
            written as f64 / started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    std::fs::write(
        &marker,
        serde_json::json!({"spans": spans, "hours": hours, "end_unix_nano": end_unix_nano, "written": written})
            .to_string(),
    )?;
    Ok(BenchLake {
        end_unix_nano,
        hours,
    })
}
