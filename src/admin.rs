//! Admin listener: metrics, health, policy reload, and the loop guard's quarantine and
//! entity views, behind the policy's bearer token. Never served on the public listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::guard::{AuditEntry, Quarantine};
use crate::metrics::Metrics;
use crate::notify::{json_response, Gateway, ReleaseOutcome};
use crate::policy::{AdminConfig, LoopGuardConfig};
use crate::server::Live;

/// Shared state that the admin endpoints read.
pub struct Admin {
    /// The metric registry.
    pub metrics: Arc<Metrics>,
    /// False until the listeners are up and while ekko drains for shutdown.
    pub ready: Arc<AtomicBool>,
    /// The gateway and admin settings in force, and the policy reload.
    pub live: Arc<Live>,
}

impl Admin {
    /// Handles one admin request. With `admin.token` set, every path except `/healthz`,
    /// `/readyz` and, with `metrics_open`, `/metrics` first needs the bearer token.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        if let Some(rejection) = reject_unauthorized(&self.live.admin(), &path, request.headers()) {
            return rejection;
        }
        if path == "/admin/reload" {
            if method != Method::POST {
                return not_allowed("POST");
            }
            tracing::info!("policy reload requested on the admin API");
            let outcome = self.live.reload().await;
            return json_response(outcome.status(), &outcome.to_json());
        }
        if let Some(rest) = path.strip_prefix("/admin/quarantine/") {
            if let Some(entity) = rest.strip_suffix("/release") {
                if method != Method::POST {
                    return not_allowed("POST");
                }
                return self.release(&decode_entity(entity)).await;
            }
        }
        if path == "/admin/cache/purge" {
            if method != Method::POST {
                return not_allowed("POST");
            }
            return self.purge(request.uri().query());
        }
        if method != Method::GET && method != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        match path.as_str() {
            "/metrics" => self.metrics_response(&request),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readiness(),
            "/admin/quarantine" => self.quarantine_list(),
            "/admin/cache" => json_response(StatusCode::OK, &self.gateway().lookups().summary()),
            other => match other.strip_prefix("/admin/entities/") {
                Some(entity) if !entity.is_empty() => self.entity(&decode_entity(entity)),
                _ => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({
                        "error": "not_found",
                        "message": format!("no admin endpoint {other}; try /metrics, /healthz, /readyz, /admin/quarantine, /admin/entities/{{entity}}, /admin/cache, POST /admin/cache/purge, POST /admin/quarantine/{{entity}}/release or POST /admin/reload"),
                    }),
                ),
            },
        }
    }

    /// `GET /readyz`: 200 once the listeners are up and every AMQP upstream is connected;
    /// 503 while draining or while an AMQP upstream is disconnected, naming it.
    fn readiness(&self) -> Response<Full<Bytes>> {
        if !self.ready.load(Ordering::Acquire) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
        }
        let gateway = self.gateway();
        let disconnected = gateway.amqp().disconnected();
        if disconnected.is_empty() {
            return text(StatusCode::OK, "ready\n");
        }
        let body = format!(
            "not ready: amqp upstream not connected: {}\n",
            disconnected.join(", ")
        );
        let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "");
        *response.body_mut() = Full::new(Bytes::from(body));
        response
    }

    /// Serves OpenMetrics when the scraper accepts it, else Prometheus text 0.0.4.
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

    /// `GET /admin/quarantine`: every quarantined entity.
    fn quarantine_list(&self) -> Response<Full<Bytes>> {
        let now = self.gateway().now_ms();
        let entries: Vec<_> = self
            .gateway()
            .guard()
            .quarantines()
            .into_iter()
            .map(|(key, quarantine)| self.quarantine_json(&key, &quarantine, now))
            .collect();
        json_response(StatusCode::OK, &json!({ "quarantined": entries }))
    }

    fn quarantine_json(
        &self,
        key: &str,
        quarantine: &Quarantine,
        now_ms: u64,
    ) -> serde_json::Value {
        let config = self.config(&quarantine.route);
        let penalty = self
            .gateway()
            .guard()
            .record(key)
            .map_or(0.0, |r| r.penalty_at(now_ms, &config));
        json!({
            "entity": key,
            "route": quarantine.route,
            "since_ms": quarantine.since_ms,
            "penalty": round(penalty),
            "reason": quarantine.reason.as_str(),
            "sources": quarantine.sources,
            "states": quarantine.states,
            "held": quarantine.held_count,
            "release_attempts": quarantine.attempts,
        })
    }

    /// `POST /admin/quarantine/{entity}/release`: releases now, whatever the penalty.
    async fn release(&self, key: &str) -> Response<Full<Bytes>> {
        let outcome = self.gateway().release_now(key).await;
        let status = match outcome {
            ReleaseOutcome::NotQuarantined => StatusCode::NOT_FOUND,
            ReleaseOutcome::Retry | ReleaseOutcome::Busy => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
        };
        tracing::info!(entity = ?key, outcome = outcome.as_str(), "release requested on the admin API");
        json_response(
            status,
            &json!({ "entity": key, "outcome": outcome.as_str() }),
        )
    }

    /// `GET /admin/entities/{entity}`: last forwarded state, recent transitions and decisions.
    fn entity(&self, key: &str) -> Response<Full<Bytes>> {
        let gateway = self.gateway();
        let guard = gateway.guard();
        let record = gateway.entity_record(key);
        let damping = guard.record(key);
        let audit = guard.audit_entries(key);
        if record.is_none() && damping.is_none() && audit.is_empty() {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": "not_found", "message": format!("ekko has no state for entity `{key}`; write the key as one URL path segment, with `/` as %2F and `%` as %25") }),
            );
        }
        let now = gateway.now_ms();
        let quarantine = guard.quarantine(key);
        let route = quarantine
            .as_ref()
            .map(|q| q.route.clone())
            .or_else(|| audit.last().map(|entry: &AuditEntry| entry.route.clone()));
        let config = route.as_deref().map(|r| self.config(r)).unwrap_or_default();
        let transitions: Vec<_> = damping
            .iter()
            .flat_map(|d| d.history.iter())
            .map(|t| json!({ "state": format!("{:016x}", t.state), "at_ms": t.at_ms, "source": t.source }))
            .collect();
        let body = json!({
            "entity": key,
            "last_forwarded": record.map(|r| json!({ "fingerprint": r.fingerprint.to_hex(), "at_ms": r.forwarded_at_ms })),
            "penalty": round(damping.as_ref().map_or(0.0, |d| d.penalty_at(now, &config))),
            "transitions": transitions,
            "quarantine": quarantine.map(|q| self.quarantine_json(key, &q, now)),
            "decisions": audit,
        });
        json_response(StatusCode::OK, &body)
    }

    /// `POST /admin/cache/purge?entity=KEY` or `?path=PREFIX`: removes cached lookups.
    fn purge(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let params: Vec<(String, String)> = query
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.to_owned(), decode_entity(&value.replace('+', " "))))
            .collect();
        let gateway = self.gateway();
        let lookups = gateway.lookups();
        let (target, removed) = match params.first().map(|(n, v)| (n.as_str(), v.as_str())) {
            Some(("entity", entity)) => (entity.to_owned(), lookups.purge_entity(entity)),
            Some(("path", path)) if path.starts_with('/') => {
                (path.to_owned(), lookups.purge_path(path))
            }
            _ => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "bad_request", "message": "name one thing to purge: ?entity=<entity key> or ?path=</path>, percent-encoded" }),
                )
            }
        };
        // Debug formatting escapes control characters, so a crafted key cannot forge log lines.
        tracing::info!(target = ?target, removed, "cache purge requested on the admin API");
        json_response(
            StatusCode::OK,
            &json!({ "purged": target, "removed": removed }),
        )
    }

    fn config(&self, route: &str) -> LoopGuardConfig {
        self.gateway().loop_guard_config(route).unwrap_or_default()
    }

    fn gateway(&self) -> Arc<Gateway> {
        self.live.gateway()
    }
}

/// Paths that need no token: probes must work without a credential.
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Checks `Authorization: Bearer <token>` (RFC 6750 §2.1) when the policy sets a token,
/// and returns the 401 response when the request may not proceed. Neither the token nor
/// the presented value is logged.
fn reject_unauthorized(
    config: &AdminConfig,
    path: &str,
    headers: &http::HeaderMap,
) -> Option<Response<Full<Bytes>>> {
    let token = config.token.as_ref()?;
    if OPEN_PATHS.contains(&path) || (path == "/metrics" && config.metrics_open) {
        return None;
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (Some(value), None) => bearer_credential(value.as_bytes()),
        _ => None,
    };
    match presented {
        Some(credential) if token.verify(credential) => None,
        Some(_) => {
            tracing::debug!(path, "admin request rejected: wrong bearer token");
            Some(unauthorized(
                "Bearer realm=\"ekko admin\", error=\"invalid_token\"",
                "the bearer token is wrong; send the token set in the policy's `admin.token`",
            ))
        }
        None => {
            tracing::debug!(path, "admin request rejected: no bearer token");
            Some(unauthorized(
                "Bearer realm=\"ekko admin\"",
                "this admin endpoint needs `Authorization: Bearer <token>` with the token set in the policy's `admin.token`",
            ))
        }
    }
}

/// Returns the credential of a `Bearer` authorization value; the scheme name is
/// case-insensitive (RFC 9110 §11.1).
fn bearer_credential(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let credential = value[7..].trim_ascii();
    (!credential.is_empty()).then_some(credential)
}

fn unauthorized(challenge: &'static str, message: &str) -> Response<Full<Bytes>> {
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "error": "unauthorized", "message": message }),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// Entity keys are taken from the path with one round of percent-decoding.
fn decode_entity(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": "method_not_allowed", "message": format!("this admin endpoint accepts {allow}") }),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
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
