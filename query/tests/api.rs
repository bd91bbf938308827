//! The API over a real socket: the role matrix, parameter errors, CSV, ad-hoc SQL and its
//! escape attempts, and the OpenAPI document against the routes.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use runledger_query::api::{self, ApiState, Tokens};
use runledger_query::{ApiConfig, GatesConfig, Lake, Role, TokenConfig};
use serde_json::{json, Value};

const TOKENS: [(Role, &str); 4] = [
    (Role::Finance, "finance-token-0123456789"),
    (Role::Oncall, "oncall-token-0123456789"),
    (Role::Raw, "raw-token-0123456789abc"),
    (Role::Admin, "admin-token-0123456789"),
];

struct Api {
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_lake(dir.path(), &golden_runs(5, 120)).await;
        let config = ApiConfig {
            sql_max_rows: 50,
            sql_timeout: "5s".into(),
            ..Default::default()
        };
        let mut tokens: Vec<TokenConfig> = TOKENS
            .iter()
            .map(|(role, token)| TokenConfig {
                role: *role,
                token: Some(token.to_string()),
                token_sha256: None,
                name: None,
            })
            .collect();
        // The finance token is configured by its digest only.
        tokens[0].token = None;
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(TOKENS[0].1.as_bytes()))
        };
        tokens[0].token_sha256 = Some(digest);
        let state = ApiState::new(
            Arc::new(Lake::new(dir.path(), Duration::ZERO)),
            &config,
            Tokens::from_config(&tokens),
            GatesConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, api::router(Arc::new(state)))
                .await
                .unwrap();
        });
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn sql(&self, sql: &str, token: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api/v1/sql", self.base))
            .bearer_auth(token)
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

fn token(role: Role) -> &'static str {
    TOKENS.iter().find(|(r, _)| *r == role).unwrap().1
}

const WINDOW: &str = "from=2026-03-10T00:00:00Z&to=2026-03-13T00:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_matrix() {
    let api = Api::start().await;
    let aggregates = [
        format!("/api/v1/workflows?{WINDOW}"),
        format!("/api/v1/cost?group_by=customer&{WINDOW}"),
        format!("/api/v1/workflows/refunds/gates?{WINDOW}"),
        format!("/api/v1/tools?{WINDOW}"),
        format!("/api/v1/agents/capabilities?{WINDOW}"),
        format!("/api/v1/runs/runaway?{WINDOW}"),
        "/api/v1/budgets".to_string(),
        "/api/v1/whoami".to_string(),
    ];
    for path in &aggregates {
        assert_eq!(api.get(path, None).await.0, 401, "{path} without a token");
        assert_eq!(
            api.get(path, Some("not-a-token-at-all")).await.0,
            401,
            "{path}"
        );
        for (role, token) in TOKENS {
            let (status, body) = api.get(path, Some(token)).await;
            assert_eq!(status, 200, "{path} as {role}: {body}");
        }
    }
    // SQL: admin only.
    for (role, token) in TOKENS {
        let (status, body) = api.sql("SELECT count(*) AS n FROM spans", token).await;
        let want = if role == Role::Admin { 200 } else { 403 };
        assert_eq!(status, want, "sql as {role}: {body}");
        if status == 403 {
            assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");
        }
    }
    // Open routes.
    assert_eq!(api.get("/healthz", None).await.0, 200);
    assert_eq!(api.get("/api/v1/openapi.json", None).await.0, 200);
    // ?token= works as well as the header.
    let (status, body) = api
        .get(
            &format!("/api/v1/whoami?token={}", token(Role::Oncall)),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["role"],
        "oncall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_with_a_message_and_csv_has_a_header() {
    let api = Api::start().await;
    let finance = Some(token(Role::Finance));
    for (path, needle) in [
        ("/api/v1/workflows?from=yesterday", "RFC 3339"),
        (
            "/api/v1/workflows?from=2026-03-12T00:00:00Z&to=2026-03-10T00:00:00Z",
            "before",
        ),
        ("/api/v1/cost?group_by=planet", "group_by"),
        ("/api/v1/cost?format=xml", "format"),
        ("/api/v1/tools?limit=3", "unknown parameter `limit`"),
    ] {
        let (status, body) = api.get(path, finance).await;
        assert_eq!(status, 400, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    let (status, body) = api
        .get(&format!("/api/v1/workflows/nope/gates?{WINDOW}"), finance)
        .await;
    assert_eq!(status, 404, "{body}");

    let (status, csv) = api
        .get(
            &format!("/api/v1/cost?group_by=workflow&format=csv&{WINDOW}"),
            finance,
        )
        .await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("key,cost_usd,"), "{csv}");
    assert_eq!(lines.len(), 1 + WORKFLOWS.len(), "{csv}");
    // The CSV's figures are the JSON's.
    let (_, json_body) = api
        .get(&format!("/api/v1/cost?group_by=workflow&{WINDOW}"), finance)
        .await;
    let rows: Value = serde_json::from_str(&json_body).unwrap();
    for (line, row) in lines[1..].iter().zip(rows["rows"].as_array().unwrap()) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], row["key"].as_str().unwrap());
        assert_eq!(
            fields[1].parse::<f64>().unwrap(),
            row["cost_usd"].as_f64().unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_is_read_only_limited_and_cannot_escape() {
    let api = Api::start().await;
    let admin = token(Role::Admin);
    let (status, body) = api
        .sql(
            "SELECT workflow, count(*) AS n FROM runs GROUP BY workflow ORDER BY workflow",
            admin,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), WORKFLOWS.len());
    // The row limit cuts, and says so.
    let (status, body) = api.sql("SELECT span_id FROM raw_spans", admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 50);
    assert_eq!(body["truncated"], true);
    for attempt in [
        "DROP TABLE spans",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/runledger-escape.csv'",
        "INSERT INTO spans SELECT * FROM spans",
        "SET datafusion.execution.target_partitions = 1",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'Cargo.toml'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM generate_series(1, 100000000000)",
        "SELECT 1; DROP TABLE spans",
        "SELECT * FROM information_schema.tables",
        "SELECT no_such_column FROM spans",
    ] {
        let (status, body) = api.sql(attempt, admin).await;
        assert_eq!(status, 400, "{attempt}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{attempt}"
        );
    }
    assert!(!std::path::Path::new("/tmp/runledger-escape.csv").exists());
    // Not JSON, or not the expected shape.
    let response = api
        .client
        .post(format!("{}/api/v1/sql", api.base))
        .bearer_auth(admin)
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[test]
fn every_route_is_in_the_openapi_document_and_nothing_else() {
    let doc: Value = serde_json::from_str(api::OPENAPI).unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = api::api_routes()
        .into_iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(served, documented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_lookup_roles_tiers_and_the_audit_log() {
    let api = Api::start().await;
    let runs = golden_runs(5, 120);
    let run = runs
        .iter()
        .find(|r| r.outcome.is_some() && r.tools.iter().any(|t| t.write && !t.error))
        .unwrap();
    let path = format!("/api/v1/runs/{}", run.id);
    let raw_path = format!("{path}?tier=raw");
    assert_eq!(api.get(&path, None).await.0, 401);
    for (role, token) in TOKENS {
        let (status, body) = api.get(&path, Some(token)).await;
        let want = if role == Role::Finance { 403 } else { 200 };
        assert_eq!(status, want, "{path} as {role}: {body}");
        let (status, body) = api.get(&raw_path, Some(token)).await;
        let want = if role >= Role::Raw { 200 } else { 403 };
        assert_eq!(status, want, "{raw_path} as {role}: {body}");
        let (status, _) = api.get("/api/v1/runs?limit=1", Some(token)).await;
        assert_eq!(status, if role == Role::Finance { 403 } else { 200 });
        let (status, _) = api.get("/api/v1/audit", Some(token)).await;
        assert_eq!(status, if role == Role::Admin { 200 } else { 403 });
    }
    let (_, body) = api.get(&path, Some(token(Role::Oncall))).await;
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["run_id"], run.id);
    assert_eq!(view["tier"], "redacted");
    assert_eq!(view["workflow"], run.workflow);
    assert_eq!(view["outcome"], run.outcome.unwrap());
    assert!(
        (view["cost_usd"].as_f64().unwrap() - run.cost()).abs() < 1e-9,
        "{body}"
    );
    assert_eq!(view["spans"][0]["depth"], 0);
    assert!(view["spans"][0]["parent_span_id"].is_null());
    assert_eq!(view["coverage"]["root"], true);
    let (_, body) = api.get(&raw_path, Some(token(Role::Raw))).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["tier"], "raw");

    // Exactly the two raw reads that were served are in the log, with who made them.
    let (_, body) = api.get("/api/v1/audit", Some(token(Role::Admin))).await;
    let entries = serde_json::from_str::<Value>(&body).unwrap()["entries"].clone();
    let who: Vec<(&str, &str)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["who"].as_str().unwrap(), e["run_id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        who,
        [
            ("raw", run.id.as_str()),
            ("admin", run.id.as_str()),
            ("raw", run.id.as_str())
        ]
    );
    let audit_file = api._dir.path().join("audit").join("raw_reads.jsonl");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&audit_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Unknown run, bad tier, unknown parameter.
    let oncall = Some(token(Role::Oncall));
    assert_eq!(api.get("/api/v1/runs/run-nope", oncall).await.0, 404);
    assert_eq!(api.get(&format!("{path}?tier=cold"), oncall).await.0, 400);
    assert_eq!(api.get(&format!("{path}?verbose=1"), oncall).await.0, 400);

    // By ref: the run that left it.
    let k = run.tools.iter().position(|t| t.write && !t.error).unwrap();
    let (status, body) = api
        .get(
            &format!("/api/v1/runs?ref={}", external_ref(&run.id, k)),
            oncall,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["runs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(found["runs"][0]["run_id"], run.id);
    assert_eq!(found["next_cursor"], Value::Null);
    for bad in [
        "limit=0",
        "limit=x",
        "min_cost=abc",
        "outcome=maybe",
        "cursor=%%%",
        "cursor=bm9wZQ",
    ] {
        let (status, body) = api.get(&format!("/api/v1/runs?{bad}"), oncall).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

async fn all_pages(api: &Api, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/runs?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = api.get(&path, Some(token(Role::Oncall))).await;
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        let runs = page["runs"].as_array().unwrap();
        assert!(runs.len() <= limit);
        out.extend(runs.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_list_filters_and_stable_cursor_pages() {
    let api = Api::start().await;
    let runs = golden_runs(5, 120);
    let listed = all_pages(&api, WINDOW, 7).await;
    let ids: Vec<&str> = listed
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    // Every run once, newest first.
    let mut want: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    want.reverse();
    assert_eq!(ids, want);

    // Filters agree with the run descriptions.
    let refunds = all_pages(
        &api,
        &format!("{WINDOW}&workflow=refunds&outcome=success"),
        50,
    )
    .await;
    let want = runs
        .iter()
        .filter(|r| r.workflow == "refunds" && r.outcome == Some("success"))
        .count();
    assert_eq!(refunds.len(), want);
    assert!(refunds
        .iter()
        .all(|r| r["workflow"] == "refunds" && r["outcome"] == "success"));
    let pricey = all_pages(&api, &format!("{WINDOW}&min_cost=1.5"), 50).await;
    assert_eq!(
        pricey.len(),
        runs.iter().filter(|r| r.cost() >= 1.5).count()
    );

    // Pages stay stable while newer runs arrive between two requests.
    let (_, body) = api
        .get(
            &format!("/api/v1/runs?{WINDOW}&limit=10"),
            Some(token(Role::Oncall)),
        )
        .await;
    let first: Value = serde_json::from_str(&body).unwrap();
    let mut newer = golden_runs(6, 20);
    for run in &mut newer {
        run.start_secs += 86_400;
    }
    write_lake_as(api._dir.path(), &newer, "late-writer").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let mut rest = Vec::new();
    let mut next = Some(cursor.to_string());
    while let Some(c) = next {
        let (status, body) = api
            .get(
                &format!("/api/v1/runs?{WINDOW}&limit=25&cursor={c}"),
                Some(token(Role::Oncall)),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        rest.extend(
            page["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["run_id"].as_str().unwrap().to_string()),
        );
        next = page["next_cursor"].as_str().map(str::to_string);
    }
    let mut seen: Vec<String> = first["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    seen.extend(rest);
    let mut want: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    want.reverse();
    assert_eq!(seen, want, "no run repeated or skipped");
}
