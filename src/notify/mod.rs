//! Producer path: decode the notification, fingerprint the entity, decide, forward, commit.

mod amqp;
pub mod canonical;
mod decide;
pub mod envelope;
pub mod fingerprint;
mod forward;
mod guarded;
mod locks;
pub mod mask;
mod reply;
pub mod route;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use tokio::time::Instant;

pub use decide::{Decision, Verdict, LOOKUP_BODY_LIMIT};
pub use guarded::{ReleaseOutcome, COALESCED_HEADER};
pub use reply::{json_response, NotifyError, DECISION_HEADER};

use crate::guard::{self, LoopGuard};
use crate::metrics::{DecisionLabels, Metrics, RouteLabels};
use crate::policy::{OnUndecodable, Policy, UpstreamConfig};
use crate::state::StateStore;
use crate::upstream::UpstreamClient;
use decide::Pending;
use envelope::{Decoded, Event};
use locks::EntityLocks;
use route::{CompiledRoute, Matched, RouteMatch};

/// Maximum length of an entity key in bytes; longer keys are rejected with 400.
pub const MAX_KEY_BYTES: usize = 1024;

/// Time a producer gets to send the whole request body (30 s); then 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Wall-clock milliseconds that follow Tokio's clock, so paused-time tests can move
/// duplicate windows and snapshot ages forward.
#[derive(Debug, Clone)]
pub struct Clock {
    wall_ms_at_start: u64,
    start: Instant,
}

impl Clock {
    /// Starts a clock at the current wall-clock time.
    pub fn new() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            wall_ms_at_start: wall.as_millis() as u64,
            start: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.wall_ms_at_start + self.start.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The notification handler: owns the compiled routes and shares state and metrics.
///
/// The state, the loop guard, the held-notification writer, the entity locks, the clock
/// and the lookup cache's store outlive a policy reload: [`Gateway::with_policy`] builds a
/// gateway for the new routes that shares them with this one.
pub struct Gateway {
    routes: Vec<CompiledRoute>,
    upstreams: BTreeMap<String, UpstreamConfig>,
    amqp: crate::amqp::AmqpUpstreams,
    client: UpstreamClient,
    state: Arc<StateStore>,
    guard: Arc<LoopGuard>,
    held_writer: Option<Arc<guard::HeldWriter>>,
    lookups: crate::lookup::LookupCache,
    metrics: Arc<Metrics>,
    locks: Arc<EntityLocks>,
    clock: Clock,
}

impl Gateway {
    /// Compiles the policy's routes; fails only on a mask that validation should have caught.
    pub fn new(
        policy: &Policy,
        state: Arc<StateStore>,
        loop_guard: Arc<LoopGuard>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, mask::MaskError> {
        let routes = compile_routes(policy)?;
        let client = upstream_client(policy, &metrics);
        Ok(Self {
            routes,
            upstreams: policy.upstreams.clone(),
            amqp: crate::amqp::AmqpUpstreams::start(policy, &metrics),
            lookups: crate::lookup::LookupCache::new(policy, client.clone(), metrics.clone()),
            client,
            state,
            guard: loop_guard,
            held_writer: policy
                .state
                .snapshot
                .as_deref()
                .map(|path| Arc::new(guard::HeldWriter::new(guard::held_path(path)))),
            metrics,
            locks: Arc::default(),
            clock: Clock::new(),
        })
    }

    /// Compiles the routes and upstreams of a reloaded policy into a gateway that shares
    /// this one's state, loop guard, held-notification writer, entity locks, clock and
    /// lookup cache entries, so fingerprints, quarantines and cached lookups survive.
    ///
    /// The `state` and `cache` sections of `policy` are not applied, because the shared
    /// parts keep the bounds and the snapshot path they were created with.
    ///
    /// # Errors
    ///
    /// Fails on a mask that validation should have caught; this gateway is unaffected.
    pub fn with_policy(&self, policy: &Policy) -> Result<Self, mask::MaskError> {
        let routes = compile_routes(policy)?;
        let client = upstream_client(policy, &self.metrics);
        Ok(Self {
            routes,
            upstreams: policy.upstreams.clone(),
            amqp: self.amqp.with_policy(policy, &self.metrics),
            lookups: self.lookups.with_policy(policy, client.clone()),
            client,
            state: self.state.clone(),
            guard: self.guard.clone(),
            held_writer: self.held_writer.clone(),
            metrics: self.metrics.clone(),
            locks: self.locks.clone(),
            clock: self.clock.clone(),
        })
    }

    /// Drops the state that only routes of `previous` missing from this gateway could use,
    /// and returns how much was dropped.
    ///
    /// That is fingerprints made under fingerprint settings that no route in force has, which
    /// could never be compared again, and cached lookups of removed lookup routes, which no
    /// request can reach. A route that returns later with the same settings forwards each
    /// entity's next notification once, as after a restart without a snapshot.
    pub fn drop_removed_routes_state(&self, previous: &Gateway) -> DroppedState {
        let live: std::collections::HashSet<u64> = self.routes.iter().map(|r| r.spec).collect();
        let fingerprints = if previous.routes.iter().any(|r| !live.contains(&r.spec)) {
            let dropped = self
                .state
                .entities
                .retain(|record| live.contains(&record.spec));
            self.metrics
                .state_entities
                .set(self.state.entities.len() as i64);
            dropped
        } else {
            0
        };
        DroppedState {
            fingerprints,
            cache_entries: self.lookups.purge_removed_routes(&previous.lookups),
        }
    }

    /// Returns the lookup cache, for the admin API.
    pub fn lookups(&self) -> &crate::lookup::LookupCache {
        &self.lookups
    }

    /// Returns the AMQP upstreams and their connections, for readiness.
    pub fn amqp(&self) -> &crate::amqp::AmqpUpstreams {
        &self.amqp
    }

    /// Returns the loop guard's tables, for the admin API.
    pub fn guard(&self) -> &LoopGuard {
        &self.guard
    }

    /// Returns the last forwarded state of an entity, for the admin API.
    pub fn entity_record(&self, key: &str) -> Option<crate::state::EntityRecord> {
        self.state.entities.peek(key)
    }

    /// Returns the loop guard settings of route `name`.
    pub fn loop_guard_config(&self, name: &str) -> Option<crate::policy::LoopGuardConfig> {
        self.routes
            .iter()
            .find(|r| r.route.name == name)
            .map(|r| r.route.loop_guard.clone())
    }

    /// Milliseconds since the Unix epoch on the gateway's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Returns `true` when a notification route matches `method` and `path`. Such a
    /// request commits state after its forward, so it must run to the end even when its
    /// client disconnects, whatever its method. Routes of another method cost no path
    /// match.
    pub fn is_notification(&self, method: &http::Method, path: &str) -> bool {
        self.routes
            .iter()
            .any(|route| route.route.method == *method && route.route.path.matches(path).is_some())
    }

    /// Returns the fingerprint settings digest of route `name`, as stored with its fingerprints.
    pub fn route_spec(&self, name: &str) -> Option<u64> {
        self.routes
            .iter()
            .find(|r| r.route.name == name)
            .map(|r| r.spec)
    }

    /// Handles one request and returns the response. Every failure becomes an error response.
    pub async fn handle<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let response = self.dispatch(request, peer).await;
        access_log(&method, &path, &response, peer, started);
        response
    }

    async fn dispatch<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let arrived = Instant::now();
        let (parts, body) = request.into_parts();
        let found = route::find(&self.routes, &parts.method, parts.uri.path());
        if !matches!(found, RouteMatch::Found(_)) {
            if let Some(lookup) = self.lookups.find(parts.uri.path()) {
                if let Err(error) = reject_dot_segments(parts.uri.path()) {
                    return error.into_response();
                }
                return Box::pin(self.lookups.handle(lookup, &parts, body, peer)).await;
            }
        }
        let matched = match found {
            RouteMatch::Found(matched) => matched,
            RouteMatch::WrongMethod(allowed) => {
                let allowed = allowed
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                return NotifyError::WrongMethod {
                    method: parts.method,
                    allowed,
                }
                .into_response();
            }
            RouteMatch::NotFound => {
                return NotifyError::NoRoute {
                    method: parts.method,
                    path: parts.uri.path().to_owned(),
                }
                .into_response();
            }
        };
        let route_name = matched.route.route.name.clone();

        let response = match self
            .handle_matched(&matched, &parts, body, peer, arrived)
            .await
        {
            Ok(response) => response,
            Err(error) => {
                let decision = match error {
                    NotifyError::Upstream(_) | NotifyError::Amqp(_) => "upstream_error",
                    NotifyError::EntityBusy => "busy",
                    NotifyError::Internal(_) => "internal_error",
                    _ => "rejected",
                };
                match &error {
                    NotifyError::Internal(detail) => {
                        tracing::error!(route = %route_name, detail, "internal error")
                    }
                    _ => tracing::debug!(route = %route_name, %error, "notification not handled"),
                }
                self.count(&route_name, decision, 1);
                error.into_response()
            }
        };
        self.metrics
            .notification_duration
            .get_or_create(&RouteLabels { route: route_name })
            .observe(arrived.elapsed().as_secs_f64());
        response
    }

    async fn handle_matched<B>(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        body: B,
        peer: SocketAddr,
        arrived: Instant,
    ) -> Result<Response<Full<Bytes>>, NotifyError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        reject_dot_segments(parts.uri.path())?;
        let route = &matched.route.route;
        let body = read_body(body, parts, route.max_body).await?;

        let decoded = envelope::decode(&route.format, &parts.headers, &body);
        let result = match decoded {
            Ok(Decoded::Single(event)) => {
                self.single(matched, parts, body.clone(), event, peer, arrived)
                    .await
            }
            Ok(Decoded::Batch(events)) => {
                Box::pin(self.batch(matched, parts, events, peer, arrived)).await
            }
            Err(error) => Err(NotifyError::Undecodable(error.0)),
        };
        match result {
            Err(error @ (NotifyError::Undecodable(_) | NotifyError::MissingField { .. }))
                if route.on_undecodable == OnUndecodable::Forward =>
            {
                tracing::debug!(route = %route.name, %error, "forwarding an undecodable notification");
                self.count_fail_open(&route.name, "undecodable");
                Box::pin(self.pass_through(matched, parts, body, peer)).await
            }
            other => other,
        }
    }

    /// Builds the entity key from the route's template.
    fn entity_key(&self, matched: &Matched<'_>, event: &Event) -> Result<String, NotifyError> {
        let template = &matched.route.route.entity;
        let key = template
            .render_key(|name| decide::field(matched, event, name))
            .map_err(|field| NotifyError::MissingField {
                field,
                template: template.to_string(),
                element: None,
            })?;
        if key.len() > MAX_KEY_BYTES {
            return Err(NotifyError::KeyTooLong {
                length: key.len(),
                limit: MAX_KEY_BYTES,
                element: None,
            });
        }
        Ok(key)
    }

    /// Decides and handles a notification that names one entity.
    async fn single(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        body: Bytes,
        event: Event,
        peer: SocketAddr,
        arrived: Instant,
    ) -> Result<Response<Full<Bytes>>, NotifyError> {
        let route = &matched.route.route;
        let key = self.entity_key(matched, &event)?;
        let mut guard = self
            .locks
            .acquire(&key, route.max_entity_wait)
            .await
            .ok_or(NotifyError::EntityBusy)?;
        let mut verdict = self
            .decide(
                matched,
                key,
                &event,
                arrived,
                guard.slot(),
                &Pending::default(),
            )
            .await;
        self.causal_context(&parts.headers, &event, &mut verdict);
        self.apply_guard(matched, &mut verdict, |v| {
            Self::held_copy(parts, &body, peer, v)
        });
        tracing::debug!(route = %route.name, entity = %verdict.key, decision = verdict.decision.as_str(), "decided");

        let verdicts = [verdict];
        self.save_holds(&verdicts).await?;
        if self.suppresses(matched, &verdicts) {
            return Ok(self.suppress(matched, &verdicts));
        }
        Box::pin(self.forward_and_commit(matched, parts, body, peer, &verdicts)).await
    }

    /// Decides each event of a CloudEvents batch and forwards the events that pass, in order.
    async fn batch(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        events: Vec<(Event, Box<serde_json::value::RawValue>)>,
        peer: SocketAddr,
        arrived: Instant,
    ) -> Result<Response<Full<Bytes>>, NotifyError> {
        let route = &matched.route.route;
        let mut keys = Vec::with_capacity(events.len());
        for (index, (event, _)) in events.iter().enumerate() {
            keys.push(
                self.entity_key(matched, event)
                    .map_err(|e| e.in_element(index))?,
            );
        }

        // Locks are taken in key order so that two batches naming the same entities
        // cannot wait for each other.
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort();
        sorted.dedup();
        let deadline = arrived + route.max_entity_wait;
        let mut guards = BTreeMap::new();
        for key in sorted {
            let wait = deadline.saturating_duration_since(Instant::now());
            let guard = self
                .locks
                .acquire(key, wait)
                .await
                .ok_or(NotifyError::EntityBusy)?;
            guards.insert(key.clone(), guard);
        }

        let mut pending = Pending::default();
        let mut verdicts = Vec::with_capacity(events.len());
        for ((event, raw), key) in events.iter().zip(keys) {
            let guard = guards
                .get_mut(&key)
                .expect("a lock was taken for every key");
            let mut verdict = self
                .decide(matched, key, event, arrived, guard.slot(), &pending)
                .await;
            self.causal_context(&parts.headers, event, &mut verdict);
            let held_body = bytes::Bytes::copy_from_slice(raw.get().as_bytes());
            self.apply_guard(matched, &mut verdict, |v| {
                let mut held = Self::held_copy(parts, &held_body, peer, v);
                held.headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/cloudevents+json"),
                );
                held
            });
            if verdict.decision == Decision::Forward {
                if let Some(fingerprint) = verdict.fingerprint {
                    pending
                        .fingerprints
                        .insert(verdict.key.clone(), fingerprint);
                }
                if let Some(event_key) = &verdict.event_key {
                    pending.events.insert(event_key.clone());
                }
            }
            verdicts.push(verdict);
        }

        self.save_holds(&verdicts).await?;
        if self.suppresses(matched, &verdicts) {
            return Ok(self.suppress(matched, &verdicts));
        }
        let shadow = route.mode == crate::policy::RouteMode::Shadow;
        let stamped: Vec<Box<serde_json::value::RawValue>> = events
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| shadow || v.decision == Decision::Forward)
            .map(|((_, raw), v)| stamp_element(raw, v.hops.saturating_add(1)))
            .collect();
        let body = envelope::encode_batch(stamped.iter().map(|raw| raw.as_ref()));
        self.forward_and_commit(matched, parts, body, peer, &verdicts)
            .await
    }

    /// Fills in the verdict's trace id, hop count and source for the loop guard.
    fn causal_context(&self, headers: &http::HeaderMap, event: &Event, verdict: &mut Verdict) {
        verdict.trace = guard::trace_id(headers, event).map(str::to_owned);
        let in_trace = verdict.trace.as_deref().map_or(0, |trace| {
            self.guard
                .trace_forwards(trace, &verdict.key, self.clock.now_ms())
        });
        verdict.hops = guard::carried_hops(headers, event).max(in_trace);
    }

    fn count(&self, route: &str, decision: &'static str, by: u64) {
        self.metrics
            .notifications
            .get_or_create(&DecisionLabels {
                route: route.to_owned(),
                decision,
            })
            .inc_by(by);
    }
}

/// State dropped by a reload because the routes that used it left the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DroppedState {
    /// Entity fingerprints whose fingerprint settings no route in force has.
    pub fingerprints: usize,
    /// Cached lookups of removed lookup routes.
    pub cache_entries: usize,
}

fn compile_routes(policy: &Policy) -> Result<Vec<CompiledRoute>, mask::MaskError> {
    policy
        .notifications
        .iter()
        .cloned()
        .map(CompiledRoute::compile)
        .collect()
}

/// The upstream client connects within the shortest `connect_timeout` of the policy's
/// upstreams (2 s without upstreams).
fn upstream_client(policy: &Policy, metrics: &Arc<Metrics>) -> UpstreamClient {
    let connect_timeout = policy
        .upstreams
        .values()
        .map(|u| u.connect_timeout)
        .min()
        .unwrap_or(Duration::from_secs(2));
    UpstreamClient::new(connect_timeout, metrics.clone())
}

/// Writes the hop count into one batch element; keeps the element as it was if it
/// cannot be rewritten.
fn stamp_element(raw: &serde_json::value::RawValue, hops: u32) -> Box<serde_json::value::RawValue> {
    guard::stamp_structured(raw.get().as_bytes(), hops)
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .and_then(|text| serde_json::value::RawValue::from_string(text).ok())
        .unwrap_or_else(|| raw.to_owned())
}

/// Writes one line per request on the `ekko::access` target at info level: method, path
/// without the query (which may carry secrets), status, ekko's decision or cache status,
/// the client's address and the time taken. Never headers or bodies.
fn access_log(
    method: &http::Method,
    path: &str,
    response: &Response<Full<Bytes>>,
    peer: SocketAddr,
    started: Instant,
) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    tracing::info!(
        target: "ekko::access",
        method = %method,
        path = ?path,
        status = response.status().as_u16(),
        decision = %header(DECISION_HEADER),
        cache = %header("cache-status"),
        client = %peer.ip(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
}

/// Rejects `.` and `..` path segments, also percent-encoded: an upstream that normalises
/// them would receive a different path than the one the route matched.
fn reject_dot_segments(path: &str) -> Result<(), NotifyError> {
    for segment in path.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        if decoded == "." || decoded == ".." {
            return Err(NotifyError::Undecodable(
                "request path contains a `.` or `..` segment; send the normalised path".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Reads the body within `BODY_TIMEOUT` and the route's `max_body`.
async fn read_body<B>(body: B, parts: &Parts, limit: usize) -> Result<Bytes, NotifyError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(NotifyError::BodyTooLarge { limit });
    }
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| NotifyError::BodyTimeout {
            seconds: BODY_TIMEOUT.as_secs(),
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error)
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(NotifyError::BodyTooLarge { limit })
        }
        Err(error) => Err(NotifyError::BodyRead(error.to_string())),
    }
}
