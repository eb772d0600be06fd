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
