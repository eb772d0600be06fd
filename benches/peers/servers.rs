//! Starts and stops the servers under test (ekko, nginx, Varnish) from generated
//! configuration, pinned to CPU 0, and reads their CPU time and resident memory from /proc.

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU that the servers under test run on; the load generator and the upstream use CPU 1.
pub const SERVER_CPU: &str = "0";

/// How long a server may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Cache size given to every caching server, in bytes (ekko `cache.max_bytes`, nginx
/// `max_size`, Varnish `-s malloc`).
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The kinds of server that the harness compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ekko with the generated policy.
    Ekko,
    /// nginx with `proxy_pass` only.
    NginxPass,
    /// nginx with `proxy_cache` and `proxy_cache_lock on`.
    NginxCache,
    /// varnishd with the generated VCL.
    Varnish,
}

impl Kind {
    /// Label in the results table.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ekko => "ekko",
            Kind::NginxPass => "nginx proxy_pass",
            Kind::NginxCache => "nginx proxy_cache",
            Kind::Varnish => "Varnish",
        }
    }
}

/// Settings shared by every server's generated configuration.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The upstream's address (queue and source API).
    pub upstream: SocketAddr,
    /// Private directory for configuration, logs, caches and work files.
    pub dir: PathBuf,
    /// ekko's `state.max_entities`.
    pub max_entities: u64,
    /// Cache lifetime, in seconds, of the TTL-based peers (nginx `proxy_cache_valid`,
    /// Varnish `beresp.ttl`). ekko's cache is kept fresh by notifications instead.
    pub peer_ttl_secs: u64,
}

/// A running server process and the port it listens on.
pub struct Server {
    /// Kind of server.
    pub kind: Kind,
    /// The address that clients send requests to.
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

/// Error raised when a server cannot be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Writing the configuration or spawning the process failed.
    #[error("cannot start {server}: {source}; check that it is installed (see benches/peers.sh)")]
    Spawn {
        /// Which server.
        server: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The process exited or did not accept connections in time.
    #[error("{server} did not accept connections on {addr} within {timeout:?}; its log {log} ends with:\n{tail}")]
    NotReady {
        /// Which server.
        server: &'static str,
        /// The address it should listen on.
        addr: SocketAddr,
        /// How long the harness waited.
        timeout: Duration,
        /// Its log file.
        log: String,
        /// The last lines of the log.
        tail: String,
    },
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts a server of `kind` on a free loopback port and waits until it accepts
    /// connections.
    pub fn start(kind: Kind, setup: &Setup) -> Result<Server, StartError> {
        let spawn_error = |source| StartError::Spawn {
            server: kind.label(),
            source,
        };
        let dir = setup.dir.join(kind.label().replace(' ', "-"));
        // A stale directory from an earlier run would hold an old cache or pid file.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(spawn_error)?;
        let port = free_port().map_err(spawn_error)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join("server.log");

        let mut command = match kind {
            Kind::Ekko => ekko_command(setup, &dir, port),
            Kind::NginxPass | Kind::NginxCache => nginx_command(kind, setup, &dir, port),
            Kind::Varnish => varnish_command(setup, &dir, port),
        }
        .map_err(spawn_error)?;
        let log_file = fs::File::create(&log).map_err(spawn_error)?;
        let log_copy = log_file.try_clone().map_err(spawn_error)?;
        command
            .stdin(Stdio::null())
            .stdout(log_copy)
            .stderr(log_file);

        let child = command.spawn().map_err(spawn_error)?;
        let mut server = Server {
            kind,
            addr,
            child,
            log,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited {
                break;
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(StartError::NotReady {
            server: self.kind.label(),
            addr: self.addr,
            timeout: START_TIMEOUT,
            log: self.log.display().to_string(),
            tail: log_tail(&self.log),
        })
    }

    /// Process id of the server's main process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user plus system) used so far by the server and all its descendants
    /// (nginx's worker, Varnish's child process).
    pub fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = process_tree(self.pid())
            .iter()
            .filter_map(|pid| cpu_ticks(*pid))
            .sum();
        ticks as f64 / clock_ticks_per_second()
    }

    /// Resident set size of the main process, in bytes (`VmRSS` in /proc/PID/status).
    pub fn rss_bytes(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    }

    /// Last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Stops the server (SIGTERM to its main process, SIGKILL after 5 s) and removes its
    /// working directory on tmpfs.
    pub fn stop(mut self) {
        self.terminate();
        self.remove_workdir();
    }

    fn terminate(&mut self) {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn remove_workdir(&self) {
        if self.kind == Kind::Varnish {
            let _ = fs::remove_dir_all(varnish_workdir());
        }
    }
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `pid` and every process below it, found through the parent ids in /proc.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) = stat_fields(child).and_then(|f| f.get(1)?.parse().ok()) {
                parents.push((child, parent));
            }
        }
    }
    let mut tree = vec![pid];
    let mut index = 0;
    while index < tree.len() {
        let current = tree[index];
        tree.extend(
            parents
                .iter()
                .filter(|(_, parent)| *parent == current)
                .map(|(child, _)| *child),
        );
        index += 1;
    }
    tree
}

/// Fields of /proc/PID/stat after the command name: state is index 0, ppid index 1,
/// utime index 11 and stime index 12 (fields 14 and 15 of proc(5)).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Reads the kernel's clock ticks per second for /proc times (`getconf CLK_TCK`), 100 when
/// `getconf` fails.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

fn pinned(program: &str) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", SERVER_CPU, program]);
    command
}

fn ekko_command(setup: &Setup, dir: &Path, port: u16) -> std::io::Result<Command> {
    let admin_port = free_port()?;
    let policy = dir.join("policy.yaml");
    fs::write(&policy, ekko_policy(setup, port, admin_port))?;
    let mut command = pinned(env!("CARGO_BIN_EXE_ekko"));
    command
        .args(["serve", "--policy"])
        .arg(&policy)
        .env("TOKIO_WORKER_THREADS", "1")
        // Warnings and errors only: the access log (target `ekko::access`) is at info.
        .env("EKKO_LOG", "warn");
    Ok(command)
}

/// Renders the policy that ekko runs in every scenario.
fn ekko_policy(setup: &Setup, port: u16, admin_port: u16) -> String {
    let upstream = setup.upstream;
    let max_entities = setup.max_entities;
    let cache_mib = CACHE_BYTES / (1024 * 1024);
    format!(
        r#"listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
shutdown_grace: 0s
state:
  max_entities: {max_entities}
upstreams:
  queue:
    url: "http://{upstream}"
  source:
    url: "http://{upstream}"
    headers:
      Authorization: "Bearer ekko"
notifications:
  # S1, S2 and S6: the state is in the notification.
  - name: changes
    match: {{ path: "/notify/{{topic}}" }}
    upstream: queue
    format: json
    pointers: {{ subject: /subject, data: /data }}
    entity: "bench/change/{{subject}}"
    fingerprint: {{ payload: {{}} }}
  # S5: the notification names the entity and ekko fetches its state.
  - name: herd
    match: {{ path: "/herd/notify" }}
    upstream: queue
    format: json
    pointers: {{ subject: /subject }}
    entity: "bench/entity/{{subject}}"
    fingerprint:
      lookup: {{ upstream: source, path: "/entities/{{subject}}" }}
lookups:
  # S3, S4 and S5.
  - name: entities
    match: {{ path: "/entities/{{id}}" }}
    upstream: source
    entity: "bench/entity/{{id}}"
    scope: shared
    authorize_ttl: 10m
    ttl: 5m
cache:
  max_bytes: {cache_mib}MiB
"#
    )
}

fn nginx_command(kind: Kind, setup: &Setup, dir: &Path, port: u16) -> std::io::Result<Command> {
    for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi", "cache"] {
        fs::create_dir_all(dir.join(temp))?;
    }
    let conf = dir.join("nginx.conf");
    fs::write(&conf, nginx_conf(kind, setup, dir, port))?;
    let mut command = pinned("nginx");
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"]);
    Ok(command)
}

fn nginx_conf(kind: Kind, setup: &Setup, dir: &Path, port: u16) -> String {
    let dir = dir.display();
    let upstream = setup.upstream;
    let mut conf = String::new();
    // No purge: Debian 12's cache purge module (libnginx-mod-http-cache-purge 2.3) crashes
    // the nginx 1.22.1 worker with signal 11 on every purge request.
    let cache = if kind == Kind::NginxCache {
        format!(
            "proxy_cache bench;\n            proxy_cache_valid 200 {ttl}s;\n            \
             proxy_cache_lock on;\n            proxy_cache_lock_timeout 10s;",
            ttl = setup.peer_ttl_secs
        )
    } else {
        String::new()
    };
    let _ = write!(
        conf,
        r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:16m max_size={bytes} inactive=1h use_temp_path=off;
    upstream origin {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            {cache}
        }}
    }}
}}
"#,
        bytes = CACHE_BYTES,
    );
    conf
}

fn varnish_command(setup: &Setup, dir: &Path, port: u16) -> std::io::Result<Command> {
    let vcl = dir.join("bench.vcl");
    fs::write(&vcl, varnish_vcl(setup))?;
    let mut command = pinned("varnishd");
    command
        .args(["-F", "-j", "none", "-n"])
        .arg(varnish_workdir())
        .args(["-a", &format!("127.0.0.1:{port}"), "-f"])
        .arg(&vcl)
        .args(["-s", &format!("malloc,{CACHE_BYTES}")])
        .args(["-T", "none"])
        .args(["-p", "thread_pools=1"]);
    Ok(command)
}

/// Varnish's working directory. Varnish writes its shared-memory log there on every
/// request, so it goes on tmpfs as Debian's own service does, one per harness process.
fn varnish_workdir() -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/ekko-peers-varnish-{}",
        std::process::id()
    ))
}

/// VCL that caches every GET and HEAD for the peer TTL, also with `Authorization`, and
/// purges on a `PURGE` request from loopback.
fn varnish_vcl(setup: &Setup) -> String {
    let upstream = setup.upstream;
    format!(
        r#"vcl 4.1;
backend origin {{
    .host = "{host}";
    .port = "{port}";
}}
acl purgers {{ "127.0.0.1"; }}
sub vcl_recv {{
    if (req.method == "PURGE") {{
        if (client.ip !~ purgers) {{ return (synth(405)); }}
        return (purge);
    }}
    # The built-in VCL passes requests with Authorization; these consumers share entries.
    if (req.method == "GET" || req.method == "HEAD") {{ return (hash); }}
    return (pass);
}}
sub vcl_backend_response {{
    set beresp.ttl = {ttl}s;
    # No grace: an expired object is fetched again, not served stale.
    set beresp.grace = 0s;
    return (deliver);
}}
"#,
        host = upstream.ip(),
        port = upstream.port(),
        ttl = setup.peer_ttl_secs
    )
}
