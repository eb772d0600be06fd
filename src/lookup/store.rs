//! Byte-bounded, sharded LRU store of cached responses.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// A cache key: blake3 over length-prefixed parts, so two different requests can never
/// produce the same sequence of hashed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Builds a key from its parts (upstream, path, normalised query, varied header
    /// values, scope partition, ...). Each part is hashed as its length (u64, little
    /// endian) followed by its bytes.
    pub fn build(parts: &[&[u8]]) -> Self {
        let _ = parts;
        todo!("cache key")
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

/// The store; all methods take `&self`.
pub struct CacheStore {}

impl CacheStore {
    /// Creates a store of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        let _ = max_bytes;
        todo!("cache store")
    }

    /// Reads an entry and marks it recently used.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<CacheEntry>> {
        let _ = key;
        todo!("cache store")
    }

    /// Stores an entry; returns the number of entries evicted to make room, or `None` when
    /// the entry alone is larger than the store can hold.
    pub fn insert(&self, key: CacheKey, entry: CacheEntry) -> Option<usize> {
        let _ = (key, entry);
        todo!("cache store")
    }

    /// Removes one entry.
    pub fn remove(&self, key: &CacheKey) -> bool {
        let _ = key;
        todo!("cache store")
    }

    /// Removes every entry for which `matches` is true; returns how many.
    pub fn purge(&self, matches: impl Fn(&CacheEntry) -> bool) -> usize {
        let _ = matches;
        todo!("cache store")
    }

    /// Bytes in use, by the same count as the bound.
    pub fn bytes(&self) -> usize {
        todo!("cache store")
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        todo!("cache store")
    }

    /// Entries and bytes per route, sorted by route.
    pub fn entries_per_route(&self) -> Vec<(String, usize, usize)> {
        todo!("cache store")
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
