//! The HTTP API on `--api-addr`: metrics as JSON (and CSV), role-scoped by bearer token.
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz`, `GET /api/v1/openapi.json` | none |
//! | `GET /api/v1/whoami` | any |
//! | `GET /api/v1/workflows`, `/cost`, `/workflows/{workflow}/gates`, `/tools`, `/agents/capabilities` | finance |
//! | `GET /api/v1/runs`, `GET /api/v1/runs/{run_id}` | oncall |
//! | `GET /api/v1/runs/{run_id}?tier=raw` | raw (the read is audited) |
//! | `GET /api/v1/budgets`, `GET /api/v1/runs/runaway` | finance |
//! | `POST /api/v1/sql`, `GET /api/v1/audit` | admin |
//! | `GET /metrics` | none, or `api.metrics_token` |
//!
//! Aggregate answers go through a [response cache](cache) (fresh for `api.cache_ttl`, then
//! served stale while recomputed), so the dashboard stays fast over a large lake.
//!
//! Roles are ordered (finance < oncall < raw < admin): each reads what the one before reads.
//! No token or an unknown one is 401, a known token with too small a role is 403. Bad
//! parameters are 400 with `{"error": "..."}` saying what to fix.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod telemetry;

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
    /// Budgets (`[[budgets]]`).
    pub budgets: Vec<crate::budgets::BudgetConfig>,
    /// Aggregate answers.
    pub cache: Arc<cache::ResponseCache>,
    /// Latency and status codes by route.
    pub route_stats: telemetry::RouteStats,
    /// Series of the other parts (the collector), for `/metrics`.
    pub metrics_source: Option<telemetry::MetricsSource>,
    /// The token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
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
            budgets: Vec::new(),
            cache: {
                let (ttl, max_stale) = api.cache_times();
                Arc::new(cache::ResponseCache::new(ttl, max_stale))
            },
            route_stats: telemetry::RouteStats::default(),
            metrics_source: None,
            metrics_token: api.metrics_token.clone(),
        }
    }

    /// With budgets.
    pub fn with_budgets(mut self, budgets: Vec<crate::budgets::BudgetConfig>) -> Self {
        self.budgets = budgets;
        self
    }

    /// With the series of other parts on `/metrics`.
    pub fn with_metrics_source(mut self, source: telemetry::MetricsSource) -> Self {
        self.metrics_source = Some(source);
        self
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
        ("GET", "/metrics", get(prometheus)),
        ("GET", "/api/v1/budgets", get(budgets)),
        ("GET", "/api/v1/runs/runaway", get(runaway)),
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
    router = crate::web::routes(router);
    router
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            track_route,
        ))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route: see /api/v1/openapi.json",
            )
        })
        .with_state(state)
}

/// Records each request's latency and status under its route template.
async fn track_route(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .route_stats
        .record(&route, response.status().as_u16(), started.elapsed());
    response
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

/// An aggregate request, checked (the caller may read aggregates, every parameter is `from`,
/// `to` or one of `extra`, the window parses), then answered from the response cache or by
/// `compute`, which gets the parameters again so that a background refresh re-reads "now".
async fn cached_aggregate<F, Fut>(
    state: &Shared,
    route: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    extra: &[&str],
    compute: F,
) -> ApiResult<Arc<Value>>
where
    F: FnOnce(Shared, BTreeMap<String, String>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<Value>> + Send + 'static,
{
    state.authorize(headers, query, Role::Finance)?;
    let allowed: Vec<&str> = ["from", "to"].iter().chain(extra).copied().collect();
    let p = params(query, &allowed)?;
    window(&p)?;
    let key = cache_key(route, &p);
    let work = compute(Arc::clone(state), p);
    state.cache.get_or_compute(key, move || work).await
}

/// [`cached_aggregate`], answered as JSON.
async fn cached_json<F, Fut>(
    state: &Shared,
    route: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    extra: &[&str],
    compute: F,
) -> ApiResult<Response>
where
    F: FnOnce(Shared, BTreeMap<String, String>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<Value>> + Send + 'static,
{
    let value = cached_aggregate(state, route, headers, query, extra, compute).await?;
    Ok(shared_json(value))
}

fn cache_key(route: &str, p: &Params) -> String {
    format!("{route}?{}", serde_json::to_string(p).unwrap_or_default())
}

/// Computes, into the response cache, the answers the dashboard's overview asks for first
/// (its default window: the last `hours` hours from the start of the current hour), so
/// that the first visitor after a start does not wait for scans.
pub async fn warm_overview(state: Shared, hours: i64) -> ApiResult<()> {
    use chrono::{DurationRound as _, TimeDelta};
    let now = chrono::Utc::now();
    let hour = now.duration_trunc(TimeDelta::hours(1)).unwrap_or(now);
    let from = (hour - TimeDelta::hours(hours))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let p = |extra: &[(&str, &str)]| {
        let mut p: Params = BTreeMap::new();
        p.insert("from".into(), from.clone());
        for (k, v) in extra {
            p.insert((*k).into(), (*v).into());
        }
        p
    };
    let warm = |route: &str, p: Params| (cache_key(route, &p), p);
    let (key, params) = warm("workflows", p(&[]));
    let all = state
        .cache
        .get_or_compute(key, || compute_workflows(Arc::clone(&state), params))
        .await?;
    let (key, params) = warm("cost", p(&[("group_by", "day")]));
    state
        .cache
        .get_or_compute(key, || compute_cost(Arc::clone(&state), params))
        .await?;
    let (key, params) = warm("runaway", p(&[("limit", "20")]));
    state
        .cache
        .get_or_compute(key, || compute_runaway(Arc::clone(&state), params))
        .await?;
    for workflow in all["workflows"].as_array().into_iter().flatten() {
        if let Some(name) = workflow["workflow"].as_str() {
            let (key, params) = warm(&format!("gates/{name}"), p(&[]));
            let name = name.to_string();
            state
                .cache
                .get_or_compute(key, || compute_gates(Arc::clone(&state), params, name))
                .await?;
        }
    }
    Ok(())
}

/// A session over the redacted tier and the window the parameters name.
async fn aggregate_session(
    state: &ApiState,
    p: &BTreeMap<String, String>,
) -> ApiResult<(TimeWindow, SessionContext)> {
    let window = window(p)?;
    let (ctx, _) = state.lake.session(false).await?;
    Ok((window, ctx))
}

/// `{"from", "to", key: rows}`.
fn windowed(window: &TimeWindow, key: &str, rows: impl serde::Serialize) -> Value {
    let mut body = json!({"from": window.from.to_rfc3339(), "to": window.to.to_rfc3339()});
    body[key] = json!(rows);
    body
}

fn shared_json(value: Arc<Value>) -> Response {
    Json(Arc::unwrap_or_clone(value)).into_response()
}

type Params = BTreeMap<String, String>;

async fn compute_workflows(state: Shared, p: Params) -> ApiResult<Value> {
    let (window, ctx) = aggregate_session(&state, &p).await?;
    let rows = metrics::workflows(&ctx, SPANS, &window).await?;
    Ok(windowed(&window, "workflows", rows))
}

async fn workflows(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    cached_json(
        &state,
        "workflows",
        &headers,
        q.as_deref(),
        &[],
        compute_workflows,
    )
    .await
}

async fn compute_gates(state: Shared, p: Params, workflow: String) -> ApiResult<Value> {
    let window = window(&p)?;
    // The gates are thresholds over the workflow metrics of the same window: the cached
    // answer of `/api/v1/workflows` serves every workflow's gates.
    let all = {
        let (state, p) = (Arc::clone(&state), p.clone());
        state
            .cache
            .get_or_compute(cache_key("workflows", &p), || {
                compute_workflows(Arc::clone(&state), p)
            })
            .await?
    };
    let all: Vec<metrics::WorkflowMetrics> =
        serde_json::from_value(all["workflows"].clone()).map_err(internal)?;
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
    serde_json::to_value(metrics::gates(&workflow, measured, &thresholds)).map_err(internal)
}

async fn gates(
    State(state): State<Shared>,
    Path(workflow): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let route = format!("gates/{workflow}");
    cached_json(&state, &route, &headers, q.as_deref(), &[], |state, p| {
        compute_gates(state, p, workflow)
    })
    .await
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

async fn compute_cost(state: Shared, mut p: Params) -> ApiResult<Value> {
    p.remove("format");
    let group_name = p
        .get("group_by")
        .cloned()
        .unwrap_or_else(|| "workflow".into());
    let group: CostGroup = group_name.parse()?;
    let (window, ctx) = aggregate_session(&state, &p).await?;
    let rows = metrics::cost(&ctx, SPANS, &window, group).await?;
    Ok(json!({
        "group_by": group_name,
        "from": window.from.to_rfc3339(),
        "to": window.to.to_rfc3339(),
        "rows": rows,
    }))
}

async fn cost(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = params(q.as_deref(), &["from", "to", "group_by", "format"]).unwrap_or_default();
    let csv = match p.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            state.authorize(&headers, q.as_deref(), Role::Finance)?;
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`format` must be json or csv, not `{other}`"),
            ));
        }
    };
    let value = cached_aggregate(
        &state,
        "cost",
        &headers,
        q.as_deref(),
        &["group_by", "format"],
        compute_cost,
    )
    .await?;
    if !csv {
        return Ok(shared_json(value));
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    writer.write_record(COST_CSV_COLUMNS).map_err(io)?;
    for row in value["rows"].as_array().into_iter().flatten() {
        let record: Vec<String> = COST_CSV_COLUMNS
            .iter()
            .map(|c| match &row[*c] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        writer.write_record(&record).map_err(io)?;
    }
    let body = writer.into_inner().map_err(internal)?;
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
) -> ApiResult<Response> {
    cached_json(&state, "tools", &headers, q.as_deref(), &[], compute_tools).await
}

async fn compute_tools(state: Shared, p: Params) -> ApiResult<Value> {
    let (window, ctx) = aggregate_session(&state, &p).await?;
    let rows = metrics::tools(&ctx, SPANS, &window).await?;
    Ok(windowed(&window, "tools", rows))
}

async fn capabilities(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    cached_json(
        &state,
        "capabilities",
        &headers,
        q.as_deref(),
        &[],
        compute_capabilities,
    )
    .await
}

async fn compute_capabilities(state: Shared, p: Params) -> ApiResult<Value> {
    let (window, ctx) = aggregate_session(&state, &p).await?;
    let rows = metrics::capabilities(&ctx, SPANS, &window).await?;
    Ok(windowed(&window, "capabilities", rows))
}

async fn budget_status(state: &ApiState) -> ApiResult<Vec<crate::budgets::BudgetStatus>> {
    if state.budgets.is_empty() {
        return Ok(Vec::new());
    }
    let (ctx, _) = state.lake.session(false).await?;
    Ok(crate::budgets::status(&ctx, SPANS, &state.budgets, chrono::Utc::now()).await?)
}

async fn budgets(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    state.authorize(&headers, q.as_deref(), Role::Finance)?;
    params(q.as_deref(), &[])?;
    let cache = Arc::clone(&state.cache);
    let work = {
        let state = Arc::clone(&state);
        async move { Ok::<_, ApiError>(json!({ "budgets": budget_status(&state).await? })) }
    };
    let value = cache.get_or_compute("budgets".into(), move || work).await?;
    Ok(shared_json(value))
}

async fn compute_runaway(state: Shared, p: Params) -> ApiResult<Value> {
    let limit = match p.get("limit") {
        None => 50,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`limit` must be a whole number from 1 to 1000, not `{text}`"),
                )
            })?,
    };
    let (window, ctx) = aggregate_session(&state, &p).await?;
    let rows = runs::runaway(&ctx, SPANS, &window, limit).await?;
    Ok(windowed(&window, "runs", rows))
}

async fn runaway(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    cached_json(
        &state,
        "runaway",
        &headers,
        q.as_deref(),
        &["limit"],
        compute_runaway,
    )
    .await
}

async fn prometheus(
    State(state): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    if let Some(expected) = &state.metrics_token {
        let presented = auth::presented_token(&headers, q.as_deref()).unwrap_or_default();
        use subtle::ConstantTimeEq as _;
        if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "/metrics needs api.metrics_token as a bearer token",
            ));
        }
    }
    let mut out = telemetry::Exposition::default();
    if let Some(source) = &state.metrics_source {
        (source.0)(&mut out);
    }
    state.route_stats.write(&mut out);
    // Business series, through the cache like the dashboard's calls.
    let today = {
        let now = chrono::Utc::now();
        let (start, _) = crate::budgets::period_bounds(crate::budgets::BudgetPeriod::Daily, now);
        (start, now)
    };
    let work = {
        let state = Arc::clone(&state);
        async move {
            let (ctx, _) = state.lake.session(false).await?;
            let window = TimeWindow {
                from: today.0,
                to: today.1.max(today.0 + chrono::Duration::seconds(1)),
            };
            let rows = metrics::cost(&ctx, SPANS, &window, CostGroup::Workflow).await?;
            let budgets = budget_status(&state).await?;
            Ok::<_, ApiError>(json!({"cost": rows, "budgets": budgets}))
        }
    };
    match state
        .cache
        .get_or_compute("metrics-business".into(), move || work)
        .await
    {
        Ok(business) => {
            out.help(
                "runledger_cost_today_usd",
                "gauge",
                "Cost of today's runs (UTC day) by workflow, USD.",
            );
            for row in business["cost"].as_array().into_iter().flatten() {
                let workflow = row["key"].as_str().unwrap_or("");
                out.sample(
                    "runledger_cost_today_usd",
                    &[("workflow", workflow)],
                    row["cost_usd"].as_f64().unwrap_or(0.0),
                );
            }
            let budgets = business["budgets"].as_array().cloned().unwrap_or_default();
            for (name, field, help) in [
                (
                    "runledger_budget_usd",
                    "budget_usd",
                    "The budget of the period, USD.",
                ),
                (
                    "runledger_budget_spend_usd",
                    "spend_usd",
                    "Spent in the budget's period so far, USD.",
                ),
                ("runledger_budget_burn_ratio", "burn", "Spend / budget."),
                (
                    "runledger_budget_projected_usd",
                    "projected_usd",
                    "Spend at the end of the period at the current burn rate, USD.",
                ),
            ] {
                out.help(name, "gauge", help);
                for b in &budgets {
                    let labels = [
                        ("budget", b["name"].as_str().unwrap_or("")),
                        ("scope", b["scope"].as_str().unwrap_or("")),
                        ("key", b["key"].as_str().unwrap_or("")),
                        ("period", b["period"].as_str().unwrap_or("")),
                    ];
                    out.sample(name, &labels, b[field].as_f64().unwrap_or(0.0));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e.message, "/metrics: business series unavailable"),
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.finish(),
    )
        .into_response())
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
