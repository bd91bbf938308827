//! Cost enrichment: every span's inference, tool and review cost, from a versioned price table.
//!
//! ```text
//!  span row ──► explicit cost attribute? ──yes──► that cost wins
//!      │no
//!      ▼
//!  model (response, else request) ──► pattern (user file first; exact, then longest glob)
//!      ──► entry in effect at the span's start ──► tier by input tokens ──► USD
//! ```
//!
//! Token semantics follow OpenTelemetry: input tokens include cached ones and output tokens
//! include reasoning, so each token is priced exactly once at its own rate:
//! `uncached = input - cache_read - cache_write`, `visible = output - reasoning`. (An emitter
//! whose input excludes the cache, which shows as input < cache_read + cache_write, has its
//! input taken as the uncached part rather than clamped to zero.)
//!
//! A model with tokens but no price gets a null cost and is counted as unpriced, never a
//! silent zero. The same [`Pricer`] runs on the flush path and in `runledger reprice`, which
//! recomputes stored spans with the current table: pricing reads only columns and attributes
//! that the span table keeps.

mod table;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use arrow::error::ArrowError;
use runledger_schemas::{col, conventions as conv};
use serde::{Deserialize, Serialize};

use table::Matcher;
pub use table::{PriceTable, Prices, BUILTIN_PRICES};

/// `[pricing]` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// A price file of your own, in the built-in table's format; its entries take precedence.
    pub file: Option<PathBuf>,
    /// USD per hour of human review (`runledger.review.seconds`). Unset: review cost is null.
    pub review_hourly_usd: Option<f64>,
    /// USD per call by tool-name glob, for tool spans without a `runledger.cost.usd` attribute.
    /// Example: `{ "issue_refund" = 0.02, "search_*" = 0.005 }`.
    pub tools: BTreeMap<String, f64>,
}

impl PricingConfig {
    /// Checks the rates and patterns (the file is checked when it is read).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rate) = self.review_hourly_usd {
            if !(rate.is_finite() && rate >= 0.0) {
                return Err(format!(
                    "pricing.review_hourly_usd must be a non-negative number, not {rate}"
                ));
            }
        }
        for (pattern, price) in &self.tools {
            if !(price.is_finite() && *price >= 0.0) {
                return Err(format!(
                    "pricing.tools.{pattern}: the price must be a non-negative number, not {price}"
                ));
            }
            globset::Glob::new(pattern)
                .map_err(|e| format!("pricing.tools: bad pattern `{pattern}`: {e}"))?;
        }
        Ok(())
    }
}

/// Token counts of one span, as the span table holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cached ones included.
    pub input: Option<i64>,
    /// Output tokens, reasoning included.
    pub output: Option<i64>,
    /// Input tokens read from the cache.
    pub cache_read: Option<i64>,
    /// Input tokens written to the cache.
    pub cache_write: Option<i64>,
    /// Output tokens spent on reasoning.
    pub reasoning: Option<i64>,
}

impl Usage {
    /// Whether the span reports any token count at all.
    pub fn any(&self) -> bool {
        self.input.is_some()
            || self.output.is_some()
            || self.cache_read.is_some()
            || self.cache_write.is_some()
            || self.reasoning.is_some()
    }
}

/// What one batch's pricing found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PricingTotals {
    /// Spans whose inference cost came from the price table.
    pub priced: u64,
    /// Spans whose inference cost came from an explicit cost attribute.
    pub explicit: u64,
    /// Spans with token counts but no price for their model (cost left null).
    pub unpriced: u64,
}

/// Prices spans. Built once from config; cheap to share.
#[derive(Debug)]
pub struct Pricer {
    table: PriceTable,
    tools: Matcher<f64>,
    review_hourly_usd: Option<f64>,
    version: Arc<str>,
}

impl Pricer {
    /// The built-in table, the user's file (if configured) and the tool and review rates.
    pub fn new(config: &PricingConfig) -> Result<Self, String> {
        let user = match &config.file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "reading the price file {} (pricing.file): {e}",
                    path.display()
                )
            })?),
            None => None,
        };
        Self::from_parts(BUILTIN_PRICES, user.as_deref(), config)
    }

    /// A pricer from table texts rather than files.
    pub fn from_parts(
        builtin: &str,
        user: Option<&str>,
        config: &PricingConfig,
    ) -> Result<Self, String> {
        config.validate()?;
        let table = PriceTable::parse(builtin, user)?;
        let tools = Matcher::new(config.tools.iter().map(|(p, v)| (p.as_str(), *v)))?;
        // The version names everything that changes a cost: the tables and the rates.
        let mut version = table.version().to_string();
        if !config.tools.is_empty() || config.review_hourly_usd.is_some() {
            let rates = format!("{:?}|{:?}", config.tools, config.review_hourly_usd);
            version.push_str(&format!("+rates-{}", table::short_hash(rates.as_bytes())));
        }
        Ok(Self {
            table,
            tools,
            review_hourly_usd: config.review_hourly_usd,
            version: version.into(),
        })
    }

    /// The `price_version` written with every cost.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The table.
    pub fn table(&self) -> &PriceTable {
        &self.table
    }

    /// The inference cost of `usage` on `model` for a span that started at `start_micros`
    /// (UTC microseconds), or `None` when the model has no price in effect then.
    pub fn inference_cost(&self, model: &str, start_micros: i64, usage: &Usage) -> Option<f64> {
        let prices = self.table.lookup(model, start_micros)?;
        Some(prices.cost(usage))
    }

    /// Recomputes `cost_inference_usd`, `cost_tool_usd`, `cost_review_usd` and
    /// `price_version` of a span-table batch.
    pub fn price_batch(
        &self,
        batch: &RecordBatch,
    ) -> Result<(RecordBatch, PricingTotals), ArrowError> {
        let schema = batch.schema();
        let column = |name: &str| -> Result<&ArrayRef, ArrowError> {
            let index = schema.index_of(name)?;
            Ok(batch.column(index))
        };
        let strings = |name| column(name).map(|c| c.as_string::<i32>());
        let longs = |name| column(name).map(|c| c.as_primitive::<Int64Type>());
        let start = column(col::START_TIME)?.as_primitive::<TimestampMicrosecondType>();
        let request_model = strings(col::REQUEST_MODEL)?;
        let response_model = strings(col::RESPONSE_MODEL)?;
        let operation = strings(col::OPERATION)?;
        let tool_name = strings(col::TOOL_NAME)?;
        let input = longs(col::INPUT_TOKENS)?;
        let output = longs(col::OUTPUT_TOKENS)?;
        let cache_read = longs(col::CACHE_READ_TOKENS)?;
        let cache_write = longs(col::CACHE_WRITE_TOKENS)?;
        let reasoning = longs(col::REASONING_TOKENS)?;
        let attributes = column(col::ATTRIBUTES)?.as_map();
        let keys = attributes.keys().as_string::<i32>();
        let values = attributes.values().as_string::<i32>();
        let offsets = attributes.value_offsets();

        let rows = batch.num_rows();
        let mut inference = Vec::with_capacity(rows);
        let mut tool = Vec::with_capacity(rows);
        let mut review = Vec::with_capacity(rows);
        let mut totals = PricingTotals::default();
        let mut memo: rustc_hash::FxHashMap<&str, Option<usize>> = Default::default();
        let get = |a: &arrow::array::Int64Array, row| (!a.is_null(row)).then(|| a.value(row));
        for row in 0..rows {
            // The attributes that override or add to the table, read in one pass.
            let mut explicit: [Option<f64>; 3] = [None; 3];
            let mut review_seconds = None;
            for entry in offsets[row] as usize..offsets[row + 1] as usize {
                let key = keys.value(entry);
                if let Some(rank) = conv::EXPLICIT_COST_USD.iter().position(|k| *k == key) {
                    explicit[rank] = parse_amount(values, entry);
                } else if key == conv::REVIEW_SECONDS {
                    review_seconds = parse_amount(values, entry);
                }
            }
            let explicit = explicit.into_iter().flatten().next();
            let is_tool = !tool_name.is_null(row)
                || (!operation.is_null(row) && operation.value(row) == "execute_tool");
            let usage = Usage {
                input: get(input, row),
                output: get(output, row),
                cache_read: get(cache_read, row),
                cache_write: get(cache_write, row),
                reasoning: get(reasoning, row),
            };

            let mut inference_cost = None;
            let mut tool_cost = None;
            if is_tool {
                tool_cost = explicit.or_else(|| {
                    (!tool_name.is_null(row))
                        .then(|| self.tools.find(tool_name.value(row)).copied())
                        .flatten()
                });
            } else if let Some(cost) = explicit {
                inference_cost = Some(cost);
                totals.explicit += 1;
            }
            if inference_cost.is_none() && usage.any() {
                let model = [response_model, request_model]
                    .into_iter()
                    .find(|m| !m.is_null(row) && !m.value(row).is_empty())
                    .map(|m| m.value(row));
                let start_micros = start.value(row);
                let priced = model.and_then(|model| {
                    let pattern = *memo
                        .entry(model)
                        .or_insert_with(|| self.table.pattern_of(model));
                    self.table
                        .prices_at(pattern?, start_micros)
                        .map(|p| p.cost(&usage))
                });
                match priced {
                    Some(cost) => {
                        inference_cost = Some(cost);
                        totals.priced += 1;
                    }
                    None => totals.unpriced += 1,
                }
            }
            let review_cost = review_seconds
                .zip(self.review_hourly_usd)
                .map(|(seconds, rate)| seconds * rate / 3600.0);
            inference.push(inference_cost);
            tool.push(tool_cost);
            review.push(review_cost);
        }

        let version: ArrayRef = Arc::new(StringArray::from(vec![Some(&*self.version); rows]));
        let replacements: [(&str, ArrayRef); 4] = [
            (
                col::COST_INFERENCE_USD,
                Arc::new(Float64Array::from(inference)),
            ),
            (col::COST_TOOL_USD, Arc::new(Float64Array::from(tool))),
            (col::COST_REVIEW_USD, Arc::new(Float64Array::from(review))),
            (col::PRICE_VERSION, version),
        ];
        let mut columns = batch.columns().to_vec();
        for (name, array) in replacements {
            columns[schema.index_of(name)?] = array;
        }
        Ok((RecordBatch::try_new(schema, columns)?, totals))
    }
}

/// An amount from an attribute value: a finite, non-negative decimal, else ignored.
fn parse_amount(values: &StringArray, entry: usize) -> Option<f64> {
    if values.is_null(entry) {
        return None;
    }
    let amount: f64 = values.value(entry).trim().parse().ok()?;
    (amount.is_finite() && amount >= 0.0).then_some(amount)
}
