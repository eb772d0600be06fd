//! Typed, validated policy: what the rest of ekko reads after `policy::load`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};

use super::template::{PathPattern, Template};

/// A validated policy. Every optional key has its default filled in.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Public listener for producers (`listen`, default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// Admin listener for `/metrics`, `/healthz`, `/readyz` (`admin_listen`, default `127.0.0.1:9090`).
    pub admin_listen: SocketAddr,
    /// Time that in-flight requests get to finish after SIGTERM (`shutdown_grace`, default 30 s).
    pub shutdown_grace: Duration,
    /// Fingerprint table limits and snapshot settings.
    pub state: StateConfig,
    /// Named upstreams, referenced by routes.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Notification routes in policy order; the first match wins.
    pub notifications: Vec<NotificationRoute>,
    /// Lookup routes for consumers' GET and HEAD requests, in policy order.
    pub lookups: Vec<LookupRoute>,
    /// The lookup cache's limits.
    pub cache: CacheConfig,
    /// Access to the admin listener.
    pub admin: AdminConfig,
}

/// The `admin` section: who may use the admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Bearer token (RFC 6750) that every admin request except `/healthz`, `/readyz` and,
    /// with `metrics_open`, `/metrics` must present (default none: no check).
    pub token: Option<AdminToken>,
    /// Whether `/metrics` is served without the token (default true, so scrapers need no
    /// credential).
    pub metrics_open: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: None,
            metrics_open: true,
        }
    }
}

/// The admin bearer token, kept only as its BLAKE3 digest so that neither `Debug` output
/// nor a memory dump of the policy shows it.
#[derive(Clone)]
pub struct AdminToken {
    digest: blake3::Hash,
}

impl AdminToken {
    /// Wraps a token taken from the policy.
    pub fn new(token: &str) -> Self {
        Self {
            digest: blake3::hash(token.as_bytes()),
        }
    }

    /// Returns whether `presented` is the token. Both sides are hashed and the digests are
    /// compared in constant time, so the time taken does not depend on how many leading
    /// bytes match or on the presented length.
    pub fn verify(&self, presented: &[u8]) -> bool {
        // `blake3::Hash` implements `PartialEq` in constant time.
        blake3::hash(presented) == self.digest
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(not shown)")
    }
}

/// The `cache` section.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Maximum bytes of cached responses, counting status line, headers and body
    /// (default 256 MiB).
    pub max_bytes: usize,
}

/// Sharing rule of a lookup route's cached responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Entries are partitioned by a hash of the consumer's credential (the default).
    Private,
    /// One entry per resource, served only to credentials the upstream accepted for this
    /// route within `authorize_ttl`.
    Shared,
}

/// Extent of what an upstream 2xx for a credential authorises it to read from shared entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizeBy {
    /// Every resource of the route: for APIs whose access is granted per API, as API
    /// managers usually do (the default).
    Route,
    /// Only the resource (path and query) that was read: for sources that decide access
    /// per record. Each credential then costs one upstream read per resource.
    Resource,
}

/// One entry of `lookups`: consumers' reads of the source API through ekko.
#[derive(Debug, Clone)]
pub struct LookupRoute {
    /// Route name, used as a metric label.
    pub name: String,
    /// Path pattern; `{name}` captures one segment.
    pub path: PathPattern,
    /// Upstream that serves the reads.
    pub upstream: String,
    /// Entity key template over the path's captures; must produce the same keys as the
    /// notification routes, so a forwarded notification invalidates the right entries.
    pub entity: Template,
    /// Maximum time an entry is served without a change notification (default 5 m).
    /// A shorter upstream `max-age` or `s-maxage` wins.
    pub ttl: Duration,
    /// How long past its lifetime an entry may be served while the upstream fails
    /// (RFC 5861 `stale-if-error`; default 0 s, off).
    pub stale_if_error: Duration,
    /// Private or shared entries (default private).
    pub scope: CacheScope,
    /// In shared scope, how long an upstream 2xx for a credential authorises it to be
    /// served from the shared entry (default 60 s).
    pub authorize_ttl: Duration,
    /// In shared scope, what one upstream 2xx authorises a credential for: the whole route
    /// (default) or only the resource it read.
    pub authorize_by: AuthorizeBy,
    /// Header that carries the consumer's credential besides `Authorization`, such as
    /// an API key header (default none).
    pub credential_header: Option<HeaderName>,
    /// Largest response body that is cached (default 8 MiB); larger ones are relayed.
    pub max_body: usize,
    /// Maximum time a request waits for another request's fetch of the same entry
    /// before it fetches on its own (default 10 s, longer than the default upstream
    /// `timeout`, so a waiter normally outlasts a slow writer).
    pub waiter_timeout: Duration,
    /// Time for which an uncacheable response sends later requests straight upstream
    /// instead of queueing behind one another (default 10 s).
    pub uncacheable_ttl: Duration,
}

/// The `state` section.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Maximum number of entities whose last forwarded fingerprint is kept (default 1,000,000).
    pub max_entities: NonZeroUsize,
    /// Maximum number of remembered event ids for duplicate detection (default 1,000,000).
    pub max_event_ids: NonZeroUsize,
    /// Maximum number of (trace id, entity) pairs whose causal hop count is tracked
    /// (default 100,000).
    pub max_traces: NonZeroUsize,
    /// Maximum number of entities held in quarantine at once (default 10,000). Past it, a
    /// detected loop is forwarded instead of held, so the bound can only make ekko forward more.
    pub max_quarantined: NonZeroUsize,
    /// Snapshot file; `None` keeps state in memory only.
    pub snapshot: Option<PathBuf>,
    /// Period between snapshot writes (default 60 s).
    pub snapshot_interval: Duration,
}

/// One entry of `upstreams`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The upstream's name in the policy.
    pub name: String,
    /// Scheme `http`, host and port; the path prefix is in `base_path`.
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash, empty for `/`.
    pub base_path: String,
    /// Whole-request timeout (default 5 s).
    pub timeout: Duration,
    /// TCP connect timeout (default 2 s).
    pub connect_timeout: Duration,
    /// Headers that ekko adds to its own requests (its credential); never logged.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// AMQP 0-9-1 settings for an `amqp://` upstream; `None` for an HTTP upstream.
    pub amqp: Option<AmqpConfig>,
}

/// Outcome of a message that the broker returns as unroutable (`basic.return`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// The producer gets 502 and nothing is committed, so its retry is forwarded (the default).
    Error,
    /// The notification counts as delivered although no queue took it.
    Success,
}

/// The settings of an AMQP 0-9-1 upstream (`url: amqp://host:port/vhost`).
///
/// `PartialEq` compares every setting, the password included, so a reload can tell
/// whether the live connection may be kept.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpConfig {
    /// Broker host name or IP address.
    pub host: String,
    /// Broker port (default 5672).
    pub port: u16,
    /// Virtual host, percent-decoded (default `/`).
    pub vhost: String,
    /// Exchange template; placeholders are the route's template fields.
    pub exchange: Template,
    /// Routing key template (default empty).
    pub routing_key: Template,
    /// Whether messages are published with the `mandatory` flag (default true).
    pub mandatory: bool,
    /// Meaning of a `basic.return` (default [`Unroutable::Error`]).
    pub unroutable: Unroutable,
    /// Maximum time to wait for the broker's publisher confirm (default 5 s).
    pub confirm_timeout: Duration,
    /// AMQP heartbeat interval that ekko proposes, in whole seconds (default 30 s).
    pub heartbeat: Duration,
    /// First delay before a reconnect attempt (default 100 ms); it doubles per failure.
    pub reconnect_min: Duration,
    /// Largest delay between reconnect attempts (default 30 s).
    pub reconnect_max: Duration,
    /// User name for the SASL PLAIN login (default `guest`).
    pub username: String,
    /// Password for the SASL PLAIN login (default `guest`); never logged or shown.
    pub password: AmqpPassword,
}

/// An AMQP password whose `Debug` output does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpPassword(String);

impl AmqpPassword {
    /// Wraps a password taken from the policy.
    pub fn new(password: &str) -> Self {
        Self(password.to_owned())
    }

    /// Returns the password, for the login only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AmqpPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AmqpPassword(not shown)")
    }
}

/// Envelope format of a notification route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// CloudEvents HTTP binding 1.0: structured, binary and batch mode.
    CloudEvents,
    /// RabbitMQ management API publish body; the payload is a CloudEvent or JSON.
    RabbitmqPublish(Pointers),
    /// Any JSON body; pointers name the fields.
    Json(Pointers),
}

/// JSON pointers (RFC 6901) that name a notification's fields inside a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pointers {
    /// Event id, used for duplicate detection.
    pub id: Option<String>,
    /// Producing system.
    pub source: Option<String>,
    /// Event type.
    pub kind: Option<String>,
    /// Entity id within the source.
    pub subject: Option<String>,
    /// The entity state used by `fingerprint: payload`; `None` means the whole document.
    pub data: Option<String>,
}

/// Handling of a body that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUndecodable {
    /// Respond with 400 and a JSON error body (the default).
    Reject,
    /// Forward it unchanged and count it.
    Forward,
}

/// Whether a route acts on its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// Suppress what is duplicate or unchanged (the default).
    Enforce,
    /// Forward everything but report the decision that enforce mode would make.
    Shadow,
}

/// Source of the state that is fingerprinted.
#[derive(Debug, Clone)]
pub enum FingerprintSource {
    /// The notification's own data.
    Payload,
    /// A GET of the entity from a source API.
    Lookup {
        /// Upstream name.
        upstream: String,
        /// Path template; values are percent-encoded as one segment each.
        path: Template,
    },
    /// No state: every notification that is not a duplicate is forwarded.
    None,
}

/// The `fingerprint` section of a notification route.
#[derive(Debug, Clone)]
pub struct FingerprintSpec {
    /// Source of the state.
    pub source: FingerprintSource,
    /// JSON pointers removed before hashing; `*` matches every array element or object member.
    pub ignore: Vec<String>,
}

/// The response to a suppressed notification.
#[derive(Debug, Clone)]
pub struct SuppressedResponse {
    /// Status code (default 202).
    pub status: StatusCode,
    /// Fixed body; `None` gives a JSON body naming decision and entity.
    pub body: Option<String>,
    /// Content type of a fixed body (default `application/json`).
    pub content_type: String,
}

/// One entry of `notifications`.
#[derive(Debug, Clone)]
pub struct NotificationRoute {
    /// Route name, used as a metric label.
    pub name: String,
    /// HTTP method to match (default POST).
    pub method: Method,
    /// Path pattern; `{name}` captures one segment.
    pub path: PathPattern,
    /// Upstream that receives forwarded notifications.
    pub upstream: String,
    /// Envelope format.
    pub format: Format,
    /// Entity key template.
    pub entity: Template,
    /// Fingerprint settings.
    pub fingerprint: FingerprintSpec,
    /// Window in which a repeated source+id is a duplicate (default 5 m; zero disables).
    pub duplicate_window: Duration,
    /// Maximum request body in bytes (default 1 MiB).
    pub max_body: usize,
    /// Handling of bodies that cannot be decoded.
    pub on_undecodable: OnUndecodable,
    /// Enforce or shadow.
    pub mode: RouteMode,
    /// Response to suppressed notifications.
    pub suppressed_response: SuppressedResponse,
    /// Maximum time a notification waits for an earlier one of the same entity (default 10 s).
    pub max_entity_wait: Duration,
    /// Echo-loop damping settings.
    pub loop_guard: LoopGuardConfig,
}

/// The `loop_guard` section: route-flap damping (RFC 2439) applied to entities.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopGuardConfig {
    /// Whether the guard runs (default true).
    pub enabled: bool,
    /// Time for the flap penalty to halve (default 30 s).
    pub half_life: Duration,
    /// Penalty of a forwarded change to a state not seen recently (default 1).
    pub change_penalty: f64,
    /// Penalty of a forwarded change back to a recently seen state, A → B → A (default 4).
    pub return_penalty: f64,
    /// Penalty above which the entity is quarantined (default 12).
    pub suppress_above: f64,
    /// Penalty below which a quarantined entity is released (default 2).
    pub reuse_below: f64,
    /// Maximum time an entity stays quarantined (default 15 m).
    pub max_quarantine: Duration,
    /// Causal hop count at which a notification is held (default 10).
    pub max_hops: u32,
    /// Number of recent distinct fingerprints kept per entity to detect returns (default 4).
    pub history: usize,
}

impl Default for LoopGuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            half_life: Duration::from_secs(30),
            change_penalty: 1.0,
            return_penalty: 4.0,
            suppress_above: 12.0,
            reuse_below: 2.0,
            max_quarantine: Duration::from_secs(15 * 60),
            max_hops: 10,
            history: 4,
        }
    }
}
