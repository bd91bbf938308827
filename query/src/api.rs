//! The HTTP API on `--api-addr`: metrics as JSON (and CSV), role-scoped by bearer token.
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz`, `GET /api/v1/openapi.json` | none |
//! | `GET /api/v1/whoami` | any |
//! | `GET /api/v1/workflows`, `/cost`, `/workflows/{workflow}/gates`, `/tools`, `/agents/capabilities` | finance |
//! | `GET /api/v1/runs`, `GET /api/v1/runs/{run_id}` | oncall |
//! | `GET /api/v1/runs/{run_id}?tier=raw` | raw (the read is audited) |
//! | `POST /api/v1/sql`, `GET /api/v1/audit` | admin |
//!
//! Roles are ordered (finance < oncall < raw < admin): each reads what the one before reads.
//! No token or an unknown one is 401, a known token with too small a role is 403. Bad
//! parameters are 400 with `{"error": "..."}` saying what to fix.

pub mod audit;
pub mod auth;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use datafusion::prelude::SessionContext;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::lake::SPANS;
use crate::metrics::{self, CostGroup};
use crate::runs::{self, Cursor, RunFilter};
use crate::{ApiConfig, GatesConfig, Lake, QueryError, Role, TimeWindow};
use audit::{AuditEntry, AuditLog};
pub use auth::{load_or_create_admin_token, Principal, Tokens};
use runledger_schemas::Tier;

/// The OpenAPI document of this API (`schemas/openapi.json`).
pub const OPENAPI: &str = include_str!("../../schemas/openapi.json");

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// The lake.
    pub lake: Arc<Lake>,
    /// Who may read what.
    pub tokens: Tokens,
    /// Graduation thresholds.
    pub gates: GatesConfig,
    /// Limits of ad-hoc SQL.
    pub sql_timeout: Duration,
    /// Row limit of ad-hoc SQL.
    pub sql_max_rows: usize,
    /// Who read what from the raw tier.
    pub audit: AuditLog,
}

impl ApiState {
    /// State from config; `tokens` already include a generated admin token if any.
    pub fn new(lake: Arc<Lake>, api: &ApiConfig, tokens: Tokens, gates: GatesConfig) -> Self {
        Self {
            audit: AuditLog::new(lake.data_dir()),
            lake,
            tokens,
            gates,
            sql_timeout: api.sql_time_limit(),
            sql_max_rows: api.sql_max_rows,
        }
    }
}

type Shared = Arc<ApiState>;

/// An error answer: a status and a message, as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status = match &e {
            QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::NoTier(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "API query failed");
        }
        Self::new(status, e.to_string())
    }
}

impl From<datafusion::error::DataFusionError> for ApiError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        QueryError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"runledger\""),
            );
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl ApiState {
    /// The principal of a request if its role is at least `needed`: 401 without a known
    /// token, 403 with too small a role.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        needed: Role,
    ) -> ApiResult<Principal> {
        let Some(token) = auth::presented_token(headers, query) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required: `Authorization: Bearer <token>`",
            ));
        };
        let Some(principal) = self.tokens.principal(token) else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"));
        };
        if principal.role < needed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the {} role cannot read this: it needs the {needed} role or above",
                    principal.role
                ),
            ));
        }
        Ok(principal)
    }
}

/// Query parameters, parsed strictly: an unknown parameter is a 400 that names it.
fn params(query: Option<&str>, allowed: &[&str]) -> ApiResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("bad URL encoding in `{pair}`"),
                )
            })
        };
        let (key, value) = (decode(key)?, decode(value)?);
        if key == "token" {
            continue;
        }
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown parameter `{key}`; this route takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        out.insert(key, value);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn window(p: &BTreeMap<String, String>) -> ApiResult<TimeWindow> {
    Ok(TimeWindow::parse(
        p.get("from").map(String::as_str),
        p.get("to").map(String::as_str),
        chrono::Utc::now(),
    )?)
}

/// The routes of the API, each with its method: the router is built from this list and a
/// test checks it against the OpenAPI document.
pub fn api_routes() -> Vec<(&'static str, &'static str, MethodRouter<Shared>)> {
    vec![
        ("GET", "/healthz", get(health)),
        ("GET", "/api/v1/openapi.json", get(openapi)),
        ("GET", "/api/v1/whoami", get(whoami)),
        ("GET", "/api/v1/workflows", get(workflows)),
        ("GET", "/api/v1/workflows/{workflow}/gates", get(gates)),
        ("GET", "/api/v1/cost", get(cost)),
        ("GET", "/api/v1/tools", get(tools)),
        ("GET", "/api/v1/agents/capabilities", get(capabilities)),
        ("GET", "/api/v1/runs", get(list_runs)),
        ("GET", "/api/v1/runs/{run_id}", get(run)),
        ("GET", "/api/v1/audit", get(audit_log)),
        ("POST", "/api/v1/sql", post(sql)),
    ]
}

/// The API router over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    let mut router: Router<Shared> = Router::new();
    for (_, path, method_router) in api_routes() {
        router = router.route(path, method_router);
    }
    router
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route: see /api/v1/openapi.json",
            )
        })
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn whoami(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let who = state.authorize(&headers, q.as_deref(), Role::Finance)?;
    Ok(Json(json!({"role": who.role, "name": who.name})))
}

/// An aggregate request, checked: the caller may read aggregates, every parameter is `from`,
/// `to` or one of `extra`. Returns the parameters, the window they name, and a session
/// over the redacted tier.
async fn aggregate_request(
    state: &ApiState,
    headers: &HeaderMap,
    query: Option<&str>,
    extra: &[&str],
) -> ApiResult<(BTreeMap<String, String>, TimeWindow, SessionContext)> {
    state.authorize(headers, query, Role::Finance)?;
    let allowed: Vec<&str> = ["from", "to"].iter().chain(extra).copied().collect();
    let p = params(query, &allowed)?;
    let window = window(&p)?;
    let (ctx, _) = state.lake.session(false).await?;
    Ok((p, window, ctx))
}

/// `{"from", "to", key: rows}`.
fn windowed(window: &TimeWindow, key: &str, rows: impl serde::Serialize) -> Json<Value> {
    let mut body = json!({"from": window.from.to_rfc3339(), "to": window.to.to_rfc3339()});
    body[key] = json!(rows);
    Json(body)
}

async fn workflows(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let (_, window, ctx) = aggregate_request(&state, &headers, q.as_deref(), &[]).await?;
    let rows = metrics::workflows(&ctx, SPANS, &window).await?;
    Ok(windowed(&window, "workflows", rows))
}

async fn gates(
    State(state): State<Shared>,
    Path(workflow): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let (_, window, ctx) = aggregate_request(&state, &headers, q.as_deref(), &[]).await?;
    let all = metrics::workflows(&ctx, SPANS, &window).await?;
    let measured = all
        .iter()
        .find(|m| m.workflow.as_deref() == Some(workflow.as_str()));
    if measured.is_none() && !state.gates.workflows.contains_key(&workflow) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no runs of workflow `{workflow}` between {} and {}",
                window.from.to_rfc3339(),
                window.to.to_rfc3339()
            ),
        ));
    }
    let thresholds = state.gates.for_workflow(&workflow);
    Ok(Json(
        serde_json::to_value(metrics::gates(&workflow, measured, &thresholds))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    ))
}

const COST_CSV_COLUMNS: &[&str] = &[
    "key",
    "cost_usd",
    "cost_inference_usd",
    "cost_tool_usd",
    "cost_review_usd",
    "runs",
    "successful_runs",
    "cost_per_success_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "unpriced_spans",
];

async fn cost(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let (p, window, ctx) =
        aggregate_request(&state, &headers, q.as_deref(), &["group_by", "format"]).await?;
    let group: CostGroup = p
        .get("group_by")
        .map(String::as_str)
        .unwrap_or("workflow")
        .parse()?;
    let csv = match p.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`format` must be json or csv, not `{other}`"),
            ))
        }
    };
    let rows = metrics::cost(&ctx, SPANS, &window, group).await?;
    if !csv {
        return Ok(Json(json!({
            "group_by": p.get("group_by").map(String::as_str).unwrap_or("workflow"),
            "from": window.from.to_rfc3339(),
            "to": window.to.to_rfc3339(),
            "rows": rows,
        }))
        .into_response());
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    writer.write_record(COST_CSV_COLUMNS).map_err(io)?;
    for row in &rows {
        let value = serde_json::to_value(row).unwrap_or_default();
        let record: Vec<String> = COST_CSV_COLUMNS
            .iter()
            .map(|c| match &value[*c] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        writer.write_record(&record).map_err(io)?;
    }
    let body = writer
        .into_inner()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"runledger-cost.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

async fn tools(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let (_, window, ctx) = aggregate_request(&state, &headers, q.as_deref(), &[]).await?;
    let rows = metrics::tools(&ctx, SPANS, &window).await?;
    Ok(windowed(&window, "tools", rows))
}

async fn capabilities(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let (_, window, ctx) = aggregate_request(&state, &headers, q.as_deref(), &[]).await?;
    let rows = metrics::capabilities(&ctx, SPANS, &window).await?;
    Ok(windowed(&window, "capabilities", rows))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

async fn sql(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    state.authorize(&headers, q.as_deref(), Role::Admin)?;
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"sql\": \"...\"}}: {e}"),
        )
    })?;
    let (ctx, _) = state.lake.session(true).await?;
    // `runs`: one row per run over all time, as the metrics define it.
    let view = metrics::with_runs(SPANS, "true", "SELECT * FROM runs");
    let plan = ctx.sql(&view).await?.into_view();
    ctx.register_table("runs", plan)?;
    let tables = [SPANS, "redacted_spans", "raw_spans", "runs"];
    crate::sql_guard::check(&request.sql, &tables)?;
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let started = Instant::now();
    let limit = state.sql_max_rows;
    // The caller's query failing is the caller's error (400), not the server's.
    let refused = |e: datafusion::error::DataFusionError| {
        QueryError::BadRequest(format!("query failed: {e}"))
    };
    let run = async {
        let frame = ctx
            .sql_with_options(&request.sql, options)
            .await
            .map_err(refused)?;
        let schema = frame.schema().as_arrow().clone();
        let mut stream = frame.execute_stream().await.map_err(refused)?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        let mut truncated = false;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(refused)?;
            if rows + batch.num_rows() > limit {
                batches.push(batch.slice(0, limit - rows));
                truncated = true;
                break;
            }
            rows += batch.num_rows();
            batches.push(batch);
        }
        Ok::<_, QueryError>((schema, batches, truncated))
    };
    let (schema, batches, truncated) = tokio::time::timeout(state.sql_timeout, run)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the query ran past the time limit of {:?} and was cancelled",
                    state.sql_timeout
                ),
            )
        })??;
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for batch in &batches {
        writer
            .write(batch)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    writer
        .finish()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let bytes = writer.into_inner();
    let rows: Value = if bytes.is_empty() {
        json!([])
    } else {
        serde_json::from_slice(&bytes).unwrap_or(json!([]))
    };
    let columns: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    Ok(Json(json!({
        "columns": columns,
        "rows": rows,
        "truncated": truncated,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
    })))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn run(
    State(state): State<Shared>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let who = state.authorize(&headers, q.as_deref(), Role::Oncall)?;
    let p = params(q.as_deref(), &["tier"])?;
    let tier = match p.get("tier").map(String::as_str) {
        None | Some("redacted") => Tier::Redacted,
        Some("raw") if who.role >= Role::Raw => Tier::Raw,
        Some("raw") => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the {} role cannot read the raw tier: it needs the raw role or above",
                    who.role
                ),
            ))
        }
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`tier` must be redacted or raw, not `{other}`"),
            ))
        }
    };
    if tier == Tier::Raw {
        let entry = AuditEntry {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            who: who.name.clone(),
            role: who.role,
            action: "read_run".into(),
            tier: tier.as_str().into(),
            run_id: run_id.clone(),
        };
        state.audit.append(&entry).map_err(|e| {
            tracing::error!(error = %e, path = %state.audit.path().display(), "audit log not written");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the read could not be recorded in the audit log, so it is refused",
            )
        })?;
    }
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no run `{run_id}` in the {} tier", tier.as_str()),
        )
    };
    match runs::lookup(&state.lake, tier, &run_id).await {
        Ok(Some(view)) => Ok(Json(serde_json::to_value(view).map_err(internal)?)),
        Ok(None) | Err(QueryError::NoTier(_)) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// Runs per page unless `limit` says otherwise, and the most it may say.
const RUNS_PAGE: usize = 50;
const RUNS_PAGE_MAX: usize = 1000;

async fn list_runs(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    state.authorize(&headers, q.as_deref(), Role::Oncall)?;
    let p = params(
        q.as_deref(),
        &[
            "workflow", "agent", "customer", "outcome", "ref", "min_cost", "from", "to", "limit",
            "cursor",
        ],
    )?;
    let window = window(&p)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let limit = match p.get("limit") {
        None => RUNS_PAGE,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=RUNS_PAGE_MAX).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "`limit` must be a whole number from 1 to {RUNS_PAGE_MAX}, not `{text}`"
                )))
            }
        },
    };
    let min_cost = match p.get("min_cost") {
        None => None,
        Some(text) => Some(
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(format!("`min_cost` must be a number of USD, not `{text}`")))?,
        ),
    };
    let outcome = p.get("outcome").cloned();
    if let Some(o) = outcome.as_deref() {
        if !["success", "failure", "escalated", "none"].contains(&o) {
            return Err(bad(format!(
                "`outcome` must be success, failure, escalated or none, not `{o}`"
            )));
        }
    }
    let cursor = p.get("cursor").map(|c| Cursor::decode(c)).transpose()?;
    let filter = RunFilter {
        workflow: p.get("workflow").cloned(),
        agent: p.get("agent").cloned(),
        customer: p.get("customer").cloned(),
        outcome,
        external_ref: p.get("ref").cloned(),
        min_cost,
    };
    let explicit_window = p.contains_key("from") || p.contains_key("to");
    let page = match runs::list(
        &state.lake,
        &filter,
        &window,
        explicit_window,
        limit,
        cursor.as_ref(),
    )
    .await
    {
        Err(QueryError::NoTier(_)) => runs::RunsPage {
            runs: Vec::new(),
            next_cursor: None,
        },
        other => other?,
    };
    Ok(Json(serde_json::to_value(page).map_err(internal)?))
}

async fn audit_log(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    state.authorize(&headers, q.as_deref(), Role::Admin)?;
    let p = params(q.as_deref(), &["limit"])?;
    let limit = match p.get("limit") {
        None => 1000,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`limit` must be a positive whole number, not `{text}`"),
                )
            })?,
    };
    let entries = state.audit.tail(limit).map_err(internal)?;
    Ok(Json(json!({ "entries": entries })))
}
