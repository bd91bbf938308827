//! The time window of a request: `from` / `to` in RFC 3339, default the last 30 days.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use runledger_schemas::{col, PARTITION_DATE_FORMAT};

use crate::QueryError;

/// A half-open window `[from, to)` of span start times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// First instant in the window.
    pub from: DateTime<Utc>,
    /// First instant after the window.
    pub to: DateTime<Utc>,
}

impl TimeWindow {
    /// The default window when a request names no bounds.
    pub const DEFAULT_DAYS: i64 = 30;

    /// From the request's optional `from` and `to`, with `now` for the defaults.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, QueryError> {
        let parse = |name: &str, text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    QueryError::BadRequest(format!(
                        "`{name}` must be an RFC 3339 time such as 2026-01-31T00:00:00Z, not `{text}`: {e}"
                    ))
                })
        };
        let to = match to {
            Some(text) => parse("to", text)?,
            None => now,
        };
        let from = match from {
            Some(text) => parse("from", text)?,
            None => to - Duration::days(Self::DEFAULT_DAYS),
        };
        if from >= to {
            return Err(QueryError::BadRequest(format!(
                "`from` ({}) must be before `to` ({})",
                from.to_rfc3339(),
                to.to_rfc3339()
            )));
        }
        Ok(Self { from, to })
    }

    /// A SQL predicate on the span table that selects the window: on the `date` partition
    /// first (so that whole days are pruned without opening a file), then on `start_time`.
    pub fn predicate(&self) -> String {
        let day = |t: DateTime<Utc>| t.format(PARTITION_DATE_FORMAT).to_string();
        let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        format!(
            "{date} >= '{d0}' AND {date} <= '{d1}' AND {start} >= TIMESTAMP '{t0}' AND {start} < TIMESTAMP '{t1}'",
            date = col::DATE,
            start = col::START_TIME,
            d0 = day(self.from),
            d1 = day(self.to),
            t0 = stamp(self.from),
            t1 = stamp(self.to),
        )
    }
}
