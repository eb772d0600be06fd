//! Sharded LRU table with an exact entry bound.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;

/// Maximum number of shards. More shards mean less lock contention between tasks, but
/// each shard evicts on its own, so a table with many shards keeps LRU order less exactly.
const MAX_SHARDS: usize = 16;

/// A 32-byte key for the keyed blake3 hash that places keys in shards.
pub(crate) type ShardSeed = [u8; 32];

/// A stored value and the time of its last use on the table's logical clock.
struct Slot<V> {
    value: V,
    last_used: u64,
}

type Shard<V> = LruCache<Box<str>, Slot<V>>;

/// A string-keyed LRU table shared between tasks, holding at most `capacity()` entries.
///
/// Keys are spread over up to 16 shards by a keyed blake3 hash, and each shard is an LRU
/// list behind its own mutex. The bound is split over the shards, so the total number of
/// entries never exceeds the bound. A shard that is full evicts its own least recently
/// used entry even when other shards have room, so the table may evict before it contains
/// `capacity()` entries. All methods take `&self`. The table is `Send + Sync` when `V` is
/// `Send`.
pub struct BoundedTable<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    capacity: usize,
    seed: ShardSeed,
    /// Logical clock that stamps every insert and `get`, so `entries` can order all
    /// shards by recency.
    clock: AtomicU64,
}

impl<V: Clone> BoundedTable<V> {
    /// Creates an empty table that contains at most `max_entries` entries.
    ///
    /// The table uses `min(16, max_entries)` shards. Shard `i` gets `max_entries / n`
    /// entries, and the first `max_entries % n` shards get one more.
    pub fn new(max_entries: NonZeroUsize) -> Self {
        Self::with_seed(max_entries, random_seed())
    }

    /// Creates an empty table whose shard placement uses `seed`, so a table restored
    /// from a snapshot places keys in the same shards as the table that was saved.
    pub(crate) fn with_seed(max_entries: NonZeroUsize, seed: ShardSeed) -> Self {
        let total = max_entries.get();
        let count = total.min(MAX_SHARDS);
        let shards = (0..count)
            .map(|index| {
                let size = total / count + usize::from(index < total % count);
                // `count <= total`, so every shard gets at least one entry.
                let size = NonZeroUsize::new(size).expect("shard size is at least 1");
                Mutex::new(LruCache::new(size))
            })
            .collect();
        Self {
            shards,
            capacity: total,
            seed,
            clock: AtomicU64::new(0),
        }
    }

    /// Returns a copy of the value for `key` and marks the entry as most recently used.
    pub fn get(&self, key: &str) -> Option<V> {
        let mut shard = self.lock_shard(key);
        let slot = shard.get_mut(key)?;
        slot.last_used = self.tick();
        Some(slot.value.clone())
    }

    /// Returns a copy of the value for `key` without changing its recency.
    pub fn peek(&self, key: &str) -> Option<V> {
        let shard = self.lock_shard(key);
        shard.peek(key).map(|slot| slot.value.clone())
    }

    /// Inserts or replaces the value for `key` and marks it as most recently used.
    ///
    /// Returns `true` when another entry was evicted to make room, so the caller can
    /// count evictions. Replacing the value of an existing key evicts nothing.
    pub fn insert(&self, key: &str, value: V) -> bool {
        let mut shard = self.lock_shard(key);
        let slot = Slot {
            value,
            last_used: self.tick(),
        };
        match shard.push(key.into(), slot) {
            Some((old_key, _)) => &*old_key != key,
            None => false,
        }
    }

    /// Removes the entry for `key` and returns its value.
    pub fn remove(&self, key: &str) -> Option<V> {
        let mut shard = self.lock_shard(key);
        shard.pop(key).map(|slot| slot.value)
    }

    /// Returns the number of entries, summed over the shards one after another, so
    /// concurrent inserts and removals may make the result slightly stale.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Returns `true` when no shard contains an entry.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| lock(shard).is_empty())
    }

    /// Returns the maximum number of entries, as given to `new`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Removes every entry.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            lock(shard).clear();
        }
    }

    /// Returns a copy of every entry, from least to most recently used across all shards.
    ///
    /// Each shard is locked only while its entries are copied, so the result is not one
    /// atomic view when other tasks write at the same time. The copy contains every key and
    /// value at once, which for a full table of a million entries is tens of megabytes.
    pub fn entries(&self) -> Vec<(Box<str>, V)> {
        let mut stamped = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = lock(shard);
            stamped.extend(
                shard
                    .iter()
                    .map(|(key, slot)| (slot.last_used, key.clone(), slot.value.clone())),
            );
        }
        stamped.sort_unstable_by_key(|(last_used, _, _)| *last_used);
        stamped
            .into_iter()
            .map(|(_, key, value)| (key, value))
            .collect()
    }

    /// Returns the seed that places keys in shards, for the snapshot file.
    pub(crate) fn seed(&self) -> ShardSeed {
        self.seed
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn lock_shard(&self, key: &str) -> MutexGuard<'_, Shard<V>> {
        let hash = blake3::keyed_hash(&self.seed, key.as_bytes());
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&hash.as_bytes()[..8]);
        // The modulo of a uniform 64-bit hash by at most 16 has negligible bias.
        let index = u64::from_le_bytes(prefix) % self.shards.len() as u64;
        lock(&self.shards[index as usize])
    }
}

/// Locks a shard, ignoring poison. The only foreign code that runs under a shard lock is
/// `V::clone` and `V`'s drop, and both run between LRU list operations, so a panic in them
/// cannot leave the list half-changed and the table stays usable.
fn lock<T>(shard: &Mutex<T>) -> MutexGuard<'_, T> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Derives a per-table seed from the standard library's random hash keys, the clock and
/// the process id.
///
/// The seed only makes shard placement hard to predict, so a client cannot aim all its
/// entity keys at one shard and evict other entities early. It is not a cryptographic key.
fn random_seed() -> ShardSeed {
    let mut hasher = blake3::Hasher::new();
    for _ in 0..4 {
        hasher.update(&RandomState::new().hash_one(0u8).to_le_bytes());
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    *hasher.finalize().as_bytes()
}
