//! HTTP caching rules: RFC 9111 directives and storability, RFC 5861 stale-if-error,
//! RFC 9211 Cache-Status and validator comparison.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// `Cache-Control` response directives that the cache acts on (RFC 9111 §5.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (unqualified or with field names: both mean revalidate).
    pub no_cache: bool,
    /// `private` (unqualified or with field names).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds.
    pub s_maxage: Option<u64>,
    /// `stale-if-error` (RFC 5861), seconds.
    pub stale_if_error: Option<u64>,
}

/// Parses the response's `Cache-Control` fields; unknown directives are ignored and an
/// invalid delta-seconds value is treated as 0 (RFC 9111 §1.2.2).
pub fn response_directives(headers: &HeaderMap) -> ResponseDirectives {
    let _ = headers;
    todo!("rules")
}

/// `Cache-Control` request directives (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `only-if-cached`.
    pub only_if_cached: bool,
}

/// Parses the request's `Cache-Control` fields (and `Pragma: no-cache` when there is no
/// `Cache-Control`, RFC 9111 §5.4).
pub fn request_directives(headers: &HeaderMap) -> RequestDirectives {
    let _ = headers;
    todo!("rules")
}

/// The response's `Vary` (RFC 9110 §12.5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No `Vary`.
    None,
    /// The listed request header names, lowercased, deduplicated, sorted.
    Headers(Vec<HeaderName>),
    /// `Vary: *`: never served from a cache.
    Any,
}

/// Parses `Vary`.
pub fn vary(headers: &HeaderMap) -> Vary {
    let _ = headers;
    todo!("rules")
}

/// Decides whether a response may be stored by this shared cache (RFC 9111 §3 and §3.5):
/// returns the reason it may not, such as `no-store`, `private`, `vary-any`,
/// `authorization`, `status`. `request_authorized` is whether the request carried
/// `Authorization`; in `private_scope` ekko partitions by credential, so `private` and
/// §3.5 do not apply there.
pub fn not_storable(
    status: StatusCode,
    request_authorized: bool,
    private_scope: bool,
    directives: &ResponseDirectives,
    vary: &Vary,
) -> Option<&'static str> {
    let _ = (status, request_authorized, private_scope, directives, vary);
    todo!("rules")
}

/// Freshness lifetime: the route's `ttl`, shortened by `s-maxage` (shared scope) or
/// `max-age`; zero for `no-cache`.
pub fn freshness_lifetime(
    directives: &ResponseDirectives,
    ttl: Duration,
    shared: bool,
) -> Duration {
    let _ = (directives, ttl, shared);
    todo!("rules")
}

/// The upstream's `Age` in seconds; 0 when absent or invalid.
pub fn age(headers: &HeaderMap) -> u64 {
    let _ = headers;
    todo!("rules")
}

/// Whether `If-None-Match` matches `etag` by weak comparison (RFC 9110 §13.1.2); `*`
/// matches any.
pub fn if_none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let _ = (request, etag);
    todo!("rules")
}

/// Sorts query parameters by name then value, keeping their encoding, so
/// `b=2&a=1` and `a=1&b=2` share an entry. An empty query gives "".
pub fn normalise_query(query: Option<&str>) -> String {
    let _ = query;
    todo!("rules")
}

/// What the cache did, for the RFC 9211 `Cache-Status` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the cache, fresh; `ttl` seconds of freshness left.
    Hit {
        /// Remaining freshness, seconds.
        ttl: i64,
    },
    /// Served stale because the upstream failed (`stale-if-error`).
    Stale {
        /// Remaining freshness, negative seconds.
        ttl: i64,
    },
    /// Fetched; `stored` says whether the answer was stored, `collapsed` whether it came
    /// from another request's fetch.
    Miss {
        /// Stored for later requests.
        stored: bool,
        /// Served from another request's fetch.
        collapsed: bool,
    },
    /// Not looked up in the cache; `detail` names why (`method`, `no-store`, ...).
    Bypass {
        /// Reason token.
        detail: &'static str,
    },
}

/// Formats `Cache-Status: ekko; hit; ttl=42` and the like (RFC 9211).
pub fn cache_status(outcome: &CacheOutcome) -> HeaderValue {
    let _ = outcome;
    todo!("rules")
}
