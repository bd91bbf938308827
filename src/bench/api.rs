//! The API in process, over a real socket, as the lookup and overview benchmarks call it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use runledger_query::api::{self, ApiState, Tokens};
use runledger_query::{Role, TokenConfig};

/// The token set of a benchmark: one token of `role`.
pub(crate) fn one_token(role: Role, token: &str) -> Tokens {
    Tokens::from_config(&[TokenConfig {
        role,
        token: Some(token.into()),
        token_sha256: None,
        name: Some("bench".into()),
    }])
}

/// A served API and a client that calls it with one bearer token.
pub(crate) struct BenchApi {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl BenchApi {
    /// Serves `state` on a loopback port of its own.
    pub(crate) async fn serve(state: ApiState, token: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, api::router(Arc::new(state))).await });
        Ok(Self {
            base,
            token: token.to_string(),
            client: reqwest::Client::new(),
        })
    }

    /// `GET path`: the milliseconds until the whole body was read, and the body; an error
    /// unless the status is a success.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<(f64, serde_json::Value)> {
        let url = format!("{}{path}", self.base);
        let started = Instant::now();
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() {
            bail!("{url}: {status} {body}");
        }
        Ok((ms, body))
    }
}
