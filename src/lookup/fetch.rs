//! Upstream fetches for the lookup cache: misses that may be stored, bypasses, consumer
//! writes that invalidate, and ekko's own fingerprint fetches stored for consumers.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;

use super::rules::{self, CacheOutcome, Vary};
use super::store::{CacheEntry, CacheKey};
use super::{is_error_status, respond, vary_key, LookupCache, Matched};
use crate::policy::{CacheScope, LookupRoute};
use crate::upstream::{forward_headers, response_headers, UpstreamClient, UpstreamError};

/// Result of a writer's fetch.
pub enum Fetched {
    /// Stored, and servable to waiters.
    Stored(Arc<CacheEntry>),
    /// A usable response that was not stored.
    Relayed(Response<Bytes>),
    /// The upstream failed; a stale entry may stand in.
    Failed(Failure),
}

/// An upstream failure that `stale-if-error` covers (RFC 5861 §4).
pub enum Failure {
    /// 500, 502, 503 or 504 from the upstream.
    Status(Response<Bytes>),
    /// No response: refused, timed out, reset.
    Upstream(UpstreamError),
}

/// Conditional request fields are not forwarded: ekko needs the full response to store,
/// and handles `If-None-Match` itself.
const CONDITIONAL: [header::HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

impl LookupCache {
    /// Sends the consumer's GET (a HEAD is fetched as GET so the response can be stored)
    /// with the consumer's own headers and credential.
    pub(super) async fn fetch(
        &self,
        route: &LookupRoute,
        parts: &Parts,
        peer: SocketAddr,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let upstream = &self.upstreams[&route.upstream];
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri =
            UpstreamClient::uri(upstream, path_and_query).map_err(|e| UpstreamError::Failed {
                upstream: upstream.name.clone(),
                reason: format!("invalid request path: {e}"),
            })?;
        let mut headers = forward_headers(&parts.headers, upstream, peer);
        for name in &CONDITIONAL {
            headers.remove(name);
        }
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        // Bodies over the route's limit are relayed in full but never stored.
        let limit = route.max_body.max(crate::notify::LOOKUP_BODY_LIMIT);
        self.client.send_as_is(upstream, request, limit).await
    }

    /// Fetches as the writer and stores the response when RFC 9111 and the policy allow it and no
    /// change arrived meanwhile.
    pub(super) async fn fetch_and_store(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        peer: SocketAddr,
        base: &CacheKey,
        key: &CacheKey,
    ) -> Fetched {
        let route = matched.route;
        let epoch = self.epochs.snapshot();
        let response = match self.fetch(route, parts, peer).await {
            Ok(response) if is_error_status(response.status()) => {
                return Fetched::Failed(Failure::Status(response))
            }
            Ok(response) => response,
            Err(error) => return Fetched::Failed(Failure::Upstream(error)),
        };
        let credential = self.credential(route, &parts.headers);
        if route.scope == CacheScope::Shared {
            if response.status().is_success() {
                self.mark_authorized(route, parts, &credential);
            } else if matches!(response.status().as_u16(), 401 | 403) {
                self.revoke_authorized(route, parts, &credential);
            }
        }
        match self.store_response(matched, parts, base, epoch, &response) {
            Some((stored_key, entry)) if stored_key == *key => Fetched::Stored(entry),
            // The response varies on other headers than the waiters were keyed on.
            _ => Fetched::Relayed(response),
        }
    }

    /// Stores `response` if allowed; returns the full key it was stored under.
    fn store_response(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        base: &CacheKey,
        epoch: u64,
        response: &Response<Bytes>,
    ) -> Option<(CacheKey, Arc<CacheEntry>)> {
        let route = matched.route;
        let directives = rules::response_directives(response.headers());
        let vary = rules::vary(response.headers());
        let private_scope = route.scope == CacheScope::Private;
        // RFC 9111 §3.5 keeps a shared cache from storing responses to requests with
        // `Authorization`, because it cannot tell who else may see them. ekko can: a private
        // entry is keyed by the credential, and a shared route serves an entry only to
        // credentials the upstream accepted on that route within `authorize_ttl`. So the
        // rule is applied as if the request carried none; `private` and `no-store` still hold.
        // A cookie is set for one client; a shared entry would hand it to every consumer.
        let sets_cookie = !private_scope && response.headers().contains_key(header::SET_COOKIE);
        let refused =
            rules::not_storable(response.status(), false, private_scope, &directives, &vary)
                .or_else(|| (response.body().len() > route.max_body).then_some("size"))
                .or_else(|| sets_cookie.then_some("set-cookie"));
        if matches!(response.status().as_u16(), 401 | 403) {
            // A refusal belongs to one credential: never stored, and it must not make
            // other consumers bypass the cache either.
            return None;
        }
        if let Some(reason) = refused {
            tracing::debug!(route = %route.name, reason, "lookup response not stored");
            // Only the resource's own verdict marks it uncacheable. A status such as 429 or
            // 400 belongs to one request and must not turn the cache off for everyone.
            if reason != "status" && route.uncacheable_ttl.as_millis() > 0 {
                let until = self.clock.now_ms() + route.uncacheable_ttl.as_millis() as u64;
                self.uncacheable.insert(&super::hex(base), until);
            }
            return None;
        }
        if !self.epochs.is_valid(&matched.entity, epoch) {
            // A change arrived while this fetch ran; its response may predate the change.
            return None;
        }

        let names = match vary {
            Vary::Headers(names) => names,
            _ => Vec::new(),
        };
        self.vary_index.insert(&super::hex(base), names.clone());
        let key = vary_key(base, &names, &parts.headers);
        let entry = self.entry(matched, parts, epoch, response, &directives);
        let entry = Arc::new(entry);
        match self.store.insert(key, (*entry).clone()) {
            Some(evicted) => {
                self.metrics.cache_evictions.inc_by(evicted as u64);
                self.update_gauges();
                Some((key, entry))
            }
            None => None,
        }
    }

    fn entry(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        epoch: u64,
        response: &Response<Bytes>,
        directives: &rules::ResponseDirectives,
    ) -> CacheEntry {
        let route = matched.route;
        let now = self.clock.now_ms();
        let lifetime =
            rules::freshness_lifetime(directives, route.ttl, route.scope == CacheScope::Shared);
        let upstream_age = rules::age(response.headers());
        let fresh_until = (now + lifetime.as_millis() as u64).saturating_sub(upstream_age * 1000);
        let stale_window = directives
            .stale_if_error
            .map_or(route.stale_if_error.as_millis() as u64, |s| s * 1000);
        let mut headers = response_headers(response.headers());
        headers.remove(header::AGE);
        if !headers.contains_key(header::ETAG) {
            headers.insert(header::ETAG, weak_etag(response.body()));
        }
        let query = rules::normalise_query(parts.uri.query());
        let path = if query.is_empty() {
            parts.uri.path().to_owned()
        } else {
            format!("{}?{query}", parts.uri.path())
        };
        CacheEntry {
            status: response.status(),
            headers,
            body: response.body().clone(),
            route: route.name.clone(),
            entity: matched.entity.clone(),
            path,
            epoch,
            stored_at_ms: now,
            upstream_age_s: upstream_age,
            fresh_until_ms: fresh_until,
            stale_until_ms: fresh_until + stale_window,
        }
    }

    /// Fetches without the cache and relays the response, with `Cache-Status` naming why.
    pub(super) async fn fetch_direct(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        peer: SocketAddr,
        detail: &'static str,
    ) -> Response<Full<Bytes>> {
        match self.fetch(matched.route, parts, peer).await {
            Ok(response) => self.relay(matched, parts, response, CacheOutcome::Bypass { detail }),
            Err(error) => {
                self.count(matched, "bypass");
                respond::upstream_failure(&error)
            }
        }
    }

    /// Sends the request of a credential not yet authorised on a shared route upstream. A
    /// 2xx response authorises the credential for `authorize_ttl` and may refresh the entry.
    pub(super) async fn fetch_to_authorize(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        peer: SocketAddr,
        credential: Vec<u8>,
    ) -> Response<Full<Bytes>> {
        let route = matched.route;
        let epoch = self.epochs.snapshot();
        let response = match self.fetch(route, parts, peer).await {
            Ok(response) => response,
            Err(error) => {
                self.count(matched, "bypass");
                return respond::upstream_failure(&error);
            }
        };
        if response.status().is_success() {
            self.mark_authorized(route, parts, &credential);
            let base = self.base_key(route, parts, &credential);
            self.store_response(matched, parts, &base, epoch, &response);
        }
        self.relay(
            matched,
            parts,
            response,
            CacheOutcome::Bypass {
                detail: "authorize",
            },
        )
    }

    /// Passes a consumer's write (any method but GET and HEAD) upstream and invalidates
    /// the entity, because the write may change it.
    pub(super) async fn pass_write<B>(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        body: B,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let route = matched.route;
        let upstream = &self.upstreams[&route.upstream];
        let body = match Limited::new(body, route.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return respond::body_too_large(route.max_body),
        };
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = UpstreamClient::uri(upstream, path_and_query) else {
            return respond::misconfigured(&route.name);
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = forward_headers(&parts.headers, upstream, peer);
        let result = self
            .client
            .send_as_is(upstream, request, route.max_body.max(1 << 20))
            .await;
        // Only a write the upstream accepted can have changed the entity. The bump also
        // keeps reads that started during the write from storing what they fetched.
        if result.as_ref().is_ok_and(|r| r.status().is_success()) {
            self.invalidate(&matched.entity, &route.name);
        }
        self.count(matched, "bypass");
        match result {
            Ok(response) => {
                respond::relayed(response, false, &CacheOutcome::Bypass { detail: "method" })
            }
            Err(error) => respond::upstream_failure(&error),
        }
    }

    /// Stores ekko's own fingerprint fetch of an entity as the shared entry that consumers
    /// reacting to the forwarded change will ask for. Only shared routes take it, because a
    /// private entry belongs to one consumer's credential. The caller has already
    /// invalidated the entity, and its per-entity lock keeps other changes out meanwhile.
    pub fn store_own_fetch(&self, upstream: &str, path: &str, response: &Response<Bytes>) -> bool {
        let Some(matched) = self.find(path) else {
            return false;
        };
        let route = matched.route;
        if route.upstream != upstream
            || route.scope != CacheScope::Shared
            || is_error_status(response.status())
        {
            return false;
        }
        let Ok(uri) = path.parse::<http::Uri>() else {
            return false;
        };
        let mut request = Request::new(());
        *request.uri_mut() = uri;
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let (parts, ()) = request.into_parts();
        let base = self.base_key(route, &parts, &[]);
        let epoch = self.epochs.snapshot();
        self.store_response(&matched, &parts, &base, epoch, response)
            .is_some()
    }
}

/// Builds a weak entity-tag from the body's blake3 digest, for responses without one (RFC 9110
/// §8.8.3): weak, because it identifies the bytes, not the representation's semantics.
fn weak_etag(body: &Bytes) -> HeaderValue {
    let digest = blake3::hash(body).to_hex();
    HeaderValue::from_str(&format!("W/\"{}\"", &digest[..32]))
        .unwrap_or(HeaderValue::from_static("W/\"0\""))
}
