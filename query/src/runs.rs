//! Run reconstruction: every span of one run, as a tree, with its totals; and the list of
//! runs behind `GET /api/v1/runs`.
//!
//! A lookup asks the [run index](crate::run_index) which files may hold the run, reads only
//! those (their sort order and statistics narrow the read to the run's row group and pages), and
//! builds the tree in memory:
//! - spans sent twice (a client's retried export) are kept once, by span id;
//! - a run's spans may lie in several hour and day partitions (a long run, a span that
//!   arrived an hour late): the index names every file, whatever its partition;
//! - a span whose parent is not in the run is an orphan: it is shown at the top, and a run
//!   whose root never arrived says so in `coverage`;
//! - the order is depth first, siblings by start time, so a reader sees the chain of
//!   decisions as it happened.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::StringArray;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    RowFilter, RowSelection, RowSelector,
};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::file::metadata::PageIndexPolicy;
use datafusion::prelude::{col, lit, Expr, SessionContext};
use runledger_schemas::{col as c, Tier};
use serde::{Deserialize, Serialize};

use crate::rows::Columns;
use crate::{Lake, QueryError, TimeWindow};

/// Token counts of a span or a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    /// Input tokens (cached ones included).
    pub input: i64,
    /// Output tokens (reasoning included).
    pub output: i64,
    /// Input tokens read from the cache.
    pub cache_read: i64,
    /// Input tokens written to the cache.
    pub cache_write: i64,
    /// Reasoning tokens.
    pub reasoning: i64,
}

impl Tokens {
    fn add(&mut self, other: &Tokens) {
        self.input += other.input;
        self.output += other.output;
        self.cache_read += other.cache_read;
        self.cache_write += other.cache_write;
        self.reasoning += other.reasoning;
    }
}

/// Cost components of a run, USD.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostBreakdown {
    /// Model calls.
    pub inference: f64,
    /// Tool calls.
    pub tool: f64,
    /// Human review.
    pub review: f64,
}

/// Whether the run's tree is whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Whether a root span (one without a parent) arrived.
    pub root: bool,
    /// Spans whose parent is not in the run.
    pub orphans: u64,
}

/// One span of a run, in tree order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanView {
    /// Span id (hex).
    pub span_id: String,
    /// Parent span id (hex); `null` on a root.
    pub parent_span_id: Option<String>,
    /// 0 for a root or an orphan, then 1, 2... down the tree.
    pub depth: u32,
    /// Whether the span's parent is not in the run.
    #[serde(default)]
    pub orphan: bool,
    /// Trace id (hex).
    pub trace_id: String,
    /// Span name.
    pub name: String,
    /// `gen_ai.operation.name` or its fallback.
    pub operation: Option<String>,
    /// Tool name on tool calls.
    pub tool_name: Option<String>,
    /// The model that answered, else the one asked for.
    pub model: Option<String>,
    /// Start, RFC 3339.
    pub start_time: String,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// `unset`, `ok` or `error`.
    pub status: String,
    /// The status message, if any.
    pub status_message: Option<String>,
    /// Error class, if any.
    pub error_type: Option<String>,
    /// `read`, `write` or `none`.
    pub side_effect: Option<String>,
    /// The external side effect's id (refund, ticket, PR).
    pub external_ref: Option<String>,
    /// 0 for a first try, 1.. for retries.
    pub retry_attempt: Option<i64>,
    /// Inference + tool + review cost, USD; `null` when unknown.
    pub cost_usd: Option<f64>,
    /// Token counts.
    pub tokens: Tokens,
    /// Attributes as the tier stores them (redacted in the redacted tier).
    pub attributes: BTreeMap<String, Option<String>>,
    /// Events as stored (a JSON array), if any.
    pub events: Option<serde_json::Value>,
}

/// One run, reconstructed (`GET /api/v1/runs/{run_id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// The run id.
    pub run_id: String,
    /// The tier read.
    pub tier: String,
    /// Workflow (from the root span, else any span that names it).
    pub workflow: Option<String>,
    /// Agent (from the root span, else any span).
    pub agent: Option<String>,
    /// Customer.
    pub customer_id: Option<String>,
    /// success, failure or escalated; `null` while the root has not arrived.
    pub outcome: Option<String>,
    /// First span start, RFC 3339.
    pub start_time: String,
    /// Last span end, RFC 3339.
    pub end_time: String,
    /// end - start, milliseconds.
    pub duration_ms: f64,
    /// Inference + tool + review cost, USD (spans without a price count as zero; see
    /// `unpriced_spans`).
    pub cost_usd: f64,
    /// The cost by component.
    pub cost: CostBreakdown,
    /// Spans with tokens but no price.
    pub unpriced_spans: u64,
    /// Token totals.
    pub tokens: Tokens,
    /// Whether the tree is whole.
    pub coverage: Coverage,
    /// The spans, depth first, siblings by start time.
    pub spans: Vec<SpanView>,
}

/// One line of `GET /api/v1/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run id.
    pub run_id: String,
    /// Workflow.
    pub workflow: Option<String>,
    /// Agent.
    pub agent: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// First span start, RFC 3339.
    pub start_time: String,
    /// end - start, milliseconds.
    pub duration_ms: f64,
    /// Total cost, USD.
    pub cost_usd: f64,
    /// Spans.
    pub spans: u64,
}

impl RunView {
    /// The run's line in a list.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            run_id: self.run_id.clone(),
            workflow: self.workflow.clone(),
            agent: self.agent.clone(),
            outcome: self.outcome.clone(),
            start_time: self.start_time.clone(),
            duration_ms: self.duration_ms,
            cost_usd: self.cost_usd,
            spans: self.spans.len() as u64,
        }
    }
}

fn rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The rows of `files` where the string column `column` equals `value`, read directly with
/// the Parquet reader: row groups whose statistics exclude the value are skipped (files are
/// sorted by run, so a run lies in one or two row groups), the predicate column is decoded
/// for the rest, and the other columns only for the matching rows' pages (the offset index
/// lets the reader skip the others). The footers, page indexes included, are kept in
/// memory per file ([`Lake::footer`]): files are immutable, so they never go stale.
async fn read_matching(
    lake: &Lake,
    files: Vec<PathBuf>,
    column: &'static str,
    value: &str,
    projection: Option<&'static [&'static str]>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let mut out = Vec::new();
    for path in files {
        let cached = lake.footer(&path);
        let wanted = value.to_string();
        let (batches, footer) = tokio::task::spawn_blocking(move || {
            read_file_matching(&path, cached, column, &wanted, projection)
                .map(|(b, m)| (b, (path, m)))
        })
        .await
        .map_err(|e| QueryError::Index(format!("run read task failed: {e}")))??;
        lake.store_footer(footer.0, footer.1);
        out.extend(batches);
    }
    Ok(out)
}

fn read_file_matching(
    path: &std::path::Path,
    cached: Option<ArrowReaderMetadata>,
    column: &str,
    value: &str,
    projection: Option<&[&str]>,
) -> Result<(Vec<RecordBatch>, ArrowReaderMetadata), QueryError> {
    let fail =
        |e: &dyn std::fmt::Display| QueryError::Index(format!("reading {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    let metadata = match cached {
        Some(m) => m,
        None => ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )
        .map_err(|e| fail(&e))?,
    };
    let schema = metadata.metadata().file_metadata().schema_descr_ptr();
    let leaf =
        |name: &str| (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == name);
    let Some(key) = leaf(column) else {
        return Ok((Vec::new(), metadata));
    };
    let needle = value.as_bytes();
    let row_groups: Vec<usize> = metadata
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| {
            let Some(stats) = rg.column(key).statistics() else {
                return true;
            };
            let below = stats.min_bytes_opt().is_some_and(|min| needle < min);
            let above = stats.max_bytes_opt().is_some_and(|max| needle > max);
            !(below || above)
        })
        .map(|(i, _)| i)
        .collect();
    if row_groups.is_empty() {
        return Ok((Vec::new(), metadata));
    }
    let selection = page_selection(metadata.metadata(), &row_groups, key, needle);
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
        .with_row_groups(row_groups)
        .with_row_selection(selection)
        .with_batch_size(8192);
    if let Some(columns) = projection {
        let roots: Vec<usize> = (0..schema.root_schema().get_fields().len())
            .filter(|&i| columns.contains(&schema.root_schema().get_fields()[i].name()))
            .collect();
        builder = builder.with_projection(ProjectionMask::roots(&schema, roots));
    }
    let target = StringArray::new_scalar(value);
    let predicate = ArrowPredicateFn::new(ProjectionMask::leaves(&schema, [key]), move |batch| {
        let values = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
        datafusion::arrow::compute::kernels::cmp::eq(&values, &target)
    });
    let reader = builder
        .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
        .build()
        .map_err(|e| fail(&e))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect();
    Ok((batches, metadata))
}

/// The columns a run view shows: a lookup decodes no other (resource and scope attributes,
/// links, redaction counts stay on disk).
const RUN_COLUMNS: &[&str] = &[
    c::RUN_ID,
    c::TRACE_ID,
    c::SPAN_ID,
    c::PARENT_SPAN_ID,
    c::START_TIME,
    c::END_TIME,
    c::DURATION_NS,
    c::NAME,
    c::STATUS_CODE,
    c::STATUS_MESSAGE,
    c::ERROR_TYPE,
    c::AGENT_NAME,
    c::WORKFLOW,
    c::CUSTOMER_ID,
    c::OPERATION,
    c::REQUEST_MODEL,
    c::RESPONSE_MODEL,
    c::TOOL_NAME,
    c::SIDE_EFFECT,
    c::EXTERNAL_REF,
    c::RETRY_ATTEMPT,
    c::OUTCOME,
    c::INPUT_TOKENS,
    c::OUTPUT_TOKENS,
    c::CACHE_READ_TOKENS,
    c::CACHE_WRITE_TOKENS,
    c::REASONING_TOKENS,
    c::COST_INFERENCE_USD,
    c::COST_TOOL_USD,
    c::COST_REVIEW_USD,
    c::ATTRIBUTES,
    c::EVENTS,
    c::RECEIVED_AT,
];

/// The rows of the chosen row groups that lie in a page of the key column whose min/max (the
/// column index) may hold `needle`: the pages of one run in a file sorted by run. Row groups
/// without a page index are read whole.
fn page_selection(
    metadata: &datafusion::parquet::file::metadata::ParquetMetaData,
    row_groups: &[usize],
    key: usize,
    needle: &[u8],
) -> RowSelection {
    use datafusion::parquet::file::page_index::column_index::ColumnIndexMetaData;
    let mut selectors: Vec<RowSelector> = Vec::new();
    for &rg in row_groups {
        let rows = metadata.row_group(rg).num_rows().max(0) as usize;
        let pages = metadata
            .column_index()
            .and_then(|c| c.get(rg))
            .and_then(|c| c.get(key))
            .zip(
                metadata
                    .offset_index()
                    .and_then(|o| o.get(rg))
                    .and_then(|o| o.get(key)),
            );
        let Some((ColumnIndexMetaData::BYTE_ARRAY(index), offsets)) = pages else {
            selectors.push(RowSelector::select(rows));
            continue;
        };
        let locations = offsets.page_locations();
        for (page, location) in locations.iter().enumerate() {
            let first = location.first_row_index.max(0) as usize;
            let end = locations
                .get(page + 1)
                .map_or(rows, |next| next.first_row_index.max(0) as usize);
            let below = index.min_value(page).is_some_and(|min| needle < min);
            let above = index.max_value(page).is_some_and(|max| needle > max);
            let count = end.saturating_sub(first);
            selectors.push(if below || above {
                RowSelector::skip(count)
            } else {
                RowSelector::select(count)
            });
        }
    }
    RowSelection::from(selectors)
}

/// The run `run_id` from `tier`, or `None` when no span of it is stored.
pub async fn lookup(lake: &Lake, tier: Tier, run_id: &str) -> Result<Option<RunView>, QueryError> {
    let started = std::time::Instant::now();
    let files = lake
        .run_index(tier, |index| index.files_with_run(run_id))
        .await?;
    let candidates = files.len();
    let indexed = started.elapsed();
    let batches = read_matching(lake, files, c::RUN_ID, run_id, Some(RUN_COLUMNS)).await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    tracing::debug!(
        run_id,
        tier = %tier,
        candidate_files = candidates,
        rows,
        index_ms = indexed.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "run lookup"
    );
    build_run(run_id, tier, &batches)
}

/// The ids of the runs that left external ref `external_ref` (usually one).
pub async fn runs_with_ref(
    lake: &Lake,
    tier: Tier,
    external_ref: &str,
) -> Result<Vec<String>, QueryError> {
    let files = lake
        .run_index(tier, |index| index.files_with_ref(external_ref))
        .await?;
    let batches = read_matching(
        lake,
        files,
        c::EXTERNAL_REF,
        external_ref,
        Some(&[c::RUN_ID]),
    )
    .await?;
    let mut ids = Vec::new();
    for batch in &batches {
        let cols = Columns::new(batch);
        let run_ids = cols.string(c::RUN_ID)?;
        for row in 0..batch.num_rows() {
            if let Some(id) = run_ids.str(row) {
                ids.push(id.to_string());
            }
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

struct Row {
    span: SpanView,
    start_micros: i64,
    end_micros: i64,
    received_micros: i64,
    workflow: Option<String>,
    agent: Option<String>,
    customer: Option<String>,
    outcome: Option<String>,
    cost: CostBreakdown,
    unpriced: bool,
}

fn attributes_of(batch: &RecordBatch, row: usize) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let Some(column) = batch.column_by_name(c::ATTRIBUTES) else {
        return out;
    };
    let DataType::Map(_, _) = column.data_type() else {
        return out;
    };
    let map = column.as_map();
    if map.is_null(row) {
        return out;
    }
    let entries = map.value(row);
    let keys = datafusion::arrow::compute::cast(entries.column(0), &DataType::Utf8);
    let values = datafusion::arrow::compute::cast(entries.column(1), &DataType::Utf8);
    if let (Ok(keys), Ok(values)) = (keys, values) {
        let (keys, values) = (keys.as_string::<i32>(), values.as_string::<i32>());
        for i in 0..keys.len() {
            let value = (!values.is_null(i)).then(|| values.value(i).to_string());
            out.insert(keys.value(i).to_string(), value);
        }
    }
    out
}

fn rows_of(batches: &[RecordBatch]) -> Result<Vec<Row>, QueryError> {
    let mut rows = Vec::new();
    for batch in batches {
        let k = Columns::new(batch);
        let (span_id, parent, trace, name) = (
            k.string(c::SPAN_ID)?,
            k.string(c::PARENT_SPAN_ID)?,
            k.string(c::TRACE_ID)?,
            k.string(c::NAME)?,
        );
        let (start, end, received) = (
            k.micros(c::START_TIME)?,
            k.micros(c::END_TIME)?,
            k.micros(c::RECEIVED_AT)?,
        );
        let duration = k.int(c::DURATION_NS)?;
        let (operation, tool, request_model, response_model) = (
            k.string(c::OPERATION)?,
            k.string(c::TOOL_NAME)?,
            k.string(c::REQUEST_MODEL)?,
            k.string(c::RESPONSE_MODEL)?,
        );
        let (status, status_message, error_type, side_effect, external_ref) = (
            k.string(c::STATUS_CODE)?,
            k.string(c::STATUS_MESSAGE)?,
            k.string(c::ERROR_TYPE)?,
            k.string(c::SIDE_EFFECT)?,
            k.string(c::EXTERNAL_REF)?,
        );
        let retry = k.int(c::RETRY_ATTEMPT)?;
        let (input, output, cache_read, cache_write, reasoning) = (
            k.int(c::INPUT_TOKENS)?,
            k.int(c::OUTPUT_TOKENS)?,
            k.int(c::CACHE_READ_TOKENS)?,
            k.int(c::CACHE_WRITE_TOKENS)?,
            k.int(c::REASONING_TOKENS)?,
        );
        let (inference, tool_cost, review) = (
            k.float(c::COST_INFERENCE_USD)?,
            k.float(c::COST_TOOL_USD)?,
            k.float(c::COST_REVIEW_USD)?,
        );
        let (workflow, agent, customer, outcome, events) = (
            k.string(c::WORKFLOW)?,
            k.string(c::AGENT_NAME)?,
            k.string(c::CUSTOMER_ID)?,
            k.string(c::OUTCOME)?,
            k.string(c::EVENTS)?,
        );
        let owned = |col: &crate::rows::Column, i: usize| col.str(i).map(str::to_string);
        for i in 0..batch.num_rows() {
            let parts = [inference.f64(i), tool_cost.f64(i), review.f64(i)];
            let cost_usd = parts.iter().flatten().copied().reduce(|a, b| a + b);
            let tokens = Tokens {
                input: input.i64(i).unwrap_or(0),
                output: output.i64(i).unwrap_or(0),
                cache_read: cache_read.i64(i).unwrap_or(0),
                cache_write: cache_write.i64(i).unwrap_or(0),
                reasoning: reasoning.i64(i).unwrap_or(0),
            };
            let has_tokens = input.i64(i).is_some() || output.i64(i).is_some();
            let start_micros = start.i64(i).unwrap_or(0);
            rows.push(Row {
                span: SpanView {
                    span_id: owned(&span_id, i).unwrap_or_default(),
                    parent_span_id: owned(&parent, i),
                    depth: 0,
                    orphan: false,
                    trace_id: owned(&trace, i).unwrap_or_default(),
                    name: owned(&name, i).unwrap_or_default(),
                    operation: owned(&operation, i),
                    tool_name: owned(&tool, i),
                    model: owned(&response_model, i).or_else(|| owned(&request_model, i)),
                    start_time: rfc3339(start_micros),
                    duration_ms: duration.i64(i).unwrap_or(0) as f64 / 1e6,
                    status: owned(&status, i).unwrap_or_default(),
                    status_message: owned(&status_message, i),
                    error_type: owned(&error_type, i),
                    side_effect: owned(&side_effect, i),
                    external_ref: owned(&external_ref, i),
                    retry_attempt: retry.i64(i),
                    cost_usd,
                    tokens,
                    attributes: attributes_of(batch, i),
                    events: events.str(i).map(|text| {
                        serde_json::from_str(text)
                            .unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
                    }),
                },
                start_micros,
                end_micros: end.i64(i).unwrap_or(start_micros),
                received_micros: received.i64(i).unwrap_or(0),
                workflow: owned(&workflow, i),
                agent: owned(&agent, i),
                customer: owned(&customer, i),
                outcome: owned(&outcome, i),
                cost: CostBreakdown {
                    inference: parts[0].unwrap_or(0.0),
                    tool: parts[1].unwrap_or(0.0),
                    review: parts[2].unwrap_or(0.0),
                },
                unpriced: has_tokens && parts[0].is_none(),
            });
        }
    }
    Ok(rows)
}

/// Builds the run from its rows (in any order, possibly with repeated spans).
pub fn build_run(
    run_id: &str,
    tier: Tier,
    batches: &[RecordBatch],
) -> Result<Option<RunView>, QueryError> {
    let mut rows = rows_of(batches)?;
    if rows.is_empty() {
        return Ok(None);
    }
    // One row per span id: the first that arrived.
    rows.sort_by(|a, b| {
        (a.span.span_id.as_str(), a.received_micros)
            .cmp(&(b.span.span_id.as_str(), b.received_micros))
    });
    rows.dedup_by(|later, first| later.span.span_id == first.span.span_id);

    let ids: HashSet<&str> = rows.iter().map(|r| r.span.span_id.as_str()).collect();
    let is_root = |r: &Row| r.span.parent_span_id.is_none();
    let orphan = |r: &Row| {
        r.span
            .parent_span_id
            .as_deref()
            .is_some_and(|p| !ids.contains(p))
    };
    let by_start = |a: &usize, b: &usize, rows: &[Row]| {
        (rows[*a].start_micros, &rows[*a].span.span_id)
            .cmp(&(rows[*b].start_micros, &rows[*b].span.span_id))
    };
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    let mut orphans = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if is_root(row) {
            roots.push(i);
        } else if orphan(row) {
            orphans.push(i);
        } else if let Some(parent) = row.span.parent_span_id.as_deref() {
            children.entry(parent).or_default().push(i);
        }
    }
    roots.sort_by(|a, b| by_start(a, b, &rows));
    orphans.sort_by(|a, b| by_start(a, b, &rows));
    for list in children.values_mut() {
        list.sort_by(|a, b| by_start(a, b, &rows));
    }

    // Depth first from the roots, then from the orphans; spans in a parent cycle (which no
    // walk from a root reaches) are shown as orphans after them.
    let mut order: Vec<(usize, u32, bool)> = Vec::with_capacity(rows.len());
    let mut visited = vec![false; rows.len()];
    let walk = |top: usize,
                is_orphan: bool,
                visited: &mut Vec<bool>,
                order: &mut Vec<(usize, u32, bool)>| {
        let mut stack = vec![(top, 0u32)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut visited[i], true) {
                continue;
            }
            order.push((i, depth, is_orphan && depth == 0));
            if let Some(kids) = children.get(rows[i].span.span_id.as_str()) {
                for &kid in kids.iter().rev() {
                    stack.push((kid, depth + 1));
                }
            }
        }
    };
    for &i in &roots {
        walk(i, false, &mut visited, &mut order);
    }
    for &i in &orphans {
        walk(i, true, &mut visited, &mut order);
    }
    let mut unreached: Vec<usize> = (0..rows.len()).filter(|i| !visited[*i]).collect();
    unreached.sort_by(|a, b| by_start(a, b, &rows));
    let mut cycle_orphans = 0u64;
    for i in unreached {
        if !visited[i] {
            cycle_orphans += 1;
            walk(i, true, &mut visited, &mut order);
        }
    }

    let pick = |field: fn(&Row) -> &Option<String>| {
        rows.iter()
            .filter(|r| is_root(r))
            .find_map(|r| field(r).clone())
            .or_else(|| rows.iter().filter_map(|r| field(r).clone()).max())
    };
    let workflow = pick(|r| &r.workflow);
    let agent = pick(|r| &r.agent);
    let outcome = pick(|r| &r.outcome);
    let customer_id = rows.iter().filter_map(|r| r.customer.clone()).max();
    let start = rows.iter().map(|r| r.start_micros).min().unwrap_or(0);
    let end = rows.iter().map(|r| r.end_micros).max().unwrap_or(start);
    let mut cost = CostBreakdown::default();
    let mut tokens = Tokens::default();
    let mut unpriced_spans = 0;
    for row in &rows {
        cost.inference += row.cost.inference;
        cost.tool += row.cost.tool;
        cost.review += row.cost.review;
        tokens.add(&row.span.tokens);
        unpriced_spans += u64::from(row.unpriced);
    }
    let coverage = Coverage {
        root: !roots.is_empty(),
        orphans: orphans.len() as u64 + cycle_orphans,
    };
    let mut slots: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
    let spans = order
        .into_iter()
        .filter_map(|(i, depth, is_orphan)| {
            let mut span = slots[i].take()?.span;
            span.depth = depth;
            span.orphan = is_orphan;
            Some(span)
        })
        .collect();
    Ok(Some(RunView {
        run_id: run_id.to_string(),
        tier: tier.as_str().to_string(),
        workflow,
        agent,
        customer_id,
        outcome,
        start_time: rfc3339(start),
        end_time: rfc3339(end),
        duration_ms: (end - start) as f64 / 1000.0,
        cost_usd: cost.inference + cost.tool + cost.review,
        cost,
        unpriced_spans,
        tokens,
        coverage,
        spans,
    }))
}

/// The filters of `GET /api/v1/runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Workflow equals.
    pub workflow: Option<String>,
    /// Agent equals.
    pub agent: Option<String>,
    /// Customer equals.
    pub customer: Option<String>,
    /// Outcome equals (`none` for runs without one).
    pub outcome: Option<String>,
    /// The run left this external ref.
    pub external_ref: Option<String>,
    /// Total cost at least this, USD.
    pub min_cost: Option<f64>,
}

/// A position in the list: runs strictly after it (older start, or same start and smaller
/// id) come next. New runs start later than the cursor, so paging is stable while data
/// arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Start time of the last run returned, microseconds since the epoch.
    pub start_micros: i64,
    /// Its id.
    pub run_id: String,
}

impl Cursor {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}:{}", self.start_micros, self.run_id))
    }

    /// Parses the text form.
    pub fn decode(text: &str) -> Result<Self, QueryError> {
        use base64::Engine as _;
        let bad =
            || QueryError::BadRequest(format!("`cursor` is not one this API returned: `{text}`"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (micros, run_id) = text.split_once(':').ok_or_else(bad)?;
        Ok(Self {
            start_micros: micros.parse().map_err(|_| bad())?,
            run_id: run_id.to_string(),
        })
    }

    fn admits(&self, start_micros: i64, run_id: &str) -> bool {
        start_micros < self.start_micros
            || (start_micros == self.start_micros && run_id < self.run_id.as_str())
    }
}

/// A page of runs, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct RunsPage {
    /// The runs.
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

fn micros_of(rfc: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc)
        .map(|t| t.timestamp_micros())
        .unwrap_or(0)
}

/// The runs that match `filter`, newest first, `limit` per page. With a `ref`, the run index
/// finds the runs and `window` applies only if `explicit_window`; without, the runs with a
/// span in `window` are listed.
pub async fn list(
    lake: &Lake,
    filter: &RunFilter,
    window: &TimeWindow,
    explicit_window: bool,
    limit: usize,
    cursor: Option<&Cursor>,
) -> Result<RunsPage, QueryError> {
    let mut runs = match &filter.external_ref {
        Some(external_ref) => {
            let mut out = Vec::new();
            for run_id in runs_with_ref(lake, Tier::Redacted, external_ref).await? {
                if let Some(run) = lookup(lake, Tier::Redacted, &run_id).await? {
                    let start = micros_of(&run.start_time);
                    let in_window = !explicit_window
                        || (start >= window.from.timestamp_micros()
                            && start < window.to.timestamp_micros());
                    let keep = in_window
                        && matches(&filter.workflow, &run.workflow)
                        && matches(&filter.agent, &run.agent)
                        && matches(&filter.customer, &run.customer_id)
                        && matches_outcome(&filter.outcome, &run.outcome)
                        && filter.min_cost.is_none_or(|m| run.cost_usd >= m)
                        && cursor.is_none_or(|c| c.admits(start, &run.run_id));
                    if keep {
                        out.push(run.summary());
                    }
                }
            }
            out.sort_by(|a, b| {
                (micros_of(&b.start_time), &b.run_id).cmp(&(micros_of(&a.start_time), &a.run_id))
            });
            out.truncate(limit + 1);
            out
        }
        None => list_window(lake, filter, window, limit, cursor).await?,
    };
    let next_cursor = if runs.len() > limit {
        runs.truncate(limit);
        runs.last().map(|last| {
            Cursor {
                start_micros: micros_of(&last.start_time),
                run_id: last.run_id.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    Ok(RunsPage { runs, next_cursor })
}

fn matches(wanted: &Option<String>, actual: &Option<String>) -> bool {
    wanted.is_none() || wanted == actual
}

fn matches_outcome(wanted: &Option<String>, actual: &Option<String>) -> bool {
    match wanted.as_deref() {
        None => true,
        Some("none") => actual.is_none(),
        Some(w) => actual.as_deref() == Some(w),
    }
}

/// Up to `limit + 1` runs of the window from the `runs` view, newest first.
async fn list_window(
    lake: &Lake,
    filter: &RunFilter,
    window: &TimeWindow,
    limit: usize,
    cursor: Option<&Cursor>,
) -> Result<Vec<RunSummary>, QueryError> {
    let (ctx, _) = lake.session(false).await?;
    let sql = crate::metrics::with_runs(
        crate::lake::SPANS,
        &window.predicate(),
        "SELECT run_id, workflow, agent_name, customer_id, outcome, start_time, end_time,
           coalesce(cost_inference_usd, 0) + coalesce(cost_tool_usd, 0) + coalesce(cost_review_usd, 0) AS cost_usd,
           spans
         FROM runs",
    );
    let mut frame = ctx.sql(&sql).await?;
    let eq = |column: &str, value: &Option<String>| -> Option<Expr> {
        value.as_ref().map(|v| col(column).eq(lit(v.clone())))
    };
    let mut conditions: Vec<Expr> = [
        eq("workflow", &filter.workflow),
        eq("agent_name", &filter.agent),
        eq("customer_id", &filter.customer),
    ]
    .into_iter()
    .flatten()
    .collect();
    match filter.outcome.as_deref() {
        None => {}
        Some("none") => conditions.push(col("outcome").is_null()),
        Some(outcome) => conditions.push(col("outcome").eq(lit(outcome))),
    }
    if let Some(min) = filter.min_cost {
        conditions.push(col("cost_usd").gt_eq(lit(min)));
    }
    if let Some(cursor) = cursor {
        let at = lit(ScalarValue::TimestampMicrosecond(
            Some(cursor.start_micros),
            Some("UTC".into()),
        ));
        conditions.push(
            col("start_time").lt(at.clone()).or(col("start_time")
                .eq(at)
                .and(col("run_id").lt(lit(cursor.run_id.clone())))),
        );
    }
    if let Some(all) = conditions.into_iter().reduce(Expr::and) {
        frame = frame.filter(all)?;
    }
    let frame = frame
        .sort(vec![
            col("start_time").sort(false, false),
            col("run_id").sort(false, false),
        ])?
        .limit(0, Some(limit + 1))?;
    let batches = frame.collect().await?;
    let mut out = Vec::new();
    for batch in &batches {
        let k = Columns::new(batch);
        let (run_id, workflow, agent, outcome) = (
            k.string("run_id")?,
            k.string("workflow")?,
            k.string("agent_name")?,
            k.string("outcome")?,
        );
        let (start, end, cost, spans) = (
            k.micros("start_time")?,
            k.micros("end_time")?,
            k.float("cost_usd")?,
            k.int("spans")?,
        );
        for i in 0..batch.num_rows() {
            let s = start.i64(i).unwrap_or(0);
            out.push(RunSummary {
                run_id: run_id.str(i).unwrap_or_default().to_string(),
                workflow: workflow.str(i).map(str::to_string),
                agent: agent.str(i).map(str::to_string),
                outcome: outcome.str(i).map(str::to_string),
                start_time: rfc3339(s),
                duration_ms: (end.i64(i).unwrap_or(s) - s) as f64 / 1000.0,
                cost_usd: cost.f64(i).unwrap_or(0.0),
                spans: spans.count(i),
            });
        }
    }
    Ok(out)
}

/// A run whose tool calls, retries or cost are far above its workflow's norm
/// (`GET /api/v1/runs/runaway`): the signature of an agent stuck in a loop.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunawayRun {
    /// The run.
    pub run_id: String,
    /// Its workflow.
    pub workflow: Option<String>,
    /// Its agent.
    pub agent: Option<String>,
    /// Its outcome.
    pub outcome: Option<String>,
    /// First span start, RFC 3339.
    pub start_time: String,
    /// Total cost, USD.
    pub cost_usd: f64,
    /// Tool calls.
    pub tool_calls: u64,
    /// Retried tool calls.
    pub retries: u64,
    /// The workflow's median run cost in the window.
    pub median_cost_usd: f64,
    /// The workflow's median tool calls per run.
    pub median_tool_calls: f64,
    /// The workflow's median retries per run.
    pub median_retries: f64,
    /// Which limits it passed, e.g. `tool_calls 48 vs median 6`.
    pub reasons: Vec<String>,
}

/// How far above its workflow's median a run must be to count as runaway. A run is flagged
/// when any of these holds, among workflows with at least `MIN_RUNS` runs in the window:
/// tool calls >= max(5 x median, median + 20); retries >= max(5 x median, median + 10);
/// cost >= 10 x median and at least 1 USD.
pub const RUNAWAY_MIN_RUNS: u64 = 20;

/// The runaway runs of the window, costliest first.
pub async fn runaway(
    ctx: &SessionContext,
    table: &str,
    window: &TimeWindow,
    limit: usize,
) -> Result<Vec<RunawayRun>, QueryError> {
    // The runs are computed once and kept (a few columns a run): the norms and the runs
    // measured against them both read them, and a CTE named twice would compute them twice.
    let costed = crate::metrics::with_runs(
        table,
        &window.predicate(),
        "SELECT run_id, workflow, agent_name, outcome, start_time, tool_calls, retries,
           coalesce(cost_inference_usd, 0) + coalesce(cost_tool_usd, 0) + coalesce(cost_review_usd, 0) AS cost
         FROM runs WHERE workflow IS NOT NULL",
    );
    let frame = ctx.sql(&costed).await?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let rows = frame.collect().await?;
    let runs = datafusion::datasource::MemTable::try_new(schema, vec![rows])?;
    ctx.register_table("costed", Arc::new(runs))?;
    let sql = format!(
        "WITH norms AS (
           SELECT workflow AS norm_workflow, count(*) AS n,
             CAST(approx_median(cost) AS DOUBLE) AS med_cost,
             CAST(approx_median(CAST(tool_calls AS DOUBLE)) AS DOUBLE) AS med_tools,
             CAST(approx_median(CAST(retries AS DOUBLE)) AS DOUBLE) AS med_retries
           FROM costed GROUP BY workflow
         )
         SELECT r.run_id, r.workflow, r.agent_name, r.outcome, r.start_time, r.cost,
           r.tool_calls, r.retries, n.med_cost, n.med_tools, n.med_retries
         FROM costed r JOIN norms n ON r.workflow = n.norm_workflow
         WHERE n.n >= {RUNAWAY_MIN_RUNS} AND (
           r.tool_calls >= greatest(5 * n.med_tools, n.med_tools + 20)
           OR r.retries >= greatest(5 * n.med_retries, n.med_retries + 10)
           OR (r.cost >= 10 * n.med_cost AND r.cost >= 1.0))
         ORDER BY r.cost DESC, r.run_id
         LIMIT {limit}"
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut out = Vec::new();
    for batch in &batches {
        let k = Columns::new(batch);
        let (run_id, workflow, agent, outcome, start) = (
            k.string("run_id")?,
            k.string("workflow")?,
            k.string("agent_name")?,
            k.string("outcome")?,
            k.micros("start_time")?,
        );
        let (cost, tools, retries) = (k.float("cost")?, k.int("tool_calls")?, k.int("retries")?);
        let (med_cost, med_tools, med_retries) = (
            k.float("med_cost")?,
            k.float("med_tools")?,
            k.float("med_retries")?,
        );
        for i in 0..batch.num_rows() {
            let (c, t, r) = (cost.f64(i).unwrap_or(0.0), tools.count(i), retries.count(i));
            let (mc, mt, mr) = (
                med_cost.f64(i).unwrap_or(0.0),
                med_tools.f64(i).unwrap_or(0.0),
                med_retries.f64(i).unwrap_or(0.0),
            );
            let mut reasons = Vec::new();
            if t as f64 >= (5.0 * mt).max(mt + 20.0) {
                reasons.push(format!("tool_calls {t} vs median {mt}"));
            }
            if r as f64 >= (5.0 * mr).max(mr + 10.0) {
                reasons.push(format!("retries {r} vs median {mr}"));
            }
            if c >= 10.0 * mc && c >= 1.0 {
                reasons.push(format!("cost ${c:.2} vs median ${mc:.4}"));
            }
            out.push(RunawayRun {
                run_id: run_id.str(i).unwrap_or_default().to_string(),
                workflow: workflow.str(i).map(str::to_string),
                agent: agent.str(i).map(str::to_string),
                outcome: outcome.str(i).map(str::to_string),
                start_time: rfc3339(start.i64(i).unwrap_or(0)),
                cost_usd: c,
                tool_calls: t,
                retries: r,
                median_cost_usd: mc,
                median_tool_calls: mt,
                median_retries: mr,
                reasons,
            });
        }
    }
    Ok(out)
}
