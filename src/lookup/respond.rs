//! Responses of the lookup path: cached entries, relayed responses, 304 and errors.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::rules::{self, CacheOutcome};
use super::store::CacheEntry;
use crate::notify::json_response;
use crate::upstream::{failure_status, response_headers, UpstreamError};

/// Header fields a 304 carries from the stored response (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [header::HeaderName; 5] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::EXPIRES,
    header::VARY,
];

/// Builds the response for a cached entry; a HEAD gets the headers only.
pub fn from_entry(
    entry: &CacheEntry,
    head: bool,
    age: u64,
    outcome: &CacheOutcome,
) -> Response<Full<Bytes>> {
    let body = if head {
        Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    if head {
        if let Ok(length) = HeaderValue::from_str(&entry.body.len().to_string()) {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, length);
        }
    }
    annotate(&mut response, Some(age), outcome);
    response
}

/// Builds a 304 for a matching `If-None-Match`.
pub fn not_modified(
    entry: &CacheEntry,
    etag: &HeaderValue,
    age: u64,
    outcome: &CacheOutcome,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.clone());
    for name in NOT_MODIFIED_FIELDS {
        if let Some(value) = entry.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    annotate(&mut response, Some(age), outcome);
    response
}

/// Relays an upstream response that did not come from the cache.
pub fn relayed(
    upstream: Response<Bytes>,
    head: bool,
    outcome: &CacheOutcome,
) -> Response<Full<Bytes>> {
    let (parts, body) = upstream.into_parts();
    let length = body.len();
    let body = if head { Bytes::new() } else { body };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = parts.status;
    *response.headers_mut() = response_headers(&parts.headers);
    if head {
        if let Ok(length) = HeaderValue::from_str(&length.to_string()) {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, length);
        }
    }
    annotate(&mut response, None, outcome);
    response
}

fn annotate(response: &mut Response<Full<Bytes>>, age: Option<u64>, outcome: &CacheOutcome) {
    let headers = response.headers_mut();
    if let Some(age) = age {
        headers.insert(header::AGE, HeaderValue::from(age));
    }
    headers.insert(CACHE_STATUS, rules::cache_status(outcome));
}

/// The RFC 9211 field name.
pub const CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// 502 or 504 with a JSON body naming the upstream's failure.
pub fn upstream_failure(error: &UpstreamError) -> Response<Full<Bytes>> {
    let code = match failure_status(error) {
        StatusCode::GATEWAY_TIMEOUT => "upstream_timeout",
        _ => "upstream_unavailable",
    };
    let mut response = json_response(
        failure_status(error),
        &serde_json::json!({ "error": code, "message": error.to_string() }),
    );
    annotate(
        &mut response,
        None,
        &CacheOutcome::Bypass {
            detail: "upstream-error",
        },
    );
    response
}

/// 504 for `only-if-cached` without a usable entry (RFC 9111 §5.2.1.7).
pub fn gateway_timeout_only_if_cached() -> Response<Full<Bytes>> {
    let mut response = json_response(
        StatusCode::GATEWAY_TIMEOUT,
        &serde_json::json!({ "error": "not_cached", "message": "only-if-cached was requested and no fresh entry is stored" }),
    );
    annotate(
        &mut response,
        None,
        &CacheOutcome::Bypass {
            detail: "only-if-cached",
        },
    );
    response
}

/// 413 for a consumer write over the route's `max_body`.
pub fn body_too_large(limit: usize) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &serde_json::json!({ "error": "body_too_large", "message": format!("request body is larger than the route's max_body of {limit} bytes") }),
    )
}

/// 500 when a lookup route names an upstream that is missing; validation prevents it.
pub fn misconfigured(route: &str) -> Response<Full<Bytes>> {
    tracing::error!(route, "lookup route names a missing upstream");
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({ "error": "internal", "message": "internal error" }),
    )
}
