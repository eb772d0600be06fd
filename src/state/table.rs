//! Sharded LRU table with an exact entry bound, keyed by 128-bit keyed hashes of the keys.
//!
//! # Layout
//!
//! A key is not stored. The table hashes it with keyed blake3 under its seed and keeps the
//! first 16 bytes as the entry's [`KeyId`]. Bytes 8..16 of the id pick the shard, and
//! bytes 0..8 are the id's hash inside the shard, so an id alone finds its entry again,
//! as when a snapshot is loaded. Two distinct keys share an id with probability about
//! n² / 2¹²⁹ for n keys: below 2 × 10⁻²⁷ for a million keys and below 2 × 10⁻²¹ for a
//! billion. Such a collision would make one entity read the other's record.
//!
//! Each shard keeps its entries in one `Vec<Node<V>>` slab and a `hashbrown::HashTable<u32>`
//! of slab indices. The nodes form a doubly linked LRU list through `u32` slab indices. A
//! removal moves the last node into the freed slot, so the slab stays dense and a removed
//! value is dropped at once, where a free list would keep dropped slots in the slab. A
//! full shard reuses its least recently used node for the new entry.
//!
//! Per entry this costs `size_of::<Node<V>>()` (32 bytes plus `V`, rounded up to 8) and
//! 5 bytes per index bucket, with between 1.14 and 2.29 buckets per entry at the bound.
//!
//! # Memory at the bound
//!
//! Each shard reserves its slab and its index for its full share of the bound when the
//! table is created. The slab reservation is address space only: the operating system
//! backs a page when an entry is first written to it. The index writes its control bytes,
//! 1 byte per bucket, at once. Growing a slab by doubling could hold the old and the new
//! slab at the same time, which the reservation avoids.
//!
//! Removals leave tombstones in the index. When they use up its spare room, hashbrown
//! would double the bucket count, so the shard instead builds a new index of the same
//! size from the slab, holding two indices of one shard for that moment.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;

/// Maximum number of shards. More shards mean less lock contention between tasks, but
/// each shard evicts on its own, so a table with many shards keeps LRU order less exactly.
const MAX_SHARDS: usize = 16;

/// Maximum entries in one shard, so every slab index fits in a `u32` next to `NIL`.
const MAX_SHARD_ENTRIES: usize = (u32::MAX - 1) as usize;

/// Slab index that marks the end of the LRU list.
const NIL: u32 = u32::MAX;

/// A 32-byte key for the keyed blake3 hash that derives key ids.
pub(crate) type ShardSeed = [u8; 32];

/// The 128-bit id of a key: the first 16 bytes of the key's keyed blake3 hash under the
/// table's seed. The same key gets the same id only in tables with the same seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 16]);

impl KeyId {
    /// Wraps 16 bytes as an id.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Returns the id's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Hash of the id inside its shard: bytes 0..8.
    fn index_hash(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    /// Bytes 8..16, which pick the shard, so they stay independent of `index_hash`.
    fn shard_hash(&self) -> u64 {
        u64::from_le_bytes(self.0[8..].try_into().expect("8 bytes"))
    }
}

/// Formats the id as 32 lowercase hex digits.
impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The text is not a key id of 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key id {text:?}: expected 32 hex digits")]
pub struct MalformedKeyId {
    /// The rejected text, cut to its first 40 characters.
    pub text: String,
}

/// Parses 32 hex digits in either case.
impl FromStr for KeyId {
    type Err = MalformedKeyId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || MalformedKeyId {
            text: text.chars().take(40).collect(),
        };
        if text.len() != 32 || !text.is_ascii() {
            return Err(malformed());
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| malformed())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| malformed())?;
        }
        Ok(Self(bytes))
    }
}

/// Writes the id as its 32 hex digits.
impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Reads an id from 32 hex digits.
impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One entry and its links in the shard's LRU list.
struct Node<V> {
    id: KeyId,
    /// Slab index of the next more recently used node, or `NIL` for the newest.
    newer: u32,
    /// Slab index of the next less recently used node, or `NIL` for the oldest.
    older: u32,
    /// Time of the last insert or `get` on the table's logical clock.
    last_used: u64,
    value: V,
}

/// One shard: a dense slab of nodes, an index from id to slab index, and the list ends.
struct Shard<V> {
    nodes: Vec<Node<V>>,
    index: HashTable<u32>,
    newest: u32,
    oldest: u32,
    capacity: usize,
}

impl<V> Shard<V> {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            nodes: Vec::with_capacity(capacity),
            index: HashTable::with_capacity(capacity),
            newest: NIL,
            oldest: NIL,
            capacity,
        }
    }

    fn find(&self, id: KeyId) -> Option<u32> {
        let nodes = &self.nodes;
        self.index
            .find(id.index_hash(), |&slot| nodes[slot as usize].id == id)
            .copied()
    }

    /// Returns the node of `id` and makes it the newest when `stamp` is given.
    fn lookup(&mut self, id: KeyId, stamp: Option<u64>) -> Option<&mut Node<V>> {
        let slot = self.find(id)?;
        if let Some(stamp) = stamp {
            self.unlink(slot);
            self.push_newest(slot);
            self.nodes[slot as usize].last_used = stamp;
        }
        Some(&mut self.nodes[slot as usize])
    }

    /// Inserts or replaces the value of `id` as the newest entry. Returns the value it
    /// replaced, or the evicted entry's value with `true`, for the caller to drop after
    /// the shard is consistent again.
    fn insert(&mut self, id: KeyId, value: V, stamp: u64) -> Option<(V, bool)> {
        if let Some(slot) = self.find(id) {
            self.unlink(slot);
            self.push_newest(slot);
            let node = &mut self.nodes[slot as usize];
            node.last_used = stamp;
            return Some((std::mem::replace(&mut node.value, value), false));
        }

        if self.nodes.len() < self.capacity {
            let slot = self.nodes.len() as u32;
            self.nodes.push(Node {
                id,
                newer: NIL,
                older: NIL,
                last_used: stamp,
                value,
            });
            self.index_insert(slot);
            self.push_newest(slot);
            return None;
        }

        // Full: reuse the oldest node's slot for the new entry.
        let slot = self.oldest;
        self.unlink(slot);
        self.index_remove(slot);
        let node = &mut self.nodes[slot as usize];
        node.id = id;
        node.last_used = stamp;
        let evicted = std::mem::replace(&mut node.value, value);
        self.index_insert(slot);
        self.push_newest(slot);
        Some((evicted, true))
    }

    /// Removes the node of `id`, moving the last node of the slab into its slot.
    fn remove(&mut self, id: KeyId) -> Option<V> {
        let slot = self.find(id)?;
        self.unlink(slot);
        self.index_remove(slot);
        let last = (self.nodes.len() - 1) as u32;
        let removed = self.nodes.swap_remove(slot as usize);
        if slot != last {
            self.relocate(last, slot);
        }
        Some(removed.value)
    }

    /// Points the list and the index at `to`, where the node that was at `from` now is.
    fn relocate(&mut self, from: u32, to: u32) {
        let (id, newer, older) = {
            let node = &self.nodes[to as usize];
            (node.id, node.newer, node.older)
        };
        match newer {
            NIL => self.newest = to,
            newer => self.nodes[newer as usize].older = to,
        }
        match older {
            NIL => self.oldest = to,
            older => self.nodes[older as usize].newer = to,
        }
        if let Some(entry) = self.index.find_mut(id.index_hash(), |&slot| slot == from) {
            *entry = to;
        }
    }

    /// Empties the index and the list before the slab, so a panic in a value's drop
    /// leaves an empty, consistent shard.
    fn clear(&mut self) {
        self.index.clear();
        self.newest = NIL;
        self.oldest = NIL;
        self.nodes.clear();
    }

    /// Takes `slot` out of the LRU list, leaving its own links stale.
    fn unlink(&mut self, slot: u32) {
        let (newer, older) = {
            let node = &self.nodes[slot as usize];
            (node.newer, node.older)
        };
        match newer {
            NIL => self.newest = older,
            newer => self.nodes[newer as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            older => self.nodes[older as usize].newer = newer,
        }
    }

    /// Links an unlinked `slot` in as the newest node.
    fn push_newest(&mut self, slot: u32) {
        let previous = self.newest;
        {
            let node = &mut self.nodes[slot as usize];
            node.newer = NIL;
            node.older = previous;
        }
        match previous {
            NIL => self.oldest = slot,
            previous => self.nodes[previous as usize].newer = slot,
        }
        self.newest = slot;
    }

    /// Adds the node at `slot` to the index.
    ///
    /// Removals leave tombstones that use up the index's spare room, and hashbrown would
    /// then double its bucket count on the next insert. So when no room is left, the
    /// index is built again at its first size from the slab, which contains the new node.
    fn index_insert(&mut self, slot: u32) {
        let nodes = &self.nodes;
        let hash_of = |&other: &u32| nodes[other as usize].id.index_hash();
        if self.index.len() < self.index.capacity() {
            self.index.insert_unique(hash_of(&slot), slot, hash_of);
            return;
        }
        let mut index = HashTable::with_capacity(self.capacity.max(nodes.len()));
        for slot in 0..nodes.len() as u32 {
            index.insert_unique(hash_of(&slot), slot, hash_of);
        }
        self.index = index;
    }

    /// Removes the index entry of the node at `slot`, which still contains its id.
    fn index_remove(&mut self, slot: u32) {
        let hash = self.nodes[slot as usize].id.index_hash();
        if let Ok(entry) = self.index.find_entry(hash, |&other| other == slot) {
            entry.remove();
        }
    }
}

/// A string-keyed LRU table shared between tasks, holding at most `capacity()` entries.
///
/// Keys are spread over up to 16 shards by their [`KeyId`], and each shard is an LRU list
/// behind its own mutex. The bound is split over the shards, so the total number of
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
    /// entries, and the first `max_entries % n` shards get one more. A shard contains at most
    /// 2³² − 2 entries, so a bound above about 68 billion keeps fewer entries than the bound.
    pub fn new(max_entries: NonZeroUsize) -> Self {
        Self::with_seed(max_entries, random_seed())
    }

    /// Creates an empty table whose key ids use `seed`, so a table restored from a
    /// snapshot gives every key the id it had in the table that was saved.
    pub(crate) fn with_seed(max_entries: NonZeroUsize, seed: ShardSeed) -> Self {
        let total = max_entries.get();
        let count = total.min(MAX_SHARDS);
        let shards = (0..count)
            .map(|index| {
                // `count <= total`, so every shard gets at least one entry.
                let size = total / count + usize::from(index < total % count);
                Mutex::new(Shard::with_capacity(size.min(MAX_SHARD_ENTRIES)))
            })
            .collect();
        Self {
            shards,
            capacity: total,
            seed,
            clock: AtomicU64::new(0),
        }
    }

    /// Returns the id of `key` in this table.
    pub fn key_id(&self, key: &str) -> KeyId {
        let hash = blake3::keyed_hash(&self.seed, key.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.as_bytes()[..16]);
        KeyId(id)
    }

    /// Returns a copy of the value for `key` and marks the entry as most recently used.
    pub fn get(&self, key: &str) -> Option<V> {
        let id = self.key_id(key);
        let stamp = self.tick();
        let mut shard = self.lock_shard(id);
        shard.lookup(id, Some(stamp)).map(|node| node.value.clone())
    }

    /// Returns a copy of the value for `key` without changing its recency.
    pub fn peek(&self, key: &str) -> Option<V> {
        let id = self.key_id(key);
        let mut shard = self.lock_shard(id);
        shard.lookup(id, None).map(|node| node.value.clone())
    }

    /// Inserts or replaces the value for `key` and marks it as most recently used.
    ///
    /// Returns `true` when another entry was evicted to make room, so the caller can
    /// count evictions. Replacing the value of an existing key evicts nothing.
    pub fn insert(&self, key: &str, value: V) -> bool {
        self.insert_id(self.key_id(key), value)
    }

    /// Inserts or replaces the value for the key whose id is `id`, as `insert` does. A
    /// snapshot load uses it, because the snapshot stores ids and not keys.
    pub fn insert_id(&self, id: KeyId, value: V) -> bool {
        let stamp = self.tick();
        let mut shard = self.lock_shard(id);
        let displaced = shard.insert(id, value, stamp);
        // The replaced or evicted value is dropped here, after the shard is consistent.
        matches!(displaced, Some((_, true)))
    }

    /// Changes the value for `key` in place and marks it as most recently used, inserting
    /// `fresh()` first when the key has no entry. Returns `change`'s result and whether
    /// another entry was evicted to make room.
    ///
    /// Unlike `get` followed by `insert`, the value is not copied, which matters for values
    /// that own heap data. `fresh` and `change` run under the shard's lock, so keep them
    /// short; a panic in them leaves the shard consistent.
    pub fn update<R>(
        &self,
        key: &str,
        fresh: impl FnOnce() -> V,
        change: impl FnOnce(&mut V) -> R,
    ) -> (R, bool) {
        let id = self.key_id(key);
        let stamp = self.tick();
        let mut shard = self.lock_shard(id);
        if let Some(node) = shard.lookup(id, Some(stamp)) {
            return (change(&mut node.value), false);
        }
        let evicted = matches!(shard.insert(id, fresh(), stamp), Some((_, true)));
        let node = shard
            .lookup(id, None)
            .expect("the entry inserted under this lock is present");
        (change(&mut node.value), evicted)
    }

    /// Removes the entry for `key` and returns its value.
    pub fn remove(&self, key: &str) -> Option<V> {
        let id = self.key_id(key);
        let mut shard = self.lock_shard(id);
        shard.remove(id)
    }

    /// Returns the number of entries, summed over the shards one after another, so
    /// concurrent inserts and removals may make the result slightly stale.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).nodes.len())
            .sum()
    }

    /// Returns `true` when no shard contains an entry.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| lock(shard).nodes.is_empty())
    }

    /// Returns the maximum number of entries, as given to `new`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Removes every entry whose value `keep` rejects and returns how many were removed.
    ///
    /// Each shard is locked while it is scanned, one shard at a time, so a full table of a
    /// million entries blocks each shard for about a sixteenth of one pass.
    pub fn retain(&self, keep: impl Fn(&V) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let rejected: Vec<KeyId> = shard
                .nodes
                .iter()
                .filter(|node| !keep(&node.value))
                .map(|node| node.id)
                .collect();
            for id in rejected {
                if shard.remove(id).is_some() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Removes every entry. The shards keep their reserved memory.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            lock(shard).clear();
        }
    }

    /// Returns the id and a copy of the value of every entry, from least to most recently
    /// used across all shards.
    ///
    /// Each shard is locked only while its entries are copied, so the result is not one
    /// atomic view when other tasks write at the same time. The copy contains every entry
    /// at once, 24 bytes plus `V` each.
    pub fn entries(&self) -> Vec<(KeyId, V)> {
        let mut stamped = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = lock(shard);
            stamped.extend(
                shard
                    .nodes
                    .iter()
                    .map(|node| (node.last_used, node.id, node.value.clone())),
            );
        }
        stamped.sort_unstable_by_key(|(last_used, _, _)| *last_used);
        stamped
            .into_iter()
            .map(|(_, id, value)| (id, value))
            .collect()
    }

    /// Returns the seed that derives key ids, for the snapshot file.
    pub(crate) fn seed(&self) -> ShardSeed {
        self.seed
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn lock_shard(&self, id: KeyId) -> MutexGuard<'_, Shard<V>> {
        // The modulo of a uniform 64-bit hash by at most 16 has negligible bias.
        let index = id.shard_hash() % self.shards.len() as u64;
        lock(&self.shards[index as usize])
    }
}

/// Locks a shard, ignoring poison. The only foreign code that runs under a shard lock is
/// `V::clone` and `V`'s drop. A clone runs after the list operations of a `get` or `peek`.
/// A shard returns replaced, evicted and removed values to be dropped after its list and
/// index are consistent. So a panic in either leaves the table usable.
fn lock<T>(shard: &Mutex<T>) -> MutexGuard<'_, T> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Derives a per-table seed from the standard library's random hash keys, the clock and
/// the process id.
///
/// The seed only makes key ids hard to predict, so a client cannot aim all its entity keys
/// at one shard and evict other entities early. It is not a cryptographic key.
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Operation {
        Get(u8),
        Peek(u8),
        Insert(u8, u32),
        Remove(u8),
    }

    fn operation() -> impl Strategy<Value = Operation> {
        // Few distinct keys, so hits, replacements and evictions are all common.
        let key = 0u8..12;
        prop_oneof![
            key.clone().prop_map(Operation::Get),
            key.clone().prop_map(Operation::Peek),
            (key.clone(), any::<u32>()).prop_map(|(k, v)| Operation::Insert(k, v)),
            key.prop_map(Operation::Remove),
        ]
    }

    /// The expected table: per shard, a queue of keys and values from least to most
    /// recently used.
    struct Model {
        shards: Vec<VecDeque<(String, u32)>>,
        capacities: Vec<usize>,
    }

    impl Model {
        fn new(table: &BoundedTable<u32>) -> Self {
            let capacities: Vec<usize> = table
                .shards
                .iter()
                .map(|shard| lock(shard).capacity)
                .collect();
            Self {
                shards: vec![VecDeque::new(); capacities.len()],
                capacities,
            }
        }

        fn shard(table: &BoundedTable<u32>, key: &str) -> usize {
            (table.key_id(key).shard_hash() % table.shards.len() as u64) as usize
        }

        fn take(&mut self, shard: usize, key: &str) -> Option<u32> {
            let queue = &mut self.shards[shard];
            let position = queue.iter().position(|(k, _)| k == key)?;
            queue.remove(position).map(|(_, value)| value)
        }

        fn apply(
            &mut self,
            table: &BoundedTable<u32>,
            operation: &Operation,
        ) -> (Option<u32>, bool) {
            let key = |k: &u8| format!("key-{k}");
            match operation {
                Operation::Get(k) => {
                    let shard = Self::shard(table, &key(k));
                    let value = self.take(shard, &key(k));
                    if let Some(value) = value {
                        self.shards[shard].push_back((key(k), value));
                    }
                    (value, false)
                }
                Operation::Peek(k) => {
                    let shard = Self::shard(table, &key(k));
                    let queue = &self.shards[shard];
                    (
                        queue.iter().find(|(q, _)| *q == key(k)).map(|(_, v)| *v),
                        false,
                    )
                }
                Operation::Insert(k, value) => {
                    let shard = Self::shard(table, &key(k));
                    let replaced = self.take(shard, &key(k));
                    let evicted = replaced.is_none()
                        && self.shards[shard].len() == self.capacities[shard]
                        && self.shards[shard].pop_front().is_some();
                    self.shards[shard].push_back((key(k), *value));
                    (None, evicted)
                }
                Operation::Remove(k) => {
                    let shard = Self::shard(table, &key(k));
                    (self.take(shard, &key(k)), false)
                }
            }
        }
    }

    fn run(table: &BoundedTable<u32>, operation: &Operation) -> (Option<u32>, bool) {
        let key = |k: &u8| format!("key-{k}");
        match operation {
            Operation::Get(k) => (table.get(&key(k)), false),
            Operation::Peek(k) => (table.peek(&key(k)), false),
            Operation::Insert(k, value) => (None, table.insert(&key(k), *value)),
            Operation::Remove(k) => (table.remove(&key(k)), false),
        }
    }

    proptest! {
        #[test]
        fn table_matches_lru_model(
            bound in 1usize..40,
            operations in proptest::collection::vec(operation(), 1..200),
        ) {
            let table = BoundedTable::new(NonZeroUsize::new(bound).unwrap());
            let mut model = Model::new(&table);
            for operation in &operations {
                let expected = model.apply(&table, operation);
                prop_assert_eq!(run(&table, operation), expected, "{:?}", operation);
                let expected_len: usize = model.shards.iter().map(VecDeque::len).sum();
                prop_assert_eq!(table.len(), expected_len);
            }
            let entries = table.entries();
            for (index, queue) in model.shards.iter().enumerate() {
                let in_shard: Vec<(KeyId, u32)> = entries
                    .iter()
                    .filter(|(id, _)| (id.shard_hash() % table.shards.len() as u64) as usize == index)
                    .copied()
                    .collect();
                let expected: Vec<(KeyId, u32)> =
                    queue.iter().map(|(k, v)| (table.key_id(k), *v)).collect();
                prop_assert_eq!(in_shard, expected, "shard {}", index);
            }
        }
    }

    #[test]
    fn churn_at_bound_keeps_index_size() {
        let mut shard = Shard::with_capacity(1000);
        let buckets = shard.index.capacity();
        for n in 0..200_000u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&blake3::hash(&n.to_le_bytes()).as_bytes()[..8]);
            id[8..].copy_from_slice(&n.to_le_bytes());
            shard.insert(KeyId(id), n, n);
        }
        assert_eq!(shard.nodes.len(), 1000);
        assert_eq!(shard.index.len(), 1000);
        assert!(
            shard.index.capacity() <= buckets,
            "index grew past its first size"
        );
    }

    #[test]
    fn key_id_round_trips_through_hex() {
        let id = KeyId([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "ab".repeat(16));
        assert_eq!(text.parse::<KeyId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<KeyId>(), Ok(id));
    }

    #[test]
    fn malformed_key_ids_are_rejected() {
        for text in ["", "ab", &"g".repeat(32), &"a".repeat(33), &"é".repeat(16)] {
            assert!(text.parse::<KeyId>().is_err(), "{text:?}");
        }
    }
}
