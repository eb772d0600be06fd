//! Admin listener: `/metrics`, `/healthz` and `/readyz`. Never exposed on the public listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::metrics::Metrics;
use crate::notify::json_response;

/// What the admin endpoints read.
pub struct Admin {
    /// The metric registry.
    pub metrics: Arc<Metrics>,
    /// False until the listeners are up and while ekko drains for shutdown.
    pub ready: Arc<AtomicBool>,
}

impl Admin {
    /// Handles one admin request.
    pub fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({ "error": "method_not_allowed", "message": "admin endpoints accept GET and HEAD" }),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/metrics" => self.metrics_response(request),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            other => json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({
                    "error": "not_found",
                    "message": format!("no admin endpoint {other}; try /metrics, /healthz or /readyz"),
                }),
            ),
        }
    }

    /// Serves OpenMetrics when the scraper asks for it, else Prometheus text 0.0.4.
    fn metrics_response<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let wants_openmetrics = request
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        let (body, content_type) = if wants_openmetrics {
            (
                self.metrics.encode_openmetrics(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            (
                self.metrics.encode_prometheus(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
