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
