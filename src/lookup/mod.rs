//! Consumer path: lookups through a cache with coalescing, RFC 9111 rules and
//! change-driven invalidation.

mod coalesce;
pub mod epochs;
mod fetch;
mod respond;
pub mod rules;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{CacheStatusLabels, Metrics, RouteLabels};
use crate::notify::Clock;
use crate::policy::{AuthorizeBy, CacheScope, LookupRoute, Policy, UpstreamConfig};
use crate::state::BoundedTable;
use crate::upstream::UpstreamClient;
use coalesce::{FlightResult, Inflight, Role};
use epochs::Epochs;
use rules::{CacheOutcome, RequestDirectives};
use store::{CacheEntry, CacheKey, CacheStore};

/// Bound of the side tables (vary names, uncacheable marks, authorised credentials).
const SIDE_TABLE_ENTRIES: usize = 100_000;

/// Hit and request counts of one lookup route, for the admin API.
#[derive(Default)]
pub struct RouteStats {
    /// Requests served from the cache (fresh, stale or collapsed).
    pub hits: AtomicU64,
    /// All GET and HEAD requests.
    pub requests: AtomicU64,
}

/// The lookup cache and its routes.
///
/// The entries, the invalidation epochs, the fetches in flight, the side tables, the
/// credential key, the clock and each route's statistics sit behind `Arc`s, so a cache
/// built by [`LookupCache::with_policy`] after a policy reload shares them with this one.
pub struct LookupCache {
    routes: Vec<LookupRoute>,
    upstreams: BTreeMap<String, UpstreamConfig>,
    client: UpstreamClient,
    store: Arc<CacheStore>,
    epochs: Arc<Epochs>,
    inflight: Arc<Inflight>,
    vary_index: Arc<BoundedTable<Vec<HeaderName>>>,
    uncacheable: Arc<BoundedTable<u64>>,
    authorized: Arc<BoundedTable<u64>>,
    secret: [u8; 32],
    metrics: Arc<Metrics>,
    stats: Vec<Arc<RouteStats>>,
    /// `ekko_cache_requests_total{route,status="hit"}` per route, looked up once, because
    /// hits are the most frequent requests and a label lookup costs more than the hit.
    hit_counters: Vec<Counter>,
    clock: Clock,
}

/// A request matched to a lookup route.
pub struct Matched<'a> {
    /// The route.
    pub route: &'a LookupRoute,
    /// Its position in the policy, for the statistics.
    pub index: usize,
    /// The entity key built from the path's captures.
    pub entity: String,
}

impl LookupCache {
    /// Creates the cache for the policy's lookup routes.
    pub fn new(policy: &Policy, client: UpstreamClient, metrics: Arc<Metrics>) -> Self {
        let side =
            std::num::NonZeroUsize::new(SIDE_TABLE_ENTRIES).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            routes: policy.lookups.clone(),
            upstreams: policy.upstreams.clone(),
            client,
            store: Arc::new(CacheStore::new(policy.cache.max_bytes)),
            epochs: Arc::new(Epochs::new(policy.state.max_entities)),
            inflight: Arc::default(),
            vary_index: Arc::new(BoundedTable::new(side)),
            uncacheable: Arc::new(BoundedTable::new(side)),
            authorized: Arc::new(BoundedTable::new(side)),
            secret: random_secret(),
            hit_counters: hit_counters(policy, &metrics),
            metrics,
            stats: policy.lookups.iter().map(|_| Arc::default()).collect(),
            clock: Clock::new(),
        }
    }

    /// Creates a cache for the routes and upstreams of a reloaded policy that keeps this
    /// cache's entries, epochs, fetches in flight, side tables, credential key and clock.
    ///
    /// A route keeps its statistics when the new policy has a lookup route of the same
    /// name. `policy.cache.max_bytes` and `policy.state.max_entities` are not applied,
    /// because the store and the epochs keep the bounds they were created with.
    pub fn with_policy(&self, policy: &Policy, client: UpstreamClient) -> Self {
        let stats = policy
            .lookups
            .iter()
            .map(|route| {
                self.routes
                    .iter()
                    .position(|old| old.name == route.name)
                    .map_or_else(Arc::default, |index| self.stats[index].clone())
            })
            .collect();
        Self {
            routes: policy.lookups.clone(),
            upstreams: policy.upstreams.clone(),
            client,
            store: self.store.clone(),
            epochs: self.epochs.clone(),
            inflight: self.inflight.clone(),
            vary_index: self.vary_index.clone(),
            uncacheable: self.uncacheable.clone(),
            authorized: self.authorized.clone(),
            secret: self.secret,
            hit_counters: hit_counters(policy, &self.metrics),
            metrics: self.metrics.clone(),
            stats,
            clock: self.clock.clone(),
        }
    }

    /// Removes the cached entries of lookup routes of `previous` that this cache has no route
    /// of the same name for, and returns how many were removed.
    pub fn purge_removed_routes(&self, previous: &LookupCache) -> usize {
        let removed: Vec<&str> = previous
            .routes
            .iter()
            .map(|route| route.name.as_str())
            .filter(|name| !self.routes.iter().any(|route| route.name == *name))
            .collect();
        if removed.is_empty() {
            return 0;
        }
        let purged = self
            .store
            .purge(|entry| removed.contains(&entry.route.as_str()));
        self.update_gauges();
        purged
    }

    /// Finds the lookup route for `path`.
    pub fn find(&self, path: &str) -> Option<Matched<'_>> {
        self.routes.iter().enumerate().find_map(|(index, route)| {
            let captures = route.path.matches(path)?;
            let lookup = |name: &str| {
                captures
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let entity = route.entity.render_key(lookup).ok()?;
            Some(Matched {
                route,
                index,
                entity,
            })
        })
    }

    /// Invalidates every cached entry of `entity` because a change of it is being
    /// forwarded; counted under the notification route's name.
    pub fn invalidate(&self, entity: &str, notification_route: &str) {
        self.epochs.bump(entity);
        self.metrics
            .cache_invalidations
            .get_or_create(&RouteLabels {
                route: notification_route.to_owned(),
            })
            .inc();
    }

    /// Handles a consumer's request on a lookup route.
    pub async fn handle<B>(
        &self,
        matched: Matched<'_>,
        parts: &Parts,
        body: B,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let route = matched.route;
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return self.pass_write(&matched, parts, body, peer).await;
        }
        self.stats[matched.index]
            .requests
            .fetch_add(1, Ordering::Relaxed);
        let directives = rules::request_directives(&parts.headers);
        if directives.no_store {
            return self.fetch_direct(&matched, parts, peer, "no-store").await;
        }

        let credential = self.credential(route, &parts.headers);
        if route.scope == CacheScope::Shared && !self.is_authorized(route, parts, &credential) {
            if directives.only_if_cached {
                // An unauthorised credential cannot be served from the cache at all.
                return respond::gateway_timeout_only_if_cached();
            }
            return self
                .fetch_to_authorize(&matched, parts, peer, credential)
                .await;
        }
        let base = self.base_key(route, parts, &credential);
        let base_hex = hex(&base);
        if self
            .uncacheable
            .peek(&base_hex)
            .is_some_and(|until| until > self.clock.now_ms())
        {
            return self
                .fetch_direct(&matched, parts, peer, "uncacheable")
                .await;
        }
        let key = self.full_key(&base, &base_hex, &parts.headers);

        let cached = self.valid_entry(&matched, &key);
        if let Some(entry) = &cached {
            if self.is_fresh(entry, &directives) {
                return self.serve(
                    &matched,
                    parts,
                    entry,
                    CacheOutcome::Hit {
                        ttl: self.ttl_left(entry),
                    },
                );
            }
        }
        if directives.only_if_cached {
            return respond::gateway_timeout_only_if_cached();
        }
        self.miss(&matched, parts, peer, key, &base, cached).await
    }

    /// Returns the entry for `key` if it exists and no change made it invalid.
    fn valid_entry(&self, matched: &Matched<'_>, key: &CacheKey) -> Option<Arc<CacheEntry>> {
        let entry = self.store.get(key)?;
        self.epochs
            .is_valid(&matched.entity, entry.epoch)
            .then_some(entry)
    }

    fn is_fresh(&self, entry: &CacheEntry, directives: &RequestDirectives) -> bool {
        let now = self.clock.now_ms();
        if directives.no_cache || now >= entry.fresh_until_ms {
            return false;
        }
        match directives.max_age {
            Some(max_age) => self.age_seconds(entry) <= max_age,
            None => true,
        }
    }

    fn ttl_left(&self, entry: &CacheEntry) -> i64 {
        (entry.fresh_until_ms as i64 - self.clock.now_ms() as i64) / 1000
    }

    /// Seconds since the upstream produced the response: its `Age` plus our residence time.
    fn age_seconds(&self, entry: &CacheEntry) -> u64 {
        entry.upstream_age_s + self.clock.now_ms().saturating_sub(entry.stored_at_ms) / 1000
    }

    /// Fetches through the coalescing table: one writer, others wait for its result.
    async fn miss(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        peer: SocketAddr,
        key: CacheKey,
        base: &CacheKey,
        stale: Option<Arc<CacheEntry>>,
    ) -> Response<Full<Bytes>> {
        let route = matched.route;
        let Some(upstream) = self.upstreams.get(&route.upstream) else {
            return respond::misconfigured(&route.name);
        };
        match self
            .inflight
            .join(key, upstream.timeout, self.epochs.current(&matched.entity))
        {
            Role::Waiter(receiver) => match coalesce::wait(receiver, route.waiter_timeout).await {
                Some(entry) if self.epochs.is_valid(&matched.entity, entry.epoch) => self.serve(
                    matched,
                    parts,
                    &entry,
                    CacheOutcome::Miss {
                        stored: true,
                        collapsed: true,
                    },
                ),
                _ => self.fetch_or_stale(matched, parts, peer, stale).await,
            },
            Role::Writer(writer) => {
                let fetched = self.fetch_and_store(matched, parts, peer, base, &key).await;
                match fetched {
                    fetch::Fetched::Stored(entry) => {
                        writer.finish(FlightResult::Shared(entry.clone()));
                        self.serve(
                            matched,
                            parts,
                            &entry,
                            CacheOutcome::Miss {
                                stored: true,
                                collapsed: false,
                            },
                        )
                    }
                    fetch::Fetched::Relayed(response) => {
                        writer.finish(FlightResult::Unusable);
                        self.relay(
                            matched,
                            parts,
                            response,
                            CacheOutcome::Miss {
                                stored: false,
                                collapsed: false,
                            },
                        )
                    }
                    fetch::Fetched::Failed(failure) => {
                        writer.finish(FlightResult::Unusable);
                        self.stale_or_failure(matched, parts, stale, failure)
                    }
                }
            }
        }
    }

    /// A waiter that got nothing usable from the writer fetches on its own; when that fails
    /// too, the stale entry is served as it is for the writer.
    async fn fetch_or_stale(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        peer: SocketAddr,
        stale: Option<Arc<CacheEntry>>,
    ) -> Response<Full<Bytes>> {
        match self.fetch(matched.route, parts, peer).await {
            Ok(response) if is_error_status(response.status()) => {
                self.stale_or_failure(matched, parts, stale, fetch::Failure::Status(response))
            }
            Ok(response) => self.relay(
                matched,
                parts,
                response,
                CacheOutcome::Bypass {
                    detail: "coalesce-wait",
                },
            ),
            Err(error) => {
                self.stale_or_failure(matched, parts, stale, fetch::Failure::Upstream(error))
            }
        }
    }

    /// Serves the stale entry within its `stale-if-error` window, or the failure itself.
    fn stale_or_failure(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        stale: Option<Arc<CacheEntry>>,
        failure: fetch::Failure,
    ) -> Response<Full<Bytes>> {
        let now = self.clock.now_ms();
        if let Some(entry) = stale
            .filter(|e| now < e.stale_until_ms && self.epochs.is_valid(&matched.entity, e.epoch))
        {
            return self.serve(
                matched,
                parts,
                &entry,
                CacheOutcome::Stale {
                    ttl: self.ttl_left(&entry),
                },
            );
        }
        match failure {
            fetch::Failure::Status(response) => self.relay(
                matched,
                parts,
                response,
                CacheOutcome::Miss {
                    stored: false,
                    collapsed: false,
                },
            ),
            fetch::Failure::Upstream(error) => {
                self.count(matched, "miss");
                respond::upstream_failure(&error)
            }
        }
    }

    /// Builds the response for a cached entry.
    fn serve(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        entry: &CacheEntry,
        outcome: CacheOutcome,
    ) -> Response<Full<Bytes>> {
        let status = match &outcome {
            CacheOutcome::Hit { .. } => "hit",
            CacheOutcome::Stale { .. } => "stale",
            CacheOutcome::Miss {
                collapsed: true, ..
            } => "collapsed",
            _ => "miss",
        };
        if status != "miss" {
            self.stats[matched.index]
                .hits
                .fetch_add(1, Ordering::Relaxed);
        }
        let age = self.age_seconds(entry);
        // Preconditions apply only to 2xx representations (RFC 9110 §13.2.1).
        let etag = entry
            .headers
            .get(header::ETAG)
            .filter(|_| entry.status.is_success())
            .cloned();
        if let Some(etag) = etag.filter(|etag| rules::if_none_match(&parts.headers, etag)) {
            self.count(matched, "not_modified");
            return respond::not_modified(entry, &etag, age, &outcome);
        }
        self.count(matched, status);
        respond::from_entry(entry, parts.method == Method::HEAD, age, &outcome)
    }

    /// Relays an upstream response that was not stored.
    fn relay(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        response: Response<Bytes>,
        outcome: CacheOutcome,
    ) -> Response<Full<Bytes>> {
        let label = match outcome {
            CacheOutcome::Bypass { .. } => "bypass",
            _ => "miss",
        };
        self.count(matched, label);
        respond::relayed(response, parts.method == Method::HEAD, &outcome)
    }

    fn count(&self, matched: &Matched<'_>, status: &'static str) {
        if status == "hit" {
            self.hit_counters[matched.index].inc();
            return;
        }
        self.metrics
            .cache_requests
            .get_or_create(&CacheStatusLabels {
                route: matched.route.name.clone(),
                status,
            })
            .inc();
    }

    /// Updates the size gauges after a store or purge.
    fn update_gauges(&self) {
        self.metrics.cache_bytes.set(self.store.bytes() as i64);
        self.metrics.cache_entries.set(self.store.len() as i64);
    }

    /// Returns the consumer's credential: `Authorization` and the route's credential header,
    /// length-prefixed so that no two different pairs give the same bytes.
    fn credential(&self, route: &LookupRoute, headers: &HeaderMap) -> Vec<u8> {
        let mut credential = Vec::new();
        let mut push = |value: Option<&[u8]>| {
            let value = value.unwrap_or_default();
            credential.extend_from_slice(&(value.len() as u64).to_le_bytes());
            credential.extend_from_slice(value);
        };
        push(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()));
        push(
            route
                .credential_header
                .as_ref()
                .and_then(|name| headers.get(name))
                .map(|v| v.as_bytes()),
        );
        credential
    }

    /// Returns a keyed hash of the credential. The key is random per process, so the digest is
    /// useless outside it and never reveals the credential.
    fn credential_digest(&self, credential: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.secret, credential).as_bytes()
    }

    fn base_key(&self, route: &LookupRoute, parts: &Parts, credential: &[u8]) -> CacheKey {
        let partition = match route.scope {
            CacheScope::Private => self.credential_digest(credential),
            CacheScope::Shared => [0u8; 32],
        };
        let query = rules::normalise_query(parts.uri.query());
        CacheKey::build(&[
            route.name.as_bytes(),
            route.upstream.as_bytes(),
            parts.uri.path().as_bytes(),
            query.as_bytes(),
            &partition,
        ])
    }

    /// Adds the values of the request headers that the last response varied on.
    fn full_key(&self, base: &CacheKey, base_hex: &str, headers: &HeaderMap) -> CacheKey {
        let names = self.vary_index.peek(base_hex).unwrap_or_default();
        vary_key(base, &names, headers)
    }

    fn is_authorized(&self, route: &LookupRoute, parts: &Parts, credential: &[u8]) -> bool {
        let key = self.authorization_key(route, parts, credential);
        self.authorized
            .peek(&key)
            .is_some_and(|until| until > self.clock.now_ms())
    }

    fn mark_authorized(&self, route: &LookupRoute, parts: &Parts, credential: &[u8]) {
        let key = self.authorization_key(route, parts, credential);
        let until = self.clock.now_ms() + route.authorize_ttl.as_millis() as u64;
        self.authorized.insert(&key, until);
    }

    /// Builds the authorisation key: the route, the credential's digest and, with `authorize_by: resource`, the path and
    /// normalised query.
    fn authorization_key(&self, route: &LookupRoute, parts: &Parts, credential: &[u8]) -> String {
        let digest = blake3::Hash::from_bytes(self.credential_digest(credential)).to_hex();
        match route.authorize_by {
            AuthorizeBy::Route => format!("{}\0{digest}", route.name),
            AuthorizeBy::Resource => format!(
                "{}\0{digest}\0{}?{}",
                route.name,
                parts.uri.path(),
                rules::normalise_query(parts.uri.query())
            ),
        }
    }

    fn revoke_authorized(&self, route: &LookupRoute, parts: &Parts, credential: &[u8]) {
        let key = self.authorization_key(route, parts, credential);
        self.authorized.remove(&key);
    }

    /// Admin: removes the entries of an entity, and makes fetches in flight for it unable
    /// to store; returns the number of entries removed.
    pub fn purge_entity(&self, entity: &str) -> usize {
        self.epochs.bump(entity);
        let removed = self.store.purge(|entry| entry.entity == entity);
        self.update_gauges();
        removed
    }

    /// Admin: removes the entries of `path` and of paths below it, segment by segment
    /// (`/persons/7` covers `/persons/7?x=1` and `/persons/7/roles`, not `/persons/70`), and
    /// invalidates their entities so that fetches in flight cannot store. Paths are compared
    /// as sent, without percent-decoding.
    pub fn purge_path(&self, path: &str) -> usize {
        let prefix = path.trim_end_matches('/');
        let covers = |candidate: &str| {
            candidate == prefix
                || candidate
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
        };
        let entities = std::sync::Mutex::new(std::collections::HashSet::new());
        let removed = self.store.purge(|entry| {
            let hit = covers(&entry.path);
            if hit {
                entities
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(entry.entity.clone());
            }
            hit
        });
        for entity in entities.into_inner().unwrap_or_else(|p| p.into_inner()) {
            self.epochs.bump(&entity);
        }
        self.update_gauges();
        removed
    }

    /// Admin: entries, bytes and hit ratio per lookup route.
    pub fn summary(&self) -> serde_json::Value {
        let per_route: std::collections::HashMap<String, (usize, usize)> = self
            .store
            .entries_per_route()
            .into_iter()
            .map(|(route, entries, bytes)| (route, (entries, bytes)))
            .collect();
        let routes: Vec<_> = self
            .routes
            .iter()
            .zip(&self.stats)
            .map(|(route, stats)| {
                let (entries, bytes) = per_route.get(&route.name).copied().unwrap_or_default();
                let requests = stats.requests.load(Ordering::Relaxed);
                let hits = stats.hits.load(Ordering::Relaxed);
                let ratio = if requests == 0 {
                    0.0
                } else {
                    hits as f64 / requests as f64
                };
                serde_json::json!({
                    "route": route.name,
                    "entries": entries,
                    "bytes": bytes,
                    "requests": requests,
                    "hits": hits,
                    "hit_ratio": (ratio * 1000.0).round() / 1000.0,
                })
            })
            .collect();
        serde_json::json!({
            "entries": self.store.len(),
            "bytes": self.store.bytes(),
            "routes": routes,
        })
    }
}

/// Adds `names` and the request's values for them to `base`.
fn vary_key(base: &CacheKey, names: &[HeaderName], headers: &HeaderMap) -> CacheKey {
    if names.is_empty() {
        return *base;
    }
    let mut parts: Vec<Vec<u8>> = vec![base.0.to_vec()];
    for name in names {
        parts.push(name.as_str().as_bytes().to_vec());
        let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
        parts.push(values.join(&b","[..]));
    }
    let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    CacheKey::build(&slices)
}

/// Builds the `hit` counter of every lookup route, in policy order.
fn hit_counters(policy: &Policy, metrics: &Metrics) -> Vec<Counter> {
    policy
        .lookups
        .iter()
        .map(|route| {
            metrics
                .cache_requests
                .get_or_create(&CacheStatusLabels {
                    route: route.name.clone(),
                    status: "hit",
                })
                .clone()
        })
        .collect()
}

fn hex(key: &CacheKey) -> String {
    blake3::Hash::from_bytes(key.0).to_hex().to_string()
}

/// Draws a per-process random key for credential digests, from the OS through std's hasher seeds
/// and the clock, hashed together.
fn random_secret() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = blake3::Hasher::new();
    for _ in 0..4 {
        let mut seeded = std::collections::hash_map::RandomState::new().build_hasher();
        seeded.write_u64(0);
        hasher.update(&seeded.finish().to_le_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// HTTP status codes after which ekko may serve a stale entry (RFC 5861 §4).
fn is_error_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}
