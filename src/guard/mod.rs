//! Loop guard: flap penalty, oscillation history, causal hop count and quarantine.

mod held;
mod hops;
mod penalty;
mod quarantine;
mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

pub use held::HeldWriter;
pub use hops::{carried_hops, stamp, stamp_structured, trace_id, HOPS_HEADER};
pub use penalty::{decay, short, GuardRecord, Prior, Step, Transition};
pub use quarantine::{backoff_ms, HeldNotification, Quarantine, Reason};
pub use snapshot::{guard_path, held_path, GuardSnapshotError};

use crate::policy::{LoopGuardConfig, StateConfig};
use crate::state::BoundedTable;

/// Decisions kept per entity in the audit ring.
pub const AUDIT_ENTRIES: usize = 8;

/// Time after which a trace's forward count for an entity starts again (1 hour), so a
/// producer that reuses one `traceparent` for a long job is not mistaken for a loop.
pub const TRACE_WINDOW_MS: u64 = 60 * 60 * 1000;

/// Entities whose audit ring is kept (the most recently active ones).
pub const AUDIT_ENTITIES: usize = 10_000;

/// One decision in an entity's audit ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Route name.
    pub route: String,
    /// `forwarded`, `unchanged`, `duplicate`, `held`, `released`, ...
    pub decision: String,
    /// Why, in a few words.
    pub reason: String,
    /// The notification's `source`, when it named one.
    pub source: Option<String>,
}

/// A detected loop: which entity, through which route, why, and the notification's source.
#[derive(Debug, Clone, Copy)]
pub struct Detection<'a> {
    /// Entity key.
    pub key: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Cause of the quarantine.
    pub reason: Reason,
    /// The `source` of the notification that tripped the guard.
    pub source: Option<&'a str>,
    /// The entity's last forwarded state, which seeds its damping record if it has none.
    pub prior: Option<Prior>,
}

/// Causal chain count for one (trace id, entity) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceCount {
    /// Notifications of this trace forwarded for this entity.
    pub forwards: u32,
    /// When the first one was seen, in milliseconds since the Unix epoch.
    pub first_ms: u64,
}

/// All loop-guard state. Every table is bounded; losing an entry only makes ekko forward more.
pub struct LoopGuard {
    records: BoundedTable<GuardRecord>,
    traces: BoundedTable<TraceCount>,
    audit: BoundedTable<VecDeque<AuditEntry>>,
    quarantine: Mutex<HashMap<String, Quarantine>>,
    max_quarantined: usize,
}

impl LoopGuard {
    /// Creates empty tables sized by the policy's `state` section.
    pub fn new(state: &StateConfig) -> Self {
        let audit_entities = NonZeroUsize::new(AUDIT_ENTITIES.min(state.max_entities.get()))
            .unwrap_or(NonZeroUsize::MIN);
        Self {
            records: BoundedTable::new(state.max_entities),
            traces: BoundedTable::new(state.max_traces),
            audit: BoundedTable::new(audit_entities),
            quarantine: Mutex::new(HashMap::new()),
            max_quarantined: state.max_quarantined.get(),
        }
    }

    fn quarantine_table(&self) -> MutexGuard<'_, HashMap<String, Quarantine>> {
        self.quarantine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the entity's damping record, if any.
    pub fn record(&self, key: &str) -> Option<GuardRecord> {
        self.records.peek(key)
    }

    /// Returns whether the entity is quarantined.
    pub fn is_quarantined(&self, key: &str) -> bool {
        self.quarantine_table().contains_key(key)
    }

    /// Returns a copy of the entity's quarantine.
    pub fn quarantine(&self, key: &str) -> Option<Quarantine> {
        self.quarantine_table().get(key).cloned()
    }

    /// Copies of every quarantine, sorted by entity key.
    pub fn quarantines(&self) -> Vec<(String, Quarantine)> {
        let mut all: Vec<_> = self
            .quarantine_table()
            .iter()
            .map(|(k, q)| (k.clone(), q.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Number of quarantined entities per route.
    pub fn quarantined_per_route(&self) -> HashMap<String, i64> {
        let mut counts = HashMap::new();
        for quarantine in self.quarantine_table().values() {
            *counts.entry(quarantine.route.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Returns the number of forwards made for this entity in this trace within the last
    /// `TRACE_WINDOW_MS`.
    pub fn trace_forwards(&self, trace: &str, key: &str, now_ms: u64) -> u32 {
        self.traces
            .peek(&trace_key(trace, key))
            .filter(|count| now_ms.saturating_sub(count.first_ms) < TRACE_WINDOW_MS)
            .map_or(0, |count| count.forwards)
    }

    /// Returns whether forwarding `state` now would push the entity's penalty above
    /// `suppress_above`. `prior` is the entity's last forwarded state, from its
    /// fingerprint record; it stands in for the damping record when there is none.
    pub fn would_trip(
        &self,
        key: &str,
        prior: Option<Prior>,
        state: u64,
        now_ms: u64,
        config: &LoopGuardConfig,
    ) -> bool {
        let record = self.records.peek(key);
        let record = record.or_else(|| prior.map(GuardRecord::seeded));
        let record = record.unwrap_or_default();
        record.penalty_after(state, now_ms, config) > config.suppress_above
    }

    /// Records a forward that the upstream accepted: the state joins the history with its
    /// penalty, and the trace's forward count grows.
    ///
    /// `prior` is the entity's fingerprint record as it was before this forward. Without a
    /// damping record, the entity's first state creates none, because its fingerprint
    /// record carries it, and the second distinct state creates one whose history starts
    /// with `prior`.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        key: &str,
        state: Option<u64>,
        prior: Option<Prior>,
        source: Option<&str>,
        trace: Option<&str>,
        now_ms: u64,
        config: &LoopGuardConfig,
    ) {
        if let Some(state) = state {
            self.observe_forward(key, state, prior, source, now_ms, config);
        }
        if let Some(trace) = trace {
            let trace_key = trace_key(trace, key);
            let fresh = TraceCount {
                forwards: 0,
                first_ms: now_ms,
            };
            let mut count = self
                .traces
                .get(&trace_key)
                .filter(|count| now_ms.saturating_sub(count.first_ms) < TRACE_WINDOW_MS)
                .unwrap_or(fresh);
            count.forwards = count.forwards.saturating_add(1);
            self.traces.insert(&trace_key, count);
        }
    }

    /// Adds a forwarded `state` to the entity's damping record, creating the record only
    /// when `prior` shows a second distinct state.
    fn observe_forward(
        &self,
        key: &str,
        state: u64,
        prior: Option<Prior>,
        source: Option<&str>,
        now_ms: u64,
        config: &LoopGuardConfig,
    ) {
        let record = match (self.records.get(key), prior) {
            (Some(record), _) => record,
            (None, Some(prior)) if prior.state != state => GuardRecord::seeded(prior),
            // The first state, or the same one again: the fingerprint record carries it.
            (None, _) => return,
        };
        let mut record = record;
        record.observe(state, source, now_ms, config);
        self.records.insert(key, record);
    }

    /// Quarantines an entity and keeps its notification for release. Returns false, holding nothing,
    /// when `max_quarantined` entities are quarantined already: the caller forwards instead.
    pub fn enter(
        &self,
        detection: Detection<'_>,
        held: HeldNotification,
        now_ms: u64,
        config: &LoopGuardConfig,
    ) -> bool {
        let Detection {
            key,
            route,
            reason,
            source,
            prior,
        } = detection;
        let record = self.records.get(key);
        let mut record = record
            .or_else(|| prior.map(GuardRecord::seeded))
            .unwrap_or_default();
        let state = held.fingerprint.as_ref().map(short);
        match (reason, state) {
            (Reason::Oscillation, Some(state)) => {
                record.observe(state, source, now_ms, config);
            }
            _ => record.add(config.suppress_above, now_ms, config),
        }
        let mut table = self.quarantine_table();
        if table.len() >= self.max_quarantined && !table.contains_key(key) {
            return false;
        }
        self.records.insert(key, record.clone());
        table.insert(
            key.to_owned(),
            Quarantine {
                route: route.to_owned(),
                since_ms: now_ms,
                reason,
                sources: record.sources(),
                states: record
                    .history
                    .iter()
                    .map(|t| format!("{:016x}", t.state))
                    .collect(),
                held: Some(held),
                held_count: 1,
                last_state: state,
                attempts: 0,
                next_attempt_ms: 0,
                release_requested: false,
            },
        );
        true
    }

    /// Holds a newer notification for a quarantined entity, replacing the older one. A
    /// change of state adds to the penalty as a forwarded change would, so a loop that
    /// keeps going stays quarantined. Returns false when the entity is not quarantined.
    pub fn hold(
        &self,
        key: &str,
        held: HeldNotification,
        source: Option<&str>,
        now_ms: u64,
        config: &LoopGuardConfig,
    ) -> bool {
        let mut table = self.quarantine_table();
        let Some(quarantine) = table.get_mut(key) else {
            return false;
        };
        let state = held.fingerprint.as_ref().map(short);
        if let Some(state) = state {
            if quarantine.last_state != Some(state) {
                let mut record = self.records.get(key).unwrap_or_default();
                record.observe(state, source, now_ms, config);
                quarantine.sources = record.sources();
                self.records.insert(key, record);
            }
        }
        quarantine.last_state = state.or(quarantine.last_state);
        quarantine.held = Some(held);
        quarantine.held_count += 1;
        true
    }

    /// Entities whose quarantine may end now: penalty below `reuse_below`, `max_quarantine`
    /// reached, or an operator's request, and no earlier failed attempt still backing off.
    pub fn due(
        &self,
        now_ms: u64,
        config_of: impl Fn(&str) -> Option<LoopGuardConfig>,
    ) -> Vec<String> {
        let table = self.quarantine_table();
        let mut due = Vec::new();
        for (key, quarantine) in table.iter() {
            if now_ms < quarantine.next_attempt_ms {
                continue;
            }
            let Some(config) = config_of(&quarantine.route) else {
                // The route left the policy; deliver what is held rather than keep it forever.
                due.push(key.clone());
                continue;
            };
            let calm = self
                .records
                .peek(key)
                .is_none_or(|r| r.penalty_at(now_ms, &config) < config.reuse_below);
            let expired = now_ms.saturating_sub(quarantine.since_ms)
                >= config.max_quarantine.as_millis() as u64;
            if calm || expired || quarantine.release_requested {
                due.push(key.clone());
            }
        }
        due.sort();
        due
    }

    /// Asks for a release at the next chance; returns false when the entity is not quarantined.
    pub fn request_release(&self, key: &str) -> bool {
        match self.quarantine_table().get_mut(key) {
            Some(quarantine) => {
                quarantine.release_requested = true;
                quarantine.next_attempt_ms = 0;
                true
            }
            None => false,
        }
    }

    /// Ends the quarantine and returns it.
    pub fn leave(&self, key: &str) -> Option<Quarantine> {
        self.quarantine_table().remove(key)
    }

    /// Schedules the next release attempt after a failed one; returns the attempt count.
    pub fn retry_later(&self, key: &str, now_ms: u64) -> u32 {
        let mut table = self.quarantine_table();
        let Some(quarantine) = table.get_mut(key) else {
            return 0;
        };
        quarantine.attempts += 1;
        quarantine.next_attempt_ms = now_ms + backoff_ms(quarantine.attempts);
        quarantine.attempts
    }

    /// Appends a decision to the entity's audit ring.
    pub fn audit(&self, key: &str, entry: AuditEntry) {
        self.audit.update(key, VecDeque::new, |ring| {
            if ring.len() >= AUDIT_ENTRIES {
                ring.pop_front();
            }
            ring.push_back(entry);
        });
    }

    /// Returns the entity's recent decisions, oldest first.
    pub fn audit_entries(&self, key: &str) -> Vec<AuditEntry> {
        self.audit.peek(key).map(Vec::from).unwrap_or_default()
    }
}

fn trace_key(trace: &str, key: &str) -> String {
    format!("{trace}\0{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state_config() -> StateConfig {
        let bound = NonZeroUsize::new(100).unwrap();
        StateConfig {
            max_entities: bound,
            max_event_ids: bound,
            max_traces: bound,
            max_quarantined: bound,
            snapshot: None,
            snapshot_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn trace_count_restarts_after_window() {
        let guard = LoopGuard::new(&state_config());
        let config = LoopGuardConfig::default();
        guard.commit("p/1", None, None, None, Some("t"), 0, &config);
        guard.commit("p/1", None, None, None, Some("t"), 1000, &config);

        assert_eq!(guard.trace_forwards("t", "p/1", 2000), 2);
        assert_eq!(guard.trace_forwards("t", "p/2", 2000), 0);
        assert_eq!(guard.trace_forwards("t", "p/1", TRACE_WINDOW_MS), 0);

        guard.commit("p/1", None, None, None, Some("t"), TRACE_WINDOW_MS, &config);
        assert_eq!(guard.trace_forwards("t", "p/1", TRACE_WINDOW_MS + 1), 1);
    }

    #[test]
    fn first_state_creates_no_record() {
        let guard = LoopGuard::new(&state_config());
        let config = LoopGuardConfig::default();
        guard.commit("p/1", Some(1), None, Some("hr"), None, 10, &config);
        assert_eq!(guard.record("p/1"), None);

        let same = Prior {
            state: 1,
            at_ms: 10,
        };
        guard.commit("p/1", Some(1), Some(same), Some("hr"), None, 20, &config);
        assert_eq!(guard.record("p/1"), None);
    }

    #[test]
    fn second_state_matches_full_history() {
        let guard = LoopGuard::new(&state_config());
        let config = LoopGuardConfig {
            suppress_above: 0.5,
            ..LoopGuardConfig::default()
        };
        let mut full = GuardRecord::default();
        full.observe(1, None, 10, &config);
        let prior = Prior {
            state: 1,
            at_ms: 10,
        };

        let trips = full.penalty_after(2, 20, &config) > config.suppress_above;
        assert!(trips, "a change costs more than suppress_above");
        assert_eq!(guard.would_trip("p/1", Some(prior), 2, 20, &config), trips);
        assert!(!guard.would_trip("p/1", None, 2, 20, &config));

        full.observe(2, Some("iga"), 20, &config);
        guard.commit("p/1", Some(2), Some(prior), Some("iga"), None, 20, &config);
        assert_eq!(guard.record("p/1"), Some(full));
    }

    #[test]
    fn audit_ring_keeps_newest_entries() {
        let guard = LoopGuard::new(&state_config());
        for i in 0..(AUDIT_ENTRIES as u64 + 3) {
            let entry = AuditEntry {
                at_ms: i,
                route: "hr".into(),
                decision: "forwarded".into(),
                reason: String::new(),
                source: None,
            };
            guard.audit("p/1", entry);
        }
        let entries = guard.audit_entries("p/1");
        assert_eq!(entries.len(), AUDIT_ENTRIES);
        assert_eq!(entries[0].at_ms, 3);
    }
}
