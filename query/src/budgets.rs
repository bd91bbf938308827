//! Budgets: daily or monthly spend limits per workflow, agent or customer, and how fast each
//! is being burnt.
//!
//! A runaway loop can spend a month's budget in an afternoon, so a budget reports not only
//! what was spent but the burn rate and where the period will end at that rate:
//! - `spend_usd`: cost of the runs in the scope since the period began;
//! - `burn_rate_usd_per_hour`: spend / hours elapsed in the period;
//! - `projected_usd`: spend + burn rate x hours left in the period;
//! - `projected_overrun_usd`: how far the projection is over the budget (0 if under);
//! - `status`: `over` once spend exceeds the budget, `at_risk` when the projection does,
//!   else `ok`.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::metrics::{self, CostGroup};
use crate::{QueryError, TimeWindow};

/// What a budget covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetScope {
    /// One workflow.
    Workflow,
    /// One agent.
    Agent,
    /// One customer.
    Customer,
}

/// How long a budget lasts before it starts again (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// A calendar day.
    Daily,
    /// A calendar month.
    Monthly,
}

/// `[[budgets]]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// A name for alerts and the dashboard; default `<scope>:<key>:<period>`.
    pub name: Option<String>,
    /// workflow, agent or customer.
    pub scope: BudgetScope,
    /// The workflow, agent or customer id.
    pub key: String,
    /// daily or monthly.
    pub period: BudgetPeriod,
    /// The budget in USD.
    pub usd: f64,
}

impl BudgetConfig {
    /// The budget's name.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}:{}:{}",
                scope_name(self.scope),
                self.key,
                period_name(self.period)
            )
        })
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.usd.is_finite() && self.usd > 0.0) {
            return Err(format!(
                "budget `{}`: usd must be a positive number",
                self.display_name()
            ));
        }
        Ok(())
    }
}

fn scope_name(scope: BudgetScope) -> &'static str {
    match scope {
        BudgetScope::Workflow => "workflow",
        BudgetScope::Agent => "agent",
        BudgetScope::Customer => "customer",
    }
}

fn period_name(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Daily => "daily",
        BudgetPeriod::Monthly => "monthly",
    }
}

/// The period containing `now`: its first instant and the first instant after it.
pub fn period_bounds(period: BudgetPeriod, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = Utc
        .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
        .single()
        .unwrap_or(now);
    match period {
        BudgetPeriod::Daily => (day, day + Duration::days(1)),
        BudgetPeriod::Monthly => {
            let start = Utc
                .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
                .single()
                .unwrap_or(day);
            let (y, m) = if now.month() == 12 {
                (now.year() + 1, 1)
            } else {
                (now.year(), now.month() + 1)
            };
            let end = Utc
                .with_ymd_and_hms(y, m, 1, 0, 0, 0)
                .single()
                .unwrap_or(start + Duration::days(31));
            (start, end)
        }
    }
}

/// One budget's state (`GET /api/v1/budgets`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetStatus {
    /// The budget's name.
    pub name: String,
    /// workflow, agent or customer.
    pub scope: BudgetScope,
    /// The workflow, agent or customer.
    pub key: String,
    /// daily or monthly.
    pub period: BudgetPeriod,
    /// Period start, RFC 3339.
    pub period_start: String,
    /// Period end (exclusive), RFC 3339.
    pub period_end: String,
    /// The budget, USD.
    pub budget_usd: f64,
    /// Spent so far this period, USD.
    pub spend_usd: f64,
    /// spend / budget.
    pub burn: f64,
    /// spend / hours elapsed.
    pub burn_rate_usd_per_hour: f64,
    /// Spend at the end of the period at the current burn rate.
    pub projected_usd: f64,
    /// projected - budget when positive, else 0.
    pub projected_overrun_usd: f64,
    /// ok, at_risk or over.
    pub status: &'static str,
}

/// The state of every budget at `now`.
pub async fn status(
    ctx: &SessionContext,
    table: &str,
    budgets: &[BudgetConfig],
    now: DateTime<Utc>,
) -> Result<Vec<BudgetStatus>, QueryError> {
    // One cost query per (scope, period) that some budget uses.
    let mut spends: Vec<((BudgetScope, BudgetPeriod), Vec<metrics::CostRow>)> = Vec::new();
    for budget in budgets {
        let pair = (budget.scope, budget.period);
        if spends.iter().any(|(p, _)| *p == pair) {
            continue;
        }
        let (start, _) = period_bounds(budget.period, now);
        let window = TimeWindow {
            from: start,
            to: now.max(start + Duration::seconds(1)),
        };
        let group = match budget.scope {
            BudgetScope::Workflow => CostGroup::Workflow,
            BudgetScope::Agent => CostGroup::Agent,
            BudgetScope::Customer => CostGroup::Customer,
        };
        spends.push((pair, metrics::cost(ctx, table, &window, group).await?));
    }
    let mut out = Vec::new();
    for budget in budgets {
        let rows = spends
            .iter()
            .find(|(p, _)| *p == (budget.scope, budget.period))
            .map(|(_, rows)| rows.as_slice())
            .unwrap_or_default();
        let spend = rows
            .iter()
            .find(|r| r.key.as_deref() == Some(budget.key.as_str()))
            .map_or(0.0, |r| r.cost_usd);
        let (start, end) = period_bounds(budget.period, now);
        let elapsed_hours = ((now - start).num_milliseconds() as f64 / 3.6e6).max(1.0 / 60.0);
        let left_hours = ((end - now).num_milliseconds() as f64 / 3.6e6).max(0.0);
        let rate = spend / elapsed_hours;
        let projected = spend + rate * left_hours;
        out.push(BudgetStatus {
            name: budget.display_name(),
            scope: budget.scope,
            key: budget.key.clone(),
            period: budget.period,
            period_start: start.to_rfc3339(),
            period_end: end.to_rfc3339(),
            budget_usd: budget.usd,
            spend_usd: spend,
            burn: spend / budget.usd,
            burn_rate_usd_per_hour: rate,
            projected_usd: projected,
            projected_overrun_usd: (projected - budget.usd).max(0.0),
            status: if spend > budget.usd {
                "over"
            } else if projected > budget.usd {
                "at_risk"
            } else {
                "ok"
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let now = at("2026-12-31T15:30:00Z");
        assert_eq!(
            period_bounds(BudgetPeriod::Daily, now),
            (at("2026-12-31T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            period_bounds(BudgetPeriod::Monthly, now),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            period_bounds(BudgetPeriod::Monthly, at("2026-02-10T00:00:00Z")),
            (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
    }
}
