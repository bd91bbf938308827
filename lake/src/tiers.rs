//! Which tiers exist, how long each keeps data, and how often the lake is maintained
//! (`[tiers]` and `[maintenance]` in the config file).

use std::time::Duration;

use runledger_schemas::Tier;
use serde::{Deserialize, Serialize};

/// `[tiers]`: the raw tier (full fidelity, short-lived, restricted) and the redacted tier
/// (long-lived). Every span goes to both; the raw tier can be turned off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TiersConfig {
    /// `[tiers.raw]`.
    pub raw: RawTierConfig,
    /// `[tiers.redacted]`.
    pub redacted: RedactedTierConfig,
}

/// `[tiers.raw]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTierConfig {
    /// Write the raw tier at all. Default true.
    pub enabled: bool,
    /// How long raw spans are kept, as a duration (`7d`, `36h`). Default `7d`.
    pub ttl: String,
}

impl Default for RawTierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: "7d".into(),
        }
    }
}

/// `[tiers.redacted]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactedTierConfig {
    /// Write the redacted tier. Default true; off only for a deployment that keeps nothing
    /// past the raw tier's TTL.
    pub enabled: bool,
    /// How long redacted spans are kept. Default `400d`.
    pub ttl: String,
}

impl Default for RedactedTierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: "400d".into(),
        }
    }
}

impl TiersConfig {
    /// The tiers spans are written to, raw first.
    pub fn enabled(&self) -> Vec<Tier> {
        let mut tiers = Vec::new();
        if self.raw.enabled {
            tiers.push(Tier::Raw);
        }
        if self.redacted.enabled {
            tiers.push(Tier::Redacted);
        }
        tiers
    }

    /// A tier's time to live.
    pub fn ttl(&self, tier: Tier) -> Duration {
        let text = match tier {
            Tier::Raw => &self.raw.ttl,
            Tier::Redacted => &self.redacted.ttl,
        };
        humantime::parse_duration(text).expect("validated at load")
    }

    /// Checks that the TTLs parse and are at least an hour (retention works in hours).
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled().is_empty() {
            return Err(
                "tiers: at least one of tiers.raw and tiers.redacted must be enabled".into(),
            );
        }
        for (name, text) in [("raw", &self.raw.ttl), ("redacted", &self.redacted.ttl)] {
            let ttl = humantime::parse_duration(text)
                .map_err(|e| format!("tiers.{name}.ttl: `{text}`: {e}"))?;
            if ttl < Duration::from_secs(3600) {
                return Err(format!("tiers.{name}.ttl: `{text}` is under an hour"));
            }
        }
        Ok(())
    }
}

/// `[maintenance]`: the periodic retention and compaction that `serve` runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// How often retention runs. Default `1h`; `0s` turns it off.
    pub retention_interval: String,
    /// How often compaction runs. Default `15m`; `0s` turns it off.
    pub compaction_interval: String,
    /// An hour is compacted once it ended this long ago (late spans mostly in). Default `1h`.
    pub compact_after: String,
    /// Target size of compacted files, in MiB. Default 128.
    pub compact_target_file_mib: u64,
    /// Files replaced by compaction stay on disk this long for queries still reading them.
    /// Default `1h`.
    pub vacuum_grace: String,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            retention_interval: "1h".into(),
            compaction_interval: "15m".into(),
            compact_after: "1h".into(),
            compact_target_file_mib: 128,
            vacuum_grace: "1h".into(),
        }
    }
}

impl MaintenanceConfig {
    fn parse(name: &str, text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text).map_err(|e| format!("maintenance.{name}: `{text}`: {e}"))
    }

    /// Checks that every duration parses.
    pub fn validate(&self) -> Result<(), String> {
        Self::parse("retention_interval", &self.retention_interval)?;
        Self::parse("compaction_interval", &self.compaction_interval)?;
        Self::parse("compact_after", &self.compact_after)?;
        Self::parse("vacuum_grace", &self.vacuum_grace)?;
        if self.compact_target_file_mib == 0 {
            return Err("maintenance.compact_target_file_mib must be positive".into());
        }
        Ok(())
    }

    /// `retention_interval`, `None` when off.
    pub fn retention_every(&self) -> Option<Duration> {
        Some(Self::parse("", &self.retention_interval).ok()?).filter(|d| !d.is_zero())
    }

    /// `compaction_interval`, `None` when off.
    pub fn compaction_every(&self) -> Option<Duration> {
        Some(Self::parse("", &self.compaction_interval).ok()?).filter(|d| !d.is_zero())
    }

    /// `compact_after`.
    pub fn compact_after(&self) -> Duration {
        Self::parse("", &self.compact_after).unwrap_or(Duration::from_secs(3600))
    }

    /// `vacuum_grace`.
    pub fn vacuum_grace(&self) -> Duration {
        Self::parse("", &self.vacuum_grace).unwrap_or(Duration::from_secs(3600))
    }

    /// `compact_target_file_mib` in bytes.
    pub fn compact_target_bytes(&self) -> u64 {
        self.compact_target_file_mib << 20
    }
}
