//! Forwarding to the upstream, committing fingerprints after 2xx, and responses to suppressed notifications.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::Full;

use super::decide::{Decision, Verdict};
use super::reply::{json_bytes_response, json_response, NotifyError, DECISION_HEADER};
use super::route::Matched;
use super::Gateway;
use crate::metrics::DecisionLabels;
use crate::policy::{Format, RouteMode};
use crate::state::EntityRecord;
use crate::upstream::{forward_headers, response_headers, UpstreamClient};

/// Way the hop count is written into a forwarded request.
#[derive(Debug, Clone, Copy)]
pub(super) enum Hops {
    /// A single notification: header and, where the format allows, the body.
    Single(u32),
    /// A batch whose elements are already stamped: the header carries the largest count.
    Batch(u32),
    /// An undecodable notification: nothing is known about it.
    Unknown,
}

/// Maximum upstream response body relayed to the producer (4 MiB); a larger one is a 502.
pub(super) const FORWARD_RESPONSE_LIMIT: usize = 4 << 20;

impl Gateway {
    /// Returns whether nothing is forwarded: an enforcing route where every verdict suppresses.
    pub(super) fn suppresses(&self, matched: &Matched<'_>, verdicts: &[Verdict]) -> bool {
        matched.route.route.mode == RouteMode::Enforce
            && verdicts.iter().all(|v| v.decision != Decision::Forward)
    }

    /// Responds to a notification that is not forwarded with the route's `suppressed_response`.
    pub(super) fn suppress(
        &self,
        matched: &Matched<'_>,
        verdicts: &[Verdict],
    ) -> Response<Full<Bytes>> {
        let route = &matched.route.route;
        let now = self.clock.now_ms();
        for verdict in verdicts {
            // The event id of an unchanged or held notification is remembered too, so a
            // redelivery of it is reported as the duplicate it is.
            if matches!(verdict.decision, Decision::Unchanged | Decision::Held(_)) {
                if let Some(event_key) = &verdict.event_key {
                    self.state.record_event(event_key, now);
                }
            }
            self.count(&route.name, verdict.decision.as_str(), 1);
            self.audit(
                &route.name,
                verdict,
                verdict.decision.as_str(),
                reason_text(verdict),
            );
        }
        if let [verdict] = verdicts {
            if let Decision::Held(reason) = verdict.decision {
                let body = serde_json::json!({
                    "decision": "held",
                    "reason": reason.as_str(),
                    "entity": verdict.key,
                });
                let mut reply = json_response(http::StatusCode::ACCEPTED, &body);
                set_decision(&mut reply, &verdict.decision.header_value());
                return reply;
            }
        }

        let response = &route.suppressed_response;
        let mut reply = match &response.body {
            Some(body) => {
                let mut reply = Response::new(Full::new(Bytes::from(body.clone())));
                if let Ok(value) = HeaderValue::from_str(&response.content_type) {
                    reply.headers_mut().insert(header::CONTENT_TYPE, value);
                }
                reply
            }
            None => json_bytes_response(response.status, suppressed_body(verdicts)),
        };
        *reply.status_mut() = response.status;
        set_decision(&mut reply, &decision_header(matched, verdicts));
        reply
    }

    /// Forwards `body`, and after a 2xx response commits every forwarded verdict.
    pub(super) async fn forward_and_commit(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        body: Bytes,
        peer: SocketAddr,
        verdicts: &[Verdict],
    ) -> Result<Response<Full<Bytes>>, NotifyError> {
        let route = &matched.route.route;
        let hops = verdicts
            .iter()
            .map(|v| v.hops.saturating_add(1))
            .max()
            .unwrap_or(1);
        let stamp = match verdicts {
            [_] => Hops::Single(hops),
            _ => Hops::Batch(hops),
        };
        let shadow = route.mode == RouteMode::Shadow;
        for verdict in verdicts
            .iter()
            .filter(|v| shadow || v.decision == Decision::Forward)
        {
            self.refresh_cache(&route.name, verdict);
        }
        let upstream_response = match self.forward(matched, parts, body, peer, stamp).await {
            Ok(response) => response,
            Err(error) => {
                for verdict in verdicts {
                    self.audit(&route.name, verdict, "upstream_error", error.to_string());
                }
                return Err(error);
            }
        };

        let accepted = delivered(&route.format, &upstream_response);
        if upstream_response.status().is_success() && !accepted {
            tracing::warn!(route = %route.name, "RabbitMQ returned routed=false: no queue took the message, so nothing is committed");
        }
        let now = self.clock.now_ms();
        for verdict in verdicts {
            let sent = shadow || verdict.decision == Decision::Forward;
            if accepted && sent {
                self.commit(matched, verdict, now);
            }
            if shadow {
                self.metrics
                    .shadow_decisions
                    .get_or_create(&DecisionLabels {
                        route: route.name.clone(),
                        decision: if verdict.would_hold.is_some() {
                            "held"
                        } else {
                            verdict.decision.as_str()
                        },
                    })
                    .inc();
            }
            let decision = if sent {
                "forwarded"
            } else {
                verdict.decision.as_str()
            };
            self.count(&route.name, decision, 1);
            let reason = format!(
                "{}; upstream returned {}",
                reason_text(verdict),
                upstream_response.status().as_u16()
            );
            self.audit(&route.name, verdict, decision, reason);
        }

        let mut reply = relay(upstream_response);
        set_decision(&mut reply, &decision_header(matched, verdicts));
        Ok(reply)
    }

    /// Forwards an undecodable notification unchanged (`on_undecodable: forward`).
    pub(super) async fn pass_through(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        body: Bytes,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, NotifyError> {
        let upstream_response = self
            .forward(matched, parts, body, peer, Hops::Unknown)
            .await?;
        self.count(&matched.route.route.name, "forwarded", 1);
        let mut reply = relay(upstream_response);
        set_decision(&mut reply, "forwarded");
        Ok(reply)
    }

    async fn forward(
        &self,
        matched: &Matched<'_>,
        parts: &Parts,
        body: Bytes,
        peer: SocketAddr,
        hops: Hops,
    ) -> Result<Response<Bytes>, NotifyError> {
        let route = &matched.route.route;
        let upstream = self.upstreams.get(&route.upstream).ok_or_else(|| {
            NotifyError::Internal(format!("route `{}` names a missing upstream", route.name))
        })?;
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = UpstreamClient::uri(upstream, path_and_query)
            .map_err(|e| NotifyError::Internal(format!("cannot build the upstream URI: {e}")))?;

        let mut headers = forward_headers(&parts.headers, upstream, peer);
        let body = match hops {
            Hops::Single(hops) => crate::guard::stamp(&route.format, &mut headers, body, hops),
            Hops::Batch(hops) => {
                headers.insert(crate::guard::HOPS_HEADER, HeaderValue::from(hops));
                body
            }
            Hops::Unknown => body,
        };
        if let Some(supervisor) = self.amqp.get(&upstream.name) {
            return self.publish(matched, supervisor, &headers, &body).await;
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let response = self
            .client
            .send(upstream, request, FORWARD_RESPONSE_LIMIT)
            .await;
        response.map_err(|error| {
            tracing::warn!(route = %route.name, upstream = %upstream.name, %error, "forward failed; nothing committed");
            NotifyError::Upstream(error)
        })
    }

    /// Invalidates the entity's cached lookups before its change is forwarded, so no
    /// consumer reacting to it can get the old copy, and stores ekko's own fresh fetch in
    /// its place.
    pub(super) fn refresh_cache(&self, route: &str, verdict: &Verdict) {
        self.lookups.invalidate(&verdict.key, route);
        if let Some(own) = &verdict.own_fetch {
            self.lookups
                .store_own_fetch(&own.upstream, &own.path, &own.response);
        }
    }

    /// Records a forwarded verdict as the entity's last forwarded state.
    fn commit(&self, matched: &Matched<'_>, verdict: &Verdict, now_ms: u64) {
        let config = &matched.route.route.loop_guard;
        // Read before the commit below replaces it: the loop guard builds an entity's
        // damping record from this state when the entity reaches its second state.
        let prior = if config.enabled {
            self.state.entities.peek(&verdict.key)
        } else {
            None
        };
        if let Some(fingerprint) = verdict.fingerprint {
            let record = EntityRecord {
                fingerprint,
                spec: matched.route.spec,
                forwarded_at_ms: now_ms,
            };
            if self.state.commit(&verdict.key, record) {
                self.metrics.state_evictions.inc();
            }
            self.metrics
                .state_entities
                .set(self.state.entities.len() as i64);
        }
        if let Some(event_key) = &verdict.event_key {
            self.state.record_event(event_key, now_ms);
        }
        if config.enabled {
            let state = verdict.fingerprint.as_ref().map(crate::guard::short);
            self.guard.commit(
                &verdict.key,
                state,
                prior.as_ref().map(crate::guard::Prior::from_record),
                verdict.source.as_deref(),
                verdict.trace.as_deref(),
                now_ms,
                config,
            );
        }
    }
}

/// Describes in a few words why a verdict was reached, for the audit ring.
fn reason_text(verdict: &Verdict) -> String {
    // The short form prints as the fingerprint's first 16 hex digits, without building
    // all 64.
    let state = match verdict.fingerprint {
        Some(fingerprint) => format!("state {:016x}", crate::guard::short(&fingerprint)),
        None => "no state".to_owned(),
    };
    match verdict.decision {
        Decision::Duplicate => "event id seen within duplicate_window".to_owned(),
        Decision::Unchanged => state + " equals the last forwarded state",
        Decision::Forward => format!("{state}; hops {}", verdict.hops),
        Decision::Held(reason) => format!("{state}; held for {}", reason.as_str()),
    }
}

/// Returns whether the upstream took the notification: a 2xx status, and for a RabbitMQ management
/// publish also `"routed": true`, because `false` means no queue received the message.
pub(super) fn delivered(format: &Format, response: &Response<Bytes>) -> bool {
    if !response.status().is_success() {
        return false;
    }
    if !matches!(format, Format::RabbitmqPublish(_)) {
        return true;
    }
    let routed = serde_json::from_slice::<serde_json::Value>(response.body())
        .ok()
        .and_then(|body| body.get("routed").and_then(serde_json::Value::as_bool));
    routed != Some(false)
}

/// Copies the upstream's response for the producer.
fn relay(upstream: Response<Bytes>) -> Response<Full<Bytes>> {
    let (parts, body) = upstream.into_parts();
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = parts.status;
    *reply.headers_mut() = response_headers(&parts.headers);
    reply
}

fn set_decision(reply: &mut Response<Full<Bytes>>, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        reply.headers_mut().insert(DECISION_HEADER, value);
    }
}

/// Builds the `Ekko-Decision` value: one entry per notification, comma-separated for a batch;
/// shadow routes add what enforce mode would have done (`forwarded; would=unchanged`).
fn decision_header(matched: &Matched<'_>, verdicts: &[Verdict]) -> String {
    let shadow = matched.route.route.mode == RouteMode::Shadow;
    if verdicts.len() > MAX_DECISION_ENTRIES {
        return decision_summary(shadow, verdicts);
    }
    let entries: Vec<String> = verdicts
        .iter()
        .map(|v| super::guarded::decision_entry(shadow, v))
        .collect();
    if entries.is_empty() {
        "unchanged".to_owned()
    } else {
        entries.join(", ")
    }
}

/// Largest batch whose decisions are listed one by one in `Ekko-Decision`. A larger batch
/// gets counts instead, so the header stays far below common 8 KiB header limits.
const MAX_DECISION_ENTRIES: usize = 32;

/// `batch; events=N; forwarded=a; unchanged=b; duplicate=c; held=d`, with `; shadow`
/// and would-be decisions on a shadow route.
fn decision_summary(shadow: bool, verdicts: &[Verdict]) -> String {
    let mut counts = [0usize; 4];
    for verdict in verdicts {
        let index = match (verdict.would_hold, verdict.decision) {
            (Some(_), _) | (_, Decision::Held(_)) => 3,
            (_, Decision::Forward) => 0,
            (_, Decision::Unchanged) => 1,
            (_, Decision::Duplicate) => 2,
        };
        counts[index] += 1;
    }
    let [forwarded, unchanged, duplicate, held] = counts;
    let mut summary = format!(
        "batch; events={}; forwarded={forwarded}; unchanged={unchanged}; duplicate={duplicate}; held={held}",
        verdicts.len()
    );
    if shadow {
        summary.push_str("; shadow");
    }
    summary
}

/// Default suppressed body: `{"decision": ..., "entity": ...}`, or a list for a batch.
fn suppressed_body<'a>(verdicts: &'a [Verdict]) -> Vec<u8> {
    /// One suppressed event, serialised without building a JSON tree first.
    #[derive(serde::Serialize)]
    struct Item<'a> {
        decision: &'a str,
        entity: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Many<'a> {
        decision: &'a str,
        events: Vec<Item<'a>>,
    }
    let item = |v: &'a Verdict| Item {
        decision: v.decision.as_str(),
        entity: &v.key,
    };
    let written = match verdicts {
        [one] => serde_json::to_vec(&item(one)),
        many => serde_json::to_vec(&Many {
            decision: "suppressed",
            events: many.iter().map(item).collect(),
        }),
    };
    // serde_json fails only on non-string map keys or a failing `Serialize`, and these
    // structs contain only strings, so the empty fallback is never used.
    written.unwrap_or_default()
}
