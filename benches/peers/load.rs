//! Load generation: `wrk` runs with the Lua scripts in `benches/peers/lua`, pinned to CPU 1,
//! and a small hyper client for the requests that the harness sends itself.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::servers::Server;

/// CPU that wrk and the upstream run on.
pub const LOAD_CPU: &str = "1";

/// Lua `done` function appended to every script, which prints the `BENCH` line that
/// [`parse_report`] reads.
const REPORT_LUA: &str = include_str!("lua/report.lua");

/// A wrk script of the harness.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// S1: notifications with new data each.
    Forward,
    /// S2: notifications of 1,000 unchanged states.
    Suppress,
    /// S3: reads of one entity.
    Hot,
    /// S4: Zipf-distributed reads of 10,000 entities.
    Zipf,
}

impl Script {
    fn source(self) -> &'static str {
        match self {
            Script::Forward => include_str!("lua/forward.lua"),
            Script::Suppress => include_str!("lua/suppress.lua"),
            Script::Hot => include_str!("lua/hot.lua"),
            Script::Zipf => include_str!("lua/zipf.lua"),
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Script::Forward => "forward.lua",
            Script::Suppress => "suppress.lua",
            Script::Hot => "hot.lua",
            Script::Zipf => "zipf.lua",
        }
    }

    /// Writes the script with the report function into `dir` and returns its path.
    pub fn write(self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join(self.file_name());
        fs::write(&path, format!("{}{}", self.source(), REPORT_LUA))?;
        Ok(path)
    }
}

/// One wrk run's totals as its `done` function printed them.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkReport {
    /// Completed requests.
    pub requests: u64,
    /// Length of the run, in microseconds.
    pub duration_us: u64,
    /// Median latency, in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: u64,
    /// Responses with status 400 or more.
    pub status_errors: u64,
    /// Connect, read, write and timeout errors together.
    pub socket_errors: u64,
}

impl WrkReport {
    /// Completed requests per second.
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
}

/// Error raised when a wrk run fails or prints no report.
#[derive(Debug, thiserror::Error)]
pub enum WrkError {
    /// wrk could not be started.
    #[error("cannot run wrk: {0}; install it with `apt-get install wrk`")]
    Spawn(#[from] std::io::Error),
    /// wrk ran but its output has no `BENCH` line.
    #[error("wrk printed no report line (exit status {status}); its output was:\n{output}")]
    NoReport {
        /// wrk's exit status.
        status: String,
        /// wrk's standard output and error.
        output: String,
    },
}

/// Settings of one wrk run.
#[derive(Debug, Clone)]
pub struct WrkRun<'a> {
    /// The script to run.
    pub script: &'a Path,
    /// Open connections, all from one wrk thread.
    pub connections: u32,
    /// Length of the run.
    pub duration: Duration,
    /// Arguments passed to the script's `init`.
    pub args: Vec<String>,
}

/// Runs wrk against `server` and returns its report.
pub async fn run_wrk(server: &Server, run: &WrkRun<'_>) -> Result<WrkReport, WrkError> {
    let url = format!("http://{}/", server.addr);
    let seconds = run.duration.as_secs().max(1).to_string();
    let connections = run.connections.to_string();
    let output = tokio::process::Command::new("taskset")
        .args(["-c", LOAD_CPU, "wrk", "-t1", "-c", &connections, "-d"])
        .arg(format!("{seconds}s"))
        .args(["--timeout", "5s", "-s"])
        .arg(run.script)
        .arg(&url)
        .arg("--")
        .args(&run.args)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_report(&stdout).ok_or_else(|| WrkError::NoReport {
        status: output.status.to_string(),
        output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
    })
}

/// Reads the `BENCH key=value ...` line that `report.lua` prints.
fn parse_report(stdout: &str) -> Option<WrkReport> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("BENCH "))?;
    let mut report = WrkReport::default();
    for pair in line.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match key {
            "requests" => report.requests = value,
            "duration_us" => report.duration_us = value,
            "p50_us" => report.p50_us = value,
            "p99_us" => report.p99_us = value,
            "status" => report.status_errors = value,
            "connect" | "read" | "write" | "timeout" => report.socket_errors += value,
            _ => {}
        }
    }
    Some(report)
}

/// HTTP/1.1 client with keep-alive for the requests that the harness sends itself.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Status and body of a response.
pub type Answer = (u16, Bytes);

impl HttpClient {
    /// Creates a client that keeps up to 256 idle connections per server.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        HttpClient { client }
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        authorization: Option<&str>,
        body: &str,
    ) -> Result<Answer, String> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(value) = authorization {
            builder = builder.header(http::header::AUTHORIZATION, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{path}: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// Reads every entity `e1` to `eN` once through `server`, `concurrency` at a time, and
/// returns how many responses were not 2xx.
pub async fn prefill(
    client: &HttpClient,
    server: SocketAddr,
    entities: u64,
    concurrency: u64,
) -> u64 {
    let mut failures = 0;
    let mut next = 1;
    while next <= entities {
        let last = (next + concurrency - 1).min(entities);
        let mut tasks = tokio::task::JoinSet::new();
        for rank in next..=last {
            let client = client.clone();
            tasks.spawn(async move {
                let path = format!("/entities/e{rank}");
                client
                    .send(Method::GET, server, &path, Some("Bearer consumer"), "")
                    .await
            });
        }
        while let Some(result) = tasks.join_next().await {
            let ok = matches!(result, Ok(Ok((status, _))) if (200..300).contains(&status));
            failures += u64::from(!ok);
        }
        next = last + 1;
    }
    failures
}

/// Sends one notification for each of `entities` new entities through `server`,
/// `concurrency` at a time, and returns how many failed or got a non-2xx response.
pub async fn fill_entities(
    client: &HttpClient,
    server: SocketAddr,
    run: &str,
    entities: u64,
    concurrency: u64,
) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let run = run.to_owned();
        tasks.spawn(async move {
            let mut failures = 0;
            let mut index = worker;
            while index < entities {
                let body = format!(
                    r#"{{"subject":"m{run}-{index}","data":{{"displayName":"Person {index}","active":true}}}}"#
                );
                let answer = client
                    .send(Method::POST, server, "/notify/fill", None, &body)
                    .await;
                let ok = matches!(answer, Ok((status, _)) if (200..300).contains(&status));
                failures += u64::from(!ok);
                index += concurrency;
            }
            failures
        });
    }
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        failures += joined.unwrap_or(1);
    }
    failures
}
