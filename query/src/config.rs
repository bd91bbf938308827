//! `[api]` and `[gates]` in the config file: who may read what, and when a workflow is ready.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A token's role. Each role reads what the one before it reads, and more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Aggregates: workflows, cost, gates, tools, capabilities, budgets.
    Finance,
    /// Also runs, from the redacted tier.
    Oncall,
    /// Also the raw tier (every such read is audited).
    Raw,
    /// Everything, SQL and the audit log included.
    Admin,
}

impl Role {
    /// The role's name as config and the API spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Finance => "finance",
            Role::Oncall => "oncall",
            Role::Raw => "raw",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[api.tokens]]` entry: the token itself or its SHA-256 (hex), never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// What the holder may read.
    pub role: Role,
    /// The bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// SHA-256 of the bearer token, 64 hex digits (`printf %s "$TOKEN" | sha256sum`), so
    /// that the config file does not hold the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// A name for the audit log (default: the role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `[api]`: tokens and the limits of ad-hoc SQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer tokens and their roles. None configured: `serve` generates an admin token in
    /// `<data-dir>/admin.token`.
    pub tokens: Vec<TokenConfig>,
    /// How stale the API's view of the lake may be, e.g. "2s".
    pub refresh_interval: String,
    /// Time limit of a `POST /api/v1/sql` query.
    pub sql_timeout: String,
    /// Row limit of a `POST /api/v1/sql` answer (the rest is cut, and the answer says so).
    pub sql_max_rows: usize,
    /// Memory limit of one query, MiB.
    pub query_memory_mib: usize,
    /// How long an aggregate answer (workflows, cost, tools, gates, budgets, runaway runs)
    /// is served from the response cache before it is recomputed, e.g. "5s". "0s" turns
    /// the cache off.
    pub cache_ttl: String,
    /// Up to how old a cached answer may be served while a background task recomputes it
    /// (stale-while-revalidate), e.g. "10m".
    pub cache_max_stale: String,
    /// A bearer token that `GET /metrics` requires; unset: `/metrics` is open (it holds
    /// counters and cost totals, no span data).
    pub metrics_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            refresh_interval: "2s".into(),
            sql_timeout: "30s".into(),
            sql_max_rows: 10_000,
            query_memory_mib: 8192,
            cache_ttl: "5s".into(),
            cache_max_stale: "10m".into(),
            metrics_token: None,
        }
    }
}

fn duration(name: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("api.{name}: `{text}`: {e}"))
}

impl ApiConfig {
    /// Checks tokens and durations.
    pub fn validate(&self) -> Result<(), String> {
        for (i, token) in self.tokens.iter().enumerate() {
            let at = format!("api.tokens[{i}] ({})", token.role);
            match (&token.token, &token.token_sha256) {
                (Some(_), Some(_)) => {
                    return Err(format!("{at}: give token or token_sha256, not both"))
                }
                (None, None) => return Err(format!("{at}: needs token or token_sha256")),
                (Some(t), None) if t.len() < 16 => {
                    return Err(format!("{at}: a token must be at least 16 characters"))
                }
                (None, Some(h)) if h.len() != 64 || hex::decode(h).is_err() => {
                    return Err(format!("{at}: token_sha256 must be 64 hex digits"))
                }
                _ => {}
            }
        }
        duration("refresh_interval", &self.refresh_interval)?;
        duration("sql_timeout", &self.sql_timeout)?;
        duration("cache_ttl", &self.cache_ttl)?;
        duration("cache_max_stale", &self.cache_max_stale)?;
        if self.metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err("api.metrics_token must be at least 16 characters".into());
        }
        if self.sql_max_rows == 0 {
            return Err("api.sql_max_rows must be at least 1".into());
        }
        if self.query_memory_mib < 64 {
            return Err("api.query_memory_mib must be at least 64".into());
        }
        Ok(())
    }

    /// `refresh_interval` parsed.
    pub fn refresh_every(&self) -> Duration {
        duration("refresh_interval", &self.refresh_interval).unwrap_or(Duration::from_secs(2))
    }

    /// `cache_ttl` and `cache_max_stale` parsed.
    pub fn cache_times(&self) -> (Duration, Duration) {
        (
            duration("cache_ttl", &self.cache_ttl).unwrap_or(Duration::from_secs(5)),
            duration("cache_max_stale", &self.cache_max_stale).unwrap_or(Duration::from_secs(600)),
        )
    }

    /// `sql_timeout` parsed.
    pub fn sql_time_limit(&self) -> Duration {
        duration("sql_timeout", &self.sql_timeout).unwrap_or(Duration::from_secs(30))
    }
}

/// The thresholds of the graduation gates. Every field may be overridden per workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateThresholds {
    /// Completion rate at least this (successful / finished runs).
    pub min_completion_rate: f64,
    /// Critical error rate at most this (failed or incorrect writes / writes).
    pub max_critical_error_rate: f64,
    /// Cost per successful run at most this, USD. Unset: the gate fails until a threshold is
    /// set, so that no workflow graduates on an unexamined budget.
    pub max_cost_per_success_usd: Option<f64>,
    /// Trace coverage at least this (runs with one root and no orphan spans / runs).
    pub min_trace_coverage: f64,
    /// Fewer finished runs than this in the window: no gate can pass on so little evidence.
    pub min_runs: u64,
}

impl Default for GateThresholds {
    fn default() -> Self {
        Self {
            min_completion_rate: 0.95,
            max_critical_error_rate: 0.001,
            max_cost_per_success_usd: None,
            min_trace_coverage: 1.0,
            min_runs: 100,
        }
    }
}

/// Per-workflow overrides: any field left out keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateOverrides {
    /// See [`GateThresholds::min_completion_rate`].
    pub min_completion_rate: Option<f64>,
    /// See [`GateThresholds::max_critical_error_rate`].
    pub max_critical_error_rate: Option<f64>,
    /// See [`GateThresholds::max_cost_per_success_usd`].
    pub max_cost_per_success_usd: Option<f64>,
    /// See [`GateThresholds::min_trace_coverage`].
    pub min_trace_coverage: Option<f64>,
    /// See [`GateThresholds::min_runs`].
    pub min_runs: Option<u64>,
}

/// `[gates]`: default thresholds, and `[gates.workflows."name"]` overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatesConfig {
    /// The defaults.
    pub defaults: GateThresholds,
    /// Overrides by workflow name.
    pub workflows: BTreeMap<String, GateOverrides>,
}

impl GatesConfig {
    /// The thresholds of one workflow.
    pub fn for_workflow(&self, workflow: &str) -> GateThresholds {
        let mut t = self.defaults.clone();
        if let Some(o) = self.workflows.get(workflow) {
            t.min_completion_rate = o.min_completion_rate.unwrap_or(t.min_completion_rate);
            t.max_critical_error_rate = o
                .max_critical_error_rate
                .unwrap_or(t.max_critical_error_rate);
            t.max_cost_per_success_usd = o.max_cost_per_success_usd.or(t.max_cost_per_success_usd);
            t.min_trace_coverage = o.min_trace_coverage.unwrap_or(t.min_trace_coverage);
            t.min_runs = o.min_runs.unwrap_or(t.min_runs);
        }
        t
    }

    /// Rates must be fractions.
    pub fn validate(&self) -> Result<(), String> {
        let check = |at: &str, t: &GateThresholds| {
            for (name, v) in [
                ("min_completion_rate", t.min_completion_rate),
                ("max_critical_error_rate", t.max_critical_error_rate),
                ("min_trace_coverage", t.min_trace_coverage),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(format!("{at}.{name} must be between 0 and 1, not {v}"));
                }
            }
            Ok(())
        };
        check("gates.defaults", &self.defaults)?;
        for name in self.workflows.keys() {
            check(
                &format!("gates.workflows.\"{name}\""),
                &self.for_workflow(name),
            )?;
        }
        Ok(())
    }
}
