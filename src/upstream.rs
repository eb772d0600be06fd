//! Pooled HTTP/1.1 client for upstreams: timeouts, header hygiene, bounded response bodies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::metrics::{Metrics, UpstreamCodeLabels, UpstreamLabels};
use crate::policy::UpstreamConfig;

/// The `Via` pseudonym ekko adds to forwarded requests (RFC 9110 §7.6.3).
pub const VIA: &str = "1.1 ekko";

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No TCP connection could be made (refused, unreachable, connect timeout).
    #[error("cannot connect to upstream `{upstream}`: {reason}")]
    ConnectFailed {
        /// Upstream name.
        upstream: String,
        /// The connector's error text.
        reason: String,
    },
    /// The request and its response body took longer than the upstream's `timeout`.
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    TimedOut {
        /// Upstream name.
        upstream: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The response body exceeded the caller's limit.
    #[error("upstream `{upstream}` sent a response body over {limit} bytes")]
    BodyTooLarge {
        /// Upstream name.
        upstream: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// Any other failure: connection reset, invalid response.
    #[error("request to upstream `{upstream}` failed: {reason}")]
    Failed {
        /// Upstream name.
        upstream: String,
        /// The client's error text.
        reason: String,
    },
}

impl UpstreamError {
    /// The `code` label for `ekko_upstream_requests_total`.
    pub fn code_label(&self) -> &'static str {
        match self {
            Self::ConnectFailed { .. } => "connect_error",
            Self::TimedOut { .. } => "timeout",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::Failed { .. } => "error",
        }
    }
}

/// A shared, pooled client; clones share the pool.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
    metrics: Arc<Metrics>,
}

impl UpstreamClient {
    /// Creates a client whose connect timeout is the smallest of the upstreams'
    /// `connect_timeout` values (the connector has one setting for the whole pool).
    pub fn new(connect_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Self { client, metrics }
    }

    /// Builds the URI of `path_and_query` on `upstream`, under its base path.
    pub fn uri(upstream: &UpstreamConfig, path_and_query: &str) -> Result<Uri, http::Error> {
        let full = format!("{}{}", upstream.base_path, path_and_query);
        Uri::builder()
            .scheme("http")
            .authority(upstream.authority.clone())
            .path_and_query(full)
            .build()
    }

    /// Sends `request` and reads the whole response body, at most `body_limit` bytes,
    /// within the upstream's timeout. The upstream's configured headers are added.
    pub async fn send(
        &self,
        upstream: &UpstreamConfig,
        mut request: Request<Full<Bytes>>,
        body_limit: usize,
    ) -> Result<Response<Bytes>, UpstreamError> {
        for (name, value) in &upstream.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        self.send_as_is(upstream, request, body_limit).await
    }

    /// Sends `request` without adding the upstream's configured headers: consumers' lookups
    /// travel with their own credential, never with ekko's.
    pub async fn send_as_is(
        &self,
        upstream: &UpstreamConfig,
        request: Request<Full<Bytes>>,
        body_limit: usize,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            upstream.timeout,
            self.exchange(upstream, request, body_limit),
        )
        .await;
        let result = outcome.unwrap_or_else(|_| {
            Err(UpstreamError::TimedOut {
                upstream: upstream.name.clone(),
                timeout: upstream.timeout,
            })
        });
        self.record(upstream, &result, started);
        result
    }

    async fn exchange(
        &self,
        upstream: &UpstreamConfig,
        request: Request<Full<Bytes>>,
        body_limit: usize,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let response = self.client.request(request).await.map_err(|e| {
            let reason = error_chain(&e);
            if e.is_connect() {
                UpstreamError::ConnectFailed {
                    upstream: upstream.name.clone(),
                    reason,
                }
            } else {
                UpstreamError::Failed {
                    upstream: upstream.name.clone(),
                    reason,
                }
            }
        })?;
        let (parts, body) = response.into_parts();
        let collected = Limited::new(body, body_limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    UpstreamError::BodyTooLarge {
                        upstream: upstream.name.clone(),
                        limit: body_limit,
                    }
                } else {
                    UpstreamError::Failed {
                        upstream: upstream.name.clone(),
                        reason: e.to_string(),
                    }
                }
            })?;
        Ok(Response::from_parts(parts, collected.to_bytes()))
    }

    fn record(
        &self,
        upstream: &UpstreamConfig,
        result: &Result<Response<Bytes>, UpstreamError>,
        started: Instant,
    ) {
        let code = match result {
            Ok(response) => response.status().as_u16().to_string(),
            Err(error) => error.code_label().to_owned(),
        };
        self.metrics
            .upstream_requests
            .get_or_create(&UpstreamCodeLabels {
                upstream: upstream.name.clone(),
                code,
            })
            .inc();
        self.metrics
            .upstream_duration
            .get_or_create(&UpstreamLabels {
                upstream: upstream.name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Sends a GET with only the upstream's configured headers and `Accept: application/json`.
    pub async fn get_json(
        &self,
        upstream: &UpstreamConfig,
        path: &str,
        body_limit: usize,
    ) -> Result<Response<Bytes>, UpstreamError> {
        let uri = Self::uri(upstream, path).map_err(|e| UpstreamError::Failed {
            upstream: upstream.name.clone(),
            reason: format!("invalid lookup path: {e}"),
        })?;
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        self.send(upstream, request, body_limit).await
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Hop-by-hop header fields that a proxy must not forward (RFC 9110 §7.6.1), plus the
/// obsolete `Proxy-Connection` and `Keep-Alive` that some clients still send.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop fields, including every field that `Connection` names, and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Prepares a producer's headers for forwarding: hop-by-hop fields and `Expect` removed,
/// `Host` set to the upstream, `Content-Length` dropped (the client sets it from the body),
/// and `Via` and `Forwarded` (RFC 7239) appended.
pub fn forward_headers(
    incoming: &HeaderMap,
    upstream: &UpstreamConfig,
    peer: SocketAddr,
) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT);
    headers.remove(header::CONTENT_LENGTH);
    let original_host = headers.remove(header::HOST);
    if let Ok(host) = HeaderValue::from_str(upstream.authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    headers.append(header::VIA, HeaderValue::from_static(VIA));
    let mut forwarded = format!("for={}", forwarded_node(peer));
    if let Some(host) = original_host.as_ref().and_then(|h| h.to_str().ok()) {
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            forwarded.push_str(&format!(";host=\"{host}\""));
        }
    }
    forwarded.push_str(";proto=http");
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.append(header::FORWARDED, value);
    }
    headers
}

/// An RFC 7239 node: IPv6 addresses are quoted and bracketed.
fn forwarded_node(peer: SocketAddr) -> String {
    match peer {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("\"[{}]\"", v6.ip()),
    }
}

/// Prepares an upstream's response headers for the producer: hop-by-hop fields removed,
/// `Content-Length` dropped (set again from the body).
pub fn response_headers(upstream_headers: &HeaderMap) -> HeaderMap {
    let mut headers = upstream_headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers
}

/// The status that a failed forward gets: 504 for a timeout, 502 for everything else.
pub fn failure_status(error: &UpstreamError) -> StatusCode {
    match error {
        UpstreamError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> UpstreamConfig {
        UpstreamConfig {
            name: "mq".into(),
            authority: "127.0.0.1:15672".parse().unwrap(),
            base_path: String::new(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            headers: Vec::new(),
            amqp: None,
        }
    }

    #[test]
    fn connection_listed_fields_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let out = forward_headers(&headers, &upstream(), "10.0.0.1:5000".parse().unwrap());
        assert!(out.get("x-secret").is_none());
        assert!(out.get(header::CONNECTION).is_none());
        assert!(out.get(header::TRANSFER_ENCODING).is_none());
        assert!(out.get("keep-alive").is_none());
        assert_eq!(out.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn via_and_forwarded_are_appended() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("ekko.example:8080"));
        headers.insert(header::VIA, HeaderValue::from_static("1.1 edge"));
        let out = forward_headers(&headers, &upstream(), "[::1]:5000".parse().unwrap());
        let via: Vec<_> = out.get_all(header::VIA).iter().collect();
        assert_eq!(via, vec!["1.1 edge", VIA]);
        assert_eq!(
            out.get(header::FORWARDED).unwrap(),
            "for=\"[::1]\";host=\"ekko.example:8080\";proto=http"
        );
        assert_eq!(out.get(header::HOST).unwrap(), "127.0.0.1:15672");
    }
}
