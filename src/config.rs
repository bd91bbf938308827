//! The config file: TOML, strict (an unknown key is an error that names it), every option
//! documented in `runledger.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use runledger_collector::{CollectorConfig, IngestConfig, WalConfig};
use runledger_lake::{LakeConfig, MaintenanceConfig, TiersConfig};
use runledger_processor::{PricingConfig, ProcessorConfig, RedactionConfig};
use runledger_query::{ApiConfig, GatesConfig};
use serde::{Deserialize, Serialize};

/// The whole configuration of `runledger serve`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunledgerConfig {
    /// Addresses and the data directory (command-line flags override them).
    pub server: ServerConfig,
    /// Limits of the OTLP receivers.
    pub ingest: IngestConfig,
    /// The write-ahead log.
    pub wal: WalConfig,
    /// Normalisation of spans.
    pub processor: ProcessorConfig,
    /// Parquet and Delta settings.
    pub lake: LakeConfig,
    /// Which tiers exist and their TTLs.
    pub tiers: TiersConfig,
    /// How the redacted tier is redacted.
    pub redaction: RedactionConfig,
    /// Periodic retention and compaction.
    pub maintenance: MaintenanceConfig,
    /// The price table and the tool and review rates.
    pub pricing: PricingConfig,
    /// API tokens and query limits.
    pub api: ApiConfig,
    /// Graduation-gate thresholds.
    pub gates: GatesConfig,
    /// Spend budgets (`[[budgets]]`): daily or monthly, per workflow, agent or customer.
    pub budgets: Vec<runledger_query::budgets::BudgetConfig>,
}

/// Where runledger listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The data directory: WAL, lake tables, collector id. Default `./runledger-data`.
    pub data_dir: PathBuf,
    /// OTLP/gRPC. Default `127.0.0.1:4317` (loopback: set `0.0.0.0:4317` to expose it).
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP. Default `127.0.0.1:4318`.
    pub http_addr: SocketAddr,
    /// The query API and dashboard. Default `127.0.0.1:8080`.
    pub api_addr: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./runledger-data"),
            grpc_addr: "127.0.0.1:4317".parse().expect("valid"),
            http_addr: "127.0.0.1:4318".parse().expect("valid"),
            api_addr: "127.0.0.1:8080".parse().expect("valid"),
        }
    }
}

impl RunledgerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    /// Parses and validates a config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: RunledgerConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.collector()
            .validate()
            .and_then(|()| self.processor.validate())
            .and_then(|()| self.lake.validate())
            .and_then(|()| self.tiers.validate())
            .and_then(|()| self.redaction.validate())
            .and_then(|()| self.pricing.validate())
            .and_then(|()| self.api.validate())
            .and_then(|()| self.gates.validate())
            .and_then(|()| self.maintenance.validate())
            .and_then(|()| self.budgets.iter().try_for_each(|b| b.validate()))
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Loads `--config FILE` if given, else the defaults, and applies `--data-dir`.
    pub fn load_or_default(
        config: Option<&Path>,
        data_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut loaded = match config {
            Some(path) => Self::load(path)?,
            None => Self::default(),
        };
        if let Some(dir) = data_dir {
            loaded.server.data_dir = dir;
        }
        if loaded.server.data_dir.as_os_str().is_empty() {
            loaded.server.data_dir = ServerConfig::default().data_dir;
        }
        Ok(loaded)
    }

    /// The collector's part.
    pub fn collector(&self) -> CollectorConfig {
        CollectorConfig {
            ingest: self.ingest.clone(),
            wal: self.wal.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid_and_spells_out_the_defaults() {
        let example = include_str!("../runledger.example.toml");
        let parsed = RunledgerConfig::parse(example).unwrap();
        assert_eq!(parsed, RunledgerConfig::default());
    }

    #[test]
    fn a_misspelt_key_is_an_error_that_names_it() {
        let err = RunledgerConfig::parse("[wal]\nfsnyc = false\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("fsnyc"), "{message}");
        let err = RunledgerConfig::parse("[walls]\n").unwrap_err();
        assert!(format!("{err:#}").contains("walls"));
    }

    #[test]
    fn values_out_of_range_are_errors() {
        let err = RunledgerConfig::parse("[lake]\nzstd_level = 40\n").unwrap_err();
        assert!(format!("{err:#}").contains("zstd_level"));
        let err = RunledgerConfig::parse("[processor]\nwrite_tools = [\"[\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("write_tools"));
    }

    #[test]
    fn the_ingest_codec_is_one_of_three() {
        let parsed = RunledgerConfig::parse("[lake]\ningest_compression = \"lz4\"\n").unwrap();
        assert_eq!(
            parsed.lake.ingest_compression,
            runledger_lake::IngestCompression::Lz4
        );
        let err = RunledgerConfig::parse("[lake]\ningest_compression = \"gzip\"\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("snappy") && message.contains("gzip"),
            "{message}"
        );
    }
}
