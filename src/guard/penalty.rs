//! Flap penalty with exponential decay and a short history of distinct states.
//!
//! This is route-flap damping (RFC 2439) applied to entities: each forwarded change adds to
//! a penalty that halves every `half_life`; a change back to a recently seen state adds more.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::notify::fingerprint::Fingerprint;
use crate::policy::LoopGuardConfig;
use crate::state::EntityRecord;

/// One transition to a new state, as kept in an entity's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The first 8 bytes of the state's fingerprint. Enough to recognise a recent state;
    /// a collision could at worst count a change as a return.
    pub state: u64,
    /// When ekko observed the transition, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The producing `source` of the notification, when it named one.
    pub source: Option<String>,
}

/// Damping state of one entity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardRecord {
    /// Penalty as of `updated_ms`.
    pub penalty: f64,
    /// When `penalty` was last computed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// Recent distinct states, oldest first; the last one is the current state.
    pub history: VecDeque<Transition>,
}

/// The state that an entity's fingerprint record held before the current notification.
///
/// An entity that had one distinct forwarded state has no damping record, because a
/// history of one state carries nothing that its fingerprint record does not. Such a
/// record is built from this state when the second distinct state arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prior {
    /// Short form of the fingerprint, see [`short`].
    pub state: u64,
    /// When the state was forwarded, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Prior {
    /// Returns the prior state that `record` holds.
    pub fn from_record(record: &EntityRecord) -> Self {
        Self {
            state: short(&record.fingerprint),
            at_ms: record.forwarded_at_ms,
        }
    }
}

/// Relation of a new state to the entity's recent states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first state ekko observes for the entity: no penalty.
    First,
    /// The same state as the current one: no penalty.
    Same,
    /// A state not among the recent ones: `change_penalty`.
    Change,
    /// A state seen recently but not the current one (A → B → A): `return_penalty`.
    Return,
}

/// Returns the short form of a fingerprint kept in the history. Printed as 16 hex digits
/// it equals the first 16 digits of the fingerprint's own hex form.
pub fn short(fingerprint: &Fingerprint) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&fingerprint.0[..8]);
    u64::from_be_bytes(first)
}

/// `penalty` decayed over `elapsed_ms` with the given half-life.
pub fn decay(penalty: f64, elapsed_ms: u64, half_life_ms: u64) -> f64 {
    if half_life_ms == 0 {
        return 0.0;
    }
    penalty * 0.5f64.powf(elapsed_ms as f64 / half_life_ms as f64)
}

impl GuardRecord {
    /// Returns the record that observing only `prior` would have built: no penalty, and a
    /// history of that one state. The state's `source` is not known, so it is `None`.
    pub fn seeded(prior: Prior) -> Self {
        Self {
            penalty: 0.0,
            updated_ms: prior.at_ms,
            history: VecDeque::from([Transition {
                state: prior.state,
                at_ms: prior.at_ms,
                source: None,
            }]),
        }
    }

    /// Returns the penalty at `now_ms`.
    pub fn penalty_at(&self, now_ms: u64, config: &LoopGuardConfig) -> f64 {
        decay(
            self.penalty,
            now_ms.saturating_sub(self.updated_ms),
            config.half_life.as_millis() as u64,
        )
    }

    /// Classifies a new state against the history without changing anything.
    pub fn classify(&self, state: u64) -> Step {
        match self.history.back() {
            None => Step::First,
            Some(current) if current.state == state => Step::Same,
            Some(_) if self.history.iter().any(|t| t.state == state) => Step::Return,
            Some(_) => Step::Change,
        }
    }

    /// Returns the penalty that observing `state` at `now_ms` would give.
    pub fn penalty_after(&self, state: u64, now_ms: u64, config: &LoopGuardConfig) -> f64 {
        self.penalty_at(now_ms, config) + step_penalty(self.classify(state), config)
    }

    /// Records `state` as the entity's current state and adds its penalty.
    pub fn observe(
        &mut self,
        state: u64,
        source: Option<&str>,
        now_ms: u64,
        config: &LoopGuardConfig,
    ) -> Step {
        let step = self.classify(state);
        self.penalty = self.penalty_after(state, now_ms, config);
        self.updated_ms = now_ms;
        if step != Step::Same {
            // A state appears once in the history, at its latest position.
            self.history.retain(|t| t.state != state);
            self.history.push_back(Transition {
                state,
                at_ms: now_ms,
                source: source.map(str::to_owned),
            });
            while self.history.len() > config.history {
                self.history.pop_front();
            }
        }
        step
    }

    /// Adds a fixed amount, used when a notification is held for its hop count.
    pub fn add(&mut self, amount: f64, now_ms: u64, config: &LoopGuardConfig) {
        self.penalty = self.penalty_at(now_ms, config) + amount;
        self.updated_ms = now_ms;
    }

    /// Milliseconds from `now_ms` until the penalty decays below `reuse_below`; 0 if it has.
    pub fn ms_until_reuse(&self, now_ms: u64, config: &LoopGuardConfig) -> u64 {
        let penalty = self.penalty_at(now_ms, config);
        if penalty < config.reuse_below {
            return 0;
        }
        let half_lives = (penalty / config.reuse_below).log2();
        (half_lives * config.half_life.as_millis() as f64).ceil() as u64 + 1
    }

    /// Returns the distinct sources of the recent transitions, in order of their last appearance.
    pub fn sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = Vec::new();
        for source in self.history.iter().filter_map(|t| t.source.as_ref()) {
            sources.retain(|s| s != source);
            sources.push(source.clone());
        }
        sources
    }
}

fn step_penalty(step: Step, config: &LoopGuardConfig) -> f64 {
    match step {
        Step::First | Step::Same => 0.0,
        Step::Change => config.change_penalty,
        Step::Return => config.return_penalty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoopGuardConfig {
        LoopGuardConfig::default()
    }

    #[test]
    fn short_form_prints_as_hex_prefix() {
        let fingerprint = Fingerprint(*blake3::hash(b"state").as_bytes());
        assert_eq!(
            format!("{:016x}", short(&fingerprint)),
            fingerprint.to_hex()[..16]
        );
    }

    #[test]
    fn penalty_halves_each_half_life() {
        assert!((decay(8.0, 30_000, 30_000) - 4.0).abs() < 1e-9);
        assert!((decay(8.0, 60_000, 30_000) - 2.0).abs() < 1e-9);
        assert_eq!(decay(8.0, 0, 30_000), 8.0);
    }

    #[test]
    fn return_to_recent_state_costs_more() {
        let config = config();
        let mut record = GuardRecord::default();
        assert_eq!(record.observe(1, Some("hr"), 0, &config), Step::First);
        assert_eq!(record.observe(2, Some("iga"), 0, &config), Step::Change);
        assert_eq!(record.observe(1, Some("hr"), 0, &config), Step::Return);
        assert_eq!(
            record.penalty,
            config.change_penalty + config.return_penalty
        );
    }

    #[test]
    fn oscillation_crosses_threshold_within_six_flips() {
        let config = config();
        let mut record = GuardRecord::default();
        let mut flips = 0;
        while record.penalty <= config.suppress_above {
            flips += 1;
            record.observe(flips % 2, None, flips * 100, &config);
        }
        assert!(flips <= 6, "quarantined after {flips} flips");
    }

    #[test]
    fn new_state_every_ten_seconds_stays_below_threshold() {
        let config = config();
        let mut record = GuardRecord::default();
        for i in 0..360u64 {
            record.observe(i, None, i * 10_000, &config);
            assert!(
                record.penalty <= config.suppress_above,
                "step {i}: {}",
                record.penalty
            );
        }
    }

    #[test]
    fn history_keeps_distinct_states_within_bound() {
        let config = config();
        let mut record = GuardRecord::default();
        for state in [1, 2, 3, 1, 4, 5, 6] {
            record.observe(state, None, 0, &config);
        }
        let states: Vec<u64> = record.history.iter().map(|t| t.state).collect();
        assert_eq!(states, vec![1, 4, 5, 6]);
    }

    #[test]
    fn reuse_time_matches_decay() {
        let config = config();
        let record = GuardRecord {
            penalty: 8.0,
            updated_ms: 0,
            history: VecDeque::new(),
        };
        let wait = record.ms_until_reuse(0, &config);
        assert!(record.penalty_at(wait, &config) < config.reuse_below);
        assert!(record.penalty_at(wait - 1000, &config) >= config.reuse_below);
    }

    #[test]
    fn sources_are_listed_once_in_order() {
        let config = config();
        let mut record = GuardRecord::default();
        record.observe(1, Some("hr"), 0, &config);
        record.observe(2, Some("iga"), 0, &config);
        record.observe(3, Some("hr"), 0, &config);
        assert_eq!(record.sources(), vec!["iga".to_owned(), "hr".to_owned()]);
    }
}
