//! Sharded LRU table with an exact entry bound (placeholder until the real table lands).

use std::sync::Mutex;

/// A string-keyed LRU table shared between tasks.
pub struct BoundedTable<V> {
    inner: Mutex<lru::LruCache<String, V>>,
}

impl<V: Clone> BoundedTable<V> {
    /// Creates a table of at most `max` entries.
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(max.max(1)).unwrap(),
            )),
        }
    }
    /// Reads an entry.
    pub fn get(&self, key: &str) -> Option<V> {
        self.inner.lock().unwrap().get(key).cloned()
    }
    /// Inserts; returns whether another entry was evicted.
    pub fn insert(&self, key: &str, value: V) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let full = inner.len() == inner.cap().get() && !inner.contains(key);
        inner.put(key.to_owned(), value);
        full
    }
    /// Entry count.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
