//! The HTTP API on `--api-addr`. For now the health endpoints that orchestrators and the
//! tests poll; the analytics routes build on [`crate::open_lake`].

use axum::routing::get;
use axum::{Json, Router};

/// The API router.
pub fn router() -> Router {
    Router::new().route("/healthz", get(health))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}
