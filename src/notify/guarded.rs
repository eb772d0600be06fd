//! The loop guard's part of the notification path: hold, quarantine and release.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::Full;

use super::decide::{Decision, Verdict};
use super::reply::NotifyError;
use super::route::Matched;
use super::Gateway;
use crate::guard::{short, AuditEntry, Detection, HeldNotification, Reason};
use crate::metrics::{KindLabels, OutcomeRouteLabels, RouteLabels};
use crate::policy::RouteMode;
use crate::state::EntityRecord;
use crate::upstream::{forward_headers, UpstreamClient};

/// Header on a released notification: how many held notifications it replaced.
pub const COALESCED_HEADER: &str = "ekko-coalesced";

/// Result of a release attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The newest held notification was forwarded and accepted.
    Delivered,
    /// The newest held state equals the state last forwarded; nothing was sent.
    Unchanged,
    /// Nothing was held.
    Empty,
    /// The forward failed; it is retried with backoff.
    Retry,
    /// The entity was busy with another notification; the next tick tries again.
    Busy,
    /// The entity is not quarantined.
    NotQuarantined,
}

impl ReleaseOutcome {
    /// Returns the `outcome` label and admin API value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Unchanged => "unchanged",
            Self::Empty => "empty",
            Self::Retry => "retry",
            Self::Busy => "busy",
            Self::NotQuarantined => "not_quarantined",
        }
    }
}

impl Gateway {
    /// Applies the loop guard to a decided notification while its entity is locked: a
    /// quarantined entity's notification is held, and a forward that reaches `max_hops` or
    /// pushes the penalty over `suppress_above` quarantines the entity and is held.
    pub(super) fn apply_guard(
        &self,
        matched: &Matched<'_>,
        verdict: &mut Verdict,
        held: impl FnOnce(&Verdict) -> HeldNotification,
    ) {
        let route = &matched.route.route;
        let config = &route.loop_guard;
        if !config.enabled || verdict.decision == Decision::Duplicate {
            return;
        }
        let now = self.clock.now_ms();
        let shadow = route.mode == RouteMode::Shadow;
        if let Some(quarantine) = self.guard.quarantine(&verdict.key) {
            if shadow {
                verdict.would_hold = Some(quarantine.reason);
            } else if self.guard.hold(
                &verdict.key,
                held(verdict),
                verdict.source.as_deref(),
                now,
                config,
            ) {
                verdict.decision = Decision::Held(quarantine.reason);
            }
            return;
        }
        if verdict.decision != Decision::Forward {
            return;
        }

        let reason = if verdict.hops >= config.max_hops {
            Reason::Hops
        } else {
            match verdict.fingerprint {
                Some(fingerprint)
                    if self.guard.would_trip(
                        &verdict.key,
                        verdict.prior,
                        short(&fingerprint),
                        now,
                        config,
                    ) =>
                {
                    Reason::Oscillation
                }
                _ => return,
            }
        };
        if shadow {
            verdict.would_hold = Some(reason);
            return;
        }
        let detection = Detection {
            key: &verdict.key,
            route: &route.name,
            reason,
            source: verdict.source.as_deref(),
            prior: verdict.prior,
        };
        if !self.guard.enter(detection, held(verdict), now, config) {
            tracing::warn!(route = %route.name, entity = %verdict.key, "quarantine table full (state.max_quarantined); forwarding the loop");
            return;
        }
        verdict.decision = Decision::Held(reason);
        self.report_detection(matched, verdict, reason);
    }

    fn report_detection(&self, matched: &Matched<'_>, verdict: &Verdict, reason: Reason) {
        let route = &matched.route.route.name;
        let quarantine = self.guard.quarantine(&verdict.key);
        let (sources, states) = quarantine
            .map(|q| (q.sources, q.states))
            .unwrap_or_default();
        tracing::warn!(
            route = %route,
            entity = %verdict.key,
            reason = reason.as_str(),
            hops = verdict.hops,
            sources = %sources.join(","),
            states = %states.join(","),
            "echo loop detected; entity quarantined"
        );
        self.metrics
            .loop_detections
            .get_or_create(&KindLabels {
                route: route.clone(),
                kind: reason.as_str(),
            })
            .inc();
        self.update_quarantine_gauge();
    }

    /// Writes the quarantine table to disk when a verdict keeps a notification for release, so a held
    /// notification survives a crash once the producer has its 202. Without a snapshot
    /// path, held notifications live in memory only.
    pub(super) async fn save_holds(&self, verdicts: &[Verdict]) -> Result<(), NotifyError> {
        let holds = verdicts
            .iter()
            .any(|v| matches!(v.decision, Decision::Held(_)));
        match &self.held_writer {
            Some(writer) if holds => writer.persist(&self.guard).await.map_err(|error| {
                tracing::error!(%error, "saving held notifications failed; responding 503 so the producer retries");
                NotifyError::HoldNotSaved
            }),
            _ => Ok(()),
        }
    }

    /// Sets `ekko_quarantined_entities{route}` for every route.
    pub fn update_quarantine_gauge(&self) {
        let counts = self.guard.quarantined_per_route();
        for compiled in &self.routes {
            let name = &compiled.route.name;
            self.metrics
                .quarantined_entities
                .get_or_create(&RouteLabels {
                    route: name.clone(),
                })
                .set(counts.get(name).copied().unwrap_or(0));
        }
    }

    /// Records a decision in the entity's audit ring.
    pub(super) fn audit(&self, route: &str, verdict: &Verdict, decision: &str, reason: String) {
        self.guard.audit(
            &verdict.key,
            AuditEntry {
                at_ms: self.clock.now_ms(),
                route: route.to_owned(),
                decision: decision.to_owned(),
                reason,
                source: verdict.source.clone(),
            },
        );
    }

    /// Builds the held copy of a single notification.
    pub(super) fn held_copy(
        parts: &Parts,
        body: &Bytes,
        peer: SocketAddr,
        verdict: &Verdict,
    ) -> HeldNotification {
        HeldNotification {
            method: parts.method.clone(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
            peer,
            fingerprint: verdict.fingerprint,
            event_key: verdict.event_key.clone(),
            hops: verdict.hops,
        }
    }

    /// Releases every entity whose quarantine may end now; returns how many were released.
    pub async fn release_due(&self) -> usize {
        let now = self.clock.now_ms();
        let due = self.guard.due(now, |route| self.loop_guard_config(route));
        let mut released = 0;
        for key in due {
            if matches!(
                self.release(&key).await,
                ReleaseOutcome::Delivered | ReleaseOutcome::Unchanged | ReleaseOutcome::Empty
            ) {
                released += 1;
            }
        }
        released
    }

    /// Asks for the release of one entity now, as an operator would.
    pub async fn release_now(&self, key: &str) -> ReleaseOutcome {
        if !self.guard.request_release(key) {
            return ReleaseOutcome::NotQuarantined;
        }
        self.release(key).await
    }

    /// Ends an entity's quarantine: forwards its newest held notification once when its
    /// state differs from the last forwarded one; on failure, schedules a retry.
    pub async fn release(&self, key: &str) -> ReleaseOutcome {
        let Some(_guard) = self
            .locks
            .acquire(key, std::time::Duration::from_secs(1))
            .await
        else {
            return ReleaseOutcome::Busy;
        };
        let Some(quarantine) = self.guard.quarantine(key) else {
            return ReleaseOutcome::NotQuarantined;
        };
        let compiled = self
            .routes
            .iter()
            .find(|r| r.route.name == quarantine.route);
        let outcome = match (&quarantine.held, compiled) {
            (None, _) => ReleaseOutcome::Empty,
            (Some(held), Some(compiled)) if self.is_last_forwarded(key, held, compiled.spec) => {
                ReleaseOutcome::Unchanged
            }
            (Some(held), compiled) => {
                self.deliver(
                    key,
                    &quarantine.route,
                    held,
                    quarantine.held_count,
                    compiled,
                )
                .await
            }
        };
        if outcome != ReleaseOutcome::Retry {
            self.guard.leave(key);
            self.update_quarantine_gauge();
            if let Some(writer) = &self.held_writer {
                if let Err(error) = writer.persist(&self.guard).await {
                    // The release is done; a stale file only repeats it after a restart.
                    tracing::error!(%error, entity = %key, "cannot save the quarantine table after a release");
                }
            }
            tracing::info!(route = %quarantine.route, entity = %key, outcome = outcome.as_str(), held = quarantine.held_count, "quarantine released");
            self.guard.audit(
                key,
                AuditEntry {
                    at_ms: self.clock.now_ms(),
                    route: quarantine.route.clone(),
                    decision: "released".into(),
                    reason: format!("{} after {} held", outcome.as_str(), quarantine.held_count),
                    source: None,
                },
            );
        }
        self.metrics
            .loop_releases
            .get_or_create(&OutcomeRouteLabels {
                route: quarantine.route.clone(),
                outcome: outcome.as_str(),
            })
            .inc();
        outcome
    }

    fn is_last_forwarded(&self, key: &str, held: &HeldNotification, spec: u64) -> bool {
        match (held.fingerprint, self.state.entity(key)) {
            (Some(fingerprint), Some(record)) => {
                record.fingerprint == fingerprint && record.spec == spec
            }
            _ => false,
        }
    }

    /// Forwards a held notification with `Ekko-Coalesced`; commits it after a 2xx response.
    async fn deliver(
        &self,
        key: &str,
        route_name: &str,
        held: &HeldNotification,
        held_count: u64,
        compiled: Option<&super::route::CompiledRoute>,
    ) -> ReleaseOutcome {
        let Some(compiled) = compiled else {
            tracing::error!(
                route = route_name,
                entity = key,
                "route of a held notification is no longer in the policy; retrying"
            );
            self.guard.retry_later(key, self.clock.now_ms());
            return ReleaseOutcome::Retry;
        };
        let Some(upstream) = self.upstreams.get(&compiled.route.upstream) else {
            self.guard.retry_later(key, self.clock.now_ms());
            return ReleaseOutcome::Retry;
        };
        if let Some(supervisor) = self.amqp.get(&upstream.name) {
            return self
                .deliver_amqp(key, compiled, held, supervisor.clone())
                .await;
        }
        let Ok(uri) = UpstreamClient::uri(upstream, &held.path_and_query) else {
            self.guard.retry_later(key, self.clock.now_ms());
            return ReleaseOutcome::Retry;
        };
        self.lookups.invalidate(key, route_name);
        let mut headers = forward_headers(&held.headers, upstream, held.peer);
        headers.insert(
            COALESCED_HEADER,
            HeaderValue::from(held_count.saturating_sub(1)),
        );
        let hops = held.hops.saturating_add(1);
        let body = crate::guard::stamp(
            &compiled.route.format,
            &mut headers,
            held.body.clone(),
            hops,
        );
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = held.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        match self
            .client
            .send(upstream, request, super::forward::FORWARD_RESPONSE_LIMIT)
            .await
        {
            Ok(response) if super::forward::delivered(&compiled.route.format, &response) => {
                self.commit_release(key, compiled, held);
                ReleaseOutcome::Delivered
            }
            result => {
                let status = result.as_ref().map(Response::status).ok();
                let attempts = self.guard.retry_later(key, self.clock.now_ms());
                tracing::warn!(
                    route = route_name,
                    entity = key,
                    ?status,
                    attempts,
                    "release forward failed; retrying with backoff"
                );
                ReleaseOutcome::Retry
            }
        }
    }

    /// Publishes a held notification to an AMQP upstream; commits it once confirmed.
    async fn deliver_amqp(
        &self,
        key: &str,
        compiled: &super::route::CompiledRoute,
        held: &HeldNotification,
        supervisor: std::sync::Arc<crate::amqp::Supervisor>,
    ) -> ReleaseOutcome {
        let route_name = &compiled.route.name;
        let path = held.path_and_query.split('?').next().unwrap_or("/");
        let matched = Matched {
            route: compiled,
            captures: compiled.route.path.matches(path).unwrap_or_default(),
        };
        self.lookups.invalidate(key, route_name);
        let mut headers = held.headers.clone();
        let hops = held.hops.saturating_add(1);
        let body = crate::guard::stamp(
            &compiled.route.format,
            &mut headers,
            held.body.clone(),
            hops,
        );
        match self.publish(&matched, &supervisor, &headers, &body).await {
            Ok(_) => {
                self.commit_release(key, compiled, held);
                ReleaseOutcome::Delivered
            }
            Err(error) => {
                let attempts = self.guard.retry_later(key, self.clock.now_ms());
                tracing::warn!(route = %route_name, entity = key, %error, attempts, "release publish failed; retrying with backoff");
                ReleaseOutcome::Retry
            }
        }
    }

    fn commit_release(
        &self,
        key: &str,
        compiled: &super::route::CompiledRoute,
        held: &HeldNotification,
    ) {
        let now = self.clock.now_ms();
        if let Some(fingerprint) = held.fingerprint {
            let record = EntityRecord {
                fingerprint,
                spec: compiled.spec,
                forwarded_at_ms: now,
            };
            if self.state.commit(key, record) {
                self.metrics.state_evictions.inc();
            }
            self.metrics
                .state_entities
                .set(self.state.entities.len() as i64);
        }
        // The guard's history already has the held state, added when it was held.
        if let Some(event_key) = &held.event_key {
            self.state.record_event(event_key, now);
        }
    }
}

/// Returns the Ekko-Decision entry for a verdict on a route.
pub(super) fn decision_entry(shadow: bool, verdict: &Verdict) -> String {
    if !shadow {
        return verdict.decision.header_value();
    }
    match verdict.would_hold {
        Some(reason) => format!("forwarded; would=held; reason={}", reason.as_str()),
        None => format!("forwarded; would={}", verdict.decision.as_str()),
    }
}
