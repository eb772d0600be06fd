//! Entity epochs: a forwarded change makes every cached entry of its entity invalid,
//! including entries that fetches already in flight would store.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::state::BoundedTable;

/// Epoch per entity, drawn from one global counter.
///
/// A bump gives the entity the next counter value. A fetch records the counter value at
/// its start, and its entry is valid while that value is at least the entity's epoch, so a
/// fetch that began before a change can never serve or store pre-change data. Entities
/// that fall out of the bounded table take the `floor`: the counter value at the last
/// eviction, which invalidates older entries of every untracked entity. Eviction therefore
/// only costs extra misses, never a stale response.
pub struct Epochs {
    counter: AtomicU64,
    floor: AtomicU64,
    table: BoundedTable<u64>,
}

impl Epochs {
    /// Creates the table with room for `max_entities` entities.
    pub fn new(max_entities: NonZeroUsize) -> Self {
        Self {
            counter: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            table: BoundedTable::new(max_entities),
        }
    }

    /// The counter value to record when a fetch starts.
    pub fn snapshot(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// The entity's epoch: its last bump, or the eviction floor.
    pub fn current(&self, entity: &str) -> u64 {
        self.table
            .peek(entity)
            .unwrap_or_else(|| self.floor.load(Ordering::SeqCst))
    }

    /// Whether an entry fetched at `fetched_at` is still valid for `entity`.
    pub fn is_valid(&self, entity: &str, fetched_at: u64) -> bool {
        fetched_at >= self.current(entity)
    }

    /// Invalidates every entry of `entity`; returns the new epoch.
    pub fn bump(&self, entity: &str) -> u64 {
        let epoch = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        if self.table.insert(entity, epoch) {
            // The evicted entity's epoch is at most `epoch`, so raising the floor to it
            // keeps that entity's old entries invalid.
            self.floor.fetch_max(epoch, Ordering::SeqCst);
        }
        epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_before_bump_is_invalid() {
        let epochs = Epochs::new(NonZeroUsize::new(10).unwrap());
        let before = epochs.snapshot();
        epochs.bump("p/1");
        let after = epochs.snapshot();

        assert!(!epochs.is_valid("p/1", before));
        assert!(epochs.is_valid("p/1", after));
        assert!(epochs.is_valid("p/2", before));
    }

    #[test]
    fn eviction_invalidates_untracked_entities() {
        let epochs = Epochs::new(NonZeroUsize::new(1).unwrap());
        let early = epochs.snapshot();
        epochs.bump("p/1");
        epochs.bump("p/2");

        assert!(!epochs.is_valid("p/1", early));
        assert!(!epochs.is_valid("p/3", early));
        assert!(epochs.is_valid("p/3", epochs.snapshot()));
    }
}
