//! Command-line interface: `serve`, `check`, `fingerprint` and `demo`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::notify::envelope::{self, Decoded};
use crate::notify::fingerprint::compute;
use crate::notify::mask::Mask;
use crate::policy::{self, FingerprintSource};
use crate::server::{Running, ServeError};

/// ekko: forwards a notification only when the entity's state really changed.
#[derive(Debug, Parser)]
#[command(name = "ekko", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM or SIGINT; SIGHUP reloads the policy file.
    Serve {
        /// Policy file (YAML).
        #[arg(long, env = "EKKO_POLICY")]
        policy: PathBuf,
    },
    /// Validate a policy file and list every problem with its line.
    Check {
        /// Policy file (YAML).
        #[arg(long, env = "EKKO_POLICY")]
        policy: PathBuf,
    },
    /// Print the canonical form, the masked fields and the fingerprint of a JSON document.
    Fingerprint {
        /// Policy file (YAML).
        #[arg(long, env = "EKKO_POLICY")]
        policy: PathBuf,
        /// Notification route whose mask applies.
        #[arg(long)]
        route: String,
        /// Treat the input as a notification body and fingerprint its data
        /// (structured CloudEvent, RabbitMQ publish body or JSON, as the route's format sets).
        #[arg(long)]
        notification: bool,
        /// Input file, or `-` for standard input.
        #[arg(default_value = "-")]
        input: String,
    },
    /// Run a self-contained demonstration with an in-process source API and queue.
    Demo,
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    // The demo prints a table; only warnings and errors should interrupt it.
    let default_level = if matches!(cli.command, Command::Demo) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_level);
    match cli.command {
        Command::Serve { policy } => serve(&policy),
        Command::Check { policy } => check(&policy),
        Command::Fingerprint {
            policy,
            route,
            notification,
            input,
        } => fingerprint(&policy, &route, notification, &input),
        Command::Demo => crate::demo::run(),
    }
}

/// Logs to standard error; `EKKO_LOG` takes a filter such as `debug` or `ekko=debug`.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EKKO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour codes only help a person at a terminal; in files and journals they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.finish().with(without_frame_dumps()).try_init(),
        LogFormat::Json => builder
            .json()
            .finish()
            .with(without_frame_dumps())
            .try_init(),
    };
}

/// Drops lapin's trace events whatever filter `EKKO_LOG` sets, because at trace level lapin 4
/// prints every AMQP frame it sends, and `connection.start-ok` carries the broker password
/// (the SASL PLAIN response, as a list of bytes).
fn without_frame_dumps() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(|metadata| {
        !(metadata.target().starts_with("lapin") && *metadata.level() == Level::TRACE)
    })
}

fn serve(path: &Path) -> ExitCode {
    let policy = match policy::load(path) {
        Ok(policy) => policy,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "ekko: policy {} is invalid; nothing started",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ekko: cannot start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_until_stopped(policy, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "ekko stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT, reloading the policy file on each SIGHUP.
async fn serve_until_stopped(policy: policy::Policy, path: &Path) -> Result<(), ServeError> {
    // Handlers go in before the listeners open, so an early SIGHUP cannot kill ekko
    // through its default action.
    let signals = Signals::install();
    let running = crate::server::start_with_policy_file(policy, path.to_owned()).await?;
    match signals {
        Some(mut signals) => signals.serve(&running).await,
        None => {
            tracing::error!("cannot install signal handlers; stop ekko with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
    tracing::info!("shutdown requested; draining in-flight requests");
    let result = running.shutdown().await;
    tracing::info!("ekko stopped");
    result
}

/// The Unix signals that `serve` handles.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> Option<Self> {
        Some(Self {
            terminate: signal(SignalKind::terminate()).ok()?,
            interrupt: signal(SignalKind::interrupt()).ok()?,
            hangup: signal(SignalKind::hangup()).ok()?,
        })
    }

    /// Reloads the policy on each SIGHUP and returns on the first SIGTERM or SIGINT.
    async fn serve(&mut self, running: &Running) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP received; reloading the policy file");
                    // The reload logs and counts its own outcome.
                    let _ = running.reload().await;
                }
            }
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match policy::load(path) {
        Ok(policy) => {
            println!(
                "policy {} is valid: {}, {}",
                path.display(),
                plural(policy.notifications.len(), "notification route"),
                plural(policy.upstreams.len(), "upstream")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            println!(
                "policy {} has {}",
                path.display(),
                plural(errors.0.len(), "problem")
            );
            ExitCode::FAILURE
        }
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn fingerprint(path: &Path, route_name: &str, notification: bool, input: &str) -> ExitCode {
    match fingerprint_report(path, route_name, notification, input) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("ekko fingerprint: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the text that `ekko fingerprint` prints.
pub fn fingerprint_report(
    path: &Path,
    route_name: &str,
    notification: bool,
    input: &str,
) -> Result<String, String> {
    let policy = policy::load(path).map_err(|e| e.to_string())?;
    let route = policy
        .notifications
        .iter()
        .find(|r| r.name == route_name)
        .ok_or_else(|| {
            let names: Vec<_> = policy
                .notifications
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            format!(
                "no route named `{route_name}`; routes: {}",
                names.join(", ")
            )
        })?;
    let bytes = read_input(input)?;
    let state = if notification {
        let headers = structured_headers(&route.format);
        match envelope::decode(&route.format, &headers, &bytes)
            .map_err(|e| format!("cannot decode the notification: {e}"))?
        {
            Decoded::Single(event) => event
                .data
                .ok_or("the notification carries no data to fingerprint")?,
            Decoded::Batch(_) => {
                return Err("batches are not supported here; pass one event".into())
            }
        }
    } else {
        serde_json::from_slice(&bytes).map_err(|e| format!("input is not JSON: {e}"))?
    };
    let mask = Mask::parse(&route.fingerprint.ignore).map_err(|e| e.to_string())?;
    let computed = compute(state, &mask);
    let mode = match &route.fingerprint.source {
        FingerprintSource::Payload => "payload",
        FingerprintSource::Lookup { .. } => "lookup",
        FingerprintSource::None => "none",
    };
    let removed = if computed.removed.is_empty() {
        "(nothing)".to_owned()
    } else {
        computed.removed.join(" ")
    };
    Ok(format!(
        "route: {} (fingerprint: {mode})\nremoved: {removed}\ncanonical: {}\nblake3: {}\n",
        route.name,
        computed.canonical,
        computed.fingerprint.to_hex()
    ))
}

fn structured_headers(format: &policy::Format) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let content_type = match format {
        policy::Format::CloudEvents => "application/cloudevents+json",
        _ => "application/json",
    };
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers
}

fn read_input(input: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    if input == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        bytes = std::fs::read(input).map_err(|e| format!("cannot read {input}: {e}"))?;
    }
    Ok(bytes)
}
