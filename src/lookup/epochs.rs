//! Entity epochs: a forwarded change makes every cached entry of its entity invalid,
//! including entries that fetches already in flight would store.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Minimum slot count: 64 Ki slots, 512 KiB.
const MIN_SLOTS: usize = 1 << 16;

/// Maximum slot count: 16 Mi slots, 128 MiB.
const MAX_SLOTS: usize = 1 << 24;

/// Epochs of entities in a fixed array of slots, drawn from one global counter.
///
/// A bump raises the entity's slot to the next counter value. A fetch records the counter
/// value at its start, and its entry is valid while that value is at least the slot's
/// value, so a fetch that began before a change can never serve or store pre-change data.
///
/// Entities share slots by hash. A bump of one entity therefore also invalidates the
/// entries of the entities that share its slot, which costs them one extra miss and never
/// serves a stale response. The array has one slot per entity of `state.max_entities`
/// (rounded up to a power of two). By estimate, with a million slots and 100 changes a
/// second, an entry that lives 60 seconds is lost to an unrelated change with a chance of
/// 6,000 / 2^20, about 0.6 %.
///
/// The array is allocated when the cache is created and costs 8 bytes per slot (8 MiB for
/// the default million), whether entities change or not. A table of the entities that
/// changed would cost about 50 bytes per changed entity and would add that to every
/// forwarded entity, also on routes that no lookup route reads.
pub struct Epochs {
    counter: AtomicU64,
    slots: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl Epochs {
    /// Creates the array with `max_entities` slots, rounded up to a power of two and kept
    /// between 2^16 and 2^24.
    pub fn new(max_entities: NonZeroUsize) -> Self {
        let count = max_entities
            .get()
            .clamp(MIN_SLOTS, MAX_SLOTS)
            .next_power_of_two();
        Self {
            counter: AtomicU64::new(0),
            slots: zeroed_slots(count),
            hasher: RandomState::new(),
        }
    }

    /// The counter value to record when a fetch starts.
    pub fn snapshot(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// The entity's epoch: the counter value of the last bump of its slot.
    pub fn current(&self, entity: &str) -> u64 {
        self.slot(entity).load(Ordering::SeqCst)
    }

    /// Whether an entry fetched at `fetched_at` is still valid for `entity`.
    pub fn is_valid(&self, entity: &str, fetched_at: u64) -> bool {
        fetched_at >= self.current(entity)
    }

    /// Invalidates every entry of `entity`; returns the new epoch.
    pub fn bump(&self, entity: &str) -> u64 {
        let epoch = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        self.slot(entity).fetch_max(epoch, Ordering::SeqCst);
        epoch
    }

    fn slot(&self, entity: &str) -> &AtomicU64 {
        // The slot count is a power of two, so the mask keeps the hash's low bits.
        let index = self.hasher.hash_one(entity) as usize & (self.slots.len() - 1);
        &self.slots[index]
    }
}

/// Allocates `count` slots at epoch 0.
fn zeroed_slots(count: usize) -> Box<[AtomicU64]> {
    std::iter::repeat_with(|| AtomicU64::new(0))
        .take(count)
        .collect()
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
    }

    #[test]
    fn bump_spares_most_other_entities() {
        let epochs = Epochs::new(NonZeroUsize::new(10).unwrap());
        let before = epochs.snapshot();
        epochs.bump("p/1");

        let spared = (2..1002)
            .filter(|n| epochs.is_valid(&format!("p/{n}"), before))
            .count();
        // 1,000 entities over 65,536 slots: the chance that more than 5 share p/1's slot
        // is far below one in a million.
        assert!(
            spared >= 995,
            "only {spared} of 1000 entities kept their entries"
        );
    }

    #[test]
    fn slot_count_follows_max_entities() {
        let small = Epochs::new(NonZeroUsize::new(10).unwrap());
        let large = Epochs::new(NonZeroUsize::new(1_000_000).unwrap());
        assert_eq!(small.slots.len(), MIN_SLOTS);
        assert_eq!(large.slots.len(), 1 << 20);
    }
}
