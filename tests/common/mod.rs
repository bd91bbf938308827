//! Helpers of the end-to-end tests: a `runledger serve` child process on free ports, the
//! Python environment with the real OpenTelemetry SDK, and reading the lake back.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `runledger serve` child process.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    stdout: mpsc::Receiver<String>,
}

impl Server {
    /// `GET path` on the API with a bearer token: the status and the body as text.
    pub async fn get_text(&self, path: &str, token: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.api))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// `GET path` on the API with a bearer token: the status and the body as JSON (null
    /// when it is not JSON).
    pub async fn get_json(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let (status, text) = self.get_text(path, token).await;
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// Starts `runledger serve` on free loopback ports with `config` (TOML) and waits until
    /// it listens.
    pub fn start(data_dir: &Path, config: &str) -> Server {
        Self::start_with_env(data_dir, config, &[])
    }

    pub fn start_with_env(data_dir: &Path, config: &str, env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let config_path = data_dir.with_extension("toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_runledger"));
        command
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--api-addr",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&config_path)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUNLEDGER_LOG", "warn")
            .stdout(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("runledger serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("runledger serve prints its listening line");
            if line.starts_with("listening ") {
                break line;
            }
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        Server {
            grpc: field("grpc"),
            http: field("http"),
            api: field("api"),
            data_dir: data_dir.to_path_buf(),
            child,
            stdout: rx,
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }

    /// SIGTERM, then waits for the exit: a graceful stop flushes everything.
    pub fn stop(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to end on its own (a failpoint aborting it).
    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// The stdout lines printed so far after the listening line.
    pub fn drain_stdout(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }

    /// The first line of stdout that `matches`, waiting for it up to `timeout`.
    pub fn wait_for_stdout(
        &self,
        matches: impl Fn(&str) -> bool,
        timeout: std::time::Duration,
    ) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.stdout.recv_timeout(left) {
                Ok(line) if matches(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter with the test requirements: `$RUNLEDGER_PYTHON`, else the
/// workspace's `.venv` (made by `scripts/test` and `.ci/run`).
pub fn python() -> PathBuf {
    if let Ok(python) = std::env::var("RUNLEDGER_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the end-to-end tests need the Python SDK environment: run scripts/test (or create .venv \
         with tests/python/requirements.txt, or set RUNLEDGER_PYTHON)"
    );
    venv
}

pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs a Python test script and returns its stdout, failing the test with its stderr.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let output = Command::new(python())
        .arg(python_script(script))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{script} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A tier's table read by other engines: the `deltalake` Python package into pyarrow, and
/// DuckDB over it. Returns `{"rows": [...], "duckdb": {...}, "files": [...], ...}`.
pub fn read_lake_with_python(data_dir: &Path, tier: &str) -> serde_json::Value {
    let out = run_python(
        "read_lake.py",
        &[data_dir.join(tier).join("spans").to_str().unwrap()],
    );
    serde_json::from_str(&out).expect("read_lake.py prints JSON")
}

/// `SELECT <columns> FROM raw_spans ...` through runledger's own query side, as JSON rows.
pub fn query(data_dir: &Path, sql: &str) -> Vec<serde_json::Value> {
    // On a thread of its own, so that async tests can call it too.
    let data_dir = data_dir.to_path_buf();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let lake = runledger_query::Lake::new(&data_dir, std::time::Duration::ZERO);
            let (ctx, _) = lake.session(true).await.unwrap();
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            arrow_json_rows(&batches)
        })
    })
    .join()
    .unwrap()
}

fn arrow_json_rows(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
) -> Vec<serde_json::Value> {
    let mut buf = Vec::new();
    {
        let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut buf);
        for batch in batches {
            writer.write(batch).unwrap();
        }
        writer.finish().unwrap();
    }
    if buf.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(&buf).unwrap()
}

/// The span ids in the raw tier, with repetitions.
pub fn raw_span_ids(data_dir: &Path) -> Vec<String> {
    if !data_dir.join("raw/spans/_delta_log").exists() {
        return Vec::new();
    }
    query(data_dir, "SELECT span_id FROM raw_spans")
        .into_iter()
        .map(|row| row["span_id"].as_str().unwrap().to_string())
        .collect()
}

/// A config with a short flush interval, for tests that wait for the lake.
pub fn fast_flush_config(extra: &str) -> String {
    format!("[wal]\nflush_interval_ms = 200\n{extra}")
}

/// One OTLP/gRPC Export call with any bytes as the request.
pub mod raw_grpc {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

    pub async fn export(
        endpoint: &str,
        payload: Vec<u8>,
        gzip: bool,
    ) -> Result<ExportTraceServiceResponse, tonic::Status> {
        runledger_sample_data::export_encoded(endpoint, payload.into(), gzip).await
    }
}

/// Small OTLP requests built by hand.
pub mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    pub fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    /// A valid span with the given ids, started now.
    pub fn span(trace: u128, id: u64, attributes: Vec<KeyValue>) -> Span {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Span {
            trace_id: trace.to_be_bytes().to_vec(),
            span_id: id.to_be_bytes().to_vec(),
            name: format!("span {id}"),
            start_time_unix_nano: now - 1_000_000,
            end_time_unix_nano: now,
            attributes,
            ..Default::default()
        }
    }

    pub fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "hand-built")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// `google.rpc.Status` as OTLP/HTTP returns it in error responses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Runs the `runledger` binary with `args` (and extra environment), quietly.
pub fn runledger(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_runledger"));
    command.args(args).env("RUNLEDGER_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// The stdout of a run that must have succeeded; its output otherwise.
pub fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "runledger failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
