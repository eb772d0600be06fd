//! Byte-bounded, sharded LRU store of cached responses.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use lru::LruCache;

/// Maximum number of shards. More shards mean less lock contention between tasks, but
/// each shard evicts on its own, so a store with many shards keeps LRU order less exactly.
const MAX_SHARDS: usize = 16;

/// Minimum budget of a shard when the store has more than one shard, in bytes.
///
/// A store smaller than `2 * MIN_SHARD_BYTES` has one shard, so small stores do not split
/// their bound into shards too small to contain a typical response. With `n` shards the
/// largest entry that can be stored is `max_bytes / n` bytes.
pub const MIN_SHARD_BYTES: usize = 1024 * 1024;

/// Fixed number of bytes counted for every entry on top of its body, header and string
/// lengths.
///
/// It is an estimate of the memory that those lengths do not show. On a 64-bit target with
/// http 1.5 and lru 0.12, `size_of` gives 264 bytes for the `Arc` allocation of a
/// `CacheEntry` and 56 bytes for the LRU node that contains the 32-byte key. The LRU hash
/// index adds about 20 bytes per entry. The constant rounds their sum of about 340 bytes
/// up. Allocator overhead beyond that is not counted, so the byte bound limits the counted
/// size, not the resident memory.
pub const ENTRY_OVERHEAD_BYTES: usize = 384;

/// Fixed number of bytes counted for every header field on top of its name and value
/// lengths.
///
/// It is an estimate: one slot of the `HeaderMap` entry table is about 104 bytes and its
/// index slot 4 bytes on a 64-bit target with http 1.5. The rest allows for table slots
/// that are reserved but unused.
pub const HEADER_OVERHEAD_BYTES: usize = 128;

/// A cache key: blake3 over length-prefixed parts, so two different requests can never
/// produce the same sequence of hashed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Builds a key from its parts (upstream, path, normalised query, varied header
    /// values, scope partition, ...). Each part is hashed as its length (u64, little
    /// endian) followed by its bytes.
    ///
    /// The length prefix makes each part self-delimiting, so the hashed byte stream can be
    /// split back into exactly one list of parts. Two different part lists therefore give
    /// different streams: without the prefix `["ab", "c"]` and `["a", "bc"]` would both
    /// hash `abc`. Equal keys then mean equal part lists unless blake3 has a collision.
    pub fn build(parts: &[&[u8]]) -> Self {
        let mut hasher = blake3::Hasher::new();
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Self(*hasher.finalize().as_bytes())
    }

    /// Returns the index of the shard for this key among `shard_count` shards.
    ///
    /// The key is already a blake3 digest, so its first bytes are uniform and need no
    /// second hash. A client that picks request paths to aim many keys at one shard can
    /// only evict entries of that shard, whose budget is `1 / shard_count` of the bound.
    fn shard_index(&self, shard_count: usize) -> usize {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        // The modulo of a uniform 64-bit value by at most 16 has negligible bias.
        (u64::from_le_bytes(prefix) % shard_count as u64) as usize
    }
}

/// One cached response.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// Response status.
    pub status: StatusCode,
    /// Response headers as stored (hop-by-hop fields removed).
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
    /// Lookup route name.
    pub route: String,
    /// Entity key the entry belongs to.
    pub entity: String,
    /// Request path and normalised query, for purges by path.
    pub path: String,
    /// Entity epoch when the fetch began; the entry is valid while the entity's epoch is
    /// not newer.
    pub epoch: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    /// `Age` the upstream reported, in seconds.
    pub upstream_age_s: u64,
    /// End of its freshness lifetime (ms since the epoch).
    pub fresh_until_ms: u64,
    /// End of the `stale-if-error` window (ms since the epoch).
    pub stale_until_ms: u64,
}

impl CacheEntry {
    /// Returns the size counted against the store's bound, in bytes: the body length, the
    /// length of every header name and value plus [`HEADER_OVERHEAD_BYTES`] per header
    /// field, the lengths of `route`, `entity` and `path`, and [`ENTRY_OVERHEAD_BYTES`].
    pub fn size_bytes(&self) -> usize {
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                [name.as_str().len(), value.len(), HEADER_OVERHEAD_BYTES]
                    .into_iter()
                    .fold(0, usize::saturating_add)
            })
            .fold(0usize, usize::saturating_add);
        [
            self.body.len(),
            headers,
            self.route.len(),
            self.entity.len(),
            self.path.len(),
            ENTRY_OVERHEAD_BYTES,
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }
}

/// One shard: an unbounded LRU list evicted by bytes, and its byte count.
struct Shard {
    entries: LruCache<CacheKey, Arc<CacheEntry>>,
    /// Sum of `size_bytes` over `entries`, never more than `budget`.
    bytes: usize,
    budget: usize,
}

impl Shard {
    fn new(budget: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    fn remove(&mut self, key: &CacheKey) -> bool {
        match self.entries.pop(key) {
            Some(entry) => {
                self.bytes -= entry.size_bytes();
                true
            }
            None => false,
        }
    }

    /// Evicts least recently used entries until `size` more bytes fit and returns how many.
    fn make_room(&mut self, size: usize) -> usize {
        let mut evicted = 0;
        while self.budget - self.bytes < size {
            // `bytes > 0` here because `size <= budget`, and `bytes` counts the entries.
            let (_, entry) = self
                .entries
                .pop_lru()
                .expect("a shard with counted bytes has entries");
            self.bytes -= entry.size_bytes();
            evicted += 1;
        }
        evicted
    }
}

/// A byte-bounded LRU store of cached responses, shared between tasks.
///
/// Keys are spread over up to 16 shards by their first bytes, and each shard is an LRU
/// list behind its own mutex with its own byte budget. The budgets add up to exactly
/// `max_bytes`, so [`bytes`](Self::bytes) never exceeds it. A full shard evicts its own
/// least recently used entries even when other shards have room. Sizes are counted by
/// [`CacheEntry::size_bytes`]. All methods take `&self`.
pub struct CacheStore {
    shards: Box<[Mutex<Shard>]>,
    max_bytes: usize,
}

impl CacheStore {
    /// Creates a store of at most `max_bytes`.
    ///
    /// The store uses `max_bytes / MIN_SHARD_BYTES` shards, at least 1 and at most 16.
    /// Shard `i` gets `max_bytes / n` bytes, and the first `max_bytes % n` shards get one
    /// byte more. A store of 0 bytes is valid and rejects every entry.
    pub fn new(max_bytes: usize) -> Self {
        let count = (max_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        let shards = (0..count)
            .map(|index| {
                let budget = max_bytes / count + usize::from(index < max_bytes % count);
                Mutex::new(Shard::new(budget))
            })
            .collect();
        Self { shards, max_bytes }
    }

    /// Returns the bound given to [`new`](Self::new), in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Returns the number of shards, from 1 to 16, as chosen by [`new`](Self::new).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Reads an entry and marks it recently used. The result shares the stored entry, so
    /// no body or header is copied.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<CacheEntry>> {
        self.lock_shard(key).entries.get(key).cloned()
    }

    /// Stores an entry; returns the number of entries evicted to make room, or `None` when
    /// the entry alone is larger than the store can hold.
    ///
    /// The limit for one entry is the budget of its key's shard, `max_bytes / n` bytes (one
    /// more in some shards) for `n` shards. An existing entry for `key` is removed in both
    /// cases, because the caller has a newer response for it. Its bytes are freed before
    /// the new entry is counted, and it does not count as evicted. A rejected entry evicts
    /// no other entry.
    pub fn insert(&self, key: CacheKey, entry: CacheEntry) -> Option<usize> {
        let size = entry.size_bytes();
        let mut shard = self.lock_shard(&key);
        shard.remove(&key);
        if size > shard.budget {
            return None;
        }

        let evicted = shard.make_room(size);
        shard.entries.put(key, Arc::new(entry));
        shard.bytes += size;
        Some(evicted)
    }

    /// Removes one entry.
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.lock_shard(key).remove(key)
    }

    /// Removes every entry for which `matches` is true; returns how many.
    ///
    /// Each shard is locked while `matches` runs over its entries, so `matches` should be
    /// cheap and must not call back into this store, which would deadlock. Entries inserted
    /// into an already scanned shard during the purge are kept.
    pub fn purge(&self, matches: impl Fn(&CacheEntry) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let keys: Vec<CacheKey> = shard
                .entries
                .iter()
                .filter(|(_, entry)| matches(entry))
                .map(|(key, _)| *key)
                .collect();
            for key in &keys {
                shard.remove(key);
            }
            removed += keys.len();
        }
        removed
    }

    /// Bytes in use, by the same count as the bound.
    ///
    /// The shards are read one after another, so concurrent writes may make the sum
    /// slightly stale, but it never exceeds `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).bytes).sum()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).entries.len())
            .sum()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns `(route, entries, bytes)` for every route with at least one entry, sorted by
    /// route name, for the admin API.
    ///
    /// It visits every entry, one shard at a time, so it costs O(entries) and is not one
    /// atomic view while other tasks write.
    pub fn entries_per_route(&self) -> Vec<(String, usize, usize)> {
        let mut routes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (_, entry) in shard.entries.iter() {
                let counts = match routes.get_mut(entry.route.as_str()) {
                    Some(counts) => counts,
                    None => routes.entry(entry.route.clone()).or_default(),
                };
                counts.0 += 1;
                counts.1 += entry.size_bytes();
            }
        }
        routes
            .into_iter()
            .map(|(route, (entries, bytes))| (route, entries, bytes))
            .collect()
    }

    fn lock_shard(&self, key: &CacheKey) -> MutexGuard<'_, Shard> {
        lock(&self.shards[key.shard_index(self.shards.len())])
    }
}

impl fmt::Debug for CacheStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CacheStore")
            .field("max_bytes", &self.max_bytes)
            .field("shards", &self.shards.len())
            .field("bytes", &self.bytes())
            .field("len", &self.len())
            .finish()
    }
}

/// Locks a shard, ignoring poison. The only foreign code that runs under a shard lock is
/// the `purge` predicate, and it runs before any entry is removed, so a panic in it
/// cannot leave the list and its byte count out of step.
fn lock<T>(shard: &Mutex<T>) -> MutexGuard<'_, T> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(route: &str, body_len: usize) -> CacheEntry {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        CacheEntry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(vec![b'x'; body_len]),
            route: route.to_owned(),
            entity: "hr/person/1".to_owned(),
            path: "/hr/v1/persons/1".to_owned(),
            epoch: 0,
            stored_at_ms: 0,
            upstream_age_s: 0,
            fresh_until_ms: 0,
            stale_until_ms: 0,
        }
    }

    fn budgets(store: &CacheStore) -> Vec<usize> {
        store
            .shards
            .iter()
            .map(|shard| lock(shard).budget)
            .collect()
    }

    #[test]
    fn key_parts_are_length_prefixed() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&2u64.to_le_bytes());
        stream.extend_from_slice(b"ab");
        stream.extend_from_slice(&1u64.to_le_bytes());
        stream.extend_from_slice(b"c");

        let key = CacheKey::build(&[b"ab", b"c"]);

        assert_eq!(key.0, *blake3::hash(&stream).as_bytes());
    }

    #[test]
    fn empty_part_changes_key() {
        assert_ne!(CacheKey::build(&[]), CacheKey::build(&[b""]));
        assert_ne!(CacheKey::build(&[b"a"]), CacheKey::build(&[b"a", b""]));
    }

    #[test]
    fn entry_size_counts_every_length() {
        let entry = entry("hr-person", 100);
        let headers = "content-type".len() + "application/json".len() + HEADER_OVERHEAD_BYTES;
        let strings = "hr-person".len() + "hr/person/1".len() + "/hr/v1/persons/1".len();

        assert_eq!(
            entry.size_bytes(),
            100 + headers + strings + ENTRY_OVERHEAD_BYTES
        );
    }

    #[test]
    fn budgets_split_bound_exactly() {
        let max = 16 * MIN_SHARD_BYTES + 5;
        let store = CacheStore::new(max);
        let budgets = budgets(&store);

        assert_eq!(budgets.len(), 16);
        assert_eq!(budgets.iter().sum::<usize>(), max);
        assert_eq!(budgets[..5], [MIN_SHARD_BYTES + 1; 5]);
        assert_eq!(budgets[5..], [MIN_SHARD_BYTES; 11]);
    }

    #[test]
    fn small_bounds_use_fewer_shards() {
        assert_eq!(CacheStore::new(0).shard_count(), 1);
        assert_eq!(CacheStore::new(2 * MIN_SHARD_BYTES - 1).shard_count(), 1);
        assert_eq!(CacheStore::new(3 * MIN_SHARD_BYTES).shard_count(), 3);
        assert_eq!(CacheStore::new(usize::MAX).shard_count(), 16);
        assert_eq!(budgets(&CacheStore::new(1000)), [1000]);
    }

    #[test]
    fn shard_index_stays_in_range() {
        for n in 0u32..1000 {
            let key = CacheKey::build(&[&n.to_le_bytes()]);
            for count in 1..=MAX_SHARDS {
                assert!(key.shard_index(count) < count);
            }
        }
    }

    #[test]
    fn zero_byte_store_rejects_entries() {
        let store = CacheStore::new(0);

        assert_eq!(store.insert(CacheKey::build(&[b"a"]), entry("r", 0)), None);
        assert!(store.is_empty());
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn entry_filling_shard_exactly_fits() {
        let size = entry("r", 10).size_bytes();
        let store = CacheStore::new(size);
        let first = CacheKey::build(&[b"first"]);
        let second = CacheKey::build(&[b"second"]);

        assert_eq!(store.insert(first, entry("r", 10)), Some(0));
        assert_eq!(store.insert(second, entry("r", 10)), Some(1));
        assert_eq!(store.bytes(), size);
        assert!(store.get(&first).is_none());
        assert!(store.get(&second).is_some());
    }

    #[test]
    fn purge_predicate_panic_keeps_counts() {
        let store = CacheStore::new(10_000);
        store.insert(CacheKey::build(&[b"a"]), entry("r", 10));
        let bytes = store.bytes();

        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.purge(|_| panic!("predicate failed"))
        }));

        assert!(outcome.is_err());
        assert_eq!(store.len(), 1);
        assert_eq!(store.bytes(), bytes);
        assert_eq!(store.purge(|_| true), 1);
        assert_eq!(store.bytes(), 0);
    }
}
