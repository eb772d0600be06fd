//! The decision for one notification: duplicate, unchanged, or forward.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use super::envelope::Event;
use super::fingerprint::{compute, Fingerprint};
use super::locks::{EntitySlot, OwnFetch, StateFetch};
use super::route::Matched;
use super::Gateway;
use crate::guard::{Prior, Reason};
use crate::metrics::{ReasonLabels, ResultLabels};
use crate::policy::template::PathError;
use crate::policy::FingerprintSource;

/// Maximum size of a source API response read to fingerprint an entity (16 MiB).
/// A larger entity fails open: it is forwarded and counted as `body_too_large`.
pub const LOOKUP_BODY_LIMIT: usize = 16 << 20;

/// Decision on one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward it to the upstream.
    Forward,
    /// The same `source` + `id` was seen within `duplicate_window`.
    Duplicate,
    /// The entity's state equals the state last forwarded.
    Unchanged,
    /// The entity is quarantined; the notification is held for delivery on release.
    Held(Reason),
}

impl Decision {
    /// Returns the metric label: `forwarded`, `duplicate`, `unchanged` or `held`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forwarded",
            Self::Duplicate => "duplicate",
            Self::Unchanged => "unchanged",
            Self::Held(_) => "held",
        }
    }

    /// Returns the `Ekko-Decision` entry, such as `unchanged` or `held; reason=oscillation`.
    pub fn header_value(self) -> String {
        match self {
            Self::Held(reason) => format!("held; reason={}", reason.as_str()),
            other => other.as_str().to_owned(),
        }
    }
}

/// A decision with what is needed to commit it after the upstream accepted the forward.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Entity key.
    pub key: String,
    /// `source` + NUL + `id`, when the event has an id.
    pub event_key: Option<String>,
    /// The decision.
    pub decision: Decision,
    /// The entity's current fingerprint; `None` when none could be computed (fail open)
    /// or the route fingerprints nothing.
    pub fingerprint: Option<Fingerprint>,
    /// The notification's causal hop count: the larger of what it carries and the number of
    /// forwards already made for this entity in its trace.
    pub hops: u32,
    /// W3C trace id, when the notification carried a valid `traceparent`.
    pub trace: Option<String>,
    /// The notification's `source`.
    pub source: Option<String>,
    /// The entity's fingerprint record before this notification, for the loop guard,
    /// which has no damping record for an entity with one forwarded state.
    pub prior: Option<Prior>,
    /// On a shadow route: the hold that enforce mode would have made.
    pub would_hold: Option<Reason>,
    /// ekko's own fetch of the entity, stored in the lookup cache when this is forwarded.
    pub own_fetch: Option<Arc<OwnFetch>>,
}

/// Decisions made earlier in the same batch and not yet committed.
#[derive(Default)]
pub struct Pending {
    /// Entity key to the fingerprint the batch will forward.
    pub fingerprints: HashMap<String, Fingerprint>,
    /// Event keys the batch will forward.
    pub events: HashSet<String>,
}

impl Gateway {
    /// Decides one event while the caller holds the entity's lock.
    pub(super) async fn decide(
        &self,
        matched: &Matched<'_>,
        key: String,
        event: &Event,
        arrived: Instant,
        slot: &mut EntitySlot,
        pending: &Pending,
    ) -> Verdict {
        let route = &matched.route.route;
        let event_key = event
            .id
            .as_ref()
            .map(|id| format!("{}\0{}", event.source.as_deref().unwrap_or(""), id));
        let window_ms = route.duplicate_window.as_millis() as u64;
        if let Some(event_key) = &event_key {
            // A zero window turns duplicate detection off, also within one batch.
            let seen = window_ms > 0
                && (pending.events.contains(event_key)
                    || self
                        .state
                        .event_seen_within(event_key, self.clock.now_ms(), window_ms));
            if seen {
                return Verdict {
                    key,
                    event_key: Some(event_key.clone()),
                    decision: Decision::Duplicate,
                    fingerprint: None,
                    hops: 0,
                    trace: None,
                    source: event.source.clone(),
                    prior: None,
                    would_hold: None,
                    own_fetch: None,
                };
            }
        }

        let fingerprint = self.fingerprint(matched, event, arrived, slot).await;
        let own_fetch = slot.own_fetch.take();
        let pending_fingerprint = pending.fingerprints.get(&key);
        let stored = match pending_fingerprint {
            Some(_) => self.state.entities.peek(&key),
            None => self.state.entity(&key),
        };
        let last = match pending_fingerprint {
            Some(fingerprint) => Some((*fingerprint, matched.route.spec)),
            None => stored.as_ref().map(|r| (r.fingerprint, r.spec)),
        };
        let unchanged = matches!((fingerprint, last), (Some(now), Some((before, spec)))
            if now == before && spec == matched.route.spec);
        Verdict {
            key,
            event_key,
            decision: if unchanged {
                Decision::Unchanged
            } else {
                Decision::Forward
            },
            fingerprint,
            hops: 0,
            trace: None,
            source: event.source.clone(),
            prior: stored.as_ref().map(Prior::from_record),
            would_hold: None,
            own_fetch,
        }
    }

    /// Computes the entity's current fingerprint; `None` means "fail open" (counted) or
    /// a route without state.
    async fn fingerprint(
        &self,
        matched: &Matched<'_>,
        event: &Event,
        arrived: Instant,
        slot: &mut EntitySlot,
    ) -> Option<Fingerprint> {
        let compiled = matched.route;
        match &compiled.route.fingerprint.source {
            FingerprintSource::None => None,
            FingerprintSource::Payload => match &event.data {
                Some(data) => Some(compute(data.clone(), &compiled.mask).fingerprint),
                None => {
                    self.count_fail_open(&compiled.route.name, "no_data");
                    None
                }
            },
            FingerprintSource::Lookup { .. } => {
                // Boxed, so payload-mode notifications do not carry the fetch's large state.
                match Box::pin(self.lookup(matched, event, arrived, slot)).await {
                    StateFetch::Found(fingerprint) => Some(fingerprint),
                    StateFetch::Deleted => Some(Fingerprint::deleted()),
                    StateFetch::Failed(reason) => {
                        self.count_fail_open(&compiled.route.name, reason);
                        None
                    }
                }
            }
        }
    }

    /// Fetches the entity from the source API, or reuses a fetch that started after this
    /// notification arrived (so N queued notifications for one entity cost one fetch).
    async fn lookup(
        &self,
        matched: &Matched<'_>,
        event: &Event,
        arrived: Instant,
        slot: &mut EntitySlot,
    ) -> StateFetch {
        let route = &matched.route.route;
        if let Some((started, fetch)) = &slot.last_lookup {
            if *started >= arrived {
                self.count_lookup(&route.name, "reused");
                return fetch.clone();
            }
        }
        let started = Instant::now();
        let (fetch, own_fetch) = self.fetch_state(matched, event).await;
        slot.own_fetch = own_fetch;
        let result = match &fetch {
            StateFetch::Found(_) => "ok",
            StateFetch::Deleted => "deleted",
            StateFetch::Failed(reason) => reason,
        };
        self.count_lookup(&route.name, result);
        slot.last_lookup = Some((started, fetch.clone()));
        fetch
    }

    async fn fetch_state(
        &self,
        matched: &Matched<'_>,
        event: &Event,
    ) -> (StateFetch, Option<Arc<OwnFetch>>) {
        let compiled = matched.route;
        let FingerprintSource::Lookup { upstream, path } = &compiled.route.fingerprint.source
        else {
            return (StateFetch::Failed("not_lookup"), None);
        };
        let Some(upstream) = self.upstreams.get(upstream) else {
            return (StateFetch::Failed("unknown_upstream"), None);
        };
        let path = match path.render_path(|name| field(matched, event, name)) {
            Ok(path) => path,
            Err(PathError::Missing(_)) => return (StateFetch::Failed("missing_field"), None),
            Err(PathError::DotSegment(_)) => return (StateFetch::Failed("dot_segment"), None),
        };
        let response = match self
            .client
            .get_json(upstream, &path, LOOKUP_BODY_LIMIT)
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(route = %compiled.route.name, upstream = %upstream.name, %error, "fingerprint lookup failed");
                return (StateFetch::Failed(error.code_label()), None);
            }
        };
        let fetch = state_of(&response, &compiled.mask);
        let own_fetch = OwnFetch {
            upstream: upstream.name.clone(),
            path,
            response,
        };
        (fetch, Some(Arc::new(own_fetch)))
    }

    pub(super) fn count_fail_open(&self, route: &str, reason: &'static str) {
        tracing::debug!(route, reason, "no fingerprint; forwarding");
        self.metrics
            .fail_open
            .get_or_create(&ReasonLabels {
                route: route.to_owned(),
                reason,
            })
            .inc();
    }

    fn count_lookup(&self, route: &str, result: &'static str) {
        self.metrics
            .fingerprint_lookups
            .get_or_create(&ResultLabels {
                route: route.to_owned(),
                result,
            })
            .inc();
    }
}

/// Reads the entity's state from a source API response.
fn state_of(
    response: &http::Response<bytes::Bytes>,
    mask: &crate::notify::mask::Mask,
) -> StateFetch {
    let status = response.status().as_u16();
    if status == 404 || status == 410 {
        return StateFetch::Deleted;
    }
    if !response.status().is_success() {
        return StateFetch::Failed(if status >= 500 {
            "status_5xx"
        } else {
            "status_other"
        });
    }
    match serde_json::from_slice(response.body()) {
        Ok(state) => StateFetch::Found(compute(state, mask).fingerprint),
        Err(_) => StateFetch::Failed("invalid_json"),
    }
}

/// Looks up a template field: the event's fields first, then the request path's captures.
pub fn field<'a>(matched: &'a Matched<'_>, event: &'a Event, name: &str) -> Option<&'a str> {
    event.field(name).or_else(|| {
        matched
            .captures
            .iter()
            .find(|(capture, _)| capture == name)
            .map(|(_, value)| value.as_str())
    })
}
