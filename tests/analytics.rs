//! The analytics path end to end: `runledger gen` into `runledger serve` over gRPC, costs
//! computed at flush, the API behind the generated admin token, run lookup through the API and
//! `runledger run`, and `runledger reprice`.

mod common;

use std::path::Path;

use common::{fast_flush_config, ok, query, runledger, Server};
use serde_json::Value;

fn total(data_dir: &Path, tier: &str, column: &str) -> f64 {
    query(data_dir, &format!("SELECT sum({column}) AS v FROM {tier}"))[0]["v"]
        .as_f64()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_traffic_is_priced_served_behind_the_admin_token_and_repriced() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, &fast_flush_config(""));
    // No [[api.tokens]]: an admin token, 0600, and a login URL on stdout.
    let token_path = data_dir.join("admin.token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let login = server.wait_for_stdout(
        |l| l.contains("?token="),
        std::time::Duration::from_secs(30),
    );
    assert!(
        login
            .as_deref()
            .is_some_and(|l| l.ends_with(&format!("/?token={token}"))),
        "{login:?}"
    );

    let sent = ok(runledger(
        &[
            "gen",
            "--endpoint",
            &server.grpc_endpoint(),
            "--runs",
            "150",
            "--spread-hours",
            "2",
        ],
        &[],
    ));
    assert!(sent.contains("failed 0"), "{sent}");
    assert!(server.stop().success());

    // Restarted: the same token still works; a wrong one does not.
    let server = Server::start(&data_dir, &fast_flush_config(""));
    assert_eq!(std::fs::read_to_string(&token_path).unwrap(), token);
    let (status, _) = server
        .get_json("/api/v1/workflows", "rl_wrong_token_0000000000")
        .await;
    assert_eq!(status, 401);
    let (status, body) = server.get_json("/api/v1/workflows", &token).await;
    assert_eq!(status, 200, "{body}");
    let workflows = body["workflows"].as_array().unwrap();
    let runs: u64 = workflows.iter().map(|w| w["runs"].as_u64().unwrap()).sum();
    assert_eq!(runs, 150);
    let cost: f64 = workflows
        .iter()
        .map(|w| w["total_cost_usd"].as_f64().unwrap())
        .sum();
    assert!(cost > 0.0);
    // Every model the generator uses is in the built-in table.
    assert!(workflows.iter().all(|w| w["unpriced_spans"] == 0), "{body}");
    // The API's cost equals the lake's, read by SQL.
    let (_, by_model) = server.get_json("/api/v1/cost?group_by=model", &token).await;
    let api_inference: f64 = by_model["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    let lake_inference = total(&data_dir, "redacted_spans", "cost_inference_usd");
    assert!((api_inference - lake_inference).abs() < 1e-9);

    // Run lookup: the list, one run by id, the same run by one of its external refs, and
    // `runledger run` through the API and from the lake, all agreeing.
    let (status, page) = server.get_json("/api/v1/runs?limit=1000", &token).await;
    assert_eq!(status, 200, "{page}");
    let listed = page["runs"].as_array().unwrap();
    assert_eq!(listed.len(), 150);
    let with_ref = query(
        &data_dir,
        "SELECT run_id, external_ref FROM redacted_spans WHERE external_ref IS NOT NULL ORDER BY run_id LIMIT 1",
    );
    let run_id = with_ref[0]["run_id"].as_str().unwrap().to_string();
    let external_ref = with_ref[0]["external_ref"].as_str().unwrap().to_string();
    let (status, view) = server
        .get_json(&format!("/api/v1/runs/{run_id}"), &token)
        .await;
    assert_eq!(status, 200, "{view}");
    let spans = query(
        &data_dir,
        &format!(
            "SELECT count(DISTINCT span_id) AS n FROM redacted_spans WHERE run_id = '{run_id}'"
        ),
    )[0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(view["spans"].as_array().unwrap().len() as u64, spans);
    let listed_run = listed
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap();
    assert_eq!(listed_run["spans"], spans);
    assert!(
        (listed_run["cost_usd"].as_f64().unwrap() - view["cost_usd"].as_f64().unwrap()).abs()
            < 1e-9
    );
    let (_, by_ref) = server
        .get_json(&format!("/api/v1/runs?ref={external_ref}"), &token)
        .await;
    assert_eq!(by_ref["runs"][0]["run_id"], run_id.as_str(), "{by_ref}");
    let api_url = format!("http://{}", server.api);
    let via_api: Value = serde_json::from_str(&ok(runledger(
        &[
            "run", &run_id, "--api", &api_url, "--token", &token, "--json",
        ],
        &[],
    )))
    .unwrap();
    assert_eq!(via_api, view);
    let tree = ok(runledger(
        &["run", &run_id, "--api", &api_url],
        &[("RUNLEDGER_TOKEN", token.as_str())],
    ));
    assert!(tree.starts_with(&format!("run {run_id}")), "{tree}");
    assert!(tree.contains(&format!("ref {external_ref}")), "{tree}");
    assert!(tree.lines().all(|l| l.chars().count() <= 80), "{tree}");
    assert!(server.stop().success());
    let from_lake: Value = serde_json::from_str(&ok(runledger(
        &[
            "run",
            &run_id,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--json",
        ],
        &[],
    )))
    .unwrap();
    assert_eq!(from_lake, view);
    let missing = runledger(
        &[
            "run",
            "run-that-never-was",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(missing.status.code(), Some(2));

    // Reprice with a file of our own that makes gpt-4o cost 100 USD per million tokens.
    let rows_before = query(&data_dir, "SELECT count(*) AS n FROM raw_spans")[0]["n"].clone();
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "version = \"finance-2026-11\"\n[[model]]\nmatch = \"gpt-4o*\"\neffective_from = \"2020-01-01\"\ninput_per_mtok = 100.0\noutput_per_mtok = 100.0\n",
    )
    .unwrap();
    let config = dir.path().join("reprice.toml");
    std::fs::write(
        &config,
        format!("[pricing]\nfile = {:?}\n", prices.display().to_string()),
    )
    .unwrap();
    let gpt4o_before = query(
        &data_dir,
        "SELECT sum(cost_inference_usd) AS v, sum(input_tokens) + sum(output_tokens) AS t FROM raw_spans WHERE request_model = 'gpt-4o'",
    );
    let out = ok(runledger(
        &[
            "reprice",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        out.contains("price version 2026-11-01+finance-2026-11"),
        "{out}"
    );
    let gpt4o_after = query(
        &data_dir,
        "SELECT sum(cost_inference_usd) AS v, min(price_version) AS pv, max(price_version) AS pv2 FROM raw_spans WHERE request_model = 'gpt-4o'",
    );
    let tokens = gpt4o_before[0]["t"].as_f64().unwrap();
    let after = gpt4o_after[0]["v"].as_f64().unwrap();
    assert!(tokens > 0.0);
    assert!(
        (after - tokens * 100.0 / 1e6).abs() < 1e-6,
        "{after} vs {tokens}"
    );
    assert_ne!(gpt4o_before[0]["v"], gpt4o_after[0]["v"]);
    assert_eq!(gpt4o_after[0]["pv"], "2026-11-01+finance-2026-11");
    assert_eq!(gpt4o_after[0]["pv2"], "2026-11-01+finance-2026-11");
    // Nothing lost or doubled, in either tier.
    assert_eq!(
        query(&data_dir, "SELECT count(*) AS n FROM raw_spans")[0]["n"],
        rows_before
    );
    assert_eq!(
        query(&data_dir, "SELECT count(*) AS n FROM redacted_spans")[0]["n"],
        rows_before
    );
}

/// `runledger bench query` end to end on a small lake: both engines run the query in turns
/// (DuckDB kept open, asked run by run) and must count the same runs.
#[test]
fn the_query_benchmark_runs_both_engines_in_turns() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let python = common::python();
    let out = ok(runledger(
        &[
            "bench",
            "query",
            "--spans",
            "20000",
            "--hours",
            "2",
            "--repeats",
            "2",
            "--data-dir",
            lake.to_str().unwrap(),
        ],
        &[("RUNLEDGER_PYTHON", python.to_str().unwrap())],
    ));
    assert!(out.contains("(both engines agree)"), "{out}");
    let turns = out
        .lines()
        .find_map(|l| l.strip_prefix("each run (ms), in turn: runledger "))
        .unwrap_or_else(|| panic!("no line of runs: {out}"));
    let (ours, theirs) = turns.split_once("; DuckDB ").unwrap();
    let times = |list: &str| -> Vec<f64> {
        list.split(", ")
            .map(|t| t.trim().parse::<f64>().unwrap())
            .collect()
    };
    assert_eq!(times(ours).len(), 2, "{out}");
    assert_eq!(times(theirs).len(), 2, "{out}");
    assert!(times(theirs).iter().all(|t| *t > 0.0), "{out}");
    assert!(out.contains("ratio runledger / DuckDB: "), "{out}");
}
