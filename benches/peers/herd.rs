//! S5, the herd: after each change of one entity, many consumers read it at once. Counts
//! the source fetches per change and the stale responses that each server serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;

use crate::load::HttpClient;
use crate::upstream::Upstream;

/// The entity that changes.
const ENTITY: &str = "herd";

/// Change signal sent to the server after each change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSignal {
    /// A notification through ekko's `herd` route, which fetches the entity itself.
    Notification,
    /// A `PURGE` request for the entity's path (nginx cache purge module, Varnish VCL).
    Purge,
    /// Nothing: the cached copy lives until its TTL ends.
    TtlOnly,
}

/// Parameters of the herd.
#[derive(Debug, Clone, Copy)]
pub struct HerdSettings {
    /// Changes of the entity.
    pub changes: u32,
    /// Consumers that read the entity right after each change, all at once.
    pub consumers: u32,
    /// Time from one change to the next.
    pub interval: Duration,
}

/// Counts of what the consumers saw over all changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct HerdResult {
    /// Changes made.
    pub changes: u32,
    /// GET requests for the entity that reached the source.
    pub fetches: u64,
    /// Responses that carried a version older than the current one.
    pub stale: u64,
    /// Responses received with a 2xx status.
    pub answers: u64,
    /// Requests that failed or got a non-2xx response, change signals included.
    pub errors: u64,
}

impl HerdResult {
    /// Source fetches per change.
    pub fn fetches_per_change(&self) -> f64 {
        self.fetches as f64 / f64::from(self.changes.max(1))
    }
}

/// Runs the herd against the server at `addr` and returns what the consumers saw.
pub async fn run(
    client: &HttpClient,
    upstream: &Arc<Upstream>,
    addr: SocketAddr,
    signal: ChangeSignal,
    settings: HerdSettings,
) -> HerdResult {
    let mut result = HerdResult::default();
    let path = format!("{}{ENTITY}", crate::upstream::ENTITY_PREFIX);

    // Warm-up, not counted: the entity is stored and the consumers' credential authorised.
    let _ = send_signal(client, addr, signal, &path).await;
    let _ = wave(client, addr, &path, settings.consumers, 0).await;

    let fetches_before = upstream.count("GET", &path);
    for _ in 0..settings.changes {
        let started = Instant::now();
        let version = upstream.change(ENTITY);
        if !send_signal(client, addr, signal, &path).await {
            result.errors += 1;
        }
        let seen = wave(client, addr, &path, settings.consumers, version).await;
        result.answers += seen.answers;
        result.stale += seen.stale;
        result.errors += seen.errors;
        result.changes += 1;
        if let Some(rest) = settings.interval.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    result.fetches = upstream.count("GET", &path) - fetches_before;
    result
}

/// Tells the server about the change; returns false when the signal failed.
async fn send_signal(
    client: &HttpClient,
    addr: SocketAddr,
    signal: ChangeSignal,
    path: &str,
) -> bool {
    match signal {
        ChangeSignal::TtlOnly => true,
        ChangeSignal::Notification => {
            let body = format!(r#"{{"subject":"{ENTITY}"}}"#);
            let answer = client
                .send(Method::POST, addr, "/herd/notify", None, &body)
                .await;
            matches!(answer, Ok((status, _)) if (200..300).contains(&status))
        }
        ChangeSignal::Purge => {
            let purge = Method::from_bytes(b"PURGE").expect("PURGE is a valid method token");
            let answer = client.send(purge, addr, path, None, "").await;
            // A purge module responds with 404 when nothing was cached, which is no failure.
            matches!(answer, Ok((status, _)) if (200..300).contains(&status) || status == 404)
        }
    }
}

#[derive(Default)]
struct Wave {
    answers: u64,
    stale: u64,
    errors: u64,
}

/// `consumers` concurrent reads of `path`; a response older than `version` is stale.
async fn wave(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    consumers: u32,
    version: u64,
) -> Wave {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..consumers {
        let client = client.clone();
        let path = path.to_owned();
        tasks.spawn(async move {
            client
                .send(Method::GET, addr, &path, Some("Bearer consumer"), "")
                .await
        });
    }
    let mut seen = Wave::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((status, body))) if (200..300).contains(&status) => {
                seen.answers += 1;
                if body_version(&body).is_none_or(|v| v < version) {
                    seen.stale += 1;
                }
            }
            _ => seen.errors += 1,
        }
    }
    seen
}

fn body_version(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("version")?.as_u64()
}
