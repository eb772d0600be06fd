//! Fingerprint store: bounded in-memory tables and an optional snapshot file.

mod snapshot;
mod table;

pub use snapshot::SnapshotError;
pub use table::BoundedTable;

use serde::{Deserialize, Serialize};

use crate::notify::fingerprint::Fingerprint;

/// What ekko remembers about one entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRecord {
    /// Fingerprint of the state last forwarded to the upstream (accepted with 2xx).
    pub fingerprint: Fingerprint,
    /// Hash of the fingerprint settings that produced it; a different value means "compare nothing".
    pub spec: u64,
    /// When it was forwarded, in milliseconds since the Unix epoch.
    pub forwarded_at_ms: u64,
}

/// All of ekko's per-entity state: last forwarded fingerprints and recent event ids.
pub struct StateStore {
    /// Entity key to its record, bounded by `state.max_entities`.
    pub entities: BoundedTable<EntityRecord>,
    /// `source` + `id` of recent events to the time they were seen (ms since the epoch),
    /// bounded by `state.max_event_ids`.
    pub events: BoundedTable<u64>,
}

/// Counts read from or written to a snapshot.
pub struct SnapshotStats {
    /// Entity records.
    pub entities: usize,
    /// Event ids.
    pub events: usize,
}

impl StateStore {
    /// Creates empty tables.
    pub fn new(max_entities: usize, max_event_ids: usize) -> Self {
        Self {
            entities: BoundedTable::new(max_entities),
            events: BoundedTable::new(max_event_ids),
        }
    }
    /// Reads an entity record.
    pub fn entity(&self, key: &str) -> Option<EntityRecord> {
        self.entities.get(key)
    }
    /// Whether the event was seen within the window.
    pub fn event_seen_within(&self, key: &str, now_ms: u64, window_ms: u64) -> bool {
        self.events
            .get(key)
            .is_some_and(|seen| now_ms.saturating_sub(seen) < window_ms)
    }
    /// Remembers an event.
    pub fn record_event(&self, key: &str, now_ms: u64) {
        self.events.insert(key, now_ms);
    }
    /// Writes a snapshot.
    pub fn save(&self, path: &std::path::Path) -> Result<SnapshotStats, SnapshotError> {
        let _ = path;
        Ok(SnapshotStats {
            entities: 0,
            events: 0,
        })
    }
    /// Reads a snapshot.
    pub fn load(
        path: &std::path::Path,
        max_entities: usize,
        max_event_ids: usize,
    ) -> Result<(Self, SnapshotStats), SnapshotError> {
        let _ = (path, max_entities, max_event_ids);
        Err(SnapshotError::Missing {
            path: String::new(),
        })
    }
}
