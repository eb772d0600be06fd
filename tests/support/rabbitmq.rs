//! A private RabbitMQ broker with the management plugin, started per test on 127.0.0.1.
//!
//! Checked with the Debian 12 package `rabbitmq-server` 3.10.8. Every file the broker writes
//! (Erlang cookie, Mnesia database, logs, configuration) lives in one temporary directory. The
//! broker registers with its own epmd on a private port. Tests can therefore run several
//! brokers at once without touching any other Erlang node on the machine.

use std::fmt;
use std::fs::{self, File};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::{json, Value};
use tempfile::TempDir;

/// Path of the broker start script in the Debian package. The `/usr/sbin` wrapper is not
/// used because it switches to the `rabbitmq` user when run as root.
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// Path of the broker control tool in the Debian package.
pub const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// Path of the Erlang port mapper daemon, from the Debian package `erlang-base`.
pub const EPMD: &str = "/usr/bin/epmd";

/// User name and password of the broker's default user, which RabbitMQ accepts from loopback
/// only.
pub const GUEST: &str = "guest";

/// Range for the AMQP, management and epmd ports. The distribution port is the AMQP port plus
/// [`DIST_PORT_OFFSET`], as RabbitMQ derives it by default, so it falls in 40000..54000. Both
/// ranges stay clear of 35672..=35682, the distribution ports rabbitmqctl 3.10 uses for itself.
const PORT_RANGE: std::ops::Range<u16> = 20000..34000;
const DIST_PORT_OFFSET: u16 = 20000;
const PORT_ATTEMPTS: u64 = 50;

/// Startup took 6 to 8 s on a 2-core test machine, so 60 s leaves room for a loaded one.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CTL_STOP_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const EPMD_KILL_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 40;

const STDOUT_FILE: &str = "rabbitmq-server.stdout";
const STDERR_FILE: &str = "rabbitmq-server.stderr";
const LOG_DIR: &str = "log";

/// Characters left as they are in a path segment: the RFC 3986 unreserved set.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Failure to start a test broker or to complete a management API call on it.
#[derive(thiserror::Error)]
pub enum BrokerError {
    /// Every random port set tried was partly in use.
    #[error(
        "no free ports for a test broker after {attempts} random tries in {PORT_RANGE:?}: \
         stop stray brokers or other servers using that range"
    )]
    NoFreePorts { attempts: u64 },

    /// A file or process operation failed.
    #[error("failed to {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },

    /// The server process exited before its management API responded.
    #[error(
        "rabbitmq-server exited ({status}) before {url}/api/overview responded; \
         broker log tail:\n{log_tail}"
    )]
    ExitedEarly {
        status: ExitStatus,
        url: String,
        log_tail: String,
    },

    /// The management API did not respond in time.
    #[error(
        "rabbitmq-server did not respond to {url}/api/overview within {seconds} s; \
         broker log tail:\n{log_tail}"
    )]
    StartTimedOut {
        url: String,
        seconds: u64,
        log_tail: String,
    },

    /// The request could not be built, for example from an invalid URI.
    #[error("invalid management API request {method} {uri}: {source}")]
    InvalidRequest {
        method: Method,
        uri: String,
        #[source]
        source: http::Error,
    },

    /// The connection failed or broke before a response arrived.
    #[error("{method} {uri} failed: {source}")]
    RequestFailed {
        method: Method,
        uri: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },

    /// Reading the response body failed.
    #[error("reading the response body of {method} {uri} failed: {source}")]
    ResponseBody {
        method: Method,
        uri: String,
        #[source]
        source: hyper::Error,
    },

    /// No complete response arrived within the request timeout.
    #[error("{method} {uri} timed out after {seconds} s")]
    RequestTimedOut {
        method: Method,
        uri: String,
        seconds: u64,
    },

    /// The management API returned a status outside 2xx.
    #[error("{method} {uri} returned {status}: {body}")]
    UnexpectedStatus {
        method: Method,
        uri: String,
        status: StatusCode,
        body: String,
    },

    /// The response body was not the JSON the call expects.
    #[error("{method} {uri} returned invalid JSON: {source}")]
    InvalidJson {
        method: Method,
        uri: String,
        #[source]
        source: serde_json::Error,
    },
}

// `expect` and a test's `Result` return print `Debug`. Showing the message keeps the broker
// log tail readable there instead of one escaped line.
impl fmt::Debug for BrokerError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    amqp: u16,
    dist: u16,
    management: u16,
    epmd: u16,
}

#[derive(Deserialize)]
struct PublishResponse {
    routed: bool,
}

/// A running private RabbitMQ broker. Dropping it stops the broker and its epmd and removes its
/// directory.
pub struct Broker {
    dir: TempDir,
    server: Child,
    ports: Ports,
    env: Vec<(&'static str, String)>,
    client: Client<HttpConnector, Full<Bytes>>,
    authorization: String,
}

impl Broker {
    /// Starts a broker with the management plugin on 127.0.0.1 and waits until
    /// `GET /api/overview` with `guest:guest` returns a 2xx status.
    ///
    /// The caller should check [`RABBITMQ_SERVER`] with `require_server` first. The server
    /// runs in its own process group with its output in files in the broker's temporary
    /// directory.
    ///
    /// # Errors
    ///
    /// Returns [`BrokerError::NoFreePorts`] when no free port set is found,
    /// [`BrokerError::Io`] when the directory, configuration or process cannot be created, and
    /// [`BrokerError::ExitedEarly`] or [`BrokerError::StartTimedOut`] (after 60 s), both with
    /// the tail of the broker's logs, when the broker does not come up. A broker that fails to
    /// start is stopped before this returns.
    pub async fn start() -> Result<Broker, BrokerError> {
        let dir = tempfile::Builder::new()
            .prefix("ekko-rabbitmq-")
            .tempdir()
            .map_err(|source| io_error("create the broker's temporary directory", source))?;
        let ports = pick_ports()?;
        write_config_files(dir.path(), ports)?;

        let node_name = format!("ekkotest{}@localhost", ports.amqp);
        let env = broker_env(dir.path(), ports, &node_name);
        let server = spawn_server(dir.path(), &env)?;
        let mut broker = Broker {
            dir,
            server,
            ports,
            env,
            client: Client::builder(TokioExecutor::new()).build_http(),
            authorization: basic_authorization(GUEST, GUEST),
        };

        broker.wait_until_ready().await?;
        Ok(broker)
    }

    /// Returns the base URL of the management HTTP API, `http://127.0.0.1:PORT`, without a
    /// trailing slash.
    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.management)
    }

    /// Returns the AMQP 0-9-1 URL of vhost `/`, `amqp://127.0.0.1:PORT/%2F`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://127.0.0.1:{}/%2F", self.ports.amqp)
    }

    /// Stops the RabbitMQ application with `rabbitmqctl stop_app`, which closes every client
    /// connection while the Erlang node keeps running, so [`Broker::start_app`] can bring it
    /// back on the same ports.
    ///
    /// # Errors
    ///
    /// Returns the command's failure or timeout (30 s) as text.
    pub fn stop_app(&self) -> Result<(), String> {
        self.rabbitmqctl("stop_app")
    }

    /// Starts the RabbitMQ application again after [`Broker::stop_app`]; exchanges, queues
    /// and bindings declared durable are kept.
    ///
    /// # Errors
    ///
    /// Returns the command's failure or timeout (30 s) as text.
    pub fn start_app(&self) -> Result<(), String> {
        self.rabbitmqctl("start_app")
    }

    fn rabbitmqctl(&self, action: &str) -> Result<(), String> {
        let mut command = self.command(RABBITMQCTL);
        command.arg(action);
        let output = self.dir.path().join(format!("rabbitmqctl-{action}.out"));
        run_with_timeout(command, CTL_STOP_TIMEOUT, &output)
            .map_err(|problem| format!("`rabbitmqctl {action}` {problem}"))
    }

    /// Returns the value of an `Authorization` header for the management API (HTTP Basic
    /// authentication, RFC 7617, as `guest:guest`).
    pub fn authorization(&self) -> &str {
        &self.authorization
    }

    /// Declares a durable topic exchange `name` in vhost `/`.
    ///
    /// # Errors
    ///
    /// Returns a [`BrokerError`] when the API call fails or returns a status outside 2xx, for
    /// example when an exchange of that name exists with another type.
    pub async fn declare_topic_exchange(&self, name: &str) -> Result<(), BrokerError> {
        let path = format!("/api/exchanges/%2F/{}", path_segment(name));
        let body = json!({ "type": "topic", "durable": true });
        self.request(Method::PUT, &path, Some(&body)).await?;
        Ok(())
    }

    /// Declares a durable queue `name` in vhost `/`.
    ///
    /// # Errors
    ///
    /// Returns a [`BrokerError`] when the API call fails or returns a status outside 2xx.
    pub async fn declare_queue(&self, name: &str) -> Result<(), BrokerError> {
        let path = format!("/api/queues/%2F/{}", path_segment(name));
        let body = json!({ "durable": true });
        self.request(Method::PUT, &path, Some(&body)).await?;
        Ok(())
    }

    /// Binds `queue` to `exchange` in vhost `/` with `routing_key`, a topic pattern such as
    /// `entity.#`.
    ///
    /// # Errors
    ///
    /// Returns a [`BrokerError`] when the API call fails or returns a status outside 2xx, for
    /// example when the exchange or queue does not exist.
    pub async fn bind(
        &self,
        exchange: &str,
        queue: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let path = format!(
            "/api/bindings/%2F/e/{}/q/{}",
            path_segment(exchange),
            path_segment(queue)
        );
        let body = json!({ "routing_key": routing_key });
        self.request(Method::POST, &path, Some(&body)).await?;
        Ok(())
    }

    /// Publishes `payload` as a UTF-8 string with no properties to `exchange` in vhost `/`.
    ///
    /// Returns the broker's `routed` flag: `true` when at least one queue received the message.
    ///
    /// # Errors
    ///
    /// Returns a [`BrokerError`] when the API call fails, returns a status outside 2xx, or
    /// returns a body without a boolean `routed` field.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &str,
    ) -> Result<bool, BrokerError> {
        let path = format!("/api/exchanges/%2F/{}/publish", path_segment(exchange));
        let body = json!({
            "properties": {},
            "routing_key": routing_key,
            "payload": payload,
            "payload_encoding": "string",
        });
        let response: PublishResponse = self.request_json(Method::POST, &path, &body).await?;
        Ok(response.routed)
    }

    /// Takes up to `count` messages from the head of `queue` in vhost `/`, oldest first, and
    /// removes them from the queue (`ack_requeue_false`).
    ///
    /// Each message is the management API's JSON object, with fields such as `payload`,
    /// `payload_encoding` (`string` for UTF-8 payloads, else `base64`), `routing_key`,
    /// `exchange` and `properties`.
    ///
    /// # Errors
    ///
    /// Returns a [`BrokerError`] when the API call fails, returns a status outside 2xx, or
    /// returns a body that is not a JSON array.
    pub async fn get_messages(&self, queue: &str, count: usize) -> Result<Vec<Value>, BrokerError> {
        let path = format!("/api/queues/%2F/{}/get", path_segment(queue));
        let body = json!({
            "count": count,
            "ackmode": "ack_requeue_false",
            "encoding": "auto",
        });
        self.request_json(Method::POST, &path, &body).await
    }

    async fn wait_until_ready(&mut self) -> Result<(), BrokerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self
                .server
                .try_wait()
                .map_err(|source| io_error("check whether rabbitmq-server is running", source))?;
            if let Some(status) = exited {
                return Err(BrokerError::ExitedEarly {
                    status,
                    url: self.management_url(),
                    log_tail: self.log_tail(),
                });
            }
            if self
                .request(Method::GET, "/api/overview", None)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::StartTimedOut {
                    url: self.management_url(),
                    seconds: START_TIMEOUT.as_secs(),
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn request_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<T, BrokerError> {
        let bytes = self.request(method.clone(), path, Some(body)).await?;
        serde_json::from_slice(&bytes).map_err(|source| BrokerError::InvalidJson {
            method,
            uri: self.uri(path),
            source,
        })
    }

    /// Sends one management API request and returns the body of a 2xx response.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, BrokerError> {
        let uri = self.uri(path);
        let exchange = self.exchange(method.clone(), &uri, body);
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::RequestTimedOut {
                method,
                uri,
                seconds: REQUEST_TIMEOUT.as_secs(),
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, BrokerError> {
        let content = body.map(|value| Bytes::from(value.to_string()));
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(AUTHORIZATION, &self.authorization)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(content.unwrap_or_default()))
            .map_err(|source| BrokerError::InvalidRequest {
                method: method.clone(),
                uri: uri.to_owned(),
                source,
            })?;

        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| BrokerError::RequestFailed {
                    method: method.clone(),
                    uri: uri.to_owned(),
                    source,
                })?;
        let status = response.status();
        let collected = response.into_body().collect().await;
        let bytes = collected
            .map_err(|source| BrokerError::ResponseBody {
                method: method.clone(),
                uri: uri.to_owned(),
                source,
            })?
            .to_bytes();

        if !status.is_success() {
            return Err(BrokerError::UnexpectedStatus {
                method,
                uri: uri.to_owned(),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes)
    }

    fn uri(&self, path: &str) -> String {
        format!("{}{path}", self.management_url())
    }

    /// Returns the last lines of the server's output and of each file in its log directory.
    fn log_tail(&self) -> String {
        let dir = self.dir.path();
        let mut files = vec![dir.join(STDOUT_FILE), dir.join(STDERR_FILE)];
        let mut logs: Vec<PathBuf> = fs::read_dir(dir.join(LOG_DIR))
            .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default();
        logs.sort();
        files.extend(logs);

        let sections: Vec<String> = files
            .iter()
            .filter_map(|path| {
                let text = fs::read_to_string(path).ok()?;
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                (!tail.is_empty())
                    .then(|| format!("==> {} <==\n{}", path.display(), tail.join("\n")))
            })
            .collect();
        if sections.is_empty() {
            return format!("(no output in {})", dir.display());
        }
        sections.join("\n")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .envs(self.env.iter().map(|(name, value)| (*name, value.as_str())))
            .current_dir(self.dir.path());
        command
    }

    fn stop_with_rabbitmqctl(&self) {
        let mut command = self.command(RABBITMQCTL);
        command.arg("stop");
        let output = self.dir.path().join("rabbitmqctl-stop.out");
        if let Err(problem) = run_with_timeout(command, CTL_STOP_TIMEOUT, &output) {
            eprintln!("test broker: `rabbitmqctl stop` {problem}");
        }
    }

    fn kill_epmd(&self) {
        let mut command = self.command(EPMD);
        command.arg("-kill");
        let output = self.dir.path().join("epmd-kill.out");
        if let Err(problem) = run_with_timeout(command, EPMD_KILL_TIMEOUT, &output) {
            eprintln!(
                "test broker: `epmd -kill` on port {} {problem}. An epmd on that port may still run",
                self.ports.epmd
            );
        }
    }
}

impl Drop for Broker {
    // The server's process group is killed before `epmd -kill`, because epmd rejects that
    // request while a node is still registered with it.
    fn drop(&mut self) {
        if matches!(self.server.try_wait(), Ok(None)) {
            self.stop_with_rabbitmqctl();
        }
        if wait_for_exit(&mut self.server, EXIT_TIMEOUT).is_none() {
            eprintln!("test broker: rabbitmq-server still running after `rabbitmqctl stop`, so killing its process group");
            kill_process_group(&self.server);
            let _ = self.server.wait();
        }
        self.kill_epmd();

        if let Err(error) = fs::remove_dir_all(self.dir.path()) {
            eprintln!(
                "test broker: failed to remove {}: {error}",
                self.dir.path().display()
            );
        }
    }
}

/// Finds a free AMQP port whose distribution port is also free, plus free management and epmd
/// ports, all distinct.
///
/// The ports are released before the broker binds them, so another process could take one in
/// between. The broker then exits and [`Broker::start`] reports it with the log tail.
fn pick_ports() -> Result<Ports, BrokerError> {
    let random = RandomState::new();
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    let port = |attempt: u64, role: u64| {
        let offset = random.hash_one((attempt, role)) % span;
        PORT_RANGE.start + u16::try_from(offset).expect("offset is below the span of a u16 range")
    };

    for attempt in 0..PORT_ATTEMPTS {
        let candidate = Ports {
            amqp: port(attempt, 0),
            dist: port(attempt, 0) + DIST_PORT_OFFSET,
            management: port(attempt, 1),
            epmd: port(attempt, 2),
        };
        if ports_are_free(candidate) {
            return Ok(candidate);
        }
    }
    Err(BrokerError::NoFreePorts {
        attempts: PORT_ATTEMPTS,
    })
}

/// Binds all four ports on 127.0.0.1 at the same time, which also proves they are distinct,
/// then releases them.
fn ports_are_free(ports: Ports) -> bool {
    let mut listeners = Vec::new();
    for port in [ports.amqp, ports.dist, ports.management, ports.epmd] {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => listeners.push(listener),
            Err(_) => return false,
        }
    }
    true
}

fn write_config_files(dir: &Path, ports: Ports) -> Result<(), BrokerError> {
    let config = format!(
        "management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {}\n",
        ports.management
    );
    let files = [
        ("rabbitmq.conf", config.as_str()),
        ("enabled_plugins", "[rabbitmq_management].\n"),
        // An empty file here keeps /etc/rabbitmq/rabbitmq-env.conf from being read.
        ("rabbitmq-env.conf", ""),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        fs::write(&path, content)
            .map_err(|source| io_error(&format!("write {}", path.display()), source))?;
    }
    Ok(())
}

/// Returns the environment that points the broker, rabbitmqctl and epmd at the private
/// directory and ports.
fn broker_env(dir: &Path, ports: Ports, node_name: &str) -> Vec<(&'static str, String)> {
    let path = |name: &str| dir.join(name).display().to_string();
    vec![
        ("HOME", dir.display().to_string()),
        ("RABBITMQ_NODENAME", node_name.to_owned()),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
        ("RABBITMQ_NODE_PORT", ports.amqp.to_string()),
        ("RABBITMQ_DIST_PORT", ports.dist.to_string()),
        (
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}".to_owned(),
        ),
        ("ERL_EPMD_PORT", ports.epmd.to_string()),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
        ("RABBITMQ_MNESIA_BASE", path("mnesia")),
        ("RABBITMQ_LOG_BASE", path(LOG_DIR)),
        ("RABBITMQ_PID_FILE", path("rabbitmq.pid")),
        ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
        ("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config")),
        ("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
    ]
}

fn spawn_server(dir: &Path, env: &[(&'static str, String)]) -> Result<Child, BrokerError> {
    let stdout = create_file(&dir.join(STDOUT_FILE))?;
    let stderr = create_file(&dir.join(STDERR_FILE))?;
    Command::new(RABBITMQ_SERVER)
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|source| io_error(&format!("start {RABBITMQ_SERVER}"), source))
}

/// Runs `command` in its own process group with its output in `output`, killing the group
/// after `timeout`. Returns a description of the problem when it fails, times out or exits
/// unsuccessfully.
fn run_with_timeout(mut command: Command, timeout: Duration, output: &Path) -> Result<(), String> {
    let stdout = File::create(output).map_err(|error| format!("could not log output: {error}"))?;
    let stderr = stdout
        .try_clone()
        .map_err(|error| format!("could not log output: {error}"))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|error| format!("failed to start: {error}"))?;

    let Some(status) = wait_for_exit(&mut child, timeout) else {
        kill_process_group(&child);
        let _ = child.wait();
        return Err(format!("timed out after {} s", timeout.as_secs()));
    };
    if !status.success() {
        let text = fs::read_to_string(output).unwrap_or_default();
        return Err(format!("failed ({status}): {}", text.trim()));
    }
    Ok(())
}

/// Waits up to `timeout` for `child` to exit. Returns `None` when it still runs, or when its
/// state cannot be read.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => return None,
        }
    }
}

/// Sends SIGKILL to the process group that `child` leads. The child must not have been reaped
/// yet, so its id, which is also the group id, cannot belong to another process.
fn kill_process_group(child: &Child) {
    // The bash builtin accepts a negative id for a process group, but the dash builtin does not.
    let status = Command::new("bash")
        .args(["-c", "kill -KILL -- \"-$1\"", "bash"])
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .status();
    if !matches!(status, Ok(status) if status.success()) {
        eprintln!("test broker: failed to kill process group {}", child.id());
    }
}

fn create_file(path: &Path) -> Result<File, BrokerError> {
    File::create(path).map_err(|source| io_error(&format!("create {}", path.display()), source))
}

fn io_error(action: &str, source: io::Error) -> BrokerError {
    BrokerError::Io {
        action: action.to_owned(),
        source,
    }
}

fn path_segment(name: &str) -> String {
    utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

fn basic_authorization(user: &str, password: &str) -> String {
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {credentials}")
}
