//! A private Prometheus server, started per test on 127.0.0.1, that scrapes given targets.
//!
//! Checked with the Debian 12 package `prometheus` 2.42.0. The configuration, the TSDB and the
//! server's output live in one temporary directory, and the server listens on a free loopback
//! port. Tests can therefore run several servers at once without touching the package's own
//! service, which uses `/var/lib/prometheus` and port 9090.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use tempfile::TempDir;

/// Path of the server binary in the Debian package.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Name of the one scrape job, so queries select the targets with `{job="ekko"}`.
pub const JOB: &str = "ekko";

/// Startup took under 0.1 s on a 2-core test machine, so 60 s leaves room for a loaded one.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server gets to shut down after SIGTERM before it gets SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(5);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 40;

const CONFIG_FILE: &str = "prometheus.yml";
const DATA_DIR: &str = "data";
const LOG_FILE: &str = "prometheus.log";

/// Characters left as they are in a query parameter value: the RFC 3986 unreserved set.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Failure to start a test Prometheus server or to complete an HTTP API call on it.
#[derive(thiserror::Error)]
pub enum PrometheusError {
    /// A scrape target is not on 127.0.0.1.
    #[error(
        "scrape target {target} is not on 127.0.0.1: the test server scrapes only loopback \
         listeners, so pass an address such as ekko's admin address from the test harness"
    )]
    TargetNotLoopback { target: SocketAddr },

    /// The scrape interval is shorter than the 1 ms that the configuration can express.
    #[error("scrape interval {interval:?} is shorter than 1 ms: pass at least 1 ms, such as 1 s")]
    ScrapeIntervalTooShort { interval: Duration },

    /// A file or process operation failed.
    #[error("failed to {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },

    /// The server process exited before `/-/ready` returned 200.
    #[error(
        "prometheus exited ({status}) before {url}/-/ready returned 200; log tail:\n{log_tail}"
    )]
    ExitedEarly {
        status: ExitStatus,
        url: String,
        log_tail: String,
    },

    /// `/-/ready` did not return 200 in time.
    #[error(
        "prometheus did not return 200 from {url}/-/ready within {seconds} s; log tail:\n{log_tail}"
    )]
    StartTimedOut {
        url: String,
        seconds: u64,
        log_tail: String,
    },

    /// The request could not be built, for example from an invalid URI.
    #[error("invalid request GET {uri}: {source}")]
    InvalidRequest {
        uri: String,
        #[source]
        source: http::Error,
    },

    /// The connection failed or broke before a response arrived.
    #[error("GET {uri} failed: {source}")]
    RequestFailed {
        uri: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },

    /// Reading the response body failed.
    #[error("reading the response body of GET {uri} failed: {source}")]
    ResponseBody {
        uri: String,
        #[source]
        source: hyper::Error,
    },

    /// No complete response arrived within the request timeout.
    #[error("GET {uri} timed out after {seconds} s")]
    RequestTimedOut { uri: String, seconds: u64 },

    /// The API returned a status outside 2xx without an API error object.
    #[error("GET {uri} returned {status}: {body}")]
    UnexpectedStatus {
        uri: String,
        status: StatusCode,
        body: String,
    },

    /// The response body was not the JSON envelope of the HTTP API.
    #[error("GET {uri} returned invalid JSON: {source}")]
    InvalidJson {
        uri: String,
        #[source]
        source: serde_json::Error,
    },

    /// The API returned `"status": "error"`, for example for a PromQL syntax error.
    #[error("GET {uri} failed with {error_type}: {error}")]
    ApiError {
        uri: String,
        error_type: String,
        error: String,
    },
}

// `expect` and a test's `Result` return print `Debug`. Showing the message keeps the server's
// log tail readable there instead of one escaped line.
impl fmt::Debug for PrometheusError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

/// A running private Prometheus server. Dropping it stops the server and removes its
/// directory.
pub struct Prometheus {
    dir: TempDir,
    server: Child,
    port: u16,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Prometheus {
    /// Starts a server on 127.0.0.1 that scrapes `/metrics` on every address in `targets`
    /// under the job [`JOB`], and waits until `GET /-/ready` returns 200.
    ///
    /// `scrape_interval` is the global scrape interval and scrape timeout, in whole
    /// milliseconds. The caller should check [`PROMETHEUS`] with `require_server` first. The
    /// server runs in its own process group with its output in a log file in its temporary
    /// directory. Its lifecycle API (`--web.enable-lifecycle`) is on, so a test can send
    /// `POST /-/reload` or `POST /-/quit`.
    ///
    /// # Errors
    ///
    /// Returns [`PrometheusError::TargetNotLoopback`] for a target outside 127.0.0.1 and
    /// [`PrometheusError::ScrapeIntervalTooShort`] for an interval under 1 ms. Returns
    /// [`PrometheusError::Io`] when the directory, configuration, port or process cannot be
    /// created. When the server does not come up, returns [`PrometheusError::ExitedEarly`] or
    /// [`PrometheusError::StartTimedOut`] (after 60 s), both with the tail of the server's log.
    /// A server that fails to start is stopped before this returns.
    pub async fn start(
        targets: &[SocketAddr],
        scrape_interval: Duration,
    ) -> Result<Prometheus, PrometheusError> {
        let config = scrape_config(targets, scrape_interval)?;
        let dir = tempfile::Builder::new()
            .prefix("ekko-prometheus-")
            .tempdir()
            .map_err(|source| io_error("create the server's temporary directory", source))?;
        let config_path = dir.path().join(CONFIG_FILE);
        fs::write(&config_path, config)
            .map_err(|source| io_error(&format!("write {}", config_path.display()), source))?;

        let port = free_port()?;
        let server = spawn_server(dir.path(), port)?;
        let mut prometheus = Prometheus {
            dir,
            server,
            port,
            client: Client::builder(TokioExecutor::new()).build_http(),
        };

        prometheus.wait_until_ready().await?;
        Ok(prometheus)
    }

    /// Returns the base URL of the HTTP API, `http://127.0.0.1:PORT`, without a trailing
    /// slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Evaluates the PromQL expression `expr` at the current time with
    /// `GET /api/v1/query?query=...` and returns the `data` member of the response, such as
    /// `{"resultType": "vector", "result": [{"metric": {...}, "value": [1700000000.0, "1"]}]}`.
    ///
    /// # Errors
    ///
    /// Returns [`PrometheusError::ApiError`] when Prometheus rejects the expression, and
    /// another [`PrometheusError`] when the call fails or the body is not the API's JSON.
    pub async fn query(&self, expr: &str) -> Result<Value, PrometheusError> {
        let encoded = utf8_percent_encode(expr, QUERY_VALUE);
        self.get_data(&format!("/api/v1/query?query={encoded}"))
            .await
    }

    /// Returns the `data` member of `GET /api/v1/targets`, with each target's `health`,
    /// `lastError` and `lastScrape`, for messages that explain why a scrape failed.
    ///
    /// # Errors
    ///
    /// Returns a [`PrometheusError`] when the call fails or the body is not the API's JSON.
    pub async fn targets(&self) -> Result<Value, PrometheusError> {
        self.get_data("/api/v1/targets").await
    }

    /// Returns the last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let path = self.dir.path().join(LOG_FILE);
        let Ok(text) = fs::read_to_string(&path) else {
            return format!("(no log at {})", path.display());
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    async fn wait_until_ready(&mut self) -> Result<(), PrometheusError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self
                .server
                .try_wait()
                .map_err(|source| io_error("check whether prometheus is running", source))?;
            if let Some(status) = exited {
                return Err(PrometheusError::ExitedEarly {
                    status,
                    url: self.url(),
                    log_tail: self.log_tail(),
                });
            }
            // 503 while the TSDB opens, and a refused connection before the listener is up.
            if matches!(self.get("/-/ready").await, Ok((StatusCode::OK, _))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PrometheusError::StartTimedOut {
                    url: self.url(),
                    seconds: START_TIMEOUT.as_secs(),
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends `GET path` and unwraps the API's envelope `{"status": ..., "data": ...}`.
    async fn get_data(&self, path: &str) -> Result<Value, PrometheusError> {
        let uri = self.uri(path);
        let (status, body) = self.get(path).await?;
        let envelope: Value = match serde_json::from_slice(&body) {
            Ok(envelope) => envelope,
            Err(_) if !status.is_success() => {
                return Err(PrometheusError::UnexpectedStatus {
                    uri,
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            }
            Err(source) => return Err(PrometheusError::InvalidJson { uri, source }),
        };
        if envelope["status"] == "success" {
            return Ok(envelope["data"].clone());
        }
        let text = |name: &str| envelope[name].as_str().unwrap_or("(missing)").to_owned();
        Err(PrometheusError::ApiError {
            error_type: text("errorType"),
            error: text("error"),
            uri,
        })
    }

    /// Sends one `GET` request and returns the status and the whole body.
    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), PrometheusError> {
        let uri = self.uri(path);
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(&uri)).await {
            Ok(result) => result,
            Err(_) => Err(PrometheusError::RequestTimedOut {
                uri,
                seconds: REQUEST_TIMEOUT.as_secs(),
            }),
        }
    }

    async fn exchange(&self, uri: &str) -> Result<(StatusCode, Bytes), PrometheusError> {
        let request = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|source| PrometheusError::InvalidRequest {
                uri: uri.to_owned(),
                source,
            })?;
        let response = self.client.request(request).await.map_err(|source| {
            PrometheusError::RequestFailed {
                uri: uri.to_owned(),
                source,
            }
        })?;
        let status = response.status();
        let collected = response.into_body().collect().await;
        let body = collected.map_err(|source| PrometheusError::ResponseBody {
            uri: uri.to_owned(),
            source,
        })?;
        Ok((status, body.to_bytes()))
    }

    fn uri(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.server);
        if let Err(error) = fs::remove_dir_all(self.dir.path()) {
            eprintln!(
                "test prometheus: failed to remove {}: {error}",
                self.dir.path().display()
            );
        }
    }
}

/// Builds `prometheus.yml`: one job [`JOB`] with `targets` as static targets.
fn scrape_config(
    targets: &[SocketAddr],
    scrape_interval: Duration,
) -> Result<String, PrometheusError> {
    if let Some(target) = targets
        .iter()
        .find(|target| target.ip() != Ipv4Addr::LOCALHOST)
    {
        return Err(PrometheusError::TargetNotLoopback { target: *target });
    }
    let millis = scrape_interval.as_millis();
    if millis == 0 {
        return Err(PrometheusError::ScrapeIntervalTooShort {
            interval: scrape_interval,
        });
    }

    let quoted: Vec<String> = targets
        .iter()
        .map(|target| format!("\"{target}\""))
        .collect();
    // The scrape timeout must not exceed the interval, so it is set to the interval.
    Ok(format!(
        "global:\n  scrape_interval: {millis}ms\n  scrape_timeout: {millis}ms\n\
         scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      \
         - targets: [{}]\n",
        quoted.join(", ")
    ))
}

/// Finds a free port on 127.0.0.1 by binding port 0.
///
/// The port is released before the server binds it, so another process could take it in
/// between. The server then exits and [`Prometheus::start`] reports it with the log tail.
fn free_port() -> Result<u16, PrometheusError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|source| io_error("bind a free port on 127.0.0.1", source))?;
    let address = listener
        .local_addr()
        .map_err(|source| io_error("read the address of a free port", source))?;
    Ok(address.port())
}

fn spawn_server(dir: &Path, port: u16) -> Result<Child, PrometheusError> {
    let log_path = dir.join(LOG_FILE);
    let stdout = File::create(&log_path)
        .map_err(|source| io_error(&format!("create {}", log_path.display()), source))?;
    let stderr = stdout.try_clone().map_err(|source| {
        io_error(
            &format!("duplicate the file handle of {}", log_path.display()),
            source,
        )
    })?;
    Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", dir.join(CONFIG_FILE).display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join(DATA_DIR).display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-lifecycle")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|source| io_error(&format!("start {PROMETHEUS}"), source))
}

/// Stops the server's process group with SIGTERM, then with SIGKILL when it still runs after
/// [`TERM_TIMEOUT`], and reaps the server.
fn stop(server: &mut Child) {
    if !matches!(server.try_wait(), Ok(None)) {
        return;
    }
    signal_process_group(server, "TERM");
    if wait_for_exit(server, TERM_TIMEOUT).is_some() {
        return;
    }

    eprintln!(
        "test prometheus: still running {} s after SIGTERM, so killing process group {}",
        TERM_TIMEOUT.as_secs(),
        server.id()
    );
    signal_process_group(server, "KILL");
    if wait_for_exit(server, KILL_TIMEOUT).is_none() {
        eprintln!(
            "test prometheus: process {} still running after SIGKILL",
            server.id()
        );
    }
}

/// Sends `signal` to the process group that `child` leads. The child must not have been
/// reaped yet, so its id, which is also the group id, cannot belong to another process.
fn signal_process_group(child: &Child, signal: &str) {
    // The bash builtin accepts a negative id for a process group, but the dash builtin does not.
    let status = Command::new("bash")
        .args(["-c", "kill -s \"$1\" -- \"-$2\"", "bash", signal])
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .status();
    if !matches!(status, Ok(status) if status.success()) {
        eprintln!(
            "test prometheus: failed to send SIG{signal} to process group {}",
            child.id()
        );
    }
}

/// Waits up to `timeout` for `child` to exit. Returns `None` when it still runs, or when its
/// state cannot be read.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => return None,
        }
    }
}

fn io_error(action: &str, source: io::Error) -> PrometheusError {
    PrometheusError::Io {
        action: action.to_owned(),
        source,
    }
}
