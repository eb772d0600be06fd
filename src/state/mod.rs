//! Fingerprint store: bounded in-memory tables and an optional snapshot file.

mod snapshot;
mod table;

pub use snapshot::{SnapshotError, SnapshotStats};
pub use table::{BoundedTable, KeyId, MalformedKeyId};

use std::num::NonZeroUsize;
use std::path::Path;

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

impl StateStore {
    /// Creates an empty store that keeps at most `max_entities` entity records and
    /// `max_event_ids` event ids.
    pub fn new(max_entities: NonZeroUsize, max_event_ids: NonZeroUsize) -> Self {
        Self {
            entities: BoundedTable::new(max_entities),
            events: BoundedTable::new(max_event_ids),
        }
    }

    /// Returns the record of the entity `key` and marks it as most recently used.
    pub fn entity(&self, key: &str) -> Option<EntityRecord> {
        self.entities.get(key)
    }

    /// Stores `record` as the entity's last forwarded state. Call it only after the
    /// upstream accepted the forward, so a failed forward is never suppressed on retry.
    ///
    /// Returns `true` when another entity was evicted to make room.
    pub fn commit(&self, key: &str, record: EntityRecord) -> bool {
        self.entities.insert(key, record)
    }

    /// Returns `true` when the event `source_and_id` was recorded less than `window_ms`
    /// before `now_ms` (both in ms since the Unix epoch), and marks it as recently used.
    ///
    /// An event recorded at a time after `now_ms`, as after the clock was set back,
    /// counts as seen just now. A `window_ms` of 0 never matches.
    pub fn event_seen_within(&self, source_and_id: &str, now_ms: u64, window_ms: u64) -> bool {
        match self.events.get(source_and_id) {
            Some(seen_at_ms) => now_ms.saturating_sub(seen_at_ms) < window_ms,
            None => false,
        }
    }

    /// Records that the event `source_and_id` was seen at `now_ms` (ms since the Unix
    /// epoch), replacing any earlier time.
    ///
    /// Returns `true` when another event id was evicted to make room.
    pub fn record_event(&self, source_and_id: &str, now_ms: u64) -> bool {
        self.events.insert(source_and_id, now_ms)
    }

    /// Writes both tables to the snapshot file at `path`, replacing it atomically.
    ///
    /// The file is written as `<path>.tmp-<pid>` with mode 0600, fsynced, renamed over
    /// `path`, and the directory is fsynced. Records name their keys by key id, see
    /// [`KeyId`]. This blocks on file I/O, so async code should call it through
    /// `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// `SnapshotError::Io` names the file or directory that could not be written. An
    /// earlier snapshot at `path` then stays as it was.
    pub fn save(&self, path: &Path) -> Result<SnapshotStats, SnapshotError> {
        snapshot::write(path, &self.entities, &self.events)
    }

    /// Reads the snapshot at `path` into a new store with the given bounds.
    ///
    /// When the file has more records than a bound, the most recently used ones are
    /// kept. The stats count the records in the file. This blocks on file I/O.
    ///
    /// # Errors
    ///
    /// `SnapshotError::Missing` when the file does not exist.
    /// `SnapshotError::UnsupportedVersion` for a snapshot of another format version, such
    /// as version 1 from an older ekko. `SnapshotError::Corrupt` when the header, a line or
    /// the checksum is wrong or the file is truncated. `SnapshotError::Io` when the file cannot be read. In every case the
    /// caller can start with an empty store.
    pub fn load(
        path: &Path,
        max_entities: NonZeroUsize,
        max_event_ids: NonZeroUsize,
    ) -> Result<(StateStore, SnapshotStats), SnapshotError> {
        let (entities, events, stats) = snapshot::read(path, max_entities, max_event_ids)?;
        Ok((StateStore { entities, events }, stats))
    }
}
